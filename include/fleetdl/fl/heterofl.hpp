// fleetdl/fl/heterofl.hpp — HeteroFL: clients train width-scaled sub-models
// of one global model; the server averages every parameter over the clients
// that hold it.
//
// Diao, Ding, Tarokh, "HeteroFL: Computation and Communication Efficient
// Federated Learning for Heterogeneous Clients", ICLR 2021 (Section 3). A
// sub-model of width r in (0, 1] keeps the FIRST ceil(r * C) channels (units)
// of every hidden layer; the input channels of the first layer and the
// outputs of the last weighted layer (the classes) stay full. Its parameters
// are therefore a fixed subset of the global flat vector: submodel_index()
// lists those global indices in the sub-model's own flat order, so
//     extract  = sub = global(index)           (gather)
//     write back = global(index) = sub         (scatter)
// and aggregation is a scatter-add of every client's vector into a sum and a
// weight accumulator — no per-layer code at aggregation time:
//     global[j] = sum_{i holds j} n_i y_i[j] / sum_{i holds j} n_i,
// coordinates held by no client keep their value. (The paper averages over
// the holders with equal weights; fleetdl weights by examples, like FedAvg —
// give every client the same num_examples for the paper's rule.)
//
// Supported models: a chain of top-level Dense, Conv2D (groups = 1, or
// depthwise: groups = in = out channels, which follows its input's width),
// BatchNorm, ReLU / ReLU6 / Sigmoid / Tanh, Softmax, MaxPool2D, AvgPool2D,
// GlobalAvgPool, Flatten and Dropout. Composites (Sequential, Residual,
// Concat) are rejected with Errc::unsupported. A layer's kept input is
// always a prefix of its input vector (samples are channel-major), which is
// what makes Flatten -> Dense work. BatchNorm running statistics are
// buffers, not parameters: make_submodel() copies the kept ones
// (SubmodelIndex::buffers) but aggregation covers trainable parameters only
// (the paper's static BatchNorm recomputes statistics anyway). The paper's
// "scaler" module (output scaled by 1/r during local training) and its
// masked-label trick are client-side training choices, not provided here.
//
// Width rounding: ceil(r * C - 1e-9), at least 1, so r * C that is an
// integer up to floating-point error (0.1 * 30) is not rounded up.
#pragma once

#include "fleetdl/fl/fedavg.hpp"
#include "fleetdl/nn/model.hpp"

#include <cmath>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace fleetdl::fl {

/// Where a width-r sub-model's parameters live in the global flat vectors.
struct SubmodelIndex {
  double width = 1.0;
  Eigen::Matrix<Index, Eigen::Dynamic, 1> params;   ///< sub param j = global param params[j]
  Eigen::Matrix<Index, Eigen::Dynamic, 1> buffers;  ///< the same for non-trainable buffers
  Index global_params = 0;                          ///< size of the global parameter vector
  Index global_buffers = 0;                         ///< size of the global buffer vector
};

