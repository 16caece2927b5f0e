// tests/unit/test_micro_quant.cpp — micro/quant.hpp: QuantizeMultiplier and
// MultiplyByQuantizedMultiplier against hand-derived vectors and against an
// independent slow reference written here with exact __int128 / long double
// arithmetic (no frexp, no round, no gemmlowp tricks), a seeded randomized
// comparison, QUANTIZE / activation ranges / int8 ADD, and — when gemmlowp's
// fixedpoint.h is installed (Debian libgemmlowp-dev) — a cross-check of the
// primitives against gemmlowp itself. Run under -fsanitize=undefined to show
// the wrapping paths have no signed-overflow UB.
#include "fleetdl/micro/quant.hpp"

#include <catch2/catch.hpp>

#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

// gemmlowp (Debian libgemmlowp-dev, installed by tools/deps.sh) is required:
// the exact cross-checks against it must not be skipped quietly.
#if !__has_include(<gemmlowp/fixedpoint/fixedpoint.h>)
#error "the micro tests need gemmlowp's fixedpoint.h: install libgemmlowp-dev (tools/deps.sh does)"
#endif
#include <gemmlowp/fixedpoint/fixedpoint.h>
#define FLEETDL_TEST_HAVE_GEMMLOWP 1

namespace {

namespace mi = fleetdl::micro;
__extension__ typedef __int128 i128;  // GCC/Clang extension, test-only

// Freestanding facts: these are compile-time evaluable.
static_assert(mi::saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN) == INT32_MAX);
static_assert(mi::rounding_divide_by_pot(5, 1) == 3 && mi::rounding_divide_by_pot(-5, 1) == -3);
static_assert(mi::multiply_by_quantized_multiplier(3, 1 << 30, 0) == 2);

// floor(p / 2^k) for any sign, exactly.
i128 floor_div_pot(i128 p, int k) {
  const i128 d = static_cast<i128>(1) << k;
  i128 q = p / d;
  if (p % d != 0 && p < 0) --q;
  return q;
}

// SRDHM by definition: the nearest integer to a*b/2^31, ties toward +inf,
// saturated to int32 (only INT32_MIN^2 / 2^31 = 2^31 needs it).
std::int32_t ref_srdhm(std::int32_t a, std::int32_t b) {
  const i128 p = static_cast<i128>(a) * b;
  i128 r = floor_div_pot(p + (static_cast<i128>(1) << 30), 31);
  if (r > INT32_MAX) r = INT32_MAX;
  return static_cast<std::int32_t>(r);
}

// x / 2^e rounded to nearest, ties away from zero.
std::int32_t ref_rdbpot(std::int32_t x, int e) {
  if (e == 0) return x;
  const i128 ax = x < 0 ? -static_cast<i128>(x) : static_cast<i128>(x);
  const i128 m = floor_div_pot(ax + (static_cast<i128>(1) << (e - 1)), e);
  return static_cast<std::int32_t>(x < 0 ? -m : m);
}

// MBQM composed from the definitions; x * 2^left reduced modulo 2^32 as a
// two's complement int32 (the documented wrap for inputs TFLM leaves undefined).
std::int32_t ref_mbqm(std::int32_t x, std::int32_t m, int shift) {
  const int left = shift > 0 ? shift : 0;
  const int right = shift > 0 ? 0 : -shift;
  i128 a = static_cast<i128>(x) * (static_cast<i128>(1) << left);
  a = a & 0xffffffff;
  if (a >= (static_cast<i128>(1) << 31)) a -= static_cast<i128>(1) << 32;
  return ref_rdbpot(ref_srdhm(static_cast<std::int32_t>(a), m), right);
}

// QuantizeMultiplier without frexp/round: find e with eff in [2^(e-1), 2^e) by
// exact doubling / halving, q = eff / 2^e, then floor(q * 2^31 + 1/2) in
// long double (q * 2^31 has <= 53 significant bits; adding 1/2 is exact in the
// 64-bit mantissa of x87 long double).
mi::QuantizedMultiplier ref_quantize_multiplier(double eff) {
  mi::QuantizedMultiplier r;
  if (std::isnan(eff) || std::isinf(eff) || eff < 0) return r;
  r.ok = true;
  if (eff == 0) return r;
  long double q = eff;
  int e = 0;
  while (q >= 1.0L) {
    q /= 2;
    ++e;
  }
  while (q < 0.5L) {
    q *= 2;
    --e;
  }
  long double scaled = q * 2147483648.0L + 0.5L;
  auto qf = static_cast<std::int64_t>(std::floor(scaled));
  if (qf == (std::int64_t{1} << 31)) {
    qf = std::int64_t{1} << 30;
    ++e;
  }
  if (e < -31) {
    e = 0;
    qf = 0;
  }
  if (e > 30) return mi::QuantizedMultiplier{};
  r.multiplier = static_cast<std::int32_t>(qf);
  r.shift = e;
  return r;
}

