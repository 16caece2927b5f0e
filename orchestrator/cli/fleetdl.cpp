// fleetdl — the command-line front end over the fleetdl library.
//
//   fleetdl train --dataset fashion-mnist --model lenet5 --epochs E --batch 64
//                 --optimizer adam --lr 0.001 --threads T --seed S
//                 [--train-limit N] --out m.fdl [--json]
//   fleetdl eval  m.fdl --dataset fashion-mnist --threads T [--json]
//   fleetdl info  (m.fdl | --model NAME) [--recurse] [--json]
//   fleetdl fl simulate --config FILE [--json] [--threads T] [--data-dir DIR]
//                 [--out m.fdl] [--checkpoint F [--resume]] [--no-progress]
//                 (schema: docs/fl-simulate.md)
//
// Errors: one line "fleetdl <cmd>: <what>" on stderr, exit 2 for usage errors
// and 1 for runtime failures; nothing is written unless the command succeeds
// (except `fl simulate --checkpoint`, which replaces its file atomically
// after every round so that an interrupted run can resume).
#include "fleetdl/core.hpp"
#include "fleetdl/data.hpp"
#include "fleetdl/io.hpp"
#include "fleetdl/nn.hpp"
#include "fleetdl/sim.hpp"
#include "cli_common.hpp"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using fleetdl::Index;
using namespace fleetdl::cli;
namespace nn = fleetdl::nn;
namespace io = fleetdl::io;
namespace data = fleetdl::data;

