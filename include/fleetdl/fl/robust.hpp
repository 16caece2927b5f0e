// fleetdl/fl/robust.hpp — Byzantine-robust aggregation rules, as free
// functions over a round's updates (returning the aggregate) and as
// Strategy classes with Flower's FedAvg configure_fit (FedAvgOptions,
// fedavg.hpp; at least min_updates() clients are sampled):
//
//   coordinate_median / FedMedian     coordinate-wise median (Yin et al., "Byzantine-
//                                     robust distributed learning: towards optimal
//                                     statistical rates", ICML 2018); even counts take
//                                     the mean of the two middle values (numpy, Flower)
//   trimmed_mean / FedTrimmedAvg      coordinate-wise beta-trimmed mean (Yin et al. 2018);
//                                     cuts floor(beta n) from each end (scipy trim_mean,
//                                     Flower FedTrimmedAvg, beta = 0.2)
//   krum, multi_krum / Krum           Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine
//                                     learning with adversaries: Byzantine tolerant
//                                     gradient descent", NeurIPS 2017 (Flower's Krum)
//   bulyan / Bulyan                   El Mhamdi, Guerraoui, Rouault, "The hidden
//                                     vulnerability of distributed learning in
//                                     Byzantium", ICML 2018
//   pairwise_sq_distances             all squared L2 distances from one Gram matrix
//
// Bounds (n updates, f of them Byzantine), each refused with an error naming
// the rule and the numbers: median f < n/2; trimmed mean beta < 1/2 and
// floor(beta n) >= f (i.e. beta >= f/n); Krum n > 2f + 2 and 1 <= m <= n - f;
// Bulyan n >= 4f + 3 (theta = n - 2f selected by repeated Krum, beta = theta - 2f
// averaged per coordinate around the median).
//
// Known weak spots — reported, not hidden. These rules bound the damage of
// updates that are FAR from the honest ones; attackers who stay inside the
// honest spread are not stopped:
//  * "A little is enough" (Baruch, Baruch, Goldberg, NeurIPS 2019): the f
//    attackers all send mean - z * std per coordinate with a small z; they look
//    like the most central clients, so Krum/Bulyan select them and median/
//    trimmed mean shift by up to z std per coordinate, every round, in the
//    same direction — enough to stall or backdoor training.
//  * Inner-product manipulation (Xie, Koyejo, Gupta, "Fall of empires", UAI
//    2019): attackers send -eps * (honest mean); for small eps the rules above
//    still accept them, and the aggregate's inner product with the true
//    gradient can be driven negative when the honest variance is large.
//  * Non-IID honest clients are spread out, so robust rules also discard
//    honest minorities (a fairness cost) and converge slower than FedAvg.
//
// Design notes:
//  * Distances come from ONE Gram matrix G = C^T C of the stacked, centred
//    parameters (d^2_ij = G_ii + G_jj - 2 G_ij, clamped at 0): a single GEMM
//    instead of n^2 passes over the d coordinates. C is the stack minus its
//    coordinate-wise median; the shift leaves distances unchanged but avoids
//    the cancellation of G_ii + G_jj - 2 G_ij when all vectors share a large
//    common part (a float model far from the origin).
//  * Per-coordinate rules run on the n x d transposed stack (one coordinate's
//    n values contiguous) with nth_element — O(n d), no per-layer loops.
//    Sums are taken in double and cast back.
//  * Ties are broken towards the lower position in `updates` (as numpy's
//    argmin in Flower): Krum with k = 1 neighbour always ties the two members
//    of the closest pair, so this rule is what makes the result defined.
//    Bulyan's "closest to the median" ties break towards the smaller value.
//  * Multi-Krum averages the m selected updates weighted by num_examples as
//    Flower does (Weighting::examples) or uniformly as Blanchard et al.
//    (Weighting::uniform). Either way the result is a convex combination of
//    selected updates, so attacker-reported example counts cannot push it
//    outside them.
//  * Errors never modify anything: the free functions take const input and the
//    strategies leave `global` unchanged.
//  * The free functions take std::span<const ClientUpdate<S>>; from a
//    std::vector name the scalar type: fl::krum<float>(updates, f).
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/core/rng.hpp"
#include "fleetdl/core/tensor.hpp"
#include "fleetdl/fl/fedavg.hpp"
#include "fleetdl/fl/strategy.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace fleetdl::fl {

