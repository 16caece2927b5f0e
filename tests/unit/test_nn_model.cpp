// tests/unit/test_nn_model.cpp — Model behaviour: the flat parameter and
// state buffers and the named tensors over them, PyTorch weight layouts,
// slicing at split points (forward and split-training backward compose
// exactly), cost reports (exact LeNet-5 numbers, other input shapes,
// composite rows), architecture validation errors, BatchNorm folding,
// training determinism across runs and thread counts, and PyTorch-default
// initialisation bounds.
#include "fleetdl/nn.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace {

using fleetdl::Errc;
using fleetdl::Index;
using fleetdl::Rng;
using fleetdl::Shape;
namespace nn = fleetdl::nn;
template <class S>
using Mat = fleetdl::Matrix<S>;
template <class S>
using Nodes = std::vector<nn::NodePtr<S>>;

template <class S>
Mat<S> random_matrix(Index rows, Index cols, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Rng rng(seed);
  Mat<S> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<S>(rng.uniform(lo, hi));
  return m;
}

template <class S, class... N>
Nodes<S> nodes(N&&... n) {
  Nodes<S> v;
  (v.push_back(std::forward<N>(n)), ...);
  return v;
}
template <class S, class... N>
nn::Sequential<S> seq(N&&... n) {
  return nn::Sequential<S>(nodes<S>(std::forward<N>(n)...));
}
template <class S>
nn::NodePtr<S> conv(Index cin, Index cout, Index k, Index stride = 1, Index pad = 0, Index dil = 1, Index groups = 1,
                    bool bias = true) {
  return std::make_unique<nn::Conv2D<S>>(cin, cout, k, stride, pad, dil, groups, bias);
}
template <class S>
nn::NodePtr<S> dense(Index in, Index out, bool bias = true) {
  return std::make_unique<nn::Dense<S>>(in, out, bias);
}
template <class S>
nn::NodePtr<S> bn(Index c) {
  return std::make_unique<nn::BatchNorm<S>>(c);
}

nn::Model<float> lenet5() {
  auto m = nn::make_model<float>("lenet5");
  REQUIRE(m.ok());
  return std::move(m).value();
}

/// A model with BatchNorm in a residual body and projection, in concat
/// branches, in a nested Sequential and after dense; input 2x6x6.
template <class S>
Nodes<S> bn_zoo() {
  std::vector<nn::Sequential<S>> br;
  br.push_back(seq<S>(conv<S>(4, 3, 3, 1, 1), bn<S>(3)));
  br.push_back(seq<S>(conv<S>(4, 2, 1, 1, 0, 1, 1, false), bn<S>(2), nn::sigmoid<S>()));
  return nodes<S>(conv<S>(2, 4, 3, 1, 1, 1, 1, false),  // 0
                  bn<S>(4),                               // 1  folds into 0
                  nn::relu<S>(),                          // 2
                  std::make_unique<nn::Residual<S>>(      // 3  body and projection fold
                      seq<S>(conv<S>(4, 4, 3, 1, 1), bn<S>(4), nn::tanh<S>(), conv<S>(4, 4, 1), bn<S>(4)),
                      seq<S>(conv<S>(4, 4, 1), bn<S>(4))),
                  std::make_unique<nn::Concat<S>>(std::move(br)),                                // 4  both branches fold
                  std::make_unique<nn::Sequential<S>>(nodes<S>(conv<S>(5, 5, 1), bn<S>(5))),   // 5  folds inside
                  bn<S>(5),                               // 6  after a composite: stays
                  std::make_unique<nn::Flatten<S>>(),     // 7
                  dense<S>(5 * 6 * 6, 6),                 // 8
                  bn<S>(6),                               // 9  folds into 8
                  nn::tanh<S>(),                          // 10
                  dense<S>(6, 3));                        // 11
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// Random gamma, beta and running statistics for every BatchNorm.
template <class S>
void randomize_batchnorm(nn::Model<S>& m, std::uint64_t seed) {
  Rng rng(seed);
  const auto ts = m.tensors();
  for (const auto& t : ts) {
    if (!ends_with(t.name, "running_mean")) continue;
    const std::string prefix = t.name.substr(0, t.name.size() - std::string("running_mean").size());
    for (const auto& u : ts) {
      if (u.name.compare(0, prefix.size(), prefix) != 0 || u.name.find('.', prefix.size()) != std::string::npos) continue;
      const std::string leaf = u.name.substr(prefix.size());
      double lo = -0.5, hi = 0.5;
      if (leaf == "weight") lo = 0.5, hi = 1.5;
      if (leaf == "running_var") lo = 0.3, hi = 2.0;
      for (Index i = 0; i < u.size(); ++i) u.data[i] = static_cast<S>(rng.uniform(lo, hi));
    }
  }
}

template <class S>
Index offset_in(const S* base, const S* p) {
  return static_cast<Index>(p - base);
}

}  // namespace

// ------------------------------------------------------------ buffers, tensors

