// fleetdl/fl/fedopt.hpp — adaptive server optimizers: FedAdagrad, FedAdam,
// FedYogi.
//
// Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan, "Adaptive
// Federated Optimization", ICLR 2021 (Algorithm 2), as Flower implements it
// (flwr.server.strategy.FedAdagrad / FedAdam / FedYogi). Per round, with x the
// global model and avg the example-weighted average of the client models:
//     delta = avg - x                                   (pseudo-gradient)
//     m     = beta1 m + (1 - beta1) delta
//     Adagrad: v = v + delta^2
//     Adam:    v = beta2 v + (1 - beta2) delta^2
//     Yogi:    v = v - (1 - beta2) delta^2 sign(v - delta^2)
//     x     = x + eta m / (sqrt(v) + tau)
// m and v start at zero (Flower; the paper allows v_{-1} >= tau^2), sign(0) = 0
// as numpy's. The client learning rate eta_l travels in ClientConfig::lr.
//
// Defaults are Flower's: FedAdam eta 0.1, eta_l 0.1, beta1 0.9, beta2 0.99,
// tau 1e-9; FedYogi eta 0.01, eta_l 0.0316, beta1 0.9, beta2 0.99, tau 1e-3;
// FedAdagrad eta 0.1, eta_l 0.1, tau 1e-9 and beta1 = 0 (Flower's FedAdagrad
// passes beta_1 = 0 to FedOpt, so m = delta: no server momentum; the paper's
// Algorithm 2 has beta1 there too — set beta_1 to get it).
//
// Bias correction (FedAdam only). Algorithm 2 of the paper and Flower's
// earlier FedAdam have none; later Flower versions scale eta by
//     sqrt(1 - beta2^(t)) / (1 - beta1^(t)) with t = server_round + 1
// (note the +1: round 1 already uses t = 2). fleetdl implements all three and
// defaults to the paper: AdamBiasCorrection::none. `standard` uses Kingma &
// Ba's t = number of server steps taken (1 at the first aggregation);
// `flower` reproduces Flower's t = round + 1 from the round passed to
// aggregate().
//
// State: m and v, two vectors of the model's size.
#pragma once

#include "fleetdl/fl/fedavg.hpp"

#include <cmath>
#include <string>
#include <utility>

namespace fleetdl::fl {

enum class FedOptRule { adagrad, adam, yogi };
enum class AdamBiasCorrection { none, standard, flower };

/// Server optimizer options (the FedOpt base); defaults are FedAdam's.
struct FedOptOptions : FedAvgOptions {
  double eta = 1e-1;    ///< server learning rate
  double eta_l = 1e-1;  ///< client learning rate (sent as ClientConfig::lr)
  double beta_1 = 0.9;  ///< first-moment decay
  double beta_2 = 0.99; ///< second-moment decay (Adam, Yogi)
  double tau = 1e-9;    ///< adaptivity: added to sqrt(v)
};

struct FedAdamOptions : FedOptOptions {
  AdamBiasCorrection bias_correction = AdamBiasCorrection::none;
};

struct FedYogiOptions : FedOptOptions {
  FedYogiOptions() {
    eta = 1e-2;
    eta_l = 0.0316;
    tau = 1e-3;
  }
};

struct FedAdagradOptions : FedOptOptions {
  FedAdagradOptions() { beta_1 = 0.0; }
};

/// The shared FedOpt update; use FedAdam, FedYogi or FedAdagrad.
template <class S>
class FedOpt : public FedAvg<S> {
 public:
  FedOpt(FedOptRule rule, const FedOptOptions& o, AdamBiasCorrection bias = AdamBiasCorrection::none)
      : FedAvg<S>(with_eta_l(o)), rule_(rule), opt_(o), bias_(bias) {}

  std::string name() const override {
    switch (rule_) {
      case FedOptRule::adagrad: return "fedadagrad";
      case FedOptRule::adam: return "fedadam";
      default: return "fedyogi";
    }
  }
  const FedOptOptions& options() const { return opt_; }
  FedOptRule rule() const { return rule_; }

  Result<void> aggregate(long round, VectorMap<S> global, std::span<const ClientUpdate<S>> updates) override {
    const std::string who = name();
    FLEETDL_TRY(check_options(who));
    if (m_.size() != 0 && m_.size() != global.size())
      return make_error(Errc::shape_mismatch, who + ": optimizer state has " + std::to_string(m_.size()) +
                                                  " entries, the global model " + std::to_string(global.size()) +
                                                  " (call reset() after changing the model)");
    if (rule_ == FedOptRule::adam && bias_ == AdamBiasCorrection::flower && round + 1 < 1)
      return make_error(Errc::invalid_argument, who + ": round " + std::to_string(round) +
                                                    " is negative (Flower's bias correction uses t = round + 1)");
    auto avg = this->average(who, global.size(), updates);
    if (!avg) return std::move(avg).error();
    if (m_.size() == 0) {
      m_.setZero(global.size());
      v_.setZero(global.size());
    }
    const S b1 = static_cast<S>(opt_.beta_1), b2 = static_cast<S>(opt_.beta_2);
    const Vector<S> delta = *avg - global;
    const auto d2 = delta.array().square();
    m_ = b1 * m_ + (S(1) - b1) * delta;
    switch (rule_) {
      case FedOptRule::adagrad: v_.array() += d2; break;
      case FedOptRule::adam: v_.array() = b2 * v_.array() + (S(1) - b2) * d2; break;
      case FedOptRule::yogi: v_.array() -= (S(1) - b2) * d2 * (v_.array() - d2).sign(); break;
    }
    ++steps_;
    double eta = opt_.eta;
    if (rule_ == FedOptRule::adam && bias_ != AdamBiasCorrection::none) {
      const double t = bias_ == AdamBiasCorrection::standard ? static_cast<double>(steps_) : static_cast<double>(round) + 1.0;
      eta *= std::sqrt(1.0 - std::pow(opt_.beta_2, t)) / (1.0 - std::pow(opt_.beta_1, t));
    }
    global.array() += static_cast<S>(eta) * m_.array() / (v_.array().sqrt() + static_cast<S>(opt_.tau));
    return success();
  }

