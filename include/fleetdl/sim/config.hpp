// fleetdl/sim/config.hpp — the simulator's experiment config: read from JSON
// (docs/fl-simulate.md has the schema), validated key by key, and turned into
// a model, a client partition, a strategy bundle and SimOptions.
//
// Every error is one line naming the key and the rule it breaks:
//     strategy.f: 3 Byzantine clients is too many for krum with 10 clients
//       per round (Krum needs n > 2f + 2)
//     client.lr: must be a finite number > 0 (got -0.1)
//     rounds: required key is missing
//     strategy.nmae: unknown key (known: name, f, m, ...)
// Unknown keys are errors (a typo must not silently fall back to a default).
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/core/json.hpp"
#include "fleetdl/data/dataset.hpp"
#include "fleetdl/data/partition.hpp"
#include "fleetdl/fl/dp.hpp"
#include "fleetdl/fl/fedavg.hpp"
#include "fleetdl/fl/fednova.hpp"
#include "fleetdl/fl/heterofl.hpp"
#include "fleetdl/fl/fedopt.hpp"
#include "fleetdl/fl/fedprox.hpp"
#include "fleetdl/fl/qfedavg.hpp"
#include "fleetdl/fl/robust.hpp"
#include "fleetdl/fl/scaffold.hpp"
#include "fleetdl/nn/zoo.hpp"
#include "fleetdl/sim/profile.hpp"
#include "fleetdl/sim/simulator.hpp"

#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fleetdl::sim {

inline constexpr std::string_view strategy_names[] = {
    "fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold", "fednova",
    "qfedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan", "heterofl", "fedbuff"};

struct PartitionSpec {
  std::string kind = "iid";  ///< iid | dirichlet | shards | k_labels
  double alpha = 0.5;        ///< dirichlet
  Index min_size = 10;       ///< dirichlet: redraw until every client has this many
  int shards_per_client = 2; ///< shards
  int labels_per_client = 2; ///< k_labels
};

struct StrategySpec {
  std::string name;
  double server_learning_rate = 1.0;  ///< fedavgm, scaffold
  double server_momentum = 0.0;       ///< fedavgm
  double proximal_mu = 0.01;          ///< fedprox
  double eta = 0.1;                   ///< fedadam / fedyogi / fedadagrad
  double beta_1 = 0.9, beta_2 = 0.99, tau = 1e-9;
  double q = 0.2;                     ///< qfedavg
  Index f = 0;                        ///< robust rules: expected Byzantine clients
  Index m = 1;                        ///< multikrum: models averaged
  double beta = 0.2;                  ///< fedtrimmedavg
  Index buffer_size = 10;             ///< fedbuff: K updates per server step
  Index max_staleness = 5;            ///< fedbuff: older updates are dropped
};

struct DpSpec {
  std::string mode = "none";  ///< none | fixed | adaptive | local
  double noise_multiplier = 1.0;
  double clipping_norm = 1.0;          ///< fixed, local; adaptive: the initial norm
  double target_quantile = 0.5;        ///< adaptive
  double clip_lr = 0.2;                ///< adaptive
  double clipped_count_stddev = -1.0;  ///< adaptive: negative = m / 20
  double delta = 1e-5;
};

struct SimConfig {
  std::uint64_t seed = 1;
  int threads = 0;  ///< 0: all hardware threads
  std::string model = "cnn_niid";
  std::string dataset = "fashion-mnist";
  std::string dataset_dir = FLEETDL_FASHION_MNIST_DIR;
  Index train_limit = -1, test_limit = -1;
  Index clients = 0;
  PartitionSpec partition;
  fl::ClientConfig client;
  StrategySpec strategy;
  DpSpec dp;
  std::vector<DeviceProfile> profiles;  ///< empty: one default profile
  SimOptions sim;
  /// Clients a round expects: clients_per_round, or every client.
  Index expected_per_round() const { return sim.clients_per_round > 0 ? sim.clients_per_round : clients; }
};

namespace detail::cfg {

inline std::string fmt(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", v);
  return b;
}

inline Error bad(const std::string& key, const std::string& rule) {
  return make_error(Errc::invalid_argument, key + ": " + rule);
}

/// A JSON object being read: tracks the keys consumed so that finish() can
/// reject the unknown ones.
class Obj {
 public:
  Obj(const json::Value* v, std::string path) : v_(v), path_(std::move(path)) {}

