// orchestrator/cli/compress.cpp — `fleetdl compress`, the compression
// pipeline of issue 5 over the library's stages (fleetdl/compress.hpp):
//
//   fleetdl compress --model m.fdl [--structured S] [--prune S] [--cluster K]
//                    [--quantize int8] [--distill teacher.fdl]
//                    --dataset fashion-mnist --out OUT [--json]
//
// Stages run in a fixed order: structured (remove the fraction S of the
// filters of every conv that has a consumer, lowest filter L1 first) ->
// prune (unstructured magnitude pruning to sparsity S per layer) -> cluster
// (k-means weight sharing, K centroids per layer) -> quantize (int8
// post-training quantization into a micro blob). After each float stage the
// model is fine-tuned for --finetune-epochs epochs with what the earlier
// stages fixed kept fixed: pruned weights stay zero (mask hooks) and
// clustered weights move only through their centroids (ClusterFineTuner,
// which leaves zeros at zero). With --distill the fine-tuning loss is Hinton
// KD against the teacher's logits (nn::kd_loss, T = --temperature, weight
// --alpha on the soft term) instead of cross-entropy.
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
  o << ",\"finetune_loss\":" << json_num(r.finetune_loss) << "}";
  return o.str();
}

}  // namespace

int cmd_compress(int argc, char** argv) {
  const std::string cmd = "compress";
  Args a(cmd, argc, argv,
         {"--model", "--prune", "--structured", "--cluster", "--quantize", "--distill", "--dataset", "--data-dir",
          "--out", "--finetune-epochs", "--threads", "--train-limit", "--test-limit", "--calibration-limit",
          "--seed", "--lr", "--batch", "--temperature", "--alpha"},
         {"--json", "--no-progress"});
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
  const std::optional<int> cluster =
      a.has("--cluster") ? std::optional<int>(static_cast<int>(a.integer("--cluster", 16, 2, 256))) : std::nullopt;
  const bool int8 = a.has("--quantize");
  if (int8 && a.str("--quantize", "") != "int8")
    throw UsageError{"flag '--quantize': unknown format '" + a.str("--quantize", "") + "' (known: int8)"};
  if (!structured && !prune && !cluster && !int8)
    throw UsageError{"nothing to do: give at least one of --structured, --prune, --cluster, --quantize"};
  FinetuneSetup ft;
  ft.epochs = static_cast<int>(a.integer("--finetune-epochs", 1, 0, 100000));
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

  cz::Mask mask;
  if (prune) {
    mask = cz::magnitude_prune(model, *prune);
    auto hooks = cz::mask_hooks(model, mask);
    const double loss = tune("prune", hooks.before_step, hooks.callbacks.on_batch);
    if (auto r = float_row("prune", std::to_string(mask.pruned()) + " of " + std::to_string(mask.size()) +
                                        " params zero",
                           loss);
        !r)
      return fail(cmd, r.error().message);
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
    auto q = cz::quantize_model(model, *cal);
    if (!q) return fail(cmd, q.error().message);
    auto ev = cz::evaluate_int8(*q, test->images, test->labels);
    if (!ev) return fail(cmd, ev.error().message);
    StageReport r;
    r.stage = "int8";
    r.detail = std::to_string(q->ops.size()) + " ops, calibrated on " + std::to_string(nc) + " images";
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
int eval_micro_blob(const std::string& cmd, const std::string& path, const std::string& data_dir, Index test_limit,
                    bool json) {
  auto bytes = read_file(path, std::uint64_t{64} << 20);
  if (!bytes) return fail(cmd, bytes.error().message);
  const micro::PlanResult plan = micro::plan_arena_bytes(bytes->data(), bytes->size());
  if (!plan)
    return fail(cmd, path + ": not a valid micro model blob: " + plan.status.message + " (" +
                         micro::describe(plan.status.code) + ", index " + std::to_string(plan.status.index) + ")");
  const micro::ModelView v(bytes->data(), bytes->size());
  if (v.input_count() != 1 || v.output_count() != 1)
    return fail(cmd, path + ": the blob has " + std::to_string(v.input_count()) + " inputs and " +
                         std::to_string(v.output_count()) + " outputs; eval needs one of each");
  const micro::TensorDesc in = v.tensor(v.input_id(0)), out = v.tensor(v.output_id(0));
  if (in.shape.n != 1 || out.shape.n != 1) return fail(cmd, path + ": the blob's batch dimension must be 1");
  cz::QuantizedModel qm;
  qm.blob = std::move(*bytes);
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
