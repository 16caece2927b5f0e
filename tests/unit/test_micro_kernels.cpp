// tests/unit/test_micro_kernels.cpp — micro/kernels.hpp: every int8 op over
// seeded random shapes (stride 1-3, SAME and VALID, dilation, non-zero zero
// points, per-channel scales, relu / relu6) against (a) a naive integer
// reference written here from TFLite's formulas (explicit zero-point padding,
// 64-bit accumulators), which must match bit for bit, and (b) a float
// reference (dequantize -> float op -> quantize), which must match within one
// quantization step; hand-computed cases with exact expected outputs; the
// constexpr shape helpers; refusals of inconsistent shapes. When gemmlowp's
// fixedpoint.h is installed, softmax is compared bit for bit with TFLite's
// reference Softmax<int8> re-assembled here from gemmlowp's FixedPoint types.
#include "fleetdl/micro/kernels.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

// gemmlowp (Debian libgemmlowp-dev, installed by tools/deps.sh) is required:
// the exact cross-checks against it must not be skipped quietly.
#if !__has_include(<gemmlowp/fixedpoint/fixedpoint.h>)
#error "the micro tests need gemmlowp's fixedpoint.h: install libgemmlowp-dev (tools/deps.sh does)"
#endif
#include <gemmlowp/fixedpoint/fixedpoint.h>
#define FLEETDL_TEST_HAVE_GEMMLOWP 1

