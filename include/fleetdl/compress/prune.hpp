// fleetdl/compress/prune.hpp — pruning: unstructured magnitude pruning (per
// layer or global) with a mask kept fixed during fine-tuning, the gradual
// polynomial sparsity schedule of Zhu & Gupta (2017), and structured filter /
// channel pruning by L1 norm that really removes channels from a layer and its
// consumers.
//
// What is pruned (unstructured): the weight tensors of conv and dense layers
// (tensors named "...weight" with two or more dims). Biases, BatchNorm
// parameters and buffers are never pruned: they are few (well under 1% of
// LeNet's parameters) and zeroing a bias shifts every output of its channel.
//
// Exact counts and ties: pruning n weights to sparsity s zeroes exactly
// round(s * n) of them (half away from zero), the smallest by |w|; ties in |w|
// go by position in the flat parameter buffer (earlier first), so results are
// deterministic and independent of threads. Weights already exactly zero are
// the smallest and count towards the target.
//
// Masks during training: nn::train_classifier calls `before_step` after the
// backward pass and `on_batch` after the optimizer step. mask_hooks() zeroes
// the gradients of pruned weights before the step and re-applies the mask
// after it, so pruned weights stay exactly zero with any optimizer (SGD with
// momentum/weight decay, Adam: a zero weight with zero gradient and zero
// state does not move; the re-application catches anything else).
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/nn/model.hpp"
#include "fleetdl/nn/train.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

namespace fleetdl::compress {

/// A keep-mask over a model's flat parameter buffer (1 = keep, 0 = pruned).
struct Mask {
  std::vector<std::uint8_t> keep;

