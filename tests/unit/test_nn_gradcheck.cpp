// tests/unit/test_nn_gradcheck.cpp — finite-difference gradient checks, in
// double precision, of every layer's parameter and input gradients, of the
// composites (Residual, Concat, nesting), of each loss with respect to its
// first input, and of a whole LeNet-like Model; plus a float/double agreement
// check of forward passes and gradients.
//
// Method: central differences n_i = (L(v + h e_i) - L(v - h e_i)) / 2h with
// h = 1e-6, for a scalar objective L = sum(w ⊙ y) with a fixed random w (for
// layers) or the loss itself. Analytic a comes from Node::backward through
// Model::backward (which accumulates into grads() and writes dL/dx). Checked:
//   ||a - n|| / max(||a||, ||n||) < 1e-6 over the whole vector, and
//   |a_i - n_i| <= 1e-6 * (|a_i| + |n_i|) + 1e-8 * scale per element, where
//   scale = max(1, ||a||_inf): the absolute floor covers the round-off of
//   the difference quotient (~eps * |L| / h) on elements whose gradient is ~0.
// Inputs are kept away from kinks (ReLU at 0, ReLU6 at 0 and 6) and max
// pooling windows never hold ties, so L is smooth within ±h of every point.
#include "fleetdl/nn.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using fleetdl::Index;
using fleetdl::Rng;
using fleetdl::Shape;
namespace nn = fleetdl::nn;
using MatD = fleetdl::Matrix<double>;
using VecD = fleetdl::Vector<double>;
using NodesD = std::vector<nn::NodePtr<double>>;

constexpr double kStep = 1e-6;
constexpr double kVecTol = 1e-6;
constexpr double kElemRel = 1e-6;
constexpr double kElemAbs = 1e-8;

MatD random_matrix(Index rows, Index cols, Rng& rng, double lo = -1.0, double hi = 1.0) {
  MatD m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = rng.uniform(lo, hi);
  return m;
}

/// Random values whose magnitudes stay at least `gap` away from every kink in
/// `kinks` (the sign is kept, the value is pushed outward).
MatD away_from_kinks(Index rows, Index cols, Rng& rng, double lo, double hi, std::vector<double> kinks,
                     double gap = 0.05) {
  MatD m = random_matrix(rows, cols, rng, lo, hi);
  for (Index i = 0; i < m.size(); ++i) {
    double& v = m.data()[i];
    for (double k : kinks)
      if (std::abs(v - k) < gap) v = v >= k ? k + gap + 0.01 : k - gap - 0.01;
  }
  return m;
}

/// Distinct values, pairwise at least 0.01 apart, in random order: no ties in
/// any max-pooling window, even after a ±h perturbation.
MatD distinct_values(Index rows, Index cols, Rng& rng) {
  std::vector<double> v(static_cast<std::size_t>(rows * cols));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = -1.0 + 0.02 * static_cast<double>(i) + rng.uniform(0.0, 0.005);
  rng.shuffle(v.begin(), v.end());
  MatD m(rows, cols);
  std::copy(v.begin(), v.end(), m.data());
  return m;
}

/// Central differences of f with respect to the n scalars at v.
VecD numeric_gradient(double* v, Index n, const std::function<double()>& f) {
  VecD g(n);
  for (Index i = 0; i < n; ++i) {
    const double keep = v[i];
    v[i] = keep + kStep;
    const double up = f();
    v[i] = keep - kStep;
    const double down = f();
    v[i] = keep;
    g[i] = (up - down) / (2.0 * kStep);
  }
  return g;
}

/// Both the whole-vector and per-element criteria of the file comment.
void require_close(const VecD& analytic, const VecD& numeric, const std::string& what) {
  INFO(what);
  REQUIRE(analytic.size() == numeric.size());
  if (analytic.size() == 0) return;
  REQUIRE(analytic.allFinite());
  REQUIRE(numeric.allFinite());
  const double na = analytic.norm(), nn_ = numeric.norm();
  // A gradient that is identically zero on both sides is fine (e.g. a ReLU
  // branch fully off); a one-sided zero is caught by the relative error.
  if (na == 0.0 && nn_ < 1e-9) return;
  const double rel = (analytic - numeric).norm() / std::max(na, nn_);
  INFO("||a|| = " << na << ", ||n|| = " << nn_ << ", relative error " << rel);
  CHECK(rel < kVecTol);
  const double scale = std::max(1.0, analytic.cwiseAbs().maxCoeff());
  Index bad = 0, worst_i = 0;
  double worst = 0;
  for (Index i = 0; i < analytic.size(); ++i) {
    const double err = std::abs(analytic[i] - numeric[i]);
    const double allowed = kElemRel * (std::abs(analytic[i]) + std::abs(numeric[i])) + kElemAbs * scale;
    if (err > allowed) ++bad;
    if (err / allowed > worst) {
      worst = err / allowed;
      worst_i = i;
    }
  }
  INFO("worst element " << worst_i << ": analytic " << analytic[worst_i] << ", numeric " << numeric[worst_i]);
  CHECK(bad == 0);
}

