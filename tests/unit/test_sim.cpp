// tests/unit/test_sim.cpp — the fleet simulator (sim/simulator.hpp) end to
// end, with real local training on Fashion-MNIST subsets: experiments are
// built the way `fleetdl fl simulate` builds them (sim::parse_config on a
// JSON document, make_partition, make_model + init from the seed,
// make_strategy, Simulator::create), so the config path is exercised too.
//
//   * Byzantine attacks at f/n = 0.2 against FedMedian, FedTrimmedAvg, Krum
//     and Bulyan, and FedAvg's degradation under the same attacks
//   * determinism: same seed => same bits (also across pool sizes with
//     client_parallel), another seed => other bits
//   * dropouts and abandoned rounds, deadlines and stragglers, over-commit
//   * cost accounting against hand-computed values from the profile and the
//     model's cost report (codecs, SCAFFOLD's extra vectors, energy, time)
//   * scale (1000 clients) and bytes_per_client, SCAFFOLD's per-client state
//   * central and local DP epsilon through the simulator
//   * SCAFFOLD, FedProx, FedNova, q-FedAvg and FedAdam learn through it
//
// Every case needs the Fashion-MNIST files (Debian package
// dataset-fashion-mnist, FLEETDL_FASHION_MNIST_DIR) and is skipped with a
// warning without them. All runs use fixed seeds: the numbers below are the
// same on every run of the same build. Tagged [sim]; the long ones [slow].
//
// Three cases are regressions for simulator defects found while writing
// these tests (marked REGRESSION below).
#include "fleetdl/core/json.hpp"
#include "fleetdl/core/parallel.hpp"
#include "fleetdl/data/dataset.hpp"
#include "fleetdl/fl/codec.hpp"
#include "fleetdl/fl/dp.hpp"
#include "fleetdl/fl/heterofl.hpp"
#include "fleetdl/nn/train.hpp"
#include "fleetdl/nn/zoo.hpp"
#include "fleetdl/sim/config.hpp"
#include "fleetdl/sim/profile.hpp"
#include "fleetdl/sim/simulator.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

using fleetdl::Index;
using fleetdl::Rng;
using fleetdl::ThreadPool;
using fleetdl::Vector;
namespace fd = fleetdl::data;
namespace fl = fleetdl::fl;
namespace nn = fleetdl::nn;
namespace sim = fleetdl::sim;
namespace fs = std::filesystem;

using Sim = sim::Simulator<float>;
using Data = fd::Dataset<float>;

// --------------------------------------------------------------------------
// Data

bool have_fashion() {
  const fs::path dir = FLEETDL_FASHION_MNIST_DIR;
  for (const char* f : {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                        "t10k-labels-idx1-ubyte.gz"})
    if (!fs::exists(dir / f)) return false;
  return true;
}

#define SIM_REQUIRE_FASHION()                                                                                    \
  do {                                                                                                           \
    if (!have_fashion()) {                                                                                       \
      WARN("Fashion-MNIST not installed in " FLEETDL_FASHION_MNIST_DIR " (Debian package dataset-fashion-mnist); " \
           "skipped");                                                                                           \
      return;                                                                                                    \
    }                                                                                                            \
  } while (0)

/// The first 10000 training and 5000 test images, loaded once.
const Data& full_split(bool train) {
  static std::map<bool, std::unique_ptr<Data>> cache;
  auto& slot = cache[train];
  if (!slot) {
    auto r = fd::load_fashion_mnist<float>(FLEETDL_FASHION_MNIST_DIR, train, train ? 10000 : 5000);
    INFO((r ? std::string() : r.error().message));
    REQUIRE(r.ok());
    slot = std::make_unique<Data>(std::move(*r));
  }
  return *slot;
}

/// A (train, test) pair of prefixes of Fashion-MNIST, cached by size (the
/// simulator keeps pointers to both, so they must outlive it).
struct Split {
  const Data& train;
  const Data& test;
};
Split fashion(Index n_train, Index n_test) {
  static std::map<std::pair<bool, Index>, std::unique_ptr<Data>> cache;
  auto get = [&](bool train, Index n) -> const Data& {
    auto& slot = cache[{train, n}];
    if (!slot) slot = std::make_unique<Data>(full_split(train).head(n));
    REQUIRE(slot->size() == n);
    return *slot;
  };
  return Split{get(true, n_train), get(false, n_test)};
}

// --------------------------------------------------------------------------
// Experiments, built as the CLI builds them

/// A config document; the JSON members are spliced in as text.
struct Spec {
  std::uint64_t seed = 7;
  int rounds = 3;
  int clients = 10;
  int eval_every = 1;
  std::string model = "cnn1";
  std::string client = R"({"lr": 0.01, "momentum": 0.9, "epochs": 1, "batch": 32})";
  std::string strategy = R"({"name": "fedavg"})";
  std::string partition = R"({"kind": "iid"})";
  std::string selection = "{}";
  std::string codec = "{}";
  std::string dp = "{}";
  std::string attack = "{}";
  std::string profiles;  ///< a JSON array, or empty: one default profile
  bool client_parallel = true;

  std::string json() const {
    std::ostringstream o;
    o << "{\"seed\": " << seed << ", \"rounds\": " << rounds << ", \"clients\": " << clients
      << ", \"eval_every\": " << eval_every << ", \"model\": \"" << model << "\", \"client_parallel\": "
      << (client_parallel ? "true" : "false") << ", \"partition\": " << partition << ", \"client\": " << client
      << ", \"strategy\": " << strategy << ", \"selection\": " << selection << ", \"codec\": " << codec
      << ", \"dp\": " << dp << ", \"attack\": " << attack;
    if (!profiles.empty()) o << ", \"profiles\": " << profiles;
    o << "}";
    return o.str();
  }
};

sim::SimConfig parse(const Spec& spec) {
  const std::string text = spec.json();
  INFO(text);
  auto doc = fleetdl::json::parse(text);
  INFO((doc ? std::string() : doc.error().message));
  REQUIRE(doc.ok());
  auto cfg = sim::parse_config(*doc);
  INFO((cfg ? std::string() : cfg.error().message));
  REQUIRE(cfg.ok());
  return std::move(*cfg);
}

/// What `fleetdl fl simulate` does with a config (orchestrator/cli/fleetdl.cpp),
/// with `adjust` applied to the parsed config before anything is built.
template <class Adjust>
Sim build(const Spec& spec, const Split& data, ThreadPool* pool, Adjust adjust) {
  sim::SimConfig cfg = parse(spec);
  adjust(cfg);
  auto parts = sim::make_partition(cfg, data.train.labels, data.train.classes);
  REQUIRE(parts.ok());
  auto model = nn::make_model<float>(cfg.model, data.train.shape, data.train.classes);
  REQUIRE(model.ok());
  model->init(Rng(cfg.seed).fork(0x1417).next_u64());
  auto bundle = sim::make_strategy<float>(cfg, &*model);
  INFO((bundle ? std::string() : bundle.error().message));
  REQUIRE(bundle.ok());
  std::vector<sim::DeviceProfile> profiles = cfg.profiles;
  if (profiles.empty()) profiles.push_back(sim::DeviceProfile{});
  auto s = Sim::create(std::move(*model), std::move(*bundle), data.train, data.test, std::move(*parts), profiles,
                       cfg.sim, pool);
  INFO((s ? std::string() : s.error().message));
  REQUIRE(s.ok());
  return std::move(*s);
}

