// device_ports/posix/agent.cpp — the POSIX device agent (see agent.hpp and
// docs/agent.md).
#include "agent.hpp"

#include "fleetdl/core/json.hpp"
#include "fleetdl/core/parallel.hpp"
#include "fleetdl/core/rng.hpp"
#include "fleetdl/fl/client.hpp"
#include "fleetdl/fl/dp.hpp"
#include "fleetdl/io/fdl.hpp"
#include "fleetdl/partition/placement.hpp"
#include "fleetdl/micro/interpreter.hpp"
#include "fleetdl/nn/train.hpp"
#include "fleetdl/sim/config.hpp"
#include "fleetdl/sim/profile.hpp"

#include <asio/ssl.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <deque>
#include <thread>

namespace fleetdl::agent {

namespace {

using Clock = std::chrono::steady_clock;

Error sys_error(const std::string& what) { return make_error(Errc::io_error, what + ": " + std::strerror(errno)); }

std::uint64_t now_ms() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch()).count());
}

std::uint64_t splitmix(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

Result<double> parse_number(std::string_view text, std::string_view what) {
  const std::string s(text);
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || errno != 0 || !std::isfinite(v))
    return make_error(Errc::invalid_argument, std::string(what) + ": '" + s + "' is not a number");
  return v;
}

Result<std::uint64_t> parse_uint(std::string_view text, std::string_view what, std::uint64_t max) {
  const std::string s(text);
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos)
    return make_error(Errc::invalid_argument, std::string(what) + ": '" + s + "' is not a non-negative integer");
  errno = 0;
  const unsigned long long v = std::strtoull(s.c_str(), nullptr, 10);
  if (errno != 0 || v > max)
    return make_error(Errc::invalid_argument,
                      std::string(what) + ": " + s + " is out of range (at most " + std::to_string(max) + ")");
  return static_cast<std::uint64_t>(v);
}

}  // namespace

// ================================================================ options

Result<std::uint64_t> parse_bytes(std::string_view text, std::string_view what) {
  std::string s(text);
  std::uint64_t mult = 1;
  if (!s.empty()) {
    const char c = s.back();
    if (c == 'K' || c == 'k') mult = 1ULL << 10;
    else if (c == 'M' || c == 'm') mult = 1ULL << 20;
    else if (c == 'G' || c == 'g') mult = 1ULL << 30;
    if (mult != 1) s.pop_back();
  }
  auto v = parse_uint(s, what, ~0ULL / mult);
  if (!v) return make_error(Errc::invalid_argument, std::string(what) + ": '" + std::string(text) +
                                                        "' is not a byte count (digits, optional K, M or G)");
  return *v * mult;
}

std::string usage() {
  return "usage: fleetdl-agent --name NAME --state-dir DIR --budget BYTES\n"
         "                     [--connect HOST:ENROLL_PORT:FLEET_PORT | [--announce-to ADDR:PORT]... [--discovery-port P]]\n"
         "                     [--token IDENTITY:HEXSECRET] [--data-dir DIR] [--threads T] [--seed S]\n"
         "                     [--slowdown X] [--bandwidth BYTES_PER_S] [--dropout P] [--cores N]\n"
         "                     [--exit-after-runs N] [--log FILE]\n"
         "\n"
         "  --name NAME          device name: [A-Za-z0-9._-], 1..64, starting with a letter or digit\n"
         "  --state-dir DIR      key, certificates, device id and sequence counter (created 0700)\n"
         "  --token ID:SECRET    one-time enrollment token (needed only until enrolled)\n"
         "  --budget BYTES       memory budget (suffix K, M or G); modules needing more are refused\n"
         "  --connect H:E:F      orchestrator host, enrollment port and fleet port; without it the agent\n"
         "                       announces itself over UDP until an orchestrator invites it\n"
         "  --announce-to A:P    send announces to IPv4 address A, UDP port P (repeatable; default\n"
         "                       255.255.255.255 and 127.0.0.1 on the discovery port)\n"
         "  --discovery-port P   the default targets' UDP port (default 47800)\n"
         "  --announce-interval-ms N  between announces (default 500)\n"
         "  --data-dir DIR       Fashion-MNIST directory (default " FLEETDL_FASHION_MNIST_DIR ")\n"
         "  --threads T          threads for local training and inference (default 1)\n"
         "  --seed S             seed of the throttles' draws and the backoff jitter (default 1)\n"
         "  --slowdown X         compute takes X times as long (X >= 1, default 1)\n"
         "  --bandwidth B        pace sends to B bytes/s (suffix K, M or G; default unlimited)\n"
         "  --dropout P          drop the connection mid-round with probability P per round\n"
         "  --cores N            report N cores instead of the hardware's\n"
         "  --exit-after-runs N  exit after N runs ended with bye (default: never)\n"
         "  --log FILE           append the log to FILE instead of stderr\n";
}

Result<AgentOptions> parse_options(int argc, const char* const* argv, bool* help) {
  AgentOptions o;
  bool have_budget = false, have_connect = false, have_seed = false, have_discovery = false;
  if (help) *help = false;
  auto bad = [](const std::string& m) -> Error { return make_error(Errc::invalid_argument, m); };
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    bool has_value = false;
    if (const auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    if (arg == "--help" || arg == "-h") {
      if (help) *help = true;
      return o;
    }
    static const char* const known[] = {"--name",     "--state-dir", "--token",   "--budget",   "--connect",
                                        "--data-dir", "--threads",   "--seed",    "--slowdown", "--bandwidth",
                                        "--dropout",  "--cores",     "--exit-after-runs", "--log",
                                        "--announce-to", "--discovery-port", "--announce-interval-ms"};
    if (std::find_if(std::begin(known), std::end(known), [&](const char* k) { return arg == k; }) == std::end(known))
      return bad("unknown option '" + arg + "' (see --help)");
    if (!has_value) {
      if (i + 1 >= argc) return bad(arg + ": missing value");
      value = argv[++i];
    }
    if (arg == "--name") {
      if (!core::is_valid_device_name(value))
        return bad("--name: '" + value + "' is not a device name ([A-Za-z0-9._-], 1..64, first a letter or digit)");
      o.name = value;
    } else if (arg == "--state-dir") {
      if (value.empty()) return bad("--state-dir: empty path");
      o.state_dir = value;
    } else if (arg == "--token") {
      auto t = core::decode_token(value);
      if (!t) return bad("--token: " + t.error().message);
      o.token = std::move(*t);
    } else if (arg == "--budget") {
      auto v = parse_bytes(value, "--budget");
      if (!v) return std::move(v).error();
      if (*v == 0) return bad("--budget: must be > 0");
      o.budget_bytes = *v;
      have_budget = true;
    } else if (arg == "--connect") {
      const auto b = value.rfind(':');
      const auto a = b == std::string::npos || b == 0 ? std::string::npos : value.rfind(':', b - 1);
      if (a == std::string::npos || a == 0)
        return bad("--connect: '" + value + "' is not HOST:ENROLL_PORT:FLEET_PORT");
      auto e = parse_uint(value.substr(a + 1, b - a - 1), "--connect enroll port", 65535);
      auto f = parse_uint(value.substr(b + 1), "--connect fleet port", 65535);
      if (!e) return std::move(e).error();
      if (!f) return std::move(f).error();
      if (*e == 0 || *f == 0) return bad("--connect: ports must be 1..65535");
      o.host = value.substr(0, a);
      if (o.host.size() > 2 && o.host.front() == '[' && o.host.back() == ']') o.host = o.host.substr(1, o.host.size() - 2);
      o.enroll_port = static_cast<std::uint16_t>(*e);
      o.fleet_port = static_cast<std::uint16_t>(*f);
      have_connect = true;
    } else if (arg == "--announce-to") {
      const auto colon = value.rfind(':');
      std::error_code aec;
      const auto addr = colon == std::string::npos ? asio::ip::address_v4{}
                                                    : asio::ip::make_address_v4(value.substr(0, colon), aec);
      if (colon == std::string::npos || aec)
        return bad("--announce-to: '" + value + "' is not IPV4_ADDRESS:PORT");
      auto port = parse_uint(value.substr(colon + 1), "--announce-to port", 65535);
      if (!port) return std::move(port).error();
      if (*port == 0) return bad("--announce-to: the port must be 1..65535");
      o.announce_to.emplace_back(addr, static_cast<std::uint16_t>(*port));
      have_discovery = true;
    } else if (arg == "--discovery-port") {
      auto v = parse_uint(value, "--discovery-port", 65535);
      if (!v) return std::move(v).error();
      if (*v == 0) return bad("--discovery-port: must be 1..65535");
      o.discovery_port = static_cast<std::uint16_t>(*v);
      have_discovery = true;
    } else if (arg == "--announce-interval-ms") {
      auto v = parse_uint(value, "--announce-interval-ms", 60000);
      if (!v) return std::move(v).error();
      if (*v < 10) return bad("--announce-interval-ms: must be in [10, 60000]");
      o.announce_interval_ms = static_cast<std::uint32_t>(*v);
    } else if (arg == "--data-dir") {
      o.data_dir = value;
    } else if (arg == "--threads") {
      auto v = parse_uint(value, "--threads", FLEETDL_MAX_THREADS);
      if (!v) return std::move(v).error();
      if (*v == 0) return bad("--threads: must be >= 1");
      o.threads = static_cast<int>(*v);
    } else if (arg == "--seed") {
      auto v = parse_uint(value, "--seed", ~0ULL);
      if (!v) return std::move(v).error();
      o.seed = *v;
      have_seed = true;
    } else if (arg == "--slowdown") {
      auto v = parse_number(value, "--slowdown");
      if (!v) return std::move(v).error();
      if (!(*v >= 1.0) || *v > 1000.0) return bad("--slowdown: must be in [1, 1000] (got " + value + ")");
      o.slowdown = *v;
    } else if (arg == "--bandwidth") {
      auto v = parse_bytes(value, "--bandwidth");
      if (!v) return std::move(v).error();
      if (*v == 0) return bad("--bandwidth: must be > 0");
      o.bandwidth = static_cast<double>(*v);
    } else if (arg == "--dropout") {
      auto v = parse_number(value, "--dropout");
      if (!v) return std::move(v).error();
      if (!(*v >= 0.0 && *v <= 1.0)) return bad("--dropout: must be in [0, 1] (got " + value + ")");
      o.dropout = *v;
    } else if (arg == "--cores") {
      auto v = parse_uint(value, "--cores", 1U << 20);
      if (!v) return std::move(v).error();
      if (*v == 0) return bad("--cores: must be >= 1");
      o.cores = static_cast<unsigned>(*v);
    } else if (arg == "--exit-after-runs") {
      auto v = parse_uint(value, "--exit-after-runs", 1U << 30);
      if (!v) return std::move(v).error();
      o.exit_after_runs = static_cast<long>(*v);
    } else if (arg == "--log") {
      if (value.empty()) return bad("--log: empty path");
      o.log_file = value;
    }
  }
  (void)have_seed;
  if (o.name.empty()) return bad("--name is required");
  if (o.state_dir.empty()) return bad("--state-dir is required");
  if (!have_budget) return bad("--budget is required");
  if (have_connect && have_discovery)
    return bad("--connect names the orchestrator; it cannot be combined with --announce-to or --discovery-port");
  return o;
}

