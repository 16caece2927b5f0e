// fleetdl/partition/nonn.hpp — NoNN students (Bhardwaj, Lin, Marculescu, ACM
// TECS 2019): the teacher's feature layer and its pooled activations, the
// student networks and the unified student (students as Concat branches + a
// Dense combiner), the NoNN loss with its gradients, joint training of the
// students against the teacher, extraction of each student for its device and
// per-student costs.
//
// The pipeline: pooled_teacher_activations() on a validation split ->
// partition_filters() (assign.hpp) -> make_unified_student() with the
// manifest's sizes -> train_nonn() -> extract_student(i) for device i and
// combiner() for the node that joins the students' features.
//
// Loss (REFERENCES §1):
//   L = 2·α·T²·KL(p_T^T ‖ p_S^T) + (1 − α)·CE(z_S, y) + β·mean_{b,d}(ŝ − t̂)²
// where p^T = softmax(z / T), ŝ is the per-sample L2-normalised concatenation
// of the students' features (student order) and t̂ the same of the teacher's
// pooled activations at the filters P_1..P_N, in the same order.
// KL reduction: by default "batchmean" — summed over classes, averaged over
// samples, the KL divergence proper. The public NoNN code calls
// F.kl_div with its default element-wise mean, i.e. it also averages over
// classes, which makes its KD term #classes times smaller;
// KlReduction::elementwise_mean reproduces that.
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/core/parallel.hpp"
#include "fleetdl/core/rng.hpp"
#include "fleetdl/core/tensor.hpp"
#include "fleetdl/nn/loss.hpp"
#include "fleetdl/nn/model.hpp"
#include "fleetdl/nn/optim.hpp"
#include "fleetdl/nn/train.hpp"
#include "fleetdl/partition/assign.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

