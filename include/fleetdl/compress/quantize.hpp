// fleetdl/compress/quantize.hpp — int8 post-training quantization of a float
// nn::Model into a micro runtime blob (micro/blob.hpp), and helpers that run
// and evaluate the blob on the host through micro::Interpreter.
//
//   calibrate(model, images, batch, options, pool)   per-tensor activation ranges
//   quantize_model(model, calibration, options)      -> QuantizedModel (blob + report)
//   QuantizedRunner                                  float CHW columns in, float out
//   evaluate_int8(qmodel, images, labels)            accuracy, arena bytes, latency
//
// Conventions (TFLite post-training integer quantization; the arithmetic facts
// are in shared/REFERENCES.md §3):
//   * Weights: symmetric int8 in [-127, 127], zero point 0, one scale per
//     output channel: s_w[c] = max_k |w[c,k]| / 127, q = round(w / s_w[c])
//     (half away from zero, in double). A channel whose weights are all zero
//     gets s_w[c] = 1 (TFLite's choice: any positive scale represents zeros
//     exactly, and 1 keeps the bias scale s_in * s_w[c] far from underflow).
//   * Bias: int32, scale s_in * s_w[c] (the float scales widened to double),
//     zero point 0, q = round(b / (s_in * s_w[c])). A bias that does not fit in
//     int32 is an error naming the node and channel (nothing is clamped
//     silently, no blob is returned).
//   * Activations: asymmetric int8 per tensor from a calibrated range [min, max]
//     that always contains 0 (min <= 0 <= max, as TFLite requires so that 0 —
//     padding, ReLU — is exact): scale = (max - min) / 255,
//     zero point = clamp(round(-128 - min / scale), -128, 127). A degenerate
//     range (max - min < 1e-6, e.g. a tensor that is always 0) is widened to
//     [min, min + 1] so that the scale stays positive and later bias scales do
//     not explode.
//   * BatchNorm is folded into the conv / dense before it (nn/fold.hpp); a
//     following ReLU / ReLU6 (Dropout is skipped) becomes the op's fused clamp,
//     and the op's output range is the range calibrated after the last fused
//     node. ReLUs after a pool or a Residual are fused into that op the same way.
//   * Pools, global average pooling and reshape keep their input's scale and
//     zero point (the micro kernels, like TFLM's, require it). Concat gives every
//     branch output the concat's own range: a branch ending in a conv / dense /
//     add is simply given those output params; otherwise an identity 1x1
//     depthwise conv (weight 127 at scale 1/127) requantizes it.
//   * Softmax: only as the last top-level node (int8 output, scale 1/256,
//     zero point -128). fleetdl models normally end with logits, and then the
//     blob outputs int8 logits (argmax is unchanged by dequantization).
//   * Requantization is not computed here: the blob stores scales and the
//     interpreter derives the multipliers exactly as TFLM (micro/quant.hpp).
//
// Layouts: an nn model sample is CHW, one column per sample (core/tensor.hpp);
// the micro runtime is NHWC. The converter writes conv weights as OHWI
// (from PyTorch's OIHW), depthwise weights as 1HWO, and quantizes the input
// CHW -> HWC. A Dense that reads a C x H x W tensor (directly or after
// Flatten) gets its weight columns permuted from CHW flatten order to HWC
// flatten order, column (h W + w) C + c = old column c H W + h W + w. Outputs
// are mapped back to CHW order by the runner.
//
// Calibration ranges are keyed by the node path in the ORIGINAL model ("3",
// "5.body.1", "2.branch0.0"), the same path the error messages use; the
// calibration also records each node's type and output shape so that
// quantize_model refuses a calibration taken on another model.
//
// Supported nodes: Conv2D (groups 1, or depthwise: groups == in_channels; any
// stride and dilation; padding 0 or TFLite-SAME-compatible), Dense, BatchNorm
// (folded), ReLU, ReLU6, Dropout (skipped), MaxPool2D, AvgPool2D (padding 0),
// GlobalAvgPool, Flatten, Sequential, Residual, Concat, a final Softmax.
// Anything else (sigmoid, tanh, a BatchNorm not after a conv/dense, a ReLU
// with nothing to fuse into, ...) is refused with Errc::unsupported naming the
// node.
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/core/parallel.hpp"
#include "fleetdl/core/tensor.hpp"
#include "fleetdl/micro/blob_writer.hpp"
#include "fleetdl/micro/interpreter.hpp"
#include "fleetdl/micro/planner.hpp"
#include "fleetdl/micro/verifier.hpp"
#include "fleetdl/nn/fold.hpp"
#include "fleetdl/nn/model.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace fleetdl::compress {

// ---------------------------------------------------------------------------
// Calibration.

/// A real-valued range [min, max] (after calibrate(): min <= 0 <= max, max > min).
struct Range {
  float min = 0.0f;
  float max = 0.0f;
};

enum class CalibrationMethod : std::uint8_t {
  minmax,      ///< the smallest and largest value seen
  percentile,  ///< the (100 - p)-th and p-th percentiles of all values seen
};

struct CalibrationOptions {
  CalibrationMethod method = CalibrationMethod::minmax;
  /// p for CalibrationMethod::percentile, in (50, 100]; e.g. 99.99.
  double percentile = 99.99;
  /// Histogram bins per tensor for the percentile method (a second pass over
  /// the data fills them between the first pass's min and max; the result is
  /// the outer edge of the bin holding the percentile, so it is off by at most
  /// (max - min) / bins and never clips more than asked).
  int bins = 8192;
};

/// One quantization point: a node output (or the model input).
struct CalibrationEntry {
  std::string type;  ///< node type ("conv2d", "relu", ...), "input" for the model input
  Shape shape;       ///< per-sample shape of the value
  Range range;       ///< contains 0, max > min
  Range observed;    ///< the raw range before including 0 / widening
};

/// Activation ranges of a model, by node path ("" is the model input).
struct Calibration {
  Shape input;
  Index samples = 0;
  CalibrationMethod method = CalibrationMethod::minmax;
  std::map<std::string, CalibrationEntry> entries;

  const CalibrationEntry* find(const std::string& path) const {
    auto it = entries.find(path);
    return it == entries.end() ? nullptr : &it->second;
  }
  const Range& input_range() const { return entries.at("").range; }
};

namespace detail {

inline std::string node_name(const std::string& path, const nn::Node<float>& n) {
  std::string s = "node " + path + " (" + n.type_name();
  if (!n.label.empty()) s += " '" + n.label + "'";
  return s + ")";
}

/// Widen a raw range to contain 0 and have a positive width (see the header).
inline Range normalize_range(float lo, float hi) {
  Range r{std::min(lo, 0.0f), std::max(hi, 0.0f)};
  if (!(static_cast<double>(r.max) - static_cast<double>(r.min) >= 1e-6)) r.max = r.min + 1.0f;
  return r;
}

/// Walks a float model node by node (recursing into composites itself) and
/// hands every node output, with its path, to a recorder. Eval mode.
template <class Rec>
class CalibrationWalker {
 public:
  CalibrationWalker(nn::ExecContext<float>& ctx, Rec& rec) : ctx_(ctx), rec_(rec) {}