  const Vector<S>& first_moment() const { return m_; }   ///< m (empty before the first round)
  const Vector<S>& second_moment() const { return v_; }  ///< v (empty before the first round)
  long steps() const { return steps_; }                  ///< server steps taken
  void reset() {
    m_.resize(0);
    v_.resize(0);
    steps_ = 0;
  }
  /// Continue from a checkpoint: m, v and the step count as first_moment(),
  /// second_moment() and steps() returned them (m and v of equal size, both
  /// empty before the first round; the size is checked at the next round).
  Result<void> restore(Vector<S> m, Vector<S> v, long steps) {
    if (m.size() != v.size() || steps < 0 || (m.size() == 0) != (steps == 0))
      return make_error(Errc::invalid_argument, name() + ": restore: m has " + std::to_string(m.size()) +
                                                    " entries, v " + std::to_string(v.size()) + ", steps " +
                                                    std::to_string(steps));
    m_ = std::move(m);
    v_ = std::move(v);
    steps_ = steps;
    return success();
  }

  /// The step count (u64), then m and v (dim raw values each; nothing before
  /// the first round).
  void save_state(ByteWriter& w) const override {
    w.u64(static_cast<std::uint64_t>(steps_));
    detail::write_state_vector(w, m_);
    detail::write_state_vector(w, v_);
  }
  Result<void> load_state(ByteReader& r, Index dim) override {
    std::uint64_t steps = 0;
    const auto bad = [&](const std::string& why) { return make_error(Errc::corrupt, name() + ": state: " + why); };
    if (dim < 0 || static_cast<std::size_t>(dim) > (std::size_t{1} << 40))
      return bad("model size " + std::to_string(dim));
    const std::size_t full = 2 * static_cast<std::size_t>(dim) * sizeof(S);
    if (!r.u64(steps)) return bad("no step count");
    if (steps > (std::uint64_t{1} << 40)) return bad("step count " + std::to_string(steps));
    if (r.remaining() != 0 && r.remaining() != full)
      return bad(std::to_string(r.remaining()) + " bytes after the step count, not 0 or " + std::to_string(full));
    Vector<S> m, v;
    if (r.remaining() == full && (!detail::read_state_vector(r, dim, m) || !detail::read_state_vector(r, dim, v)))
      return bad("the moments are not finite");
    if (steps != 0 && m.size() == 0) return bad("step count " + std::to_string(steps) + " without moments");
    if (steps == 0 && m.size() != 0) return bad("moments without a step");
    if (!(v.array() >= S(0)).all()) return bad("a negative second moment");
    return restore(std::move(m), std::move(v), static_cast<long>(steps));
  }

 private:
  static FedAvgOptions with_eta_l(const FedOptOptions& o) {
    FedAvgOptions b = o;
    b.client.lr = o.eta_l;
    return b;
  }
  Result<void> check_options(const std::string& who) const {
    const auto finite_pos = [](double x) { return std::isfinite(x) && x > 0.0; };
    if (!finite_pos(opt_.eta)) return detail::bad_option(who, "eta", opt_.eta, "must be finite and > 0");
    if (!finite_pos(opt_.eta_l)) return detail::bad_option(who, "eta_l", opt_.eta_l, "must be finite and > 0");
    if (!finite_pos(opt_.tau)) return detail::bad_option(who, "tau", opt_.tau, "must be finite and > 0");
    if (!(opt_.beta_1 >= 0.0 && opt_.beta_1 < 1.0)) return detail::bad_option(who, "beta_1", opt_.beta_1, "must be in [0, 1)");
    if (rule_ != FedOptRule::adagrad && !(opt_.beta_2 >= 0.0 && opt_.beta_2 < 1.0))
      return detail::bad_option(who, "beta_2", opt_.beta_2, "must be in [0, 1)");
    return success();
  }

  FedOptRule rule_;
  FedOptOptions opt_;
  AdamBiasCorrection bias_;
  Vector<S> m_, v_;
  long steps_ = 0;
};

/// FedAdam (Reddi et al. 2021): Adam on the server.
template <class S>
class FedAdam : public FedOpt<S> {
 public:
  explicit FedAdam(const FedAdamOptions& o = {}) : FedOpt<S>(FedOptRule::adam, o, o.bias_correction) {}
};

/// FedYogi (Reddi et al. 2021): Yogi on the server.
template <class S>
class FedYogi : public FedOpt<S> {
 public:
  explicit FedYogi(const FedYogiOptions& o = {}) : FedOpt<S>(FedOptRule::yogi, o) {}
};

/// FedAdagrad (Reddi et al. 2021): Adagrad on the server.
template <class S>
class FedAdagrad : public FedOpt<S> {
 public:
  explicit FedAdagrad(const FedAdagradOptions& o = {}) : FedOpt<S>(FedOptRule::adagrad, o) {}
};

}  // namespace fleetdl::fl