namespace {

namespace mi = fleetdl::micro;
using I8 = std::vector<std::int8_t>;
using I32 = std::vector<std::int32_t>;

// Shape helpers are constexpr and follow TFLite's ComputeOutSize / padding.
static_assert(mi::output_size(mi::Padding::same, 5, 3, 2) == 3);
static_assert(mi::output_size(mi::Padding::valid, 5, 3, 2) == 2);
static_assert(mi::output_size(mi::Padding::valid, 2, 3, 1) == 0);     // kernel larger than input
static_assert(mi::output_size(mi::Padding::valid, 7, 3, 1, 3) == 1);  // dilated kernel 7
static_assert(mi::output_size(mi::Padding::same, 5, 3, 0) == 0);      // stride 0 refused
static_assert(mi::padding_before(5, 3, 2, 1, 3) == 1);
static_assert(mi::padding_before(4, 3, 2, 1, 2) == 0);  // total 1: the odd pixel goes after
static_assert(mi::padding_before(6, 3, 1, 1, 6) == 1);
static_assert(mi::window_geometry(mi::Padding::same, 7, 4, 3, 3, 2, 2).out_h == 4);
static_assert(!mi::window_geometry(mi::Padding::valid, 2, 2, 3, 3, 1, 1).ok);
static_assert(mi::flat_size(mi::Shape4{2, 3, 4, 5}) == 120);
static_assert(!mi::shape_ok(mi::Shape4{0, 3, 4, 5}));
static_assert(!mi::shape_ok(mi::Shape4{65536, 65536, 1, 1}));
static_assert(!mi::shape_ok(mi::Shape4{INT32_MAX, INT32_MAX, INT32_MAX, INT32_MAX}));  // regression: no int64 overflow (fuzzer)
static_assert(mi::shape_ok(mi::Shape4{1, 1, 1, INT32_MAX}));

I8 random_i8(std::mt19937& rng, std::size_t n, int lo = -128, int hi = 127) {
  std::uniform_int_distribution<int> d(lo, hi);
  I8 v(n);
  for (auto& x : v) x = static_cast<std::int8_t>(d(rng));
  return v;
}

struct Requant {
  I32 m, shift;
};

Requant make_requant(float s_in, const std::vector<float>& s_w, float s_out) {
  Requant r;
  for (float sw : s_w) {
    const mi::QuantizedMultiplier q = mi::quantize_multiplier(mi::conv_effective_scale(s_in, sw, s_out));
    REQUIRE(q.ok);
    r.m.push_back(q.multiplier);
    r.shift.push_back(q.shift);
  }
  return r;
}

// Float reference activation + output quantization.
std::int8_t float_out(double y, mi::Activation act, float s_out, std::int32_t zp_out) {
  if (act == mi::Activation::relu || act == mi::Activation::relu6) y = std::max(y, 0.0);
  if (act == mi::Activation::relu6) y = std::min(y, 6.0);
  return mi::quantize(static_cast<float>(y), s_out, zp_out);
}

std::int8_t int_out(std::int64_t acc, std::int32_t m, std::int32_t shift, std::int32_t zp_out, std::int32_t lo,
                    std::int32_t hi) {
  REQUIRE(acc >= INT32_MIN);
  REQUIRE(acc <= INT32_MAX);
  std::int32_t v = mi::multiply_by_quantized_multiplier(static_cast<std::int32_t>(acc), m, shift) + zp_out;
  return static_cast<std::int8_t>(std::clamp(v, lo, hi));
}

struct Tally {
  int exact_mismatch = 0;
  int float_far = 0;
  long long values = 0;
  long long float_equal = 0;
};

// One random conv or depthwise case. The naive reference builds the input
// padded with the zero point (so padding contributes zero), then sums.
void run_conv_case(std::mt19937& rng, bool depthwise, Tally& t) {
  std::uniform_int_distribution<int> small(1, 4), hw(1, 9), st(1, 3), dl(1, 2), zp(-128, 127), zpo(-60, 60);
  std::uniform_real_distribution<float> sc_in(0.01f, 0.1f), sc_w(0.002f, 0.02f);
  const int n = small(rng) <= 3 ? 1 : 2;
  const int H = hw(rng), W = hw(rng), C = small(rng) + (depthwise ? 0 : 1);
  const int dm = depthwise ? small(rng) % 3 + 1 : 1;
  const int KH = small(rng), KW = small(rng);
  const int SH = st(rng), SW = st(rng);
  const int DH = dl(rng), DW = dl(rng);
  const mi::Padding pad = (rng() & 1) ? mi::Padding::same : mi::Padding::valid;
  const mi::WindowGeometry g = mi::window_geometry(pad, H, W, KH, KW, SH, SW, DH, DW);
  if (!g.ok) return;
  const int CO = depthwise ? C * dm : small(rng) + small(rng);
  const mi::Shape4 in_s{n, H, W, C};
  const mi::Shape4 f_s = depthwise ? mi::Shape4{1, KH, KW, CO} : mi::Shape4{CO, KH, KW, C};
  const mi::Shape4 out_s{n, g.out_h, g.out_w, CO};
  const I8 x = random_i8(rng, static_cast<std::size_t>(mi::flat_size(in_s)));
  const I8 w = random_i8(rng, static_cast<std::size_t>(mi::flat_size(f_s)), -127, 127);
  I32 bias(static_cast<std::size_t>(CO));
  std::uniform_int_distribution<int> bd(-3000, 3000);
  for (auto& b : bias) b = bd(rng);
  const std::int32_t zp_in = zp(rng), zp_out = zpo(rng);
  const float s_in = sc_in(rng);
  std::vector<float> s_w(static_cast<std::size_t>(CO));
  for (auto& s : s_w) s = sc_w(rng);
  const int acts = static_cast<int>(rng() % 3);
  const mi::Activation act = acts == 0 ? mi::Activation::none : acts == 1 ? mi::Activation::relu : mi::Activation::relu6;

  // Integer accumulators (naive, zero-point padded input).
  const int PH = H + KH * DH + 2 * (g.pad_h + 1), PW = W + KW * DW + 2 * (g.pad_w + 1);
  std::vector<std::int64_t> acc(static_cast<std::size_t>(mi::flat_size(out_s)));
  auto px = [&](int b, int y, int xx, int c) -> std::int64_t {  // padded view
    const int iy = y - g.pad_h, ix = xx - g.pad_w;
    if (iy < 0 || iy >= H || ix < 0 || ix >= W) return 0;  // zp - zp
    return static_cast<std::int64_t>(x[static_cast<std::size_t>(((b * H + iy) * W + ix) * C + c)]) - zp_in;
  };
  (void)PH;
  (void)PW;
  std::vector<double> yreal(acc.size());
  for (int b = 0; b < n; ++b)
    for (int oy = 0; oy < g.out_h; ++oy)
      for (int ox = 0; ox < g.out_w; ++ox)
        for (int oc = 0; oc < CO; ++oc) {
          std::int64_t a = 0;
          for (int ky = 0; ky < KH; ++ky)
            for (int kx = 0; kx < KW; ++kx) {
              const int y = oy * SH + ky * DH, xx = ox * SW + kx * DW;
              if (depthwise) {
                const int ic = oc / dm;
                a += static_cast<std::int64_t>(w[static_cast<std::size_t>((ky * KW + kx) * CO + oc)]) * px(b, y, xx, ic);
              } else {
                for (int ic = 0; ic < C; ++ic)
                  a += static_cast<std::int64_t>(w[static_cast<std::size_t>(((oc * KH + ky) * KW + kx) * C + ic)]) *
                       px(b, y, xx, ic);
              }
            }
          const std::size_t o = static_cast<std::size_t>(((b * g.out_h + oy) * g.out_w + ox) * CO + oc);
          acc[o] = a + bias[static_cast<std::size_t>(oc)];
          yreal[o] = static_cast<double>(acc[o]) * s_in * s_w[static_cast<std::size_t>(oc)];
        }
  double ymax = 1e-6;
  for (double v : yreal) ymax = std::max(ymax, std::abs(v));
  float s_out = static_cast<float>(ymax / 100.0);
  if (act == mi::Activation::relu6) {  // put 6 inside the range: rescale the weights' scales
    const double k = 12.0 / ymax;
    for (auto& s : s_w) s = static_cast<float>(s * k);
    for (std::size_t o = 0; o < yreal.size(); ++o) {
      const int oc = static_cast<int>(o % static_cast<std::size_t>(CO));
      yreal[o] = static_cast<double>(acc[o]) * s_in * s_w[static_cast<std::size_t>(oc)];
    }
    s_out = 0.12f;
  }
  const Requant rq = make_requant(s_in, s_w, s_out);
  mi::ConvParams p;
  p.padding = pad;
  p.stride_h = SH;
  p.stride_w = SW;
  p.dilation_h = DH;
  p.dilation_w = DW;
  p.depth_multiplier = dm;
  p.input_zero_point = zp_in;
  p.output_zero_point = zp_out;
  REQUIRE(mi::activation_range(act, s_out, zp_out, p.act_min, p.act_max));
  p.out_multiplier = rq.m.data();
  p.out_shift = rq.shift.data();
  I8 out(acc.size(), 0x55);
  const bool ok = depthwise ? mi::depthwise_conv2d(p, in_s, x.data(), f_s, w.data(), bias.data(), out_s, out.data())
                            : mi::conv2d(p, in_s, x.data(), f_s, w.data(), bias.data(), out_s, out.data());
  REQUIRE(ok);
  for (std::size_t o = 0; o < acc.size(); ++o) {
    const std::size_t oc = o % static_cast<std::size_t>(CO);
    const std::int8_t want = int_out(acc[o], rq.m[oc], rq.shift[oc], zp_out, p.act_min, p.act_max);
    if (out[o] != want) ++t.exact_mismatch;
    const std::int8_t fw = float_out(yreal[o], act, s_out, zp_out);
    if (std::abs(out[o] - fw) > 1) ++t.float_far;
    if (out[o] == fw) ++t.float_equal;
    ++t.values;
  }
}

}  // namespace

