// fleetdl/sim/simulator.hpp — the federated fleet simulator: N virtual
// devices with profiles, a virtual clock with round deadlines, stragglers
// and dropouts, and REAL local training with the library for every client
// that reports.
//
// One round (Simulator::step):
//   1. Availability: each eligible device is online with its profile's
//      availability (one seeded draw per device per round). Devices whose
//      memory is below the model's training memory, or that hold no data,
//      are never eligible.
//   2. Selection among the online devices, by policy: uniform (K of them),
//      deadline-aware (only those predicted to finish before the deadline),
//      over-commit (ceil(1.3 K), the first K to finish are kept) or Oort.
//      K = clients_per_round (0: all online). The strategy's configure() then
//      gives each selected client its config.
//   3. Events, from the profiles (no training needed to know them): each
//      selected client may straggle (compute x slowdown) or drop out (at a
//      uniform point of its timeline). Its finish time is download + compute
//      + upload; past the deadline it is a straggler and its work is lost.
//   4. Local training (nn::train_classifier, SGD with the instruction's lr,
//      momentum, epochs and batch) for every client that will report, with
//      FedProx's proximal gradient or SCAFFOLD's correction added to the
//      gradients, then attacks (if configured), local DP (if configured) and
//      the update codec: the server aggregates what it decodes.
//      SCAFFOLD's correction is applied to the parameters next to each
//      optimizer step, p <- p - lr (c - c_i), outside the momentum buffer (as
//      Flower's niid_bench ScaffoldOptimizer does): inside it, momentum 0.9
//      would amplify a correction whose control variates (x - y)/(K lr)
//      already carry the 1/(1 - momentum) factor, and training diverges.
//      With momentum 0 both placements are the paper's gradient correction.
//   5. The round completes when at least max(min_clients,
//      strategy.min_updates()) updates arrive; otherwise it is recorded as
//      abandoned and the global model is unchanged (never a hang: the clock
//      advances to the deadline or to the last event).
//   6. Evaluation of the global model on the test set.
//
// Determinism: every random choice comes from Rng(seed) forked by round and
// client id. Clients train single-threaded and in parallel across the pool
// (client_parallel = true, the default): the result is then the same bits
// for every thread count. With client_parallel = false clients train one
// after the other with the pool inside the layers (same seed and thread
// count give the same bits).
//
// Per-client state (bytes_per_client()): its Device (8 bytes), its data
// index list (8 bytes per sample), a participation counter, Oort's two
// doubles, and parameter-sized vectors only where the method needs them
// (SCAFFOLD's c_i, top-k's error-feedback residual).
#pragma once

#include "fleetdl/core/bytes.hpp"
#include "fleetdl/core/crc32.hpp"
#include "fleetdl/core/error.hpp"
#include "fleetdl/core/parallel.hpp"
#include "fleetdl/core/rng.hpp"
#include "fleetdl/core/tensor.hpp"
#include "fleetdl/data/dataset.hpp"
#include "fleetdl/data/partition.hpp"
#include "fleetdl/fl/client.hpp"
#include "fleetdl/fl/codec.hpp"
#include "fleetdl/fl/dp.hpp"
#include "fleetdl/fl/fedprox.hpp"
#include "fleetdl/fl/heterofl.hpp"
#include "fleetdl/fl/scaffold.hpp"
#include "fleetdl/fl/selection.hpp"
#include "fleetdl/fl/strategy.hpp"
#include "fleetdl/nn/model.hpp"
#include "fleetdl/nn/optim.hpp"
#include "fleetdl/nn/train.hpp"
#include "fleetdl/sim/profile.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace fleetdl::sim {

enum class SelectionPolicy { uniform, deadline, overcommit, oort };
enum class UpdateCodec { none, fp16, q8, q4, q2, topk };
enum class AttackKind { none, sign_flip, gaussian, label_flip };

inline const char* to_string(SelectionPolicy p) {
  switch (p) {
    case SelectionPolicy::uniform: return "uniform";
    case SelectionPolicy::deadline: return "deadline";
    case SelectionPolicy::overcommit: return "overcommit";
    case SelectionPolicy::oort: return "oort";
  }
  return "?";
}
inline const char* to_string(UpdateCodec c) {
  switch (c) {
    case UpdateCodec::none: return "none";
    case UpdateCodec::fp16: return "fp16";
    case UpdateCodec::q8: return "q8";
    case UpdateCodec::q4: return "q4";
    case UpdateCodec::q2: return "q2";
    case UpdateCodec::topk: return "topk";
  }
  return "?";
}
inline const char* to_string(AttackKind a) {
  switch (a) {
    case AttackKind::none: return "none";
    case AttackKind::sign_flip: return "sign_flip";
    case AttackKind::gaussian: return "gaussian";
    case AttackKind::label_flip: return "label_flip";
  }
  return "?";
}

/// Byzantine clients: a fixed, seeded set of round(fraction x N) devices.
struct Attack {
  AttackKind kind = AttackKind::none;
  double fraction = 0.0;  ///< f / N in [0, 1)
  double scale = 4.0;     ///< sign_flip: send global - scale x delta
  double stddev = 1.0;    ///< gaussian: send global + N(0, stddev^2) per coordinate
};

/// Client-side (local) differential privacy: clip each update to C and add
/// N(0, (z C)^2); epsilon is accounted per client with q = 1 per round.
struct LocalDp {
  bool enabled = false;
  double clipping_norm = 1.0;
  double noise_multiplier = 1.0;
};

/// Largest over-commit factor: more would ask 100x the clients a round needs.
inline constexpr double max_overcommit = 100.0;

