// fleetdl/nn/reshape.hpp — Flatten (CxHxW -> C*H*W features) and Dropout.
#pragma once

#include "fleetdl/nn/node.hpp"

namespace fleetdl::nn {

/// The sample layout is already flat (channel-major), so Flatten copies.
template <class S>
class Flatten final : public Node<S> {
 public:
  NodeKind kind() const override { return NodeKind::flatten; }
  const char* type_name() const override { return "flatten"; }
  NodePtr<S> clone() const override { return std::make_unique<Flatten>(*this); }
  Result<Shape> build(const Shape& in) override {
    this->in_ = in;
    this->out_ = Shape{in.size(), 1, 1};
    return this->out_;
  }
  void forward(const Matrix<S>& x, Matrix<S>& y, ExecContext<S>&) override { y = x; }
  void backward(const Matrix<S>&, const Matrix<S>&, const Matrix<S>& dy, Matrix<S>* dx, ExecContext<S>&) override {
    if (dx) *dx = dy;
  }
  void save_config(ByteWriter&) const override {}
};

/// Inverted dropout: in training, zero each element with probability p and
/// scale the rest by 1/(1-p); identity in eval mode. The mask is drawn from
/// ctx.rng on the calling thread, so it does not depend on the thread count.
template <class S>
class Dropout final : public Node<S> {
 public:
  explicit Dropout(double p = 0.5) : p_(p) {}
  NodeKind kind() const override { return NodeKind::dropout; }
  const char* type_name() const override { return "dropout"; }
  NodePtr<S> clone() const override { return std::make_unique<Dropout>(*this); }
  double p() const { return p_; }
  Result<Shape> build(const Shape& in) override {
    if (!(p_ >= 0.0 && p_ < 1.0)) return make_error(Errc::invalid_argument, "dropout: p must be in [0, 1)");
    this->in_ = in;
    this->out_ = in;
    return in;
  }
  void forward(const Matrix<S>& x, Matrix<S>& y, ExecContext<S>& ctx) override {
    active_ = ctx.training && p_ > 0.0;
    if (!active_) {
      y = x;
      return;
    }
    FLEETDL_ASSERT(ctx.rng != nullptr, "dropout: training needs ExecContext::rng");
    mask_.resize(x.rows(), x.cols());
    const S keep = static_cast<S>(1.0 / (1.0 - p_));
    for (Index i = 0; i < mask_.size(); ++i) mask_.data()[i] = ctx.rng->uniform() < p_ ? S(0) : keep;
    y = x.cwiseProduct(mask_);
  }
  void backward(const Matrix<S>&, const Matrix<S>&, const Matrix<S>& dy, Matrix<S>* dx, ExecContext<S>&) override {
    if (!dx) return;
    if (active_)
      *dx = dy.cwiseProduct(mask_);
    else
      *dx = dy;
  }
  void save_config(ByteWriter& w) const override { w.f64(p_); }

 private:
  double p_;
  bool active_ = false;
  Matrix<S> mask_;
};

}  // namespace fleetdl::nn