TEST_CASE("micro conv2d: random shapes vs integer and float references", "[micro][kernels]") {
  std::mt19937 rng(1234);
  Tally t;
  for (int i = 0; i < 300; ++i) run_conv_case(rng, false, t);
  INFO("values " << t.values << ", equal to float reference " << t.float_equal);
  CHECK(t.values > 5000);
  CHECK(t.exact_mismatch == 0);
  CHECK(t.float_far == 0);
}

TEST_CASE("micro depthwise_conv2d: random shapes vs integer and float references", "[micro][kernels]") {
  std::mt19937 rng(5678);
  Tally t;
  for (int i = 0; i < 300; ++i) run_conv_case(rng, true, t);
  INFO("values " << t.values << ", equal to float reference " << t.float_equal);
  CHECK(t.values > 3000);
  CHECK(t.exact_mismatch == 0);
  CHECK(t.float_far == 0);
}

TEST_CASE("micro conv2d / depthwise: hand-computed outputs", "[micro][kernels]") {
  // 1x1 conv, two output channels, M = 2^30 and shift -1 (x 0.25) each:
  // oc0: 10*1 + (-20)*2 = -30, + bias 5 = -25; SRDHM(-25, 2^30) = -12 (the tie
  //      -12.5 rounds up), RDBPOT(-12, 1) = -6; + zp_out 3 = -3.
  // oc1: 10*3 + (-20)*(-1) = 50, - 5 = 45; SRDHM = 23 (22.5 up), 23/2 = 11.5 -> 12
  //      (double rounding: the exact 11.25 would give 11); + 3 = 15.
  const I8 x = {10, -20};
  const I8 w = {1, 2, 3, -1};
  const I32 bias = {5, -5};
  const I32 m = {1 << 30, 1 << 30}, sh = {-1, -1};
  mi::ConvParams p;
  p.out_multiplier = m.data();
  p.out_shift = sh.data();
  p.output_zero_point = 3;
  I8 out(2);
  REQUIRE(mi::conv2d(p, {1, 1, 1, 2}, x.data(), {2, 1, 1, 2}, w.data(), bias.data(), {1, 1, 1, 2}, out.data()));
  CHECK(out == I8{-3, 15});
  // Same with input zero point 10: x - zp = {0, -30}: oc0 -60 + 5 = -55 -> SRDHM
  // -27.5 -> -27 -> -13.5 -> -14 (away) -> -11; oc1 30 - 5 = 25 -> 12.5 -> 13 -> 6.5 -> 7 -> 10.
  p.input_zero_point = 10;
  REQUIRE(mi::conv2d(p, {1, 1, 1, 2}, x.data(), {2, 1, 1, 2}, w.data(), bias.data(), {1, 1, 1, 2}, out.data()));
  CHECK(out == I8{-11, 10});
  // relu clamps at zp_out.
  p.act_min = 3;
  REQUIRE(mi::conv2d(p, {1, 1, 1, 2}, x.data(), {2, 1, 1, 2}, w.data(), bias.data(), {1, 1, 1, 2}, out.data()));
  CHECK(out == I8{3, 10});

  // 3x3 SAME conv on a 2x2 single-channel image of ones, all-ones filter, no
  // bias, M = 2^30 shift 1 (x 1): every output sees the whole image: 4. With
  // input zp 1 every product is 0 -> only zp_out remains.
  const I8 img = {1, 1, 1, 1};
  const I8 k9(9, 1);
  const I32 m1 = {1 << 30}, s1 = {1};
  mi::ConvParams q;
  q.padding = mi::Padding::same;
  q.out_multiplier = m1.data();
  q.out_shift = s1.data();
  I8 o4(4);
  REQUIRE(mi::conv2d(q, {1, 2, 2, 1}, img.data(), {1, 3, 3, 1}, k9.data(), nullptr, {1, 2, 2, 1}, o4.data()));
  CHECK(o4 == I8{4, 4, 4, 4});
  q.input_zero_point = 1;
  q.output_zero_point = -7;
  REQUIRE(mi::conv2d(q, {1, 2, 2, 1}, img.data(), {1, 3, 3, 1}, k9.data(), nullptr, {1, 2, 2, 1}, o4.data()));
  CHECK(o4 == I8{-7, -7, -7, -7});

  // Depthwise, depth multiplier 2: input channels {4, -4}; filter 1x1x1x4
  // {1, 2, 3, 4}: oc = ic*2 + m -> 4, 8, -12, -16; x 0.5 (M 2^30, shift 0) -> 2, 4, -6, -8.
  const I8 dx = {4, -4};
  const I8 dw = {1, 2, 3, 4};
  const I32 dm_m(4, 1 << 30), dm_s(4, 0);
  mi::ConvParams d;
  d.depth_multiplier = 2;
  d.out_multiplier = dm_m.data();
  d.out_shift = dm_s.data();
  I8 dout(4);
  REQUIRE(mi::depthwise_conv2d(d, {1, 1, 1, 2}, dx.data(), {1, 1, 1, 4}, dw.data(), nullptr, {1, 1, 1, 4}, dout.data()));
  CHECK(dout == I8{2, 4, -6, -8});
}