// ================================================================ capabilities

namespace {

std::uint64_t storage_of(std::filesystem::path p) {
  std::error_code ec;
  p = std::filesystem::absolute(p, ec);
  while (!p.empty()) {
    struct statvfs s{};
    if (::statvfs(p.c_str(), &s) == 0) return static_cast<std::uint64_t>(s.f_bavail) * s.f_frsize;
    if (p == p.root_path()) break;
    p = p.parent_path();
  }
  return 0;
}

// Multiply-accumulates per second of a float GEMM (Eigen, one thread): 128 x
// 128 products, repeated for about 60 ms (at most 100 ms with the first).
double measure_mac_per_s() {
  constexpr Index n = 128;
  Matrix<float> a = Matrix<float>::Constant(n, n, 0.5f), b = Matrix<float>::Constant(n, n, 0.25f), c(n, n);
  const auto start = Clock::now();
  long reps = 0;
  while (true) {
    c.noalias() = a * b;
    ++reps;
    a(0, 0) = c(1, 1) * 1e-6f;  // keep the products live
    const auto el = Clock::now() - start;
    if (el >= std::chrono::milliseconds(60) || reps >= 100000) {
      const double s = std::chrono::duration<double>(el).count();
      return s > 0 ? static_cast<double>(reps) * n * n * n / s : 0.0;
    }
  }
}

}  // namespace

Capabilities measure_capabilities(const AgentOptions& o) {
  Capabilities c;
  const unsigned hw = std::thread::hardware_concurrency();
  c.cores = o.cores > 0 ? o.cores : (hw > 0 ? hw : 1);
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page > 0) c.ram_bytes = static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page);
  c.storage_bytes = storage_of(o.state_dir.empty() ? std::filesystem::path(".") : o.state_dir);
  c.mac_per_s = measure_mac_per_s();
  c.link_bytes_per_s = o.bandwidth > 0 ? o.bandwidth : 0.0;
  return c;
}

wire::Hello make_hello(const AgentOptions& o, const Capabilities& c) {
  wire::Hello h;
  h.agent_name = o.name;
  h.features = wire::feature::train | wire::feature::float_inference | wire::feature::micro_inference;
  h.cores = c.cores;
  h.ram_bytes = c.ram_bytes;
  h.storage_bytes = c.storage_bytes;
  h.mac_per_s = c.mac_per_s;
  h.link_bytes_per_s = c.link_bytes_per_s;
  h.memory_budget_bytes = o.budget_bytes;
  return h;
}

// ================================================================ state dir

Result<StateDir> StateDir::open(const std::filesystem::path& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return sys_error(dir.string() + ": cannot create");
  struct stat st{};
  if (::stat(dir.c_str(), &st) != 0) return sys_error(dir.string());
  if (!S_ISDIR(st.st_mode)) return make_error(Errc::invalid_argument, dir.string() + ": not a directory");
  if ((st.st_mode & 077) != 0)
    return make_error(Errc::invalid_argument, dir.string() + ": mode " + [&] {
      char b[8];
      std::snprintf(b, sizeof b, "%03o", static_cast<unsigned>(st.st_mode & 0777));
      return std::string(b);
    }() + " lets group or others in (the agent's key lives here; chmod 700)");
  return StateDir(dir);
}

Result<void> StateDir::write_atomic(std::string_view name, std::string_view data, unsigned mode) const {
  const std::filesystem::path final_path = dir_ / std::string(name);
  const std::filesystem::path tmp = dir_ / ("." + std::string(name) + ".tmp." + std::to_string(::getpid()));
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return sys_error(tmp.string() + ": cannot create");
  // the mode before any byte, whatever the umask or an old stray file said
  if (::fchmod(fd, mode) != 0) {
    auto e = sys_error(tmp.string() + ": chmod");
    ::close(fd);
    ::unlink(tmp.c_str());
    return e;
  }
  std::size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      auto e = sys_error(tmp.string() + ": write");
      ::close(fd);
      ::unlink(tmp.c_str());
      return e;
    }
    off += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    auto e = sys_error(tmp.string() + ": fsync/close");
    ::unlink(tmp.c_str());
    return e;
  }
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
    auto e = sys_error(final_path.string() + ": rename");
    ::unlink(tmp.c_str());
    return e;
  }
  const int dfd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
  return success();
}

Result<std::string> StateDir::read(std::string_view name) const {
  const std::filesystem::path p = dir_ / std::string(name);
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return make_error(Errc::not_found, p.string() + ": missing");
    return sys_error(p.string());
  }
  std::string out;
  char buf[4096];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      auto e = sys_error(p.string() + ": read");
      ::close(fd);
      return e;
    }
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
    if (out.size() > (1U << 20)) {
      ::close(fd);
      return make_error(Errc::limit_exceeded, p.string() + ": larger than 1 MiB");
    }
  }
  ::close(fd);
  return out;
}

bool StateDir::exists(std::string_view name) const {
  struct stat st{};
  return ::stat((dir_ / std::string(name)).c_str(), &st) == 0;
}

bool StateDir::enrolled() const {
  return exists("key.pem") && exists("cert.pem") && exists("ca.pem") && exists("device_id");
}

