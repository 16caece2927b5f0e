// tests/unit/test_partition_nonn.cpp — NoNN students (fleetdl/partition/nonn.hpp):
// the teacher's feature node on zoo models and composites, pooled activations
// against a hand-written GAP of Model::activation, nonn_loss on a
// hand-computed case (arithmetic in the comments) and by finite differences
// (double; α = 0 / 1 edges, the β term alone, both KL reductions), bit-exact
// extraction of students + combiner, per-student costs, a short train_nonn run
// on Fashion-MNIST (loss falls, same seed = same bits) and a bad-input table
// where every case fails cleanly and changes no model.
#include "fleetdl/partition.hpp"

#include "fleetdl/data/dataset.hpp"
#include "fleetdl/nn/zoo.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

namespace {

using fleetdl::Errc;
using fleetdl::Index;
using fleetdl::Matrix;
using fleetdl::Rng;
using fleetdl::Shape;
using fleetdl::Vector;
namespace nn = fleetdl::nn;
namespace pt = fleetdl::partition;
using Catch::Matchers::Contains;
using MatD = Matrix<double>;

template <class S>
Matrix<S> random_matrix(Index rows, Index cols, Rng& rng, double lo = -1.0, double hi = 1.0) {
  Matrix<S> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<S>(rng.uniform(lo, hi));
  return m;
}

template <class S>
bool same_bits(const Matrix<S>& a, const Matrix<S>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(S)) == 0;
}
template <class V>
bool same_bits_vec(const V& a, const V& b) {
  using S = typename V::Scalar;
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(S)) == 0;
}

template <class S>
nn::Model<S> zoo(const char* name, std::uint64_t seed = 3) {
  auto m = nn::make_model<S>(name);
  REQUIRE(m.ok());
  m->init(seed);
  return std::move(*m);
}

/// A tiny BatchNorm CNN teacher for 1x28x28: conv 3x3 8, BN, ReLU, maxpool 2,
/// conv 3x3 16, BN, ReLU, maxpool 2, GAP, Flatten, dense 16->10 (feature
/// node 8, C = 16). Its BatchNorms use momentum 1, so one training-mode
/// forward of a calibration batch (uniform pixels) sets the running
/// statistics to that batch's: about half of the pre-ReLU units are positive
/// in eval mode, and the pooled features are not all zero.
template <class S>
nn::Model<S> tiny_teacher(std::uint64_t seed, Shape input = Shape{1, 28, 28}) {
  std::vector<nn::NodePtr<S>> v;
  v.push_back(std::make_unique<nn::Conv2D<S>>(input.c, 8, 3, 1, 1));
  v.push_back(std::make_unique<nn::BatchNorm<S>>(8, 1e-5, 1.0));
  v.push_back(nn::relu<S>());
  v.push_back(std::make_unique<nn::MaxPool2D<S>>(2));
  v.push_back(std::make_unique<nn::Conv2D<S>>(8, 16, 3, 1, 1));
  v.push_back(std::make_unique<nn::BatchNorm<S>>(16, 1e-5, 1.0));
  v.push_back(nn::relu<S>());
  v.push_back(std::make_unique<nn::MaxPool2D<S>>(2));
  v.push_back(std::make_unique<nn::GlobalAvgPool<S>>());
  v.push_back(std::make_unique<nn::Flatten<S>>());
  v.push_back(std::make_unique<nn::Dense<S>>(16, 10));
  auto m = nn::Model<S>::create(input, std::move(v));
  REQUIRE(m.ok());
  m->init(seed);
  Rng rng(seed + 100);
  nn::ExecContext<S> calibrate{nullptr, true, nullptr};
  m->forward(random_matrix<S>(input.size(), 32, rng, 0.0, 1.0), calibrate);
  return std::move(*m);
}

// --------------------------------------------------------------------------
// Teacher features

TEST_CASE("nonn: teacher_feature_node on zoo models", "[partition][nonn]") {
  SECTION("vgg_fmnist: the GlobalAvgPool after the last conv block (128 x 7 x 7)") {
    auto m = zoo<float>("vgg_fmnist");
    auto f = pt::teacher_feature_node(m);
    REQUIRE(f.ok());
    CHECK(*f == 20);  // 6 x (conv, BN, ReLU) + 2 maxpools = nodes 0..19
    CHECK(m.node(*f).kind() == nn::NodeKind::global_avg_pool);
    CHECK(m.node(*f).input_shape() == Shape{128, 7, 7});
    CHECK(m.node(*f - 1).kind() == nn::NodeKind::relu);
    // Teacher size (reported for the issue): conv 286,432 + BN 896 + dense
    // 1,290 parameters; conv MACs 28²·9·(32 + 32·32) + 14²·9·(32·64 + 64·64)
    // + 7²·9·(64·128 + 128·128) = 29,127,168, plus BN, GAP and dense.
    CHECK(m.param_count() == 288618);
    Index macs = 0, conv_macs = 0;
    for (const auto& r : m.cost_report()) {
      macs += r.macs;
      if (r.type == std::string("conv2d")) conv_macs += r.macs;
    }
    CHECK(conv_macs == 29127168);
    CHECK(macs == 29127168 + 2 * (32 * 784 + 64 * 196 + 128 * 49) + 128 * 49 + 1280);
  }
  SECTION("lenet300_100: no conv layer") {
    auto m = zoo<float>("lenet300_100");
    auto f = pt::teacher_feature_node(m);
    REQUIRE_FALSE(f.ok());
    CHECK(f.error().code == Errc::invalid_argument);
    CHECK_THAT(f.error().message, Contains("teacher has no conv layer"));
  }
  SECTION("cnn1: conv, relu, maxpool, flatten — the map is the input of Flatten") {
    auto m = zoo<float>("cnn1");
    auto f = pt::teacher_feature_node(m);
    REQUIRE(f.ok());
    CHECK(*f == 3);
    CHECK(m.node(3).kind() == nn::NodeKind::flatten);
    CHECK(m.node(3).input_shape() == Shape{12, 13, 13});
    auto s = pt::teacher_feature_shape(m);
    REQUIRE(s.ok());
    CHECK(*s == Shape{12, 13, 13});
  }
  SECTION("lenet5: the Flatten after the second conv block") {
    auto m = zoo<float>("lenet5");
    auto f = pt::teacher_feature_node(m);
    REQUIRE(f.ok());
    CHECK(*f == 6);
    CHECK(m.node(6).input_shape() == Shape{32, 7, 7});
  }
}