/// How Multi-Krum averages its m selected updates.
enum class Weighting {
  examples,  ///< weighted by num_examples (Flower's aggregate())
  uniform,   ///< plain mean (Blanchard et al. 2017)
};

namespace detail::robust {

inline std::string num(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", x);
  return buf;
}
inline std::string num(Index x) { return std::to_string(x); }

/// Common input checks: non-empty, one dimension > 0, all finite (and
/// positive example counts when `need_examples`). Returns n.
template <class S>
Result<Index> check_input(const std::string& rule, std::span<const ClientUpdate<S>> updates, bool need_examples) {
  if (updates.empty()) return make_error(Errc::invalid_argument, rule + ": no updates to aggregate");
  const Index d = updates[0].params.size();
  if (d == 0)
    return make_error(Errc::invalid_argument, rule + ": update 0 (client " + num(updates[0].client) +
                                                  ") has an empty parameter vector");
  for (std::size_t i = 1; i < updates.size(); ++i)
    if (updates[i].params.size() != d)
      return make_error(Errc::shape_mismatch, rule + ": update " + std::to_string(i) + " (client " +
                                                  num(updates[i].client) + ") has " + num(updates[i].params.size()) +
                                                  " parameters, update 0 has " + num(d));
  auto checked = fl::detail::check_updates<S>(rule, d, updates, need_examples);
  if (!checked) return std::move(checked).error();
  return static_cast<Index>(updates.size());
}

inline Result<void> check_f(const std::string& rule, Index f) {
  if (f < 0) return make_error(Errc::invalid_argument, rule + ": f = " + num(f) + " Byzantine clients is negative");
  return success();
}

/// n x d: row i = update i, so column j holds coordinate j of every update
/// contiguously (what nth_element per coordinate wants).
template <class S>
Matrix<S> stack_rows(std::span<const ClientUpdate<S>> updates, const std::vector<Index>* pick = nullptr) {
  const Index n = pick ? static_cast<Index>(pick->size()) : static_cast<Index>(updates.size());
  const Index d = updates[0].params.size();
  Matrix<S> t(n, d);
  for (Index i = 0; i < n; ++i) {
    const auto src = pick ? (*pick)[static_cast<std::size_t>(i)] : i;
    t.row(i) = updates[static_cast<std::size_t>(src)].params.transpose();
  }
  return t;
}

/// Median of v[0..n) (reorders v); even n: mean of the two middle values.
template <class S>
double median_inplace(S* v, Index n) {
  const Index h = n / 2;
  std::nth_element(v, v + h, v + n);
  const double hi = static_cast<double>(v[h]);
  if (n % 2 == 1) return hi;
  const double lo = static_cast<double>(*std::max_element(v, v + h));
  return 0.5 * (lo + hi);
}

/// Coordinate-wise median of the columns of an n x d matrix (reorders it).
template <class S>
Vector<S> column_medians(Matrix<S>& t) {
  Vector<S> out(t.cols());
  for (Index j = 0; j < t.cols(); ++j) out(j) = static_cast<S>(median_inplace(t.col(j).data(), t.rows()));
  return out;
}

/// Mean of v[k .. n-k) after sorting, i.e. with the k smallest and k largest
/// values cut (reorders v). Needs 2k < n.
template <class S>
double trimmed_inplace(S* v, Index n, Index k) {
  if (k > 0) {
    std::nth_element(v, v + k, v + n);          // k smallest in front
    std::nth_element(v + k, v + (n - k), v + n);  // k largest at the back
  }
  double acc = 0;
  for (Index i = k; i < n - k; ++i) acc += static_cast<double>(v[i]);
  return acc / static_cast<double>(n - 2 * k);
}

/// Krum neighbour count for a set of r candidates: r - f - 2 (Blanchard et
/// al.), at least 1 as in Flower, at most the r - 1 others.
inline Index krum_neighbours(Index r, Index f) {
  Index k = std::max<Index>(1, r - f - 2);
  return std::min<Index>(k, r - 1);
}

/// Krum scores of `members` (indices into the distance matrix): the sum of
/// squared distances to the k closest other members. Summation in sorted
/// order, so the result does not depend on the standard library.
inline std::vector<double> krum_scores(const Matrix<double>& dist, const std::vector<Index>& members, Index f) {
  const Index r = static_cast<Index>(members.size());
  const Index k = krum_neighbours(r, f);
  std::vector<double> scores(members.size(), 0.0);
  std::vector<double> row;
  row.reserve(members.size());
  for (std::size_t a = 0; a < members.size(); ++a) {
    row.clear();
    for (std::size_t b = 0; b < members.size(); ++b)
      if (a != b) row.push_back(dist(members[a], members[b]));
    const auto kk = static_cast<std::ptrdiff_t>(k);
    std::partial_sort(row.begin(), row.begin() + kk, row.end());
    double s = 0;
    for (std::ptrdiff_t i = 0; i < kk; ++i) s += row[static_cast<std::size_t>(i)];
    scores[a] = s;
  }
  return scores;
}

/// Positions 0..r-1 ordered by (score, position).
inline std::vector<Index> order_by_score(const std::vector<double>& scores) {
  std::vector<Index> idx(scores.size());
  for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<Index>(i);
  std::stable_sort(idx.begin(), idx.end(), [&](Index a, Index b) {
    return scores[static_cast<std::size_t>(a)] < scores[static_cast<std::size_t>(b)];
  });
  return idx;
}

}  // namespace detail::robust

