// fleetdl/micro/planner.hpp — the arena planner of the micro runtime: how many
// bytes a verified blob needs, and where each activation lives.
//
//   greedy_by_size(TensorPlan*, count)   place tensors with known sizes and
//                                        lifetimes; returns the activation extent
//   compute_lifetimes(view, TensorPlan*) sizes and [first, last] op of each activation
//   persistent_bytes(view)               the interpreter's persistent tail
//   plan_arena(view, TensorPlan*)        both parts: ArenaPlan {activations, persistent, total}
//   plan_arena_bytes(blob, size)         verify + plan with a stack workspace (host tools)
//
// Algorithm (TFLite Micro's GreedyMemoryPlanner, "greedy by size"; Pisarchyk &
// Lee, "Efficient Memory Management for Deep Neural Net Inference", 2020):
//   1. Lifetime of an activation: [op that writes it, last op that reads it];
//      model inputs start at op 0, model outputs end at the last op; a tensor
//      written but never read lives for its own op. Constants are not planned
//      (they stay in the blob).
//   2. Take the tensors by size, largest first, ties by lower id.
//   3. Put each at the lowest 16-byte-aligned offset whose [offset, offset +
//      size) meets no already placed tensor whose lifetime intersects its own
//      (lifetimes are closed intervals of op indices, so an op's inputs and its
//      output never share bytes).
//   4. Activation extent = max over tensors of align16(offset + size).
// The arena then holds [0, extent) for activations and, bump-allocated down
// from the tail as TFLM does, the persistent data of the interpreter:
//   align16(16 T)        TensorPlan table (T tensors)
//   align16(64 O)        PreparedOp table (O ops)
//   align16(8 c) per conv2d / depthwise_conv2d / fully_connected op with c
//                        output channels: its int32 multipliers and shifts
//   align16(row)         when some filter is encoded (micro/weight_codec.hpp):
//                        one decode row, the largest filter row among them
//                        (kh * kw * c_in of a conv2d, in_features of a dense)
// total = extent + persistent. Every record is made of 32-bit fields, so the
// figure is the same on a 64-bit host and a 32-bit MCU.
//
// Workspace: none besides the caller's TensorPlan[T] (16 T bytes), which the
// interpreter keeps as its persistent tensor table. Time O(T^2) to order and
// O(T^2) per tensor in the worst case to place (each placed tensor can push
// the candidate offset once); T <= 1024. Freestanding, no heap.
#pragma once

#include "fleetdl/micro/blob.hpp"
#include "fleetdl/micro/verifier.hpp"

#include <cstddef>
#include <cstdint>