TEST_CASE("model: flat buffers and named tensors are consistent (lenet5)", "[nn][model]") {
  auto m = lenet5();
  CHECK(m.size() == 10);
  CHECK(m.param_count() == 215370);
  CHECK(m.buffer_count() == 0);
  CHECK(m.grads().size() == m.param_count());
  CHECK(m.params().size() == m.param_count());
  CHECK(m.input_shape() == Shape{1, 28, 28});
  CHECK(m.output_shape() == Shape{10, 1, 1});

  struct Want {
    const char* name;
    std::vector<Index> dims;
  };
  const std::vector<Want> want{{"0.weight", {16, 1, 5, 5}},   {"0.bias", {16}},  {"3.weight", {32, 16, 5, 5}},
                               {"3.bias", {32}},              {"7.weight", {128, 1568}}, {"7.bias", {128}},
                               {"9.weight", {10, 128}},       {"9.bias", {10}}};
  const auto ts = m.tensors();
  REQUIRE(ts.size() == want.size());
  Index expect_off = 0;
  for (std::size_t i = 0; i < ts.size(); ++i) {
    INFO(ts[i].name);
    CHECK(ts[i].name == want[i].name);
    CHECK(ts[i].dims == want[i].dims);
    CHECK(ts[i].trainable);
    // tensors tile the parameter buffer in order, without gaps
    CHECK(offset_in<float>(m.params().data(), ts[i].data) == expect_off);
    expect_off += ts[i].size();
  }
  CHECK(expect_off == m.param_count());
  // node offsets agree with the tensors
  CHECK(m.param_offset(0) == 0);
  CHECK(m.param_offset(3) == 416);
  CHECK(m.param_offset(7) == 416 + 12832);
  CHECK(m.param_offset(9) == 416 + 12832 + 200832);
  CHECK(m.param_offset(m.size()) == m.param_count());
  CHECK(offset_in<float>(m.params().data(), ts[6].data) == m.param_offset(9));

  // tensor pointers alias the buffer: writing through params() shows up
  std::iota(m.params().data(), m.params().data() + m.param_count(), 0.0f);
  CHECK(m.tensors()[2].data[5] == 421.0f);
}

TEST_CASE("model: trainable tensors tile params(), state tensors tile buffers()", "[nn][model]") {
  auto m = nn::Model<double>::create(Shape{2, 6, 6}, bn_zoo<double>());
  INFO((m ? std::string() : m.error().message));
  REQUIRE(m.ok());
  const auto ts = m->tensors();
  Index p = 0, b = 0;
  std::set<std::string> names;
  for (const auto& t : ts) {
    INFO(t.name);
    CHECK(names.insert(t.name).second);  // unique names
    if (t.trainable) {
      CHECK(offset_in<double>(m->params().data(), t.data) == p);
      p += t.size();
    } else {
      CHECK(offset_in<double>(m->buffers().data(), t.data) == b);
      b += t.size();
    }
  }
  CHECK(p == m->param_count());
  CHECK(b == m->buffer_count());
  CHECK(m->buffer_count() == 2 * (4 + 4 + 4 + 4 + 3 + 2 + 5 + 5 + 6));
  // paths through composites
  for (const char* n : {"3.body.1.running_mean", "3.proj.1.running_var", "4.branch0.1.weight", "4.branch1.0.weight",
                        "5.0.bias", "5.1.running_var", "6.running_mean", "9.bias"})
    CHECK(names.count(n) == 1);
  CHECK(names.count("4.branch1.0.bias") == 0);  // that conv has no bias

  // BatchNorm init: gamma 1, beta 0, running mean 0, running var 1
  m->init(3);
  for (const auto& t : ts) {
    if (ends_with(t.name, "running_var") || (t.name.rfind("6.", 0) == 0 && ends_with(t.name, "weight"))) {
      for (Index i = 0; i < t.size(); ++i) CHECK(t.data[i] == 1.0);
    }
    if (ends_with(t.name, "running_mean")) {
      for (Index i = 0; i < t.size(); ++i) CHECK(t.data[i] == 0.0);
    }
  }
}

TEST_CASE("model: weights use PyTorch layouts (Linear W[out][in], Conv2d W[cout][cin/g][kh][kw])", "[nn][model]") {
  {
    auto m = nn::Model<double>::create(Shape{3, 1, 1}, nodes<double>(dense<double>(3, 2)));
    REQUIRE(m.ok());
    // W = [[1, 2, 3], [4, 5, 6]] row-major, b = [0.5, -0.5]
    const double w[] = {1, 2, 3, 4, 5, 6, 0.5, -0.5};
    std::copy(std::begin(w), std::end(w), m->params().data());
    Mat<double> x(3, 2);
    x << 1, 0, 1, 1, 1, -1;  // columns: [1,1,1] and [0,1,-1]
    nn::ExecContext<double> ctx;
    const Mat<double>& y = m->forward(x, ctx);
    // y0 = [1+2+3+0.5, 4+5+6-0.5] = [6.5, 14.5]; y1 = [2-3+0.5, 5-6-0.5] = [-0.5, -1.5]
    CHECK(y(0, 0) == 6.5);
    CHECK(y(1, 0) == 14.5);
    CHECK(y(0, 1) == -0.5);
    CHECK(y(1, 1) == -1.5);
  }
  {
    // 2 input channels 3x3, conv 2->1, 2x2 kernel, no bias:
    // W[0][ci][ky][kx] = 1 + ci*4 + ky*2 + kx; output (0,0) = sum W * x[ci][ky][kx]
    auto m = nn::Model<double>::create(Shape{2, 3, 3}, nodes<double>(conv<double>(2, 1, 2, 1, 0, 1, 1, false)));
    REQUIRE(m.ok());
    REQUIRE(m->param_count() == 8);
    for (Index i = 0; i < 8; ++i) m->params()[i] = static_cast<double>(i + 1);
    Mat<double> x(18, 1);
    for (Index i = 0; i < 18; ++i) x(i, 0) = static_cast<double>(i);  // x[ci][h][w] = ci*9 + h*3 + w
    nn::ExecContext<double> ctx;
    const Mat<double>& y = m->forward(x, ctx);
    REQUIRE(y.rows() == 4);  // 1x2x2
    // out(oy, ox) = sum_{ci,ky,kx} W * x[ci][oy+ky][ox+kx]
    for (Index oy = 0; oy < 2; ++oy)
      for (Index ox = 0; ox < 2; ++ox) {
        double want = 0;
        for (Index ci = 0; ci < 2; ++ci)
          for (Index ky = 0; ky < 2; ++ky)
            for (Index kx = 0; kx < 2; ++kx)
              want += static_cast<double>(1 + ci * 4 + ky * 2 + kx) * static_cast<double>(ci * 9 + (oy + ky) * 3 + ox + kx);
        CHECK(y(oy * 2 + ox, 0) == want);
      }
  }
}

