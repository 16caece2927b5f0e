// fleetdl/micro/weight_codec.hpp — the compressed int8 weight encoding of the
// micro blob (tensor encoding 1, micro/blob.hpp) and its streaming decoder.
// Freestanding: no heap, no exceptions, no RTTI.
//
// Why: after pruning and clustering, a layer's int8 weights are mostly zeros
// and a few distinct values. Stored dense they cost a byte each; stored this
// way they cost what their entropy allows, and the ratio `fleetdl compress`
// reports is the size of the blob that really runs. The kernels never see the
// encoding: the interpreter decodes one output channel's weights (one OHWI
// filter, or one row of a dense layer) at a time into a scratch row in the
// arena's persistent tail and runs the kernel for that channel, so the RAM
// cost is one row, not the tensor.
//
// Encoding 1, "zero-run Huffman". Symbols: 0 .. k-1 stand for codebook[s]
// (one int8 value); k .. k+r-1 stand for a run of s-k+1 zeros. The elements,
// in the tensor's row-major order, are written as symbols — a run may span
// channel boundaries — and the symbols are Huffman-coded with canonical codes
// (RFC 1951 §3.2.2: shorter codes first, equal lengths in symbol order),
// MSB-first. Layout (little-endian), at a 16-aligned data offset:
//    0  u16  k   codebook entries, 0..256
//    2  u16  r   longest zero run, 0..kMaxZeroRun
//    4  u8   L   longest code length, 1..kMaxCodeBits
//    5  u8   reserved, 0
//    6  u16  m   symbols that have a code, 1..k+r
//    8  u32  n   element count: must equal the tensor's (so a writer that
//                encoded another count is caught, not run with shifted weights)
//   12  u16  count[L]   number of codes of length 1..L (sum = m; the code may
//                       be incomplete but not over-subscribed)
//       u16  symbol[m]  the coded symbols in canonical order, each < k+r
//       i8   codebook[k], each in [-127, 127]
//       bit stream up to the end of the data; the last byte padded with 0 bits
// The tensor's data length is the encoded length. The verifier
// (check_weight_encoding) decodes the whole stream once: it must yield
// exactly n elements with no run running past the end, end within the last
// byte, and pad with zeros. Its time is linear in the stream's bits plus the
// codebook symbols, not in n (runs are skipped whole), so a short stream
// declaring 2^31 zeros cannot stall it. A stream it accepted decodes the
// same way at every invoke(); the decoder still checks every bit read against
// the end, so even a stream it did not check cannot make it read out of
// bounds.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fleetdl::micro {

enum class WeightEncoding : std::uint16_t { raw = 0, zero_run_huffman = 1 };

inline constexpr std::uint32_t kMaxCodebook = 256;
inline constexpr std::uint32_t kMaxZeroRun = 4096;
inline constexpr std::uint32_t kMaxCodeBits = 15;
inline constexpr std::size_t kCodecHeaderBytes = 12;

// Little-endian loads from unaligned bytes (no aliasing, no alignment
// needs), shared with micro/blob.hpp, which includes this header.
namespace detail {
constexpr std::uint16_t load_u16(const std::uint8_t* p) noexcept {
  return static_cast<std::uint16_t>(p[0] | (p[1] << 8));
}
constexpr std::uint32_t load_u32(const std::uint8_t* p) noexcept {
  return static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) |
         (static_cast<std::uint32_t>(p[2]) << 16) | (static_cast<std::uint32_t>(p[3]) << 24);
}
}  // namespace detail

// The parsed header of an encoded tensor.
struct WeightCodecHeader {
  std::uint32_t k = 0, r = 0, max_len = 0, m = 0, n = 0;
  const std::uint8_t* counts = nullptr;    // u16[max_len]
  const std::uint8_t* symbols = nullptr;   // u16[m]
  const std::int8_t* codebook = nullptr;   // [k]
  const std::uint8_t* stream = nullptr;
  std::uint64_t stream_bits = 0;
};

// Parse and check the header (not the stream). Returns nullptr on success,
// or a static message naming what is wrong.
namespace detail {
// The header fields (len >= kCodecHeaderBytes).
inline void read_codec_fields(const std::uint8_t* data, WeightCodecHeader& h) noexcept {
  h.k = load_u16(data);
  h.r = load_u16(data + 2);
  h.max_len = data[4];
  h.m = load_u16(data + 6);
  h.n = load_u32(data + 8);
}
// Table and stream pointers; false if the tables do not fit in len.
inline bool codec_pointers(const std::uint8_t* data, std::uint64_t len, WeightCodecHeader& h) noexcept {
  const std::uint64_t tables = kCodecHeaderBytes + 2ull * h.max_len + 2ull * h.m + h.k;
  if (tables > len) return false;
  h.counts = data + kCodecHeaderBytes;
  h.symbols = h.counts + 2 * h.max_len;
  h.codebook = reinterpret_cast<const std::int8_t*>(h.symbols + 2 * h.m);
  h.stream = data + tables;
  h.stream_bits = (len - tables) * 8;
  return true;
}
}  // namespace detail

// The header of an encoding parse_weight_codec() has already accepted (the
// interpreter's per-invoke path): fields and pointers only, no validation
// loops. Still refuses data too short for its tables, and WeightStream checks
// every bit it reads, so even unverified bytes cannot make it read out of bounds.
inline bool view_weight_codec(const std::uint8_t* data, std::uint64_t len, WeightCodecHeader& h) noexcept {
  if (len < kCodecHeaderBytes) return false;
  detail::read_codec_fields(data, h);
  if (h.max_len > kMaxCodeBits) return false;
  return detail::codec_pointers(data, len, h);
}

