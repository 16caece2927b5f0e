// fleetdl/fl/fedprox.hpp — FedProx: the strategy (FedAvg aggregation that
// sends the proximal weight mu to the clients) and the client-side helpers
// that add the proximal term to the local objective.
//
// Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in
// Heterogeneous Networks", MLSys 2020 (Algorithm 2): client k minimises
//     h_k(w; w_t) = F_k(w) + mu/2 ||w - w_t||^2,
// whose gradient adds mu (w - w_t) to the loss gradient. The server
// aggregates exactly as FedAvg (Flower's FedProx: FedAvg + "proximal_mu" in
// the fit config; mu = 0 is FedAvg).
//
// Client use, once per local step after backward():
//     FLEETDL_TRY(fl::add_proximal_gradient(model.grads(), std::as_const(model).params(), global_map, mu));
#pragma once

#include "fleetdl/fl/fedavg.hpp"

#include <cmath>
#include <string>
#include <utility>

namespace fleetdl::fl {

namespace detail {
template <class S>
Result<void> check_prox(const char* who, Index grads, Index params, Index global, double mu) {
  if (!(mu >= 0.0) || !std::isfinite(mu))
    return make_error(Errc::invalid_argument, std::string(who) + ": mu = " + std::to_string(mu) +
                                                  " must be finite and >= 0");
  if (params != global || (grads >= 0 && grads != params))
    return make_error(Errc::shape_mismatch,
                      std::string(who) + ": sizes differ (" + (grads >= 0 ? "grads " + std::to_string(grads) + ", " : "") +
                          "params " + std::to_string(params) + ", global " + std::to_string(global) + ")");
  return success();
}
}  // namespace detail

/// grads += mu (w - w_t): the gradient of mu/2 ||w - w_t||^2 added to the
/// local loss gradient. `global` is w_t, the model the round started from.
template <class S>
Result<void> add_proximal_gradient(VectorMap<S> grads, ConstVectorMap<S> params, ConstVectorMap<S> global, double mu) {
  FLEETDL_TRY(detail::check_prox<S>("add_proximal_gradient", grads.size(), params.size(), global.size(), mu));
  if (mu != 0.0) grads += static_cast<S>(mu) * (params - global);
  return success();
}

/// mu/2 ||w - w_t||^2, the proximal term of the local objective (for
/// reporting the local loss; accumulated in double).
template <class S>
Result<double> proximal_term(ConstVectorMap<S> params, ConstVectorMap<S> global, double mu) {
  FLEETDL_TRY(detail::check_prox<S>("proximal_term", -1, params.size(), global.size(), mu));
  return 0.5 * mu * (params.template cast<double>() - global.template cast<double>()).squaredNorm();
}

/// FedProx options: FedAvg's plus mu. Flower requires proximal_mu; its
/// documentation suggests trying {0.001, 0.01, 0.1, 1.0}; 0.01 here.
struct FedProxOptions : FedAvgOptions {
  double proximal_mu = 0.01;
};

/// FedProx: FedAvg aggregation; every ClientConfig carries prox_mu = mu.
template <class S>
class FedProx : public FedAvg<S> {
 public:
  explicit FedProx(FedProxOptions o = {}) : FedAvg<S>(with_mu(o)), mu_(o.proximal_mu) {}

  std::string name() const override { return "fedprox"; }
  double proximal_mu() const { return mu_; }

  Result<void> aggregate(long round, VectorMap<S> global, std::span<const ClientUpdate<S>> updates) override {
    if (!(mu_ >= 0.0) || !std::isfinite(mu_)) return detail::bad_option(name(), "proximal_mu", mu_, "must be finite and >= 0");
    return FedAvg<S>::aggregate(round, global, updates);
  }

 private:
  static FedAvgOptions with_mu(const FedProxOptions& o) {
    FedAvgOptions b = o;
    b.client.prox_mu = o.proximal_mu;
    return b;
  }
  double mu_;
};

}  // namespace fleetdl::fl
