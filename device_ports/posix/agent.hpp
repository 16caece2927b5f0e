// device_ports/posix/agent.hpp — the POSIX device agent (docs/agent.md): a
// device, or a process standing in for one, that enrolls with the fleet's
// orchestrator, connects over mutual TLS, reports its capabilities, accepts
// modules that fit its memory budget, trains them locally through
// fl::train_local and serves float inference, with throttles (slowdown,
// bandwidth cap, dropout) to play a weak device, and reconnects with backoff.
//
// The pieces are separate so that tests can drive each one with real files
// and sockets:
//   AgentOptions / parse_options   the command line of fleetdl-agent
//   measure_capabilities           what hello reports
//   StateDir, SeqCounter           the state directory and the persisted seq
//   Backoff                        100 ms doubling to 5 s, +-20% seeded jitter
//   Worker                         module checks, local training, inference
//                                  (no networking)
//   Agent                          the connection state machine on an
//                                  asio::io_context
#pragma once

#include "discovery.hpp"
#include "fleet_ca.hpp"

#include "fleetdl/core/error.hpp"
#include "fleetdl/data/dataset.hpp"
#include "fleetdl/fl/codec.hpp"
#include "fleetdl/fl/scaffold.hpp"
#include "fleetdl/nn/model.hpp"
#include "fleetdl/wire.hpp"

#include <asio.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fleetdl::agent {

// ---------------------------------------------------------------- options
struct AgentOptions {
  std::string name;                   ///< device name (core::is_valid_device_name)
  std::filesystem::path state_dir;    ///< key, certificates, device id, seq
  std::optional<core::EnrollmentToken> token;  ///< needed until enrolled
  std::uint64_t budget_bytes = 0;     ///< memory budget, > 0
  /// Orchestrator host (name or IP) and ports from --connect. Empty host:
  /// the agent finds the orchestrator by announcing itself over UDP
  /// (discovery.hpp) and connects where the invite says.
  std::string host;
  std::uint16_t enroll_port = 0;
  std::uint16_t fleet_port = 0;
  /// Where announces go (--announce-to, repeatable). Empty: the limited
  /// broadcast and 127.0.0.1, on discovery_port.
  std::vector<asio::ip::udp::endpoint> announce_to;
  std::uint16_t discovery_port = wire::kDefaultDiscoveryPort;
  std::uint32_t announce_interval_ms = 500;
  bool discovers() const { return host.empty(); }
  std::string data_dir = FLEETDL_FASHION_MNIST_DIR;
  int threads = 1;
  std::uint64_t seed = 1;
  double slowdown = 1.0;              ///< >= 1
  double bandwidth = 0;               ///< bytes/s cap on sends, 0 = none
  double dropout = 0;                 ///< per train_round (and per infer request) probability in [0, 1]
  unsigned cores = 0;                 ///< 0 = std::thread::hardware_concurrency
  long exit_after_runs = 0;           ///< 0 = never
  std::string log_file;               ///< empty = stderr
};

/// "123", "64K", "512M", "2G" (powers of 1024). Errors name `what`.
Result<std::uint64_t> parse_bytes(std::string_view text, std::string_view what = "size");

/// The command line of fleetdl-agent (argv[0] skipped). A usage error is
/// Errc::invalid_argument with one line of text. `help` is set by --help.
Result<AgentOptions> parse_options(int argc, const char* const* argv, bool* help = nullptr);

/// The --help text.
std::string usage();

// ---------------------------------------------------------------- capabilities
struct Capabilities {
  unsigned cores = 1;
  std::uint64_t ram_bytes = 0;         ///< sysconf physical pages x page size
  std::uint64_t storage_bytes = 0;     ///< statvfs of the state directory: bytes available
  double mac_per_s = 0;                ///< measured with a short Eigen GEMM
  double link_bytes_per_s = 0;         ///< the --bandwidth cap, else 0 = unknown
};

/// Measures what hello reports. The GEMM runs for at most ~100 ms.
Capabilities measure_capabilities(const AgentOptions& o);

/// hello built from the options and capabilities.
wire::Hello make_hello(const AgentOptions& o, const Capabilities& c);

