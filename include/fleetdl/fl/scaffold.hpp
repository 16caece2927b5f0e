// fleetdl/fl/scaffold.hpp — SCAFFOLD (stochastic controlled averaging): the
// server strategy that keeps the global control variate c, and the client
// state that keeps c_i, corrects local gradients and computes the variate
// update.
//
// Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, "SCAFFOLD: Stochastic
// Controlled Averaging for Federated Learning", ICML 2020, Algorithm 1:
//   client i, K local steps from y_i = x with learning rate eta_l:
//     y_i <- y_i - eta_l (g_i(y_i) - c_i + c)              (line 10)
//     c_i+ = c_i - c + (x - y_i) / (K eta_l)               (line 12, option II)
//     sends (y_i - x, c_i+ - c_i)                          (line 13)
//   server, |S| sampled of N clients:
//     x <- x + eta_g * mean_i (y_i - x)                    (line 16)
//     c <- c + |S|/N * mean_i (c_i+ - c_i)                 (line 17)
// fleetdl follows Flower's niid_bench baseline in weighting the model mean
// by examples (sum_i n_i (y_i - x) / sum_i n_i); the control mean is the
// paper's plain mean unless ScaffoldOptions::weighted_control is set (the
// baseline weights it by examples too). c starts at zero as in the paper —
// the baseline starts its server variate from the initial model weights,
// which we do not reproduce.
//
// Wire convention: ClientUpdate::params is the client's model y_i (as for
// every strategy), ClientUpdate::control_delta is c_i+ - c_i. The server's c
// is not part of ClientConfig (no vectors there): whoever ships the global
// model to a client also ships Scaffold::control(). An empty control vector
// means zero, on both sides.
//
// Client memory: ScaffoldClientState holds c_i, sizeof(Store) * d bytes once
// the client has trained (d = model parameters; nothing before its first
// round, since c_i = 0 is stored as an empty vector). Store defaults to S;
// ScaffoldClientState<double, float> halves it for double-precision
// simulations. A simulation of N clients needs N * that; the server holds c
// (sizeof(S) * d).
#pragma once

#include "fleetdl/fl/fedavg.hpp"

#include <cmath>
#include <cstddef>
#include <string>
#include <utility>

namespace fleetdl::fl {

/// One client's SCAFFOLD state: its control variate c_i.
template <class S, class Store = S>
class ScaffoldClientState {
 public:
  /// c_i (empty = zero: the client has not trained yet).
  const Vector<Store>& control() const { return ci_; }
  bool empty() const { return ci_.size() == 0; }
  /// Bytes held for c_i.
  std::size_t bytes() const { return static_cast<std::size_t>(ci_.size()) * sizeof(Store); }
  void reset() { ci_.resize(0); }
  /// Restore a saved c_i (a checkpoint); empty = zero.
  void restore(Vector<Store> ci) { ci_ = std::move(ci); }

  /// g <- g - c_i + c (Algorithm 1, line 10), before the optimizer step.
  /// `c` is the server variate received with the global model (empty = 0).
  Result<void> correct(VectorMap<S> grads, ConstVectorMap<S> c) const {
    FLEETDL_TRY(check("ScaffoldClientState::correct", grads.size(), c.size()));
    if (c.size() != 0) grads += c;
    if (ci_.size() != 0) grads -= ci_.template cast<S>();
    return success();
  }

  /// After K local steps with learning rate lr from x to y: option II,
  /// c_i+ = c_i - c + (x - y) / (K lr). Stores c_i+ and returns
  /// delta c_i = c_i+ - c_i = (x - y) / (K lr) - c (what the client sends).
  Result<Vector<S>> update(ConstVectorMap<S> x, ConstVectorMap<S> y, ConstVectorMap<S> c, Index local_steps,
                           double lr) {
    const char* who = "ScaffoldClientState::update";
    FLEETDL_TRY(check(who, x.size(), c.size()));
    if (y.size() != x.size())
      return make_error(Errc::shape_mismatch, std::string(who) + ": trained model has " + std::to_string(y.size()) +
                                                  " parameters, the global model " + std::to_string(x.size()));
    if (local_steps <= 0)
      return make_error(Errc::invalid_argument, std::string(who) + ": local_steps = " +
                                                    std::to_string(local_steps) + " (K must be > 0)");
    if (!(lr > 0.0) || !std::isfinite(lr))
      return make_error(Errc::invalid_argument, std::string(who) + ": lr = " + std::to_string(lr) +
                                                    " must be finite and > 0");
    Vector<S> delta = (x - y) * static_cast<S>(1.0 / (static_cast<double>(local_steps) * lr));
    if (c.size() != 0) delta -= c;
    if (!delta.allFinite())
      return make_error(Errc::invalid_argument, std::string(who) + ": control update is not finite");
    if (ci_.size() == 0) ci_.setZero(x.size());
    ci_ += delta.template cast<Store>();
    return delta;
  }