TEST_CASE("micro fully_connected: random vs references and a hand case", "[micro][kernels]") {
  // Hand case: x = {1, 2, 3}, zp_in = 1 -> {0, 1, 2}; w = {{1,1,1},{-2,0,5}};
  // acc = {3, 10}; bias {1, -1} -> {4, 9}; M 2^30 shift 0 (x 0.5): SRDHM
  // 2, 4.5 -> 5; zp_out -1 -> {1, 4}.
  {
    const I8 x = {1, 2, 3}, w = {1, 1, 1, -2, 0, 5};
    const I32 b = {1, -1}, m(2, 1 << 30), s(2, 0);
    mi::FullyConnectedParams p;
    p.input_zero_point = 1;
    p.output_zero_point = -1;
    p.out_multiplier = m.data();
    p.out_shift = s.data();
    I8 out(2);
    REQUIRE(mi::fully_connected(p, 1, 3, 2, x.data(), w.data(), b.data(), out.data()));
    CHECK(out == I8{1, 4});
    CHECK_FALSE(mi::fully_connected(p, 1, 0, 2, x.data(), w.data(), b.data(), out.data()));
  }
  std::mt19937 rng(99);
  Tally t;
  for (int it = 0; it < 200; ++it) {
    std::uniform_int_distribution<int> bd(1, 3), fd(1, 64), od(1, 12), zp(-128, 127);
    const int B = bd(rng), IN = fd(rng), OUT = od(rng);
    const I8 x = random_i8(rng, static_cast<std::size_t>(B * IN));
    const I8 w = random_i8(rng, static_cast<std::size_t>(OUT * IN), -127, 127);
    I32 bias(static_cast<std::size_t>(OUT));
    for (auto& v : bias) v = static_cast<std::int32_t>(rng() % 4001) - 2000;
    const std::int32_t zi = zp(rng), zo = static_cast<std::int32_t>(rng() % 41) - 20;
    const float s_in = 0.05f;
    std::vector<float> s_w(static_cast<std::size_t>(OUT));
    for (auto& s : s_w) s = 0.001f + 0.01f * static_cast<float>(rng() % 100) / 100.0f;
    std::vector<std::int64_t> acc(static_cast<std::size_t>(B * OUT));
    std::vector<double> yr(acc.size());
    double ymax = 1e-6;
    for (int b = 0; b < B; ++b)
      for (int o = 0; o < OUT; ++o) {
        std::int64_t a = bias[static_cast<std::size_t>(o)];
        for (int i = 0; i < IN; ++i)
          a += static_cast<std::int64_t>(w[static_cast<std::size_t>(o * IN + i)]) *
               (x[static_cast<std::size_t>(b * IN + i)] - zi);
        acc[static_cast<std::size_t>(b * OUT + o)] = a;
        yr[static_cast<std::size_t>(b * OUT + o)] = static_cast<double>(a) * s_in * s_w[static_cast<std::size_t>(o)];
        ymax = std::max(ymax, std::abs(yr[static_cast<std::size_t>(b * OUT + o)]));
      }
    const float s_out = static_cast<float>(ymax / 90.0);
    const mi::Activation act = (it % 2) ? mi::Activation::relu : mi::Activation::none;
    const Requant rq = make_requant(s_in, s_w, s_out);
    mi::FullyConnectedParams p;
    p.input_zero_point = zi;
    p.output_zero_point = zo;
    REQUIRE(mi::activation_range(act, s_out, zo, p.act_min, p.act_max));
    p.out_multiplier = rq.m.data();
    p.out_shift = rq.shift.data();
    I8 out(acc.size());
    REQUIRE(mi::fully_connected(p, B, IN, OUT, x.data(), w.data(), bias.data(), out.data()));
    for (std::size_t k = 0; k < acc.size(); ++k) {
      const std::size_t o = k % static_cast<std::size_t>(OUT);
      if (out[k] != int_out(acc[k], rq.m[o], rq.shift[o], zo, p.act_min, p.act_max)) ++t.exact_mismatch;
      const std::int8_t fw = float_out(yr[k], act, s_out, zo);
      if (std::abs(out[k] - fw) > 1) ++t.float_far;
      ++t.values;
    }
  }
  CHECK(t.exact_mismatch == 0);
  CHECK(t.float_far == 0);
}

