// fleetdl/micro/verifier.hpp — complete validation of a micro model blob
// (micro/blob.hpp) before its first use:
//
//   VerifyResult verify(const std::uint8_t* blob, std::size_t size)
//
// Order of checks: pointer and alignment; header (size, magic, version, flags
// and reserved words, length == size, CRC-32); counts against their limits
// (before any loop uses them); table extents and the data offset; every
// tensor record (type, kind, reserved fields, shape, byte size, quantization,
// constant data bounds / alignment / length / order); model inputs and
// outputs; every op in execution order (code, input count, tensor ids in
// range, inputs defined before use, outputs written once, input kinds and
// types, shapes against kernels.hpp's shape helpers, op parameters, fused
// activation range, every requantization multiplier, softmax and add
// parameters); finally that every activation is written by someone.
//
// A blob verify() accepts can be planned (micro/planner.hpp) and run
// (micro/interpreter.hpp) without any read or write out of bounds: every
// index a kernel computes stays within the tensors the verifier sized, and the
// planner's sums stay below kMaxActivationBytes. Whether the arena is big
// enough is the interpreter's check (it knows the arena).
//
// No heap and no workspace: the use-before-definition and single-writer checks
// rescan the op table (O(ops^2), at most 1024^2 cheap reads). Freestanding.
#pragma once

#include "fleetdl/micro/blob.hpp"

#include <cstddef>
#include <cstdint>
#include <limits>

namespace fleetdl::micro {

struct VerifyResult {
  ErrorCode code = ErrorCode::ok;
  const char* message = "ok";  // static text: what and why
  std::uint32_t index = 0;     // the tensor, op or I/O slot at fault (see message)