Sim build(const Spec& spec, const Split& data, ThreadPool* pool) {
  return build(spec, data, pool, [](sim::SimConfig&) {});
}

std::vector<sim::RoundRecord> run_all(Sim& s) {
  auto r = s.run();
  INFO((r ? std::string() : r.error().message));
  REQUIRE(r.ok());
  return std::move(*r);
}

double final_accuracy(const std::vector<sim::RoundRecord>& recs) {
  REQUIRE(!recs.empty());
  REQUIRE(std::isfinite(recs.back().accuracy));
  return recs.back().accuracy;
}

bool same_bits(const Vector<float>& a, const Vector<float>& b) {
  return a.size() == b.size() && (a.array() == b.array()).all();
}

std::string pct(double a) {
  std::ostringstream o;
  o.setf(std::ios::fixed);
  o.precision(1);
  o << 100.0 * a;
  return o.str();
}

/// The simulator's cost model (sim/profile.hpp) for one client, computed
/// here independently from the profile and the model's cost report.
struct Expected {
  double macs, compute, bytes_down, bytes_up, download, upload, energy;
  double finish() const { return download + compute + upload; }
};
Expected expected_cost(const sim::DeviceProfile& p, double fwd_macs, double samples, int epochs, double bytes_down,
                       double bytes_up, double speed = 1.0) {
  Expected e{};
  e.macs = 3.0 * fwd_macs * samples * epochs;
  e.compute = e.macs / (p.macs_per_second * speed);
  e.bytes_down = bytes_down;
  e.bytes_up = bytes_up;
  e.download = p.latency_seconds + bytes_down / p.down_bytes_per_second;
  e.upload = p.latency_seconds + bytes_up / p.up_bytes_per_second;
  e.energy = e.macs * p.energy_per_mac_joules + (bytes_down + bytes_up) * p.energy_per_byte_joules;
  return e;
}

/// cnn1 on 1x28x28: conv 1->12 3x3 (12*9 + 12 = 120), dense 12*13*13 -> 10
/// (2028*10 + 10 = 20290).
constexpr Index cnn1_params = 120 + 20290;

}  // namespace

// --------------------------------------------------------------------------
// 1. Byzantine attacks at f/n = 0.2

TEST_CASE("Simulator: robust rules hold accuracy under attacks at f/n = 0.2, FedAvg does not", "[sim][slow][attack]") {
  SIM_REQUIRE_FASHION();
  // 15 IID clients (200 images each), all in every round, f = round(0.2 * 15)
  // = 3 malicious; 20 rounds of 1 local epoch (SGD lr 0.01, momentum 0.9,
  // batch 32); the final model is evaluated once, on 5000 test images.
  // Bulyan needs n >= 4f + 3 = 15. With fewer rounds the runs are short of
  // their plateau and the gaps depend more on the seed (12 rounds: median and
  // trimmed mean 1.2 to 3.7 points below clean FedAvg under sign_flip across
  // the seeds tried; 20 rounds, seeds 1, 3, 7: at most 2.2 points).
  const Split data = fashion(3000, 5000);
  ThreadPool pool(2);
  auto spec_for = [](const std::string& rule, const std::string& attack) {
    Spec s;
    s.clients = 15;
    s.rounds = 20;
    s.eval_every = 20;
    s.strategy = rule == "fedavg" ? R"({"name": "fedavg"})"
                 : rule == "fedtrimmedavg" ? R"({"name": "fedtrimmedavg", "beta": 0.2, "f": 3})"
                                           : "{\"name\": \"" + rule + "\", \"f\": 3}";
    if (attack != "none") s.attack = "{\"kind\": \"" + attack + "\", \"fraction\": 0.2}";
    return s;
  };
  const std::vector<std::string> rules{"fedavg", "fedmedian", "fedtrimmedavg", "krum", "bulyan"};
  const std::vector<std::string> attacks{"none", "sign_flip", "gaussian", "label_flip"};
  std::map<std::pair<std::string, std::string>, double> acc;
  std::ostringstream table;
  table << "final test accuracy (%), 15 clients, f = 3, 20 rounds:\n" << "attack      ";
  for (const auto& r : rules) table << " " << r;
  table << "\n";
  for (const auto& a : attacks) {
    table << a << std::string(12 - a.size(), ' ');
    for (const auto& r : rules) {
      INFO("rule " << r << ", attack " << a);
      Sim s = build(spec_for(r, a), data, &pool);
      Index bad = 0;
      for (Index c = 0; c < s.clients(); ++c) bad += s.is_malicious(c) ? 1 : 0;
      CHECK(bad == (a == "none" ? 0 : 3));
      const auto recs = run_all(s);
      for (const auto& rec : recs) {
        CHECK(rec.status == sim::RoundStatus::completed);
        CHECK(rec.participated == 15);
      }
      acc[{r, a}] = final_accuracy(recs);
      table << " " << pct(acc[{r, a}]);
    }
    table << "\n";
  }
  WARN(table.str());

  const double clean = acc[{"fedavg", "none"}];
  CHECK(clean > 0.7);  // the clean baseline learned (measured: 75.9%)
  for (const std::string a : {"sign_flip", "gaussian", "label_flip"}) {
    INFO("attack " << a);
    // FedMedian, FedTrimmedAvg and Bulyan stay within 3 points of clean FedAvg.
    for (const std::string r : {"fedmedian", "fedtrimmedavg", "bulyan"}) {
      INFO("rule " << r << ": " << pct(acc[{r, a}]) << "% vs clean FedAvg " << pct(clean) << "%");
      CHECK(std::abs(acc[{r, a}] - clean) <= 0.03);
    }
    // Krum keeps ONE client's model (200 images, 1 epoch from the global), so
    // even without attack it ends well below FedAvg with this seed (measured:
    // 68.3% vs 75.9%; with seed 3 it is 73.6% vs 74.4%): it is held to its own
    // clean run. Which honest client Krum keeps changes when the 3 attackers
    // are in the round, and one client's model swings by a few points, so
    // the attacked run may also end ABOVE the clean one (measured: 70.6%):
    // the check is that the attack costs at most 3 points.
    INFO("krum: " << pct(acc[{"krum", a}]) << "% vs clean krum " << pct(acc[{"krum", "none"}]) << "%");
    CHECK(acc[{"krum", a}] >= acc[{"krum", "none"}] - 0.03);
  }
  // FedAvg is broken by the model-poisoning attacks: the 3 sign flips of
  // scale 4 cancel the 12 honest deltas on average (12 d - 3 * 4 d = 0), the
  // 3 gaussian ones add N(0, 3 / 15^2) to every coordinate every round.
  CHECK(acc[{"fedavg", "sign_flip"}] < clean - 0.25);
  CHECK(acc[{"fedavg", "gaussian"}] < clean - 0.25);
  // Label flipping by 20% of the clients is mild for FedAvg: below the clean
  // run, by 4.1 points here (1.3 with seed 3, 0.8 with seed 1).
  CHECK(acc[{"fedavg", "label_flip"}] < clean - 0.005);
}

// --------------------------------------------------------------------------
// 2. Determinism

