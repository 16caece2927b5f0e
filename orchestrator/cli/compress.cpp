// orchestrator/cli/compress.cpp — `fleetdl compress`, the compression
// pipeline of issue 5 over the library's stages (fleetdl/compress.hpp):
//
//   fleetdl compress --model m.fdl [--structured S] [--prune S [--prune-initial S0]]
//                    [--cluster K] [--quantize int8] [--distill teacher.fdl]
//                    --dataset fashion-mnist --out OUT [--json]
//
// Stages run in a fixed order: structured (remove the fraction S of the
// filters of every conv that has a consumer, lowest filter L1 first) ->
// prune (unstructured magnitude pruning to sparsity S per layer, or with
// --prune-scope global to one magnitude threshold over all layers so that
// small, sensitive layers keep more weights; one-shot before the
// fine-tuning, or with --prune-initial gradually during it) -> cluster
// (k-means weight sharing, K centroids per layer) -> quantize (int8
// post-training quantization into a micro blob; after prune or cluster its
// filters are zero-run Huffman coded and clustered ones get one scale, or
// stay raw with --raw-weights: a larger blob, one decode row less arena and
// no decoding at each invoke). After each float stage the
// model is fine-tuned for --finetune-epochs epochs with what the earlier
// stages fixed kept fixed: pruned weights stay zero (mask hooks) and
// clustered weights move only through their centroids (ClusterFineTuner,
// which leaves zeros at zero). With --distill the fine-tuning loss is Hinton
// KD against the teacher's logits (nn::kd_loss, T = --temperature, weight
// --alpha on the soft term) instead of cross-entropy.
//
// Gradual pruning (--prune-initial S0, Zhu & Gupta 2017): the prune stage's
// fine-tuning runs T = epochs x batches optimizer steps; compress::GradualPruner
// prunes after steps 0, dt, 2 dt, ..., n dt to the polynomial schedule
// s = S + (S0 - S) (1 - k/n)^3 (PolynomialSchedule), dt = max(1, batches / 10)
// (about every tenth of an epoch) and n = floor((T - 1) / dt), so the ramp
// spans the whole stage and its last pruning step, to exactly S, is at or
// before the last optimizer step. In between, the mask is fixed like the
// one-shot mask. The schedule needs n >= 1, i.e. T >= 2.
//
// Every ratio is against the INPUT model's float32 weight bytes (its
// parameter count x 4), so structured pruning's removed parameters count as
// savings and nothing else does: a float stage's size is the compressed store
// (compress/store.hpp, what --out holds without --quantize), the int8 stage's
// size is the micro blob. OUT is the .fdlz store of the last float stage, or
// with --quantize int8 the micro blob (input of `fleetdl export-header`). It
// is written atomically once every stage succeeded; a failure writes nothing.
#include "fleetdl/compress.hpp"
#include "fleetdl/core.hpp"
#include "fleetdl/data.hpp"
#include "fleetdl/io.hpp"
#include "fleetdl/nn.hpp"
#include "cli_common.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace fleetdl::cli {
namespace {

namespace cz = fleetdl::compress;

/// One row of the report.
struct StageReport {
  std::string stage;         ///< float, structured, prune, cluster, int8
  std::string detail;        ///< what the stage did, for the table
  Index params = 0;
  std::size_t stored_bytes = 0;
  double ratio = 0;          ///< input model's float32 weight bytes / stored_bytes
  double accuracy = 0;
  Index macs = 0;
  std::uint64_t arena_bytes = 0;  ///< int8 only
  double finetune_loss = std::nan("");
  std::string pruning;       ///< prune only: the "pruning" JSON object
};

struct FinetuneSetup {
  int epochs = 1;
  Index batch = 64;
  double lr = 1e-3;
  std::uint64_t seed = 1;
  nn::Model<float>* teacher = nullptr;
  double temperature = 4.0, alpha = 0.9;
};

/// Fine-tune `m` on (x, y). `before_step` runs between backward and the
/// optimizer step, `on_batch` after the step (the mask / codebook hooks).
/// Returns the last epoch's mean training loss.
double finetune(nn::Model<float>& m, const Matrix<float>& x, const std::vector<std::uint8_t>& y,
                const FinetuneSetup& s, ThreadPool* pool, const std::function<void(nn::Model<float>&)>& before_step,
                const std::function<void(const nn::TrainProgress&)>& on_batch) {
  nn::AdamOptions ao;
  ao.lr = s.lr;
  nn::Adam<float> opt(ao);
  nn::TrainOptions to;
  to.epochs = s.epochs;
  to.batch = s.batch;
  to.seed = s.seed;
  nn::TrainCallbacks cb;
  cb.on_batch = on_batch;
  nn::LossHook<float> loss;
  if (s.teacher != nullptr) {
    // Hinton KD against the teacher's logits on the same batch (eval mode:
    // no Dropout, so the student's Dropout stream is the same as without it)
    loss = [&s, ctx = nn::ExecContext<float>{pool, false, nullptr}](
               const Matrix<float>& logits, const std::vector<std::uint8_t>& labels, const Matrix<float>& xb,
               Matrix<float>* grad) mutable {
      const Matrix<float>& soft = s.teacher->forward(xb, ctx);
      return nn::kd_loss(logits, soft, labels, s.temperature, s.alpha, grad);
    };
  }
  const auto rep = nn::train_classifier(m, opt, x, y, to, pool, cb, before_step, loss);
  return rep.epochs.empty() ? std::nan("") : rep.epochs.back().loss;
}

Index total_macs(const nn::Model<float>& m) {
  Index s = 0;
  for (const auto& c : m.cost_report(false)) s += c.macs;
  return s;
}

std::string stage_json(const StageReport& r) {
  std::ostringstream o;
  o << "{\"stage\":\"" << r.stage << "\",\"detail\":\"" << json_escape(r.detail) << "\",\"params\":" << r.params
    << ",\"stored_bytes\":" << r.stored_bytes << ",\"ratio\":" << json_num(r.ratio)
    << ",\"accuracy\":" << json_num(r.accuracy) << ",\"macs\":" << r.macs << ",\"arena_bytes\":";
  if (r.stage == "int8")
    o << r.arena_bytes;
  else
    o << "null";
  o << ",\"finetune_loss\":" << json_num(r.finetune_loss) << ",\"pruning\":" << (r.pruning.empty() ? "null" : r.pruning)
    << "}";
  return o.str();
}

/// The prune stage's "pruning" object: the schedule, the mask's pruned count
/// after each pruning step, and the exact zeros of every prunable tensor of
/// `m` (what the stage's store holds).
std::string pruning_json(nn::Model<float>& m, double final_sparsity, const std::optional<cz::PolynomialSchedule>& sched,
                         Index optimizer_steps, const std::vector<Index>& pruned_by_step, cz::PruneScope scope) {
  std::ostringstream o;
  o << "{\"scope\":\"" << (scope == cz::PruneScope::global ? "global" : "layer") << "\",\"schedule\":\""
    << (sched ? "polynomial" : "one-shot") << "\",\"initial\":"
    << (sched ? json_num(sched->initial) : std::string("null")) << ",\"final\":" << json_num(final_sparsity)
    << ",\"pruning_steps\":" << (sched ? sched->steps + 1 : 1) << ",\"every\":"
    << (sched ? std::to_string(sched->every) : std::string("null")) << ",\"optimizer_steps\":" << optimizer_steps
    << ",\"pruned_after_each_pruning_step\":[";
  for (std::size_t i = 0; i < pruned_by_step.size(); ++i) o << (i ? "," : "") << pruned_by_step[i];
  o << "]";
  Index zeros = 0, weights = 0;
  std::ostringstream layers;
  const float* p = m.params().data();
  const auto ts = cz::prunable_tensors(m);
  for (std::size_t i = 0; i < ts.size(); ++i) {
    const Index z = static_cast<Index>(std::count(p + ts[i].offset, p + ts[i].offset + ts[i].size, 0.0f));
    layers << (i ? "," : "") << "{\"name\":\"" << json_escape(ts[i].name) << "\",\"weights\":" << ts[i].size
           << ",\"zeros\":" << z << "}";
    zeros += z;
    weights += ts[i].size;
  }
  o << ",\"prunable_weights\":" << weights << ",\"zero_weights\":" << zeros << ",\"layers\":[" << layers.str()
    << "]}";
  return o.str();
}

}  // namespace

