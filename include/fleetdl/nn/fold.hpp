// fleetdl/nn/fold.hpp — fold BatchNorm into the preceding Conv2D or Dense.
//
// For inference (and int8 export) a BatchNorm that directly follows a conv or
// dense layer in the same chain is merged into it, using running statistics:
//   w'[c] = w[c] * gamma[c] / sqrt(var[c] + eps)
//   b'[c] = (b[c] - mean[c]) * gamma[c] / sqrt(var[c] + eps) + beta[c]
// The folded layer always has a bias. Works at any depth (inside Residual
// bodies, projections and Concat branches). No RTTI: dispatch is by kind().
#pragma once

#include "fleetdl/nn/model.hpp"

#include <cmath>

namespace fleetdl::nn {

namespace detail {

template <class S>
bool foldable(const Node<S>& a, const Node<S>& b) {
  if (b.kind() != NodeKind::batchnorm) return false;
  const Index c = static_cast<const BatchNorm<S>&>(b).channels();
  if (a.kind() == NodeKind::conv2d) return static_cast<const Conv2D<S>&>(a).options().out_channels == c;
  if (a.kind() == NodeKind::dense) return static_cast<const Dense<S>&>(a).out_features() == c;
  return false;
}

template <class S>
Sequential<S> fold_structure(const Sequential<S>& in);

template <class S>
NodePtr<S> fold_node_structure(const Node<S>& n) {
  switch (n.kind()) {
    case NodeKind::sequential:
      return std::make_unique<Sequential<S>>(fold_structure(static_cast<const Sequential<S>&>(n)));
    case NodeKind::residual: {
      const auto& r = static_cast<const Residual<S>&>(n);
      NodePtr<S> out = r.projection()
                           ? std::make_unique<Residual<S>>(fold_structure(r.body()), fold_structure(*r.projection()))
                           : std::make_unique<Residual<S>>(fold_structure(r.body()));
      out->label = n.label;
      return out;
    }
    case NodeKind::concat: {
      const auto& c = static_cast<const Concat<S>&>(n);
      auto out = std::make_unique<Concat<S>>();
      for (Index i = 0; i < c.size(); ++i) out->add(fold_structure(c.branch(i)));
      out->label = n.label;
      return out;
    }
    default: return n.clone();
  }
}

template <class S>
Sequential<S> fold_structure(const Sequential<S>& in) {
  Sequential<S> out;
  out.label = in.label;
  for (Index i = 0; i < in.size(); ++i) {
    const Node<S>& n = in.at(i);
    if (i + 1 < in.size() && foldable(n, in.at(i + 1))) {
      NodePtr<S> f;
      if (n.kind() == NodeKind::conv2d) {
        Conv2DOptions o = static_cast<const Conv2D<S>&>(n).options();
        o.bias = true;
        f = std::make_unique<Conv2D<S>>(o);
      } else {
        const auto& d = static_cast<const Dense<S>&>(n);
        f = std::make_unique<Dense<S>>(d.in_features(), d.out_features(), true);
      }
      f->label = n.label;
      out.add(std::move(f));
      ++i;  // skip the BatchNorm
    } else {
      out.add(fold_node_structure(n));
    }
  }
  return out;
}

template <class S>
void fold_values(const Node<S>& src, Node<S>& dst);

template <class S>
void fold_seq_values(const Sequential<S>& in, Sequential<S>& out) {
  Index j = 0;
  for (Index i = 0; i < in.size(); ++i, ++j) {
    const Node<S>& n = in.at(i);
    if (i + 1 < in.size() && foldable(n, in.at(i + 1))) {
      const auto& bn = static_cast<const BatchNorm<S>&>(in.at(i + 1));
      const Index c = bn.channels();
      const S* wsrc;
      const S* bsrc;
      S* wdst;
      S* bdst;
      Index per = 0;  // weights per output channel
      if (n.kind() == NodeKind::conv2d) {
        const auto& a = static_cast<const Conv2D<S>&>(n);
        auto& b = static_cast<Conv2D<S>&>(out.at(j));
        per = a.param_count() - (a.options().bias ? c : 0);
        per /= c;
        wsrc = a.weights();
        bsrc = a.bias();
        wdst = b.weights();
        bdst = b.bias();
      } else {
        const auto& a = static_cast<const Dense<S>&>(n);
        auto& b = static_cast<Dense<S>&>(out.at(j));
        per = a.in_features();
        wsrc = a.weight_t().data();
        bsrc = a.bias();
        wdst = b.weight_t().data();
        bdst = b.bias();
      }
      // Both layouts keep each output channel's weights contiguous
      // (conv W[cout][...], dense W[out][in]).
      for (Index ch = 0; ch < c; ++ch) {
        const double sc = static_cast<double>(bn.gamma()[ch]) /
                          std::sqrt(static_cast<double>(bn.running_var()[ch]) + bn.eps());
        for (Index k = 0; k < per; ++k) wdst[ch * per + k] = static_cast<S>(static_cast<double>(wsrc[ch * per + k]) * sc);
        const double b0 = bsrc ? static_cast<double>(bsrc[ch]) : 0.0;
        bdst[ch] = static_cast<S>((b0 - static_cast<double>(bn.running_mean()[ch])) * sc +
                                  static_cast<double>(bn.beta()[ch]));
      }
      ++i;
    } else {
      fold_values(n, out.at(j));
    }
  }
}

template <class S>
void copy_node_values(const Node<S>& src, Node<S>& dst) {
  // Same definition on both sides: copy every named tensor.
  std::vector<TensorRef<S>> a, b;
  const_cast<Node<S>&>(src).tensors("", a);
  dst.tensors("", b);
  for (std::size_t k = 0; k < a.size() && k < b.size(); ++k)
    std::copy(a[k].data, a[k].data + a[k].size(), b[k].data);
}

template <class S>
void fold_values(const Node<S>& src, Node<S>& dst) {
  switch (src.kind()) {
    case NodeKind::sequential:
      fold_seq_values(static_cast<const Sequential<S>&>(src), static_cast<Sequential<S>&>(dst));
      break;
    case NodeKind::residual: {
      const auto& a = static_cast<const Residual<S>&>(src);
      auto& b = static_cast<Residual<S>&>(dst);
      fold_seq_values(a.body(), b.body());
      if (a.projection()) fold_seq_values(*a.projection(), *b.projection());
      break;
    }
    case NodeKind::concat: {
      const auto& a = static_cast<const Concat<S>&>(src);
      auto& b = static_cast<Concat<S>&>(dst);
      for (Index i = 0; i < a.size(); ++i) fold_seq_values(a.branch(i), b.branch(i));
      break;
    }
    default: copy_node_values(src, dst);
  }
}

}  // namespace detail

/// A copy of m with every foldable BatchNorm merged into its predecessor.
template <class S>
Result<Model<S>> fold_batchnorm(const Model<S>& m) {
  Sequential<S> folded = detail::fold_structure(m.chain());
  auto r = Model<S>::create(m.input_shape(), std::move(folded.nodes()));
  if (!r) return r;
  detail::fold_seq_values(m.chain(), r->chain());
  return r;
}

}  // namespace fleetdl::nn
