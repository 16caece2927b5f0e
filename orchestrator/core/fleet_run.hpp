// orchestrator/core/fleet_run.hpp — the round engine of a real fleet: the
// federated training run that `fleetdl fleet run` and `fleet resume` drive
// (docs/fleet.md).
//
// A run's config is the simulator's config (docs/fl-simulate.md: model,
// dataset, partition, client, strategy, selection, codec, rounds, seed; the
// same keys, the same rules) plus a "fleet" object for what only a real
// fleet has: how long to wait for devices, the round deadline in wall time,
// the listeners' address and ports, the discovery port and the heartbeat.
// "clients" is the number of devices the run trains on: one data shard each.
//
// The engine makes the simulator's choices with real clients: selection from
// Rng(seed) forked by round, each client's local seed forked by round and
// shard, aggregation in shard order. Each round is committed to the database
// in one transaction (round row, one cost row per selected device with the
// exact frame bytes sent and received, the global parameters), so a killed
// orchestrator resumes from the newest committed round and, with the same
// updates arriving, ends with the same parameters.
#pragma once

#include "store.hpp"

#include "fleetdl/core/error.hpp"
#include "fleetdl/sim/config.hpp"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace fleetdl::core {

/// The "fleet" object of a run config.
struct FleetSection {
  double wait_seconds = 60;             ///< for the run's devices to connect (and accept the module)
  double round_deadline_seconds = 120;  ///< wall time; later updates are stragglers
  std::string bind_address = "127.0.0.1";
  std::uint16_t enroll_port = 47801;    ///< 0: ephemeral
  std::uint16_t fleet_port = 47802;     ///< 0: ephemeral
  bool discovery = true;                ///< answer agents' UDP announcements
  std::uint16_t discovery_port = 47800;
  std::uint32_t heartbeat_ms = 1000;
  /// HeteroFL: the sub-model widths, widest first; each device trains the
  /// widest whose training memory its budget holds.
  std::vector<double> heterofl_widths = {1.0, 0.5, 0.25, 0.125};
};

struct FleetConfig {
  sim::SimConfig fl;
  FleetSection fleet;
};

/// Parse a run config (JSON text). Errors name the file and the key.
Result<FleetConfig> parse_fleet_config(std::string_view text, const std::string& path);

struct FleetRunOptions {
  std::string db_path;
  std::filesystem::path ca_dir;  ///< the fleet CA (created when missing)
  int threads = 1;               ///< evaluation threads
  std::string data_dir;          ///< overrides the config's dataset.dir when non-empty
  /// Called with one line per notable step (devices, rounds); may be empty.
  std::function<void(const std::string&)> log;
  /// Called after each committed or abandoned round.
  std::function<void(const RoundRecord&)> on_round;
  /// Test hook: called after round `r` is committed (e.g. to kill the process).
  std::function<void(std::int64_t round)> after_commit;
};

/// Start a new run; returns its id once every round is done. On an error the
/// run is marked failed (when it was created) and the error names the cause.
Result<std::int64_t> fleet_run(const FleetConfig& config, const std::string& config_text, const FleetRunOptions& o);

/// Continue run `run` from its newest committed round, with the config it was
/// started with.
Result<std::int64_t> fleet_resume(std::int64_t run, const FleetRunOptions& o);

// ---------------------------------------------------------------- inference
/// `fleetdl fleet infer`: distributed inference over a real fleet.
///   * A NoNN module directory (`partition nonn`, partition/modules.hpp): each
///     student goes to its own device (placed within the budgets, balancing
///     predicted time); every batch of test images goes to every student, each
///     answers with only its features, and the orchestrator concatenates them
///     and applies the combiner.
///   * One .fdl model: the same model on `replicas` devices; the batches are
///     shared out, one outstanding batch per device.
/// Recorded as a run of kind `infer` with one round: one cost row per device
/// (module and request frames down, response frames up, compute, peak memory
/// against budget), its assignments and events.
struct FleetInferOptions {
  std::string db_path;
  std::filesystem::path ca_dir;
  std::string modules;            ///< a NoNN module directory or one .fdl model
  std::string data_dir;           ///< Fashion-MNIST; empty = the default directory
  long test_limit = -1;           ///< first N test images; -1 = all
  long batch = 32;                ///< images per request (a batch's activations count against the budget)
  long replicas = 1;              ///< one .fdl model: devices sharing the batches
  int threads = 1;                ///< for the local combiner and reference pass
  double request_timeout_seconds = 120;  ///< per batch
  FleetSection fleet;             ///< listeners, discovery, wait_seconds
  std::function<void(const std::string&)> log;
};

struct FleetInferDevice {
  std::int64_t device = 0;
  std::string name;
  std::string module;             ///< student file name or the model's
  long features = 0;              ///< values it sends per image
  std::int64_t module_bytes = 0;
  std::int64_t bytes_down = 0;    ///< module + request frames
  std::int64_t bytes_up = 0;      ///< response frames
  std::int64_t request_bytes_down = 0;  ///< request frames only
  double compute_ms = 0;          ///< as the device reported
  std::int64_t peak_memory_bytes = 0;   ///< as the device's assign_result reported
  std::int64_t budget_bytes = 0;
  long images = 0;                ///< images it processed
  bool lost = false;              ///< disconnected or failed mid-run (replicas: its batches went to the others)
};

struct FleetInferResult {
  std::int64_t run = 0;
  long images = 0;
  double accuracy = 0;
  /// Whether the fleet's logits equal, bit for bit, the same modules run in
  /// this process (the unified student for a NoNN set; the model itself).
  std::optional<bool> matches_local;
  double wall_seconds = 0;
  std::vector<FleetInferDevice> devices;
};

/// `config_json` is what the run row records (the CLI's options as JSON).
Result<FleetInferResult> fleet_infer(const FleetInferOptions& o, const std::string& config_json);

}  // namespace fleetdl::core