  bool run_seq(nn::Sequential<float>& seq, const Matrix<float>& x, Matrix<float>& y, const std::string& prefix) {
    if (seq.size() == 0) {
      y = x;
      return true;
    }
    Matrix<float> bufs[2];
    const Matrix<float>* in = &x;
    for (Index i = 0; i < seq.size(); ++i) {
      Matrix<float>& out = i + 1 == seq.size() ? y : bufs[i & 1];
      if (!run_node(seq.at(i), *in, out, prefix + std::to_string(i))) return false;
      in = &out;
    }
    return true;
  }

 private:
  bool run_node(nn::Node<float>& n, const Matrix<float>& x, Matrix<float>& y, const std::string& path) {
    switch (n.kind()) {
      case nn::NodeKind::sequential:
        if (!run_seq(static_cast<nn::Sequential<float>&>(n), x, y, path + ".")) return false;
        break;
      case nn::NodeKind::residual: {
        auto& r = static_cast<nn::Residual<float>&>(n);
        if (!run_seq(r.body(), x, y, path + ".body.")) return false;
        if (r.projection()) {
          Matrix<float> s;
          if (!run_seq(*r.projection(), x, s, path + ".proj.")) return false;
          y += s;
        } else {
          y += x;
        }
        break;
      }
      case nn::NodeKind::concat: {
        auto& c = static_cast<nn::Concat<float>&>(n);
        std::vector<Matrix<float>> outs(static_cast<std::size_t>(c.size()));
        Index rows = 0;
        for (Index b = 0; b < c.size(); ++b) {
          if (!run_seq(c.branch(b), x, outs[static_cast<std::size_t>(b)], path + ".branch" + std::to_string(b) + "."))
            return false;
          rows += outs[static_cast<std::size_t>(b)].rows();
        }
        // CHW per sample: joining along channels stacks the rows.
        y.resize(rows, x.cols());
        Index off = 0;
        for (const auto& o : outs) {
          y.middleRows(off, o.rows()) = o;
          off += o.rows();
        }
        break;
      }
      default: n.forward(x, y, ctx_);
    }
    return rec_(path, n, y);
  }

  nn::ExecContext<float>& ctx_;
  Rec& rec_;
};

struct Histogram {
  float lo = 0, hi = 0;
  std::vector<std::uint64_t> counts;
  std::uint64_t total = 0;

  void add(const float* v, Index n) {
    const double width = static_cast<double>(hi) - static_cast<double>(lo);
    const double k = width > 0 ? static_cast<double>(counts.size()) / width : 0.0;
    const std::size_t last = counts.size() - 1;
    for (Index i = 0; i < n; ++i) {
      double b = (static_cast<double>(v[i]) - lo) * k;
      std::size_t bi = b <= 0 ? 0 : (b >= static_cast<double>(last) ? last : static_cast<std::size_t>(b));
      ++counts[bi];
    }
    total += static_cast<std::uint64_t>(n);
  }
  // Value at percentile q in [0, 100]: the rank ceil(q/100 * total) (1-based),
  // reported as the upper edge of its bin (q >= 50) or the lower edge (q < 50).
  float at(double q) const {
    const double width = (static_cast<double>(hi) - static_cast<double>(lo)) / static_cast<double>(counts.size());
    if (total == 0 || width <= 0) return q >= 50 ? hi : lo;
    std::uint64_t rank = static_cast<std::uint64_t>(std::ceil(q / 100.0 * static_cast<double>(total)));
    rank = std::clamp<std::uint64_t>(rank, 1, total);
    std::uint64_t cum = 0;
    for (std::size_t b = 0; b < counts.size(); ++b) {
      cum += counts[b];
      if (cum >= rank) {
        const double edge = static_cast<double>(lo) + width * static_cast<double>(q >= 50 ? b + 1 : b);
        return static_cast<float>(std::clamp(edge, static_cast<double>(lo), static_cast<double>(hi)));
      }
    }
    return hi;
  }
};

}  // namespace detail

/// Run `images` (one CHW sample per column, model.input_shape().size() rows)
/// through the float model in eval mode, `batch` columns at a time, and record
/// the range of the model input and of every node output. Refused before any
/// op runs: a wrong row count, no images, batch <= 0, a non-finite pixel, a
/// percentile outside (50, 100], bins < 16. A non-finite activation (the model
/// overflows) is an error too.
inline Result<Calibration> calibrate(const nn::Model<float>& model, const Matrix<float>& images, Index batch = 256,
                                     const CalibrationOptions& o = {}, ThreadPool* pool = nullptr) {
  const Shape in = model.input_shape();
  if (images.rows() != in.size())
    return make_error(Errc::shape_mismatch, "calibrate: images have " + std::to_string(images.rows()) +
                                                " rows per sample, the model input " + in.str() + " needs " +
                                                std::to_string(in.size()));
  if (images.cols() == 0) return make_error(Errc::invalid_argument, "calibrate: the calibration set is empty");
  if (batch <= 0) return make_error(Errc::invalid_argument, "calibrate: batch must be > 0, got " + std::to_string(batch));
  if (o.method == CalibrationMethod::percentile && !(o.percentile > 50.0 && o.percentile <= 100.0))
    return make_error(Errc::invalid_argument,
                      "calibrate: percentile must be in (50, 100], got " + std::to_string(o.percentile));
  if (o.method == CalibrationMethod::percentile && o.bins < 16)
    return make_error(Errc::invalid_argument, "calibrate: bins must be >= 16, got " + std::to_string(o.bins));
  for (Index j = 0; j < images.cols(); ++j) {
    if (images.col(j).allFinite()) continue;
    Index r = 0;
    while (r < images.rows() && std::isfinite(images(r, j))) ++r;
    return make_error(Errc::invalid_argument, "calibrate: image " + std::to_string(j) + " has a non-finite value (" +
                                                  std::to_string(images(r, j)) + ") at row " + std::to_string(r));
  }

  nn::Model<float> m = model;  // forward() needs mutable nodes and scratch
  nn::ExecContext<float> ctx{pool, false, nullptr};
  Calibration cal;
  cal.input = in;
  cal.samples = images.cols();
  cal.method = o.method;
  Error failure;

  // Pass 1: min / max of every value (and the types / shapes).
  auto minmax = [&](const std::string& path, const nn::Node<float>& n, const Matrix<float>& y) -> bool {
    if (!y.allFinite()) {
      failure = make_error(Errc::invalid_argument,
                           "calibrate: " + detail::node_name(path, n) + " produced a non-finite value");
      return false;
    }
    auto [it, fresh] = cal.entries.try_emplace(path);
    CalibrationEntry& e = it->second;
    const float lo = y.size() ? y.minCoeff() : 0.0f, hi = y.size() ? y.maxCoeff() : 0.0f;
    if (fresh) {
      e.type = n.type_name();
      e.shape = n.output_shape();
      e.observed = Range{lo, hi};
    } else {
      e.observed.min = std::min(e.observed.min, lo);
      e.observed.max = std::max(e.observed.max, hi);
    }
    return true;
  };
  {
    CalibrationEntry e;
    e.type = "input";
    e.shape = in;
    e.observed = Range{images.minCoeff(), images.maxCoeff()};
    cal.entries[""] = e;
  }
  detail::CalibrationWalker<decltype(minmax)> walk1(ctx, minmax);
  Matrix<float> xb, yb;
  for (Index b = 0; b < images.cols(); b += batch) {
    xb = images.middleCols(b, std::min(batch, images.cols() - b));
    if (!walk1.run_seq(m.chain(), xb, yb, "")) return failure;
  }

  if (o.method == CalibrationMethod::minmax) {
    for (auto& [path, e] : cal.entries) e.range = detail::normalize_range(e.observed.min, e.observed.max);
    return cal;
  }

  // Pass 2: histograms between the pass-1 bounds, then the percentiles.
  std::map<std::string, detail::Histogram> hist;
  for (const auto& [path, e] : cal.entries) {
    detail::Histogram& h = hist[path];
    h.lo = e.observed.min;
    h.hi = e.observed.max;
    h.counts.assign(static_cast<std::size_t>(o.bins), 0);
  }
  auto fill = [&](const std::string& path, const nn::Node<float>&, const Matrix<float>& y) -> bool {
    hist.at(path).add(y.data(), y.size());
    return true;
  };
  hist.at("").add(images.data(), images.size());
  detail::CalibrationWalker<decltype(fill)> walk2(ctx, fill);
  for (Index b = 0; b < images.cols(); b += batch) {
    xb = images.middleCols(b, std::min(batch, images.cols() - b));
    walk2.run_seq(m.chain(), xb, yb, "");
  }
  for (auto& [path, e] : cal.entries) {
    const detail::Histogram& h = hist.at(path);
    e.range = detail::normalize_range(h.at(100.0 - o.percentile), h.at(o.percentile));
  }
  return cal;
}