Result<StateDir::Enrollment> StateDir::load_enrollment() const {
  Enrollment e;
  auto id = read("device_id");
  if (!id) return std::move(id).error();
  std::string s = *id;
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  auto v = parse_uint(s, (dir_ / "device_id").string(), ~0ULL);
  if (!v || *v == 0) return make_error(Errc::corrupt, (dir_ / "device_id").string() + ": not a device id");
  e.device_id = *v;
  auto k = read("key.pem");
  if (!k) return std::move(k).error();
  auto c = read("cert.pem");
  if (!c) return std::move(c).error();
  auto a = read("ca.pem");
  if (!a) return std::move(a).error();
  e.key_pem = std::move(*k);
  e.cert_pem = std::move(*c);
  e.ca_pem = std::move(*a);
  return e;
}

Result<void> StateDir::store_enrollment(const Enrollment& e) const {
  FLEETDL_TRY(write_atomic("key.pem", e.key_pem, 0600));
  FLEETDL_TRY(write_atomic("cert.pem", e.cert_pem, 0644));
  FLEETDL_TRY(write_atomic("ca.pem", e.ca_pem, 0644));
  return write_atomic("device_id", std::to_string(e.device_id) + "\n", 0644);
}

// ================================================================ seq

Result<SeqCounter> SeqCounter::open(const StateDir& dir) {
  std::uint64_t start = 1;
  if (dir.exists("seq")) {
    auto t = dir.read("seq");
    if (!t) return std::move(t).error();
    std::string s = *t;
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    auto v = parse_uint(s, (dir.path() / "seq").string(), ~0ULL - kBlock);
    if (!v) return make_error(Errc::corrupt, (dir.path() / "seq").string() + ": not a sequence number");
    start = std::max<std::uint64_t>(*v, 1);
  }
  return SeqCounter(&dir, start);
}

Result<std::uint64_t> SeqCounter::next() {
  if (next_ >= mark_) {
    // reserve the next block before handing out any number in it
    FLEETDL_TRY(dir_->write_atomic("seq", std::to_string(next_ + kBlock) + "\n", 0600));
    mark_ = next_ + kBlock;
  }
  return next_++;
}

// ================================================================ backoff

Backoff::Backoff(std::uint64_t seed) : state_(seed ^ 0xBAC0FFULL) {}

std::chrono::milliseconds Backoff::next() {
  const double u = static_cast<double>(splitmix(state_) >> 11) * 0x1.0p-53;  // [0, 1)
  const double ms = base_ms_ * (1.0 - kJitter + 2.0 * kJitter * u);
  base_ms_ = std::min(base_ms_ * 2.0, kMaxMs);
  return std::chrono::milliseconds(static_cast<long long>(std::llround(ms)));
}

bool drops_in_round(std::uint64_t seed, std::uint32_t round, double p) {
  if (!(p > 0.0)) return false;
  Rng r = Rng(seed).fork(0xD0D0).fork(round);
  return r.uniform() < p;
}

// ================================================================ worker

std::uint64_t training_memory(const nn::Model<float>& m, long batch, bool momentum, bool scaffold) {
  const sim::ModelCost c = sim::model_cost(m.cost_report(), sizeof(float));
  const double b = sim::training_memory_bytes(c, static_cast<Index>(std::max(1L, batch)), momentum ? 1 : 0,
                                              scaffold ? 3 : 1);
  return static_cast<std::uint64_t>(std::ceil(b));
}

std::uint64_t inference_memory(const nn::Model<float>& m) {
  return static_cast<std::uint64_t>(std::ceil(partition::inference_demand<float>("", m).memory_bytes));
}

struct Worker::Cache {
  // the training set as loaded (first train_limit images)
  std::string data_key;
  std::unique_ptr<data::Dataset<float>> train;
  // the partition of it
  std::string part_key;
  data::ClientPartition parts;
  // the local shard
  std::string shard_key;
  std::unique_ptr<data::Dataset<float>> shard;
  // client state kept across rounds
  fl::ScaffoldClientState<float> scaffold;
  fl::ErrorFeedback<float> feedback{0};
  std::unique_ptr<ThreadPool> pool;
};

/// An accepted int8 micro blob. The Worker is charged blob + arena bytes for
/// it: the blob stays in memory for the interpreter (constants are read in
/// place) and the arena holds every activation and the interpreter's
/// persistent tables (micro/planner.hpp). Both are kept 16-byte aligned, as
/// micro::verify and Interpreter::init require, even where operator new
/// aligns to 8 (32-bit ARM).
struct Worker::MicroModule {
  struct alignas(micro::kAlignment) Block {
    std::uint8_t b[micro::kAlignment];
  };
  std::vector<Block> blob;   ///< the blob's bytes, then padding to 16
  std::size_t blob_bytes = 0;
  std::vector<Block> arena;  ///< plan_arena_bytes(blob).plan.total bytes
  std::uint64_t arena_bytes = 0;
  micro::Interpreter it;     ///< initialised over blob and arena
  Shape input, output;       ///< the float sample shapes (CHW) of input 0 and output 0
  micro::TensorInfo in, out;

  const std::uint8_t* blob_data() const { return reinterpret_cast<const std::uint8_t*>(blob.data()); }
  std::uint8_t* arena_data() { return reinterpret_cast<std::uint8_t*>(arena.data()); }
};

std::uint64_t Worker::micro_memory_bytes() const {
  return micro_ ? static_cast<std::uint64_t>(micro_->blob_bytes) + micro_->arena_bytes : 0;
}

Worker::Worker(std::string data_dir, std::uint64_t budget_bytes, int threads, double slowdown)
    : data_dir_(std::move(data_dir)), budget_(budget_bytes), threads_(threads), slowdown_(slowdown),
      cache_(std::make_unique<Cache>()) {
  if (threads_ > 1) cache_->pool = std::make_unique<ThreadPool>(threads_);
}
Worker::~Worker() = default;

wire::AssignResult Worker::assign(std::uint64_t module_id, wire::ModuleKind kind, std::span<const std::uint8_t> bytes) {
  wire::AssignResult r;
  r.module_id = module_id;
  r.budget_bytes = budget_;
  if (kind == wire::ModuleKind::micro_blob) return assign_micro(std::move(r), bytes);
  if (kind != wire::ModuleKind::fdl_model) {
    r.reason_code = static_cast<std::uint16_t>(RefusalCode::unsupported_kind);
    r.reason_text = "module kind " + std::to_string(static_cast<unsigned>(kind)) + " is not served by the POSIX agent";
    return r;
  }
  auto f = io::decode_model<float>(bytes.data(), bytes.size(), "module " + std::to_string(module_id));
  if (!f) {
    r.reason_code = static_cast<std::uint16_t>(RefusalCode::invalid_module);
    r.reason_text = f.error().message.substr(0, 200);
    return r;
  }
  const std::uint64_t need = inference_memory(f->model);
  r.peak_memory_bytes = need;
  if (need > budget_) {
    r.reason_code = static_cast<std::uint16_t>(RefusalCode::over_budget);
    r.reason_text = "memory to hold and run the module " + std::to_string(need) + " bytes exceeds the budget of " +
                    std::to_string(budget_) + " bytes";
    return r;
  }
  const bool same_dim = model_ && model_->param_count() == f->model.param_count();
  model_ = std::make_unique<nn::Model<float>>(std::move(f->model));
  micro_.reset();  // one module at a time
  module_id_ = module_id;
  if (!same_dim) {  // client state of another model means nothing now
    cache_->scaffold.reset();
    cache_->feedback = fl::ErrorFeedback<float>(0);
  }
  r.accepted = true;
  return r;
}