  Index size() const { return static_cast<Index>(keep.size()); }
  Index pruned() const {
    return static_cast<Index>(std::count(keep.begin(), keep.end(), std::uint8_t{0}));
  }
  /// Zero the pruned entries of a parameter (or gradient) vector.
  template <class S>
  void apply(VectorMap<S> v) const {
    FLEETDL_ASSERT(v.size() == size(), "Mask::apply: size does not match the parameter count");
    for (Index i = 0; i < v.size(); ++i)
      if (!keep[static_cast<std::size_t>(i)]) v[i] = S(0);
  }
  template <class S>
  void apply(nn::Model<S>& m) const {
    apply<S>(m.params());
  }
  template <class S>
  void apply_to_grads(nn::Model<S>& m) const {
    apply<S>(m.grads());
  }
};

/// A prunable tensor: its name and its range in the flat parameter buffer.
struct PrunableTensor {
  std::string name;
  Index offset = 0;
  Index size = 0;
};

/// Conv and dense weight tensors (name ends in "weight", two or more dims).
template <class S>
std::vector<PrunableTensor> prunable_tensors(nn::Model<S>& m) {
  std::vector<PrunableTensor> out;
  const S* base = m.params().data();
  for (const auto& t : m.tensors()) {
    const bool is_weight = t.name.size() >= 6 && t.name.compare(t.name.size() - 6, 6, "weight") == 0;
    if (t.trainable && is_weight && t.dims.size() >= 2)
      out.push_back({t.name, static_cast<Index>(t.data - base), t.size()});
  }
  return out;
}

enum class PruneScope { per_layer, global };

namespace detail {
/// Number pruned out of n at sparsity s: round(s * n), half away from zero.
inline Index prune_count(double s, Index n) {
  return static_cast<Index>(std::llround(s * static_cast<double>(n)));
}
/// Mark the `k` smallest-magnitude entries among `idx` (ties: lower index).
template <class S>
void mark_smallest(const S* p, std::vector<Index>& idx, Index k, std::vector<std::uint8_t>& keep) {
  if (k <= 0) return;
  const auto less = [&](Index a, Index b) {
    const S fa = std::abs(p[a]), fb = std::abs(p[b]);
    return fa < fb || (fa == fb && a < b);
  };
  const auto kth = idx.begin() + static_cast<std::ptrdiff_t>(k);
  std::nth_element(idx.begin(), kth - 1, idx.end(), less);
  for (auto it = idx.begin(); it != kth; ++it) keep[static_cast<std::size_t>(*it)] = 0;
}
}  // namespace detail

/// Magnitude pruning to sparsity `s` (0 <= s <= 1) of the prunable tensors,
/// per layer (each tensor gets exactly round(s * n) zeros) or global (round(s *
/// total) zeros over all of them, smallest |w| first). Applies the mask to the
/// model and returns it.
template <class S>
Mask magnitude_prune(nn::Model<S>& m, double s, PruneScope scope = PruneScope::per_layer) {
  FLEETDL_ASSERT(s >= 0.0 && s <= 1.0, "magnitude_prune: sparsity must be in [0, 1]");
  Mask mask;
  mask.keep.assign(static_cast<std::size_t>(m.param_count()), 1);
  const auto ts = prunable_tensors(m);
  const S* p = m.params().data();
  if (scope == PruneScope::per_layer) {
    for (const auto& t : ts) {
      std::vector<Index> idx(static_cast<std::size_t>(t.size));
      std::iota(idx.begin(), idx.end(), t.offset);
      detail::mark_smallest(p, idx, detail::prune_count(s, t.size), mask.keep);
    }
  } else {
    std::vector<Index> idx;
    for (const auto& t : ts)
      for (Index i = 0; i < t.size; ++i) idx.push_back(t.offset + i);
    detail::mark_smallest(p, idx, detail::prune_count(s, static_cast<Index>(idx.size())), mask.keep);
  }
  mask.apply(m);
  return mask;
}

/// Per-tensor sparsity of the prunable tensors (fraction of exact zeros).
template <class S>
std::vector<std::pair<std::string, double>> sparsity_report(nn::Model<S>& m) {
  std::vector<std::pair<std::string, double>> out;
  const S* p = m.params().data();
  for (const auto& t : prunable_tensors(m)) {
    Index z = 0;
    for (Index i = 0; i < t.size; ++i) z += p[t.offset + i] == S(0) ? 1 : 0;
    out.emplace_back(t.name, t.size ? static_cast<double>(z) / static_cast<double>(t.size) : 0.0);
  }
  return out;
}

/// Gradual pruning schedule (Zhu & Gupta 2017, eq. 1):
///   s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3
/// for t in {t0, t0 + dt, ..., t0 + n*dt}. Between pruning steps the sparsity
/// of the last pruning step holds (t is floored to t0 + k*dt); before t0 it is
/// 0 (no pruning yet), from t0 + n*dt on it is s_f.
struct PolynomialSchedule {
  double initial = 0.5;  ///< s_i, sparsity at t0
  double final = 0.8;    ///< s_f
  Index begin = 0;       ///< t0 (optimizer steps)
  Index steps = 10;      ///< n, number of pruning steps
  Index every = 1;       ///< dt, optimizer steps between pruning steps

