// tests/unit/test_fl_codec.cpp — fl/codec.hpp: binary16 rounding (exhaustive
// round trip, edge table, _Float16 cross-check where the compiler has it),
// quantization error bounds and unbiasedness, top-k exactness and error
// feedback bookkeeping, byte counts equal to the closed formulas, and a table
// of corrupted and truncated buffers that must be rejected with clear errors.
#include "fleetdl/fl/codec.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <set>
#include <string>
#include <vector>

namespace {

using fleetdl::Errc;
using fleetdl::Index;
using fleetdl::Rng;
using fleetdl::Vector;
namespace fl = fleetdl::fl;
using Bytes = std::vector<std::uint8_t>;

template <class S>
Vector<S> random_vector(Index d, Rng& rng, double scale = 1.0) {
  Vector<S> v(d);
  for (Index i = 0; i < d; ++i) v[i] = static_cast<S>(scale * rng.normal());
  return v;
}

void put_u32(Bytes& b, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(v >> (8 * i));
}
void put_f32(Bytes& b, std::size_t at, float v) {
  std::uint32_t u = 0;
  std::memcpy(&u, &v, 4);
  put_u32(b, at, u);
}

bool is_nan16(std::uint16_t h) { return (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu) != 0; }

}  // namespace

// ---------------------------------------------------------------------------
// binary16
// ---------------------------------------------------------------------------

TEST_CASE("fp16: every binary16 value round-trips exactly", "[fl][codec]") {
  for (std::uint32_t h = 0; h <= 0xFFFF; ++h) {
    const auto b = static_cast<std::uint16_t>(h);
    const double v = fl::from_fp16(b);
    const std::uint16_t back = fl::to_fp16(v);
    if (is_nan16(b)) {
      CHECK(std::isnan(v));
      CHECK(is_nan16(back));
      CHECK((back & 0x8000u) == (b & 0x8000u));
    } else if (back != b) {
      FAIL("0x" << std::hex << h << " -> " << v << " -> 0x" << back);
    }
  }
}

TEST_CASE("fp16: rounding to nearest even, subnormals, overflow, inf and NaN", "[fl][codec]") {
  struct Case {
    double x;
    std::uint16_t h;
  };
  const double two_m25 = std::ldexp(1.0, -25), two_m24 = std::ldexp(1.0, -24);
  const Case cases[] = {
      {0.0, 0x0000},
      {-0.0, 0x8000},
      {1.0, 0x3C00},
      {-2.0, 0xC000},
      {65504.0, 0x7BFF},                        // largest finite
      {65519.99, 0x7BFF},                       // below the halfway point to 2^16
      {65520.0, 0x7C00},                        // halfway ties to even = overflow → inf
      {1e9, 0x7C00},
      {-1e9, 0xFC00},
      {std::numeric_limits<double>::infinity(), 0x7C00},
      {-std::numeric_limits<double>::infinity(), 0xFC00},
      {std::ldexp(1.0, -14), 0x0400},           // smallest normal
      {two_m24, 0x0001},                        // smallest subnormal
      {two_m25, 0x0000},                        // half of it ties to even (0)
      {two_m25 * (1 + 0x1p-52), 0x0001},        // just above the tie
      {3 * two_m25, 0x0002},                    // 1.5 units → 2
      {5 * two_m25, 0x0002},                    // 2.5 units → 2
      {7 * two_m25, 0x0004},                    // 3.5 units → 4
      {std::ldexp(1.0, -14) - two_m25, 0x0400}, // 1023.5 units carries into the smallest normal
      {1023 * two_m24, 0x03FF},                 // largest subnormal
      {1.0 + 0x1p-11, 0x3C00},                  // tie → even
      {1.0 + 3 * 0x1p-11, 0x3C02},              // tie → even (up)
      {1.0 + 0x1p-11 + 0x1p-40, 0x3C01},        // just above the tie
      {2047.5, 0x6800},                         // 2047.5 ties to 2048 (even)
      {1e-10, 0x0000},
      {-1e-10, 0x8000},
      {5e-324, 0x0000},                         // a double subnormal
      {65505.0, 0x7BFF},
      {0.1, 0x2E66},
  };
  for (const auto& c : cases) {
    CAPTURE(c.x);
    CHECK(fl::to_fp16(c.x) == c.h);
  }
  const std::uint16_t qn = fl::to_fp16(std::numeric_limits<double>::quiet_NaN());
  CHECK(qn == 0x7E00);
  CHECK(fl::to_fp16(-std::numeric_limits<double>::quiet_NaN()) == 0xFE00);
  CHECK(std::isnan(fl::from_fp16(0x7C01)));
  CHECK(fl::from_fp16(0xFC00) == -std::numeric_limits<double>::infinity());
  CHECK(std::signbit(fl::from_fp16(0x8000)));
}