TEST_CASE("model: copies are deep, moves keep the bindings", "[nn][model]") {
  auto m = lenet5();
  m.init(1);
  const Mat<float> x = random_matrix<float>(784, 2, 5, 0, 1);
  nn::ExecContext<float> ctx;
  const Mat<float> y = m.forward(x, ctx);
  nn::Model<float> c = m;
  CHECK(c.params() == m.params());
  CHECK(c.params().data() != m.params().data());
  CHECK(c.forward(x, ctx) == y);
  c.params().setZero();
  CHECK(m.forward(x, ctx) == y);  // the original is untouched
  CHECK(c.forward(x, ctx) != y);  // the copy runs on its own buffer
  nn::Model<float> moved = std::move(m);
  CHECK(moved.forward(x, ctx) == y);
  c = moved;  // copy assignment rebinds too
  CHECK(c.forward(x, ctx) == y);
}

// ------------------------------------------------------- layer semantics

TEST_CASE("model: layer forward values follow PyTorch semantics", "[nn][model][layers]") {
  nn::ExecContext<double> eval;
  nn::ExecContext<double> train{nullptr, true, nullptr};
  SECTION("avg pooling counts padded zeros (count_include_pad)") {
    auto m = nn::Model<double>::create(Shape{1, 3, 3}, nodes<double>(std::make_unique<nn::AvgPool2D<double>>(3, 1, 1)));
    REQUIRE(m.ok());
    const Mat<double> y = m->forward(Mat<double>::Ones(9, 1), eval);
    CHECK(y(0, 0) == Approx(4.0 / 9.0).epsilon(1e-15));  // corner: 4 of 9 taps inside
    CHECK(y(1, 0) == Approx(6.0 / 9.0).epsilon(1e-15));  // edge
    CHECK(y(4, 0) == Approx(1.0).epsilon(1e-15));        // centre
  }
  SECTION("max pooling pads with -inf, stride defaults to the kernel") {
    auto m = nn::Model<double>::create(Shape{1, 4, 4}, nodes<double>(std::make_unique<nn::MaxPool2D<double>>(3, 2, 1)));
    REQUIRE(m.ok());
    CHECK(m->output_shape() == Shape{1, 2, 2});
    Mat<double> x(16, 1);
    for (Index i = 0; i < 16; ++i) x(i, 0) = -1.0 - static_cast<double>(i);  // all negative
    const Mat<double> y = m->forward(x, eval);
    // windows rows/cols {-1,0,1} and {1,2,3}: maxima at (0,0), (0,1), (1,0), (1,1)
    CHECK(y(0, 0) == -1.0);
    CHECK(y(1, 0) == -2.0);
    CHECK(y(2, 0) == -5.0);
    CHECK(y(3, 0) == -6.0);
    auto d = nn::Model<double>::create(Shape{1, 4, 4}, nodes<double>(std::make_unique<nn::MaxPool2D<double>>(2)));
    REQUIRE(d.ok());
    CHECK(d->output_shape() == Shape{1, 2, 2});
  }
  SECTION("softmax normalises over channels at every position") {
    auto m = nn::Model<double>::create(Shape{3, 2, 2}, nodes<double>(std::make_unique<nn::Softmax<double>>()));
    REQUIRE(m.ok());
    const Mat<double> x = random_matrix<double>(12, 2, 3, -5, 5);
    const Mat<double> y = m->forward(x, eval);
    for (Index s = 0; s < 2; ++s)
      for (Index p = 0; p < 4; ++p) {
        const double sum = y(p, s) + y(4 + p, s) + y(8 + p, s);
        CHECK(sum == Approx(1.0).epsilon(1e-14));
        const double e0 = std::exp(x(p, s)), e1 = std::exp(x(4 + p, s)), e2 = std::exp(x(8 + p, s));
        CHECK(y(4 + p, s) == Approx(e1 / (e0 + e1 + e2)).epsilon(1e-13));
      }
  }
  SECTION("BatchNorm running statistics: momentum 0.1, unbiased variance") {
    auto m = nn::Model<double>::create(Shape{2, 1, 2}, nodes<double>(bn<double>(2)));
    REQUIRE(m.ok());
    m->init(1);
    Mat<double> x(4, 2);  // channel 0 values {1, 2, 3, 6}, channel 1 values {0, 0, 2, 2}
    x << 1, 3, 2, 6, 0, 2, 0, 2;
    const Mat<double> y = m->forward(x, train);
    // channel 0: mean 3, biased var (4+1+0+9)/4 = 3.5, unbiased 14/3
    // running_mean = 0.9*0 + 0.1*3 = 0.3; running_var = 0.9*1 + 0.1*14/3
    CHECK(m->buffers()[0] == Approx(0.3).epsilon(1e-14));
    CHECK(m->buffers()[2] == Approx(0.9 + 1.4 / 3.0).epsilon(1e-14));
    // channel 1: mean 1, biased var 1, unbiased 4/3
    CHECK(m->buffers()[1] == Approx(0.1).epsilon(1e-14));
    CHECK(m->buffers()[3] == Approx(0.9 + 0.4 / 3.0).epsilon(1e-14));
    // training output uses the biased batch variance: (1 - 3)/sqrt(3.5 + 1e-5)
    CHECK(y(0, 0) == Approx(-2.0 / std::sqrt(3.5 + 1e-5)).epsilon(1e-14));
    // eval output uses the running statistics
    const Mat<double> ye = m->forward(x, eval);
    CHECK(ye(0, 0) == Approx((1.0 - 0.3) / std::sqrt(0.9 + 1.4 / 3.0 + 1e-5)).epsilon(1e-14));
  }
}

// ------------------------------------------------------------------ slicing

