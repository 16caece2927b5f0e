// tests/agent/test_agent.cpp — the POSIX device agent (device_ports/posix):
// options, capabilities, the state directory (modes, atomic writes), the
// persisted sequence counter, the backoff, module checks against the budget,
// the local shard against the simulator's partition, the train handler
// against fl::train_local, and whole conversations over loopback TLS with
// TestOrchestrator — a minimal, test-only orchestrator built from the same
// fleet CA, TLS contexts and wire messages (the real round engine lives in
// orchestrator/core) — including malformed frames, replays and silence.
#include "agent.hpp"

#include "fleetdl/core/rng.hpp"
#include "fleetdl/fl/client.hpp"
#include "fleetdl/fl/codec.hpp"
#include "fleetdl/io/fdl.hpp"
#include "fleetdl/compress/quantize.hpp"
#include "fleetdl/micro/blob_writer.hpp"
#include "fleetdl/micro/interpreter.hpp"
#include "fleetdl/nn/zoo.hpp"
#include "fleetdl/sim/config.hpp"
#include "fleetdl/wire.hpp"

#include <asio.hpp>
#include <asio/ssl.hpp>
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <random>
#include <thread>

namespace {

namespace ag = fleetdl::agent;
namespace core = fleetdl::core;
namespace w = fleetdl::wire;
namespace fs = std::filesystem;
using fleetdl::Index;
using tcp = asio::ip::tcp;

template <class T>
T must(fleetdl::Result<T> r) {
  if (!r) FAIL(r.error().message);
  return std::move(r).value();
}

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/fleetdl-agent-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

unsigned mode_of(const fs::path& p) {
  struct stat st{};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return static_cast<unsigned>(st.st_mode & 0777);
}

/// Aborts the test program if a conversation hangs (the blocking test
/// orchestrator would otherwise wait forever).
class Watchdog {
 public:
  explicit Watchdog(std::chrono::seconds limit) {
    t_ = std::thread([this, limit] {
      std::unique_lock<std::mutex> lk(m_);
      if (!cv_.wait_for(lk, limit, [this] { return done_; })) {
        std::fprintf(stderr, "agent_tests: watchdog: a test ran over %lld s\n", static_cast<long long>(limit.count()));
        std::abort();
      }
    });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lk(m_);
      done_ = true;
    }
    cv_.notify_all();
    t_.join();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread t_;
};

const std::string kData = FLEETDL_FASHION_MNIST_DIR;

bool have_data() { return fs::exists(fs::path(kData) / "train-images-idx3-ubyte.gz"); }

fleetdl::nn::Model<float> small_model(std::uint64_t seed = 7) {
  auto m = must(fleetdl::nn::make_model<float>("lenet300_100"));
  m.init(seed);
  return m;
}

w::TrainRound small_round(const fleetdl::nn::Model<float>& m) {
  w::TrainRound t;
  t.config.local_epochs = 1;
  t.config.batch_size = 20;
  t.config.learning_rate = 0.05f;
  t.config.momentum = 0.5f;
  t.config.seed = 1234;
  t.config.partition_spec = R"({"kind": "dirichlet", "alpha": 0.5, "min_size": 5})";
  t.config.shard_index = 1;
  t.config.shard_count = 3;
  t.config.partition_seed = 99;
  t.config.train_limit = 200;
  t.parameters.assign(m.params().data(), m.params().data() + m.param_count());
  return t;
}

std::vector<float> raw_floats(const std::vector<std::uint8_t>& b) {
  std::vector<float> v(b.size() / 4);
  std::memcpy(v.data(), b.data(), v.size() * 4);
  return v;
}

}  // namespace

// ---------------------------------------------------------------------------
// Options, capabilities, state, seq, backoff

TEST_CASE("agent: options parse, with byte suffixes and one-line errors", "[agent]") {
  CHECK(must(ag::parse_bytes("123")) == 123);
  CHECK(must(ag::parse_bytes("64K")) == 64ULL << 10);
  CHECK(must(ag::parse_bytes("512M")) == 512ULL << 20);
  CHECK(must(ag::parse_bytes("2G")) == 2ULL << 30);
  CHECK_FALSE(ag::parse_bytes("12Q").ok());
  CHECK_FALSE(ag::parse_bytes("").ok());
  CHECK_FALSE(ag::parse_bytes("-5").ok());

  const char* ok[] = {"fleetdl-agent", "--name", "pi-1", "--state-dir", "/tmp/x", "--budget=16M",
                      "--connect", "127.0.0.1:7000:7001", "--slowdown", "2.5", "--bandwidth", "100K",
                      "--dropout", "0.25", "--cores", "3", "--exit-after-runs", "2", "--seed", "9"};
  auto o = must(ag::parse_options(static_cast<int>(std::size(ok)), ok));
  CHECK(o.name == "pi-1");
  CHECK(o.budget_bytes == 16ULL << 20);
  CHECK(o.host == "127.0.0.1");
  CHECK(o.enroll_port == 7000);
  CHECK(o.fleet_port == 7001);
  CHECK(o.slowdown == 2.5);
  CHECK(o.bandwidth == 100.0 * 1024);
  CHECK(o.dropout == 0.25);
  CHECK(o.cores == 3);
  CHECK(o.exit_after_runs == 2);
  CHECK(o.seed == 9);
  CHECK_FALSE(o.token.has_value());
  CHECK_FALSE(o.discovers());

  // without --connect the agent discovers: announce targets and port
  const char* disc[] = {"fleetdl-agent", "--name", "pi-2", "--state-dir", "/tmp/x", "--budget", "1M",
                        "--announce-to", "10.1.2.255:47900", "--announce-to=127.0.0.1:47901",
                        "--discovery-port", "47902", "--announce-interval-ms", "50"};
  auto d = must(ag::parse_options(static_cast<int>(std::size(disc)), disc));
  CHECK(d.discovers());
  CHECK(d.host.empty());
  REQUIRE(d.announce_to.size() == 2);
  CHECK(d.announce_to[0] == asio::ip::udp::endpoint(asio::ip::make_address_v4("10.1.2.255"), 47900));
  CHECK(d.announce_to[1] == asio::ip::udp::endpoint(asio::ip::make_address_v4("127.0.0.1"), 47901));
  CHECK(d.discovery_port == 47902);
  CHECK(d.announce_interval_ms == 50);

  struct Bad {
    std::vector<const char*> args;
    const char* needle;
  };
  const std::vector<Bad> bad = {
      {{"a", "--state-dir", "/x", "--budget", "1M", "--connect", "h:1:2"}, "--name is required"},
      {{"a", "--name", "bad name", "--state-dir", "/x", "--budget", "1M", "--connect", "h:1:2"}, "--name"},
      {{"a", "--name", "n", "--state-dir", "/x", "--connect", "h:1:2"}, "--budget is required"},
      {{"a", "--name", "n", "--state-dir", "/x", "--budget", "1M", "--connect", "h:1:2", "--announce-to", "10.0.0.1:9"},
       "cannot be combined"},
      {{"a", "--name", "n", "--state-dir", "/x", "--budget", "1M", "--discovery-port", "7", "--connect", "h:1:2"},
       "cannot be combined"},
      {{"a", "--name", "n", "--state-dir", "/x", "--budget", "1M", "--announce-to", "host:9"}, "--announce-to"},
      {{"a", "--name", "n", "--state-dir", "/x", "--budget", "1M", "--announce-to", "10.0.0.1"}, "--announce-to"},
      {{"a", "--name", "n", "--state-dir", "/x", "--budget", "1M", "--announce-to", "10.0.0.1:0"}, "--announce-to"},
      {{"a", "--name", "n", "--state-dir", "/x", "--budget", "1M", "--discovery-port", "70000"}, "--discovery-port"},
      {{"a", "--name", "n", "--state-dir", "/x", "--budget", "1M", "--announce-interval-ms", "5"}, "--announce-interval-ms"},
      {{"a", "--name", "n", "--state-dir", "/x", "--budget", "1M", "--connect", "h:1"}, "--connect"},
      {{"a", "--name", "n", "--state-dir", "/x", "--budget", "1M", "--connect", "h:1:2", "--slowdown", "0.5"}, "--slowdown"},
      {{"a", "--name", "n", "--state-dir", "/x", "--budget", "1M", "--connect", "h:1:2", "--dropout", "2"}, "--dropout"},
      {{"a", "--name", "n", "--state-dir", "/x", "--budget", "1M", "--connect", "h:1:2", "--token", "nope"}, "--token"},
      {{"a", "--frobnicate"}, "unknown option"},
      {{"a", "--name"}, "missing value"},
  };
  for (const auto& b : bad) {
    CAPTURE(b.needle);
    auto r = ag::parse_options(static_cast<int>(b.args.size()), b.args.data());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == fleetdl::Errc::invalid_argument);
    CHECK(r.error().message.find(b.needle) != std::string::npos);
    CHECK(r.error().message.find('\n') == std::string::npos);
  }
}