struct QmCase {
  double eff;
  std::int32_t m;
  int shift;
  bool ok;
};

}  // namespace

TEST_CASE("micro quantize_multiplier: literal vectors and edge cases", "[micro][quant]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  // Each vector derived by hand: eff = q * 2^shift, q in [0.5, 1), M = round(q * 2^31).
  const QmCase cases[] = {
      {0.0, 0, 0, true},                          // eff == 0 -> {0, 0}
      {-0.0, 0, 0, true},                         // -0 compares equal to 0
      {0.5, 1 << 30, 0, true},                    // q = 0.5
      {0.25, 1 << 30, -1, true},                  //
      {1.0, 1 << 30, 1, true},                    // q = 0.5, shift 1
      {0.75, 1610612736, 0, true},                // 0.75 * 2^31
      {3.0, 1610612736, 2, true},                 // 0.75 * 2^2
      {1.0 - std::ldexp(1.0, -31), INT32_MAX, 0, true},  // q*2^31 = 2^31 - 1 exactly
      {1.0 - std::ldexp(1.0, -32), 1 << 30, 1, true},    // 2^31 - 0.5 rounds away to 2^31 -> fixed
      {1.0 - std::ldexp(1.0, -40), 1 << 30, 1, true},    // q_fixed == 2^31 case
      {std::ldexp(1.0, -32), 1 << 30, -31, true},        // smallest kept shift
      {std::ldexp(0.75, -31), 1610612736, -31, true},    // q = 0.75, shift -31
      {std::ldexp(1.0, -33), 0, 0, true},                // shift -32 < -31 -> flushed to 0
      {std::ldexp(1.0, -1074), 0, 0, true},              // denormal -> 0
      {std::ldexp(1.0, 29), 1 << 30, 30, true},          // largest accepted shift
      {std::ldexp(1.0, 30) - std::ldexp(1.0, -22), 0, 0, false},  // rounds up to shift 31: refused
      {std::ldexp(1.0, 30), 0, 0, false},                // shift 31: MBQM cannot apply it
      {1e300, 0, 0, false},
      {-0.5, 0, 0, false},                               // negative refused
      {nan, 0, 0, false},
      {inf, 0, 0, false},
      {-inf, 0, 0, false},
  };
  for (const QmCase& c : cases) {
    INFO("eff = " << c.eff);
    const mi::QuantizedMultiplier q = mi::quantize_multiplier(c.eff);
    CHECK(q.ok == c.ok);
    CHECK(q.multiplier == c.m);
    CHECK(q.shift == c.shift);
    const mi::QuantizedMultiplier r = ref_quantize_multiplier(c.eff);
    CHECK(r.ok == c.ok);
    CHECK(r.multiplier == c.m);
    CHECK(r.shift == c.shift);
  }
}

TEST_CASE("micro quantize_multiplier: random scales against the reference", "[micro][quant]") {
  std::mt19937_64 rng(20240605);
  std::uniform_real_distribution<double> mant(0.5, 1.0);
  std::uniform_int_distribution<int> ex(-40, 32);
  int bad = 0;
  for (int i = 0; i < 100000; ++i) {
    const double eff = std::ldexp(mant(rng), ex(rng));
    const mi::QuantizedMultiplier q = mi::quantize_multiplier(eff);
    const mi::QuantizedMultiplier r = ref_quantize_multiplier(eff);
    if (q.ok != r.ok || q.multiplier != r.multiplier || q.shift != r.shift) ++bad;
    if (q.ok && q.multiplier != 0) {
      // eff is represented to within half a unit in the 31st bit.
      const double back = std::ldexp(static_cast<double>(q.multiplier), q.shift - 31);
      if (!(std::abs(back - eff) <= std::ldexp(0.5, q.shift - 31) * 1.000001)) ++bad;
    }
  }
  CHECK(bad == 0);
  // Conv-like triples: s_in * s_w / s_out.
  std::uniform_real_distribution<float> sc(1e-4f, 0.2f);
  for (int i = 0; i < 20000; ++i) {
    const double eff = mi::conv_effective_scale(sc(rng), sc(rng) * 0.05f, sc(rng));
    const mi::QuantizedMultiplier q = mi::quantize_multiplier(eff);
    const mi::QuantizedMultiplier r = ref_quantize_multiplier(eff);
    if (!q.ok || q.multiplier != r.multiplier || q.shift != r.shift) ++bad;
  }
  CHECK(bad == 0);
}