namespace fleetdl::partition {

// ---------------------------------------------------------------------------
// Teacher features

namespace detail::nonn {

template <class S>
bool has_conv(const nn::Node<S>& n) {
  switch (n.kind()) {
    case nn::NodeKind::conv2d: return true;
    case nn::NodeKind::sequential: {
      const auto& q = static_cast<const nn::Sequential<S>&>(n);
      for (Index i = 0; i < q.size(); ++i)
        if (has_conv(q.at(i))) return true;
      return false;
    }
    case nn::NodeKind::residual: {
      const auto& r = static_cast<const nn::Residual<S>&>(n);
      return has_conv(r.body()) || (r.projection() && has_conv(*r.projection()));
    }
    case nn::NodeKind::concat: {
      const auto& c = static_cast<const nn::Concat<S>&>(n);
      for (Index i = 0; i < c.size(); ++i)
        if (has_conv(c.branch(i))) return true;
      return false;
    }
    default: return false;
  }
}

/// Node kinds that may sit between the last conv and the feature node: they
/// keep a C×H×W map a conv block's map (normalisation, activation, pooling).
inline bool keeps_feature_map(nn::NodeKind k) {
  switch (k) {
    case nn::NodeKind::batchnorm:
    case nn::NodeKind::relu:
    case nn::NodeKind::relu6:
    case nn::NodeKind::sigmoid:
    case nn::NodeKind::tanh:
    case nn::NodeKind::maxpool2d:
    case nn::NodeKind::avgpool2d:
    case nn::NodeKind::dropout: return true;
    default: return false;
  }
}

/// Global average pooling of a batch of C×H×W maps into `out` (C × n), the
/// same arithmetic as nn::GlobalAvgPool.
template <class S, class Out>
void global_average(const Matrix<S>& maps, const Shape& shape, Out&& out) {
  const Index hw = shape.spatial(), c = shape.c;
  for (Index j = 0; j < maps.cols(); ++j)
    out.col(j) = ConstMatrixMap<S>(maps.col(j).data(), hw, c).colwise().mean().transpose();
}

}  // namespace detail::nonn

/// Top-level index of the node whose input is the teacher's feature map: the
/// first GlobalAvgPool or Flatten after the last top-level node that contains
/// a conv (NoNN's "last conv block after BN+ReLU", the map feeding the
/// classifier head). Only BatchNorm, activations, pooling and Dropout may sit
/// between that conv and the feature node. Errors (Errc::invalid_argument):
/// no conv layer, no GlobalAvgPool/Flatten after it, another node in between,
/// or a feature map with fewer than 2 channels.
template <class S>
Result<Index> teacher_feature_node(const nn::Model<S>& teacher) {
  Index last = -1;
  for (Index i = 0; i < teacher.size(); ++i)
    if (detail::nonn::has_conv(teacher.node(i))) last = i;
  if (last < 0)
    return make_error(Errc::invalid_argument,
                      "teacher_feature_node: teacher has no conv layer (NoNN partitions the filters of the last "
                      "conv block)");
  Index feature = -1;
  for (Index i = last + 1; i < teacher.size() && feature < 0; ++i) {
    const nn::NodeKind k = teacher.node(i).kind();
    if (k == nn::NodeKind::global_avg_pool || k == nn::NodeKind::flatten) {
      feature = i;
    } else if (!detail::nonn::keeps_feature_map(k)) {
      return make_error(Errc::invalid_argument,
                        "teacher_feature_node: node " + std::to_string(i) + " (" + teacher.node(i).type_name() +
                            ") sits between the last conv (node " + std::to_string(last) +
                            ") and the feature pooling; expected only batchnorm, activations or pooling there");
    }
  }
  if (feature < 0)
    return make_error(Errc::invalid_argument, "teacher_feature_node: no global_avg_pool or flatten node after the "
                                              "last conv (node " + std::to_string(last) + ")");
  const Shape& map = teacher.node(feature).input_shape();
  if (map.c < 2)
    return make_error(Errc::invalid_argument, "teacher_feature_node: the feature map (input of node " +
                                                  std::to_string(feature) + ") is " + map.str() +
                                                  "; need C x H x W with C >= 2 filters to partition");
  return feature;
}

/// Shape of the teacher's feature map (the input of teacher_feature_node()).
template <class S>
Result<Shape> teacher_feature_shape(const nn::Model<S>& teacher) {
  auto f = teacher_feature_node(teacher);
  if (!f) return std::move(f).error();
  return teacher.node(*f).input_shape();
}

/// Teacher logits and pooled feature activations (C × n) of one batch.
template <class S>
struct TeacherOutputs {
  Matrix<S> logits;
  Matrix<S> pooled;
};

namespace detail::nonn {
/// Eval-mode teacher forward of a batch whose rows were already checked.
template <class S>
void teacher_batch(nn::Model<S>& teacher, Index feature, const Matrix<S>& x, ThreadPool* pool,
                   TeacherOutputs<S>& out) {
  nn::ExecContext<S> ctx{pool, false, nullptr};
  out.logits = teacher.forward(x, ctx);
  const Shape map = teacher.node(feature).input_shape();
  out.pooled.resize(map.c, x.cols());
  global_average(teacher.activation(feature - 1), map, out.pooled);
}
}  // namespace detail::nonn

/// Teacher logits and pooled activations of the feature map for one batch,
/// in eval mode (BatchNorm running statistics; the teacher is not changed).
template <class S>
Result<TeacherOutputs<S>> teacher_outputs(nn::Model<S>& teacher, const Matrix<S>& x, ThreadPool* pool = nullptr) {
  auto f = teacher_feature_node(teacher);
  if (!f) return std::move(f).error();
  if (x.rows() != teacher.input_shape().size())
    return make_error(Errc::shape_mismatch, "teacher_outputs: images have " + std::to_string(x.rows()) +
                                                " rows, the teacher expects " + teacher.input_shape().str());
  TeacherOutputs<S> out;
  detail::nonn::teacher_batch(teacher, *f, x, pool, out);
  return out;
}

/// Global-average-pooled teacher feature activations, C × N (one column per
/// image), computed in eval mode `batch` images at a time. Transpose it for
/// filter_graph()/partition_filters(), which take one row per image.
template <class S>
Result<Matrix<S>> pooled_teacher_activations(nn::Model<S>& teacher, const Matrix<S>& images, Index batch = 256,
                                             ThreadPool* pool = nullptr) {
  auto f = teacher_feature_node(teacher);
  if (!f) return std::move(f).error();
  if (images.rows() != teacher.input_shape().size())
    return make_error(Errc::shape_mismatch, "pooled_teacher_activations: images have " +
                                                std::to_string(images.rows()) + " rows, the teacher expects " +
                                                teacher.input_shape().str());
  if (batch < 1)
    return make_error(Errc::invalid_argument,
                      "pooled_teacher_activations: batch " + std::to_string(batch) + " must be >= 1");
  const Shape map = teacher.node(*f).input_shape();
  Matrix<S> acts(map.c, images.cols());
  nn::ExecContext<S> ctx{pool, false, nullptr};
  Matrix<S> xb;
  for (Index b = 0; b < images.cols(); b += batch) {
    const Index e = std::min(images.cols(), b + batch);
    xb = images.middleCols(b, e - b);
    teacher.forward(xb, ctx);
    detail::nonn::global_average(teacher.activation(*f - 1), map, acts.middleCols(b, e - b));
  }
  return acts;
}

// ---------------------------------------------------------------------------
// Assignment checks and teacher feature selection

namespace detail::nonn {
/// N >= 1 students, each with >= 1 filter, indices in [0, C), no filter twice.
inline Result<void> check_assignment(const char* who, const std::vector<std::vector<Index>>& assignment, Index C) {
  if (assignment.empty())
    return make_error(Errc::invalid_argument, std::string(who) + ": N = 0 students (the assignment is empty)");
  std::vector<Index> owner(static_cast<std::size_t>(std::max<Index>(C, 0)), -1);
  for (std::size_t s = 0; s < assignment.size(); ++s) {
    if (assignment[s].empty())
      return make_error(Errc::invalid_argument, std::string(who) + ": student " + std::to_string(s) + " has no filters");
    for (const Index f : assignment[s]) {
      if (f < 0 || f >= C)
        return make_error(Errc::invalid_argument, std::string(who) + ": student " + std::to_string(s) + " has filter " +
                                                      std::to_string(f) + ", outside the teacher's C = " +
                                                      std::to_string(C) + " filters");
      Index& o = owner[static_cast<std::size_t>(f)];
      if (o >= 0)
        return make_error(Errc::invalid_argument, std::string(who) + ": filter " + std::to_string(f) +
                                                      " is assigned twice (students " + std::to_string(o) + " and " +
                                                      std::to_string(s) + "); students must be disjoint");
      o = static_cast<Index>(s);
    }
  }
  return success();
}

inline std::vector<Index> flatten_assignment(const std::vector<std::vector<Index>>& assignment) {
  std::vector<Index> rows;
  for (const auto& a : assignment) rows.insert(rows.end(), a.begin(), a.end());
  return rows;
}

template <class S>
void gather_rows(const Matrix<S>& src, const std::vector<Index>& rows, Matrix<S>& dst) {
  dst.resize(static_cast<Index>(rows.size()), src.cols());
  for (Index j = 0; j < src.cols(); ++j)
    for (std::size_t r = 0; r < rows.size(); ++r) dst(static_cast<Index>(r), j) = src(rows[r], j);
}
}  // namespace detail::nonn

/// Rows P_1..P_N of the teacher's pooled activations (C × n), in the
/// students' order: the targets the students' concatenated features match.
template <class S>
Result<Matrix<S>> select_teacher_features(const Matrix<S>& teacher_acts,
                                          const std::vector<std::vector<Index>>& assignment) {
  auto ok = detail::nonn::check_assignment("select_teacher_features", assignment, teacher_acts.rows());
  if (!ok) return std::move(ok).error();
  Matrix<S> out;
  detail::nonn::gather_rows(teacher_acts, detail::nonn::flatten_assignment(assignment), out);
  return out;
}
template <class S>
Result<Matrix<S>> select_teacher_features(const Matrix<S>& teacher_acts, const PartitionManifest& manifest) {
  return select_teacher_features(teacher_acts, manifest.assignment);
}

// ---------------------------------------------------------------------------
// Students

/// Architecture of one student: `blocks` backbone blocks (conv 3x3 pad 1 with
/// width·2^b channels, BatchNorm, ReLU, maxpool 2), then NoNN's bridge
/// (conv 1x1 to |P_i| channels, BatchNorm, ReLU), GlobalAvgPool (the
/// teacher's pooled map is 1×1) and Flatten: |P_i| features per image.
struct StudentSpec {
  Index width = 16;       ///< channels of the first backbone conv
  Index blocks = 2;       ///< backbone blocks (1..6)
  std::uint64_t seed = 1; ///< PyTorch-default initialisation
};

namespace detail::nonn {
inline Result<void> check_spec(const char* who, const StudentSpec& spec) {
  if (spec.blocks < 1 || spec.blocks > 6)
    return make_error(Errc::invalid_argument,
                      std::string(who) + ": blocks = " + std::to_string(spec.blocks) + " must be in [1, 6]");
  if (spec.width < 1 || spec.width > FLEETDL_MAX_DIM || (spec.width << (spec.blocks - 1)) > FLEETDL_MAX_DIM)
    return make_error(Errc::invalid_argument, std::string(who) + ": width = " + std::to_string(spec.width) +
                                                  " must be >= 1 and width·2^(blocks-1) <= FLEETDL_MAX_DIM");
  return success();
}

template <class S>
std::vector<nn::NodePtr<S>> student_nodes(Index in_channels, Index filters, const StudentSpec& spec) {
  std::vector<nn::NodePtr<S>> v;
  Index cin = in_channels;
  for (Index b = 0; b < spec.blocks; ++b) {
    const Index w = spec.width << b;
    v.push_back(std::make_unique<nn::Conv2D<S>>(cin, w, 3, 1, 1));
    v.push_back(std::make_unique<nn::BatchNorm<S>>(w));
    v.push_back(nn::relu<S>());
    v.push_back(std::make_unique<nn::MaxPool2D<S>>(2));
    cin = w;
  }
  v.push_back(std::make_unique<nn::Conv2D<S>>(cin, filters, 1));  // the bridge
  v.back()->label = "bridge";
  v.push_back(std::make_unique<nn::BatchNorm<S>>(filters));
  v.push_back(nn::relu<S>());
  v.push_back(std::make_unique<nn::GlobalAvgPool<S>>());
  v.push_back(std::make_unique<nn::Flatten<S>>());
  return v;
}

inline Result<void> check_filters(const char* who, Index i, Index filters) {
  if (filters < 1 || filters > FLEETDL_MAX_DIM)
    return make_error(Errc::invalid_argument, std::string(who) + ": student " + std::to_string(i) + " has |P_i| = " +
                                                  std::to_string(filters) + " filters; need 1..FLEETDL_MAX_DIM");
  return success();
}
}  // namespace detail::nonn

/// One student for a per-sample input shape, producing `filters` (= |P_i|)
/// features, initialised from spec.seed.
template <class S>
Result<nn::Model<S>> make_student(const Shape& input, Index filters, const StudentSpec& spec = {}) {
  FLEETDL_TRY(detail::nonn::check_spec("make_student", spec));
  FLEETDL_TRY(detail::nonn::check_filters("make_student", 0, filters));
  auto m = nn::Model<S>::create(input, detail::nonn::student_nodes<S>(input.c, filters, spec));
  if (!m) return make_error(m.error().code, "make_student: input " + input.str() + ": " + m.error().message);
  m->init(spec.seed);
  return m;
}

/// The N students trained together: `body` is one Concat node whose branch i
/// is student i (output: the Σ|P_i| features in student order) and `head` the
/// combiner Dense(Σ|P_i|, classes).
template <class S>
struct UnifiedStudent {
  nn::Model<S> body;
  nn::Model<S> head;

