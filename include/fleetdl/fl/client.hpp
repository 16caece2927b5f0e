// fleetdl/fl/client.hpp — the client half of a federated round: local SGD
// from the global parameters with the instruction's config, FedProx's
// proximal gradient or SCAFFOLD's correction added at every step, and the
// update the client returns (full local parameters, example count, steps,
// SCAFFOLD's control delta, q-FedAvg's loss at the received model).
//
// The fleet simulator (sim/simulator.hpp) and the device agent
// (device_ports/posix) both train through train_local(), so a simulated
// client and a real one given the same model, data, config and seed return
// the same bits. What a client does to its update afterwards (attacks in the
// simulator, local DP, the update codec) is the caller's.
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/core/parallel.hpp"
#include "fleetdl/core/tensor.hpp"
#include "fleetdl/data/dataset.hpp"
#include "fleetdl/fl/fedprox.hpp"
#include "fleetdl/fl/scaffold.hpp"
#include "fleetdl/fl/strategy.hpp"
#include "fleetdl/nn/model.hpp"
#include "fleetdl/nn/optim.hpp"
#include "fleetdl/nn/train.hpp"

#include <cmath>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>

namespace fleetdl::fl {

/// What train_local() needs besides the model and the data.
template <class S>
struct LocalTrainOptions {
  std::uint64_t seed = 1;           ///< the epoch order of nn::train_classifier
  bool loss_before = false;         ///< q-FedAvg: evaluate F_i(w_t) on the local data first
  Index eval_batch = 1000;          ///< batch of that evaluation
  /// SCAFFOLD (used when the config asks for it): this client's c_i, updated
  /// in place to c_i+, and the server's c (empty = zero).
  ScaffoldClientState<S>* scaffold = nullptr;
  std::span<const S> server_c{};
};

/// One client's result: its update and its last-epoch training loss.
template <class S>
struct LocalTrainResult {
  ClientUpdate<S> update;
  double last_loss = 0.0;
};

/// Train `m` (holding the global parameters, or a HeteroFL sub-model's
/// share of them) on `local` with the instruction's config. `m` is trained in
/// place. The update is tagged with ins.client and ins.config.width; the
/// caller sets base_round. An invalid config is an error and trains nothing.
template <class S>
Result<LocalTrainResult<S>> train_local(nn::Model<S>& m, const data::Dataset<S>& local, const ClientInstruction& ins,
                                        const LocalTrainOptions<S>& o, ThreadPool* pool = nullptr) {
  const auto& cfg = ins.config;
  const std::string who = "client " + std::to_string(ins.client);
  if (!(cfg.lr > 0.0) || !std::isfinite(cfg.lr))
    return make_error(Errc::invalid_argument, who + ": learning rate must be > 0");
  if (cfg.epochs < 1 || cfg.batch < 1)
    return make_error(Errc::invalid_argument, who + ": epochs and batch must be >= 1");
  if (cfg.scaffold && !o.scaffold)
    return make_error(Errc::invalid_argument, who + ": SCAFFOLD asked for, but no client control state given");
  // what this client starts from
  const Vector<S> global = m.params();

  LocalTrainResult<S> res;
  ClientUpdate<S>& u = res.update;
  u.client = ins.client;
  u.num_examples = local.size();
  u.width = cfg.width;
  if (o.loss_before) u.loss_before = nn::evaluate(m, local.images, local.labels, o.eval_batch, pool).loss;

  nn::SgdOptions so;
  so.lr = cfg.lr;
  so.momentum = cfg.momentum;
  so.weight_decay = cfg.weight_decay;
  nn::Sgd<S> opt(so);
  nn::TrainOptions to;
  to.epochs = cfg.epochs;
  to.batch = cfg.batch;
  to.seed = o.seed;

  ScaffoldClientState<S>* sc = cfg.scaffold ? o.scaffold : nullptr;
  Error hook_error;
  const ConstVectorMap<S> gmap(global.data(), global.size());
  const ConstVectorMap<S> cmap(o.server_c.data(), static_cast<Index>(o.server_c.size()));
  Vector<S> correction;
  std::function<void(nn::Model<S>&)> hook;
  if (cfg.prox_mu > 0.0 || sc)
    hook = [&](nn::Model<S>& mm) {
      if (cfg.prox_mu > 0.0) {
        auto e = add_proximal_gradient<S>(mm.grads(), std::as_const(mm).params(), gmap, cfg.prox_mu);
        if (!e && hook_error.code == Errc::ok) hook_error = std::move(e).error();
      }
      if (sc) {
        // p <- p - lr (c - c_i), next to the optimizer step and outside its
        // momentum buffer (see sim/simulator.hpp's file comment)
        correction.setZero(mm.param_count());
        auto e = sc->correct(VectorMap<S>(correction.data(), correction.size()), cmap);
        if (!e && hook_error.code == Errc::ok) hook_error = std::move(e).error();
        if (e) mm.params() -= static_cast<S>(cfg.lr) * correction;
      }
    };
  const auto rep = nn::train_classifier(m, opt, local.images, local.labels, to, pool, {}, hook);
  if (hook_error.code != Errc::ok) return hook_error;
  const Index batches = (local.size() + cfg.batch - 1) / cfg.batch;
  u.local_steps = batches * cfg.epochs;
  u.params = m.params();
  res.last_loss = rep.epochs.empty() ? 0.0 : rep.epochs.back().loss;

  if (sc) {
    auto dc = sc->update(gmap, ConstVectorMap<S>(u.params.data(), u.params.size()), cmap, u.local_steps, cfg.lr);
    if (!dc) return std::move(dc).error();
    u.control_delta = std::move(*dc);
  }
  return res;
}

}  // namespace fleetdl::fl