inline const char* parse_weight_codec(const std::uint8_t* data, std::uint64_t len, WeightCodecHeader& h) noexcept {
  if (len < kCodecHeaderBytes) return "encoded weights: shorter than the 12-byte codec header";
  detail::read_codec_fields(data, h);
  if (data[5] != 0) return "encoded weights: reserved header byte is not 0";
  if (h.k > kMaxCodebook) return "encoded weights: codebook larger than 256 entries";
  if (h.r > kMaxZeroRun) return "encoded weights: zero run limit above 4096";
  if (h.k + h.r < 1) return "encoded weights: empty alphabet (no codebook and no runs)";
  if (h.max_len < 1 || h.max_len > kMaxCodeBits) return "encoded weights: longest code length must be 1..15";
  if (h.m < 1 || h.m > h.k + h.r) return "encoded weights: coded symbol count must be 1..k+r";
  if (!detail::codec_pointers(data, len, h)) return "encoded weights: code tables run past the data";
  std::uint64_t sum = 0;
  std::int64_t left = 1;  // Kraft: codes still available at the current length
  for (std::uint32_t b = 1; b <= h.max_len; ++b) {
    const std::uint32_t c = detail::load_u16(h.counts + 2 * (b - 1));
    sum += c;
    left = (left << 1) - static_cast<std::int64_t>(c);
    if (left < 0) return "encoded weights: code lengths are over-subscribed";
  }
  if (sum != h.m) return "encoded weights: code length counts do not add up to the coded symbol count";
  for (std::uint32_t i = 0; i < h.m; ++i)
    if (detail::load_u16(h.symbols + 2 * i) >= h.k + h.r) return "encoded weights: a coded symbol is outside the alphabet";
  for (std::uint32_t i = 0; i < h.k; ++i)
    if (h.codebook[i] == -128) return "encoded weights: codebook value -128 (weights are symmetric, [-127, 127])";
  return nullptr;
}

// Streaming decoder over a parsed header: next() yields the elements in
// order. Trivially copyable; holds no buffers.
class WeightStream {
 public:
  WeightStream() = default;
  explicit WeightStream(const WeightCodecHeader& h) noexcept : h_(h) {}

  // The next element into `out`; false when the stream is exhausted or holds
  // an invalid code (the verifier rules both out for an accepted blob).
  bool next(std::int8_t& out) noexcept {
    if (pending_zeros_ > 0) {
      --pending_zeros_;
      out = 0;
      return true;
    }
    std::int64_t code = 0, first = 0, index = 0;
    for (std::uint32_t b = 1; b <= h_.max_len; ++b) {
      if (bit_ >= h_.stream_bits) return false;
      code |= (h_.stream[bit_ >> 3] >> (7 - (bit_ & 7))) & 1;
      ++bit_;
      const std::int64_t cnt = detail::load_u16(h_.counts + 2 * (b - 1));
      if (code - first < cnt) {
        const std::uint32_t s = detail::load_u16(h_.symbols + 2 * static_cast<std::size_t>(index + code - first));
        if (s < h_.k) {
          out = h_.codebook[s];
        } else {
          pending_zeros_ = s - h_.k;  // a run of s-k+1 zeros: this one and s-k more
          out = 0;
        }
        return true;
      }
      index += cnt;
      first = (first + cnt) << 1;
      code <<= 1;
    }
    return false;
  }

  // Decode n elements into dst; false if the stream ends or fails first.
  bool read(std::int8_t* dst, std::uint32_t n) noexcept {
    for (std::uint32_t i = 0; i < n; ++i)
      if (!next(dst[i])) return false;
    return true;
  }

  // Consume up to `max` zeros of the current run at once; returns how many.
  std::uint32_t skip_zeros(std::uint64_t max) noexcept {
    const std::uint32_t z = pending_zeros_ < max ? pending_zeros_ : static_cast<std::uint32_t>(max);
    pending_zeros_ -= z;
    return z;
  }

  std::uint32_t pending_zeros() const noexcept { return pending_zeros_; }
  std::uint64_t bits_read() const noexcept { return bit_; }

 private:
  WeightCodecHeader h_{};
  std::uint64_t bit_ = 0;
  std::uint32_t pending_zeros_ = 0;
};

// Complete check of an encoded tensor of `count` elements: the header, then
// the whole stream decoded once. nullptr when it is valid, else a static message.
inline const char* check_weight_encoding(const std::uint8_t* data, std::uint64_t len, std::uint64_t count) noexcept {
  WeightCodecHeader h;
  if (const char* e = parse_weight_codec(data, len, h)) return e;
  if (h.n != count) return "encoded weights: element count differs from the tensor's";
  WeightStream s(h);
  std::int8_t v = 0;
  for (std::uint64_t i = 0; i < count;) {
    if (!s.next(v)) return "encoded weights: the stream ends early or holds an invalid code";
    ++i;
    i += s.skip_zeros(count - i);
  }
  if (s.pending_zeros() != 0) return "encoded weights: a zero run runs past the last element";
  const std::uint64_t used = s.bits_read();
  if ((used + 7) / 8 * 8 != h.stream_bits) return "encoded weights: bytes left over after the last element";
  for (std::uint64_t b = used; b < h.stream_bits; ++b)
    if ((h.stream[b >> 3] >> (7 - (b & 7))) & 1) return "encoded weights: padding bits after the last element are not 0";
  return nullptr;
}

}  // namespace fleetdl::micro