// ---------------------------------------------------------------------------
// Quantization.

/// Scale and zero point of an int8 tensor: real = scale * (q - zero_point).
struct QuantParams {
  float scale = 1.0f;
  std::int32_t zero_point = 0;
};

/// Asymmetric int8 parameters of a range that contains 0 (see the header).
inline QuantParams choose_quant_params(const Range& r) {
  QuantParams q;
  q.scale = static_cast<float>((static_cast<double>(r.max) - static_cast<double>(r.min)) / 255.0);
  const double zp = -128.0 - static_cast<double>(r.min) / static_cast<double>(q.scale);
  q.zero_point = static_cast<std::int32_t>(std::clamp(std::round(zp), -128.0, 127.0));
  return q;
}

/// Per-output-channel symmetric int8 weights: `channels` rows of `per`
/// contiguous values. scales[c] = max|w[c]| / 127 (1 for an all-zero channel);
/// q = round(w / scale) half away from zero, clamped to [-127, 127].
struct ChannelQuantized {
  std::vector<std::int8_t> values;
  std::vector<float> scales;
};
inline ChannelQuantized quantize_per_channel(const float* w, Index channels, Index per) {
  ChannelQuantized r;
  r.values.resize(static_cast<std::size_t>(channels * per));
  r.scales.resize(static_cast<std::size_t>(channels));
  for (Index c = 0; c < channels; ++c) {
    float mx = 0.0f;
    for (Index k = 0; k < per; ++k) mx = std::max(mx, std::fabs(w[c * per + k]));
    const float s = mx > 0.0f ? mx / 127.0f : 1.0f;
    r.scales[static_cast<std::size_t>(c)] = s;
    for (Index k = 0; k < per; ++k) {
      const double q = std::round(static_cast<double>(w[c * per + k]) / static_cast<double>(s));
      r.values[static_cast<std::size_t>(c * per + k)] = static_cast<std::int8_t>(std::clamp(q, -127.0, 127.0));
    }
  }
  return r;
}

/// Tensors smaller than this keep per-channel scales even when clustered:
/// one scale would save them a few bytes and cost per-channel precision.
inline constexpr Index per_tensor_min_weights = 1024;

/// Does w[0..n) look clustered, and does one scale `s` keep its levels? True
/// when it has at least per_tensor_min_weights weights taking at most 256
/// distinct values, each shared by at least 4 weights on average (a layer
/// that was never clustered has nearly all values distinct), and round(v / s)
/// maps the distinct non-zero values to distinct non-zero int8 levels (no two
/// centroids merge, none becomes 0).
inline bool clustered_levels_kept(const float* w, Index n, float s) {
  if (n < per_tensor_min_weights) return false;
  std::vector<float> seen;
  for (Index i = 0; i < n; ++i) {
    if (std::find(seen.begin(), seen.end(), w[i]) != seen.end()) continue;
    seen.push_back(w[i]);
    if (seen.size() > 256) return false;
  }
  if (static_cast<Index>(seen.size()) * 4 > n) return false;
  std::vector<long> levels;
  for (float v : seen)
    if (v != 0.0f) levels.push_back(std::lround(std::clamp(static_cast<double>(v) / s, -127.0, 127.0)));
  std::sort(levels.begin(), levels.end());
  return std::adjacent_find(levels.begin(), levels.end()) == levels.end() &&
         !std::binary_search(levels.begin(), levels.end(), 0L);
}

/// One symmetric scale for the whole tensor: max|w| / 127 (1 if all zero),
/// repeated per channel so the result has quantize_per_channel's shape.
inline ChannelQuantized quantize_per_tensor(const float* w, Index channels, Index per) {
  float mx = 0.0f;
  for (Index i = 0; i < channels * per; ++i) mx = std::max(mx, std::fabs(w[i]));
  const float s = mx > 0.0f ? mx / 127.0f : 1.0f;
  ChannelQuantized r;
  r.values.resize(static_cast<std::size_t>(channels * per));
  r.scales.assign(static_cast<std::size_t>(channels), s);
  for (Index i = 0; i < channels * per; ++i) {
    const double q = std::round(static_cast<double>(w[i]) / static_cast<double>(s));
    r.values[static_cast<std::size_t>(i)] = static_cast<std::int8_t>(std::clamp(q, -127.0, 127.0));
  }
  return r;
}

struct QuantizeOptions {
  /// Keep a final Softmax node as an int8 softmax op (true) or drop it so the
  /// blob outputs int8 logits (false).
  bool keep_softmax = true;
  /// Store each conv2d / dense weight tensor with the micro blob's zero-run
  /// Huffman encoding (micro/weight_codec.hpp) when that is smaller than raw
  /// int8. Pays off after pruning or clustering; the interpreter then decodes
  /// one output channel at a time (a little slower, one row of arena).
  bool encode_weights = false;
  /// A conv2d / dense that looks clustered (compress/cluster.hpp) gets one
  /// scale for the whole tensor instead of one per channel, so its K shared
  /// values stay K int8 levels (which the encoding above then codes in about
  /// log2 K bits) and no per-channel scale table is stored. "Looks
  /// clustered" is clustered_levels_kept(): at least 1,024 weights, at most
  /// 256 distinct values (after BatchNorm folding), 4 per value on average, and one scale
  /// maps them to distinct non-zero levels; otherwise the layer stays per
  /// channel. Depthwise filters always stay per channel.
  bool per_tensor_clustered = false;
};

/// What one op of the blob came from and how it is quantized.
struct QuantizedOp {
  std::string nodes;             ///< original node paths merged into the op, e.g. "0+1+2"
  std::string types;             ///< their types, e.g. "conv2d+batchnorm+relu6"
  std::string op;                ///< micro op name ("conv2d", "fully_connected", ...)
  micro::Activation activation = micro::Activation::none;
  QuantParams input, output;     ///< first input and the output
  std::vector<float> weight_scales;  ///< per output channel (weighted ops)
  Index weight_bytes = 0;        ///< int8 weights (raw or encoded) + int32 bias + float scales stored
  bool encoded = false;          ///< the weights use the zero-run Huffman encoding
  bool per_tensor = false;       ///< one weight scale for the tensor (per_tensor_clustered)
};