TEST_CASE("agent: the capability report is sane", "[agent]") {
  TempDir dir;
  ag::AgentOptions o;
  o.name = "cap-test";
  o.state_dir = dir.path;
  o.budget_bytes = 1 << 20;
  const auto t0 = std::chrono::steady_clock::now();
  const ag::Capabilities c = ag::measure_capabilities(o);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  CHECK(ms < 1000);  // the GEMM takes ~60 ms; generous for a loaded machine
  CHECK(c.cores >= 1);
  CHECK(c.ram_bytes > (16ULL << 20));
  CHECK(c.storage_bytes > 0);
  CHECK(c.mac_per_s > 1e6);
  CHECK(c.mac_per_s < 1e13);
  CHECK(c.link_bytes_per_s == 0);  // unknown without a cap
  o.cores = 3;
  o.bandwidth = 5000;
  const ag::Capabilities c2 = ag::measure_capabilities(o);
  CHECK(c2.cores == 3);
  CHECK(c2.link_bytes_per_s == 5000);
  const w::Hello h = ag::make_hello(o, c2);
  CHECK(h.validate().ok());
  CHECK(h.memory_budget_bytes == 1 << 20);
  CHECK(h.features == (w::feature::train | w::feature::float_inference | w::feature::micro_inference));
}

TEST_CASE("agent: the state directory has private modes and atomic writes", "[agent]") {
  TempDir tmp;
  const fs::path d = tmp.path / "state";
  auto st = must(ag::StateDir::open(d));
  CHECK(mode_of(d) == 0700);
  REQUIRE(st.write_atomic("key.pem", "secret-1", 0600).ok());
  CHECK(mode_of(d / "key.pem") == 0600);
  CHECK(must(st.read("key.pem")) == "secret-1");
  REQUIRE(st.write_atomic("key.pem", "secret-22", 0600).ok());
  CHECK(must(st.read("key.pem")) == "secret-22");
  // no temporary file is left behind
  int entries = 0;
  for (const auto& e : fs::directory_iterator(d)) {
    (void)e;
    ++entries;
  }
  CHECK(entries == 1);
  CHECK_FALSE(st.enrolled());
  ag::StateDir::Enrollment e{42, "KEY", "CERT", "CA"};
  REQUIRE(st.store_enrollment(e).ok());
  CHECK(st.enrolled());
  auto back = must(st.load_enrollment());
  CHECK(back.device_id == 42);
  CHECK(back.key_pem == "KEY");
  CHECK(back.cert_pem == "CERT");
  CHECK(back.ca_pem == "CA");
  CHECK(mode_of(d / "key.pem") == 0600);
  CHECK(st.read("nope").error().code == fleetdl::Errc::not_found);
  // a directory others may read is refused
  const fs::path open_dir = tmp.path / "open";
  REQUIRE(::mkdir(open_dir.c_str(), 0755) == 0);
  REQUIRE(::chmod(open_dir.c_str(), 0755) == 0);
  auto refused = ag::StateDir::open(open_dir);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().message.find("755") != std::string::npos);
}

TEST_CASE("agent: the sequence counter never goes backwards across restarts", "[agent]") {
  TempDir tmp;
  auto st = must(ag::StateDir::open(tmp.path / "s"));
  std::uint64_t last = 0;
  {
    auto q = must(ag::SeqCounter::open(st));
    for (int i = 0; i < 5; ++i) {
      const auto s = must(q.next());
      CHECK(s > last);
      last = s;
    }
  }
  for (int restart = 0; restart < 3; ++restart) {
    auto q = must(ag::SeqCounter::open(st));
    const auto s = must(q.next());
    CHECK(s > last);
    last = s;
    for (std::uint64_t i = 0; i < ag::SeqCounter::kBlock + 3; ++i) {  // across a block boundary
      const auto t = must(q.next());
      REQUIRE(t == last + 1);
      last = t;
    }
  }
  REQUIRE(st.write_atomic("seq", "garbage", 0600).ok());
  CHECK_FALSE(ag::SeqCounter::open(st).ok());
}

TEST_CASE("agent: backoff doubles from 100 ms to 5 s with +-20% seeded jitter", "[agent]") {
  ag::Backoff a(5), b(5), c(6);
  bool differs = false;
  double base = 100;
  for (int i = 0; i < 12; ++i) {
    const auto x = a.next().count();
    CAPTURE(i, x);
    CHECK(x >= static_cast<long long>(std::floor(base * 0.8)));
    CHECK(x <= static_cast<long long>(std::ceil(base * 1.2)));
    CHECK(b.next().count() == x);  // same seed, same delays
    if (c.next().count() != x) differs = true;
    base = std::min(base * 2, 5000.0);
  }
  CHECK(differs);
  a.reset();
  const auto first = a.next().count();
  CHECK(first >= 80);
  CHECK(first <= 120);
  // dropout draws: reproducible, about p of the rounds
  int drops = 0;
  for (std::uint32_t r = 1; r <= 1000; ++r) {
    const bool d = ag::drops_in_round(3, r, 0.3);
    CHECK(d == ag::drops_in_round(3, r, 0.3));
    drops += d ? 1 : 0;
  }
  CHECK(drops > 230);
  CHECK(drops < 370);
  CHECK_FALSE(ag::drops_in_round(3, 1, 0.0));
  CHECK(ag::drops_in_round(3, 1, 1.0));
}