  double at(Index t) const {
    FLEETDL_ASSERT(steps > 0 && every > 0, "PolynomialSchedule: steps and every must be > 0");
    if (t < begin) return 0.0;
    const Index k = std::min((t - begin) / every, steps);
    const double frac = 1.0 - static_cast<double>(k) / static_cast<double>(steps);
    return final + (initial - final) * frac * frac * frac;
  }
  /// True at t0, t0 + dt, ..., t0 + n*dt.
  bool is_pruning_step(Index t) const {
    return t >= begin && (t - begin) % every == 0 && (t - begin) / every <= steps;
  }
};

/// Hooks for nn::train_classifier that keep `mask` fixed: `before_step`
/// zeroes the pruned gradients, `callbacks.on_batch` re-applies the mask after
/// each optimizer step (then calls `user.on_batch`). `mask` and `model` must
/// outlive the training run.
template <class S>
struct MaskHooks {
  std::function<void(nn::Model<S>&)> before_step;
  nn::TrainCallbacks callbacks;
};

template <class S>
MaskHooks<S> mask_hooks(nn::Model<S>& model, const Mask& mask, nn::TrainCallbacks user = {}) {
  MaskHooks<S> h;
  h.before_step = [&mask](nn::Model<S>& m) { mask.apply_to_grads(m); };
  h.callbacks = user;
  h.callbacks.on_batch = [&model, &mask, f = std::move(user.on_batch)](const nn::TrainProgress& p) {
    mask.apply(model);
    if (f) f(p);
  };
  return h;
}

/// Gradual magnitude pruning during training: counts optimizer steps; at each
/// pruning step of the schedule it re-prunes to schedule.at(t) (a weight once
/// pruned is zero and stays among the smallest, so sparsity only grows) and in
/// between it keeps the current mask fixed. Use hooks() with train_classifier.
template <class S>
class GradualPruner {
 public:
  GradualPruner(nn::Model<S>& model, PolynomialSchedule schedule, PruneScope scope = PruneScope::per_layer)
      : model_(&model), sched_(schedule), scope_(scope) {
    mask_.keep.assign(static_cast<std::size_t>(model.param_count()), 1);
  }
  /// Call after every optimizer step (the hooks do).
  void after_step() {
    if (sched_.is_pruning_step(step_)) mask_ = magnitude_prune(*model_, sched_.at(step_), scope_);
    mask_.apply(*model_);
    ++step_;
  }
  MaskHooks<S> hooks(nn::TrainCallbacks user = {}) {
    MaskHooks<S> h;
    h.before_step = [this](nn::Model<S>& m) { mask_.apply_to_grads(m); };
    h.callbacks = user;
    h.callbacks.on_batch = [this, f = std::move(user.on_batch)](const nn::TrainProgress& p) {
      after_step();
      if (f) f(p);
    };
    return h;
  }
  Index step() const { return step_; }
  const Mask& mask() const { return mask_; }
  double sparsity() const { return sched_.at(step_ == 0 ? 0 : step_ - 1); }