TEST_CASE("fp16: relative error at most 2^-11 in the normal range", "[fl][codec]") {
  Rng rng(1);
  for (int i = 0; i < 200000; ++i) {
    const double mag = std::ldexp(1.0 + rng.uniform(), static_cast<int>(rng.below(30)) - 14);  // [2^-14, 2^16)
    const double x = (rng.below(2) ? -1 : 1) * std::min(mag, 65504.0);
    const double back = fl::from_fp16(fl::to_fp16(x));
    REQUIRE(std::abs(back - x) <= std::ldexp(std::abs(x), -11));
  }
}

#if defined(__FLT16_MAX__)
TEST_CASE("fp16: agrees bit for bit with the compiler's _Float16 conversion", "[fl][codec]") {
  Rng rng(2);
  for (int i = 0; i < 300000; ++i) {
    // spread over the whole range, including subnormals, ties and overflow
    const int e = static_cast<int>(rng.below(50)) - 30;
    double x = std::ldexp(rng.uniform(1.0, 2.0), e);
    if (i % 3 == 0) x = std::ldexp(std::round(std::ldexp(x, 12 - e)) / 4096.0 + 0x1p-13 * (i % 2), e);  // near ties
    if (rng.below(2)) x = -x;
    const _Float16 ref = static_cast<_Float16>(x);
    std::uint16_t ref_bits = 0;
    std::memcpy(&ref_bits, &ref, 2);
    const std::uint16_t mine = fl::to_fp16(x);
    if (mine != ref_bits) FAIL("x = " << x << " mine 0x" << std::hex << mine << " ref 0x" << ref_bits);
    const float xf = static_cast<float>(x);
    const _Float16 reff = static_cast<_Float16>(xf);
    std::memcpy(&ref_bits, &reff, 2);
    if (fl::to_fp16(static_cast<double>(xf)) != ref_bits) FAIL("float x = " << xf);
  }
}
#endif

TEMPLATE_TEST_CASE("fp16 codec: exact size, round trip within 2^-11", "[fl][codec]", float, double) {
  using S = TestType;
  Rng rng(3);
  for (Index d : {Index{0}, Index{1}, Index{17}, Index{5000}}) {
    const Vector<S> v = random_vector<S>(d, rng, 10.0);
    auto bytes = fl::encode_fp16(v);
    REQUIRE(bytes.ok());
    CHECK(bytes->size() == fl::fp16_encoded_bytes(d));
    CHECK(bytes->size() == 8 + 2 * static_cast<std::size_t>(d));
    auto back = fl::decode_update<S>(*bytes, d);
    REQUIRE(back.ok());
    REQUIRE(back->size() == d);
    for (Index i = 0; i < d; ++i) {
      const double x = static_cast<double>(v[i]);
      if (std::abs(x) >= std::ldexp(1.0, -14))
        CHECK(std::abs(static_cast<double>((*back)[i]) - x) <= std::ldexp(std::abs(x), -11));
      else
        CHECK(std::abs(static_cast<double>((*back)[i]) - x) <= std::ldexp(1.0, -25));
    }
  }
}

// ---------------------------------------------------------------------------
// Quantization
// ---------------------------------------------------------------------------