struct QuantizedModel {
  std::vector<std::uint8_t> blob;  ///< the micro blob (verified)
  Shape input_shape;               ///< float model input, CHW
  Shape output_shape;              ///< float model output, CHW
  /// The CHW shape whose HWC order the output bytes follow (differs from
  /// output_shape when the output is a flattened C x H x W tensor).
  Shape output_layout;
  QuantParams input, output;
  bool softmax_output = false;     ///< the blob ends with softmax (else int8 logits / features)
  std::vector<QuantizedOp> ops;
  Index weight_bytes = 0;          ///< sum over ops
  std::uint64_t arena_bytes = 0;   ///< micro::plan_arena_bytes(blob).plan.total
};

namespace detail {

/// A value of the int8 graph under construction.
struct QVal {
  std::uint16_t id = micro::kNoTensor;
  Shape shape;        ///< nn (CHW) shape
  Shape layout;       ///< CHW shape whose HWC order the bytes follow
  QuantParams q;
  int producer = -1;  ///< index into ops of the op that wrote it (-1: model input)
  bool requantizing = false;  ///< written by conv / dense / add (output params free)
};

inline bool is_act_kind(nn::NodeKind k) { return k == nn::NodeKind::relu || k == nn::NodeKind::relu6; }

inline micro::Activation combine(micro::Activation a, nn::NodeKind k) {
  if (k == nn::NodeKind::relu6 || a == micro::Activation::relu6) return micro::Activation::relu6;
  return micro::Activation::relu;
}

inline micro::Shape4 nhwc(const Shape& s) {
  return micro::Shape4{1, static_cast<std::int32_t>(s.h), static_cast<std::int32_t>(s.w), static_cast<std::int32_t>(s.c)};
}

class Converter {
 public:
  Converter(const Calibration& cal, const QuantizeOptions& o) : cal_(cal), o_(o) {}

  micro::BlobWriter w;
  std::vector<QuantizedOp> ops;
  Error error;

  const CalibrationEntry* entry(const std::string& path, const nn::Node<float>& n) {
    const CalibrationEntry* e = cal_.find(path);
    if (e == nullptr) {
      error = make_error(Errc::invalid_argument, "quantize: the calibration has no range for " + node_name(path, n) +
                                                     " (calibrated on a different model?)");
      return nullptr;
    }
    if (e->type != n.type_name() || e->shape != n.output_shape()) {
      error = make_error(Errc::invalid_argument, "quantize: the calibration was taken on a different model: " +
                                                     node_name(path, n) + " with output " + n.output_shape().str() +
                                                     " is '" + e->type + "' " + e->shape.str() + " there");
      return nullptr;
    }
    return e;
  }

  QVal activation(const Shape& shape, const Shape& layout, const QuantParams& q) {
    QVal v;
    v.shape = shape;
    v.layout = layout;
    v.q = q;
    v.id = w.activation(nhwc(shape), q.scale, q.zero_point);  // a flat {F,1,1} is {1,1,1,F}
    return v;
  }

  bool unsupported(const std::string& path, const nn::Node<float>& n, const std::string& why) {
    error = make_error(Errc::unsupported, "quantize: unsupported node: " + node_name(path, n) + ": " + why);
    return false;
  }

  /// Emit the ops of `orig` (original chain) and `fold` (its BN-folded twin).
  /// `top` marks the top-level chain (where a final softmax is allowed).
  bool seq(const nn::Sequential<float>& orig, const nn::Sequential<float>& fold, QVal x, QVal& y,
           const std::string& prefix, bool top) {
    // Index in `fold` of each original node: minus the BatchNorms folded before it.
    std::vector<Index> folded_index(static_cast<std::size_t>(orig.size()));
    for (Index i = 0, skipped = 0; i < orig.size(); ++i) {
      if (i > 0 && nn::detail::foldable(orig.at(i - 1), orig.at(i))) ++skipped;
      folded_index[static_cast<std::size_t>(i)] = i - skipped;
    }
    for (Index i = 0; i < orig.size(); ++i) {
      const nn::Node<float>& n = orig.at(i);
      const Index j = folded_index[static_cast<std::size_t>(i)];
      const std::string path = prefix + std::to_string(i);
      const nn::NodeKind k = n.kind();
      // Nodes fused into this op: a folded BatchNorm, then ReLU / ReLU6 / Dropout.
      auto fuse = [&](bool allow_bn, micro::Activation& act, std::string& out_path, std::string& names,
                      std::string& types) {
        Index e = i + 1;
        if (allow_bn && e < orig.size() && nn::detail::foldable(n, orig.at(e))) {
          out_path = prefix + std::to_string(e);
          names += "+" + out_path;
          types += std::string("+") + orig.at(e).type_name();
          ++e;
        }
        while (e < orig.size() && (is_act_kind(orig.at(e).kind()) || orig.at(e).kind() == nn::NodeKind::dropout)) {
          if (orig.at(e).kind() != nn::NodeKind::dropout) {
            act = combine(act, orig.at(e).kind());
            out_path = prefix + std::to_string(e);
            names += "+" + out_path;
            types += std::string("+") + orig.at(e).type_name();
          }
          ++e;
        }
        return e - 1;  // last fused original index
      };
      switch (k) {
        case nn::NodeKind::dropout: break;
        case nn::NodeKind::conv2d:
        case nn::NodeKind::dense: {
          micro::Activation act = micro::Activation::none;
          std::string out_path = path, names = path, types = n.type_name();
          const Index last = fuse(true, act, out_path, names, types);
          const CalibrationEntry* e = entry(out_path, orig.at(last));
          if (!e) return false;
          const bool ok = k == nn::NodeKind::conv2d
                              ? conv(static_cast<const nn::Conv2D<float>&>(fold.at(j)), path, n, x, *e, act, y)
                              : dense(static_cast<const nn::Dense<float>&>(fold.at(j)), path, n, x, *e, act, y);
          if (!ok) return false;
          ops.back().nodes = names;
          ops.back().types = types;
          i = last;
          x = y;
          break;
        }
        case nn::NodeKind::maxpool2d:
        case nn::NodeKind::avgpool2d:
        case nn::NodeKind::global_avg_pool: {
          micro::Activation act = micro::Activation::none;
          std::string out_path = path, names = path, types = n.type_name();
          const Index last = fuse(false, act, out_path, names, types);
          if (!pool(n, path, x, act, y)) return false;
          ops.back().nodes = names;
          ops.back().types = types;
          i = last;
          x = y;
          break;
        }
        case nn::NodeKind::flatten: {
          QVal r = x;
          r.shape = n.output_shape();
          r.id = w.activation(micro::Shape4{1, 1, 1, static_cast<std::int32_t>(x.shape.size())}, x.q.scale, x.q.zero_point);
          r.producer = static_cast<int>(ops.size());
          r.requantizing = false;
          w.reshape(x.id, r.id);
          QuantizedOp op;
          op.nodes = path;
          op.types = n.type_name();
          op.op = "reshape";
          op.input = op.output = x.q;
          ops.push_back(op);
          x = y = r;
          break;
        }
        case nn::NodeKind::sequential: {
          if (!seq(static_cast<const nn::Sequential<float>&>(n), static_cast<const nn::Sequential<float>&>(fold.at(j)),
                   x, y, path + ".", false))
            return false;
          x = y;
          break;
        }
        case nn::NodeKind::residual: {
          const auto& ro = static_cast<const nn::Residual<float>&>(n);
          const auto& rf = static_cast<const nn::Residual<float>&>(fold.at(j));
          QVal a, b = x;
          if (!seq(ro.body(), rf.body(), x, a, path + ".body.", false)) return false;
          if (ro.projection() && !seq(*ro.projection(), *rf.projection(), x, b, path + ".proj.", false)) return false;
          if (a.layout != b.layout)
            return unsupported(path, n, "the body and the shortcut have different memory layouts (a Flatten in one of them)");
          micro::Activation act = micro::Activation::none;
          std::string out_path = path, names = path, types = n.type_name();
          const Index last = fuse(false, act, out_path, names, types);
          const CalibrationEntry* e = entry(out_path, orig.at(last));
          if (!e) return false;
          QVal r = activation(a.shape, a.layout, choose_quant_params(e->range));
          r.producer = static_cast<int>(ops.size());
          r.requantizing = true;
          w.add(a.id, b.id, r.id, act);
          QuantizedOp op;
          op.nodes = names;
          op.types = types;
          op.op = "add";
          op.activation = act;
          op.input = a.q;
          op.output = r.q;
          ops.push_back(op);
          i = last;
          x = y = r;
          break;
        }
        case nn::NodeKind::concat: {
          if (!concat(static_cast<const nn::Concat<float>&>(n), static_cast<const nn::Concat<float>&>(fold.at(j)), path,
                      x, y))
            return false;
          x = y;
          break;
        }
        case nn::NodeKind::softmax: {
          if (!top || i + 1 != orig.size())
            return unsupported(path, n, "softmax is only supported as the model's last node");
          if (!o_.keep_softmax) break;
          QuantParams q{micro::kSoftmaxOutputScale, micro::kSoftmaxOutputZeroPoint};
          QVal r = x;
          r.q = q;
          r.id = w.activation(w.tensor(x.id).desc.shape, q.scale, q.zero_point);
          r.producer = static_cast<int>(ops.size());
          r.requantizing = false;
          w.softmax(x.id, r.id);
          QuantizedOp op;
          op.nodes = path;
          op.types = n.type_name();
          op.op = "softmax";
          op.input = x.q;
          op.output = q;
          ops.push_back(op);
          softmax_ = true;
          x = y = r;
          break;
        }
        case nn::NodeKind::relu:
        case nn::NodeKind::relu6:
          return unsupported(path, n, "a ReLU is fused into the conv2d / dense / pool / residual before it, and there is none");
        case nn::NodeKind::batchnorm:
          return unsupported(path, n, "BatchNorm is folded into a conv2d / dense directly before it, and there is none");
        default:
          return unsupported(path, n, "no int8 op for this layer type");
      }
      y = x;
    }
    y = x;
    return true;
  }