  static Result<Obj> open(const json::Value& v, const std::string& path) {
    if (!v.is_object()) return bad(path.empty() ? "config" : path, "must be a JSON object");
    return Obj(&v, path);
  }

  std::string key(std::string_view k) const { return path_.empty() ? std::string(k) : path_ + "." + std::string(k); }

  const json::Value* get(std::string_view k) {
    known_.emplace_back(k);
    return v_->find(k);
  }

  Result<const json::Value*> required(std::string_view k) {
    const json::Value* x = get(k);
    if (!x) return bad(key(k), "required key is missing");
    return x;
  }

  /// A number; `rule` returns nullptr when v is fine, else the rule text.
  Result<double> number(std::string_view k, double def, bool req, const std::function<const char*(double)>& rule = {}) {
    const json::Value* x = get(k);
    if (!x) {
      if (req) return bad(key(k), "required key is missing");
      return def;
    }
    if (!x->is_number()) return bad(key(k), "must be a number");
    const double v = x->as_double();
    if (rule)
      if (const char* why = rule(v)) return bad(key(k), std::string(why) + " (got " + fmt(v) + ")");
    return v;
  }

  Result<long long> integer(std::string_view k, long long def, bool req, long long lo, long long hi) {
    const json::Value* x = get(k);
    if (!x) {
      if (req) return bad(key(k), "required key is missing");
      return def;
    }
    if (!x->is_int())
      return bad(key(k), "must be an integer");
    const long long v = x->as_int();
    if (v < lo || v > hi)
      return bad(key(k), "must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "] (got " +
                             std::to_string(v) + ")");
    return v;
  }

  Result<std::string> string(std::string_view k, const std::string& def, bool req,
                             std::span<const std::string_view> choices = {}) {
    const json::Value* x = get(k);
    if (!x) {
      if (req) return bad(key(k), "required key is missing");
      return def;
    }
    if (!x->is_string()) return bad(key(k), "must be a string");
    std::string v(x->as_string());
    if (!choices.empty()) {
      bool ok = false;
      std::string list;
      for (const auto c : choices) {
        ok = ok || c == v;
        list += (list.empty() ? "" : ", ") + std::string(c);
      }
      if (!ok) return bad(key(k), "unknown value '" + v + "' (known: " + list + ")");
    }
    return v;
  }

  Result<bool> boolean(std::string_view k, bool def) {
    const json::Value* x = get(k);
    if (!x) return def;
    if (!x->is_bool()) return bad(key(k), "must be true or false");
    return x->as_bool();
  }

  /// A nested object (absent: an empty object is read, so defaults apply).
  Result<Obj> object(std::string_view k, bool req) {
    const json::Value* x = get(k);
    if (!x) {
      if (req) return bad(key(k), "required key is missing");
      return Obj(&empty(), key(k));
    }
    return open(*x, key(k));
  }

  Result<void> finish() const {
    for (const auto& [name, value] : v_->members()) {
      (void)value;
      bool ok = false;
      for (const auto& k : known_) ok = ok || k == name;
      if (!ok) {
        std::string list;
        for (const auto& k : known_) list += (list.empty() ? "" : ", ") + k;
        return bad(key(name), "unknown key (known: " + list + ")");
      }
    }
    return success();
  }

 private:
  static const json::Value& empty() {
    static const json::Value e = *json::parse("{}");
    return e;
  }
  const json::Value* v_;
  std::string path_;
  std::vector<std::string> known_;
};

inline const char* positive(double v) { return v > 0.0 && std::isfinite(v) ? nullptr : "must be a finite number > 0"; }
inline const char* nonneg(double v) { return v >= 0.0 && std::isfinite(v) ? nullptr : "must be a finite number >= 0"; }
inline const char* unit(double v) { return v >= 0.0 && v <= 1.0 ? nullptr : "must be in [0, 1]"; }
inline const char* unit_open_right(double v) { return v >= 0.0 && v < 1.0 ? nullptr : "must be in [0, 1)"; }
inline const char* fraction(double v) { return v > 0.0 && v <= 1.0 ? nullptr : "must be in (0, 1]"; }
inline const char* at_least_one(double v) { return v >= 1.0 && std::isfinite(v) ? nullptr : "must be a finite number >= 1"; }

}  // namespace detail::cfg