// ---------------------------------------------------------------------------
// The worker: budget, shard, training, inference

TEST_CASE("agent: a module over the budget is refused with needed and budget", "[agent]") {
  const auto m = small_model();
  const auto bytes = fleetdl::io::encode_model(m);
  // at assignment: the memory to hold the module and run one image through it
  const std::uint64_t need = ag::inference_memory(m);
  std::uint64_t weights = 0, peak = 0;
  for (const auto& c : m.cost_report()) {
    weights += static_cast<std::uint64_t>(c.weight_bytes);
    peak = std::max<std::uint64_t>(peak, static_cast<std::uint64_t>(c.act_in_bytes + c.act_out_bytes));
  }
  CHECK(need >= weights + peak);
  CHECK(need >= 4 * static_cast<std::uint64_t>(m.param_count()));
  CHECK(need < ag::training_memory(m, 1, false, false));  // training needs more: gradients, the global copy

  ag::Worker small(kData, need - 1, 1, 1.0);
  const w::AssignResult r = small.assign(5, w::ModuleKind::fdl_model, bytes);
  CHECK_FALSE(r.accepted);
  CHECK(r.module_id == 5);
  CHECK(r.reason_code == static_cast<std::uint16_t>(ag::RefusalCode::over_budget));
  CHECK(r.peak_memory_bytes == need);
  CHECK(r.budget_bytes == need - 1);
  CHECK(r.reason_text.find("exceeds the budget") != std::string::npos);
  CHECK(r.validate().ok());
  CHECK_FALSE(small.has_model());

  ag::Worker big(kData, need, 1, 1.0);
  const w::AssignResult ok = big.assign(6, w::ModuleKind::fdl_model, bytes);
  CHECK(ok.accepted);
  CHECK(ok.peak_memory_bytes == need);
  CHECK(big.has_model());
  CHECK(big.module_id() == 6);

  const w::AssignResult blob = big.assign(7, w::ModuleKind::micro_blob, bytes);  // .fdl bytes as a micro blob
  CHECK_FALSE(blob.accepted);
  CHECK(blob.reason_code == static_cast<std::uint16_t>(ag::RefusalCode::invalid_module));
  CHECK(blob.reason_text.find("magic") != std::string::npos);
  CHECK(big.model() != nullptr);
  std::vector<std::uint8_t> junk(bytes.begin(), bytes.begin() + 100);
  const w::AssignResult bad = big.assign(8, w::ModuleKind::fdl_model, junk);
  CHECK_FALSE(bad.accepted);
  CHECK(bad.reason_code == static_cast<std::uint16_t>(ag::RefusalCode::invalid_module));
  CHECK(big.module_id() == 6);  // the accepted module stays
}

TEST_CASE("agent: the shard of a train_round is the simulator's partition", "[agent][data]") {
  if (!have_data()) {
    WARN("Fashion-MNIST not installed at " << kData);
    return;
  }
  const auto m = small_model();
  const w::TrainRound t = small_round(m);
  // what the simulator computes from a run config with the same values
  const std::string cfg_text = R"({"seed": 99, "rounds": 1, "clients": 3, "model": "lenet300_100",
    "dataset": {"train_limit": 200},
    "partition": {"kind": "dirichlet", "alpha": 0.5, "min_size": 5},
    "client": {"lr": 0.05, "epochs": 1, "batch": 20}, "strategy": {"name": "fedavg"}})";
  auto cfg = must(fleetdl::sim::parse_config(must(fleetdl::json::parse(cfg_text))));
  auto train = must(fleetdl::data::load_fashion_mnist<float>(kData, true, cfg.train_limit));
  auto parts = must(fleetdl::sim::make_partition(cfg, train.labels, train.classes));
  ag::Worker wk(kData, 1ULL << 30, 1, 1.0);
  for (std::uint32_t k = 0; k < 3; ++k) {
    CAPTURE(k);
    w::RoundConfig rc = t.config;
    rc.shard_index = k;
    auto s = must(wk.shard(rc));
    const auto want = train.subset(parts[k]);
    CHECK(s.labels == want.labels);
    CHECK(s.images == want.images);
  }
  w::RoundConfig limited = t.config;
  limited.example_limit = 7;
  CHECK(must(wk.shard(limited)).size() == 7);
  w::RoundConfig bad = t.config;
  bad.partition_spec = R"({"kind": "bogus"})";
  auto e = wk.shard(bad);
  REQUIRE_FALSE(e.ok());
  CHECK(e.error().message.find("partition.kind") != std::string::npos);
}

TEST_CASE("agent: local DP clips the delta on the device; the top-k fraction sets k", "[agent][data]") {
  if (!have_data()) {
    WARN("Fashion-MNIST not installed at " << kData);
    return;
  }
  const auto m = small_model();
  const auto bytes = fleetdl::io::encode_model(m);
  const fleetdl::Index d = m.param_count();
  auto delta_of = [&](const w::TrainRound& t) {
    ag::Worker wk(kData, 1ULL << 30, 1, 1.0);
    REQUIRE(wk.assign(1, w::ModuleKind::fdl_model, bytes).accepted);
    auto up = must(wk.train(t, 0));
    REQUIRE(up.codec == w::CodecId::raw_f32);
    REQUIRE(up.delta.size() == static_cast<std::size_t>(d) * 4);
    fleetdl::Vector<float> v(d);
    std::memcpy(v.data(), up.delta.data(), up.delta.size());
    return v;
  };
  w::TrainRound t = small_round(m);
  const fleetdl::Vector<float> plain = delta_of(t);
  REQUIRE(plain.norm() > 0.01f);
  // clipping only: the delta keeps its direction at norm C
  t.config.dp_clip = 0.01f;
  const fleetdl::Vector<float> clipped = delta_of(t);
  CHECK(clipped.norm() == Approx(0.01).epsilon(1e-4));
  CHECK((clipped - plain * (0.01f / plain.norm())).norm() < 1e-6f);
  // with noise: sigma = z C per coordinate, seeded by the round's seed
  t.config.dp_noise_multiplier = 2.0f;
  const fleetdl::Vector<float> noisy = delta_of(t);
  const double sd = std::sqrt((noisy - clipped).squaredNorm() / static_cast<double>(d));
  CHECK(sd == Approx(0.02).epsilon(0.05));
  CHECK((delta_of(t).array() == noisy.array()).all());  // same seed, same noise

  // top-k: k = max(1, round(fraction x d)) non-zero coordinates
  t = small_round(m);
  t.config.codec = w::CodecId::topk_pairs;
  t.config.topk_fraction = 0.05f;
  ag::Worker wk(kData, 1ULL << 30, 1, 1.0);
  REQUIRE(wk.assign(1, w::ModuleKind::fdl_model, bytes).accepted);
  auto up = must(wk.train(t, 0));
  auto dec = must(fleetdl::fl::decode_update<float>(up.delta, d));
  CHECK((dec.array() != 0.0f).count() == std::llround(0.05 * static_cast<double>(d)));
}