TEST_CASE("micro pools: random shapes vs references and rounding cases", "[micro][kernels]") {
  // Average pool ties round away from zero: windows {1,2} -> 1.5 -> 2, {-1,-2} -> -2.
  {
    const I8 x = {1, 2, -1, -2};
    mi::PoolParams p;
    p.filter_h = 1;
    p.filter_w = 2;
    p.stride_w = 2;
    I8 out(2);
    REQUIRE(mi::average_pool2d(p, {1, 1, 4, 1}, x.data(), {1, 1, 2, 1}, out.data()));
    CHECK(out == I8{2, -2});
    REQUIRE(mi::max_pool2d(p, {1, 1, 4, 1}, x.data(), {1, 1, 2, 1}, out.data()));
    CHECK(out == I8{2, -1});
    // SAME, width 3, filter 2, stride 2: out 2, total padding 1 goes after:
    // windows {x0, x1} and {x2} alone (padding excluded from the count).
    const I8 y = {1, 2, -5};
    p.padding = mi::Padding::same;
    REQUIRE(mi::average_pool2d(p, {1, 1, 3, 1}, y.data(), {1, 1, 2, 1}, out.data()));
    CHECK(out == I8{2, -5});
    // 1.75 -> 2, -1.25 -> -1, 7/3 = 2.33 -> 2, -8/3 = -2.67 -> -3
    const I8 z = {1, 2, 2, 2};
    p = mi::PoolParams{};
    p.filter_h = 2;
    p.filter_w = 2;
    I8 one(1);
    REQUIRE(mi::average_pool2d(p, {1, 2, 2, 1}, z.data(), {1, 1, 1, 1}, one.data()));
    CHECK(one[0] == 2);
    const I8 z2 = {-1, -1, -1, -2};
    REQUIRE(mi::average_pool2d(p, {1, 2, 2, 1}, z2.data(), {1, 1, 1, 1}, one.data()));
    CHECK(one[0] == -1);
  }
  std::mt19937 rng(31337);
  int exact_bad = 0, float_far = 0, max_bad = 0;
  long long values = 0;
  for (int it = 0; it < 400; ++it) {
    std::uniform_int_distribution<int> hw(1, 10), k(1, 4), st(1, 3), cd(1, 4);
    const int n = 1 + static_cast<int>(rng() % 2), H = hw(rng), W = hw(rng), C = cd(rng);
    mi::PoolParams p;
    p.padding = (rng() & 1) ? mi::Padding::same : mi::Padding::valid;
    p.filter_h = k(rng);
    p.filter_w = k(rng);
    p.stride_h = st(rng);
    p.stride_w = st(rng);
    const std::int32_t zp = static_cast<std::int32_t>(rng() % 256) - 128;
    const float s = 0.05f;
    if (it % 3 == 1) REQUIRE(mi::activation_range(mi::Activation::relu, s, zp, p.act_min, p.act_max));
    if (it % 3 == 2) REQUIRE(mi::activation_range(mi::Activation::relu6, s, zp, p.act_min, p.act_max));
    const mi::WindowGeometry g = mi::window_geometry(p.padding, H, W, p.filter_h, p.filter_w, p.stride_h, p.stride_w);
    if (!g.ok) continue;
    const mi::Shape4 in_s{n, H, W, C}, out_s{n, g.out_h, g.out_w, C};
    const I8 x = random_i8(rng, static_cast<std::size_t>(mi::flat_size(in_s)));
    I8 avg(static_cast<std::size_t>(mi::flat_size(out_s))), mx(avg.size());
    REQUIRE(mi::average_pool2d(p, in_s, x.data(), out_s, avg.data()));
    REQUIRE(mi::max_pool2d(p, in_s, x.data(), out_s, mx.data()));
    for (int b = 0; b < n; ++b)
      for (int oy = 0; oy < g.out_h; ++oy)
        for (int ox = 0; ox < g.out_w; ++ox)
          for (int c = 0; c < C; ++c) {
            long long sum = 0;
            int cnt = 0, best = -1000;
            double fsum = 0;
            for (int ky = 0; ky < p.filter_h; ++ky)
              for (int kx = 0; kx < p.filter_w; ++kx) {
                const int iy = oy * p.stride_h - g.pad_h + ky, ix = ox * p.stride_w - g.pad_w + kx;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                const int v = x[static_cast<std::size_t>(((b * H + iy) * W + ix) * C + c)];
                sum += v;
                ++cnt;
                best = std::max(best, v);
                fsum += mi::dequantize(static_cast<std::int8_t>(v), s, zp);
              }
            REQUIRE(cnt > 0);
            // Nearest integer to sum / cnt, ties away from zero, by exact arithmetic.
            const long long twice = 2 * std::llabs(sum) + cnt;  // floor((2|s| + c) / 2c)
            long long r = twice / (2LL * cnt);
            if (sum < 0) r = -r;
            const int want = std::clamp(static_cast<int>(r), p.act_min, p.act_max);
            const std::size_t o = static_cast<std::size_t>(((b * g.out_h + oy) * g.out_w + ox) * C + c);
            if (avg[o] != want) ++exact_bad;
            if (mx[o] != std::clamp(best, p.act_min, p.act_max)) ++max_bad;
            const int fw = std::clamp<int>(mi::quantize(static_cast<float>(fsum / cnt), s, zp), p.act_min, p.act_max);
            if (std::abs(avg[o] - fw) > 1) ++float_far;
            ++values;
          }
  }
  CHECK(values > 5000);
  CHECK(exact_bad == 0);
  CHECK(max_bad == 0);
  CHECK(float_far == 0);
}