constexpr const char* kUsage =
    "usage: fleetdl <command> [options]\n"
    "\n"
    "commands:\n"
    "  train   train a model on a dataset and save it (.fdl)\n"
    "  eval    evaluate a saved model: test accuracy and batch-1 latency\n"
    "  info    per-node table of parameters, MACs and activation bytes\n"
    "  fl simulate  run a federated-learning experiment on a simulated fleet\n"
    "  partition nonn  split a teacher into N NoNN students (one module per device)\n"
    "  infer   distributed inference over the modules of partition nonn\n"
    "  export-header  embed a verified int8 micro model blob in a C/C++ header\n"
    "  compress  structured/magnitude pruning, clustering, int8 quantization with per-stage report\n"
    "  report  a run of the fleet database as HTML (SVG charts), CSV or JSON\n"
    "  fleet up|down|token|run|resume|infer  local agents, enrollment tokens, federated runs and\n"
    "                                  distributed inference on a real fleet\n"
    "\n"
    "train options:\n"
    "  --dataset NAME        fashion-mnist (default)\n"
    "  --data-dir DIR        dataset directory (default " FLEETDL_FASHION_MNIST_DIR ")\n"
    "  --model NAME          lenet5 | cnn_niid | cnn1 | lenet300_100 | vgg_fmnist\n"
    "                        (default lenet5)\n"
    "  --epochs E            (default 1)\n"
    "  --batch B             (default 64)\n"
    "  --optimizer NAME      adam | adamw | sgd (default adam)\n"
    "  --lr X                learning rate (default 0.001)\n"
    "  --momentum X          SGD momentum (default 0.9)\n"
    "  --nesterov            SGD Nesterov momentum\n"
    "  --weight-decay X      (default 0)\n"
    "  --schedule NAME       constant | step | cosine (default constant)\n"
    "  --step-size N         epochs between step decays (default 10)\n"
    "  --gamma X             step decay factor (default 0.1)\n"
    "  --threads T           worker threads (default 1)\n"
    "  --seed S              seed for init, order and dropout (default 1)\n"
    "  --train-limit N       use the first N training images\n"
    "  --test-limit N        use the first N test images\n"
    "  --out FILE            where to save the trained model (required)\n"
    "  --json                print one JSON object on stdout\n"
    "  --no-progress         never draw the progress bar\n"
    "\n"
    "eval options: (MODEL.fdl | MODEL.int8 micro blob) --dataset NAME --data-dir DIR --threads T --test-limit N\n"
    "              --latency-runs N (default 200) --json\n"
    "info options: (MODEL.fdl | --model NAME) --recurse --json\n"
    "fl simulate options: --config FILE (JSON, schema in docs/fl-simulate.md)\n"
    "              --json (one JSON object per round, then a summary)\n"
    "              --threads T (overrides the config) --data-dir DIR --out FILE (final model)\n"
    "              --checkpoint FILE (state after every round) --resume (continue from it)\n"
    "              --no-progress\n"
    "partition nonn options: --teacher T.fdl --students N --out DIR (required; DIR must not exist)\n"
    "              --mode reference|balanced|random (default reference) --dataset NAME --data-dir DIR\n"
    "              --epochs E (10) --batch B (64) --optimizer sgd|adam --lr X (0.01 sgd, 0.001 adam)\n"
    "              --schedule constant|cosine (constant)\n"
    "              --alpha X (0.9) --temperature T (4) --beta X (1e4) --gamma X (Louvain, 0.7)\n"
    "              --top-k K (C/5) --percentile P (99) --width W (16) --blocks B (2) --seed S\n"
    "              --threads T --train-limit N --test-limit N --allow-shrink --json --no-progress\n"
    "infer options: --modules DIR --dataset NAME --data-dir DIR --test-limit N --batch B --threads T\n"
    "              --macs-per-second X --up-bytes-per-second X --link-latency S --timeout S (3600) --json\n"
    "export-header options: --blob MODEL.bin --out MODEL.h [--name IDENT (default: from --out)]\n"
    "compress options: --model M.fdl --out FILE (.fdlz store; the micro blob with --quantize int8)\n"
    "              [--structured S] [--prune S [--prune-initial S0 (gradual, S0 < S)] [--prune-scope layer|global]]\n"
    "              (fractions in [0, 1); scope: S per layer (default) or one threshold over all layers)\n"
    "              [--cluster K (2..256)] [--quantize int8 [--raw-weights (no encoded filters)]]\n"
    "              [--distill T.fdl --temperature T (4) --alpha X (0.9)] --finetune-epochs E (1) --lr X (0.001)\n"
    "              --batch B (64) --dataset NAME --data-dir DIR --train-limit N --test-limit N\n"
    "              --calibration-limit N (1000) --threads T --seed S --json --no-progress\n"
    "report options: --db FLEET.db --run ID --out PATH [--format html|csv|json (default: --out's extension)]\n"
    "fleet up options: --devices N [--profiles FILE] [--db fleet.db] [--agent PATH] [--ttl S] [--data-dir DIR]\n"
    "              [--seed S] [--discovery-port P (47800): agents announce to 127.0.0.1:P until invited]\n"
    "              [--host H] [--enroll-port P (47801)] [--fleet-port P (47802)]: agents connect there directly\n"
    "fleet down options: [--db fleet.db]    fleet token options: [--db fleet.db] [--count N] [--ttl S]\n"
    "fleet run options: --config FILE (docs/fleet.md) [--db fleet.db] [--threads T] [--data-dir DIR] [--json]\n"
    "fleet resume options: [--db fleet.db] [--run ID (default: the newest unfinished)] [--threads T] [--json]\n"
    "fleet infer options: --modules DIR|MODEL.fdl [--db fleet.db] [--replicas N (1)] [--batch B (32)]\n"
    "              [--test-limit N] [--wait S (60)] [--timeout S (120)] [--bind A] [--enroll-port P]\n"
    "              [--fleet-port P] [--discovery-port P] [--no-discovery] [--threads T] [--data-dir DIR] [--json]\n";


