// fleetdl/nn/pooling.hpp — MaxPool2D, AvgPool2D and GlobalAvgPool.
//
// Semantics follow PyTorch: stride defaults to the kernel size, max pooling
// pads with -inf, average pooling counts padded zeros (count_include_pad).
#pragma once

#include "fleetdl/nn/node.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>

namespace fleetdl::nn {

namespace detail {
inline Result<Shape> pool_shape(const Shape& in, Index k, Index s, Index p, const char* who) {
  if (k <= 0 || k > 1024 || s <= 0 || s > 1024 || p < 0 || 2 * p > k)
    return make_error(Errc::invalid_argument, std::string(who) + ": kernel " + std::to_string(k) + ", stride " +
                                                  std::to_string(s) + ", padding " + std::to_string(p) +
                                                  " invalid (need kernel, stride > 0 and padding <= kernel/2)");
  if (in.h + 2 * p < k || in.w + 2 * p < k)
    return make_error(Errc::shape_mismatch, std::string(who) + ": kernel " + std::to_string(k) +
                                                " larger than input " + in.str());
  return checked_shape(in.c, (in.h + 2 * p - k) / s + 1, (in.w + 2 * p - k) / s + 1, who);
}
}  // namespace detail

/// What MaxPool2D and AvgPool2D share: kernel, stride, padding, shape
/// inference and the stored configuration.
template <class S>
class Pool2D : public Node<S> {
 public:
  Index kernel() const { return k_; }
  Index stride() const { return s_; }
  Index padding() const { return p_; }

  Result<Shape> build(const Shape& in) override {
    auto r = detail::pool_shape(in, k_, s_, p_, this->type_name());
    if (!r) return r;
    this->in_ = in;
    this->out_ = *r;
    return r;
  }
  void save_config(ByteWriter& w) const override {
    w.u32(static_cast<std::uint32_t>(k_));
    w.u32(static_cast<std::uint32_t>(s_));
    w.u32(static_cast<std::uint32_t>(p_));
  }

 protected:
  Pool2D(Index kernel, Index stride, Index pad) : k_(kernel), s_(stride == 0 ? kernel : stride), p_(pad) {}
  Index k_, s_, p_;
};

template <class S>
class MaxPool2D final : public Pool2D<S> {
 public:
  explicit MaxPool2D(Index kernel, Index stride = 0, Index pad = 0) : Pool2D<S>(kernel, stride, pad) {}
  NodeKind kind() const override { return NodeKind::maxpool2d; }
  const char* type_name() const override { return "maxpool2d"; }
  NodePtr<S> clone() const override {
    auto c = std::make_unique<MaxPool2D>(*this);
    c->argmax_.clear();
    return c;
  }

  void forward(const Matrix<S>& x, Matrix<S>& y, ExecContext<S>& ctx) override {
    const Index n = x.cols(), osz = this->out_.size();
    y.resize(osz, n);
    if (ctx.training) argmax_.resize(static_cast<std::size_t>(osz * n));
    const Index h = this->in_.h, w = this->in_.w, ho = this->out_.h, wo = this->out_.w;
    if (k_ == 2 && s_ == 2 && p_ == 0) {
      forward_2x2(x, y, ctx);
      return;
    }
    ctx.for_range(n, [&](Index b, Index e, int) {
      for (Index s = b; s < e; ++s) {
        const S* xs = x.col(s).data();
        S* ys = y.col(s).data();
        std::int32_t* am = ctx.training ? argmax_.data() + s * osz : nullptr;
        for (Index c = 0; c < this->in_.c; ++c) {
          const S* xc = xs + c * h * w;
          for (Index oy = 0; oy < ho; ++oy) {
            for (Index ox = 0; ox < wo; ++ox) {
              S best = -std::numeric_limits<S>::infinity();
              Index bi = -1;
              for (Index ky = 0; ky < k_; ++ky) {
                const Index iy = oy * s_ - p_ + ky;
                if (iy < 0 || iy >= h) continue;
                for (Index kx = 0; kx < k_; ++kx) {
                  const Index ix = ox * s_ - p_ + kx;
                  if (ix < 0 || ix >= w) continue;
                  const S v = xc[iy * w + ix];
                  if (bi < 0 || v > best) {
                    best = v;
                    bi = iy * w + ix;
                  }
                }
              }
              const Index o = (c * ho + oy) * wo + ox;
              ys[o] = best;
              if (am) am[o] = static_cast<std::int32_t>(c * h * w + bi);
            }
          }
        }
      }
    });
  }

