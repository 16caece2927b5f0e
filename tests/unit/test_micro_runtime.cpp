// tests/unit/test_micro_runtime.cpp — the micro runtime around the kernels:
// blob format and host writer (micro/blob_writer.hpp), verifier, greedy-by-size
// arena planner and interpreter.
//
//   * models built with the writer (conv -> relu -> maxpool -> dense ->
//     softmax; a residual add; a concat of two branches; depthwise + pools +
//     reshape) run through the interpreter and match, bit for bit, the same
//     ops called directly on std::vector buffers (no blob, no arena, no
//     planner); a conv and a depthwise model match a float reference within
//     one quantization step;
//   * planner: hand-made lifetimes with known optimal packings, 16-byte
//     alignment, ties by id, and random cases checked for overlap and against
//     the live-bytes lower bound;
//   * no heap: init() and invoke() run inside a scope in which every global
//     operator new of this thread is counted (see HeapCounter below), and the
//     count must stay 0; arena_used() equals plan_arena_bytes();
//   * a table of corrupted blobs: every truncation, every byte flip of the
//     header and tables (as is: CRC; and with the CRC recomputed so that the
//     structural checks see the flip: rejected, or run to completion — under
//     ASan/UBSan that means no out-of-bounds access), and one case per check.
#include "fleetdl/micro/blob_writer.hpp"
#include "fleetdl/micro/interpreter.hpp"
#include "fleetdl/micro/planner.hpp"
#include "fleetdl/micro/verifier.hpp"

#include "heap_counter.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <vector>

// ---------------------------------------------------------------------------
// HeapCounter (heap_counter.hpp): this file replaces the global operator new / delete of the
// whole unit_tests binary. The replacements only forward to malloc / free
// and, on a thread inside a HeapCounter scope, count the allocation; they
// never fail or abort, so other test files see the default behaviour. (The
// over-aligned forms are not replaced: they pair with their own default
// deletes, and the micro headers never use them.) malloc itself is
// not hooked: the micro headers include no allocating library header, which
// the -ffreestanding syntax check of the build documents.
using fleetdl_test::HeapCounter;
using fleetdl_test::tl_heap_count;
using fleetdl_test::tl_heap_counting;

