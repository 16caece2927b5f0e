// fleetdl/nn/loss.hpp — losses with their gradients: softmax cross-entropy,
// MSE, knowledge distillation (Hinton et al. 2015), attention transfer
// (Zagoruyko & Komodakis 2017) and NoNN-style activation matching.
//
// Every function takes batch matrices (one sample per column), returns the
// loss as a double and, when `grad` is not null, writes dLoss/d(first input)
// with the same shape. All losses are means over the batch.
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/core/tensor.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

namespace fleetdl::nn {

namespace detail {
/// Column-wise softmax of z / T.
template <class S>
Matrix<S> softmax_cols(const Matrix<S>& z, double T = 1.0) {
  Matrix<S> p(z.rows(), z.cols());
  const S invT = static_cast<S>(1.0 / T);
  for (Index j = 0; j < z.cols(); ++j) {
    const S mx = z.col(j).maxCoeff();
    p.col(j) = ((z.col(j).array() - mx) * invT).exp().matrix();
    p.col(j) /= p.col(j).sum();
  }
  return p;
}
}  // namespace detail

/// Mean over the batch of -log softmax(z)[y].
template <class S>
double softmax_cross_entropy(const Matrix<S>& logits, const std::vector<std::uint8_t>& labels, Matrix<S>* grad) {
  const Index n = logits.cols(), k = logits.rows();
  FLEETDL_ASSERT(static_cast<Index>(labels.size()) == n, "softmax_cross_entropy: one label per column");
  double loss = 0;
  if (grad) grad->resize(k, n);
  for (Index j = 0; j < n; ++j) {
    const Index y = labels[static_cast<std::size_t>(j)];
    FLEETDL_ASSERT(y < k, "softmax_cross_entropy: label out of range");
    const S mx = logits.col(j).maxCoeff();
    const double lse = static_cast<double>(mx) + std::log(static_cast<double>((logits.col(j).array() - mx).exp().sum()));
    loss += lse - static_cast<double>(logits(y, j));
    if (grad) {
      grad->col(j) = (logits.col(j).array() - static_cast<S>(lse)).exp().matrix() / static_cast<S>(n);
      (*grad)(y, j) -= S(1) / static_cast<S>(n);
    }
  }
  return loss / static_cast<double>(n);
}

/// Mean over all elements of (pred - target)^2.
template <class S>
double mse(const Matrix<S>& pred, const Matrix<S>& target, Matrix<S>* grad) {
  FLEETDL_ASSERT(pred.rows() == target.rows() && pred.cols() == target.cols(), "mse: shapes differ");
  const double m = static_cast<double>(pred.size());
  const Matrix<S> d = pred - target;
  if (grad) *grad = d * static_cast<S>(2.0 / m);
  return static_cast<double>(d.squaredNorm()) / m;
}

/// Knowledge distillation (Hinton et al. 2015):
///   L = alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, y)
/// KL reduction: "batchmean" — summed over classes, averaged over samples
/// (the public NoNN code averages over classes as well, which divides the KL
/// term by the number of classes; pass alpha accordingly to reproduce it).
template <class S>
double kd_loss(const Matrix<S>& student, const Matrix<S>& teacher, const std::vector<std::uint8_t>& labels,
               double T, double alpha, Matrix<S>* grad) {
  FLEETDL_ASSERT(student.rows() == teacher.rows() && student.cols() == teacher.cols(), "kd_loss: shapes differ");
  FLEETDL_ASSERT(T > 0.0, "kd_loss: temperature must be > 0");
  const Index n = student.cols();
  const Matrix<S> ps = detail::softmax_cols(student, T), pt = detail::softmax_cols(teacher, T);
  double kl = 0;
  for (Index j = 0; j < n; ++j)
    for (Index i = 0; i < student.rows(); ++i) {
      const double t = static_cast<double>(pt(i, j));
      if (t > 0) kl += t * (std::log(t) - std::log(static_cast<double>(ps(i, j))));
    }
  kl /= static_cast<double>(n);
  Matrix<S> gce;
  const double ce = softmax_cross_entropy(student, labels, grad ? &gce : nullptr);
  if (grad) *grad = (ps - pt) * static_cast<S>(alpha * T / static_cast<double>(n)) + gce * static_cast<S>(1.0 - alpha);
  return alpha * T * T * kl + (1.0 - alpha) * ce;
}

/// Attention map of a batch of feature maps (rows = c*h*w per sample):
/// at(x) = normalize(mean over channels of x^2), one column per sample.
template <class S>
Matrix<S> attention_map(const Matrix<S>& x, const Shape& shape) {
  const Index hw = shape.spatial(), c = shape.c;
  Matrix<S> a(hw, x.cols());
  for (Index j = 0; j < x.cols(); ++j) {
    a.col(j) = ConstMatrixMap<S>(x.col(j).data(), hw, c).array().square().rowwise().mean().matrix();
    const S nrm = a.col(j).norm();
    a.col(j) /= std::max(nrm, S(1e-12));
  }
  return a;
}

/// Attention transfer: mean over samples and positions of (at(s) - at(t))^2.
/// Student and teacher maps must share height and width (channels may differ).
template <class S>
double attention_transfer(const Matrix<S>& student, const Shape& s_shape, const Matrix<S>& teacher,
                          const Shape& t_shape, Matrix<S>* grad) {
  FLEETDL_ASSERT(s_shape.spatial() == t_shape.spatial(), "attention_transfer: spatial sizes differ");
  const Index hw = s_shape.spatial(), c = s_shape.c, n = student.cols();
  const Matrix<S> as = attention_map(student, s_shape), at = attention_map(teacher, t_shape);
  const Matrix<S> d = as - at;
  const double loss = static_cast<double>(d.squaredNorm()) / static_cast<double>(hw * n);
  if (grad) {
    grad->resize(student.rows(), n);
    for (Index j = 0; j < n; ++j) {
      // q = mean_c x^2; a = q/|q|; dL/da = 2 d / (hw n); dL/dq = (g - a (a.g)) / |q|
      const Vector<S> q = ConstMatrixMap<S>(student.col(j).data(), hw, c).array().square().rowwise().mean().matrix();
      const S nq = std::max(q.norm(), S(1e-12));
      const Vector<S> g = d.col(j) * static_cast<S>(2.0 / static_cast<double>(hw * n));
      const Vector<S> gq = (g - as.col(j) * as.col(j).dot(g)) / nq;
      MatrixMap<S> gx(grad->col(j).data(), hw, c);
      ConstMatrixMap<S> xs(student.col(j).data(), hw, c);
      for (Index ch = 0; ch < c; ++ch) gx.col(ch) = (xs.col(ch).array() * gq.array() * static_cast<S>(2.0 / static_cast<double>(c))).matrix();
    }
  }
  return loss;
}

/// Activation matching (NoNN, REFERENCES §1): mean over samples and
/// features of (s_hat - t_hat)^2 where each column is L2-normalised.
/// Multiply by beta (1e4 in NoNN) at the call site.
template <class S>
double activation_matching(const Matrix<S>& student, const Matrix<S>& teacher, Matrix<S>* grad) {
  FLEETDL_ASSERT(student.rows() == teacher.rows() && student.cols() == teacher.cols(),
                 "activation_matching: shapes differ");
  const Index n = student.cols(), d = student.rows();
  const double m = static_cast<double>(n * d);
  double loss = 0;
  if (grad) grad->resize(d, n);
  for (Index j = 0; j < n; ++j) {
    const S ns = std::max(student.col(j).norm(), S(1e-12)), nt = std::max(teacher.col(j).norm(), S(1e-12));
    const Vector<S> sh = student.col(j) / ns;
    const Vector<S> diff = sh - teacher.col(j) / nt;
    loss += static_cast<double>(diff.squaredNorm());
    if (grad) {
      const Vector<S> g = diff * static_cast<S>(2.0 / m);
      grad->col(j) = (g - sh * sh.dot(g)) / ns;
    }
  }
  return loss / m;
}

}  // namespace fleetdl::nn
