// tests/unit/test_compress_cluster.cpp — compress/cluster.hpp: linear
// initialisation values, nearest-centroid assignments and convergence on a
// hand-made 1-D set, centroid gradients as sums of member gradients, pruned
// weights staying out of clusters, k distinct values per layer, and centroid
// fine-tuning inside train_classifier.
#include "fleetdl/compress/cluster.hpp"

#include "fleetdl/nn/zoo.hpp"

#include <catch2/catch.hpp>

#include <set>
#include <vector>

namespace {

namespace cz = fleetdl::compress;
namespace nn = fleetdl::nn;
using fleetdl::Index;
using fleetdl::Matrix;
using fleetdl::Rng;

}  // namespace

TEST_CASE("k-means: linear initialisation", "[compress][cluster]") {
  // Non-zero min -2, max 6: k = 5 -> -2, 0, 2, 4, 6; zeros are ignored.
  const float w[] = {0.0f, 6.0f, -2.0f, 0.0f, 1.0f, 3.0f};
  CHECK(cz::linear_init(w, 6, 5) == std::vector<float>{-2, 0, 2, 4, 6});
  CHECK(cz::linear_init(w, 6, 1) == std::vector<float>{2});
  CHECK(cz::linear_init(w, 6, 2) == std::vector<float>{-2, 6});
}

TEST_CASE("k-means: assignments and convergence on a 1-D set", "[compress][cluster]") {
  // Two groups around 1 and 10; init 1 and 11 (min/max).
  const float w[] = {1.0f, 2.0f, 3.0f, 0.0f, 9.0f, 10.0f, 11.0f};
  auto cb = cz::kmeans_1d(w, 7, 2);
  CHECK(cb.converged);
  CHECK(cb.iterations == 2);  // the second pass changes nothing
  CHECK(cb.centroids == std::vector<float>{2.0f, 10.0f});
  CHECK(cb.assign == std::vector<std::int32_t>{0, 0, 0, -1, 1, 1, 1});

  // Init 0.5, 1.375, 2.25, 3.125, 4 over {0.5, 4, 1.5, 2.5}: each weight
  // goes to its nearest centroid.
  const float v[] = {0.5f, 4.0f, 1.5f, 2.5f};
  const auto c2 = cz::kmeans_1d(v, 4, 5, 1);
  CHECK(c2.assign == std::vector<std::int32_t>{0, 4, 1, 2});
  // One iteration: the means 0.5, 1.5, 2.5, (empty cluster 3 keeps 3.125), 4.
  const float lo = 0.5f, hi = 4.0f;
  const float step = (hi - lo) / 4;
  CHECK(c2.centroids == std::vector<float>{0.5f, 1.5f, 2.5f, lo + 3 * step, 4.0f});

  // A weight exactly between two centroids goes to the smaller one.
  const float t[] = {1, 2, 3};
  CHECK(cz::kmeans_1d(t, 3, 2, 1).assign == std::vector<std::int32_t>{0, 0, 1});

  // {1, 2, 6, 7, 8}, k = 2, init {1, 8}: midpoint 4.5 splits {1, 2} from
  // {6, 7, 8}; means 1.5 and 7; the next pass changes nothing.
  const float u[] = {1, 2, 6, 7, 8};
  const auto c3 = cz::kmeans_1d(u, 5, 2);
  CHECK(c3.centroids == std::vector<float>{1.5f, 7.0f});
  CHECK(c3.assign == std::vector<std::int32_t>{0, 0, 1, 1, 1});
  CHECK(c3.converged);
}

TEST_CASE("k-means: centroid gradient is the sum of member gradients", "[compress][cluster]") {
  const float w[] = {1.0f, 0.0f, 1.2f, 5.0f, 5.1f, 0.9f};
  const auto cb = cz::kmeans_1d(w, 6, 2);
  REQUIRE(cb.assign == std::vector<std::int32_t>{0, -1, 0, 1, 1, 0});
  const float g[] = {0.5f, 100.0f, -0.25f, 2.0f, 3.0f, 1.0f};
  const auto cg = cz::centroid_gradients(cb, g);
  CHECK(cg == std::vector<float>{0.5f - 0.25f + 1.0f, 5.0f});  // the pruned weight's gradient is ignored
}

TEST_CASE("k-means: clustered layers take only k values, zeros stay zero", "[compress][cluster]") {
  auto m = nn::make_model<float>("lenet300_100");
  REQUIRE(m.ok());
  m->init(3);
  cz::magnitude_prune(*m, 0.9);
  const fleetdl::nn::Model<float> pruned = *m;
  auto cm = cz::cluster_model(*m, 16, 30);
  REQUIRE(cm.tensors.size() == 3);
  for (std::size_t t = 0; t < cm.tensors.size(); ++t) {
    const auto& pt = cm.tensors[t];
    std::set<float> vals;
    for (Index i = 0; i < pt.size; ++i) {
      const float v = m->params()[pt.offset + i];
      if (pruned.params()[pt.offset + i] == 0.0f) CHECK(v == 0.0f);
      else vals.insert(v);
    }
    CHECK(vals.size() <= 16);
    // Uniform init pruned to 90% leaves two narrow bands +-[0.9b, b]: linear
    // init puts only a couple of the 16 centroids into each band and the
    // empty ones keep their place (Lloyd), so few values are used.
    CHECK(vals.size() >= 2);
  }
}

TEST_CASE("k-means: centroid fine-tuning in train_classifier", "[compress][cluster]") {
  auto mr = nn::make_model<float>("lenet300_100");
  REQUIRE(mr.ok());
  auto& m = *mr;
  m.init(4);
  cz::magnitude_prune(m, 0.9);
  auto cm = cz::cluster_model(m, 8, 20);
  const auto before = cm.codebooks;
  Rng rng(5);
  Matrix<float> x(784, 64);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(rng.normal());
  std::vector<std::uint8_t> y(64);
  for (auto& v : y) v = static_cast<std::uint8_t>(rng.below(10));
  cz::ClusterFineTuner<float> ft(m, cm, 0.01);
  auto h = ft.hooks();
  nn::SgdOptions so;
  so.lr = 0.05;
  so.momentum = 0.9;
  so.weight_decay = 1e-4;
  nn::Sgd<float> opt(so);
  nn::TrainOptions to;
  to.epochs = 2;
  to.batch = 32;
  nn::train_classifier(m, opt, x, y, to, nullptr, h.callbacks, h.before_step);
  bool moved = false;
  for (std::size_t t = 0; t < cm.tensors.size(); ++t) {
    moved = moved || cm.codebooks[t].centroids != before[t].centroids;
    const auto& pt = cm.tensors[t];
    std::set<float> vals;
    Index zero = 0;
    for (Index i = 0; i < pt.size; ++i) {
      const float v = m.params()[pt.offset + i];
      const auto a = cm.codebooks[t].assign[static_cast<std::size_t>(i)];
      if (a < 0) zero += v == 0.0f;
      else vals.insert(v);
      if (a >= 0 && v != cm.codebooks[t].centroids[static_cast<std::size_t>(a)]) FAIL("weight is not its centroid");
    }
    CHECK(vals.size() <= 8);
    CHECK(zero == std::count(cm.codebooks[t].assign.begin(), cm.codebooks[t].assign.end(), -1));
  }
  CHECK(moved);
}
