// fleetdl/compress/cluster.hpp — k-means weight sharing (Han et al. 2016,
// "Deep Compression", §3): per-layer 1-D k-means over the non-zero weights with
// linear initialisation, and centroid fine-tuning.
//
// Linear initialisation: centroid j = min + j * (max - min) / (k - 1) over the
// layer's non-zero weights (Han et al. found it beats random and density-based
// initialisation because it keeps the rare large weights). k = 1 gives the
// midpoint. Lloyd iterations: each weight goes to the nearest centroid (a tie
// at a midpoint goes to the smaller centroid value; equal centroids to the
// lower index), each centroid becomes the mean of its weights (accumulated in
// double, in index order); an empty cluster keeps its centroid. Stops when no
// assignment changes or after max_iter iterations.
//
// Weights exactly zero are "pruned": they belong to no cluster and stay zero.
//
// Centroid fine-tuning (Han et al. eq. 3): dL/dc_k = sum over weights i
// assigned to k of dL/dW_i. ClusterFineTuner applies it inside
// nn::train_classifier: before the optimizer step it collects the centroid
// gradients and zeroes the weights' own gradients (so the optimizer leaves
// them), after the step it moves every centroid by -lr * grad (plain SGD on
// the codebook) and rewrites the shared weights.
#pragma once

#include "fleetdl/compress/prune.hpp"
#include "fleetdl/core/error.hpp"
#include "fleetdl/nn/model.hpp"
#include "fleetdl/nn/train.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

namespace fleetdl::compress {

/// Result of clustering one tensor.
template <class S>
struct Codebook {
  std::vector<S> centroids;            ///< k shared values
  std::vector<std::int32_t> assign;    ///< per weight: centroid index, -1 = pruned (zero)
  int iterations = 0;                  ///< Lloyd iterations run
  bool converged = false;              ///< assignments stopped changing
};

/// Linear initialisation over the non-zero values of w[0..n).
template <class S>
std::vector<S> linear_init(const S* w, Index n, int k) {
  FLEETDL_ASSERT(k >= 1, "linear_init: k must be >= 1");
  double lo = 0, hi = 0;
  bool any = false;
  for (Index i = 0; i < n; ++i) {
    if (w[i] == S(0)) continue;
    const double v = static_cast<double>(w[i]);
    if (!any) lo = hi = v;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    any = true;
  }
  std::vector<S> c(static_cast<std::size_t>(k));
  if (k == 1) {
    c[0] = static_cast<S>((lo + hi) / 2);
    return c;
  }
  for (int j = 0; j < k; ++j) c[static_cast<std::size_t>(j)] = static_cast<S>(lo + (hi - lo) * j / (k - 1));
  return c;
}

namespace detail {
/// Nearest-centroid assignment through a sorted copy of the centroids.
template <class S>
struct NearestCentroid {
  std::vector<std::pair<S, std::int32_t>> sorted;
  explicit NearestCentroid(const std::vector<S>& c) {
    for (std::size_t j = 0; j < c.size(); ++j) sorted.emplace_back(c[j], static_cast<std::int32_t>(j));
    std::sort(sorted.begin(), sorted.end());
  }
  std::int32_t operator()(S v) const {
    const auto first_not_below = [&](S x) {
      return std::lower_bound(sorted.begin(), sorted.end(), x, [](const auto& a, S y) { return a.first < y; });
    };
    auto it = first_not_below(v);
    if (it == sorted.begin()) return it->second;
    // The leftmost entry of the lower value's run: equal centroids -> lowest index.
    const auto lo = first_not_below((it - 1)->first);
    if (it == sorted.end()) return lo->second;
    const double dl = static_cast<double>(v) - static_cast<double>(lo->first);
    const double dh = static_cast<double>(it->first) - static_cast<double>(v);
    return dh < dl ? it->second : lo->second;
  }
};
}  // namespace detail

/// 1-D k-means of the non-zero values of w[0..n) (linear init, Lloyd).
template <class S>
Codebook<S> kmeans_1d(const S* w, Index n, int k, int max_iter = 100) {
  Codebook<S> cb;
  cb.centroids = linear_init(w, n, k);
  cb.assign.assign(static_cast<std::size_t>(n), -1);
  for (int it = 0; it < max_iter; ++it) {
    const detail::NearestCentroid<S> near(cb.centroids);
    bool changed = false;
    for (Index i = 0; i < n; ++i) {
      if (w[i] == S(0)) continue;
      const std::int32_t a = near(w[i]);
      if (a != cb.assign[static_cast<std::size_t>(i)]) {
        cb.assign[static_cast<std::size_t>(i)] = a;
        changed = true;
      }
    }
    cb.iterations = it + 1;
    if (!changed && it > 0) {
      cb.converged = true;
      break;
    }
    std::vector<double> sum(static_cast<std::size_t>(k), 0.0);
    std::vector<Index> cnt(static_cast<std::size_t>(k), 0);
    for (Index i = 0; i < n; ++i) {
      const std::int32_t a = cb.assign[static_cast<std::size_t>(i)];
      if (a < 0) continue;
      sum[static_cast<std::size_t>(a)] += static_cast<double>(w[i]);
      ++cnt[static_cast<std::size_t>(a)];
    }
    for (int j = 0; j < k; ++j)
      if (cnt[static_cast<std::size_t>(j)] > 0)
        cb.centroids[static_cast<std::size_t>(j)] =
            static_cast<S>(sum[static_cast<std::size_t>(j)] / static_cast<double>(cnt[static_cast<std::size_t>(j)]));
    if (!changed) {  // first iteration with nothing assigned (all zero)
      cb.converged = true;
      break;
    }
  }
  return cb;
}

/// Write the shared values back: w[i] = centroid[assign[i]], pruned -> 0.
template <class S>
void apply_codebook(const Codebook<S>& cb, S* w) {
  for (std::size_t i = 0; i < cb.assign.size(); ++i)
    w[i] = cb.assign[i] < 0 ? S(0) : cb.centroids[static_cast<std::size_t>(cb.assign[i])];
}

/// dL/dc_j = sum of dL/dW_i over the weights assigned to j (Han et al. eq. 3),
/// accumulated in double in index order.
template <class S>
std::vector<S> centroid_gradients(const Codebook<S>& cb, const S* grad) {
  std::vector<double> g(cb.centroids.size(), 0.0);
  for (std::size_t i = 0; i < cb.assign.size(); ++i)
    if (cb.assign[i] >= 0) g[static_cast<std::size_t>(cb.assign[i])] += static_cast<double>(grad[i]);
  std::vector<S> out(g.size());
  for (std::size_t j = 0; j < g.size(); ++j) out[j] = static_cast<S>(g[j]);
  return out;
}

/// Codebooks of a model's prunable tensors (conv and dense weights).
template <class S>
struct ClusteredModel {
  std::vector<PrunableTensor> tensors;
  std::vector<Codebook<S>> codebooks;
};

/// Cluster every conv/dense weight tensor into k shared values (a tensor with
/// fewer than k non-zero weights keeps its k centroids; some stay unused) and
/// write the shared values into the model.
template <class S>
ClusteredModel<S> cluster_model(nn::Model<S>& m, int k, int max_iter = 100) {
  ClusteredModel<S> cm;
  cm.tensors = prunable_tensors(m);
  S* p = m.params().data();
  for (const auto& t : cm.tensors) {
    cm.codebooks.push_back(kmeans_1d(p + t.offset, t.size, k, max_iter));
    apply_codebook(cm.codebooks.back(), p + t.offset);
  }
  return cm;
}

/// Centroid fine-tuning inside nn::train_classifier (see the file comment).
template <class S>
class ClusterFineTuner {
 public:
  ClusterFineTuner(nn::Model<S>& model, ClusteredModel<S>& clusters, double lr)
      : model_(&model), cm_(&clusters), lr_(lr) {}

