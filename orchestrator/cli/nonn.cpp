// orchestrator/cli/nonn.cpp — the NoNN commands of `fleetdl`:
//
//   fleetdl partition nonn --teacher t.fdl --students N [--mode M] --dataset
//       fashion-mnist --out DIR [--json] ...
//       builds the teacher's filter activation graph over a validation split
//       (the last 10% of the training set), finds Louvain communities,
//       assigns the filters to N students (mode reference, balanced, or the
//       random-partition baseline), trains the students jointly against the
//       teacher (NoNN loss), and writes DIR: one .fdl per student, the
//       combiner, the unified student and modules.json (filters, sizes,
//       costs, accuracies). DIR is written under a temporary name and renamed
//       at the end, so it is either complete or absent.
//   fleetdl infer --modules DIR --dataset fashion-mnist [--json] ...
//       distributed inference over the modules `partition nonn` wrote: every
//       student runs in its own process (`fleetdl infer-student`, spawned
//       here) and sends only its |P_i| pooled features per image through a
//       pipe; this process is the combiner and applies the FC. It prints the
//       accuracy, per-device costs, the bytes each device sent per image and
//       the simulated latency max_i(t_i + link_i) + t_FC, and checks that the
//       result equals the unified student's bit for bit.
//
// The student -> combiner stream (little-endian): "FDLFEAT1", u32 student
// index, u32 feature count F, u64 image count N, then N x F float32. The
// combiner checks the header against what it expects and the exact length
// before using a byte of it.
#include "fleetdl/core.hpp"
#include "fleetdl/data.hpp"
#include "fleetdl/io.hpp"
#include "fleetdl/nn.hpp"
#include "fleetdl/partition.hpp"
#include "fleetdl/sim/profile.hpp"
#include "cli_common.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

extern char** environ;