TEST_CASE("nonn: teacher_feature_node on composites and bad teachers", "[partition][nonn]") {
  using S = float;
  auto build = [](std::vector<nn::NodePtr<S>> v, Shape in = Shape{2, 8, 8}) {
    auto m = nn::Model<S>::create(in, std::move(v));
    REQUIRE(m.ok());
    return std::move(*m);
  };
  SECTION("a residual block holding the last conv counts as the conv node") {
    std::vector<nn::NodePtr<S>> v;
    v.push_back(std::make_unique<nn::Conv2D<S>>(2, 4, 3, 1, 1));
    nn::Sequential<S> body;
    body.add(std::make_unique<nn::Conv2D<S>>(4, 4, 3, 1, 1)).add(std::make_unique<nn::BatchNorm<S>>(4));
    v.push_back(std::make_unique<nn::Residual<S>>(std::move(body)));
    v.push_back(nn::relu<S>());
    v.push_back(std::make_unique<nn::GlobalAvgPool<S>>());
    v.push_back(std::make_unique<nn::Flatten<S>>());
    v.push_back(std::make_unique<nn::Dense<S>>(4, 3));
    auto m = build(std::move(v));
    auto f = pt::teacher_feature_node(m);
    REQUIRE(f.ok());
    CHECK(*f == 3);
  }
  SECTION("one-channel feature map") {
    std::vector<nn::NodePtr<S>> v;
    v.push_back(std::make_unique<nn::Conv2D<S>>(2, 1, 3));
    v.push_back(std::make_unique<nn::GlobalAvgPool<S>>());
    v.push_back(std::make_unique<nn::Dense<S>>(1, 3));
    auto m = build(std::move(v));
    auto f = pt::teacher_feature_node(m);
    REQUIRE_FALSE(f.ok());
    CHECK(f.error().code == Errc::invalid_argument);
    CHECK_THAT(f.error().message, Contains("1x6x6") && Contains("C >= 2"));
  }
  SECTION("no pooling or flatten after the last conv") {
    std::vector<nn::NodePtr<S>> v;
    v.push_back(std::make_unique<nn::Conv2D<S>>(2, 4, 3));
    v.push_back(nn::relu<S>());
    auto m = build(std::move(v));
    auto f = pt::teacher_feature_node(m);
    REQUIRE_FALSE(f.ok());
    CHECK_THAT(f.error().message, Contains("no global_avg_pool or flatten"));
  }
  SECTION("a dense layer between the conv and the pooling") {
    std::vector<nn::NodePtr<S>> v;
    v.push_back(std::make_unique<nn::Conv2D<S>>(2, 4, 3));
    v.push_back(std::make_unique<nn::Dense<S>>(4 * 36, 8));
    v.push_back(std::make_unique<nn::Flatten<S>>());
    auto m = build(std::move(v));
    auto f = pt::teacher_feature_node(m);
    REQUIRE_FALSE(f.ok());
    CHECK_THAT(f.error().message, Contains("node 1 (dense)"));
  }
}

TEMPLATE_TEST_CASE("nonn: pooled activations are the GAP of the feature map", "[partition][nonn]", float, double) {
  using S = TestType;
  auto teacher = tiny_teacher<S>(5);
  Rng rng(11);
  const Matrix<S> x = random_matrix<S>(784, 7, rng, 0.0, 1.0);
  auto acts = pt::pooled_teacher_activations(teacher, x, 3);  // batches 3, 3, 1
  REQUIRE(acts.ok());
  CHECK((acts->array() > 0).count() > acts->size() / 4);
  REQUIRE(acts->rows() == 16);
  REQUIRE(acts->cols() == 7);

  // By hand: one eval forward of all 7 images, mean over the 7x7 positions
  // of each channel of the activation that feeds node 8.
  nn::ExecContext<S> ctx{nullptr, false, nullptr};
  teacher.forward(x, ctx);
  const Matrix<S>& map = teacher.activation(7);
  REQUIRE(map.rows() == 16 * 49);
  for (Index j = 0; j < 7; ++j)
    for (Index c = 0; c < 16; ++c) {
      double s = 0;
      for (Index p = 0; p < 49; ++p) s += static_cast<double>(map(c * 49 + p, j));
      CHECK(static_cast<double>((*acts)(c, j)) == Approx(s / 49).epsilon(1e-5).margin(1e-7));
    }
  // With a GlobalAvgPool feature node, it is that node's output bit for bit
  // (same batch).
  auto one = pt::pooled_teacher_activations(teacher, x, 7);
  REQUIRE(one.ok());
  CHECK(same_bits<S>(*one, teacher.activation(8)));

  // teacher_outputs: logits and pooled features of one batch.
  auto to = pt::teacher_outputs(teacher, x);
  REQUIRE(to.ok());
  CHECK(same_bits<S>(to->pooled, *one));
  teacher.forward(x, ctx);
  CHECK(same_bits<S>(to->logits, teacher.activation(teacher.size() - 1)));

  // Errors.
  auto bad_rows = pt::pooled_teacher_activations(teacher, Matrix<S>(10, 2), 4);
  REQUIRE_FALSE(bad_rows.ok());
  CHECK(bad_rows.error().code == Errc::shape_mismatch);
  auto bad_batch = pt::pooled_teacher_activations(teacher, x, 0);
  REQUIRE_FALSE(bad_batch.ok());
  CHECK_THAT(bad_batch.error().message, Contains("batch 0"));
  auto mlp = zoo<S>("lenet300_100");
  auto no_conv = pt::pooled_teacher_activations(mlp, x, 4);
  REQUIRE_FALSE(no_conv.ok());
  CHECK_THAT(no_conv.error().message, Contains("no conv layer"));
}