 private:
  nn::Model<S>* model_;
  PolynomialSchedule sched_;
  PruneScope scope_;
  Mask mask_;
  Index step_ = 0;
};

// ---------------------------------------------------------------------------
// Structured pruning
// ---------------------------------------------------------------------------
//
// A "channel" of a top-level conv (an output filter) or dense layer (an output
// unit) is removed from the producer (its weights and bias), from every
// channel-wise node after it (BatchNorm: gamma, beta, running stats; ReLU,
// ReLU6, sigmoid, tanh, pooling, dropout pass it through), and from the input
// of the consumer: the next conv (its input-channel slice) or dense layer
// (the in-features c*H*W .. (c+1)*H*W - 1 after a Flatten). Only top-level
// nodes of the chain are handled; a grouped conv, softmax, Residual or Concat
// between producer and consumer is reported as unsupported.
//
// Equivalence: the pruned model computes exactly what the original computes
// with those channels zeroed (zero_channels(): producer weights and bias, and
// BatchNorm gamma and beta, set to zero) when every node between producer and
// consumer maps 0 to 0 (ReLU, ReLU6, tanh, max/avg pooling, eval-mode BN with
// zeroed gamma/beta) — not after a sigmoid (sigmoid(0) = 0.5) and not in
// training-mode BatchNorm. Without zeroing the bias first, a removed channel
// with bias b contributed the constant relu(b) to the consumer; that
// contribution is dropped (it is not folded into the consumer's bias, which
// would be exact only for unpadded convs and dense consumers). Results agree
// to rounding, not bit for bit: the consumer's sums have fewer (zero) terms and
// Eigen's GEMM blocking depends on the sizes.

enum class ChannelCriterion {
  filter_l1,   ///< L1 norm of the producer's filter (weights only, bias excluded)
  channel_l1,  ///< L1 norm of the consumer's input-channel slice
};

struct StructuredPruneReport {
  Index layer = 0;                ///< top-level index of the producer
  std::vector<Index> removed;     ///< removed channels (original numbering, ascending)
  Index params_before = 0, params_after = 0;
  Index macs_before = 0, macs_after = 0;
};

namespace detail {

/// The producer/consumer chain of a structured pruning request.
struct ChannelPath {
  Index producer = 0;
  Index channels = 0;           ///< producer's output channels
  std::vector<Index> passthrough;  ///< top-level nodes between (channel-wise)
  std::vector<Index> batchnorms;   ///< the BatchNorm ones among them
  Index consumer = -1;
  Index consumer_group = 1;     ///< in-features per channel (H*W) for a dense consumer
};

template <class S>
Result<ChannelPath> channel_path(const nn::Model<S>& m, Index layer) {
  using nn::NodeKind;
  const auto err = [&](const std::string& why) {
    return make_error(Errc::unsupported, "structured pruning of node " + std::to_string(layer) + ": " + why);
  };
  if (layer < 0 || layer >= m.size())
    return make_error(Errc::invalid_argument, "structured pruning: node " + std::to_string(layer) + " out of range 0.." +
                                                  std::to_string(m.size() - 1));
  ChannelPath p;
  p.producer = layer;
  const auto& prod = m.node(layer);
  if (prod.kind() == NodeKind::conv2d) {
    const auto& o = static_cast<const nn::Conv2D<S>&>(prod).options();
    if (o.groups != 1) return err("the producer is a grouped convolution");
    p.channels = o.out_channels;
  } else if (prod.kind() == NodeKind::dense) {
    p.channels = static_cast<const nn::Dense<S>&>(prod).out_features();
  } else {
    return err(std::string("node is a ") + prod.type_name() + ", not a conv2d or dense layer");
  }
  bool flattened = false;
  for (Index i = layer + 1; i < m.size(); ++i) {
    const auto& n = m.node(i);
    switch (n.kind()) {
      case NodeKind::relu:
      case NodeKind::relu6:
      case NodeKind::sigmoid:
      case NodeKind::tanh:
      case NodeKind::maxpool2d:
      case NodeKind::avgpool2d:
      case NodeKind::global_avg_pool:
      case NodeKind::dropout:
        if (flattened && n.kind() != NodeKind::dropout && n.kind() != NodeKind::relu && n.kind() != NodeKind::relu6 &&
            n.kind() != NodeKind::sigmoid && n.kind() != NodeKind::tanh)
          return err(std::string("a ") + n.type_name() + " after a flatten");
        p.passthrough.push_back(i);
        break;
      case NodeKind::batchnorm:
        if (flattened) return err("a batchnorm after a flatten");
        p.passthrough.push_back(i);
        p.batchnorms.push_back(i);
        break;
      case NodeKind::flatten:
        p.passthrough.push_back(i);
        flattened = true;
        break;
      case NodeKind::conv2d: {
        if (flattened) return err("a conv2d after a flatten");
        const auto& o = static_cast<const nn::Conv2D<S>&>(n).options();
        if (o.groups != 1) return err("the consumer " + std::to_string(i) + " is a grouped convolution");
        p.consumer = i;
        return p;
      }
      case NodeKind::dense: {
        const Shape in = n.input_shape();
        if (in.size() % p.channels != 0) return err("dense consumer input does not split into channels");
        p.consumer = i;
        p.consumer_group = in.size() / p.channels;
        return p;
      }
      default:
        return err(std::string("a ") + n.type_name() + " (node " + std::to_string(i) + ") between producer and consumer");
    }
  }
  return err("no consumer layer after it (pruning the output layer would change the model's output)");
}

/// Indices kept out of [0, n) when `removed` (sorted, unique) are dropped.
inline std::vector<Index> kept(Index n, const std::vector<Index>& removed) {
  std::vector<Index> k;
  std::size_t r = 0;
  for (Index i = 0; i < n; ++i) {
    if (r < removed.size() && removed[r] == i) {
      ++r;
      continue;
    }
    k.push_back(i);
  }
  return k;
}

template <class S>
Index total_macs(const nn::Model<S>& m) {
  Index s = 0;
  for (const auto& c : m.cost_report(false)) s += c.macs;
  return s;
}

}  // namespace detail

/// L1 score of every channel of producer `layer` (see ChannelCriterion).
template <class S>
Result<std::vector<double>> channel_scores(nn::Model<S>& m, Index layer, ChannelCriterion crit = ChannelCriterion::filter_l1) {
  auto path = detail::channel_path(m, layer);
  if (!path) return std::move(path).error();
  const Index C = path->channels;
  std::vector<double> score(static_cast<std::size_t>(C), 0.0);
  if (crit == ChannelCriterion::filter_l1) {
    std::vector<nn::TensorRef<S>> ts;
    m.node(layer).tensors("", ts);
    const auto& w = ts[0];  // weight first: {C, ...}
    const Index per = w.size() / C;
    for (Index c = 0; c < C; ++c)
      for (Index j = 0; j < per; ++j) score[static_cast<std::size_t>(c)] += std::abs(static_cast<double>(w.data[c * per + j]));
  } else {
    std::vector<nn::TensorRef<S>> ts;
    m.node(path->consumer).tensors("", ts);
    const auto& w = ts[0];
    const Index out = w.dims[0];
    const Index in = w.size() / out;  // per output row
    const Index per_c = in / C;       // conv: kh*kw; dense: H*W
    for (Index o = 0; o < out; ++o)
      for (Index c = 0; c < C; ++c)
        for (Index j = 0; j < per_c; ++j)
          score[static_cast<std::size_t>(c)] += std::abs(static_cast<double>(w.data[o * in + c * per_c + j]));
  }
  return score;
}

/// The `count` lowest-scoring channels (ties: lower channel index), ascending.
template <class S>
Result<std::vector<Index>> lowest_channels(nn::Model<S>& m, Index layer, Index count,
                                           ChannelCriterion crit = ChannelCriterion::filter_l1) {
  auto sc = channel_scores(m, layer, crit);
  if (!sc) return std::move(sc).error();
  const Index C = static_cast<Index>(sc->size());
  if (count < 0 || count >= C)
    return make_error(Errc::invalid_argument, "structured pruning of node " + std::to_string(layer) + ": cannot remove " +
                                                  std::to_string(count) + " of " + std::to_string(C) + " channels");
  std::vector<Index> order(static_cast<std::size_t>(C));
  std::iota(order.begin(), order.end(), Index{0});
  std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) {
    return (*sc)[static_cast<std::size_t>(a)] < (*sc)[static_cast<std::size_t>(b)];
  });
  order.resize(static_cast<std::size_t>(count));
  std::sort(order.begin(), order.end());
  return order;
}

