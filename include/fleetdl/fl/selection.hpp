// fleetdl/fl/selection.hpp — client selection policies. Each returns the
// chosen client ids sorted ascending and is deterministic given the Rng:
//
//   select_uniform          k clients uniformly without replacement (Flower's
//                           default; wraps sample_uniform)
//   select_deadline_aware   drop the clients predicted to miss the round
//                           deadline, then sample uniformly among the rest;
//                           reports how many were excluded
//   select_overcommit       FedScale's over-commitment: ask ceil(1.3 K) clients
//   first_k                 ... and keep the first K to finish (Lai et al.,
//                           "FedScale: benchmarking model and system performance
//                           of federated learning at scale", ICML 2022;
//                           FedScale's `overcommitment` = 1.3)
//   OortSelector            Oort's guided participant selection (Lai, Zhu,
//                           Madhyastha, Chowdhury, "Oort: efficient federated
//                           learning via guided participant selection", OSDI 2021)
//
// Oort, as implemented here. Client i's utility is
//     U_i = |B_i| sqrt(mean_{k in B_i} loss_k^2)  x  (T / t_i)^alpha if t_i > T, else 1
// (statistical utility x system factor, paper §4.2–4.3), from the last report
// of the client: its sample count |B_i|, mean squared per-sample training
// loss and round duration t_i. T is the preferred round duration: a fixed
// value, or by default the 30th percentile of the explored clients' durations
// (FedScale's round_threshold = 30). Each round a fraction epsilon of the k
// slots goes to clients never seen (exploration, uniform among them), the rest
// to the explored clients with the highest utility (exploitation); a side that
// runs short passes its slots to the other. epsilon starts at 0.9 and is
// multiplied by 0.98 after every round down to 0.2 (paper §7.1; FedScale's
// code uses the same 0.9 and 0.98 but a floor of exploration_min = 0.3;
// alpha = 2 is FedScale's round_penalty). Per-client state is two doubles.
// Left out of Oort: the temporal-uncertainty bonus sqrt(0.1 log R / L_i),
// utility clipping and probabilistic sampling above the cut-off utility, the
// pacer that relaxes T, and the participation blacklist — exploitation here
// is a deterministic top-k (ties to the lower id).
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/core/rng.hpp"
#include "fleetdl/core/tensor.hpp"
#include "fleetdl/fl/strategy.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace fleetdl::fl {

namespace detail::selection {

inline std::string num(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", x);
  return buf;
}

/// Client ids must be unique (a duplicate could be selected twice).
inline Result<void> check_unique(const char* who, std::span<const Index> ids, const char* what) {
  std::vector<Index> sorted(ids.begin(), ids.end());
  std::sort(sorted.begin(), sorted.end());
  const auto dup = std::adjacent_find(sorted.begin(), sorted.end());
  if (dup != sorted.end())
    return make_error(Errc::invalid_argument,
                      std::string(who) + ": client " + std::to_string(*dup) + " appears twice in " + what);
  return success();
}

inline Result<void> check_k(const char* who, Index k) {
  if (k < 0) return make_error(Errc::invalid_argument, std::string(who) + ": k = " + std::to_string(k) + " is negative");
  return success();
}

}  // namespace detail::selection

/// k clients drawn uniformly without replacement from `available` (all of
/// them if fewer), sorted.
inline std::vector<Index> select_uniform(std::span<const Index> available, Index k, Rng& rng) {
  return sample_uniform(available, 0.0, std::max<Index>(k, 0), rng);
}

/// Result of select_deadline_aware.
struct DeadlineSelection {
  std::vector<Index> clients;  ///< chosen ids, sorted (fewer than k if too few are eligible)
  Index eligible = 0;          ///< available clients predicted to finish by the deadline
  Index excluded = 0;          ///< available clients predicted to miss it
};