TEST_CASE("micro global_average_pool2d", "[micro][kernels]") {
  // Two channels over a 1x3 image: ch0 {2, 3, -3} sum 2 -> 2/3 -> 1; ch1
  // {2, -2, -3} sum -3 -> -1. Average over 4 values {1, 2, 3, 4}: 2.5 -> 3.
  const I8 x = {2, 2, 3, -2, -3, -3};
  I8 out(2);
  REQUIRE(mi::global_average_pool2d({1, 1, 3, 2}, x.data(), -128, 127, out.data()));
  CHECK(out == I8{1, -1});
  const I8 y = {1, 2, 3, 4};
  I8 one(1);
  REQUIRE(mi::global_average_pool2d({1, 2, 2, 1}, y.data(), -128, 127, one.data()));
  CHECK(one[0] == 3);
  REQUIRE(mi::global_average_pool2d({1, 2, 2, 1}, y.data(), -128, 2, one.data()));
  CHECK(one[0] == 2);  // activation clamp
  // Batches: each image separately.
  const I8 z = {10, 20, -10, -21};
  I8 two(2);
  REQUIRE(mi::global_average_pool2d({2, 1, 2, 1}, z.data(), -128, 127, two.data()));
  CHECK(two == I8{15, -16});  // -15.5 -> -16
}

TEST_CASE("micro add, concatenation and reshape", "[micro][kernels]") {
  const mi::AddParams p = mi::prepare_add(0.1f, 3, 0.05f, -4, 0.12f, 1, mi::Activation::relu6);
  REQUIRE(p.ok);
  std::mt19937 rng(7);
  const I8 a = random_i8(rng, 500), b = random_i8(rng, 500);
  I8 out(500);
  REQUIRE(mi::add(p, 500, a.data(), b.data(), out.data()));
  int far = 0;
  for (std::size_t i = 0; i < out.size(); ++i) {
    CHECK(out[i] == mi::add_element(a[i], b[i], p));
    double y = mi::dequantize(a[i], 0.1f, 3) + static_cast<double>(mi::dequantize(b[i], 0.05f, -4));
    y = std::min(std::max(y, 0.0), 6.0);
    if (std::abs(out[i] - mi::quantize(static_cast<float>(y), 0.12f, 1)) > 1) ++far;
  }
  CHECK(far == 0);
  I8 inplace = a;
  REQUIRE(mi::add(p, 500, inplace.data(), b.data(), inplace.data()));
  CHECK(inplace == out);
  CHECK_FALSE(mi::add(mi::AddParams{}, 500, a.data(), b.data(), out.data()));

  // Concatenate NHWC tensors with 2 and 3 channels over n*h*w = 2 pixels.
  const I8 c1 = {1, 2, 3, 4}, c2 = {10, 20, 30, 40, 50, 60};
  const std::int8_t* ins[] = {c1.data(), c2.data()};
  const std::int32_t inner[] = {2, 3};
  I8 cat(10);
  REQUIRE(mi::concatenation(2, 2, ins, inner, cat.data()));
  CHECK(cat == I8{1, 2, 10, 20, 30, 3, 4, 40, 50, 60});
  const std::int32_t bad_inner[] = {2, -1};
  CHECK_FALSE(mi::concatenation(2, 2, ins, bad_inner, cat.data()));

  I8 r(6);
  REQUIRE(mi::reshape(6, c2.data(), r.data()));
  CHECK(r == c2);
  REQUIRE(mi::reshape(6, r.data(), r.data()));
  CHECK(r == c2);
  I8 overlap = {1, 2, 3, 4, 5, 6};
  REQUIRE(mi::reshape(4, overlap.data(), overlap.data() + 2));  // memmove semantics
  CHECK(overlap == I8{1, 2, 1, 2, 3, 4});
}