  constexpr bool ok() const noexcept { return code == ErrorCode::ok; }
  constexpr explicit operator bool() const noexcept { return ok(); }
};

namespace detail {

constexpr VerifyResult fail(ErrorCode c, const char* message, std::uint32_t index = 0) noexcept {
  return VerifyResult{c, message, index};
}

inline bool finite_positive(float s) noexcept { return s > 0.0f && s <= std::numeric_limits<float>::max(); }

inline bool same_quantization(const TensorDesc& a, const TensorDesc& b) noexcept {
  return f32_bits(a.scale) == f32_bits(b.scale) && a.zero_point == b.zero_point;
}

constexpr bool same_shape(const Shape4& a, const Shape4& b) noexcept {
  return a.n == b.n && a.h == b.h && a.w == b.w && a.c == b.c;
}

constexpr std::int32_t dim(const Shape4& s, std::int32_t axis) noexcept {
  return axis == 0 ? s.n : axis == 1 ? s.h : axis == 2 ? s.w : s.c;
}

// Is activation `t` a model input?
inline bool is_model_input(const ModelView& v, std::uint32_t t) noexcept {
  for (std::uint32_t k = 0; k < v.input_count(); ++k)
    if (v.input_id(k) == t) return true;
  return false;
}

// Does an op before `op` write tensor `t`?
inline bool written_before(const ModelView& v, std::uint32_t t, std::uint32_t op) noexcept {
  const std::uint8_t* p = v.bytes() + static_cast<std::size_t>(v.op_table_offset()) + layout::kOOutput;
  for (std::uint32_t j = 0; j < op; ++j, p += kOpRecordBytes)
    if (load_u16(p) == t) return true;
  return false;
}

// Checks of one op whose tensor ids are known to be in range, whose
// activation inputs are defined and whose output is a fresh activation.
inline VerifyResult verify_op(const ModelView& v, const OpDesc& o, std::uint32_t i) noexcept {
  const TensorDesc y = v.tensor(o.output);
  const auto in = [&](std::uint32_t k) { return v.tensor(o.inputs[k]); };
  const auto is_act = [&](std::uint32_t k) {
    return o.inputs[k] != kNoTensor && v.tensor(o.inputs[k]).is_activation();
  };
  const bool act_known = o.activation <= static_cast<std::uint8_t>(Activation::relu6);
  const Activation act = static_cast<Activation>(o.activation);
  std::int32_t act_min = 0, act_max = 0;

  switch (static_cast<OpCode>(o.code)) {
    case OpCode::conv2d:
    case OpCode::depthwise_conv2d:
    case OpCode::fully_connected: {
      if (o.num_inputs != 4) return fail(ErrorCode::bad_op_inputs, "conv2d/depthwise_conv2d/fully_connected take 4 input slots (x, filter, bias, scales)", i);
      if (!is_act(0)) return fail(ErrorCode::bad_op_inputs, "input 0 (x) must be an activation tensor", i);
      if (o.inputs[1] == kNoTensor) return fail(ErrorCode::bad_op_inputs, "input 1 (filter) is missing", i);
      const TensorDesc x = in(0), f = in(1);
      if (!f.is_constant() || f.type != static_cast<std::uint8_t>(TensorType::int8))
        return fail(ErrorCode::bad_op_inputs, "input 1 (filter) must be a constant int8 tensor", i);
      const std::int32_t co = y.shape.c;
      if (f.is_encoded() && o.code == static_cast<std::uint8_t>(OpCode::depthwise_conv2d))
        return fail(ErrorCode::bad_encoding, "depthwise_conv2d filters cannot be encoded (only conv2d and fully_connected decode per channel)", i);
      if (o.code == static_cast<std::uint8_t>(OpCode::conv2d)) {
        if (f.shape.c != x.shape.c) return fail(ErrorCode::shape_mismatch, "conv2d: filter input channels (OHWI dim 3) differ from the input's channels", i);
        if (f.shape.n != co) return fail(ErrorCode::shape_mismatch, "conv2d: filter output channels (OHWI dim 0) differ from the output's channels", i);
      } else if (o.code == static_cast<std::uint8_t>(OpCode::depthwise_conv2d)) {
        if (o.param < 1) return fail(ErrorCode::bad_op_params, "depthwise_conv2d: depth multiplier (param) must be >= 1", i);
        if (f.shape.n != 1) return fail(ErrorCode::shape_mismatch, "depthwise_conv2d: filter dim 0 must be 1", i);
        if (static_cast<std::int64_t>(x.shape.c) * o.param != f.shape.c || f.shape.c != co)
          return fail(ErrorCode::shape_mismatch, "depthwise_conv2d: filter / output channels must be input channels * depth multiplier", i);
      }
      if (o.code == static_cast<std::uint8_t>(OpCode::fully_connected)) {
        const std::int64_t in_features = static_cast<std::int64_t>(x.shape.h) * x.shape.w * x.shape.c;
        if (f.shape.n != co || f.shape.h != 1 || f.shape.w != 1 || f.shape.c != in_features)
          return fail(ErrorCode::shape_mismatch, "fully_connected: weights must be {out, 1, 1, h*w*c of the input}", i);
        if (y.shape.n != x.shape.n || y.shape.h != 1 || y.shape.w != 1)
          return fail(ErrorCode::shape_mismatch, "fully_connected: output must be {n, 1, 1, out}", i);
      } else {
        if (o.padding > static_cast<std::uint8_t>(Padding::valid)) return fail(ErrorCode::bad_op_params, "padding must be 0 (same) or 1 (valid)", i);
        const WindowGeometry g = window_geometry(static_cast<Padding>(o.padding), x.shape.h, x.shape.w, f.shape.h,
                                                 f.shape.w, o.stride_h, o.stride_w, o.dilation_h, o.dilation_w);
        if (!g.ok) return fail(ErrorCode::bad_op_params, "stride / dilation < 1, or the (dilated) filter does not fit the input", i);
        if (y.shape.n != x.shape.n || y.shape.h != g.out_h || y.shape.w != g.out_w)
          return fail(ErrorCode::shape_mismatch, "convolution output height / width / batch differ from the window geometry", i);
      }
      if (o.inputs[2] != kNoTensor) {
        const TensorDesc b = in(2);
        if (!b.is_constant() || b.type != static_cast<std::uint8_t>(TensorType::int32))
          return fail(ErrorCode::bad_op_inputs, "input 2 (bias) must be a constant int32 tensor", i);
        if (!same_shape(b.shape, Shape4{1, 1, 1, co})) return fail(ErrorCode::shape_mismatch, "bias must be {1, 1, 1, output channels}", i);
      }
      TensorDesc s{};
      const bool per_channel = o.inputs[3] != kNoTensor;
      if (per_channel) {
        s = in(3);
        if (!s.is_constant() || s.type != static_cast<std::uint8_t>(TensorType::float32))
          return fail(ErrorCode::bad_op_inputs, "input 3 (per-channel scales) must be a constant float32 tensor", i);
        if (!same_shape(s.shape, Shape4{1, 1, 1, co})) return fail(ErrorCode::shape_mismatch, "per-channel scales must be {1, 1, 1, output channels}", i);
      }
      for (std::int32_t c = 0; c < co; ++c) {
        const float sw = per_channel ? load_f32(v.data(s) + 4 * static_cast<std::size_t>(c)) : f.scale;
        if (!finite_positive(sw)) return fail(ErrorCode::bad_quantization, "a filter scale is not finite and > 0", i);
        if (!quantize_multiplier(conv_effective_scale(x.scale, sw, y.scale)).ok)
          return fail(ErrorCode::bad_multiplier, "input scale * filter scale / output scale is not a representable multiplier", i);
      }
      if (!act_known || !activation_range(act, y.scale, y.zero_point, act_min, act_max))
        return fail(ErrorCode::bad_activation, "fused activation unknown", i);
      return {};
    }
    case OpCode::max_pool2d:
    case OpCode::average_pool2d:
    case OpCode::global_average_pool2d: {
      if (o.num_inputs != 1 || !is_act(0)) return fail(ErrorCode::bad_op_inputs, "pools take one activation input", i);
      const TensorDesc x = in(0);
      if (!same_quantization(x, y)) return fail(ErrorCode::bad_quantization, "pool input and output must share scale and zero point", i);
      if (o.code == static_cast<std::uint8_t>(OpCode::global_average_pool2d)) {
        if (static_cast<std::int64_t>(x.shape.h) * x.shape.w > kMaxPoolWindow)
          return fail(ErrorCode::bad_op_params, "global_average_pool2d: h * w exceeds the pooling window limit 2^24", i);
        if (!same_shape(y.shape, Shape4{x.shape.n, 1, 1, x.shape.c}))
          return fail(ErrorCode::shape_mismatch, "global_average_pool2d: output must be {n, 1, 1, c}", i);
      } else {
        if (o.padding > static_cast<std::uint8_t>(Padding::valid)) return fail(ErrorCode::bad_op_params, "padding must be 0 (same) or 1 (valid)", i);
        if (o.code == static_cast<std::uint8_t>(OpCode::average_pool2d) &&
            static_cast<std::int64_t>(o.filter_h) * o.filter_w > kMaxPoolWindow)
          return fail(ErrorCode::bad_op_params, "average_pool2d: window exceeds 2^24 values", i);
        const WindowGeometry g = window_geometry(static_cast<Padding>(o.padding), x.shape.h, x.shape.w, o.filter_h,
                                                 o.filter_w, o.stride_h, o.stride_w);
        if (!g.ok) return fail(ErrorCode::bad_op_params, "pool filter / stride < 1, or the window does not fit the input", i);
        if (!same_shape(y.shape, Shape4{x.shape.n, g.out_h, g.out_w, x.shape.c}))
          return fail(ErrorCode::shape_mismatch, "pool output differs from {n, out_h, out_w, c}", i);
      }
      if (!act_known || !activation_range(act, y.scale, y.zero_point, act_min, act_max))
        return fail(ErrorCode::bad_activation, "fused activation unknown", i);
      return {};
    }
    case OpCode::add: {
      if (o.num_inputs != 2 || !is_act(0) || !is_act(1)) return fail(ErrorCode::bad_op_inputs, "add takes two activation inputs", i);
      const TensorDesc a = in(0), b = in(1);
      if (!same_shape(a.shape, y.shape) || !same_shape(b.shape, y.shape))
        return fail(ErrorCode::shape_mismatch, "add: both inputs must have the output's shape (no broadcast)", i);
      if (!act_known) return fail(ErrorCode::bad_activation, "fused activation unknown", i);
      if (!prepare_add(a.scale, a.zero_point, b.scale, b.zero_point, y.scale, y.zero_point, act).ok)
        return fail(ErrorCode::bad_multiplier, "add: scales give no representable multipliers (s_out must be > 2 max(s1, s2) / 2^20)", i);
      return {};
    }
    case OpCode::concatenation: {
      if (o.num_inputs < 1) return fail(ErrorCode::bad_op_inputs, "concatenation needs at least one input", i);
      if (o.param < 0 || o.param > 3) return fail(ErrorCode::bad_op_params, "concatenation axis (param) must be 0..3", i);
      if (o.activation != 0) return fail(ErrorCode::bad_activation, "concatenation has no fused activation", i);
      std::int64_t sum = 0;
      for (std::uint32_t k = 0; k < o.num_inputs; ++k) {
        if (!is_act(k)) return fail(ErrorCode::bad_op_inputs, "concatenation inputs must be activation tensors", i);
        const TensorDesc x = in(k);
        if (!same_quantization(x, y)) return fail(ErrorCode::bad_quantization, "concatenation inputs must share the output's scale and zero point", i);
        for (std::int32_t d = 0; d < 4; ++d)
          if (d != o.param && dim(x.shape, d) != dim(y.shape, d))
            return fail(ErrorCode::shape_mismatch, "concatenation inputs must match the output except along the axis", i);
        sum += dim(x.shape, o.param);
      }
      if (sum != dim(y.shape, o.param)) return fail(ErrorCode::shape_mismatch, "concatenation: input extents along the axis do not add up to the output's", i);
      return {};
    }
    case OpCode::reshape: {
      if (o.num_inputs != 1 || !is_act(0)) return fail(ErrorCode::bad_op_inputs, "reshape takes one activation input", i);
      const TensorDesc x = in(0);
      if (o.activation != 0) return fail(ErrorCode::bad_activation, "reshape has no fused activation", i);
      if (element_count(x.shape) != element_count(y.shape)) return fail(ErrorCode::shape_mismatch, "reshape: element counts differ", i);
      if (!same_quantization(x, y)) return fail(ErrorCode::bad_quantization, "reshape input and output must share scale and zero point", i);
      return {};
    }
    case OpCode::softmax: {
      if (o.num_inputs != 1 || !is_act(0)) return fail(ErrorCode::bad_op_inputs, "softmax takes one activation input", i);
      const TensorDesc x = in(0);
      if (o.activation != 0) return fail(ErrorCode::bad_activation, "softmax has no fused activation", i);
      if (!same_shape(x.shape, y.shape)) return fail(ErrorCode::shape_mismatch, "softmax: output shape differs from the input's", i);
      if (f32_bits(y.scale) != f32_bits(kSoftmaxOutputScale) || y.zero_point != kSoftmaxOutputZeroPoint)
        return fail(ErrorCode::bad_softmax, "softmax output must have scale 1/256 and zero point -128", i);
      if (!prepare_softmax(x.scale, f32_from_bits(static_cast<std::uint32_t>(o.param))).ok)
        return fail(ErrorCode::bad_softmax, "softmax beta (param) must be finite > 0 with beta * input scale * 2^26 > 1", i);
      return {};
    }
  }
  return fail(ErrorCode::bad_op_code, "unknown op code", i);
}

}  // namespace detail

inline VerifyResult verify(const std::uint8_t* blob, std::size_t size) noexcept {
  using detail::fail;
  using detail::load_u32;
  if (blob == nullptr) return fail(ErrorCode::null_blob, "blob pointer is null");
  if (reinterpret_cast<std::uintptr_t>(blob) % kAlignment != 0)
    return fail(ErrorCode::blob_misaligned, "blob must start at a 16-byte boundary (alignas(16) in firmware)");
  if (size < kHeaderBytes + kCrcBytes) return fail(ErrorCode::truncated, "blob is shorter than its 64-byte header and 4-byte CRC");
  for (std::size_t k = 0; k < sizeof kMagic; ++k)
    if (blob[k] != static_cast<std::uint8_t>(kMagic[k])) return fail(ErrorCode::bad_magic, "magic is not FDLMICRO");
  if (load_u32(blob + layout::kVersion) != kFormatVersion) return fail(ErrorCode::bad_version, "format version is not 2");
  if (detail::load_u64(blob + layout::kLength) != static_cast<std::uint64_t>(size))
    return fail(ErrorCode::bad_length, "length field differs from the blob size (truncated or padded)");
  if (fleetdl::crc32(blob, size - kCrcBytes) != load_u32(blob + size - kCrcBytes))
    return fail(ErrorCode::bad_checksum, "CRC-32 of the blob does not match its last 4 bytes");
  if (load_u32(blob + layout::kFlags) != 0) return fail(ErrorCode::reserved_not_zero, "header flags must be 0");
  for (std::size_t k = 0; k < 5; ++k)
    if (load_u32(blob + layout::kReserved + 4 * k) != 0)
      return fail(ErrorCode::reserved_not_zero, "header reserved word is not 0", static_cast<std::uint32_t>(k));

  const ModelView v(blob, size);
  const std::uint32_t T = v.tensor_count(), O = v.op_count();
  if (T < 1 || T > kMaxTensors) return fail(ErrorCode::bad_counts, "tensor count must be 1..1024", T);
  if (O < 1 || O > kMaxOps) return fail(ErrorCode::bad_counts, "op count must be 1..1024", O);
  if (v.input_count() < 1 || v.input_count() > kMaxModelIO) return fail(ErrorCode::bad_counts, "model input count must be 1..16", v.input_count());
  if (v.output_count() < 1 || v.output_count() > kMaxModelIO) return fail(ErrorCode::bad_counts, "model output count must be 1..16", v.output_count());
  const std::uint64_t payload_end = static_cast<std::uint64_t>(size) - kCrcBytes;
  if (v.tables_end() > payload_end) return fail(ErrorCode::truncated, "tensor, op and I/O tables run past the end of the blob");
  const std::uint64_t data_begin = load_u32(blob + layout::kDataOffset);
  if (data_begin % kAlignment != 0 || data_begin < v.tables_end() || data_begin > payload_end)
    return fail(ErrorCode::bad_data_offset, "data offset must be 16-aligned, after the tables and inside the blob");

  // Tensors.
  std::uint64_t data_cursor = data_begin;  // constants ascend without overlap
  std::uint64_t activation_bytes = 0;
  for (std::uint32_t t = 0; t < T; ++t) {
    const TensorDesc d = v.tensor(t);
    if (d.type > static_cast<std::uint8_t>(TensorType::float32)) return fail(ErrorCode::bad_tensor, "tensor type must be 0 (int8), 1 (int32) or 2 (float32)", t);
    if (d.kind > static_cast<std::uint8_t>(TensorKind::constant)) return fail(ErrorCode::bad_tensor, "tensor kind must be 0 (activation) or 1 (constant)", t);
    if (d.reserved32 != 0) return fail(ErrorCode::reserved_not_zero, "tensor reserved field is not 0", t);
    if (d.encoding > static_cast<std::uint16_t>(WeightEncoding::zero_run_huffman))
      return fail(ErrorCode::bad_encoding, "tensor encoding must be 0 (raw) or 1 (zero-run Huffman)", t);
    if (d.is_encoded() && (!d.is_constant() || d.type != static_cast<std::uint8_t>(TensorType::int8)))
      return fail(ErrorCode::bad_encoding, "only int8 constant tensors can be encoded", t);
    if (!shape_valid(d.shape)) return fail(ErrorCode::bad_shape, "tensor dims must be >= 1 with at most INT32_MAX elements", t);
    const std::uint64_t bytes = tensor_bytes(d);
    if (bytes > static_cast<std::uint64_t>(INT32_MAX)) return fail(ErrorCode::bad_shape, "tensor data exceeds 2^31 - 1 bytes", t);
    if (d.is_activation()) {
      if (d.type != static_cast<std::uint8_t>(TensorType::int8)) return fail(ErrorCode::bad_tensor, "activation tensors must be int8", t);
      if (d.data_offset != 0 || d.data_length != 0) return fail(ErrorCode::bad_tensor, "activation tensors have no data in the blob (offset and length 0)", t);
      if (!detail::finite_positive(d.scale)) return fail(ErrorCode::bad_quantization, "activation scale must be finite and > 0", t);
      if (d.zero_point < kInt8Min || d.zero_point > kInt8Max) return fail(ErrorCode::bad_quantization, "activation zero point must be in [-128, 127]", t);
      activation_bytes += detail::align_up(bytes);
      if (activation_bytes > kMaxActivationBytes) return fail(ErrorCode::too_many_activation_bytes, "activations exceed 1 GiB in total", t);
    } else {
      if (!d.is_encoded() && d.data_length != bytes)
        return fail(ErrorCode::bad_constant_data, "constant data length differs from element count * element size", t);
      if (d.data_offset % kAlignment != 0) return fail(ErrorCode::bad_constant_data, "constant data offset is not 16-aligned", t);
      if (d.data_offset < data_cursor) return fail(ErrorCode::bad_constant_data, "constant data starts before the data section or overlaps the previous constant", t);
      if (static_cast<std::uint64_t>(d.data_offset) + d.data_length > payload_end)
        return fail(ErrorCode::bad_constant_data, "constant data runs past the end of the blob", t);
      data_cursor = static_cast<std::uint64_t>(d.data_offset) + d.data_length;
      if (d.is_encoded())
        if (const char* e = check_weight_encoding(v.data(d), d.data_length, element_count(d.shape)))
          return fail(ErrorCode::bad_encoding, e, t);
      if (d.type == static_cast<std::uint8_t>(TensorType::int8) && !detail::finite_positive(d.scale))
        return fail(ErrorCode::bad_quantization, "int8 constant scale must be finite and > 0", t);
      if (d.zero_point != 0) return fail(ErrorCode::bad_quantization, "constant tensors are symmetric: zero point must be 0", t);
    }
  }

  // Model inputs and outputs.
  for (std::uint32_t k = 0; k < v.input_count(); ++k) {
    const std::uint32_t id = v.input_id(k);
    if (id >= T || !v.tensor(id).is_activation()) return fail(ErrorCode::bad_io, "model input must name an activation tensor", k);
    for (std::uint32_t j = 0; j < k; ++j)
      if (v.input_id(j) == id) return fail(ErrorCode::bad_io, "model input listed twice", k);
  }
  for (std::uint32_t k = 0; k < v.output_count(); ++k) {
    const std::uint32_t id = v.output_id(k);
    if (id >= T || !v.tensor(id).is_activation()) return fail(ErrorCode::bad_io, "model output must name an activation tensor", k);
    for (std::uint32_t j = 0; j < k; ++j)
      if (v.output_id(j) == id) return fail(ErrorCode::bad_io, "model output listed twice", k);
  }

  // Ops, in execution order.
  for (std::uint32_t i = 0; i < O; ++i) {
    const OpDesc o = v.op(i);
    if (o.reserved16 != 0 || o.reserved32 != 0) return fail(ErrorCode::reserved_not_zero, "op reserved field is not 0", i);
    if (o.code < static_cast<std::uint8_t>(OpCode::conv2d) || o.code > static_cast<std::uint8_t>(OpCode::softmax))
      return fail(ErrorCode::bad_op_code, "op code must be 1..10", i);
    if (o.num_inputs < 1 || o.num_inputs > kMaxOpInputs) return fail(ErrorCode::bad_op_inputs, "op input count must be 1..8", i);
    for (std::uint32_t k = o.num_inputs; k < kMaxOpInputs; ++k)
      if (o.inputs[k] != kNoTensor) return fail(ErrorCode::bad_op_inputs, "unused op input slots must hold 0xFFFF", i);
    if (o.output >= T) return fail(ErrorCode::tensor_out_of_range, "op output names a tensor that does not exist", i);
    if (!v.tensor(o.output).is_activation()) return fail(ErrorCode::bad_op_inputs, "op output must be an activation tensor", i);
    if (detail::is_model_input(v, o.output)) return fail(ErrorCode::redefinition, "op writes a model input", i);
    if (detail::written_before(v, o.output, i)) return fail(ErrorCode::redefinition, "op writes a tensor an earlier op already wrote", i);
    for (std::uint32_t k = 0; k < o.num_inputs; ++k) {
      const std::uint16_t id = o.inputs[k];
      if (id == kNoTensor) continue;  // optional slots: verify_op decides
      if (id >= T) return fail(ErrorCode::tensor_out_of_range, "op input names a tensor that does not exist", i);
      if (v.tensor(id).is_activation() && !detail::is_model_input(v, id) && !detail::written_before(v, id, i))
        return fail(ErrorCode::use_before_definition, "op reads an activation that no earlier op wrote", i);
    }
    const VerifyResult r = detail::verify_op(v, o, i);
    if (!r) return r;
  }

  // Every activation is a model input or written by an op.
  for (std::uint32_t t = 0; t < T; ++t)
    if (v.tensor(t).is_activation() && !detail::is_model_input(v, t) && !detail::written_before(v, t, O))
      return fail(ErrorCode::undefined_tensor, "activation tensor is neither a model input nor written by an op", t);
  return {};
}

}  // namespace fleetdl::micro