TEST_CASE("Simulator: the same seed gives the same bits, another seed other bits", "[sim]") {
  SIM_REQUIRE_FASHION();
  const Split data = fashion(1000, 500);
  Spec spec;
  spec.rounds = 2;
  spec.selection = R"({"clients_per_round": 6})";
  // a straggling, dropping profile so that the event streams matter too
  spec.profiles = R"([{"name": "p", "speed_jitter": 0.3, "dropout": 0.1, "straggler_probability": 0.2}])";
  CHECK(parse(spec).sim.seed == spec.seed);  // the config's seed drives the simulator too
  auto params_of = [&](const Spec& s, int threads) {
    ThreadPool pool(threads);
    Sim sim = build(s, data, &pool);
    const auto recs = run_all(sim);
    REQUIRE(recs.size() == 2);
    CHECK(recs.back().participated > 0);
    return std::make_pair(Vector<float>(sim.global()), recs.back().accuracy);
  };
  SECTION("client_parallel: same bits for 1 and 2 threads, and run to run") {
    const auto a = params_of(spec, 2);
    const auto b = params_of(spec, 2);
    const auto c = params_of(spec, 1);
    CHECK(same_bits(a.first, b.first));
    CHECK(same_bits(a.first, c.first));
    CHECK(a.second == b.second);
    CHECK(a.second == c.second);
    Spec other = spec;
    other.seed = 8;
    const auto d = params_of(other, 2);
    CHECK(!same_bits(a.first, d.first));
    CHECK((a.first - d.first).norm() > 1e-3f);
  }
  SECTION("clients one after the other: same bits for the same thread count") {
    spec.client_parallel = false;
    const auto a = params_of(spec, 2);
    const auto b = params_of(spec, 2);
    CHECK(same_bits(a.first, b.first));
    CHECK(a.second == b.second);
  }
}

// --------------------------------------------------------------------------
// 3. Dropouts and abandoned rounds

TEST_CASE("Simulator: dropouts, abandoned rounds, and the clock never stops", "[sim]") {
  SIM_REQUIRE_FASHION();
  const Split data = fashion(1000, 500);
  ThreadPool pool(2);
  Spec spec;
  spec.clients = 20;  // 50 images each
  spec.rounds = 10;
  spec.profiles = R"([{"name": "flaky", "dropout": 0.3}])";

  SECTION("each round completes with enough updates or is abandoned with the model unchanged") {
    // 10 of 20 selected, 7 needed: P(>= 7 of 10 stay) = 0.65 at dropout 0.3
    spec.selection = R"({"clients_per_round": 10, "min_clients": 7})";
    Sim s = build(spec, data, &pool);
    Index dropped = 0;
    int completed = 0, abandoned = 0;
    double clock = 0;
    for (int r = 1; r <= spec.rounds; ++r) {
      INFO("round " << r);
      const Vector<float> before = s.global();
      auto rec_r = s.step();
      REQUIRE(rec_r.ok());
      const auto& rec = *rec_r;
      CHECK(rec.round == r);
      CHECK(rec.selected == 10);
      CHECK(rec.required == 7);
      CHECK(rec.stragglers == 0);  // no deadline
      CHECK(rec.participated + rec.dropped + rec.stragglers == rec.selected);
      CHECK(rec.round_seconds > 0.0);  // the clock advances, abandoned or not
      CHECK(rec.clock_seconds == Approx(clock + rec.round_seconds).epsilon(1e-12));
      clock = rec.clock_seconds;
      CHECK(rec.energy_joules > 0.0);
      CHECK(std::isfinite(rec.accuracy));
      if (rec.status == sim::RoundStatus::completed) {
        ++completed;
        CHECK(rec.participated >= rec.required);
        CHECK(!same_bits(before, s.global()));
      } else {
        ++abandoned;
        CHECK(rec.participated < rec.required);
        CHECK(same_bits(before, s.global()));
      }
      dropped += rec.dropped;
    }
    CHECK(s.round() == spec.rounds);
    CHECK(completed >= 1);
    CHECK(abandoned >= 1);
    CHECK(s.completed_rounds() == completed);
    CHECK(s.abandoned_rounds() == abandoned);
    CHECK(dropped > 0);
    CHECK(s.clock_seconds() == Approx(clock).epsilon(1e-12));
  }
  SECTION("with min_clients 1 every round completes despite dropouts") {
    spec.selection = R"({"clients_per_round": 10, "min_clients": 1})";
    Sim s = build(spec, data, &pool);
    const auto recs = run_all(s);
    Index dropped = 0;
    for (const auto& rec : recs) {
      CHECK(rec.status == sim::RoundStatus::completed);
      CHECK(rec.participated >= 1);
      CHECK(rec.participated + rec.dropped + rec.stragglers == rec.selected);
      dropped += rec.dropped;
    }
    CHECK(dropped > 0);
    CHECK(s.abandoned_rounds() == 0);
  }
  SECTION("everyone drops: every round abandoned, the run still ends and time passes") {
    spec.profiles = R"([{"name": "gone", "dropout": 1.0}])";
    spec.selection = R"({"clients_per_round": 5})";
    Sim s = build(spec, data, &pool);
    const Vector<float> init = s.global();
    const auto recs = run_all(s);
    REQUIRE(recs.size() == 10);
    double prev = 0;
    for (const auto& rec : recs) {
      CHECK(rec.status == sim::RoundStatus::abandoned);
      CHECK(rec.participated == 0);
      CHECK(rec.dropped == 5);
      CHECK(rec.bytes_up == 0.0);
      CHECK(rec.round_seconds > 0.0);
      CHECK(rec.clock_seconds > prev);
      prev = rec.clock_seconds;
    }
    CHECK(same_bits(init, s.global()));
    CHECK(s.abandoned_rounds() == 10);
  }
}

// --------------------------------------------------------------------------
// 4. Deadlines, stragglers and over-commit

