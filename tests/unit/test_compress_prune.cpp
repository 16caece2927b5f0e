// tests/unit/test_compress_prune.cpp — compress/prune.hpp: exact per-layer and
// global magnitude sparsity with deterministic ties and untouched biases,
// masks that survive training (SGD with momentum and weight decay, Adam), the
// polynomial schedule at hand-computed steps, and structured filter/channel
// pruning on lenet5, cnn1, lenet300_100 and a conv-BN-ReLU chain: removed
// channels are the lowest-L1 ones, params and MACs drop by hand-computed
// amounts, and outputs equal the original with those channels zeroed.
#include "fleetdl/compress/prune.hpp"

#include "fleetdl/nn/zoo.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace {

namespace cz = fleetdl::compress;
namespace nn = fleetdl::nn;
using fleetdl::Errc;
using fleetdl::Index;
using fleetdl::Matrix;
using fleetdl::Rng;
using fleetdl::Shape;
using Model = nn::Model<float>;

Model zoo(const char* name, std::uint64_t seed = 1) {
  auto m = nn::make_model<float>(name);
  REQUIRE(m.ok());
  m->init(seed);
  return std::move(m).value();
}

Matrix<float> random_batch(Index rows, Index cols, std::uint64_t seed) {
  Rng rng(seed);
  Matrix<float> x(rows, cols);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(rng.normal());
  return x;
}

Matrix<float> eval(Model& m, const Matrix<float>& x) {
  nn::ExecContext<float> ctx{};
  return m.forward(x, ctx);
}

Index zeros(const float* p, Index n) {
  Index z = 0;
  for (Index i = 0; i < n; ++i) z += p[i] == 0.0f;
  return z;
}

Index total_macs(const Model& m) {
  Index s = 0;
  for (const auto& c : m.cost_report()) s += c.macs;
  return s;
}

/// Filter L1 norms of top-level conv/dense node i, computed independently.
std::vector<double> filter_l1(Model& m, Index node) {
  std::vector<fleetdl::nn::TensorRef<float>> ts;
  m.node(node).tensors("", ts);
  const Index rows = ts[0].dims[0], per = ts[0].size() / rows;
  std::vector<double> s(static_cast<std::size_t>(rows), 0.0);
  for (Index r = 0; r < rows; ++r)
    for (Index j = 0; j < per; ++j) s[static_cast<std::size_t>(r)] += std::fabs(ts[0].data[r * per + j]);
  return s;
}

std::vector<Index> lowest(const std::vector<double>& s, Index k) {
  std::vector<Index> o(s.size());
  std::iota(o.begin(), o.end(), Index{0});
  std::stable_sort(o.begin(), o.end(), [&](Index a, Index b) { return s[static_cast<std::size_t>(a)] < s[static_cast<std::size_t>(b)]; });
  o.resize(static_cast<std::size_t>(k));
  std::sort(o.begin(), o.end());
  return o;
}

/// Pruned output == original with the channels zeroed (to rounding).
void check_equivalence(const Model& original, const Model& pruned, Index layer, const std::vector<Index>& removed) {
  Model ref = original;
  REQUIRE(cz::zero_channels(ref, layer, removed).ok());
  Model p = pruned;
  const auto x = random_batch(ref.input_shape().size(), 5, 99);
  const Matrix<float> a = eval(ref, x), b = eval(p, x);
  REQUIRE(a.rows() == b.rows());
  const float scale = std::max(1.0f, a.cwiseAbs().maxCoeff());
  CHECK((a - b).cwiseAbs().maxCoeff() <= 2e-5f * scale);
  // And pruning really changed something relative to the unzeroed original.
  Model o = original;
  CHECK((eval(o, x) - b).cwiseAbs().maxCoeff() > 0.0f);
}

}  // namespace

TEST_CASE("magnitude pruning: exact per-layer sparsity, biases untouched", "[compress][prune]") {
  Model m = zoo("lenet300_100");
  const Model before = m;
  const auto mask = cz::magnitude_prune(m, 0.9, cz::PruneScope::per_layer);
  const auto ts = cz::prunable_tensors(m);
  REQUIRE(ts.size() == 3);
  CHECK(ts[0].name == "1.weight");
  const float* p = m.params().data();
  Index pruned_total = 0;
  for (const auto& t : ts) {
    const Index want = std::llround(0.9 * static_cast<double>(t.size));
    CHECK(zeros(p + t.offset, t.size) == want);
    pruned_total += want;
    // Every pruned |w| <= every kept |w| within the layer.
    float max_pruned = 0, min_kept = 1e30f;
    for (Index i = 0; i < t.size; ++i) {
      const float w0 = std::fabs(before.params()[t.offset + i]);
      if (p[t.offset + i] == 0.0f) max_pruned = std::max(max_pruned, w0);
      else min_kept = std::min(min_kept, w0);
    }
    CHECK(max_pruned <= min_kept);
  }
  CHECK(mask.pruned() == pruned_total);
  // Biases (and kept weights) are unchanged.
  for (Index i = 0; i < m.param_count(); ++i)
    if (mask.keep[static_cast<std::size_t>(i)]) CHECK(p[i] == before.params()[i]);
  for (const auto& t : Model(m).tensors())
    if (t.name.find("bias") != std::string::npos) CHECK(zeros(t.data, t.size()) == 0);
  // Sparsity report agrees.
  for (const auto& [name, s] : cz::sparsity_report(m)) CHECK(s == Approx(0.9).margin(1e-5));
}