TEST_CASE("micro fixed-point primitives: literal vectors", "[micro][quant]") {
  // SRDHM: ties go toward +inf (VQRDMULH); INT32_MIN^2 saturates.
  CHECK(mi::saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN) == INT32_MAX);
  CHECK(mi::saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MAX) == -INT32_MAX);  // -(2^31-1) exactly
  CHECK(mi::saturating_rounding_doubling_high_mul(INT32_MAX, INT32_MAX) == 2147483646);  // 2^31-2+2^-31
  CHECK(mi::saturating_rounding_doubling_high_mul(1 << 30, 1 << 30) == 1 << 29);
  CHECK(mi::saturating_rounding_doubling_high_mul(3, 1 << 30) == 2);    // 1.5 -> 2
  CHECK(mi::saturating_rounding_doubling_high_mul(-3, 1 << 30) == -1);  // -1.5 -> -1 (tie up)
  CHECK(mi::saturating_rounding_doubling_high_mul(-1, 1 << 30) == 0);   // -0.5 -> 0
  CHECK(mi::saturating_rounding_doubling_high_mul(1, 1 << 30) == 1);    // 0.5 -> 1
  CHECK(mi::saturating_rounding_doubling_high_mul(0, INT32_MIN) == 0);
  // RoundingDivideByPOT: ties away from zero.
  CHECK(mi::rounding_divide_by_pot(3, 1) == 2);
  CHECK(mi::rounding_divide_by_pot(-3, 1) == -2);
  CHECK(mi::rounding_divide_by_pot(-1, 1) == -1);   // -0.5 -> -1
  CHECK(mi::rounding_divide_by_pot(1, 1) == 1);
  CHECK(mi::rounding_divide_by_pot(-5, 2) == -1);   // -1.25
  CHECK(mi::rounding_divide_by_pot(-6, 2) == -2);   // -1.5
  CHECK(mi::rounding_divide_by_pot(7, 0) == 7);
  CHECK(mi::rounding_divide_by_pot(INT32_MIN, 31) == -1);
  CHECK(mi::rounding_divide_by_pot(INT32_MAX, 31) == 1);
  CHECK(mi::rounding_divide_by_pot(1 << 30, 31) == 1);      // 0.5 -> 1
  CHECK(mi::rounding_divide_by_pot(-(1 << 30), 31) == -1);  // -0.5 -> -1
  CHECK(mi::rounding_divide_by_pot((1 << 30) - 1, 31) == 0);
  CHECK(mi::rounding_divide_by_pot(5, 40) == mi::rounding_divide_by_pot(5, 31));  // clamped, no UB
  CHECK(mi::rounding_divide_by_pot(5, -3) == 5);
}

