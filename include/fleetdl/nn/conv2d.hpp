// fleetdl/nn/conv2d.hpp — 2-D convolution with stride, padding, dilation and
// groups (groups == channels gives a depthwise convolution).
//
// Weights follow PyTorch's Conv2d: W[cout][cin/groups][kh][kw], then b[cout].
// Each sample is lowered to a patch matrix P (Ho*Wo x cin*kh*kw, im2col) and
// multiplied by the weight block, one GEMM per group. P is rebuilt in
// backward instead of being kept, so training memory stays at one patch
// matrix per thread. 1x1 convolutions with stride 1 and no padding skip
// im2col: the sample itself is the patch matrix.
#pragma once

#include "fleetdl/nn/dense.hpp"
#include "fleetdl/nn/node.hpp"

#include <algorithm>
#include <cmath>

namespace fleetdl::nn {

struct Conv2DOptions {
  Index in_channels = 1, out_channels = 1;
  Index kernel_h = 3, kernel_w = 3;
  Index stride_h = 1, stride_w = 1;
  Index pad_h = 0, pad_w = 0;
  Index dilation_h = 1, dilation_w = 1;
  Index groups = 1;
  bool bias = true;
};

template <class S>
class Conv2D final : public Node<S> {
 public:
  explicit Conv2D(const Conv2DOptions& o) : o_(o) {}
  /// Square kernel shorthand: Conv2D(cin, cout, k, stride, pad, dilation, groups, bias).
  Conv2D(Index cin, Index cout, Index k, Index stride = 1, Index pad = 0, Index dilation = 1, Index groups = 1,
         bool bias = true)
      : o_{cin, cout, k, k, stride, stride, pad, pad, dilation, dilation, groups, bias} {}

  NodeKind kind() const override { return NodeKind::conv2d; }
  const char* type_name() const override { return o_.groups > 1 && o_.groups == o_.in_channels ? "dwconv2d" : "conv2d"; }
  NodePtr<S> clone() const override {
    auto c = std::make_unique<Conv2D>(*this);
    c->scratch_.clear();
    return c;
  }
  const Conv2DOptions& options() const { return o_; }

  Result<Shape> build(const Shape& in) override {
    const auto bad = [&](const std::string& why) { return make_error(Errc::invalid_argument, "conv2d: " + why); };
    const Index lim = FLEETDL_MAX_DIM;
    if (o_.in_channels <= 0 || o_.out_channels <= 0 || o_.in_channels > lim || o_.out_channels > lim)
      return bad("channels " + std::to_string(o_.in_channels) + "->" + std::to_string(o_.out_channels) + " out of range");
    if (o_.kernel_h <= 0 || o_.kernel_w <= 0 || o_.kernel_h > 1024 || o_.kernel_w > 1024) return bad("kernel out of range");
    if (o_.stride_h <= 0 || o_.stride_w <= 0 || o_.stride_h > lim || o_.stride_w > lim) return bad("stride out of range");
    if (o_.pad_h < 0 || o_.pad_w < 0 || o_.pad_h > 1024 || o_.pad_w > 1024) return bad("padding out of range");
    if (o_.dilation_h <= 0 || o_.dilation_w <= 0 || o_.dilation_h > 1024 || o_.dilation_w > 1024)
      return bad("dilation out of range");
    if (o_.groups <= 0 || o_.in_channels % o_.groups != 0 || o_.out_channels % o_.groups != 0)
      return bad("groups " + std::to_string(o_.groups) + " must divide in_channels " + std::to_string(o_.in_channels) +
                 " and out_channels " + std::to_string(o_.out_channels));
    if (in.c != o_.in_channels)
      return make_error(Errc::shape_mismatch, "conv2d: expects " + std::to_string(o_.in_channels) +
                                                  " input channels, got shape " + in.str());
    const Index eh = o_.dilation_h * (o_.kernel_h - 1) + 1, ew = o_.dilation_w * (o_.kernel_w - 1) + 1;
    if (in.h + 2 * o_.pad_h < eh || in.w + 2 * o_.pad_w < ew)
      return make_error(Errc::shape_mismatch, "conv2d: kernel larger than padded input " + in.str());
    const Index ho = (in.h + 2 * o_.pad_h - eh) / o_.stride_h + 1;
    const Index wo = (in.w + 2 * o_.pad_w - ew) / o_.stride_w + 1;
    auto out = fleetdl::nn::detail::checked_shape(o_.out_channels, ho, wo, "conv2d");
    if (!out) return out;
    Index k = 0, p = 0;
    if (!detail::checked_mul(cin_g() * o_.kernel_h, o_.kernel_w, k, Index{1} << 40) ||
        !detail::checked_mul(k, o_.out_channels, p, Index{1} << 40))
      return bad("weight tensor too large");
    this->in_ = in;
    this->out_ = *out;
    return this->out_;
  }