/// How one gradient check runs.
struct CheckSetup {
  Index batch = 3;
  bool training = false;
  std::uint64_t seed = 7;
  /// Input batch; default: uniform in [-1, 1].
  std::function<MatD(Index rows, Index cols, Rng&)> input;
  /// Extra set-up after init(seed), e.g. random BatchNorm statistics.
  std::function<void(nn::Model<double>&, Rng&)> prepare;
  /// Fresh randomness before every forward (Dropout): reseeded each time so
  /// the mask is identical in every evaluation.
  bool reseed_dropout = false;
};

/// Gradient check of a model built from `nodes` for input `in`, with the
/// objective L = sum(w ⊙ y): parameter gradients and the input gradient.
void check_model(const std::string& what, const Shape& in, NodesD nodes, const CheckSetup& o = {}) {
  INFO(what);
  auto created = nn::Model<double>::create(in, std::move(nodes));
  INFO((created ? std::string() : created.error().message));
  REQUIRE(created.ok());
  nn::Model<double> model = std::move(created).value();
  model.init(o.seed);
  Rng rng(o.seed * 31 + 1);
  if (o.prepare) o.prepare(model, rng);
  MatD x = o.input ? o.input(in.size(), o.batch, rng) : random_matrix(in.size(), o.batch, rng);
  REQUIRE(x.rows() == in.size());
  const Shape out = model.output_shape();
  const MatD w = random_matrix(out.size(), o.batch, rng);

  Rng dropout_rng(99);
  nn::ExecContext<double> ctx{nullptr, o.training, &dropout_rng};
  const auto objective = [&]() {
    if (o.reseed_dropout) dropout_rng.reseed(99);
    const MatD& y = model.forward(x, ctx);
    REQUIRE(y.rows() == out.size());
    REQUIRE(y.cols() == o.batch);
    return (w.array() * y.array()).sum();
  };

  objective();
  model.zero_grad();
  MatD dx;
  model.backward(w, ctx, &dx);
  const VecD ga = model.grads();
  REQUIRE(dx.rows() == x.rows());
  REQUIRE(dx.cols() == x.cols());
  const VecD dxa = Eigen::Map<const VecD>(dx.data(), dx.size());

  const VecD gn = numeric_gradient(model.params().data(), model.param_count(), objective);
  require_close(ga, gn, what + ": parameter gradient");
  const VecD dxn = numeric_gradient(x.data(), x.size(), objective);
  require_close(dxa, dxn, what + ": input gradient");
}

template <class... N>
NodesD nodes(N&&... n) {
  NodesD v;
  (v.push_back(std::forward<N>(n)), ...);
  return v;
}

template <class... N>
nn::Sequential<double> seq(N&&... n) {
  return nn::Sequential<double>(nodes(std::forward<N>(n)...));
}

nn::NodePtr<double> conv(Index cin, Index cout, Index k, Index stride = 1, Index pad = 0, Index dil = 1, Index groups = 1,
                         bool bias = true) {
  return std::make_unique<nn::Conv2D<double>>(cin, cout, k, stride, pad, dil, groups, bias);
}
nn::NodePtr<double> dense(Index in, Index out, bool bias = true) {
  return std::make_unique<nn::Dense<double>>(in, out, bias);
}
nn::NodePtr<double> bn(Index c) { return std::make_unique<nn::BatchNorm<double>>(c); }

/// Random gamma/beta and running statistics for every BatchNorm (the defaults
/// gamma = 1, beta = 0, mean = 0, var = 1 would hide scaling bugs). A
/// BatchNorm is recognised by its "<prefix>running_mean" tensor.
void randomize_batchnorm(nn::Model<double>& m, Rng& rng) {
  const auto tensors = m.tensors();
  std::vector<std::string> bn_prefixes;
  for (const auto& t : tensors) {
    const auto dot = t.name.rfind('.');
    const std::string prefix = dot == std::string::npos ? std::string() : t.name.substr(0, dot + 1);
    if (t.name == prefix + "running_mean") bn_prefixes.push_back(prefix);
  }
  REQUIRE_FALSE(bn_prefixes.empty());
  for (const auto& t : tensors) {
    const auto dot = t.name.rfind('.');
    const std::string prefix = dot == std::string::npos ? std::string() : t.name.substr(0, dot + 1);
    if (std::find(bn_prefixes.begin(), bn_prefixes.end(), prefix) == bn_prefixes.end()) continue;
    const std::string leaf = t.name.substr(prefix.size());
    double lo = -0.5, hi = 0.5;  // bias (beta) and running_mean
    if (leaf == "weight") lo = 0.5, hi = 1.5;
    if (leaf == "running_var") lo = 0.5, hi = 2.0;
    for (Index i = 0; i < t.size(); ++i) t.data[i] = rng.uniform(lo, hi);
  }
}

