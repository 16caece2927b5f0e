// fleetdl/fl/codec.hpp — update codecs for federated learning: encode a flat
// update vector to bytes and back, with byte counts given by closed formulas.
//
//   encode_topk        top-k sparsification with error feedback: send the k
//                      entries of largest |v + residual|, keep the rest in a
//                      per-client ErrorFeedback residual for the next round
//                      (Stich, Cordonnier, Jaggi, "Sparsified SGD with Memory",
//                      NeurIPS 2018; Lin et al., "Deep Gradient Compression",
//                      ICLR 2018). Index/value pairs or a bitmap, whichever is
//                      smaller.
//   encode_quantized   unbiased stochastic quantization to 8, 4 or 2 bits per
//                      coordinate with per-vector min/max scaling, bits packed
//                      tightly (the stochastic rounding of QSGD, Alistarh et al.,
//                      NeurIPS 2017, on a [min, max] grid as in TernGrad /
//                      "natural" linear quantizers): E[decode(encode(v))] = v.
//   encode_fp16        IEEE 754 binary16, round to nearest even, with
//                      subnormals, ±0, ±inf, NaN, and overflow to inf.
//   encode_with_feedback  error feedback around any of the encoders
//                      (Karimireddy et al., "Error Feedback Fixes SignSGD", 2019).
//   decode_update      one decoder for every format. Bytes are untrusted: the
//                      header, the exact length, the dimension (against the one
//                      the caller expects), every index (< dim, strictly
//                      increasing), bitmap population and padding, and every
//                      stored float are validated BEFORE the output is allocated.
//                      A bad buffer is an Error, never a crash.
//
// Wire format (all integers and floats little-endian), version 1:
//   header (8 bytes): 'F' 'C' | u8 version = 1 | u8 kind | u32 dim
//   kind 0x01 fp16:        d × u16 binary16                      8 + 2d bytes
//   kind 0x12/0x14/0x18    quantized to b = 2/4/8 bits:
//                          f32 lo | f32 hi | ⌈d·b/8⌉ bytes of codes, code i in
//                          bits [i·b, i·b + b) LSB-first, padding bits zero;
//                          value = lo + code·(hi − lo)/(2^b − 1)  16 + ⌈d·b/8⌉ bytes
//   kind 0x02 top-k pairs: u32 k | k × u32 index (strictly increasing) |
//                          k × f32 value                         12 + 8k bytes
//   kind 0x03 top-k bitmap: u32 k | ⌈d/8⌉ bytes bitmap (bit i LSB-first = index i
//                          kept, padding bits zero, popcount = k) | k × f32 value
//                          in increasing index order               12 + ⌈d/8⌉ + 4k bytes
//   The top-k encoder uses the bitmap iff ⌈d/8⌉ + 4k < 8k, so
//   topk_encoded_bytes(d, k) = 12 + min(8k, ⌈d/8⌉ + 4k) with k ← min(k, d).
// Values travel as f32 whatever the Scalar; for double updates the top-k
// rounding error stays in the residual.
#pragma once

#include "fleetdl/core/bytes.hpp"
#include "fleetdl/core/error.hpp"
#include "fleetdl/core/rng.hpp"
#include "fleetdl/core/tensor.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace fleetdl::fl {

enum class CodecKind : std::uint8_t {
  fp16 = 0x01,
  topk_pairs = 0x02,
  topk_bitmap = 0x03,
  quant2 = 0x12,
  quant4 = 0x14,
  quant8 = 0x18,
};

inline constexpr std::uint8_t codec_version = 1;
inline constexpr std::size_t codec_header_bytes = 8;

// ---------------------------------------------------------------------------
// Closed-form sizes
// ---------------------------------------------------------------------------

/// Bytes of encode_fp16 for d coordinates: 8 + 2d.
constexpr std::size_t fp16_encoded_bytes(Index d) { return codec_header_bytes + 2 * static_cast<std::size_t>(d); }

/// Bytes of encode_quantized for d coordinates at b bits: 16 + ⌈d·b/8⌉.
constexpr std::size_t quantized_encoded_bytes(Index d, int bits) {
  return codec_header_bytes + 8 + (static_cast<std::size_t>(d) * static_cast<std::size_t>(bits) + 7) / 8;
}