TEST_CASE("model: slices at every split point compose to the full forward exactly", "[nn][model][slice]") {
  auto m = lenet5();
  m.init(7);
  const Mat<float> x = random_matrix<float>(784, 3, 8, 0, 1);
  nn::ExecContext<float> ctx;
  const Mat<float> y = m.forward(x, ctx);
  const Index n = m.size();
  for (Index k = 1; k < n; ++k) {
    INFO("split point " << k);
    auto a = m.slice(0, k);
    auto b = m.slice(k, n);
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    CHECK(a->size() == k);
    CHECK(b->size() == n - k);
    CHECK(a->output_shape() == b->input_shape());
    CHECK(b->input_shape() == m.node(k - 1).output_shape());
    // sizes add up and each slice holds exactly its range of the buffer
    CHECK(a->param_count() + b->param_count() == m.param_count());
    CHECK(a->param_count() == m.param_offset(k));
    CHECK(a->params() == m.params().head(a->param_count()));
    CHECK(b->params() == m.params().tail(b->param_count()));
    const Mat<float> mid = a->forward(x, ctx);
    CHECK(b->forward(mid, ctx) == y);
    m.forward(x, ctx);
    CHECK(m.activation(k - 1) == mid);  // the full model's intermediate output
  }
  // three-way splits
  for (Index i = 1; i < n; ++i)
    for (Index j = i + 1; j < n; ++j) {
      INFO("split points " << i << ", " << j);
      auto s0 = m.slice(0, i), s1 = m.slice(i, j), s2 = m.slice(j, n);
      REQUIRE((s0.ok() && s1.ok() && s2.ok()));
      const Mat<float> h0 = s0->forward(x, ctx);
      const Mat<float> h1 = s1->forward(h0, ctx);
      CHECK(s2->forward(h1, ctx) == y);
    }
  auto whole = m.slice(0, n);
  REQUIRE(whole.ok());
  CHECK(whole->forward(x, ctx) == y);
}

TEST_CASE("model: split training through slices gives the full model's gradients", "[nn][model][slice]") {
  auto m = lenet5();
  m.init(9);
  const Mat<float> x = random_matrix<float>(784, 4, 10, 0, 1);
  const std::vector<std::uint8_t> labels{3, 1, 4, 1};
  nn::ExecContext<float> ctx{nullptr, true, nullptr};
  Mat<float> dy;
  nn::softmax_cross_entropy(m.forward(x, ctx), labels, &dy);
  m.zero_grad();
  m.backward(dy, ctx);
  const fleetdl::Vector<float> g = m.grads();
  REQUIRE(g.norm() > 0);
  for (Index k : {1, 3, 6, 8}) {
    INFO("split point " << k);
    auto a = m.slice(0, k);
    auto b = m.slice(k, m.size());
    REQUIRE((a.ok() && b.ok()));
    const Mat<float> mid = a->forward(x, ctx);
    Mat<float> dyb, dmid;
    nn::softmax_cross_entropy(b->forward(mid, ctx), labels, &dyb);
    CHECK(dyb == dy);
    a->zero_grad();
    b->zero_grad();
    b->backward(dyb, ctx, &dmid);
    REQUIRE(dmid.rows() == mid.rows());
    a->backward(dmid, ctx);
    CHECK(a->grads() == g.head(a->param_count()));
    CHECK(b->grads() == g.tail(b->param_count()));
  }
}

TEST_CASE("model: a slice is an independent copy of its range", "[nn][model][slice]") {
  auto m = nn::Model<double>::create(Shape{2, 6, 6}, bn_zoo<double>());
  REQUIRE(m.ok());
  m->init(11);
  randomize_batchnorm(*m, 12);
  const auto params = fleetdl::Vector<double>(m->params());
  const auto buffers = fleetdl::Vector<double>(m->buffers());
  Index total_p = 0, total_b = 0;
  for (Index k = 0; k < m->size(); ++k) {
    auto s = m->slice(k, k + 1);
    REQUIRE(s.ok());
    CHECK(s->params() == params.segment(m->param_offset(k), s->param_count()));
    CHECK(s->buffers() == buffers.segment(m->buffer_offset(k), s->buffer_count()));
    total_p += s->param_count();
    total_b += s->buffer_count();
    s->params().setConstant(42.0);
    s->buffers().setConstant(-1.0);
  }
  CHECK(total_p == m->param_count());
  CHECK(total_b == m->buffer_count());
  CHECK(m->params() == params);  // writing into slices left the original alone
  CHECK(m->buffers() == buffers);

  // and the other way round: the slice keeps its values when the model changes
  auto s = m->slice(3, 5);
  REQUIRE(s.ok());
  const fleetdl::Vector<double> sp = s->params();
  m->params().setZero();
  CHECK(s->params() == sp);
  CHECK(sp.cwiseAbs().maxCoeff() > 0);

  // a slice of a BatchNorm model carries the running statistics
  nn::ExecContext<double> eval;
  const Mat<double> x = random_matrix<double>(72, 2, 13);
  m->params() = params;
  const Mat<double> y = m->forward(x, eval);
  auto a = m->slice(0, 6), b = m->slice(6, m->size());
  REQUIRE((a.ok() && b.ok()));
  const Mat<double> mid = a->forward(x, eval);
  CHECK(b->forward(mid, eval) == y);
}

TEST_CASE("model: bad slice arguments are errors", "[nn][model][slice]") {
  auto m = lenet5();
  const std::vector<std::pair<Index, Index>> bad{{-1, 3}, {0, 0}, {4, 2}, {5, 5}, {0, 11}, {10, 10}, {11, 12}, {-2, -1}};
  for (const auto& [a, b] : bad) {
    INFO("slice(" << a << ", " << b << ")");
    auto s = m.slice(a, b);
    REQUIRE_FALSE(s.ok());
    CHECK(s.error().code == Errc::invalid_argument);
    CHECK_THAT(s.error().message, Catch::Contains("slice(" + std::to_string(a) + ", " + std::to_string(b) + ")"));
    CHECK_THAT(s.error().message, Catch::Contains("10"));  // states the valid range
  }
  CHECK(m.slice(9, 10).ok());
  CHECK(m.slice(0, 1).ok());
}