wire::AssignResult Worker::assign_micro(wire::AssignResult r, std::span<const std::uint8_t> bytes) {
  const std::string what = "micro blob " + std::to_string(r.module_id);
  const auto refuse = [&r](RefusalCode code, std::string text) {
    r.reason_code = static_cast<std::uint16_t>(code);
    r.reason_text = text.substr(0, 200);
    return r;
  };
  auto m = std::make_unique<MicroModule>();
  m->blob.resize((bytes.size() + micro::kAlignment - 1) / micro::kAlignment);
  if (!bytes.empty()) std::memcpy(m->blob.data(), bytes.data(), bytes.size());
  m->blob_bytes = bytes.size();
  // verify() runs inside plan_arena_bytes, as `fleetdl eval` and
  // `fleetdl export-header` check a blob
  const micro::PlanResult plan = micro::plan_arena_bytes(m->blob_data(), m->blob_bytes);
  if (!plan)
    return refuse(RefusalCode::invalid_module, what + ": " + plan.status.message + " (" +
                                                   micro::describe(plan.status.code) + ", index " +
                                                   std::to_string(plan.status.index) + ")");
  // Memory rule of a micro blob: need = blob bytes + arena bytes, the arena
  // being micro::plan_arena_bytes(blob).plan.total (activations + the
  // interpreter's persistent tail). Nothing else grows with the blob.
  const std::uint64_t need = static_cast<std::uint64_t>(m->blob_bytes) + plan.plan.total;
  r.peak_memory_bytes = need;
  if (need > budget_)
    return refuse(RefusalCode::over_budget, what + ": " + std::to_string(m->blob_bytes) + " bytes + arena " +
                                                std::to_string(plan.plan.total) + " bytes = " + std::to_string(need) +
                                                " bytes exceeds the budget of " + std::to_string(budget_) + " bytes");
  const micro::ModelView v(m->blob_data(), m->blob_bytes);
  if (v.input_count() != 1 || v.output_count() != 1)
    return refuse(RefusalCode::unsupported_kind, what + " has " + std::to_string(v.input_count()) + " inputs and " +
                                                     std::to_string(v.output_count()) +
                                                     " outputs; the agent serves one of each");
  const micro::TensorDesc in = v.tensor(v.input_id(0)), out = v.tensor(v.output_id(0));
  if (in.shape.n != 1 || out.shape.n != 1)
    return refuse(RefusalCode::unsupported_kind, what + ": the input and output batch dimension must be 1");
  m->arena_bytes = plan.plan.total;
  m->arena.resize(static_cast<std::size_t>((plan.plan.total + micro::kAlignment - 1) / micro::kAlignment));
  const micro::InitResult init = micro::Interpreter::init(m->blob_data(), m->blob_bytes, m->arena_data(),
                                                          static_cast<std::size_t>(m->arena_bytes));
  if (!init) {
    char msg[160];
    init.format(msg, sizeof msg);
    return refuse(RefusalCode::invalid_module, what + ": interpreter init: " + msg);
  }
  m->it = init.interpreter;
  m->in = m->it.input_info(0);
  m->out = m->it.output_info(0);
  // the float sample layouts, as `fleetdl eval` reads a blob's NHWC tensors
  m->input = Shape{in.shape.c, in.shape.h, in.shape.w};
  m->output = Shape{out.shape.c, out.shape.h, out.shape.w};
  micro_ = std::move(m);
  model_.reset();  // one module at a time
  module_id_ = r.module_id;
  r.accepted = true;
  return r;
}

Result<data::Dataset<float>> Worker::shard(const wire::RoundConfig& c) {
  Cache& k = *cache_;
  const std::string data_key = data_dir_ + "\n" + std::to_string(c.train_limit);
  if (!k.train || k.data_key != data_key) {
    k.train.reset();
    k.part_key.clear();
    k.shard.reset();
    auto t = data::load_fashion_mnist<float>(data_dir_, true, c.train_limit == 0 ? Index{-1} : Index{c.train_limit});
    if (!t) return std::move(t).error();
    k.train = std::make_unique<data::Dataset<float>>(std::move(*t));
    k.data_key = data_key;
  }
  const std::string part_key =
      c.partition_spec + "\n" + std::to_string(c.shard_count) + "\n" + std::to_string(c.partition_seed);
  if (k.part_key != part_key) {
    k.shard.reset();
    // The spec goes through sim::parse_config inside a minimal run config, so
    // the agent reads it with exactly the simulator's rules and defaults.
    auto spec = json::parse(c.partition_spec);
    if (!spec) return make_error(Errc::invalid_argument, "train_round partition_spec: " + spec.error().message);
    if (!spec->is_object())
      return make_error(Errc::invalid_argument, "train_round partition_spec: must be a JSON object");
    using V = json::Value;
    V doc = V::make_object({
        {"rounds", V::make_int(1)},
        {"clients", V::make_int(static_cast<std::int64_t>(c.shard_count))},
        {"model", V::make_string(std::string(nn::model_names[0]))},
        {"partition", std::move(*spec)},
        {"client", V::make_object({{"lr", V::make_number(0.1)}, {"epochs", V::make_int(1)}, {"batch", V::make_int(1)}})},
        {"strategy", V::make_object({{"name", V::make_string("fedavg")}})},
    });
    auto cfg = sim::parse_config(doc);
    if (!cfg) return make_error(Errc::invalid_argument, "train_round partition_spec: " + cfg.error().message);
    cfg->seed = c.partition_seed;
    auto parts = sim::make_partition(*cfg, k.train->labels, k.train->classes);
    if (!parts) return std::move(parts).error();
    k.parts = std::move(*parts);
    k.part_key = part_key;
  }
  if (c.shard_index >= k.parts.size())
    return make_error(Errc::invalid_argument, "train_round: shard " + std::to_string(c.shard_index) + " of " +
                                                  std::to_string(k.parts.size()));
  const std::string shard_key = std::to_string(c.shard_index) + "\n" + std::to_string(c.example_limit);
  if (!k.shard || k.shard_key != shard_key) {
    data::Dataset<float> s = k.train->subset(k.parts[c.shard_index]);
    if (c.example_limit > 0 && static_cast<Index>(c.example_limit) < s.size()) s = s.head(c.example_limit);
    k.shard = std::make_unique<data::Dataset<float>>(std::move(s));
    k.shard_key = shard_key;
  }
  return *k.shard;
}

namespace {
void throttle(double slowdown, Clock::duration took) {
  if (slowdown > 1.0) std::this_thread::sleep_for(std::chrono::duration_cast<Clock::duration>(took * (slowdown - 1.0)));
}
}  // namespace

