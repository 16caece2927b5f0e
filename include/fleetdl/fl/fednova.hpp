// fleetdl/fl/fednova.hpp — FedNova: normalised averaging for clients that take
// different numbers of local steps (local SGD with momentum rho).
//
// Wang, Liu, Liang, Joshi, Poor, "Tackling the Objective Inconsistency Problem
// in Heterogeneous Federated Optimization", NeurIPS 2020 (Section 4, eq. (7)
// and Appendix on momentum). Client i runs tau_i steps of SGD with momentum
// rho (buffer = g at the first step, as torch.optim.SGD and nn::Sgd) from x
// to y_i; its cumulative update is x - y_i = eta G_i a_i with
//     ||a_i||_1 = sum_{j=1..tau_i} (1 - rho^j) / (1 - rho)
//              = (tau_i - rho (1 - rho^tau_i) / (1 - rho)) / (1 - rho)
// (= tau_i for rho = 0). The server normalises and re-scales:
//     d_i     = (x - y_i) / ||a_i||_1          (normalised update, eta included)
//     tau_eff = sum_i p_i ||a_i||_1,   p_i = n_i / sum_j n_j
//     x      <- x - tau_eff * sum_i p_i d_i
// This is the update of Flower's niid_bench FedNova baseline (client sends
// d_i and a_i; server: x - sum_i (tau_eff p_i) d_i). With equal a_i it is
// FedAvg: x - sum_i p_i (x - y_i) = sum_i p_i y_i.
//
// fleetdl keeps the common ClientUpdate contract: the client sends its model
// y_i and ClientUpdate::local_steps = tau_i; the server computes a_i from
// tau_i and the momentum it configured (ClientConfig::momentum = rho).
// Weight decay and proximal terms change a_i (paper, Appendix) and are not
// modelled.
#pragma once

#include "fleetdl/fl/fedavg.hpp"

#include <cmath>
#include <string>
#include <utility>
#include <vector>

namespace fleetdl::fl {

/// ||a_i||_1 for tau local steps of SGD with momentum rho in [0, 1).
inline Result<double> fednova_norm(Index tau, double rho) {
  if (tau <= 0)
    return make_error(Errc::invalid_argument, "fednova: local_steps = " + std::to_string(tau) + " (tau_i must be > 0)");
  if (!(rho >= 0.0 && rho < 1.0))
    return make_error(Errc::invalid_argument, "fednova: momentum = " + std::to_string(rho) + " must be in [0, 1)");
  const double t = static_cast<double>(tau);
  if (rho == 0.0) return t;
  return (t - rho * (1.0 - std::pow(rho, t)) / (1.0 - rho)) / (1.0 - rho);
}

struct FedNovaOptions : FedAvgOptions {
  double momentum = 0.0;  ///< rho, the clients' SGD momentum (sent as ClientConfig::momentum)
};

/// FedNova server aggregation (see the file comment).
template <class S>
class FedNova : public FedAvg<S> {
 public:
  explicit FedNova(FedNovaOptions o = {}) : FedAvg<S>(with_rho(o)), rho_(o.momentum) {}

  std::string name() const override { return "fednova"; }
  double momentum() const { return rho_; }

  Result<void> aggregate(long round, VectorMap<S> global, std::span<const ClientUpdate<S>> updates) override {
    (void)round;
    const std::string who = name();
    FLEETDL_TRY(detail::check_fedavg_options(who, this->o_));
    auto total = detail::check_updates<S>(who, global.size(), updates);
    if (!total) return std::move(total).error();
    std::vector<double> a(updates.size());
    double tau_eff = 0.0;
    for (std::size_t i = 0; i < updates.size(); ++i) {
      auto ai = fednova_norm(updates[i].local_steps, rho_);
      if (!ai)
        return make_error(ai.error().code, who + ": update " + std::to_string(i) + " (client " +
                                               std::to_string(updates[i].client) + "): " + ai.error().message);
      a[i] = *ai;
      tau_eff += static_cast<double>(updates[i].num_examples) / *total * a[i];
    }
    // sum_i p_i d_i = sum_i p_i (x - y_i) / a_i
    Vector<double> step = Vector<double>::Zero(global.size());
    const Vector<double> x = global.template cast<double>();
    for (std::size_t i = 0; i < updates.size(); ++i)
      step += (static_cast<double>(updates[i].num_examples) / (*total * a[i])) *
              (x - updates[i].params.template cast<double>());
    global = (x - tau_eff * step).template cast<S>();
    return success();
  }

 private:
  static FedAvgOptions with_rho(const FedNovaOptions& o) {
    FedAvgOptions b = o;
    b.client.momentum = o.momentum;
    return b;
  }
  double rho_;
};

}  // namespace fleetdl::fl