// ------------------------------------------------------------- cost reports

TEST_CASE("model: cost_report of lenet5 at 1x28x28", "[nn][model][cost]") {
  auto m = lenet5();
  const auto rows = m.cost_report();
  REQUIRE(rows.size() == 10);
  struct Want {
    const char* type;
    Shape in, out;
    Index params, macs;
  };
  const std::vector<Want> want{
      {"conv2d", {1, 28, 28}, {16, 28, 28}, 416, 16 * 28 * 28 * 25},         // 313600
      {"relu", {16, 28, 28}, {16, 28, 28}, 0, 0},
      {"maxpool2d", {16, 28, 28}, {16, 14, 14}, 0, 0},
      {"conv2d", {16, 14, 14}, {32, 14, 14}, 12832, 32 * 14 * 14 * 400},     // 2508800
      {"relu", {32, 14, 14}, {32, 14, 14}, 0, 0},
      {"maxpool2d", {32, 14, 14}, {32, 7, 7}, 0, 0},
      {"flatten", {32, 7, 7}, {1568, 1, 1}, 0, 0},
      {"dense", {1568, 1, 1}, {128, 1, 1}, 200832, 200704},
      {"relu", {128, 1, 1}, {128, 1, 1}, 0, 0},
      {"dense", {128, 1, 1}, {10, 1, 1}, 1290, 1280},
  };
  Index total = 0, total_macs = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    INFO("row " << i << " " << r.name << " " << r.type);
    CHECK(r.name == std::to_string(i));
    CHECK(r.type == want[i].type);
    CHECK(r.in == want[i].in);
    CHECK(r.out == want[i].out);
    CHECK(r.params == want[i].params);
    CHECK(r.buffers == 0);
    CHECK(r.weight_bytes == want[i].params * 4);
    CHECK(r.macs == want[i].macs);
    CHECK(r.act_in_bytes == want[i].in.size() * 4);
    CHECK(r.act_out_bytes == want[i].out.size() * 4);
    total += r.params;
    total_macs += r.macs;
  }
  CHECK(rows[0].macs == 313600);
  CHECK(rows[3].macs == 2508800);
  CHECK(rows[0].act_out_bytes == 50176);
  CHECK(total == 215370);
  CHECK(total == m.param_count());
  CHECK(total_macs == 313600 + 2508800 + 200704 + 1280);

  // double: 8 bytes per scalar
  auto md = nn::make_model<double>("lenet5");
  REQUIRE(md.ok());
  const auto rd = md->cost_report();
  CHECK(rd[3].weight_bytes == 12832 * 8);
  CHECK(rd[3].act_in_bytes == 16 * 14 * 14 * 8);
}

TEST_CASE("model: cost_report for another input shape", "[nn][model][cost]") {
  auto m = lenet5();
  // 29x29 -> conv 29x29 -> pool 14x14 -> conv 14x14 -> pool 7x7: dense still sees 1568
  auto r = m.cost_report(Shape{1, 29, 29});
  REQUIRE(r.ok());
  REQUIRE(r->size() == 10);
  CHECK((*r)[0].macs == 16 * 29 * 29 * 25);
  CHECK((*r)[0].out == Shape{16, 29, 29});
  CHECK((*r)[2].out == Shape{16, 14, 14});
  CHECK((*r)[3].macs == 2508800);
  CHECK((*r)[7].macs == 200704);
  CHECK((*r)[0].act_in_bytes == 29 * 29 * 4);

  // 32x32 gives 32x8x8 = 2048 features where the dense layer takes 1568
  auto bad = m.cost_report(Shape{1, 32, 32});
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().code == Errc::shape_mismatch);
  CHECK_THAT(bad.error().message, Catch::Contains("node 7") && Catch::Contains("1568") && Catch::Contains("2048x1x1"));
  auto bad_c = m.cost_report(Shape{3, 28, 28});
  REQUIRE_FALSE(bad_c.ok());
  CHECK(bad_c.error().code == Errc::shape_mismatch);
  CHECK_THAT(bad_c.error().message, Catch::Contains("node 0") && Catch::Contains("input channels"));
  auto tiny = m.cost_report(Shape{1, 1, 1});
  REQUIRE_FALSE(tiny.ok());

  // the model itself is still built for 28x28 and still runs
  CHECK(m.cost_report()[0].macs == 313600);
  CHECK(m.input_shape() == Shape{1, 28, 28});
  nn::ExecContext<float> ctx;
  CHECK(m.forward(Mat<float>::Zero(784, 1), ctx).rows() == 10);
}

TEST_CASE("model: cost_report rows of composites", "[nn][model][cost]") {
  // 0: conv 1->2 (5x5 in), 1: residual(conv 2->2 3x3 pad 1), 2: concat(conv 1x1 2->1, identity)
  std::vector<nn::Sequential<double>> br;
  br.push_back(seq<double>(conv<double>(2, 1, 1)));
  br.push_back(seq<double>());
  auto m = nn::Model<double>::create(
      Shape{1, 5, 5}, nodes<double>(conv<double>(1, 2, 3, 1, 1),
                                    std::make_unique<nn::Residual<double>>(seq<double>(conv<double>(2, 2, 3, 1, 1))),
                                    std::make_unique<nn::Concat<double>>(std::move(br))));
  REQUIRE(m.ok());
  const auto rows = m->cost_report();
  REQUIRE(rows.size() == 3);
  CHECK(rows[1].type == "residual");
  CHECK(rows[1].params == 2 * 2 * 9 + 2);
  CHECK(rows[1].macs == 2 * 25 * 18 + 2 * 25);  // body conv + the addition
  CHECK(rows[2].type == "concat");
  CHECK(rows[2].out == Shape{3, 5, 5});
  CHECK(rows[2].macs == 25 * 2);
  CHECK(rows[2].params == 3);
  const auto leaves = m->cost_report(true);
  REQUIRE(leaves.size() == 3);  // conv, body conv, branch conv (the identity branch has no nodes)
  Index p = 0;
  for (const auto& r : leaves) p += r.params;
  CHECK(p == m->param_count());
}

