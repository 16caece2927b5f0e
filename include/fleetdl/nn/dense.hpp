// fleetdl/nn/dense.hpp — Dense (fully connected) layer: y = W x + b.
//
// Weights are stored as PyTorch's Linear: W[out][in] row-major, then b[out].
// Viewed column-major that block is Wt (in x out), so y = Wt^T x.
#pragma once

#include "fleetdl/nn/node.hpp"

#include <cmath>

namespace fleetdl::nn {

namespace detail {
/// PyTorch's default init for Linear/Conv: kaiming_uniform(a = sqrt(5)) gives
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights; biases use the same bound.
template <class S>
void uniform_fill(S* p, Index n, double bound, Rng& rng) {
  for (Index i = 0; i < n; ++i) p[i] = static_cast<S>(rng.uniform(-bound, bound));
}

/// Sum per-chunk partial results (each `n` scalars) into dst in chunk order.
template <class S>
void reduce_chunks(const std::vector<Vector<S>>& parts, S* dst, Index n) {
  VectorMap<S> d(dst, n);
  for (const auto& p : parts) d += p;
}
}  // namespace detail

template <class S>
class Dense final : public Node<S> {
 public:
  Dense(Index in, Index out, bool bias = true) : in_features_(in), out_features_(out), has_bias_(bias) {}

  NodeKind kind() const override { return NodeKind::dense; }
  const char* type_name() const override { return "dense"; }
  NodePtr<S> clone() const override { return std::make_unique<Dense>(*this); }

  Index in_features() const { return in_features_; }
  Index out_features() const { return out_features_; }
  bool has_bias() const { return has_bias_; }

  Result<Shape> build(const Shape& in) override {
    if (in_features_ <= 0 || out_features_ <= 0 || in_features_ > FLEETDL_MAX_DIM || out_features_ > FLEETDL_MAX_DIM)
      return make_error(Errc::invalid_argument, "dense: features " + std::to_string(in_features_) + "->" +
                                                    std::to_string(out_features_) + " out of range");
    if (in.size() != in_features_)
      return make_error(Errc::shape_mismatch, "dense: expects " + std::to_string(in_features_) +
                                                  " input features, got " + in.str());
    this->in_ = in;
    this->out_ = Shape{out_features_, 1, 1};
    return this->out_;
  }

  Index param_count() const override { return in_features_ * out_features_ + (has_bias_ ? out_features_ : 0); }
  void bind(S* params, S* grads, S*) override {
    w_ = params;
    gw_ = grads;
  }
  void init(Rng& rng) override {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in_features_));
    detail::uniform_fill(w_, in_features_ * out_features_, bound, rng);
    if (has_bias_) detail::uniform_fill(w_ + in_features_ * out_features_, out_features_, bound, rng);
  }

  ConstMatrixMap<S> weight_t() const { return ConstMatrixMap<S>(w_, in_features_, out_features_); }
  MatrixMap<S> weight_t() { return MatrixMap<S>(w_, in_features_, out_features_); }
  S* bias() { return has_bias_ ? w_ + in_features_ * out_features_ : nullptr; }
  const S* bias() const { return has_bias_ ? w_ + in_features_ * out_features_ : nullptr; }

  void forward(const Matrix<S>& x, Matrix<S>& y, ExecContext<S>& ctx) override {
    const Index n = x.cols();
    y.resize(out_features_, n);
    ConstMatrixMap<S> wt(w_, in_features_, out_features_);
    if (n < ctx.threads() && out_features_ >= 8 * ctx.threads()) {
      // Small batch (batch-1 inference): split the output features instead.
      ctx.for_range(out_features_, [&](Index b, Index e, int) {
        y.middleRows(b, e - b).noalias() = wt.middleCols(b, e - b).transpose() * x;
        if (has_bias_) y.middleRows(b, e - b).colwise() += ConstVectorMap<S>(bias() + b, e - b);
      });
      return;
    }
    ctx.for_range(n, [&](Index b, Index e, int) {
      y.middleCols(b, e - b).noalias() = wt.transpose() * x.middleCols(b, e - b);
      if (has_bias_) y.middleCols(b, e - b).colwise() += ConstVectorMap<S>(bias(), out_features_);
    });
  }

  void backward(const Matrix<S>& x, const Matrix<S>&, const Matrix<S>& dy, Matrix<S>* dx,
                ExecContext<S>& ctx) override {
    const Index n = x.cols();
    const Index nw = in_features_ * out_features_;
    const Index np = param_count();
    ConstMatrixMap<S> wt(w_, in_features_, out_features_);
    const int chunks = ctx.chunks(n);
    if (chunks == 1) {
      MatrixMap<S>(gw_, in_features_, out_features_).noalias() += x * dy.transpose();
      if (has_bias_) VectorMap<S>(gw_ + nw, out_features_) += dy.rowwise().sum();
    } else {
      std::vector<Vector<S>> parts(static_cast<std::size_t>(chunks));
      ctx.for_range(n, [&](Index b, Index e, int c) {
        Vector<S>& p = parts[static_cast<std::size_t>(c)];
        p.setZero(np);
        MatrixMap<S>(p.data(), in_features_, out_features_).noalias() =
            x.middleCols(b, e - b) * dy.middleCols(b, e - b).transpose();
        if (has_bias_) p.tail(out_features_) = dy.middleCols(b, e - b).rowwise().sum();
      });
      detail::reduce_chunks(parts, gw_, np);
    }
    if (dx) {
      dx->resize(in_features_, n);
      ctx.for_range(n, [&](Index b, Index e, int) { dx->middleCols(b, e - b).noalias() = wt * dy.middleCols(b, e - b); });
    }
  }

  void tensors(const std::string& path, std::vector<TensorRef<S>>& out) override {
    out.push_back({path + "weight", {out_features_, in_features_}, w_, true});
    if (has_bias_) out.push_back({path + "bias", {out_features_}, w_ + in_features_ * out_features_, true});
  }
  void save_config(ByteWriter& w) const override {
    w.u32(static_cast<std::uint32_t>(in_features_));
    w.u32(static_cast<std::uint32_t>(out_features_));
    w.u8(has_bias_ ? 1 : 0);
  }

 protected:
  NodeCost own_cost(const std::string& path) const override {
    NodeCost c = this->base_cost(path);
    c.macs = in_features_ * out_features_;
    return c;
  }

 private:
  Index in_features_, out_features_;
  bool has_bias_;
  S* w_ = nullptr;
  S* gw_ = nullptr;
};

}  // namespace fleetdl::nn
