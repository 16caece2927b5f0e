// fleetdl/fl/fedavg.hpp — FedAvg and FedAvgM, the base every synchronous
// fleetdl strategy builds on.
//
// FedAvg: McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-
// Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017
// (Algorithm 1): the new global model is the example-weighted average of the
// client models, sum_i n_i y_i / sum_i n_i.
//
// FedAvgM: Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data
// Distribution for Federated Visual Classification", arXiv 1909.06335, 2019:
// server SGD with momentum on the pseudo-gradient, with Flower's
// (flwr.server.strategy.FedAvgM) semantics and defaults —
//     delta = x - avg;  m = beta m + delta;  x = x - eta m
// (momentum as torch.optim.SGD, no dampening, no Nesterov; m starts at zero,
// which equals Flower's "m = delta in round 1"). With beta = 0, eta = 1 it is
// exactly FedAvg.
//
// configure() follows Flower's FedAvg.configure_fit: nothing while fewer than
// min_available_clients are available, otherwise sample_uniform() of
// max(int(fraction_fit * available), min_fit_clients) clients, each given the
// same ClientConfig. Defaults are Flower's (fraction_fit 1.0, min_fit_clients
// 2, min_available_clients 2).
#pragma once

#include "fleetdl/fl/strategy.hpp"

#include <cmath>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace fleetdl::fl {

/// Client sampling and the per-client config (Flower's FedAvg arguments).
struct FedAvgOptions {
  double fraction_fit = 1.0;        ///< fraction of the available clients asked to train
  Index min_fit_clients = 2;        ///< at least this many (if available)
  Index min_available_clients = 2;  ///< configure() returns nothing below this
  ClientConfig client{};            ///< sent to every selected client
};

namespace detail {

inline Result<void> check_fedavg_options(const std::string& who, const FedAvgOptions& o) {
  if (!(o.fraction_fit >= 0.0 && o.fraction_fit <= 1.0))
    return make_error(Errc::invalid_argument, who + ": fraction_fit " + std::to_string(o.fraction_fit) +
                                                  " is outside [0, 1]");
  if (o.min_fit_clients < 0 || o.min_available_clients < 0)
    return make_error(Errc::invalid_argument, who + ": min_fit_clients and min_available_clients must be >= 0");
  return success();
}

/// "name: value V must be R" for option checks.
inline Error bad_option(const std::string& who, const char* name, double v, const char* rule) {
  return make_error(Errc::invalid_argument,
                    who + ": " + name + " = " + std::to_string(v) + " " + rule);
}

}  // namespace detail

/// FedAvg: example-weighted average of the client models.
template <class S>
class FedAvg : public Strategy<S> {
 public:
  explicit FedAvg(FedAvgOptions o = {}) : o_(std::move(o)) {}

  std::string name() const override { return "fedavg"; }
  const FedAvgOptions& options() const { return o_; }

  std::vector<ClientInstruction> configure(long round, std::span<const Index> available, Rng& rng) override {
    (void)round;
    return sample(available, o_.client, rng);
  }

  Result<void> aggregate(long round, VectorMap<S> global, std::span<const ClientUpdate<S>> updates) override {
    (void)round;
    auto avg = average(name(), global.size(), updates);
    if (!avg) return std::move(avg).error();
    global = *avg;
    return success();
  }

 protected:
  /// Flower's configure_fit: `cfg` for sample_uniform(...) of `available`,
  /// or no instruction while fewer than min_available_clients are available.
  std::vector<ClientInstruction> sample(std::span<const Index> available, const ClientConfig& cfg, Rng& rng) const {
    std::vector<ClientInstruction> out;
    if (static_cast<Index>(available.size()) < o_.min_available_clients || available.empty()) return out;
    const auto ids = sample_uniform(available, o_.fraction_fit, o_.min_fit_clients, rng);
    out.reserve(ids.size());
    for (Index id : ids) out.push_back(ClientInstruction{id, cfg});
    return out;
  }