TEST_CASE("Simulator: deadlines make slow devices stragglers; over-commit keeps the first K", "[sim]") {
  SIM_REQUIRE_FASHION();
  const Split data = fashion(1000, 500);
  ThreadPool pool(2);
  // 20 clients of 50 images; half "fast" (the default profile), half "slow"
  // (100x less compute). Predicted finish times from the cost model decide
  // the deadline: between the two classes.
  Spec spec;
  spec.clients = 20;
  spec.rounds = 2;
  spec.profiles = R"([{"name": "fast"}, {"name": "slow", "macs_per_second": 2e6}])";
  const sim::SimConfig cfg = parse(spec);
  REQUIRE(cfg.profiles.size() == 2);
  auto model = nn::make_model<float>("cnn1");
  REQUIRE(model.ok());
  const auto cost = sim::model_cost(model->cost_report(), sizeof(float));
  REQUIRE(cost.params == cnn1_params);
  const double d4 = static_cast<double>(cost.params) * 4.0;
  const auto fast = expected_cost(cfg.profiles[0], cost.forward_macs_per_sample, 50, 1, d4, d4);
  const auto slow = expected_cost(cfg.profiles[1], cost.forward_macs_per_sample, 50, 1, d4, d4);
  const double deadline = std::round((fast.finish() + slow.finish()) / 2.0);
  REQUIRE(fast.finish() < deadline);
  REQUIRE(deadline < slow.finish());
  const std::string dl = std::to_string(deadline);

  SECTION("uniform selection: the slow ones straggle and the round lasts until the deadline") {
    spec.selection = "{\"deadline_seconds\": " + dl + "}";
    Sim s = build(spec, data, &pool);
    Index n_slow = 0;
    for (const auto& dev : s.fleet()) n_slow += dev.profile == 1 ? 1 : 0;
    REQUIRE(n_slow == 10);
    const auto recs = run_all(s);
    for (const auto& rec : recs) {
      CHECK(rec.status == sim::RoundStatus::completed);
      CHECK(rec.selected == 20);
      CHECK(rec.stragglers == n_slow);
      CHECK(rec.participated == 20 - n_slow);
      CHECK(rec.dropped == 0);
      CHECK(rec.round_seconds == deadline);
      // stragglers download and work until the deadline; only the fast upload
      CHECK(rec.bytes_down == Approx(20 * d4).epsilon(1e-12));
      CHECK(rec.bytes_up == Approx(10 * d4).epsilon(1e-12));
      CHECK(rec.energy_joules ==
            Approx(10 * fast.energy + 10 * (deadline / slow.finish()) * slow.energy).epsilon(1e-9));
    }
    CHECK(s.clock_seconds() == Approx(2 * deadline).epsilon(1e-12));
  }
  SECTION("deadline-aware selection leaves the slow ones out") {
    spec.selection = "{\"policy\": \"deadline\", \"deadline_seconds\": " + dl + "}";
    Sim s = build(spec, data, &pool);
    const auto recs = run_all(s);
    for (const auto& rec : recs) {
      CHECK(rec.selected == 10);
      CHECK(rec.participated == 10);
      CHECK(rec.stragglers == 0);
      CHECK(rec.round_seconds == Approx(fast.finish()).epsilon(1e-12));
      CHECK(rec.round_seconds < deadline);
    }
  }
  SECTION("over-commit: ceil(1.3 K) asked, the first K kept") {
    spec.profiles = R"([{"name": "jittery", "speed_jitter": 0.5}])";
    for (const Index k : {Index{10}, Index{7}}) {
      INFO("K = " << k);
      spec.selection = "{\"policy\": \"overcommit\", \"clients_per_round\": " + std::to_string(k) + "}";
      Sim s = build(spec, data, &pool);
      const auto recs = run_all(s);
      const Index asked = k == 10 ? 13 : 10;  // ceil(13.0), ceil(9.1)
      for (const auto& rec : recs) {
        CHECK(rec.selected == asked);
        CHECK(rec.participated == k);
        CHECK(rec.stragglers == asked - k);
        CHECK(rec.dropped == 0);
        CHECK(rec.status == sim::RoundStatus::completed);
      }
    }
  }
}

// Over-commit with every device selected (13 devices, K = 10 -> ceil(13) =
// 13), so each device's timeline is known: the round closes at the 10th
// finish, and the three over-committed clients stop then.
namespace {

struct OvercommitRun {
  std::vector<sim::RoundRecord> recs;
  std::vector<double> finish;  ///< every device's predicted finish, sorted
  double want_energy = 0;      ///< the kept ones' energy + the others' up to the 10th finish
  double d4 = 0;
};
OvercommitRun overcommit_run() {
  const Split data = fashion(1300, 500);
  ThreadPool pool(2);
  Spec spec;
  spec.clients = 13;  // 100 images each
  spec.rounds = 1;
  spec.profiles = R"([{"name": "jittery", "speed_jitter": 0.5}])";
  spec.selection = R"({"policy": "overcommit", "clients_per_round": 10})";
  const sim::SimConfig cfg = parse(spec);
  Sim s = build(spec, data, &pool);
  const auto& cost = s.model_cost_summary();
  OvercommitRun out;
  out.d4 = static_cast<double>(cost.params) * 4.0;
  std::vector<Expected> t;
  for (const auto& dev : s.fleet())
    t.push_back(expected_cost(cfg.profiles[0], cost.forward_macs_per_sample, 100, 1, out.d4, out.d4, dev.speed));
  std::sort(t.begin(), t.end(), [](const Expected& x, const Expected& y) { return x.finish() < y.finish(); });
  for (const auto& e : t) out.finish.push_back(e.finish());
  const double close = t[9].finish();
  for (std::size_t i = 0; i < t.size(); ++i) out.want_energy += i < 10 ? t[i].energy : close / t[i].finish() * t[i].energy;
  out.recs = run_all(s);
  return out;
}

}  // namespace

TEST_CASE("Simulator: over-commit round time is the K-th finish", "[sim]") {
  SIM_REQUIRE_FASHION();
  const auto run = overcommit_run();
  REQUIRE(run.finish[9] < run.finish[10]);
  const auto& rec = run.recs.at(0);
  CHECK(rec.selected == 13);
  CHECK(rec.participated == 10);
  CHECK(rec.stragglers == 3);
  CHECK(rec.round_seconds == Approx(run.finish[9]).epsilon(1e-12));
  CHECK(rec.bytes_up == Approx(10 * run.d4).epsilon(1e-12));
  CHECK(rec.bytes_down == Approx(13 * run.d4).epsilon(1e-12));
}

// REGRESSION: an over-committed client beyond the first K was charged the
// energy of its whole timeline, although the round closes at the K-th
// finish. Expected: sum over the K kept of E_i + sum over the others of
// (T_K / t_i) E_i. The setup is checked by the case above.
TEST_CASE("Simulator: over-committed stragglers are charged energy up to the K-th finish", "[sim]") {
  SIM_REQUIRE_FASHION();
  const auto run = overcommit_run();
  CHECK(run.recs.at(0).energy_joules == Approx(run.want_energy).epsilon(1e-9));
}

// Deadline-aware selection with 2 local epochs: the slow class makes the
// deadline with 1 epoch but not with 2.
namespace {

struct TwoEpochDeadlineRun {
  std::vector<sim::RoundRecord> recs;
  double deadline = 0, fast2 = 0, slow1 = 0, slow2 = 0;
};
TwoEpochDeadlineRun two_epoch_deadline_run() {
  const Split data = fashion(1000, 500);
  ThreadPool pool(2);
  Spec spec;
  spec.clients = 20;
  spec.rounds = 1;
  spec.client = R"({"lr": 0.01, "momentum": 0.9, "epochs": 2, "batch": 32})";
  spec.profiles = R"([{"name": "fast"}, {"name": "slow", "macs_per_second": 2e6}])";
  const sim::SimConfig cfg = parse(spec);
  auto model = nn::make_model<float>("cnn1");
  REQUIRE(model.ok());
  const auto cost = sim::model_cost(model->cost_report(), sizeof(float));
  const double d4 = static_cast<double>(cost.params) * 4.0;
  TwoEpochDeadlineRun out;
  out.slow1 = expected_cost(cfg.profiles[1], cost.forward_macs_per_sample, 50, 1, d4, d4).finish();
  out.slow2 = expected_cost(cfg.profiles[1], cost.forward_macs_per_sample, 50, 2, d4, d4).finish();
  out.fast2 = expected_cost(cfg.profiles[0], cost.forward_macs_per_sample, 50, 2, d4, d4).finish();
  out.deadline = std::round((out.slow1 + out.slow2) / 2.0);
  spec.selection = "{\"policy\": \"deadline\", \"deadline_seconds\": " + std::to_string(out.deadline) + "}";
  Sim s = build(spec, data, &pool);
  out.recs = run_all(s);
  return out;
}

}  // namespace

TEST_CASE("Simulator: deadline-aware selection with 2 local epochs: the fast ones report", "[sim]") {
  SIM_REQUIRE_FASHION();
  const auto run = two_epoch_deadline_run();
  REQUIRE(run.fast2 < run.deadline);
  REQUIRE(run.slow1 < run.deadline);
  REQUIRE(run.deadline < run.slow2);
  const auto& rec = run.recs.at(0);
  CHECK(rec.participated == 10);  // the 10 fast devices, 2 epochs in time
  CHECK(rec.participated + rec.stragglers + rec.dropped == rec.selected);
  CHECK(rec.status == sim::RoundStatus::completed);
}

