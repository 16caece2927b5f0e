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
#include <string>

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

}  // namespace fleetdl::core