/// Keep the clients whose predicted round time (predicted_time[i] belongs to
/// available[i]; +infinity = will not finish) is at most `deadline`, then
/// draw k of them uniformly.
inline Result<DeadlineSelection> select_deadline_aware(std::span<const Index> available,
                                                       std::span<const double> predicted_time, double deadline,
                                                       Index k, Rng& rng) {
  namespace ds = detail::selection;
  const char* who = "select_deadline_aware";
  FLEETDL_TRY(ds::check_k(who, k));
  if (!(deadline > 0.0))
    return make_error(Errc::invalid_argument, std::string(who) + ": deadline " + ds::num(deadline) + " must be > 0");
  if (predicted_time.size() != available.size())
    return make_error(Errc::shape_mismatch, std::string(who) + ": " + std::to_string(predicted_time.size()) +
                                                " predicted times for " + std::to_string(available.size()) +
                                                " available clients");
  FLEETDL_TRY(ds::check_unique(who, available, "available"));
  std::vector<Index> eligible;
  eligible.reserve(available.size());
  for (std::size_t i = 0; i < available.size(); ++i) {
    const double t = predicted_time[i];
    if (std::isnan(t) || t < 0.0)
      return make_error(Errc::invalid_argument, std::string(who) + ": client " + std::to_string(available[i]) +
                                                    " has predicted round time " + ds::num(t) +
                                                    " (needs >= 0; +inf for never)");
    if (t <= deadline) eligible.push_back(available[i]);
  }
  std::sort(eligible.begin(), eligible.end());  // the draw must not depend on the order of `available`
  DeadlineSelection out;
  out.eligible = static_cast<Index>(eligible.size());
  out.excluded = static_cast<Index>(available.size() - eligible.size());
  out.clients = select_uniform(eligible, k, rng);
  return out;
}

/// FedScale's over-commitment: ceil(factor k) clients (factor >= 1). The
/// product is rounded to 1e-9 first so 1.3 * 10 asks 13, not 14.
inline Result<Index> overcommit_count(Index k, double factor = 1.3) {
  namespace ds = detail::selection;
  FLEETDL_TRY(ds::check_k("overcommit_count", k));
  if (!(factor >= 1.0) || !std::isfinite(factor))
    return make_error(Errc::invalid_argument, "overcommit_count: factor " + ds::num(factor) + " must be finite and >= 1");
  const double want = factor * static_cast<double>(k);
  return static_cast<Index>(std::ceil(want - 1e-9 * std::max(1.0, want)));
}

/// Draw overcommit_count(k, factor) clients uniformly (all if fewer are
/// available). Pair with first_k() once the finish times are known.
inline Result<std::vector<Index>> select_overcommit(std::span<const Index> available, Index k, Rng& rng,
                                                    double factor = 1.3) {
  auto count = overcommit_count(k, factor);
  if (!count) return std::move(count).error();
  FLEETDL_TRY(detail::selection::check_unique("select_overcommit", available, "available"));
  return select_uniform(available, *count, rng);
}

/// The k clients of `selected` that finished first (finish_times[i] belongs
/// to selected[i]; +infinity = dropped out), sorted by id. Equal times go to
/// the lower id. Fewer than k if fewer finished.
inline Result<std::vector<Index>> first_k(std::span<const Index> selected, std::span<const double> finish_times,
                                          Index k) {
  namespace ds = detail::selection;
  const char* who = "first_k";
  FLEETDL_TRY(ds::check_k(who, k));
  if (finish_times.size() != selected.size())
    return make_error(Errc::shape_mismatch, std::string(who) + ": " + std::to_string(finish_times.size()) +
                                                " finish times for " + std::to_string(selected.size()) +
                                                " selected clients");
  FLEETDL_TRY(ds::check_unique(who, selected, "selected"));
  std::vector<std::pair<double, Index>> done;
  done.reserve(selected.size());
  for (std::size_t i = 0; i < selected.size(); ++i) {
    const double t = finish_times[i];
    if (std::isnan(t) || t < 0.0)
      return make_error(Errc::invalid_argument, std::string(who) + ": client " + std::to_string(selected[i]) +
                                                    " has finish time " + ds::num(t) + " (needs >= 0; +inf if dropped)");
    if (std::isfinite(t)) done.emplace_back(t, selected[i]);
  }
  std::sort(done.begin(), done.end());
  if (static_cast<Index>(done.size()) > k) done.resize(static_cast<std::size_t>(k));
  std::vector<Index> out;
  out.reserve(done.size());
  for (const auto& [t, id] : done) out.push_back(id);
  std::sort(out.begin(), out.end());
  return out;
}

/// Oort's parameters (see the file comment for the sources of the defaults).
struct OortOptions {
  double epsilon = 0.9;                ///< initial exploration fraction
  double epsilon_decay = 0.98;         ///< epsilon *= this after every round
  double epsilon_min = 0.2;            ///< ... but not below this
  double alpha = 2.0;                  ///< straggler penalty exponent (T/t_i)^alpha
  double preferred_duration = 0.0;     ///< T; 0 = the duration_percentile below
  double duration_percentile = 30.0;   ///< T as a percentile of explored durations
};

/// Result of OortSelector::select.
struct OortSelection {
  std::vector<Index> clients;   ///< all chosen, sorted
  std::vector<Index> exploited; ///< chosen for their utility, sorted
  std::vector<Index> explored;  ///< chosen as never-seen clients, sorted
  double epsilon = 0.0;         ///< the exploration fraction this round used
  double preferred_duration = 0.0;  ///< T this round used (+inf: no penalty)
};