TEST_CASE("micro kernels refuse inconsistent shapes without writing", "[micro][kernels]") {
  const I8 x(16, 1), w(32, 1);
  const I32 m(8, 1 << 30), s(8, 0);
  mi::ConvParams p;
  p.out_multiplier = m.data();
  p.out_shift = s.data();
  I8 out(64, 0x33);
  const I8 untouched = out;
  // Output extent disagrees with VALID geometry (4 - 3 + 1 = 2, not 3).
  CHECK_FALSE(mi::conv2d(p, {1, 4, 4, 1}, x.data(), {2, 3, 3, 1}, w.data(), nullptr, {1, 3, 3, 2}, out.data()));
  // Filter input channels differ from the input's.
  CHECK_FALSE(mi::conv2d(p, {1, 4, 4, 1}, x.data(), {2, 3, 3, 2}, w.data(), nullptr, {1, 2, 2, 2}, out.data()));
  // Stride 0, zero point out of range, empty activation range, missing multipliers.
  p.stride_h = 0;
  CHECK_FALSE(mi::conv2d(p, {1, 4, 4, 1}, x.data(), {2, 3, 3, 1}, w.data(), nullptr, {1, 2, 2, 2}, out.data()));
  p.stride_h = 1;
  p.input_zero_point = 300;
  CHECK_FALSE(mi::conv2d(p, {1, 4, 4, 1}, x.data(), {2, 3, 3, 1}, w.data(), nullptr, {1, 2, 2, 2}, out.data()));
  p.input_zero_point = 0;
  p.act_min = 10;
  p.act_max = 5;
  CHECK_FALSE(mi::conv2d(p, {1, 4, 4, 1}, x.data(), {2, 3, 3, 1}, w.data(), nullptr, {1, 2, 2, 2}, out.data()));
  p.act_min = -128;
  p.act_max = 127;
  p.out_shift = nullptr;
  CHECK_FALSE(mi::conv2d(p, {1, 4, 4, 1}, x.data(), {2, 3, 3, 1}, w.data(), nullptr, {1, 2, 2, 2}, out.data()));
  p.out_shift = s.data();
  // Depthwise: channel count must be c_in * depth_multiplier.
  p.depth_multiplier = 2;
  CHECK_FALSE(mi::depthwise_conv2d(p, {1, 4, 4, 1}, x.data(), {1, 3, 3, 3}, w.data(), nullptr, {1, 2, 2, 3},
                                   out.data()));
  // Pools: channel mismatch, window beyond VALID input.
  mi::PoolParams pp;
  pp.filter_h = 5;
  CHECK_FALSE(mi::max_pool2d(pp, {1, 4, 4, 1}, x.data(), {1, 1, 4, 1}, out.data()));
  pp.filter_h = 1;
  CHECK_FALSE(mi::average_pool2d(pp, {1, 4, 4, 1}, x.data(), {1, 4, 4, 2}, out.data()));
  CHECK(out == untouched);
  // A conv that does pass the checks, for contrast.
  CHECK(mi::conv2d(p, {1, 4, 4, 1}, x.data(), {2, 3, 3, 1}, w.data(), nullptr, {1, 2, 2, 2}, out.data()));
}

namespace {

// Float softmax, then the TFLM output quantization (scale 1/256, zp -128).
std::int8_t float_softmax_q(const std::int8_t* row, int depth, int c, float s_in, float beta) {
  int mx = -128;
  for (int i = 0; i < depth; ++i) mx = std::max(mx, static_cast<int>(row[i]));
  double sum = 0;
  for (int i = 0; i < depth; ++i) sum += std::exp(static_cast<double>(beta) * s_in * (row[i] - mx));
  const double pr = std::exp(static_cast<double>(beta) * s_in * (row[c] - mx)) / sum;
  return mi::quantize(static_cast<float>(pr), 1.0f / 256.0f, -128);
}

#ifdef FLEETDL_TEST_HAVE_GEMMLOWP
// TFLite reference_ops::Softmax<int8_t, int8_t> re-assembled from gemmlowp's
// own FixedPoint types (the structure of TFLite's softmax.h, gemmlowp's math).
void gemmlowp_softmax_row(const mi::SoftmaxParams& p, const std::int8_t* in, int depth, std::int8_t* out) {
  using FixedPointScaledDiff = gemmlowp::FixedPoint<std::int32_t, 5>;
  using FixedPointAccum = gemmlowp::FixedPoint<std::int32_t, 12>;
  using FixedPoint0 = gemmlowp::FixedPoint<std::int32_t, 0>;
  int max_in_row = -128;
  for (int c = 0; c < depth; ++c) max_in_row = std::max(max_in_row, static_cast<int>(in[c]));
  auto rescaled = [&](std::int32_t diff) {
    const auto shifted = static_cast<std::int32_t>(static_cast<std::int64_t>(diff) << p.input_left_shift);
    return gemmlowp::SaturatingRoundingDoublingHighMul(shifted, p.input_multiplier);
  };
  FixedPointAccum sum_of_exps = FixedPointAccum::Zero();
  for (int c = 0; c < depth; ++c) {
    const std::int32_t diff = in[c] - max_in_row;
    if (diff >= p.diff_min)
      sum_of_exps = sum_of_exps + gemmlowp::Rescale<12>(gemmlowp::exp_on_negative_values(
                                      FixedPointScaledDiff::FromRaw(rescaled(diff))));
  }
  const auto raw = static_cast<std::uint32_t>(sum_of_exps.raw());
  const int headroom_plus_one = __builtin_clz(raw);
  const int num_bits_over_unit = 12 - headroom_plus_one;
  const auto shifted_sum_minus_one = static_cast<std::int32_t>((raw << headroom_plus_one) - (1u << 31));
  const FixedPoint0 shifted_scale =
      gemmlowp::one_over_one_plus_x_for_x_in_0_1(FixedPoint0::FromRaw(shifted_sum_minus_one));
  const int exponent = num_bits_over_unit + 31 - 8;
  REQUIRE(exponent >= 0);
  REQUIRE(exponent <= 31);
  for (int c = 0; c < depth; ++c) {
    const std::int32_t diff = in[c] - max_in_row;
    if (diff >= p.diff_min) {
      const FixedPoint0 e = gemmlowp::exp_on_negative_values(FixedPointScaledDiff::FromRaw(rescaled(diff)));
      const std::int32_t unsat = gemmlowp::RoundingDivideByPOT((shifted_scale * e).raw(), exponent);
      out[c] = static_cast<std::int8_t>(std::clamp(unsat - 128, -128, 127));
    } else {
      out[c] = -128;
    }
  }
}
#endif

}  // namespace

