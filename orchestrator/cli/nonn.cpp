// orchestrator/cli/nonn.cpp — the NoNN commands of `fleetdl`:
//
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
#include "fleetdl/sim/profile.hpp"
#include "cli_common.hpp"

#include <fcntl.h>
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
/// What one module costs the device that runs it, per image.
struct ModuleCost {
  Index params = 0, weight_bytes = 0, macs = 0;
  Index peak_activation_bytes = 0;  ///< max over top-level nodes of input + output activation bytes
};

ModuleCost module_cost(const nn::Model<float>& m) {
  ModuleCost c;
  for (const auto& r : m.cost_report()) {
    c.params += r.params;
    c.weight_bytes += r.weight_bytes;
    c.macs += r.macs;
    c.peak_activation_bytes = std::max(c.peak_activation_bytes, r.act_in_bytes + r.act_out_bytes);
  }
  return c;
}

/// The module set `partition nonn` wrote: DIR/modules.json names the files.
struct ModuleSet {
  struct Student {
    std::string file;
    Index features = 0;
    nn::Model<float> model;
  };
  std::vector<Student> students;
  std::string combiner_file, unified_file;
  nn::Model<float> combiner;
  std::optional<nn::Model<float>> unified;
  Index classes = 0;
};

Result<ModuleSet> load_modules(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string mpath = (fs::path(dir) / "modules.json").string();
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return make_error(Errc::not_found, dir + ": no such module directory");
  auto doc = json::parse_file(mpath);
  if (!doc) return std::move(doc).error();
  const auto bad = [&](const std::string& what) { return make_error(Errc::corrupt, mpath + ": " + what); };
  const json::Value* fmt = doc->find("format");
  if (!fmt || !fmt->is_string() || fmt->as_string() != "fleetdl-nonn-modules")
    return bad("not a fleetdl NoNN module manifest (\"format\" must be \"fleetdl-nonn-modules\")");
  const json::Value* ver = doc->find("version");
  if (!ver || !ver->is_int() || ver->as_int() != 1) return bad("\"version\" must be 1");
  const json::Value* cls = doc->find("classes");
  if (!cls || !cls->is_int() || cls->as_int() < 2 || cls->as_int() > 65536) return bad("\"classes\" must be an integer in [2, 65536]");
  const json::Value* studs = doc->find("students");
  if (!studs || !studs->is_array() || studs->items().empty() || studs->items().size() > 1024)
    return bad("\"students\" must be an array of 1 to 1024 modules");
  // a module file name: a plain name inside DIR
  const auto plain = [](const std::string& f) {
    return !f.empty() && f.size() <= 255 && f.find('/') == std::string::npos && f != "." && f != "..";
  };
  ModuleSet set;
  set.classes = static_cast<Index>(cls->as_int());
  Index total = 0;
  for (std::size_t i = 0; i < studs->items().size(); ++i) {
    const auto& s = studs->items()[i];
    const std::string where = "students[" + std::to_string(i) + "]";
    const json::Value* f = s.find("file");
    const json::Value* n = s.find("features");
    if (!f || !f->is_string() || !plain(f->as_string())) return bad(where + ".file must be a file name inside the directory");
    if (!n || !n->is_int() || n->as_int() < 1 || n->as_int() > 1 << 20) return bad(where + ".features must be an integer in [1, 2^20]");
    ModuleSet::Student st;
    st.file = (fs::path(dir) / f->as_string()).string();
    st.features = static_cast<Index>(n->as_int());
    auto m = io::load_model<float>(st.file);
    if (!m) return std::move(m).error();
    st.model = std::move(m->model);
    if (st.model.output_shape().size() != st.features)
      return make_error(Errc::shape_mismatch, st.file + ": outputs " + std::to_string(st.model.output_shape().size()) +
                                                  " values per image, the manifest says " + std::to_string(st.features) +
                                                  " features");
    if (i > 0 && !(st.model.input_shape() == set.students[0].model.input_shape()))
      return make_error(Errc::shape_mismatch, st.file + ": input shape " + st.model.input_shape().str() +
                                                  " differs from student 0's " + set.students[0].model.input_shape().str());
    total += st.features;
    set.students.push_back(std::move(st));
  }
  const json::Value* comb = doc->find("combiner");
  if (!comb || !comb->is_string() || !plain(comb->as_string())) return bad("\"combiner\" must be a file name inside the directory");
  set.combiner_file = (fs::path(dir) / comb->as_string()).string();
  auto c = io::load_model<float>(set.combiner_file);
  if (!c) return std::move(c).error();
  set.combiner = std::move(c->model);
  if (set.combiner.input_shape().size() != total)
    return make_error(Errc::shape_mismatch, set.combiner_file + ": takes " + std::to_string(set.combiner.input_shape().size()) +
                                                " features, the students send " + std::to_string(total));
  if (set.combiner.output_shape().size() != set.classes)
    return make_error(Errc::shape_mismatch, set.combiner_file + ": has " + std::to_string(set.combiner.output_shape().size()) +
                                                " outputs, the manifest says " + std::to_string(set.classes) + " classes");
  if (const json::Value* u = doc->find("unified")) {
    if (!u->is_string() || !plain(u->as_string())) return bad("\"unified\" must be a file name inside the directory");
    set.unified_file = (fs::path(dir) / u->as_string()).string();
    auto um = io::load_model<float>(set.unified_file);
    if (!um) return std::move(um).error();
    if (!(um->model.input_shape() == set.students[0].model.input_shape()) || um->model.output_shape().size() != set.classes)
      return make_error(Errc::shape_mismatch, set.unified_file + ": its input or output shape does not match the modules");
    set.unified = std::move(um->model);
  }
  return set;
}