TEST_CASE("agent: the train handler's update is fl::train_local's, encoded", "[agent][data]") {
  if (!have_data()) {
    WARN("Fashion-MNIST not installed at " << kData);
    return;
  }
  const auto m = small_model();
  for (const bool scaffold : {false, true}) {
    for (const w::CodecId codec : {w::CodecId::raw_f32, w::CodecId::fp16}) {
      CAPTURE(scaffold, static_cast<int>(codec));
      ag::Worker wk(kData, 1ULL << 30, 1, 1.0);
      REQUIRE(wk.assign(1, w::ModuleKind::fdl_model, fleetdl::io::encode_model(m)).accepted);
      w::TrainRound t = small_round(m);
      t.config.codec = codec;
      t.config.proximal_mu = 0.01f;
      if (scaffold) {
        t.config.flags = w::round_flag::scaffold | w::round_flag::loss_before;
        t.server_control.assign(t.parameters.size(), 0.001f);
      }
      const w::Update u = must(wk.train(t, 1234));
      CHECK(u.validate().ok());

      // the same client, by hand
      auto local = must(wk.shard(t.config));
      fleetdl::nn::Model<float> direct = m;
      fleetdl::fl::ClientInstruction ins;
      ins.client = 1;
      ins.config.lr = t.config.learning_rate;
      ins.config.momentum = t.config.momentum;
      ins.config.epochs = 1;
      ins.config.batch = 20;
      ins.config.prox_mu = t.config.proximal_mu;
      ins.config.scaffold = scaffold;
      fleetdl::fl::LocalTrainOptions<float> lo;
      lo.seed = t.config.seed;
      lo.loss_before = scaffold;
      fleetdl::fl::ScaffoldClientState<float> sc;
      if (scaffold) {
        lo.scaffold = &sc;
        lo.server_c = t.server_control;
      }
      auto r = must(fleetdl::fl::train_local(direct, local, ins, lo));
      const fleetdl::Vector<float> delta = r.update.params - m.params();
      CHECK(u.example_count == local.size());
      CHECK(u.local_steps == r.update.local_steps);
      CHECK(u.local_steps == 1 * ((local.size() + 19) / 20));
      CHECK(u.loss == r.last_loss);
      CHECK(u.bytes_received == 1234);
      CHECK(u.peak_memory_bytes == ag::training_memory(m, std::min<Index>(20, local.size()), true, scaffold));
      if (codec == w::CodecId::raw_f32) {
        const auto got = raw_floats(u.delta);
        REQUIRE(got.size() == static_cast<std::size_t>(delta.size()));
        CHECK(std::memcmp(got.data(), delta.data(), got.size() * 4) == 0);
      } else {
        const auto want = must(fleetdl::fl::encode_fp16(delta));
        CHECK(u.delta == want);
        auto dec = must(fleetdl::fl::decode_update<float>(u.delta, m.param_count()));
        CHECK((dec - delta).cwiseAbs().maxCoeff() < 1e-3f);
      }
      if (scaffold) {
        CHECK(u.loss_before == r.update.loss_before);
        CHECK(u.loss_before > 0);
        REQUIRE(u.control_delta.size() == static_cast<std::size_t>(m.param_count()));
        CHECK(std::memcmp(u.control_delta.data(), r.update.control_delta.data(), u.control_delta.size() * 4) == 0);
      } else {
        CHECK(u.loss_before == 0);
        CHECK(u.control_delta.empty());
      }
    }
  }
}

TEST_CASE("agent: inference runs the assigned model; a round over the budget is refused", "[agent][data]") {
  const auto m = small_model();
  const auto bytes = fleetdl::io::encode_model(m);
  ag::Worker wk(kData, ag::training_memory(m, 64, true, false), 1, 1.0);
  w::InferRequest req{3, {2, 784}, std::vector<float>(2 * 784, 0.5f)};
  CHECK_FALSE(wk.infer(req).ok());  // no module yet
  REQUIRE(wk.assign(1, w::ModuleKind::fdl_model, bytes).accepted);
  auto resp = must(wk.infer(req));
  CHECK(resp.request_id == 3);
  CHECK(resp.dims == std::vector<std::uint32_t>{2, 10});
  fleetdl::nn::Model<float> direct = m;
  fleetdl::nn::ExecContext<float> ctx;
  fleetdl::Matrix<float> x = fleetdl::Matrix<float>::Constant(784, 2, 0.5f);
  const auto& y = direct.forward(x, ctx);
  CHECK(std::memcmp(resp.values.data(), y.data(), 20 * sizeof(float)) == 0);
  CHECK(resp.validate().ok());
  req.dims = {3, 100};
  req.values.assign(300, 0.0f);
  CHECK_FALSE(wk.infer(req).ok());
  if (!have_data()) return;
  // SCAFFOLD with a batch above the assignment's: more than the budget
  w::TrainRound t = small_round(m);
  t.config.batch_size = 1000;
  t.config.flags = w::round_flag::scaffold;
  auto refused = wk.train(t, 0);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == fleetdl::Errc::limit_exceeded);
}

// ---------------------------------------------------------------------------
// Micro blobs: int8 inference through micro::Interpreter