// ---------------------------------------------------------------- state dir
/// The agent's state directory (mode 0700): key.pem (0600), cert.pem,
/// ca.pem, device_id and seq. Every file is written to a temporary file in
/// the directory (mode set before the first byte), fsynced and renamed over
/// the old one, then the directory is fsynced: a reader sees the old or the
/// new content, never a mix.
class StateDir {
 public:
  /// Creates `dir` (0700) if missing; refuses a directory that group or
  /// others may access.
  static Result<StateDir> open(const std::filesystem::path& dir);

  const std::filesystem::path& path() const { return dir_; }
  Result<void> write_atomic(std::string_view name, std::string_view data, unsigned mode = 0600) const;
  Result<std::string> read(std::string_view name) const;
  bool exists(std::string_view name) const;

  struct Enrollment {
    std::uint64_t device_id = 0;
    std::string key_pem, cert_pem, ca_pem;
  };
  /// Whether key, certificate, CA and device id are all present.
  bool enrolled() const;
  Result<Enrollment> load_enrollment() const;
  /// Stores the enrollment; the key first, the device id last, so a crash
  /// in between leaves the directory "not enrolled".
  Result<void> store_enrollment(const Enrollment& e) const;

 private:
  explicit StateDir(std::filesystem::path d) : dir_(std::move(d)) {}
  std::filesystem::path dir_;
};

/// Sequence numbers that never go backwards across restarts: the state
/// directory's `seq` file holds a high-water mark reserved in blocks of
/// kBlock; next() hands out numbers below it and moves it (one atomic write
/// per kBlock frames). After a restart numbering resumes at the mark, above
/// anything sent before.
class SeqCounter {
 public:
  static constexpr std::uint64_t kBlock = 1024;
  static Result<SeqCounter> open(const StateDir& dir);
  Result<std::uint64_t> next();
  std::uint64_t peek() const { return next_; }

 private:
  SeqCounter(const StateDir* d, std::uint64_t start) : dir_(d), next_(start), mark_(start) {}
  const StateDir* dir_;
  std::uint64_t next_, mark_;
};

// ---------------------------------------------------------------- backoff
/// Reconnection delays: 100 ms doubling to 5 s, each with +-20% jitter from
/// a seeded generator (so a fleet of agents started together spreads out,
/// reproducibly).
class Backoff {
 public:
  static constexpr double kFirstMs = 100, kMaxMs = 5000, kJitter = 0.2;
  explicit Backoff(std::uint64_t seed);
  std::chrono::milliseconds next();
  void reset() { base_ms_ = kFirstMs; }

 private:
  double base_ms_ = kFirstMs;
  std::uint64_t state_;
};

// ---------------------------------------------------------------- the work
/// assign_result reason codes (application-defined, docs/agent.md).
enum class RefusalCode : std::uint16_t {
  accepted = 0,
  over_budget = 1,        ///< inference memory (.fdl) or blob + arena (micro blob) above the budget
  unsupported_kind = 2,   ///< a valid micro blob the agent cannot serve (not one input and one output of batch 1)
  invalid_module = 3,     ///< the .fdl bytes do not decode, or the micro blob fails micro::verify
};

/// Training memory of a model, the simulator's estimate
/// (sim::training_memory_bytes over sim::model_cost): parameters, gradients,
/// one optimizer slot with momentum, the received global copy (plus c and
/// c_i with SCAFFOLD) and the activations of one batch.
std::uint64_t training_memory(const nn::Model<float>& m, long batch, bool momentum, bool scaffold);

/// What a .fdl module needs to be held and run on one image:
/// partition::inference_demand's memory (weights and buffers plus the largest
/// layer's input + output activations), rounded up. Checked at assignment,
/// when nothing says yet whether the module will train or serve; a
/// train_round is checked again with its own batch and optimizer
/// (training_memory), and an infer_request needs its batch's activations.
std::uint64_t inference_memory(const nn::Model<float>& m);