TEMPLATE_TEST_CASE("quantization: exact size, error below one step, constant vectors exact", "[fl][codec]", float,
                   double) {
  using S = TestType;
  Rng rng(4), qrng(5);
  for (int bits : {2, 4, 8}) {
    for (Index d : {Index{0}, Index{1}, Index{3}, Index{7}, Index{1000}, Index{1001}}) {
      CAPTURE(bits, d);
      const Vector<S> v = random_vector<S>(d, rng, 3.0);
      auto bytes = fl::encode_quantized(v, bits, qrng);
      REQUIRE(bytes.ok());
      CHECK(bytes->size() == fl::quantized_encoded_bytes(d, bits));
      CHECK(bytes->size() == 16 + (static_cast<std::size_t>(d) * static_cast<std::size_t>(bits) + 7) / 8);
      auto back = fl::decode_update<S>(*bytes, d);
      REQUIRE(back.ok());
      if (d == 0) continue;
      const double range = static_cast<double>(v.maxCoeff()) - static_cast<double>(v.minCoeff());
      const double step = range / ((1 << bits) - 1);
      const double tol = step * (1 + 1e-5) + 1e-6 * (std::abs(static_cast<double>(v.maxCoeff())) +
                                                    std::abs(static_cast<double>(v.minCoeff())));
      for (Index i = 0; i < d; ++i) CHECK(std::abs(static_cast<double>((*back)[i] - v[i])) <= tol);
    }
    const Vector<S> c = Vector<S>::Constant(33, S(0.625));
    auto cb = fl::encode_quantized(c, bits, qrng);
    REQUIRE(cb.ok());
    CHECK(*fl::decode_update<S>(*cb, 33) == c);
  }
  // deterministic given the seed
  const Vector<S> v = random_vector<S>(100, rng);
  Rng a(9), b(9);
  CHECK(*fl::encode_quantized(v, 4, a) == *fl::encode_quantized(v, 4, b));
  // argument errors
  CHECK(fl::encode_quantized(v, 3, qrng).error().message.find("supported are 2, 4 and 8") != std::string::npos);
  Vector<S> bad = v;
  bad[5] = std::numeric_limits<S>::quiet_NaN();
  CHECK(fl::encode_quantized(bad, 8, qrng).error().code == Errc::invalid_argument);
  if constexpr (std::is_same_v<S, double>) {
    Vector<S> huge = v;
    huge[0] = 1e300;
    CHECK(fl::encode_quantized(huge, 8, qrng).error().message.find("f32 range") != std::string::npos);
  }
}

TEST_CASE("quantization is unbiased: E[decode(encode(v))] = v", "[fl][codec]") {
  using S = double;
  Rng rng(6), qrng(7);
  const Index d = 300;
  const int trials = 4000;
  for (int bits : {2, 4, 8}) {
    CAPTURE(bits);
    Vector<S> v = random_vector<S>(d, rng);
    // lo/hi as the encoder stored them (f32, rounded outward)
    const Bytes first = *fl::encode_quantized(v, bits, qrng);
    float lo_f = 0, hi_f = 0;
    std::memcpy(&lo_f, &first[8], 4);
    std::memcpy(&hi_f, &first[12], 4);
    const double lo = lo_f, step = (static_cast<double>(hi_f) - lo) / ((1 << bits) - 1);
    CHECK(lo <= v.minCoeff());
    CHECK(static_cast<double>(hi_f) >= v.maxCoeff());
    Vector<double> sum = Vector<double>::Zero(d);
    for (int t = 0; t < trials; ++t) sum += *fl::decode_update<S>(*fl::encode_quantized(v, bits, qrng), d);
    const Vector<double> mean = sum / trials;
    // per coordinate: the code is ⌊x⌋ + Bernoulli(p), Var = step²·p(1−p)
    double zsum = 0.0;
    for (Index i = 0; i < d; ++i) {
      const double x = (v[i] - lo) / step;
      const double p = x - std::floor(x);
      const double sd = step * std::sqrt(std::max(p * (1 - p), 1e-4) / trials);
      CHECK(std::abs(mean[i] - v[i]) <= 5.5 * sd);
      zsum += (mean[i] - v[i]) / sd;
    }
    CHECK(std::abs(zsum / std::sqrt(static_cast<double>(d))) < 4.0);  // no systematic drift
  }
}

// ---------------------------------------------------------------------------
// Top-k and error feedback
// ---------------------------------------------------------------------------