/// Read and validate a config document. Errors name the key and the rule.
inline Result<SimConfig> parse_config(const json::Value& doc) {
  using namespace detail::cfg;
  SimConfig c;
  auto top_r = Obj::open(doc, "");
  if (!top_r) return std::move(top_r).error();
  Obj& top = *top_r;

#define FLEETDL_CFG(lhs, expr)                      \
  do {                                              \
    auto fleetdl_cfg_r = (expr);                    \
    if (!fleetdl_cfg_r) return std::move(fleetdl_cfg_r).error(); \
    lhs = static_cast<std::remove_reference_t<decltype(lhs)>>(*fleetdl_cfg_r); \
  } while (0)

  FLEETDL_CFG(c.seed, top.integer("seed", 1, false, 0, (1LL << 53)));
  c.sim.seed = c.seed;  // the fleet, selection, events, local training and codecs
  FLEETDL_CFG(c.threads, top.integer("threads", 0, false, 0, FLEETDL_MAX_THREADS));
  FLEETDL_CFG(c.sim.rounds, top.integer("rounds", 0, true, 1, 1000000));
  FLEETDL_CFG(c.clients, top.integer("clients", 0, true, 1, 1000000));
  {
    std::vector<std::string_view> names(std::begin(nn::model_names), std::end(nn::model_names));
    FLEETDL_CFG(c.model, top.string("model", "", true, names));
  }
  FLEETDL_CFG(c.sim.eval_every, top.integer("eval_every", 1, false, 1, 1000000));
  FLEETDL_CFG(c.sim.client_parallel, top.boolean("client_parallel", true));

  {  // dataset
    auto o = top.object("dataset", false);
    if (!o) return std::move(o).error();
    static constexpr std::string_view ds[] = {"fashion-mnist"};
    FLEETDL_CFG(c.dataset, o->string("name", "fashion-mnist", false, ds));
    FLEETDL_CFG(c.dataset_dir, o->string("dir", c.dataset_dir, false));
    FLEETDL_CFG(c.train_limit, o->integer("train_limit", -1, false, -1, 1LL << 40));
    FLEETDL_CFG(c.test_limit, o->integer("test_limit", -1, false, -1, 1LL << 40));
    if (c.train_limit == 0) return bad(o->key("train_limit"), "must be -1 (all images) or at least 1 (got 0)");
    if (c.test_limit == 0) return bad(o->key("test_limit"), "must be -1 (all images) or at least 1 (got 0)");
    FLEETDL_TRY(o->finish());
  }
  {  // partition
    auto o = top.object("partition", true);
    if (!o) return std::move(o).error();
    static constexpr std::string_view kinds[] = {"iid", "dirichlet", "shards", "k_labels"};
    FLEETDL_CFG(c.partition.kind, o->string("kind", "", true, kinds));
    if (c.partition.kind == "dirichlet") {
      FLEETDL_CFG(c.partition.alpha, o->number("alpha", 0, true, positive));
      FLEETDL_CFG(c.partition.min_size, o->integer("min_size", 10, false, 0, 1LL << 30));
    } else if (c.partition.kind == "shards") {
      FLEETDL_CFG(c.partition.shards_per_client, o->integer("shards_per_client", 2, false, 1, 1 << 20));
    } else if (c.partition.kind == "k_labels") {
      FLEETDL_CFG(c.partition.labels_per_client, o->integer("labels_per_client", 2, false, 1, 1 << 20));
    }
    FLEETDL_TRY(o->finish());
  }
  {  // client
    auto o = top.object("client", true);
    if (!o) return std::move(o).error();
    FLEETDL_CFG(c.client.lr, o->number("lr", 0, true, positive));
    FLEETDL_CFG(c.client.momentum, o->number("momentum", 0.0, false, unit_open_right));
    FLEETDL_CFG(c.client.weight_decay, o->number("weight_decay", 0.0, false, unit_open_right));
    FLEETDL_CFG(c.client.epochs, o->integer("epochs", 0, true, 1, 100000));
    FLEETDL_CFG(c.client.batch, o->integer("batch", 0, true, 1, 1 << 20));
    FLEETDL_TRY(o->finish());
    c.sim.memory_batch = c.client.batch;
    c.sim.optimizer_slots = c.client.momentum > 0.0 ? 1 : 0;
    c.sim.predict_epochs = c.client.epochs;
  }
  {  // strategy
    auto o = top.object("strategy", true);
    if (!o) return std::move(o).error();
    std::vector<std::string_view> names(std::begin(strategy_names), std::end(strategy_names));
    FLEETDL_CFG(c.strategy.name, o->string("name", "", true, names));
    auto& s = c.strategy;
    const std::string& n = s.name;
    if (n == "fedavgm" || n == "scaffold" || n == "fedbuff")
      FLEETDL_CFG(s.server_learning_rate, o->number("server_learning_rate", 1.0, false, positive));
    if (n == "fedbuff") {
      FLEETDL_CFG(s.buffer_size, o->integer("buffer_size", 10, false, 1, 1 << 20));
      FLEETDL_CFG(s.max_staleness, o->integer("max_staleness", 5, false, 0, 1 << 20));
    }
    if (n == "fedavgm") FLEETDL_CFG(s.server_momentum, o->number("server_momentum", 0.0, false, unit_open_right));
    if (n == "fedprox") FLEETDL_CFG(s.proximal_mu, o->number("proximal_mu", 0.01, false, nonneg));
    if (n == "fedadam" || n == "fedyogi" || n == "fedadagrad") {
      FLEETDL_CFG(s.eta, o->number("eta", n == "fedyogi" ? 1e-2 : 1e-1, false, positive));
      FLEETDL_CFG(s.beta_1, o->number("beta_1", 0.9, false, unit_open_right));
      FLEETDL_CFG(s.beta_2, o->number("beta_2", 0.99, false, unit_open_right));
      FLEETDL_CFG(s.tau, o->number("tau", n == "fedyogi" ? 1e-3 : 1e-9, false, positive));
    }
    if (n == "qfedavg") FLEETDL_CFG(s.q, o->number("q", 0.2, false, nonneg));
    const bool robust = n == "fedmedian" || n == "fedtrimmedavg" || n == "krum" || n == "multikrum" || n == "bulyan";
    if (robust) FLEETDL_CFG(s.f, o->integer("f", 0, false, 0, 1 << 20));
    if (n == "multikrum") FLEETDL_CFG(s.m, o->integer("m", 1, false, 1, 1 << 20));
    if (n == "fedtrimmedavg")
      FLEETDL_CFG(s.beta, o->number("beta", 0.2, false, [](double v) -> const char* {
                    return v > 0.0 && v < 0.5 ? nullptr : "must be in (0, 0.5)";
                  }));
    FLEETDL_TRY(o->finish());
  }
  {  // selection
    auto o = top.object("selection", false);
    if (!o) return std::move(o).error();
    static constexpr std::string_view pol[] = {"uniform", "deadline", "overcommit", "oort"};
    std::string p;
    FLEETDL_CFG(p, o->string("policy", "uniform", false, pol));
    c.sim.selection = p == "deadline" ? SelectionPolicy::deadline
                      : p == "overcommit" ? SelectionPolicy::overcommit
                      : p == "oort"       ? SelectionPolicy::oort
                                          : SelectionPolicy::uniform;
    FLEETDL_CFG(c.sim.clients_per_round, o->integer("clients_per_round", 0, false, 0, 1000000));
    FLEETDL_CFG(c.sim.min_clients, o->integer("min_clients", 1, false, 1, 1000000));
    FLEETDL_CFG(c.sim.overcommit, o->number("overcommit", 1.3, false, [](double v) -> const char* {
                  return v >= 1.0 && v <= max_overcommit ? nullptr : "must be a number in [1, 100]";
                }));
    FLEETDL_CFG(c.sim.deadline_seconds, o->number("deadline_seconds", 0.0, false, nonneg));
    FLEETDL_TRY(o->finish());
    if (c.sim.selection == SelectionPolicy::deadline && !(c.sim.deadline_seconds > 0.0))
      return bad("selection.deadline_seconds", "the deadline policy needs a deadline > 0");
    if (c.sim.clients_per_round > c.clients)
      return bad("selection.clients_per_round", "must be at most clients (" + std::to_string(c.clients) + ") (got " +
                                                    std::to_string(c.sim.clients_per_round) + ")");
    if (c.sim.min_clients > c.expected_per_round())
      return bad("selection.min_clients", "must be at most the clients per round (" +
                                              std::to_string(c.expected_per_round()) + ") (got " +
                                              std::to_string(c.sim.min_clients) + ")");
  }
  {  // codec
    auto o = top.object("codec", false);
    if (!o) return std::move(o).error();
    static constexpr std::string_view kinds[] = {"none", "fp16", "q8", "q4", "q2", "topk"};
    std::string k;
    FLEETDL_CFG(k, o->string("kind", "none", false, kinds));
    c.sim.codec = k == "fp16" ? UpdateCodec::fp16
                  : k == "q8" ? UpdateCodec::q8
                  : k == "q4" ? UpdateCodec::q4
                  : k == "q2" ? UpdateCodec::q2
                  : k == "topk" ? UpdateCodec::topk
                                : UpdateCodec::none;
    if (c.sim.codec == UpdateCodec::topk) FLEETDL_CFG(c.sim.topk_fraction, o->number("topk_fraction", 0.01, false, fraction));
    FLEETDL_TRY(o->finish());
  }
  {  // dp
    auto o = top.object("dp", false);
    if (!o) return std::move(o).error();
    static constexpr std::string_view modes[] = {"none", "fixed", "adaptive", "local"};
    FLEETDL_CFG(c.dp.mode, o->string("mode", "none", false, modes));
    if (c.dp.mode != "none") {
      FLEETDL_CFG(c.dp.noise_multiplier, o->number("noise_multiplier", 1.0, true, nonneg));
      FLEETDL_CFG(c.dp.clipping_norm, o->number("clipping_norm", c.dp.mode == "adaptive" ? 0.1 : 1.0,
                                                c.dp.mode != "adaptive", positive));
      FLEETDL_CFG(c.dp.delta, o->number("delta", 1e-5, false, [](double v) -> const char* {
                    return v > 0.0 && v < 1.0 ? nullptr : "must be in (0, 1)";
                  }));
    }
    if (c.dp.mode == "adaptive") {
      FLEETDL_CFG(c.dp.target_quantile, o->number("target_quantile", 0.5, false, unit));
      FLEETDL_CFG(c.dp.clip_lr, o->number("clip_lr", 0.2, false, positive));
      FLEETDL_CFG(c.dp.clipped_count_stddev, o->number("clipped_count_stddev", -1.0, false, [](double v) -> const char* {
                    return std::isfinite(v) ? nullptr : "must be a finite number (negative = expected clients / 20)";
                  }));
    }
    FLEETDL_TRY(o->finish());
    c.sim.dp_delta = c.dp.delta;
    c.sim.local_dp.enabled = c.dp.mode == "local";
    c.sim.local_dp.clipping_norm = c.dp.clipping_norm;
    c.sim.local_dp.noise_multiplier = c.dp.noise_multiplier;
  }
  {  // attack
    auto o = top.object("attack", false);
    if (!o) return std::move(o).error();
    static constexpr std::string_view kinds[] = {"none", "sign_flip", "gaussian", "label_flip"};
    std::string k;
    FLEETDL_CFG(k, o->string("kind", "none", false, kinds));
    c.sim.attack.kind = k == "sign_flip" ? AttackKind::sign_flip
                        : k == "gaussian" ? AttackKind::gaussian
                        : k == "label_flip" ? AttackKind::label_flip
                                            : AttackKind::none;
    if (c.sim.attack.kind != AttackKind::none) {
      FLEETDL_CFG(c.sim.attack.fraction, o->number("fraction", 0.0, true, unit_open_right));
      if (c.sim.attack.kind == AttackKind::sign_flip) FLEETDL_CFG(c.sim.attack.scale, o->number("scale", 4.0, false, positive));
      if (c.sim.attack.kind == AttackKind::gaussian) FLEETDL_CFG(c.sim.attack.stddev, o->number("stddev", 1.0, false, positive));
    }
    FLEETDL_TRY(o->finish());
  }
  {  // profiles
    const json::Value* p = top.get("profiles");
    if (p) {
      if (!p->is_array()) return bad("profiles", "must be an array of device profiles");
      if (p->items().empty()) return bad("profiles", "must list at least one device profile");
      if (p->items().size() > 256) return bad("profiles", "at most 256 device profiles");
      for (std::size_t i = 0; i < p->items().size(); ++i) {
        auto o = Obj::open(p->items()[i], "profiles[" + std::to_string(i) + "]");
        if (!o) return std::move(o).error();
        DeviceProfile d;
        FLEETDL_CFG(d.name, o->string("name", "profile" + std::to_string(i), false));
        FLEETDL_CFG(d.weight, o->number("weight", 1.0, false, [](double v) -> const char* {
                      return v > 0.0 && v <= max_profile_weight ? nullptr : "must be a number in (0, 1e12]";
                    }));
        FLEETDL_CFG(d.macs_per_second, o->number("macs_per_second", d.macs_per_second, false, positive));
        FLEETDL_CFG(d.speed_jitter, o->number("speed_jitter", 0.0, false, unit_open_right));
        FLEETDL_CFG(d.up_bytes_per_second, o->number("up_bytes_per_second", d.up_bytes_per_second, false, positive));
        FLEETDL_CFG(d.down_bytes_per_second, o->number("down_bytes_per_second", d.down_bytes_per_second, false, positive));
        FLEETDL_CFG(d.latency_seconds, o->number("latency_seconds", d.latency_seconds, false, nonneg));
        FLEETDL_CFG(d.memory_bytes, o->number("memory_bytes", d.memory_bytes, false, positive));
        FLEETDL_CFG(d.energy_per_mac_joules, o->number("energy_per_mac_joules", d.energy_per_mac_joules, false, nonneg));
        FLEETDL_CFG(d.energy_per_byte_joules, o->number("energy_per_byte_joules", d.energy_per_byte_joules, false, nonneg));
        FLEETDL_CFG(d.availability, o->number("availability", 1.0, false, unit));
        FLEETDL_CFG(d.dropout, o->number("dropout", 0.0, false, unit));
        FLEETDL_CFG(d.straggler_probability, o->number("straggler_probability", 0.0, false, unit));
        FLEETDL_CFG(d.straggler_slowdown, o->number("straggler_slowdown", 4.0, false, at_least_one));
        FLEETDL_CFG(d.width, o->number("width", 1.0, false, fraction));
        if (d.width < 1.0 && c.strategy.name != "heterofl")
          return bad(o->key("width"), "a sub-model width below 1 needs strategy heterofl (got " + fmt(d.width) + ")");
        FLEETDL_TRY(o->finish());
        c.profiles.push_back(std::move(d));
      }
    }
  }
  FLEETDL_TRY(top.finish());
#undef FLEETDL_CFG

  // cross-key rules
  const Index n = c.expected_per_round();
  const Index f = c.strategy.f;
  const std::string& s = c.strategy.name;
  auto too_many = [&](const std::string& rule) {
    return bad("strategy.f", std::to_string(f) + " Byzantine clients is too many for " + s + " with " +
                                 std::to_string(n) + " clients per round (" + rule + ")");
  };
  if ((s == "krum" || s == "multikrum") && !(n > 2 * f + 2)) return too_many("Krum needs n > 2f + 2");
  if (s == "multikrum" && c.strategy.m > n - f)
    return bad("strategy.m", "must be at most n - f = " + std::to_string(n - f) + " (got " + std::to_string(c.strategy.m) + ")");
  if (s == "bulyan" && n < 4 * f + 3) return too_many("Bulyan needs n >= 4f + 3");
  if (s == "fedmedian" && !(2 * f < n)) return too_many("the median needs f < n/2");
  if (s == "fedtrimmedavg" && static_cast<Index>(c.strategy.beta * static_cast<double>(n)) < f)
    return too_many("the trimmed mean needs floor(beta n) >= f");
  if (s == "fednova" && c.client.momentum >= 1.0) return bad("client.momentum", "must be < 1 for fednova");
  if (s == "heterofl" && c.dp.mode != "none" && c.dp.mode != "local")
    return bad("dp.mode", "central DP is not supported around heterofl (sub-model updates differ in size)");
  if (c.dp.mode == "local" && s == "scaffold")
    return bad("dp.mode", "local DP is not supported with scaffold (the control-variate delta would reveal the unprivatized update)");
  if (s == "fedbuff" && (c.dp.mode == "fixed" || c.dp.mode == "adaptive"))
    return bad("dp.mode", "central DP is not supported with fedbuff (it has no synchronous aggregate to wrap)");
  if (s == "fedbuff" && c.sim.selection != SelectionPolicy::uniform)
    return bad("selection.policy", "fedbuff hands each free device the next task; the deadline, overcommit and oort "
                                   "policies choose synchronous rounds");
  if (c.dp.mode == "fixed" || c.dp.mode == "adaptive") {
    if (s == "scaffold") return bad("dp.mode", "central DP is not supported around scaffold (its control variates are not clipped)");
  }
  return c;
}

