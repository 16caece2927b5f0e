// tests/unit/test_compress_quantize.cpp — int8 post-training quantization
// (compress/quantize.hpp):
//
//   * layout: a conv-only model and a conv -> flatten -> dense model with
//     random, non-symmetric kernels, non-square inputs and several channels;
//     the int8 blob, run through the micro interpreter and dequantized, stays
//     within an error bound derived from the scales of every float output (a
//     wrong OIHW->OHWI transpose, CHW->HWC input order or dense column
//     permutation breaks the bound by orders of magnitude, which the test also
//     states by requiring the bound to be small against the outputs' spread);
//   * per-channel weight quantization values and scales for hand-made weights;
//   * conv -> BatchNorm -> ReLU6 becomes one conv2d op with a fused relu6 clamp;
//   * calibration: min/max and percentile on a hand-made distribution, ranges
//     that include 0, degenerate ranges;
//   * a residual + concat + pools model runs and agrees with the float model;
//   * end to end on Fashion-MNIST (cnn1, skipped with a WARN when the dataset
//     is not installed): int8 accuracy within 1.5 points of float, arena bytes
//     equal to plan_arena_bytes;
//   * a table of bad inputs for calibrate and quantize_model.
//
// The trained cnn1's int8 inference is also checked to be heap-free: no
// operator new between set_input and the end of get_output, counted by
// heap_counter.hpp (the counting operator new is test_micro_runtime.cpp's).
#include "fleetdl/compress/quantize.hpp"
#include "fleetdl/data/dataset.hpp"
#include "fleetdl/nn/optim.hpp"
#include "fleetdl/nn/train.hpp"
#include "fleetdl/nn/zoo.hpp"

#include "heap_counter.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace cz = fleetdl::compress;
namespace nn = fleetdl::nn;
namespace mi = fleetdl::micro;
using fleetdl::Errc;
using fleetdl::Index;
using fleetdl::Matrix;
using fleetdl::Shape;
using Model = nn::Model<float>;

Matrix<float> random_matrix(Index rows, Index cols, float lo, float hi, unsigned seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  Matrix<float> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = d(g);
  return m;
}

void randomize(Model& m, unsigned seed, float scale = 0.5f) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(-scale, scale);
  for (Index i = 0; i < m.param_count(); ++i) m.params()[i] = d(g);
}

Matrix<float> float_forward(Model& m, const Matrix<float>& x) {
  nn::ExecContext<float> ctx{nullptr, false, nullptr};
  return m.forward(x, ctx);
}

Model make(const Shape& in, std::vector<nn::NodePtr<float>> nodes) {
  auto r = Model::create(in, std::move(nodes));
  INFO((r ? std::string() : r.error().message));
  REQUIRE(r.ok());
  return std::move(*r);
}

cz::QuantizedModel quantize(const Model& m, const Matrix<float>& calib, const cz::CalibrationOptions& co = {}) {
  auto cal = cz::calibrate(m, calib, 32, co);
  INFO((cal ? std::string() : cal.error().message));
  REQUIRE(cal.ok());
  auto q = cz::quantize_model(m, *cal);
  INFO((q ? std::string() : q.error().message));
  REQUIRE(q.ok());
  return std::move(*q);
}

Matrix<float> run_int8(const cz::QuantizedModel& q, const Matrix<float>& x) {
  auto runner = cz::QuantizedRunner::create(q);
  INFO((runner ? std::string() : runner.error().message));
  REQUIRE(runner.ok());
  CHECK(runner->arena_used() == runner->arena_planned());
  auto y = runner->run(x);
  INFO((y ? std::string() : y.error().message));
  REQUIRE(y.ok());
  return std::move(*y);
}