TEST_CASE("micro softmax: parameters, hand cases, float and gemmlowp references", "[micro][kernels]") {
  // s_in = 0.1f, beta 1: 0.1f * 2^26 = 6710886.5 = 0.8000000119 * 2^23 ->
  // M = 6710886.5 * 2^8 = 1717986944, left shift 23, diff_min = -floor(31 * 2^26 / 2^23) = -248.
  const mi::SoftmaxParams p = mi::prepare_softmax(0.1f);
  REQUIRE(p.ok);
  CHECK(p.input_multiplier == 1717986944);
  CHECK(p.input_left_shift == 23);
  CHECK(p.diff_min == -248);
  CHECK_FALSE(mi::prepare_softmax(0.0f).ok);
  CHECK_FALSE(mi::prepare_softmax(1e-9f).ok);  // beta * s * 2^26 <= 1
  const mi::SoftmaxParams big = mi::prepare_softmax(1000.0f);  // capped at 2^31 - 1: shift 31
  REQUIRE(big.ok);
  CHECK(big.input_left_shift == 31);
  CHECK(big.diff_min == 0);

  const I8 one = {5};
  I8 o1(1);
  REQUIRE(mi::softmax(p, 1, 1, one.data(), o1.data()));
  CHECK(o1[0] == 127);  // p = 1 -> 256 - 128, clamped
  const I8 two = {7, 7};
  I8 o2(2);
  REQUIRE(mi::softmax(p, 1, 2, two.data(), o2.data()));
  CHECK(o2 == I8{0, 0});  // p = 1/2 -> 128 - 128
  REQUIRE(mi::softmax(big, 1, 2, I8{3, 2}.data(), o2.data()));
  CHECK(o2 == I8{127, -128});
  // Rows of 600 equal values: TFLM aborts there (sum >= 2^28); here every p = 1/600 -> -128.
  const I8 flat(600, 9);
  I8 oflat(600);
  REQUIRE(mi::softmax(p, 1, 600, flat.data(), oflat.data()));
  CHECK(std::all_of(oflat.begin(), oflat.end(), [](std::int8_t v) { return v == -128; }));
  const I8 flat5000(5000, 9);
  I8 o5000(5000);
  REQUIRE(mi::softmax(p, 1, 5000, flat5000.data(), o5000.data()));  // the sum saturates, no UB
  CHECK(o5000[1234] == -128);

  std::mt19937 rng(2718);
  int far = 0, exact_bad = 0;
  long long values = 0, compared = 0;
  for (int it = 0; it < 400; ++it) {
    const float s_in = 0.01f + 0.5f * static_cast<float>(rng() % 1000) / 1000.0f;
    const float beta = (it % 5 == 0) ? 0.5f + static_cast<float>(rng() % 100) / 50.0f : 1.0f;
    const mi::SoftmaxParams q = mi::prepare_softmax(s_in, beta);
    REQUIRE(q.ok);
    const int depth = 1 + static_cast<int>(rng() % 60), outer = 1 + static_cast<int>(rng() % 3);
    const int lo = (it % 4 == 0) ? 100 : -128;  // some rows crowded near the max
    I8 x = random_i8(rng, static_cast<std::size_t>(depth * outer), lo, 127);
    I8 y(x.size());
    REQUIRE(mi::softmax(q, outer, depth, x.data(), y.data()));
    I8 inplace = x;
    REQUIRE(mi::softmax(q, outer, depth, inplace.data(), inplace.data()));
    CHECK(inplace == y);
    for (int r = 0; r < outer; ++r) {
      for (int c = 0; c < depth; ++c) {
        const std::int8_t fw = float_softmax_q(x.data() + r * depth, depth, c, s_in, beta);
        if (std::abs(y[static_cast<std::size_t>(r * depth + c)] - fw) > 1) ++far;
        ++values;
      }
#ifdef FLEETDL_TEST_HAVE_GEMMLOWP
      I8 ref(static_cast<std::size_t>(depth));
      gemmlowp_softmax_row(q, x.data() + r * depth, depth, ref.data());
      for (int c = 0; c < depth; ++c) {
        if (ref[static_cast<std::size_t>(c)] != y[static_cast<std::size_t>(r * depth + c)]) ++exact_bad;
        ++compared;
      }
#endif
    }
  }
  INFO("values " << values << ", compared with gemmlowp " << compared);
  CHECK(values > 5000);
  CHECK(far == 0);
  CHECK(exact_bad == 0);
#ifdef FLEETDL_TEST_HAVE_GEMMLOWP
  CHECK(compared == values);
#endif
}