  Index param_count() const override {
    return o_.out_channels * cin_g() * o_.kernel_h * o_.kernel_w + (o_.bias ? o_.out_channels : 0);
  }
  void bind(S* params, S* grads, S*) override {
    w_ = params;
    gw_ = grads;
  }
  void init(Rng& rng) override {
    const double bound = 1.0 / std::sqrt(static_cast<double>(kdim()));
    detail::uniform_fill(w_, kdim() * o_.out_channels, bound, rng);
    if (o_.bias) detail::uniform_fill(w_ + kdim() * o_.out_channels, o_.out_channels, bound, rng);
  }
  S* weights() { return w_; }
  const S* weights() const { return w_; }
  S* bias() { return o_.bias ? w_ + kdim() * o_.out_channels : nullptr; }
  const S* bias() const { return o_.bias ? w_ + kdim() * o_.out_channels : nullptr; }

  void forward(const Matrix<S>& x, Matrix<S>& y, ExecContext<S>& ctx) override {
    const Index n = x.cols();
    y.resize(this->out_.size(), n);
    ensure_scratch(ctx.chunks(n));
    ConstMatrixMap<S> wt(w_, kdim(), o_.out_channels);
    if (n < ctx.threads() && o_.groups == 1 && o_.out_channels >= 2 * ctx.threads()) {
      // Too few samples to keep every thread busy (batch-1 inference): build
      // the patch matrix once, then split the GEMM over output channels.
      for (Index s = 0; s < n; ++s) {
        MatrixMap<S> ys(y.col(s).data(), this->out_.spatial(), o_.out_channels);
        const S* pd = patches(x.col(s).data(), scratch_[0].patches);
        ConstMatrixMap<S> pm(pd, this->out_.spatial(), kdim());
        ctx.for_range(o_.out_channels, [&](Index b, Index e, int) {
          ys.middleCols(b, e - b).noalias() = pm * wt.middleCols(b, e - b);
          if (o_.bias) ys.middleCols(b, e - b).rowwise() += ConstVectorMap<S>(bias() + b, e - b).transpose();
        });
      }
      return;
    }
    ctx.for_range(n, [&](Index b, Index e, int c) {
      Matrix<S>& p = scratch_[static_cast<std::size_t>(c)].patches;
      for (Index s = b; s < e; ++s) {
        const S* xs = x.col(s).data();
        MatrixMap<S> ys(y.col(s).data(), this->out_.spatial(), o_.out_channels);
        const S* pd = patches(xs, p);
        ConstMatrixMap<S> pm(pd, this->out_.spatial(), o_.in_channels * o_.kernel_h * o_.kernel_w);
        for (Index g = 0; g < o_.groups; ++g)
          ys.middleCols(g * cout_g(), cout_g()).noalias() =
              pm.middleCols(g * kdim(), kdim()) * wt.middleCols(g * cout_g(), cout_g());
        if (o_.bias) ys.rowwise() += ConstVectorMap<S>(bias(), o_.out_channels).transpose();
      }
    });
  }