  /// The Concat node of the body (the body must have that structure, as
  /// make_unified_student builds it; train_nonn checks it).
  const nn::Concat<S>& students_node() const { return static_cast<const nn::Concat<S>&>(body.node(0)); }
  Index students() const { return students_node().size(); }
  /// Features (|P_i|) produced by student i.
  Index student_features(Index i) const { return students_node().branch(i).output_shape().size(); }
  Index features() const { return body.output_shape().size(); }
  Index classes() const { return head.output_shape().size(); }
};

namespace detail::nonn {
template <class S>
Result<void> check_unified(const char* who, const UnifiedStudent<S>& u) {
  if (u.body.size() != 1 || u.body.node(0).kind() != nn::NodeKind::concat)
    return make_error(Errc::invalid_argument,
                      std::string(who) + ": the unified student's body must be one concat node of the students");
  if (u.head.size() < 1 || u.head.input_shape().size() != u.body.output_shape().size())
    return make_error(Errc::shape_mismatch, std::string(who) + ": the combiner takes " + u.head.input_shape().str() +
                                                ", the students produce " + u.body.output_shape().str());
  return success();
}
}  // namespace detail::nonn

/// Unified student for N = sizes.size() students with sizes[i] = |P_i|
/// features each and a combiner over `classes`. Student parameters are
/// initialised from spec.seed (in student order), the combiner from a stream
/// derived from it.
template <class S>
Result<UnifiedStudent<S>> make_unified_student(const Shape& input, const std::vector<Index>& sizes, Index classes,
                                               const StudentSpec& spec = {}) {
  if (sizes.empty())
    return make_error(Errc::invalid_argument, "make_unified_student: N = 0 students (sizes is empty)");
  FLEETDL_TRY(detail::nonn::check_spec("make_unified_student", spec));
  if (classes < 1 || classes > FLEETDL_MAX_DIM)
    return make_error(Errc::invalid_argument,
                      "make_unified_student: classes = " + std::to_string(classes) + " must be >= 1");
  Index total = 0;
  auto cat = std::make_unique<nn::Concat<S>>();
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    FLEETDL_TRY(detail::nonn::check_filters("make_unified_student", static_cast<Index>(i), sizes[i]));
    total += sizes[i];
    cat->add(nn::Sequential<S>(detail::nonn::student_nodes<S>(input.c, sizes[i], spec)));
  }
  if (total > FLEETDL_MAX_DIM)
    return make_error(Errc::invalid_argument, "make_unified_student: " + std::to_string(total) +
                                                  " features in total exceed FLEETDL_MAX_DIM");
  std::vector<nn::NodePtr<S>> body_nodes;
  body_nodes.push_back(std::move(cat));
  auto body = nn::Model<S>::create(input, std::move(body_nodes));
  if (!body) return make_error(body.error().code, "make_unified_student: input " + input.str() + ": " +
                                                      body.error().message);
  std::vector<nn::NodePtr<S>> head_nodes;
  head_nodes.push_back(std::make_unique<nn::Dense<S>>(total, classes));
  head_nodes.back()->label = "combiner";
  auto head = nn::Model<S>::create(Shape{total, 1, 1}, std::move(head_nodes));
  if (!head) return make_error(head.error().code, "make_unified_student: combiner: " + head.error().message);
  body->init(spec.seed);
  head->init(Rng(spec.seed).fork(0xC0B1).next_u64());
  UnifiedStudent<S> u{std::move(*body), std::move(*head)};
  return u;
}