int cmd_train(int argc, char** argv) {
  const std::string cmd = "train";
  Args a(cmd, argc, argv,
         {"--dataset", "--data-dir", "--model", "--epochs", "--batch", "--optimizer", "--lr", "--momentum",
          "--weight-decay", "--schedule", "--step-size", "--gamma", "--threads", "--seed", "--train-limit",
          "--test-limit", "--out"},
         {"--json", "--no-progress", "--nesterov"});
  if (!a.positional().empty()) throw UsageError{"unexpected argument '" + a.positional()[0] + "'"};
  const auto ds = dataset_option(a);
  const std::string model_name = a.str("--model", "lenet5");
  const int epochs = static_cast<int>(a.integer("--epochs", 1, 1, 100000));
  const Index batch = a.integer("--batch", 64, 1, 1 << 20);
  const std::string optimizer = a.str("--optimizer", "adam");
  const double lr = a.number("--lr", 1e-3, 0.0, 1e6);
  const double momentum = a.number("--momentum", 0.9, 0.0, 1.0);
  const double wd = a.number("--weight-decay", 0.0, 0.0, 1e6);
  const std::string schedule = a.str("--schedule", "constant");
  const long step_size = static_cast<long>(a.integer("--step-size", 10, 1, 1 << 30));
  const double gamma = a.number("--gamma", 0.1, 0.0, 1.0);
  const int threads = static_cast<int>(a.integer("--threads", 1, 1, FLEETDL_MAX_THREADS));
  const auto seed = static_cast<std::uint64_t>(a.integer("--seed", 1, 0, (1LL << 62)));
  const Index train_limit = a.integer("--train-limit", -1, 1, 1LL << 40);
  const Index test_limit = a.integer("--test-limit", -1, 1, 1LL << 40);
  const bool json = a.has("--json");
  if (!a.has("--out")) throw UsageError{"flag '--out' is required (where to save the model)"};
  const std::string out = a.str("--out", "");
  if (optimizer != "adam" && optimizer != "adamw" && optimizer != "sgd")
    throw UsageError{"flag '--optimizer': unknown optimizer '" + optimizer + "' (known: adam, adamw, sgd)"};
  if (schedule != "constant" && schedule != "step" && schedule != "cosine")
    throw UsageError{"flag '--schedule': unknown schedule '" + schedule + "' (known: constant, step, cosine)"};
  bool known_model = false;
  for (auto n : nn::model_names) known_model = known_model || n == model_name;
  if (!known_model) throw UsageError{"flag '--model': unknown model '" + model_name + "' (known: lenet5, cnn_niid, cnn1, lenet300_100, vgg_fmnist)"};
  // Fail before training, not after, if the output cannot be written.
  if (auto why = unwritable_reason(out); !why.empty()) return fail(cmd, why);

  auto train = data::load_fashion_mnist<float>(ds.dir, true, train_limit);
  if (!train) return fail(cmd, train.error().message);
  auto test = data::load_fashion_mnist<float>(ds.dir, false, test_limit);
  if (!test) return fail(cmd, test.error().message);

  auto model = nn::make_model<float>(model_name, train->shape, train->classes);
  if (!model) return fail(cmd, model.error().message);
  model->init(seed);

  std::unique_ptr<nn::Optimizer<float>> opt;
  if (optimizer == "sgd") {
    nn::SgdOptions o;
    o.lr = lr;
    o.momentum = momentum;
    o.weight_decay = wd;
    o.nesterov = a.has("--nesterov");
    opt = std::make_unique<nn::Sgd<float>>(o);
  } else {
    nn::AdamOptions o;
    o.lr = lr;
    o.weight_decay = wd;
    o.decoupled = optimizer == "adamw";
    opt = std::make_unique<nn::Adam<float>>(o);
  }
  nn::TrainOptions to;
  to.epochs = epochs;
  to.batch = batch;
  to.seed = seed;
  if (schedule == "step") to.schedule = nn::LrSchedule::step_lr(step_size, gamma);
  if (schedule == "cosine") to.schedule = nn::LrSchedule::cosine(epochs);

  fleetdl::ThreadPool pool(threads);
  ProgressBar bar(!a.has("--no-progress"));
  nn::TrainCallbacks cb;
  cb.on_batch = [&](const nn::TrainProgress& p) {
    bar.draw("epoch " + std::to_string(p.epoch + 1) + "/" + std::to_string(p.epochs), p.batch, p.batches,
             "loss " + num(p.loss));
  };
  std::vector<nn::EpochReport> epochs_done;
  cb.on_epoch = [&](const nn::EpochReport& e) {
    epochs_done.push_back(e);
    if (!json) {
      std::fprintf(stderr, "epoch %d/%d: loss %.4f, train accuracy %.4f, %.1f s\n", e.epoch + 1, epochs, e.loss,
                   e.train_accuracy, e.seconds);
    }
  };
  const auto rep = nn::train_classifier(*model, *opt, train->images, train->labels, to, &pool, cb);
  const auto ev = nn::evaluate(*model, test->images, test->labels, 256, &pool);

  io::Metadata meta = {{"model", model_name},
                       {"dataset", "fashion-mnist"},
                       {"epochs", std::to_string(epochs)},
                       {"seed", std::to_string(seed)},
                       {"test_accuracy", num(ev.accuracy)}};
  auto saved = io::save_model(out, *model, meta);
  if (!saved) return fail(cmd, saved.error().message);

  if (json) {
    std::ostringstream o;
    o << "{\"command\":\"train\",\"model\":\"" << json_escape(model_name) << "\",\"dataset\":\"fashion-mnist\""
      << ",\"epochs\":" << epochs << ",\"batch\":" << batch << ",\"optimizer\":\"" << optimizer << "\""
      << ",\"lr\":" << json_num(lr) << ",\"threads\":" << threads << ",\"seed\":" << seed
      << ",\"train_images\":" << train->images.cols() << ",\"test_images\":" << test->images.cols()
      << ",\"params\":" << model->param_count() << ",\"test_accuracy\":" << json_num(ev.accuracy)
      << ",\"test_loss\":" << json_num(ev.loss) << ",\"train_seconds\":" << json_num(rep.seconds)
      << ",\"train_images_per_second\":" << json_num(rep.images_per_second) << ",\"epoch_log\":[";
    for (std::size_t i = 0; i < rep.epochs.size(); ++i) {
      const auto& e = rep.epochs[i];
      o << (i ? "," : "") << "{\"epoch\":" << e.epoch + 1 << ",\"loss\":" << json_num(e.loss)
        << ",\"train_accuracy\":" << json_num(e.train_accuracy) << ",\"seconds\":" << json_num(e.seconds) << "}";
    }
    o << "],\"out\":\"" << json_escape(out) << "\"}";
    std::printf("%s\n", o.str().c_str());
  } else {
    std::printf("test accuracy: %.4f (%lld images)\n", ev.accuracy, static_cast<long long>(ev.samples));
    std::printf("train: %.1f s, %.0f images/s, %lld params, saved to %s\n", rep.seconds, rep.images_per_second,
                static_cast<long long>(model->param_count()), out.c_str());
  }
  return 0;
}

