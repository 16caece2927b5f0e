// fleetdl/nn/composite.hpp — composite nodes: Sequential (a chain), Residual
// (body + optional projection shortcut, summed) and Concat (parallel branches
// joined along channels). Enough for VGG-, WRN- and MobileNet-style networks
// and for a NoNN unified student (students as Concat branches, then Dense).
#pragma once

#include "fleetdl/nn/node.hpp"

#include <utility>

namespace fleetdl::nn {

/// A chain of nodes; keeps every intermediate activation for backward.
template <class S>
class Sequential final : public Node<S> {
 public:
  Sequential() = default;
  explicit Sequential(std::vector<NodePtr<S>> nodes) : nodes_(std::move(nodes)) {}
  Sequential(const Sequential& o) : Node<S>(o) {
    for (const auto& n : o.nodes_) nodes_.push_back(n->clone());
  }
  Sequential& operator=(const Sequential&) = delete;
  Sequential(Sequential&&) noexcept = default;
  Sequential& operator=(Sequential&&) noexcept = default;

  NodeKind kind() const override { return NodeKind::sequential; }
  const char* type_name() const override { return "sequential"; }
  NodePtr<S> clone() const override { return std::make_unique<Sequential>(*this); }

  Sequential& add(NodePtr<S> n) {
    nodes_.push_back(std::move(n));
    return *this;
  }
  Index size() const { return static_cast<Index>(nodes_.size()); }
  Node<S>& at(Index i) { return *nodes_[static_cast<std::size_t>(i)]; }
  const Node<S>& at(Index i) const { return *nodes_[static_cast<std::size_t>(i)]; }
  std::vector<NodePtr<S>>& nodes() { return nodes_; }

  Result<Shape> build(const Shape& in) override {
    Shape s = in;
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      auto r = nodes_[i]->build(s);
      if (!r) return make_error(r.error().code, "node " + std::to_string(i) + ": " + r.error().message);
      s = *r;
    }
    this->in_ = in;
    this->out_ = s;
    return s;
  }
  Index param_count() const override {
    Index n = 0;
    for (const auto& c : nodes_) n += c->param_count();
    return n;
  }
  Index buffer_count() const override {
    Index n = 0;
    for (const auto& c : nodes_) n += c->buffer_count();
    return n;
  }
  void bind(S* params, S* grads, S* buffers) override {
    for (auto& c : nodes_) {
      c->bind(params, grads, buffers);
      params += c->param_count();
      grads += c->param_count();
      buffers += c->buffer_count();
    }
  }
  void init(Rng& rng) override {
    for (auto& c : nodes_) c->init(rng);
  }

  void forward(const Matrix<S>& x, Matrix<S>& y, ExecContext<S>& ctx) override {
    if (nodes_.empty()) {
      y = x;
      return;
    }
    acts_.resize(nodes_.size() - 1);
    const Matrix<S>* in = &x;
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      Matrix<S>& out = (i + 1 == nodes_.size()) ? y : acts_[i];
      nodes_[i]->forward(*in, out, ctx);
      in = &out;
    }
  }
  void backward(const Matrix<S>& x, const Matrix<S>& y, const Matrix<S>& dy, Matrix<S>* dx,
                ExecContext<S>& ctx) override {
    if (nodes_.empty()) {
      if (dx) *dx = dy;
      return;
    }
    const Matrix<S>* g = &dy;
    for (std::size_t k = nodes_.size(); k-- > 0;) {
      const Matrix<S>& in = k == 0 ? x : acts_[k - 1];
      const Matrix<S>& out = (k + 1 == nodes_.size()) ? y : acts_[k];
      Matrix<S>* d = k == 0 ? dx : &grad_[k & 1];
      if (k == 0 && !dx) {
        nodes_[k]->backward(in, out, *g, nullptr, ctx);
        break;
      }
      nodes_[k]->backward(in, out, *g, d, ctx);
      g = d;
    }
  }

  void costs(const std::string& path, std::vector<NodeCost>& out, bool recurse) const override {
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      const std::string p = path + std::to_string(i);
      const Node<S>& n = *nodes_[i];
      const bool composite =
          n.kind() == NodeKind::sequential || n.kind() == NodeKind::residual || n.kind() == NodeKind::concat;
      if (recurse)
        n.costs(composite ? p + "." : p, out, true);  // composites append their children's names
      else if (n.kind() == NodeKind::sequential)
        out.push_back(static_cast<const Sequential&>(n).total_cost(p));  // one row per child
      else
        n.costs(p, out, false);
    }
  }
  /// Cost of the whole chain as one row.
  NodeCost total_cost(const std::string& name) const {
    std::vector<NodeCost> parts;
    costs("", parts, false);
    NodeCost t = this->base_cost(name);
    t.macs = 0;
    for (const auto& p : parts) t.macs += p.macs;
    return t;
  }
  void tensors(const std::string& path, std::vector<TensorRef<S>>& out) override {
    for (std::size_t i = 0; i < nodes_.size(); ++i) nodes_[i]->tensors(path + std::to_string(i) + ".", out);
  }
  void save_config(ByteWriter& w) const override {
    w.u32(static_cast<std::uint32_t>(nodes_.size()));
    for (const auto& n : nodes_) write_node(w, *n);
  }

  /// Intermediate output of child i (valid after forward; i < size()-1).
  const Matrix<S>& activation(Index i) const { return acts_[static_cast<std::size_t>(i)]; }

 protected:
  NodeCost own_cost(const std::string& path) const override { return total_cost(path); }

 private:
  std::vector<NodePtr<S>> nodes_;
  std::vector<Matrix<S>> acts_;
  Matrix<S> grad_[2];
};