namespace fleetdl::cli {
namespace {

namespace nn = fleetdl::nn;
namespace io = fleetdl::io;
namespace data = fleetdl::data;

constexpr char kFeatMagic[8] = {'F', 'D', 'L', 'F', 'E', 'A', 'T', '1'};
constexpr std::size_t kFeatHeader = 8 + 4 + 4 + 8;
using partition::ModuleSet;
using partition::StudentCost;
using partition::forward_all;
using partition::load_modules;
using partition::module_cost;


/// One running student process and what it has sent so far.
struct Worker {
  pid_t pid = -1;
  int out = -1, err = -1;
  std::vector<std::uint8_t> bytes;
  std::string err_text;
  std::size_t expected = 0;
};

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

Result<Worker> spawn_student(const std::vector<std::string>& args) {
  int outp[2], errp[2];
  if (::pipe2(outp, O_CLOEXEC) != 0) return make_error(Errc::io_error, std::string("pipe: ") + std::strerror(errno));
  if (::pipe2(errp, O_CLOEXEC) != 0) {
    ::close(outp[0]);
    ::close(outp[1]);
    return make_error(Errc::io_error, std::string("pipe: ") + std::strerror(errno));
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, outp[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&fa, errp[1], STDERR_FILENO);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  Worker w;
  const int rc = posix_spawn(&w.pid, "/proc/self/exe", &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(outp[1]);
  ::close(errp[1]);
  if (rc != 0) {
    ::close(outp[0]);
    ::close(errp[0]);
    return make_error(Errc::io_error, std::string("cannot start a student process: ") + std::strerror(rc));
  }
  w.out = outp[0];
  w.err = errp[0];
  return w;
}

/// Read every worker's stdout and stderr to the end (poll). Stops reading a
/// worker that sends more than it should. Returns false if the deadline
/// passed (or poll failed) first: every worker is then killed and its pipes
/// closed, so none stays blocked in write() and the caller can reap them.
bool drain(std::vector<Worker>& ws, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    std::vector<pollfd> fds;
    std::vector<std::pair<std::size_t, bool>> who;  // (worker, is stdout)
    for (std::size_t i = 0; i < ws.size(); ++i) {
      if (ws[i].out >= 0) {
        fds.push_back({ws[i].out, POLLIN, 0});
        who.emplace_back(i, true);
      }
      if (ws[i].err >= 0) {
        fds.push_back({ws[i].err, POLLIN, 0});
        who.emplace_back(i, false);
      }
    }
    if (fds.empty()) return true;
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    const int rc = left > 0 ? ::poll(fds.data(), fds.size(), static_cast<int>(std::min<long long>(left, 1000))) : 0;
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0 || left <= 0) {
      for (auto& w : ws) {
        if (w.pid > 0) ::kill(w.pid, SIGKILL);
        close_fd(w.out);
        close_fd(w.err);
      }
      return false;
    }
    for (std::size_t k = 0; k < fds.size(); ++k) {
      if (!(fds[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      Worker& w = ws[who[k].first];
      std::uint8_t buf[65536];
      const ssize_t n = ::read(fds[k].fd, buf, sizeof buf);
      if (n <= 0) {
        if (n < 0 && errno == EINTR) continue;
        close_fd(who[k].second ? w.out : w.err);
        continue;
      }
      if (who[k].second) {
        // keep at most one byte beyond what is expected: enough to tell
        // that a worker sent too much, without buffering whatever it sends
        const std::size_t room = w.expected + 1 - std::min(w.expected + 1, w.bytes.size());
        w.bytes.insert(w.bytes.end(), buf, buf + std::min(static_cast<std::size_t>(n), room));
        if (w.bytes.size() > w.expected) {
          close_fd(w.out);
          ::kill(w.pid, SIGTERM);
        }
      } else if (w.err_text.size() < 4096) {
        w.err_text.append(reinterpret_cast<const char*>(buf), static_cast<std::size_t>(n));
      }
    }
  }
}

std::string last_line(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  const auto nl = s.rfind('\n');
  return nl == std::string::npos ? s : s.substr(nl + 1);
}

}  // namespace

// fleetdl infer-student --module F --data-dir D --index I --features F
//                       [--test-limit N] [--batch B] [--threads T]
// (internal: started by `fleetdl infer`, one per student; writes the feature
// stream to stdout)
int cmd_infer_student(int argc, char** argv) {
  const std::string cmd = "infer-student";
  Args a(cmd, argc, argv, {"--module", "--data-dir", "--index", "--features", "--test-limit", "--batch", "--threads"}, {});
  if (!a.positional().empty()) throw UsageError{"unexpected argument '" + a.positional()[0] + "'"};
  if (!a.has("--module")) throw UsageError{"--module FILE is required"};
  const auto index = static_cast<std::uint32_t>(a.integer("--index", 0, 0, 1023));
  const Index features = static_cast<Index>(a.integer("--features", 1, 1, 1 << 20));
  const Index limit = static_cast<Index>(a.integer("--test-limit", -1, 1, 1 << 30));
  const Index batch = static_cast<Index>(a.integer("--batch", 256, 1, 1 << 16));
  const int threads = static_cast<int>(a.integer("--threads", 1, 1, FLEETDL_MAX_THREADS));
  auto m = io::load_model<float>(a.str("--module", ""));
  if (!m) return fail(cmd, m.error().message);
  if (m->model.output_shape().size() != features)
    return fail(cmd, a.str("--module", "") + ": outputs " + std::to_string(m->model.output_shape().size()) +
                         " values, expected " + std::to_string(features));
  auto test = data::load_fashion_mnist<float>(a.str("--data-dir", FLEETDL_FASHION_MNIST_DIR), false, limit);
  if (!test) return fail(cmd, test.error().message);
  if (test->images.rows() != m->model.input_shape().size()) return fail(cmd, "the module's input shape does not match the dataset");
  ThreadPool pool(threads);
  ByteWriter w;
  w.raw(kFeatMagic, sizeof kFeatMagic);
  w.u32(index);
  w.u32(static_cast<std::uint32_t>(features));
  w.u64(static_cast<std::uint64_t>(test->size()));
  const auto write_all = [](const std::vector<std::uint8_t>& b) {
    std::size_t off = 0;
    while (off < b.size()) {
      const ssize_t n = ::write(STDOUT_FILENO, b.data() + off, b.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      off += static_cast<std::size_t>(n);
    }
    return true;
  };
  // Failure injection for the tests of `infer` (never set in normal use):
  // FLEETDL_TEST_INFER_FAULT=crash|hang|short|long|header makes this worker
  // fail, stall, or send a stream that is too short, too long, or whose header
  // names another student.
  const char* fault_env = std::getenv("FLEETDL_TEST_INFER_FAULT");
  const std::string fault = fault_env ? fault_env : "";
  if (fault == "crash") return fail(cmd, "injected failure");
  if (fault == "hang") {
    for (;;) ::pause();
  }
  if (fault == "header") {
    std::vector<std::uint8_t> h = w.bytes();
    h[8] ^= 1;  // the student index
    if (!write_all(h)) return fail(cmd, "cannot write the feature stream");
  } else if (!write_all(w.bytes())) {
    return fail(cmd, "cannot write the feature stream");
  }
  nn::ExecContext<float> ctx;
  ctx.pool = &pool;
  for (Index b = 0; b < test->size(); b += batch) {
    const Index n = std::min(batch, test->size() - b);
    const Matrix<float> xb = test->images.middleCols(b, n);
    const Matrix<float>& y = m->model.forward(xb, ctx);
    ByteWriter fw;
    for (Index j = 0; j < n; ++j)
      for (Index f = 0; f < features; ++f) fw.f32(y(f, j));
    if (fault == "short" && b + n >= test->size()) {
      std::vector<std::uint8_t> cut = fw.bytes();
      cut.resize(cut.size() - 4);
      return write_all(cut) ? 0 : 1;
    }
    if (!write_all(fw.bytes())) return fail(cmd, "cannot write the feature stream");
  }
  if (fault == "long") {
    const std::vector<std::uint8_t> extra(64, 0);
    if (!write_all(extra)) return 1;
  }
  return 0;
}

// fleetdl infer --modules DIR --dataset fashion-mnist [--data-dir D]
//               [--test-limit N] [--batch B] [--threads T] [--json]
//               [--macs-per-second X] [--up-bytes-per-second X] [--link-latency S]
int cmd_infer(int argc, char** argv) {
  const std::string cmd = "infer";
  Args a(cmd, argc, argv,
         {"--modules", "--dataset", "--data-dir", "--test-limit", "--batch", "--threads", "--macs-per-second",
          "--up-bytes-per-second", "--link-latency", "--timeout"},
         {"--json"});
  if (!a.positional().empty()) throw UsageError{"unexpected argument '" + a.positional()[0] + "'"};
  if (!a.has("--modules")) throw UsageError{"--modules DIR is required"};
  const DatasetChoice ds = dataset_option(a);
  const Index limit = static_cast<Index>(a.integer("--test-limit", -1, 1, 1 << 30));
  const Index batch = static_cast<Index>(a.integer("--batch", 256, 1, 1 << 16));
  const int threads = static_cast<int>(a.integer("--threads", 1, 1, FLEETDL_MAX_THREADS));
  const sim::DeviceProfile defaults;
  const double mps = a.number("--macs-per-second", defaults.macs_per_second, 1.0, 1e18);
  const double up = a.number("--up-bytes-per-second", defaults.up_bytes_per_second, 1.0, 1e15);
  const double link = a.number("--link-latency", defaults.latency_seconds, 0.0, 1e6);
  const double timeout = a.number("--timeout", 3600.0, 0.1, 1e7);
  const bool json_out = a.has("--json");
  const std::string dir = a.str("--modules", "");

  // everything is checked before a process starts
  auto set = load_modules(dir);
  if (!set) return fail(cmd, set.error().message);
  auto test = data::load_fashion_mnist<float>(ds.dir, false, limit);
  if (!test) return fail(cmd, test.error().message);
  if (test->images.rows() != set->students[0].model.input_shape().size())
    return fail(cmd, dir + ": the modules take " + set->students[0].model.input_shape().str() +
                         " inputs, the dataset has " + std::to_string(test->images.rows()) + " values per image");
  const Index images = test->size();
  if (images < 1) return fail(cmd, ds.dir + ": no test images");

  std::vector<Worker> ws;
  const auto stop_all = [&] {
    for (auto& w : ws) {
      if (w.pid > 0) {
        ::kill(w.pid, SIGTERM);
        ::waitpid(w.pid, nullptr, 0);
        w.pid = -1;
      }
      close_fd(w.out);
      close_fd(w.err);
    }
  };
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < set->students.size(); ++i) {
    const auto& st = set->students[i];
    auto w = spawn_student({"fleetdl", "infer-student", "--module", st.file, "--data-dir", ds.dir, "--index",
                            std::to_string(i), "--features", std::to_string(st.features), "--test-limit",
                            std::to_string(images), "--batch", std::to_string(batch), "--threads", std::to_string(threads)});
    if (!w) {
      stop_all();
      return fail(cmd, w.error().message);
    }
    w->expected = kFeatHeader + static_cast<std::size_t>(images) * static_cast<std::size_t>(st.features) * 4;
    ws.push_back(std::move(*w));
  }
  const bool finished =
      drain(ws, t0 + std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(timeout)));
  std::vector<int> status(ws.size(), 0);
  for (std::size_t i = 0; i < ws.size(); ++i) {
    ::waitpid(ws[i].pid, &status[i], 0);
    ws[i].pid = -1;
  }
  if (!finished) return fail(cmd, "the student processes did not finish within " + num(timeout) + " s (--timeout)");
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // check every stream before using it
  Matrix<float> feats(set->combiner.input_shape().size(), images);
  Index row = 0;
  for (std::size_t i = 0; i < ws.size(); ++i) {
    const auto& st = set->students[i];
    const std::string who = "student " + std::to_string(i) + " (" + st.file + ")";
    const auto& b = ws[i].bytes;
    if (b.size() > ws[i].expected)
      return fail(cmd, who + " sent more than the " + std::to_string(ws[i].expected) + " bytes expected");
    if (!WIFEXITED(status[i]) || WEXITSTATUS(status[i]) != 0) {
      const std::string why = last_line(ws[i].err_text);
      return fail(cmd, who + " failed" + (why.empty() ? "" : ": " + why));
    }
    if (b.size() != ws[i].expected)
      return fail(cmd, who + " sent " + std::to_string(b.size()) + " bytes, expected " + std::to_string(ws[i].expected));
    ByteReader r(b.data(), b.size());
    const std::uint8_t* magic = r.take(sizeof kFeatMagic);
    std::uint32_t idx = 0, nf = 0;
    std::uint64_t ni = 0;
    if (!magic || std::memcmp(magic, kFeatMagic, sizeof kFeatMagic) != 0 || !r.u32(idx) || !r.u32(nf) || !r.u64(ni) ||
        idx != i || nf != static_cast<std::uint32_t>(st.features) || ni != static_cast<std::uint64_t>(images))
      return fail(cmd, who + " sent a stream with a wrong header");
    for (Index j = 0; j < images; ++j)
      for (Index f = 0; f < st.features; ++f) {
        float v = 0;
        r.f32(v);
        feats(row + f, j) = v;
      }
    row += st.features;
  }

  // the combiner, and the unified student for comparison
  ThreadPool pool(threads);
  const Matrix<float> logits = forward_all(set->combiner, feats, batch, &pool);
  Index correct = 0;
  for (Index j = 0; j < images; ++j) {
    Index arg = 0;
    logits.col(j).maxCoeff(&arg);
    correct += arg == static_cast<Index>(test->labels[static_cast<std::size_t>(j)]) ? 1 : 0;
  }
  const double accuracy = images > 0 ? static_cast<double>(correct) / static_cast<double>(images) : 0.0;
  std::optional<bool> same;
  if (set->unified) {
    const Matrix<float> u = forward_all(*set->unified, test->images, batch, &pool);
    same = u.rows() == logits.rows() && (u.array() == logits.array()).all();
  }

  // per-device costs and the simulated latency
  struct Row {
    std::string name;
    StudentCost c;
    double sent_per_image = 0, compute = 0, link = 0;
  };
  std::vector<Row> rows;
  // latency = max_i(t_i) + comm + t_FC (the formula); the students
  // send in parallel, each on its own uplink, so comm is one transfer of the
  // largest feature vector
  double slowest = 0, comm = 0;
  for (std::size_t i = 0; i < ws.size(); ++i) {
    Row rw;
    rw.name = "student" + std::to_string(i);
    rw.c = module_cost(set->students[i].model);
    rw.sent_per_image = static_cast<double>(ws[i].bytes.size() - kFeatHeader) / static_cast<double>(std::max<Index>(images, 1));
    rw.compute = static_cast<double>(rw.c.macs) / mps;
    rw.link = link + rw.sent_per_image / up;
    slowest = std::max(slowest, rw.compute);
    comm = std::max(comm, rw.link);
    rows.push_back(rw);
  }
  Row comb;
  comb.name = "combiner";
  comb.c = module_cost(set->combiner);
  comb.compute = static_cast<double>(comb.c.macs) / mps;
  const double latency = slowest + comm + comb.compute;

  if (json_out) {
    std::ostringstream o;
    o << "{\"command\":\"infer\",\"modules\":\"" << json_escape(dir) << "\",\"students\":" << ws.size()
      << ",\"test_images\":" << images << ",\"test_accuracy\":" << json_num(accuracy)
      << ",\"matches_unified\":" << (same ? (*same ? "true" : "false") : "null")
      << ",\"latency_seconds\":" << json_num(latency) << ",\"latency\":{\"slowest_student_seconds\":"
      << json_num(slowest) << ",\"comm_seconds\":" << json_num(comm) << ",\"combiner_seconds\":" << json_num(comb.compute)
      << "},\"wall_seconds\":" << json_num(wall)
      << ",\"profile\":{\"macs_per_second\":" << json_num(mps) << ",\"up_bytes_per_second\":" << json_num(up)
      << ",\"link_latency_seconds\":" << json_num(link) << "},\"devices\":[";
    rows.push_back(comb);
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const auto& rw = rows[i];
      o << (i ? "," : "") << "{\"device\":\"" << rw.name << "\",\"params\":" << rw.c.params
        << ",\"weight_bytes\":" << rw.c.weight_bytes << ",\"peak_activation_bytes\":" << rw.c.peak_activation_bytes
        << ",\"macs\":" << rw.c.macs << ",\"bytes_sent_per_image\":" << json_num(rw.sent_per_image)
        << ",\"compute_seconds\":" << json_num(rw.compute) << ",\"link_seconds\":" << json_num(rw.link) << "}";
    }
    o << "]}";
    std::printf("%s\n", o.str().c_str());
    return 0;
  }
  std::printf("%s: %zu students, %lld test images, accuracy %s", dir.c_str(), ws.size(), static_cast<long long>(images),
              num(accuracy).c_str());
  if (same) std::printf(", %s the unified student", *same ? "identical to" : "DIFFERENT from");
  std::printf("\n%-10s %10s %12s %12s %12s %10s %12s\n", "device", "params", "weight B", "peak act B", "MACs",
              "sent B/img", "compute s");
  rows.push_back(comb);
  for (const auto& rw : rows)
    std::printf("%-10s %10lld %12lld %12lld %12lld %10s %12s\n", rw.name.c_str(), static_cast<long long>(rw.c.params),
                static_cast<long long>(rw.c.weight_bytes), static_cast<long long>(rw.c.peak_activation_bytes),
                static_cast<long long>(rw.c.macs), num(rw.sent_per_image).c_str(), num(rw.compute).c_str());
  std::printf("simulated latency per image: %s s = slowest student %s s + comm %s s (%s s link latency + largest "
              "feature vector / %s B/s) + combiner %s s, at %s MAC/s\n",
              num(latency).c_str(), num(slowest).c_str(), num(comm).c_str(), num(link).c_str(), num(up).c_str(),
              num(comb.compute).c_str(), num(mps).c_str());
  return 0;
}


namespace {

/// The unified student as one model (the students' Concat, then the
/// combiner), for `infer` to compare the distributed result with.
Result<nn::Model<float>> unified_model(const partition::UnifiedStudent<float>& u) {
  std::vector<nn::NodePtr<float>> nodes;
  for (Index i = 0; i < u.body.size(); ++i) nodes.push_back(u.body.node(i).clone());
  for (Index i = 0; i < u.head.size(); ++i) nodes.push_back(u.head.node(i).clone());
  auto m = nn::Model<float>::create(u.body.input_shape(), std::move(nodes));
  if (!m) return m;
  m->params().head(u.body.param_count()) = u.body.params();
  m->params().tail(u.head.param_count()) = u.head.params();
  m->buffers().head(u.body.buffer_count()) = u.body.buffers();
  m->buffers().tail(u.head.buffer_count()) = u.head.buffers();
  return m;
}

/// The random-partition baseline: a seeded permutation of all C filters cut
/// into N parts whose sizes differ by at most one.
std::vector<std::vector<Index>> random_assignment(Index filters, Index n, std::uint64_t seed) {
  std::vector<Index> perm(static_cast<std::size_t>(filters));
  for (Index i = 0; i < filters; ++i) perm[static_cast<std::size_t>(i)] = i;
  Rng rng(seed);
  rng.shuffle(perm.begin(), perm.end());
  std::vector<std::vector<Index>> out(static_cast<std::size_t>(n));
  for (Index i = 0; i < filters; ++i) out[static_cast<std::size_t>(i % n)].push_back(perm[static_cast<std::size_t>(i)]);
  for (auto& v : out) std::sort(v.begin(), v.end());
  return out;
}

std::string int_list(const std::vector<Index>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(v[i]);
  }
  s += ']';
  return s;
}

std::string cost_json(const StudentCost& c) {
  std::ostringstream o;
  o << "{\"params\":" << c.params << ",\"weight_bytes\":" << c.weight_bytes
    << ",\"peak_activation_bytes\":" << c.peak_activation_bytes << ",\"macs\":" << c.macs
    << ",\"bytes_sent_per_image\":" << c.bytes_sent_per_image << "}";
  return o.str();
}

double accuracy_of(nn::Model<float>& m, const data::Dataset<float>& d, ThreadPool* pool) {
  return nn::evaluate(m, d.images, d.labels, 500, pool).accuracy;
}

}  // namespace

// fleetdl partition nonn --teacher t.fdl --students N [--mode reference|balanced|random]
//       --dataset fashion-mnist --out DIR [--json] [options, see kUsage]
int cmd_partition(int argc, char** argv) {
  namespace fs = std::filesystem;
  const std::string cmd = "partition nonn";
  if (argc < 1 || std::string(argv[0]) != "nonn")
    throw UsageError{argc < 1 ? "missing method (known: nonn)" : "unknown method '" + std::string(argv[0]) + "' (known: nonn)"};
  Args a(cmd, argc - 1, argv + 1,
         {"--teacher", "--students", "--mode", "--dataset", "--data-dir", "--out", "--epochs", "--batch", "--lr",
          "--optimizer", "--schedule", "--alpha", "--temperature", "--beta", "--gamma", "--top-k", "--percentile", "--width",
          "--blocks", "--seed", "--threads", "--train-limit", "--test-limit"},
         {"--json", "--allow-shrink", "--no-progress"});
  if (!a.positional().empty()) throw UsageError{"unexpected argument '" + a.positional()[0] + "'"};
  if (!a.has("--teacher")) throw UsageError{"--teacher FILE is required"};
  if (!a.has("--students")) throw UsageError{"--students N is required"};
  if (!a.has("--out")) throw UsageError{"--out DIR is required"};
  const DatasetChoice ds = dataset_option(a);
  const Index n = static_cast<Index>(a.integer("--students", 2, 1, 1024));
  const std::string mode = a.str("--mode", "reference");
  if (mode != "reference" && mode != "balanced" && mode != "random")
    throw UsageError{"flag '--mode': unknown mode '" + mode + "' (known: reference, balanced, random)"};
  const std::string opt_name = a.str("--optimizer", "sgd");
  if (opt_name != "sgd" && opt_name != "adam") throw UsageError{"flag '--optimizer': unknown optimizer '" + opt_name + "' (known: sgd, adam)"};
  const std::string schedule = a.str("--schedule", "constant");
  if (schedule != "constant" && schedule != "cosine")
    throw UsageError{"flag '--schedule': unknown schedule '" + schedule + "' (known: constant, cosine)"};
  partition::NonnTrainOptions to;
  to.epochs = static_cast<int>(a.integer("--epochs", 10, 1, 100000));
  to.batch = static_cast<Index>(a.integer("--batch", 64, 1, 1 << 16));
  // one --seed, one independent stream per purpose
  const auto seed = static_cast<std::uint64_t>(a.integer("--seed", 1, 0, std::numeric_limits<long long>::max()));
  const Rng seeds(seed);
  to.seed = seeds.fork(0x07D3).next_u64();  // epoch order
  to.optimizer = opt_name == "adam" ? partition::NonnOptimizer::adam : partition::NonnOptimizer::sgd;
  const double lr = a.number("--lr", opt_name == "adam" ? 0.001 : 0.01, 1e-12, 10.0);
  to.sgd.lr = lr;
  to.adam.lr = lr;
  if (schedule == "cosine") to.schedule = nn::LrSchedule::cosine(to.epochs);
  to.loss.alpha = a.number("--alpha", 0.9, 0.0, 1.0);
  to.loss.temperature = a.number("--temperature", 4.0, 1e-3, 1e3);
  to.loss.beta = a.number("--beta", 1e4, 0.0, 1e9);
  partition::LouvainOptions lo;
  lo.gamma = a.number("--gamma", 0.7, 1e-6, 1e6);
  lo.seed = seeds.fork(0x10FA).next_u64();  // Louvain's visit order
  partition::FilterGraphOptions go;
  if (a.has("--top-k")) go.k = static_cast<Index>(a.integer("--top-k", 1, 1, 1 << 20));
  go.p = a.number("--percentile", 99.0, 0.0, 100.0);
  partition::StudentSpec spec;
  spec.width = static_cast<Index>(a.integer("--width", spec.width, 1, 4096));
  spec.blocks = static_cast<Index>(a.integer("--blocks", spec.blocks, 1, 6));
  spec.seed = seeds.fork(0x57D).next_u64();  // the students' initialisation
  const int threads = static_cast<int>(a.integer("--threads", 1, 1, FLEETDL_MAX_THREADS));
  const Index train_limit = static_cast<Index>(a.integer("--train-limit", -1, 1, 1 << 30));
  const Index test_limit = static_cast<Index>(a.integer("--test-limit", -1, 1, 1 << 30));
  const bool json_out = a.has("--json");
  std::string out = a.str("--out", "");
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  const std::string teacher_path = a.str("--teacher", "");

  // the output directory: must not exist yet; its parent must
  std::error_code ec;
  // symlink_status: a dangling symlink exists too
  if (fs::symlink_status(out, ec).type() != fs::file_type::not_found)
    return fail(cmd, out + ": already exists (choose a new --out directory)");
  if (auto why = unwritable_reason(out); !why.empty()) return fail(cmd, why);
  // the temporary directory first, so an unwritable parent fails before the
  // training; a unique name (mkdtemp), removed on every path unless committed
  const fs::path final_dir(out);
  std::string tmpl = (final_dir.parent_path() / (final_dir.filename().string() + ".partial-XXXXXX")).string();
  if (!::mkdtemp(tmpl.data())) return fail(cmd, out + ": cannot create " + tmpl + " (" + std::strerror(errno) + ")");
  const fs::path tmp(tmpl);
  {  // mkdtemp makes it 0700; the module directory gets the usual 0777 & ~umask
    const mode_t mask = ::umask(0);
    ::umask(mask);
    fs::permissions(tmp, static_cast<fs::perms>(0777 & ~mask), ec);
  }
  struct TmpGuard {
    fs::path p;
    bool keep = false;
    ~TmpGuard() {
      std::error_code e;
      if (!keep) fs::remove_all(p, e);
    }
  } guard{tmp};

  auto tf = io::load_model<float>(teacher_path);
  if (!tf) return fail(cmd, tf.error().message);
  nn::Model<float> teacher = std::move(tf->model);
  auto feature = partition::teacher_feature_node(teacher);
  if (!feature) return fail(cmd, teacher_path + ": " + feature.error().message);
  auto train = data::load_fashion_mnist<float>(ds.dir, true, train_limit);
  if (!train) return fail(cmd, train.error().message);
  auto test = data::load_fashion_mnist<float>(ds.dir, false, test_limit);
  if (!test) return fail(cmd, test.error().message);
  if (train->images.rows() != teacher.input_shape().size())
    return fail(cmd, teacher_path + ": takes " + teacher.input_shape().str() + " inputs, the dataset has " +
                         std::to_string(train->images.rows()) + " values per image");
  if (teacher.output_shape().size() != train->classes)
    return fail(cmd, teacher_path + ": has " + std::to_string(teacher.output_shape().size()) + " outputs, the dataset " +
                         std::to_string(train->classes) + " classes");
  if (train->size() < 20) return fail(cmd, "the training set has " + std::to_string(train->size()) + " images; at least 20 are needed");
  ThreadPool pool(threads);
  ProgressBar bar(!a.has("--no-progress") && !json_out);

  // 1. the filter graph over the validation split and the assignment
  const Index val = std::max<Index>(1, train->size() / 10);
  const Matrix<float> val_images = train->images.rightCols(val);
  auto acts = partition::pooled_teacher_activations(teacher, val_images, 256, &pool);
  if (!acts) return fail(cmd, teacher_path + ": " + acts.error().message);
  const Index filters = acts->rows();
  std::vector<std::vector<Index>> assignment;
  std::string partition_json;
  if (mode == "random") {
    if (n > filters) return fail(cmd, "--students " + std::to_string(n) + " is more than the teacher's " + std::to_string(filters) + " filters");
    assignment = random_assignment(filters, n, seeds.fork(0x3A4D).next_u64());
    std::vector<Index> sizes;
    std::string lists = "[";
    for (std::size_t i = 0; i < assignment.size(); ++i) {
      sizes.push_back(static_cast<Index>(assignment[i].size()));
      if (i) lists += ',';
      lists += int_list(assignment[i]);
    }
    partition_json = "{\"format\":\"fleetdl.nonn_partition\",\"version\":1,\"mode\":\"random\",\"filters\":" +
                     std::to_string(filters) + ",\"students\":" + std::to_string(n) + ",\"seed\":" + std::to_string(seed) +
                     ",\"sizes\":" + int_list(sizes) + ",\"assignment\":" + lists + "]}";
  } else {
    partition::AssignOptions ao;
    ao.students = n;
    ao.mode = mode == "balanced" ? partition::AssignMode::balanced : partition::AssignMode::reference;
    ao.allow_shrink = a.has("--allow-shrink");
    const Matrix<float> rows = acts->transpose();
    auto man = partition::partition_filters(rows, go, lo, ao);
    if (!man) return fail(cmd, man.error().message);
    assignment = man->assignment;
    partition_json = man->to_json();
  }
  std::vector<Index> sizes;
  for (const auto& v : assignment) sizes.push_back(static_cast<Index>(v.size()));

  // 2. joint training of the students against the teacher
  auto u = partition::make_unified_student<float>(teacher.input_shape(), sizes, train->classes, spec);
  if (!u) return fail(cmd, u.error().message);
  partition::NonnCallbacks cb;
  cb.on_batch = [&](const partition::NonnProgress& p) {
    bar.draw("epoch " + std::to_string(p.epoch + 1) + "/" + std::to_string(p.epochs), p.batch, p.batches,
             "loss " + num(p.loss));
  };
  cb.on_epoch = [&](const partition::NonnEpochReport& e) {
    if (!json_out)
      std::printf("epoch %d/%d: loss %s (KD %s, CE %s, AM %s), train accuracy %s, %.1f s\n", e.epoch + 1, to.epochs,
                  num(e.loss).c_str(), num(e.kd_term).c_str(), num(e.ce_term).c_str(), num(e.am_term).c_str(),
                  num(e.train_accuracy).c_str(), e.seconds);
    std::fflush(stdout);
  };
  auto rep = partition::train_nonn(*u, teacher, assignment, train->images, train->labels, to, &pool, cb);
  if (!rep) return fail(cmd, rep.error().message);

  // 3. the modules, their costs and accuracies
  auto unified = unified_model(*u);
  if (!unified) return fail(cmd, unified.error().message);
  const double student_acc = accuracy_of(*unified, *test, &pool);
  const double teacher_acc = accuracy_of(teacher, *test, &pool);
  auto costs = partition::nonn_costs(*u);
  if (!costs) return fail(cmd, costs.error().message);
  const StudentCost tcost = module_cost(teacher);

  const auto abandon = [&](const std::string& why) { return fail(cmd, why); };  // guard removes tmp
  io::Metadata meta = {{"nonn_students", std::to_string(sizes.size())}, {"teacher", teacher_path}};
  std::ostringstream studs;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    auto st = partition::extract_student(*u, static_cast<Index>(i));
    if (!st) return abandon(st.error().message);
    const std::string file = "student" + std::to_string(i) + ".fdl";
    io::Metadata m = meta;
    m.emplace_back("nonn_student", std::to_string(i));
    if (auto ok = io::save_model((tmp / file).string(), *st, m); !ok) return abandon(ok.error().message);
    studs << (i ? "," : "") << "{\"file\":\"" << file << "\",\"features\":" << sizes[i]
          << ",\"filters\":" << int_list(assignment[i]) << ",\"cost\":" << cost_json(costs->students[i]) << "}";
  }
  if (auto ok = io::save_model((tmp / "combiner.fdl").string(), partition::combiner(*u), meta); !ok) return abandon(ok.error().message);
  if (auto ok = io::save_model((tmp / "unified.fdl").string(), *unified, meta); !ok) return abandon(ok.error().message);
  const auto& last = rep->epochs.back();
  std::ostringstream o;
  o << "{\"format\":\"fleetdl-nonn-modules\",\"version\":1,\"classes\":" << train->classes
    << ",\"students\":[" << studs.str() << "],\"combiner\":\"combiner.fdl\",\"unified\":\"unified.fdl\""
    << ",\"combiner_cost\":" << cost_json(costs->combiner) << ",\"teacher\":{\"file\":\"" << json_escape(teacher_path)
    << "\",\"filters\":" << filters << ",\"test_accuracy\":" << json_num(teacher_acc) << ",\"cost\":" << cost_json(tcost)
    << "},\"test_accuracy\":" << json_num(student_acc) << ",\"test_images\":" << test->size()
    << ",\"training\":{\"epochs\":" << to.epochs << ",\"batch\":" << to.batch << ",\"optimizer\":\"" << opt_name
    << "\",\"schedule\":\"" << schedule << "\",\"lr\":" << json_num(lr) << ",\"alpha\":" << json_num(to.loss.alpha) << ",\"temperature\":"
    << json_num(to.loss.temperature) << ",\"beta\":" << json_num(to.loss.beta) << ",\"seed\":" << seed
    << ",\"train_images\":" << train->size() << ",\"validation_images\":" << val << ",\"width\":" << spec.width
    << ",\"blocks\":" << spec.blocks << ",\"final_loss\":" << json_num(last.loss) << ",\"seconds\":" << json_num(rep->seconds)
    << "},\"partition\":" << partition_json << "}";
  const std::string manifest = o.str();
  if (auto ok = write_file_atomic((tmp / "modules.json").string(),
                                  std::vector<std::uint8_t>(manifest.begin(), manifest.end()));
      !ok)
    return abandon(ok.error().message);
  // RENAME_NOREPLACE: an (empty) directory created at --out meanwhile is not silently replaced
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_NOREPLACE) != 0)
    return abandon(out + ": cannot move the modules into place (" + std::strerror(errno) + ")");
  guard.keep = true;

  Index max_params = 0;
  for (const auto& c : costs->students) max_params = std::max(max_params, c.params);
  if (json_out) {
    std::printf("%s\n", manifest.c_str());
  } else {
    std::printf("%s: %zu students (%s), filters per student", out.c_str(), sizes.size(), mode.c_str());
    for (const auto s : sizes) std::printf(" %lld", static_cast<long long>(s));
    std::printf("; test accuracy %s (teacher %s); largest student %lld params (teacher %lld, %.1fx fewer)\n",
                num(student_acc).c_str(), num(teacher_acc).c_str(), static_cast<long long>(max_params),
                static_cast<long long>(tcost.params),
                static_cast<double>(tcost.params) / static_cast<double>(std::max<Index>(max_params, 1)));
  }
  return 0;
}

}  // namespace fleetdl::cli