TEST_CASE("model: recursive cost_report names leaves by their tensor paths", "[nn][model][cost]") {
  // Node::costs documents names like "3" or "3.body.0"; tensors() of the same
  // layers are "3.weight" and "3.body.0.weight". The leaf rows must use the
  // same path without a trailing dot.
  std::vector<nn::Sequential<double>> br;
  br.push_back(seq<double>(conv<double>(2, 1, 1)));
  auto m = nn::Model<double>::create(
      Shape{1, 5, 5}, nodes<double>(conv<double>(1, 2, 3, 1, 1),
                                    std::make_unique<nn::Residual<double>>(seq<double>(conv<double>(2, 2, 3, 1, 1))),
                                    std::make_unique<nn::Concat<double>>(std::move(br))));
  REQUIRE(m.ok());
  std::vector<std::string> names;
  for (const auto& r : m->cost_report(true)) names.push_back(r.name);
  CHECK(names == std::vector<std::string>{"0", "1.body.0", "2.branch0.0"});
  std::vector<std::string> tensor_names;
  for (const auto& t : m->tensors()) tensor_names.push_back(t.name);
  CHECK(tensor_names ==
        std::vector<std::string>{"0.weight", "0.bias", "1.body.0.weight", "1.body.0.bias", "2.branch0.0.weight",
                                 "2.branch0.0.bias"});
}

TEST_CASE("model: cost_report(false) has one row per top-level node, nested Sequential included",
          "[nn][model][cost]") {
  auto m = nn::Model<double>::create(
      Shape{1, 5, 5},
      nodes<double>(conv<double>(1, 2, 3, 1, 1),
                    std::make_unique<nn::Sequential<double>>(nodes<double>(nn::relu<double>(), conv<double>(2, 2, 3, 1, 1))),
                    nn::tanh<double>()));
  REQUIRE(m.ok());
  const auto rows = m->cost_report(false);
  REQUIRE(rows.size() == static_cast<std::size_t>(m->size()));
  CHECK(rows[1].name == "1");
  CHECK(rows[1].type == "sequential");
  CHECK(rows[1].params == 2 * 2 * 9 + 2);
  CHECK(rows[1].macs == 2 * 25 * 18);
  CHECK(rows[2].name == "2");
}

// ------------------------------------------------------- validation errors

TEST_CASE("model: create rejects bad architectures with clear errors", "[nn][model][errors]") {
  struct Case {
    const char* what;
    Shape in;
    std::function<Nodes<double>()> make;
    Errc code;
    std::vector<std::string> mentions;
  };
  const std::vector<Case> cases{
      {"conv channel mismatch", {1, 8, 8}, [] { return nodes<double>(conv<double>(3, 4, 3)); }, Errc::shape_mismatch,
       {"node 0", "conv2d", "expects 3 input channels", "1x8x8"}},
      {"conv channel mismatch deeper", {1, 8, 8},
       [] { return nodes<double>(conv<double>(1, 4, 3), nn::relu<double>(), conv<double>(8, 4, 3)); },
       Errc::shape_mismatch, {"node 2", "expects 8 input channels", "4x6x6"}},
      {"dense feature mismatch", {1, 4, 4},
       [] { return nodes<double>(std::make_unique<nn::Flatten<double>>(), dense<double>(20, 3)); },
       Errc::shape_mismatch, {"node 1", "dense", "expects 20 input features", "16x1x1"}},
      {"kernel larger than input", {1, 4, 4}, [] { return nodes<double>(conv<double>(1, 2, 5)); },
       Errc::shape_mismatch, {"node 0", "kernel larger", "1x4x4"}},
      {"dilated kernel larger than input", {1, 4, 4}, [] { return nodes<double>(conv<double>(1, 2, 3, 1, 0, 2)); },
       Errc::shape_mismatch, {"kernel larger"}},
      {"pool kernel larger than input", {2, 3, 3},
       [] { return nodes<double>(std::make_unique<nn::MaxPool2D<double>>(4)); }, Errc::shape_mismatch,
       {"maxpool2d", "larger than input", "2x3x3"}},
      {"groups not dividing channels", {4, 5, 5}, [] { return nodes<double>(conv<double>(4, 6, 3, 1, 1, 1, 3)); },
       Errc::invalid_argument, {"node 0", "groups 3", "in_channels 4"}},
      {"groups not dividing out channels", {4, 5, 5}, [] { return nodes<double>(conv<double>(4, 6, 3, 1, 1, 1, 4)); },
       Errc::invalid_argument, {"groups 4", "out_channels 6"}},
      {"empty concat", {2, 4, 4}, [] { return nodes<double>(std::make_unique<nn::Concat<double>>()); },
       Errc::invalid_argument, {"node 0", "concat", "no branches"}},
      {"concat branches differ in height/width", {2, 4, 4},
       [] {
         std::vector<nn::Sequential<double>> br;
         br.push_back(seq<double>(conv<double>(2, 2, 3, 1, 1)));
         br.push_back(seq<double>(conv<double>(2, 2, 3)));
         return nodes<double>(std::make_unique<nn::Concat<double>>(std::move(br)));
       },
       Errc::shape_mismatch, {"concat", "branch 1", "2x2x2", "height/width"}},
      {"residual shape mismatch", {1, 6, 6},
       [] { return nodes<double>(std::make_unique<nn::Residual<double>>(seq<double>(conv<double>(1, 2, 3, 1, 1)))); },
       Errc::shape_mismatch, {"node 0", "residual", "2x6x6", "1x6x6", "projection"}},
      {"residual projection mismatch", {2, 8, 8},
       [] {
         return nodes<double>(std::make_unique<nn::Residual<double>>(seq<double>(conv<double>(2, 4, 3, 2, 1)),
                                                                     seq<double>(conv<double>(2, 4, 1))));
       },
       Errc::shape_mismatch, {"residual", "4x4x4", "4x8x8"}},
      {"batchnorm channel mismatch", {3, 4, 4}, [] { return nodes<double>(bn<double>(4)); }, Errc::shape_mismatch,
       {"batchnorm", "expects 4 channels", "3x4x4"}},
      {"dropout p = 1", {3, 1, 1}, [] { return nodes<double>(std::make_unique<nn::Dropout<double>>(1.0)); },
       Errc::invalid_argument, {"dropout", "p"}},
      {"pool padding above kernel/2", {1, 6, 6},
       [] { return nodes<double>(std::make_unique<nn::AvgPool2D<double>>(2, 2, 2)); }, Errc::invalid_argument,
       {"avgpool2d", "padding 2"}},
      {"error deep inside composites names the path", {2, 6, 6},
       [] {
         std::vector<nn::Sequential<double>> br;
         br.push_back(seq<double>(std::make_unique<nn::Residual<double>>(
             seq<double>(nn::relu<double>(), dense<double>(5, 5)))));
         return nodes<double>(nn::relu<double>(), std::make_unique<nn::Concat<double>>(std::move(br)));
       },
       Errc::shape_mismatch, {"node 1: concat branch 0: node 0: residual body: node 1: dense: expects 5"}},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    auto m = nn::Model<double>::create(c.in, c.make());
    REQUIRE_FALSE(m.ok());
    INFO("message: " << m.error().message);
    CHECK(m.error().code == c.code);
    for (const auto& s : c.mentions) CHECK_THAT(m.error().message, Catch::Contains(s));
  }

  auto unknown = nn::make_model<float>("resnet999");
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().code == Errc::not_found);
  CHECK_THAT(unknown.error().message, Catch::Contains("resnet999") && Catch::Contains("lenet5"));
}