int cmd_compress(int argc, char** argv) {
  const std::string cmd = "compress";
  Args a(cmd, argc, argv,
         {"--model", "--prune", "--prune-initial", "--prune-scope", "--structured", "--cluster", "--quantize", "--distill", "--dataset",
          "--data-dir", "--out", "--finetune-epochs", "--threads", "--train-limit", "--test-limit", "--calibration-limit",
          "--seed", "--lr", "--batch", "--temperature", "--alpha"},
         {"--json", "--no-progress", "--raw-weights"});
  if (!a.positional().empty()) throw UsageError{"unexpected argument '" + a.positional()[0] + "'"};
  if (!a.has("--model")) throw UsageError{"flag '--model' is required (the float model, .fdl)"};
  if (!a.has("--out")) throw UsageError{"flag '--out' is required (where to write the compressed model)"};
  const auto ds = dataset_option(a);
  const std::string model_path = a.str("--model", ""), out = a.str("--out", "");
  const auto fraction = [&](const std::string& flag) -> std::optional<double> {
    if (!a.has(flag)) return std::nullopt;
    const double v = a.number(flag, 0.0, 0.0, 1.0);
    if (v >= 1.0) throw UsageError{"flag '" + flag + "': " + a.str(flag, "") + " is out of range [0, 1)"};
    return v;
  };
  const std::optional<double> structured = fraction("--structured"), prune = fraction("--prune");
  const std::optional<double> prune_initial = fraction("--prune-initial");
  if (prune_initial && !prune)
    throw UsageError{"flag '--prune-initial' needs --prune S (the final sparsity it ramps to)"};
  if (prune_initial && *prune_initial >= *prune)
    throw UsageError{"flag '--prune-initial': " + a.str("--prune-initial", "") + " must be below --prune " +
                     a.str("--prune", "")};
  const std::string scope_name = a.str("--prune-scope", "layer");
  if (scope_name != "layer" && scope_name != "global")
    throw UsageError{"flag '--prune-scope': unknown scope '" + scope_name + "' (known: layer, global)"};
  if (a.has("--prune-scope") && !prune) throw UsageError{"flag '--prune-scope' needs --prune S"};
  const cz::PruneScope scope = scope_name == "global" ? cz::PruneScope::global : cz::PruneScope::per_layer;
  const std::optional<int> cluster =
      a.has("--cluster") ? std::optional<int>(static_cast<int>(a.integer("--cluster", 16, 2, 256))) : std::nullopt;
  const bool int8 = a.has("--quantize");
  if (int8 && a.str("--quantize", "") != "int8")
    throw UsageError{"flag '--quantize': unknown format '" + a.str("--quantize", "") + "' (known: int8)"};
  const bool raw_weights = a.has("--raw-weights");
  if (raw_weights && !int8) throw UsageError{"flag '--raw-weights' applies to the int8 blob: it needs --quantize int8"};
  if (!structured && !prune && !cluster && !int8)
    throw UsageError{"nothing to do: give at least one of --structured, --prune, --cluster, --quantize"};
  FinetuneSetup ft;
  ft.epochs = static_cast<int>(a.integer("--finetune-epochs", 1, 0, 100000));
  if (prune_initial && ft.epochs == 0)
    throw UsageError{"flag '--prune-initial' prunes during fine-tuning, but --finetune-epochs is 0"};
  ft.batch = a.integer("--batch", 64, 1, 1 << 20);
  ft.lr = a.number("--lr", 1e-3, 0.0, 1e6);
  ft.seed = static_cast<std::uint64_t>(a.integer("--seed", 1, 0, (1LL << 62)));
  ft.temperature = a.number("--temperature", 4.0, 1e-3, 1e3);
  ft.alpha = a.number("--alpha", 0.9, 0.0, 1.0);
  const int threads = static_cast<int>(a.integer("--threads", 1, 1, FLEETDL_MAX_THREADS));
  const Index train_limit = a.integer("--train-limit", -1, 1, 1LL << 40);
  const Index test_limit = a.integer("--test-limit", -1, 1, 1LL << 40);
  const Index calib_limit = a.integer("--calibration-limit", 1000, 1, 1LL << 40);
  const bool json = a.has("--json");
  if (auto why = unwritable_reason(out); !why.empty()) return fail(cmd, why);

  auto file = io::load_model<float>(model_path);
  if (!file) return fail(cmd, file.error().message);
  nn::Model<float> model = std::move(file->model);
  std::optional<nn::Model<float>> teacher;
  if (a.has("--distill")) {
    const std::string tp = a.str("--distill", "");
    auto tf = io::load_model<float>(tp);
    if (!tf) return fail(cmd, tf.error().message);
    teacher = std::move(tf->model);
    if (teacher->input_shape() != model.input_shape() || teacher->output_shape() != model.output_shape())
      return fail(cmd, tp + ": teacher maps " + teacher->input_shape().str() + " -> " +
                           teacher->output_shape().str() + ", the model " + model.input_shape().str() + " -> " +
                           model.output_shape().str());
    ft.teacher = &*teacher;
  }
  auto train = data::load_fashion_mnist<float>(ds.dir, true, train_limit);
  if (!train) return fail(cmd, train.error().message);
  auto test = data::load_fashion_mnist<float>(ds.dir, false, test_limit);
  if (!test) return fail(cmd, test.error().message);
  if (model.input_shape() != train->shape)
    return fail(cmd, model_path + ": model input " + model.input_shape().str() + " does not match the dataset's " +
                         train->shape.str());
  if (model.output_shape().size() != train->classes)
    return fail(cmd, model_path + ": model has " + std::to_string(model.output_shape().size()) +
                         " outputs, the dataset has " + std::to_string(train->classes) + " classes");

  // a fine-tuning stage's optimizer steps
  const Index batches = (train->images.cols() + ft.batch - 1) / ft.batch;
  const Index steps = batches * ft.epochs;
  if (prune_initial && steps < 2)
    return fail(cmd, "--prune-initial: the prune stage would have 1 fine-tuning step (" +
                         std::to_string(train->images.cols()) + " training images, batch " + std::to_string(ft.batch) +
                         ", 1 epoch); gradual pruning needs at least 2");

  ThreadPool pool(threads);
  ProgressBar bar(!a.has("--no-progress") && !json);
  const double raw_bytes = static_cast<double>(model.param_count()) * 4.0;
  std::vector<StageReport> stages;
  std::vector<std::uint8_t> out_bytes;

  // A float stage's row: store it, evaluate it.
  const auto float_row = [&](const std::string& name, const std::string& detail, double loss) -> Result<void> {
    auto enc = cz::encode_compressed(model);
    if (!enc) return make_error(enc.error().code, name + " stage: " + enc.error().message);
    StageReport r;
    r.stage = name;
    r.detail = detail;
    r.params = model.param_count();
    r.stored_bytes = enc->bytes.size();
    r.ratio = raw_bytes / static_cast<double>(r.stored_bytes);
    r.accuracy = nn::evaluate(model, test->images, test->labels, 256, &pool).accuracy;
    r.macs = total_macs(model);
    r.finetune_loss = loss;
    stages.push_back(r);
    out_bytes = std::move(enc->bytes);
    return success();
  };
  const auto progress = [&](const std::string& name) {
    return [&bar, name](const nn::TrainProgress& p) {
      bar.draw(name + " fine-tune " + std::to_string(p.epoch + 1) + "/" + std::to_string(p.epochs), p.batch,
               p.batches, "loss " + num(p.loss));
    };
  };
  const auto tune = [&](const std::string& name, const std::function<void(nn::Model<float>&)>& before,
                        const std::function<void(const nn::TrainProgress&)>& after) {
    if (ft.epochs == 0) return std::nan("");
    auto show = progress(name);
    return finetune(model, train->images, train->labels, ft, &pool, before, [&](const nn::TrainProgress& p) {
      if (after) after(p);
      show(p);
    });
  };

  if (auto r = float_row("float", "input model", std::nan("")); !r) return fail(cmd, r.error().message);

  if (structured) {
    Index removed = 0, convs = 0;
    for (Index i = 0; i < model.size(); ++i) {
      if (model.node(i).kind() != nn::NodeKind::conv2d) continue;
      const Index C = model.node(i).output_shape().c;
      const Index k = std::min(C - 1, cz::detail::prune_count(*structured, C));
      if (k <= 0) continue;
      auto pruned = cz::prune_channels(model, i, k, cz::ChannelCriterion::filter_l1);
      if (!pruned) {
        // a conv whose output feeds no conv/dense (the last one) has nothing
        // downstream to shrink with it: left whole
        if (pruned.error().code == Errc::unsupported) continue;
        return fail(cmd, model_path + ": " + pruned.error().message);
      }
      model = std::move(pruned).value();
      removed += k;
      ++convs;
    }
    const double loss = tune("structured", {}, {});
    if (auto r = float_row("structured",
                           std::to_string(removed) + " filters removed from " + std::to_string(convs) + " conv(s)", loss);
        !r)
      return fail(cmd, r.error().message);
  }

  if (prune) {
    cz::Mask mask;
    std::optional<cz::PolynomialSchedule> sched;
    std::vector<Index> pruned_by_step;
    double loss = std::nan("");
    if (!prune_initial) {
      mask = cz::magnitude_prune(model, *prune, scope);
      pruned_by_step.push_back(mask.pruned());
      auto hooks = cz::mask_hooks(model, mask);
      loss = tune("prune", hooks.before_step, hooks.callbacks.on_batch);
    } else {
      sched.emplace();
      sched->initial = *prune_initial;
      sched->final = *prune;
      sched->begin = 0;
      sched->every = std::max<Index>(1, batches / 10);
      sched->steps = (steps - 1) / sched->every;  // >= 1 since steps >= 2 and every <= max(1, steps - 1)
      cz::GradualPruner<float> pruner(model, *sched, scope);
      auto hooks = pruner.hooks();
      loss = tune("prune", hooks.before_step, [&](const nn::TrainProgress& p) {
        hooks.callbacks.on_batch(p);  // the optimizer step pruner.step() - 1 is done
        if (sched->is_pruning_step(pruner.step() - 1)) pruned_by_step.push_back(pruner.mask().pruned());
      });
      if (pruner.step() != steps || pruner.sparsity() != *prune)
        return fail(cmd, "prune stage: gradual pruning ended at sparsity " + num(pruner.sparsity()) + " after " +
                             std::to_string(pruner.step()) + " of " + std::to_string(steps) + " steps, not at " +
                             num(*prune));
      mask = pruner.mask();
    }
    std::string detail = std::to_string(mask.pruned()) + " of " + std::to_string(mask.size()) + " params zero";
    if (scope == cz::PruneScope::global) detail += " (global threshold)";
    if (sched)
      detail += ", gradual " + num(sched->initial) + " -> " + num(sched->final) + " in " +
                std::to_string(sched->steps + 1) + " pruning steps every " + std::to_string(sched->every) +
                " optimizer steps";
    const std::string pj = pruning_json(model, *prune, sched, steps, pruned_by_step, scope);
    if (auto r = float_row("prune", detail, loss); !r) return fail(cmd, r.error().message);
    stages.back().pruning = pj;
  }

  if (cluster) {
    auto cm = cz::cluster_model(model, *cluster);
    cz::ClusterFineTuner<float> tuner(model, cm, ft.lr);
    auto hooks = tuner.hooks();
    const double loss = tune("cluster", hooks.before_step, hooks.callbacks.on_batch);
    if (auto r = float_row("cluster", std::to_string(*cluster) + " centroids per layer", loss); !r)
      return fail(cmd, r.error().message);
  }

  if (int8) {
    const Index nc = std::min(calib_limit, train->images.cols());
    const Matrix<float> calib_images = train->images.leftCols(nc);
    auto cal = cz::calibrate(model, calib_images, 256, {}, &pool);
    if (!cal) return fail(cmd, cal.error().message);
    // After pruning or clustering the weights are stored with the blob's
    // zero-run Huffman encoding (where it is smaller), and a clustered layer
    // gets one scale per tensor so its K values stay K int8 levels; the
    // stored size is then what the earlier stages really saved.
    cz::QuantizeOptions qo;
    qo.encode_weights = (prune.has_value() || cluster.has_value()) && !raw_weights;
    qo.per_tensor_clustered = cluster.has_value();
    auto q = cz::quantize_model(model, *cal, qo);
    if (!q) return fail(cmd, q.error().message);
    int encoded = 0, per_tensor = 0;
    for (const auto& op : q->ops) {
      encoded += op.encoded ? 1 : 0;
      per_tensor += op.per_tensor ? 1 : 0;
    }
    auto ev = cz::evaluate_int8(*q, test->images, test->labels);
    if (!ev) return fail(cmd, ev.error().message);
    StageReport r;
    r.stage = "int8";
    r.detail = std::to_string(q->ops.size()) + " ops, calibrated on " + std::to_string(nc) + " images";
    if (qo.encode_weights) r.detail += ", " + std::to_string(encoded) + " filters encoded";
    if (qo.per_tensor_clustered) r.detail += ", " + std::to_string(per_tensor) + " per-tensor scales";
    r.params = model.param_count();
    r.stored_bytes = q->blob.size();
    r.ratio = raw_bytes / static_cast<double>(r.stored_bytes);
    r.accuracy = ev->accuracy;
    r.macs = total_macs(model);
    r.arena_bytes = q->arena_bytes;
    stages.push_back(r);
    out_bytes = std::move(q->blob);
  }

  if (auto ok = write_file_atomic(out, out_bytes); !ok) return fail(cmd, ok.error().message);
  const char* format = int8 ? "micro-int8" : "fdlz";

  if (json) {
    std::ostringstream o;
    o << "{\"command\":\"compress\",\"model\":\"" << json_escape(model_path) << "\",\"float32_weight_bytes\":"
      << static_cast<long long>(raw_bytes) << ",\"train_images\":" << train->images.cols()
      << ",\"test_images\":" << test->images.cols() << ",\"finetune_epochs\":" << ft.epochs
      << ",\"distill\":" << (teacher ? "\"" + json_escape(a.str("--distill", "")) + "\"" : std::string("null"))
      << ",\"stages\":[";
    for (std::size_t i = 0; i < stages.size(); ++i) o << (i ? "," : "") << stage_json(stages[i]);
    o << "],\"out\":\"" << json_escape(out) << "\",\"out_format\":\"" << format << "\",\"out_bytes\":"
      << out_bytes.size() << "}";
    std::printf("%s\n", o.str().c_str());
  } else {
    std::printf("%-10s %9s %10s %8s %9s %10s %10s  %s\n", "stage", "params", "bytes", "ratio", "accuracy", "MACs",
                "arena", "detail");
    for (const auto& r : stages) {
      const std::string arena = r.stage == "int8" ? std::to_string(r.arena_bytes) : "-";
      std::printf("%-10s %9lld %10zu %7.2fx %9.4f %10lld %10s  %s\n", r.stage.c_str(),
                  static_cast<long long>(r.params), r.stored_bytes, r.ratio, r.accuracy,
                  static_cast<long long>(r.macs), arena.c_str(), r.detail.c_str());
    }
    std::printf("ratios against the input's float32 weight bytes (%lld); wrote %s (%s, %zu bytes)\n",
                static_cast<long long>(raw_bytes), out.c_str(), format, out_bytes.size());
  }
  return 0;
}