  void backward(const Matrix<S>& x, const Matrix<S>&, const Matrix<S>& dy, Matrix<S>* dx,
                ExecContext<S>& ctx) override {
    if (!dx) return;
    const Index n = x.cols(), osz = this->out_.size();
    FLEETDL_ASSERT(static_cast<Index>(argmax_.size()) == osz * n, "maxpool2d: backward without a training forward");
    dx->setZero(this->in_.size(), n);
    ctx.for_range(n, [&](Index b, Index e, int) {
      for (Index s = b; s < e; ++s) {
        const std::int32_t* am = argmax_.data() + s * osz;
        S* dxs = dx->col(s).data();
        const S* dys = dy.col(s).data();
        for (Index o = 0; o < osz; ++o) dxs[am[o]] += dys[o];
      }
    });
  }

 private:
  /// The common 2x2 / stride 2 / no padding case without bounds checks.
  /// Same tie rule as the general path: the first maximum in scan order.
  void forward_2x2(const Matrix<S>& x, Matrix<S>& y, ExecContext<S>& ctx) {
    const Index n = x.cols(), osz = this->out_.size();
    const Index h = this->in_.h, w = this->in_.w, ho = this->out_.h, wo = this->out_.w;
    ctx.for_range(n, [&](Index b, Index e, int) {
      for (Index s = b; s < e; ++s) {
        const S* xs = x.col(s).data();
        S* ys = y.col(s).data();
        std::int32_t* am = ctx.training ? argmax_.data() + s * osz : nullptr;
        for (Index c = 0; c < this->in_.c; ++c) {
          const S* xc = xs + c * h * w;
          for (Index oy = 0; oy < ho; ++oy) {
            const S* r0 = xc + (2 * oy) * w;
            const S* r1 = r0 + w;
            S* yr = ys + (c * ho + oy) * wo;
            for (Index ox = 0; ox < wo; ++ox) {
              const Index i0 = 2 * ox;
              S best = r0[i0];
              Index bi = (2 * oy) * w + i0;
              if (r0[i0 + 1] > best) { best = r0[i0 + 1]; bi = (2 * oy) * w + i0 + 1; }
              if (r1[i0] > best) { best = r1[i0]; bi = (2 * oy + 1) * w + i0; }
              if (r1[i0 + 1] > best) { best = r1[i0 + 1]; bi = (2 * oy + 1) * w + i0 + 1; }
              yr[ox] = best;
              if (am) am[(c * ho + oy) * wo + ox] = static_cast<std::int32_t>(c * h * w + bi);
            }
          }
        }
      }
    });
  }

 protected:
  NodeCost own_cost(const std::string& path) const override {
    NodeCost c = this->base_cost(path);
    c.macs = 0;  // comparisons, no multiply-accumulates
    return c;
  }

 private:
  using Pool2D<S>::k_;
  using Pool2D<S>::s_;
  using Pool2D<S>::p_;
  std::vector<std::int32_t> argmax_;
};

template <class S>
class AvgPool2D final : public Pool2D<S> {
 public:
  explicit AvgPool2D(Index kernel, Index stride = 0, Index pad = 0) : Pool2D<S>(kernel, stride, pad) {}
  NodeKind kind() const override { return NodeKind::avgpool2d; }
  const char* type_name() const override { return "avgpool2d"; }
  NodePtr<S> clone() const override { return std::make_unique<AvgPool2D>(*this); }

  void forward(const Matrix<S>& x, Matrix<S>& y, ExecContext<S>& ctx) override {
    const Index n = x.cols();
    y.resize(this->out_.size(), n);
    const S inv = S(1) / static_cast<S>(k_ * k_);
    visit(ctx, n, [&](Index s, Index in_i, Index out_i) { y(out_i, s) += x(in_i, s) * inv; }, &y);
  }