// ---------------------------------------------------------------- folding

TEST_CASE("model: fold_batchnorm keeps the eval output and removes BatchNorms", "[nn][model][fold]") {
  auto m = nn::Model<double>::create(Shape{2, 6, 6}, bn_zoo<double>());
  REQUIRE(m.ok());
  m->init(21);
  randomize_batchnorm(*m, 22);
  const fleetdl::Vector<double> before = m->params();
  const Mat<double> x = random_matrix<double>(72, 3, 23);
  nn::ExecContext<double> eval;
  const Mat<double> y = m->forward(x, eval);

  auto f = nn::fold_batchnorm(*m);
  INFO((f ? std::string() : f.error().message));
  REQUIRE(f.ok());
  CHECK(m->params() == before);  // the source model is untouched
  const Mat<double> yf = f->forward(x, eval);
  REQUIRE(yf.rows() == y.rows());
  INFO("max difference " << (yf - y).cwiseAbs().maxCoeff());
  CHECK((yf - y).cwiseAbs().maxCoeff() < 1e-10);
  CHECK(y.cwiseAbs().maxCoeff() > 0.1);  // not a trivially zero output

  // Folded: 1 (4 ch), 3.body.1 (4), 3.body.4 (4), 3.proj.1 (4), 4.branch0.1 (3),
  // 4.branch1.1 (2), 5.1 (5), 9 (6): 32 channels, 2 params each. The two
  // bias-less convs (4 and 2 channels) gain a bias. Node 6 (after a composite) stays.
  CHECK(f->size() == m->size() - 2);
  CHECK(f->param_count() == m->param_count() - 2 * 32 + 4 + 2);
  CHECK(f->buffer_count() == 2 * 5);
  CHECK(f->cost_report(true).size() == m->cost_report(true).size() - 8);
  Index bns = 0;
  for (const auto& r : f->cost_report(true)) bns += r.type == std::string("batchnorm");
  CHECK(bns == 1);

  // folding a folded model changes nothing more
  auto ff = nn::fold_batchnorm(*f);
  REQUIRE(ff.ok());
  CHECK(ff->param_count() == f->param_count());
  CHECK(ff->forward(x, eval) == yf);
}

TEST_CASE("model: fold_batchnorm on a float model and with default statistics", "[nn][model][fold]") {
  auto m = nn::Model<float>::create(Shape{1, 8, 8}, nodes<float>(conv<float>(1, 4, 3, 1, 1), bn<float>(4), nn::relu<float>(),
                                                               std::make_unique<nn::Flatten<float>>(),
                                                               dense<float>(256, 5, false), bn<float>(5)));
  REQUIRE(m.ok());
  m->init(31);
  const Mat<float> x = random_matrix<float>(64, 2, 32);
  nn::ExecContext<float> eval;
  // with gamma 1, beta 0, mean 0, var 1 the fold scales by 1/sqrt(1 + eps)
  const Mat<float> y0 = m->forward(x, eval);
  auto f0 = nn::fold_batchnorm(*m);
  REQUIRE(f0.ok());
  CHECK((f0->forward(x, eval) - y0).cwiseAbs().maxCoeff() < 1e-5f);
  // after some training-mode forwards the running statistics are non-trivial
  nn::ExecContext<float> train{nullptr, true, nullptr};
  for (int i = 0; i < 5; ++i) m->forward(random_matrix<float>(64, 4, 40 + i, 0.0, 2.0), train);
  CHECK(m->buffers().cwiseAbs().maxCoeff() > 0);
  const Mat<float> y = m->forward(x, eval);
  auto f = nn::fold_batchnorm(*m);
  REQUIRE(f.ok());
  CHECK(f->size() == 4);
  CHECK(f->buffer_count() == 0);
  CHECK((f->forward(x, eval) - y).cwiseAbs().maxCoeff() < 1e-4f * std::max(1.0f, y.cwiseAbs().maxCoeff()));
}