TEST_CASE("top-k: keeps the k largest magnitudes exactly, picks the smaller layout", "[fl][codec]") {
  using S = float;
  Rng rng(8);
  for (Index d : {Index{1}, Index{10}, Index{100}, Index{1000}, Index{4097}}) {
    for (Index k : {Index{0}, Index{1}, d / 64, d / 16, d / 8, d / 2, d, d + 5}) {
      CAPTURE(d, k);
      const Vector<S> v = random_vector<S>(d, rng);
      auto bytes = fl::encode_topk(v, k);
      REQUIRE(bytes.ok());
      const Index kk = std::min(k, d);
      const std::size_t pairs = 12 + 8 * static_cast<std::size_t>(kk);
      const std::size_t bitmap = 12 + (static_cast<std::size_t>(d) + 7) / 8 + 4 * static_cast<std::size_t>(kk);
      CHECK(bytes->size() == fl::topk_encoded_bytes(d, k));
      CHECK(bytes->size() == std::min(pairs, bitmap));
      CHECK((*bytes)[3] == (bitmap < pairs ? 0x03 : 0x02));
      CHECK(fl::topk_uses_bitmap(d, k) == (bitmap < pairs));
      auto back = fl::decode_update<S>(*bytes, d);
      REQUIRE(back.ok());
      // the kept set is exactly the kk largest |v|, values bit-exact
      std::vector<float> mags(v.data(), v.data() + d);
      for (auto& m : mags) m = std::abs(m);
      std::sort(mags.begin(), mags.end(), std::greater<>());
      Index kept = 0;
      for (Index i = 0; i < d; ++i) {
        if ((*back)[i] != 0.0f) {
          ++kept;
          CHECK((*back)[i] == v[i]);
          CHECK(std::abs(v[i]) >= mags[static_cast<std::size_t>(kk - 1)]);
        }
      }
      CHECK(kept == kk);
    }
  }
  // ties go to the lower index
  Vector<S> t(6);
  t << 1, -2, 2, 0.5, -2, 1;
  auto tb = fl::encode_topk(t, 2);
  REQUIRE(tb.ok());
  Vector<S> expect(6);
  expect << 0, -2, 2, 0, 0, 0;
  CHECK(*fl::decode_update<S>(*tb, 6) == expect);
  CHECK(fl::encode_topk(t, -1).error().code == Errc::invalid_argument);
}

TEST_CASE("top-k error feedback: sum of sent + final residual equals the sum of inputs", "[fl][codec]") {
  SECTION("exact with dyadic float inputs") {
    using S = float;
    Rng rng(10);
    const Index d = 257, k = 16;
    fl::ErrorFeedback<S> ef;
    Vector<double> sum_in = Vector<double>::Zero(d), sum_sent = Vector<double>::Zero(d);
    for (int round = 0; round < 200; ++round) {
      Vector<S> v(d);
      for (Index i = 0; i < d; ++i) v[i] = static_cast<S>(static_cast<int>(rng.below(17)) - 8) / 16.0f;
      const Vector<S> residual_before = ef.residual().size() ? ef.residual() : Vector<S>::Zero(d);
      auto bytes = fl::encode_topk(v, k, &ef);
      REQUIRE(bytes.ok());
      const Vector<S> sent = *fl::decode_update<S>(*bytes, d);
      // this round's bookkeeping: residual' = v + residual − sent, exactly
      CHECK(ef.residual() == (v + residual_before - sent));
      sum_in += v.cast<double>();
      sum_sent += sent.cast<double>();
    }
    CHECK(sum_sent + ef.residual().cast<double>() == sum_in);
    CHECK(ef.residual().cwiseAbs().maxCoeff() > 0.0f);  // something is still pending
  }
  SECTION("double updates: values travel as f32, the rounding stays in the residual") {
    using S = double;
    Rng rng(11);
    const Index d = 1000, k = 50;
    fl::ErrorFeedback<S> ef(d);
    Vector<double> sum_in = Vector<double>::Zero(d), sum_sent = Vector<double>::Zero(d);
    for (int round = 0; round < 300; ++round) {
      const Vector<S> v = random_vector<S>(d, rng, 0.1);
      auto bytes = fl::encode_topk(v, k, &ef);
      REQUIRE(bytes.ok());
      sum_in += v;
      sum_sent += *fl::decode_update<S>(*bytes, d);
    }
    CHECK((sum_sent + ef.residual() - sum_in).cwiseAbs().maxCoeff() < 1e-10);
  }
  SECTION("dimension mismatch leaves the residual untouched") {
    fl::ErrorFeedback<float> ef(4);
    ef.residual() << 1, 2, 3, 4;
    const Vector<float> before = ef.residual();
    CHECK(fl::encode_topk(Vector<float>::Zero(5), 2, &ef).error().code == Errc::shape_mismatch);
    CHECK(ef.residual() == before);
    ef.reset();
    CHECK(ef.residual().isZero());
  }
}