int cmd_eval(int argc, char** argv) {
  const std::string cmd = "eval";
  Args a(cmd, argc, argv, {"--dataset", "--data-dir", "--threads", "--test-limit", "--latency-runs"}, {"--json"});
  if (a.positional().size() != 1) throw UsageError{"expects exactly one model file (fleetdl eval MODEL.fdl ...)"};
  const std::string path = a.positional()[0];
  const auto ds = dataset_option(a);
  const int threads = static_cast<int>(a.integer("--threads", 1, 1, FLEETDL_MAX_THREADS));
  const Index test_limit = a.integer("--test-limit", -1, 1, 1LL << 40);
  const int runs = static_cast<int>(a.integer("--latency-runs", 200, 1, 1000000));
  const bool json = a.has("--json");

  // One read, then dispatch on the magic: an int8 micro blob (fleetdl compress
  // --quantize int8) runs through the micro runtime, anything else is an .fdl.
  auto bytes = io::read_file_bytes(path);
  if (!bytes) return fail(cmd, bytes.error().message);
  if (bytes->size() >= 8 && std::memcmp(bytes->data(), "FDLMICRO", 8) == 0)
    return eval_micro_blob(cmd, path, std::move(*bytes), ds.dir, test_limit, json);
  auto file = io::decode_model<float>(bytes->data(), bytes->size(), path);
  if (!file) return fail(cmd, file.error().message);
  auto& model = file->model;
  auto test = data::load_fashion_mnist<float>(ds.dir, false, test_limit);
  if (!test) return fail(cmd, test.error().message);
  if (model.input_shape() != test->shape)
    return fail(cmd, path + ": model input " + model.input_shape().str() + " does not match the dataset's " +
                         test->shape.str());
  if (model.output_shape().size() != test->classes)
    return fail(cmd, path + ": model has " + std::to_string(model.output_shape().size()) + " outputs, dataset has " +
                         std::to_string(test->classes) + " classes");
  fleetdl::ThreadPool pool(threads);
  const auto ev = nn::evaluate(model, test->images, test->labels, 256, &pool);

  // Batch-1 latency: mean over `runs` single-image forward passes (after a
  // warm-up), cycling through test images, on the given threads.
  nn::ExecContext<float> ctx{&pool, false, nullptr};
  fleetdl::Matrix<float> x1(test->images.rows(), 1);
  for (int i = 0; i < 20; ++i) {
    x1 = test->images.col(i % test->images.cols());
    model.forward(x1, ctx);
  }
  double total_ms = 0;
  for (int i = 0; i < runs; ++i) {
    x1 = test->images.col(i % test->images.cols());
    const auto t0 = std::chrono::steady_clock::now();
    model.forward(x1, ctx);
    total_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
  const double latency = total_ms / runs;
  if (json) {
    std::printf("{\"command\":\"eval\",\"model\":\"%s\",\"params\":%lld,\"test_images\":%lld,\"test_accuracy\":%s,"
                "\"test_loss\":%s,\"latency_b1_ms\":%s,\"latency_runs\":%d,\"threads\":%d}\n",
                json_escape(path).c_str(), static_cast<long long>(model.param_count()),
                static_cast<long long>(ev.samples), json_num(ev.accuracy).c_str(), json_num(ev.loss).c_str(),
                json_num(latency).c_str(), runs, threads);
  } else {
    std::printf("test accuracy: %.4f (%lld images)\nbatch-1 latency: %.4f ms (mean of %d)\n", ev.accuracy,
                static_cast<long long>(ev.samples), latency, runs);
  }
  return 0;
}

int cmd_info(int argc, char** argv) {
  const std::string cmd = "info";
  Args a(cmd, argc, argv, {"--model"}, {"--json", "--recurse"});
  const bool json = a.has("--json");
  nn::Model<float> model;
  std::string source;
  io::Metadata meta;
  if (a.has("--model")) {
    if (!a.positional().empty()) throw UsageError{"give either a model file or --model, not both"};
    source = a.str("--model", "");
    auto m = nn::make_model<float>(source);
    if (!m) throw UsageError{"flag '--model': " + m.error().message};
    model = std::move(*m);
  } else {
    if (a.positional().size() != 1) throw UsageError{"expects one model file or --model NAME"};
    source = a.positional()[0];
    auto f = io::load_model<float>(source);
    if (!f) return fail(cmd, f.error().message);
    model = std::move(f->model);
    meta = std::move(f->metadata);
  }
  const auto rows = model.cost_report(a.has("--recurse"));
  Index tp = 0, tb = 0, tm = 0, peak = 0;
  for (const auto& r : rows) {
    tp += r.params;
    tb += r.weight_bytes;
    tm += r.macs;
    peak = std::max(peak, r.act_in_bytes + r.act_out_bytes);
  }
  if (json) {
    std::ostringstream o;
    o << "{\"command\":\"info\",\"source\":\"" << json_escape(source) << "\",\"input\":\"" << model.input_shape().str()
      << "\",\"output\":\"" << model.output_shape().str() << "\",\"params\":" << tp << ",\"weight_bytes\":" << tb
      << ",\"macs\":" << tm << ",\"peak_activation_bytes\":" << peak << ",\"metadata\":{";
    for (std::size_t i = 0; i < meta.size(); ++i)
      o << (i ? "," : "") << "\"" << json_escape(meta[i].first) << "\":\"" << json_escape(meta[i].second) << "\"";
    o << "},\"nodes\":[";
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const auto& r = rows[i];
      o << (i ? "," : "") << "{\"name\":\"" << json_escape(r.name) << "\",\"type\":\"" << r.type << "\",\"in\":\""
        << r.in.str() << "\",\"out\":\"" << r.out.str() << "\",\"params\":" << r.params
        << ",\"weight_bytes\":" << r.weight_bytes << ",\"macs\":" << r.macs << ",\"act_in_bytes\":" << r.act_in_bytes
        << ",\"act_out_bytes\":" << r.act_out_bytes << "}";
    }
    o << "]}";
    std::printf("%s\n", o.str().c_str());
    return 0;
  }
  std::printf("%s: input %s, output %s\n", source.c_str(), model.input_shape().str().c_str(),
              model.output_shape().str().c_str());
  for (const auto& [k, v] : meta) std::printf("  %s = %s\n", k.c_str(), v.c_str());
  std::printf("%-12s %-16s %-12s %10s %12s %12s %12s %12s\n", "node", "type", "out", "params", "weight B", "MACs",
              "act in B", "act out B");
  for (const auto& r : rows)
    std::printf("%-12s %-16s %-12s %10lld %12lld %12lld %12lld %12lld\n", r.name.c_str(), r.type.c_str(),
                r.out.str().c_str(), static_cast<long long>(r.params), static_cast<long long>(r.weight_bytes),
                static_cast<long long>(r.macs), static_cast<long long>(r.act_in_bytes),
                static_cast<long long>(r.act_out_bytes));
  std::printf("%-12s %-16s %-12s %10lld %12lld %12lld   peak activations %lld B\n", "total", "", "",
              static_cast<long long>(tp), static_cast<long long>(tb), static_cast<long long>(tm),
              static_cast<long long>(peak));
  return 0;
}