/// A default set-up with another batch size.
CheckSetup batch(Index n) {
  CheckSetup o;
  o.batch = n;
  return o;
}

}  // namespace

// ----------------------------------------------------------------- layers

TEST_CASE("gradcheck: Dense with and without bias", "[nn][gradcheck]") {
  check_model("dense 5->4 bias", Shape{5, 1, 1}, nodes(dense(5, 4, true)));
  check_model("dense 5->4 no bias", Shape{5, 1, 1}, nodes(dense(5, 4, false)));
  // a dense layer reading a feature map directly (rows = C*H*W)
  check_model("dense on 2x2x3 map", Shape{2, 2, 3}, nodes(dense(12, 3)), batch(2));
}

TEST_CASE("gradcheck: Conv2D variants", "[nn][gradcheck]") {
  check_model("conv plain 2->3 k3", Shape{2, 5, 6}, nodes(conv(2, 3, 3)));
  check_model("conv no bias", Shape{2, 5, 5}, nodes(conv(2, 3, 3, 1, 0, 1, 1, false)), batch(2));
  check_model("conv stride 2", Shape{2, 7, 7}, nodes(conv(2, 3, 3, 2)));
  check_model("conv stride 2 even input", Shape{1, 6, 8}, nodes(conv(1, 2, 3, 2, 1)));
  check_model("conv padding 1", Shape{2, 5, 5}, nodes(conv(2, 3, 3, 1, 1)));
  check_model("conv padding 2 k5", Shape{1, 4, 5}, nodes(conv(1, 2, 5, 1, 2)), batch(2));
  check_model("conv dilation 2", Shape{2, 7, 7}, nodes(conv(2, 3, 3, 1, 1, 2)));
  check_model("conv groups 2", Shape{4, 5, 5}, nodes(conv(4, 6, 3, 1, 1, 1, 2)), batch(2));
  check_model("conv depthwise groups == channels", Shape{4, 5, 5}, nodes(conv(4, 4, 3, 1, 1, 1, 4)), batch(2));
  check_model("conv depthwise multiplier 2", Shape{3, 5, 5}, nodes(conv(3, 6, 3, 2, 1, 1, 3)), batch(2));
  check_model("conv 1x1 pointwise", Shape{4, 3, 3}, nodes(conv(4, 5, 1)));
  check_model("conv 1x1 pointwise grouped", Shape{4, 3, 3}, nodes(conv(4, 6, 1, 1, 0, 1, 2)));
  check_model("conv 1x1 stride 2 (im2col path)", Shape{3, 5, 5}, nodes(conv(3, 2, 1, 2)));
  check_model("conv 1x1 padding 1 (im2col path)", Shape{2, 3, 3}, nodes(conv(2, 2, 1, 1, 1)));

  nn::Conv2DOptions a;  // 3x2 kernel, stride (2,1), padding (1,0), dilation (1,2)
  a.in_channels = 2;
  a.out_channels = 3;
  a.kernel_h = 3;
  a.kernel_w = 2;
  a.stride_h = 2;
  a.pad_h = 1;
  a.dilation_w = 2;
  check_model("conv 3x2 kernel, stride (2,1), pad (1,0), dilation (1,2)", Shape{2, 6, 7},
              nodes(std::make_unique<nn::Conv2D<double>>(a)));
  nn::Conv2DOptions b;  // 1x3 kernel, stride (1,2), padding (0,1), no bias, groups 2
  b.in_channels = 2;
  b.out_channels = 4;
  b.kernel_h = 1;
  b.kernel_w = 3;
  b.stride_w = 2;
  b.pad_w = 1;
  b.groups = 2;
  b.bias = false;
  check_model("conv 1x3 kernel, stride (1,2), pad (0,1), groups 2, no bias", Shape{2, 4, 6},
              nodes(std::make_unique<nn::Conv2D<double>>(b)));
}

TEST_CASE("gradcheck: MaxPool2D without ties", "[nn][gradcheck]") {
  CheckSetup o;
  o.training = true;  // backward needs the argmax recorded in a training forward
  o.input = distinct_values;
  check_model("maxpool 2", Shape{2, 6, 6}, nodes(std::make_unique<nn::MaxPool2D<double>>(2)), o);
  check_model("maxpool 3 stride 2 pad 1", Shape{2, 7, 7}, nodes(std::make_unique<nn::MaxPool2D<double>>(3, 2, 1)), o);
  check_model("maxpool 3 stride 1 (overlapping)", Shape{1, 5, 6}, nodes(std::make_unique<nn::MaxPool2D<double>>(3, 1)), o);
  check_model("maxpool 2 stride 3 (gaps)", Shape{2, 8, 7}, nodes(std::make_unique<nn::MaxPool2D<double>>(2, 3)), o);
  check_model("maxpool 2 pad 1", Shape{1, 5, 5}, nodes(std::make_unique<nn::MaxPool2D<double>>(2, 2, 1)), o);
}