Result<wire::Update> Worker::train(const wire::TrainRound& t, std::uint64_t bytes_received) {
  const wire::RoundConfig& c = t.config;
  if (micro_)
    return make_error(Errc::unsupported, "train_round: module " + std::to_string(module_id_) +
                                             " is an int8 micro blob, which serves inference only and cannot be trained");
  if (!model_) return make_error(Errc::invalid_argument, "train_round: no module assigned");
  const Index d = model_->param_count();
  if (static_cast<Index>(t.parameters.size()) != d)
    return make_error(Errc::shape_mismatch, "train_round: " + std::to_string(t.parameters.size()) +
                                                " parameters, the assigned module has " + std::to_string(d));
  auto local_r = shard(c);
  if (!local_r) return std::move(local_r).error();
  const data::Dataset<float>& local = *local_r;
  if (local.empty()) return make_error(Errc::invalid_argument, "train_round: shard " + std::to_string(c.shard_index) + " is empty");
  const long batch = static_cast<long>(std::min<Index>(c.batch_size, local.size()));
  const std::uint64_t need = training_memory(*model_, batch, c.momentum > 0, c.scaffold());
  if (need > budget_)
    return make_error(Errc::limit_exceeded, "training memory " + std::to_string(need) + " bytes exceeds the budget of " +
                                                std::to_string(budget_) + " bytes");

  nn::Model<float> m = *model_;
  const ConstVectorMap<float> global(t.parameters.data(), d);
  m.params() = global;
  fl::ClientInstruction ins;
  ins.client = static_cast<Index>(c.shard_index);
  ins.config.lr = c.learning_rate;
  ins.config.momentum = c.momentum;
  ins.config.weight_decay = c.weight_decay;
  ins.config.epochs = static_cast<int>(c.local_epochs);
  ins.config.batch = c.batch_size;
  ins.config.prox_mu = c.proximal_mu;
  ins.config.scaffold = c.scaffold();
  fl::LocalTrainOptions<float> lo;
  lo.seed = c.seed;
  lo.loss_before = c.loss_before();
  fl::ScaffoldClientState<float> sc = cache_->scaffold;  // committed only on success
  if (c.scaffold()) {
    lo.scaffold = &sc;
    lo.server_c = t.server_control;
  }
  ThreadPool* pool = cache_->pool.get();
  const auto t0 = Clock::now();
  auto trained = fl::train_local(m, local, ins, lo, pool);
  if (!trained) return std::move(trained).error();
  const auto ev = nn::evaluate(m, local.images, local.labels, 1000, pool);
  const auto took = Clock::now() - t0;
  throttle(slowdown_, took);
  fl::ClientUpdate<float>& u = trained->update;

  // local DP (clip to dp_clip, Gaussian noise), then the codec on the delta
  if (c.dp_clip > 0.0f) {
    Rng dr = Rng(c.seed).fork(0xD9);
    auto dp = fl::privatize_update_local(u.params, global, static_cast<double>(c.dp_clip),
                                         static_cast<double>(c.dp_noise_multiplier) * static_cast<double>(c.dp_clip), dr);
    if (!dp) return std::move(dp).error();
  }
  Vector<float> delta = u.params - global;
  wire::Update up;
  up.codec = c.codec;
  fl::ErrorFeedback<float> fb = cache_->feedback;
  Rng qr = Rng(c.seed).fork(0xC0DEC);
  Result<std::vector<std::uint8_t>> bytes = std::vector<std::uint8_t>{};
  switch (c.codec) {
    case wire::CodecId::raw_f32: {
      std::vector<std::uint8_t> raw(static_cast<std::size_t>(d) * 4);
      for (Index i = 0; i < d; ++i) {
        std::uint32_t b;
        std::memcpy(&b, &delta[i], 4);
        for (int j = 0; j < 4; ++j) raw[static_cast<std::size_t>(4 * i + j)] = static_cast<std::uint8_t>(b >> (8 * j));
      }
      bytes = std::move(raw);
      break;
    }
    case wire::CodecId::fp16: bytes = fl::encode_fp16(delta); break;
    case wire::CodecId::quant2: bytes = fl::encode_quantized(delta, 2, qr); break;
    case wire::CodecId::quant4: bytes = fl::encode_quantized(delta, 4, qr); break;
    case wire::CodecId::quant8: bytes = fl::encode_quantized(delta, 8, qr); break;
    case wire::CodecId::topk_pairs:
    case wire::CodecId::topk_bitmap: {
      // k = max(1, round(topk_fraction x d)), as the simulator; with error feedback
      const Index k =
          std::max<Index>(1, static_cast<Index>(std::llround(static_cast<double>(c.topk_fraction) * static_cast<double>(d))));
      if (fb.residual().size() != d) fb = fl::ErrorFeedback<float>(d);
      bytes = fl::encode_topk(delta, k, &fb);
      break;
    }
  }
  if (!bytes) return std::move(bytes).error();
  up.delta = std::move(*bytes);
  if (c.codec == wire::CodecId::topk_pairs || c.codec == wire::CodecId::topk_bitmap) {
    // the codec picks the smaller layout; state the one it picked
    auto h = fl::peek_codec_header(up.delta);
    if (h) up.codec = static_cast<wire::CodecId>(h->kind);
  }
  up.example_count = static_cast<std::uint32_t>(u.num_examples);
  up.local_steps = static_cast<std::uint32_t>(u.local_steps);
  up.loss_before = c.loss_before() ? u.loss_before : 0.0;
  up.loss = trained->last_loss;
  up.accuracy = std::clamp(ev.accuracy, 0.0, 1.0);
  up.compute_ms = std::chrono::duration<double, std::milli>(took).count() * slowdown_;
  up.peak_memory_bytes = need;
  up.bytes_received = bytes_received;
  if (c.scaffold()) up.control_delta.assign(u.control_delta.data(), u.control_delta.data() + u.control_delta.size());
  if (!std::isfinite(up.loss) || !std::isfinite(up.loss_before))
    return make_error(Errc::invalid_argument, "local training diverged (loss is not finite)");
  cache_->scaffold = std::move(sc);
  cache_->feedback = std::move(fb);
  return up;
}

Result<wire::InferResponse> Worker::infer(const wire::InferRequest& r) {
  if (micro_) return infer_micro(r);
  if (!model_) return make_error(Errc::invalid_argument, "infer_request: no module assigned");
  const Index in = model_->input_shape().size();
  const std::uint64_t total = r.values.size();
  const std::uint64_t n = r.dims.empty() ? 0 : r.dims[0];
  if (n == 0 || total != n * static_cast<std::uint64_t>(in))
    return make_error(Errc::shape_mismatch, "infer_request: " + std::to_string(total) + " values in " +
                                                std::to_string(n) + " samples, the module takes " + std::to_string(in) +
                                                " per sample");
  const auto t0 = Clock::now();
  Matrix<float> x(in, static_cast<Index>(n));
  std::memcpy(x.data(), r.values.data(), r.values.size() * sizeof(float));  // sample i = column i
  nn::ExecContext<float> ctx;
  ctx.pool = cache_->pool.get();
  const Matrix<float>& y = model_->forward(x, ctx);
  wire::InferResponse out;
  out.request_id = r.request_id;
  out.dims = {static_cast<std::uint32_t>(n), static_cast<std::uint32_t>(y.rows())};
  out.values.assign(y.data(), y.data() + y.size());
  const auto took = Clock::now() - t0;
  throttle(slowdown_, took);
  out.compute_ms = std::chrono::duration<double, std::milli>(took).count() * slowdown_;
  return out;
}

Result<wire::InferResponse> Worker::infer_micro(const wire::InferRequest& r) {
  MicroModule& m = *micro_;
  const Index in = m.input.size(), outs = m.output.size();
  const std::uint64_t total = r.values.size();
  const std::uint64_t n = r.dims.empty() ? 0 : r.dims[0];
  if (n == 0 || total != n * static_cast<std::uint64_t>(in))
    return make_error(Errc::shape_mismatch, "infer_request: " + std::to_string(total) + " values in " +
                                                std::to_string(n) + " samples, the micro blob takes " +
                                                std::to_string(in) + " per sample");
  const auto t0 = Clock::now();
  wire::InferResponse out;
  out.request_id = r.request_id;
  out.dims = {static_cast<std::uint32_t>(n), static_cast<std::uint32_t>(outs)};
  out.values.resize(static_cast<std::size_t>(n) * static_cast<std::size_t>(outs));
  // One sample at a time through the blob, as compress::QuantizedRunner runs
  // `fleetdl eval`: the CHW floats are quantized with the input's scale and
  // zero point into the NHWC int8 input (micro::quantize, TFLite's
  // AffineQuantize), and the NHWC int8 output is dequantized back to CHW
  // (micro::dequantize). The input is written before every invoke(): the
  // planner may reuse its bytes for later activations.
  const Shape& si = m.input;
  const Shape& so = m.output;
  for (std::uint64_t j = 0; j < n; ++j) {
    const float* chw = r.values.data() + j * static_cast<std::uint64_t>(in);
    std::int8_t* q = m.it.input(0);
    for (Index c = 0; c < si.c; ++c)
      for (Index h = 0; h < si.h; ++h)
        for (Index w = 0; w < si.w; ++w)
          q[(h * si.w + w) * si.c + c] = micro::quantize(chw[(c * si.h + h) * si.w + w], m.in.scale, m.in.zero_point);
    const micro::InvokeResult done = m.it.invoke();
    if (!done)
      return make_error(Errc::corrupt, "infer_request: micro blob " + std::to_string(module_id_) + ", sample " +
                                           std::to_string(j) + ": op " + std::to_string(done.index) + ": " +
                                           done.message);
    const std::int8_t* y = m.it.output(0);
    float* o = out.values.data() + j * static_cast<std::uint64_t>(outs);
    for (Index c = 0; c < so.c; ++c)
      for (Index h = 0; h < so.h; ++h)
        for (Index w = 0; w < so.w; ++w)
          o[(c * so.h + h) * so.w + w] = micro::dequantize(y[(h * so.w + w) * so.c + c], m.out.scale, m.out.zero_point);
  }
  const auto took = Clock::now() - t0;
  throttle(slowdown_, took);
  out.compute_ms = std::chrono::duration<double, std::milli>(took).count() * slowdown_;
  return out;
}

// ================================================================ agent

const char* phase_name(Phase p) {
  switch (p) {
    case Phase::idle: return "idle";
    case Phase::discovering: return "discovering";
    case Phase::enrolling: return "enrolling";
    case Phase::connecting: return "connecting";
    case Phase::hello_sent: return "hello_sent";
    case Phase::serving: return "serving";
    case Phase::backing_off: return "backing_off";
    case Phase::stopped: return "stopped";
  }
  return "unknown";
}