/// Whether encode_topk picks the bitmap layout: ⌈d/8⌉ + 4k < 8k, k ← min(k, d).
constexpr bool topk_uses_bitmap(Index d, Index k) {
  const auto kk = static_cast<std::size_t>(std::min(k, d));
  return (static_cast<std::size_t>(d) + 7) / 8 + 4 * kk < 8 * kk;
}

/// Bytes of encode_topk: 12 + min(8k, ⌈d/8⌉ + 4k), k ← min(k, d).
constexpr std::size_t topk_encoded_bytes(Index d, Index k) {
  const auto kk = static_cast<std::size_t>(std::min(k, d));
  return codec_header_bytes + 4 + std::min(8 * kk, (static_cast<std::size_t>(d) + 7) / 8 + 4 * kk);
}

// ---------------------------------------------------------------------------
// binary16
// ---------------------------------------------------------------------------

namespace detail {
/// m / 2^s rounded to nearest, ties to even; 1 ≤ s ≤ 63.
constexpr std::uint64_t codec_rne_shift(std::uint64_t m, int s) {
  const std::uint64_t q = m >> s;
  const std::uint64_t rem = m & ((std::uint64_t{1} << s) - 1);
  const std::uint64_t half = std::uint64_t{1} << (s - 1);
  return (rem > half || (rem == half && (q & 1))) ? q + 1 : q;
}

inline std::string codec_fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}
}  // namespace detail

/// IEEE 754 binary16 bits of x, rounded to nearest even directly from double
/// (no double rounding through float). |x| ≥ 65520 → ±inf; below the smallest
/// subnormal's half (2^-25) → ±0 (2^-25 itself ties to 0); NaN → quiet NaN
/// 0x7E00 with x's sign. Independent of the floating-point environment.
inline std::uint16_t to_fp16(double x) {
  const auto bits = std::bit_cast<std::uint64_t>(x);
  const auto sign = static_cast<std::uint16_t>((bits >> 48) & 0x8000u);
  const auto exp = static_cast<int>((bits >> 52) & 0x7FF);
  const std::uint64_t man = bits & ((std::uint64_t{1} << 52) - 1);
  if (exp == 0x7FF) return static_cast<std::uint16_t>(sign | (man ? 0x7E00u : 0x7C00u));
  if (exp == 0 && man == 0) return sign;
  // |x| = M · 2^E with integer M.
  const std::uint64_t M = exp == 0 ? man : (man | (std::uint64_t{1} << 52));
  const int E = exp == 0 ? -1074 : exp - 1075;
  const int p = 63 - std::countl_zero(M);  // top bit of M
  int e = p + E;                           // |x| ∈ [2^e, 2^(e+1))
  if (e >= 16) return static_cast<std::uint16_t>(sign | 0x7C00u);
  if (e >= -14) {  // normal range: keep 11 significant bits
    std::uint64_t sig = detail::codec_rne_shift(M, p - 10);  // p ≥ 52 here, shift ≥ 42
    if (sig == 2048) {
      sig = 1024;
      ++e;
    }
    if (e >= 16) return static_cast<std::uint16_t>(sign | 0x7C00u);
    return static_cast<std::uint16_t>(sign | static_cast<unsigned>((e + 15) << 10) | static_cast<unsigned>(sig - 1024));
  }
  // subnormal: units of 2^-24; a carry into 1024 yields 0x0400, the smallest normal.
  const int s = -(E + 24);  // > 0 because |x| < 2^-14
  const std::uint64_t q = s >= 64 ? 0 : detail::codec_rne_shift(M, s);
  return static_cast<std::uint16_t>(sign | q);
}

/// The value of binary16 bits h (exact in double). NaN payloads are not kept.
inline double from_fp16(std::uint16_t h) {
  const bool neg = (h & 0x8000u) != 0;
  const int exp = (h >> 10) & 0x1F;
  const int man = h & 0x3FF;
  double v = 0.0;
  if (exp == 0)
    v = std::ldexp(static_cast<double>(man), -24);
  else if (exp == 31)
    v = man ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else
    v = std::ldexp(static_cast<double>(1024 + man), exp - 25);
  return neg ? -v : v;
}

// ---------------------------------------------------------------------------
// Error feedback state
// ---------------------------------------------------------------------------

