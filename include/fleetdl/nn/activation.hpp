// fleetdl/nn/activation.hpp — element-wise activations (ReLU, ReLU6, Sigmoid,
// Tanh) and Softmax over channels.
//
// Derivatives at the kinks follow PyTorch: ReLU'(0) = 0, ReLU6'(0) = ReLU6'(6) = 0.
#pragma once

#include "fleetdl/nn/node.hpp"

#include <cmath>

namespace fleetdl::nn {

template <class S>
class Activation final : public Node<S> {
 public:
  explicit Activation(NodeKind k) : k_(k) {
    FLEETDL_ASSERT(k == NodeKind::relu || k == NodeKind::relu6 || k == NodeKind::sigmoid || k == NodeKind::tanh,
                   "Activation: not an element-wise activation kind");
  }
  NodeKind kind() const override { return k_; }
  const char* type_name() const override {
    switch (k_) {
      case NodeKind::relu: return "relu";
      case NodeKind::relu6: return "relu6";
      case NodeKind::sigmoid: return "sigmoid";
      default: return "tanh";
    }
  }
  NodePtr<S> clone() const override { return std::make_unique<Activation>(*this); }
  Result<Shape> build(const Shape& in) override {
    this->in_ = in;
    this->out_ = in;
    return in;
  }
  void forward(const Matrix<S>& x, Matrix<S>& y, ExecContext<S>& ctx) override {
    y.resize(x.rows(), x.cols());
    ctx.for_range(x.cols(), [&](Index b, Index e, int) {
      auto xa = x.middleCols(b, e - b).array();
      auto ya = y.middleCols(b, e - b).array();
      switch (k_) {
        case NodeKind::relu: ya = xa.max(S(0)); break;
        case NodeKind::relu6: ya = xa.max(S(0)).min(S(6)); break;
        case NodeKind::sigmoid: ya = S(1) / (S(1) + (-xa).exp()); break;
        default: ya = xa.tanh(); break;
      }
    });
  }
  void backward(const Matrix<S>& x, const Matrix<S>& y, const Matrix<S>& dy, Matrix<S>* dx,
                ExecContext<S>& ctx) override {
    if (!dx) return;
    dx->resize(x.rows(), x.cols());
    ctx.for_range(x.cols(), [&](Index b, Index e, int) {
      auto xa = x.middleCols(b, e - b).array();
      auto ya = y.middleCols(b, e - b).array();
      auto da = dy.middleCols(b, e - b).array();
      auto dxa = dx->middleCols(b, e - b).array();
      switch (k_) {
        case NodeKind::relu: dxa = (xa > S(0)).select(da, S(0)); break;
        case NodeKind::relu6: dxa = (xa > S(0) && xa < S(6)).select(da, S(0)); break;
        case NodeKind::sigmoid: dxa = da * ya * (S(1) - ya); break;
        default: dxa = da * (S(1) - ya.square()); break;
      }
    });
  }
  void save_config(ByteWriter&) const override {}

 private:
  NodeKind k_;
};

template <class S>
NodePtr<S> relu() { return std::make_unique<Activation<S>>(NodeKind::relu); }
template <class S>
NodePtr<S> relu6() { return std::make_unique<Activation<S>>(NodeKind::relu6); }
template <class S>
NodePtr<S> sigmoid() { return std::make_unique<Activation<S>>(NodeKind::sigmoid); }
template <class S>
NodePtr<S> tanh() { return std::make_unique<Activation<S>>(NodeKind::tanh); }

/// Softmax across channels at every position (PyTorch Softmax(dim=1)).
template <class S>
class Softmax final : public Node<S> {
 public:
  NodeKind kind() const override { return NodeKind::softmax; }
  const char* type_name() const override { return "softmax"; }
  NodePtr<S> clone() const override { return std::make_unique<Softmax>(*this); }
  Result<Shape> build(const Shape& in) override {
    this->in_ = in;
    this->out_ = in;
    return in;
  }
  void forward(const Matrix<S>& x, Matrix<S>& y, ExecContext<S>& ctx) override {
    const Index hw = this->in_.spatial(), c = this->in_.c;
    y.resize(x.rows(), x.cols());
    ctx.for_range(x.cols(), [&](Index b, Index e, int) {
      for (Index s = b; s < e; ++s) {
        // view (hw x c): each row is one position across channels
        ConstMatrixMap<S> xs(x.col(s).data(), hw, c);
        MatrixMap<S> ys(y.col(s).data(), hw, c);
        for (Index p = 0; p < hw; ++p) {
          const S mx = xs.row(p).maxCoeff();
          ys.row(p) = (xs.row(p).array() - mx).exp().matrix();
          ys.row(p) /= ys.row(p).sum();
        }
      }
    });
  }
  void backward(const Matrix<S>& x, const Matrix<S>& y, const Matrix<S>& dy, Matrix<S>* dx,
                ExecContext<S>& ctx) override {
    if (!dx) return;
    const Index hw = this->in_.spatial(), c = this->in_.c;
    dx->resize(x.rows(), x.cols());
    ctx.for_range(x.cols(), [&](Index b, Index e, int) {
      for (Index s = b; s < e; ++s) {
        ConstMatrixMap<S> ys(y.col(s).data(), hw, c), ds(dy.col(s).data(), hw, c);
        MatrixMap<S> dxs(dx->col(s).data(), hw, c);
        for (Index p = 0; p < hw; ++p) {
          const S dot = ys.row(p).dot(ds.row(p));
          dxs.row(p) = (ys.row(p).array() * (ds.row(p).array() - dot)).matrix();
        }
      }
    });
  }
  void save_config(ByteWriter&) const override {}
};

}  // namespace fleetdl::nn