namespace {
using tcp = asio::ip::tcp;
using SslStream = asio::ssl::stream<tcp::socket>;

struct Conn {
  Conn(asio::io_context& io, asio::ssl::context c, const wire::Limits& l, bool is_enroll)
      : ctx(std::move(c)), stream(io, ctx), rx(l.max_frame_payload), decoder(rx, l), assembler(l),
        pace(io), closer(io) {
    enroll = is_enroll;
  }
  asio::ssl::context ctx;
  SslStream stream;
  std::vector<std::uint8_t> rx;
  std::array<std::uint8_t, 64 * 1024> in{};
  wire::FrameDecoder decoder;
  wire::ChunkAssembler assembler;
  std::deque<std::vector<std::uint8_t>> out;
  std::size_t out_off = 0;
  bool writing = false;
  bool open = false;      // handshake done, not closed
  bool closed = false;
  bool closing = false;   // error queued, close after the write
  bool enroll = false;
  bool acked = false;     // hello_ack received
  std::uint64_t run = 0;
  std::uint64_t bytes_in = 0;       // since the last update
  Clock::time_point last_rx = Clock::now();
  Clock::time_point pace_next = Clock::now();
  asio::steady_timer pace;
  asio::steady_timer closer;
  wire::CloseReason reason = wire::CloseReason::normal;
  std::string reason_text;
  bool bye = false;
};
}  // namespace

struct Agent::Impl {
  Agent* self = nullptr;
  asio::io_context& io;
  AgentOptions opt;
  Capabilities caps;
  LogFn log;
  wire::Limits limits;
  StateDir state;
  SeqCounter seq;
  Backoff backoff;
  Worker worker;
  wire::ReplayGuard guard;
  asio::thread_pool jobs{1};
  asio::steady_timer retry, heartbeat;
  std::shared_ptr<Conn> conn;
  std::optional<StateDir::Enrollment> enrollment;
  // Discovery (no --connect): announce until an invite says where to connect;
  // forget it when the connection ends, so the next one starts with an invite.
  const bool discovery_mode = opt.discovers();  // opt is declared (so initialized) first
  bool have_endpoint = false;
  std::unique_ptr<core::Announcer> announcer;
  std::uint32_t heartbeat_ms = 1000;
  bool job_running = false;
  std::uint32_t infer_requests = 0;  ///< inference requests received (the dropout draws)
  bool stopping = false;

  Impl(asio::io_context& i, AgentOptions o, Capabilities c, LogFn l, StateDir s, SeqCounter q)
      : io(i), opt(std::move(o)), caps(c), log(std::move(l)), state(std::move(s)), seq(q), backoff(opt.seed),
        worker(opt.data_dir, opt.budget_bytes, opt.threads, opt.slowdown), retry(i), heartbeat(i) {}

  void say(const std::string& m) {
    if (log) log(m);
  }
  void set_phase(Phase p) { self->phase_ = p; }

  // ------------------------------------------------------------ cycle
  void begin() {
    if (stopping) return;
    if (!state.enrolled()) {
      if (!opt.token) {
        fatal("not enrolled and no --token given");
        return;
      }
      if (discovery_mode && !have_endpoint) return discover();
      connect(true);
    } else {
      if (!enrollment) {
        auto e = state.load_enrollment();
        if (!e) {
          fatal(e.error().message);
          return;
        }
        enrollment = std::move(*e);
        self->device_id_ = enrollment->device_id;
      }
      if (discovery_mode && !have_endpoint) return discover();
      connect(false);
    }
  }

  // ------------------------------------------------------------ discovery
  static Result<wire::Fingerprint> fingerprint_of(const std::string& pem) {
    auto hex = core::fingerprint_sha256(pem);
    if (!hex) return std::move(hex).error();
    return core::fingerprint_bytes(*hex);
  }

  /// Announces (a fresh Announcer each time: whether the agent is enrolled,
  /// and so what it announces, changes after enrollment) until an invite
  /// arrives; on_invite then connects.
  void discover() {
    if (announcer) announcer->stop();
    core::AnnouncerOptions ao;
    ao.name = opt.name;
    ao.caps.cores = caps.cores;
    ao.caps.ram_bytes = caps.ram_bytes;
    ao.caps.memory_budget_bytes = opt.budget_bytes;
    if (enrollment) {
      auto cert = fingerprint_of(enrollment->cert_pem);
      auto ca = fingerprint_of(enrollment->ca_pem);
      if (!cert) return fatal("discovery: the stored certificate: " + cert.error().message);
      if (!ca) return fatal("discovery: the stored CA certificate: " + ca.error().message);
      ao.enrolled = true;
      ao.cert_fingerprint = *cert;
      ao.fleet_ca_fingerprint = *ca;  // invites from another fleet are ignored
    }
    ao.targets = opt.announce_to.empty() ? core::default_announce_targets(opt.discovery_port) : opt.announce_to;
    ao.port = opt.discovery_port;
    ao.interval = std::chrono::milliseconds(opt.announce_interval_ms);
    ao.jitter_seed = opt.seed;
    announcer = std::make_unique<core::Announcer>(io, ao, [this](const core::OrchestratorEndpoint& e) { on_invite(e); });
    auto ok = announcer->start();
    if (!ok) return fatal("discovery: " + ok.error().message);
    set_phase(Phase::discovering);
    std::string to;
    for (const auto& t : ao.targets) to += (to.empty() ? "" : ", ") + t.address().to_string() + ":" + std::to_string(t.port());
    say(std::string("announcing (") + (ao.enrolled ? "enrolled" : "not enrolled") + ") to " + to);
  }

  void on_invite(const core::OrchestratorEndpoint& e) {
    if (stopping || have_endpoint) return;
    announcer->stop();  // allowed inside its callback; the object is replaced by the next discover()
    opt.host = e.address.to_string();
    opt.enroll_port = e.enroll_port;
    opt.fleet_port = e.fleet_port;
    have_endpoint = true;
    say("invited by " + e.invited_by.address().to_string() + ":" + std::to_string(e.invited_by.port()) +
        ": orchestrator " + opt.host + ", enrollment port " + std::to_string(opt.enroll_port) + ", fleet port " +
        std::to_string(opt.fleet_port));
    asio::post(io, [this] { begin(); });
  }

  /// After a connection ends: in discovery mode the next one waits for a new
  /// invite (the orchestrator may have moved or restarted on other ports).
  void forget_endpoint() {
    if (discovery_mode) have_endpoint = false;
  }

  void fatal(const std::string& m) {
    say("fatal: " + m);
    self->last_close_text_ = m;
    fatal_error = m;
    shutdown();
  }
  std::string fatal_error;

  void again_after_backoff() {
    if (stopping) return;
    forget_endpoint();
    const auto d = backoff.next();
    set_phase(Phase::backing_off);
    say("reconnecting in " + std::to_string(d.count()) + " ms");
    retry.expires_after(d);
    retry.async_wait([this](std::error_code ec) {
      if (!ec) begin();
    });
  }

  void connect(bool enroll) {
    Result<asio::ssl::context> ctx = enroll ? core::make_enroll_client_context(*opt.token)
                                            : core::make_fleet_client_context(enrollment->ca_pem, enrollment->cert_pem,
                                                                              enrollment->key_pem, opt.host);
    if (!ctx) {
      fatal(ctx.error().message);
      return;
    }
    auto c = std::make_shared<Conn>(io, std::move(*ctx), limits, enroll);
    conn = c;
    ++self->connections_;
    set_phase(enroll ? Phase::enrolling : Phase::connecting);
    auto resolver = std::make_shared<tcp::resolver>(io);
    const std::uint16_t port = enroll ? opt.enroll_port : opt.fleet_port;
    resolver->async_resolve(opt.host, std::to_string(port), [this, c, resolver](std::error_code ec, tcp::resolver::results_type rs) {
      if (c->closed) return;
      if (ec) return lost(c, wire::CloseReason::normal, "resolve " + opt.host + ": " + ec.message());
      asio::async_connect(c->stream.lowest_layer(), rs, [this, c](std::error_code ec2, const tcp::endpoint&) {
        if (c->closed) return;
        if (ec2) return lost(c, wire::CloseReason::normal, "connect: " + ec2.message());
        std::error_code nd;
        c->stream.lowest_layer().set_option(tcp::no_delay(true), nd);
        c->stream.async_handshake(asio::ssl::stream_base::client, [this, c](std::error_code ec3) {
          if (c->closed) return;
          if (ec3) return lost(c, wire::CloseReason::normal, core::handshake_error(c->stream, ec3, opt.host).message);
          c->open = true;
          c->last_rx = Clock::now();
          if (c->enroll) send_enroll(c);
          else send_hello(c);
          read(c);
        });
      });
    });
  }