TEST_CASE("micro multiply_by_quantized_multiplier: literal vectors", "[micro][quant]") {
  struct V {
    std::int32_t x, m;
    int shift;
    std::int32_t want;
  };
  const V vs[] = {
      {3, 1 << 30, 0, 2},            // 1.5: SRDHM rounds the tie up
      {-3, 1 << 30, 0, -1},          // -1.5 -> -1 (double rounding quirk kept)
      {-2, 1 << 30, -1, -1},         // SRDHM -1 exact, then -0.5 -> -1 (away)
      {2, 1 << 30, -1, 1},           // 0.5 -> 1
      {-6, 1 << 30, -1, -2},         // -1.5 -> -2 in RDBPOT (away)
      {45, 1 << 30, -1, 12},         // 11.25 exact: SRDHM 22.5 -> 23, 23/2 = 11.5 -> 12
      {-25, 1 << 30, -1, -6},        // -6.25: SRDHM -12.5 -> -12, -6
      {INT32_MIN, 1 << 30, 0, -(1 << 30)},
      {INT32_MIN, INT32_MIN, 0, INT32_MAX},  // the saturation case (M < 0 only as a primitive)
      {INT32_MAX, INT32_MAX, 0, 2147483646},
      {INT32_MAX, INT32_MAX, -31, 1},       // 0.99999... -> 1
      {1 << 30, 1 << 30, -31, 0},           // 0.25 -> 0
      {-(1 << 30), INT32_MAX, -31, 0},      // -0.2499... -> 0
      {1, 1 << 30, 30, 1 << 29},            // largest left shift: 1 * 0.5 * 2^30
      {-1, 1 << 30, 30, -(1 << 29)},
      {2, 1 << 30, 30, -(1 << 30)},         // 2 * 2^30 wraps to INT32_MIN (TFLM: UB)
      {1, 1 << 30, 31, -(1 << 30)},         // shift 31 (outside TFLM's range): 1 << 31 wraps
      {7, 1 << 30, 100, mi::multiply_by_quantized_multiplier(7, 1 << 30, 31)},    // clamped
      {7, 1 << 30, -100, mi::multiply_by_quantized_multiplier(7, 1 << 30, -31)},  // clamped
      {12345, 0, 0, 0},                     // eff flushed to zero
      {-12345, 0, 0, 0},
      {1000, 1610612736, 2, 3000},          // eff = 3
  };
  for (const V& v : vs) {
    INFO("x=" << v.x << " M=" << v.m << " shift=" << v.shift);
    CHECK(mi::multiply_by_quantized_multiplier(v.x, v.m, v.shift) == v.want);
    if (v.shift >= -31 && v.shift <= 31) CHECK(ref_mbqm(v.x, v.m, v.shift) == v.want);
  }
}

TEST_CASE("micro multiply_by_quantized_multiplier: randomized against the 128-bit reference", "[micro][quant]") {
  std::mt19937_64 rng(0x5eed5eedULL);
  std::uniform_int_distribution<std::int32_t> any32(INT32_MIN, INT32_MAX);
  std::uniform_int_distribution<std::int32_t> mult(1 << 30, INT32_MAX);
  std::uniform_int_distribution<int> shift_d(-31, 30);
  std::uniform_int_distribution<int> bits(0, 31);
  std::uniform_int_distribution<int> pick(0, 9);
  long long in_range = 0;
  int bad = 0, far = 0;
  for (int i = 0; i < 300000; ++i) {
    std::int32_t x = any32(rng);
    const int b = bits(rng);
    if (b < 31) x = static_cast<std::int32_t>(x % (std::int32_t{1} << b));  // many magnitudes
    std::int32_t m = mult(rng);
    const int k = pick(rng);
    if (k == 0) m = 0;
    if (k == 1) m = 1 << 30;
    if (k == 2) m = INT32_MAX;
    if (k == 3) x = INT32_MIN;
    if (k == 4) x = INT32_MAX;
    const int shift = shift_d(rng);
    const std::int32_t got = mi::multiply_by_quantized_multiplier(x, m, shift);
    if (got != ref_mbqm(x, m, shift)) {
      if (bad++ == 0) FAIL_CHECK("first mismatch: x=" << x << " M=" << m << " shift=" << shift);
    }
    // Where TFLM is defined (x * 2^left fits) the result is within 1 of the real product.
    const int left = shift > 0 ? shift : 0;
    const i128 shifted = static_cast<i128>(x) << left;
    if (shifted >= INT32_MIN && shifted <= INT32_MAX && !(x == INT32_MIN && m == INT32_MIN)) {
      ++in_range;
      const long double real = static_cast<long double>(x) * m * std::ldexp(1.0L, shift - 31);
      if (!(std::fabs(static_cast<long double>(got) - real) <= 1.0L)) ++far;
    }
  }
  CHECK(bad == 0);
  CHECK(far == 0);
  CHECK(in_range > 100000);
}

