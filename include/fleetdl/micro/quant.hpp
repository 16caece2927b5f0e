// fleetdl/micro/quant.hpp — int8 requantization arithmetic of the micro
// runtime, bit-exact with TensorFlow Lite Micro's reference kernels (default
// "double rounding" build, i.e. TFLITE_SINGLE_ROUNDING off) and with gemmlowp's
// fixed-point primitives.
//
//   quantize_multiplier         real multiplier -> (Q0.31 multiplier, shift),
//                               TFLite QuantizeMultiplier; refuses NaN, inf,
//                               negative and too-large multipliers (ok=false)
//   saturating_rounding_doubling_high_mul   gemmlowp SRDHM (ARM VQRDMULH;
//                               ties round toward +inf)
//   rounding_divide_by_pot      gemmlowp RoundingDivideByPOT (round half away
//                               from zero)
//   multiply_by_quantized_multiplier        TFLite MultiplyByQuantizedMultiplier
//   quantize / dequantize       TFLite QUANTIZE / DEQUANTIZE of one value
//   activation_range            TFLite CalculateActivationRangeQuantized (int8)
//   AddParams, prepare_add, add_element     the int8 ADD arithmetic
//   conv_effective_scale        s_in * s_w / s_out in double, as TFLM does
//
// Freestanding: only <cstdint>, <cmath>, <climits>, <cstddef>, <limits>; no heap,
// no exceptions, no RTTI. Every integer operation is free of undefined
// behaviour for every input (wrapping is done in unsigned arithmetic where
// TFLM's int32 code would overflow); for the inputs TFLM accepts the results
// are the ones TFLM computes. The integer primitives are constexpr; the float
// ones use <cmath> (frexp, round), which is not constexpr before C++23.
//
// Check that this header and micro/kernels.hpp build without exceptions/RTTI:
//   echo '#include "fleetdl/micro/kernels.hpp"' | g++ -std=c++20 -fno-exceptions
//     -fno-rtti -Wall -Wextra -Wpedantic -Werror -I include -fsyntax-only -x c++ -
// (one line); tests/unit/test_micro_quant.cpp also states it with static_asserts.
//
// Sources: TensorFlow Lite quantization_util.cc (QuantizeMultiplier,
// PreprocessSoftmaxScaling), kernels/internal/common.{h,cc}
// (MultiplyByQuantizedMultiplier), kernel_util.cc
// (CalculateActivationRangeQuantized), micro/kernels/add_common.cc; gemmlowp
// fixedpoint/fixedpoint.h; Jacob et al., "Quantization and Training of Neural
// Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018, §2.2.
// The facts used are summarised in shared/REFERENCES.md §3.
#pragma once

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