  bool softmax_output() const { return softmax_; }

 private:
  static std::string shape2(Index h, Index w) { return std::to_string(h) + "x" + std::to_string(w); }

  /// SAME / VALID padding reproducing an nn layer's explicit symmetric padding.
  bool window_padding(const std::string& path, const nn::Node<float>& n, Index kh, Index kw, Index sh, Index sw,
                      Index dh, Index dw, Index ph, Index pw, micro::Padding& pad) {
    const Shape& in = n.input_shape();
    const Shape& out = n.output_shape();
    const auto i32 = [](Index v) { return static_cast<std::int32_t>(v); };
    if (ph == 0 && pw == 0) {
      const auto g = micro::window_geometry(micro::Padding::valid, i32(in.h), i32(in.w), i32(kh), i32(kw), i32(sh),
                                            i32(sw), i32(dh), i32(dw));
      if (g.ok && g.out_h == out.h && g.out_w == out.w) {
        pad = micro::Padding::valid;
        return true;
      }
    } else {
      const auto g = micro::window_geometry(micro::Padding::same, i32(in.h), i32(in.w), i32(kh), i32(kw), i32(sh),
                                            i32(sw), i32(dh), i32(dw));
      if (g.ok && g.out_h == out.h && g.out_w == out.w && g.pad_h == ph && g.pad_w == pw) {
        pad = micro::Padding::same;
        return true;
      }
    }
    return unsupported(path, n, "padding " + shape2(ph, pw) + " with kernel " + shape2(kh, kw) + ", stride " +
                                    shape2(sh, sw) + " on " + shape2(in.h, in.w) +
                                    " is neither TFLite VALID nor SAME padding");
  }

  bool needs_spatial(const std::string& path, const nn::Node<float>& n, const QVal& x) {
    if (x.layout == x.shape) return true;
    return unsupported(path, n, "reads a flattened C x H x W tensor as an image");
  }

  /// int32 bias b / (s_in * s_w[c]); an error if it does not fit.
  bool bias_i32(const std::string& path, const nn::Node<float>& n, const float* b, Index co, float s_in,
                const std::vector<float>& sw, std::vector<std::int32_t>& out) {
    out.resize(static_cast<std::size_t>(co));
    for (Index c = 0; c < co; ++c) {
      const double s = static_cast<double>(s_in) * static_cast<double>(sw[static_cast<std::size_t>(c)]);
      const double q = std::round(static_cast<double>(b[c]) / s);
      if (!(q >= -2147483648.0 && q <= 2147483647.0)) {
        error = make_error(Errc::limit_exceeded,
                           "quantize: " + node_name(path, n) + ": bias of channel " + std::to_string(c) + " (" +
                               std::to_string(b[c]) + ") at scale s_in * s_w = " + std::to_string(s) +
                               " does not fit in int32 (" + std::to_string(q) + ")");
        return false;
      }
      out[static_cast<std::size_t>(c)] = static_cast<std::int32_t>(q);
    }
    return true;
  }

  bool finite_params(const std::string& path, const nn::Node<float>& n, const float* p, Index count) {
    for (Index k = 0; k < count; ++k)
      if (!std::isfinite(p[k])) {
        error = make_error(Errc::invalid_argument, "quantize: " + node_name(path, n) + ": parameter " +
                                                       std::to_string(k) + " is not finite");
        return false;
      }
    return true;
  }

  void finish_weighted(QuantizedOp& op, const QVal& x, const QVal& r, micro::Activation act,
                       const ChannelQuantized& cq, Index bias_count) {
    op.activation = act;
    op.input = x.q;
    op.output = r.q;
    op.weight_scales = cq.scales;
    op.per_tensor = last_per_tensor_;
    op.weight_bytes = static_cast<Index>(last_filter_bytes_) + 4 * bias_count +
                      (op.per_tensor ? 0 : 4 * static_cast<Index>(cq.scales.size()));
    op.encoded = last_filter_encoded_;
  }