/// Everything the agent computes, without networking: module checks, the
/// local shard (cached across rounds), local training, inference. Not
/// thread-safe: the Agent runs one job at a time on its worker thread.
class Worker {
 public:
  Worker(std::string data_dir, std::uint64_t budget_bytes, int threads, double slowdown);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  /// Check an assembled module and keep it if it fits. The result is what
  /// assign_result says. A .fdl model must fit its training memory; an int8
  /// micro blob must pass micro::verify and fit blob + arena bytes (serves
  /// inference only). Accepting one kind drops a module of the other; a
  /// refused module leaves the previous one in place.
  wire::AssignResult assign(std::uint64_t module_id, wire::ModuleKind kind, std::span<const std::uint8_t> bytes);
  /// Whether a module (float model or micro blob) is accepted.
  bool has_model() const { return model_ != nullptr || micro_ != nullptr; }
  /// The float model, or nullptr (none, or a micro blob is assigned).
  const nn::Model<float>* model() const { return model_.get(); }
  /// Whether the accepted module is an int8 micro blob.
  bool has_micro_blob() const { return micro_ != nullptr; }
  /// Bytes the micro blob is charged against the budget (blob + arena), or 0.
  std::uint64_t micro_memory_bytes() const;
  std::uint64_t module_id() const { return module_id_; }

  /// The local data of a round: the Fashion-MNIST training set's first
  /// train_limit images, partitioned by sim::make_partition as a run config
  /// with this partition spec, shard_count clients and seed partition_seed
  /// would be, client shard_index; then the first example_limit examples.
  Result<data::Dataset<float>> shard(const wire::RoundConfig& c);

  /// The update of one round, or an error (a module over the budget for this
  /// round's batch comes back as Errc::limit_exceeded; a micro blob, which
  /// cannot be trained, as Errc::unsupported).
  Result<wire::Update> train(const wire::TrainRound& t, std::uint64_t bytes_received);
  /// Float samples in (dims[0] samples, each the module's input in CHW
  /// order), float outputs out (dims {n, outputs}). With a micro blob each
  /// sample is quantized to the blob's input, run through micro::Interpreter
  /// and dequantized, as `fleetdl eval` runs a blob.
  Result<wire::InferResponse> infer(const wire::InferRequest& r);

 private:
  struct Cache;
  struct MicroModule;
  wire::AssignResult assign_micro(wire::AssignResult r, std::span<const std::uint8_t> bytes);
  Result<wire::InferResponse> infer_micro(const wire::InferRequest& r);
  std::string data_dir_;
  std::uint64_t budget_;
  int threads_;
  double slowdown_;
  std::unique_ptr<nn::Model<float>> model_;
  std::unique_ptr<MicroModule> micro_;  ///< the int8 blob, its arena and interpreter
  std::uint64_t module_id_ = 0;
  std::unique_ptr<Cache> cache_;
};

// ---------------------------------------------------------------- the agent
/// Where the agent is in its conversation.
enum class Phase { idle, discovering, enrolling, connecting, hello_sent, serving, backing_off, stopped };
const char* phase_name(Phase p);

/// The agent: a state machine on one io_context (single-threaded; training
/// and inference run on a worker thread and post their results back).
/// start() begins enrolling or connecting; after each bye it connects again
/// until exit_after_runs runs are done, then stops and lets run() return.
class Agent {
 public:
  using LogFn = std::function<void(const std::string&)>;
  static Result<std::unique_ptr<Agent>> create(asio::io_context& io, AgentOptions o, Capabilities caps,
                                               LogFn log = {});
  ~Agent();

  void start();
  /// Closes the connection, cancels the timers, joins the worker; run() returns.
  void shutdown();

  Phase phase() const { return phase_; }
  long runs_completed() const { return runs_; }
  std::uint64_t device_id() const { return device_id_; }
  /// Why the last connection closed (normal after a bye).
  wire::CloseReason last_close_reason() const { return last_close_; }
  const std::string& last_close_text() const { return last_close_text_; }
  long connections() const { return connections_; }
  /// Why the agent stopped on its own (not enrolled without a token, an
  /// unusable state directory, ...); empty otherwise.
  std::string fatal_error() const;

  struct Impl;

 private:
  explicit Agent(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  Phase phase_ = Phase::idle;
  long runs_ = 0, connections_ = 0;
  std::uint64_t device_id_ = 0;
  wire::CloseReason last_close_ = wire::CloseReason::normal;
  std::string last_close_text_;
  friend struct Impl;
};

/// Whether a dropout happens in `round`: a draw from Rng(seed).fork(round).
/// Inference requests draw with round = kInferDrawBase + their count (1, 2, ...).
bool drops_in_round(std::uint64_t seed, std::uint32_t round, double p);
inline constexpr std::uint32_t kInferDrawBase = 0x80000000u;

}  // namespace fleetdl::agent
