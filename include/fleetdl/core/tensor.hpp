// fleetdl/core/tensor.hpp — shapes and batch matrices.
//
// A sample is a CHW tensor stored channel-major (index c*H*W + h*W + w, as
// PyTorch's NCHW). A batch of N samples is an Eigen column-major matrix with
// one sample per column: rows = C*H*W, cols = N. Flatten is therefore free and
// Dense layers multiply the batch directly.
#pragma once

#include <Eigen/Core>

#include <cstdint>
#include <string>

namespace fleetdl {

using Index = Eigen::Index;

/// Per-sample shape (channels, height, width). A vector of F features is {F,1,1}.
struct Shape {
  Index c = 0, h = 1, w = 1;
  Index size() const { return c * h * w; }
  Index spatial() const { return h * w; }
  friend bool operator==(const Shape& a, const Shape& b) { return a.c == b.c && a.h == b.h && a.w == b.w; }
  friend bool operator!=(const Shape& a, const Shape& b) { return !(a == b); }
  std::string str() const {
    return std::to_string(c) + "x" + std::to_string(h) + "x" + std::to_string(w);
  }
};

template <class S>
using Matrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <class S>
using Vector = Eigen::Matrix<S, Eigen::Dynamic, 1>;
template <class S>
using VectorMap = Eigen::Map<Vector<S>>;
template <class S>
using ConstVectorMap = Eigen::Map<const Vector<S>>;
template <class S>
using MatrixMap = Eigen::Map<Matrix<S>>;
template <class S>
using ConstMatrixMap = Eigen::Map<const Matrix<S>>;

}  // namespace fleetdl