namespace {

namespace mi = fleetdl::micro;

/// Bytes at a 16-byte boundary, as micro::verify requires.
struct AlignedBytes {
  struct alignas(16) Block {
    std::uint8_t b[16];
  };
  std::vector<Block> store;
  std::size_t size = 0;
  explicit AlignedBytes(std::size_t n) : store((n + 15) / 16), size(n) {}
  explicit AlignedBytes(const std::vector<std::uint8_t>& v) : AlignedBytes(v.size()) {
    std::memcpy(data(), v.data(), v.size());
  }
  std::uint8_t* data() { return reinterpret_cast<std::uint8_t*>(store.data()); }
};

/// A tiny int8 blob from the library's writer: input 4x4x2 (NHWC) -> conv
/// 3x3 VALID, per-channel scales, bias, ReLU -> output 2x2x3. Neither the
/// input nor the output is 1x1xC, so the CHW <-> NHWC order matters.
std::vector<std::uint8_t> tiny_micro_blob(std::uint32_t seed = 5) {
  std::mt19937 g(seed);
  std::uniform_int_distribution<int> wd(-127, 127), bd(-300, 300);
  std::vector<std::int8_t> weights(3 * 3 * 3 * 2);
  for (auto& v : weights) v = static_cast<std::int8_t>(wd(g));
  std::vector<std::int32_t> bias(3);
  for (auto& v : bias) v = bd(g);
  mi::BlobWriter bw;
  const auto x = bw.activation({1, 4, 4, 2}, 0.05f, -3);
  const auto k = bw.constant_int8({3, 3, 3, 2}, 1.0f, weights);
  const auto b = bw.constant_int32({1, 1, 1, 3}, bias);
  const auto s = bw.constant_float({1, 1, 1, 3}, {0.01f, 0.02f, 0.015f});
  const auto y = bw.activation({1, 2, 2, 3}, 0.1f, -128);
  mi::ConvOptions co;
  co.activation = mi::Activation::relu;
  bw.conv2d(x, k, b, s, y, co);
  bw.inputs({x});
  bw.outputs({y});
  return bw.finish();
}

/// blob + arena bytes, computed here from the planner.
std::uint64_t micro_need(const std::vector<std::uint8_t>& blob) {
  AlignedBytes a(blob);
  const mi::PlanResult p = mi::plan_arena_bytes(a.data(), a.size);
  REQUIRE(p.status.ok());
  return blob.size() + p.plan.total;
}

/// The reference: the blob straight through micro::Interpreter, one CHW
/// float sample at a time (quantized into the NHWC input, output dequantized
/// back to CHW).
std::vector<float> run_micro_directly(const std::vector<std::uint8_t>& blob, const std::vector<float>& values,
                                      std::size_t samples) {
  AlignedBytes b(blob);
  const mi::PlanResult p = mi::plan_arena_bytes(b.data(), b.size);
  REQUIRE(p.status.ok());
  AlignedBytes arena(static_cast<std::size_t>(p.plan.total));
  mi::InitResult init = mi::Interpreter::init(b.data(), b.size, arena.data(), arena.size);
  REQUIRE(init.ok());
  mi::Interpreter& it = init.interpreter;
  const mi::TensorInfo ti = it.input_info(0), to = it.output_info(0);
  const int H = ti.shape.h, W = ti.shape.w, C = ti.shape.c;
  const int OH = to.shape.h, OW = to.shape.w, OC = to.shape.c;
  const std::size_t in = static_cast<std::size_t>(H * W * C), out = static_cast<std::size_t>(OH * OW * OC);
  std::vector<float> y(samples * out);
  for (std::size_t j = 0; j < samples; ++j) {
    const float* chw = values.data() + j * in;
    for (int c = 0; c < C; ++c)
      for (int h = 0; h < H; ++h)
        for (int x = 0; x < W; ++x)
          it.input(0)[(h * W + x) * C + c] = mi::quantize(chw[(c * H + h) * W + x], ti.scale, ti.zero_point);
    REQUIRE(it.invoke().ok());
    for (int c = 0; c < OC; ++c)
      for (int h = 0; h < OH; ++h)
        for (int x = 0; x < OW; ++x)
          y[j * out + static_cast<std::size_t>((c * OH + h) * OW + x)] =
              mi::dequantize(it.output(0)[(h * OW + x) * OC + c], to.scale, to.zero_point);
  }
  return y;
}

w::InferRequest micro_request(std::uint64_t id, std::uint32_t samples, std::uint32_t seed = 11) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(-3.0f, 9.0f);  // some values saturate the input's int8 range
  w::InferRequest r;
  r.request_id = id;
  r.dims = {samples, 32};
  r.values.resize(static_cast<std::size_t>(samples) * 32);
  for (auto& v : r.values) v = d(g);
  return r;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("agent: a micro blob serves int8 inference, bit for bit the interpreter's", "[agent][micro]") {
  const std::vector<std::uint8_t> blob = tiny_micro_blob();
  const std::uint64_t need = micro_need(blob);
  ag::Worker wk(kData, 1ULL << 30, 1, 1.0);
  // a float model first: the blob replaces it
  REQUIRE(wk.assign(1, w::ModuleKind::fdl_model, fleetdl::io::encode_model(small_model())).accepted);
  const w::AssignResult a = wk.assign(2, w::ModuleKind::micro_blob, blob);
  CHECK(a.validate().ok());
  REQUIRE(a.accepted);
  CHECK(a.reason_code == 0);
  CHECK(a.peak_memory_bytes == need);
  CHECK(a.budget_bytes == 1ULL << 30);
  CHECK(wk.has_model());
  CHECK(wk.has_micro_blob());
  CHECK(wk.model() == nullptr);
  CHECK(wk.module_id() == 2);
  CHECK(wk.micro_memory_bytes() == need);

  const w::InferRequest req = micro_request(9, 5);
  const w::InferResponse resp = must(wk.infer(req));
  CHECK(resp.validate().ok());
  CHECK(resp.request_id == 9);
  CHECK(resp.dims == std::vector<std::uint32_t>{5, 12});
  CHECK(resp.compute_ms >= 0);
  const std::vector<float> want = run_micro_directly(blob, req.values, 5);
  CHECK(same_bits(resp.values, want));
  // not trivially all zeros (the ReLU could clip everything)
  CHECK(std::count(want.begin(), want.end(), 0.0f) < static_cast<std::ptrdiff_t>(want.size()));

  // the same as `fleetdl eval` runs a blob (compress::QuantizedRunner over
  // the blob's own input and output quantization)
  {
    AlignedBytes b(blob);
    const mi::ModelView v(b.data(), b.size);
    const mi::TensorDesc in = v.tensor(v.input_id(0)), out = v.tensor(v.output_id(0));
    fleetdl::compress::QuantizedModel qm;
    qm.blob = blob;
    qm.input_shape = fleetdl::Shape{in.shape.c, in.shape.h, in.shape.w};
    qm.output_shape = qm.output_layout = fleetdl::Shape{out.shape.c, out.shape.h, out.shape.w};
    qm.input = {in.scale, in.zero_point};
    qm.output = {out.scale, out.zero_point};
    auto runner = must(fleetdl::compress::QuantizedRunner::create(qm));
    fleetdl::Matrix<float> x(32, 5);
    std::memcpy(x.data(), req.values.data(), req.values.size() * sizeof(float));
    const fleetdl::Matrix<float> y = must(runner.run(x));
    CHECK(same_bits(std::vector<float>(y.data(), y.data() + y.size()), resp.values));
  }

  // a second request with other values: the input is written anew each time
  const w::InferRequest req2 = micro_request(10, 3, 77);
  CHECK(same_bits(must(wk.infer(req2)).values, run_micro_directly(blob, req2.values, 3)));

  // a wrong shape is refused as the float path refuses it
  w::InferRequest bad = req;
  bad.dims = {5, 784};
  bad.values.assign(5 * 784, 0.0f);
  auto e = wk.infer(bad);
  REQUIRE_FALSE(e.ok());
  CHECK(e.error().code == fleetdl::Errc::shape_mismatch);
  CHECK(e.error().message.find("takes 32 per sample") != std::string::npos);

  // a float model replaces the blob again
  const auto m = small_model();
  REQUIRE(wk.assign(3, w::ModuleKind::fdl_model, fleetdl::io::encode_model(m)).accepted);
  CHECK_FALSE(wk.has_micro_blob());
  CHECK(wk.micro_memory_bytes() == 0);
  REQUIRE(wk.model() != nullptr);
  w::InferRequest freq{4, {1, 784}, std::vector<float>(784, 0.25f)};
  CHECK(must(wk.infer(freq)).dims == std::vector<std::uint32_t>{1, 10});
  CHECK_FALSE(wk.infer(req).ok());  // the blob's input size no longer fits
}

TEST_CASE("agent: a corrupted micro blob is refused and the previous module stays", "[agent][micro]") {
  const std::vector<std::uint8_t> blob = tiny_micro_blob();
  ag::Worker wk(kData, 1ULL << 30, 1, 1.0);
  REQUIRE(wk.assign(1, w::ModuleKind::micro_blob, blob).accepted);
  const w::InferRequest req = micro_request(1, 4);
  const std::vector<float> before = must(wk.infer(req)).values;

  // a flipped byte in the constants (the CRC catches it), in the tensor
  // table with the CRC recomputed (the structural checks catch it), and a
  // truncated blob
  std::vector<std::uint8_t> flipped = blob;
  flipped[flipped.size() - 20] ^= 0x5A;
  std::vector<std::uint8_t> structural = blob;
  structural[mi::kHeaderBytes + mi::layout::kTType] = 7;  // tensor 0: no such type
  mi::BlobWriter::patch_crc(structural);
  std::vector<std::uint8_t> truncated(blob.begin(), blob.begin() + 50);
  for (const auto* bad : {&flipped, &structural, &truncated}) {
    const w::AssignResult r = wk.assign(2, w::ModuleKind::micro_blob, *bad);
    CHECK(r.validate().ok());
    CHECK_FALSE(r.accepted);
    CHECK(r.module_id == 2);
    CHECK(r.reason_code == static_cast<std::uint16_t>(ag::RefusalCode::invalid_module));
    CHECK(r.reason_text.rfind("micro blob 2: ", 0) == 0);
    CHECK(r.reason_text.find('\n') == std::string::npos);
    CHECK(r.peak_memory_bytes == 0);
    // the accepted blob stays and still answers the same
    CHECK(wk.module_id() == 1);
    CHECK(wk.has_micro_blob());
    CHECK(same_bits(must(wk.infer(req)).values, before));
  }
  CHECK(wk.assign(3, w::ModuleKind::micro_blob, flipped).reason_text.find("CRC") != std::string::npos);
  CHECK(wk.assign(3, w::ModuleKind::micro_blob, structural).reason_text.find("tensor type") != std::string::npos);
  CHECK(same_bits(before, run_micro_directly(blob, req.values, 4)));

  // a corrupted blob does not displace a float model either
  ag::Worker fw(kData, 1ULL << 30, 1, 1.0);
  REQUIRE(fw.assign(5, w::ModuleKind::fdl_model, fleetdl::io::encode_model(small_model())).accepted);
  CHECK_FALSE(fw.assign(6, w::ModuleKind::micro_blob, flipped).accepted);
  CHECK(fw.module_id() == 5);
  CHECK(fw.model() != nullptr);
  CHECK_FALSE(fw.has_micro_blob());
  w::InferRequest freq{4, {1, 784}, std::vector<float>(784, 0.25f)};
  CHECK(fw.infer(freq).ok());
}

TEST_CASE("agent: a micro blob over the budget is refused with blob + arena bytes", "[agent][micro]") {
  const std::vector<std::uint8_t> blob = tiny_micro_blob();
  const std::uint64_t need = micro_need(blob);
  CHECK(need > blob.size());
  ag::Worker small(kData, need - 1, 1, 1.0);
  const w::AssignResult r = small.assign(4, w::ModuleKind::micro_blob, blob);
  CHECK(r.validate().ok());
  CHECK_FALSE(r.accepted);
  CHECK(r.reason_code == static_cast<std::uint16_t>(ag::RefusalCode::over_budget));
  CHECK(r.peak_memory_bytes == need);
  CHECK(r.budget_bytes == need - 1);
  CHECK(r.reason_text.find("exceeds the budget") != std::string::npos);
  CHECK(r.reason_text.find(std::to_string(need) + " bytes") != std::string::npos);
  CHECK_FALSE(small.has_model());
  CHECK_FALSE(small.infer(micro_request(1, 1)).ok());

  ag::Worker exact(kData, need, 1, 1.0);
  const w::AssignResult ok = exact.assign(4, w::ModuleKind::micro_blob, blob);
  CHECK(ok.accepted);
  CHECK(ok.peak_memory_bytes == need);
}

TEST_CASE("agent: a micro blob cannot be trained", "[agent][micro]") {
  ag::Worker wk(kData, 1ULL << 30, 1, 1.0);
  REQUIRE(wk.assign(8, w::ModuleKind::micro_blob, tiny_micro_blob()).accepted);
  const w::TrainRound t = small_round(small_model());
  auto r = wk.train(t, 0);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == fleetdl::Errc::unsupported);
  CHECK(r.error().message.find("micro blob") != std::string::npos);
  CHECK(r.error().message.find("cannot be trained") != std::string::npos);
  CHECK(r.error().message.find('\n') == std::string::npos);
  CHECK(wk.has_micro_blob());  // still serves inference
  CHECK(wk.infer(micro_request(1, 2)).ok());
}