/// Per-client memory of what a lossy encoder did not send (Stich et al. 2018):
/// the next encode compresses v + residual, and residual becomes
/// (v + residual) − decoded. An empty residual (default) adopts the first
/// vector's dimension; later vectors must match it.
template <class S>
class ErrorFeedback {
 public:
  ErrorFeedback() = default;
  explicit ErrorFeedback(Index dim) : residual_(Vector<S>::Zero(dim)) {}
  const Vector<S>& residual() const { return residual_; }
  Vector<S>& residual() { return residual_; }
  void reset() { residual_.setZero(); }

 private:
  Vector<S> residual_;
};

// ---------------------------------------------------------------------------
// Encoders
// ---------------------------------------------------------------------------

namespace detail {

inline void codec_put_u32(std::vector<std::uint8_t>& b, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(v >> (8 * i));
}
inline void codec_put_f32(std::vector<std::uint8_t>& b, std::size_t at, float v) {
  codec_put_u32(b, at, std::bit_cast<std::uint32_t>(v));
}
inline std::vector<std::uint8_t> codec_header(CodecKind kind, Index dim, std::size_t total) {
  std::vector<std::uint8_t> b(total, 0);
  b[0] = 'F';
  b[1] = 'C';
  b[2] = codec_version;
  b[3] = static_cast<std::uint8_t>(kind);
  codec_put_u32(b, 4, static_cast<std::uint32_t>(dim));
  return b;
}
inline Result<void> codec_check_dim(const char* who, Index d) {
  if (d > static_cast<Index>(std::numeric_limits<std::uint32_t>::max()))
    return make_error(Errc::limit_exceeded,
                      std::string(who) + ": dimension " + std::to_string(d) + " does not fit the format's u32 field");
  return success();
}
/// float nearest to v, then moved one ulp outward if it lies on the wrong side.
inline float codec_f32_down(double v) {
  float f = static_cast<float>(v);
  if (static_cast<double>(f) > v) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
  return f;
}
inline float codec_f32_up(double v) {
  float f = static_cast<float>(v);
  if (static_cast<double>(f) < v) f = std::nextafter(f, std::numeric_limits<float>::infinity());
  return f;
}
constexpr double codec_f32_max = static_cast<double>(std::numeric_limits<float>::max());

}  // namespace detail

/// binary16 encoding, exactly fp16_encoded_bytes(d) bytes. Every value is
/// representable (non-finite inputs stay inf/NaN; aggregation rejects them).
template <class Derived>
Result<std::vector<std::uint8_t>> encode_fp16(const Eigen::MatrixBase<Derived>& v) {
  static_assert(Derived::ColsAtCompileTime == 1, "encode_fp16 takes a column vector");
  const Index d = v.size();
  FLEETDL_TRY(detail::codec_check_dim("encode_fp16", d));
  auto out = detail::codec_header(CodecKind::fp16, d, fp16_encoded_bytes(d));
  for (Index i = 0; i < d; ++i) {
    const std::uint16_t h = to_fp16(static_cast<double>(v[i]));
    const auto at = codec_header_bytes + 2 * static_cast<std::size_t>(i);
    out[at] = static_cast<std::uint8_t>(h & 0xFF);
    out[at + 1] = static_cast<std::uint8_t>(h >> 8);
  }
  return out;
}