/// Forward a whole image set in batches; one column per image.
Matrix<float> forward_all(nn::Model<float>& m, const Matrix<float>& x, Index batch, ThreadPool* pool) {
  nn::ExecContext<float> ctx;
  ctx.pool = pool;
  Matrix<float> out(m.output_shape().size(), x.cols());
  for (Index b = 0; b < x.cols(); b += batch) {
    const Index n = std::min(batch, x.cols() - b);
    const Matrix<float> xb = x.middleCols(b, n);
    out.middleCols(b, n) = m.forward(xb, ctx);
  }
  return out;
}

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

/// Read every worker's stdout and stderr to the end (poll), then reap them.
/// Stops reading a worker that sends more than it should.
void drain(std::vector<Worker>& ws) {
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
    if (fds.empty()) break;
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      break;
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
  const Index limit = static_cast<Index>(a.integer("--test-limit", 0, 0, 1 << 30));
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
  if (!write_all(w.bytes())) return fail(cmd, "cannot write the feature stream");
  nn::ExecContext<float> ctx;
  ctx.pool = &pool;
  for (Index b = 0; b < test->size(); b += batch) {
    const Index n = std::min(batch, test->size() - b);
    const Matrix<float> xb = test->images.middleCols(b, n);
    const Matrix<float>& y = m->model.forward(xb, ctx);
    ByteWriter fw;
    for (Index j = 0; j < n; ++j)
      for (Index f = 0; f < features; ++f) fw.f32(y(f, j));
    if (!write_all(fw.bytes())) return fail(cmd, "cannot write the feature stream");
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
          "--up-bytes-per-second", "--link-latency"},
         {"--json"});
  if (!a.positional().empty()) throw UsageError{"unexpected argument '" + a.positional()[0] + "'"};
  if (!a.has("--modules")) throw UsageError{"--modules DIR is required"};
  const DatasetChoice ds = dataset_option(a);
  const Index limit = static_cast<Index>(a.integer("--test-limit", 0, 0, 1 << 30));
  const Index batch = static_cast<Index>(a.integer("--batch", 256, 1, 1 << 16));
  const int threads = static_cast<int>(a.integer("--threads", 1, 1, FLEETDL_MAX_THREADS));
  const sim::DeviceProfile defaults;
  const double mps = a.number("--macs-per-second", defaults.macs_per_second, 1.0, 1e18);
  const double up = a.number("--up-bytes-per-second", defaults.up_bytes_per_second, 1.0, 1e15);
  const double link = a.number("--link-latency", defaults.latency_seconds, 0.0, 1e6);
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
  drain(ws);
  std::vector<int> status(ws.size(), 0);
  for (std::size_t i = 0; i < ws.size(); ++i) {
    ::waitpid(ws[i].pid, &status[i], 0);
    ws[i].pid = -1;
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // check every stream before using it
  Matrix<float> feats(set->combiner.input_shape().size(), images);
  Index row = 0;
  for (std::size_t i = 0; i < ws.size(); ++i) {
    const auto& st = set->students[i];
    const std::string who = "student " + std::to_string(i) + " (" + st.file + ")";
    if (!WIFEXITED(status[i]) || WEXITSTATUS(status[i]) != 0) {
      const std::string why = last_line(ws[i].err_text);
      return fail(cmd, who + " failed" + (why.empty() ? "" : ": " + why));
    }
    const auto& b = ws[i].bytes;
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
    ModuleCost c;
    double sent_per_image = 0, compute = 0, link = 0;
  };
  std::vector<Row> rows;
  double slowest = 0;
  for (std::size_t i = 0; i < ws.size(); ++i) {
    Row rw;
    rw.name = "student" + std::to_string(i);
    rw.c = module_cost(set->students[i].model);
    rw.sent_per_image = static_cast<double>(ws[i].bytes.size() - kFeatHeader) / static_cast<double>(std::max<Index>(images, 1));
    rw.compute = static_cast<double>(rw.c.macs) / mps;
    rw.link = link + rw.sent_per_image / up;
    slowest = std::max(slowest, rw.compute + rw.link);
    rows.push_back(rw);
  }
  Row comb;
  comb.name = "combiner";
  comb.c = module_cost(set->combiner);
  comb.compute = static_cast<double>(comb.c.macs) / mps;
  const double latency = slowest + comb.compute;

  if (json_out) {
    std::ostringstream o;
    o << "{\"command\":\"infer\",\"modules\":\"" << json_escape(dir) << "\",\"students\":" << ws.size()
      << ",\"test_images\":" << images << ",\"test_accuracy\":" << json_num(accuracy)
      << ",\"matches_unified\":" << (same ? (*same ? "true" : "false") : "null")
      << ",\"latency_seconds\":" << json_num(latency) << ",\"wall_seconds\":" << json_num(wall)
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
  std::printf("simulated latency per image: %s s = max over students of (compute + %s s link + bytes / %s B/s) + "
              "combiner %s s, at %s MAC/s\n",
              num(latency).c_str(), num(link).c_str(), num(up).c_str(), num(comb.compute).c_str(), num(mps).c_str());
  return 0;
}

}  // namespace fleetdl::cli