// ---------------------------------------------------------------------------
// Conversations over loopback TLS

namespace {

/// A minimal, test-only orchestrator: one fleet CA, an enrollment listener
/// and a fleet listener on loopback, blocking I/O on the test thread. It
/// checks what the agent sends and sends what the test says; the real round
/// engine is orchestrator/core's.
class TestOrchestrator {
 public:
  static constexpr std::uint64_t kDeviceId = 7;
  static constexpr std::uint64_t kRun = 3;

  TestOrchestrator()
      : ca_(must(core::FleetCa::create(dir_.path / "ca"))),
        token_(must(core::generate_token())),
        enroll_acc_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)),
        fleet_acc_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)),
        enroll_ctx_(must(core::make_enroll_server_context([this](std::string_view id) -> std::optional<std::vector<std::uint8_t>> {
          if (id == token_.identity) return token_.secret;
          return std::nullopt;
        }))),
        fleet_ctx_(must(core::make_fleet_server_context(ca_, must(ca_.issue_server_cert({"127.0.0.1"}))))),
        rx_(w::Limits{}.max_frame_payload),
        decoder_(rx_) {}

  std::string token_text() const { return core::encode_token(token_); }
  std::uint16_t enroll_port() const { return enroll_acc_.local_endpoint().port(); }
  std::uint16_t fleet_port() const { return fleet_acc_.local_endpoint().port(); }
  const std::string& ca_pem() const { return ca_.ca_cert_pem(); }

  struct Frame {
    w::FrameHeader header;
    w::Message msg;
  };

  /// Accepts the enrollment connection, checks enroll, answers enroll_ack.
  void serve_enrollment(const std::string& name) {
    accept(enroll_acc_, enroll_ctx_);
    const Frame f = read_frame();
    REQUIRE(std::holds_alternative<w::Enroll>(f.msg));
    const auto& e = std::get<w::Enroll>(f.msg);
    CHECK(e.token_identity == token_.identity);
    CHECK(f.header.binding.device == 0);
    const std::string cert = must(ca_.issue_device_cert(e.csr_pem, name, 30));
    send(w::EnrollAck{kDeviceId, cert, ca_.ca_cert_pem()}, 0, 0);
    close();
  }

  /// Accepts a fleet connection, reads hello, answers hello_ack.
  w::Hello serve_hello(std::uint32_t heartbeat_ms = 1000) {
    accept(fleet_acc_, fleet_ctx_);
    const auto peer = must(core::verified_peer(*s_));
    peer_cn = peer.common_name;
    const Frame f = read_frame();
    REQUIRE(std::holds_alternative<w::Hello>(f.msg));
    CHECK(f.header.binding.device == kDeviceId);
    send(w::HelloAck{1, kDeviceId, heartbeat_ms}, 0, 0);
    return std::get<w::Hello>(f.msg);
  }

  template <class M>
  void send(const M& m, std::uint32_t round, std::uint64_t run = kRun) {
    auto bytes = must(w::encode_message(m, w::Binding{kDeviceId, run, round, next_seq()}));
    send_raw(bytes);
  }
  void send_raw(const std::vector<std::uint8_t>& bytes) { asio::write(*s_, asio::buffer(bytes)); }
  std::uint64_t next_seq() { return ++seq_; }
  void rewind_seq(std::uint64_t by) { seq_ -= by; }

  /// Sends a module in chunks of at most 64 KiB.
  void send_module(std::uint64_t id, const std::vector<std::uint8_t>& module) {
    const std::size_t chunk = 64 * 1024;
    const auto count = static_cast<std::uint32_t>((module.size() + chunk - 1) / chunk);
    const std::uint32_t crc = fleetdl::crc32(module.data(), module.size());
    for (std::uint32_t i = 0; i < count; ++i) {
      w::AssignChunk c;
      c.module_id = id;
      c.kind = w::ModuleKind::fdl_model;
      c.chunk_index = i;
      c.chunk_count = count;
      c.total_bytes = module.size();
      c.module_crc = crc;
      const std::size_t a = i * chunk, b = std::min(module.size(), a + chunk);
      c.data.assign(module.begin() + static_cast<std::ptrdiff_t>(a), module.begin() + static_cast<std::ptrdiff_t>(b));
      send(c, 0);
    }
  }

  /// The next frame that is not a heartbeat; nullopt at the end of the stream.
  std::optional<Frame> next_frame() {
    while (true) {
      auto f = read_frame_or_eof();
      if (!f) return f;
      if (!std::holds_alternative<w::Heartbeat>(f->msg)) return f;
      ++heartbeats;
    }
  }
  Frame read_frame() {
    auto f = next_frame();
    REQUIRE(f.has_value());
    return std::move(*f);
  }

  void close() {
    if (!s_) return;
    std::error_code ec;
    s_->lowest_layer().close(ec);
    s_.reset();
  }

  std::string peer_cn;
  int heartbeats = 0;
  std::uint64_t last_agent_seq = 0;

 private:
  void accept(tcp::acceptor& acc, asio::ssl::context& ctx) {
    close();
    s_ = std::make_unique<asio::ssl::stream<tcp::socket>>(io_, ctx);
    acc.accept(s_->lowest_layer());
    s_->handshake(asio::ssl::stream_base::server);
    decoder_.reset();
  }

  std::optional<Frame> read_frame_or_eof() {
    while (true) {
      while (!pending_.empty()) {
        const auto r = decoder_.feed(pending_);
        pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(r.consumed));
        REQUIRE(r.status != w::FeedStatus::closed);
        if (r.status == w::FeedStatus::frame) {
          auto m = w::decode_message(r.frame);
          REQUIRE(m.ok());
          CHECK(r.frame.header.binding.seq > last_agent_seq);  // the agent's seq only grows
          last_agent_seq = r.frame.header.binding.seq;
          return Frame{r.frame.header, std::move(*m)};
        }
      }
      std::uint8_t buf[16384];
      std::error_code ec;
      const std::size_t n = s_->read_some(asio::buffer(buf), ec);
      if (ec) return std::nullopt;
      pending_.insert(pending_.end(), buf, buf + n);
    }
  }

  TempDir dir_;
  core::FleetCa ca_;
  core::EnrollmentToken token_;
  asio::io_context io_;
  tcp::acceptor enroll_acc_, fleet_acc_;
  asio::ssl::context enroll_ctx_, fleet_ctx_;
  std::unique_ptr<asio::ssl::stream<tcp::socket>> s_;
  std::vector<std::uint8_t> rx_;
  w::FrameDecoder decoder_;
  std::vector<std::uint8_t> pending_;
  std::uint64_t seq_ = 100;
};