TEST_CASE("gradcheck: AvgPool2D and GlobalAvgPool", "[nn][gradcheck]") {
  check_model("avgpool 2", Shape{2, 6, 6}, nodes(std::make_unique<nn::AvgPool2D<double>>(2)));
  check_model("avgpool 3 stride 2 pad 1", Shape{2, 7, 7}, nodes(std::make_unique<nn::AvgPool2D<double>>(3, 2, 1)));
  check_model("avgpool 3 stride 1 pad 1", Shape{1, 4, 5}, nodes(std::make_unique<nn::AvgPool2D<double>>(3, 1, 1)));
  check_model("global avg pool", Shape{3, 4, 5}, nodes(std::make_unique<nn::GlobalAvgPool<double>>()));
}

TEST_CASE("gradcheck: BatchNorm in training and eval mode", "[nn][gradcheck]") {
  CheckSetup train;
  train.training = true;
  train.prepare = randomize_batchnorm;
  // inputs with a per-channel offset and scale, as real feature maps have
  train.input = [](Index rows, Index cols, Rng& rng) {
    MatD x = random_matrix(rows, cols, rng, -1.0, 1.0);
    return MatD((x.array() * 2.0 + 0.5).matrix());
  };
  check_model("batchnorm training, conv maps", Shape{3, 4, 4}, nodes(bn(3)), train);
  train.batch = 4;
  check_model("batchnorm training, vectors", Shape{5, 1, 1}, nodes(bn(5)), train);
  train.batch = 2;
  check_model("batchnorm training after conv", Shape{2, 4, 4}, nodes(conv(2, 3, 3, 1, 1), bn(3)), train);

  CheckSetup eval = train;
  eval.training = false;
  eval.batch = 3;
  check_model("batchnorm eval, conv maps", Shape{3, 4, 4}, nodes(bn(3)), eval);
  check_model("batchnorm eval, vectors", Shape{5, 1, 1}, nodes(bn(5)), eval);
}

TEST_CASE("gradcheck: activations, softmax, flatten", "[nn][gradcheck]") {
  CheckSetup relu_in;
  relu_in.input = [](Index r, Index c, Rng& rng) { return away_from_kinks(r, c, rng, -2.0, 2.0, {0.0}); };
  check_model("relu", Shape{2, 3, 3}, nodes(nn::relu<double>()), relu_in);
  CheckSetup relu6_in;
  relu6_in.input = [](Index r, Index c, Rng& rng) { return away_from_kinks(r, c, rng, -3.0, 9.0, {0.0, 6.0}); };
  check_model("relu6", Shape{2, 3, 3}, nodes(nn::relu6<double>()), relu6_in);
  // the input really exercises all three pieces of ReLU6
  {
    Rng rng(1);
    const MatD x = relu6_in.input(18, 3, rng);
    CHECK((x.array() < 0).any());
    CHECK((x.array() > 6).any());
    CHECK(((x.array() > 0) && (x.array() < 6)).any());
  }
  CheckSetup wide;
  wide.input = [](Index r, Index c, Rng& rng) { return random_matrix(r, c, rng, -3.0, 3.0); };
  check_model("sigmoid", Shape{2, 3, 3}, nodes(nn::sigmoid<double>()), wide);
  check_model("tanh", Shape{2, 3, 3}, nodes(nn::tanh<double>()), wide);
  check_model("softmax over vector", Shape{6, 1, 1}, nodes(std::make_unique<nn::Softmax<double>>()), wide);
  check_model("softmax over channels of a map", Shape{4, 2, 3}, nodes(std::make_unique<nn::Softmax<double>>()), wide);
  check_model("flatten", Shape{2, 3, 2}, nodes(std::make_unique<nn::Flatten<double>>()));
  // a parametrised layer after flatten: gradients flow through the copy
  check_model("conv, flatten, dense", Shape{1, 4, 4},
              nodes(conv(1, 2, 3), std::make_unique<nn::Flatten<double>>(), dense(8, 3)), batch(2));
}

TEST_CASE("gradcheck: Dropout with a fixed mask", "[nn][gradcheck]") {
  CheckSetup o;
  o.training = true;
  o.reseed_dropout = true;
  check_model("dropout p=0.4", Shape{3, 2, 2}, nodes(std::make_unique<nn::Dropout<double>>(0.4)), o);
  check_model("dense, dropout, dense", Shape{4, 1, 1},
              nodes(dense(4, 6), std::make_unique<nn::Dropout<double>>(0.5), dense(6, 2)), o);

  // The mask really drops and scales: some outputs 0, the rest x / (1 - p).
  auto m = nn::Model<double>::create(Shape{50, 1, 1}, nodes(std::make_unique<nn::Dropout<double>>(0.4)));
  REQUIRE(m.ok());
  Rng rng(5);
  nn::ExecContext<double> ctx{nullptr, true, &rng};
  const MatD x = MatD::Constant(50, 4, 2.0);
  const MatD y = m->forward(x, ctx);
  Index zeros = 0, kept = 0;
  for (Index i = 0; i < y.size(); ++i) {
    if (y.data()[i] == 0.0) ++zeros;
    else if (std::abs(y.data()[i] - 2.0 / 0.6) < 1e-12) ++kept;
  }
  CHECK(zeros + kept == y.size());
  CHECK(zeros > 40);  // expected 80 of 200
  CHECK(zeros < 120);
  // eval mode: identity
  nn::ExecContext<double> eval{nullptr, false, nullptr};
  CHECK(m->forward(x, eval) == x);
}