struct SimOptions {
  int rounds = 10;
  Index clients_per_round = 0;  ///< K; 0 = every online client
  Index min_clients = 1;        ///< a round with fewer updates is abandoned
  SelectionPolicy selection = SelectionPolicy::uniform;
  double overcommit = 1.3;      ///< in [1, max_overcommit]
  double deadline_seconds = 0.0;  ///< 0 = no deadline
  fl::OortOptions oort{};
  UpdateCodec codec = UpdateCodec::none;
  double topk_fraction = 0.01;  ///< k = max(1, round(fraction x d))
  Attack attack{};
  LocalDp local_dp{};
  double dp_delta = 1e-5;       ///< delta for the reported epsilon
  int eval_every = 1;           ///< evaluate every n rounds (and always the last)
  Index eval_batch = 1000;
  int optimizer_slots = 1;      ///< for the training-memory estimate (SGD momentum)
  int predict_epochs = 1;       ///< local epochs deadline-aware selection predicts with (the clients' epochs)
  Index memory_batch = 64;      ///< client batch for the training-memory estimate
  std::uint64_t seed = 1;
  bool client_parallel = true;
};

/// The strategy and the hooks into it the simulator needs.
template <class S>
struct StrategyBundle {
  std::unique_ptr<fl::Strategy<S>> strategy;
  fl::Scaffold<S>* scaffold = nullptr;               ///< SCAFFOLD in the chain: send c, collect delta c_i
  const fl::RdpAccountant* accountant = nullptr;     ///< central DP in the chain: report epsilon
  bool needs_loss_before = false;                    ///< q-FedAvg: clients report F_i(w_t)
  bool heterofl = false;                             ///< HeteroFL: devices train their profile's width
};

enum class RoundStatus { completed, abandoned };
inline const char* to_string(RoundStatus s) { return s == RoundStatus::completed ? "completed" : "abandoned"; }

/// One round's record (what `fleetdl fl simulate --json` prints).
struct RoundRecord {
  long round = 0;
  RoundStatus status = RoundStatus::completed;
  Index available = 0;     ///< online and eligible
  Index selected = 0;
  Index participated = 0;  ///< updates received (aggregated if the round completed)
  Index dropped = 0;       ///< dropped out during the round
  Index stragglers = 0;    ///< finished after the deadline / beyond the first K
  Index required = 0;      ///< updates needed to complete
  double accuracy = std::numeric_limits<double>::quiet_NaN();  ///< test accuracy (NaN: not evaluated)
  double loss = std::numeric_limits<double>::quiet_NaN();      ///< test loss
  double train_loss = std::numeric_limits<double>::quiet_NaN();///< example-weighted last-epoch loss of the participants
  double bytes_up = 0;     ///< all uploads that completed (participants)
  double bytes_down = 0;   ///< all downloads (every selected client)
  double round_seconds = 0;   ///< simulated
  double clock_seconds = 0;   ///< simulated, end of this round
  double energy_joules = 0;   ///< every selected client's spend, dropped ones and stragglers up to their drop or the round's close
  double epsilon = std::numeric_limits<double>::quiet_NaN();  ///< DP epsilon so far (NaN: no DP)
  double wall_seconds = 0;    ///< host time of this round
};

/// Totals over every round run so far, kept (and checkpointed) by the
/// simulator so that a resumed run reports the whole run.
struct RunTotals {
  double best_accuracy = -1;  ///< -1: no round evaluated yet
  long best_round = 0;
  double last_accuracy = -1;  ///< -1: no round evaluated yet
  double bytes_up = 0, bytes_down = 0, energy_joules = 0;
  double wall_seconds = 0;    ///< host time, summed over the rounds (all sessions)
};

template <class S>
class Simulator {
 public:
  /// Set up a run. `parts` gives each client's sample indices into `train`;
  /// the fleet has parts.size() devices with profiles drawn from `classes`.
  static Result<Simulator> create(nn::Model<S> model, StrategyBundle<S> bundle, const data::Dataset<S>& train,
                                  const data::Dataset<S>& test, data::ClientPartition parts,
                                  const std::vector<DeviceProfile>& classes, const SimOptions& opt,
                                  ThreadPool* pool = nullptr) {
    if (!bundle.strategy) return make_error(Errc::invalid_argument, "simulator: no strategy given");
    if (opt.rounds < 1) return make_error(Errc::invalid_argument, "simulator: rounds must be >= 1");
    if (parts.empty()) return make_error(Errc::invalid_argument, "simulator: no clients");
    if (opt.clients_per_round < 0) return make_error(Errc::invalid_argument, "simulator: clients_per_round must be >= 0");
    if (opt.min_clients < 1) return make_error(Errc::invalid_argument, "simulator: min_clients must be >= 1");
    if (!(opt.overcommit >= 1.0 && opt.overcommit <= max_overcommit))
      return make_error(Errc::invalid_argument, "simulator: overcommit must be in [1, 100]");
    if (bundle.scaffold && opt.local_dp.enabled)
      return make_error(Errc::unsupported, "simulator: local DP is not supported with SCAFFOLD (the control-variate "
                                           "delta would reveal the unprivatized update)");
    if (!(opt.deadline_seconds >= 0.0)) return make_error(Errc::invalid_argument, "simulator: deadline must be >= 0");
    if (opt.selection == SelectionPolicy::deadline && !(opt.deadline_seconds > 0.0))
      return make_error(Errc::invalid_argument, "simulator: deadline-aware selection needs a deadline > 0");
    if (opt.selection == SelectionPolicy::oort) FLEETDL_TRY(fl::OortSelector::validate(opt.oort));
    if (!(opt.attack.fraction >= 0.0 && opt.attack.fraction < 1.0))
      return make_error(Errc::invalid_argument, "simulator: attack fraction must be in [0, 1)");
    if (!(opt.topk_fraction > 0.0 && opt.topk_fraction <= 1.0))
      return make_error(Errc::invalid_argument, "simulator: topk_fraction must be in (0, 1]");
    if (opt.eval_every < 1) return make_error(Errc::invalid_argument, "simulator: eval_every must be >= 1");
    if (train.empty() || test.empty()) return make_error(Errc::invalid_argument, "simulator: empty train or test set");
    for (std::size_t c = 0; c < parts.size(); ++c)
      for (const Index i : parts[c])
        if (i < 0 || i >= train.size())
          return make_error(Errc::invalid_argument, "simulator: client " + std::to_string(c) + " has sample index " +
                                                        std::to_string(i) + " outside the training set");
    auto fleet = make_fleet(classes, static_cast<Index>(parts.size()), Rng(opt.seed).fork(0xF1EE7).next_u64());
    if (!fleet) return std::move(fleet).error();
    auto cost = model.cost_report();
    Simulator s(std::move(model), std::move(bundle), train, test, std::move(parts), classes, std::move(*fleet), opt,
                pool);
    s.cost_ = model_cost(cost, sizeof(float));
    if (s.bundle_.heterofl) {
      s.hetero_ = true;
      for (const auto& p : s.classes_) {
        if (!(p.width > 0.0 && p.width <= 1.0))
          return make_error(Errc::invalid_argument, "profile '" + p.name + "': width must be in (0, 1]");
        auto sub = fl::make_submodel(s.model_, p.width);
        if (!sub) return make_error(sub.error().code, "profile '" + p.name + "': " + sub.error().message);
        s.class_cost_.push_back(model_cost(sub->cost_report(), sizeof(float)));
        s.class_params_.push_back(sub->param_count());
      }
    }
    s.setup();
    return s;
  }

