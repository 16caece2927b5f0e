// fleetdl/micro/interpreter.hpp — runs a verified micro model blob inside one
// caller-supplied arena: no heap, no exceptions, no RTTI, no virtual calls.
//
//   InitResult r = Interpreter::init(blob, size, arena, arena_size);
//   if (!r) { char msg[96]; r.format(msg, sizeof msg); /* "arena too small: need 5168 bytes, got 4096" */ }
//   Interpreter& it = r.interpreter;      // a small copyable handle; may be a global
//   std::int8_t* x = it.input(0);         // fill, then
//   InvokeResult done = it.invoke();      // every op via micro/kernels.hpp
//   const std::int8_t* y = it.output(0);
//
// init() refuses what it has not verified: it runs verify() (micro/verifier.hpp)
// first, then checks the arena (non-null, 16-byte aligned, at least the planned
// size), plans it (micro/planner.hpp) and prepares every op as TFLite Micro's
// Prepare does: per-channel multipliers and shifts, clamp ranges, ADD and
// SOFTMAX parameters, all kept in the arena's persistent tail (with one
// decode row when a filter is encoded, micro/weight_codec.hpp). Nothing runs
// before all of that has succeeded. invoke() never allocates; its only state
// is in the arena. arena_used() equals plan_arena_bytes(blob).plan.total.
//
// Write the inputs before every invoke(): the planner gives an input's bytes
// to later activations once its last reader has run, as TFLM does.
//
// The blob must stay alive and unchanged while the interpreter is used (its
// constants are read in place); so must the arena. The Interpreter object
// holds only pointers and counts (trivially copyable), so a firmware can keep
// one in a global: `static fleetdl::micro::Interpreter g;` then
// `g = Interpreter::init(...).interpreter;` once init succeeded.
#pragma once

#include "fleetdl/micro/blob.hpp"
#include "fleetdl/micro/kernels.hpp"
#include "fleetdl/micro/planner.hpp"
#include "fleetdl/micro/quant.hpp"
#include "fleetdl/micro/verifier.hpp"

#include <cstddef>
#include <cstdint>

namespace fleetdl::micro {

struct InvokeResult {
  ErrorCode code = ErrorCode::ok;
  const char* message = "ok";
  std::uint32_t index = 0;  // the op at fault
  constexpr bool ok() const noexcept { return code == ErrorCode::ok; }
  constexpr explicit operator bool() const noexcept { return ok(); }
};

// Shape and quantization of a model input or output.
struct TensorInfo {
  Shape4 shape;
  float scale = 0.0f;
  std::int32_t zero_point = 0;
  std::size_t bytes = 0;
};

struct InitResult;

class Interpreter {
 public:
  Interpreter() = default;

  static InitResult init(const std::uint8_t* blob, std::size_t size, std::uint8_t* arena,
                         std::size_t arena_size) noexcept;

  bool ready() const noexcept { return ready_; }
  std::uint32_t input_count() const noexcept { return ready_ ? view_.input_count() : 0; }
  std::uint32_t output_count() const noexcept { return ready_ ? view_.output_count() : 0; }

  // Model input i's int8 buffer in the arena; nullptr if i is out of range.
  std::int8_t* input(std::uint32_t i) noexcept {
    return ready_ && i < view_.input_count() ? activation(view_.input_id(i)) : nullptr;
  }
  const std::int8_t* output(std::uint32_t i) const noexcept {
    return ready_ && i < view_.output_count() ? activation(view_.output_id(i)) : nullptr;
  }
  TensorInfo input_info(std::uint32_t i) const noexcept {
    return ready_ && i < view_.input_count() ? info(view_.input_id(i)) : TensorInfo{};
  }
  TensorInfo output_info(std::uint32_t i) const noexcept {
    return ready_ && i < view_.output_count() ? info(view_.output_id(i)) : TensorInfo{};
  }

  InvokeResult invoke() noexcept;

  // Arena bytes in use: planned activations + persistent tail.
  std::size_t arena_used() const noexcept { return used_; }