// REGRESSION: deadline-aware selection once predicted finish times with ONE
// local epoch whatever the clients run. With 2 epochs the slow devices,
// which cannot make the deadline, were selected and then straggled
// (selected 20, stragglers 10) instead of being left out (selected 10, no
// stragglers).
TEST_CASE("Simulator: deadline-aware selection predicts with the configured epochs", "[sim]") {
  SIM_REQUIRE_FASHION();
  const auto run = two_epoch_deadline_run();
  CHECK(run.recs.at(0).selected == 10);
  CHECK(run.recs.at(0).stragglers == 0);
}

// --------------------------------------------------------------------------
// 5. Cost accounting

TEST_CASE("Simulator: bytes, time, energy and memory equal the cost model", "[sim]") {
  SIM_REQUIRE_FASHION();
  const Split data = fashion(500, 200);
  ThreadPool pool(2);
  // One profile, no jitter, no dropout, nobody straggles: every client's
  // round is fully determined. 10 IID clients of 50 images, 2 local epochs.
  Spec spec;
  spec.rounds = 1;
  spec.client = R"({"lr": 0.01, "momentum": 0.9, "epochs": 2, "batch": 25})";
  spec.profiles = R"([{"name": "board", "macs_per_second": 1.5e8, "up_bytes_per_second": 1e5,
                       "down_bytes_per_second": 4e5, "latency_seconds": 0.02, "energy_per_mac_joules": 2e-9,
                       "energy_per_byte_joules": 3e-7}])";
  const sim::SimConfig cfg = parse(spec);
  const auto& p = cfg.profiles.at(0);
  auto model = nn::make_model<float>("cnn1");
  REQUIRE(model.ok());
  const auto report = model->cost_report();
  double fwd = 0, act = 0;
  Index d = 0;
  for (const auto& row : report) {
    fwd += static_cast<double>(row.macs);
    act += static_cast<double>(row.act_in_bytes + row.act_out_bytes);
    d += row.params;
  }
  REQUIRE(d == cnn1_params);
  // conv: 26*26 outputs x 12 channels x 9 taps; dense: 2028 x 10
  CHECK(fwd >= 26.0 * 26 * 12 * 9 + 2028.0 * 10);
  const double d4 = static_cast<double>(d) * 4.0;

  struct Case {
    const char* codec;
    bool scaffold;
    double up;  // encoded update bytes
  };
  const std::vector<Case> cases{
      {"none", false, d4},
      {"fp16", false, static_cast<double>(fl::fp16_encoded_bytes(d))},
      {"q8", false, static_cast<double>(fl::quantized_encoded_bytes(d, 8))},
      {"q4", false, static_cast<double>(fl::quantized_encoded_bytes(d, 4))},
      {"topk", false, static_cast<double>(fl::topk_encoded_bytes(d, static_cast<Index>(std::llround(0.01 * d))))},
      {"none", true, d4},
  };
  CHECK(fl::fp16_encoded_bytes(d) < static_cast<std::size_t>(d4) / 2 + 64);
  CHECK(fl::quantized_encoded_bytes(d, 8) < static_cast<std::size_t>(d4) / 4 + 64);
  for (const auto& c : cases) {
    INFO("codec " << c.codec << (c.scaffold ? ", scaffold" : ""));
    Spec sp = spec;
    sp.codec = std::string("{\"kind\": \"") + c.codec + "\"" + (std::string(c.codec) == "topk" ? ", \"topk_fraction\": 0.01" : "") + "}";
    if (c.scaffold) sp.strategy = R"({"name": "scaffold"})";
    Sim s = build(sp, data, &pool);
    // SCAFFOLD sends c with the model and returns delta c_i with the update
    const double down = c.scaffold ? 2 * d4 : d4;
    const double up = c.up + (c.scaffold ? d4 : 0.0);
    const auto e = expected_cost(p, fwd, 50, 2, down, up);
    // training memory: weights + grads + 1 momentum slot + the received
    // global (+ c and c_i for SCAFFOLD), and a batch of 25 activations
    const double mem = d4 * (2 + 1 + (c.scaffold ? 3 : 1)) + 25 * act;
    CHECK(s.training_memory() == Approx(mem).epsilon(1e-12));
    CHECK(s.model_cost_summary().params == d);
    CHECK(s.model_cost_summary().forward_macs_per_sample == fwd);
    const auto recs = run_all(s);
    const auto& r = recs.at(0);
    CHECK(r.status == sim::RoundStatus::completed);
    CHECK(r.selected == 10);
    CHECK(r.participated == 10);
    CHECK(r.bytes_down == Approx(10 * down).epsilon(1e-12));
    CHECK(r.bytes_up == Approx(10 * up).epsilon(1e-12));
    CHECK(r.round_seconds == Approx(e.finish()).epsilon(1e-12));
    CHECK(r.clock_seconds == Approx(e.finish()).epsilon(1e-12));
    CHECK(r.energy_joules == Approx(10 * e.energy).epsilon(1e-12));
  }
  SECTION("devices with too little memory are never eligible") {
    Spec sp = spec;
    sp.profiles = R"([{"name": "big"}, {"name": "tiny", "memory_bytes": 100000}])";
    sp.rounds = 2;
    Sim s = build(sp, data, &pool);
    REQUIRE(s.training_memory() > 100000);
    Index big = 0;
    for (const auto& dev : s.fleet()) big += dev.profile == 0 ? 1 : 0;
    CHECK(big == 5);
    CHECK(s.eligible_clients() == big);
    for (const auto& rec : run_all(s)) {
      CHECK(rec.available == big);
      CHECK(rec.selected == big);
    }
  }
}

// --------------------------------------------------------------------------
// 6. Scale and per-client memory

TEST_CASE("Simulator: 1000 clients, and what each costs the simulator", "[sim]") {
  SIM_REQUIRE_FASHION();
  const Split data = fashion(10000, 500);
  ThreadPool pool(2);
  Spec spec;
  spec.clients = 1000;  // 10 images each
  spec.rounds = 2;
  spec.selection = R"({"clients_per_round": 20})";
  spec.client = R"({"lr": 0.01, "momentum": 0.9, "epochs": 1, "batch": 10})";
  const double samples = 10.0;

  SECTION("FedAvg: a device, an index list and a counter per client") {
    Sim s = build(spec, data, &pool);
    CHECK(s.clients() == 1000);
    CHECK(s.eligible_clients() == 1000);
    const double before = s.bytes_per_client();
    // Device (8) + the index list (8 per sample + the vector itself) + a
    // participation counter + two bit flags: below 200 + 8 x samples.
    CHECK(before >= 8 + 8 * samples);
    CHECK(before < 200 + 8 * samples);
    const auto recs = run_all(s);
    for (const auto& rec : recs) {
      CHECK(rec.status == sim::RoundStatus::completed);
      CHECK(rec.selected == 20);
      CHECK(rec.participated == 20);
      CHECK(std::isfinite(rec.accuracy));
    }
    CHECK(s.bytes_per_client() == before);  // FedAvg keeps nothing per client
    WARN("1000-client FedAvg fleet: " << s.bytes_per_client() << " bytes per client");
  }
  SECTION("SCAFFOLD: c_i (d floats) for each client that has trained") {
    spec.strategy = R"({"name": "scaffold"})";
    spec.rounds = 1;
    Sim s = build(spec, data, &pool);
    const double d = static_cast<double>(s.model_cost_summary().params);
    const double before = s.bytes_per_client();
    CHECK(before < 200 + 8 * samples + 64);  // + an empty c_i per client
    run_all(s);
    // 20 of the 1000 clients now hold c_i: 20 d 4 / 1000 more per client
    CHECK(s.bytes_per_client() - before == Approx(20 * d * 4 / 1000).epsilon(1e-9));
  }
  SECTION("SCAFFOLD with every client in the round: about d x 4 bytes more per client") {
    const Split small = fashion(500, 200);
    spec.clients = 10;
    spec.selection = "{}";
    spec.strategy = R"({"name": "scaffold"})";
    spec.rounds = 1;
    Sim s = build(spec, small, &pool);
    const double d = static_cast<double>(s.model_cost_summary().params);
    const double before = s.bytes_per_client();
    run_all(s);
    CHECK(s.bytes_per_client() - before == Approx(d * 4).epsilon(1e-9));
  }
}

