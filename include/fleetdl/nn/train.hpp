// fleetdl/nn/train.hpp — the supervised training loop and evaluation for
// classifiers, with progress callbacks (the library never prints) and an
// optional loss hook in place of cross-entropy (distillation).
//
// Determinism: the epoch order comes from Rng(seed); Dropout masks from a
// fork of it; all reductions are chunked by thread count. The same seed and
// thread count give the same weights bit for bit.
#pragma once

#include "fleetdl/nn/loss.hpp"
#include "fleetdl/nn/model.hpp"
#include "fleetdl/nn/optim.hpp"

#include <chrono>
#include <functional>
#include <numeric>
#include <type_traits>
#include <vector>

namespace fleetdl::nn {

struct TrainOptions {
  int epochs = 1;
  Index batch = 64;
  std::uint64_t seed = 1;
  LrSchedule schedule{};  ///< applied per epoch to the optimizer's base rate
  bool shuffle = true;
};

struct TrainProgress {
  int epoch = 0, epochs = 0;  ///< epoch is 0-based
  Index batch = 0, batches = 0;
  double loss = 0;            ///< running mean loss of this epoch
  double lr = 0;
};

struct EpochReport {
  int epoch = 0;
  double loss = 0;            ///< mean training loss
  double train_accuracy = 0;  ///< on the training batches, as seen during the epoch
  double seconds = 0;
};

struct TrainReport {
  std::vector<EpochReport> epochs;
  double seconds = 0;
  double images_per_second = 0;
};

struct TrainCallbacks {
  std::function<void(const TrainProgress&)> on_batch;
  std::function<void(const EpochReport&)> on_epoch;
};

/// A training loss in place of softmax cross-entropy: given the batch's
/// logits, labels and inputs (one sample per column, the columns of `logits`
/// belong to those of `inputs`), return the batch's mean loss and write
/// dLoss/dlogits (the shape of `logits`) to `*grad`, which is never null.
/// `inputs` lets a distillation loss run its teacher on the same batch
/// (nn::kd_loss against teacher.forward(inputs) in eval mode).
template <class S>
using LossHook = std::function<double(const Matrix<S>& logits, const std::vector<std::uint8_t>& labels,
                                      const Matrix<S>& inputs, Matrix<S>* grad)>;

struct EvalReport {
  double loss = 0;
  double accuracy = 0;
  Index samples = 0;
};

namespace detail {
template <class S>
void gather_batch(const Matrix<S>& x, const std::vector<std::uint8_t>& y, const std::vector<Index>& order, Index b,
                  Index e, Matrix<S>& xb, std::vector<std::uint8_t>& yb) {
  xb.resize(x.rows(), e - b);
  yb.resize(static_cast<std::size_t>(e - b));
  for (Index i = b; i < e; ++i) {
    xb.col(i - b) = x.col(order[static_cast<std::size_t>(i)]);
    yb[static_cast<std::size_t>(i - b)] = y[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])];
  }
}
template <class S>
Index count_correct(const Matrix<S>& logits, const std::vector<std::uint8_t>& y) {
  Index c = 0;
  for (Index j = 0; j < logits.cols(); ++j) {
    Index arg = 0;
    logits.col(j).maxCoeff(&arg);
    if (arg == y[static_cast<std::size_t>(j)]) ++c;
  }
  return c;
}
}  // namespace detail