 private:
  Result<void> check(const char* who, Index d, Index c) const {
    if (c != 0 && c != d)
      return make_error(Errc::shape_mismatch, std::string(who) + ": server control variate has " + std::to_string(c) +
                                                  " entries, the model " + std::to_string(d));
    if (ci_.size() != 0 && ci_.size() != d)
      return make_error(Errc::shape_mismatch, std::string(who) + ": client control variate has " +
                                                  std::to_string(ci_.size()) + " entries, the model " +
                                                  std::to_string(d) + " (reset() after changing the model)");
    return success();
  }

  Vector<Store> ci_;
};

struct ScaffoldOptions : FedAvgOptions {
  ScaffoldOptions() { client.scaffold = true; }
  double server_learning_rate = 1.0;  ///< eta_g
  /// N, the number of clients in the federation. 0: the size of `available`
  /// at the last configure().
  Index total_clients = 0;
  /// Weight the control mean by examples (Flower baseline) instead of the
  /// paper's plain mean.
  bool weighted_control = false;
};

/// SCAFFOLD server: model and control-variate aggregation.
template <class S>
class Scaffold : public FedAvg<S> {
 public:
  explicit Scaffold(ScaffoldOptions o = {}) : FedAvg<S>(with_flag(o)), s_(o) {}

  std::string name() const override { return "scaffold"; }
  const ScaffoldOptions& options() const { return s_; }

  std::vector<ClientInstruction> configure(long round, std::span<const Index> available, Rng& rng) override {
    (void)round;
    last_available_ = static_cast<Index>(available.size());
    return this->sample(available, this->o_.client, rng);
  }

  Result<void> aggregate(long round, VectorMap<S> global, std::span<const ClientUpdate<S>> updates) override {
    (void)round;
    const std::string who = name();
    const Index d = global.size();
    if (!(s_.server_learning_rate > 0.0) || !std::isfinite(s_.server_learning_rate))
      return detail::bad_option(who, "server_learning_rate", s_.server_learning_rate, "must be finite and > 0");
    if (c_.size() != 0 && c_.size() != d)
      return make_error(Errc::shape_mismatch, who + ": control variate has " + std::to_string(c_.size()) +
                                                  " entries, the global model " + std::to_string(d) +
                                                  " (call reset() after changing the model)");
    auto avg = this->average(who, d, updates);
    if (!avg) return std::move(avg).error();
    const Index n = s_.total_clients > 0 ? s_.total_clients : last_available_;
    const auto sampled = static_cast<Index>(updates.size());
    if (n <= 0)
      return make_error(Errc::invalid_argument, who + ": the federation size N is unknown (set total_clients or call "
                                                      "configure() first)");
    if (sampled > n)
      return make_error(Errc::invalid_argument, who + ": " + std::to_string(sampled) + " updates from a federation of " +
                                                    std::to_string(n) + " clients");
    Vector<double> dc = Vector<double>::Zero(d);
    double total = 0.0;
    for (std::size_t i = 0; i < updates.size(); ++i) {
      const auto& u = updates[i];
      if (u.control_delta.size() != d)
        return make_error(Errc::shape_mismatch, who + ": update " + std::to_string(i) + " (client " +
                                                    std::to_string(u.client) + ") has a control delta of " +
                                                    std::to_string(u.control_delta.size()) + " entries, the model " +
                                                    std::to_string(d));
      if (!u.control_delta.allFinite())
        return make_error(Errc::invalid_argument, who + ": update " + std::to_string(i) + " (client " +
                                                      std::to_string(u.client) + ") has a non-finite control delta");
      const double w = s_.weighted_control ? static_cast<double>(u.num_examples) : 1.0;
      dc += w * u.control_delta.template cast<double>();
      total += w;
    }
    // x <- x + eta_g (avg - x);  c <- c + |S|/N * mean(delta c_i)
    if (c_.size() == 0) c_.setZero(d);
    global += static_cast<S>(s_.server_learning_rate) * (*avg - global);
    c_ += (dc * (static_cast<double>(sampled) / static_cast<double>(n) / total)).template cast<S>();
    return success();
  }

  /// The server control variate c, to ship with the global model (empty = 0
  /// before the first aggregation).
  const Vector<S>& control() const { return c_; }
  ConstVectorMap<S> control_map() const { return ConstVectorMap<S>(c_.data(), c_.size()); }
  void reset() { c_.resize(0); }
  /// Restore a saved server variate c (a checkpoint); empty = zero.
  void restore_control(Vector<S> c) { c_ = std::move(c); }

  /// The server variate c, dim raw values (nothing before the first round).
  void save_state(ByteWriter& w) const override { detail::write_state_vector(w, c_); }
  Result<void> load_state(ByteReader& r, Index dim) override {
    return detail::read_state_tail(r, dim, c_, name(), "a control variate");
  }

 private:
  static FedAvgOptions with_flag(const ScaffoldOptions& o) {
    FedAvgOptions b = o;
    b.client.scaffold = true;
    return b;
  }
  ScaffoldOptions s_;
  Vector<S> c_;
  Index last_available_ = 0;
};

}  // namespace fleetdl::fl