/// Error bound of one requantized output o = sum_k w_k x_k + b computed in int8
/// from an input with per-element error dx (its own quantization plus what
/// earlier layers did): half an input step (or dx) times sum |w|, half a
/// weight step times sum |x|, half a bias step, one output step (rounding and
/// the fixed-point multiplier), plus a little float slack.
double output_bound(double sum_abs_w, double sum_abs_x, double dx, double s_w, double s_in, double s_out) {
  return dx * sum_abs_w + 0.5 * s_w * sum_abs_x + 0.5 * s_in * s_w + 1.01 * s_out + 1e-6;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

// ---------------------------------------------------------------------------

TEST_CASE("quantize: per-channel symmetric weights, exact values", "[compress][quantize]") {
  // Three channels of four weights: a mixed one, an all-zero one, a negative-max one.
  const std::vector<float> w = {0.5f, -1.27f, 0.1f, 0.0f,  //
                                0.0f, 0.0f, 0.0f, 0.0f,    //
                                0.3f, -0.6f, 0.2f, 0.05f};
  const cz::ChannelQuantized q = cz::quantize_per_channel(w.data(), 3, 4);
  REQUIRE(q.scales.size() == 3);
  CHECK(q.scales[0] == 1.27f / 127.0f);
  CHECK(q.scales[1] == 1.0f);  // all-zero channel: TFLite's scale 1
  CHECK(q.scales[2] == 0.6f / 127.0f);
  const std::vector<std::int8_t> expect = {50, -127, 10, 0,  //
                                           0, 0, 0, 0,       //
                                           64, -127, 42, 11};  // 63.5 -> 64 (half away), 42.33, 10.58
  // 0.3 / (0.6/127) is 63.4999.. or 63.5000.. in float arithmetic; computed here in
  // double from the float values, as the converter does:
  const double r = std::round(static_cast<double>(0.3f) / static_cast<double>(0.6f / 127.0f));
  std::vector<std::int8_t> e = expect;
  e[8] = static_cast<std::int8_t>(r);
  CHECK(q.values == e);
  CHECK((r == 63.0 || r == 64.0));

  // The same weights as a 1x1 conv in a model: the report carries the scales,
  // and the blob's filter bytes are these values.
  std::vector<nn::NodePtr<float>> v;
  v.push_back(std::make_unique<nn::Conv2D<float>>(4, 3, 1, 1, 0, 1, 1, false));
  Model m = make(Shape{4, 1, 1}, std::move(v));
  std::copy(w.begin(), w.end(), m.params().data());
  const cz::QuantizedModel qm = quantize(m, random_matrix(4, 20, -1, 1, 3));
  REQUIRE(qm.ops.size() == 1);
  CHECK(qm.ops[0].op == "conv2d");
  CHECK(qm.ops[0].weight_scales == q.scales);
  CHECK(qm.ops[0].weight_bytes == 12 + 3 * 4);  // int8 weights + float scales, no bias
  // Find the filter bytes in the blob (constant tensor 1 after the input).
  std::vector<std::uint64_t> buf((qm.blob.size() + 15) / 8 + 2);
  auto* base = reinterpret_cast<std::uint8_t*>(buf.data());
  base += (16 - reinterpret_cast<std::uintptr_t>(base) % 16) % 16;
  std::memcpy(base, qm.blob.data(), qm.blob.size());
  REQUIRE(mi::verify(base, qm.blob.size()).ok());
  const mi::ModelView view(base, qm.blob.size());
  const mi::OpDesc op = view.op(0);
  const mi::TensorDesc f = view.tensor(op.inputs[1]);
  REQUIRE(f.data_length == 12);
  std::vector<std::int8_t> bytes(12);
  std::memcpy(bytes.data(), view.data(f), 12);
  CHECK(bytes == e);  // OHWI of a 1x1 conv is OI
}

TEST_CASE("quantize: conv-only model, layout OIHW->OHWI and CHW->HWC", "[compress][quantize]") {
  // Non-square input 3x9x6, non-square kernel 3x2, stride (2,1), 4 channels.
  nn::Conv2DOptions o;
  o.in_channels = 3;
  o.out_channels = 4;
  o.kernel_h = 3;
  o.kernel_w = 2;
  o.stride_h = 2;
  o.stride_w = 1;
  std::vector<nn::NodePtr<float>> v;
  v.push_back(std::make_unique<nn::Conv2D<float>>(o));
  Model m = make(Shape{3, 9, 6}, std::move(v));
  randomize(m, 11);
  const Matrix<float> calib = random_matrix(m.input_shape().size(), 64, -1.0f, 2.0f, 12);
  const cz::QuantizedModel qm = quantize(m, calib);
  REQUIRE(qm.ops.size() == 1);
  // Evaluated on calibration samples: the bound assumes no value was clipped.
  const Matrix<float> x = calib.leftCols(16);
  const Matrix<float> yf = float_forward(m, x);
  const Matrix<float> yq = run_int8(qm, x);
  REQUIRE(yq.rows() == yf.rows());

  const Shape out = m.output_shape();
  const auto& conv = static_cast<const nn::Conv2D<float>&>(m.node(0));
  const Index per = 3 * 3 * 2;
  double worst_bound = 0, worst_ratio = 0;
  for (Index c = 0; c < out.c; ++c) {
    double sw = 0;
    for (Index k = 0; k < per; ++k) sw += std::fabs(conv.weights()[c * per + k]);
    for (Index s = 0; s < x.cols(); ++s)
      for (Index p = 0; p < out.spatial(); ++p) {
        const Index r = c * out.spatial() + p;
        // sum |x| over the window <= per * max|x| = per * 2
        const double bound = output_bound(sw, per * 2.0, 0.5 * qm.input.scale,
                                          qm.ops[0].weight_scales[static_cast<std::size_t>(c)], qm.input.scale,
                                          qm.output.scale);
        const double err = std::fabs(static_cast<double>(yq(r, s)) - yf(r, s));
        worst_bound = std::max(worst_bound, bound);
        worst_ratio = std::max(worst_ratio, err / bound);
        INFO("channel " << c << " position " << p << " sample " << s);
        REQUIRE(err <= bound);
      }
  }
  // The bound is tight enough to catch a transposition: far below the spread.
  const double spread = yf.maxCoeff() - yf.minCoeff();
  CHECK(worst_bound < 0.05 * spread);
  UNSCOPED_INFO("conv-only: worst error / bound " << worst_ratio << ", bound " << worst_bound << ", spread " << spread);
}

TEST_CASE("quantize: conv -> flatten -> dense permutes the dense columns CHW -> HWC", "[compress][quantize]") {
  nn::Conv2DOptions o;
  o.in_channels = 2;
  o.out_channels = 3;
  o.kernel_h = 2;
  o.kernel_w = 3;
  o.pad_h = 0;
  std::vector<nn::NodePtr<float>> v;
  v.push_back(std::make_unique<nn::Conv2D<float>>(o));  // 2x7x5 -> 3x6x3
  v.push_back(std::make_unique<nn::Flatten<float>>());
  v.push_back(std::make_unique<nn::Dense<float>>(3 * 6 * 3, 5));
  Model m = make(Shape{2, 7, 5}, std::move(v));
  randomize(m, 21);
  const Matrix<float> calib = random_matrix(m.input_shape().size(), 64, -1.0f, 1.0f, 22);
  const cz::QuantizedModel qm = quantize(m, calib);
  REQUIRE(qm.ops.size() == 3);
  CHECK(qm.ops[0].op == "conv2d");
  CHECK(qm.ops[1].op == "reshape");
  CHECK(qm.ops[2].op == "fully_connected");

  const Matrix<float> x = calib.leftCols(16);  // inside the calibrated ranges
  const Matrix<float> yf = float_forward(m, x);
  const Matrix<float> yq = run_int8(qm, x);
  // Conv output error bound (as in the conv-only case), then through the dense.
  nn::ExecContext<float> ctx{nullptr, false, nullptr};
  Matrix<float> hidden;
  m.node(0).forward(x, hidden, ctx);
  const auto& conv = static_cast<const nn::Conv2D<float>&>(m.node(0));
  const auto& dense = static_cast<const nn::Dense<float>&>(m.node(2));
  const Index per = 2 * 2 * 3;
  double conv_bound = 0;
  for (Index c = 0; c < 3; ++c) {
    double sw = 0;
    for (Index k = 0; k < per; ++k) sw += std::fabs(conv.weights()[c * per + k]);
    conv_bound = std::max(conv_bound, output_bound(sw, per * 1.0, 0.5 * qm.input.scale,
                                                   qm.ops[0].weight_scales[static_cast<std::size_t>(c)],
                                                   qm.input.scale, qm.ops[0].output.scale));
  }
  double worst_bound = 0;
  for (Index oi = 0; oi < 5; ++oi) {
    const double sw = dense.weight_t().col(oi).cwiseAbs().sum();
    for (Index s = 0; s < x.cols(); ++s) {
      const double sx = hidden.col(s).cwiseAbs().sum() + conv_bound * 54;
      const double bound = output_bound(sw, sx, conv_bound, qm.ops[2].weight_scales[static_cast<std::size_t>(oi)],
                                        qm.ops[2].input.scale, qm.output.scale);
      worst_bound = std::max(worst_bound, bound);
      const double err = std::fabs(static_cast<double>(yq(oi, s)) - yf(oi, s));
      INFO("output " << oi << " sample " << s << " float " << yf(oi, s) << " int8 " << yq(oi, s));
      REQUIRE(err <= bound);
    }
  }
  // The two-layer bound is a worst case; the observed error is far smaller.
  const double spread = yf.maxCoeff() - yf.minCoeff();
  const double max_err = (yq - yf).cwiseAbs().maxCoeff();
  UNSCOPED_INFO("conv->flatten->dense: max error " << max_err << ", bound " << worst_bound << ", spread " << spread);
  CHECK(max_err < 0.05 * spread);

  // Sensitivity: without the permutation (a Dense reading the hidden values in
  // HWC order as if they were CHW) the float outputs move far outside the bound.
  Matrix<float> hwc(hidden.rows(), hidden.cols());
  for (Index s = 0; s < hidden.cols(); ++s)
    for (Index c = 0; c < 3; ++c)
      for (Index p = 0; p < 18; ++p) hwc(p * 3 + c, s) = hidden(c * 18 + p, s);
  Matrix<float> wrong;
  m.node(2).forward(hwc, wrong, ctx);
  CHECK((wrong - yf).cwiseAbs().maxCoeff() > 3 * worst_bound);
}

TEST_CASE("quantize: encoded weights are lossless; clustered layers get one scale", "[compress][quantize]") {
  // conv (2 -> 4, 3x3) -> relu -> flatten -> dense (4*6*6 -> 10), with 75% of
  // the weights zero and the rest on 8 shared levels, as prune + cluster leave them.
  nn::Conv2DOptions o;
  o.in_channels = 2;
  o.out_channels = 4;
  o.kernel_h = o.kernel_w = 3;
  o.pad_h = o.pad_w = 0;
  std::vector<nn::NodePtr<float>> v;
  v.push_back(std::make_unique<nn::Conv2D<float>>(o));  // 2x8x8 -> 4x6x6
  v.push_back(std::make_unique<nn::Activation<float>>(nn::NodeKind::relu));
  v.push_back(std::make_unique<nn::Flatten<float>>());
  v.push_back(std::make_unique<nn::Dense<float>>(4 * 6 * 6, 10));
  Model m = make(Shape{2, 8, 8}, std::move(v));
  randomize(m, 31);
  const float levels[8] = {-0.5f, -0.31f, -0.17f, -0.06f, 0.05f, 0.19f, 0.33f, 0.47f};
  std::mt19937 g(32);
  for (const Index node : {Index{0}, Index{3}}) {
    float* w = node == 0 ? static_cast<nn::Conv2D<float>&>(m.node(0)).weights()
                         : static_cast<nn::Dense<float>&>(m.node(3)).weight_t().data();
    const Index n = node == 0 ? 4 * 2 * 9 : 144 * 10;
    for (Index i = 0; i < n; ++i) w[i] = g() % 4 == 0 ? levels[g() % 8] : 0.0f;
    w[0] = -0.5f;  // the largest |level| is present in both
  }
  const Matrix<float> calib = random_matrix(m.input_shape().size(), 64, -1.0f, 1.0f, 33);
  auto cal = cz::calibrate(m, calib, 32);
  REQUIRE(cal.ok());
  const auto q = [&](bool encode, bool per_tensor) {
    cz::QuantizeOptions qo;
    qo.encode_weights = encode;
    qo.per_tensor_clustered = per_tensor;
    auto r = cz::quantize_model(m, *cal, qo);
    INFO((r ? std::string() : r.error().message));
    REQUIRE(r.ok());
    return std::move(*r);
  };
  const cz::QuantizedModel plain = q(false, false), enc = q(true, false), both = q(true, true);
  const Matrix<float> x = calib.leftCols(16);
  // The encoding is lossless: the same outputs, bit for bit, from a smaller blob.
  CHECK(run_int8(enc, x) == run_int8(plain, x));
  CHECK(enc.blob.size() < plain.blob.size());
  CHECK(enc.weight_bytes < plain.weight_bytes);
  for (const Index k : {Index{0}, Index{2}}) {
    INFO("op " << k);
    CHECK_FALSE(plain.ops[static_cast<std::size_t>(k)].encoded);
    CHECK(enc.ops[static_cast<std::size_t>(k)].encoded);
    CHECK_FALSE(enc.ops[static_cast<std::size_t>(k)].per_tensor);
  }
  // The dense layer (1,440 weights) gets one scale: the tensor's max |w| / 127
  // for every channel. The conv (72 weights, below per_tensor_min_weights)
  // keeps per-channel scales: one scale would save it 16 bytes.
  CHECK(both.ops[2].per_tensor);
  for (float sc : both.ops[2].weight_scales) CHECK(sc == 0.5f / 127.0f);
  CHECK_FALSE(both.ops[0].per_tensor);
  // Per tensor: 8 levels stay 8 int8 values and no scale tables are stored,
  // so the blob shrinks further; the outputs stay close to float.
  CHECK(both.blob.size() < enc.blob.size());
  const Matrix<float> yf = float_forward(m, x), yq = run_int8(both, x);
  const double spread = yf.maxCoeff() - yf.minCoeff();
  CHECK((yq - yf).cwiseAbs().maxCoeff() < 0.05 * spread);
  // Dense (unclustered) weights stay per channel even when asked (1,280
  // weights, nearly all distinct).
  Model dense = make(Shape{2, 8, 8}, [] {
    std::vector<nn::NodePtr<float>> d;
    d.push_back(std::make_unique<nn::Flatten<float>>());
    d.push_back(std::make_unique<nn::Dense<float>>(128, 10));
    return d;
  }());
  randomize(dense, 34);
  auto dcal = cz::calibrate(dense, calib, 32);
  REQUIRE(dcal.ok());
  cz::QuantizeOptions qo;
  qo.per_tensor_clustered = true;
  auto dq = cz::quantize_model(dense, *dcal, qo);
  REQUIRE(dq.ok());
  CHECK_FALSE(dq->ops.back().per_tensor);
  // So does a small layer that was never clustered (108 weights, nearly all
  // distinct: fewer than 256 values, but not 4 weights per value, and below
  // per_tensor_min_weights).
  Model small = make(Shape{1, 8, 8}, [] {
    std::vector<nn::NodePtr<float>> d;
    d.push_back(std::make_unique<nn::Conv2D<float>>(1, 12, 3, 1, 0, 1, 1, true));
    return d;
  }());
  randomize(small, 35);
  const Matrix<float> scal = random_matrix(64, 32, -1.0f, 1.0f, 36);
  auto scal_r = cz::calibrate(small, scal, 32);
  REQUIRE(scal_r.ok());
  auto sq = cz::quantize_model(small, *scal_r, qo);
  REQUIRE(sq.ok());
  CHECK_FALSE(sq->ops.front().per_tensor);
}

TEST_CASE("quantize: conv -> BatchNorm -> ReLU6 folds and fuses into one conv2d op", "[compress][quantize]") {
  std::vector<nn::NodePtr<float>> v;
  v.push_back(std::make_unique<nn::Conv2D<float>>(2, 3, 3, 1, 1));  // pad 1: TFLite SAME
  v.push_back(std::make_unique<nn::BatchNorm<float>>(3));
  v.push_back(nn::relu6<float>());
  Model m = make(Shape{2, 6, 5}, std::move(v));
  randomize(m, 31, 1.0f);
  auto& bn = static_cast<nn::BatchNorm<float>&>(m.node(1));
  const float gamma[3] = {1.5f, 0.7f, 2.0f}, beta[3] = {0.5f, 2.0f, -0.3f}, mean[3] = {0.1f, -0.4f, 0.3f},
              var[3] = {0.8f, 2.5f, 0.4f};
  for (int c = 0; c < 3; ++c) {
    bn.gamma()[c] = gamma[c];
    bn.beta()[c] = beta[c];
    bn.running_mean()[c] = mean[c];
    bn.running_var()[c] = var[c];
  }
  const Matrix<float> calib = random_matrix(m.input_shape().size(), 64, -2.0f, 2.0f, 32);
  const cz::QuantizedModel qm = quantize(m, calib);
  REQUIRE(qm.ops.size() == 1);
  CHECK(qm.ops[0].op == "conv2d");
  CHECK(qm.ops[0].nodes == "0+1+2");
  CHECK(qm.ops[0].types == "conv2d+batchnorm+relu6");
  CHECK(qm.ops[0].activation == mi::Activation::relu6);
  CHECK(qm.output.zero_point == -128);  // post-ReLU6 range [0, max]
  CHECK(qm.weight_bytes == 3 * 2 * 9 + 3 * 4 + 3 * 4);
  {
    std::vector<std::uint64_t> buf((qm.blob.size() + 15) / 8 + 2);
    auto* base = reinterpret_cast<std::uint8_t*>(buf.data());
    base += (16 - reinterpret_cast<std::uintptr_t>(base) % 16) % 16;
    std::memcpy(base, qm.blob.data(), qm.blob.size());
    const mi::ModelView view(base, qm.blob.size());
    CHECK(view.op_count() == 1);  // no separate BN or activation op
    CHECK(view.op(0).activation == static_cast<std::uint8_t>(mi::Activation::relu6));
    CHECK(view.op(0).padding == static_cast<std::uint8_t>(mi::Padding::same));
  }

  const Matrix<float> x = calib.leftCols(16);  // inside the calibrated ranges
  const Matrix<float> yf = float_forward(m, x), yq = run_int8(qm, x);
  auto folded = nn::fold_batchnorm(m);
  REQUIRE(folded.ok());
  const auto& fc = static_cast<const nn::Conv2D<float>&>(folded->node(0));
  double worst = 0;
  for (Index c = 0; c < 3; ++c) {
    double sw = 0;
    for (Index k = 0; k < 18; ++k) sw += std::fabs(fc.weights()[c * 18 + k]);
    const double bound = output_bound(sw, 18 * 2.0, 0.5 * qm.input.scale,
                                      qm.ops[0].weight_scales[static_cast<std::size_t>(c)], qm.input.scale,
                                      qm.output.scale);
    for (Index s = 0; s < x.cols(); ++s)
      for (Index p = 0; p < 30; ++p) {
        const double err = std::fabs(static_cast<double>(yq(c * 30 + p, s)) - yf(c * 30 + p, s));
        worst = std::max(worst, err / bound);
        REQUIRE(err <= bound);
      }
  }
  CHECK(yq.maxCoeff() <= 6.0f + qm.output.scale);
  CHECK(yq.minCoeff() >= 0.0f);
}

TEST_CASE("quantize: calibration by min/max and by percentile", "[compress][quantize]") {
  // One 1x100x100 image holding -5000 .. 4999 in a shuffled order.
  std::vector<nn::NodePtr<float>> v;
  v.push_back(nn::relu<float>());
  const Model m = make(Shape{1, 100, 100}, std::move(v));
  Matrix<float> x(10000, 1);
  std::vector<int> vals(10000);
  std::iota(vals.begin(), vals.end(), -5000);
  std::shuffle(vals.begin(), vals.end(), std::mt19937(5));
  for (Index i = 0; i < 10000; ++i) x(i, 0) = static_cast<float>(vals[static_cast<std::size_t>(i)]);

  SECTION("min/max") {
    auto cal = cz::calibrate(m, x, 1);
    REQUIRE(cal.ok());
    CHECK(cal->samples == 1);
    CHECK(cal->input_range().min == -5000.0f);
    CHECK(cal->input_range().max == 4999.0f);
    const cz::CalibrationEntry* relu = cal->find("0");
    REQUIRE(relu != nullptr);
    CHECK(relu->type == "relu");
    CHECK(relu->range.min == 0.0f);
    CHECK(relu->range.max == 4999.0f);
  }
  SECTION("percentile 99") {
    cz::CalibrationOptions o;
    o.method = cz::CalibrationMethod::percentile;
    o.percentile = 99.0;
    auto cal = cz::calibrate(m, x, 1, o);
    REQUIRE(cal.ok());
    const double width = 9999.0 / o.bins;
    // rank 9900 of 10000 is 4899, rank 100 is -4901; outer bin edges.
    CHECK(cal->input_range().max >= 4899.0f);
    CHECK(cal->input_range().max <= 4899.0 + width + 1e-3);
    CHECK(cal->input_range().min <= -4901.0f);
    CHECK(cal->input_range().min >= -4901.0 - width - 1e-3);
    // ReLU output: half the values are 0; its 1st percentile is 0.
    const cz::CalibrationEntry* relu = cal->find("0");
    REQUIRE(relu != nullptr);
    CHECK(relu->range.min == 0.0f);
    CHECK(relu->range.max >= 4899.0f);
    CHECK(relu->range.max <= 4899.0 + 4999.0 / o.bins + 1e-3);
  }
  SECTION("ranges include 0; degenerate ranges are widened") {
    Matrix<float> pos = Matrix<float>::Constant(10000, 3, 2.0f);
    pos(7, 1) = 5.0f;
    auto cal = cz::calibrate(m, pos, 2);
    REQUIRE(cal.ok());
    CHECK(cal->input_range().min == 0.0f);
    CHECK(cal->input_range().max == 5.0f);
    CHECK(cal->find("")->observed.min == 2.0f);
    auto zero = cz::calibrate(m, Matrix<float>::Zero(10000, 2), 2);
    REQUIRE(zero.ok());
    CHECK(zero->input_range().min == 0.0f);
    CHECK(zero->input_range().max == 1.0f);
    const cz::QuantParams q = cz::choose_quant_params(zero->input_range());
    CHECK(q.scale == static_cast<float>(1.0 / 255.0));
    CHECK(q.zero_point == -128);
  }
  SECTION("asymmetric parameters") {
    const cz::QuantParams q = cz::choose_quant_params(cz::Range{-1.0f, 3.0f});
    CHECK(q.scale == static_cast<float>(4.0 / 255.0));
    CHECK(q.zero_point == static_cast<std::int32_t>(std::round(-128.0 + 255.0 / 4.0)));  // -64
    CHECK(mi::dequantize(static_cast<std::int8_t>(q.zero_point), q.scale, q.zero_point) == 0.0f);
  }
}

TEST_CASE("quantize: residual, concat, pools and global pooling", "[compress][quantize]") {
  std::vector<nn::NodePtr<float>> v;
  v.push_back(std::make_unique<nn::Conv2D<float>>(2, 4, 3, 1, 1));
  v.push_back(nn::relu<float>());
  {
    nn::Sequential<float> body;
    body.add(std::make_unique<nn::Conv2D<float>>(4, 4, 3, 1, 1));
    body.add(nn::relu<float>());
    body.add(std::make_unique<nn::Conv2D<float>>(4, 4, 1));
    v.push_back(std::make_unique<nn::Residual<float>>(std::move(body)));
  }
  v.push_back(nn::relu<float>());
  {
    auto cat = std::make_unique<nn::Concat<float>>();
    nn::Sequential<float> b0, b1, b2;
    b0.add(std::make_unique<nn::Conv2D<float>>(4, 3, 1));
    b1.add(std::make_unique<nn::MaxPool2D<float>>(3, 1, 1));  // pass-through params: requantized
    b2.add(std::make_unique<nn::Conv2D<float>>(4, 4, 3, 1, 1, 1, 4));  // depthwise
    cat->add(std::move(b0));
    cat->add(std::move(b1));
    cat->add(std::move(b2));
    v.push_back(std::move(cat));
  }
  v.push_back(std::make_unique<nn::AvgPool2D<float>>(2));
  v.push_back(std::make_unique<nn::GlobalAvgPool<float>>());
  v.push_back(std::make_unique<nn::Flatten<float>>());
  v.push_back(std::make_unique<nn::Dense<float>>(11, 6));
  v.push_back(std::make_unique<nn::Softmax<float>>());
  Model m = make(Shape{2, 8, 6}, std::move(v));
  randomize(m, 41, 0.6f);
  const Matrix<float> calib = random_matrix(m.input_shape().size(), 128, -1.0f, 1.0f, 42);
  const cz::QuantizedModel qm = quantize(m, calib);
  std::string ops;
  for (const auto& op : qm.ops) ops += op.op + "(" + op.nodes + ") ";
  INFO(ops);
  CHECK(qm.softmax_output);
  CHECK(qm.output.scale == mi::kSoftmaxOutputScale);
  const auto n_req = std::count_if(qm.ops.begin(), qm.ops.end(), [](const cz::QuantizedOp& o) { return o.types == "requantize"; });
  CHECK(n_req == 1);  // only the maxpool branch; the conv branches take the concat's params
  const Matrix<float> x = random_matrix(m.input_shape().size(), 64, -1.0f, 1.0f, 43);
  const Matrix<float> yf = float_forward(m, x), yq = run_int8(qm, x);
  const double err = (yq - yf).cwiseAbs().maxCoeff();
  Index agree = 0;
  for (Index s = 0; s < x.cols(); ++s) {
    Index a = 0, b = 0;
    yf.col(s).maxCoeff(&a);
    yq.col(s).maxCoeff(&b);
    agree += a == b;
  }
  UNSCOPED_INFO("residual/concat model: max |p_int8 - p_float| = " << err << ", argmax agreement " << agree << "/64");
  CHECK(err < 0.05);
  CHECK(agree >= 56);
}

TEST_CASE("quantize: bad inputs are refused with clear errors", "[compress][quantize]") {
  std::vector<nn::NodePtr<float>> v;
  v.push_back(std::make_unique<nn::Conv2D<float>>(1, 2, 3));
  v.push_back(nn::relu<float>());
  v.push_back(std::make_unique<nn::Flatten<float>>());
  v.push_back(std::make_unique<nn::Dense<float>>(2 * 4 * 4, 3));
  Model m = make(Shape{1, 6, 6}, std::move(v));
  randomize(m, 51);
  const Matrix<float> good = random_matrix(36, 8, 0.0f, 1.0f, 52);

  struct CalCase {
    const char* what;
    Matrix<float> images;
    Index batch;
    cz::CalibrationOptions options;
    Errc code;
    const char* message;
  };
  Matrix<float> nan = good;
  nan(17, 5) = std::nanf("");
  Matrix<float> inf = good;
  inf(3, 0) = std::numeric_limits<float>::infinity();
  cz::CalibrationOptions bad_p;
  bad_p.method = cz::CalibrationMethod::percentile;
  bad_p.percentile = 40;
  const std::vector<CalCase> cal_cases = {
      {"wrong row count", random_matrix(35, 4, 0, 1, 1), 4, {}, Errc::shape_mismatch, "35 rows per sample"},
      {"empty set", Matrix<float>(36, 0), 4, {}, Errc::invalid_argument, "empty"},
      {"NaN pixel", nan, 4, {}, Errc::invalid_argument, "image 5 has a non-finite value"},
      {"inf pixel", inf, 4, {}, Errc::invalid_argument, "image 0 has a non-finite value"},
      {"batch 0", good, 0, {}, Errc::invalid_argument, "batch"},
      {"percentile 40", good, 4, bad_p, Errc::invalid_argument, "percentile"},
  };
  for (const auto& c : cal_cases) {
    INFO(c.what);
    auto r = cz::calibrate(m, c.images, c.batch, c.options);
    REQUIRE_FALSE(r.ok());
    INFO(r.error().message);
    CHECK(r.error().code == c.code);
    CHECK(contains(r.error().message, c.message));
  }

  auto cal = cz::calibrate(m, good, 4);
  REQUIRE(cal.ok());

  SECTION("unsupported node names the node") {
    std::vector<nn::NodePtr<float>> w;
    w.push_back(std::make_unique<nn::Conv2D<float>>(1, 2, 3));
    w.push_back(nn::sigmoid<float>());
    Model s = make(Shape{1, 6, 6}, std::move(w));
    auto sc = cz::calibrate(s, good, 4);
    REQUIRE(sc.ok());
    auto q = cz::quantize_model(s, *sc);
    REQUIRE_FALSE(q.ok());
    CHECK(q.error().code == Errc::unsupported);
    CHECK(contains(q.error().message, "node 1 (sigmoid)"));
  }
  SECTION("a ReLU with nothing to fuse into") {
    std::vector<nn::NodePtr<float>> w;
    w.push_back(nn::relu<float>());
    w.push_back(std::make_unique<nn::Conv2D<float>>(1, 2, 3));
    Model s = make(Shape{1, 6, 6}, std::move(w));
    auto q = cz::quantize_model(s, *cz::calibrate(s, good, 4));
    REQUIRE_FALSE(q.ok());
    CHECK(q.error().code == Errc::unsupported);
    CHECK(contains(q.error().message, "node 0 (relu)"));
  }
  SECTION("average pooling with padding") {
    std::vector<nn::NodePtr<float>> w;
    w.push_back(std::make_unique<nn::Conv2D<float>>(1, 2, 3));
    w.push_back(std::make_unique<nn::AvgPool2D<float>>(2, 2, 1));
    Model s = make(Shape{1, 6, 6}, std::move(w));
    auto q = cz::quantize_model(s, *cz::calibrate(s, good, 4));
    REQUIRE_FALSE(q.ok());
    CHECK(contains(q.error().message, "node 1 (avgpool2d)"));
  }
  SECTION("padding that is not TFLite SAME") {
    std::vector<nn::NodePtr<float>> w;
    w.push_back(std::make_unique<nn::Conv2D<float>>(1, 2, 3, 2, 1));  // stride 2, pad 1 on 6x6: SAME pads 0 before
    Model s = make(Shape{1, 6, 6}, std::move(w));
    auto q = cz::quantize_model(s, *cz::calibrate(s, good, 4));
    REQUIRE_FALSE(q.ok());
    CHECK(q.error().code == Errc::unsupported);
    CHECK(contains(q.error().message, "neither TFLite VALID nor SAME"));
  }
  SECTION("bias overflowing int32") {
    Model s = m;
    auto& conv = static_cast<nn::Conv2D<float>&>(s.node(0));
    for (Index k = 9; k < 18; ++k) conv.weights()[k] = 1e-9f;  // channel 1 only
    conv.bias()[1] = 1000.0f;
    auto q = cz::quantize_model(s, *cz::calibrate(s, good, 4));
    REQUIRE_FALSE(q.ok());
    CHECK(q.error().code == Errc::limit_exceeded);
    CHECK(contains(q.error().message, "node 0 (conv2d): bias of channel 1"));
  }
  SECTION("non-finite weight") {
    Model s = m;
    static_cast<nn::Dense<float>&>(s.node(3)).weight_t()(4, 2) = std::nanf("");
    auto q = cz::quantize_model(s, *cal);
    REQUIRE_FALSE(q.ok());
    CHECK(contains(q.error().message, "node 3 (dense)"));
    CHECK(contains(q.error().message, "not finite"));
  }
  SECTION("a calibration of another model") {
    std::vector<nn::NodePtr<float>> w;
    w.push_back(std::make_unique<nn::Conv2D<float>>(1, 3, 3));
    w.push_back(nn::relu<float>());
    Model other = make(Shape{1, 6, 6}, std::move(w));
    auto q = cz::quantize_model(other, *cal);
    REQUIRE_FALSE(q.ok());
    CHECK(contains(q.error().message, "different model"));
    std::vector<nn::NodePtr<float>> w2;
    w2.push_back(std::make_unique<nn::Flatten<float>>());
    w2.push_back(std::make_unique<nn::Dense<float>>(49, 3));
    Model bigger = make(Shape{1, 7, 7}, std::move(w2));
    auto q2 = cz::quantize_model(bigger, *cal);
    REQUIRE_FALSE(q2.ok());
    CHECK(q2.error().code == Errc::shape_mismatch);
  }
  SECTION("runner refuses a wrong row count") {
    auto q = cz::quantize_model(m, *cal);
    REQUIRE(q.ok());
    auto r = cz::QuantizedRunner::create(*q);
    REQUIRE(r.ok());
    auto y = r->run(random_matrix(35, 2, 0, 1, 3));
    REQUIRE_FALSE(y.ok());
    CHECK(y.error().code == Errc::shape_mismatch);
  }
}

TEST_CASE("quantize: cnn1 on Fashion-MNIST, int8 within 1.5 points of float", "[compress][quantize]") {
  namespace fs = std::filesystem;
  const fs::path dir = FLEETDL_FASHION_MNIST_DIR;
  for (const char* f : {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                        "t10k-labels-idx1-ubyte.gz"})
    if (!fs::exists(dir / f)) {
      WARN("Fashion-MNIST not installed in " FLEETDL_FASHION_MNIST_DIR " (Debian package dataset-fashion-mnist); skipped");
      return;
    }
  auto train = fleetdl::data::load_fashion_mnist<float>(FLEETDL_FASHION_MNIST_DIR, true, 5500);
  auto test = fleetdl::data::load_fashion_mnist<float>(FLEETDL_FASHION_MNIST_DIR, false, 1000);
  REQUIRE(train.ok());
  REQUIRE(test.ok());
  auto mm = nn::make_model<float>("cnn1");
  REQUIRE(mm.ok());
  Model m = std::move(*mm);
  m.init(7);
  nn::SgdOptions so;
  so.lr = 0.05;
  so.momentum = 0.9;
  nn::Sgd<float> opt(so);
  nn::TrainOptions to;
  to.epochs = 1;
  to.batch = 32;
  to.seed = 3;
  const Matrix<float> xtrain = train->images.leftCols(5000);
  const std::vector<std::uint8_t> ytrain(train->labels.begin(), train->labels.begin() + 5000);
  nn::train_classifier(m, opt, xtrain, ytrain, to);
  const Matrix<float> xcal = train->images.rightCols(500);  // held out from training

  auto cal = cz::calibrate(m, xcal, 100);
  REQUIRE(cal.ok());
  auto q = cz::quantize_model(m, *cal);
  INFO((q ? std::string() : q.error().message));
  REQUIRE(q.ok());
  // conv2d(+relu), max_pool2d, reshape, fully_connected
  REQUIRE(q->ops.size() == 4);
  CHECK(q->ops[0].types == "conv2d+relu");
  CHECK(q->ops[3].op == "fully_connected");
  CHECK_FALSE(q->softmax_output);

  const auto fl = nn::evaluate(m, test->images, test->labels);
  auto ev = cz::evaluate_int8(*q, test->images, test->labels);
  REQUIRE(ev.ok());
  CHECK(ev->arena_bytes == ev->planned_arena_bytes);
  CHECK(ev->planned_arena_bytes == q->arena_bytes);
  std::ostringstream s;
  s << "cnn1 Fashion-MNIST (1 epoch on 5000, calibrated on 500, tested on 1000): float " << 100 * fl.accuracy
    << "%, int8 " << 100 * ev->accuracy << "%; blob " << q->blob.size() << " B, weights " << q->weight_bytes
    << " B, arena " << ev->arena_bytes << " B, " << ev->mean_latency_us << " us/image";
  WARN(s.str());
  CHECK(fl.accuracy > 0.70);
  CHECK(std::fabs(ev->accuracy - fl.accuracy) <= 0.015);

  // One inference of the trained model allocates nothing: quantizing the
  // input, the interpreter's invoke and dequantizing the output all work in
  // the runner's buffers and the arena.
  {
    auto runner = cz::QuantizedRunner::create(*q);
    REQUIRE(runner.ok());
    std::vector<float> logits(static_cast<std::size_t>(runner->output_size()));
    long allocations = -1;
    bool ran = false;
    {
      fleetdl_test::HeapCounter counter;
      for (Index j = 0; j < 20; ++j) {
        runner->set_input(test->images.col(j).data());
        ran = runner->invoke();
        runner->get_output(logits.data());
      }
      allocations = counter.count();
    }
    {  // the counter is live in this binary: an allocation is seen
      fleetdl_test::HeapCounter probe;
      auto* v = new std::vector<int>(3);
      delete v;
      CHECK(probe.count() >= 1);
    }
    CHECK(ran);
    CHECK(allocations == 0);
    CHECK(runner->arena_used() == runner->arena_planned());
  }

  // Percentile calibration also works end to end.
  cz::CalibrationOptions po;
  po.method = cz::CalibrationMethod::percentile;
  po.percentile = 99.99;
  auto calp = cz::calibrate(m, xcal, 100, po);
  REQUIRE(calp.ok());
  auto qp = cz::quantize_model(m, *calp);
  REQUIRE(qp.ok());
  auto evp = cz::evaluate_int8(*qp, test->images, test->labels);
  REQUIRE(evp.ok());
  WARN("cnn1 int8 with percentile 99.99 calibration: " << 100 * evp->accuracy << "%");
  CHECK(std::fabs(evp->accuracy - fl.accuracy) <= 0.015);
}