// -------------------------------------------------------------- composites

TEST_CASE("gradcheck: Residual with and without projection", "[nn][gradcheck]") {
  check_model("residual identity shortcut", Shape{3, 4, 4},
              nodes(std::make_unique<nn::Residual<double>>(seq(conv(3, 3, 3, 1, 1), nn::tanh<double>(), conv(3, 3, 1)))),
              batch(2));
  check_model("residual with projection (stride 2, more channels)", Shape{2, 5, 5},
              nodes(std::make_unique<nn::Residual<double>>(
                  seq(conv(2, 4, 3, 2, 1), nn::sigmoid<double>(), conv(4, 4, 3, 1, 1)), seq(conv(2, 4, 1, 2)))),
              batch(2));
  // the body's last node reads its own output in backward (sigmoid)
  check_model("residual whose body ends in sigmoid", Shape{4, 1, 1},
              nodes(std::make_unique<nn::Residual<double>>(seq(dense(4, 4), nn::sigmoid<double>()))));
  CheckSetup t;
  t.training = true;
  t.prepare = randomize_batchnorm;
  check_model("residual with batchnorm in body and projection (training)", Shape{2, 4, 4},
              nodes(std::make_unique<nn::Residual<double>>(seq(conv(2, 3, 3, 1, 1), bn(3), nn::tanh<double>()),
                                                           seq(conv(2, 3, 1), bn(3)))),
              t);
}

TEST_CASE("gradcheck: Concat with 2 and 3 branches", "[nn][gradcheck]") {
  {
    std::vector<nn::Sequential<double>> br;
    br.push_back(seq(conv(2, 3, 3, 1, 1)));
    br.push_back(seq(conv(2, 2, 1), nn::sigmoid<double>()));
    check_model("concat 2 branches", Shape{2, 4, 4}, nodes(std::make_unique<nn::Concat<double>>(std::move(br))),
                batch(2));
  }
  {
    std::vector<nn::Sequential<double>> br;
    br.push_back(seq(conv(2, 1, 3, 1, 1), nn::tanh<double>()));
    br.push_back(seq());  // identity branch: the input itself
    br.push_back(seq(std::make_unique<nn::AvgPool2D<double>>(3, 1, 1), conv(2, 2, 1)));
    check_model("concat 3 branches incl. identity", Shape{2, 4, 4},
                nodes(std::make_unique<nn::Concat<double>>(std::move(br))), batch(2));
  }
  {
    // Concat of vector branches followed by a dense head (a NoNN-style student)
    std::vector<nn::Sequential<double>> br;
    br.push_back(seq(dense(5, 3), nn::tanh<double>()));
    br.push_back(seq(dense(5, 2), nn::sigmoid<double>()));
    br.push_back(seq(dense(5, 4, false)));
    check_model("concat of dense branches, dense head", Shape{5, 1, 1},
                nodes(std::make_unique<nn::Concat<double>>(std::move(br)), dense(9, 3)));
  }
}

TEST_CASE("gradcheck: nested composites", "[nn][gradcheck]") {
  // Residual( Concat( Residual(conv), conv ) -> conv 1x1 ) then a nested
  // Sequential as a top-level node, then GlobalAvgPool and Dense.
  std::vector<nn::Sequential<double>> br;
  br.push_back(seq(std::make_unique<nn::Residual<double>>(seq(conv(2, 2, 3, 1, 1), nn::tanh<double>()))));
  br.push_back(seq(conv(2, 2, 3, 1, 1), nn::sigmoid<double>()));
  auto inner = std::make_unique<nn::Concat<double>>(std::move(br));
  auto outer = std::make_unique<nn::Residual<double>>(seq(std::move(inner), conv(4, 2, 1)));
  auto chain = std::make_unique<nn::Sequential<double>>(nodes(conv(2, 3, 3, 1, 1), nn::tanh<double>()));
  check_model("nested residual/concat/sequential", Shape{2, 4, 4},
              nodes(std::move(outer), std::move(chain), std::make_unique<nn::GlobalAvgPool<double>>(), dense(3, 2)),
              batch(2));

  // Residual whose projection is itself a Residual, inside a Concat branch
  std::vector<nn::Sequential<double>> br2;
  br2.push_back(seq(std::make_unique<nn::Residual<double>>(
      seq(dense(4, 4), nn::tanh<double>()), seq(std::make_unique<nn::Residual<double>>(seq(dense(4, 4)))))));
  br2.push_back(seq(dense(4, 2)));
  check_model("residual projection that is a residual, in a concat", Shape{4, 1, 1},
              nodes(std::make_unique<nn::Concat<double>>(std::move(br2))));
}