// --------------------------------------------------------------------------
// 7. Differential privacy

TEST_CASE("Simulator: DP epsilon is reported and grows round by round", "[sim]") {
  SIM_REQUIRE_FASHION();
  const Split data = fashion(500, 200);
  ThreadPool pool(2);
  Spec spec;
  spec.rounds = 4;
  auto check_growth = [](const std::vector<sim::RoundRecord>& recs) {
    double prev = 0;
    for (const auto& rec : recs) {
      INFO("round " << rec.round);
      CHECK(rec.status == sim::RoundStatus::completed);
      CHECK(std::isfinite(rec.epsilon));
      CHECK(rec.epsilon > 0.0);
      CHECK(rec.epsilon > prev);  // every round releases something
      prev = rec.epsilon;
    }
  };
  SECTION("central DP, fixed clipping: 5 of 10 clients a round (q = 0.5)") {
    spec.selection = R"({"clients_per_round": 5})";
    spec.dp = R"({"mode": "fixed", "noise_multiplier": 1.0, "clipping_norm": 1.0, "delta": 1e-5})";
    Sim s = build(spec, data, &pool);
    const auto recs = run_all(s);
    check_growth(recs);
    // the same number from an accountant stepped here: q = 0.5, z = 1 per round
    for (const auto& rec : recs) {
      fl::RdpAccountant acc;
      REQUIRE(acc.step(0.5, 1.0, rec.round).ok());
      auto e = acc.epsilon(1e-5);
      REQUIRE(e.ok());
      CHECK(rec.epsilon == Approx(e->epsilon).epsilon(1e-12));
    }
  }
  SECTION("central DP, adaptive clipping") {
    spec.selection = R"({"clients_per_round": 5})";
    // z = 1 needs clipped_count_stddev > 0.5 (the default, 5 / 20, is too small)
    spec.dp = R"({"mode": "adaptive", "noise_multiplier": 1.0, "clipping_norm": 0.5, "clipped_count_stddev": 1.0})";
    Sim s = build(spec, data, &pool);
    check_growth(run_all(s));
  }
  SECTION("local DP: every client every round (q = 1)") {
    spec.dp = R"({"mode": "local", "noise_multiplier": 2.0, "clipping_norm": 1.0})";
    Sim s = build(spec, data, &pool);
    const auto recs = run_all(s);
    check_growth(recs);
    for (const auto& rec : recs) {
      fl::RdpAccountant acc;
      REQUIRE(acc.step(1.0, 2.0, rec.round).ok());
      auto e = acc.epsilon(1e-5);
      REQUIRE(e.ok());
      CHECK(rec.epsilon == Approx(e->epsilon).epsilon(1e-12));
    }
  }
}

// Local DP with two clients, both needed: a round where one drops is
// abandoned, yet the other one uploaded its privatized update.
namespace {

struct LocalDpAbandonRun {
  std::vector<sim::RoundRecord> recs;
  long uploads = 0;  ///< updates sent over the run (sum of participated)
  long lone = 0;     ///< abandoned rounds in which one client uploaded
};
LocalDpAbandonRun local_dp_abandon_run() {
  const Split data = fashion(500, 200);
  ThreadPool pool(2);
  Spec spec;
  spec.clients = 2;
  spec.rounds = 10;
  spec.selection = R"({"min_clients": 2})";
  spec.profiles = R"([{"name": "flaky", "dropout": 0.3}])";
  spec.dp = R"({"mode": "local", "noise_multiplier": 2.0, "clipping_norm": 1.0})";
  Sim s = build(spec, data, &pool);
  LocalDpAbandonRun out;
  out.recs = run_all(s);
  for (const auto& rec : out.recs) {
    out.uploads += rec.participated;
    if (rec.status == sim::RoundStatus::abandoned && rec.participated == 1) ++out.lone;
  }
  return out;
}

double local_epsilon(double z, long steps) {
  fl::RdpAccountant acc;
  REQUIRE(acc.step(1.0, z, steps).ok());
  auto e = acc.epsilon(1e-5);
  REQUIRE(e.ok());
  return e->epsilon;
}

}  // namespace

TEST_CASE("Simulator: local DP with abandoned rounds", "[sim]") {
  SIM_REQUIRE_FASHION();
  const auto run = local_dp_abandon_run();
  CHECK(run.lone >= 2);  // the defect case below needs >= 2 such rounds
  long completed = 0;
  double prev = 0;
  for (const auto& rec : run.recs) {
    INFO("round " << rec.round);
    if (rec.status == sim::RoundStatus::completed) {
      ++completed;
      CHECK(rec.participated == 2);
    } else if (rec.participated == 1) {
      CHECK(rec.bytes_up > 0.0);  // an update was sent
    }
    CHECK(std::isfinite(rec.epsilon));
    CHECK(rec.epsilon >= prev);
    prev = rec.epsilon;
  }
  REQUIRE(completed > 0);
  // at least one step per completed round (both clients uploaded in each)
  CHECK(run.recs.back().epsilon >= local_epsilon(2.0, completed) * (1 - 1e-12));
}

// REGRESSION: local DP epsilon once counted only clients of COMPLETED rounds.
// In an abandoned round the clients that reported still uploaded their
// privatized updates (bytes_up > 0: the server saw them), so they spent
// privacy. The busiest of the two clients uploaded at least
// ceil(uploads / 2) times; with >= 2 lone uploads (checked by the case
// above) that is more than the completed rounds.
TEST_CASE("Simulator: local DP epsilon counts updates sent in abandoned rounds", "[sim]") {
  SIM_REQUIRE_FASHION();
  const auto run = local_dp_abandon_run();
  CHECK(run.recs.back().epsilon >= local_epsilon(2.0, (run.uploads + 1) / 2) * (1 - 1e-12));
}

// --------------------------------------------------------------------------
// 8. Other strategies learn through the simulator