/// `fleetdl eval` on an int8 micro blob (a file starting with "FDLMICRO", as
/// `fleetdl compress --quantize int8` writes): verified and planned first,
/// then every test image through the micro runtime (quantize the CHW floats
/// into the blob's NHWC int8 input, invoke, argmax of the dequantized output).
/// `bytes` is the whole file `path`, as cmd_eval read it to look at its magic.
int eval_micro_blob(const std::string& cmd, const std::string& path, std::vector<std::uint8_t> bytes,
                    const std::string& data_dir, Index test_limit, bool json) {
  // the limit export-header applies too (a microcontroller's flash is far smaller)
  constexpr std::uint64_t max_blob_bytes = std::uint64_t{64} << 20;
  if (bytes.size() > max_blob_bytes)
    return fail(cmd, path + ": micro blob is " + std::to_string(bytes.size()) + " bytes, above the limit " +
                         std::to_string(max_blob_bytes));
  const micro::PlanResult plan = micro::plan_arena_bytes(bytes.data(), bytes.size());
  if (!plan)
    return fail(cmd, path + ": not a valid micro model blob: " + plan.status.message + " (" +
                         micro::describe(plan.status.code) + ", index " + std::to_string(plan.status.index) + ")");
  const micro::ModelView v(bytes.data(), bytes.size());
  if (v.input_count() != 1 || v.output_count() != 1)
    return fail(cmd, path + ": the blob has " + std::to_string(v.input_count()) + " inputs and " +
                         std::to_string(v.output_count()) + " outputs; eval needs one of each");
  const micro::TensorDesc in = v.tensor(v.input_id(0)), out = v.tensor(v.output_id(0));
  if (in.shape.n != 1 || out.shape.n != 1) return fail(cmd, path + ": the blob's batch dimension must be 1");
  cz::QuantizedModel qm;
  qm.blob = std::move(bytes);
  qm.input_shape = Shape{in.shape.c, in.shape.h, in.shape.w};
  qm.output_shape = Shape{out.shape.c, out.shape.h, out.shape.w};
  qm.output_layout = qm.output_shape;
  qm.input = {in.scale, in.zero_point};
  qm.output = {out.scale, out.zero_point};
  qm.arena_bytes = plan.plan.total;
  auto test = data::load_fashion_mnist<float>(data_dir, false, test_limit);
  if (!test) return fail(cmd, test.error().message);
  if (qm.input_shape != test->shape)
    return fail(cmd, path + ": blob input " + qm.input_shape.str() + " does not match the dataset's " + test->shape.str());
  if (qm.output_shape.size() != test->classes)
    return fail(cmd, path + ": blob has " + std::to_string(qm.output_shape.size()) + " outputs, dataset has " +
                         std::to_string(test->classes) + " classes");
  auto ev = cz::evaluate_int8(qm, test->images, test->labels);
  if (!ev) return fail(cmd, path + ": " + ev.error().message);
  if (json) {
    std::printf("{\"command\":\"eval\",\"model\":\"%s\",\"format\":\"micro-int8\",\"blob_bytes\":%zu,\"test_images\":%lld,"
                "\"test_accuracy\":%s,\"arena_bytes\":%zu,\"planned_arena_bytes\":%llu,\"latency_us\":%s,"
                "\"max_latency_us\":%s}\n",
                json_escape(path).c_str(), qm.blob.size(), static_cast<long long>(ev->samples),
                json_num(ev->accuracy).c_str(), ev->arena_bytes, static_cast<unsigned long long>(ev->planned_arena_bytes),
                json_num(ev->mean_latency_us).c_str(), json_num(ev->max_latency_us).c_str());
  } else {
    std::printf("int8 micro blob, %zu bytes: test accuracy %.4f (%lld images), arena %zu bytes (planned %llu), "
                "%.1f us per image\n",
                qm.blob.size(), ev->accuracy, static_cast<long long>(ev->samples), ev->arena_bytes,
                static_cast<unsigned long long>(ev->planned_arena_bytes), ev->mean_latency_us);
  }
  return 0;
}

}  // namespace fleetdl::cli