/// Train a classifier with softmax cross-entropy. x: one sample per column.
/// `before_step`, when set, runs after every backward pass and before the
/// optimizer step with the model (params() and grads() both valid): the hook
/// federated clients use to add FedProx's proximal gradient or SCAFFOLD's
/// control-variate correction to the gradients. `loss`, when set, replaces
/// softmax cross-entropy (see LossHook); it runs after the model's forward
/// pass on the batch and before its backward pass, and its value is what
/// the reports' losses average. Without it the loop is the same as before
/// the hook existed, bit for bit; a hook consumes no random numbers of the
/// loop's, so the epoch order and Dropout masks do not depend on it.
template <class S>
TrainReport train_classifier(Model<S>& model, Optimizer<S>& opt, const Matrix<S>& x,
                             const std::vector<std::uint8_t>& y, const TrainOptions& o, ThreadPool* pool = nullptr,
                             const TrainCallbacks& cb = {},
                             const std::type_identity_t<std::function<void(Model<S>&)>>& before_step = {},
                             const std::type_identity_t<LossHook<S>>& loss = {}) {
  FLEETDL_ASSERT(x.cols() == static_cast<Index>(y.size()), "train_classifier: one label per sample");
  FLEETDL_ASSERT(o.batch > 0, "train_classifier: batch must be > 0");
  Rng order_rng(o.seed);
  Rng dropout_rng = order_rng.fork(0xD0);
  ExecContext<S> ctx{pool, true, &dropout_rng};
  const Index n = x.cols();
  const Index batches = (n + o.batch - 1) / o.batch;
  const double base_lr = opt.lr();
  std::vector<Index> order(static_cast<std::size_t>(n));
  Matrix<S> xb, grad;
  std::vector<std::uint8_t> yb;
  TrainReport rep;
  const auto t0 = std::chrono::steady_clock::now();
  for (int ep = 0; ep < o.epochs; ++ep) {
    const auto te = std::chrono::steady_clock::now();
    opt.set_lr(o.schedule.at(base_lr, ep));
    std::iota(order.begin(), order.end(), Index{0});
    if (o.shuffle) order_rng.shuffle(order.begin(), order.end());
    double loss_sum = 0;
    Index correct = 0;
    for (Index bi = 0; bi < batches; ++bi) {
      const Index b = bi * o.batch, e = std::min(n, b + o.batch);
      detail::gather_batch(x, y, order, b, e, xb, yb);
      const Matrix<S>& logits = model.forward(xb, ctx);
      const double l = loss ? loss(logits, yb, xb, &grad) : softmax_cross_entropy(logits, yb, &grad);
      correct += detail::count_correct(logits, yb);
      model.zero_grad();
      model.backward(grad, ctx);
      if (before_step) before_step(model);
      opt.step(model.params(), std::as_const(model).grads());
      loss_sum += l * static_cast<double>(e - b);
      if (cb.on_batch) cb.on_batch({ep, o.epochs, bi + 1, batches, loss_sum / static_cast<double>(e), opt.lr()});
    }
    EpochReport er;
    er.epoch = ep;
    er.loss = loss_sum / static_cast<double>(n);
    er.train_accuracy = static_cast<double>(correct) / static_cast<double>(n);
    er.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count();
    rep.epochs.push_back(er);
    if (cb.on_epoch) cb.on_epoch(er);
  }
  opt.set_lr(base_lr);
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  rep.images_per_second = rep.seconds > 0 ? static_cast<double>(n) * o.epochs / rep.seconds : 0.0;
  return rep;
}

/// Accuracy and mean cross-entropy in eval mode.
template <class S>
EvalReport evaluate(Model<S>& model, const Matrix<S>& x, const std::vector<std::uint8_t>& y, Index batch = 256,
                    ThreadPool* pool = nullptr) {
  ExecContext<S> ctx{pool, false, nullptr};
  const Index n = x.cols();
  std::vector<Index> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), Index{0});
  Matrix<S> xb;
  std::vector<std::uint8_t> yb;
  double loss = 0;
  Index correct = 0;
  for (Index b = 0; b < n; b += batch) {
    const Index e = std::min(n, b + batch);
    detail::gather_batch(x, y, order, b, e, xb, yb);
    const Matrix<S>& logits = model.forward(xb, ctx);
    loss += softmax_cross_entropy<S>(logits, yb, nullptr) * static_cast<double>(e - b);
    correct += detail::count_correct(logits, yb);
  }
  EvalReport r;
  r.samples = n;
  r.loss = n ? loss / static_cast<double>(n) : 0.0;
  r.accuracy = n ? static_cast<double>(correct) / static_cast<double>(n) : 0.0;
  return r;
}

}  // namespace fleetdl::nn