/// Student i as a standalone model for its device: the nodes of branch i and
/// a copy of its parameters and BatchNorm buffers from the body's flat
/// buffers. Running every extracted student, concatenating their outputs in
/// order and applying combiner() gives the unified forward's bits.
template <class S>
Result<nn::Model<S>> extract_student(const UnifiedStudent<S>& u, Index i) {
  FLEETDL_TRY(detail::nonn::check_unified("extract_student", u));
  const nn::Concat<S>& cat = u.students_node();
  if (i < 0 || i >= cat.size())
    return make_error(Errc::invalid_argument, "extract_student: student " + std::to_string(i) + " of " +
                                                  std::to_string(cat.size()));
  Index po = 0, bo = 0;
  for (Index k = 0; k < i; ++k) {
    po += cat.branch(k).param_count();
    bo += cat.branch(k).buffer_count();
  }
  const nn::Sequential<S>& br = cat.branch(i);
  std::vector<nn::NodePtr<S>> nodes;
  for (Index k = 0; k < br.size(); ++k) nodes.push_back(br.at(k).clone());
  auto m = nn::Model<S>::create(u.body.input_shape(), std::move(nodes));
  if (!m) return make_error(m.error().code, "extract_student: student " + std::to_string(i) + ": " + m.error().message);
  m->params() = u.body.params().segment(po, m->param_count());
  m->buffers() = u.body.buffers().segment(bo, m->buffer_count());
  return m;
}