  void send_enroll(const std::shared_ptr<Conn>& c) {
    auto kc = core::make_key_and_csr(opt.name);
    if (!kc) return fatal(kc.error().message);
    pending_key = kc->key_pem;
    wire::Enroll e{opt.token->identity, kc->csr_pem};
    send(c, e, 0);
  }
  std::string pending_key;

  void send_hello(const std::shared_ptr<Conn>& c) {
    set_phase(Phase::hello_sent);
    send(c, make_hello(opt, caps), 0);
  }

  // ------------------------------------------------------------ sending
  template <class M>
  void send(const std::shared_ptr<Conn>& c, const M& m, std::uint32_t round) {
    if (c->closed) return;
    auto s = seq.next();
    if (!s) return close(c, wire::CloseReason::internal_error, "sequence counter: " + s.error().message, false);
    const std::uint64_t dev = c->enroll ? 0 : self->device_id_;
    auto bytes = wire::encode_message(m, wire::Binding{dev, c->run, round, *s}, limits);
    if (!bytes) return close(c, wire::CloseReason::internal_error, bytes.error().message, false);
    // the frame sizes of a round, for comparing with the orchestrator's record
    if ((*bytes)[5] == static_cast<std::uint8_t>(wire::MessageType::update))
      say("round " + std::to_string(round) + ": update sent, " + std::to_string(bytes->size()) + " bytes");
    c->out.push_back(std::move(*bytes));
    pump(c);
  }

  void pump(const std::shared_ptr<Conn>& c) {
    if (c->writing || c->closed) return;
    if (c->out.empty()) {
      if (c->closing) finish_close(c);
      return;
    }
    const auto& front = c->out.front();
    std::size_t n = front.size() - c->out_off;
    if (opt.bandwidth > 0) {
      const auto now = Clock::now();
      if (c->pace_next > now) {
        c->writing = true;
        c->pace.expires_at(c->pace_next);
        c->pace.async_wait([this, c](std::error_code ec) {
          c->writing = false;
          if (!ec) pump_now(c);
        });
        return;
      }
    }
    (void)n;
    pump_now(c);
  }