namespace {
void* counted_alloc(std::size_t n) {
  if (tl_heap_counting) ++tl_heap_count;
  void* p = std::malloc(n == 0 ? 1 : n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
}  // namespace

void* operator new(std::size_t n) { return counted_alloc(n); }
void* operator new[](std::size_t n) { return counted_alloc(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  if (tl_heap_counting) ++tl_heap_count;
  return std::malloc(n == 0 ? 1 : n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  if (tl_heap_counting) ++tl_heap_count;
  return std::malloc(n == 0 ? 1 : n);
}
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace {

namespace mi = fleetdl::micro;
using I8 = std::vector<std::int8_t>;
using I32 = std::vector<std::int32_t>;
using mi::Shape4;

// Bytes at a 16-byte boundary (the verifier insists).
class Aligned {
 public:
  Aligned() = default;
  explicit Aligned(const std::vector<std::uint8_t>& b) { assign(b.data(), b.size()); }
  void assign(const std::uint8_t* p, std::size_t n) {
    store_.assign(n + 16, 0);
    offset_ = (16 - reinterpret_cast<std::uintptr_t>(store_.data()) % 16) % 16;
    if (n) std::memcpy(data(), p, n);
    size_ = n;
  }
  std::uint8_t* data() { return store_.data() + offset_; }
  std::size_t size() const { return size_; }

 private:
  std::vector<std::uint8_t> store_;
  std::size_t offset_ = 0;
  std::size_t size_ = 0;
};

I8 random_i8(std::size_t n, std::mt19937& g, int lo = -128, int hi = 127) {
  std::uniform_int_distribution<int> d(lo, hi);
  I8 v(n);
  for (auto& x : v) x = static_cast<std::int8_t>(d(g));
  return v;
}
I32 random_i32(std::size_t n, std::mt19937& g, int lo, int hi) {
  std::uniform_int_distribution<int> d(lo, hi);
  I32 v(n);
  for (auto& x : v) x = d(g);
  return v;
}
std::vector<float> random_scales(std::size_t n, std::mt19937& g, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}
std::size_t count(const Shape4& s) { return static_cast<std::size_t>(mi::flat_size(s)); }

// ---------------------------------------------------------------------------
// Reference executor: the writer's description run op by op with the kernels
// on std::vector buffers. Shares nothing with the interpreter but kernels.hpp
// and quant.hpp: no blob parsing, no planner, no arena.
struct Reference {
  std::vector<I8> act;  // per tensor id

  static std::vector<float> floats(const mi::BlobWriter::Tensor& t) {
    std::vector<float> f(t.data.size() / 4);
    std::memcpy(f.data(), t.data.data(), t.data.size());
    return f;
  }
  static I32 ints(const mi::BlobWriter::Tensor& t) {
    I32 v(t.data.size() / 4);
    std::memcpy(v.data(), t.data.data(), t.data.size());
    return v;
  }

  void run(mi::BlobWriter& w) {
    act.resize(w.tensor_count());
    for (std::size_t i = 0; i < w.op_count(); ++i) {
      const mi::OpDesc o = w.op_at(i);
      const auto& yd = w.tensor(o.output).desc;
      I8& y = act[o.output];
      y.assign(count(yd.shape), 0);
      const auto& xd = w.tensor(o.inputs[0]).desc;
      std::int32_t lo = 0, hi = 0;
      REQUIRE(mi::activation_range(static_cast<mi::Activation>(o.activation), yd.scale, yd.zero_point, lo, hi));
      bool ok = false;
      switch (static_cast<mi::OpCode>(o.code)) {
        case mi::OpCode::conv2d:
        case mi::OpCode::depthwise_conv2d:
        case mi::OpCode::fully_connected: {
          const auto& f = w.tensor(o.inputs[1]);
          const std::size_t co = static_cast<std::size_t>(yd.shape.c);
          std::vector<float> sw(co, f.desc.scale);
          if (o.inputs[3] != mi::kNoTensor) sw = floats(w.tensor(o.inputs[3]));
          I32 mult(co), shift(co), bias;
          for (std::size_t c = 0; c < co; ++c) {
            const auto q = mi::quantize_multiplier(mi::conv_effective_scale(xd.scale, sw[c], yd.scale));
            REQUIRE(q.ok);
            mult[c] = q.multiplier;
            shift[c] = q.shift;
          }
          if (o.inputs[2] != mi::kNoTensor) bias = ints(w.tensor(o.inputs[2]));
          const auto* fw = reinterpret_cast<const std::int8_t*>(f.data.data());
          if (o.code == static_cast<std::uint8_t>(mi::OpCode::fully_connected)) {
            mi::FullyConnectedParams p;
            p.input_zero_point = xd.zero_point;
            p.output_zero_point = yd.zero_point;
            p.act_min = lo;
            p.act_max = hi;
            p.out_multiplier = mult.data();
            p.out_shift = shift.data();
            ok = mi::fully_connected(p, xd.shape.n, xd.shape.h * xd.shape.w * xd.shape.c, yd.shape.c,
                                     act[o.inputs[0]].data(), fw, bias.empty() ? nullptr : bias.data(), y.data());
          } else {
            mi::ConvParams p;
            p.padding = static_cast<mi::Padding>(o.padding);
            p.stride_h = o.stride_h;
            p.stride_w = o.stride_w;
            p.dilation_h = o.dilation_h;
            p.dilation_w = o.dilation_w;
            p.depth_multiplier = o.code == static_cast<std::uint8_t>(mi::OpCode::depthwise_conv2d) ? o.param : 1;
            p.input_zero_point = xd.zero_point;
            p.output_zero_point = yd.zero_point;
            p.act_min = lo;
            p.act_max = hi;
            p.out_multiplier = mult.data();
            p.out_shift = shift.data();
            ok = o.code == static_cast<std::uint8_t>(mi::OpCode::conv2d)
                     ? mi::conv2d(p, xd.shape, act[o.inputs[0]].data(), f.desc.shape, fw,
                                  bias.empty() ? nullptr : bias.data(), yd.shape, y.data())
                     : mi::depthwise_conv2d(p, xd.shape, act[o.inputs[0]].data(), f.desc.shape, fw,
                                            bias.empty() ? nullptr : bias.data(), yd.shape, y.data());
          }
          break;
        }
        case mi::OpCode::max_pool2d:
        case mi::OpCode::average_pool2d: {
          mi::PoolParams p;
          p.padding = static_cast<mi::Padding>(o.padding);
          p.filter_h = o.filter_h;
          p.filter_w = o.filter_w;
          p.stride_h = o.stride_h;
          p.stride_w = o.stride_w;
          p.act_min = lo;
          p.act_max = hi;
          ok = o.code == static_cast<std::uint8_t>(mi::OpCode::max_pool2d)
                   ? mi::max_pool2d(p, xd.shape, act[o.inputs[0]].data(), yd.shape, y.data())
                   : mi::average_pool2d(p, xd.shape, act[o.inputs[0]].data(), yd.shape, y.data());
          break;
        }
        case mi::OpCode::global_average_pool2d:
          ok = mi::global_average_pool2d(xd.shape, act[o.inputs[0]].data(), lo, hi, y.data());
          break;
        case mi::OpCode::add: {
          const auto& bd = w.tensor(o.inputs[1]).desc;
          const auto p = mi::prepare_add(xd.scale, xd.zero_point, bd.scale, bd.zero_point, yd.scale, yd.zero_point,
                                         static_cast<mi::Activation>(o.activation));
          ok = mi::add(p, mi::flat_size(yd.shape), act[o.inputs[0]].data(), act[o.inputs[1]].data(), y.data());
          break;
        }
        case mi::OpCode::concatenation: {
          REQUIRE(o.param == 3);  // channel axis in these tests
          std::vector<const std::int8_t*> ptrs;
          I32 inner;
          for (std::size_t k = 0; k < o.num_inputs; ++k) {
            ptrs.push_back(act[o.inputs[k]].data());
            inner.push_back(w.tensor(o.inputs[k]).desc.shape.c);
          }
          ok = mi::concatenation(yd.shape.n * yd.shape.h * yd.shape.w, o.num_inputs, ptrs.data(), inner.data(), y.data());
          break;
        }
        case mi::OpCode::reshape:
          y = act[o.inputs[0]];
          ok = true;
          break;
        case mi::OpCode::softmax: {
          float beta;
          std::memcpy(&beta, &o.param, 4);
          const auto p = mi::prepare_softmax(xd.scale, beta);
          ok = mi::softmax(p, yd.shape.n * yd.shape.h * yd.shape.w, yd.shape.c, act[o.inputs[0]].data(), y.data());
          break;
        }
      }
      REQUIRE(ok);
    }
  }
};

// A built model: writer (for the reference), blob, input ids.
struct Model {
  mi::BlobWriter w;
  std::vector<std::uint16_t> in, out;
};

// conv(3x3 SAME, relu, per-channel) -> maxpool 2x2 -> dense -> softmax
Model classifier(std::mt19937& g) {
  Model m;
  auto& w = m.w;
  const auto x = w.activation({1, 8, 8, 2}, 0.05f, -3);
  const auto k = w.constant_int8({4, 3, 3, 2}, 1.0f, random_i8(4 * 9 * 2, g, -127, 127));
  const auto kb = w.constant_int32({1, 1, 1, 4}, random_i32(4, g, -2000, 2000));
  const auto ks = w.constant_float({1, 1, 1, 4}, random_scales(4, g, 0.002f, 0.02f));
  const auto c = w.activation({1, 8, 8, 4}, 0.08f, -128);
  const auto p = w.activation({1, 4, 4, 4}, 0.08f, -128);
  const auto d = w.constant_int8({10, 1, 1, 64}, 0.01f, random_i8(640, g, -127, 127));
  const auto db = w.constant_int32({1, 1, 1, 10}, random_i32(10, g, -500, 500));
  const auto l = w.activation({1, 1, 1, 10}, 0.15f, 4);
  const auto s = w.activation({1, 1, 1, 10}, 1.0f / 256, -128);
  mi::ConvOptions co;
  co.padding = mi::Padding::same;
  co.activation = mi::Activation::relu;
  w.conv2d(x, k, kb, ks, c, co);
  w.max_pool2d(c, p);
  w.fully_connected(p, d, db, mi::kNoTensor, l);
  w.softmax(l, s);
  w.inputs({x});
  w.outputs({s});
  m.in = {x};
  m.out = {s};
  return m;
}

// x -> conv 1x1 -> add(x, .) relu6 (a residual block)
Model residual(std::mt19937& g) {
  Model m;
  auto& w = m.w;
  const auto x = w.activation({1, 5, 5, 3}, 0.04f, 7);
  const auto k = w.constant_int8({3, 1, 1, 3}, 0.01f, random_i8(9, g, -127, 127));
  const auto y = w.activation({1, 5, 5, 3}, 0.03f, -10);
  const auto z = w.activation({1, 5, 5, 3}, 0.05f, -20);
  w.conv2d(x, k, mi::kNoTensor, mi::kNoTensor, y);
  w.add(x, y, z, mi::Activation::relu6);
  w.inputs({x});
  w.outputs({z});
  m.in = {x};
  m.out = {z};
  return m;
}

// x -> {conv 3x3 stride 2 SAME, depthwise 3x3 stride 2 SAME dm 2, dilation 2} -> concat -> gap
Model branches(std::mt19937& g) {
  Model m;
  auto& w = m.w;
  const auto x = w.activation({1, 9, 7, 3}, 0.06f, 2);
  const auto k1 = w.constant_int8({2, 3, 3, 3}, 0.02f, random_i8(54, g, -127, 127));
  const auto b1 = w.constant_int32({1, 1, 1, 2}, random_i32(2, g, -300, 300));
  const auto k2 = w.constant_int8({1, 3, 3, 6}, 0.02f, random_i8(54, g, -127, 127));
  const auto s2 = w.constant_float({1, 1, 1, 6}, random_scales(6, g, 0.005f, 0.03f));
  const auto a = w.activation({1, 5, 4, 2}, 0.1f, -5);
  const auto b = w.activation({1, 5, 4, 6}, 0.1f, -5);
  const auto c = w.activation({1, 5, 4, 8}, 0.1f, -5);
  const auto gp = w.activation({1, 1, 1, 8}, 0.1f, -5);
  mi::ConvOptions o;
  o.padding = mi::Padding::same;
  o.stride_h = o.stride_w = 2;
  w.conv2d(x, k1, b1, mi::kNoTensor, a, o);
  o.dilation_h = 2;
  o.activation = mi::Activation::relu;
  w.depthwise_conv2d(x, k2, mi::kNoTensor, s2, b, 2, o);
  w.concatenation({a, b}, c, 3);
  w.global_average_pool2d(c, gp);
  w.inputs({x});
  w.outputs({gp, c});
  m.in = {x};
  m.out = {gp, c};
  return m;
}

// Two inputs: depthwise (VALID) -> average pool 3x3 stride 1 SAME -> reshape -> dense
Model two_inputs(std::mt19937& g) {
  Model m;
  auto& w = m.w;
  const auto x = w.activation({2, 6, 6, 2}, 0.07f, 0);
  const auto u = w.activation({2, 4, 4, 2}, 0.05f, 1);
  const auto k = w.constant_int8({1, 3, 3, 2}, 0.03f, random_i8(18, g, -127, 127));
  const auto d = w.activation({2, 4, 4, 2}, 0.05f, 1);
  const auto e = w.activation({2, 4, 4, 2}, 0.06f, -1);
  const auto a = w.activation({2, 4, 4, 2}, 0.06f, -1);
  const auto r = w.activation({2, 1, 1, 32}, 0.06f, -1);
  const auto f = w.constant_int8({3, 1, 1, 32}, 0.02f, random_i8(96, g, -127, 127));
  const auto o = w.activation({2, 1, 1, 3}, 0.2f, 0);
  w.depthwise_conv2d(x, k, mi::kNoTensor, mi::kNoTensor, d, 1);
  w.add(d, u, e);
  mi::PoolOptions po;
  po.padding = mi::Padding::same;
  po.filter_h = po.filter_w = 3;
  po.stride_h = po.stride_w = 1;
  w.average_pool2d(e, a, po);
  w.reshape(a, r);
  w.fully_connected(r, f, mi::kNoTensor, mi::kNoTensor, o, mi::Activation::relu_n1_to_1);
  w.inputs({x, u});
  w.outputs({o});
  m.in = {x, u};
  m.out = {o};
  return m;
}

// Runs the blob through init + invoke with random inputs and compares every
// output with the reference executor, bit for bit.
void check_model(Model& m, std::mt19937& g) {
  const Aligned blob(m.w.finish());
  Aligned copy = blob;
  const auto plan = mi::plan_arena_bytes(copy.data(), copy.size());
  INFO(plan.status.message << " at " << plan.status.index);
  REQUIRE(plan);
  std::vector<std::uint8_t> arena_store(plan.plan.total + 16);
  Aligned arena;
  arena.assign(arena_store.data(), arena_store.size() - 16);
  auto r = mi::Interpreter::init(copy.data(), copy.size(), arena.data(), plan.plan.total);
  INFO(r.message);
  REQUIRE(r);
  mi::Interpreter& it = r.interpreter;
  REQUIRE(it.arena_used() == plan.plan.total);
  Reference ref;
  ref.act.resize(m.w.tensor_count());
  for (std::uint32_t i = 0; i < m.in.size(); ++i) {
    const auto info = it.input_info(i);
    ref.act[m.in[i]] = random_i8(info.bytes, g);
    std::memcpy(it.input(i), ref.act[m.in[i]].data(), info.bytes);
  }
  ref.run(m.w);
  REQUIRE(it.invoke());
  for (std::uint32_t i = 0; i < m.out.size(); ++i) {
    const auto info = it.output_info(i);
    const I8 got(it.output(i), it.output(i) + info.bytes);
    CHECK(got == ref.act[m.out[i]]);
  }
  // Twice: invoke() has no state of its own (but the planner may have reused
  // the inputs' bytes after their last reader, so they are written again).
  for (std::uint32_t i = 0; i < m.in.size(); ++i)
    std::memcpy(it.input(i), ref.act[m.in[i]].data(), it.input_info(i).bytes);
  REQUIRE(it.invoke());
  const I8 again(it.output(0), it.output(0) + it.output_info(0).bytes);
  CHECK(again == ref.act[m.out[0]]);
}

}  // namespace

TEST_CASE("micro runtime: models match direct kernel calls bit for bit", "[micro][runtime]") {
  std::mt19937 g(1234);
  for (int rep = 0; rep < 5; ++rep) {
    SECTION("classifier") {
      Model m = classifier(g);
      check_model(m, g);
    }
    SECTION("residual") {
      Model m = residual(g);
      check_model(m, g);
    }
    SECTION("branches") {
      Model m = branches(g);
      check_model(m, g);
    }
    SECTION("two inputs") {
      Model m = two_inputs(g);
      check_model(m, g);
    }
  }
}

TEST_CASE("micro runtime: conv and depthwise models within one step of float", "[micro][runtime]") {
  std::mt19937 g(99);
  for (const bool depthwise : {false, true}) {
    mi::BlobWriter w;
    const Shape4 xs{1, 6, 5, 3};
    const std::int32_t co = depthwise ? 3 : 4;
    const Shape4 fs = depthwise ? Shape4{1, 3, 3, 3} : Shape4{4, 3, 3, 3};
    const float s_in = 0.04f, s_out = 0.05f;
    const std::int32_t zp_in = -6, zp_out = 3;
    const auto fw = random_i8(count(fs), g, -127, 127);
    const auto sw = random_scales(static_cast<std::size_t>(co), g, 0.004f, 0.01f);
    I32 bias = random_i32(static_cast<std::size_t>(co), g, -400, 400);
    const auto x = w.activation(xs, s_in, zp_in);
    const auto k = w.constant_int8(fs, 1.0f, fw);
    const auto b = w.constant_int32({1, 1, 1, co}, bias);
    const auto s = w.constant_float({1, 1, 1, co}, sw);
    const Shape4 ys{1, 6, 5, co};
    const auto y = w.activation(ys, s_out, zp_out);
    mi::ConvOptions o;
    o.padding = mi::Padding::same;
    if (depthwise)
      w.depthwise_conv2d(x, k, b, s, y, 1, o);
    else
      w.conv2d(x, k, b, s, y, o);
    w.inputs({x});
    w.outputs({y});
    Aligned blob(w.finish());
    alignas(16) static std::uint8_t arena[8192];
    auto r = mi::Interpreter::init(blob.data(), blob.size(), arena, sizeof arena);
    REQUIRE(r);
    const I8 in = random_i8(count(xs), g);
    std::memcpy(r.interpreter.input(0), in.data(), in.size());
    REQUIRE(r.interpreter.invoke());
    const std::int8_t* out = r.interpreter.output(0);
    int worst = 0;
    for (std::int32_t oy = 0; oy < 6; ++oy)
      for (std::int32_t ox = 0; ox < 5; ++ox)
        for (std::int32_t oc = 0; oc < co; ++oc) {
          double acc = bias[static_cast<std::size_t>(oc)] * static_cast<double>(s_in) * sw[static_cast<std::size_t>(oc)];
          for (std::int32_t ky = 0; ky < 3; ++ky)
            for (std::int32_t kx = 0; kx < 3; ++kx) {
              const std::int32_t iy = oy + ky - 1, ix = ox + kx - 1;
              if (iy < 0 || iy >= 6 || ix < 0 || ix >= 5) continue;
              for (std::int32_t ic = 0; ic < 3; ++ic) {
                if (depthwise && ic != oc) continue;
                const std::size_t widx = depthwise ? static_cast<std::size_t>((ky * 3 + kx) * 3 + oc)
                                                   : static_cast<std::size_t>(((oc * 3 + ky) * 3 + kx) * 3 + ic);
                const double xv = s_in * (in[static_cast<std::size_t>((iy * 5 + ix) * 3 + ic)] - zp_in);
                acc += xv * fw[widx] * sw[static_cast<std::size_t>(oc)];
              }
            }
          const double q = std::clamp(std::round(acc / s_out) + zp_out, -128.0, 127.0);
          const int diff = std::abs(static_cast<int>(q) - out[(oy * 5 + ox) * co + oc]);
          worst = std::max(worst, diff);
        }
    CHECK(worst <= 1);
  }
}

TEST_CASE("micro planner: greedy by size on hand-made lifetimes", "[micro][planner]") {
  auto plan = [](std::vector<mi::TensorPlan> t) {
    const auto extent = mi::greedy_by_size(t.data(), static_cast<std::uint32_t>(t.size()));
    return std::make_pair(extent, t);
  };
  SECTION("a chain: the lower bound max_op(live bytes) is reached") {
    // sizes 100, 200, 50, 300 along x0 -> x1 -> x2 -> x3; op 2 holds x2 + x3 = 304 + 50 -> 368
    auto [extent, t] = plan({{100, 0, 0, 0}, {200, 0, 0, 1}, {50, 0, 1, 2}, {300, 0, 2, 3}});
    CHECK(t[3].offset == 0);    // largest first
    CHECK(t[1].offset == 0);    // lifetime disjoint from x3: shares its bytes
    CHECK(t[0].offset == 208);  // after x1 (200 -> 208, 16-aligned)
    CHECK(t[2].offset == 304);  // after x3 (300 -> 304), x1 also live
    CHECK(extent == 368);
  }
  SECTION("overlapping lifetimes, 16-byte alignment") {
    auto [extent, t] = plan({{5, 0, 0, 1}, {7, 0, 0, 1}, {1, 0, 1, 1}});
    CHECK(t[1].offset == 0);
    CHECK(t[0].offset == 16);
    CHECK(t[2].offset == 32);
    CHECK(extent == 48);
  }
  SECTION("disjoint lifetimes share offset 0") {
    auto [extent, t] = plan({{64, 0, 0, 0}, {48, 0, 1, 1}, {17, 0, 2, 2}});
    CHECK(t[0].offset == 0);
    CHECK(t[1].offset == 0);
    CHECK(t[2].offset == 0);
    CHECK(extent == 64);
  }
  SECTION("ties by id; a gap is reused") {
    // 32 (id 0) [0,3], 32 (id 1) [0,0], 32 (id 2) [0,3], 16 (id 3) [1,2]: id 3 fits where id 1 was
    auto [extent, t] = plan({{32, 0, 0, 3}, {32, 0, 0, 0}, {32, 0, 0, 3}, {16, 0, 1, 2}});
    CHECK(t[0].offset == 0);
    CHECK(t[1].offset == 32);
    CHECK(t[2].offset == 64);
    CHECK(t[3].offset == 32);
    CHECK(extent == 96);
  }
  SECTION("unplanned entries are skipped") {
    auto [extent, t] = plan({{1000, 0, -1, -1}, {10, 0, 0, 0}});
    CHECK(t[0].offset == mi::kUnplaced);
    CHECK(t[1].offset == 0);
    CHECK(extent == 16);
  }
  SECTION("random: no live overlap, aligned, extent = max aligned end >= live lower bound") {
    std::mt19937 g(7);
    for (int rep = 0; rep < 200; ++rep) {
      const int n = 1 + static_cast<int>(g() % 30), ops = 1 + static_cast<int>(g() % 12);
      std::vector<mi::TensorPlan> t(static_cast<std::size_t>(n));
      for (auto& p : t) {
        p.size = 1 + g() % 500;
        p.first = static_cast<std::int32_t>(g() % static_cast<unsigned>(ops));
        p.last = p.first + static_cast<std::int32_t>(g() % 4);
      }
      auto [extent, r] = plan(t);
      std::uint64_t max_end = 0, live_bound = 0;
      for (int op = 0; op < ops + 4; ++op) {
        std::uint64_t live = 0;
        for (const auto& p : r)
          if (p.first <= op && op <= p.last) live += p.size;
        live_bound = std::max(live_bound, live);
      }
      for (std::size_t i = 0; i < r.size(); ++i) {
        CHECK(r[i].offset % 16 == 0);
        max_end = std::max<std::uint64_t>(max_end, (r[i].offset + r[i].size + 15) / 16 * 16);
        for (std::size_t j = 0; j < i; ++j) {
          const bool live = r[i].first <= r[j].last && r[j].first <= r[i].last;
          const bool mem = r[i].offset < r[j].offset + r[j].size && r[j].offset < r[i].offset + r[i].size;
          CHECK_FALSE((live && mem));
        }
      }
      CHECK(extent == max_end);
      CHECK(extent >= live_bound);
    }
  }
}

TEST_CASE("micro planner: arena figure of a model", "[micro][planner]") {
  std::mt19937 g(5);
  Model m = classifier(g);
  Aligned blob(m.w.finish());
  const auto r = mi::plan_arena_bytes(blob.data(), blob.size());
  REQUIRE(r);
  // Activations: conv out 256 B [0,1], pool out 64 [1,2], input 128 [0,0],
  // logits 10 -> 16 [2,3], softmax 10 -> 16 [3,3]:
  // 256 at 0; 128 (input) at 256; 64 (pool, live with conv) at 256; logits at 0; softmax at 16.
  CHECK(r.plan.activation_bytes == 384);
  // Persistent: 10 tensors * 16 = 160, 4 ops * 64 = 256, conv 4 ch -> 32, dense 10 ch -> 80.
  CHECK(r.plan.persistent_bytes == 160 + 256 + 32 + 80);
  CHECK(r.plan.total == 384 + 528);
}

TEST_CASE("micro runtime: no heap between init and the end of invoke; arena_used = plan", "[micro][runtime]") {
  std::mt19937 g(11);
  Model m = classifier(g);
  Aligned blob(m.w.finish());
  const auto plan = mi::plan_arena_bytes(blob.data(), blob.size());
  REQUIRE(plan);
  alignas(16) static std::uint8_t arena[4096];
  REQUIRE(plan.plan.total <= sizeof arena);
  {
    HeapCounter probe;  // the counter sees allocations of this thread
    std::vector<int>* v = new std::vector<int>(3);
    delete v;
    CHECK(probe.count() == 2);
  }
  long allocations = -1;
  bool ran = false;
  std::size_t used = 0;
  {
    HeapCounter counter;
    auto r = mi::Interpreter::init(blob.data(), blob.size(), arena, sizeof arena);
    if (r) {
      std::memset(r.interpreter.input(0), 3, r.interpreter.input_info(0).bytes);
      ran = static_cast<bool>(r.interpreter.invoke());
      used = r.interpreter.arena_used();
    }
    allocations = counter.count();
  }
  CHECK(ran);
  CHECK(allocations == 0);
  CHECK(used == plan.plan.total);
}

namespace {

mi::ErrorCode verify_code(std::vector<std::uint8_t> b) {
  Aligned a(b);
  return mi::verify(a.data(), a.size()).code;
}

// Init + invoke in a fixed arena; for blobs the verifier accepted.
bool runs(Aligned& a) {
  alignas(16) static std::uint8_t arena[1 << 16];
  auto r = mi::Interpreter::init(a.data(), a.size(), arena, sizeof arena);
  if (!r) return r.code == mi::ErrorCode::arena_too_small;
  return static_cast<bool>(r.interpreter.invoke());
}

}  // namespace

TEST_CASE("micro verifier: truncations and byte flips are refused", "[micro][verifier]") {
  std::mt19937 g(3);
  for (auto make : {classifier, residual, branches, two_inputs}) {
    Model m = make(g);
    const auto good = m.w.finish();
    REQUIRE(verify_code(good) == mi::ErrorCode::ok);
    for (std::size_t n = 0; n < good.size(); ++n) {
      Aligned a;
      a.assign(good.data(), n);
      INFO("length " << n);
      CHECK_FALSE(mi::verify(a.data(), a.size()));
    }
    const std::size_t tables = mi::detail::load_u32(good.data() + mi::layout::kDataOffset);
    int accepted = 0;
    for (std::size_t i = 0; i < tables; ++i) {
      for (const std::uint8_t mask : {std::uint8_t{0xFF}, std::uint8_t{0x01}, std::uint8_t{0x80}}) {
        auto b = good;
        b[i] ^= mask;
        INFO("byte " << i << " mask " << int(mask));
        CHECK(verify_code(b) != mi::ErrorCode::ok);  // CRC (or an earlier header check)
        mi::BlobWriter::patch_crc(b);
        Aligned a(b);
        if (mi::verify(a.data(), a.size())) {
          ++accepted;
          CHECK(runs(a));
        }
      }
    }
    // Accepted flips are benign ones (a scale bit, a bias-free channel...):
    // they ran above without a sanitizer complaint.
    CHECK(accepted < static_cast<int>(tables));
  }
}

TEST_CASE("micro verifier: a table of corrupted blobs, one per check", "[micro][verifier]") {
  using E = mi::ErrorCode;
  std::mt19937 g(17);
  Model base = classifier(g);
  const auto good = base.w.finish();
  const std::size_t tt = mi::kHeaderBytes;                                             // tensor table
  const std::size_t ot = tt + base.w.tensor_count() * mi::kTensorRecordBytes;          // op table
  auto patched = [&](auto edit) {
    auto b = good;
    edit(b);
    mi::BlobWriter::patch_crc(b);
    return verify_code(b);
  };
  auto put32 = [](std::vector<std::uint8_t>& b, std::size_t at, std::uint32_t v) { mi::BlobWriter::put32(b, at, v); };

  CHECK(verify_code(good) == E::ok);
  CHECK(mi::verify(nullptr, 0).code == E::null_blob);
  {
    Aligned a(good);
    CHECK(mi::verify(a.data() + 1, a.size() - 1).code == E::blob_misaligned);
  }
  CHECK(patched([](auto& b) { b[0] = 'X'; }) == E::bad_magic);
  CHECK(patched([&](auto& b) { put32(b, mi::layout::kVersion, 1); }) == E::bad_version);  // no encodings yet
  CHECK(patched([&](auto& b) { put32(b, mi::layout::kVersion, 3); }) == E::bad_version);
  CHECK(patched([&](auto& b) { put32(b, mi::layout::kLength, 12); }) == E::bad_length);
  {
    auto b = good;
    b.push_back(0);
    CHECK(verify_code(b) == E::bad_length);
  }
  CHECK(patched([&](auto& b) { put32(b, mi::layout::kFlags, 1); }) == E::reserved_not_zero);
  CHECK(patched([&](auto& b) { put32(b, mi::layout::kTensorCount, 0xFFFFFFFFu); }) == E::bad_counts);
  CHECK(patched([&](auto& b) { put32(b, mi::layout::kOpCount, 1025); }) == E::bad_counts);
  CHECK(patched([&](auto& b) { put32(b, mi::layout::kInputCount, 0); }) == E::bad_counts);
  CHECK(patched([&](auto& b) { put32(b, mi::layout::kOutputCount, 17); }) == E::bad_counts);
  CHECK(patched([&](auto& b) { put32(b, mi::layout::kTensorCount, 1000); }) == E::truncated);
  CHECK(patched([&](auto& b) { put32(b, mi::layout::kDataOffset, 8); }) == E::bad_data_offset);
  CHECK(patched([&](auto& b) { put32(b, mi::layout::kDataOffset, 0x7FFFFFF0u); }) == E::bad_data_offset);
  // Tensor 1 is the conv filter (constant), tensor 0 the input (activation).
  const std::size_t t0 = tt, t1 = tt + mi::kTensorRecordBytes, t2 = tt + 2 * mi::kTensorRecordBytes;
  CHECK(patched([&](auto& b) { b[t0 + mi::layout::kTType] = 3; }) == E::bad_tensor);
  CHECK(patched([&](auto& b) { b[t0 + mi::layout::kTType] = 1; }) == E::bad_tensor);  // int32 activation
  CHECK(patched([&](auto& b) { b[t0 + mi::layout::kTKind] = 2; }) == E::bad_tensor);
  CHECK(patched([&](auto& b) { b[t0 + mi::layout::kTEncoding] = 1; }) == E::bad_encoding);  // an activation
  CHECK(patched([&](auto& b) { b[t1 + mi::layout::kTEncoding] = 2; }) == E::bad_encoding);  // unknown encoding
  CHECK(patched([&](auto& b) { b[t1 + mi::layout::kTEncoding + 1] = 1; }) == E::bad_encoding);
  CHECK(patched([&](auto& b) { put32(b, t0 + 4, 0); }) == E::bad_shape);
  CHECK(patched([&](auto& b) { put32(b, t0 + 4, 0x80000000u); }) == E::bad_shape);  // negative dim
  CHECK(patched([&](auto& b) {
          put32(b, t0, 65536);
          put32(b, t0 + 4, 65536);
        }) == E::bad_shape);  // 2^32 * 16 elements
  CHECK(patched([&](auto& b) {
          for (std::size_t d = 0; d < 4; ++d) put32(b, t0 + 4 * d, 0x7FFFFFFFu);
        }) == E::bad_shape);  // (2^31 - 1)^4: no int64 overflow on the way (found by the fuzzer)
  CHECK(patched([&](auto& b) { put32(b, t0 + mi::layout::kTZeroPoint, 200); }) == E::bad_quantization);
  CHECK(patched([&](auto& b) { put32(b, t0 + mi::layout::kTScale, 0x7FC00000u); }) == E::bad_quantization);  // NaN
  CHECK(patched([&](auto& b) { put32(b, t0 + mi::layout::kTScale, 0); }) == E::bad_quantization);
  CHECK(patched([&](auto& b) { put32(b, t0 + mi::layout::kTDataLength, 4); }) == E::bad_tensor);
  CHECK(patched([&](auto& b) { put32(b, t1 + mi::layout::kTZeroPoint, 1); }) == E::bad_quantization);  // weights symmetric
  CHECK(patched([&](auto& b) { put32(b, t1 + mi::layout::kTDataOffset, mi::detail::load_u32(b.data() + t1 + 28) + 1); }) ==
        E::bad_constant_data);  // unaligned
  CHECK(patched([&](auto& b) { put32(b, t1 + mi::layout::kTDataLength, 71); }) == E::bad_constant_data);
  CHECK(patched([&](auto& b) { put32(b, t2 + mi::layout::kTDataOffset, mi::detail::load_u32(b.data() + t1 + 28)); }) ==
        E::bad_constant_data);  // overlaps the filter
  CHECK(patched([&](auto& b) { put32(b, t1 + mi::layout::kTDataOffset, 0xFFFFFFF0u); }) == E::bad_constant_data);
  CHECK(patched([&](auto& b) { put32(b, t1 + mi::layout::kTDataOffset, 16); }) == E::bad_constant_data);  // inside the tables
  {
    // Too many activation bytes: the input as {1, 2^15, 2^15, 2} = 2 GiB (> INT32_MAX): bad_shape;
    // {1, 2^15, 2^15, 1} = 1 GiB plus the rest: over the 1 GiB limit.
    CHECK(patched([&](auto& b) {
            put32(b, t0 + 4, 32768);
            put32(b, t0 + 8, 32768);
            put32(b, t0 + 12, 1);
          }) == E::too_many_activation_bytes);
  }
  const std::size_t io = ot + base.w.op_count() * mi::kOpRecordBytes;
  CHECK(patched([&](auto& b) { put32(b, io, 1); }) == E::bad_io);     // input is a constant
  CHECK(patched([&](auto& b) { put32(b, io, 99); }) == E::bad_io);    // no such tensor
  CHECK(patched([&](auto& b) { put32(b, io + 4, 1); }) == E::bad_io);  // output is a constant
  // Ops: 0 conv, 1 maxpool, 2 dense, 3 softmax.
  const std::size_t o0 = ot, o1 = ot + mi::kOpRecordBytes, o3 = ot + 3 * mi::kOpRecordBytes;
  CHECK(patched([&](auto& b) { b[o0] = 0; }) == E::bad_op_code);
  CHECK(patched([&](auto& b) { b[o0] = 11; }) == E::bad_op_code);
  CHECK(patched([&](auto& b) { b[o0 + mi::layout::kONumInputs] = 9; }) == E::bad_op_inputs);
  CHECK(patched([&](auto& b) { b[o0 + mi::layout::kONumInputs] = 3; }) == E::bad_op_inputs);  // slot 3 not 0xFFFF
  CHECK(patched([&](auto& b) { b[o0 + mi::layout::kOReserved32] = 1; }) == E::reserved_not_zero);
  CHECK(patched([&](auto& b) { mi::BlobWriter::put16(b, o0 + mi::layout::kOOutput, 500); }) == E::tensor_out_of_range);
  CHECK(patched([&](auto& b) { mi::BlobWriter::put16(b, o0 + mi::layout::kOInputs, 300); }) == E::tensor_out_of_range);
  CHECK(patched([&](auto& b) { mi::BlobWriter::put16(b, o0 + mi::layout::kOInputs, 5); }) == E::use_before_definition);
  CHECK(patched([&](auto& b) { mi::BlobWriter::put16(b, o1 + mi::layout::kOOutput, 4); }) == E::redefinition);  // conv out again
  CHECK(patched([&](auto& b) { mi::BlobWriter::put16(b, o0 + mi::layout::kOOutput, 0); }) == E::redefinition);  // model input
  CHECK(patched([&](auto& b) { mi::BlobWriter::put16(b, o0 + mi::layout::kOOutput, 1); }) == E::bad_op_inputs);  // constant out
  CHECK(patched([&](auto& b) { mi::BlobWriter::put16(b, o0 + mi::layout::kOInputs + 2, 0); }) == E::bad_op_inputs);  // filter = x
  CHECK(patched([&](auto& b) { mi::BlobWriter::put16(b, o0 + mi::layout::kOInputs + 4, 1); }) == E::bad_op_inputs);  // bias int8
  CHECK(patched([&](auto& b) { mi::BlobWriter::put16(b, o0 + mi::layout::kOInputs + 4, 7); }) == E::shape_mismatch);  // dense bias
  CHECK(patched([&](auto& b) { put32(b, o0 + mi::layout::kOStrideH, 2); }) == E::shape_mismatch);
  CHECK(patched([&](auto& b) { put32(b, o0 + mi::layout::kOStrideH, 0); }) == E::bad_op_params);
  CHECK(patched([&](auto& b) { put32(b, o0 + mi::layout::kODilationW, 0x7FFFFFFF); }) == E::bad_op_params);
  CHECK(patched([&](auto& b) { b[o0 + mi::layout::kOPadding] = 2; }) == E::bad_op_params);
  CHECK(patched([&](auto& b) { b[o0 + mi::layout::kOActivation] = 4; }) == E::bad_activation);
  CHECK(patched([&](auto& b) { b[o3 + mi::layout::kOActivation] = 1; }) == E::bad_activation);  // softmax
  CHECK(patched([&](auto& b) { put32(b, o1 + mi::layout::kOFilterH, 9); }) == E::bad_op_params);  // valid pool > input
  CHECK(patched([&](auto& b) { put32(b, o3 + mi::layout::kOParam, 0xBF800000u); }) == E::bad_softmax);  // beta -1
  // Filter scale so small that s_in * s_w / s_out underflows to 0 is fine
  // (multiplier 0); one so large the multiplier exceeds 2^30 is refused.
  CHECK(patched([&](auto& b) {
          const float big = 1e12f;
          std::uint32_t u;
          std::memcpy(&u, &big, 4);
          put32(b, tt + 6 * mi::kTensorRecordBytes + mi::layout::kTScale, u);  // dense weights scale
        }) == E::bad_multiplier);
  {
    // Softmax output with the wrong quantization.
    Model m = classifier(g);
    m.w.tensor(9).desc.zero_point = 0;
    CHECK(verify_code(m.w.finish()) == E::bad_softmax);
  }
  {
    // Pool changing the zero point.
    Model m = classifier(g);
    m.w.tensor(5).desc.zero_point = -127;
    CHECK(verify_code(m.w.finish()) == E::bad_quantization);
  }
  {
    // An activation nobody writes.
    Model m = classifier(g);
    m.w.activation({1, 1, 1, 1}, 1.0f, 0);
    CHECK(verify_code(m.w.finish()) == E::undefined_tensor);
  }
  {
    // add: output scale too small for the ADD multiplier (s_out < 2 max(s1, s2) / 2^20).
    Model m = residual(g);
    m.w.tensor(3).desc.scale = 1e-9f;
    CHECK(verify_code(m.w.finish()) == E::bad_multiplier);
    Model m2 = residual(g);
    m2.w.tensor(2).desc.shape = {1, 5, 5, 1};
    CHECK(verify_code(m2.w.finish()) != E::ok);
  }
  {
    // concat: extents do not add up; inputs with another zero point.
    Model m = branches(g);
    m.w.tensor(7).desc.shape.c = 9;
    CHECK(verify_code(m.w.finish()) != E::ok);
    Model m2 = branches(g);
    m2.w.tensor(5).desc.zero_point = 0;
    CHECK(verify_code(m2.w.finish()) == E::bad_quantization);
  }
}

TEST_CASE("micro interpreter: arena checks and error messages", "[micro][runtime]") {
  std::mt19937 g(23);
  Model m = classifier(g);
  Aligned blob(m.w.finish());
  const auto plan = mi::plan_arena_bytes(blob.data(), blob.size());
  REQUIRE(plan);
  alignas(16) static std::uint8_t arena[4096];
  const std::size_t need = static_cast<std::size_t>(plan.plan.total);

  auto exact = mi::Interpreter::init(blob.data(), blob.size(), arena, need);
  REQUIRE(exact);
  CHECK(exact.interpreter.arena_used() == need);

  auto small = mi::Interpreter::init(blob.data(), blob.size(), arena, need - 1);
  CHECK(small.code == mi::ErrorCode::arena_too_small);
  CHECK_FALSE(small.interpreter.ready());
  CHECK(small.interpreter.invoke().code == mi::ErrorCode::not_initialized);
  char msg[96];
  small.format(msg, sizeof msg);
  CHECK(std::string(msg) == "arena too small: need " + std::to_string(need) + " bytes, got " + std::to_string(need - 1));

  auto tiny = mi::Interpreter::init(blob.data(), blob.size(), arena, 64);
  CHECK(tiny.code == mi::ErrorCode::arena_too_small);
  tiny.format(msg, sizeof msg);
  CHECK(std::string(msg).rfind("arena too small: need at least ", 0) == 0);

  CHECK(mi::Interpreter::init(blob.data(), blob.size(), arena + 8, need).code == mi::ErrorCode::arena_misaligned);
  CHECK(mi::Interpreter::init(blob.data(), blob.size(), nullptr, need).code == mi::ErrorCode::arena_null);

  auto bad = blob;
  bad.data()[20] ^= 1;
  auto refused = mi::Interpreter::init(bad.data(), bad.size(), arena, sizeof arena);
  CHECK(refused.code == mi::ErrorCode::bad_length);
  refused.format(msg, sizeof msg);
  CHECK(std::string(msg) == "length field differs from the blob size (truncated or padded) (index 0)");
  char tiny_buf[8];
  CHECK(small.format(tiny_buf, sizeof tiny_buf) == 7);
  CHECK(std::string(tiny_buf) == "arena t");
  CHECK(std::string(mi::describe(mi::ErrorCode::bad_checksum)) == "CRC-32 mismatch: the blob is corrupted");
  // An unused interpreter refuses everything.
  mi::Interpreter none;
  CHECK(none.input(0) == nullptr);
  CHECK(none.output(0) == nullptr);
}