  void backward(const Matrix<S>& x, const Matrix<S>&, const Matrix<S>& dy, Matrix<S>* dx,
                ExecContext<S>& ctx) override {
    const Index n = x.cols();
    const int chunks = ctx.chunks(n);
    ensure_scratch(chunks);
    const Index np = param_count();
    const Index hwo = this->out_.spatial();
    const Index pcols = o_.in_channels * o_.kernel_h * o_.kernel_w;
    ConstMatrixMap<S> wt(w_, kdim(), o_.out_channels);
    if (dx) dx->resize(this->in_.size(), n);
    ctx.for_range(n, [&](Index b, Index e, int c) {
      Scratch& sc = scratch_[static_cast<std::size_t>(c)];
      sc.grad.setZero(np);
      MatrixMap<S> gwt(sc.grad.data(), kdim(), o_.out_channels);
      for (Index s = b; s < e; ++s) {
        const S* pd = patches(x.col(s).data(), sc.patches);
        ConstMatrixMap<S> pm(pd, hwo, pcols);
        ConstMatrixMap<S> dys(dy.col(s).data(), hwo, o_.out_channels);
        for (Index g = 0; g < o_.groups; ++g)
          gwt.middleCols(g * cout_g(), cout_g()).noalias() +=
              pm.middleCols(g * kdim(), kdim()).transpose() * dys.middleCols(g * cout_g(), cout_g());
        if (o_.bias) sc.grad.tail(o_.out_channels) += dys.colwise().sum().transpose();
        if (dx) {
          sc.dpatches.resize(hwo, pcols);
          for (Index g = 0; g < o_.groups; ++g)
            sc.dpatches.middleCols(g * kdim(), kdim()).noalias() =
                dys.middleCols(g * cout_g(), cout_g()) * wt.middleCols(g * cout_g(), cout_g()).transpose();
          S* dxs = dx->col(s).data();
          if (is_pointwise())
            std::copy(sc.dpatches.data(), sc.dpatches.data() + sc.dpatches.size(), dxs);
          else
            col2im(sc.dpatches.data(), dxs);
        }
      }
    });
    VectorMap<S> g(gw_, np);
    for (int c = 0; c < chunks; ++c) g += scratch_[static_cast<std::size_t>(c)].grad;
  }

  void tensors(const std::string& path, std::vector<TensorRef<S>>& out) override {
    out.push_back({path + "weight", {o_.out_channels, cin_g(), o_.kernel_h, o_.kernel_w}, w_, true});
    if (o_.bias) out.push_back({path + "bias", {o_.out_channels}, bias(), true});
  }
  void save_config(ByteWriter& w) const override {
    for (Index v : {o_.in_channels, o_.out_channels, o_.kernel_h, o_.kernel_w, o_.stride_h, o_.stride_w, o_.pad_h,
                    o_.pad_w, o_.dilation_h, o_.dilation_w, o_.groups})
      w.u32(static_cast<std::uint32_t>(v));
    w.u8(o_.bias ? 1 : 0);
  }

 protected:
  NodeCost own_cost(const std::string& path) const override {
    NodeCost c = this->base_cost(path);
    c.macs = this->out_.size() * kdim();
    return c;
  }

 private:
  struct Scratch {
    Matrix<S> patches, dpatches;
    Vector<S> grad;
  };

  Index cin_g() const { return o_.in_channels / o_.groups; }
  Index cout_g() const { return o_.out_channels / o_.groups; }
  Index kdim() const { return cin_g() * o_.kernel_h * o_.kernel_w; }
  bool is_pointwise() const {
    return o_.kernel_h == 1 && o_.kernel_w == 1 && o_.stride_h == 1 && o_.stride_w == 1 && o_.pad_h == 0 &&
           o_.pad_w == 0;
  }
  void ensure_scratch(int chunks) {
    if (static_cast<int>(scratch_.size()) < chunks) scratch_.resize(static_cast<std::size_t>(chunks));
  }