  void pump_now(const std::shared_ptr<Conn>& c) {
    if (c->writing || c->closed || c->out.empty()) return;
    const auto& front = c->out.front();
    std::size_t n = front.size() - c->out_off;
    if (opt.bandwidth > 0) {
      // pieces of about 1/20 s of the cap (512 B .. 16 KiB), each paced
      const auto piece = static_cast<std::size_t>(std::clamp(opt.bandwidth / 20.0, 512.0, 16384.0));
      n = std::min(n, piece);
      const auto now = Clock::now();
      c->pace_next = std::max(c->pace_next, now) +
                     std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(static_cast<double>(n) / opt.bandwidth));
    }
    c->writing = true;
    asio::async_write(c->stream, asio::buffer(front.data() + c->out_off, n), [this, c](std::error_code ec, std::size_t k) {
      c->writing = false;
      if (c->closed) return;
      if (ec) return lost(c, wire::CloseReason::normal, "write: " + ec.message());
      c->out_off += k;
      if (c->out_off == c->out.front().size()) {
        c->out.pop_front();
        c->out_off = 0;
      }
      pump(c);
    });
  }

  // ------------------------------------------------------------ receiving
  void read(const std::shared_ptr<Conn>& c) {
    c->stream.async_read_some(asio::buffer(c->in), [this, c](std::error_code ec, std::size_t n) {
      if (c->closed) return;
      if (ec) {
        const auto f = c->decoder.finish();
        if (!f.ok() && !c->closing) return lost(c, f.reason, std::string("peer closed mid-frame: ") + f.message());
        return lost(c, wire::CloseReason::normal, c->bye ? "closed after bye" : "peer closed: " + ec.message());
      }
      c->last_rx = Clock::now();
      c->bytes_in += n;
      std::span<const std::uint8_t> in(c->in.data(), n);
      while (!in.empty() && !c->closed && !c->closing) {
        const wire::FeedResult r = c->decoder.feed(in);
        in = in.subspan(r.consumed);
        if (r.status == wire::FeedStatus::closed) return close(c, r.reason, r.message, true);
        if (r.status == wire::FeedStatus::frame) on_frame(c, r.frame);
      }
      if (!c->closed) read(c);
    });
  }

  void on_frame(const std::shared_ptr<Conn>& c, const wire::FrameView& f) {
    auto msg = wire::decode_message(f, limits);
    if (!msg) return close(c, wire::CloseReason::malformed_payload, msg.error().message, true);
    if (const auto v = guard.accept(f.header); !v) return close(c, v.reason, v.message(), true);
    if (f.header.binding.run != 0) c->run = f.header.binding.run;
    const std::uint32_t round = f.header.binding.round;
    const auto type = f.header.type;
    if (type == wire::MessageType::train_round)
      say("round " + std::to_string(round) + ": train_round received, " +
          std::to_string(wire::kFrameOverhead + f.payload.size()) + " bytes");
    if (c->enroll) {
      if (auto* ack = std::get_if<wire::EnrollAck>(&*msg)) return on_enroll_ack(c, *ack);
      if (auto* e = std::get_if<wire::ErrorNotice>(&*msg))
        return lost(c, e->reason(), "orchestrator refused enrollment: " + e->message);
      return close(c, wire::CloseReason::unexpected_message,
                   std::string(wire::message_type_name(type)) + " during enrollment", true);
    }
    if (!c->acked && type != wire::MessageType::hello_ack && type != wire::MessageType::error &&
        type != wire::MessageType::bye && type != wire::MessageType::heartbeat)
      return close(c, wire::CloseReason::unexpected_message,
                   std::string(wire::message_type_name(type)) + " before hello_ack", true);
    std::visit([&](auto& m) { handle(c, m, round); }, *msg);
  }

  void on_enroll_ack(const std::shared_ptr<Conn>& c, const wire::EnrollAck& a) {
    StateDir::Enrollment e{a.device_id, pending_key, a.certificate_pem, a.ca_certificate_pem};
    auto cn = core::cert_common_name(a.certificate_pem);
    if (!cn || *cn != opt.name)
      return close(c, wire::CloseReason::unexpected_message, "enroll_ack: the certificate does not name '" + opt.name + "'", true);
    if (auto s = state.store_enrollment(e); !s) return fatal(s.error().message);
    enrollment = std::move(e);
    self->device_id_ = a.device_id;
    say("enrolled as device " + std::to_string(a.device_id));
    c->bye = true;
    finish_close(c);
    backoff.reset();
    conn.reset();
    asio::post(io, [this] { begin(); });
  }

  // -- fleet messages
  void handle(const std::shared_ptr<Conn>& c, const wire::HelloAck& a, std::uint32_t) {
    if (c->acked) return close(c, wire::CloseReason::unexpected_message, "a second hello_ack", true);
    c->acked = true;
    if (a.device_id != self->device_id_)
      say("hello_ack names device " + std::to_string(a.device_id) + ", enrolled as " + std::to_string(self->device_id_));
    self->device_id_ = a.device_id;
    heartbeat_ms = a.heartbeat_interval_ms;
    set_phase(Phase::serving);
    backoff.reset();
    say("connected as device " + std::to_string(a.device_id) + ", heartbeat " + std::to_string(heartbeat_ms) + " ms");
    tick(c);
  }

  void tick(const std::shared_ptr<Conn>& c) {
    heartbeat.expires_after(std::chrono::milliseconds(heartbeat_ms));
    heartbeat.async_wait([this, c](std::error_code ec) {
      if (ec || c->closed || c->closing) return;
      const auto silent = Clock::now() - c->last_rx;
      if (silent > std::chrono::milliseconds(3ULL * heartbeat_ms))
        return close(c, wire::CloseReason::timeout,
                     "orchestrator silent for " +
                         std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(silent).count()) + " ms",
                     true);
      send(c, wire::Heartbeat{now_ms()}, 0);
      tick(c);
    });
  }

  void handle(const std::shared_ptr<Conn>& c, const wire::AssignChunk& m, std::uint32_t round) {
    if (const auto v = c->assembler.add(m.view()); !v) return close(c, v.reason, v.message(), true);
    if (!c->assembler.done()) return;
    auto bytes = std::make_shared<std::vector<std::uint8_t>>(c->assembler.take());
    const auto id = m.module_id;
    const auto kind = m.kind;
    run_job(c, [this, bytes, id, kind] { return wire::Message(worker.assign(id, kind, *bytes)); }, round);
  }

  void handle(const std::shared_ptr<Conn>& c, const wire::TrainRound& t, std::uint32_t round) {
    // (the worker is idle unless job_running, which run_job refuses anyway)
    if (!job_running && !worker.has_model())
      return close(c, wire::CloseReason::unexpected_message, "train_round before a module was accepted", true);
    if (drops_in_round(opt.seed, round, opt.dropout)) {
      say("dropout: dropping the connection in round " + std::to_string(round));
      return lost(c, wire::CloseReason::normal, "dropout in round " + std::to_string(round));
    }
    auto tr = std::make_shared<wire::TrainRound>(t);
    const std::uint64_t received = c->bytes_in;
    c->bytes_in = 0;
    const std::uint64_t module = worker.module_id();
    run_job(c, [this, tr, received, module]() -> wire::Message {
      auto u = worker.train(*tr, received);
      if (u) return *u;
      if (u.error().code == Errc::limit_exceeded) {
        wire::AssignResult r;
        r.module_id = module;
        r.reason_code = static_cast<std::uint16_t>(RefusalCode::over_budget);
        r.reason_text = u.error().message.substr(0, 200);
        r.budget_bytes = opt.budget_bytes;
        return r;
      }
      return wire::ErrorNotice(wire::CloseReason::internal_error, u.error().message.substr(0, 200));
    }, round);
  }

  void handle(const std::shared_ptr<Conn>& c, const wire::InferRequest& r, std::uint32_t round) {
    ++infer_requests;
    if (drops_in_round(opt.seed, kInferDrawBase + (infer_requests & 0x7FFFFFFFu), opt.dropout)) {
      say("dropout: dropping the connection at inference request " + std::to_string(infer_requests));
      return lost(c, wire::CloseReason::normal, "dropout at inference request " + std::to_string(infer_requests));
    }
    auto req = std::make_shared<wire::InferRequest>(r);
    run_job(c, [this, req]() -> wire::Message {
      auto out = worker.infer(*req);
      if (out) return *out;
      return wire::ErrorNotice(wire::CloseReason::internal_error, out.error().message.substr(0, 200));
    }, round);
  }

  void handle(const std::shared_ptr<Conn>&, const wire::Heartbeat&, std::uint32_t) {}
  void handle(const std::shared_ptr<Conn>&, const wire::Metrics&, std::uint32_t) {}

  void handle(const std::shared_ptr<Conn>& c, const wire::Bye& b, std::uint32_t) {
    say("bye (code " + std::to_string(b.code) + ")");
    c->bye = true;
    ++self->runs_;
    guard.forget_run(c->run);
    finish_close(c);
    if (opt.exit_after_runs > 0 && self->runs_ >= opt.exit_after_runs) {
      say("exiting after " + std::to_string(self->runs_) + " runs");
      shutdown();
      return;
    }
    backoff.reset();
    conn.reset();
    forget_endpoint();
    asio::post(io, [this] { begin(); });
  }

  void handle(const std::shared_ptr<Conn>& c, const wire::ErrorNotice& e, std::uint32_t) {
    lost(c, e.reason(), "orchestrator closed: " + std::string(wire::close_reason_name(e.reason())) + ": " + e.message);
  }

  template <class M>
  void handle(const std::shared_ptr<Conn>& c, const M&, std::uint32_t) {
    close(c, wire::CloseReason::unexpected_message,
          std::string("unexpected ") + wire::message_type_name(M::kType) + " from the orchestrator", true);
  }

  // Jobs run one at a time on the worker thread; the reply goes out on the
  // connection that asked, if it is still open.
  template <class F>
  void run_job(const std::shared_ptr<Conn>& c, F job, std::uint32_t round) {
    if (job_running)
      return close(c, wire::CloseReason::unexpected_message, "a request while the previous one is still running", true);
    job_running = true;
    asio::post(jobs, [this, c, job = std::move(job), round]() mutable {
      wire::Message reply = job();
      asio::post(io, [this, c, reply = std::move(reply), round]() mutable {
        job_running = false;
        if (c->closed || c->closing || stopping) return;
        if (auto* e = std::get_if<wire::ErrorNotice>(&reply)) return close(c, e->reason(), e->message, true);
        std::visit([&](const auto& m) { send(c, m, round); }, reply);
      });
    });
  }

  // ------------------------------------------------------------ closing
  /// Close for a reason: send `error` first when asked, then close.
  void close(const std::shared_ptr<Conn>& c, wire::CloseReason r, const std::string& text, bool send_error) {
    if (c->closed || c->closing) return;
    say(std::string("closing: ") + wire::close_reason_name(r) + ": " + text);
    c->reason = r;
    c->reason_text = text;
    if (send_error && c->open) {
      wire::Verdict v;
      v.reason = r;
      std::snprintf(v.text, sizeof v.text, "%s", text.c_str());
      send(c, wire::ErrorNotice(v, limits), 0);
      c->closing = true;
      c->closer.expires_after(std::chrono::seconds(1));
      c->closer.async_wait([this, c](std::error_code ec) {
        if (!ec) finish_close(c);
      });
      pump(c);
      return;
    }
    finish_close(c);
  }

  /// The connection ended without a bye: record and retry after the backoff.
  void lost(const std::shared_ptr<Conn>& c, wire::CloseReason r, const std::string& text) {
    if (c->closed) return;
    if (!c->closing) {
      c->reason = r;
      c->reason_text = text;
      say("connection lost: " + text);
    }
    finish_close(c);
  }

  void finish_close(const std::shared_ptr<Conn>& c) {
    if (c->closed) return;
    c->closed = true;
    c->open = false;
    std::error_code ignored;
    c->stream.lowest_layer().cancel(ignored);
    c->stream.lowest_layer().close(ignored);
    c->pace.cancel();
    c->closer.cancel();
    if (conn == c) heartbeat.cancel();
    self->last_close_ = c->bye ? wire::CloseReason::normal : c->reason;
    self->last_close_text_ = c->bye ? "bye" : c->reason_text;
    if (!c->bye && conn == c) {
      conn.reset();
      again_after_backoff();
    }
  }

  void shutdown() {
    if (stopping) return;
    stopping = true;
    retry.cancel();
    heartbeat.cancel();
    if (announcer) announcer->stop();
    if (conn) {
      auto c = conn;
      conn.reset();
      c->bye = true;  // no reconnect
      finish_close(c);
    }
    set_phase(Phase::stopped);
  }
};

Agent::Agent(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) { impl_->self = this; }

Agent::~Agent() {
  if (impl_) {
    impl_->stopping = true;
    impl_->jobs.join();
  }
}

Result<std::unique_ptr<Agent>> Agent::create(asio::io_context& io, AgentOptions o, Capabilities caps, LogFn log) {
  if (!core::is_valid_device_name(o.name)) return make_error(Errc::invalid_argument, "agent: invalid device name '" + o.name + "'");
  if (o.budget_bytes == 0) return make_error(Errc::invalid_argument, "agent: the budget must be > 0");
  auto st = StateDir::open(o.state_dir);
  if (!st) return std::move(st).error();
  auto sd = std::make_unique<StateDir>(std::move(*st));
  // SeqCounter keeps a pointer to the StateDir: it must live in the Impl.
  auto probe = SeqCounter::open(*sd);
  if (!probe) return std::move(probe).error();
  auto impl = std::make_unique<Impl>(io, std::move(o), caps, std::move(log), std::move(*sd), *probe);
  auto q = SeqCounter::open(impl->state);
  if (!q) return std::move(q).error();
  impl->seq = *q;
  return std::unique_ptr<Agent>(new Agent(std::move(impl)));
}

void Agent::start() {
  asio::post(impl_->io, [this] { impl_->begin(); });
}

std::string Agent::fatal_error() const { return impl_->fatal_error; }

void Agent::shutdown() {
  asio::post(impl_->io, [this] { impl_->shutdown(); });
}

}  // namespace fleetdl::agent