  /// Validate the options and the updates, then the example-weighted average.
  Result<Vector<S>> average(const std::string& who, Index dim, std::span<const ClientUpdate<S>> updates) const {
    FLEETDL_TRY(detail::check_fedavg_options(who, o_));
    if (static_cast<Index>(updates.size()) < this->min_updates())
      return make_error(Errc::invalid_argument, who + ": " + std::to_string(updates.size()) +
                                                    " updates, the strategy needs at least " +
                                                    std::to_string(this->min_updates()));
    auto total = detail::check_updates<S>(who, dim, updates);
    if (!total) return std::move(total).error();
    return detail::weighted_average<S>(updates);
  }

  FedAvgOptions o_;
};

/// FedAvgM options: FedAvg's plus the server optimizer (Flower's defaults).
struct FedAvgMOptions : FedAvgOptions {
  double server_learning_rate = 1.0;  ///< eta
  double server_momentum = 0.0;       ///< beta
};

/// FedAvgM: server SGD with momentum on delta = x - avg (see the file comment).
/// State: the momentum buffer, one vector of the model's size (allocated at
/// the first aggregation).
template <class S>
class FedAvgM : public FedAvg<S> {
 public:
  explicit FedAvgM(FedAvgMOptions o = {}) : FedAvg<S>(o), m_opts_(o) {}

  std::string name() const override { return "fedavgm"; }
  const FedAvgMOptions& options() const { return m_opts_; }

  Result<void> aggregate(long round, VectorMap<S> global, std::span<const ClientUpdate<S>> updates) override {
    (void)round;
    const std::string who = name();
    if (!(m_opts_.server_learning_rate > 0.0) || !std::isfinite(m_opts_.server_learning_rate))
      return detail::bad_option(who, "server_learning_rate", m_opts_.server_learning_rate, "must be finite and > 0");
    if (!(m_opts_.server_momentum >= 0.0 && m_opts_.server_momentum < 1.0))
      return detail::bad_option(who, "server_momentum", m_opts_.server_momentum, "must be in [0, 1)");
    if (momentum_.size() != 0 && momentum_.size() != global.size())
      return make_error(Errc::shape_mismatch, who + ": momentum buffer has " + std::to_string(momentum_.size()) +
                                                  " entries, the global model " + std::to_string(global.size()) +
                                                  " (call reset() after changing the model)");
    auto avg = this->average(who, global.size(), updates);
    if (!avg) return std::move(avg).error();
    if (m_opts_.server_momentum == 0.0 && m_opts_.server_learning_rate == 1.0) {
      // Flower's FedAvgM skips the server optimizer here (server_opt false):
      // the result is the average itself, bit for bit.
      global = *avg;
      return success();
    }
    if (momentum_.size() == 0) momentum_.setZero(global.size());
    // delta = x - avg (the pseudo-gradient); m = beta m + delta; x -= eta m
    momentum_ = static_cast<S>(m_opts_.server_momentum) * momentum_ + (global - *avg);
    global -= static_cast<S>(m_opts_.server_learning_rate) * momentum_;
    return success();
  }

  /// The momentum buffer (empty before the first aggregation).
  const Vector<S>& momentum() const { return momentum_; }
  /// Forget the momentum (e.g. after loading another model).
  void reset() { momentum_.resize(0); }
  /// Continue from a checkpoint: the buffer momentum() returned then (empty
  /// before the first aggregation; its size is checked at the next one).
  void restore_momentum(Vector<S> m) { momentum_ = std::move(m); }

  /// The momentum buffer, dim raw values (nothing before the first round).
  void save_state(ByteWriter& w) const override { detail::write_state_vector(w, momentum_); }
  Result<void> load_state(ByteReader& r, Index dim) override {
    return detail::read_state_tail(r, dim, momentum_, name(), "a momentum buffer");
  }

 private:
  FedAvgMOptions m_opts_;
  Vector<S> momentum_;
};

}  // namespace fleetdl::fl