/// Squared L2 distances between the columns of a d x n stack (detail::
/// stack_params), all from one Gram matrix: with C = P - median 1^T,
/// d^2_ij = G_ii + G_jj - 2 G_ij for G = C^T C, clamped at 0. Returns n x n
/// (double, symmetric, zero diagonal).
template <class S>
Matrix<double> pairwise_sq_distances(const Matrix<S>& stacked) {
  const Index n = stacked.cols();
  Matrix<double> dist = Matrix<double>::Zero(n, n);
  if (n == 0 || stacked.rows() == 0) return dist;
  Matrix<S> t = stacked.transpose();
  const Vector<S> centre = detail::robust::column_medians(t);
  const Matrix<S> c = stacked.colwise() - centre;
  const Matrix<S> g = c.transpose() * c;
  for (Index j = 0; j < n; ++j)
    for (Index i = j + 1; i < n; ++i) {
      const double d2 = static_cast<double>(g(i, i)) + static_cast<double>(g(j, j)) - 2.0 * static_cast<double>(g(i, j));
      dist(i, j) = dist(j, i) = std::max(0.0, d2);
    }
  return dist;
}

/// Coordinate-wise median of the updates' parameters. `f` is the number of
/// Byzantine clients the caller expects; the median needs f < n/2.
template <class S>
Result<Vector<S>> coordinate_median(std::span<const ClientUpdate<S>> updates, Index f = 0) {
  namespace dr = detail::robust;
  const std::string rule = "coordinate_median";
  FLEETDL_TRY(dr::check_f(rule, f));
  auto n = dr::check_input<S>(rule, updates, false);
  if (!n) return std::move(n).error();
  if (2 * f >= *n)
    return make_error(Errc::invalid_argument, rule + ": f = " + dr::num(f) + " Byzantine of n = " + dr::num(*n) +
                                                  " updates; the median needs f < n/2");
  Matrix<S> t = dr::stack_rows(updates);
  return dr::column_medians(t);
}

