// fleetdl/partition/filter_graph.hpp — the NoNN filter activation graph
// (filter_graph) and numpy's default percentile (percentile_linear).
//
// Source: Bhardwaj, Lin, Marculescu, "Memory- and communication-aware model
// compression for distributed deep learning inference on IoT" (NoNN), ACM
// TECS 2019, arXiv 1907.11804, §3; the public code's ActivationNetwork.
//
// Input: an images x C matrix of the teacher's last conv block activations
// (after BN + ReLU), global-average-pooled: row r is a in R^C for image r.
// For each image:
//   a <- max(a, 0);  a <- a / max(a)       (an all-zero row adds nothing)
//   T <- the k filters with the largest a  (ties: lower filter index first)
//   for every pair j < l in T: W[j,l] += a_j a_l |a_j - a_l|   (W symmetric)
// Then W <- W / max(W) and an edge (j, l) is kept iff W[j,l] >= t, where t is
// the p-th percentile (percentile_linear) of the NON-ZERO ENTRIES OF THE
// SYMMETRIC C x C MATRIX W — each undirected weight appears twice, exactly as
// np.percentile(W[W != 0], p) in the public code (duplicating every value can
// move a linear-interpolated percentile, so this matters). If W is all zero
// the graph has no edges and the threshold is reported as 0.
//
// Output: a Graph (louvain.hpp) with all C filters as nodes (filters without
// a kept edge are isolated nodes, as nx.from_numpy_matrix makes them in the
// public code, and become singleton communities) and the kept edges with their
// normalised weights in (0, 1].
//
// Differences from the public code, on purpose: its top-k comes from a
// reversed np.argsort, whose tie order is unspecified (quicksort); here ties
// go to the lower filter index. An all-zero activation row makes the public
// code divide by zero (NaN that poisons W); here the row is skipped and
// counted in FilterGraph::images_skipped. Arithmetic is in double whatever S is.
//
// Memory: W is accumulated as a dense upper triangle of C(C-1)/2 doubles
// (256 filters: 261 kB; 2048: 17 MB), capped by FilterGraphOptions::max_filters.
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/core/tensor.hpp"
#include "fleetdl/partition/louvain.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace fleetdl::partition {

/// The p-th percentile (p in [0, 100]) of `values` by linear interpolation
/// between closest ranks — numpy's default (method='linear', R type 7):
/// sort v ascending, h = (n - 1) * (p / 100), lo = floor(h), hi = min(lo + 1,
/// n - 1), t = h - lo, result = v[lo] + (v[hi] - v[lo]) * t for t < 0.5 and
/// v[hi] - (v[hi] - v[lo]) * (1 - t) for t >= 0.5 (numpy's _lerp, which is
/// exact at both ends). Preconditions (asserted): values non-empty, p in range.
inline double percentile_linear(std::vector<double> values, double p) {
  FLEETDL_ASSERT(!values.empty(), "percentile_linear: no values");
  FLEETDL_ASSERT(p >= 0.0 && p <= 100.0, "percentile_linear: p outside [0, 100]");
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  const double h = static_cast<double>(n - 1) * (p / 100.0);
  double lo_f = std::floor(h);
  if (lo_f > static_cast<double>(n - 1)) lo_f = static_cast<double>(n - 1);
  const auto lo = static_cast<std::size_t>(lo_f);
  const std::size_t hi = std::min(lo + 1, n - 1);
  const double t = h - lo_f;
  const double a = values[lo], b = values[hi];
  const double d = b - a;
  return t >= 0.5 ? b - d * (1.0 - t) : a + d * t;
}

struct FilterGraphOptions {
  /// Filters kept per image; unset means max(1, C / 5) (NoNN: 50 of 256).
  std::optional<Index> k;
  /// Percentile of the non-zero weights below which edges are dropped.
  double p = 99.0;
  /// Largest C accepted (the triangle of W costs C(C-1)/2 doubles).
  Index max_filters = 8192;
};

struct FilterGraph {
  Graph graph;                ///< C nodes, the kept edges (weights normalised to (0, 1])
  Index filters = 0;          ///< C
  Index images = 0;           ///< rows of the input
  Index images_skipped = 0;   ///< all-zero rows (after the clamp), which add nothing
  Index k = 0;                ///< top-k used
  double p = 0.0;             ///< percentile used
  double max_weight = 0.0;    ///< max(W) before normalisation (0: no edges)
  double threshold = 0.0;     ///< t, on the normalised scale
  Index nonzero_pairs = 0;    ///< pairs j < l with W[j,l] > 0
};

namespace detail::fgraph {
inline std::string num(double x) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}
}  // namespace detail::fgraph

