// fleetdl/nn/model.hpp — Model: a chain of top-level nodes over one flat
// parameter buffer, one flat gradient buffer and one flat buffer of
// non-trainable state; slicing at split points; cost reports.
//
// Split points are the boundaries between top-level nodes: split point k sits
// before node k (0 = the input, size() = the output). slice(a, b) is the
// sub-model of nodes [a, b): it clones their definitions and copies only its
// own, contiguous, range of the parameter and state buffers.
#pragma once

#include "fleetdl/nn/activation.hpp"
#include "fleetdl/nn/batchnorm.hpp"
#include "fleetdl/nn/composite.hpp"
#include "fleetdl/nn/conv2d.hpp"
#include "fleetdl/nn/dense.hpp"
#include "fleetdl/nn/node.hpp"
#include "fleetdl/nn/pooling.hpp"
#include "fleetdl/nn/reshape.hpp"

#include <utility>

namespace fleetdl::nn {

template <class S>
class Model {
 public:
  using Scalar = S;

  Model() = default;
  Model(const Model& o) : input_(o.input_), chain_(o.chain_), params_(o.params_), grads_(o.grads_), buffers_(o.buffers_) {
    rebind();
  }
  Model& operator=(const Model& o) {
    if (this != &o) {
      Model t(o);
      *this = std::move(t);
    }
    return *this;
  }
  Model(Model&& o) noexcept = default;
  Model& operator=(Model&& o) noexcept = default;

  /// Build a model for a per-sample input shape. Parameters are zero until
  /// init(seed) or a load fills them.
  static Result<Model> create(const Shape& input, std::vector<NodePtr<S>> nodes) {
    Model m;
    m.input_ = input;
    m.chain_ = Sequential<S>(std::move(nodes));
    auto r = m.chain_.build(input);
    if (!r) return std::move(r).error();
    m.params_.setZero(m.chain_.param_count());
    m.grads_.setZero(m.chain_.param_count());
    m.buffers_.setZero(m.chain_.buffer_count());
    m.rebind();
    return m;
  }

  /// PyTorch-default initialisation from a seed.
  void init(std::uint64_t seed) {
    Rng rng(seed);
    chain_.init(rng);
  }

  Index size() const { return chain_.size(); }
  Node<S>& node(Index i) { return chain_.at(i); }
  const Node<S>& node(Index i) const { return chain_.at(i); }
  Sequential<S>& chain() { return chain_; }
  const Sequential<S>& chain() const { return chain_; }
  const Shape& input_shape() const { return input_; }
  Shape output_shape() const { return size() == 0 ? input_ : chain_.at(size() - 1).output_shape(); }

  /// The flat buffers, as Eigen maps (no copies).
  VectorMap<S> params() { return VectorMap<S>(params_.data(), params_.size()); }
  ConstVectorMap<S> params() const { return ConstVectorMap<S>(params_.data(), params_.size()); }
  VectorMap<S> grads() { return VectorMap<S>(grads_.data(), grads_.size()); }
  ConstVectorMap<S> grads() const { return ConstVectorMap<S>(grads_.data(), grads_.size()); }
  VectorMap<S> buffers() { return VectorMap<S>(buffers_.data(), buffers_.size()); }
  ConstVectorMap<S> buffers() const { return ConstVectorMap<S>(buffers_.data(), buffers_.size()); }
  Index param_count() const { return params_.size(); }
  Index buffer_count() const { return buffers_.size(); }
  void zero_grad() { grads_.setZero(); }

  /// Offset of node i's parameters in params() (i == size() gives the total).
  Index param_offset(Index i) const {
    Index off = 0;
    for (Index k = 0; k < i; ++k) off += chain_.at(k).param_count();
    return off;
  }
  Index buffer_offset(Index i) const {
    Index off = 0;
    for (Index k = 0; k < i; ++k) off += chain_.at(k).buffer_count();
    return off;
  }

  /// Forward a batch (rows = input size, one column per sample). The
  /// returned reference stays valid until the next forward.
  const Matrix<S>& forward(const Matrix<S>& x, ExecContext<S>& ctx) {
    FLEETDL_ASSERT(x.rows() == input_.size(), "Model::forward: input rows do not match the input shape");
    input_copy_ = x;
    chain_.forward(input_copy_, out_, ctx);
    return out_;
  }
  /// Backward from dL/d(output) after forward; accumulates into grads().
  /// If dx is given it receives dL/d(input) (for split training).
  void backward(const Matrix<S>& dy, ExecContext<S>& ctx, Matrix<S>* dx = nullptr) {
    chain_.backward(input_copy_, out_, dy, dx, ctx);
  }
  /// Output of top-level node i from the last forward (i == size()-1: output).
  const Matrix<S>& activation(Index i) const { return i + 1 == size() ? out_ : chain_.activation(i); }

  /// Sub-model of top-level nodes [a, b) (0 <= a < b <= size()).
  Result<Model> slice(Index a, Index b) const {
    if (a < 0 || b > size() || a >= b)
      return make_error(Errc::invalid_argument, "slice(" + std::to_string(a) + ", " + std::to_string(b) +
                                                    "): need 0 <= a < b <= " + std::to_string(size()));
    std::vector<NodePtr<S>> nodes;
    for (Index i = a; i < b; ++i) nodes.push_back(chain_.at(i).clone());
    const Shape in = a == 0 ? input_ : chain_.at(a - 1).output_shape();
    auto m = create(in, std::move(nodes));
    if (!m) return m;
    const Index po = param_offset(a), bo = buffer_offset(a);
    m->params_ = params_.segment(po, m->params_.size());
    m->buffers_ = buffers_.segment(bo, m->buffers_.size());
    m->rebind();
    return m;
  }

  /// One row per top-level node (recurse = false) or per leaf layer.
  std::vector<NodeCost> cost_report(bool recurse = false) const {
    std::vector<NodeCost> out;
    chain_.costs("", out, recurse);
    return out;
  }
  /// The same report for another input shape (rebuilds a copy).
  Result<std::vector<NodeCost>> cost_report(const Shape& input, bool recurse = false) const {
    Sequential<S> c(chain_);
    auto r = c.build(input);
    if (!r) return std::move(r).error();
    std::vector<NodeCost> out;
    c.costs("", out, recurse);
    return out;
  }

  /// All named tensors ("0.weight", "3.body.1.running_mean", ...).
  std::vector<TensorRef<S>> tensors() {
    std::vector<TensorRef<S>> t;
    chain_.tensors("", t);
    return t;
  }

 private:
  void rebind() {
    if (params_.size() != chain_.param_count()) grads_.setZero(chain_.param_count());
    chain_.bind(params_.data(), grads_.data(), buffers_.data());
  }

  Shape input_{};
  Sequential<S> chain_;
  Vector<S> params_, grads_, buffers_;
  Matrix<S> input_copy_, out_;
};

}  // namespace fleetdl::nn