  /// Collect centroid gradients and stop the optimizer from moving weights.
  void before_step(nn::Model<S>& m) {
    grads_.clear();
    S* g = m.grads().data();
    for (std::size_t t = 0; t < cm_->tensors.size(); ++t) {
      const auto& pt = cm_->tensors[t];
      grads_.push_back(centroid_gradients(cm_->codebooks[t], g + pt.offset));
      std::fill(g + pt.offset, g + pt.offset + pt.size, S(0));
    }
  }
  /// c -= lr * dL/dc, then rewrite the shared weights.
  void after_step() {
    S* p = model_->params().data();
    for (std::size_t t = 0; t < cm_->tensors.size() && t < grads_.size(); ++t) {
      auto& cb = cm_->codebooks[t];
      for (std::size_t j = 0; j < cb.centroids.size(); ++j)
        cb.centroids[j] = static_cast<S>(static_cast<double>(cb.centroids[j]) - lr_ * static_cast<double>(grads_[t][j]));
      apply_codebook(cb, p + cm_->tensors[t].offset);
    }
  }
  /// before_step and callbacks for train_classifier (this object must outlive the run).
  MaskHooks<S> hooks(nn::TrainCallbacks user = {}) {
    MaskHooks<S> h;
    h.before_step = [this](nn::Model<S>& m) { before_step(m); };
    h.callbacks = user;
    h.callbacks.on_batch = [this, f = std::move(user.on_batch)](const nn::TrainProgress& pr) {
      after_step();
      if (f) f(pr);
    };
    return h;
  }

 private:
  nn::Model<S>* model_;
  ClusteredModel<S>* cm_;
  double lr_;
  std::vector<std::vector<S>> grads_;
};

}  // namespace fleetdl::compress