/// Unbiased stochastic quantization to `bits` ∈ {2, 4, 8}: with lo/hi the
/// vector's min/max (stored as f32, rounded outward), step = (hi − lo)/(2^b − 1)
/// and x = (v − lo)/step, the code is ⌊x⌋ + Bernoulli(x − ⌊x⌋), so
/// E[lo + code·step] = v and |decoded − v| < step. Draws one uniform per
/// coordinate from `rng`. Exactly quantized_encoded_bytes(d, bits) bytes.
/// Errors: bits not 2/4/8, non-finite values, values beyond the f32 range.
template <class Derived>
Result<std::vector<std::uint8_t>> encode_quantized(const Eigen::MatrixBase<Derived>& v, int bits, Rng& rng) {
  static_assert(Derived::ColsAtCompileTime == 1, "encode_quantized takes a column vector");
  if (bits != 2 && bits != 4 && bits != 8)
    return make_error(Errc::invalid_argument,
                      "encode_quantized: " + std::to_string(bits) + " bits per coordinate; supported are 2, 4 and 8");
  const Index d = v.size();
  FLEETDL_TRY(detail::codec_check_dim("encode_quantized", d));
  if (!v.allFinite()) return make_error(Errc::invalid_argument, "encode_quantized: the vector contains NaN or infinity");
  double lo = 0.0, hi = 0.0;
  if (d > 0) {
    lo = static_cast<double>(v.minCoeff());
    hi = static_cast<double>(v.maxCoeff());
  }
  if (lo < -detail::codec_f32_max || hi > detail::codec_f32_max)
    return make_error(Errc::invalid_argument, "encode_quantized: range [" + detail::codec_fmt(lo) + ", " +
                                                  detail::codec_fmt(hi) + "] exceeds the f32 range of the format");
  const float lo_f = detail::codec_f32_down(lo), hi_f = detail::codec_f32_up(hi);
  const int levels = (1 << bits) - 1;
  const double lo_d = static_cast<double>(lo_f);
  const double step = (static_cast<double>(hi_f) - lo_d) / levels;
  const auto kind = static_cast<CodecKind>(0x10 | bits);
  auto out = detail::codec_header(kind, d, quantized_encoded_bytes(d, bits));
  detail::codec_put_f32(out, 8, lo_f);
  detail::codec_put_f32(out, 12, hi_f);
  const std::size_t base = codec_header_bytes + 8;
  const auto b = static_cast<std::size_t>(bits);
  for (Index i = 0; i < d; ++i) {
    const double u = rng.uniform();  // always drawn: the stream use does not depend on the data
    unsigned code = 0;
    if (step > 0.0) {
      const double x = std::clamp((static_cast<double>(v[i]) - lo_d) / step, 0.0, static_cast<double>(levels));
      const double fl = std::floor(x);
      code = static_cast<unsigned>(fl) + (u < x - fl ? 1u : 0u);
      code = std::min(code, static_cast<unsigned>(levels));
    }
    const std::size_t bit = static_cast<std::size_t>(i) * b;
    out[base + bit / 8] = static_cast<std::uint8_t>(out[base + bit / 8] | (code << (bit % 8)));
  }
  return out;
}