TEST_CASE("error feedback around the quantizer carries the quantization error", "[fl][codec]") {
  using S = double;
  Rng rng(12), qrng(13);
  const Index d = 500;
  fl::ErrorFeedback<S> ef;
  Vector<double> sum_in = Vector<double>::Zero(d), sum_sent = Vector<double>::Zero(d);
  for (int round = 0; round < 100; ++round) {
    const Vector<S> v = random_vector<S>(d, rng);
    auto bytes = fl::encode_with_feedback(v, ef, [&](const Vector<S>& x) { return fl::encode_quantized(x, 2, qrng); });
    REQUIRE(bytes.ok());
    CHECK(bytes->size() == fl::quantized_encoded_bytes(d, 2));
    sum_in += v;
    sum_sent += *fl::decode_update<S>(*bytes, d);
  }
  CHECK((sum_sent + ef.residual() - sum_in).cwiseAbs().maxCoeff() < 1e-9);
  // the residual stays bounded by a quantization step, it does not accumulate
  CHECK(ef.residual().cwiseAbs().maxCoeff() < 10.0);
}

// ---------------------------------------------------------------------------
// Untrusted buffers
// ---------------------------------------------------------------------------

TEST_CASE("decode_update rejects corrupted and truncated buffers with clear errors", "[fl][codec]") {
  Rng rng(14), qrng(15);
  const Vector<float> v = random_vector<float>(40, rng);
  const Bytes fp16 = *fl::encode_fp16(v);
  const Bytes q2 = *fl::encode_quantized(Vector<float>(v.head(3)), 2, qrng);  // 6 bits used of one byte
  const Vector<float> w = random_vector<float>(400, rng);
  const Bytes pairs = *fl::encode_topk(w, 3);                                   // 12 + 24 (bitmap: 12 + 50 + 12)
  const Bytes bitmap = *fl::encode_topk(v, 30);                                 // 12 + 5 + 120
  REQUIRE(pairs[3] == 0x02);
  REQUIRE(bitmap[3] == 0x03);

  struct Case {
    const char* what;
    Bytes bytes;
    Index dim;
    Errc code;
    const char* message;
  };
  auto with = [](Bytes b, const std::function<void(Bytes&)>& f) {
    f(b);
    return b;
  };
  auto cut = [](Bytes b, std::size_t n) {
    b.resize(n);
    return b;
  };
  const std::vector<Case> cases = {
      {"empty", {}, 40, Errc::truncated, "shorter than the 8-byte header"},
      {"7 bytes", cut(fp16, 7), 40, Errc::truncated, "shorter than the 8-byte header"},
      {"bad magic", with(fp16, [](Bytes& b) { b[0] = 'X'; }), 40, Errc::bad_magic, "bad magic 0x58"},
      {"version 2", with(fp16, [](Bytes& b) { b[2] = 2; }), 40, Errc::bad_version, "version 2"},
      {"unknown kind", with(fp16, [](Bytes& b) { b[3] = 0x07; }), 40, Errc::unsupported, "unknown codec kind 0x07"},
      {"fp16 short", cut(fp16, fp16.size() - 1), 40, Errc::truncated, "needs 88 bytes"},
      {"fp16 trailing", with(fp16, [](Bytes& b) { b.push_back(0); }), 40, Errc::corrupt, "1 trailing bytes"},
      {"fp16 wrong dim", fp16, 41, Errc::shape_mismatch, "dimension 40, expected 41"},
      {"fp16 huge dim", with(fp16, [](Bytes& b) { put_u32(b, 4, 0xFFFFFFFFu); }), 40, Errc::truncated,
       "needs 8589934598 bytes"},
      {"q2 short", cut(q2, 16), 3, Errc::truncated, "needs 17 bytes"},
      {"q2 lo NaN", with(q2, [](Bytes& b) { put_f32(b, 8, std::nanf("")); }), 3, Errc::corrupt, "not finite"},
      {"q2 hi inf", with(q2, [](Bytes& b) { put_f32(b, 12, INFINITY); }), 3, Errc::corrupt, "not finite"},
      {"q2 lo > hi", with(q2, [](Bytes& b) { put_f32(b, 8, 5.0f), put_f32(b, 12, 1.0f); }), 3, Errc::corrupt,
       "lo > hi"},
      {"q2 padding", with(q2, [](Bytes& b) { b[16] |= 0x80; }), 3, Errc::corrupt, "padding bits"},
      {"q8 as q4 length", with(q2, [](Bytes& b) { b[3] = 0x18; }), 3, Errc::truncated, "needs 19 bytes"},
      {"topk no k", cut(pairs, 10), 400, Errc::truncated, "before its u32 entry count"},
      {"topk k > dim", with(pairs, [](Bytes& b) { put_u32(b, 8, 401); }), 400, Errc::corrupt, "k = 401 entries"},
      {"topk short", cut(pairs, pairs.size() - 1), 400, Errc::truncated, "needs 36 bytes"},
      {"topk huge k", with(pairs, [](Bytes& b) { put_u32(b, 4, 0xFFFFFFFFu), put_u32(b, 8, 0xFFFFFFF0u); }), 400,
       Errc::truncated, "needs 34359738252 bytes"},
      {"topk index out of range", with(pairs, [](Bytes& b) { put_u32(b, 12 + 8, 400); }), 400, Errc::corrupt,
       "index 400 at position 2 is out of range"},
      {"topk duplicate index",
       with(pairs, [](Bytes& b) { std::memcpy(&b[12 + 4], &b[12], 4); }), 400, Errc::corrupt,
       "is not greater than the previous index"},
      {"topk decreasing index", with(pairs, [](Bytes& b) { put_u32(b, 12 + 4, 0), put_u32(b, 12, 1); }), 400,
       Errc::corrupt, "is not greater than the previous index"},
      {"topk NaN value", with(pairs, [](Bytes& b) { put_f32(b, 12 + 12 + 4, std::nanf("")); }), 400, Errc::corrupt,
       "value at position 1 is not finite"},
      {"bitmap popcount", with(bitmap, [](Bytes& b) { b[12] ^= 0x01; }), 40, Errc::corrupt, "bits set, the header says k = 30"},
      {"bitmap inf value", with(bitmap, [](Bytes& b) { put_f32(b, 12 + 5, INFINITY); }), 40, Errc::corrupt,
       "value at position 0 is not finite"},
      {"bitmap short", cut(bitmap, bitmap.size() - 3), 40, Errc::truncated, "needs 137 bytes"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    auto r = fl::decode_update<float>(c.bytes, c.dim);
    REQUIRE(!r.ok());
    CHECK(r.error().code == c.code);
    CAPTURE(r.error().message);
    CHECK(r.error().message.find(c.message) != std::string::npos);
    CHECK(r.error().message.rfind("codec: ", 0) == 0);
  }

  // bits beyond the dimension in the bitmap: dim 10 → 2 bytes, 6 padding bits
  Vector<float> small = random_vector<float>(10, rng);
  Bytes bm = *fl::encode_topk(small, 9);
  REQUIRE(bm[3] == 0x03);
  bm[12 + 1] |= 0x40;
  auto r = fl::decode_update<float>(bm, 10);
  REQUIRE(!r.ok());
  CHECK(r.error().message.find("bits set beyond dimension 10") != std::string::npos);

  // peek reports the validated header
  auto h = fl::peek_codec_header(bitmap);
  REQUIRE(h.ok());
  CHECK(h->kind == fl::CodecKind::topk_bitmap);
  CHECK(h->dim == 40);
  CHECK(h->k == 30);
  CHECK(h->total_bytes == bitmap.size());
}

TEST_CASE("decode_update survives random corruption and truncation", "[fl][codec]") {
  Rng rng(16), qrng(17);
  const Vector<float> v = random_vector<float>(64, rng);
  const std::vector<Bytes> valid = {*fl::encode_fp16(v), *fl::encode_quantized(v, 4, qrng), *fl::encode_topk(v, 5),
                                    *fl::encode_topk(v, 40)};
  int rejected = 0, accepted = 0;
  for (int t = 0; t < 20000; ++t) {
    Bytes b = valid[static_cast<std::size_t>(rng.below(valid.size()))];
    const auto flips = 1 + rng.below(4);
    for (std::uint64_t f = 0; f < flips; ++f)
      b[static_cast<std::size_t>(rng.below(b.size()))] ^= static_cast<std::uint8_t>(1u << rng.below(8));
    if (rng.below(4) == 0) b.resize(static_cast<std::size_t>(rng.below(b.size() + 1)));
    auto r = fl::decode_update<float>(b, 64);
    if (r.ok()) {
      ++accepted;
      REQUIRE(r->size() == 64);
    } else {
      ++rejected;
      REQUIRE(!r.error().message.empty());
    }
  }
  CHECK(rejected > 0);
  CHECK(accepted > 0);  // payload flips in fp16/quant codes are valid data
}