int cmd_fl(int argc, char** argv) {
  namespace sim = fleetdl::sim;
  if (argc < 1 || std::string(argv[0]) != "simulate")
    throw UsageError{argc < 1 ? "missing subcommand (known: simulate)"
                              : "unknown subcommand '" + std::string(argv[0]) + "' (known: simulate)"};
  const std::string cmd = "fl simulate";
  Args a(cmd, argc - 1, argv + 1, {"--config", "--threads", "--data-dir", "--out", "--checkpoint"},
         {"--json", "--no-progress", "--resume"});
  if (!a.positional().empty()) throw UsageError{"unexpected argument '" + a.positional()[0] + "'"};
  if (!a.has("--config")) throw UsageError{"--config FILE is required"};
  const std::string path = a.str("--config", "");
  const bool json = a.has("--json");

  auto doc = fleetdl::json::parse_file(path);
  if (!doc) return fail(cmd, doc.error().message, 2);
  auto cfg_r = sim::parse_config(*doc);
  if (!cfg_r) return fail(cmd, path + ": " + cfg_r.error().message, 2);
  sim::SimConfig cfg = std::move(*cfg_r);
  if (a.has("--threads")) cfg.threads = static_cast<int>(a.integer("--threads", 1, 1, FLEETDL_MAX_THREADS));
  if (a.has("--data-dir")) cfg.dataset_dir = a.str("--data-dir", cfg.dataset_dir);
  if (cfg.threads == 0) cfg.threads = std::max(1, std::min<int>(FLEETDL_MAX_THREADS, static_cast<int>(std::thread::hardware_concurrency())));
  const std::string out = a.str("--out", "");
  const std::string ckpt = a.str("--checkpoint", "");
  if (a.has("--resume") && ckpt.empty()) throw UsageError{"--resume needs --checkpoint FILE"};
  // fail before the first round, not after the run, if the model or the
  // checkpoint cannot be written
  for (const std::string* p : {&out, &ckpt})
    if (!p->empty())
      if (auto why = unwritable_reason(*p); !why.empty()) return fail(cmd, why);
  // the experiment's identity for checkpoints: the config text (and the
  // thread count when results depend on it)
  std::uint64_t fingerprint = 0xcbf29ce484222325ULL;
  {
    auto text = fleetdl::read_file(path, fleetdl::json::Limits{}.max_bytes);
    if (!text) return fail(cmd, text.error().message, 2);
    for (const std::uint8_t b : *text) fingerprint = (fingerprint ^ b) * 0x100000001b3ULL;
    if (!cfg.sim.client_parallel) fingerprint ^= static_cast<std::uint64_t>(cfg.threads) * 0x9E3779B97F4A7C15ULL;
  }

  auto train = data::load_fashion_mnist<float>(cfg.dataset_dir, true, cfg.train_limit);
  if (!train) return fail(cmd, train.error().message);
  auto test = data::load_fashion_mnist<float>(cfg.dataset_dir, false, cfg.test_limit);
  if (!test) return fail(cmd, test.error().message);
  auto parts = sim::make_partition(cfg, train->labels, train->classes);
  if (!parts) return fail(cmd, path + ": " + parts.error().message, 2);
  auto model = nn::make_model<float>(cfg.model, train->shape, train->classes);
  if (!model) return fail(cmd, model.error().message);
  model->init(fleetdl::Rng(cfg.seed).fork(0x1417).next_u64());
  auto bundle = sim::make_strategy<float>(cfg, &*model);
  if (!bundle) return fail(cmd, path + ": " + bundle.error().message, 2);
  const std::string strategy_name = bundle->strategy->name();
  std::vector<sim::DeviceProfile> profiles = cfg.profiles;
  if (profiles.empty()) profiles.push_back(sim::DeviceProfile{});
  fleetdl::ThreadPool pool(cfg.threads);
  auto simr = sim::Simulator<float>::create(std::move(*model), std::move(*bundle), *train, *test, std::move(*parts),
                                             profiles, cfg.sim, &pool);
  if (!simr) return fail(cmd, path + ": " + simr.error().message, 2);
  auto& s = *simr;
  if (s.eligible_clients() == 0)
    return fail(cmd, path + ": no device can train " + cfg.model + ": it needs " + num(s.training_memory()) +
                         " bytes of memory, more than every profile's memory_bytes", 2);

  if (!ckpt.empty()) {
    std::error_code ec;
    if (a.has("--resume") && std::filesystem::exists(ckpt, ec)) {
      auto bytes = fleetdl::read_file(ckpt, std::uint64_t{1} << 36);
      if (!bytes) return fail(cmd, bytes.error().message);
      auto ok = s.restore(*bytes, fingerprint);
      if (!ok) return fail(cmd, ckpt + ": " + ok.error().message);
      std::fprintf(stderr, "resuming after round %ld of %d from %s\n", s.round(), cfg.sim.rounds, ckpt.c_str());
    }
  }
  ProgressBar bar(!a.has("--no-progress"));
  s.on_client_trained([&](long r, Index done, Index total) {
    bar.draw("round " + std::to_string(r) + "/" + std::to_string(cfg.sim.rounds), done, total,
             std::to_string(done) + "/" + std::to_string(total) + " clients");
  });
  if (!json)
    std::printf("%s on %s: %lld clients (%lld eligible), %s partition, %d rounds, %d threads, %.0f bytes per client\n",
                strategy_name.c_str(), cfg.model.c_str(), static_cast<long long>(s.clients()),
                static_cast<long long>(s.eligible_clients()), cfg.partition.kind.c_str(), cfg.sim.rounds, cfg.threads,
                s.bytes_per_client());
  auto rec_json = [&](const sim::RoundRecord& r) {
    std::ostringstream o;
    o << "{\"round\":" << r.round << ",\"status\":\"" << sim::to_string(r.status) << "\""
      << ",\"accuracy\":" << json_num(r.accuracy) << ",\"loss\":" << json_num(r.loss)
      << ",\"train_loss\":" << json_num(r.train_loss) << ",\"available\":" << r.available
      << ",\"selected\":" << r.selected << ",\"participated\":" << r.participated << ",\"dropped\":" << r.dropped
      << ",\"stragglers\":" << r.stragglers << ",\"required\":" << r.required
      << ",\"bytes_up\":" << fleetdl::json::number(r.bytes_up) << ",\"bytes_down\":" << fleetdl::json::number(r.bytes_down)
      << ",\"round_seconds\":" << json_num(r.round_seconds) << ",\"clock_seconds\":" << json_num(r.clock_seconds)
      << ",\"energy_joules\":" << json_num(r.energy_joules) << ",\"epsilon\":" << json_num(r.epsilon)
      << ",\"wall_seconds\":" << json_num(r.wall_seconds) << "}";
    return o.str();
  };
  std::optional<fleetdl::Error> ckpt_error;
  auto on_round = [&](const sim::RoundRecord& r) {
    if (json) {
      std::printf("%s\n", rec_json(r).c_str());
    } else {
      std::printf("round %ld/%d %s: accuracy %s, loss %s, %lld/%lld clients (%lld dropped, %lld late), up %s B, "
                  "down %s B, %s s simulated, %s J%s\n",
                  r.round, cfg.sim.rounds, sim::to_string(r.status), std::isfinite(r.accuracy) ? num(r.accuracy).c_str() : "-",
                  std::isfinite(r.loss) ? num(r.loss).c_str() : "-", static_cast<long long>(r.participated),
                  static_cast<long long>(r.selected), static_cast<long long>(r.dropped),
                  static_cast<long long>(r.stragglers), num(r.bytes_up).c_str(), num(r.bytes_down).c_str(),
                  num(r.round_seconds).c_str(), num(r.energy_joules).c_str(),
                  std::isfinite(r.epsilon) ? (", epsilon " + num(r.epsilon)).c_str() : "");
    }
    std::fflush(stdout);
    if (!ckpt.empty() && !ckpt_error) {
      auto bytes = s.checkpoint(fingerprint);
      auto written = bytes ? fleetdl::write_file_atomic(ckpt, *bytes) : fleetdl::Result<void>(bytes.error());
      if (!written) ckpt_error = written.error();
    }
  };
  fleetdl::Result<void> done = fleetdl::success();
  while (s.round() < cfg.sim.rounds && !ckpt_error) {
    auto rec = s.step();
    if (!rec) {
      done = std::move(rec).error();
      break;
    }
    on_round(*rec);
  }
  if (ckpt_error) return fail(cmd, "checkpoint: " + ckpt_error->message);
  if (!done) return fail(cmd, "round " + std::to_string(s.round() + 1) + ": " + done.error().message);
  // totals over the whole run, rounds before a --resume included
  const sim::RunTotals& t = s.totals();
  const double best = t.best_accuracy < 0 ? std::numeric_limits<double>::quiet_NaN() : t.best_accuracy;
  const double last = t.last_accuracy < 0 ? std::numeric_limits<double>::quiet_NaN() : t.last_accuracy;
  if (!out.empty()) {
    io::Metadata meta = {{"model", cfg.model}, {"strategy", strategy_name}, {"rounds", std::to_string(cfg.sim.rounds)},
                         {"seed", std::to_string(cfg.seed)}, {"test_accuracy", std::isfinite(last) ? num(last) : "none"}};
    auto saved = io::save_model(out, s.model(), meta);
    if (!saved) return fail(cmd, saved.error().message);
  }
  if (json) {
    std::ostringstream o;
    o << "{\"summary\":true,\"strategy\":\"" << json_escape(strategy_name) << "\",\"model\":\"" << json_escape(cfg.model)
      << "\",\"clients\":" << s.clients() << ",\"eligible_clients\":" << s.eligible_clients()
      << ",\"rounds\":" << cfg.sim.rounds << ",\"completed_rounds\":" << s.completed_rounds()
      << ",\"abandoned_rounds\":" << s.abandoned_rounds() << ",\"best_accuracy\":" << json_num(best)
      << ",\"best_round\":" << t.best_round << ",\"last_accuracy\":" << json_num(last)
      << ",\"bytes_up\":" << fleetdl::json::number(t.bytes_up) << ",\"bytes_down\":" << fleetdl::json::number(t.bytes_down)
      << ",\"energy_joules\":" << json_num(t.energy_joules) << ",\"clock_seconds\":" << json_num(s.clock_seconds())
      << ",\"wall_seconds\":" << json_num(t.wall_seconds) << ",\"bytes_per_client\":" << json_num(s.bytes_per_client())
      << ",\"training_memory_bytes\":" << json_num(s.training_memory()) << ",\"threads\":" << cfg.threads << "}";
    std::printf("%s\n", o.str().c_str());
  } else {
    std::printf("best accuracy %s (round %ld), last %s; %ld completed, %ld abandoned; %.1f s wall, %s s simulated\n",
                std::isfinite(best) ? num(best).c_str() : "-", t.best_round, std::isfinite(last) ? num(last).c_str() : "-",
                s.completed_rounds(), s.abandoned_rounds(), t.wall_seconds,
                num(s.clock_seconds()).c_str());
  }
  return 0;
}


}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    std::fputs(kUsage, stdout);
    return finish(cmd, 0);
  }
  try {
    if (cmd == "train") return finish(cmd, cmd_train(argc - 2, argv + 2));
    if (cmd == "eval") return finish(cmd, cmd_eval(argc - 2, argv + 2));
    if (cmd == "info") return finish(cmd, cmd_info(argc - 2, argv + 2));
    if (cmd == "fl") return finish(cmd, cmd_fl(argc - 2, argv + 2));
    if (cmd == "partition") return finish(cmd, cmd_partition(argc - 2, argv + 2));
    if (cmd == "infer") return finish(cmd, cmd_infer(argc - 2, argv + 2));
    if (cmd == "export-header") return finish(cmd, cmd_export_header(argc - 2, argv + 2));
    if (cmd == "compress") return finish(cmd, cmd_compress(argc - 2, argv + 2));
    if (cmd == "report") return finish(cmd, cmd_report(argc - 2, argv + 2));
    if (cmd == "fleet") return finish(cmd, cmd_fleet(argc - 2, argv + 2));
    if (cmd == "infer-student") return finish(cmd, cmd_infer_student(argc - 2, argv + 2));
  } catch (const UsageError& e) {
    // "fl simulate" errors carry the subcommand, like its config errors
    const bool fl_sim = cmd == "fl" && argc > 2 && std::string(argv[2]) == "simulate";
    const bool nonn = cmd == "partition" && argc > 2 && std::string(argv[2]) == "nonn";
    const std::string fleet_sub = cmd == "fleet" && argc > 2 ? "fleet " + std::string(argv[2]) : std::string();
    const bool fleet_known = fleet_sub == "fleet up" || fleet_sub == "fleet down" || fleet_sub == "fleet token" ||
                             fleet_sub == "fleet run" || fleet_sub == "fleet resume" || fleet_sub == "fleet infer";
    return fail(fl_sim ? "fl simulate" : nonn ? "partition nonn" : fleet_known ? fleet_sub : cmd,
                e.msg + " (see fleetdl --help)", 2);
  }
  std::fprintf(stderr, "fleetdl: unknown command '%s' (see fleetdl --help)\n", cmd.c_str());
  return 2;
}
