// fleetdl/fl/qfedavg.hpp — q-FedAvg: fair aggregation that gives clients with
// a higher loss more weight (q-FFL objective).
//
// Li, Sanjabi, Beirami, Smith, "Fair Resource Allocation in Federated
// Learning", ICLR 2020 (Algorithm 2, q-FedAvg). With L = 1/lr (lr = the
// clients' learning rate), w_t the global model, w_i client i's model and
// F_i its local loss at w_t:
//     dw_i    = L (w_t - w_i)
//     Delta_i = F_i^q dw_i
//     h_i     = q F_i^(q-1) ||dw_i||^2 + L F_i^q
//     w_t+1   = w_t - sum_i Delta_i / sum_i h_i
// F_i = ClientUpdate::loss_before + loss_epsilon (1e-10, as Flower adds to
// keep F^(q-1) finite). q = 0 gives F^0 = 1, h_i = L and so the plain
// (unweighted) mean of the client models: q-FedAvg's step-size form of
// FedAvg with equal client weights. Example counts are not used.
//
// Difference from Flower (flwr.server.strategy.QFedAvg): Flower uses ONE loss
// for every client — the server-side evaluation of w_t, else the mean of the
// clients' reported losses, else 1.0. fleetdl uses each client's own F_i as
// in the paper; a caller that wants Flower's behaviour sets every
// loss_before to the same value. Defaults are Flower's: q = 0.2,
// learning rate 0.1 (sent to the clients as ClientConfig::lr; Flower leaves
// the client rate to the client), min_fit_clients = min_available_clients = 1.
#pragma once

#include "fleetdl/fl/fedavg.hpp"

#include <cmath>
#include <string>
#include <utility>

namespace fleetdl::fl {

struct QFedAvgOptions : FedAvgOptions {
  QFedAvgOptions() {
    min_fit_clients = 1;
    min_available_clients = 1;
  }
  double q = 0.2;               ///< fairness: 0 = average, larger = favour high-loss clients
  double learning_rate = 0.1;   ///< the clients' lr; L = 1 / learning_rate
  double loss_epsilon = 1e-10;  ///< added to every loss (Flower)
};

template <class S>
class QFedAvg : public FedAvg<S> {
 public:
  explicit QFedAvg(QFedAvgOptions o = {}) : FedAvg<S>(with_lr(o)), q_(o) {}

  std::string name() const override { return "qfedavg"; }
  const QFedAvgOptions& options() const { return q_; }

  Result<void> aggregate(long round, VectorMap<S> global, std::span<const ClientUpdate<S>> updates) override {
    (void)round;
    const std::string who = name();
    FLEETDL_TRY(detail::check_fedavg_options(who, this->o_));
    if (!(q_.q >= 0.0) || !std::isfinite(q_.q)) return detail::bad_option(who, "q", q_.q, "must be finite and >= 0");
    if (!(q_.learning_rate > 0.0) || !std::isfinite(q_.learning_rate))
      return detail::bad_option(who, "learning_rate", q_.learning_rate, "must be finite and > 0");
    if (!(q_.loss_epsilon >= 0.0) || !std::isfinite(q_.loss_epsilon))
      return detail::bad_option(who, "loss_epsilon", q_.loss_epsilon, "must be finite and >= 0");
    auto total = detail::check_updates<S>(who, global.size(), updates, /*need_examples=*/false);
    if (!total) return std::move(total).error();
    const double L = 1.0 / q_.learning_rate;
    const Vector<double> x = global.template cast<double>();
    Vector<double> sum_delta = Vector<double>::Zero(global.size());
    double sum_h = 0.0;
    for (std::size_t i = 0; i < updates.size(); ++i) {
      const auto& u = updates[i];
      const double F = u.loss_before + q_.loss_epsilon;
      if (!std::isfinite(u.loss_before) || u.loss_before < 0.0 || !(F > 0.0))
        return make_error(Errc::invalid_argument, who + ": update " + std::to_string(i) + " (client " +
                                                      std::to_string(u.client) + ") reports loss_before = " +
                                                      std::to_string(u.loss_before) +
                                                      " (needs a finite loss, > 0 after adding loss_epsilon)");
      const Vector<double> dw = L * (x - u.params.template cast<double>());
      const double Fq = std::pow(F, q_.q);
      sum_delta += Fq * dw;
      sum_h += (q_.q == 0.0 ? 0.0 : q_.q * std::pow(F, q_.q - 1.0) * dw.squaredNorm()) + L * Fq;
    }
    if (!(sum_h > 0.0) || !std::isfinite(sum_h) || !sum_delta.allFinite())
      return make_error(Errc::invalid_argument, who + ": the step is not finite (sum h = " + std::to_string(sum_h) + ")");
    global = (x - sum_delta / sum_h).template cast<S>();
    return success();
  }

 private:
  static FedAvgOptions with_lr(const QFedAvgOptions& o) {
    FedAvgOptions b = o;
    b.client.lr = o.learning_rate;
    return b;
  }
  QFedAvgOptions q_;
};

}  // namespace fleetdl::fl