  /// Per-channel weights, or one scale when the options allow it for a
  /// clustered tensor; records which for the filter / scales writers.
  ChannelQuantized quantize_weights(const float* wts, Index channels, Index per, bool allow_per_tensor) {
    last_per_tensor_ = false;
    if (allow_per_tensor && o_.per_tensor_clustered) {
      ChannelQuantized t = quantize_per_tensor(wts, channels, per);
      if (clustered_levels_kept(wts, channels * per, t.scales[0])) {
        last_per_tensor_ = true;
        return t;
      }
    }
    return quantize_per_channel(wts, channels, per);
  }
  /// The per-channel scale tensor, or none for a per-tensor filter (the
  /// filter's own scale then applies to every channel).
  std::uint16_t scale_tensor(const ChannelQuantized& cq, std::int32_t channels) {
    return last_per_tensor_ ? micro::kNoTensor : w.constant_float({1, 1, 1, channels}, cq.scales);
  }

  /// A conv2d / dense filter: encoded when the options ask for it and that is
  /// smaller, else raw int8. Records the stored size for finish_weighted.
  std::uint16_t filter(micro::Shape4 shape, const std::vector<std::int8_t>& values, float scale) {
    last_filter_bytes_ = values.size();
    last_filter_encoded_ = false;
    if (o_.encode_weights) {
      const std::vector<std::uint8_t> enc = micro::encode_weights(values);
      if (enc.size() < values.size()) {
        last_filter_bytes_ = enc.size();
        last_filter_encoded_ = true;
        return w.constant_int8_encoded_bytes(shape, scale, enc);
      }
    }
    return w.constant_int8(shape, scale, values);
  }

  bool conv(const nn::Conv2D<float>& f, const std::string& path, const nn::Node<float>& n, const QVal& x,
            const CalibrationEntry& e, micro::Activation act, QVal& y) {
    if (!needs_spatial(path, n, x)) return false;
    const nn::Conv2DOptions& o = f.options();
    const Index ci = o.in_channels, co = o.out_channels, kh = o.kernel_h, kw = o.kernel_w;
    const bool depthwise = o.groups > 1 && o.groups == ci;
    if (o.groups != 1 && !depthwise)
      return unsupported(path, n, "grouped convolution with " + std::to_string(o.groups) +
                                      " groups (only 1 or in_channels are supported)");
    const Index cin_g = ci / o.groups, per = cin_g * kh * kw;
    if (!finite_params(path, n, f.weights(), f.param_count())) return false;
    micro::Padding pad{};
    if (!window_padding(path, n, kh, kw, o.stride_h, o.stride_w, o.dilation_h, o.dilation_w, o.pad_h, o.pad_w, pad))
      return false;
    const ChannelQuantized cq = quantize_weights(f.weights(), co, per, !depthwise);
    // OIHW -> OHWI (regular) or -> 1HWO (depthwise: O = ci * multiplier).
    std::vector<std::int8_t> filt(cq.values.size());
    for (Index oc = 0; oc < co; ++oc)
      for (Index ic = 0; ic < cin_g; ++ic)
        for (Index ky = 0; ky < kh; ++ky)
          for (Index kx = 0; kx < kw; ++kx) {
            const std::int8_t v = cq.values[static_cast<std::size_t>(((oc * cin_g + ic) * kh + ky) * kw + kx)];
            const Index dst = depthwise ? (ky * kw + kx) * co + oc : ((oc * kh + ky) * kw + kx) * ci + ic;
            filt[static_cast<std::size_t>(dst)] = v;
          }
    std::vector<std::int32_t> bias;
    if (f.bias() && !bias_i32(path, n, f.bias(), co, x.q.scale, cq.scales, bias)) return false;
    const auto i32 = [](Index v) { return static_cast<std::int32_t>(v); };
    // Depthwise filters stay raw: the runtime decodes per output channel,
    // which a 1HWO layout does not store contiguously.
    if (depthwise) {
      last_filter_bytes_ = filt.size();
      last_filter_encoded_ = false;
    }
    const std::uint16_t kid = depthwise ? w.constant_int8({1, i32(kh), i32(kw), i32(co)}, 1.0f, filt)
                                        : filter({i32(co), i32(kh), i32(kw), i32(ci)}, filt, last_per_tensor_ ? cq.scales[0] : 1.0f);
    const std::uint16_t bid = f.bias() ? w.constant_int32({1, 1, 1, i32(co)}, bias) : micro::kNoTensor;
    const std::uint16_t sid = scale_tensor(cq, i32(co));
    QVal r = activation(n.output_shape(), n.output_shape(), choose_quant_params(e.range));
    r.producer = static_cast<int>(ops.size());
    r.requantizing = true;
    micro::ConvOptions co_opts;
    co_opts.padding = pad;
    co_opts.stride_h = i32(o.stride_h);
    co_opts.stride_w = i32(o.stride_w);
    co_opts.dilation_h = i32(o.dilation_h);
    co_opts.dilation_w = i32(o.dilation_w);
    co_opts.activation = act;
    QuantizedOp op;
    if (depthwise) {
      w.depthwise_conv2d(x.id, kid, bid, sid, r.id, i32(co / ci), co_opts);
      op.op = "depthwise_conv2d";
    } else {
      w.conv2d(x.id, kid, bid, sid, r.id, co_opts);
      op.op = "conv2d";
    }
    finish_weighted(op, x, r, act, cq, f.bias() ? co : 0);
    ops.push_back(op);
    y = r;
    return true;
  }

  bool dense(const nn::Dense<float>& f, const std::string& path, const nn::Node<float>& n, const QVal& x,
             const CalibrationEntry& e, micro::Activation act, QVal& y) {
    const Index in = f.in_features(), out = f.out_features();
    if (!finite_params(path, n, f.weight_t().data(), f.param_count())) return false;
    const ChannelQuantized cq = quantize_weights(f.weight_t().data(), out, in, true);  // W[out][in]
    // Column permutation CHW -> HWC of the layout the input bytes follow.
    const Shape L = x.layout;
    std::vector<std::int8_t> wq(cq.values.size());
    for (Index o = 0; o < out; ++o)
      for (Index c = 0; c < L.c; ++c)
        for (Index h = 0; h < L.h; ++h)
          for (Index ww = 0; ww < L.w; ++ww)
            wq[static_cast<std::size_t>(o * in + (h * L.w + ww) * L.c + c)] =
                cq.values[static_cast<std::size_t>(o * in + (c * L.h + h) * L.w + ww)];
    std::vector<std::int32_t> bias;
    if (f.bias() && !bias_i32(path, n, f.bias(), out, x.q.scale, cq.scales, bias)) return false;
    const auto i32 = [](Index v) { return static_cast<std::int32_t>(v); };
    const std::uint16_t kid = filter({i32(out), 1, 1, i32(in)}, wq, last_per_tensor_ ? cq.scales[0] : 1.0f);
    const std::uint16_t bid = f.bias() ? w.constant_int32({1, 1, 1, i32(out)}, bias) : micro::kNoTensor;
    const std::uint16_t sid = scale_tensor(cq, i32(out));
    QVal r = activation(n.output_shape(), n.output_shape(), choose_quant_params(e.range));
    r.producer = static_cast<int>(ops.size());
    r.requantizing = true;
    w.fully_connected(x.id, kid, bid, sid, r.id, act);
    QuantizedOp op;
    op.op = "fully_connected";
    finish_weighted(op, x, r, act, cq, f.bias() ? out : 0);
    ops.push_back(op);
    y = r;
    return true;
  }