  /// Run one round and return its record. An error (a strategy that rejects
  /// the round's updates) leaves the global model and all state unchanged.
  Result<RoundRecord> step() {
    auto rec = step_impl(round_ + 1);
    if (!rec) return rec;
    ++round_;
    totals_.bytes_up += rec->bytes_up;
    totals_.bytes_down += rec->bytes_down;
    totals_.energy_joules += rec->energy_joules;
    totals_.wall_seconds += rec->wall_seconds;
    if (std::isfinite(rec->accuracy)) {
      totals_.last_accuracy = rec->accuracy;
      if (rec->accuracy > totals_.best_accuracy) {
        totals_.best_accuracy = rec->accuracy;
        totals_.best_round = rec->round;
      }
    }
    return rec;
  }

  /// Run the remaining rounds; on_round sees every record as it is made.
  Result<std::vector<RoundRecord>> run(const std::function<void(const RoundRecord&)>& on_round = {}) {
    std::vector<RoundRecord> out;
    while (round_ < opt_.rounds) {
      auto rec = step();
      if (!rec) return std::move(rec).error();
      if (on_round) on_round(*rec);
      out.push_back(*rec);
    }
    return out;
  }

 private:
  Result<RoundRecord> step_impl(const long r) {
    const auto wall0 = std::chrono::steady_clock::now();
    RoundRecord rec;
    rec.round = r;
    Rng rr = round_rng(r);
    Rng select_rng = rr.fork(1), event_rng = rr.fork(2);

    // 1. availability
    std::vector<Index> online;
    for (Index c = 0; c < clients(); ++c) {
      const double u = event_rng.uniform();  // one draw per device, eligible or not: stable streams
      if (eligible_[static_cast<std::size_t>(c)] && u < profile(c).availability) online.push_back(c);
    }
    rec.available = static_cast<Index>(online.size());

    // 2. selection
    const Index k = opt_.clients_per_round > 0 ? opt_.clients_per_round : static_cast<Index>(online.size());
    std::vector<Index> chosen;
    switch (opt_.selection) {
      case SelectionPolicy::uniform: chosen = fl::select_uniform(online, k, select_rng); break;
      case SelectionPolicy::deadline: {
        std::vector<double> predicted;
        for (const Index c : online) predicted.push_back(timeline(c, false).finish());
        auto sel = fl::select_deadline_aware(online, predicted, opt_.deadline_seconds, k, select_rng);
        if (!sel) return std::move(sel).error();
        chosen = std::move(sel->clients);
        break;
      }
      case SelectionPolicy::overcommit: {
        auto sel = fl::select_overcommit(online, k, select_rng, opt_.overcommit);
        if (!sel) return std::move(sel).error();
        chosen = std::move(*sel);
        break;
      }
      case SelectionPolicy::oort: {
        auto sel = oort_->select(online, k, select_rng);
        if (!sel) return std::move(sel).error();
        chosen = std::move(sel->clients);
        break;
      }
    }
    auto instructions = bundle_.strategy->configure(r, chosen, select_rng);
    if (hetero_)
      for (auto& ins : instructions)
        if (ins.client >= 0 && ins.client < clients()) ins.config.width = profile(ins.client).width;
    rec.selected = static_cast<Index>(instructions.size());
    rec.required = std::max(opt_.min_clients, bundle_.strategy->min_updates());

    // 3. events and the timeline of every selected client
    struct Job {
      fl::ClientInstruction ins;
      Timeline t;
      bool dropped = false;
      double drop_at = 0;
      bool late = false;
    };
    std::vector<Job> jobs;
    for (const auto& ins : instructions) {
      if (ins.client < 0 || ins.client >= clients())
        return make_error(Errc::invalid_argument, "simulator: the strategy selected unknown client " +
                                                      std::to_string(ins.client));
      Rng ev = event_rng.fork(static_cast<std::uint64_t>(ins.client));
      Job j;
      j.ins = ins;
      const bool straggle = ev.uniform() < profile(ins.client).straggler_probability;
      j.t = timeline(ins.client, straggle, &ins.config);
      j.dropped = ev.uniform() < profile(ins.client).dropout;
      j.drop_at = ev.uniform() * j.t.finish();
      if (!j.dropped && opt_.deadline_seconds > 0.0 && j.t.finish() > opt_.deadline_seconds) j.late = true;
      jobs.push_back(j);
    }
    // over-commit: the first K to finish are kept, the rest are stragglers
    if (opt_.selection == SelectionPolicy::overcommit) {
      std::vector<std::pair<double, std::size_t>> finish;
      for (std::size_t i = 0; i < jobs.size(); ++i)
        if (!jobs[i].dropped && !jobs[i].late) finish.emplace_back(jobs[i].t.finish(), i);
      std::sort(finish.begin(), finish.end());
      for (std::size_t i = static_cast<std::size_t>(std::min<Index>(k, static_cast<Index>(finish.size())));
           i < finish.size(); ++i)
        jobs[finish[i].second].late = true;
    }
    std::vector<std::size_t> reporting, late;
    double round_time = 0;
    bool someone_late = false;
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      const Job& j = jobs[i];
      const double bytes_down = j.t.bytes_down;
      rec.bytes_down += bytes_down;
      if (j.dropped) {
        ++rec.dropped;
        late.push_back(i);  // charged below, once the round's end is known
      } else if (j.late) {
        ++rec.stragglers;
        someone_late = true;
        late.push_back(i);  // charged below, once the round's end is known
      } else {
        reporting.push_back(i);
        round_time = std::max(round_time, j.t.finish());
      }
    }
    // A client past the deadline keeps the server waiting until the deadline,
    // except under over-commit when K clients finished before it (the round
    // then closes at the K-th finish).
    bool missed_deadline = false;
    for (const Job& j : jobs)
      missed_deadline = missed_deadline || (!j.dropped && opt_.deadline_seconds > 0.0 && j.t.finish() > opt_.deadline_seconds);
    if (someone_late && missed_deadline &&
        (opt_.selection != SelectionPolicy::overcommit || static_cast<Index>(reporting.size()) < k))
      round_time = opt_.deadline_seconds;
    if (reporting.empty()) {
      // nobody reports: the server waits for the deadline, or until the last
      // client is known to be gone
      double last = 0;
      for (const Job& j : jobs) last = std::max(last, j.dropped ? j.drop_at : j.t.finish());
      // (nobody selected and no deadline: the round takes no time)
      round_time = opt_.deadline_seconds > 0.0 ? opt_.deadline_seconds : last;
    }
    // a straggler works until the round closes (the deadline, or the K-th
    // finish under over-commit); a dropped client until it drops, or until
    // the round closes if that is earlier
    for (const std::size_t i : late) {
      const Job& j = jobs[i];
      const double stop = std::min(round_time, j.dropped ? j.drop_at : j.t.finish());
      rec.energy_joules += (stop / j.t.finish()) * j.t.energy(profile(j.ins.client));
    }