TEST_CASE("magnitude pruning: global sparsity and deterministic ties", "[compress][prune]") {
  Model m = zoo("lenet300_100", 5);
  const Model before = m;
  cz::magnitude_prune(m, 0.8, cz::PruneScope::global);
  const auto ts = cz::prunable_tensors(m);
  Index n = 0, z = 0;
  for (const auto& t : ts) {
    n += t.size;
    z += zeros(m.params().data() + t.offset, t.size);
  }
  CHECK(z == std::llround(0.8 * static_cast<double>(n)));
  // Global: layers end up with different sparsities (wider fan-in, smaller weights).
  const auto rep = cz::sparsity_report(m);
  CHECK(rep[0].second > rep[2].second);

  // Ties: all |w| equal -> the earliest positions go first, every time.
  auto t = nn::Model<float>::create(Shape{4, 1, 1}, [] {
    std::vector<nn::NodePtr<float>> v;
    v.push_back(std::make_unique<nn::Dense<float>>(4, 2, false));
    return v;
  }());
  REQUIRE(t.ok());
  const float w[8] = {1, -1, 1, -1, -1, 1, -1, 1};
  std::copy(w, w + 8, t->params().data());
  cz::magnitude_prune(*t, 0.375);  // round(3) -> positions 0, 1, 2
  const float want[8] = {0, 0, 0, -1, -1, 1, -1, 1};
  for (int i = 0; i < 8; ++i) CHECK(t->params()[i] == want[i]);
  // s = 0 prunes nothing, s = 1 prunes every weight.
  Model a = zoo("cnn1");
  CHECK(cz::magnitude_prune(a, 0.0).pruned() == 0);
  CHECK(cz::magnitude_prune(a, 1.0, cz::PruneScope::global).pruned() == 108 + 20280);
}

TEST_CASE("magnitude pruning: masks survive training steps", "[compress][prune]") {
  Rng rng(3);
  const Index n = 96;
  Matrix<float> x = random_batch(28 * 28, n, 4);
  std::vector<std::uint8_t> y(static_cast<std::size_t>(n));
  for (auto& v : y) v = static_cast<std::uint8_t>(rng.below(10));
  for (int which = 0; which < 2; ++which) {
    Model m = zoo("lenet300_100");
    const auto mask = cz::magnitude_prune(m, 0.7, cz::PruneScope::global);
    const Model start = m;
    std::unique_ptr<nn::Optimizer<float>> opt;
    if (which == 0) {
      nn::SgdOptions so;
      so.lr = 0.05;
      so.momentum = 0.9;
      so.weight_decay = 1e-3;
      opt = std::make_unique<nn::Sgd<float>>(so);
    } else {
      nn::AdamOptions ao;
      opt = std::make_unique<nn::Adam<float>>(ao);
    }
    nn::TrainOptions to;
    to.epochs = 2;
    to.batch = 32;
    int batches = 0;
    nn::TrainCallbacks user;
    user.on_batch = [&](const nn::TrainProgress&) { ++batches; };
    auto hooks = cz::mask_hooks(m, mask, user);
    nn::train_classifier(m, *opt, x, y, to, nullptr, hooks.callbacks, hooks.before_step);
    CHECK(batches == 6);  // the user's callback still runs
    Index changed = 0;
    for (Index i = 0; i < m.param_count(); ++i) {
      if (!mask.keep[static_cast<std::size_t>(i)]) CHECK(m.params()[i] == 0.0f);
      else changed += m.params()[i] != start.params()[i];
    }
    CHECK(changed > m.param_count() / 4);  // training did move the kept weights
  }
}