/// Oort-style selector: feed it each round's client reports with report(),
/// ask for the next round's participants with select().
class OortSelector {
 public:
  explicit OortSelector(OortOptions o = {}) : o_(o), epsilon_(o.epsilon) {}

  static Result<void> validate(const OortOptions& o) {
    namespace ds = detail::selection;
    const auto bad = [](const char* name, double v, const char* rule) {
      return make_error(Errc::invalid_argument, std::string("oort: ") + name + " = " + ds::num(v) + " " + rule);
    };
    if (!(o.epsilon >= 0.0 && o.epsilon <= 1.0)) return bad("epsilon", o.epsilon, "must be in [0, 1]");
    if (!(o.epsilon_decay > 0.0 && o.epsilon_decay <= 1.0)) return bad("epsilon_decay", o.epsilon_decay, "must be in (0, 1]");
    if (!(o.epsilon_min >= 0.0 && o.epsilon_min <= 1.0)) return bad("epsilon_min", o.epsilon_min, "must be in [0, 1]");
    if (!(o.alpha >= 0.0) || !std::isfinite(o.alpha)) return bad("alpha", o.alpha, "must be finite and >= 0");
    if (!(o.preferred_duration >= 0.0)) return bad("preferred_duration", o.preferred_duration, "must be >= 0 (0 = percentile)");
    if (!(o.duration_percentile >= 0.0 && o.duration_percentile <= 100.0))
      return bad("duration_percentile", o.duration_percentile, "must be in [0, 100]");
    return success();
  }

  /// Record a client's feedback after a round: examples trained on, mean of
  /// the squared per-sample training losses, and its wall-clock round time.
  /// Replaces the client's previous report. Errors change nothing.
  Result<void> report(Index client, Index num_samples, double mean_sq_loss, double duration) {
    namespace ds = detail::selection;
    const std::string who = "oort: client " + std::to_string(client);
    if (num_samples < 0)
      return make_error(Errc::invalid_argument, who + ": num_samples " + std::to_string(num_samples) + " is negative");
    if (!(mean_sq_loss >= 0.0) || !std::isfinite(mean_sq_loss))
      return make_error(Errc::invalid_argument, who + ": mean squared loss " + ds::num(mean_sq_loss) +
                                                    " must be finite and >= 0");
    if (!(duration > 0.0) || !std::isfinite(duration))
      return make_error(Errc::invalid_argument, who + ": duration " + ds::num(duration) + " must be finite and > 0");
    // statistical utility |B_i| sqrt(mean loss^2) (Oort §4.2)
    stats_[client] = Stats{static_cast<double>(num_samples) * std::sqrt(mean_sq_loss), duration};
    return success();
  }

  /// Choose up to k of `available` (all of them if fewer) for the next round,
  /// then decay epsilon. Errors change nothing.
  Result<OortSelection> select(std::span<const Index> available, Index k, Rng& rng) {
    namespace ds = detail::selection;
    FLEETDL_TRY(validate(o_));
    FLEETDL_TRY(ds::check_k("oort", k));
    FLEETDL_TRY(ds::check_unique("oort", available, "available"));

    std::vector<Index> seen, unseen;
    for (const Index id : available) (stats_.count(id) ? seen : unseen).push_back(id);
    std::sort(unseen.begin(), unseen.end());  // the draw must not depend on the order of `available`
    const Index want = std::min<Index>(k, static_cast<Index>(available.size()));
    const auto n_seen = static_cast<Index>(seen.size()), n_unseen = static_cast<Index>(unseen.size());
    // epsilon k slots for exploration (int() as FedScale), the rest exploit;
    // a side short of clients hands its slots to the other
    Index explore = static_cast<Index>(epsilon_ * static_cast<double>(want));
    Index exploit = std::min(want - explore, n_seen);
    explore = std::min(want - exploit, n_unseen);
    exploit = std::min(want - explore, n_seen);

    OortSelection out;
    out.epsilon = epsilon_;
    out.preferred_duration = preferred_duration();
    std::vector<std::pair<double, Index>> ranked;
    ranked.reserve(seen.size());
    for (const Index id : seen) ranked.emplace_back(utility_at(stats_.at(id), out.preferred_duration), id);
    std::sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    for (Index i = 0; i < exploit; ++i) out.exploited.push_back(ranked[static_cast<std::size_t>(i)].second);
    std::sort(out.exploited.begin(), out.exploited.end());
    out.explored = select_uniform(unseen, explore, rng);

    out.clients = out.exploited;
    out.clients.insert(out.clients.end(), out.explored.begin(), out.explored.end());
    std::sort(out.clients.begin(), out.clients.end());
    epsilon_ = std::max(epsilon_ * o_.epsilon_decay, o_.epsilon_min);
    return out;
  }