/// An agent on its own io_context and thread.
class RunningAgent {
 public:
  RunningAgent(ag::AgentOptions o) {
    ag::Capabilities caps;
    caps.cores = 2;
    caps.ram_bytes = 1ULL << 30;
    caps.storage_bytes = 1ULL << 30;
    caps.mac_per_s = 1e9;
    agent = must(ag::Agent::create(io, std::move(o), caps, [this](const std::string& line) {
      std::lock_guard<std::mutex> lk(m);
      log += line + "\n";
    }));
    agent->start();
    t = std::thread([this] { io.run(); });
  }
  ~RunningAgent() { stop(); }
  void stop() {
    if (!t.joinable()) return;
    agent->shutdown();
    t.join();
  }
  void wait() { t.join(); }
  std::string text() {
    std::lock_guard<std::mutex> lk(m);
    return log;
  }

  asio::io_context io;
  std::unique_ptr<ag::Agent> agent;
  std::thread t;
  std::mutex m;
  std::string log;
};

ag::AgentOptions agent_options(const TestOrchestrator& o, const fs::path& state) {
  ag::AgentOptions a;
  a.name = "test-agent";
  a.state_dir = state;
  a.token = must(core::decode_token(o.token_text()));
  a.budget_bytes = 64ULL << 20;
  a.host = "127.0.0.1";
  a.enroll_port = o.enroll_port();
  a.fleet_port = o.fleet_port();
  a.data_dir = kData;
  a.seed = 11;
  a.exit_after_runs = 1;
  return a;
}

}  // namespace