 private:
  std::int8_t* activation(std::uint32_t id) const noexcept {
    return reinterpret_cast<std::int8_t*>(arena_ + tensors_[id].offset);
  }
  // Activation in the arena or constant in the blob.
  const std::uint8_t* data(std::uint32_t id) const noexcept {
    return tensors_[id].first < 0 ? view_.bytes() + tensors_[id].offset : arena_ + tensors_[id].offset;
  }
  TensorInfo info(std::uint32_t id) const noexcept {
    const TensorDesc d = view_.tensor(id);
    return TensorInfo{d.shape, d.scale, d.zero_point, static_cast<std::size_t>(tensor_bytes(d))};
  }
  InvokeResult run(std::uint32_t i) noexcept;

  ModelView view_;
  std::uint8_t* arena_ = nullptr;
  TensorPlan* tensors_ = nullptr;  // [tensor_count], in the arena's tail
  PreparedOp* ops_ = nullptr;      // [op_count], in the arena's tail
  std::int8_t* scratch_ = nullptr; // one decoded filter row, in the arena's tail (encoded filters only)
  std::size_t used_ = 0;
  bool ready_ = false;
};

struct InitResult {
  ErrorCode code = ErrorCode::ok;
  const char* message = "ok";
  std::uint32_t index = 0;     // tensor / op / I/O slot, as VerifyResult
  std::uint64_t need = 0;      // arena_too_small: bytes needed (a lower bound if need_is_lower_bound)
  std::uint64_t got = 0;       // arena_too_small: bytes given
  bool need_is_lower_bound = false;
  Interpreter interpreter;     // ready() only when ok

  constexpr bool ok() const noexcept { return code == ErrorCode::ok; }
  constexpr explicit operator bool() const noexcept { return ok(); }