  /// The exploration fraction the next select() will use.
  double epsilon() const { return epsilon_; }

  /// T: the fixed preferred_duration, or the duration_percentile of the
  /// explored clients' durations (sorted[int(n p / 100)], FedScale); +inf
  /// (no straggler penalty) before any report.
  double preferred_duration() const {
    if (o_.preferred_duration > 0.0) return o_.preferred_duration;
    if (stats_.empty()) return std::numeric_limits<double>::infinity();
    std::vector<double> d;
    d.reserve(stats_.size());
    for (const auto& [id, s] : stats_) d.push_back(s.duration);
    std::sort(d.begin(), d.end());
    const auto i = static_cast<std::size_t>(static_cast<double>(d.size()) * o_.duration_percentile / 100.0);
    return d[std::min(i, d.size() - 1)];
  }

  /// Client's utility with the current T (0 for a client never reported).
  double utility(Index client) const {
    const auto it = stats_.find(client);
    return it == stats_.end() ? 0.0 : utility_at(it->second, preferred_duration());
  }

  /// Statistical utility |B_i| sqrt(mean loss^2) of the last report (0 if none).
  double statistical_utility(Index client) const {
    const auto it = stats_.find(client);
    return it == stats_.end() ? 0.0 : it->second.stat_util;
  }

  bool explored(Index client) const { return stats_.count(client) != 0; }
  Index num_explored() const { return static_cast<Index>(stats_.size()); }
  const OortOptions& options() const { return o_; }

  /// For a checkpoint: epsilon (f64), the number of reported clients (u64),
  /// then per client in ascending id: id (u64), statistical utility and
  /// duration (f64 each). Little-endian.
  void save_state(ByteWriter& w) const {
    w.f64(epsilon_);
    w.u64(static_cast<std::uint64_t>(stats_.size()));
    for (const auto& [id, st] : stats_) {
      w.u64(static_cast<std::uint64_t>(id));
      w.f64(st.stat_util);
      w.f64(st.duration);
    }
  }

  /// Continue from save_state()'s bytes, read from `r` (which may hold more
  /// after them). Untrusted: epsilon within [epsilon_min, 1], at most
  /// `max_clients` entries with ids below it in ascending order, finite
  /// utilities >= 0 and durations > 0; on error nothing changes.
  Result<void> load_state(ByteReader& r, Index max_clients) {
    const auto bad = [](const std::string& why) { return make_error(Errc::corrupt, "oort: state: " + why); };
    double eps = 0.0;
    std::uint64_t n = 0;
    if (!r.f64(eps) || !r.u64(n)) return bad("truncated");
    if (!(eps >= std::min(o_.epsilon_min, o_.epsilon) && eps <= 1.0))
      return bad("epsilon " + detail::selection::num(eps) + " is outside [epsilon_min, 1]");
    if (max_clients < 0 || n > static_cast<std::uint64_t>(max_clients))
      return bad(std::to_string(n) + " clients, more than the " + std::to_string(max_clients) + " there are");
    if (r.remaining() < n * 24) return bad("truncated");
    std::map<Index, Stats> stats;
    std::uint64_t last = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      std::uint64_t id = 0;
      Stats st;
      (void)r.u64(id);
      (void)r.f64(st.stat_util);
      (void)r.f64(st.duration);
      if (id >= static_cast<std::uint64_t>(max_clients) || (i > 0 && id <= last))
        return bad("client id " + std::to_string(id) + " out of range or out of order");
      if (!(st.stat_util >= 0.0) || !std::isfinite(st.stat_util) || !(st.duration > 0.0) || !std::isfinite(st.duration))
        return bad("client " + std::to_string(id) + ": utility or duration is not finite and positive");
      stats.emplace_hint(stats.end(), static_cast<Index>(id), st);
      last = id;
    }
    epsilon_ = eps;
    stats_ = std::move(stats);
    return success();
  }

 private:
  struct Stats {
    double stat_util = 0.0;  ///< |B_i| sqrt(mean loss^2)
    double duration = 0.0;   ///< last round time t_i
  };

  double utility_at(const Stats& s, double t_pref) const {
    // system factor (T / t_i)^alpha for stragglers (Oort §4.3)
    const double sys = s.duration > t_pref ? std::pow(t_pref / s.duration, o_.alpha) : 1.0;
    return s.stat_util * sys;
  }

  OortOptions o_;
  double epsilon_;
  std::map<Index, Stats> stats_;
};

}  // namespace fleetdl::fl