  bool pool(const nn::Node<float>& n, const std::string& path, const QVal& x, micro::Activation act, QVal& y) {
    if (!needs_spatial(path, n, x)) return false;
    QVal r = x;
    r.shape = n.output_shape();
    r.layout = r.shape;
    r.id = w.activation(nhwc(r.shape), x.q.scale, x.q.zero_point);
    r.producer = static_cast<int>(ops.size());
    r.requantizing = false;
    QuantizedOp op;
    if (n.kind() == nn::NodeKind::global_avg_pool) {
      w.global_average_pool2d(x.id, r.id, act);
      op.op = "global_average_pool2d";
    } else {
      const auto& p = static_cast<const nn::Pool2D<float>&>(n);
      if (n.kind() == nn::NodeKind::avgpool2d && p.padding() != 0)
        return unsupported(path, n, "average pooling with padding counts the padded zeros (PyTorch "
                                    "count_include_pad) while the int8 kernel excludes them");
      micro::Padding pad{};
      if (!window_padding(path, n, p.kernel(), p.kernel(), p.stride(), p.stride(), 1, 1, p.padding(), p.padding(), pad))
        return false;
      micro::PoolOptions po;
      po.padding = pad;
      po.filter_h = po.filter_w = static_cast<std::int32_t>(p.kernel());
      po.stride_h = po.stride_w = static_cast<std::int32_t>(p.stride());
      po.activation = act;
      if (n.kind() == nn::NodeKind::maxpool2d) {
        w.max_pool2d(x.id, r.id, po);
        op.op = "max_pool2d";
      } else {
        w.average_pool2d(x.id, r.id, po);
        op.op = "average_pool2d";
      }
    }
    op.activation = act;
    op.input = op.output = x.q;
    ops.push_back(op);
    y = r;
    return true;
  }

  bool concat(const nn::Concat<float>& co, const nn::Concat<float>& cf, const std::string& path, const QVal& x,
              QVal& y) {
    if (co.size() > static_cast<Index>(micro::kMaxOpInputs))
      return unsupported(path, co, std::to_string(co.size()) + " branches (the int8 concatenation takes at most " +
                                       std::to_string(micro::kMaxOpInputs) + ")");
    const CalibrationEntry* e = entry(path, co);
    if (!e) return false;
    const QuantParams q = choose_quant_params(e->range);
    std::vector<QVal> outs;
    for (Index b = 0; b < co.size(); ++b) {
      QVal v;
      if (!seq(co.branch(b), cf.branch(b), x, v, path + ".branch" + std::to_string(b) + ".", false)) return false;
      if (v.layout != v.shape)
        return unsupported(path, co, "branch " + std::to_string(b) + " ends with a flattened C x H x W tensor");
      if (v.q.scale != q.scale || v.q.zero_point != q.zero_point) {
        if (v.requantizing && v.id != x.id && v.producer >= 0) {
          // Give the branch's last requantizing op the concat's output params.
          auto& d = w.tensor(v.id).desc;
          d.scale = q.scale;
          d.zero_point = q.zero_point;
          ops[static_cast<std::size_t>(v.producer)].output = q;
          v.q = q;
        } else {
          v = requantize(v, q, path + ".branch" + std::to_string(b));
        }
      }
      outs.push_back(v);
    }
    QVal r = activation(co.output_shape(), co.output_shape(), q);
    r.producer = static_cast<int>(ops.size());
    r.requantizing = false;
    micro::OpDesc d;
    d.code = static_cast<std::uint8_t>(micro::OpCode::concatenation);
    d.output = r.id;
    d.num_inputs = static_cast<std::uint8_t>(outs.size());
    d.param = 3;  // NHWC channels
    for (std::size_t k = 0; k < outs.size(); ++k) d.inputs[k] = outs[k].id;
    w.op(d);
    QuantizedOp op;
    op.nodes = path;
    op.types = co.type_name();
    op.op = "concatenation";
    op.input = op.output = q;
    ops.push_back(op);
    y = r;
    return true;
  }

  /// Identity 1x1 depthwise conv (int8 weight 127 at scale 1/127): moves a
  /// value to other quantization params with TFLM's requantization.
  QVal requantize(const QVal& v, const QuantParams& q, const std::string& where) {
    const auto c = static_cast<std::int32_t>(v.shape.c);
    const std::vector<std::int8_t> ones(static_cast<std::size_t>(c), 127);
    const std::vector<float> scales(static_cast<std::size_t>(c), 1.0f / 127.0f);
    const std::uint16_t kid = w.constant_int8({1, 1, 1, c}, 1.0f, ones);
    const std::uint16_t sid = w.constant_float({1, 1, 1, c}, scales);
    QVal r = activation(v.shape, v.layout, q);
    r.producer = static_cast<int>(ops.size());
    r.requantizing = true;
    w.depthwise_conv2d(v.id, kid, micro::kNoTensor, sid, r.id, 1, micro::ConvOptions{});
    QuantizedOp op;
    op.nodes = where;
    op.types = "requantize";
    op.op = "depthwise_conv2d";
    op.input = v.q;
    op.output = q;
    op.weight_scales = scales;
    op.weight_bytes = 5 * static_cast<Index>(c);
    ops.push_back(op);
    return r;
  }

  const Calibration& cal_;
  const QuantizeOptions& o_;
  std::size_t last_filter_bytes_ = 0;
  bool last_per_tensor_ = false;
  bool last_filter_encoded_ = false;
  bool softmax_ = false;
};

}  // namespace detail

/// Quantize a float model to an int8 micro blob using calibrated activation
/// ranges (see the header for every convention). Either the whole blob, or an
/// error naming the node: unsupported node, bias overflow, non-finite
/// parameter, a calibration of another model.
inline Result<QuantizedModel> quantize_model(const nn::Model<float>& model, const Calibration& cal,
                                             const QuantizeOptions& o = {}) {
  if (cal.input != model.input_shape())
    return make_error(Errc::shape_mismatch, "quantize: calibrated for input " + cal.input.str() +
                                                ", the model takes " + model.input_shape().str());
  const CalibrationEntry* in_entry = cal.find("");
  if (in_entry == nullptr) return make_error(Errc::invalid_argument, "quantize: the calibration has no input range");
  if (model.size() == 0) return make_error(Errc::invalid_argument, "quantize: the model has no nodes");
  auto folded = nn::fold_batchnorm(model);
  if (!folded) return std::move(folded).error();

  detail::Converter cv(cal, o);
  detail::QVal x;
  x.q = choose_quant_params(in_entry->range);
  x.shape = x.layout = model.input_shape();
  x.id = cv.w.activation(detail::nhwc(x.shape), x.q.scale, x.q.zero_point);
  detail::QVal y;
  if (!cv.seq(model.chain(), folded->chain(), x, y, "", true)) return cv.error;
  if (cv.ops.empty() || y.id == x.id)
    return make_error(Errc::unsupported, "quantize: the model has no int8 op (only Dropout / no-op nodes)");
  cv.w.inputs({x.id});
  cv.w.outputs({y.id});

  QuantizedModel qm;
  qm.blob = cv.w.finish();
  // The verifier wants the blob 16-byte aligned; check a copy that is.
  std::vector<std::uint64_t> aligned((qm.blob.size() + 15) / 8 + 2);
  auto* base = reinterpret_cast<std::uint8_t*>(aligned.data());
  base += (16 - reinterpret_cast<std::uintptr_t>(base) % 16) % 16;
  std::memcpy(base, qm.blob.data(), qm.blob.size());
  const micro::PlanResult plan = micro::plan_arena_bytes(base, qm.blob.size());
  if (!plan)
    return make_error(Errc::corrupt, std::string("quantize: the blob failed verification: ") + plan.status.message +
                                         " (index " + std::to_string(plan.status.index) + ")");
  qm.arena_bytes = plan.plan.total;
  qm.input_shape = model.input_shape();
  qm.output_shape = model.output_shape();
  qm.output_layout = y.layout;
  qm.input = x.q;
  qm.output = y.q;
  qm.softmax_output = cv.softmax_output();
  qm.ops = std::move(cv.ops);
  for (const auto& op : qm.ops) qm.weight_bytes += op.weight_bytes;
  return qm;
}