TEST_CASE("agent: enroll, hello, assign, one round, bye over loopback TLS", "[agent][net][data]") {
  if (!have_data()) {
    WARN("Fashion-MNIST not installed at " << kData);
    return;
  }
  Watchdog dog(std::chrono::seconds(90));
  TempDir tmp;
  TestOrchestrator orch;
  const fs::path state = tmp.path / "state";
  RunningAgent ra(agent_options(orch, state));

  orch.serve_enrollment("test-agent");
  const w::Hello hello = orch.serve_hello(2000);
  CHECK(orch.peer_cn == "test-agent");
  CHECK(hello.agent_name == "test-agent");
  CHECK(hello.memory_budget_bytes == 64ULL << 20);
  CHECK(hello.cores == 2);

  // the state directory now holds the enrollment
  CHECK(mode_of(state) == 0700);
  CHECK(mode_of(state / "key.pem") == 0600);
  CHECK(fs::exists(state / "cert.pem"));
  CHECK(must(ag::StateDir::open(state)).read("ca.pem").value() == orch.ca_pem());
  CHECK(must(ag::StateDir::open(state)).read("device_id").value() == "7\n");
  CHECK(fs::exists(state / "seq"));

  const auto m = small_model();
  orch.send_module(21, fleetdl::io::encode_model(m));
  auto ar = orch.read_frame();
  REQUIRE(std::holds_alternative<w::AssignResult>(ar.msg));
  const auto& res = std::get<w::AssignResult>(ar.msg);
  CHECK(res.accepted);
  CHECK(res.module_id == 21);
  CHECK(ar.header.binding.device == TestOrchestrator::kDeviceId);
  CHECK(ar.header.binding.run == TestOrchestrator::kRun);

  w::TrainRound t = small_round(m);
  t.config.codec = w::CodecId::quant8;
  orch.send(t, 1);
  auto uf = orch.read_frame();
  REQUIRE(std::holds_alternative<w::Update>(uf.msg));
  const auto& u = std::get<w::Update>(uf.msg);
  CHECK(uf.header.binding.round == 1);
  CHECK(u.codec == w::CodecId::quant8);
  CHECK(u.example_count > 0);
  CHECK(u.local_steps > 0);
  CHECK(u.bytes_received > 4ULL * static_cast<std::uint64_t>(m.param_count()));
  CHECK(u.compute_ms > 0);
  auto delta = must(fleetdl::fl::decode_update<float>(u.delta, m.param_count()));
  CHECK(delta.allFinite());
  CHECK(delta.cwiseAbs().maxCoeff() > 0);

  // heartbeats flow at the interval while the orchestrator waits
  std::this_thread::sleep_for(std::chrono::milliseconds(2200));
  orch.send(w::Heartbeat{1}, 0);
  orch.send(w::Bye{0}, 0);
  CHECK_FALSE(orch.next_frame().has_value());  // the agent closes after bye
  ra.wait();
  CHECK(ra.agent->runs_completed() == 1);
  CHECK(ra.agent->phase() == ag::Phase::stopped);
  CHECK(ra.agent->fatal_error().empty());
  CHECK(orch.heartbeats >= 1);
  INFO(ra.text());
}

TEST_CASE("agent: malformed frames, replays and silence close with their reason, then it reconnects",
          "[agent][net]") {
  Watchdog dog(std::chrono::seconds(60));
  TempDir tmp;
  TestOrchestrator orch;
  RunningAgent ra(agent_options(orch, tmp.path / "state"));
  orch.serve_enrollment("test-agent");

  auto expect_close = [&](w::CloseReason want) {
    std::optional<w::ErrorNotice> err;
    while (auto f = orch.next_frame()) {
      if (auto* e = std::get_if<w::ErrorNotice>(&f->msg)) err = *e;
    }
    REQUIRE(err.has_value());
    INFO(err->message);
    CHECK(err->reason() == want);
    CHECK_FALSE(err->message.empty());
  };

  // 1. a bad CRC
  orch.serve_hello();
  auto hb = must(w::encode_message(w::Heartbeat{5}, w::Binding{7, 3, 0, orch.next_seq()}));
  hb[hb.size() - 1] ^= 0xFF;
  orch.send_raw(hb);
  expect_close(w::CloseReason::bad_crc);

  // 2. a payload that does not decode (reconnected after the backoff)
  orch.serve_hello();
  auto bad = must(w::encode_frame(w::MessageType::heartbeat, w::Binding{7, 3, 0, orch.next_seq()},
                                  std::vector<std::uint8_t>{1, 2, 3}));
  orch.send_raw(bad);
  expect_close(w::CloseReason::malformed_payload);

  // 3. a replayed sequence number
  orch.serve_hello();
  orch.send(w::Heartbeat{1}, 0);
  orch.rewind_seq(1);
  orch.send(w::Heartbeat{2}, 0);
  expect_close(w::CloseReason::replay);

  // 4. a train_round before any module
  orch.serve_hello();
  w::TrainRound t = small_round(small_model());
  orch.send(t, 1);
  expect_close(w::CloseReason::unexpected_message);

  // 5. silence: 3 heartbeat intervals without a frame
  orch.serve_hello(100);
  expect_close(w::CloseReason::timeout);
  CHECK(orch.heartbeats >= 1);

  // and a normal end
  orch.serve_hello();
  orch.send(w::Bye{0}, 0);
  CHECK_FALSE(orch.next_frame().has_value());
  ra.wait();
  CHECK(ra.agent->runs_completed() == 1);
  CHECK(ra.agent->connections() == 7);  // enrollment + six fleet connections
  INFO(ra.text());
}

TEST_CASE("agent: without enrollment or token the agent stops with a reason", "[agent][net]") {
  Watchdog dog(std::chrono::seconds(30));
  TempDir tmp;
  TestOrchestrator orch;
  ag::AgentOptions o = agent_options(orch, tmp.path / "state");
  o.token.reset();
  RunningAgent ra(std::move(o));
  ra.wait();
  CHECK(ra.agent->phase() == ag::Phase::stopped);
  CHECK(ra.agent->fatal_error().find("no --token") != std::string::npos);
}

TEST_CASE("agent: the fleetdl-agent program reports usage errors in one line", "[agent]") {
  const std::string exe = FLEETDL_AGENT_EXE;
  auto run = [&](const std::string& args) {
    const std::string cmd = exe + " " + args + " 2>&1";
    std::FILE* p = ::popen(cmd.c_str(), "r");
    REQUIRE(p != nullptr);
    std::string out;
    char buf[512];
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    const int st = ::pclose(p);
    return std::make_pair(WEXITSTATUS(st), out);
  };
  auto [code, out] = run("--name x --state-dir /tmp/none --connect h:1:2");
  CHECK(code == 2);
  CHECK(out == "fleetdl-agent: --budget is required\n");
  auto [code2, out2] = run("--help");
  CHECK(code2 == 0);
  CHECK(out2.find("--slowdown") != std::string::npos);
  TempDir tmp;
  auto [code3, out3] = run("--name x --state-dir " + (tmp.path / "s").string() + " --budget 1M --connect 127.0.0.1:1:2");
  CHECK(code3 == 1);
  CHECK(out3.find("fleetdl-agent: not enrolled and no --token given") != std::string::npos);
}