  /// Patch matrix of one sample: returns xs itself for pointwise convs.
  const S* patches(const S* xs, Matrix<S>& p) const {
    if (is_pointwise()) return xs;
    const Index ho = this->out_.h, wo = this->out_.w, h = this->in_.h, w = this->in_.w;
    p.resize(ho * wo, o_.in_channels * o_.kernel_h * o_.kernel_w);
    Index col = 0;
    for (Index ci = 0; ci < o_.in_channels; ++ci) {
      const S* xc = xs + ci * h * w;
      for (Index ky = 0; ky < o_.kernel_h; ++ky) {
        for (Index kx = 0; kx < o_.kernel_w; ++kx, ++col) {
          S* pc = p.col(col).data();
          const Index offx = kx * o_.dilation_w - o_.pad_w;
          const auto [lo, hi] = valid_range(offx, o_.stride_w, w, wo);
          for (Index oy = 0; oy < ho; ++oy) {
            const Index iy = oy * o_.stride_h - o_.pad_h + ky * o_.dilation_h;
            S* row = pc + oy * wo;
            if (iy < 0 || iy >= h) {
              std::fill(row, row + wo, S(0));
              continue;
            }
            const S* xr = xc + iy * w;
            for (Index ox = 0; ox < lo; ++ox) row[ox] = S(0);
            if (o_.stride_w == 1) {
              for (Index ox = lo; ox < hi; ++ox) row[ox] = xr[ox + offx];
            } else {
              for (Index ox = lo; ox < hi; ++ox) row[ox] = xr[ox * o_.stride_w + offx];
            }
            for (Index ox = hi; ox < wo; ++ox) row[ox] = S(0);
          }
        }
      }
    }
    return p.data();
  }

  /// dx (one sample) = sum of patch gradients scattered back (col2im).
  void col2im(const S* dp, S* dxs) const {
    const Index ho = this->out_.h, wo = this->out_.w, h = this->in_.h, w = this->in_.w;
    std::fill(dxs, dxs + this->in_.size(), S(0));
    Index col = 0;
    for (Index ci = 0; ci < o_.in_channels; ++ci) {
      S* dxc = dxs + ci * h * w;
      for (Index ky = 0; ky < o_.kernel_h; ++ky) {
        for (Index kx = 0; kx < o_.kernel_w; ++kx, ++col) {
          const S* pc = dp + col * ho * wo;
          const Index offx = kx * o_.dilation_w - o_.pad_w;
          const auto [lo, hi] = valid_range(offx, o_.stride_w, w, wo);
          for (Index oy = 0; oy < ho; ++oy) {
            const Index iy = oy * o_.stride_h - o_.pad_h + ky * o_.dilation_h;
            if (iy < 0 || iy >= h) continue;
            const S* row = pc + oy * wo;
            S* xr = dxc + iy * w;
            for (Index ox = lo; ox < hi; ++ox) xr[ox * o_.stride_w + offx] += row[ox];
          }
        }
      }
    }
  }

  /// Output columns ox in [lo, hi) read input column ox*stride + off inside [0, w).
  static std::pair<Index, Index> valid_range(Index off, Index stride, Index w, Index wo) {
    Index lo = off >= 0 ? 0 : (-off + stride - 1) / stride;
    Index hi = (w - 1 - off) < 0 ? 0 : (w - 1 - off) / stride + 1;
    lo = std::min(lo, wo);
    hi = std::clamp(hi, lo, wo);
    return {lo, hi};
  }

  Conv2DOptions o_;
  S* w_ = nullptr;
  S* gw_ = nullptr;
  std::vector<Scratch> scratch_;
};

}  // namespace fleetdl::nn