TEST_CASE("Simulator: SCAFFOLD, FedProx, FedNova, q-FedAvg and FedAdam learn", "[sim]") {
  SIM_REQUIRE_FASHION();
  const Split data = fashion(2000, 1000);
  ThreadPool pool(2);
  const std::vector<std::pair<std::string, std::string>> strategies{
      {"scaffold", R"({"name": "scaffold"})"},
      {"fedprox", R"({"name": "fedprox", "proximal_mu": 0.01})"},
      {"fednova", R"({"name": "fednova"})"},
      {"qfedavg", R"({"name": "qfedavg", "q": 0.2})"},
      {"fedadam", R"({"name": "fedadam", "eta": 0.01})"},
  };
  std::ostringstream table;
  table << "3 rounds, 10 clients, test accuracy (%) initial -> final:";
  for (const auto& [name, json] : strategies) {
    INFO("strategy " << name);
    Spec spec;
    spec.clients = 10;  // 200 images each
    spec.rounds = 3;
    spec.partition = R"({"kind": "dirichlet", "alpha": 1.0})";
    spec.strategy = json;
    Sim s = build(spec, data, &pool);
    const auto before = nn::evaluate(s.model(), data.test.images, data.test.labels, 1000, &pool);
    const auto recs = run_all(s);
    REQUIRE(recs.size() == 3);
    for (const auto& rec : recs) {
      CHECK(rec.status == sim::RoundStatus::completed);
      CHECK(rec.participated == 10);
      CHECK(std::isfinite(rec.train_loss));
    }
    const double after = final_accuracy(recs);
    table << "\n  " << name << ": " << pct(before.accuracy) << " -> " << pct(after);
    CHECK(after > before.accuracy + 0.1);
    CHECK(recs.back().loss < before.loss);
  }
  WARN(table.str());
}

// HeteroFL through the simulator: weak devices train a width-0.5 sub-model.
// Their memory is set between the sub-model's and the full model's training
// memory, so they are eligible only because of the width; their downloads
// are the sub-model's parameters, and the aggregated model learns.
TEST_CASE("Simulator: HeteroFL gives weak devices width-scaled sub-models", "[sim]") {
  SIM_REQUIRE_FASHION();
  const Split data = fashion(2000, 1000);
  ThreadPool pool(2);
  auto full = nn::make_model<float>("lenet300_100", data.train.shape, data.train.classes);
  REQUIRE(full.ok());
  auto half = fleetdl::fl::make_submodel(*full, 0.5);
  REQUIRE(half.ok());
  const auto full_cost = sim::model_cost(full->cost_report(), sizeof(float));
  const auto half_cost = sim::model_cost(half->cost_report(), sizeof(float));
  const double full_mem = sim::training_memory_bytes(full_cost, 32, 1, 1);
  const double half_mem = sim::training_memory_bytes(half_cost, 32, 1, 1);
  REQUIRE(half_mem < full_mem);
  const double weak_mem = 0.5 * (half_mem + full_mem);

  Spec spec;
  spec.model = "lenet300_100";
  spec.rounds = 4;
  spec.strategy = R"({"name": "heterofl"})";
  spec.profiles = "[{\"name\": \"strong\"}, {\"name\": \"weak\", \"width\": 0.5, \"memory_bytes\": " +
                  std::to_string(weak_mem) + "}]";
  Sim s = build(spec, data, &pool);
  CHECK(s.eligible_clients() == 10);  // the weak half is eligible thanks to its width
  Index weak = 0;
  for (const auto& d : s.fleet()) weak += d.profile == 1 ? 1 : 0;
  CHECK(weak == 5);
  const auto before = nn::evaluate(s.model(), data.test.images, data.test.labels, 500, &pool);
  const auto recs = run_all(s);
  REQUIRE(recs.size() == 4);
  // every selected client downloads its own model: 5 full + 5 half
  const double expect_down = 4.0 * static_cast<double>(5 * full_cost.params + 5 * half_cost.params);
  CHECK(recs[0].bytes_down == Approx(expect_down).epsilon(1e-12));
  CHECK(recs[0].bytes_up == Approx(expect_down).epsilon(1e-12));
  CHECK(half_cost.params < full_cost.params / 2);
  for (const auto& r : recs) CHECK(r.participated == 10);
  CHECK(recs.back().accuracy > before.accuracy + 0.2);  // 0.096 -> 0.377 at seed 7

  // the same weak devices cannot train the full model under plain FedAvg
  Spec plain = spec;
  plain.strategy = R"({"name": "fedavg"})";
  plain.profiles = "[{\"name\": \"strong\"}, {\"name\": \"weak\", \"memory_bytes\": " + std::to_string(weak_mem) + "}]";
  Sim p = build(plain, data, &pool);
  CHECK(p.eligible_clients() == 5);
  // and a width below 1 without heterofl is a config error naming the key
  Spec wrong = spec;
  wrong.strategy = R"({"name": "fedavg"})";
  auto doc = fleetdl::json::parse(wrong.json());
  REQUIRE(doc.ok());
  auto cfg = sim::parse_config(*doc);
  REQUIRE_FALSE(cfg.ok());
  CHECK(cfg.error().message.find("profiles[1].width") != std::string::npos);
}

// --------------------------------------------------------------------------
// Regressions for defects found in review (session 3)

// REGRESSION: a HeteroFL client's top-k residual has its sub-model's size;
// restore() wanted every residual at the full model's size, so a HeteroFL +
// top-k checkpoint could be written but never read back.
TEST_CASE("Simulator: a HeteroFL + top-k checkpoint restores and continues with the same bits", "[sim][checkpoint]") {
  SIM_REQUIRE_FASHION();
  const Split data = fashion(1000, 300);
  ThreadPool pool(2);
  Spec spec;
  spec.model = "lenet300_100";
  spec.rounds = 3;
  spec.strategy = R"({"name": "heterofl"})";
  spec.codec = R"({"kind": "topk", "topk_fraction": 0.05})";
  spec.profiles = R"([{"name": "strong"}, {"name": "weak", "width": 0.5}])";
  Sim full = build(spec, data, &pool);
  Sim part = build(spec, data, &pool);
  REQUIRE(full.step().ok());
  REQUIRE(full.step().ok());
  REQUIRE(part.step().ok());
  REQUIRE(part.step().ok());
  auto bytes = part.checkpoint(42);
  REQUIRE(bytes.ok());
  Sim resumed = build(spec, data, &pool);
  auto ok = resumed.restore(*bytes, 42);
  INFO((ok ? std::string() : ok.error().message));
  REQUIRE(ok.ok());
  CHECK(resumed.round() == 2);
  auto a = full.step();
  auto b = resumed.step();
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(same_bits(Vector<float>(full.global()), Vector<float>(resumed.global())));
  CHECK(a->bytes_up == b->bytes_up);
  CHECK(resumed.totals().bytes_up == full.totals().bytes_up);
  CHECK(resumed.totals().best_round == full.totals().best_round);
  // a different fingerprint is refused and changes nothing
  Sim other = build(spec, data, &pool);
  auto refused = other.restore(*bytes, 43);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().message.find("different experiment") != std::string::npos);
  CHECK(other.round() == 0);
}