// ------------------------------------------------------------------ losses

namespace {

/// Check dLoss/d(first input) of `loss(z, grad*)` at z.
void check_loss(const std::string& what, MatD z, const std::function<double(const MatD&, MatD*)>& loss) {
  INFO(what);
  MatD g;
  const double l0 = loss(z, &g);
  REQUIRE(std::isfinite(l0));
  REQUIRE(g.rows() == z.rows());
  REQUIRE(g.cols() == z.cols());
  // the value without a gradient is the same
  CHECK(loss(z, nullptr) == l0);
  const VecD ga = Eigen::Map<const VecD>(g.data(), g.size());
  const VecD gn = numeric_gradient(z.data(), z.size(), [&] { return loss(z, nullptr); });
  require_close(ga, gn, what);
}

}  // namespace

TEST_CASE("gradcheck: softmax_cross_entropy and mse", "[nn][gradcheck][loss]") {
  Rng rng(11);
  const std::vector<std::uint8_t> labels{2, 0, 4};
  check_loss("softmax_cross_entropy", random_matrix(5, 3, rng, -2, 2), [&](const MatD& z, MatD* g) {
    return nn::softmax_cross_entropy(z, labels, g);
  });
  // large logits: the log-sum-exp must stay stable
  check_loss("softmax_cross_entropy, large logits", random_matrix(5, 3, rng, 50, 60), [&](const MatD& z, MatD* g) {
    return nn::softmax_cross_entropy(z, labels, g);
  });
  const MatD target = random_matrix(4, 3, rng);
  check_loss("mse", random_matrix(4, 3, rng), [&](const MatD& z, MatD* g) { return nn::mse(z, target, g); });

  // values: CE of uniform logits is log(k); mse of a known difference
  CHECK(nn::softmax_cross_entropy<double>(MatD::Zero(5, 3), labels, nullptr) == Approx(std::log(5.0)).epsilon(1e-14));
  MatD p(2, 1), t(2, 1);
  p << 1.0, 2.0;
  t << 0.0, 0.0;
  CHECK(nn::mse(p, t, static_cast<MatD*>(nullptr)) == Approx(2.5).epsilon(1e-15));  // (1 + 4) / 2
}

TEST_CASE("gradcheck: kd_loss over temperatures and alphas", "[nn][gradcheck][loss]") {
  Rng rng(12);
  const std::vector<std::uint8_t> labels{1, 3, 0};
  const MatD teacher = random_matrix(5, 3, rng, -3, 3);
  for (double T : {1.0, 2.0, 4.0, 0.5}) {
    for (double alpha : {0.0, 0.3, 0.9, 1.0}) {
      check_loss("kd_loss T=" + std::to_string(T) + " alpha=" + std::to_string(alpha), random_matrix(5, 3, rng, -2, 2),
                 [&](const MatD& z, MatD* g) { return nn::kd_loss(z, teacher, labels, T, alpha, g); });
    }
  }
  // KL(p || p) = 0: with alpha = 1 a student equal to its teacher has no loss
  MatD g;
  CHECK(nn::kd_loss(teacher, teacher, labels, 3.0, 1.0, &g) == Approx(0.0).margin(1e-14));
  CHECK(g.cwiseAbs().maxCoeff() < 1e-15);
  // alpha = 0 is plain cross-entropy
  CHECK(nn::kd_loss(teacher, MatD(MatD::Zero(5, 3)), labels, 2.0, 0.0, static_cast<MatD*>(nullptr)) ==
        Approx(nn::softmax_cross_entropy<double>(teacher, labels, nullptr)).epsilon(1e-14));
}

TEST_CASE("gradcheck: attention_transfer and activation_matching", "[nn][gradcheck][loss]") {
  Rng rng(13);
  const Shape s_shape{3, 3, 4}, t_shape{5, 3, 4};
  const MatD teacher = random_matrix(t_shape.size(), 3, rng);
  check_loss("attention_transfer", random_matrix(s_shape.size(), 3, rng), [&](const MatD& z, MatD* g) {
    return nn::attention_transfer(z, s_shape, teacher, t_shape, g);
  });
  const MatD t2 = random_matrix(7, 2, rng);
  check_loss("activation_matching", random_matrix(7, 2, rng),
             [&](const MatD& z, MatD* g) { return nn::activation_matching(z, t2, g); });
  // scale invariance of both: a student that is a multiple of the teacher
  // (same channels) has zero loss
  CHECK(nn::activation_matching(MatD(t2 * 3.0), t2, static_cast<MatD*>(nullptr)) == Approx(0.0).margin(1e-15));
  CHECK(nn::attention_transfer(MatD(teacher * 2.0), t_shape, teacher, t_shape, static_cast<MatD*>(nullptr)) ==
        Approx(0.0).margin(1e-15));
}

