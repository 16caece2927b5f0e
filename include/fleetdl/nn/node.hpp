// fleetdl/nn/node.hpp — the Node interface every layer and composite implements,
// the execution context, per-node cost reports and checked size arithmetic.
//
// A node transforms a batch matrix (rows = per-sample C*H*W, one column per
// sample) into another. It owns no parameter storage: the Model binds each
// node to its slice of one flat parameter buffer and one flat gradient buffer
// (see ARCHITECTURE.md, "Flat parameters"). backward() ADDS parameter
// gradients into the bound gradient slice, so callers zero gradients first.
#pragma once

#include "fleetdl/core/bytes.hpp"
#include "fleetdl/core/config.hpp"
#include "fleetdl/core/error.hpp"
#include "fleetdl/core/parallel.hpp"
#include "fleetdl/core/rng.hpp"
#include "fleetdl/core/tensor.hpp"

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace fleetdl::nn {

/// Stable numeric ids of node types; they are stored in .fdl files.
enum class NodeKind : std::uint16_t {
  dense = 1,
  conv2d = 2,
  maxpool2d = 3,
  avgpool2d = 4,
  global_avg_pool = 5,
  batchnorm = 6,
  relu = 7,
  relu6 = 8,
  sigmoid = 9,
  tanh = 10,
  softmax = 11,
  flatten = 12,
  dropout = 13,
  sequential = 32,
  residual = 33,
  concat = 34,
};

/// What one node costs for the shape it was built for.
struct NodeCost {
  std::string name;      ///< path of the node in the model, e.g. "3" or "3.body.0"
  std::string type;      ///< layer type, e.g. "conv2d"
  Shape in, out;         ///< per-sample shapes
  Index params = 0;      ///< trainable scalars
  Index buffers = 0;     ///< non-trainable stored scalars (BatchNorm running stats)
  Index weight_bytes = 0;  ///< (params + buffers) * sizeof(Scalar)
  Index macs = 0;        ///< multiply-accumulates per sample (forward)
  Index act_in_bytes = 0;   ///< input activation bytes per sample
  Index act_out_bytes = 0;  ///< output activation bytes per sample
};

/// How a forward/backward pass runs: threads, mode, randomness (Dropout).
template <class S>
struct ExecContext {
  ThreadPool* pool = nullptr;  ///< nullptr: run on the calling thread
  bool training = false;       ///< BatchNorm batch statistics, Dropout active
  Rng* rng = nullptr;          ///< required when training with Dropout

  int threads() const { return pool ? pool->size() : 1; }
  /// Split [0, n) into threads() contiguous chunks; f(begin, end, chunk).
  template <class F>
  void for_range(Index n, F&& f) const {
    if (pool == nullptr || pool->size() == 1 || n <= 1) {
      if (n > 0) f(Index{0}, n, 0);
      return;
    }
    pool->for_range(n, [&](std::ptrdiff_t b, std::ptrdiff_t e, int c) { f(Index{b}, Index{e}, c); });
  }
  /// Number of chunks for_range(n, ...) uses.
  int chunks(Index n) const {
    if (pool == nullptr || pool->size() == 1 || n <= 1) return 1;
    return static_cast<int>(std::min<Index>(n, pool->size()));
  }
};

/// A named tensor of a node, in the flat buffers (for files and reports).
template <class S>
struct TensorRef {
  std::string name;             ///< "weight", "bias", "running_mean", ... (prefixed by the model)
  std::vector<Index> dims;      ///< PyTorch-ordered dims, e.g. {cout, cin/g, kh, kw}
  S* data = nullptr;            ///< into the params or buffers buffer
  bool trainable = true;
  Index size() const {
    Index n = 1;
    for (Index d : dims) n *= d;
    return n;
  }
};

namespace detail {
/// a*b with overflow and limit check; false if the product exceeds `limit`.
inline bool checked_mul(Index a, Index b, Index& out, Index limit = std::numeric_limits<Index>::max()) {
  if (a < 0 || b < 0) return false;
  if (a != 0 && b > limit / a) return false;
  out = a * b;
  return out <= limit;
}
inline Result<Shape> checked_shape(Index c, Index h, Index w, const char* who) {
  Index hw = 0, chw = 0;
  if (c <= 0 || h <= 0 || w <= 0 || c > FLEETDL_MAX_DIM || h > FLEETDL_MAX_DIM || w > FLEETDL_MAX_DIM ||
      !checked_mul(h, w, hw) || !checked_mul(c, hw, chw, Index{1} << 40))
    return make_error(Errc::shape_mismatch, std::string(who) + ": output shape " + std::to_string(c) + "x" +
                                                std::to_string(h) + "x" + std::to_string(w) +
                                                " is empty or too large");
  return Shape{c, h, w};
}
}  // namespace detail

template <class S>
class Node {
 public:
  virtual ~Node() = default;

  virtual NodeKind kind() const = 0;
  /// Lower-case type name used in reports ("conv2d").
  virtual const char* type_name() const = 0;
  virtual std::unique_ptr<Node> clone() const = 0;

  /// Shape inference and validation for a per-sample input shape. Must be
  /// called (by the Model) before forward/backward/cost.
  virtual Result<Shape> build(const Shape& in) = 0;
  const Shape& input_shape() const { return in_; }
  const Shape& output_shape() const { return out_; }

  /// Trainable scalars and non-trainable stored scalars (e.g. running stats).
  virtual Index param_count() const { return 0; }
  virtual Index buffer_count() const { return 0; }
  /// Point the node at its slices of the model's flat buffers.
  virtual void bind(S* params, S* grads, S* buffers) {
    (void)params;
    (void)grads;
    (void)buffers;
  }
  /// Default initialisation (PyTorch's defaults).
  virtual void init(Rng& rng) { (void)rng; }

  /// y = f(x) for a batch (x.rows() == input_shape().size()).
  virtual void forward(const Matrix<S>& x, Matrix<S>& y, ExecContext<S>& ctx) = 0;
  /// Given x, y = f(x) from the last forward and dy, accumulate parameter
  /// gradients and, if dx is not null, set dx = dL/dx.
  virtual void backward(const Matrix<S>& x, const Matrix<S>& y, const Matrix<S>& dy, Matrix<S>* dx,
                        ExecContext<S>& ctx) = 0;

  /// Costs of this node (composites: the whole subtree), and of its parts.
  virtual void costs(const std::string& path, std::vector<NodeCost>& out, bool recurse) const {
    (void)recurse;
    out.push_back(own_cost(path));
  }
  /// Named tensors (weight, bias, ...), prefixed by path.
  virtual void tensors(const std::string& path, std::vector<TensorRef<S>>& out) {
    (void)path;
    (void)out;
  }
  /// Architecture parameters for the model file (not the weights).
  virtual void save_config(ByteWriter& w) const = 0;

  /// Node label shown in reports (optional; defaults to the index path).
  std::string label;

 protected:
  NodeCost base_cost(const std::string& path) const {
    NodeCost c;
    c.name = label.empty() ? path : path + " (" + label + ")";
    c.type = type_name();
    c.in = in_;
    c.out = out_;
    c.params = param_count();
    c.buffers = buffer_count();
    c.weight_bytes = (c.params + c.buffers) * static_cast<Index>(sizeof(S));
    c.act_in_bytes = in_.size() * static_cast<Index>(sizeof(S));
    c.act_out_bytes = out_.size() * static_cast<Index>(sizeof(S));
    return c;
  }
  virtual NodeCost own_cost(const std::string& path) const { return base_cost(path); }

  Shape in_{}, out_{};
};

template <class S>
using NodePtr = std::unique_ptr<Node<S>>;

/// Architecture record of one node: kind, label, then its own config.
/// The reader is nn::read_node in serialize.hpp.
template <class S>
void write_node(ByteWriter& w, const Node<S>& n) {
  w.u16(static_cast<std::uint16_t>(n.kind()));
  w.str(n.label);
  n.save_config(w);
}

}  // namespace fleetdl::nn