/// The combiner (the FC over the concatenated student features).
template <class S>
nn::Model<S> combiner(const UnifiedStudent<S>& u) {
  return u.head;
}

// ---------------------------------------------------------------------------
// Loss

enum class KlReduction {
  batchmean,         ///< Σ over classes, mean over samples (the KL divergence; default)
  elementwise_mean,  ///< mean over samples and classes (the public NoNN code: batchmean / #classes)
};

struct NonnLossOptions {
  double alpha = 0.9;        ///< weight of the KD term vs. cross-entropy
  double temperature = 4.0;  ///< T
  double beta = 1e4;         ///< weight of the activation-matching term
  KlReduction kl_reduction = KlReduction::batchmean;
};

/// The loss and its parts (raw and weighted).
struct NonnLossTerms {
  double kl = 0;       ///< KL(p_T^T ‖ p_S^T) with the chosen reduction
  double ce = 0;       ///< CE(z_S, y), mean over samples
  double am = 0;       ///< mean over samples and features of (ŝ − t̂)²
  double kd_term = 0;  ///< 2·α·T²·kl
  double ce_term = 0;  ///< (1 − α)·ce
  double am_term = 0;  ///< β·am
  double total = 0;    ///< kd_term + ce_term + am_term
};

/// The NoNN loss (see the header comment) for a batch: logits are classes ×
/// n, features Σ|P_i| × n (teacher features already selected in student
/// order). When not null, grad_logits receives dL/d(student logits) and
/// grad_feats dL/d(student features). Shapes are preconditions.
template <class S>
NonnLossTerms nonn_loss(const Matrix<S>& student_logits, const Matrix<S>& teacher_logits,
                        const std::vector<std::uint8_t>& labels, const Matrix<S>& student_feats,
                        const Matrix<S>& teacher_feats, const NonnLossOptions& o, Matrix<S>* grad_logits,
                        Matrix<S>* grad_feats) {
  FLEETDL_ASSERT(student_logits.rows() == teacher_logits.rows() && student_logits.cols() == teacher_logits.cols(),
                 "nonn_loss: student and teacher logits differ in shape");
  FLEETDL_ASSERT(student_feats.rows() == teacher_feats.rows() && student_feats.cols() == teacher_feats.cols(),
                 "nonn_loss: student and teacher features differ in shape");
  FLEETDL_ASSERT(student_feats.cols() == student_logits.cols(), "nonn_loss: features and logits differ in batch");
  FLEETDL_ASSERT(o.temperature > 0.0, "nonn_loss: temperature must be > 0");
  const Index n = student_logits.cols(), k = student_logits.rows();
  const double T = o.temperature;
  const double kl_div = static_cast<double>(n) * (o.kl_reduction == KlReduction::elementwise_mean ? static_cast<double>(k) : 1.0);
  NonnLossTerms t;
  const Matrix<S> ps = nn::detail::softmax_cols(student_logits, T), pt = nn::detail::softmax_cols(teacher_logits, T);
  for (Index j = 0; j < n; ++j)
    for (Index i = 0; i < k; ++i) {
      const double q = static_cast<double>(pt(i, j));
      if (q > 0) t.kl += q * (std::log(q) - std::log(static_cast<double>(ps(i, j))));
    }
  t.kl /= kl_div;
  Matrix<S> gce;
  t.ce = nn::softmax_cross_entropy(student_logits, labels, grad_logits ? &gce : nullptr);
  Matrix<S> gam;
  t.am = nn::activation_matching(student_feats, teacher_feats, grad_feats ? &gam : nullptr);
  const double kd_w = 2.0 * o.alpha * T * T;
  t.kd_term = kd_w * t.kl;
  t.ce_term = (1.0 - o.alpha) * t.ce;
  t.am_term = o.beta * t.am;
  t.total = t.kd_term + t.ce_term + t.am_term;
  // d KL / d z_S = (p_S^T − p_T^T) / (T · divisor), so the KD term's gradient
  // is 2·α·T·(p_S^T − p_T^T) / divisor.
  if (grad_logits)
    *grad_logits = (ps - pt) * static_cast<S>(kd_w / (T * kl_div)) + gce * static_cast<S>(1.0 - o.alpha);
  if (grad_feats) *grad_feats = gam * static_cast<S>(o.beta);
  return t;
}

