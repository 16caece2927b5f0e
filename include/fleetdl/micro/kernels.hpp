// fleetdl/micro/kernels.hpp — int8 reference kernels of the micro runtime, on
// raw pointers and small shape structs, bit-exact with TensorFlow Lite Micro's
// reference kernels (tensorflow/lite/kernels/internal/reference/integer_ops/*,
// reference/softmax.h, micro/kernels/*; default double-rounding build).
//
//   conv2d                 CONV_2D, per-channel weights (conv2d_channels: a range of output channels)
//   depthwise_conv2d       DEPTHWISE_CONV_2D, per-channel weights, depth multiplier
//   fully_connected        FULLY_CONNECTED, per-channel weights (fully_connected_rows: a range of outputs)
//   max_pool2d             MAX_POOL_2D
//   average_pool2d         AVERAGE_POOL_2D
//   global_average_pool2d  AVERAGE_POOL_2D with the whole H x W as window
//   add                    ADD (same shapes, no broadcast), see quant.hpp
//   concatenation          CONCATENATION of int8 tensors with equal scale / zp
//   reshape                RESHAPE (a copy; no-op in place)
//   softmax                SOFTMAX int8 -> int8 (gemmlowp fixed-point exp)
//   output_size, padding_before, window_geometry   constexpr shape helpers
//
// Quantization (shared/REFERENCES.md §3): activations asymmetric int8 with a
// zero point in [-128, 127]; weights symmetric int8 (zero point 0) with one
// scale per output channel; bias int32 with scale s_in * s_w[c] and zero
// point 0. The per-channel (multiplier, shift) pairs come from
// quantize_multiplier(conv_effective_scale(s_in, s_w[c], s_out)); the clamp
// range from activation_range().
//
// Layouts (all row-major, last index fastest, as TFLite):
//   activations  NHWC                       Shape4{n, h, w, c}
//   conv filter  OHWI  [out_c][kh][kw][in_c] Shape4{out_c, kh, kw, in_c}
//   depthwise    1HWO  [1][kh][kw][in_c * depth_multiplier]; output channel
//                oc = ic * depth_multiplier + m reads input channel ic
//   dense        weights [out][in]; input [batches][in]; output [batches][out]
//
// Padding and output size are computed as TFLite's ComputeOutSize /
// ComputePaddingWithOffset: SAME out = ceil(in / stride), VALID
// out = ceil((in - eff + 1) / stride) with eff = (k - 1) * dilation + 1;
// padding before (top / left) = max(0, (out - 1) * stride + eff - in) / 2, the
// odd pixel going to the bottom / right. Padded positions contribute nothing
// (conv: as if filled with the input zero point; pools: excluded from the
// window). Dilation is supported for conv and depthwise (>= 1); pools have none.
//
// Safety: no heap, no exceptions, no scratch. Every kernel first checks its
// shapes and parameters in O(1) (plus O(#inputs) for concatenation) and
// returns false without writing when they are inconsistent, so no shapes can
// make it read or write out of bounds as long as each pointer really has the
// documented number of elements (flat_size of its shape, out-channel counts for
// multiplier/shift/bias). Accumulators wrap modulo 2^32 (in unsigned
// arithmetic, no UB) where TFLM's int32 arithmetic would overflow.
#pragma once

#include "fleetdl/micro/quant.hpp"

#include <climits>
#include <cstddef>
#include <cstdint>