/// The strategy (with DP wrappers) a config names, and the simulator hooks.
/// `model` is needed by heterofl (its layer plan); others ignore it.
template <class S>
Result<StrategyBundle<S>> make_strategy(const SimConfig& c, const nn::Model<S>* model = nullptr) {
  StrategyBundle<S> b;
  const auto& s = c.strategy;
  fl::FedAvgOptions base;
  // the simulator selects the clients; the strategy configures all of them
  base.fraction_fit = 1.0;
  base.min_fit_clients = 0;
  base.min_available_clients = 0;
  base.client = c.client;
  std::unique_ptr<fl::Strategy<S>> st;
  if (s.name == "fedavg") {
    st = std::make_unique<fl::FedAvg<S>>(base);
  } else if (s.name == "fedavgm") {
    fl::FedAvgMOptions o;
    static_cast<fl::FedAvgOptions&>(o) = base;
    o.server_learning_rate = s.server_learning_rate;
    o.server_momentum = s.server_momentum;
    st = std::make_unique<fl::FedAvgM<S>>(o);
  } else if (s.name == "fedprox") {
    fl::FedProxOptions o;
    static_cast<fl::FedAvgOptions&>(o) = base;
    o.proximal_mu = s.proximal_mu;
    st = std::make_unique<fl::FedProx<S>>(o);
  } else if (s.name == "fedadam" || s.name == "fedyogi" || s.name == "fedadagrad") {
    auto fill = [&](fl::FedOptOptions& o) {
      static_cast<fl::FedAvgOptions&>(o) = base;
      o.eta = s.eta;
      o.eta_l = c.client.lr;
      o.beta_1 = s.beta_1;
      o.beta_2 = s.beta_2;
      o.tau = s.tau;
    };
    if (s.name == "fedadam") {
      fl::FedAdamOptions o;
      fill(o);
      st = std::make_unique<fl::FedAdam<S>>(o);
    } else if (s.name == "fedyogi") {
      fl::FedYogiOptions o;
      fill(o);
      st = std::make_unique<fl::FedYogi<S>>(o);
    } else {
      fl::FedAdagradOptions o;
      fill(o);
      st = std::make_unique<fl::FedAdagrad<S>>(o);
    }
  } else if (s.name == "scaffold") {
    fl::ScaffoldOptions o;
    static_cast<fl::FedAvgOptions&>(o) = base;
    o.client.scaffold = true;
    o.server_learning_rate = s.server_learning_rate;
    o.total_clients = c.clients;
    auto p = std::make_unique<fl::Scaffold<S>>(o);
    b.scaffold = p.get();
    st = std::move(p);
  } else if (s.name == "fednova") {
    fl::FedNovaOptions o;
    static_cast<fl::FedAvgOptions&>(o) = base;
    o.momentum = c.client.momentum;
    st = std::make_unique<fl::FedNova<S>>(o);
  } else if (s.name == "qfedavg") {
    fl::QFedAvgOptions o;
    static_cast<fl::FedAvgOptions&>(o) = base;
    o.q = s.q;
    o.learning_rate = c.client.lr;
    st = std::make_unique<fl::QFedAvg<S>>(o);
    b.needs_loss_before = true;
  } else if (s.name == "fedmedian") {
    st = std::make_unique<fl::FedMedian<S>>(s.f, base);
  } else if (s.name == "fedtrimmedavg") {
    st = std::make_unique<fl::FedTrimmedAvg<S>>(s.beta, s.f, base);
  } else if (s.name == "krum") {
    st = std::make_unique<fl::Krum<S>>(s.f, 1, fl::Weighting::examples, base);
  } else if (s.name == "multikrum") {
    st = std::make_unique<fl::Krum<S>>(s.f, s.m, fl::Weighting::examples, base);
  } else if (s.name == "bulyan") {
    st = std::make_unique<fl::Bulyan<S>>(s.f, base);
  } else if (s.name == "heterofl") {
    if (!model) return make_error(Errc::invalid_argument, "strategy.name: heterofl needs the model to plan its sub-models");
    fl::HeteroFLOptions o;
    static_cast<fl::FedAvgOptions&>(o) = base;
    auto h = fl::HeteroFL<S>::create(*model, o);
    if (!h) return make_error(h.error().code, "strategy.name: heterofl: " + h.error().message);
    st = std::make_unique<fl::HeteroFL<S>>(std::move(*h));
    b.heterofl = true;
  } else if (s.name == "fedbuff") {
    return make_error(Errc::unsupported, "strategy.name: fedbuff is asynchronous (no rounds): it runs on a fleet "
                                         "(`fleetdl fleet run`); the simulator runs synchronous rounds");
  } else {
    return make_error(Errc::invalid_argument, "strategy.name: unknown strategy '" + s.name + "'");
  }
  const double q = static_cast<double>(c.expected_per_round()) / static_cast<double>(c.clients);
  Rng noise(Rng(c.seed).fork(0xD1FF).next_u64());
  if (c.dp.mode == "fixed") {
    fl::FixedClippingConfig d;
    d.noise_multiplier = c.dp.noise_multiplier;
    d.clipping_norm = c.dp.clipping_norm;
    d.num_sampled_clients = c.expected_per_round();
    d.sampling_rate = q;
    auto w = fl::DpFixedClipping<S>::create(std::move(st), d, noise);
    if (!w) return std::move(w).error();
    b.accountant = &(*w)->accountant();
    st = std::move(*w);
  } else if (c.dp.mode == "adaptive") {
    fl::AdaptiveClippingConfig d;
    d.noise_multiplier = c.dp.noise_multiplier;
    d.num_sampled_clients = c.expected_per_round();
    d.initial_clipping_norm = c.dp.clipping_norm;
    d.target_quantile = c.dp.target_quantile;
    d.clip_lr = c.dp.clip_lr;
    d.clipped_count_stddev = c.dp.clipped_count_stddev;
    d.sampling_rate = q;
    auto w = fl::DpAdaptiveClipping<S>::create(std::move(st), d, noise);
    if (!w) return std::move(w).error();
    b.accountant = &(*w)->accountant();
    st = std::move(*w);
  }
  b.strategy = std::move(st);
  return b;
}

/// The client partition a config names, over the training labels.
inline Result<data::ClientPartition> make_partition(const SimConfig& c, std::span<const std::uint8_t> labels,
                                                    int classes) {
  const int n = static_cast<int>(c.clients);
  const std::uint64_t seed = Rng(c.seed).fork(0x9A27).next_u64();
  const auto& p = c.partition;
  Result<data::ClientPartition> r = make_error(Errc::invalid_argument, "partition.kind: unknown");
  if (p.kind == "iid") r = data::partition_iid(static_cast<Index>(labels.size()), n, seed);
  else if (p.kind == "dirichlet") r = data::partition_dirichlet(labels, classes, n, p.alpha, seed, p.min_size);
  else if (p.kind == "shards") r = data::partition_shards(labels, n, p.shards_per_client, seed);
  else if (p.kind == "k_labels") r = data::partition_k_labels(labels, classes, n, p.labels_per_client, seed);
  if (!r) return make_error(r.error().code, "partition: " + r.error().message);
  return r;
}

}  // namespace fleetdl::sim