#ifdef FLEETDL_TEST_HAVE_GEMMLOWP
TEST_CASE("micro fixed-point primitives agree with gemmlowp", "[micro][quant]") {
  std::mt19937_64 rng(77);
  std::uniform_int_distribution<std::int32_t> any32(INT32_MIN, INT32_MAX);
  std::uniform_int_distribution<int> e_d(0, 31);
  int bad = 0;
  for (int i = 0; i < 200000; ++i) {
    const std::int32_t a = any32(rng), b = any32(rng);
    if (mi::saturating_rounding_doubling_high_mul(a, b) != gemmlowp::SaturatingRoundingDoublingHighMul(a, b)) ++bad;
    const int e = e_d(rng);
    if (mi::rounding_divide_by_pot(a, e) != gemmlowp::RoundingDivideByPOT(a, e)) ++bad;
    const std::int32_t small = a >> e;  // every magnitude, including exact ties
    if (mi::rounding_divide_by_pot(small, e) != gemmlowp::RoundingDivideByPOT(small, e)) ++bad;
  }
  CHECK(bad == 0);
  CHECK(mi::saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN) ==
        gemmlowp::SaturatingRoundingDoublingHighMul(INT32_MIN, INT32_MIN));
}
#endif

TEST_CASE("micro quantize, dequantize and activation ranges", "[micro][quant]") {
  CHECK(mi::quantize(0.25f, 0.5f, 0) == 1);    // 0.5 rounds away from zero
  CHECK(mi::quantize(-0.25f, 0.5f, 0) == -1);
  CHECK(mi::quantize(0.74f, 0.5f, 3) == 4);
  CHECK(mi::quantize(1000.0f, 0.1f, 0) == 127);
  CHECK(mi::quantize(-1000.0f, 0.1f, 0) == -128);
  CHECK(mi::quantize(1e30f, 1e-30f, 5) == 127);  // TFLM: UB; here saturates
  CHECK(mi::quantize(-1e30f, 1e-30f, 5) == -128);
  CHECK(mi::quantize(std::numeric_limits<float>::quiet_NaN(), 0.1f, -7) == -7);
  CHECK(mi::quantize(0.0f, 0.1f, -128) == -128);
  CHECK(mi::dequantize(static_cast<std::int8_t>(-128), 0.5f, -128) == 0.0f);
  CHECK(mi::dequantize(static_cast<std::int8_t>(127), 0.5f, -128) == 127.5f);
  // Round trip: quantize(dequantize(q)) == q for every int8 and a few params.
  int bad = 0;
  for (float s : {0.01f, 0.1f, 0.3f, 2.5f})
    for (int zp : {-128, -5, 0, 77, 127})
      for (int q = -128; q <= 127; ++q)
        if (mi::quantize(mi::dequantize(static_cast<std::int8_t>(q), s, zp), s, zp) != q) ++bad;
  CHECK(bad == 0);

  std::int32_t lo = 0, hi = 0;
  REQUIRE(mi::activation_range(mi::Activation::none, 0.1f, -10, lo, hi));
  CHECK((lo == -128 && hi == 127));
  REQUIRE(mi::activation_range(mi::Activation::relu, 0.1f, -10, lo, hi));
  CHECK((lo == -10 && hi == 127));
  REQUIRE(mi::activation_range(mi::Activation::relu6, 0.1f, -10, lo, hi));
  CHECK((lo == -10 && hi == 50));  // 6 / 0.1f rounds to 60
  REQUIRE(mi::activation_range(mi::Activation::relu6, 6.0f / 255.0f, -128, lo, hi));
  CHECK((lo == -128 && hi == 127));  // 6 / (6/255) = 255 -> -128 + 255 = 127
  REQUIRE(mi::activation_range(mi::Activation::relu6, 1e-3f, 0, lo, hi));
  CHECK((lo == 0 && hi == 127));
  REQUIRE(mi::activation_range(mi::Activation::relu6, 1e-30f, 0, lo, hi));  // 6/s overflows int32: saturated
  CHECK((lo == 0 && hi == 127));
  REQUIRE(mi::activation_range(mi::Activation::relu6, 100.0f, 20, lo, hi));
  CHECK((lo == 20 && hi == 20));  // round(0.06) = 0
  REQUIRE(mi::activation_range(mi::Activation::relu_n1_to_1, 0.01f, 0, lo, hi));
  CHECK((lo == -100 && hi == 100));
  CHECK_FALSE(mi::activation_range(mi::Activation::relu, 0.0f, 0, lo, hi));
  CHECK_FALSE(mi::activation_range(mi::Activation::relu, -1.0f, 0, lo, hi));
  CHECK_FALSE(mi::activation_range(mi::Activation::relu, std::numeric_limits<float>::infinity(), 0, lo, hi));
  CHECK_FALSE(mi::activation_range(mi::Activation::relu, 0.1f, 128, lo, hi));
  CHECK_FALSE(mi::activation_range(static_cast<mi::Activation>(9), 0.1f, 0, lo, hi));
}