namespace detail {

/// One top-level node, as HeteroFL needs it.
struct HeteroLayer {
  nn::NodeKind kind = nn::NodeKind::relu;
  Shape in{}, out{};
  Index in_features = 0, out_features = 0;  // dense
  bool bias = false;                        // dense, conv2d
  nn::Conv2DOptions conv{};                 // conv2d
  Index channels = 0;                       // batchnorm
  Index param_offset = 0, buffer_offset = 0;
};

struct HeteroPlan {
  Shape input{};
  std::vector<HeteroLayer> layers;
  Index params = 0, buffers = 0;
  Index last_weighted = -1;  // index of the last Dense / Conv2D: its outputs stay full
};

/// Kept input / output channels (or features) of one layer.
struct HeteroDims {
  Index in = 0, out = 0;
};

inline Index hetero_scale(Index c, double width) {
  const auto k = static_cast<Index>(std::ceil(width * static_cast<double>(c) - 1e-9));
  return std::min(c, std::max<Index>(1, k));
}

inline Result<void> check_width(const std::string& who, double width) {
  if (!(width > 0.0 && width <= 1.0))
    return make_error(Errc::invalid_argument, who + ": width " + std::to_string(width) + " is outside (0, 1]");
  return success();
}

template <class S>
Result<HeteroPlan> hetero_plan(const nn::Model<S>& m) {
  HeteroPlan p;
  p.input = m.input_shape();
  Index po = 0, bo = 0;
  for (Index i = 0; i < m.size(); ++i) {
    const nn::Node<S>& n = m.node(i);
    HeteroLayer L;
    L.kind = n.kind();
    L.in = n.input_shape();
    L.out = n.output_shape();
    L.param_offset = po;
    L.buffer_offset = bo;
    switch (L.kind) {
      case nn::NodeKind::dense: {
        const auto& d = static_cast<const nn::Dense<S>&>(n);
        L.in_features = d.in_features();
        L.out_features = d.out_features();
        L.bias = d.has_bias();
        p.last_weighted = i;
        break;
      }
      case nn::NodeKind::conv2d: {
        const auto& c = static_cast<const nn::Conv2D<S>&>(n);
        L.conv = c.options();
        L.bias = L.conv.bias;
        const bool depthwise = L.conv.groups == L.conv.in_channels && L.conv.groups == L.conv.out_channels;
        if (L.conv.groups != 1 && !depthwise)
          return make_error(Errc::unsupported, "heterofl: node " + std::to_string(i) + " (" + n.type_name() +
                                                   ") has groups = " + std::to_string(L.conv.groups) +
                                                   "; only groups = 1 and depthwise convolutions can be width-scaled");
        p.last_weighted = i;
        break;
      }
      case nn::NodeKind::batchnorm:
        L.channels = static_cast<const nn::BatchNorm<S>&>(n).channels();
        break;
      case nn::NodeKind::relu:
      case nn::NodeKind::relu6:
      case nn::NodeKind::sigmoid:
      case nn::NodeKind::tanh:
      case nn::NodeKind::softmax:
      case nn::NodeKind::maxpool2d:
      case nn::NodeKind::avgpool2d:
      case nn::NodeKind::global_avg_pool:
      case nn::NodeKind::flatten:
      case nn::NodeKind::dropout:
        break;
      default:
        return make_error(Errc::unsupported, "heterofl: node " + std::to_string(i) + " (" + n.type_name() +
                                                 ") is not supported; use a flat chain of dense, conv2d, batchnorm, "
                                                 "activation, pooling, flatten and dropout layers");
    }
    po += n.param_count();
    bo += n.buffer_count();
    p.layers.push_back(L);
  }
  p.params = po;
  p.buffers = bo;
  return p;
}

/// Walk the plan for a width: the index sets and each layer's kept dims.
inline Result<SubmodelIndex> hetero_index(const HeteroPlan& p, double width, std::vector<HeteroDims>* dims) {
  FLEETDL_TRY(check_width("heterofl", width));
  std::vector<Index> pi, bi;
  if (dims) dims->clear();
  Index kept = p.input.c;  // channels of the current activation that the sub-model keeps
  const auto push_range = [](std::vector<Index>& v, Index start, Index count) {
    for (Index j = 0; j < count; ++j) v.push_back(start + j);
  };
  for (std::size_t li = 0; li < p.layers.size(); ++li) {
    const HeteroLayer& L = p.layers[li];
    const bool last = static_cast<Index>(li) == p.last_weighted;
    HeteroDims d{kept, kept};
    switch (L.kind) {
      case nn::NodeKind::dense: {
        // W[out][in] row-major, then b[out]; kept inputs are a prefix.
        const Index kin = kept * L.in.spatial();
        const Index kout = last ? L.out_features : hetero_scale(L.out_features, width);
        for (Index o = 0; o < kout; ++o) push_range(pi, L.param_offset + o * L.in_features, kin);
        if (L.bias) push_range(pi, L.param_offset + L.in_features * L.out_features, kout);
        d = {kin, kout};
        kept = kout;
        break;
      }
      case nn::NodeKind::conv2d: {
        // W[cout][cin/groups][kh][kw], then b[cout]; kept input channels are a
        // prefix of each output channel's cin*kh*kw block.
        const auto& c = L.conv;
        const Index khw = c.kernel_h * c.kernel_w;
        const Index kdim = (c.in_channels / c.groups) * khw;
        Index kout = 0;
        if (c.groups == 1) {
          kout = last ? c.out_channels : hetero_scale(c.out_channels, width);
          for (Index o = 0; o < kout; ++o) push_range(pi, L.param_offset + o * kdim, kept * khw);
        } else {  // depthwise: one filter per channel, follows the input width
          if (last && kept != c.out_channels)
            return make_error(Errc::unsupported, "heterofl: layer " + std::to_string(li) +
                                                     " is a depthwise convolution producing the model output from a "
                                                     "width-scaled input");
          kout = kept;
          push_range(pi, L.param_offset, kept * khw);
        }
        if (L.bias) push_range(pi, L.param_offset + c.out_channels * kdim, kout);
        d = {kept, kout};
        kept = kout;
        break;
      }
      case nn::NodeKind::batchnorm:
        // gamma[C], beta[C]; buffers running_mean[C], running_var[C]
        push_range(pi, L.param_offset, kept);
        push_range(pi, L.param_offset + L.channels, kept);
        push_range(bi, L.buffer_offset, kept);
        push_range(bi, L.buffer_offset + L.channels, kept);
        break;
      case nn::NodeKind::flatten:
        kept *= L.in.spatial();
        d.out = kept;
        break;
      default:  // element-wise and pooling layers keep the channel count
        break;
    }
    if (dims) dims->push_back(d);
  }
  SubmodelIndex idx;
  idx.width = width;
  idx.params = Eigen::Map<const Eigen::Matrix<Index, Eigen::Dynamic, 1>>(pi.data(), static_cast<Index>(pi.size()));
  idx.buffers = Eigen::Map<const Eigen::Matrix<Index, Eigen::Dynamic, 1>>(bi.data(), static_cast<Index>(bi.size()));
  idx.global_params = p.params;
  idx.global_buffers = p.buffers;
  return idx;
}

}  // namespace detail