namespace fleetdl::micro {

// One tensor's plan. first < 0: not planned (a constant, or unused).
struct TensorPlan {
  std::uint32_t size = 0;    // bytes
  std::uint32_t offset = 0;  // arena offset after planning (activations)
  std::int32_t first = -1;   // first op index alive
  std::int32_t last = -1;    // last op index alive
};
static_assert(sizeof(TensorPlan) == 16, "TensorPlan must be four 32-bit fields on every target");

// Per-op data the interpreter prepares at init (as TFLM's Prepare) and keeps
// in the arena's persistent tail. 32-bit fields only: 64 bytes everywhere.
struct PreparedOp {
  std::int32_t act_min = kInt8Min;
  std::int32_t act_max = kInt8Max;
  std::uint32_t channel_offset = 0;  // arena offset of int32 multiplier[c], then shift[c]
  std::int32_t channels = 0;
  // add
  std::int32_t input1_multiplier = 0;
  std::int32_t input1_shift = 0;
  std::int32_t input2_multiplier = 0;
  std::int32_t input2_shift = 0;
  std::int32_t output_multiplier = 0;
  std::int32_t output_shift = 0;
  // softmax
  std::int32_t softmax_multiplier = 0;
  std::int32_t softmax_left_shift = 0;
  std::int32_t softmax_diff_min = 0;
  std::int32_t reserved[3] = {0, 0, 0};
};
static_assert(sizeof(PreparedOp) == 64, "PreparedOp must be sixteen 32-bit fields on every target");

inline constexpr std::uint32_t kUnplaced = 0xFFFFFFFFu;

// Steps 2-4 above over plans whose size / first / last are set. Entries with
// first < 0 are skipped (offset = kUnplaced). Returns the activation extent.
// Precondition (the verifier's kMaxActivationBytes guarantees it for blobs):
// the sizes, each rounded up to 16, sum to less than 2^32.
inline std::uint64_t greedy_by_size(TensorPlan* t, std::uint32_t count) noexcept {
  for (std::uint32_t i = 0; i < count; ++i) t[i].offset = kUnplaced;
  std::uint64_t extent = 0;
  // Selection instead of a sort: no workspace; the previous pick bounds the next.
  bool have_prev = false;
  std::uint32_t prev_size = 0, prev_id = 0;
  for (;;) {
    std::uint32_t pick = count;
    for (std::uint32_t i = 0; i < count; ++i) {
      if (t[i].first < 0) continue;
      // Strictly after the previous pick in (size desc, id asc) order.
      if (have_prev && !(t[i].size < prev_size || (t[i].size == prev_size && i > prev_id))) continue;
      if (pick == count || t[i].size > t[pick].size) pick = i;  // ties keep the lower id
    }
    if (pick == count) break;
    have_prev = true;
    prev_size = t[pick].size;
    prev_id = pick;
    TensorPlan& x = t[pick];
    // Lowest aligned offset free for x's lifetime. Each conflict moves the
    // candidate past that tensor's end, which it never meets again.
    std::uint64_t candidate = 0;
    for (bool moved = true; moved;) {
      moved = false;
      for (std::uint32_t j = 0; j < count; ++j) {
        const TensorPlan& p = t[j];
        if (p.offset == kUnplaced || j == pick) continue;
        if (p.first > x.last || x.first > p.last) continue;  // lifetimes disjoint
        const std::uint64_t p_end = static_cast<std::uint64_t>(p.offset) + p.size;
        if (candidate < p_end && p.offset < candidate + x.size) {
          candidate = detail::align_up(p_end);
          moved = true;
        }
      }
    }
    x.offset = static_cast<std::uint32_t>(candidate);
    const std::uint64_t end = detail::align_up(candidate + x.size);
    if (end > extent) extent = end;
  }
  return extent;
}

// Step 1 for a verified blob: plans[t] gets size and lifetime of every
// activation (first = -1 for constants).
inline void compute_lifetimes(const ModelView& v, TensorPlan* plans) noexcept {
  const std::uint32_t T = v.tensor_count(), O = v.op_count();
  for (std::uint32_t t = 0; t < T; ++t) {
    const TensorDesc d = v.tensor(t);
    plans[t] = TensorPlan{};
    if (d.is_activation()) {
      plans[t].size = static_cast<std::uint32_t>(tensor_bytes(d));
      plans[t].first = INT32_MAX;
    }
  }
  auto touch = [&](std::uint32_t t, std::int32_t op) {
    TensorPlan& p = plans[t];
    if (op < p.first) p.first = op;
    if (op > p.last) p.last = op;
  };
  for (std::uint32_t k = 0; k < v.input_count(); ++k) touch(v.input_id(k), 0);
  for (std::uint32_t i = 0; i < O; ++i) {
    const OpDesc o = v.op(i);
    touch(o.output, static_cast<std::int32_t>(i));
    for (std::uint32_t k = 0; k < o.num_inputs && k < kMaxOpInputs; ++k)
      if (o.inputs[k] != kNoTensor && plans[o.inputs[k]].first != -1) touch(o.inputs[k], static_cast<std::int32_t>(i));
  }
  for (std::uint32_t k = 0; k < v.output_count(); ++k) touch(v.output_id(k), static_cast<std::int32_t>(O - 1));
  for (std::uint32_t t = 0; t < T; ++t)
    if (plans[t].first == INT32_MAX) plans[t].first = plans[t].last = -1;  // never written (verify forbids it)
}

constexpr bool has_channel_params(std::uint8_t code) noexcept {
  return code == static_cast<std::uint8_t>(OpCode::conv2d) ||
         code == static_cast<std::uint8_t>(OpCode::depthwise_conv2d) ||
         code == static_cast<std::uint8_t>(OpCode::fully_connected);
}

// Bytes of one output channel's weights (one OHWI filter or one dense row)
// of op o's filter tensor; the decode scratch of an encoded filter.
inline std::uint64_t filter_row_bytes(const ModelView& v, const OpDesc& o) noexcept {
  const TensorDesc f = v.tensor(o.inputs[1]);
  return element_count(f.shape) / static_cast<std::uint64_t>(f.shape.n);
}

// The largest decode scratch row over the ops whose filter is encoded; 0 when
// none is (micro/weight_codec.hpp).
inline std::uint64_t scratch_row_bytes(const ModelView& v) noexcept {
  std::uint64_t row = 0;
  for (std::uint32_t i = 0; i < v.op_count(); ++i) {
    const OpDesc o = v.op(i);
    if (has_channel_params(o.code) && v.tensor(o.inputs[1]).is_encoded() && filter_row_bytes(v, o) > row)
      row = filter_row_bytes(v, o);
  }
  return row;
}

// Bytes of the interpreter's persistent tail for a verified blob.
inline std::uint64_t persistent_bytes(const ModelView& v) noexcept {
  std::uint64_t bytes = detail::align_up(std::uint64_t{v.tensor_count()} * sizeof(TensorPlan)) +
                        detail::align_up(std::uint64_t{v.op_count()} * sizeof(PreparedOp));
  for (std::uint32_t i = 0; i < v.op_count(); ++i) {
    const OpDesc o = v.op(i);
    if (has_channel_params(o.code))
      bytes += detail::align_up(8 * static_cast<std::uint64_t>(v.tensor(o.output).shape.c));
  }
  return bytes + detail::align_up(scratch_row_bytes(v));
}

struct ArenaPlan {
  std::uint64_t activation_bytes = 0;  // extent of the planned activations
  std::uint64_t persistent_bytes = 0;  // tensor table, op table, per-channel params
  std::uint64_t total = 0;             // the arena size the interpreter needs
};

// Plan a verified blob into plans[tensor_count()].
inline ArenaPlan plan_arena(const ModelView& v, TensorPlan* plans) noexcept {
  compute_lifetimes(v, plans);
  ArenaPlan a;
  a.activation_bytes = greedy_by_size(plans, v.tensor_count());
  a.persistent_bytes = persistent_bytes(v);
  a.total = a.activation_bytes + a.persistent_bytes;
  return a;
}

struct PlanResult {
  VerifyResult status;  // the verifier's verdict; the plan is valid only if ok
  ArenaPlan plan;
  constexpr explicit operator bool() const noexcept { return status.ok(); }
};

// Verify and plan in one call, for host tools that print the arena size
// before anything runs. Uses a TensorPlan[kMaxTensors] on the stack (16 KiB):
// on a device, Interpreter::init reports the same figure from inside the arena.
inline PlanResult plan_arena_bytes(const std::uint8_t* blob, std::size_t size) noexcept {
  PlanResult r;
  r.status = verify(blob, size);
  if (!r.status) return r;
  TensorPlan plans[kMaxTensors];
  r.plan = plan_arena(ModelView(blob, size), plans);
  return r;
}

}  // namespace fleetdl::micro