/// y = body(x) + shortcut(x), shortcut = projection(x) or x itself.
template <class S>
class Residual final : public Node<S> {
 public:
  explicit Residual(Sequential<S> body) : body_(std::move(body)) {}
  Residual(Sequential<S> body, Sequential<S> projection)
      : body_(std::move(body)), proj_(std::make_unique<Sequential<S>>(std::move(projection))) {}
  Residual(const Residual& o) : Node<S>(o), body_(o.body_) {
    if (o.proj_) proj_ = std::make_unique<Sequential<S>>(*o.proj_);
  }
  NodeKind kind() const override { return NodeKind::residual; }
  const char* type_name() const override { return "residual"; }
  NodePtr<S> clone() const override { return std::make_unique<Residual>(*this); }
  Sequential<S>& body() { return body_; }
  Sequential<S>* projection() { return proj_.get(); }
  const Sequential<S>& body() const { return body_; }
  const Sequential<S>* projection() const { return proj_.get(); }

  Result<Shape> build(const Shape& in) override {
    auto b = body_.build(in);
    if (!b) return make_error(b.error().code, "residual body: " + b.error().message);
    Shape sc = in;
    if (proj_) {
      auto p = proj_->build(in);
      if (!p) return make_error(p.error().code, "residual projection: " + p.error().message);
      sc = *p;
    }
    if (*b != sc)
      return make_error(Errc::shape_mismatch,
                        "residual: body output " + b->str() + " differs from shortcut " + sc.str() +
                            (proj_ ? "" : " (add a projection)"));
    this->in_ = in;
    this->out_ = *b;
    return this->out_;
  }
  Index param_count() const override { return body_.param_count() + (proj_ ? proj_->param_count() : 0); }
  Index buffer_count() const override { return body_.buffer_count() + (proj_ ? proj_->buffer_count() : 0); }
  void bind(S* params, S* grads, S* buffers) override {
    body_.bind(params, grads, buffers);
    if (proj_)
      proj_->bind(params + body_.param_count(), grads + body_.param_count(), buffers + body_.buffer_count());
  }
  void init(Rng& rng) override {
    body_.init(rng);
    if (proj_) proj_->init(rng);
  }
  void forward(const Matrix<S>& x, Matrix<S>& y, ExecContext<S>& ctx) override {
    // The body output is kept: the last body node's backward may read it.
    body_.forward(x, body_out_, ctx);
    if (proj_) {
      proj_->forward(x, short_, ctx);
      y = body_out_ + short_;
    } else {
      y = body_out_ + x;
    }
  }
  void backward(const Matrix<S>& x, const Matrix<S>&, const Matrix<S>& dy, Matrix<S>* dx,
                ExecContext<S>& ctx) override {
    body_.backward(x, body_out_, dy, dx ? &dbody_ : nullptr, ctx);
    if (proj_) {
      proj_->backward(x, short_, dy, dx ? &dproj_ : nullptr, ctx);
      if (dx) *dx = dbody_ + dproj_;
    } else if (dx) {
      *dx = dbody_ + dy;
    }
  }

  void costs(const std::string& path, std::vector<NodeCost>& out, bool recurse) const override {
    if (!recurse) {
      out.push_back(own_cost(path));
      return;
    }
    body_.costs(path + "body.", out, true);
    if (proj_) proj_->costs(path + "proj.", out, true);
  }
  void tensors(const std::string& path, std::vector<TensorRef<S>>& out) override {
    body_.tensors(path + "body.", out);
    if (proj_) proj_->tensors(path + "proj.", out);
  }
  void save_config(ByteWriter& w) const override {
    w.u8(proj_ ? 1 : 0);
    body_.save_config(w);
    if (proj_) proj_->save_config(w);
  }

 protected:
  NodeCost own_cost(const std::string& path) const override {
    NodeCost c = this->base_cost(path);
    c.macs = body_.total_cost("").macs + (proj_ ? proj_->total_cost("").macs : 0) + this->out_.size();
    return c;
  }