/// Global parameter (and buffer) indices of the width-`width` sub-model of
/// `model`, in the sub-model's flat order.
template <class S>
Result<SubmodelIndex> submodel_index(const nn::Model<S>& model, double width) {
  auto plan = detail::hetero_plan(model);
  if (!plan) return std::move(plan).error();
  return detail::hetero_index(*plan, width, nullptr);
}

/// The width-`width` sub-model of `model`: the same chain with scaled Dense,
/// Conv2D and BatchNorm layers, parameters and buffers gathered from `model`.
template <class S>
Result<nn::Model<S>> make_submodel(const nn::Model<S>& model, double width) {
  auto plan = detail::hetero_plan(model);
  if (!plan) return std::move(plan).error();
  std::vector<detail::HeteroDims> dims;
  auto idx = detail::hetero_index(*plan, width, &dims);
  if (!idx) return std::move(idx).error();
  std::vector<nn::NodePtr<S>> nodes;
  for (Index i = 0; i < model.size(); ++i) {
    const nn::Node<S>& n = model.node(i);
    const detail::HeteroDims& d = dims[static_cast<std::size_t>(i)];
    switch (n.kind()) {
      case nn::NodeKind::dense:
        nodes.push_back(std::make_unique<nn::Dense<S>>(d.in, d.out, static_cast<const nn::Dense<S>&>(n).has_bias()));
        break;
      case nn::NodeKind::conv2d: {
        nn::Conv2DOptions o = static_cast<const nn::Conv2D<S>&>(n).options();
        if (o.groups != 1) o.groups = d.out;
        o.in_channels = d.in;
        o.out_channels = d.out;
        nodes.push_back(std::make_unique<nn::Conv2D<S>>(o));
        break;
      }
      case nn::NodeKind::batchnorm: {
        const auto& b = static_cast<const nn::BatchNorm<S>&>(n);
        nodes.push_back(std::make_unique<nn::BatchNorm<S>>(d.out, b.eps(), b.momentum()));
        break;
      }
      default: nodes.push_back(n.clone()); break;
    }
    nodes.back()->label = n.label;
  }
  auto sub = nn::Model<S>::create(model.input_shape(), std::move(nodes));
  if (!sub) return std::move(sub).error();
  if (sub->param_count() != idx->params.size() || sub->buffer_count() != idx->buffers.size())
    return make_error(Errc::corrupt, "heterofl: width " + std::to_string(width) + " sub-model has " +
                                         std::to_string(sub->param_count()) + " parameters, its index " +
                                         std::to_string(idx->params.size()));
  sub->params() = model.params()(idx->params);
  sub->buffers() = model.buffers()(idx->buffers);
  return sub;
}

/// sub = global(index.params): the sub-model's parameters.
template <class S>
Result<Vector<S>> submodel_gather(ConstVectorMap<S> global, const SubmodelIndex& index) {
  if (global.size() != index.global_params)
    return make_error(Errc::shape_mismatch, "heterofl: gather from " + std::to_string(global.size()) +
                                                " parameters with an index for " + std::to_string(index.global_params));
  return Vector<S>(global(index.params));
}

/// global(index.params) = sub: write a sub-model's parameters back.
template <class S>
Result<void> submodel_scatter(VectorMap<S> global, const SubmodelIndex& index, ConstVectorMap<S> sub) {
  if (global.size() != index.global_params || sub.size() != index.params.size())
    return make_error(Errc::shape_mismatch, "heterofl: scatter of " + std::to_string(sub.size()) + " into " +
                                                std::to_string(global.size()) + " parameters with an index of " +
                                                std::to_string(index.params.size()) + " into " +
                                                std::to_string(index.global_params));
  global(index.params) = sub;
  return success();
}

struct HeteroFLOptions : FedAvgOptions {
  /// Width of a client in a round (the paper's "fix" assignment is a fixed
  /// map client -> level; "dynamic" draws a level per round — capture a
  /// seeded Rng for that). Empty: every client gets client.width.
  std::function<double(Index client, long round)> width_of;
};