/// Coordinate-wise trimmed mean: per coordinate, drop the floor(beta n)
/// smallest and largest values and average the rest (scipy trim_mean, as
/// Flower's FedTrimmedAvg). Needs 0 <= beta < 1/2 and floor(beta n) >= f.
template <class S>
Result<Vector<S>> trimmed_mean(std::span<const ClientUpdate<S>> updates, double beta = 0.2, Index f = 0) {
  namespace dr = detail::robust;
  const std::string rule = "trimmed_mean";
  if (!(beta >= 0.0 && beta < 0.5))
    return make_error(Errc::invalid_argument, rule + ": beta = " + dr::num(beta) + " must be in [0, 1/2)");
  FLEETDL_TRY(dr::check_f(rule, f));
  auto n = dr::check_input<S>(rule, updates, false);
  if (!n) return std::move(n).error();
  const auto k = static_cast<Index>(beta * static_cast<double>(*n));  // floor, as scipy's int()
  if (k < f)
    return make_error(Errc::invalid_argument,
                      rule + ": beta = " + dr::num(beta) + " trims floor(beta n) = floor(" + dr::num(beta) + " * " +
                          dr::num(*n) + ") = " + dr::num(k) + " update(s) from each end, fewer than f = " + dr::num(f) +
                          " (needs beta >= f/n = " + dr::num(static_cast<double>(f) / static_cast<double>(*n)) + ")");
  Matrix<S> t = dr::stack_rows(updates);
  Vector<S> out(t.cols());
  for (Index j = 0; j < t.cols(); ++j) out(j) = static_cast<S>(dr::trimmed_inplace(t.col(j).data(), *n, k));
  return out;
}

/// Multi-Krum selection: positions (into `updates`) of the m updates with the
/// lowest Krum scores, best first. Score = sum of squared distances to the
/// n - f - 2 closest other updates. Needs n > 2f + 2 and 1 <= m <= n - f.
template <class S>
Result<std::vector<Index>> krum_select(std::span<const ClientUpdate<S>> updates, Index f, Index m = 1) {
  namespace dr = detail::robust;
  const std::string rule = m == 1 ? "krum" : "multi_krum";
  FLEETDL_TRY(dr::check_f(rule, f));
  auto n = dr::check_input<S>(rule, updates, false);
  if (!n) return std::move(n).error();
  if (*n <= 2 * f + 2)
    return make_error(Errc::invalid_argument, rule + ": n = " + dr::num(*n) + " updates, f = " + dr::num(f) +
                                                  "; Krum needs n > 2f + 2 = " + dr::num(2 * f + 2));
  if (m < 1 || m > *n - f)
    return make_error(Errc::invalid_argument, rule + ": m = " + dr::num(m) + " must be in [1, n - f] = [1, " +
                                                  dr::num(*n - f) + "] for n = " + dr::num(*n) + ", f = " + dr::num(f));
  const Matrix<double> dist = pairwise_sq_distances<S>(fl::detail::stack_params(updates));
  std::vector<Index> all(static_cast<std::size_t>(*n));
  for (Index i = 0; i < *n; ++i) all[static_cast<std::size_t>(i)] = i;
  std::vector<Index> order = dr::order_by_score(dr::krum_scores(dist, all, f));
  order.resize(static_cast<std::size_t>(m));
  return order;
}

/// Multi-Krum (Blanchard et al. 2017): the average of the m best-scoring
/// updates (see krum_select). m = 1 is Krum.
template <class S>
Result<Vector<S>> multi_krum(std::span<const ClientUpdate<S>> updates, Index f, Index m,
                             Weighting weighting = Weighting::examples) {
  namespace dr = detail::robust;
  if (weighting == Weighting::examples && m > 1) {
    auto n = dr::check_input<S>("multi_krum", updates, true);
    if (!n) return std::move(n).error();
  }
  auto sel = krum_select(updates, f, m);
  if (!sel) return std::move(sel).error();
  const Index d = updates[0].params.size();
  Vector<double> acc = Vector<double>::Zero(d);
  double total = 0;
  for (const Index i : *sel) {
    const auto& u = updates[static_cast<std::size_t>(i)];
    const double w = (weighting == Weighting::examples && m > 1) ? static_cast<double>(u.num_examples) : 1.0;
    acc += w * u.params.template cast<double>();
    total += w;
  }
  return Vector<S>((acc / total).template cast<S>());
}

/// Krum (Blanchard et al. 2017): the single update with the lowest score.
template <class S>
Result<Vector<S>> krum(std::span<const ClientUpdate<S>> updates, Index f) {
  return multi_krum(updates, f, 1, Weighting::uniform);
}