// ---------------------------------------------------------------------------
// Training

enum class NonnOptimizer { sgd, adam };

struct NonnTrainOptions {
  int epochs = 1;
  Index batch = 64;
  std::uint64_t seed = 1;  ///< epoch order (and Dropout masks, if any)
  bool shuffle = true;
  NonnLossOptions loss{};
  NonnOptimizer optimizer = NonnOptimizer::sgd;
  nn::SgdOptions sgd{0.01, 0.9, 0.0, 0.0, false};  ///< SGD with momentum 0.9
  nn::AdamOptions adam{};
  nn::LrSchedule schedule{};  ///< per epoch, on the optimizer's base rate
  /// Compute the teacher's outputs (logits and the selected pooled
  /// activations) for every training image once, before the first epoch,
  /// instead of once per batch per epoch: the teacher is fixed and runs in
  /// eval mode, so the targets are the same, and the teacher's forward
  /// (usually far costlier than the students') runs once instead of `epochs`
  /// times. Needs images x (classes + sum |P_i|) scalars of memory; above
  /// max_cache_bytes the per-batch path is used.
  bool cache_teacher = true;
  std::size_t max_cache_bytes = std::size_t{2} << 30;
};

struct NonnProgress {
  int epoch = 0, epochs = 0;  ///< epoch is 0-based
  Index batch = 0, batches = 0;
  double loss = 0;            ///< running mean of the total loss this epoch
  double lr = 0;
};

/// Per-epoch means over the training images (batches weighted by size).
struct NonnEpochReport {
  int epoch = 0;
  double loss = 0;
  double kd_term = 0, ce_term = 0, am_term = 0;
  double train_accuracy = 0;  ///< of the unified student, as seen during the epoch
  double seconds = 0;
};

struct NonnTrainReport {
  std::vector<NonnEpochReport> epochs;
  double seconds = 0;
  double images_per_second = 0;
};

struct NonnCallbacks {
  std::function<void(const NonnProgress&)> on_batch;
  std::function<void(const NonnEpochReport&)> on_epoch;
};

namespace detail::nonn {
template <class S>
std::unique_ptr<nn::Optimizer<S>> make_optimizer(const NonnTrainOptions& o) {
  if (o.optimizer == NonnOptimizer::adam) return std::make_unique<nn::Adam<S>>(o.adam);
  return std::make_unique<nn::Sgd<S>>(o.sgd);
}

template <class S>
Result<Index> check_training(const UnifiedStudent<S>& u, const nn::Model<S>& teacher,
                             const std::vector<std::vector<Index>>& assignment, const Matrix<S>& images,
                             const std::vector<std::uint8_t>& labels, const NonnTrainOptions& o) {
  const char* who = "train_nonn";
  FLEETDL_TRY(check_unified(who, u));
  auto feature = teacher_feature_node(teacher);
  if (!feature) return make_error(feature.error().code, std::string(who) + ": " + feature.error().message);
  const Index C = teacher.node(*feature).input_shape().c;
  FLEETDL_TRY(check_assignment(who, assignment, C));
  const Index N = u.students();
  if (static_cast<Index>(assignment.size()) != N)
    return make_error(Errc::invalid_argument, std::string(who) + ": the assignment has " +
                                                  std::to_string(assignment.size()) +
                                                  " students, the unified student " + std::to_string(N));
  for (Index i = 0; i < N; ++i) {
    const Index got = static_cast<Index>(assignment[static_cast<std::size_t>(i)].size());
    if (got != u.student_features(i))
      return make_error(Errc::invalid_argument, std::string(who) + ": student " + std::to_string(i) + " is assigned " +
                                                    std::to_string(got) + " teacher filters but outputs " +
                                                    std::to_string(u.student_features(i)) + " features");
  }
  if (teacher.input_shape() != u.body.input_shape())
    return make_error(Errc::shape_mismatch, std::string(who) + ": the teacher takes " + teacher.input_shape().str() +
                                                ", the students " + u.body.input_shape().str());
  if (teacher.output_shape().size() != u.classes())
    return make_error(Errc::shape_mismatch, std::string(who) + ": the teacher has " +
                                                std::to_string(teacher.output_shape().size()) +
                                                " outputs, the combiner " + std::to_string(u.classes()) + " classes");
  if (images.rows() != u.body.input_shape().size())
    return make_error(Errc::shape_mismatch, std::string(who) + ": images have " + std::to_string(images.rows()) +
                                                " rows, the students expect " + u.body.input_shape().str());
  if (static_cast<Index>(labels.size()) != images.cols())
    return make_error(Errc::invalid_argument, std::string(who) + ": " + std::to_string(labels.size()) +
                                                  " labels for " + std::to_string(images.cols()) + " images");
  if (images.cols() < 1) return make_error(Errc::invalid_argument, std::string(who) + ": no training images");
  for (std::size_t j = 0; j < labels.size(); ++j)
    if (labels[j] >= u.classes())
      return make_error(Errc::invalid_argument, std::string(who) + ": label " + std::to_string(labels[j]) +
                                                    " of image " + std::to_string(j) + " is not below " +
                                                    std::to_string(u.classes()) + " classes");
  if (o.batch < 1 || o.epochs < 0)
    return make_error(Errc::invalid_argument, std::string(who) + ": batch = " + std::to_string(o.batch) +
                                                  " must be >= 1 and epochs = " + std::to_string(o.epochs) + " >= 0");
  const NonnLossOptions& l = o.loss;
  if (!(l.alpha >= 0.0 && l.alpha <= 1.0) || !(l.temperature > 0.0 && std::isfinite(l.temperature)) ||
      !(l.beta >= 0.0 && std::isfinite(l.beta)))
    return make_error(Errc::invalid_argument, std::string(who) + ": loss options need alpha in [0, 1], temperature > 0 "
                                                                 "and beta >= 0 (finite)");
  const double lr = o.optimizer == NonnOptimizer::adam ? o.adam.lr : o.sgd.lr;
  if (!(lr > 0.0 && std::isfinite(lr)))
    return make_error(Errc::invalid_argument, std::string(who) + ": the learning rate must be > 0");
  return *feature;
}
}  // namespace detail::nonn