TEST_CASE("nonn: select_teacher_features gathers rows in student order", "[partition][nonn]") {
  Matrix<double> acts(5, 2);
  for (Index r = 0; r < 5; ++r)
    for (Index c = 0; c < 2; ++c) acts(r, c) = 10.0 * static_cast<double>(r) + static_cast<double>(c);
  pt::PartitionManifest m;
  m.assignment = {{3, 4}, {0}};
  auto s = pt::select_teacher_features(acts, m);
  REQUIRE(s.ok());
  REQUIRE(s->rows() == 3);
  CHECK((*s)(0, 0) == 30.0);
  CHECK((*s)(1, 1) == 41.0);
  CHECK((*s)(2, 0) == 0.0);
  auto out = pt::select_teacher_features<double>(acts, {{1, 5}});
  REQUIRE_FALSE(out.ok());
  CHECK_THAT(out.error().message, Contains("filter 5") && Contains("C = 5"));
  auto twice = pt::select_teacher_features<double>(acts, {{1, 2}, {2}});
  REQUIRE_FALSE(twice.ok());
  CHECK_THAT(twice.error().message, Contains("filter 2 is assigned twice"));
  auto none = pt::select_teacher_features(acts, std::vector<std::vector<Index>>{});
  REQUIRE_FALSE(none.ok());
  CHECK_THAT(none.error().message, Contains("N = 0"));
}

// --------------------------------------------------------------------------
// Loss

TEST_CASE("nonn: nonn_loss on a hand-computed case", "[partition][nonn]") {
  // Two identical samples (batchmean must average, not sum), 2 classes,
  // alpha = 0.5, T = 2, beta = 10, label 0.
  // Teacher logits (2 ln 3, 0) -> z/T = (ln 3, 0) -> p_T = (3/4, 1/4).
  // Student logits (0, 0) -> p_S = (1/2, 1/2) at any T.
  // KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.3040988... - 0.1732868... = 0.1308120...
  // KD term = 2 * 0.5 * 2^2 * KL = 4 KL.  CE = ln 2;  CE term = 0.5 ln 2.
  // Features: s = (3, 4) -> (0.6, 0.8); t = (4, 3) -> (0.8, 0.6); squared
  // differences 0.04 + 0.04, mean over 2 features = 0.04; AM term = 0.4.
  MatD zs(2, 2), zt(2, 2), fs(2, 2), ft(2, 2);
  zs << 0, 0, 0, 0;
  zt << 2 * std::log(3.0), 2 * std::log(3.0), 0, 0;
  fs << 3, 3, 4, 4;
  ft << 4, 4, 3, 3;
  const std::vector<std::uint8_t> y = {0, 0};
  pt::NonnLossOptions o;
  o.alpha = 0.5;
  o.temperature = 2.0;
  o.beta = 10.0;
  const double kl = 0.75 * std::log(1.5) + 0.25 * std::log(0.5);
  const pt::NonnLossTerms t = pt::nonn_loss<double>(zs, zt, y, fs, ft, o, nullptr, nullptr);
  CHECK(t.kl == Approx(kl).epsilon(1e-12));
  CHECK(t.kl == Approx(0.1308120).epsilon(1e-6));
  CHECK(t.kd_term == Approx(4 * kl).epsilon(1e-12));
  CHECK(t.ce == Approx(std::log(2.0)).epsilon(1e-12));
  CHECK(t.ce_term == Approx(0.5 * std::log(2.0)).epsilon(1e-12));
  CHECK(t.am == Approx(0.04).epsilon(1e-12));
  CHECK(t.am_term == Approx(0.4).epsilon(1e-12));
  CHECK(t.total == Approx(4 * kl + 0.5 * std::log(2.0) + 0.4).epsilon(1e-12));
  CHECK(t.total == Approx(1.2698220).epsilon(1e-6));

  // The public code's reduction averages over the 2 classes too.
  o.kl_reduction = pt::KlReduction::elementwise_mean;
  const pt::NonnLossTerms m = pt::nonn_loss<double>(zs, zt, y, fs, ft, o, nullptr, nullptr);
  CHECK(m.kl == Approx(kl / 2).epsilon(1e-12));
  CHECK(m.kd_term == Approx(2 * kl).epsilon(1e-12));
  CHECK(m.ce_term == t.ce_term);
  CHECK(m.am_term == t.am_term);

  // Defaults: alpha 0.9, T 4, beta 1e4; identical logits and features -> only CE.
  const pt::NonnLossTerms d = pt::nonn_loss<double>(zt, zt, y, ft, ft, pt::NonnLossOptions{}, nullptr, nullptr);
  CHECK(d.kl == Approx(0.0).margin(1e-15));
  CHECK(d.am == Approx(0.0).margin(1e-15));
  CHECK(d.total == Approx(0.1 * d.ce).epsilon(1e-12));
}