// ----------------------------------------------------- whole model, float/double

namespace {

/// A LeNet-like model small enough for finite differences (1x8x8 input).
template <class S>
std::vector<nn::NodePtr<S>> small_lenet() {
  std::vector<nn::NodePtr<S>> v;
  v.push_back(std::make_unique<nn::Conv2D<S>>(1, 4, 3, 1, 1));
  v.push_back(nn::relu<S>());
  v.push_back(std::make_unique<nn::MaxPool2D<S>>(2));
  v.push_back(std::make_unique<nn::Conv2D<S>>(4, 6, 3, 1, 1));
  v.push_back(nn::relu<S>());
  v.push_back(std::make_unique<nn::MaxPool2D<S>>(2));
  v.push_back(std::make_unique<nn::Flatten<S>>());
  v.push_back(std::make_unique<nn::Dense<S>>(6 * 2 * 2, 8));
  v.push_back(nn::tanh<S>());
  v.push_back(std::make_unique<nn::Dense<S>>(8, 3));
  return v;
}

/// A model with a residual, a concat, batchnorm and softmax (1x6x6 input).
template <class S>
std::vector<nn::NodePtr<S>> small_mixed() {
  std::vector<nn::NodePtr<S>> v;
  v.push_back(std::make_unique<nn::Conv2D<S>>(1, 4, 3, 1, 1));
  v.push_back(std::make_unique<nn::BatchNorm<S>>(4));
  v.push_back(nn::relu6<S>());
  nn::Sequential<S> body;
  body.add(std::make_unique<nn::Conv2D<S>>(4, 4, 3, 1, 1, 1, 4));
  body.add(nn::tanh<S>());
  v.push_back(std::make_unique<nn::Residual<S>>(std::move(body)));
  std::vector<nn::Sequential<S>> br(2);
  br[0].add(std::make_unique<nn::Conv2D<S>>(4, 2, 1));
  br[1].add(std::make_unique<nn::AvgPool2D<S>>(3, 1, 1));
  v.push_back(std::make_unique<nn::Concat<S>>(std::move(br)));
  v.push_back(std::make_unique<nn::GlobalAvgPool<S>>());
  v.push_back(std::make_unique<nn::Dense<S>>(6, 4));
  v.push_back(std::make_unique<nn::Softmax<S>>());
  return v;
}

}  // namespace

TEMPLATE_TEST_CASE("model forward agrees in float and double", "[nn][gradcheck][template]", float, double) {
  using S = TestType;
  for (int arch = 0; arch < 2; ++arch) {
    INFO("architecture " << arch);
    const Shape in = arch == 0 ? Shape{1, 8, 8} : Shape{1, 6, 6};
    auto ms = nn::Model<S>::create(in, arch == 0 ? small_lenet<S>() : small_mixed<S>());
    auto md = nn::Model<double>::create(in, arch == 0 ? small_lenet<double>() : small_mixed<double>());
    REQUIRE(ms.ok());
    REQUIRE(md.ok());
    REQUIRE(ms->param_count() == md->param_count());
    ms->init(3);
    // identical parameters: the double model takes the S model's values
    md->params() = ms->params().template cast<double>();
    md->buffers() = ms->buffers().template cast<double>();
    Rng rng(4);
    const MatD xd = random_matrix(in.size(), 3, rng);
    const fleetdl::Matrix<S> xs = xd.cast<S>();
    for (bool training : {false, true}) {
      INFO("training " << training);
      nn::ExecContext<S> cs{nullptr, training, nullptr};
      nn::ExecContext<double> cd{nullptr, training, nullptr};
      const fleetdl::Matrix<S> ys = ms->forward(xs, cs);
      const MatD yd = md->forward(xd.cast<S>().template cast<double>(), cd);
      REQUIRE(ys.rows() == yd.rows());
      REQUIRE(ys.cols() == 3);
      const double tol = std::is_same_v<S, float> ? 1e-5 : 1e-14;
      const double err = (ys.template cast<double>() - yd).cwiseAbs().maxCoeff();
      INFO("max abs difference " << err << ", output scale " << yd.cwiseAbs().maxCoeff());
      CHECK(err <= tol * std::max(1.0, yd.cwiseAbs().maxCoeff()));
    }
  }
}