/// Trains the unified student jointly against the teacher (NoNN): per batch,
/// the teacher's eval-mode logits and pooled activations; body forward
/// (training mode) -> features; head forward -> logits; nonn_loss; head
/// backward gives d(features), to which the activation-matching gradient is
/// added; body backward; one optimizer step on each model (both optimizers
/// are element-wise, so this is one step over the joint parameters). The
/// teacher is not changed. The same seed and thread count give the same bits.
/// All inputs are checked before anything is touched; on error nothing
/// changes.
template <class S>
Result<NonnTrainReport> train_nonn(UnifiedStudent<S>& u, nn::Model<S>& teacher,
                                   const std::vector<std::vector<Index>>& assignment, const Matrix<S>& images,
                                   const std::vector<std::uint8_t>& labels, const NonnTrainOptions& o,
                                   ThreadPool* pool = nullptr, const NonnCallbacks& cb = {}) {
  auto feature = detail::nonn::check_training(u, teacher, assignment, images, labels, o);
  if (!feature) return std::move(feature).error();
  const std::vector<Index> rows = detail::nonn::flatten_assignment(assignment);
  auto body_opt = detail::nonn::make_optimizer<S>(o);
  auto head_opt = detail::nonn::make_optimizer<S>(o);
  const double base_lr = body_opt->lr();
  Rng order_rng(o.seed);
  Rng dropout_rng = order_rng.fork(0xD0);
  nn::ExecContext<S> ctx{pool, true, &dropout_rng};
  const Index n = images.cols();
  const Index batches = (n + o.batch - 1) / o.batch;
  std::vector<Index> order(static_cast<std::size_t>(n));
  Matrix<S> xb, t_sel, t_logits, g_logits, g_feats, d_feats;
  std::vector<std::uint8_t> yb;
  TeacherOutputs<S> tout;
  NonnTrainReport rep;
  const auto t0 = std::chrono::steady_clock::now();
  // the teacher's targets for every image, once (see cache_teacher)
  const double cache_bytes = static_cast<double>(n) * static_cast<double>(u.classes() + static_cast<Index>(rows.size())) *
                             static_cast<double>(sizeof(S));
  const bool cached = o.cache_teacher && o.epochs > 0 && cache_bytes <= static_cast<double>(o.max_cache_bytes);
  Matrix<S> all_logits, all_sel;
  if (cached) {
    all_logits.resize(u.classes(), n);
    all_sel.resize(static_cast<Index>(rows.size()), n);
    constexpr Index chunk = 256;
    for (Index b = 0; b < n; b += chunk) {
      const Index e = std::min(n, b + chunk);
      xb = images.middleCols(b, e - b);
      detail::nonn::teacher_batch(teacher, *feature, xb, pool, tout);
      detail::nonn::gather_rows(tout.pooled, rows, t_sel);
      all_logits.middleCols(b, e - b) = tout.logits;
      all_sel.middleCols(b, e - b) = t_sel;
    }
  }
  for (int ep = 0; ep < o.epochs; ++ep) {
    const auto te = std::chrono::steady_clock::now();
    const double lr = o.schedule.at(base_lr, ep);
    body_opt->set_lr(lr);
    head_opt->set_lr(lr);
    std::iota(order.begin(), order.end(), Index{0});
    if (o.shuffle) order_rng.shuffle(order.begin(), order.end());
    NonnEpochReport er;
    er.epoch = ep;
    Index correct = 0;
    for (Index bi = 0; bi < batches; ++bi) {
      const Index b = bi * o.batch, e = std::min(n, b + o.batch);
      nn::detail::gather_batch(images, labels, order, b, e, xb, yb);
      if (cached) {
        t_logits.resize(all_logits.rows(), e - b);
        t_sel.resize(all_sel.rows(), e - b);
        for (Index i = b; i < e; ++i) {
          t_logits.col(i - b) = all_logits.col(order[static_cast<std::size_t>(i)]);
          t_sel.col(i - b) = all_sel.col(order[static_cast<std::size_t>(i)]);
        }
      } else {
        detail::nonn::teacher_batch(teacher, *feature, xb, pool, tout);
        detail::nonn::gather_rows(tout.pooled, rows, t_sel);
        t_logits = tout.logits;
      }
      const Matrix<S>& feats = u.body.forward(xb, ctx);
      const Matrix<S>& logits = u.head.forward(feats, ctx);
      const NonnLossTerms l = nonn_loss(logits, t_logits, yb, feats, t_sel, o.loss, &g_logits, &g_feats);
      correct += nn::detail::count_correct(logits, yb);
      u.body.zero_grad();
      u.head.zero_grad();
      u.head.backward(g_logits, ctx, &d_feats);
      d_feats += g_feats;
      u.body.backward(d_feats, ctx);
      body_opt->step(u.body.params(), std::as_const(u.body).grads());
      head_opt->step(u.head.params(), std::as_const(u.head).grads());
      const double w = static_cast<double>(e - b);
      er.loss += l.total * w;
      er.kd_term += l.kd_term * w;
      er.ce_term += l.ce_term * w;
      er.am_term += l.am_term * w;
      if (cb.on_batch) cb.on_batch({ep, o.epochs, bi + 1, batches, er.loss / static_cast<double>(e), lr});
    }
    const double nd = static_cast<double>(n);
    er.loss /= nd;
    er.kd_term /= nd;
    er.ce_term /= nd;
    er.am_term /= nd;
    er.train_accuracy = static_cast<double>(correct) / nd;
    er.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count();
    rep.epochs.push_back(er);
    if (cb.on_epoch) cb.on_epoch(er);
  }
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  rep.images_per_second = rep.seconds > 0 ? static_cast<double>(n) * o.epochs / rep.seconds : 0.0;
  return rep;
}