namespace fleetdl::micro {

inline constexpr std::int32_t kInt8Min = -128;
inline constexpr std::int32_t kInt8Max = 127;

namespace detail {

// Two's complement wrapping int32 arithmetic without UB: done in uint32 and
// converted back (modular conversion is defined since C++20). This is what
// TFLM's plain `int32 + int32` compiles to on every target it supports.
constexpr std::int32_t wrap_add(std::int32_t a, std::int32_t b) noexcept {
  return static_cast<std::int32_t>(static_cast<std::uint32_t>(a) + static_cast<std::uint32_t>(b));
}
constexpr std::int32_t wrap_sub(std::int32_t a, std::int32_t b) noexcept {
  return static_cast<std::int32_t>(static_cast<std::uint32_t>(a) - static_cast<std::uint32_t>(b));
}
constexpr std::int32_t wrap_mul(std::int32_t a, std::int32_t b) noexcept {
  return static_cast<std::int32_t>(static_cast<std::uint32_t>(a) * static_cast<std::uint32_t>(b));
}
// x * 2^left, wrapping; left in [0, 31].
constexpr std::int32_t wrap_shl(std::int32_t x, int left) noexcept {
  return static_cast<std::int32_t>(static_cast<std::uint32_t>(x) << left);
}

constexpr std::int32_t clamp_i32(std::int32_t v, std::int32_t lo, std::int32_t hi) noexcept {
  return v < lo ? lo : (v > hi ? hi : v);
}

// static_cast<int32_t>(r) for a float already rounded to an integer value, but
// saturating instead of UB outside int32 (TFLM has UB there); NaN -> 0.
inline std::int32_t saturating_f2i(float r) noexcept {
  if (!(r == r)) return 0;
  if (r >= 2147483648.0f) return INT32_MAX;
  if (r < -2147483648.0f) return INT32_MIN;
  return static_cast<std::int32_t>(r);
}

}  // namespace detail

// ---------------------------------------------------------------------------
// Fixed-point primitives (gemmlowp, scalar int32).

// round(a * b / 2^31) with ties rounded UP (toward +inf: -0.5 -> 0, 0.5 -> 1),
// saturating the single overflow case INT32_MIN * INT32_MIN to INT32_MAX.
// Same as ARM VQRDMULH. (The truncating division with a nudge of 2^30 or
// 1 - 2^30 is floor(ab / 2^31 + 1/2).)
constexpr std::int32_t saturating_rounding_doubling_high_mul(std::int32_t a, std::int32_t b) noexcept {
  if (a == b && a == INT32_MIN) return INT32_MAX;
  const std::int64_t ab = static_cast<std::int64_t>(a) * static_cast<std::int64_t>(b);
  const std::int64_t nudge = ab >= 0 ? (std::int64_t{1} << 30) : (1 - (std::int64_t{1} << 30));
  // |ab + nudge| < 2^62, and C++ division truncates toward zero as gemmlowp assumes.
  return static_cast<std::int32_t>((ab + nudge) / (std::int64_t{1} << 31));
}

// x / 2^exponent rounded to nearest, ties away from zero. gemmlowp requires
// exponent in [0, 31]; an exponent outside is clamped into that range here
// (so no shift is ever UB), which TFLM never does because it asserts.
constexpr std::int32_t rounding_divide_by_pot(std::int32_t x, int exponent) noexcept {
  if (exponent < 0) exponent = 0;
  if (exponent > 31) exponent = 31;
  const std::int32_t mask = static_cast<std::int32_t>((std::int64_t{1} << exponent) - 1);
  const std::int32_t remainder = x & mask;
  const std::int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  // x >> exponent is an arithmetic shift (defined since C++20); adding 1 cannot
  // overflow because the quotient is < 2^31 - 1 whenever exponent > 0.
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

// The shift range TFLM's MultiplyByQuantizedMultiplier accepts (it DCHECKs
// -31 <= shift <= 30); quantize_multiplier() only returns ok multipliers whose
// shift lies here.
inline constexpr int kMinShift = -31;
inline constexpr int kMaxShift = 30;

// TFLite MultiplyByQuantizedMultiplier, default double rounding:
//   RoundingDivideByPOT(SRDHM(x * 2^left, M), right),
//   left = max(shift, 0), right = max(-shift, 0).
// Bit-exact with TFLM whenever TFLM's own arithmetic is defined: shift in
// [kMinShift, kMaxShift] and x * 2^left representable in int32 (always true for
// shift <= 0). When x * 2^left overflows, TFLM has UB; here the product wraps
// modulo 2^32, which is what TFLM's compiled `x * (1 << left)` yields on
// two's complement hardware. A shift outside [-31, 31] is clamped to that range.
// M should be >= 0 (TFLM DCHECKs it); a negative M is still well defined here.
constexpr std::int32_t multiply_by_quantized_multiplier(std::int32_t x, std::int32_t multiplier,
                                                        int shift) noexcept {
  if (shift > 31) shift = 31;
  if (shift < -31) shift = -31;
  const int left = shift > 0 ? shift : 0;
  const int right = shift > 0 ? 0 : -shift;
  return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(detail::wrap_shl(x, left), multiplier),
                                right);
}

// ---------------------------------------------------------------------------
// Quantizing a real multiplier.

// A real multiplier eff ~= multiplier * 2^(shift - 31), multiplier in
// [2^30, 2^31) (or 0). `ok` is false when the value must be refused by a
// verifier; multiplier and shift are then 0.
struct QuantizedMultiplier {
  std::int32_t multiplier = 0;
  int shift = 0;
  bool ok = false;
};

// TFLite QuantizeMultiplier:
//   eff == 0            -> {0, 0}
//   q = frexp(eff, &shift) (q in [0.5, 1)); q_fixed = round(q * 2^31), ties away
//   from zero; q_fixed == 2^31 -> q_fixed = 2^30, ++shift;
//   shift < -31 -> {0, 0} (eff < ~2^-32 is flushed to zero, as TFLM does).
// Refused (ok = false): NaN, +-inf, eff < 0 (TFLM's callers require eff >= 0
// and MultiplyByQuantizedMultiplier DCHECKs M >= 0), and eff >= 2^30 - 0.25ulp
// i.e. any result with shift > 30, which MultiplyByQuantizedMultiplier cannot
// apply (TFLM DCHECKs shift <= 30). -0.0 counts as 0.
inline QuantizedMultiplier quantize_multiplier(double eff) noexcept;

namespace detail {
// TFLite QuantizeMultiplier for a finite eff > 0 without the shift <= 30 check
// (softmax's PreprocessSoftmaxScaling legitimately produces shift 31).
inline void quantize_multiplier_raw(double eff, std::int32_t& multiplier, int& shift) noexcept {
  shift = 0;
  const double q = std::frexp(eff, &shift);
  // q * 2^31 is exact (a power-of-two scaling) and lies in [2^30, 2^31).
  std::int64_t q_fixed = static_cast<std::int64_t>(std::round(q * 2147483648.0));
  if (q_fixed == (std::int64_t{1} << 31)) {
    q_fixed /= 2;
    ++shift;
  }
  if (shift < -31) {
    shift = 0;
    q_fixed = 0;
  }
  multiplier = static_cast<std::int32_t>(q_fixed);
}
}  // namespace detail

inline QuantizedMultiplier quantize_multiplier(double eff) noexcept {
  QuantizedMultiplier r;
  if (!(eff >= 0.0) || eff == std::numeric_limits<double>::infinity()) return r;  // NaN, <0, inf
  if (eff == 0.0) {
    r.ok = true;
    return r;
  }
  std::int32_t m = 0;
  int shift = 0;
  detail::quantize_multiplier_raw(eff, m, shift);
  if (shift > kMaxShift) return r;
  r.multiplier = m;
  r.shift = shift;
  r.ok = true;
  return r;
}

// The effective per-channel scale of conv / depthwise / dense, computed as
// TFLM's PopulateConvolutionQuantizationParams does: each float widened to
// double, then s_in * s_w / s_out in double.
inline double conv_effective_scale(float input_scale, float weight_scale, float output_scale) noexcept {
  return static_cast<double>(input_scale) * static_cast<double>(weight_scale) / static_cast<double>(output_scale);
}

// ---------------------------------------------------------------------------
// QUANTIZE / DEQUANTIZE of one value.

// TFLite AffineQuantize to int8: clamp((int32)round(x / scale) + zp, -128, 127),
// the division and std::round in float (round half away from zero). Where TFLM
// is undefined (x / scale outside int32, or NaN) this saturates, and NaN maps
// to zp.
inline std::int8_t quantize(float x, float scale, std::int32_t zero_point) noexcept {
  const std::int64_t q =
      static_cast<std::int64_t>(detail::saturating_f2i(std::round(x / scale))) + static_cast<std::int64_t>(zero_point);
  return static_cast<std::int8_t>(q < kInt8Min ? kInt8Min : (q > kInt8Max ? kInt8Max : q));
}

// TFLite Dequantize: (float)((double)scale * (q - zp)).
inline float dequantize(std::int8_t q, float scale, std::int32_t zero_point) noexcept {
  return static_cast<float>(static_cast<double>(scale) *
                            static_cast<double>(static_cast<std::int64_t>(q) - static_cast<std::int64_t>(zero_point)));
}

// ---------------------------------------------------------------------------
// Fused activations.

enum class Activation : std::uint8_t { none = 0, relu = 1, relu_n1_to_1 = 2, relu6 = 3 };

struct ActivationRange {
  std::int32_t min = kInt8Min;
  std::int32_t max = kInt8Max;
};

// TFLite CalculateActivationRangeQuantized for an int8 output with (scale, zp):
// quantize(f) = zp + (int32)round(f / scale) in float, then
//   none          [-128, 127]
//   relu          [max(-128, quantize(0)), 127]
//   relu6         [max(-128, quantize(0)), min(127, quantize(6))]
//   relu_n1_to_1  [max(-128, quantize(-1)), min(127, quantize(1))]
// Returns false (and leaves [-128, 127]) when scale is not finite and > 0, the
// zero point is outside [-128, 127], or `act` is not one of the enumerators.
// With those checks passed the range is never empty (quantize(0) = zp).
inline bool activation_range(Activation act, float scale, std::int32_t zero_point, std::int32_t& act_min,
                             std::int32_t& act_max) noexcept {
  act_min = kInt8Min;
  act_max = kInt8Max;
  if (!(scale > 0.0f) || !(scale <= std::numeric_limits<float>::max())) return false;
  if (zero_point < kInt8Min || zero_point > kInt8Max) return false;
  auto q = [&](float f) -> std::int32_t {
    const std::int64_t v = static_cast<std::int64_t>(zero_point) +
                           static_cast<std::int64_t>(detail::saturating_f2i(std::round(f / scale)));
    return static_cast<std::int32_t>(v < INT32_MIN ? INT32_MIN : (v > INT32_MAX ? INT32_MAX : v));
  };
  switch (act) {
    case Activation::none:
      return true;
    case Activation::relu:
      act_min = q(0.0f) > kInt8Min ? q(0.0f) : kInt8Min;
      return true;
    case Activation::relu6:
      act_min = q(0.0f) > kInt8Min ? q(0.0f) : kInt8Min;
      act_max = q(6.0f) < kInt8Max ? q(6.0f) : kInt8Max;
      return true;
    case Activation::relu_n1_to_1:
      act_min = q(-1.0f) > kInt8Min ? q(-1.0f) : kInt8Min;
      act_max = q(1.0f) < kInt8Max ? q(1.0f) : kInt8Max;
      return true;
  }
  return false;
}

// ---------------------------------------------------------------------------
// int8 ADD (TFLM add_common.cc + reference_integer_ops::AddElementwise).

struct AddParams {
  std::int32_t input1_offset = 0;  // -zp1
  std::int32_t input2_offset = 0;  // -zp2
  std::int32_t output_offset = 0;  // zp_out
  int left_shift = 20;
  std::int32_t input1_multiplier = 0;
  int input1_shift = 0;
  std::int32_t input2_multiplier = 0;
  int input2_shift = 0;
  std::int32_t output_multiplier = 0;
  int output_shift = 0;
  std::int32_t act_min = kInt8Min;
  std::int32_t act_max = kInt8Max;
  bool ok = false;
};

// left_shift = 20; tm = 2 * (double)max(s1, s2) (max taken in float);
// multipliers of s1/tm, s2/tm and tm / (2^20 * s_out), each with
// quantize_multiplier(). ok is false when a scale is not finite and > 0, a
// zero point is outside [-128, 127], the activation is unknown, or the output
// multiplier is >= 1 (TFLM's QuantizeMultiplierSmallerThanOneExp refuses it:
// it needs s_out < 2 max(s1, s2) / 2^20).
inline AddParams prepare_add(float s1, std::int32_t zp1, float s2, std::int32_t zp2, float s_out,
                             std::int32_t zp_out, Activation act = Activation::none) noexcept {
  AddParams p;
  auto finite_pos = [](float s) { return s > 0.0f && s <= std::numeric_limits<float>::max(); };
  auto zp_ok = [](std::int32_t z) { return z >= kInt8Min && z <= kInt8Max; };
  if (!finite_pos(s1) || !finite_pos(s2) || !finite_pos(s_out) || !zp_ok(zp1) || !zp_ok(zp2) || !zp_ok(zp_out))
    return p;
  p.input1_offset = -zp1;
  p.input2_offset = -zp2;
  p.output_offset = zp_out;
  p.left_shift = 20;
  const double twice_max = 2.0 * static_cast<double>(s1 > s2 ? s1 : s2);
  const double real_out = twice_max / (static_cast<double>(1 << 20) * static_cast<double>(s_out));
  const QuantizedMultiplier m1 = quantize_multiplier(static_cast<double>(s1) / twice_max);
  const QuantizedMultiplier m2 = quantize_multiplier(static_cast<double>(s2) / twice_max);
  const QuantizedMultiplier mo = quantize_multiplier(real_out);
  if (!m1.ok || !m2.ok || !mo.ok || !(real_out < 1.0) || mo.shift > 0 || m1.shift > 0 || m2.shift > 0) return p;
  p.input1_multiplier = m1.multiplier;
  p.input1_shift = m1.shift;
  p.input2_multiplier = m2.multiplier;
  p.input2_shift = m2.shift;
  p.output_multiplier = mo.multiplier;
  p.output_shift = mo.shift;
  if (!activation_range(act, s_out, zp_out, p.act_min, p.act_max)) return p;
  p.ok = true;
  return p;
}

// One element of int8 ADD:
//   v_i = (q_i - zp_i) * 2^20; sv_i = MBQM(v_i, M_i, sh_i);
//   out = clamp(MBQM(sv_1 + sv_2, M_o, sh_o) + zp_out, act_min, act_max).
// For params from prepare_add() nothing overflows; the wrapping helpers only
// keep hand-made params from causing UB.
constexpr std::int8_t add_element(std::int8_t a, std::int8_t b, const AddParams& p) noexcept {
  const std::int32_t v1 = detail::wrap_shl(detail::wrap_add(p.input1_offset, a), p.left_shift & 31);
  const std::int32_t v2 = detail::wrap_shl(detail::wrap_add(p.input2_offset, b), p.left_shift & 31);
  const std::int32_t s1 = multiply_by_quantized_multiplier(v1, p.input1_multiplier, p.input1_shift);
  const std::int32_t s2 = multiply_by_quantized_multiplier(v2, p.input2_multiplier, p.input2_shift);
  const std::int32_t raw = detail::wrap_add(
      multiply_by_quantized_multiplier(detail::wrap_add(s1, s2), p.output_multiplier, p.output_shift),
      p.output_offset);
  return static_cast<std::int8_t>(detail::clamp_i32(detail::clamp_i32(raw, p.act_min, p.act_max), kInt8Min, kInt8Max));
}

}  // namespace fleetdl::micro