  // One line into buf (always NUL-terminated when cap > 0), e.g.
  // "arena too small: need 5168 bytes, got 4096" or
  // "op 3: conv2d: filter input channels (OHWI dim 3) differ from the input's channels".
  // Returns the length written.
  std::size_t format(char* buf, std::size_t cap) const noexcept {
    if (buf == nullptr || cap == 0) return 0;
    std::size_t n = 0;
    if (code == ErrorCode::arena_too_small) {
      n = detail::append_str(buf, cap, n, need_is_lower_bound ? "arena too small: need at least " : "arena too small: need ");
      n = detail::append_u64(buf, cap, n, need);
      n = detail::append_str(buf, cap, n, " bytes, got ");
      n = detail::append_u64(buf, cap, n, got);
    } else {
      n = detail::append_str(buf, cap, n, message);
      if (code != ErrorCode::ok) {
        n = detail::append_str(buf, cap, n, " (index ");
        n = detail::append_u64(buf, cap, n, index);
        n = detail::append_str(buf, cap, n, ")");
      }
    }
    buf[n] = '\0';
    return n;
  }
};

namespace detail {
inline InitResult init_fail(ErrorCode c, const char* message, std::uint32_t index = 0) noexcept {
  InitResult r;
  r.code = c;
  r.message = message;
  r.index = index;
  return r;
}
}  // namespace detail

inline InitResult Interpreter::init(const std::uint8_t* blob, std::size_t size, std::uint8_t* arena,
                                    std::size_t arena_size) noexcept {
  const VerifyResult v = verify(blob, size);
  if (!v) return detail::init_fail(v.code, v.message, v.index);
  if (arena == nullptr) return detail::init_fail(ErrorCode::arena_null, "arena pointer is null");
  if (reinterpret_cast<std::uintptr_t>(arena) % kAlignment != 0)
    return detail::init_fail(ErrorCode::arena_misaligned, "arena must start at a 16-byte boundary (alignas(16))");

  const ModelView view(blob, size);
  const std::uint32_t T = view.tensor_count(), O = view.op_count();
  const std::uint64_t persistent = persistent_bytes(view);
  const std::uint64_t arena_end = static_cast<std::uint64_t>(arena_size) / kAlignment * kAlignment;
  if (arena_end < persistent) {
    // Too small even to plan in: report a lower bound (persistent tail + the
    // largest activation), computable without any workspace.
    InitResult r = detail::init_fail(ErrorCode::arena_too_small, "arena too small");
    std::uint64_t largest = 0;
    for (std::uint32_t t = 0; t < T; ++t) {
      const TensorDesc d = view.tensor(t);
      if (d.is_activation() && detail::align_up(tensor_bytes(d)) > largest) largest = detail::align_up(tensor_bytes(d));
    }
    r.need = persistent + largest;
    r.got = arena_size;
    r.need_is_lower_bound = true;
    return r;
  }

  // Persistent tail, top down: tensor table, op table, per-channel params.
  std::uint64_t top = arena_end - detail::align_up(std::uint64_t{T} * sizeof(TensorPlan));
  auto* tensors = reinterpret_cast<TensorPlan*>(arena + top);
  top -= detail::align_up(std::uint64_t{O} * sizeof(PreparedOp));
  auto* ops = reinterpret_cast<PreparedOp*>(arena + top);
  // Decode row of the encoded filters (none when every filter is raw).
  const std::uint64_t scratch_row = scratch_row_bytes(view);
  top -= detail::align_up(scratch_row);
  auto* scratch = reinterpret_cast<std::int8_t*>(arena + top);

  const ArenaPlan plan = plan_arena(view, tensors);
  if (plan.total > arena_size) {
    InitResult r = detail::init_fail(ErrorCode::arena_too_small, "arena too small");
    r.need = plan.total;
    r.got = arena_size;
    return r;
  }
  for (std::uint32_t t = 0; t < T; ++t) {
    const TensorDesc d = view.tensor(t);
    if (d.is_constant()) tensors[t].offset = d.data_offset;  // first = -1: read from the blob
  }

  // Prepare every op (TFLM Prepare). verify() has established that each of
  // these succeeds; failures are still reported, never ignored.
  for (std::uint32_t i = 0; i < O; ++i) {
    const OpDesc o = view.op(i);
    const TensorDesc y = view.tensor(o.output);
    PreparedOp& p = ops[i];
    p = PreparedOp{};
    const Activation act = static_cast<Activation>(o.activation);
    if (!activation_range(act, y.scale, y.zero_point, p.act_min, p.act_max))
      return detail::init_fail(ErrorCode::bad_activation, "fused activation unknown", i);
    if (has_channel_params(o.code)) {
      const std::int32_t c = y.shape.c;
      top -= detail::align_up(8 * static_cast<std::uint64_t>(c));
      p.channel_offset = static_cast<std::uint32_t>(top);
      p.channels = c;
      auto* mult = reinterpret_cast<std::int32_t*>(arena + top);
      std::int32_t* shift = mult + c;
      const TensorDesc x = view.tensor(o.inputs[0]);
      const TensorDesc f = view.tensor(o.inputs[1]);
      const bool per_channel = o.inputs[3] != kNoTensor;
      const std::uint8_t* scales = per_channel ? view.data(view.tensor(o.inputs[3])) : nullptr;
      for (std::int32_t k = 0; k < c; ++k) {
        const float sw = per_channel ? detail::load_f32(scales + 4 * static_cast<std::size_t>(k)) : f.scale;
        const QuantizedMultiplier q = quantize_multiplier(conv_effective_scale(x.scale, sw, y.scale));
        if (!q.ok) return detail::init_fail(ErrorCode::bad_multiplier, "multiplier out of range", i);
        mult[k] = q.multiplier;
        shift[k] = q.shift;
      }
    } else if (o.code == static_cast<std::uint8_t>(OpCode::add)) {
      const TensorDesc a = view.tensor(o.inputs[0]), b = view.tensor(o.inputs[1]);
      const AddParams ap = prepare_add(a.scale, a.zero_point, b.scale, b.zero_point, y.scale, y.zero_point, act);
      if (!ap.ok) return detail::init_fail(ErrorCode::bad_multiplier, "add multipliers out of range", i);
      p.input1_multiplier = ap.input1_multiplier;
      p.input1_shift = ap.input1_shift;
      p.input2_multiplier = ap.input2_multiplier;
      p.input2_shift = ap.input2_shift;
      p.output_multiplier = ap.output_multiplier;
      p.output_shift = ap.output_shift;
      p.act_min = ap.act_min;
      p.act_max = ap.act_max;
    } else if (o.code == static_cast<std::uint8_t>(OpCode::softmax)) {
      const SoftmaxParams sp =
          prepare_softmax(view.tensor(o.inputs[0]).scale, detail::f32_from_bits(static_cast<std::uint32_t>(o.param)));
      if (!sp.ok) return detail::init_fail(ErrorCode::bad_softmax, "softmax parameters invalid", i);
      p.softmax_multiplier = sp.input_multiplier;
      p.softmax_left_shift = sp.input_left_shift;
      p.softmax_diff_min = sp.diff_min;
    }
  }

  InitResult r;
  r.interpreter.view_ = view;
  r.interpreter.arena_ = arena;
  r.interpreter.tensors_ = tensors;
  r.interpreter.ops_ = ops;
  r.interpreter.scratch_ = scratch_row > 0 ? scratch : nullptr;
  r.interpreter.used_ = static_cast<std::size_t>(plan.total);
  r.interpreter.ready_ = true;
  return r;
}

inline InvokeResult Interpreter::invoke() noexcept {
  if (!ready_) return InvokeResult{ErrorCode::not_initialized, "invoke() before a successful init()", 0};
  for (std::uint32_t i = 0; i < view_.op_count(); ++i) {
    const InvokeResult r = run(i);
    if (!r) return r;
  }
  return {};
}

inline InvokeResult Interpreter::run(std::uint32_t i) noexcept {
  const OpDesc o = view_.op(i);
  const PreparedOp& p = ops_[i];
  const TensorDesc y = view_.tensor(o.output);
  std::int8_t* out = activation(o.output);
  const auto i8 = [&](std::uint32_t k) { return reinterpret_cast<const std::int8_t*>(data(o.inputs[k])); };
  const TensorDesc x = view_.tensor(o.inputs[0]);
  bool ok = false;
  switch (static_cast<OpCode>(o.code)) {
    case OpCode::conv2d:
    case OpCode::depthwise_conv2d:
    case OpCode::fully_connected: {
      const TensorDesc f = view_.tensor(o.inputs[1]);
      // Bias read in place: verify() checked the blob and the data are 16-aligned.
      const auto* bias = o.inputs[2] == kNoTensor ? nullptr : reinterpret_cast<const std::int32_t*>(data(o.inputs[2]));
      const auto* mult = reinterpret_cast<const std::int32_t*>(arena_ + p.channel_offset);
      const std::int32_t* shift = mult + p.channels;
      // An encoded filter (micro/weight_codec.hpp) is decoded one output
      // channel at a time into the scratch row, and the kernel runs that
      // channel; a raw one runs in one call.
      WeightStream stream;
      const bool encoded = f.is_encoded();
      if (encoded) {
        WeightCodecHeader h;
        if (!view_weight_codec(view_.data(f), f.data_length, h) || scratch_ == nullptr)
          return InvokeResult{ErrorCode::kernel_failed, "encoded filter header invalid (cannot happen after verify)", i};
        stream = WeightStream(h);
      }
      const std::int32_t co = y.shape.c;
      const std::uint32_t row = static_cast<std::uint32_t>(element_count(f.shape) / static_cast<std::uint64_t>(f.shape.n));
      if (o.code == static_cast<std::uint8_t>(OpCode::fully_connected)) {
        FullyConnectedParams fp;
        fp.input_zero_point = x.zero_point;
        fp.output_zero_point = y.zero_point;
        fp.act_min = p.act_min;
        fp.act_max = p.act_max;
        fp.out_multiplier = mult;
        fp.out_shift = shift;
        const std::int32_t in_features = x.shape.h * x.shape.w * x.shape.c;
        if (!encoded) {
          ok = fully_connected(fp, x.shape.n, in_features, co, i8(0), i8(1), bias, out);
        } else {
          ok = true;
          for (std::int32_t oc = 0; ok && oc < co; ++oc)
            ok = stream.read(scratch_, row) &&
                 fully_connected_rows(fp, x.shape.n, in_features, co, i8(0), scratch_, oc, oc + 1, bias, out);
        }
      } else {
        ConvParams cp;
        cp.padding = static_cast<Padding>(o.padding);
        cp.stride_h = o.stride_h;
        cp.stride_w = o.stride_w;
        cp.dilation_h = o.dilation_h;
        cp.dilation_w = o.dilation_w;
        cp.depth_multiplier = o.code == static_cast<std::uint8_t>(OpCode::depthwise_conv2d) ? o.param : 1;
        cp.input_zero_point = x.zero_point;
        cp.output_zero_point = y.zero_point;
        cp.act_min = p.act_min;
        cp.act_max = p.act_max;
        cp.out_multiplier = mult;
        cp.out_shift = shift;
        if (o.code == static_cast<std::uint8_t>(OpCode::depthwise_conv2d)) {
          ok = depthwise_conv2d(cp, x.shape, i8(0), f.shape, i8(1), bias, y.shape, out);  // never encoded (verify)
        } else if (!encoded) {
          ok = conv2d(cp, x.shape, i8(0), f.shape, i8(1), bias, y.shape, out);
        } else {
          ok = true;
          for (std::int32_t oc = 0; ok && oc < co; ++oc)
            ok = stream.read(scratch_, row) &&
                 conv2d_channels(cp, x.shape, i8(0), f.shape, scratch_, oc, oc + 1, bias, y.shape, out);
        }
      }
      break;
    }
    case OpCode::max_pool2d:
    case OpCode::average_pool2d: {
      PoolParams pp;
      pp.padding = static_cast<Padding>(o.padding);
      pp.filter_h = o.filter_h;
      pp.filter_w = o.filter_w;
      pp.stride_h = o.stride_h;
      pp.stride_w = o.stride_w;
      pp.act_min = p.act_min;
      pp.act_max = p.act_max;
      ok = o.code == static_cast<std::uint8_t>(OpCode::max_pool2d) ? max_pool2d(pp, x.shape, i8(0), y.shape, out)
                                                                   : average_pool2d(pp, x.shape, i8(0), y.shape, out);
      break;
    }
    case OpCode::global_average_pool2d:
      ok = global_average_pool2d(x.shape, i8(0), p.act_min, p.act_max, out);
      break;
    case OpCode::add: {
      AddParams ap;
      ap.input1_offset = -x.zero_point;
      ap.input2_offset = -view_.tensor(o.inputs[1]).zero_point;
      ap.output_offset = y.zero_point;
      ap.left_shift = 20;
      ap.input1_multiplier = p.input1_multiplier;
      ap.input1_shift = p.input1_shift;
      ap.input2_multiplier = p.input2_multiplier;
      ap.input2_shift = p.input2_shift;
      ap.output_multiplier = p.output_multiplier;
      ap.output_shift = p.output_shift;
      ap.act_min = p.act_min;
      ap.act_max = p.act_max;
      ap.ok = true;
      ok = add(ap, flat_size(y.shape), i8(0), i8(1), out);
      break;
    }
    case OpCode::concatenation: {
      const std::int32_t axis = o.param;
      std::int32_t outer = 1, after = 1;
      for (std::int32_t d = 0; d < axis; ++d) outer *= detail::dim(y.shape, d);
      for (std::int32_t d = axis + 1; d < 4; ++d) after *= detail::dim(y.shape, d);
      const std::int8_t* inputs[kMaxOpInputs] = {};
      std::int32_t inner[kMaxOpInputs] = {};
      for (std::uint32_t k = 0; k < o.num_inputs; ++k) {
        inputs[k] = i8(k);
        inner[k] = detail::dim(view_.tensor(o.inputs[k]).shape, axis) * after;
      }
      ok = concatenation(outer, o.num_inputs, inputs, inner, out);
      break;
    }
    case OpCode::reshape:
      ok = reshape(flat_size(y.shape), i8(0), out);
      break;
    case OpCode::softmax: {
      SoftmaxParams sp;
      sp.input_multiplier = p.softmax_multiplier;
      sp.input_left_shift = p.softmax_left_shift;
      sp.diff_min = p.softmax_diff_min;
      sp.ok = true;
      ok = softmax(sp, y.shape.n * y.shape.h * y.shape.w, y.shape.c, i8(0), out);
      break;
    }
  }
  if (!ok) return InvokeResult{ErrorCode::kernel_failed, "a kernel refused its arguments", i};
  return {};
}

}  // namespace fleetdl::micro