/// Builds the NoNN filter graph from an images x C activation matrix (any
/// Eigen expression with float or double scalars). Errors
/// (Errc::invalid_argument): empty matrix, a non-finite activation, k
/// outside [1, C], p outside [0, 100]; Errc::limit_exceeded: C > max_filters.
template <class Derived>
Result<FilterGraph> filter_graph(const Eigen::MatrixBase<Derived>& activations, const FilterGraphOptions& opt = {}) {
  using S = typename Derived::Scalar;
  static_assert(std::is_floating_point_v<S>, "filter_graph: activations must be float or double");
  using detail::fgraph::num;
  const Index rows = activations.rows(), C = activations.cols();
  if (rows < 1 || C < 1)
    return make_error(Errc::invalid_argument, "filter_graph: activation matrix is empty (" + std::to_string(rows) +
                                                  " images x " + std::to_string(C) +
                                                  " filters); need at least one image and one filter");
  if (C > opt.max_filters)
    return make_error(Errc::limit_exceeded, "filter_graph: C = " + std::to_string(C) + " filters is above max_filters = " +
                                                std::to_string(opt.max_filters) + " (W needs C(C-1)/2 doubles)");
  const Index k = opt.k ? *opt.k : std::max<Index>(1, C / 5);
  if (k < 1 || k > C)
    return make_error(Errc::invalid_argument, "filter_graph: k = " + std::to_string(k) +
                                                  " top filters per image is outside [1, C = " + std::to_string(C) + "]");
  if (!std::isfinite(opt.p) || opt.p < 0.0 || opt.p > 100.0)
    return make_error(Errc::invalid_argument,
                      "filter_graph: p = " + num(opt.p) + " is outside [0, 100] (percentile of non-zero edge weights)");
  for (Index c = 0; c < C; ++c)
    for (Index r = 0; r < rows; ++r)
      if (!std::isfinite(static_cast<double>(activations(r, c))))
        return make_error(Errc::invalid_argument, "filter_graph: activation of image " + std::to_string(r) +
                                                      ", filter " + std::to_string(c) + " is " +
                                                      num(static_cast<double>(activations(r, c))) + " (not finite)");

  FilterGraph out;
  out.filters = C;
  out.images = rows;
  out.k = k;
  out.p = opt.p;

  const auto Cs = static_cast<std::size_t>(C);
  // Upper triangle, row-major: (j, l), j < l, at j*C - j(j+1)/2 + (l - j - 1).
  auto tri = [Cs](std::size_t j, std::size_t l) { return j * Cs - j * (j + 1) / 2 + (l - j - 1); };
  std::vector<double> W(Cs * (Cs - 1) / 2, 0.0);
  std::vector<double> a(Cs);
  std::vector<Index> idx(Cs);
  std::vector<std::size_t> top(static_cast<std::size_t>(k));
  for (Index r = 0; r < rows; ++r) {
    double mx = 0.0;
    for (std::size_t c = 0; c < Cs; ++c) {
      a[c] = std::max(static_cast<double>(activations(r, static_cast<Index>(c))), 0.0);
      mx = std::max(mx, a[c]);
    }
    if (!(mx > 0.0)) {
      ++out.images_skipped;
      continue;
    }
    for (auto& x : a) x /= mx;
    std::iota(idx.begin(), idx.end(), Index{0});
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&a](Index x, Index y) {
      const double ax = a[static_cast<std::size_t>(x)], ay = a[static_cast<std::size_t>(y)];
      return ax != ay ? ax > ay : x < y;
    });
    for (std::size_t t = 0; t < top.size(); ++t) top[t] = static_cast<std::size_t>(idx[t]);
    std::sort(top.begin(), top.end());
    for (std::size_t s = 0; s < top.size(); ++s)
      for (std::size_t t = s + 1; t < top.size(); ++t) {
        const double aj = a[top[s]], al = a[top[t]];
        W[tri(top[s], top[t])] += aj * al * std::abs(aj - al);
      }
  }

  double wmax = 0.0;
  for (const double w : W) wmax = std::max(wmax, w);
  std::vector<Edge> edges;
  if (wmax > 0.0) {
    std::vector<double> nz;
    for (auto& w : W)
      if (w > 0.0) {
        w /= wmax;
        nz.push_back(w);
        nz.push_back(w);  // W[j,l] and W[l,j], as np.percentile(W[W != 0], p)
      }
    out.nonzero_pairs = static_cast<Index>(nz.size() / 2);
    out.threshold = percentile_linear(std::move(nz), opt.p);
    for (std::size_t j = 0; j + 1 < Cs; ++j)
      for (std::size_t l = j + 1; l < Cs; ++l) {
        const double w = W[tri(j, l)];
        if (w > 0.0 && w >= out.threshold) edges.push_back({static_cast<Index>(j), static_cast<Index>(l), w});
      }
  }
  out.max_weight = wmax;
  auto g = Graph::from_edges(C, std::move(edges));
  if (!g) return std::move(g).error();
  out.graph = std::move(g).value();
  return out;
}

}  // namespace fleetdl::partition