TEST_CASE("polynomial schedule (Zhu & Gupta 2017)", "[compress][prune]") {
  cz::PolynomialSchedule s{0.5, 0.8, 10, 4, 5};
  CHECK(s.at(0) == 0.0);
  CHECK(s.at(9) == 0.0);
  CHECK(s.at(10) == Approx(0.5));
  CHECK(s.at(14) == Approx(0.5));                          // held between pruning steps
  CHECK(s.at(15) == Approx(0.8 - 0.3 * 0.421875));        // (3/4)^3
  CHECK(s.at(20) == Approx(0.8 - 0.3 * 0.125));           // (1/2)^3
  CHECK(s.at(25) == Approx(0.8 - 0.3 * 0.015625));        // (1/4)^3
  CHECK(s.at(30) == Approx(0.8));
  CHECK(s.at(1000) == Approx(0.8));
  CHECK(s.is_pruning_step(10));
  CHECK(s.is_pruning_step(30));
  CHECK_FALSE(s.is_pruning_step(31));
  CHECK_FALSE(s.is_pruning_step(35));
  CHECK_FALSE(s.is_pruning_step(12));

  // Gradual pruning in a training run ends at exactly s_f and keeps zeros.
  Model m = zoo("lenet300_100");
  Rng rng(8);
  Matrix<float> x = random_batch(28 * 28, 64, 9);
  std::vector<std::uint8_t> y(64);
  for (auto& v : y) v = static_cast<std::uint8_t>(rng.below(10));
  cz::GradualPruner<float> gp(m, cz::PolynomialSchedule{0.5, 0.8, 0, 3, 2});
  std::vector<double> seen;
  auto hooks = gp.hooks();
  hooks.callbacks.on_epoch = [&](const nn::EpochReport&) { seen.push_back(gp.sparsity()); };
  nn::SgdOptions so;
  so.lr = 0.02;
  so.momentum = 0.9;
  nn::Sgd<float> opt(so);
  nn::TrainOptions to;
  to.epochs = 4;
  to.batch = 32;
  nn::train_classifier(m, opt, x, y, to, nullptr, hooks.callbacks, hooks.before_step);
  CHECK(gp.step() == 8);
  for (const auto& [name, sp] : cz::sparsity_report(m)) CHECK(sp == Approx(0.8).margin(1e-4));
  for (Index i = 0; i < m.param_count(); ++i)
    if (!gp.mask().keep[static_cast<std::size_t>(i)]) CHECK(m.params()[i] == 0.0f);
}

TEST_CASE("structured pruning: lenet5 filters", "[compress][prune][structured]") {
  Model m = zoo("lenet5");
  CHECK(m.param_count() == 416 + 12832 + 200832 + 1290);
  CHECK(total_macs(m) == 313600 + 2508800 + 200704 + 1280);
  const auto want1 = lowest(filter_l1(m, 0), 4);

  cz::StructuredPruneReport rep;
  auto p = cz::prune_channels(m, 0, 4, cz::ChannelCriterion::filter_l1, &rep);
  REQUIRE(p.ok());
  CHECK(rep.removed == want1);
  // conv1 16->12 filters: 416 -> 312 params, 313600 -> 235200 MACs;
  // conv2 input 16->12 channels: 12832 -> 9632 params, 2508800 -> 1881600 MACs.
  CHECK(rep.params_before - rep.params_after == 104 + 3200);
  CHECK(rep.macs_before - rep.macs_after == 78400 + 627200);
  CHECK(p->param_count() == rep.params_after);
  CHECK(total_macs(*p) == rep.macs_after);
  const auto cr = p->cost_report();
  CHECK(cr[0].params == 312);
  CHECK(cr[0].macs == 235200);
  CHECK(cr[3].params == 9632);
  CHECK(cr[3].macs == 1881600);
  check_equivalence(m, *p, 0, rep.removed);

  // conv2 32->24 filters: the dense layer loses 8 * 7 * 7 inputs.
  auto q = cz::prune_channels(m, 3, 8, cz::ChannelCriterion::filter_l1, &rep);
  REQUIRE(q.ok());
  CHECK(rep.removed == lowest(filter_l1(m, 3), 8));
  CHECK(rep.params_before - rep.params_after == 3208 + 8 * 49 * 128);
  CHECK(rep.macs_before - rep.macs_after == 627200 + 8 * 49 * 128);
  CHECK(q->cost_report()[7].params == 24 * 49 * 128 + 128);
  check_equivalence(m, *q, 3, rep.removed);
}