    // 4. local training of the reporting clients
    std::vector<fl::ClientUpdate<S>> updates(reporting.size());
    std::vector<double> train_loss(reporting.size(), 0.0);
    std::vector<Error> errors(reporting.size());
    std::vector<ClientSideState> staged(reporting.size());
    const Vector<S> global = model_.params();
    Vector<S> server_c;
    if (bundle_.scaffold) {
      server_c = bundle_.scaffold->control();
      if (server_c.size() == 0) server_c.setZero(global.size());
    }
    std::mutex progress_mu;
    Index clients_done = 0;
    auto run_client = [&](std::size_t slot, ThreadPool* inner) {
      const Job& j = jobs[reporting[slot]];
      auto res = train_client(r, j.ins, global, server_c, inner, staged[slot]);
      if (on_client_) {
        std::lock_guard<std::mutex> lk(progress_mu);
        on_client_(r, ++clients_done, static_cast<Index>(reporting.size()));
      }
      if (!res) {
        errors[slot] = std::move(res).error();
        return;
      }
      train_loss[slot] = res->second;
      updates[slot] = std::move(res->first);
    };
    if (opt_.client_parallel && pool_ && pool_->size() > 1 && reporting.size() > 1)
      pool_->run(static_cast<int>(reporting.size()), [&](int i) { run_client(static_cast<std::size_t>(i), nullptr); });
    else
      for (std::size_t i = 0; i < reporting.size(); ++i) run_client(i, opt_.client_parallel ? nullptr : pool_);
    for (const auto& e : errors)
      if (e.code != Errc::ok) return e;

    double loss_sum = 0, examples = 0;
    for (std::size_t i = 0; i < reporting.size(); ++i) {
      loss_sum += train_loss[i] * static_cast<double>(updates[i].num_examples);
      examples += static_cast<double>(updates[i].num_examples);
      rec.bytes_up += jobs[reporting[i]].t.bytes_up;
      rec.energy_joules += jobs[reporting[i]].t.energy(profile(jobs[reporting[i]].ins.client));
    }
    if (examples > 0) rec.train_loss = loss_sum / examples;
    rec.participated = static_cast<Index>(updates.size());

    // 5. aggregate, or abandon the round
    if (rec.participated >= rec.required) {
      auto agg = bundle_.strategy->aggregate(r, model_.params(), std::span<const fl::ClientUpdate<S>>(updates));
      if (!agg) {
        model_.params() = global;
        return std::move(agg).error();
      }
      rec.status = RoundStatus::completed;
      // commit the client-side state of the clients that reported
      for (std::size_t i = 0; i < reporting.size(); ++i) commit(jobs[reporting[i]].ins.client, staged[i]);
      for (std::size_t i = 0; i < reporting.size(); ++i) {
        const Index c = jobs[reporting[i]].ins.client;
        ++participations_[static_cast<std::size_t>(c)];
        if (oort_) {
          const double l = train_loss[i];
          auto ok = oort_->report(c, updates[i].num_examples, l * l, jobs[reporting[i]].t.finish());
          (void)ok;  // counts and durations are positive by construction
        }
      }
      ++completed_;
    } else {
      rec.status = RoundStatus::abandoned;
      ++abandoned_;
      // the reporting clients still sent their (privatized) updates
      for (const std::size_t i : reporting) ++participations_[static_cast<std::size_t>(jobs[i].ins.client)];
    }
    rec.round_seconds = round_time;
    clock_ += round_time;
    rec.clock_seconds = clock_;

    // privacy spent so far
    if (bundle_.accountant) {
      auto e = bundle_.accountant->epsilon(opt_.dp_delta);
      if (e) rec.epsilon = e->epsilon;
    } else if (opt_.local_dp.enabled) {
      long most = 0;
      for (const auto n : participations_) most = std::max<long>(most, n);
      fl::RdpAccountant acc;
      if (most > 0 && acc.step(1.0, opt_.local_dp.noise_multiplier, most)) {
        auto e = acc.epsilon(opt_.dp_delta);
        if (e) rec.epsilon = e->epsilon;
      } else {
        rec.epsilon = 0.0;
      }
    }

    // 6. evaluation
    if (r % opt_.eval_every == 0 || r >= opt_.rounds) {
      const auto ev = nn::evaluate(model_, test_->images, test_->labels, opt_.eval_batch, pool_);
      rec.accuracy = ev.accuracy;
      rec.loss = ev.loss;
    }
    rec.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
    return rec;
  }