/// Bulyan (El Mhamdi et al. 2018) over Krum: select theta = n - 2f updates by
/// repeatedly taking the Krum winner of the remaining ones (neighbour count
/// r - f - 2 for r remaining, at least 1), then per coordinate average the
/// beta = theta - 2f selected values closest to their median. Needs n >= 4f + 3.
/// `selected`, if given, receives the chosen positions in selection order.
template <class S>
Result<Vector<S>> bulyan(std::span<const ClientUpdate<S>> updates, Index f, std::vector<Index>* selected = nullptr) {
  namespace dr = detail::robust;
  const std::string rule = "bulyan";
  FLEETDL_TRY(dr::check_f(rule, f));
  auto n = dr::check_input<S>(rule, updates, false);
  if (!n) return std::move(n).error();
  if (*n < 4 * f + 3)
    return make_error(Errc::invalid_argument, rule + ": n = " + dr::num(*n) + " updates, f = " + dr::num(f) +
                                                  "; Bulyan needs n >= 4f + 3 = " + dr::num(4 * f + 3));
  const Index theta = *n - 2 * f;
  const Index beta = theta - 2 * f;
  const Matrix<double> dist = pairwise_sq_distances<S>(fl::detail::stack_params(updates));

  std::vector<Index> remaining(static_cast<std::size_t>(*n));
  for (Index i = 0; i < *n; ++i) remaining[static_cast<std::size_t>(i)] = i;
  std::vector<Index> chosen;
  chosen.reserve(static_cast<std::size_t>(theta));
  while (static_cast<Index>(chosen.size()) < theta) {
    const auto scores = dr::krum_scores(dist, remaining, f);
    // remaining stays in ascending position order, so the first minimum is
    // the lowest position (numpy argmin)
    const auto best = static_cast<std::size_t>(std::min_element(scores.begin(), scores.end()) - scores.begin());
    chosen.push_back(remaining[best]);
    remaining.erase(remaining.begin() + static_cast<std::ptrdiff_t>(best));
  }

  Matrix<S> t = dr::stack_rows(updates, &chosen);  // theta x d
  Vector<S> out(t.cols());
  for (Index j = 0; j < t.cols(); ++j) {
    S* v = t.col(j).data();
    const double med = dr::median_inplace(v, theta);
    // the beta values nearest the median; equal distances: smaller value first
    const auto closer = [med](S a, S b) {
      const double da = std::abs(static_cast<double>(a) - med), db = std::abs(static_cast<double>(b) - med);
      return da < db || (da == db && a < b);
    };
    if (beta < theta) std::nth_element(v, v + beta, v + theta, closer);
    double acc = 0;
    for (Index i = 0; i < beta; ++i) acc += static_cast<double>(v[i]);
    out(j) = static_cast<S>(acc / static_cast<double>(beta));
  }
  if (selected) *selected = std::move(chosen);
  return out;
}

// ---------------------------------------------------------------------------
// Strategies

/// Base of the robust strategies: Flower's FedAvg configure_fit (the
/// FedAvgOptions of fedavg.hpp; min_fit_clients raised to the rule's
/// min_updates()), and aggregate() = the rule's output replaces `global`.
template <class S>
class RobustStrategy : public Strategy<S> {
 public:
  explicit RobustStrategy(FedAvgOptions o) : o_(std::move(o)) {}

  std::vector<ClientInstruction> configure(long /*round*/, std::span<const Index> available, Rng& rng) override {
    std::vector<ClientInstruction> out;
    if (available.empty() || static_cast<Index>(available.size()) < o_.min_available_clients) return out;
    const auto ids = sample_uniform(available, o_.fraction_fit, std::max(o_.min_fit_clients, this->min_updates()), rng);
    out.reserve(ids.size());
    for (const Index id : ids) out.push_back(ClientInstruction{id, o_.client});
    return out;
  }