/// Central differences of f over the n scalars at v.
Vector<double> numeric_gradient(double* v, Index n, const std::function<double()>& f, double h = 1e-6) {
  Vector<double> g(n);
  for (Index i = 0; i < n; ++i) {
    const double keep = v[i];
    v[i] = keep + h;
    const double up = f();
    v[i] = keep - h;
    const double down = f();
    v[i] = keep;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

/// Same criteria as test_nn_gradcheck.cpp, except that the absolute floor
/// also scales with |L|: the difference quotient's round-off is about
/// eps·|L|/h, and the beta term makes L large next to the logit gradients.
void check_gradient(const Vector<double>& a, const Vector<double>& n, double loss) {
  const double scale = std::max({1.0, a.lpNorm<Eigen::Infinity>(), n.lpNorm<Eigen::Infinity>(), std::abs(loss)});
  const double denom = std::max({a.norm(), n.norm(), 1e-300});
  INFO("analytic norm " << a.norm() << ", numeric norm " << n.norm());
  CHECK((a - n).norm() / denom < 1e-6);
  for (Index i = 0; i < a.size(); ++i) {
    INFO("element " << i << ": analytic " << a[i] << ", numeric " << n[i]);
    CHECK(std::abs(a[i] - n[i]) <= 1e-6 * (std::abs(a[i]) + std::abs(n[i])) + 1e-8 * scale);
  }
}

TEST_CASE("nonn: nonn_loss gradients by finite differences", "[partition][nonn]") {
  struct Case {
    const char* name;
    double alpha, T, beta;
    pt::KlReduction red;
  };
  const Case cases[] = {
      {"defaults (alpha 0.9, T 4, beta 1e4)", 0.9, 4.0, 1e4, pt::KlReduction::batchmean},
      {"alpha = 0 (CE + AM only)", 0.0, 4.0, 1e4, pt::KlReduction::batchmean},
      {"alpha = 1 (KD + AM only)", 1.0, 4.0, 1e4, pt::KlReduction::batchmean},
      {"beta = 0", 0.9, 2.0, 0.0, pt::KlReduction::batchmean},
      {"elementwise mean KL, T = 1", 0.7, 1.0, 100.0, pt::KlReduction::elementwise_mean},
  };
  const Index K = 5, n = 4, D = 7;
  Rng rng(2024);
  for (const Case& c : cases) {
    INFO(c.name);
    MatD zs = random_matrix<double>(K, n, rng, -3, 3), zt = random_matrix<double>(K, n, rng, -3, 3);
    MatD fs = random_matrix<double>(D, n, rng, 0.05, 2), ft = random_matrix<double>(D, n, rng, 0.0, 2);
    std::vector<std::uint8_t> y;
    for (Index j = 0; j < n; ++j) y.push_back(static_cast<std::uint8_t>(rng.below(static_cast<std::uint64_t>(K))));
    pt::NonnLossOptions o;
    o.alpha = c.alpha;
    o.temperature = c.T;
    o.beta = c.beta;
    o.kl_reduction = c.red;
    MatD gl, gf;
    const pt::NonnLossTerms t = pt::nonn_loss(zs, zt, y, fs, ft, o, &gl, &gf);
    CHECK(t.total == Approx(t.kd_term + t.ce_term + t.am_term).epsilon(1e-14));
    auto L = [&] { return pt::nonn_loss<double>(zs, zt, y, fs, ft, o, nullptr, nullptr).total; };
    {
      INFO("d/d student logits");
      const Vector<double> num = numeric_gradient(zs.data(), zs.size(), L);
      check_gradient(Eigen::Map<const Vector<double>>(gl.data(), gl.size()), num, t.total);
    }
    {
      INFO("d/d student features");
      const Vector<double> num = numeric_gradient(fs.data(), fs.size(), L);
      if (c.beta == 0.0) {
        CHECK(gf.cwiseAbs().maxCoeff() == 0.0);
        CHECK(num.cwiseAbs().maxCoeff() < 1e-8);
      } else {
        check_gradient(Eigen::Map<const Vector<double>>(gf.data(), gf.size()), num, t.total);
      }
    }
  }
  SECTION("the beta term alone: gradient of beta * activation_matching") {
    MatD fs = random_matrix<double>(D, n, rng, 0.05, 2), ft = random_matrix<double>(D, n, rng, 0.0, 2);
    MatD z = MatD::Zero(K, n);
    const std::vector<std::uint8_t> y(static_cast<std::size_t>(n), 1);
    pt::NonnLossOptions o;
    MatD gf;
    auto L = [&] { return pt::nonn_loss<double>(z, z, y, fs, ft, o, nullptr, nullptr).am_term; };
    const pt::NonnLossTerms t = pt::nonn_loss<double>(z, z, y, fs, ft, o, nullptr, &gf);
    const Vector<double> num = numeric_gradient(fs.data(), fs.size(), L);
    check_gradient(Eigen::Map<const Vector<double>>(gf.data(), gf.size()), num, t.am_term);
    // The KD and CE terms do not depend on the features: the full loss has
    // the same feature gradient.
    auto Lt = [&] { return pt::nonn_loss<double>(z, z, y, fs, ft, o, nullptr, nullptr).total; };
    check_gradient(Eigen::Map<const Vector<double>>(gf.data(), gf.size()),
                   numeric_gradient(fs.data(), fs.size(), Lt), t.total);
  }
}

// --------------------------------------------------------------------------
// Students

TEST_CASE("nonn: student architecture", "[partition][nonn]") {
  pt::StudentSpec spec;
  spec.width = 4;
  auto s = pt::make_student<float>(Shape{1, 28, 28}, 12, spec);
  REQUIRE(s.ok());
  CHECK(s->output_shape() == Shape{12, 1, 1});
  CHECK(s->size() == 2 * 4 + 5);
  CHECK(s->node(8).kind() == nn::NodeKind::conv2d);
  CHECK(s->node(8).input_shape() == Shape{8, 7, 7});
  CHECK(s->node(8).output_shape() == Shape{12, 7, 7});
  // conv 1->4 (40) + BN (8) + conv 4->8 (296) + BN (16) + bridge 8->12 (108) + BN (24).
  CHECK(s->param_count() == 40 + 8 + 296 + 16 + 108 + 24);
  CHECK(pt::StudentSpec{}.width == 16);
  CHECK(pt::StudentSpec{}.blocks == 2);

  auto zero = pt::make_student<float>(Shape{1, 28, 28}, 0, spec);
  REQUIRE_FALSE(zero.ok());
  CHECK_THAT(zero.error().message, Contains("|P_i| = 0"));
  auto tiny = pt::make_student<float>(Shape{1, 1, 1}, 4, spec);
  REQUIRE_FALSE(tiny.ok());
  CHECK_THAT(tiny.error().message, Contains("make_student: input 1x1x1"));
  pt::StudentSpec bad = spec;
  bad.blocks = 0;
  CHECK_FALSE(pt::make_student<float>(Shape{1, 28, 28}, 4, bad).ok());
  auto none = pt::make_unified_student<float>(Shape{1, 28, 28}, {}, 10, spec);
  REQUIRE_FALSE(none.ok());
  CHECK_THAT(none.error().message, Contains("N = 0"));
  auto empty = pt::make_unified_student<float>(Shape{1, 28, 28}, {3, 0}, 10, spec);
  REQUIRE_FALSE(empty.ok());
  CHECK_THAT(empty.error().message, Contains("student 1"));
}

template <class S>
void check_extraction(fleetdl::ThreadPool* pool) {
  pt::StudentSpec spec;
  spec.width = 4;
  spec.seed = 9;
  const std::vector<Index> sizes = {3, 5, 4};
  auto u = pt::make_unified_student<S>(Shape{1, 12, 12}, sizes, 10, spec);
  REQUIRE(u.ok());
  CHECK(u->students() == 3);
  CHECK(u->features() == 12);
  CHECK(u->classes() == 10);
  // Non-trivial BatchNorm state: a few training-mode forwards.
  Rng rng(77);
  nn::ExecContext<S> train{pool, true, nullptr};
  for (int k = 0; k < 3; ++k) u->body.forward(random_matrix<S>(144, 6, rng, 0, 1), train);
  auto bp = u->body.params();
  for (Index i = 0; i < bp.size(); ++i) bp[i] += static_cast<S>(rng.uniform(-0.05, 0.05));

  const Matrix<S> x = random_matrix<S>(144, 5, rng, 0, 1);
  nn::ExecContext<S> ctx{pool, false, nullptr};
  const Matrix<S> feats = u->body.forward(x, ctx);
  const Matrix<S> logits = u->head.forward(feats, ctx);

  Matrix<S> joined(12, 5);
  Index off = 0, params = 0;
  for (Index i = 0; i < 3; ++i) {
    auto s = pt::extract_student(*u, i);
    REQUIRE(s.ok());
    CHECK(s->output_shape() == Shape{sizes[static_cast<std::size_t>(i)], 1, 1});
    auto fresh = pt::make_student<S>(Shape{1, 12, 12}, sizes[static_cast<std::size_t>(i)], spec);
    REQUIRE(fresh.ok());
    CHECK(s->param_count() == fresh->param_count());
    CHECK(s->buffer_count() == fresh->buffer_count());
    params += s->param_count();
    const Matrix<S> out = s->forward(x, ctx);
    CHECK(same_bits<S>(out, feats.middleRows(off, out.rows())));
    joined.middleRows(off, out.rows()) = out;
    off += out.rows();
  }
  CHECK(params == u->body.param_count());
  nn::Model<S> comb = pt::combiner(*u);
  const Matrix<S> split_logits = comb.forward(joined, ctx);
  CHECK(same_bits<S>(joined, feats));
  CHECK(same_bits<S>(split_logits, logits));
  CHECK_FALSE(pt::extract_student(*u, 3).ok());
  CHECK_FALSE(pt::extract_student(*u, -1).ok());
}

TEMPLATE_TEST_CASE("nonn: extracted students + combiner reproduce the unified forward bit for bit",
                   "[partition][nonn]", float, double) {
  SECTION("no pool") { check_extraction<TestType>(nullptr); }
  SECTION("the same 2-thread pool") {
    fleetdl::ThreadPool pool(2);
    check_extraction<TestType>(&pool);
  }
}

TEST_CASE("nonn: per-student costs", "[partition][nonn]") {
  pt::StudentSpec spec;
  spec.width = 4;
  auto u = pt::make_unified_student<float>(Shape{1, 28, 28}, {6, 10}, 10, spec);
  REQUIRE(u.ok());
  auto c = pt::nonn_costs(*u);
  REQUIRE(c.ok());
  REQUIRE(c->students.size() == 2);
  Index params = 0;
  for (std::size_t i = 0; i < 2; ++i) {
    const pt::StudentCost& s = c->students[i];
    params += s.params;
    CHECK(s.bytes_in_per_image == 784 * 4);
    // Peak: the first BN / ReLU, 4x28x28 floats in and out = 2 * 12544 bytes.
    CHECK(s.peak_activation_bytes == 25088);
    // conv 1->4: 784*4*9; BN 3136; conv 4->8 on 14x14: 196*8*36; BN 1568;
    // bridge 8->P on 7x7: 49*P*8; BN 49*P; GAP 49*P.
    const Index P = i == 0 ? 6 : 10;
    CHECK(s.macs == 784 * 4 * 9 + 3136 + 196 * 8 * 36 + 1568 + 49 * P * 8 + 49 * P + 49 * P);
    CHECK(s.bytes_sent_per_image == P * 4);
    CHECK(s.weight_bytes == (s.params + 2 * (4 + 8 + P)) * 4);
  }
  CHECK(params == u->body.param_count());
  CHECK(c->combiner.params == 16 * 10 + 10);
  CHECK(c->combiner.macs == 160);
  CHECK(c->combiner.bytes_in_per_image == 16 * 4);
  CHECK(c->combiner.bytes_sent_per_image == 40);
}

// --------------------------------------------------------------------------
// Training

namespace fs = std::filesystem;

bool have_fashion() {
  const fs::path dir = FLEETDL_FASHION_MNIST_DIR;
  for (const char* f : {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"})
    if (!fs::exists(dir / f)) return false;
  return true;
}

struct Snapshot {
  std::vector<Vector<float>> v;
  template <class... M>
  explicit Snapshot(const M&... models) {
    (v.push_back(models.params()), ...);
    (v.push_back(models.buffers()), ...);
  }
  bool operator==(const Snapshot& o) const {
    if (v.size() != o.v.size()) return false;
    for (std::size_t i = 0; i < v.size(); ++i)
      if (!same_bits_vec(v[i], o.v[i])) return false;
    return true;
  }
};

TEST_CASE("nonn: train_nonn on 512 Fashion-MNIST images", "[partition][nonn]") {
  if (!have_fashion()) {
    WARN("Fashion-MNIST not installed in " FLEETDL_FASHION_MNIST_DIR " (Debian package dataset-fashion-mnist); "
         "skipped");
    return;
  }
  auto data = fleetdl::data::load_fashion_mnist<float>(FLEETDL_FASHION_MNIST_DIR, true, 640);
  REQUIRE(data.ok());
  const auto train = data->head(512);
  std::vector<Index> val_idx(128);
  std::iota(val_idx.begin(), val_idx.end(), Index{512});
  const auto val = data->subset(val_idx);

  // The whole pipeline on a tiny random teacher: activations -> partition
  // (balanced, 2 students) -> unified student -> joint training.
  auto teacher = tiny_teacher<float>(21);
  auto acts = pt::pooled_teacher_activations(teacher, val.images, 64);
  REQUIRE(acts.ok());
  CHECK((acts->array() > 0).count() > acts->size() / 4);  // a teacher with live features
  pt::AssignOptions ao;
  ao.students = 2;
  ao.mode = pt::AssignMode::balanced;
  const Matrix<float> by_image = acts->transpose();
  auto manifest = pt::partition_filters(by_image, {}, {}, ao);
  REQUIRE(manifest.ok());
  REQUIRE(manifest->students == 2);
  CHECK(manifest->sizes[0] + manifest->sizes[1] == 16);

  pt::StudentSpec spec;
  spec.width = 4;
  spec.seed = 5;
  auto make = [&] {
    auto u = pt::make_unified_student<float>(train.shape, manifest->sizes, 10, spec);
    REQUIRE(u.ok());
    return std::move(*u);
  };
  pt::NonnTrainOptions o;
  o.epochs = 3;
  o.batch = 64;
  o.seed = 8;
  o.optimizer = pt::NonnOptimizer::adam;
  o.adam.lr = 3e-3;
  const Snapshot teacher_before(teacher);

  auto u1 = make();
  Index batches_seen = 0;
  pt::NonnCallbacks cb;
  cb.on_batch = [&](const pt::NonnProgress& p) {
    ++batches_seen;
    CHECK(p.batches == 8);
  };
  auto r1 = pt::train_nonn(u1, teacher, manifest->assignment, train.images, train.labels, o, nullptr, cb);
  REQUIRE(r1.ok());
  CHECK(batches_seen == 24);
  REQUIRE(r1->epochs.size() == 3);
  const auto& first = r1->epochs.front();
  const auto& last = r1->epochs.back();
  std::string table;
  for (const auto& e : r1->epochs)
    table += "epoch " + std::to_string(e.epoch) + ": loss " + std::to_string(e.loss) + " (kd " +
             std::to_string(e.kd_term) + ", ce " + std::to_string(e.ce_term) + ", am " + std::to_string(e.am_term) +
             "), train accuracy " + std::to_string(e.train_accuracy) + "\n";
  INFO(table);
  CHECK(last.loss < first.loss);
  CHECK(last.am_term < first.am_term);
  CHECK(first.loss == Approx(first.kd_term + first.ce_term + first.am_term).epsilon(1e-9));
  CHECK(Snapshot(teacher) == teacher_before);  // the teacher is only read

  // Same seed (and thread count) -> the same bits.
  auto u2 = make();
  auto r2 = pt::train_nonn(u2, teacher, manifest->assignment, train.images, train.labels, o);
  REQUIRE(r2.ok());
  CHECK(Snapshot(u1.body, u1.head) == Snapshot(u2.body, u2.head));
  CHECK(r2->epochs.back().loss == last.loss);
  CHECK(r2->epochs.back().train_accuracy == last.train_accuracy);

  // The labels reach the students through the combiner and the body: with
  // the teacher terms off (alpha = 0, beta = 0) it is plain cross-entropy.
  pt::NonnTrainOptions ce_only = o;
  ce_only.loss.alpha = 0.0;
  ce_only.loss.beta = 0.0;
  auto u3 = make();
  auto r3 = pt::train_nonn(u3, teacher, manifest->assignment, train.images, train.labels, ce_only);
  REQUIRE(r3.ok());
  INFO("cross-entropy only: accuracy " << r3->epochs.front().train_accuracy << " -> "
                                      << r3->epochs.back().train_accuracy);
  CHECK(r3->epochs.back().train_accuracy > 0.2);  // 10 classes; 0.13 -> 0.29 in 3 epochs of 512 images
  CHECK(r3->epochs.back().train_accuracy > r3->epochs.front().train_accuracy);
  CHECK(r3->epochs.back().loss < r3->epochs.front().loss);
  CHECK(r3->epochs.back().kd_term == 0.0);
  CHECK(r3->epochs.back().am_term == 0.0);

  // The trained students still split bit-exactly.
  auto s0 = pt::extract_student(u1, 0);
  REQUIRE(s0.ok());
  nn::ExecContext<float> ctx{nullptr, false, nullptr};
  const Matrix<float> f0 = s0->forward(val.images, ctx);
  const Matrix<float> fu = u1.body.forward(val.images, ctx);
  CHECK(same_bits<float>(f0, fu.topRows(f0.rows())));
}

TEST_CASE("nonn: train_nonn with SGD on synthetic data", "[partition][nonn]") {
  // No dataset needed: 96 random images with labels from a teacher's argmax.
  auto teacher = tiny_teacher<float>(4, Shape{1, 12, 12});
  Rng rng(6);
  const Matrix<float> x = random_matrix<float>(144, 96, rng, 0, 1);
  auto to = pt::teacher_outputs(teacher, x);
  REQUIRE(to.ok());
  std::vector<std::uint8_t> y;
  for (Index j = 0; j < x.cols(); ++j) {
    Index a = 0;
    to->logits.col(j).maxCoeff(&a);
    y.push_back(static_cast<std::uint8_t>(a));
  }
  const std::vector<std::vector<Index>> assignment = {{0, 2, 4, 6, 8, 10, 12, 14}, {1, 3, 5, 7, 9, 11, 13, 15}};
  pt::StudentSpec spec;
  spec.width = 4;
  auto u = pt::make_unified_student<float>(Shape{1, 12, 12}, {8, 8}, 10, spec);
  REQUIRE(u.ok());
  pt::NonnTrainOptions o;
  o.epochs = 4;
  o.batch = 32;
  fleetdl::ThreadPool pool(2);
  auto r = pt::train_nonn(*u, teacher, assignment, x, y, o, &pool);
  REQUIRE(r.ok());
  INFO("loss " << r->epochs.front().loss << " -> " << r->epochs.back().loss);
  CHECK(r->epochs.back().loss < r->epochs.front().loss);
  // Deterministic with a pool too: the same seed and thread count, the same bits.
  auto again = pt::make_unified_student<float>(Shape{1, 12, 12}, {8, 8}, 10, spec);
  REQUIRE(again.ok());
  REQUIRE(pt::train_nonn(*again, teacher, assignment, x, y, o, &pool).ok());
  CHECK(Snapshot(u->body, u->head) == Snapshot(again->body, again->head));
  // The teacher cache (the default) gives the same training as computing the
  // teacher per batch, up to float rounding of the teacher's forward on
  // differently composed batches.
  pt::NonnTrainOptions per_batch = o;
  per_batch.cache_teacher = false;
  auto u_pb = pt::make_unified_student<float>(Shape{1, 12, 12}, {8, 8}, 10, spec);
  REQUIRE(u_pb.ok());
  auto r_pb = pt::train_nonn(*u_pb, teacher, assignment, x, y, per_batch, &pool);
  REQUIRE(r_pb.ok());
  REQUIRE(r_pb->epochs.size() == r->epochs.size());
  for (std::size_t e = 0; e < r->epochs.size(); ++e) {
    CHECK(r_pb->epochs[e].loss == Approx(r->epochs[e].loss).epsilon(1e-4));
    CHECK(r_pb->epochs[e].am_term == Approx(r->epochs[e].am_term).epsilon(1e-4));
  }
  CHECK((u_pb->body.params() - u->body.params()).cwiseAbs().maxCoeff() < 1e-3f);
  // a cache above the memory cap falls back to the per-batch path
  pt::NonnTrainOptions capped = o;
  capped.max_cache_bytes = 16;
  auto u_cap = pt::make_unified_student<float>(Shape{1, 12, 12}, {8, 8}, 10, spec);
  REQUIRE(u_cap.ok());
  REQUIRE(pt::train_nonn(*u_cap, teacher, assignment, x, y, capped, &pool).ok());
  CHECK(Snapshot(u_cap->body, u_cap->head) == Snapshot(u_pb->body, u_pb->head));
  // epochs = 0 is a valid no-op.
  const Snapshot before(u->body, u->head);
  o.epochs = 0;
  auto z = pt::train_nonn(*u, teacher, assignment, x, y, o, &pool);
  REQUIRE(z.ok());
  CHECK(z->epochs.empty());
  CHECK(Snapshot(u->body, u->head) == before);
}

TEST_CASE("nonn: train_nonn rejects bad input and changes nothing", "[partition][nonn]") {
  const Shape in{1, 12, 12};
  auto teacher = tiny_teacher<float>(4, in);
  Rng rng(3);
  const Matrix<float> x = random_matrix<float>(144, 10, rng, 0, 1);
  const std::vector<std::uint8_t> y = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  pt::StudentSpec spec;
  spec.width = 2;
  auto u = pt::make_unified_student<float>(in, {3, 2}, 10, spec);
  REQUIRE(u.ok());
  const std::vector<std::vector<Index>> good = {{0, 5, 9}, {2, 15}};
  auto other_input = pt::make_unified_student<float>(Shape{1, 16, 16}, {3, 2}, 10, spec);
  REQUIRE(other_input.ok());
  auto other_classes = pt::make_unified_student<float>(in, {3, 2}, 7, spec);
  REQUIRE(other_classes.ok());
  auto mlp = zoo<float>("lenet300_100");
  auto mlp12 = nn::make_model<float>("lenet300_100", in);
  REQUIRE(mlp12.ok());

  struct Case {
    const char* name;
    std::function<fleetdl::Result<pt::NonnTrainReport>()> run;
    Errc code;
    std::string text;
  };
  pt::NonnTrainOptions o;
  o.epochs = 1;
  o.batch = 4;
  auto with = [&](auto f) {
    pt::NonnTrainOptions c = o;
    f(c);
    return c;
  };
  std::vector<std::uint8_t> short_y(y.begin(), y.end() - 1);
  std::vector<std::uint8_t> big_y = y;
  big_y[4] = 10;
  const std::vector<Case> cases = {
      {"mismatched assignment sizes", [&] { return pt::train_nonn(*u, teacher, {{0, 5}, {2, 15, 9}}, x, y, o); },
       Errc::invalid_argument, "student 0 is assigned 2 teacher filters but outputs 3 features"},
      {"more students than branches", [&] { return pt::train_nonn(*u, teacher, {{0, 5, 9}, {2, 15}, {1}}, x, y, o); },
       Errc::invalid_argument, "the assignment has 3 students, the unified student 2"},
      {"filter index >= C", [&] { return pt::train_nonn(*u, teacher, {{0, 5, 16}, {2, 15}}, x, y, o); },
       Errc::invalid_argument, "filter 16, outside the teacher's C = 16 filters"},
      {"negative filter index", [&] { return pt::train_nonn(*u, teacher, {{0, -1, 9}, {2, 15}}, x, y, o); },
       Errc::invalid_argument, "filter -1"},
      {"filter in two students", [&] { return pt::train_nonn(*u, teacher, {{0, 5, 9}, {9, 15}}, x, y, o); },
       Errc::invalid_argument, "filter 9 is assigned twice"},
      {"N = 0", [&] { return pt::train_nonn(*u, teacher, {}, x, y, o); }, Errc::invalid_argument, "N = 0 students"},
      {"labels size mismatch", [&] { return pt::train_nonn(*u, teacher, good, x, short_y, o); },
       Errc::invalid_argument, "9 labels for 10 images"},
      {"label out of range", [&] { return pt::train_nonn(*u, teacher, good, x, big_y, o); }, Errc::invalid_argument,
       "label 10 of image 4"},
      {"no images", [&] { return pt::train_nonn(*u, teacher, good, Matrix<float>(144, 0), {}, o); },
       Errc::invalid_argument, "no training images"},
      {"image rows", [&] { return pt::train_nonn(*u, teacher, good, Matrix<float>(100, 10), y, o); },
       Errc::shape_mismatch, "images have 100 rows"},
      {"teacher without conv", [&] { return pt::train_nonn(*u, *mlp12, good, x, y, o); }, Errc::invalid_argument,
       "teacher has no conv layer"},
      {"teacher input differs", [&] { return pt::train_nonn(*other_input, teacher, good, x, y, o); },
       Errc::shape_mismatch, "the teacher takes 1x12x12, the students 1x16x16"},
      {"classes differ", [&] { return pt::train_nonn(*other_classes, teacher, good, x, y, o); },
       Errc::shape_mismatch, "the combiner 7 classes"},
      {"batch 0", [&] { return pt::train_nonn(*u, teacher, good, x, y, with([](auto& c) { c.batch = 0; })); },
       Errc::invalid_argument, "batch = 0"},
      {"alpha > 1",
       [&] { return pt::train_nonn(*u, teacher, good, x, y, with([](auto& c) { c.loss.alpha = 1.5; })); },
       Errc::invalid_argument, "alpha in [0, 1]"},
      {"temperature 0",
       [&] { return pt::train_nonn(*u, teacher, good, x, y, with([](auto& c) { c.loss.temperature = 0; })); },
       Errc::invalid_argument, "temperature > 0"},
      {"learning rate 0", [&] { return pt::train_nonn(*u, teacher, good, x, y, with([](auto& c) { c.sgd.lr = 0; })); },
       Errc::invalid_argument, "learning rate"},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    const Snapshot before(u->body, u->head, teacher);
    auto r = c.run();
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == c.code);
    CHECK_THAT(r.error().message, Contains(c.text) && Contains("train_nonn"));
    CHECK(Snapshot(u->body, u->head, teacher) == before);
  }
  // A body that is not one concat of students.
  pt::UnifiedStudent<float> wrong{zoo<float>("cnn1"), u->head};
  auto r = pt::train_nonn(wrong, teacher, good, x, y, o);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.error().message, Contains("one concat node"));
  CHECK_FALSE(pt::extract_student(wrong, 0).ok());
  CHECK_FALSE(pt::nonn_costs(wrong).ok());
  // And the good call works.
  CHECK(pt::train_nonn(*u, teacher, good, x, y, o).ok());
  (void)mlp;
}

}  // namespace