// ---------------------------------------------------------------------------
// Costs

/// What one module (a student, the combiner or the teacher) costs a device.
struct StudentCost {
  Index params = 0;                 ///< trainable scalars
  Index weight_bytes = 0;           ///< stored bytes: (params + BatchNorm buffers) · sizeof(S)
  /// Peak activation bytes per image for a layer-by-layer runtime that keeps
  /// only the current layer's input and output: max over leaf layers of
  /// (input + output activation bytes). Excludes im2col scratch and, for
  /// residual/concat graphs, the extra live branch tensors.
  Index peak_activation_bytes = 0;
  Index macs = 0;                   ///< multiply-accumulates per image (forward)
  Index bytes_in_per_image = 0;     ///< input bytes per image (the image for a student)
  Index bytes_sent_per_image = 0;   ///< output bytes per image (|P_i| · sizeof(S) for a student)
};

/// Costs of a module from its cost_report().
template <class S>
StudentCost module_cost(const nn::Model<S>& m) {
  StudentCost c;
  c.params = m.param_count();
  c.weight_bytes = (m.param_count() + m.buffer_count()) * static_cast<Index>(sizeof(S));
  for (const nn::NodeCost& r : m.cost_report(false)) c.macs += r.macs;
  for (const nn::NodeCost& r : m.cost_report(true))
    c.peak_activation_bytes = std::max(c.peak_activation_bytes, r.act_in_bytes + r.act_out_bytes);
  c.bytes_in_per_image = m.input_shape().size() * static_cast<Index>(sizeof(S));
  c.bytes_sent_per_image = m.output_shape().size() * static_cast<Index>(sizeof(S));
  return c;
}

struct NonnCosts {
  std::vector<StudentCost> students;  ///< per extracted student, in order
  StudentCost combiner;               ///< the FC node joining their features
};

/// Per-device costs of a unified student: each extracted student and the combiner.
template <class S>
Result<NonnCosts> nonn_costs(const UnifiedStudent<S>& u) {
  FLEETDL_TRY(detail::nonn::check_unified("nonn_costs", u));
  NonnCosts c;
  for (Index i = 0; i < u.students(); ++i) {
    auto s = extract_student(u, i);
    if (!s) return std::move(s).error();
    c.students.push_back(module_cost(*s));
  }
  c.combiner = module_cost(u.head);
  return c;
}

}  // namespace fleetdl::partition