  void backward(const Matrix<S>& x, const Matrix<S>&, const Matrix<S>& dy, Matrix<S>* dx,
                ExecContext<S>& ctx) override {
    if (!dx) return;
    const Index n = x.cols();
    dx->resize(this->in_.size(), n);
    const S inv = S(1) / static_cast<S>(k_ * k_);
    visit(ctx, n, [&](Index s, Index in_i, Index out_i) { (*dx)(in_i, s) += dy(out_i, s) * inv; }, dx);
  }

 protected:
  NodeCost own_cost(const std::string& path) const override {
    NodeCost c = this->base_cost(path);
    c.macs = this->out_.size() * k_ * k_;
    return c;
  }

 private:
  /// Calls f(sample, input index, output index) for every in-bounds window tap,
  /// after zeroing `zero` column by column (inside the same chunk).
  template <class F>
  void visit(ExecContext<S>& ctx, Index n, F&& f, Matrix<S>* zero) {
    const Index h = this->in_.h, w = this->in_.w, ho = this->out_.h, wo = this->out_.w;
    ctx.for_range(n, [&](Index b, Index e, int) {
      for (Index s = b; s < e; ++s) {
        zero->col(s).setZero();
        for (Index c = 0; c < this->in_.c; ++c)
          for (Index oy = 0; oy < ho; ++oy)
            for (Index ox = 0; ox < wo; ++ox)
              for (Index ky = 0; ky < k_; ++ky) {
                const Index iy = oy * s_ - p_ + ky;
                if (iy < 0 || iy >= h) continue;
                for (Index kx = 0; kx < k_; ++kx) {
                  const Index ix = ox * s_ - p_ + kx;
                  if (ix < 0 || ix >= w) continue;
                  f(s, (c * h + iy) * w + ix, (c * ho + oy) * wo + ox);
                }
              }
      }
    });
  }
  using Pool2D<S>::k_;
  using Pool2D<S>::s_;
  using Pool2D<S>::p_;
};

template <class S>
class GlobalAvgPool final : public Node<S> {
 public:
  NodeKind kind() const override { return NodeKind::global_avg_pool; }
  const char* type_name() const override { return "global_avg_pool"; }
  NodePtr<S> clone() const override { return std::make_unique<GlobalAvgPool>(*this); }

  Result<Shape> build(const Shape& in) override {
    if (in.size() <= 0) return make_error(Errc::shape_mismatch, "global_avg_pool: empty input");
    this->in_ = in;
    this->out_ = Shape{in.c, 1, 1};
    return this->out_;
  }
  void forward(const Matrix<S>& x, Matrix<S>& y, ExecContext<S>& ctx) override {
    const Index n = x.cols(), hw = this->in_.spatial(), c = this->in_.c;
    y.resize(c, n);
    ctx.for_range(n, [&](Index b, Index e, int) {
      for (Index s = b; s < e; ++s)
        y.col(s) = ConstMatrixMap<S>(x.col(s).data(), hw, c).colwise().mean().transpose();
    });
  }
  void backward(const Matrix<S>& x, const Matrix<S>&, const Matrix<S>& dy, Matrix<S>* dx,
                ExecContext<S>& ctx) override {
    if (!dx) return;
    const Index n = x.cols(), hw = this->in_.spatial(), c = this->in_.c;
    dx->resize(this->in_.size(), n);
    const S inv = S(1) / static_cast<S>(hw);
    ctx.for_range(n, [&](Index b, Index e, int) {
      for (Index s = b; s < e; ++s)
        MatrixMap<S>(dx->col(s).data(), hw, c).rowwise() = dy.col(s).transpose() * inv;
    });
  }
  void save_config(ByteWriter&) const override {}

 protected:
  NodeCost own_cost(const std::string& path) const override {
    NodeCost c = this->base_cost(path);
    c.macs = this->in_.size();
    return c;
  }
};

}  // namespace fleetdl::nn