 private:
  Sequential<S> body_;
  std::unique_ptr<Sequential<S>> proj_;
  Matrix<S> short_, body_out_, dbody_, dproj_;
};

/// Parallel branches on the same input; outputs joined along channels (all
/// branches must agree on height and width).
template <class S>
class Concat final : public Node<S> {
 public:
  Concat() = default;
  explicit Concat(std::vector<Sequential<S>> branches) : branches_(std::move(branches)) {}
  NodeKind kind() const override { return NodeKind::concat; }
  const char* type_name() const override { return "concat"; }
  NodePtr<S> clone() const override { return std::make_unique<Concat>(*this); }
  Concat& add(Sequential<S> branch) {
    branches_.push_back(std::move(branch));
    return *this;
  }
  Index size() const { return static_cast<Index>(branches_.size()); }
  Sequential<S>& branch(Index i) { return branches_[static_cast<std::size_t>(i)]; }
  const Sequential<S>& branch(Index i) const { return branches_[static_cast<std::size_t>(i)]; }

  Result<Shape> build(const Shape& in) override {
    if (branches_.empty()) return make_error(Errc::invalid_argument, "concat: no branches");
    Shape out{0, 0, 0};
    for (std::size_t i = 0; i < branches_.size(); ++i) {
      auto r = branches_[i].build(in);
      if (!r) return make_error(r.error().code, "concat branch " + std::to_string(i) + ": " + r.error().message);
      if (i == 0) {
        out = *r;
        continue;
      }
      if (r->h != out.h || r->w != out.w)
        return make_error(Errc::shape_mismatch, "concat: branch " + std::to_string(i) + " output " + r->str() +
                                                    " differs in height/width from " + out.str());
      out.c += r->c;
    }
    auto chk = fleetdl::nn::detail::checked_shape(out.c, out.h, out.w, "concat");
    if (!chk) return chk;
    this->in_ = in;
    this->out_ = out;
    return out;
  }
  Index param_count() const override {
    Index n = 0;
    for (const auto& b : branches_) n += b.param_count();
    return n;
  }
  Index buffer_count() const override {
    Index n = 0;
    for (const auto& b : branches_) n += b.buffer_count();
    return n;
  }
  void bind(S* params, S* grads, S* buffers) override {
    for (auto& b : branches_) {
      b.bind(params, grads, buffers);
      params += b.param_count();
      grads += b.param_count();
      buffers += b.buffer_count();
    }
  }
  void init(Rng& rng) override {
    for (auto& b : branches_) b.init(rng);
  }
  void forward(const Matrix<S>& x, Matrix<S>& y, ExecContext<S>& ctx) override {
    outs_.resize(branches_.size());
    y.resize(this->out_.size(), x.cols());
    Index off = 0;
    for (std::size_t i = 0; i < branches_.size(); ++i) {
      branches_[i].forward(x, outs_[i], ctx);
      y.middleRows(off, outs_[i].rows()) = outs_[i];
      off += outs_[i].rows();
    }
  }
  void backward(const Matrix<S>& x, const Matrix<S>&, const Matrix<S>& dy, Matrix<S>* dx,
                ExecContext<S>& ctx) override {
    Index off = 0;
    if (dx) dx->setZero(x.rows(), x.cols());
    for (std::size_t i = 0; i < branches_.size(); ++i) {
      const Index r = outs_[i].rows();
      dyb_ = dy.middleRows(off, r);
      branches_[i].backward(x, outs_[i], dyb_, dx ? &dxb_ : nullptr, ctx);
      if (dx) *dx += dxb_;
      off += r;
    }
  }
  void costs(const std::string& path, std::vector<NodeCost>& out, bool recurse) const override {
    if (!recurse) {
      out.push_back(own_cost(path));
      return;
    }
    for (std::size_t i = 0; i < branches_.size(); ++i)
      branches_[i].costs(path + "branch" + std::to_string(i) + ".", out, true);
  }
  void tensors(const std::string& path, std::vector<TensorRef<S>>& out) override {
    for (std::size_t i = 0; i < branches_.size(); ++i)
      branches_[i].tensors(path + "branch" + std::to_string(i) + ".", out);
  }
  void save_config(ByteWriter& w) const override {
    w.u32(static_cast<std::uint32_t>(branches_.size()));
    for (const auto& b : branches_) b.save_config(w);
  }

 protected:
  NodeCost own_cost(const std::string& path) const override {
    NodeCost c = this->base_cost(path);
    for (const auto& b : branches_) c.macs += b.total_cost("").macs;
    return c;
  }

 private:
  std::vector<Sequential<S>> branches_;
  std::vector<Matrix<S>> outs_;
  Matrix<S> dyb_, dxb_;
};

}  // namespace fleetdl::nn