// REGRESSION: make_fleet computed n x weight / total; with weights near
// DBL_MAX the share overflowed to inf and the largest-remainder loop ran
// for ~2^63 steps. Weights are now capped at 1e12 and the share is
// n x (weight / total).
TEST_CASE("Simulator: huge profile weights are refused, the largest allowed ones split the fleet", "[sim]") {
  sim::DeviceProfile p;
  p.weight = 1e300;
  auto v = sim::validate(p);
  REQUIRE_FALSE(v.ok());
  CHECK(v.error().message.find("weight") != std::string::npos);
  sim::DeviceProfile a, b;
  a.weight = 1e12;
  b.weight = 1e12;
  auto fleet = sim::make_fleet({a, b}, 1001, 5);
  REQUIRE(fleet.ok());
  REQUIRE(fleet->size() == 1001);
  const auto first = std::count_if(fleet->begin(), fleet->end(), [](const sim::Device& d) { return d.profile == 0; });
  CHECK(first == 501);  // largest remainder, the tie to the lower class
  Spec spec;
  spec.profiles = R"([{"name": "a", "weight": 1e13}])";
  auto doc = fleetdl::json::parse(spec.json());
  REQUIRE(doc.ok());
  auto cfg = sim::parse_config(*doc);
  REQUIRE_FALSE(cfg.ok());
  CHECK(cfg.error().message.find("profiles[0].weight") != std::string::npos);
}

namespace {
fleetdl::Result<sim::SimConfig> parse_text(const Spec& spec) {
  auto doc = fleetdl::json::parse(spec.json());
  REQUIRE(doc.ok());
  return sim::parse_config(*doc);
}

/// Simulator::create on options the config parser would have refused (the
/// library must refuse them too).
fleetdl::Result<Sim> create_unchecked(const sim::SimConfig& c, const Split& data) {
  auto parts = sim::make_partition(c, data.train.labels, data.train.classes);
  REQUIRE(parts.ok());
  auto model = nn::make_model<float>(c.model, data.train.shape, data.train.classes);
  REQUIRE(model.ok());
  auto bundle = sim::make_strategy<float>(c, &*model);
  REQUIRE(bundle.ok());
  return Sim::create(std::move(*model), std::move(*bundle), data.train, data.test, std::move(*parts),
                     {sim::DeviceProfile{}}, c.sim, nullptr);
}
}  // namespace

// REGRESSION: local DP noised the parameters but SCAFFOLD's control delta,
// (x - y)/(K lr) - c, still carried the raw update.
TEST_CASE("Simulator: local DP with SCAFFOLD is refused by the config and by create()", "[sim]") {
  SIM_REQUIRE_FASHION();
  Spec spec;
  spec.strategy = R"({"name": "scaffold"})";
  spec.dp = R"({"mode": "local", "noise_multiplier": 1.0, "clipping_norm": 1.0})";
  auto cfg = parse_text(spec);
  REQUIRE_FALSE(cfg.ok());
  CHECK(cfg.error().message.find("dp.mode") != std::string::npos);
  CHECK(cfg.error().message.find("scaffold") != std::string::npos);
  // the library refuses it too, whoever builds the options
  spec.dp = "{}";
  sim::SimConfig c = parse(spec);
  c.sim.local_dp.enabled = true;
  auto s = create_unchecked(c, fashion(500, 100));
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().message.find("local DP is not supported with SCAFFOLD") != std::string::npos);
}

// REGRESSION: a client that drops out after the round has closed (here: past
// the deadline) was charged energy up to its drop, not up to the close.
TEST_CASE("Simulator: dropped clients are charged energy up to the round's close at most", "[sim]") {
  SIM_REQUIRE_FASHION();
  const Split data = fashion(1000, 300);
  Spec spec;
  spec.rounds = 1;
  spec.profiles = R"([{"name": "flaky", "dropout": 1.0}])";
  const sim::SimConfig base = parse(spec);
  auto model = nn::make_model<float>("cnn1");
  REQUIRE(model.ok());
  const auto cost = sim::model_cost(model->cost_report(), sizeof(float));
  const double d4 = static_cast<double>(cost.params) * 4.0;
  const Expected e = expected_cost(base.profiles[0], cost.forward_macs_per_sample, 100, 1, d4, d4);
  const double deadline = 0.1 * e.finish();
  spec.selection = "{\"deadline_seconds\": " + std::to_string(deadline) + "}";
  Sim s = build(spec, data, nullptr);
  const auto recs = run_all(s);
  REQUIRE(recs.size() == 1);
  CHECK(recs[0].dropped == 10);
  CHECK(recs[0].status == sim::RoundStatus::abandoned);
  CHECK(recs[0].round_seconds == Approx(deadline));
  // each of the 10 is charged min(drop, deadline) / finish of its energy; the
  // drops are uniform over the timeline, so most come after the deadline
  CHECK(recs[0].energy_joules > 0.0);
  CHECK(recs[0].energy_joules <= 10.0 * (deadline / e.finish()) * e.energy * (1 + 1e-12));
}

// REGRESSION: a huge over-commit factor overflowed the count of clients to
// ask; the factor is now limited to [1, 100] by the config and create().
TEST_CASE("Simulator: the over-commit factor is limited to [1, 100]", "[sim]") {
  SIM_REQUIRE_FASHION();
  Spec spec;
  spec.selection = R"({"policy": "overcommit", "clients_per_round": 5, "overcommit": 1e9})";
  auto cfg = parse_text(spec);
  REQUIRE_FALSE(cfg.ok());
  CHECK(cfg.error().message.find("selection.overcommit") != std::string::npos);
  spec.selection = R"({"policy": "overcommit", "clients_per_round": 5, "overcommit": 100})";
  sim::SimConfig c = parse(spec);
  c.sim.overcommit = 101;
  auto s = create_unchecked(c, fashion(500, 100));
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().message.find("overcommit must be in [1, 100]") != std::string::npos);
}

// REGRESSION: round(fraction x N) could make the whole fleet malicious
// (N = 3, fraction 0.9); at most N - 1 clients are.
TEST_CASE("Simulator: an attack never takes the whole fleet", "[sim]") {
  SIM_REQUIRE_FASHION();
  const Split data = fashion(300, 100);
  Spec spec;
  spec.clients = 3;
  spec.rounds = 1;
  spec.attack = R"({"kind": "sign_flip", "fraction": 0.9})";
  Sim s = build(spec, data, nullptr);
  Index bad = 0;
  for (Index c = 0; c < s.clients(); ++c) bad += s.is_malicious(c) ? 1 : 0;
  CHECK(bad == 2);
}

// REGRESSION: eligibility judged every client at the configured batch, so a
// device with room for its 10 samples was refused for lack of room for 32.
TEST_CASE("Simulator: a client with fewer samples than a batch is judged at its sample count", "[sim]") {
  SIM_REQUIRE_FASHION();
  const Split data = fashion(100, 100);
  auto model = nn::make_model<float>("cnn1");
  REQUIRE(model.ok());
  const auto cost = sim::model_cost(model->cost_report(), sizeof(float));
  const double need10 = sim::training_memory_bytes(cost, 10, 1, 1);
  const double need32 = sim::training_memory_bytes(cost, 32, 1, 1);
  REQUIRE(need10 < need32);
  Spec spec;
  spec.rounds = 1;  // 10 clients x 10 samples, batch 32, momentum (1 slot)
  spec.profiles = "[{\"name\": \"tight\", \"memory_bytes\": " + std::to_string(need10 * (1 + 1e-9)) + "}]";
  Sim s = build(spec, data, nullptr);
  CHECK(s.eligible_clients() == 10);
  CHECK(s.training_memory() == Approx(need32));  // the reported figure stays the configured batch's
  spec.profiles = "[{\"name\": \"tighter\", \"memory_bytes\": " + std::to_string(need10 * (1 - 1e-6)) + "}]";
  Sim t = build(spec, data, nullptr);
  CHECK(t.eligible_clients() == 0);
}