TEMPLATE_TEST_CASE("whole-model gradients via Model::backward match finite differences", "[nn][gradcheck][template]",
                   float, double) {
  using S = TestType;
  const Shape in{1, 8, 8};
  auto md = nn::Model<double>::create(in, small_lenet<double>());
  auto ms = nn::Model<S>::create(in, small_lenet<S>());
  REQUIRE(md.ok());
  REQUIRE(ms.ok());
  ms->init(21);
  md->params() = ms->params().template cast<double>();
  Rng rng(22);
  // inputs rounded to S so both models see the same values
  MatD x = random_matrix(in.size(), 3, rng).cast<S>().template cast<double>();
  const std::vector<std::uint8_t> labels{0, 2, 1};
  nn::ExecContext<double> cd{nullptr, true, nullptr};
  const auto loss = [&] { return nn::softmax_cross_entropy(md->forward(x, cd), labels, static_cast<MatD*>(nullptr)); };

  // numeric gradient of the loss in double
  const VecD gn = numeric_gradient(md->params().data(), md->param_count(), loss);
  const VecD dxn = numeric_gradient(x.data(), x.size(), loss);

  // analytic gradient in S through Model::backward
  nn::ExecContext<S> cs{nullptr, true, nullptr};
  const fleetdl::Matrix<S> xs = x.cast<S>();
  fleetdl::Matrix<S> dy, dxs;
  nn::softmax_cross_entropy(ms->forward(xs, cs), labels, &dy);
  ms->zero_grad();
  ms->backward(dy, cs, &dxs);
  const VecD ga = ms->grads().template cast<double>();
  const VecD dxa = Eigen::Map<const fleetdl::Vector<S>>(dxs.data(), dxs.size()).template cast<double>();
  REQUIRE(gn.norm() > 1e-3);  // the check is not vacuous

  if constexpr (std::is_same_v<S, double>) {
    require_close(ga, gn, "lenet-like parameter gradient");
    require_close(dxa, dxn, "lenet-like input gradient");
    // backward accumulates: a second backward without zero_grad doubles grads
    ms->forward(xs, cs);
    ms->backward(dy, cs);
    CHECK((ms->grads() - 2.0 * ga).cwiseAbs().maxCoeff() < 1e-14 * std::max(1.0, ga.cwiseAbs().maxCoeff()));
  } else {
    // float: the same gradient within float round-off
    CHECK((ga - gn).norm() / gn.norm() < 1e-4);
    CHECK((dxa - dxn).norm() / dxn.norm() < 1e-4);
  }
}

TEST_CASE("gradients with a thread pool match the single-thread gradients", "[nn][gradcheck][threads]") {
  // Every layer kind in one model, training mode, an odd batch so the chunks
  // are uneven. Chunked reductions may round differently, nothing more.
  const auto make = [] {
    NodesD v;
    v.push_back(conv(1, 4, 3, 1, 1));
    v.push_back(bn(4));
    v.push_back(nn::relu6<double>());
    v.push_back(std::make_unique<nn::MaxPool2D<double>>(2));
    v.push_back(std::make_unique<nn::Residual<double>>(seq(conv(4, 4, 3, 1, 1, 1, 4), nn::tanh<double>())));
    std::vector<nn::Sequential<double>> br;
    br.push_back(seq(conv(4, 2, 1)));
    br.push_back(seq(std::make_unique<nn::AvgPool2D<double>>(3, 1, 1)));
    v.push_back(std::make_unique<nn::Concat<double>>(std::move(br)));
    v.push_back(std::make_unique<nn::Softmax<double>>());
    v.push_back(std::make_unique<nn::GlobalAvgPool<double>>());
    v.push_back(dense(6, 4));
    v.push_back(std::make_unique<nn::Dropout<double>>(0.3));
    v.push_back(nn::sigmoid<double>());
    v.push_back(dense(4, 3));
    return v;
  };
  Rng rng(41);
  const MatD x = random_matrix(36, 5, rng);
  const MatD w = random_matrix(3, 5, rng);
  struct Run {
    MatD y, dx;
    VecD g, buffers;
  };
  const auto run = [&](fleetdl::ThreadPool* pool) {
    auto m = nn::Model<double>::create(Shape{1, 6, 6}, make());
    REQUIRE(m.ok());
    m->init(42);
    Rng drop(43);
    nn::ExecContext<double> ctx{pool, true, &drop};
    Run r;
    r.y = m->forward(x, ctx);
    m->zero_grad();
    m->backward(w, ctx, &r.dx);
    r.g = m->grads();
    r.buffers = m->buffers();
    return r;
  };
  const Run one = run(nullptr);
  REQUIRE(one.g.norm() > 0);
  for (int threads : {1, 2, 3}) {
    INFO(threads << " threads");
    fleetdl::ThreadPool pool(threads);
    const Run r = run(&pool);
    const auto rel = [](const auto& a, const auto& b) { return (a - b).norm() / std::max(1e-300, b.norm()); };
    CHECK(rel(r.y, one.y) < 1e-13);
    CHECK(rel(r.dx, one.dx) < 1e-13);
    CHECK(rel(r.g, one.g) < 1e-13);
    CHECK(rel(r.buffers, one.buffers) < 1e-13);  // BatchNorm running statistics
  }
}