TEST_CASE("structured pruning: cnn1 and lenet300_100", "[compress][prune][structured]") {
  Model m = zoo("cnn1");
  CHECK(m.param_count() == 120 + 20290);
  cz::StructuredPruneReport rep;
  auto p = cz::prune_channels(m, 0, 3, cz::ChannelCriterion::filter_l1, &rep);
  REQUIRE(p.ok());
  CHECK(rep.params_after == 90 + 9 * 169 * 10 + 10);
  CHECK(rep.macs_before == 12 * 676 * 9 + 20280);
  CHECK(rep.macs_after == 9 * 676 * 9 + 9 * 169 * 10);
  check_equivalence(m, *p, 0, rep.removed);

  // Channel criterion: the consumer's input slices decide.
  auto pc = cz::prune_channels(m, 0, 3, cz::ChannelCriterion::channel_l1, &rep);
  REQUIRE(pc.ok());
  std::vector<double> slice(12, 0.0);
  {
    std::vector<fleetdl::nn::TensorRef<float>> ts;
    m.node(4).tensors("", ts);
    for (Index o = 0; o < 10; ++o)
      for (Index c = 0; c < 12; ++c)
        for (Index j = 0; j < 169; ++j) slice[static_cast<std::size_t>(c)] += std::fabs(ts[0].data[o * 2028 + c * 169 + j]);
  }
  CHECK(rep.removed == lowest(slice, 3));
  check_equivalence(m, *pc, 0, rep.removed);

  // Dense units: lenet300_100 hidden layer 300 -> 200.
  Model l = zoo("lenet300_100");
  auto lp = cz::prune_channels(l, 1, 100, cz::ChannelCriterion::filter_l1, &rep);
  REQUIRE(lp.ok());
  CHECK(rep.params_before - rep.params_after == 100 * 785 + 100 * 100);
  CHECK(rep.macs_before - rep.macs_after == 100 * 784 + 100 * 100);
  check_equivalence(l, *lp, 1, rep.removed);
}

TEST_CASE("structured pruning: conv-BN-ReLU chain", "[compress][prune][structured]") {
  std::vector<nn::NodePtr<float>> v;
  v.push_back(std::make_unique<nn::Conv2D<float>>(3, 8, 3, 1, 1));
  v.push_back(std::make_unique<nn::BatchNorm<float>>(8));
  v.push_back(nn::relu<float>());
  v.push_back(std::make_unique<nn::Conv2D<float>>(8, 4, 3));
  v.push_back(std::make_unique<nn::BatchNorm<float>>(4));
  v.push_back(nn::relu<float>());
  v.push_back(std::make_unique<nn::GlobalAvgPool<float>>());
  v.push_back(std::make_unique<nn::Flatten<float>>());
  v.push_back(std::make_unique<nn::Dense<float>>(4, 2));
  auto mr = Model::create(Shape{3, 8, 8}, std::move(v));
  REQUIRE(mr.ok());
  Model m = std::move(mr).value();
  m.init(4);
  // Non-trivial BN statistics and affine parameters.
  Rng rng(12);
  for (Index node : {1, 4}) {
    auto& b = static_cast<nn::BatchNorm<float>&>(m.node(node));
    for (Index c = 0; c < b.channels(); ++c) {
      b.running_mean()[c] = static_cast<float>(rng.uniform(-0.2, 0.2));
      b.running_var()[c] = static_cast<float>(rng.uniform(0.5, 1.5));
      b.gamma()[c] = static_cast<float>(rng.uniform(0.5, 1.5));
      b.beta()[c] = static_cast<float>(rng.uniform(-0.1, 0.5));
    }
  }
  auto& bn = static_cast<nn::BatchNorm<float>&>(m.node(1));
  cz::StructuredPruneReport rep;
  auto p = cz::prune_channels(m, 0, 3, cz::ChannelCriterion::filter_l1, &rep);
  REQUIRE(p.ok());
  CHECK(rep.removed == lowest(filter_l1(m, 0), 3));
  // conv1: 3 * (27 + 1) params, 3 * 64 * 27 MACs; BN: 3 * 2 params (+6
  // buffers), 3 * 64 MACs; conv2: 4 * 3 * 9 params, 36 * 4 * 27 MACs.
  CHECK(rep.params_before - rep.params_after == 84 + 6 + 108);
  CHECK(rep.macs_before - rep.macs_after == 5184 + 192 + 3888);
  CHECK(p->buffer_count() == m.buffer_count() - 6);
  // BN entries of kept channels moved along.
  const auto& pbn = static_cast<const nn::BatchNorm<float>&>(p->node(1));
  const auto keep = cz::detail::kept(8, rep.removed);
  for (Index k = 0; k < 5; ++k) {
    CHECK(pbn.running_mean()[k] == bn.running_mean()[keep[static_cast<std::size_t>(k)]]);
    CHECK(pbn.gamma()[k] == bn.gamma()[keep[static_cast<std::size_t>(k)]]);
  }
  check_equivalence(m, *p, 0, rep.removed);

  // Requests that cannot be honoured.
  CHECK(cz::prune_channels(m, 8, 1).error().code == Errc::unsupported);   // output layer
  CHECK(cz::prune_channels(m, 1, 1).error().code == Errc::unsupported);   // not conv/dense
  CHECK(cz::prune_channels(m, 0, 8).error().code == Errc::invalid_argument);  // all channels
  CHECK(cz::remove_channels(m, 0, {2, 2}).error().code == Errc::invalid_argument);
  CHECK(cz::remove_channels(m, 0, {9}).error().code == Errc::invalid_argument);
}