  Result<void> aggregate(long /*round*/, VectorMap<S> global, std::span<const ClientUpdate<S>> updates) override {
    FLEETDL_TRY(detail::check_fedavg_options(this->name(), o_));
    auto checked = fl::detail::check_updates<S>(this->name(), global.size(), updates, false);
    if (!checked) return std::move(checked).error();
    auto r = rule(updates);
    if (!r) return std::move(r).error();
    global = *r;
    return success();
  }

  /// The aggregation rule alone (no dimension check against a global model).
  virtual Result<Vector<S>> rule(std::span<const ClientUpdate<S>> updates) const = 0;

  const FedAvgOptions& options() const { return o_; }

 private:
  FedAvgOptions o_;
};

/// Flower's FedMedian, with an optional expected Byzantine count f (f < n/2).
template <class S>
class FedMedian : public RobustStrategy<S> {
 public:
  explicit FedMedian(Index f = 0, FedAvgOptions o = {}) : RobustStrategy<S>(std::move(o)), f_(f) {}
  std::string name() const override { return "fedmedian"; }
  Index min_updates() const override { return 2 * std::max<Index>(f_, 0) + 1; }
  Result<Vector<S>> rule(std::span<const ClientUpdate<S>> updates) const override {
    return coordinate_median(updates, f_);
  }
  Index f() const { return f_; }

 private:
  Index f_;
};

/// Flower's FedTrimmedAvg (beta = 0.2), with an optional Byzantine count f
/// (needs floor(beta n) >= f).
template <class S>
class FedTrimmedAvg : public RobustStrategy<S> {
 public:
  explicit FedTrimmedAvg(double beta = 0.2, Index f = 0, FedAvgOptions o = {})
      : RobustStrategy<S>(std::move(o)), beta_(beta), f_(f) {}
  std::string name() const override { return "fedtrimmedavg"; }
  /// Smallest n with floor(beta n) >= f (1 when f = 0 or beta is invalid).
  Index min_updates() const override {
    if (f_ <= 0 || !(beta_ > 0.0 && beta_ < 0.5)) return 1;
    // start just below f/beta and step up: floor(beta n) is what the rule checks
    auto n = std::max<Index>(1, static_cast<Index>(static_cast<double>(f_) / beta_) - 1);
    while (static_cast<Index>(beta_ * static_cast<double>(n)) < f_) ++n;
    return n;
  }
  Result<Vector<S>> rule(std::span<const ClientUpdate<S>> updates) const override {
    return trimmed_mean(updates, beta_, f_);
  }
  double beta() const { return beta_; }
  Index f() const { return f_; }

 private:
  double beta_;
  Index f_;
};

/// Flower's Krum (m = 1) / Multi-Krum (m > 1, num_clients_to_keep).
template <class S>
class Krum : public RobustStrategy<S> {
 public:
  explicit Krum(Index f, Index m = 1, Weighting weighting = Weighting::examples, FedAvgOptions o = {})
      : RobustStrategy<S>(std::move(o)), f_(f), m_(m), weighting_(weighting) {}
  std::string name() const override { return m_ == 1 ? "krum" : "multi-krum"; }
  Index min_updates() const override {
    const Index f = std::max<Index>(f_, 0);
    return std::max<Index>(2 * f + 3, std::max<Index>(m_, 1) + f);
  }
  Result<Vector<S>> rule(std::span<const ClientUpdate<S>> updates) const override {
    return multi_krum(updates, f_, m_, weighting_);
  }
  Index f() const { return f_; }
  Index m() const { return m_; }

 private:
  Index f_, m_;
  Weighting weighting_;
};

/// Bulyan over Krum (El Mhamdi et al. 2018; Flower's Bulyan).
template <class S>
class Bulyan : public RobustStrategy<S> {
 public:
  explicit Bulyan(Index f, FedAvgOptions o = {}) : RobustStrategy<S>(std::move(o)), f_(f) {}
  std::string name() const override { return "bulyan"; }
  Index min_updates() const override { return 4 * std::max<Index>(f_, 0) + 3; }
  Result<Vector<S>> rule(std::span<const ClientUpdate<S>> updates) const override { return bulyan(updates, f_); }
  Index f() const { return f_; }

 private:
  Index f_;
};

}  // namespace fleetdl::fl