/// HeteroFL server: per-coordinate example-weighted averaging over holders.
/// Keeps the model's layer plan (not its parameters) and one index set per
/// width seen (8 bytes per kept parameter each; at most max_cached_widths).
template <class S>
class HeteroFL : public FedAvg<S> {
 public:
  /// Fails with Errc::unsupported for layers HeteroFL cannot scale.
  static Result<HeteroFL> create(const nn::Model<S>& model, HeteroFLOptions o = {}) {
    auto plan = detail::hetero_plan(model);
    if (!plan) return std::move(plan).error();
    return HeteroFL(std::move(*plan), std::move(o));
  }

  std::string name() const override { return "heterofl"; }

  std::vector<ClientInstruction> configure(long round, std::span<const Index> available, Rng& rng) override {
    auto out = this->sample(available, this->o_.client, rng);
    if (h_.width_of)
      for (auto& ins : out) ins.config.width = h_.width_of(ins.client, round);
    return out;
  }

  /// At most this many widths keep their index set cached; further widths
  /// (a client reporting arbitrary widths) are computed per use.
  static constexpr std::size_t max_cached_widths = 16;

  /// The index set of a width, computed once and cached: the pointer stays
  /// valid while the strategy lives — beyond max_cached_widths distinct
  /// widths, only until the next index() call.
  Result<const SubmodelIndex*> index(double width) { return index(width, nullptr); }

  /// What the server sends a client of this width: global(index).
  Result<Vector<S>> extract(ConstVectorMap<S> global, double width) {
    auto idx = index(width);
    if (!idx) return std::move(idx).error();
    return submodel_gather(global, **idx);
  }

  Result<void> aggregate(long round, VectorMap<S> global, std::span<const ClientUpdate<S>> updates) override {
    (void)round;
    const std::string who = name();
    FLEETDL_TRY(detail::check_fedavg_options(who, this->o_));
    if (updates.empty()) return make_error(Errc::invalid_argument, who + ": no updates to aggregate");
    if (global.size() != plan_.params)
      return make_error(Errc::shape_mismatch, who + ": global model has " + std::to_string(global.size()) +
                                                  " parameters, the planned model " + std::to_string(plan_.params));
    std::vector<const SubmodelIndex*> sets(updates.size());
    std::deque<SubmodelIndex> uncached;
    for (std::size_t i = 0; i < updates.size(); ++i) {
      const auto& u = updates[i];
      const std::string at = who + ": update " + std::to_string(i) + " (client " + std::to_string(u.client) + ")";
      auto idx = index(u.width, &uncached);
      if (!idx) return make_error(idx.error().code, at + ": " + idx.error().message);
      if (u.params.size() != (*idx)->params.size())
        return make_error(Errc::shape_mismatch, at + " has " + std::to_string(u.params.size()) +
                                                    " parameters, a width " + std::to_string(u.width) +
                                                    " sub-model has " + std::to_string((*idx)->params.size()));
      if (!u.params.allFinite()) return make_error(Errc::invalid_argument, at + " contains NaN or infinity");
      if (u.num_examples <= 0) return make_error(Errc::invalid_argument, at + " reports no training examples");
      sets[i] = *idx;
    }
    // Scatter-add n_i y_i and n_i into the holders' coordinates.
    Vector<double> sum = Vector<double>::Zero(global.size());
    Vector<double> weight = Vector<double>::Zero(global.size());
    for (std::size_t i = 0; i < updates.size(); ++i) {
      const double n = static_cast<double>(updates[i].num_examples);
      const auto& ix = sets[i]->params;
      sum(ix) += n * updates[i].params.template cast<double>();
      weight(ix) += Vector<double>::Constant(ix.size(), n);
    }
    global = (weight.array() > 0.0)
                 .select(sum.array() / weight.array(), global.template cast<double>().array())
                 .template cast<S>()
                 .matrix();
    return success();
  }

 private:
  HeteroFL(detail::HeteroPlan plan, HeteroFLOptions o) : FedAvg<S>(o), plan_(std::move(plan)), h_(std::move(o)) {}

  /// Cached index set of `width`; past max_cached_widths it goes to `spill`
  /// (or a one-entry scratch slot when spill is null).
  Result<const SubmodelIndex*> index(double width, std::deque<SubmodelIndex>* spill) {
    auto it = cache_.find(width);
    if (it != cache_.end()) return &it->second;
    auto idx = detail::hetero_index(plan_, width, nullptr);
    if (!idx) return std::move(idx).error();
    if (cache_.size() < max_cached_widths) return &cache_.emplace(width, std::move(*idx)).first->second;
    if (spill) {
      spill->push_back(std::move(*idx));
      return &spill->back();
    }
    scratch_ = std::move(*idx);
    return &scratch_;
  }

  detail::HeteroPlan plan_;
  HeteroFLOptions h_;
  SubmodelIndex scratch_;
  std::map<double, SubmodelIndex> cache_;
};

}  // namespace fleetdl::fl