public:
  /// The run's state after the last round: round counters, clock, global
  /// parameters and buffers, participation counts, the strategy's server
  /// state (Strategy::save_state: momentum, moments, SCAFFOLD's c, a DP
  /// wrapper's noise stream, accountant and clip), Oort's per-client
  /// statistics and exploration rate, SCAFFOLD's c_i, the
  /// top-k residuals (as f32, or f64 when S is double). `fingerprint` identifies the experiment (the caller
  /// hashes its config) and must match at restore. Little-endian, CRC-32 at
  /// the end. Everything else is derived from (seed, round), so a restored
  /// run continues with the same bits as an uninterrupted one.
  Result<std::vector<std::uint8_t>> checkpoint(std::uint64_t fingerprint) const {
    ByteWriter w;
    w.raw(ckpt_magic, sizeof ckpt_magic);
    w.u32(ckpt_version);
    w.u64(fingerprint);
    w.u64(static_cast<std::uint64_t>(round_));
    w.u64(static_cast<std::uint64_t>(completed_));
    w.u64(static_cast<std::uint64_t>(abandoned_));
    w.f64(clock_);
    w.f64(totals_.best_accuracy);
    w.u64(static_cast<std::uint64_t>(totals_.best_round));
    w.f64(totals_.last_accuracy);
    w.f64(totals_.bytes_up);
    w.f64(totals_.bytes_down);
    w.f64(totals_.energy_joules);
    w.f64(totals_.wall_seconds);
    w.u64(static_cast<std::uint64_t>(clients()));
    auto vec = [&](const auto& v) {
      w.u64(static_cast<std::uint64_t>(v.size()));
      for (Index i = 0; i < v.size(); ++i) {
        if constexpr (sizeof(S) == 8)
          w.f64(static_cast<double>(v[i]));
        else
          w.f32(static_cast<float>(v[i]));
      }
    };
    vec(std::as_const(model_).params());
    vec(std::as_const(model_).buffers());
    for (const auto n : participations_) w.u32(static_cast<std::uint32_t>(n));
    ByteWriter strategy_state;
    bundle_.strategy->save_state(strategy_state);
    w.u64(static_cast<std::uint64_t>(strategy_state.size()));
    w.raw(strategy_state.bytes().data(), strategy_state.size());
    w.u8(oort_ ? 1 : 0);
    if (oort_) oort_->save_state(w);
    w.u8(bundle_.scaffold ? 1 : 0);
    if (bundle_.scaffold)
      for (const auto& st : scaffold_) vec(st.control());
    w.u8(feedback_.empty() ? 0 : 1);
    for (const auto& e : feedback_) vec(e.residual());
    std::vector<std::uint8_t> out = w.bytes();
    const std::uint32_t crc = crc32(out.data(), out.size());
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::uint8_t>(crc >> (8 * i)));
    return out;
  }

  /// Restore a checkpoint() of the same experiment. The bytes are untrusted:
  /// the CRC, the fingerprint, every count and size are checked against this
  /// simulator before anything changes; an error leaves the simulator as it was.
  Result<void> restore(std::span<const std::uint8_t> bytes, std::uint64_t fingerprint) {
    const auto bad = [](Errc c, const std::string& what) { return make_error(c, "checkpoint: " + what); };
    if (bytes.size() < sizeof ckpt_magic + 4 + 4) return bad(Errc::truncated, "too short to be a checkpoint");
    if (std::memcmp(bytes.data(), ckpt_magic, sizeof ckpt_magic) != 0) return bad(Errc::bad_magic, "not a fleetdl simulator checkpoint");
    std::uint32_t stored = 0;
    for (int i = 0; i < 4; ++i) stored |= static_cast<std::uint32_t>(bytes[bytes.size() - 4 + static_cast<std::size_t>(i)]) << (8 * i);
    if (crc32(bytes.data(), bytes.size() - 4) != stored) return bad(Errc::checksum_mismatch, "CRC mismatch (damaged file)");
    ByteReader r(bytes.data() + sizeof ckpt_magic, bytes.size() - sizeof ckpt_magic - 4);
    std::uint32_t version = 0;
    std::uint64_t fp = 0, round = 0, completed = 0, abandoned = 0, n = 0;
    double clock = 0;
    if (!r.u32(version)) return bad(Errc::truncated, "truncated header");
    if (version != ckpt_version) return bad(Errc::bad_version, "version " + std::to_string(version) + " is not supported");
    RunTotals tot;
    std::uint64_t best_round = 0;
    if (!r.u64(fp) || !r.u64(round) || !r.u64(completed) || !r.u64(abandoned) || !r.f64(clock) ||
        !r.f64(tot.best_accuracy) || !r.u64(best_round) || !r.f64(tot.last_accuracy) || !r.f64(tot.bytes_up) ||
        !r.f64(tot.bytes_down) || !r.f64(tot.energy_joules) || !r.f64(tot.wall_seconds) || !r.u64(n))
      return bad(Errc::truncated, "truncated header");
    if (fp != fingerprint) return bad(Errc::invalid_argument, "it was written by a different experiment (config or seed changed)");
    if (n != static_cast<std::uint64_t>(clients())) return bad(Errc::corrupt, "client count differs");
    if (round > static_cast<std::uint64_t>(opt_.rounds) || completed > round || abandoned > round || completed + abandoned != round || !std::isfinite(clock) || clock < 0)
      return bad(Errc::corrupt, "inconsistent round counters");
    const auto accuracy_ok = [](double a) { return a == -1.0 || (a >= 0.0 && a <= 1.0); };
    const auto total_ok = [](double v) { return std::isfinite(v) && v >= 0.0; };
    if (!accuracy_ok(tot.best_accuracy) || !accuracy_ok(tot.last_accuracy) || best_round > round ||
        !total_ok(tot.bytes_up) || !total_ok(tot.bytes_down) || !total_ok(tot.energy_joules) || !total_ok(tot.wall_seconds))
      return bad(Errc::corrupt, "inconsistent run totals");
    tot.best_round = static_cast<long>(best_round);
    constexpr std::size_t scalar_bytes = sizeof(S) == 8 ? 8 : 4;
    auto vec = [&](Index want_max, Vector<S>& out, bool exact) -> bool {
      std::uint64_t len = 0;
      if (!r.u64(len)) return false;
      if (exact ? len != static_cast<std::uint64_t>(want_max) : (len != 0 && len != static_cast<std::uint64_t>(want_max)))
        return false;
      if (r.remaining() / scalar_bytes < len) return false;
      out.resize(static_cast<Index>(len));
      for (Index i = 0; i < out.size(); ++i) {
        double x = 0;
        if constexpr (sizeof(S) == 8) {
          r.f64(x);
        } else {
          float f = 0;
          r.f32(f);
          x = f;
        }
        if (!std::isfinite(x)) return false;
        out[i] = static_cast<S>(x);
      }
      return true;
    };
    const Index d = model_.param_count();
    Vector<S> params, buffers;
    if (!vec(d, params, true) || !vec(model_.buffer_count(), buffers, true))
      return bad(Errc::corrupt, "model state does not match this model");
    std::vector<std::int32_t> parts(participations_.size());
    for (auto& p : parts) {
      std::uint32_t v = 0;
      if (!r.u32(v) || v > round) return bad(Errc::corrupt, "bad participation count");
      p = static_cast<std::int32_t>(v);
    }
    std::uint64_t state_len = 0;
    if (!r.u64(state_len) || state_len > r.remaining()) return bad(Errc::corrupt, "bad strategy state length");
    const std::uint8_t* state_bytes = r.take(static_cast<std::size_t>(state_len));
    std::uint8_t has_oort = 0;
    if (!r.u8(has_oort) || has_oort != (oort_ ? 1 : 0)) return bad(Errc::corrupt, "Oort state mismatch");
    std::optional<fl::OortSelector> oort;
    if (has_oort) {
      oort.emplace(oort_->options());
      if (auto ok = oort->load_state(r, clients()); !ok) return bad(Errc::corrupt, ok.error().message);
    }
    std::uint8_t has_scaffold = 0, has_feedback = 0;
    if (!r.u8(has_scaffold) || has_scaffold != (bundle_.scaffold ? 1 : 0)) return bad(Errc::corrupt, "SCAFFOLD state mismatch");
    std::vector<Vector<S>> ci;
    if (has_scaffold) {
      ci.resize(scaffold_.size());
      for (auto& v : ci)
        if (!vec(d, v, false)) return bad(Errc::corrupt, "bad SCAFFOLD client variate");
    }
    if (!r.u8(has_feedback) || has_feedback != (feedback_.empty() ? 0 : 1)) return bad(Errc::corrupt, "codec state mismatch");
    std::vector<Vector<S>> res(feedback_.size());
    for (std::size_t c = 0; c < res.size(); ++c)  // a HeteroFL client's residual has its sub-model's size
      if (!vec(hetero_ ? class_params_[fleet_[c].profile] : d, res[c], false))
        return bad(Errc::corrupt, "bad error-feedback residual of client " + std::to_string(c));
    if (r.remaining() != 0) return bad(Errc::corrupt, std::to_string(r.remaining()) + " trailing bytes");
    // the strategy last: it checks its own bytes and changes nothing on error
    ByteReader sr(state_bytes, static_cast<std::size_t>(state_len));
    if (auto ok = bundle_.strategy->load_state(sr, d); !ok) return bad(Errc::corrupt, ok.error().message);
    // all checked: commit
    model_.params() = params;
    model_.buffers() = buffers;
    participations_ = std::move(parts);
    for (std::size_t i = 0; i < ci.size(); ++i) scaffold_[i].restore(std::move(ci[i]));
    if (oort) oort_ = std::move(oort);
    for (std::size_t i = 0; i < res.size(); ++i) feedback_[i].residual() = std::move(res[i]);
    round_ = static_cast<long>(round);
    completed_ = static_cast<long>(completed);
    abandoned_ = static_cast<long>(abandoned);
    clock_ = clock;
    totals_ = tot;
    return success();
  }

  /// Progress: called (serialized) after each client of round r finishes
  /// local training, with the count done and the round's total.
  void on_client_trained(std::function<void(long round, Index done, Index total)> f) { on_client_ = std::move(f); }

  ConstVectorMap<S> global() const { return std::as_const(model_).params(); }
  nn::Model<S>& model() { return model_; }
  Index clients() const { return static_cast<Index>(parts_.size()); }
  long round() const { return round_; }
  long completed_rounds() const { return completed_; }
  long abandoned_rounds() const { return abandoned_; }
  double clock_seconds() const { return clock_; }
  /// Totals over every round run, including those before a restore.
  const RunTotals& totals() const { return totals_; }
  const std::vector<Device>& fleet() const { return fleet_; }
  const ModelCost& model_cost_summary() const { return cost_; }
  Index eligible_clients() const { return static_cast<Index>(std::count(eligible_.begin(), eligible_.end(), true)); }
  /// Training memory a device needs for this model (bytes).
  double training_memory() const { return train_mem_; }
  bool is_malicious(Index c) const { return malicious_[static_cast<std::size_t>(c)]; }

  /// Bytes the simulator holds per client (see the file comment), averaged
  /// over the fleet, with parameter-sized state counted at its current size.
  double bytes_per_client() const {
    double total = 0;
    total += static_cast<double>(fleet_.size() * sizeof(Device));
    for (const auto& p : parts_) total += static_cast<double>(p.capacity() * sizeof(Index) + sizeof(p));
    total += static_cast<double>(participations_.size() * sizeof(std::int32_t));
    total += static_cast<double>(eligible_.size()) / 8.0 + static_cast<double>(malicious_.size()) / 8.0;
    for (const auto& s : scaffold_) total += static_cast<double>(s.bytes() + sizeof(s));
    for (const auto& e : feedback_) total += static_cast<double>(e.residual().size() * static_cast<Index>(sizeof(S)) + static_cast<Index>(sizeof(e)));
    if (oort_) total += 2.0 * sizeof(double) * static_cast<double>(parts_.size());
    return total / static_cast<double>(parts_.size());
  }

 private:
  /// Simulated timeline of one client in one round.
  struct Timeline {
    double download = 0, compute = 0, upload = 0;
    double macs = 0, bytes_down = 0, bytes_up = 0;
    double finish() const { return download + compute + upload; }
    double energy(const DeviceProfile& p) const {
      return macs * p.energy_per_mac_joules + (bytes_down + bytes_up) * p.energy_per_byte_joules;
    }
  };

  /// Client-side state changed by one round of training, committed only if
  /// the round completes.
  struct ClientSideState {
    bool has_scaffold = false;
    fl::ScaffoldClientState<S> scaffold;
    bool has_feedback = false;
    fl::ErrorFeedback<S> feedback{0};
  };

  Simulator(nn::Model<S> model, StrategyBundle<S> bundle, const data::Dataset<S>& train, const data::Dataset<S>& test,
            data::ClientPartition parts, std::vector<DeviceProfile> classes, std::vector<Device> fleet,
            const SimOptions& opt, ThreadPool* pool)
      : model_(std::move(model)),
        bundle_(std::move(bundle)),
        train_(&train),
        test_(&test),
        parts_(std::move(parts)),
        classes_(std::move(classes)),
        fleet_(std::move(fleet)),
        opt_(opt),
        pool_(pool),
        rng_(opt.seed) {}

  void setup() {
    const std::size_t n = parts_.size();
    const int extra = bundle_.scaffold ? 3 : 1;  // the received global (+ c and c_i)
    train_mem_ = training_memory_bytes(cost_, opt_.memory_batch, opt_.optimizer_slots, extra);
    eligible_.assign(n, false);
    for (std::size_t c = 0; c < n; ++c) {
      // a client's batches hold at most its own samples
      const Index samples = static_cast<Index>(parts_[c].size());
      const Index batch = std::min(opt_.memory_batch, samples);
      const auto k = fleet_[c].profile;
      const double need = training_memory_bytes(hetero_ ? class_cost_[k] : cost_, batch, opt_.optimizer_slots, extra);
      eligible_[c] = samples > 0 && classes_[k].memory_bytes >= need;
    }
    participations_.assign(n, 0);
    if (bundle_.scaffold) scaffold_.resize(n);
    if (opt_.codec == UpdateCodec::topk) feedback_.assign(n, fl::ErrorFeedback<S>(0));
    if (opt_.selection == SelectionPolicy::oort) oort_.emplace(opt_.oort);
    malicious_.assign(n, false);
    // round(fraction x N), but never the whole fleet
    const auto bad = std::min(n - 1, static_cast<std::size_t>(std::llround(opt_.attack.fraction * static_cast<double>(n))));
    if (opt_.attack.kind != AttackKind::none && bad > 0) {
      std::vector<Index> ids(n);
      for (std::size_t i = 0; i < n; ++i) ids[i] = static_cast<Index>(i);
      Rng ar = rng_.fork(0xA77AC);
      ar.shuffle(ids.begin(), ids.end());
      for (std::size_t i = 0; i < bad; ++i) malicious_[static_cast<std::size_t>(ids[i])] = true;
    }
  }

  const DeviceProfile& profile(Index c) const { return classes_[fleet_[static_cast<std::size_t>(c)].profile]; }

  /// The cost of the model a device trains: the full model, or (HeteroFL)
  /// its profile's width-scaled sub-model.
  const ModelCost& cost_of(Index c) const {
    return hetero_ ? class_cost_[fleet_[static_cast<std::size_t>(c)].profile] : cost_;
  }

  /// Encoded upload size of one update of dimension d.
  double upload_bytes(Index d) const {
    switch (opt_.codec) {
      case UpdateCodec::none: return static_cast<double>(d) * sizeof(float);
      case UpdateCodec::fp16: return static_cast<double>(fl::fp16_encoded_bytes(d));
      case UpdateCodec::q8: return static_cast<double>(fl::quantized_encoded_bytes(d, 8));
      case UpdateCodec::q4: return static_cast<double>(fl::quantized_encoded_bytes(d, 4));
      case UpdateCodec::q2: return static_cast<double>(fl::quantized_encoded_bytes(d, 2));
      case UpdateCodec::topk: return static_cast<double>(fl::topk_encoded_bytes(d, topk_k(d)));
    }
    return 0;
  }
  Index topk_k(Index d) const {
    return std::max<Index>(1, static_cast<Index>(std::llround(opt_.topk_fraction * static_cast<double>(d))));
  }

  Timeline timeline(Index c, bool straggle, const fl::ClientConfig* cfg = nullptr) const {
    const auto& p = profile(c);
    const ModelCost& mc = cost_of(c);
    const double speed = static_cast<double>(fleet_[static_cast<std::size_t>(c)].speed);
    const int epochs = cfg ? cfg->epochs : opt_.predict_epochs;
    const double samples = static_cast<double>(parts_[static_cast<std::size_t>(c)].size());
    const Index d = mc.params;
    Timeline t;
    t.macs = 3.0 * mc.forward_macs_per_sample * samples * epochs;
    t.compute = t.macs / (p.macs_per_second * speed) * (straggle ? p.straggler_slowdown : 1.0);
    t.bytes_down = static_cast<double>(d) * sizeof(float) * (bundle_.scaffold ? 2.0 : 1.0);
    t.bytes_up = upload_bytes(d) + (bundle_.scaffold ? static_cast<double>(d) * sizeof(float) : 0.0);
    t.download = p.latency_seconds + t.bytes_down / p.down_bytes_per_second;
    t.upload = p.latency_seconds + t.bytes_up / p.up_bytes_per_second;
    return t;
  }

  /// Local training of one client. Returns its update and last-epoch loss;
  /// the client-side state it would keep is staged in `st`.
  Result<std::pair<fl::ClientUpdate<S>, double>> train_client(long r, const fl::ClientInstruction& ins,
                                                              const Vector<S>& global_model, const Vector<S>& server_c,
                                                              ThreadPool* inner, ClientSideState& st) {
    const Index c = ins.client;
    const auto& cfg = ins.config;
    const auto& idx = parts_[static_cast<std::size_t>(c)];
    data::Dataset<S> local = train_->subset(idx);
    const bool bad = malicious_[static_cast<std::size_t>(c)];
    if (bad && opt_.attack.kind == AttackKind::label_flip)
      for (auto& y : local.labels) y = static_cast<std::uint8_t>(local.classes - 1 - y);
    Rng crng = round_rng(r).fork(3).fork(static_cast<std::uint64_t>(c));
    nn::Model<S> m = model_;
    m.params() = global_model;
    if (cfg.width < 1.0) {  // HeteroFL: this device trains a width-scaled sub-model
      if (cfg.scaffold)
        return make_error(Errc::unsupported, "client " + std::to_string(c) + ": SCAFFOLD with sub-models is not supported");
      auto sub = fl::make_submodel(m, cfg.width);
      if (!sub) return std::move(sub).error();
      m = std::move(*sub);
    }
    // what this client starts from: the global model, or its sub-model's share
    const Vector<S> global = m.params();

    fl::LocalTrainOptions<S> lo;
    lo.seed = crng.next_u64();
    lo.loss_before = bundle_.needs_loss_before;
    lo.eval_batch = opt_.eval_batch;
    fl::ClientInstruction ins_here = ins;
    ins_here.config.scaffold = cfg.scaffold && bundle_.scaffold;  // no SCAFFOLD in the chain: plain SGD
    if (ins_here.config.scaffold) {
      st.has_scaffold = true;
      st.scaffold = scaffold_[static_cast<std::size_t>(c)];
      lo.scaffold = &st.scaffold;
      lo.server_c = std::span<const S>(server_c.data(), static_cast<std::size_t>(server_c.size()));
    }
    auto trained = fl::train_local(m, local, ins_here, lo, inner);
    if (!trained) return std::move(trained).error();
    fl::ClientUpdate<S> u = std::move(trained->update);
    u.base_round = r - 1;
    const double last_loss = trained->last_loss;

    // Byzantine behaviour replaces what is sent
    if (bad && opt_.attack.kind == AttackKind::sign_flip) {
      u.params = global - static_cast<S>(opt_.attack.scale) * (u.params - global);
    } else if (bad && opt_.attack.kind == AttackKind::gaussian) {
      Rng nr = crng.fork(0x6A55);
      for (Index i = 0; i < u.params.size(); ++i)
        u.params[i] = global[i] + static_cast<S>(opt_.attack.stddev * nr.normal());
    }

    // local DP, then the codec on the delta
    if (opt_.local_dp.enabled) {
      Rng dr = crng.fork(0xD9);
      auto rep_dp = fl::privatize_update_local(u.params, global, opt_.local_dp.clipping_norm,
                                               opt_.local_dp.noise_multiplier * opt_.local_dp.clipping_norm, dr);
      if (!rep_dp) return std::move(rep_dp).error();
    }
    if (opt_.codec != UpdateCodec::none) {
      Vector<S> delta = u.params - global;
      Rng qr = crng.fork(0xC0DEC);
      Result<std::vector<std::uint8_t>> bytes = make_error(Errc::invalid_argument, "codec");
      switch (opt_.codec) {
        case UpdateCodec::fp16: bytes = fl::encode_fp16(delta); break;
        case UpdateCodec::q8: bytes = fl::encode_quantized(delta, 8, qr); break;
        case UpdateCodec::q4: bytes = fl::encode_quantized(delta, 4, qr); break;
        case UpdateCodec::q2: bytes = fl::encode_quantized(delta, 2, qr); break;
        case UpdateCodec::topk: {
          st.has_feedback = true;
          st.feedback = feedback_[static_cast<std::size_t>(c)];
          const Index k = topk_k(delta.size());
          bytes = fl::encode_topk(delta, k, &st.feedback);
          break;
        }
        case UpdateCodec::none: break;
      }
      if (!bytes) return std::move(bytes).error();
      auto dec = fl::decode_update<S>(*bytes, delta.size());
      if (!dec) return std::move(dec).error();
      u.params = global + *dec;
    }
    return std::make_pair(std::move(u), last_loss);
  }

  /// Round r's stream, under a tag of its own so that no round number can
  /// meet the run's other streams (attackers, fleet draw, partition).
  Rng round_rng(long r) const { return rng_.fork(round_stream_tag).fork(static_cast<std::uint64_t>(r)); }

  void commit(Index c, ClientSideState& st) {
    if (st.has_scaffold) scaffold_[static_cast<std::size_t>(c)] = std::move(st.scaffold);
    if (st.has_feedback) feedback_[static_cast<std::size_t>(c)] = std::move(st.feedback);
  }

  nn::Model<S> model_;
  StrategyBundle<S> bundle_;
  const data::Dataset<S>* train_;
  const data::Dataset<S>* test_;
  data::ClientPartition parts_;
  std::vector<DeviceProfile> classes_;
  std::vector<Device> fleet_;
  SimOptions opt_;
  ThreadPool* pool_;
  Rng rng_;
  ModelCost cost_;
  bool hetero_ = false;
  std::vector<ModelCost> class_cost_;  ///< HeteroFL: the cost of each profile's sub-model
  std::vector<Index> class_params_;    ///< HeteroFL: the parameter count of each profile's sub-model
  double train_mem_ = 0;
  std::vector<bool> eligible_, malicious_;
  std::vector<std::int32_t> participations_;
  std::vector<fl::ScaffoldClientState<S>> scaffold_;
  std::vector<fl::ErrorFeedback<S>> feedback_;
  std::optional<fl::OortSelector> oort_;
  static constexpr char ckpt_magic[8] = {'F', 'D', 'L', 'S', 'I', 'M', 'C', 'K'};
  static constexpr std::uint32_t ckpt_version = 3;  // 2: run totals; round streams under their own tag; 3: strategy and Oort state
  static constexpr std::uint64_t round_stream_tag = 0x524F554E44;  // "ROUND"
  std::function<void(long, Index, Index)> on_client_;
  long round_ = 0, completed_ = 0, abandoned_ = 0;
  double clock_ = 0;
  RunTotals totals_;
};

}  // namespace fleetdl::sim