// ---------------------------------------------------------------------------
// Running a quantized model on the host.

/// Owns a 16-byte-aligned copy of the blob and an arena of exactly
/// plan_arena_bytes, and runs samples through micro::Interpreter. After
/// create(), set_input / invoke / get_output do not allocate.
class QuantizedRunner {
 public:
  static Result<QuantizedRunner> create(const QuantizedModel& qm) {
    QuantizedRunner r;
    r.qm_ = std::make_shared<QuantizedModel>(qm);
    r.blob_.resize((qm.blob.size() + 15) / 16);
    std::memcpy(r.blob_.data(), qm.blob.data(), qm.blob.size());
    const auto* b = reinterpret_cast<const std::uint8_t*>(r.blob_.data());
    const micro::PlanResult plan = micro::plan_arena_bytes(b, qm.blob.size());
    if (!plan)
      return make_error(Errc::corrupt, std::string("QuantizedRunner: blob refused: ") + plan.status.message);
    r.arena_.resize(static_cast<std::size_t>((plan.plan.total + 15) / 16));
    r.planned_ = plan.plan.total;
    const micro::InitResult init = micro::Interpreter::init(
        b, qm.blob.size(), reinterpret_cast<std::uint8_t*>(r.arena_.data()), static_cast<std::size_t>(plan.plan.total));
    if (!init) {
      char msg[128];
      init.format(msg, sizeof msg);
      return make_error(Errc::corrupt, std::string("QuantizedRunner: interpreter init failed: ") + msg);
    }
    r.it_ = init.interpreter;
    return r;
  }

  const QuantizedModel& model() const { return *qm_; }
  std::size_t arena_used() const { return it_.arena_used(); }
  std::uint64_t arena_planned() const { return planned_; }
  Index output_size() const { return qm_->output_shape.size(); }

  /// Quantize one CHW sample (input_shape().size() floats) into the NHWC int8 input.
  void set_input(const float* chw) {
    const Shape s = qm_->input_shape;
    std::int8_t* q = it_.input(0);
    for (Index c = 0; c < s.c; ++c)
      for (Index h = 0; h < s.h; ++h)
        for (Index w = 0; w < s.w; ++w)
          q[(h * s.w + w) * s.c + c] =
              micro::quantize(chw[(c * s.h + h) * s.w + w], qm_->input.scale, qm_->input.zero_point);
  }
  /// Run the blob once; false (with the interpreter's message) on failure.
  bool invoke(const char** message = nullptr) {
    const micro::InvokeResult r = it_.invoke();
    if (message) *message = r.message;
    return r.ok();
  }
  /// Dequantize the output into output_size() floats in the float model's CHW order.
  void get_output(float* chw) const {
    const Shape L = qm_->output_layout;
    const std::int8_t* q = it_.output(0);
    for (Index c = 0; c < L.c; ++c)
      for (Index h = 0; h < L.h; ++h)
        for (Index w = 0; w < L.w; ++w)
          chw[(c * L.h + h) * L.w + w] =
              micro::dequantize(q[(h * L.w + w) * L.c + c], qm_->output.scale, qm_->output.zero_point);
  }
  const std::int8_t* raw_output() const { return it_.output(0); }
  std::int8_t* raw_input() { return it_.input(0); }

  /// A batch of CHW columns through the blob, one sample at a time.
  Result<Matrix<float>> run(const Matrix<float>& x) {
    if (x.rows() != qm_->input_shape.size())
      return make_error(Errc::shape_mismatch, "QuantizedRunner::run: " + std::to_string(x.rows()) +
                                                  " rows per sample, the model input " + qm_->input_shape.str() +
                                                  " needs " + std::to_string(qm_->input_shape.size()));
    Matrix<float> y(output_size(), x.cols());
    for (Index j = 0; j < x.cols(); ++j) {
      set_input(x.col(j).data());
      const char* msg = nullptr;
      if (!invoke(&msg)) return make_error(Errc::corrupt, std::string("QuantizedRunner::run: invoke failed: ") + msg);
      get_output(y.col(j).data());
    }
    return y;
  }

 private:
  struct alignas(16) Block {
    std::uint8_t b[16];
  };
  std::shared_ptr<const QuantizedModel> qm_;
  std::vector<Block> blob_, arena_;  // vectors keep their buffers when the runner moves
  std::uint64_t planned_ = 0;
  micro::Interpreter it_;
};

struct Int8Eval {
  double accuracy = 0;
  Index samples = 0;
  std::size_t arena_bytes = 0;       ///< Interpreter::arena_used()
  std::uint64_t planned_arena_bytes = 0;  ///< plan_arena_bytes(blob).plan.total
  double mean_latency_us = 0;        ///< per image: quantize + invoke + dequantize
  double max_latency_us = 0;
};

/// Accuracy of the int8 blob on labelled CHW columns (argmax of the output).
inline Result<Int8Eval> evaluate_int8(const QuantizedModel& qm, const Matrix<float>& images,
                                      const std::vector<std::uint8_t>& labels) {
  if (images.cols() != static_cast<Index>(labels.size()))
    return make_error(Errc::shape_mismatch, "evaluate_int8: " + std::to_string(images.cols()) + " images but " +
                                                std::to_string(labels.size()) + " labels");
  if (images.rows() != qm.input_shape.size())
    return make_error(Errc::shape_mismatch, "evaluate_int8: images have " + std::to_string(images.rows()) +
                                                " rows, the model input " + qm.input_shape.str() + " needs " +
                                                std::to_string(qm.input_shape.size()));
  auto runner = QuantizedRunner::create(qm);
  if (!runner) return std::move(runner).error();
  Int8Eval ev;
  ev.samples = images.cols();
  ev.arena_bytes = runner->arena_used();
  ev.planned_arena_bytes = runner->arena_planned();
  Vector<float> out(runner->output_size());
  Index correct = 0;
  double total_us = 0;
  for (Index j = 0; j < images.cols(); ++j) {
    const auto t0 = std::chrono::steady_clock::now();
    runner->set_input(images.col(j).data());
    const char* msg = nullptr;
    if (!runner->invoke(&msg)) return make_error(Errc::corrupt, std::string("evaluate_int8: invoke failed: ") + msg);
    runner->get_output(out.data());
    const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    total_us += us;
    ev.max_latency_us = std::max(ev.max_latency_us, us);
    Index arg = 0;
    out.maxCoeff(&arg);
    if (arg == labels[static_cast<std::size_t>(j)]) ++correct;
  }
  if (ev.samples > 0) {
    ev.accuracy = static_cast<double>(correct) / static_cast<double>(ev.samples);
    ev.mean_latency_us = total_us / static_cast<double>(ev.samples);
  }
  return ev;
}

}  // namespace fleetdl::compress