namespace fleetdl::micro {

enum class Padding : std::uint8_t { same = 0, valid = 1 };

// An NHWC shape. Every dim >= 1 and the element count <= INT32_MAX for a
// valid shape (see shape_ok).
struct Shape4 {
  std::int32_t n = 1;
  std::int32_t h = 1;
  std::int32_t w = 1;
  std::int32_t c = 1;
};

constexpr bool shape_ok(const Shape4& s) noexcept {
  if (s.n < 1 || s.h < 1 || s.w < 1 || s.c < 1) return false;
  // stepwise, stopping as soon as the product passes INT32_MAX: n*h*w*c of
  // four values near 2^31 would overflow even int64 (found by the fuzzer)
  std::int64_t size = s.n;
  size *= s.h;  // each step: size <= INT32_MAX and a factor < 2^31, below 2^62
  if (size > INT32_MAX) return false;
  size *= s.w;
  if (size > INT32_MAX) return false;
  size *= s.c;
  return size <= INT32_MAX;
}

// Element count; 0 for an invalid shape.
constexpr std::int32_t flat_size(const Shape4& s) noexcept {
  return shape_ok(s) ? s.n * s.h * s.w * s.c : 0;
}

// Output extent of a window op along one axis (TFLite ComputeOutSize); 0 when
// the arguments are invalid (any of in, kernel, stride, dilation < 1, a
// dilated kernel or input larger than 2^30, or VALID with in < the dilated
// kernel), which a verifier must refuse.
constexpr std::int32_t output_size(Padding padding, std::int32_t in, std::int32_t kernel, std::int32_t stride,
                                   std::int32_t dilation = 1) noexcept {
  if (in < 1 || kernel < 1 || stride < 1 || dilation < 1) return 0;
  const std::int64_t eff = static_cast<std::int64_t>(kernel - 1) * dilation + 1;
  if (eff > (std::int64_t{1} << 30) || in > (std::int32_t{1} << 30)) return 0;
  if (padding == Padding::same) return static_cast<std::int32_t>((static_cast<std::int64_t>(in) + stride - 1) / stride);
  if (padding == Padding::valid) {
    if (in < eff) return 0;
    return static_cast<std::int32_t>((static_cast<std::int64_t>(in) - eff + stride) / stride);
  }
  return 0;
}

// Padding before (top / left) along one axis for a given output extent
// (TFLite ComputePaddingWithOffset without the offset).
constexpr std::int32_t padding_before(std::int32_t in, std::int32_t kernel, std::int32_t stride, std::int32_t dilation,
                                      std::int32_t out) noexcept {
  const std::int64_t eff = static_cast<std::int64_t>(kernel - 1) * dilation + 1;
  const std::int64_t total = static_cast<std::int64_t>(out - 1) * stride + eff - in;
  return total > 0 ? static_cast<std::int32_t>(total / 2) : 0;
}

struct WindowGeometry {
  std::int32_t out_h = 0;
  std::int32_t out_w = 0;
  std::int32_t pad_h = 0;  // top
  std::int32_t pad_w = 0;  // left
  bool ok = false;
};

// Output extent and padding of a 2-D window op, as TFLite's
// ComputePaddingHeightWidth. ok is false when output_size() is 0 on an axis.
constexpr WindowGeometry window_geometry(Padding padding, std::int32_t in_h, std::int32_t in_w, std::int32_t kernel_h,
                                         std::int32_t kernel_w, std::int32_t stride_h, std::int32_t stride_w,
                                         std::int32_t dilation_h = 1, std::int32_t dilation_w = 1) noexcept {
  WindowGeometry g;
  g.out_h = output_size(padding, in_h, kernel_h, stride_h, dilation_h);
  g.out_w = output_size(padding, in_w, kernel_w, stride_w, dilation_w);
  if (g.out_h == 0 || g.out_w == 0) return WindowGeometry{};
  g.pad_h = padding_before(in_h, kernel_h, stride_h, dilation_h, g.out_h);
  g.pad_w = padding_before(in_w, kernel_w, stride_w, dilation_w, g.out_w);
  g.ok = true;
  return g;
}

namespace detail {

constexpr bool zp_ok(std::int32_t zp) noexcept { return zp >= kInt8Min && zp <= kInt8Max; }
constexpr bool act_ok(std::int32_t lo, std::int32_t hi) noexcept {
  return lo >= kInt8Min && hi <= kInt8Max && lo <= hi;
}

// acc -> int8: bias, requantize, output zero point, clamp (shared by conv,
// depthwise and dense).
constexpr std::int8_t requantize_acc(std::int32_t acc, const std::int32_t* bias, std::int32_t channel,
                                     std::int32_t multiplier, std::int32_t shift, std::int32_t out_zp,
                                     std::int32_t act_min, std::int32_t act_max) noexcept {
  if (bias != nullptr) acc = wrap_add(acc, bias[channel]);
  acc = multiply_by_quantized_multiplier(acc, multiplier, static_cast<int>(shift));
  acc = wrap_add(acc, out_zp);
  return static_cast<std::int8_t>(clamp_i32(acc, act_min, act_max));
}

}  // namespace detail

// ---------------------------------------------------------------------------
// Convolutions.

struct ConvParams {
  Padding padding = Padding::valid;
  std::int32_t stride_h = 1;
  std::int32_t stride_w = 1;
  std::int32_t dilation_h = 1;
  std::int32_t dilation_w = 1;
  std::int32_t depth_multiplier = 1;  // depthwise_conv2d only
  std::int32_t input_zero_point = 0;
  std::int32_t output_zero_point = 0;
  std::int32_t act_min = kInt8Min;
  std::int32_t act_max = kInt8Max;
  const std::int32_t* out_multiplier = nullptr;  // [output channels]
  const std::int32_t* out_shift = nullptr;       // [output channels], each in [-31, 30]
};

namespace detail {
constexpr bool conv_params_ok(const ConvParams& p) noexcept {
  return zp_ok(p.input_zero_point) && zp_ok(p.output_zero_point) && act_ok(p.act_min, p.act_max) &&
         p.out_multiplier != nullptr && p.out_shift != nullptr;
}
}  // namespace detail

// CONV_2D (TFLite reference_integer_ops::ConvPerChannel):
//   acc[oc] = sum_{ky,kx,ic inside the input} w[oc,ky,kx,ic] * (x[iy,ix,ic] - zp_in)
//   out = clamp(MBQM(acc + bias[oc], M[oc], shift[oc]) + zp_out, act_min, act_max)
// Shapes: input {n, h, w, c_in}; filter OHWI {c_out, kh, kw, c_in} (no groups);
// output {n, out_h, out_w, c_out} with out_h / out_w from window_geometry().
// bias may be nullptr (no bias).
//
// conv2d_channels computes only the output channels [oc_begin, oc_end):
// `filter_rows` holds just their (oc_end - oc_begin) OHWI filters, while
// multipliers, shifts and bias are still indexed by the absolute channel and
// the output keeps its full layout. The interpreter runs an encoded filter
// one channel at a time this way (micro/weight_codec.hpp); every output value
// is the same as conv2d's.
inline bool conv2d_channels(const ConvParams& p, const Shape4& in_shape, const std::int8_t* input,
                            const Shape4& filter_shape, const std::int8_t* filter_rows, std::int32_t oc_begin,
                            std::int32_t oc_end, const std::int32_t* bias, const Shape4& out_shape,
                            std::int8_t* output) noexcept {
  if (!shape_ok(in_shape) || !shape_ok(filter_shape) || !shape_ok(out_shape) || input == nullptr ||
      filter_rows == nullptr || output == nullptr || !detail::conv_params_ok(p))
    return false;
  if (filter_shape.c != in_shape.c || filter_shape.n != out_shape.c || out_shape.n != in_shape.n) return false;
  if (oc_begin < 0 || oc_begin >= oc_end || oc_end > out_shape.c) return false;
  const WindowGeometry g = window_geometry(p.padding, in_shape.h, in_shape.w, filter_shape.h, filter_shape.w,
                                           p.stride_h, p.stride_w, p.dilation_h, p.dilation_w);
  if (!g.ok || g.out_h != out_shape.h || g.out_w != out_shape.w) return false;

  const std::int32_t in_offset = -p.input_zero_point;
  for (std::int32_t b = 0; b < in_shape.n; ++b) {
    for (std::int32_t oy = 0; oy < out_shape.h; ++oy) {
      const std::int32_t iy0 = oy * p.stride_h - g.pad_h;
      for (std::int32_t ox = 0; ox < out_shape.w; ++ox) {
        const std::int32_t ix0 = ox * p.stride_w - g.pad_w;
        std::int8_t* out_px = output + ((b * out_shape.h + oy) * out_shape.w + ox) * out_shape.c;
        for (std::int32_t oc = oc_begin; oc < oc_end; ++oc) {
          std::int32_t acc = 0;
          for (std::int32_t ky = 0; ky < filter_shape.h; ++ky) {
            const std::int32_t iy = iy0 + p.dilation_h * ky;
            if (iy < 0 || iy >= in_shape.h) continue;
            for (std::int32_t kx = 0; kx < filter_shape.w; ++kx) {
              const std::int32_t ix = ix0 + p.dilation_w * kx;
              if (ix < 0 || ix >= in_shape.w) continue;
              const std::int8_t* x = input + ((b * in_shape.h + iy) * in_shape.w + ix) * in_shape.c;
              const std::int8_t* w =
                  filter_rows + (((oc - oc_begin) * filter_shape.h + ky) * filter_shape.w + kx) * filter_shape.c;
              for (std::int32_t ic = 0; ic < in_shape.c; ++ic)
                acc = detail::wrap_add(acc, static_cast<std::int32_t>(w[ic]) * (static_cast<std::int32_t>(x[ic]) + in_offset));
            }
          }
          out_px[oc] = detail::requantize_acc(acc, bias, oc, p.out_multiplier[oc], p.out_shift[oc],
                                              p.output_zero_point, p.act_min, p.act_max);
        }
      }
    }
  }
  return true;
}

inline bool conv2d(const ConvParams& p, const Shape4& in_shape, const std::int8_t* input, const Shape4& filter_shape,
                   const std::int8_t* filter, const std::int32_t* bias, const Shape4& out_shape,
                   std::int8_t* output) noexcept {
  return conv2d_channels(p, in_shape, input, filter_shape, filter, 0, out_shape.c, bias, out_shape, output);
}

// DEPTHWISE_CONV_2D (TFLite reference_integer_ops::DepthwiseConvPerChannel):
// output channel oc = ic * depth_multiplier + m sees only input channel ic:
//   acc[oc] = sum_{ky,kx inside} w[0,ky,kx,oc] * (x[iy,ix,ic] - zp_in)
// Shapes: input {n, h, w, c_in}; filter {1, kh, kw, c_in * depth_multiplier};
// output {n, out_h, out_w, c_in * depth_multiplier}. bias may be nullptr.
inline bool depthwise_conv2d(const ConvParams& p, const Shape4& in_shape, const std::int8_t* input,
                             const Shape4& filter_shape, const std::int8_t* filter, const std::int32_t* bias,
                             const Shape4& out_shape, std::int8_t* output) noexcept {
  if (!shape_ok(in_shape) || !shape_ok(filter_shape) || !shape_ok(out_shape) || input == nullptr ||
      filter == nullptr || output == nullptr || !detail::conv_params_ok(p) || p.depth_multiplier < 1)
    return false;
  if (static_cast<std::int64_t>(in_shape.c) * p.depth_multiplier != out_shape.c || filter_shape.n != 1 ||
      filter_shape.c != out_shape.c || out_shape.n != in_shape.n)
    return false;
  const WindowGeometry g = window_geometry(p.padding, in_shape.h, in_shape.w, filter_shape.h, filter_shape.w,
                                           p.stride_h, p.stride_w, p.dilation_h, p.dilation_w);
  if (!g.ok || g.out_h != out_shape.h || g.out_w != out_shape.w) return false;

  const std::int32_t in_offset = -p.input_zero_point;
  const std::int32_t dm = p.depth_multiplier;
  for (std::int32_t b = 0; b < in_shape.n; ++b) {
    for (std::int32_t oy = 0; oy < out_shape.h; ++oy) {
      const std::int32_t iy0 = oy * p.stride_h - g.pad_h;
      for (std::int32_t ox = 0; ox < out_shape.w; ++ox) {
        const std::int32_t ix0 = ox * p.stride_w - g.pad_w;
        std::int8_t* out_px = output + ((b * out_shape.h + oy) * out_shape.w + ox) * out_shape.c;
        for (std::int32_t ic = 0; ic < in_shape.c; ++ic) {
          for (std::int32_t m = 0; m < dm; ++m) {
            const std::int32_t oc = ic * dm + m;
            std::int32_t acc = 0;
            for (std::int32_t ky = 0; ky < filter_shape.h; ++ky) {
              const std::int32_t iy = iy0 + p.dilation_h * ky;
              if (iy < 0 || iy >= in_shape.h) continue;
              for (std::int32_t kx = 0; kx < filter_shape.w; ++kx) {
                const std::int32_t ix = ix0 + p.dilation_w * kx;
                if (ix < 0 || ix >= in_shape.w) continue;
                const std::int32_t x = input[((b * in_shape.h + iy) * in_shape.w + ix) * in_shape.c + ic];
                const std::int32_t w = filter[(ky * filter_shape.w + kx) * filter_shape.c + oc];
                acc = detail::wrap_add(acc, w * (x + in_offset));
              }
            }
            out_px[oc] = detail::requantize_acc(acc, bias, oc, p.out_multiplier[oc], p.out_shift[oc],
                                                p.output_zero_point, p.act_min, p.act_max);
          }
        }
      }
    }
  }
  return true;
}

// ---------------------------------------------------------------------------
// Dense.

struct FullyConnectedParams {
  std::int32_t input_zero_point = 0;
  std::int32_t output_zero_point = 0;
  std::int32_t act_min = kInt8Min;
  std::int32_t act_max = kInt8Max;
  const std::int32_t* out_multiplier = nullptr;  // [out_features]
  const std::int32_t* out_shift = nullptr;       // [out_features]
};

// FULLY_CONNECTED (TFLite reference_integer_ops::FullyConnected[PerChannel]):
//   out[b,o] = clamp(MBQM(sum_i w[o,i] * (x[b,i] - zp_in) + bias[o], M[o], shift[o]) + zp_out)
// input [batches][in_features], weights [out_features][in_features],
// output [batches][out_features]; bias may be nullptr. A per-tensor model
// passes arrays whose entries are all equal (identical arithmetic).
//
// fully_connected_rows computes only the outputs [o_begin, o_end): `rows`
// holds just their weight rows; multipliers, shifts, bias and the output are
// indexed by the absolute output (as conv2d_channels).
inline bool fully_connected_rows(const FullyConnectedParams& p, std::int32_t batches, std::int32_t in_features,
                                 std::int32_t out_features, const std::int8_t* input, const std::int8_t* rows,
                                 std::int32_t o_begin, std::int32_t o_end, const std::int32_t* bias,
                                 std::int8_t* output) noexcept {
  if (batches < 1 || in_features < 1 || out_features < 1 || input == nullptr || rows == nullptr ||
      output == nullptr || p.out_multiplier == nullptr || p.out_shift == nullptr ||
      !detail::zp_ok(p.input_zero_point) || !detail::zp_ok(p.output_zero_point) || !detail::act_ok(p.act_min, p.act_max))
    return false;
  if (static_cast<std::int64_t>(batches) * in_features > INT32_MAX ||
      static_cast<std::int64_t>(batches) * out_features > INT32_MAX ||
      static_cast<std::int64_t>(out_features) * in_features > INT32_MAX)
    return false;
  if (o_begin < 0 || o_begin >= o_end || o_end > out_features) return false;
  const std::int32_t in_offset = -p.input_zero_point;
  for (std::int32_t b = 0; b < batches; ++b) {
    const std::int8_t* x = input + b * in_features;
    for (std::int32_t o = o_begin; o < o_end; ++o) {
      const std::int8_t* w = rows + (o - o_begin) * in_features;
      std::int32_t acc = 0;
      for (std::int32_t i = 0; i < in_features; ++i)
        acc = detail::wrap_add(acc, static_cast<std::int32_t>(w[i]) * (static_cast<std::int32_t>(x[i]) + in_offset));
      output[b * out_features + o] = detail::requantize_acc(acc, bias, o, p.out_multiplier[o], p.out_shift[o],
                                                            p.output_zero_point, p.act_min, p.act_max);
    }
  }
  return true;
}

inline bool fully_connected(const FullyConnectedParams& p, std::int32_t batches, std::int32_t in_features,
                            std::int32_t out_features, const std::int8_t* input, const std::int8_t* weights,
                            const std::int32_t* bias, std::int8_t* output) noexcept {
  return fully_connected_rows(p, batches, in_features, out_features, input, weights, 0, out_features, bias, output);
}

// ---------------------------------------------------------------------------
// Pools. Input and output share scale and zero point (TFLite requires it), so
// no requantization happens; the activation range still applies.

struct PoolParams {
  Padding padding = Padding::valid;
  std::int32_t filter_h = 1;
  std::int32_t filter_w = 1;
  std::int32_t stride_h = 1;
  std::int32_t stride_w = 1;
  std::int32_t act_min = kInt8Min;
  std::int32_t act_max = kInt8Max;
};

// Largest window for average_pool2d: keeps the int32 sum of int8 values exact.
inline constexpr std::int32_t kMaxPoolWindow = std::int32_t{1} << 24;

namespace detail {
template <bool Average>
inline bool pool2d(const PoolParams& p, const Shape4& in_shape, const std::int8_t* input, const Shape4& out_shape,
                   std::int8_t* output) noexcept {
  if (!shape_ok(in_shape) || !shape_ok(out_shape) || input == nullptr || output == nullptr ||
      !act_ok(p.act_min, p.act_max) || in_shape.n != out_shape.n || in_shape.c != out_shape.c)
    return false;
  if constexpr (Average) {
    if (static_cast<std::int64_t>(p.filter_h) * p.filter_w > kMaxPoolWindow) return false;
  }
  const WindowGeometry g =
      window_geometry(p.padding, in_shape.h, in_shape.w, p.filter_h, p.filter_w, p.stride_h, p.stride_w);
  if (!g.ok || g.out_h != out_shape.h || g.out_w != out_shape.w) return false;
  const std::int32_t C = in_shape.c;
  for (std::int32_t b = 0; b < in_shape.n; ++b) {
    for (std::int32_t oy = 0; oy < out_shape.h; ++oy) {
      const std::int32_t iy0 = oy * p.stride_h - g.pad_h;
      // The window clipped to the input (TFLite's filter_{y,x}_{start,end}).
      const std::int32_t ky0 = iy0 < 0 ? -iy0 : 0;
      const std::int32_t ky1 = p.filter_h < in_shape.h - iy0 ? p.filter_h : in_shape.h - iy0;
      for (std::int32_t ox = 0; ox < out_shape.w; ++ox) {
        const std::int32_t ix0 = ox * p.stride_w - g.pad_w;
        const std::int32_t kx0 = ix0 < 0 ? -ix0 : 0;
        const std::int32_t kx1 = p.filter_w < in_shape.w - ix0 ? p.filter_w : in_shape.w - ix0;
        std::int8_t* out_px = output + ((b * out_shape.h + oy) * out_shape.w + ox) * C;
        if (ky1 <= ky0 || kx1 <= kx0) return false;  // empty window: impossible for a valid geometry
        for (std::int32_t c = 0; c < C; ++c) {
          std::int32_t acc = Average ? 0 : kInt8Min;
          for (std::int32_t ky = ky0; ky < ky1; ++ky) {
            const std::int8_t* row = input + ((b * in_shape.h + iy0 + ky) * in_shape.w + ix0) * C + c;
            for (std::int32_t kx = kx0; kx < kx1; ++kx) {
              const std::int32_t v = row[kx * C];
              if constexpr (Average)
                acc += v;
              else if (v > acc)
                acc = v;
            }
          }
          if constexpr (Average) {
            // Round to nearest, ties away from zero, as TFLite's int8 AveragePool.
            const std::int32_t count = (ky1 - ky0) * (kx1 - kx0);
            acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
          }
          out_px[c] = static_cast<std::int8_t>(clamp_i32(acc, p.act_min, p.act_max));
        }
      }
    }
  }
  return true;
}
}  // namespace detail

// MAX_POOL_2D (TFLite reference_integer_ops::MaxPool): max over the window
// clipped to the input, then clamp. Output {n, out_h, out_w, c}.
inline bool max_pool2d(const PoolParams& p, const Shape4& in_shape, const std::int8_t* input, const Shape4& out_shape,
                       std::int8_t* output) noexcept {
  return detail::pool2d<false>(p, in_shape, input, out_shape, output);
}

// AVERAGE_POOL_2D (TFLite reference_integer_ops::AveragePool): sum of the raw
// int8 values in the window clipped to the input (padding excluded from the
// count), divided by the count rounding half away from zero:
//   avg = sum > 0 ? (sum + count/2) / count : (sum - count/2) / count
// (C++ division truncates), then clamp. filter_h * filter_w <= kMaxPoolWindow.
inline bool average_pool2d(const PoolParams& p, const Shape4& in_shape, const std::int8_t* input,
                           const Shape4& out_shape, std::int8_t* output) noexcept {
  return detail::pool2d<true>(p, in_shape, input, out_shape, output);
}

// Global average pooling as AVERAGE_POOL_2D with filter = {h, w}, stride 1,
// VALID: output {n, 1, 1, c}, each value the average of the h*w raw int8
// values rounded half away from zero (see average_pool2d), then clamped.
// Input and output share scale and zero point. This is NOT TFLite's MEAN
// kernel (which a converter emits for Keras GlobalAveragePooling2D and which
// requantizes with a multiplier): a model imported from MEAN may differ by one
// step where the average is close to a half.
inline bool global_average_pool2d(const Shape4& in_shape, const std::int8_t* input, std::int32_t act_min,
                                  std::int32_t act_max, std::int8_t* output) noexcept {
  PoolParams p;
  p.padding = Padding::valid;
  p.filter_h = in_shape.h;
  p.filter_w = in_shape.w;
  p.act_min = act_min;
  p.act_max = act_max;
  return detail::pool2d<true>(p, in_shape, input, Shape4{in_shape.n, 1, 1, in_shape.c}, output);
}

// ---------------------------------------------------------------------------
// Element-wise and data movement.

// ADD of two tensors of `count` elements each (no broadcast), with params from
// prepare_add(); see add_element() for the arithmetic. `output` may alias
// either input exactly. Returns false when !p.ok.
inline bool add(const AddParams& p, std::int32_t count, const std::int8_t* a, const std::int8_t* b,
                std::int8_t* output) noexcept {
  if (!p.ok || count < 0 || a == nullptr || b == nullptr || output == nullptr) return false;
  for (std::int32_t i = 0; i < count; ++i) output[i] = add_element(a[i], b[i], p);
  return true;
}

// Most inputs of one concatenation (TFLM's kMaxInputNum is 10).
inline constexpr std::int32_t kMaxConcatInputs = 64;

// CONCATENATION of int8 tensors along one axis. With the axis at position k
// of the shape, outer = product of the dims before k and inner_sizes[i] =
// (dim k of input i) * (product of the dims after k); the output holds, for
// each outer index, the inner_sizes[0] values of input 0, then those of input
// 1, ... For the channel axis of NHWC: outer = n*h*w, inner_sizes[i] = c_i.
// All inputs and the output must share scale and zero point: TFLM's int8
// CONCATENATION copies bytes and never requantizes (its Prepare records the
// scales, Eval ignores them; the converter gives all of them the output's
// params), so this is a copy and bit-exact. Inputs must not overlap the output.
inline bool concatenation(std::int32_t outer, std::int32_t num_inputs, const std::int8_t* const* inputs,
                          const std::int32_t* inner_sizes, std::int8_t* output) noexcept {
  if (outer < 1 || num_inputs < 1 || num_inputs > kMaxConcatInputs || inputs == nullptr || inner_sizes == nullptr ||
      output == nullptr)
    return false;
  std::int64_t total_inner = 0;
  for (std::int32_t i = 0; i < num_inputs; ++i) {
    if (inner_sizes[i] < 0 || (inner_sizes[i] > 0 && inputs[i] == nullptr)) return false;
    total_inner += inner_sizes[i];
  }
  if (total_inner < 1 || total_inner * outer > INT32_MAX) return false;
  std::int8_t* dst = output;
  for (std::int32_t o = 0; o < outer; ++o) {
    for (std::int32_t i = 0; i < num_inputs; ++i) {
      const std::int8_t* src = inputs[i] + o * inner_sizes[i];
      for (std::int32_t k = 0; k < inner_sizes[i]; ++k) *dst++ = src[k];
    }
  }
  return true;
}

// RESHAPE: the bytes are unchanged; copies `count` values (memmove semantics,
// nothing to do when input == output, which is how an arena planner should
// run it).
inline bool reshape(std::int32_t count, const std::int8_t* input, std::int8_t* output) noexcept {
  if (count < 0 || input == nullptr || output == nullptr) return false;
  if (input == output) return true;
  if (output < input) {
    for (std::int32_t i = 0; i < count; ++i) output[i] = input[i];
  } else {
    for (std::int32_t i = count; i-- > 0;) output[i] = input[i];
  }
  return true;
}

// ---------------------------------------------------------------------------
// Softmax, int8 -> int8, bit-exact with TFLite reference_ops::Softmax<int8,int8>
// (gemmlowp fixed point: input differences in Q5.26, exp() by a Taylor
// polynomial on [-1/4, 0) and a barrel of exp(-2^k) constants, the sum in
// Q12.19, 1/sum by Newton-Raphson). Output scale is 1/256 and zero point -128
// (TFLM's Prepare requires exactly that).

inline constexpr float kSoftmaxOutputScale = 1.0f / 256.0f;
inline constexpr std::int32_t kSoftmaxOutputZeroPoint = -128;

struct SoftmaxParams {
  std::int32_t input_multiplier = 0;
  std::int32_t input_left_shift = 0;
  std::int32_t diff_min = 0;  // <= 0: differences below it give exp() = 0
  bool ok = false;
};

// TFLite PreprocessSoftmaxScaling(beta, s_in, 5) and CalculateInputRadius(5,
// left_shift, 31):
//   real = min(beta * s_in * 2^26, 2^31 - 1) (double); QuantizeMultiplier(real)
//   (must be > 1, so shift >= 1 ... 31); diff_min = -floor(31 * 2^26 / 2^shift).
// ok is false for a scale or beta that is not finite and > 0 or for
// beta * s_in * 2^26 <= 1 (TFLM's QuantizeMultiplierGreaterThanOne refuses it).
inline SoftmaxParams prepare_softmax(float input_scale, float beta = 1.0f) noexcept {
  SoftmaxParams p;
  auto finite_pos = [](float s) { return s > 0.0f && s <= std::numeric_limits<float>::max(); };
  if (!finite_pos(input_scale) || !finite_pos(beta)) return p;
  constexpr int kScaledDiffIntegerBits = 5;
  double real = static_cast<double>(beta) * static_cast<double>(input_scale) *
                static_cast<double>(std::int32_t{1} << (31 - kScaledDiffIntegerBits));
  const double cap = static_cast<double>((std::int64_t{1} << 31) - 1);
  if (real > cap) real = cap;
  if (!(real > 1.0)) return p;
  std::int32_t m = 0;
  int shift = 0;
  detail::quantize_multiplier_raw(real, m, shift);
  if (shift < 0 || shift > 31) return p;
  const double radius = 1.0 * ((1 << kScaledDiffIntegerBits) - 1) *
                        static_cast<double>(std::int64_t{1} << (31 - kScaledDiffIntegerBits)) /
                        static_cast<double>(std::int64_t{1} << shift);
  p.input_multiplier = m;
  p.input_left_shift = shift;
  p.diff_min = -static_cast<std::int32_t>(std::floor(radius));
  p.ok = true;
  return p;
}

namespace detail::fixedpoint {

// gemmlowp SaturatingRoundingMultiplyByPOT<E> on a raw int32.
template <int E>
constexpr std::int32_t saturating_rounding_mul_by_pot(std::int32_t x) noexcept {
  if constexpr (E == 0) {
    return x;
  } else if constexpr (E > 0) {
    constexpr std::int32_t threshold = static_cast<std::int32_t>((std::int64_t{1} << (31 - E)) - 1);
    if (x > threshold) return INT32_MAX;
    if (x < -threshold) return INT32_MIN;
    return wrap_shl(x, E);
  } else {
    return rounding_divide_by_pot(x, -E);
  }
}

// gemmlowp RoundingHalfSum: (a + b) / 2 rounded half away from zero.
constexpr std::int32_t rounding_half_sum(std::int32_t a, std::int32_t b) noexcept {
  const std::int64_t sum = static_cast<std::int64_t>(a) + b;
  const std::int64_t sign = sum >= 0 ? 1 : -1;
  return static_cast<std::int32_t>((sum + sign) / 2);
}

constexpr std::int32_t mul(std::int32_t a, std::int32_t b) noexcept { return saturating_rounding_doubling_high_mul(a, b); }

// exp(a) for a in [-1/4, 0), Q0.31 in and out: Taylor expansion around -1/8.
constexpr std::int32_t exp_on_interval_between_negative_one_quarter_and_0_excl(std::int32_t a) noexcept {
  constexpr std::int32_t kExpMinusOneEighth = 1895147668;  // exp(-1/8) in Q0.31
  constexpr std::int32_t kOneThird = 715827883;            // 1/3 in Q0.31
  const std::int32_t x = wrap_add(a, std::int32_t{1} << 28);  // a + 1/8
  const std::int32_t x2 = mul(x, x);
  const std::int32_t x3 = mul(x2, x);
  const std::int32_t x4 = mul(x2, x2);
  const std::int32_t x4_over_4 = saturating_rounding_mul_by_pot<-2>(x4);
  const std::int32_t tail =
      saturating_rounding_mul_by_pot<-1>(wrap_add(mul(wrap_add(x4_over_4, x3), kOneThird), x2));
  return wrap_add(kExpMinusOneEighth, mul(kExpMinusOneEighth, wrap_add(x, tail)));
}

// exp(a) for a <= 0 given in Q5.26, result in Q0.31 (gemmlowp
// exp_on_negative_values with 5 integer bits).
constexpr std::int32_t exp_on_negative_values_q5(std::int32_t a) noexcept {
  constexpr int kFractionalBits = 26;
  constexpr std::int32_t kOneQuarter = std::int32_t{1} << (kFractionalBits - 2);
  const std::int32_t a_mod_quarter_minus_one_quarter = wrap_sub(a & (kOneQuarter - 1), kOneQuarter);
  std::int32_t result = exp_on_interval_between_negative_one_quarter_and_0_excl(
      saturating_rounding_mul_by_pot<5>(a_mod_quarter_minus_one_quarter));  // Rescale Q5.26 -> Q0.31
  const std::int32_t remainder = wrap_sub(a_mod_quarter_minus_one_quarter, a);
  // exp(-2^k) in Q0.31 for k = -2 .. 4, applied for each set bit of -a above 1/4.
  constexpr std::int32_t kBarrel[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
  for (int k = 0; k < 7; ++k) {
    const int bit = kFractionalBits - 2 + k;
    if ((remainder & (std::int32_t{1} << bit)) != 0) result = mul(result, kBarrel[k]);
  }
  return a == 0 ? INT32_MAX : result;
}

// 1 / (1 + a) for a in [0, 1), Q0.31 in and out (Newton-Raphson, 3 steps).
constexpr std::int32_t one_over_one_plus_x_for_x_in_0_1(std::int32_t a) noexcept {
  const std::int32_t half_denominator = rounding_half_sum(a, INT32_MAX);  // Q0.31
  constexpr std::int32_t k48Over17 = 1515870810;                           // Q2.29
  constexpr std::int32_t kNeg32Over17 = -1010580540;                       // Q2.29
  constexpr std::int32_t kOneQ2 = std::int32_t{1} << 29;
  std::int32_t x = wrap_add(k48Over17, mul(half_denominator, kNeg32Over17));  // Q2.29
  for (int i = 0; i < 3; ++i) {
    const std::int32_t half_denominator_times_x = mul(half_denominator, x);  // Q2.29
    const std::int32_t one_minus = wrap_sub(kOneQ2, half_denominator_times_x);
    x = wrap_add(x, saturating_rounding_mul_by_pot<2>(mul(x, one_minus)));  // Q4.27 -> Q2.29
  }
  return saturating_rounding_mul_by_pot<1>(x);  // x/2 in Q1.30 -> Q0.31
}

constexpr int count_leading_zeros(std::uint32_t v) noexcept {
  if (v == 0) return 32;
  int n = 0;
  while ((v & 0x80000000u) == 0) {
    v <<= 1;
    ++n;
  }
  return n;
}

}  // namespace detail::fixedpoint

// SOFTMAX over the last axis: `outer` rows of `depth` values. Output
// q = clamp(round(p * 256) - 128) computed in fixed point exactly as TFLM.
// Where TFLM is undefined or aborts (the Q12.19 sum of exps reaching 2^28,
// i.e. >= 512 values at or near the row maximum) the sum saturates and the
// outputs become -128 (every probability is then <= 1/512 < half a step).
// `output` may alias `input` exactly (each value is read for the last time
// just before its own output is written).
inline bool softmax(const SoftmaxParams& p, std::int32_t outer, std::int32_t depth, const std::int8_t* input,
                    std::int8_t* output) noexcept {
  namespace fp = detail::fixedpoint;
  if (!p.ok || outer < 1 || depth < 1 || input == nullptr || output == nullptr || p.diff_min > 0 ||
      p.input_left_shift < 0 || p.input_left_shift > 31)
    return false;
  if (static_cast<std::int64_t>(outer) * depth > INT32_MAX) return false;
  constexpr int kAccumulationIntegerBits = 12;
  for (std::int32_t r = 0; r < outer; ++r) {
    const std::int8_t* x = input + r * depth;
    std::int8_t* y = output + r * depth;
    std::int32_t max_in_row = kInt8Min;
    for (std::int32_t c = 0; c < depth; ++c)
      if (x[c] > max_in_row) max_in_row = x[c];

    std::int64_t sum = 0;  // Q12.19, saturated at INT32_MAX
    for (std::int32_t c = 0; c < depth; ++c) {
      const std::int32_t diff = static_cast<std::int32_t>(x[c]) - max_in_row;
      if (diff >= p.diff_min) {
        const std::int32_t scaled = multiply_by_quantized_multiplier(diff, p.input_multiplier, p.input_left_shift);
        sum += rounding_divide_by_pot(fp::exp_on_negative_values_q5(scaled), kAccumulationIntegerBits);
        if (sum > INT32_MAX) sum = INT32_MAX;
      }
    }
    // GetReciprocal: sum >= 2^19 because the maximum contributes exp(0) = 1.
    const std::uint32_t usum = static_cast<std::uint32_t>(sum);
    const int headroom_plus_one = fp::count_leading_zeros(usum);
    const int num_bits_over_unit = kAccumulationIntegerBits - headroom_plus_one;
    const std::int32_t shifted_sum_minus_one =
        static_cast<std::int32_t>((usum << (headroom_plus_one & 31)) - (std::uint32_t{1} << 31));
    const std::int32_t shifted_scale = fp::one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one);
    const int exponent = num_bits_over_unit + 31 - 8;

    for (std::int32_t c = 0; c < depth; ++c) {
      const std::int32_t diff = static_cast<std::int32_t>(x[c]) - max_in_row;
      std::int32_t out = kInt8Min;
      if (diff >= p.diff_min && usum != 0) {
        const std::int32_t scaled = multiply_by_quantized_multiplier(diff, p.input_multiplier, p.input_left_shift);
        const std::int32_t e = fp::exp_on_negative_values_q5(scaled);
        const std::int32_t prod = saturating_rounding_doubling_high_mul(shifted_scale, e);
        // exponent > 31 only where TFLM aborts; the exact quotient is then < 1/2.
        const std::int32_t unsat = exponent > 31 ? 0 : rounding_divide_by_pot(prod, exponent < 0 ? 0 : exponent);
        out = detail::clamp_i32(detail::wrap_add(unsat, kInt8Min), kInt8Min, kInt8Max);
      }
      y[c] = static_cast<std::int8_t>(out);
    }
  }
  return true;
}

}  // namespace fleetdl::micro