/// The reference for the equivalence test: zero the producer's weights and
/// bias for `channels`, and gamma/beta of BatchNorms between producer and
/// consumer, leaving the architecture unchanged.
template <class S>
Result<void> zero_channels(nn::Model<S>& m, Index layer, const std::vector<Index>& channels) {
  auto path = detail::channel_path(m, layer);
  if (!path) return std::move(path).error();
  std::vector<nn::TensorRef<S>> ts;
  m.node(layer).tensors("", ts);
  for (const auto& t : ts) {
    const Index per = t.size() / path->channels;
    for (Index c : channels)
      for (Index j = 0; j < per; ++j) t.data[c * per + j] = S(0);
  }
  for (Index b : path->batchnorms) {
    auto& bn = static_cast<nn::BatchNorm<S>&>(m.node(b));
    for (Index c : channels) bn.gamma()[c] = bn.beta()[c] = S(0);
  }
  return success();
}

/// A new model with `channels` (distinct, in range) of producer `layer`
/// removed from the producer, the channel-wise nodes after it and the
/// consumer's input. The report gives params and MACs before and after.
template <class S>
Result<nn::Model<S>> remove_channels(const nn::Model<S>& model, Index layer, std::vector<Index> channels,
                                     StructuredPruneReport* report = nullptr) {
  using nn::NodeKind;
  auto path = detail::channel_path(model, layer);
  if (!path) return std::move(path).error();
  std::sort(channels.begin(), channels.end());
  const Index C = path->channels;
  if (channels.empty() || std::adjacent_find(channels.begin(), channels.end()) != channels.end() ||
      channels.front() < 0 || channels.back() >= C || static_cast<Index>(channels.size()) >= C)
    return make_error(Errc::invalid_argument, "structured pruning of node " + std::to_string(layer) +
                                                  ": channels must be distinct, in 0.." + std::to_string(C - 1) +
                                                  ", and leave at least one");
  const std::vector<Index> keep = detail::kept(C, channels);
  const Index K = static_cast<Index>(keep.size());

  // New nodes: producer, BatchNorms and consumer rebuilt at the new width.
  std::vector<nn::NodePtr<S>> nodes;
  for (Index i = 0; i < model.size(); ++i) {
    const auto& n = model.node(i);
    nn::NodePtr<S> nn_;
    if (i == layer || i == path->consumer) {
      if (n.kind() == NodeKind::conv2d) {
        auto o = static_cast<const nn::Conv2D<S>&>(n).options();
        if (i == layer) o.out_channels = K;
        else o.in_channels = K;
        nn_ = std::make_unique<nn::Conv2D<S>>(o);
      } else {
        const auto& d = static_cast<const nn::Dense<S>&>(n);
        const Index in = i == layer ? d.in_features() : K * path->consumer_group;
        const Index out = i == layer ? K : d.out_features();
        nn_ = std::make_unique<nn::Dense<S>>(in, out, d.has_bias());
      }
    } else if (std::find(path->batchnorms.begin(), path->batchnorms.end(), i) != path->batchnorms.end()) {
      const auto& b = static_cast<const nn::BatchNorm<S>&>(n);
      nn_ = std::make_unique<nn::BatchNorm<S>>(K, b.eps(), b.momentum());
    } else {
      nn_ = n.clone();
    }
    nn_->label = n.label;
    nodes.push_back(std::move(nn_));
  }
  auto created = nn::Model<S>::create(model.input_shape(), std::move(nodes));
  if (!created) return std::move(created).error();
  nn::Model<S> out = std::move(created).value();
  nn::Model<S> src = model;  // tensors() needs a mutable model

  // Copy weights, gathering the kept rows (producer), kept input channels
  // (consumer) and kept per-channel entries (BatchNorm).
  for (Index i = 0; i < model.size(); ++i) {
    std::vector<nn::TensorRef<S>> a, b;
    src.node(i).tensors("", a);
    out.node(i).tensors("", b);
    for (std::size_t t = 0; t < a.size(); ++t) {
      const auto& from = a[t];
      const auto& to = b[t];
      if (from.dims == to.dims) {
        std::copy(from.data, from.data + from.size(), to.data);
        continue;
      }
      if (i == layer) {  // rows = output channels
        const Index per = from.size() / C;
        for (Index r = 0; r < K; ++r)
          std::copy(from.data + keep[static_cast<std::size_t>(r)] * per, from.data + (keep[static_cast<std::size_t>(r)] + 1) * per,
                    to.data + r * per);
      } else if (i == path->consumer) {  // columns grouped by input channel
        const Index rows = from.dims[0];
        const Index in_from = from.size() / rows, in_to = to.size() / rows;
        const Index per_c = in_from / C;
        for (Index r = 0; r < rows; ++r)
          for (Index k = 0; k < K; ++k)
            std::copy(from.data + r * in_from + keep[static_cast<std::size_t>(k)] * per_c,
                      from.data + r * in_from + (keep[static_cast<std::size_t>(k)] + 1) * per_c, to.data + r * in_to + k * per_c);
      } else {  // BatchNorm vectors
        for (Index k = 0; k < K; ++k) to.data[k] = from.data[keep[static_cast<std::size_t>(k)]];
      }
    }
  }
  if (report) {
    report->layer = layer;
    report->removed = channels;
    report->params_before = model.param_count();
    report->params_after = out.param_count();
    report->macs_before = detail::total_macs(model);
    report->macs_after = detail::total_macs(out);
  }
  return out;
}

/// Remove the `count` lowest-scoring channels of `layer` (filter or channel L1).
template <class S>
Result<nn::Model<S>> prune_channels(const nn::Model<S>& model, Index layer, Index count,
                                    ChannelCriterion crit = ChannelCriterion::filter_l1,
                                    StructuredPruneReport* report = nullptr) {
  nn::Model<S> m = model;
  auto ch = lowest_channels(m, layer, count, crit);
  if (!ch) return std::move(ch).error();
  return remove_channels(model, layer, std::move(ch).value(), report);
}

}  // namespace fleetdl::compress