// ------------------------------------------------------------ determinism

namespace {

struct Data {
  Mat<float> x;
  std::vector<std::uint8_t> y;
};

const Data& random_dataset() {
  static const Data d = [] {
    Data r;
    const Index n = 128;
    r.x = random_matrix<float>(784, n, 1234, 0.0, 1.0);
    Rng rng(4321);
    r.y.resize(static_cast<std::size_t>(n));
    for (auto& l : r.y) l = static_cast<std::uint8_t>(rng.below(10));
    return r;
  }();
  return d;
}

fleetdl::Vector<float> train_lenet5(int threads, std::uint64_t seed, std::uint64_t init_seed = 1) {
  auto m = lenet5();
  m.init(init_seed);
  nn::SgdOptions so;
  so.lr = 0.05;
  so.momentum = 0.9;
  nn::Sgd<float> sgd(so);
  nn::TrainOptions to;
  to.epochs = 1;
  to.batch = 16;
  to.seed = seed;
  fleetdl::ThreadPool pool(threads);
  const auto& d = random_dataset();
  const auto rep = nn::train_classifier(m, sgd, d.x, d.y, to, &pool);
  REQUIRE(rep.epochs.size() == 1);
  REQUIRE(std::isfinite(rep.epochs[0].loss));
  return m.params();
}

double relative_difference(const fleetdl::Vector<float>& a, const fleetdl::Vector<float>& b) {
  return static_cast<double>((a - b).norm()) / static_cast<double>(a.norm());
}

}  // namespace

TEST_CASE("model: training is deterministic per seed and thread count", "[nn][model][determinism]") {
  auto init = lenet5();
  init.init(1);
  const fleetdl::Vector<float> p0 = init.params();

  const auto a1 = train_lenet5(1, 5);
  const auto b1 = train_lenet5(1, 5);
  CHECK(a1 == b1);  // bit-identical
  CHECK(relative_difference(a1, p0) > 1e-3);  // training moved the weights

  const auto a2 = train_lenet5(2, 5);
  const auto b2 = train_lenet5(2, 5);
  CHECK(a2 == b2);  // bit-identical with 2 threads too

  // 1 vs 2 threads: the reductions are chunked differently, so the bits may
  // differ, but only at float round-off
  const double d12 = relative_difference(a1, a2);
  INFO("1 vs 2 threads relative difference " << d12);
  CHECK(d12 < 1e-4);

  // another seed shuffles differently: different weights
  const auto c1 = train_lenet5(1, 6);
  INFO("seed 5 vs 6 relative difference " << relative_difference(a1, c1));
  CHECK(relative_difference(a1, c1) > 1e-3);
}

// --------------------------------------------------------------------- init

TEST_CASE("model: init follows PyTorch bounds U(-1/sqrt(fan_in), 1/sqrt(fan_in))", "[nn][model][init]") {
  // lenet5 plus a model with a depthwise conv (fan_in = 1*3*3), a grouped conv
  // (fan_in = 4/2 * 1 * 1) and a bias-less dense layer
  auto m = lenet5();
  auto g = nn::Model<float>::create(Shape{8, 10, 10},
                                    nodes<float>(conv<float>(8, 8, 3, 1, 1, 1, 8), conv<float>(8, 4, 1, 1, 0, 1, 2),
                                                 std::make_unique<nn::Flatten<float>>(), dense<float>(400, 50, false)));
  REQUIRE(g.ok());
  // tensors large enough for the statistics: lenet5 conv1/conv2/dense1/dense2
  // weights (400, 12800, 200704, 1280 values); the dense weight of the other
  const std::pair<nn::Model<float>*, Index> models[] = {{&m, 4}, {g.operator->(), 1}};
  for (const auto& [model, large] : models) {
    model->init(123);
    Index weight_fan_in = 0;
    Index checked = 0;
    for (const auto& t : model->tensors()) {
      INFO(t.name);
      Index fan_in = 0;
      if (ends_with(t.name, "weight")) {
        fan_in = 1;
        for (std::size_t k = 1; k < t.dims.size(); ++k) fan_in *= t.dims[k];
        weight_fan_in = fan_in;
      } else {
        REQUIRE(ends_with(t.name, "bias"));
        fan_in = weight_fan_in;  // the bias uses its layer's fan-in
      }
      const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
      const Eigen::Map<const fleetdl::Vector<float>> v(t.data, t.size());
      const fleetdl::Vector<double> vd = v.cast<double>();
      INFO("fan_in " << fan_in << ", bound " << bound);
      // draws are doubles strictly inside the bound, rounded to float (rounding
      // is monotonic, so they stay within the float nearest the bound)
      CHECK(vd.cwiseAbs().maxCoeff() <= static_cast<double>(static_cast<float>(bound)));
      const double mean = vd.mean();
      const double sd = std::sqrt((vd.array() - mean).square().sum() / static_cast<double>(vd.size()));
      const double want_sd = bound / std::sqrt(3.0);
      INFO("n " << vd.size() << ", mean " << mean << ", std " << sd << ", want " << want_sd);
      if (vd.size() >= 200) {
        // the sample std of n uniforms has relative error ~ 0.9/sqrt(n)
        CHECK(std::abs(sd - want_sd) <= 4.0 * 0.9 / std::sqrt(static_cast<double>(vd.size())) * want_sd);
        CHECK(std::abs(mean) <= 4.0 * want_sd / std::sqrt(static_cast<double>(vd.size())));
        CHECK(vd.cwiseAbs().maxCoeff() >= 0.95 * bound);  // the full width is used
        ++checked;
      }
    }
    CHECK(checked == large);
  }
  // the same seed gives the same weights, another seed others
  auto m2 = lenet5();
  m2.init(123);
  CHECK(m2.params() == m.params());
  m2.init(124);
  CHECK(m2.params() != m.params());
}