/// Top-k sparsification. Sends the min(k, d) entries of largest |v + r| (r =
/// ef's residual, or 0 without ef; ties broken by lower index) as f32, in the
/// smaller of the pairs/bitmap layouts: exactly topk_encoded_bytes(d, k) bytes.
/// With ef, its residual becomes (v + r) − sent, so over any number of calls
/// Σ sent + residual = Σ v (up to the rounding of v + r). On error ef is
/// unchanged. Errors: k < 0, non-finite values, residual dimension mismatch,
/// a kept value beyond the f32 range.
template <class Derived>
Result<std::vector<std::uint8_t>> encode_topk(const Eigen::MatrixBase<Derived>& v, Index k,
                                              ErrorFeedback<typename Derived::Scalar>* ef = nullptr) {
  static_assert(Derived::ColsAtCompileTime == 1, "encode_topk takes a column vector");
  using S = typename Derived::Scalar;
  const Index d = v.size();
  FLEETDL_TRY(detail::codec_check_dim("encode_topk", d));
  if (k < 0) return make_error(Errc::invalid_argument, "encode_topk: k = " + std::to_string(k) + " is negative");
  if (!v.allFinite()) return make_error(Errc::invalid_argument, "encode_topk: the vector contains NaN or infinity");
  if (ef && ef->residual().size() != 0 && ef->residual().size() != d)
    return make_error(Errc::shape_mismatch, "encode_topk: the error-feedback residual has " +
                                                std::to_string(ef->residual().size()) + " entries, the vector " +
                                                std::to_string(d));
  Vector<S> acc = v;
  if (ef && ef->residual().size() == d) acc += ef->residual();
  if (!acc.allFinite())
    return make_error(Errc::invalid_argument, "encode_topk: vector + residual overflows to infinity");
  const Index kk = std::min(k, d);
  std::vector<std::uint32_t> idx(static_cast<std::size_t>(d));
  std::iota(idx.begin(), idx.end(), std::uint32_t{0});
  const auto larger = [&acc](std::uint32_t a, std::uint32_t b) {
    const S fa = std::abs(acc[static_cast<Index>(a)]), fb = std::abs(acc[static_cast<Index>(b)]);
    return fa > fb || (fa == fb && a < b);
  };
  if (kk < d) {
    std::nth_element(idx.begin(), idx.begin() + kk, idx.end(), larger);
    idx.resize(static_cast<std::size_t>(kk));
  }
  std::sort(idx.begin(), idx.end());
  for (const auto i : idx)
    if (std::abs(static_cast<double>(acc[static_cast<Index>(i)])) > detail::codec_f32_max)
      return make_error(Errc::invalid_argument, "encode_topk: entry " + std::to_string(i) + " = " +
                                                    detail::codec_fmt(static_cast<double>(acc[static_cast<Index>(i)])) +
                                                    " exceeds the f32 range of the format");
  const bool bitmap = topk_uses_bitmap(d, k);
  auto out = detail::codec_header(bitmap ? CodecKind::topk_bitmap : CodecKind::topk_pairs, d, topk_encoded_bytes(d, k));
  detail::codec_put_u32(out, 8, static_cast<std::uint32_t>(kk));
  std::size_t at = codec_header_bytes + 4;
  if (bitmap) {
    for (const auto i : idx) out[at + i / 8] = static_cast<std::uint8_t>(out[at + i / 8] | (1u << (i % 8)));
    at += (static_cast<std::size_t>(d) + 7) / 8;
  } else {
    for (const auto i : idx) {
      detail::codec_put_u32(out, at, i);
      at += 4;
    }
  }
  for (const auto i : idx) {
    const auto ii = static_cast<Index>(i);
    const float sent = static_cast<float>(acc[ii]);
    detail::codec_put_f32(out, at, sent);
    at += 4;
    acc[ii] -= static_cast<S>(sent);  // acc becomes the new residual
  }
  if (ef) ef->residual() = std::move(acc);
  return out;
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// A validated header: the format, the dimension, k (top-k) or bits (quant),
/// and the exact total size the buffer has.
struct CodecHeader {
  CodecKind kind = CodecKind::fp16;
  std::uint32_t dim = 0;
  std::uint32_t k = 0;  ///< top-k: stored entries
  int bits = 16;        ///< bits per stored coordinate code (16 for fp16, 32 for top-k values)
  std::size_t total_bytes = 0;
};

/// Parse and validate the header and the buffer length (not the payload).
/// Errors: truncated (shorter than the header or the payload the header
/// implies), bad_magic, bad_version, unsupported (unknown kind), corrupt
/// (k > dim, trailing bytes).
inline Result<CodecHeader> peek_codec_header(std::span<const std::uint8_t> bytes) {
  const std::size_t n = bytes.size();
  if (n < codec_header_bytes)
    return make_error(Errc::truncated, "codec: buffer of " + std::to_string(n) + " bytes is shorter than the " +
                                           std::to_string(codec_header_bytes) + "-byte header");
  ByteReader r(bytes.data(), n);
  std::uint8_t m0 = 0, m1 = 0, ver = 0, kind = 0;
  std::uint32_t dim = 0;
  (void)r.u8(m0), (void)r.u8(m1), (void)r.u8(ver), (void)r.u8(kind), (void)r.u32(dim);
  if (m0 != 'F' || m1 != 'C') {
    char buf[64];
    std::snprintf(buf, sizeof buf, "codec: bad magic 0x%02x 0x%02x (expected 'F' 'C')", m0, m1);
    return make_error(Errc::bad_magic, buf);
  }
  if (ver != codec_version)
    return make_error(Errc::bad_version, "codec: format version " + std::to_string(ver) + " (this build reads version " +
                                             std::to_string(codec_version) + ")");
  CodecHeader h;
  h.dim = dim;
  // Sizes in 64-bit arithmetic: a hostile dim or k cannot overflow them.
  const std::uint64_t d64 = dim;
  std::uint64_t total = 0;
  switch (kind) {
    case 0x01:
      h.kind = CodecKind::fp16;
      h.bits = 16;
      total = codec_header_bytes + 2 * d64;
      break;
    case 0x12:
    case 0x14:
    case 0x18:
      h.kind = static_cast<CodecKind>(kind);
      h.bits = kind & 0x0F;
      total = codec_header_bytes + 8 + (d64 * static_cast<std::uint64_t>(h.bits) + 7) / 8;
      break;
    case 0x02:
    case 0x03: {
      h.kind = static_cast<CodecKind>(kind);
      h.bits = 32;
      if (!r.u32(h.k))
        return make_error(Errc::truncated, "codec: top-k buffer of " + std::to_string(n) +
                                               " bytes ends before its u32 entry count");
      if (h.k > dim)
        return make_error(Errc::corrupt, "codec: top-k header claims k = " + std::to_string(h.k) +
                                             " entries for dimension " + std::to_string(dim));
      const std::uint64_t k64 = h.k;
      total = codec_header_bytes + 4 + (kind == 0x02 ? 8 * k64 : (d64 + 7) / 8 + 4 * k64);
      break;
    }
    default: {
      char buf[64];
      std::snprintf(buf, sizeof buf, "codec: unknown codec kind 0x%02x", kind);
      return make_error(Errc::unsupported, buf);
    }
  }
  if (static_cast<std::uint64_t>(n) < total)
    return make_error(Errc::truncated, "codec: payload needs " + std::to_string(total) +
                                           " bytes for dimension " + std::to_string(dim) + ", buffer has " +
                                           std::to_string(n));
  if (static_cast<std::uint64_t>(n) > total)
    return make_error(Errc::corrupt, "codec: " + std::to_string(static_cast<std::uint64_t>(n) - total) +
                                         " trailing bytes after the " + std::to_string(total) + "-byte payload");
  h.total_bytes = static_cast<std::size_t>(total);
  return h;
}

/// Decode any codec buffer to a vector of `expected_dim` coordinates. Validates
/// everything before allocating; a dimension other than expected_dim is a
/// shape_mismatch (so the allocation is bounded by what the caller expects).
/// Decoded fp16 may hold inf/NaN if the sender's values did; top-k and
/// quantized payloads with non-finite floats are rejected as corrupt.
template <class S>
Result<Vector<S>> decode_update(std::span<const std::uint8_t> bytes, Index expected_dim) {
  auto hr = peek_codec_header(bytes);
  if (!hr) return std::move(hr).error();
  const CodecHeader h = *hr;
  const Index d = static_cast<Index>(h.dim);
  if (d != expected_dim)
    return make_error(Errc::shape_mismatch, "codec: update has dimension " + std::to_string(d) + ", expected " +
                                                std::to_string(expected_dim));
  const std::uint8_t* p = bytes.data();
  const auto rd_u32 = [p](std::size_t at) {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(p[at + static_cast<std::size_t>(i)]) << (8 * i);
    return v;
  };
  const auto rd_f32 = [&](std::size_t at) { return std::bit_cast<float>(rd_u32(at)); };

  switch (h.kind) {
    case CodecKind::fp16: {
      Vector<S> out(d);
      for (Index i = 0; i < d; ++i) {
        const auto at = codec_header_bytes + 2 * static_cast<std::size_t>(i);
        const auto bitsv = static_cast<std::uint16_t>(p[at] | (p[at + 1] << 8));
        out[i] = static_cast<S>(from_fp16(bitsv));
      }
      return out;
    }
    case CodecKind::quant2:
    case CodecKind::quant4:
    case CodecKind::quant8: {
      const float lo_f = rd_f32(8), hi_f = rd_f32(12);
      if (!std::isfinite(lo_f) || !std::isfinite(hi_f) || !(lo_f <= hi_f))
        return make_error(Errc::corrupt, "codec: " + std::to_string(h.bits) + "-bit quantization range [" +
                                             detail::codec_fmt(lo_f) + ", " + detail::codec_fmt(hi_f) +
                                             "] is not finite or has lo > hi");
      const std::size_t base = codec_header_bytes + 8;
      const auto b = static_cast<std::size_t>(h.bits);
      const std::size_t used_bits = static_cast<std::size_t>(d) * b;
      if (used_bits % 8 != 0) {
        const std::uint8_t last = p[base + used_bits / 8];
        if ((last >> (used_bits % 8)) != 0)
          return make_error(Errc::corrupt, "codec: padding bits after the last " + std::to_string(h.bits) +
                                               "-bit code are not zero");
      }
      const int levels = (1 << h.bits) - 1;
      const double lo_d = static_cast<double>(lo_f);
      const double step = (static_cast<double>(hi_f) - lo_d) / levels;
      const unsigned mask = static_cast<unsigned>(levels);
      Vector<S> out(d);
      for (Index i = 0; i < d; ++i) {
        const std::size_t bit = static_cast<std::size_t>(i) * b;
        const unsigned code = (static_cast<unsigned>(p[base + bit / 8]) >> (bit % 8)) & mask;
        out[i] = static_cast<S>(lo_d + static_cast<double>(code) * step);
      }
      return out;
    }
    case CodecKind::topk_pairs:
    case CodecKind::topk_bitmap: {
      const std::size_t kk = h.k;
      std::size_t vals = 0;
      if (h.kind == CodecKind::topk_pairs) {
        const std::size_t base = codec_header_bytes + 4;
        for (std::size_t j = 0; j < kk; ++j) {
          const std::uint32_t ix = rd_u32(base + 4 * j);
          if (ix >= h.dim)
            return make_error(Errc::corrupt, "codec: top-k index " + std::to_string(ix) + " at position " +
                                                 std::to_string(j) + " is out of range for dimension " +
                                                 std::to_string(h.dim));
          if (j > 0 && ix <= rd_u32(base + 4 * (j - 1)))
            return make_error(Errc::corrupt, "codec: top-k index " + std::to_string(ix) + " at position " +
                                                 std::to_string(j) + " is not greater than the previous index " +
                                                 std::to_string(rd_u32(base + 4 * (j - 1))));
        }
        vals = base + 4 * kk;
      } else {
        const std::size_t base = codec_header_bytes + 4;
        const std::size_t nbytes = (static_cast<std::size_t>(d) + 7) / 8;
        std::size_t count = 0;
        for (std::size_t j = 0; j < nbytes; ++j) count += static_cast<std::size_t>(std::popcount(p[base + j]));
        if (d % 8 != 0 && (p[base + nbytes - 1] >> (d % 8)) != 0)
          return make_error(Errc::corrupt, "codec: top-k bitmap has bits set beyond dimension " + std::to_string(d));
        if (count != kk)
          return make_error(Errc::corrupt, "codec: top-k bitmap has " + std::to_string(count) +
                                               " bits set, the header says k = " + std::to_string(kk));
        vals = base + nbytes;
      }
      for (std::size_t j = 0; j < kk; ++j)
        if (!std::isfinite(rd_f32(vals + 4 * j)))
          return make_error(Errc::corrupt, "codec: top-k value at position " + std::to_string(j) + " is not finite");
      Vector<S> out = Vector<S>::Zero(d);
      if (h.kind == CodecKind::topk_pairs) {
        for (std::size_t j = 0; j < kk; ++j)
          out[static_cast<Index>(rd_u32(codec_header_bytes + 4 + 4 * j))] = static_cast<S>(rd_f32(vals + 4 * j));
      } else {
        std::size_t j = 0;
        for (Index i = 0; i < d; ++i)
          if ((p[codec_header_bytes + 4 + static_cast<std::size_t>(i) / 8] >> (i % 8)) & 1u)
            out[i] = static_cast<S>(rd_f32(vals + 4 * j++));
      }
      return out;
    }
  }
  return make_error(Errc::unsupported, "codec: unhandled codec kind");
}

/// Error feedback around any encoder (Karimireddy et al. 2019): encodes
/// v + residual with `encode(const Vector<S>&) -> Result<bytes>`, then sets
/// residual = (v + residual) − decode(bytes). On error ef is unchanged.
template <class Derived, class Encode>
Result<std::vector<std::uint8_t>> encode_with_feedback(const Eigen::MatrixBase<Derived>& v,
                                                       ErrorFeedback<typename Derived::Scalar>& ef, Encode&& encode) {
  using S = typename Derived::Scalar;
  const Index d = v.size();
  if (ef.residual().size() != 0 && ef.residual().size() != d)
    return make_error(Errc::shape_mismatch, "encode_with_feedback: the residual has " +
                                                std::to_string(ef.residual().size()) + " entries, the vector " +
                                                std::to_string(d));
  Vector<S> acc = v;
  if (ef.residual().size() == d) acc += ef.residual();
  Result<std::vector<std::uint8_t>> bytes = encode(static_cast<const Vector<S>&>(acc));
  if (!bytes) return std::move(bytes).error();
  auto dec = decode_update<S>(*bytes, d);
  if (!dec) return std::move(dec).error();
  ef.residual() = acc - *dec;
  return bytes;
}

}  // namespace fleetdl::fl
