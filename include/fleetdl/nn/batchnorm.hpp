// fleetdl/nn/batchnorm.hpp — BatchNorm over channels (PyTorch BatchNorm1d/2d).
//
// Training mode normalises with the batch statistics of each channel (over
// samples and positions) and updates the running statistics with momentum
// (unbiased variance, as PyTorch). Eval mode uses the running statistics.
// Parameters: gamma[C], beta[C]; buffers: running_mean[C], running_var[C].
// fold_batchnorm() in model.hpp merges it into a preceding conv or dense.
#pragma once

#include "fleetdl/nn/node.hpp"

#include <cmath>

namespace fleetdl::nn {

template <class S>
class BatchNorm final : public Node<S> {
 public:
  explicit BatchNorm(Index channels, double eps = 1e-5, double momentum = 0.1)
      : c_(channels), eps_(eps), momentum_(momentum) {}
  NodeKind kind() const override { return NodeKind::batchnorm; }
  const char* type_name() const override { return "batchnorm"; }
  NodePtr<S> clone() const override { return std::make_unique<BatchNorm>(*this); }
  Index channels() const { return c_; }
  double eps() const { return eps_; }
  double momentum() const { return momentum_; }

  Result<Shape> build(const Shape& in) override {
    if (c_ <= 0 || c_ > FLEETDL_MAX_DIM) return make_error(Errc::invalid_argument, "batchnorm: channels out of range");
    if (!(eps_ > 0.0) || !(momentum_ >= 0.0 && momentum_ <= 1.0))
      return make_error(Errc::invalid_argument, "batchnorm: eps must be > 0 and momentum in [0, 1]");
    if (in.c != c_)
      return make_error(Errc::shape_mismatch,
                        "batchnorm: expects " + std::to_string(c_) + " channels, got shape " + in.str());
    this->in_ = in;
    this->out_ = in;
    return in;
  }

  Index param_count() const override { return 2 * c_; }
  Index buffer_count() const override { return 2 * c_; }
  void bind(S* params, S* grads, S* buffers) override {
    p_ = params;
    g_ = grads;
    b_ = buffers;
  }
  void init(Rng&) override {
    VectorMap<S>(p_, c_).setOnes();
    VectorMap<S>(p_ + c_, c_).setZero();
    VectorMap<S>(b_, c_).setZero();
    VectorMap<S>(b_ + c_, c_).setOnes();
  }
  S* gamma() { return p_; }
  S* beta() { return p_ + c_; }
  S* running_mean() { return b_; }
  S* running_var() { return b_ + c_; }
  const S* gamma() const { return p_; }
  const S* beta() const { return p_ + c_; }
  const S* running_mean() const { return b_; }
  const S* running_var() const { return b_ + c_; }

  void forward(const Matrix<S>& x, Matrix<S>& y, ExecContext<S>& ctx) override {
    const Index n = x.cols(), hw = this->in_.spatial();
    y.resize(x.rows(), n);
    mean_.resize(c_);
    inv_std_.resize(c_);
    trained_ = ctx.training;
    const Index m = n * hw;
    ctx.for_range(c_, [&](Index cb, Index ce, int) {
      for (Index c = cb; c < ce; ++c) {
        S mu, var;
        if (ctx.training) {
          double sum = 0;
          for (Index s = 0; s < n; ++s) sum += static_cast<double>(x.col(s).segment(c * hw, hw).sum());
          const double mean = sum / static_cast<double>(m);
          double sq = 0;
          for (Index s = 0; s < n; ++s)
            sq += static_cast<double>((x.col(s).segment(c * hw, hw).array() - static_cast<S>(mean)).square().sum());
          const double v = sq / static_cast<double>(m);
          mu = static_cast<S>(mean);
          var = static_cast<S>(v);
          const double unbiased = m > 1 ? v * static_cast<double>(m) / static_cast<double>(m - 1) : v;
          b_[c] = static_cast<S>((1.0 - momentum_) * static_cast<double>(b_[c]) + momentum_ * mean);
          b_[c_ + c] = static_cast<S>((1.0 - momentum_) * static_cast<double>(b_[c_ + c]) + momentum_ * unbiased);
        } else {
          mu = b_[c];
          var = b_[c_ + c];
        }
        const S inv = S(1) / std::sqrt(var + static_cast<S>(eps_));
        mean_[c] = mu;
        inv_std_[c] = inv;
        const S scale = p_[c] * inv, shift = p_[c_ + c] - mu * scale;
        for (Index s = 0; s < n; ++s)
          y.col(s).segment(c * hw, hw) = (x.col(s).segment(c * hw, hw).array() * scale + shift).matrix();
      }
    });
  }

  void backward(const Matrix<S>& x, const Matrix<S>&, const Matrix<S>& dy, Matrix<S>* dx,
                ExecContext<S>& ctx) override {
    const Index n = x.cols(), hw = this->in_.spatial();
    const S m = static_cast<S>(n * hw);
    if (dx) dx->resize(x.rows(), n);
    ctx.for_range(c_, [&](Index cb, Index ce, int) {
      for (Index c = cb; c < ce; ++c) {
        const S mu = mean_[c], inv = inv_std_[c];
        S dgamma = 0, dbeta = 0;
        for (Index s = 0; s < n; ++s) {
          const auto xs = x.col(s).segment(c * hw, hw).array();
          const auto ds = dy.col(s).segment(c * hw, hw).array();
          dbeta += ds.sum();
          dgamma += (ds * (xs - mu) * inv).sum();
        }
        g_[c] += dgamma;
        g_[c_ + c] += dbeta;
        if (!dx) continue;
        const S gi = p_[c] * inv;
        for (Index s = 0; s < n; ++s) {
          const auto xs = x.col(s).segment(c * hw, hw).array();
          const auto ds = dy.col(s).segment(c * hw, hw).array();
          if (trained_)
            dx->col(s).segment(c * hw, hw) = (gi / m * (m * ds - dbeta - (xs - mu) * inv * dgamma)).matrix();
          else
            dx->col(s).segment(c * hw, hw) = (ds * gi).matrix();
        }
      }
    });
  }

  void tensors(const std::string& path, std::vector<TensorRef<S>>& out) override {
    out.push_back({path + "weight", {c_}, p_, true});
    out.push_back({path + "bias", {c_}, p_ + c_, true});
    out.push_back({path + "running_mean", {c_}, b_, false});
    out.push_back({path + "running_var", {c_}, b_ + c_, false});
  }
  void save_config(ByteWriter& w) const override {
    w.u32(static_cast<std::uint32_t>(c_));
    w.f64(eps_);
    w.f64(momentum_);
  }

 protected:
  NodeCost own_cost(const std::string& path) const override {
    NodeCost c = this->base_cost(path);
    c.macs = this->in_.size();
    return c;
  }

 private:
  Index c_;
  double eps_, momentum_;
  S* p_ = nullptr;
  S* g_ = nullptr;
  S* b_ = nullptr;
  Vector<S> mean_, inv_std_;
  bool trained_ = false;
};

}  // namespace fleetdl::nn