TEST_CASE("micro int8 ADD: parameters and hand-computed elements", "[micro][quant]") {
  // s1 = s2 = s_out = 1: tm = 2, input multipliers 0.5 -> {2^30, 0},
  // output 2 / 2^20 = 2^-19 -> {2^30, -18}.
  const mi::AddParams p = mi::prepare_add(1.0f, 0, 1.0f, 0, 1.0f, 0);
  REQUIRE(p.ok);
  CHECK(p.left_shift == 20);
  CHECK((p.input1_multiplier == (1 << 30) && p.input1_shift == 0));
  CHECK((p.input2_multiplier == (1 << 30) && p.input2_shift == 0));
  CHECK((p.output_multiplier == (1 << 30) && p.output_shift == -18));
  CHECK(mi::add_element(3, 4, p) == 7);
  CHECK(mi::add_element(-3, 2, p) == -1);
  CHECK(mi::add_element(100, 100, p) == 127);
  CHECK(mi::add_element(-100, -100, p) == -128);
  // s_out = 2: out = (a + b) / 2, ties away from zero through RDBPOT.
  const mi::AddParams h = mi::prepare_add(1.0f, 0, 1.0f, 0, 2.0f, 0);
  REQUIRE(h.ok);
  CHECK((h.output_multiplier == (1 << 30) && h.output_shift == -19));
  CHECK(mi::add_element(1, 0, h) == 1);
  CHECK(mi::add_element(-1, 0, h) == -1);
  CHECK(mi::add_element(3, 0, h) == 2);
  CHECK(mi::add_element(-3, 0, h) == -2);
  // Different scales: s1 = 0.5, s2 = 0.25 -> input2 multiplier 0.25 -> {2^30, -1}.
  const mi::AddParams d = mi::prepare_add(0.5f, 10, 0.25f, -20, 0.5f, 5, mi::Activation::relu);
  REQUIRE(d.ok);
  CHECK((d.input2_multiplier == (1 << 30) && d.input2_shift == -1));
  CHECK(d.act_min == 5);
  // (30 - 10) * 0.5 + (0 + 20) * 0.25 = 15 -> 15 / 0.5 + 5 = 35.
  CHECK(mi::add_element(30, 0, d) == 35);
  CHECK(mi::add_element(-100, -100, d) == 5);  // relu clamp at the zero point
  // Refusals.
  CHECK_FALSE(mi::prepare_add(0.0f, 0, 1.0f, 0, 1.0f, 0).ok);
  CHECK_FALSE(mi::prepare_add(1.0f, 200, 1.0f, 0, 1.0f, 0).ok);
  CHECK_FALSE(mi::prepare_add(1.0f, 0, 1.0f, 0, std::numeric_limits<float>::quiet_NaN(), 0).ok);
  CHECK_FALSE(mi::prepare_add(1.0f, 0, 1.0f, 0, 1e-7f, 0).ok);  // output multiplier >= 1

  // Randomized: within one step of the float sum.
  std::mt19937 rng(4242);
  std::uniform_real_distribution<float> sd(0.005f, 0.2f);
  std::uniform_int_distribution<int> zd(-128, 127);
  int far = 0;
  for (int t = 0; t < 300; ++t) {
    const float s1 = sd(rng), s2 = sd(rng), so = sd(rng) * 2;
    const int z1 = zd(rng), z2 = zd(rng), zo = zd(rng);
    const mi::AddParams q = mi::prepare_add(s1, z1, s2, z2, so, zo);
    REQUIRE(q.ok);
    for (int i = 0; i < 200; ++i) {
      const auto a = static_cast<std::int8_t>(zd(rng)), b = static_cast<std::int8_t>(zd(rng));
      const float real = mi::dequantize(a, s1, z1) + mi::dequantize(b, s2, z2);
      const int want = mi::quantize(real, so, zo);
      if (std::abs(mi::add_element(a, b, q) - want) > 1) ++far;
    }
  }
  CHECK(far == 0);
}
