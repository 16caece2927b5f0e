// orchestrator/core/store.hpp — the fleet's SQLite record: fleetdl::core::Store.
//
// One SQLite file (fleet.db) holds the devices, the one-time enrollment
// tokens, runs, rounds, per-device per-round costs, module assignments, events
// and a checkpoint of the global model per round. Reports are rendered from
// it; `fleetdl fleet resume` continues a run from its last committed round.
//
// Store is an RAII, move-only owner of one sqlite3 connection. open() sets
// journal_mode=WAL, foreign_keys=ON, busy_timeout and synchronous, and brings
// the schema up to date inside one BEGIN IMMEDIATE transaction (migrations by
// PRAGMA user_version, embedded in the program at build time from
// db/migrations/). Every write is one BEGIN IMMEDIATE transaction that commits
// or rolls back as a unit; commit_round() writes a round, all its device costs
// and its checkpoint together, so a killed orchestrator leaves the whole round
// or none of it. Every fallible call returns Result<T>; messages are one line
// and name the culprit (the file, the run, the round, the token).
//
// Threads: a Store is used by one thread at a time. Open one Store per thread
// (or per process) on the same file; WAL lets readers run while a writer
// commits, and busy_timeout makes writers wait for each other.
//
// Times are Unix time in milliseconds (UnixMs). docs/fleet-db.md describes the
// tables, statuses, migrations policy and durability choices.
#pragma once

#include "fleetdl/core/error.hpp"

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

struct sqlite3;

namespace fleetdl::core {

using Blob = std::vector<std::uint8_t>;
using UnixMs = std::int64_t;

/// The current time as Unix milliseconds (system clock).
UnixMs unix_ms_now();

/// PRAGMA application_id of a fleetdl database: 'FDLF'.
inline constexpr std::int32_t fleet_application_id = 0x46444C46;

/// One schema step: running `sql` on a database at user_version `version - 1`
/// brings it to `version`.
struct Migration {
  int version = 0;
  std::string_view name;  ///< file name without .sql, e.g. "0001_initial"
  std::string_view sql;
};

/// The migrations compiled into this program (db/migrations/*.sql), in order.
std::span<const Migration> builtin_migrations();
/// The schema version this program writes: builtin_migrations().size().
int latest_schema_version();
/// db/schema.sql as it was at build time: the documented full schema.
std::string_view documented_schema();

// ------------------------------------------------------------------ statuses
enum class DeviceStatus { enrolled, online, offline, revoked };
enum class RunKind { train, infer };
enum class RunStatus { running, finished, failed, abandoned };
enum class RoundStatus { committed, abandoned };
/// ok: update aggregated; straggler: arrived after the deadline (not
/// aggregated); dropped: never answered; rejected: refused by the robust
/// aggregator or a verifier; duplicate: a second update for the round;
/// abandoned: the round was abandoned while the device worked on it.
enum class CostStatus { ok, straggler, dropped, rejected, duplicate, abandoned };
/// whole: the entire model; student: a NoNN student; segment: a layer split.
enum class ModuleKind { whole, student, segment };

const char* to_string(DeviceStatus s);
const char* to_string(RunKind k);
const char* to_string(RunStatus s);
const char* to_string(RoundStatus s);
const char* to_string(CostStatus s);
const char* to_string(ModuleKind k);

std::optional<DeviceStatus> parse_device_status(std::string_view s);
std::optional<RunKind> parse_run_kind(std::string_view s);
std::optional<RunStatus> parse_run_status(std::string_view s);
std::optional<RoundStatus> parse_round_status(std::string_view s);
std::optional<CostStatus> parse_cost_status(std::string_view s);
std::optional<ModuleKind> parse_module_kind(std::string_view s);

// ------------------------------------------------------------------- records
struct DeviceCapabilities {
  std::int64_t cores = 1;
  std::int64_t ram_bytes = 0;
  std::int64_t storage_bytes = 0;
  double macs_per_second = 0;
  double link_bytes_per_second = 0;
  std::int64_t memory_budget_bytes = 0;
  std::string profile;  ///< device profile name ("" when none)
};

struct DeviceRecord {
  std::int64_t id = 0;  ///< assigned by the store; ignored by upsert_device
  std::string name;     ///< unique
  std::optional<std::string> cert_fingerprint;  ///< SHA-256 of the certificate (hex); unique
  UnixMs enrolled_at = 0;
  DeviceCapabilities capabilities;
  std::optional<UnixMs> last_seen;
  DeviceStatus status = DeviceStatus::enrolled;
};

/// An enrollment token as listed (the secret is never read back except by
/// consume_token()).
struct TokenRecord {
  std::string identity;
  UnixMs created_at = 0;
  UnixMs expires_at = 0;
  std::optional<UnixMs> consumed_at;
  std::optional<std::int64_t> consumed_by;
};

struct RunRecord {
  std::int64_t id = 0;
  UnixMs created_at = 0;
  RunKind kind = RunKind::train;
  std::string config_json;
  std::uint64_t seed = 0;
  RunStatus status = RunStatus::running;
  std::optional<UnixMs> finished_at;
};

/// One round of a run. `status` is set by commit_round / abandon_round.
struct RoundRecord {
  std::int64_t run = 0;
  std::int64_t round = 0;  ///< >= 0; round 0 may hold the initial model
  UnixMs started_at = 0;
  UnixMs finished_at = 0;
  RoundStatus status = RoundStatus::committed;
  std::int64_t selected = 0;   ///< devices selected; one cost row each
  std::int64_t completed = 0;  ///< devices whose update was aggregated
  std::optional<double> test_accuracy;  ///< in [0, 1]
  std::optional<double> test_loss;
  std::optional<double> train_loss;
  double round_seconds = 0;  ///< virtual clock in simulation, wall clock on a fleet
  std::int64_t bytes_up = 0;
  std::int64_t bytes_down = 0;
};

/// What one device cost in one round.
struct DeviceCost {
  std::int64_t device = 0;
  std::int64_t bytes_up = 0;
  std::int64_t bytes_down = 0;
  double compute_ms = 0;
  std::int64_t peak_memory_bytes = 0;
  std::int64_t budget_bytes = 0;
  double energy_joules = 0;
  CostStatus status = CostStatus::ok;
  std::int64_t examples = 0;
};

/// A DeviceCost as read back for reports, with its round.
struct DeviceRoundCost {
  std::int64_t round = 0;
  DeviceCost cost;
};

/// The global model after a round plus whatever the orchestrator needs to
/// continue bit-exactly (strategy, optimizer and RNG state). The store keeps a
/// CRC-32 of each and checks it on every read.
struct Checkpoint {
  Blob parameters;
  Blob state;
};

/// A round with its checkpoint: where `fleet resume` continues from.
struct CheckpointedRound {
  RoundRecord round;
  Checkpoint checkpoint;
};

struct Assignment {
  std::int64_t id = 0;  ///< assigned by the store
  std::int64_t run = 0;
  std::int64_t device = 0;
  std::string module_name;
  ModuleKind module_kind = ModuleKind::whole;
  std::int64_t module_bytes = 0;
  std::int64_t peak_memory_bytes = 0;
  double predicted_latency_ms = 0;
  UnixMs assigned_at = 0;
};

struct Event {
  std::int64_t id = 0;  ///< assigned by the store; events read back in id order
  UnixMs at = 0;
  std::optional<std::int64_t> run;
  std::optional<std::int64_t> device;
  std::string kind;  ///< short machine-readable kind: "enrolled", "dropout", ...
  std::string message;
};

/// Per device over one run: memory against budget and totals (for reports).
struct DeviceRunSummary {
  std::int64_t device = 0;
  std::string name;
  std::int64_t rounds = 0;              ///< cost rows of this device in the run
  std::int64_t budget_bytes = 0;        ///< largest budget recorded
  std::int64_t max_peak_memory_bytes = 0;
  std::int64_t rounds_over_budget = 0;  ///< rounds with peak memory above the budget
  std::int64_t bytes_up = 0;
  std::int64_t bytes_down = 0;
  double compute_ms = 0;
  double energy_joules = 0;
};

/// The connection's settings as SQLite reports them.
struct StoreSettings {
  std::string journal_mode;  ///< "wal"
  bool foreign_keys = false;
  std::int64_t busy_timeout_ms = 0;
  std::int64_t synchronous = 0;  ///< 0 off, 1 normal, 2 full, 3 extra
  std::int64_t user_version = 0;
  std::int64_t application_id = 0;
};

struct OpenOptions {
  /// How long a write waits for another writer's transaction (sqlite3_busy_timeout).
  int busy_timeout_ms = 5000;
  /// Create the file when it does not exist (mode 0600: it holds PSK secrets).
  bool create = true;
  /// synchronous=FULL (default) or NORMAL; see store.cpp for why FULL.
  bool synchronous_full = true;
  /// Migrations to apply instead of builtin_migrations() (tests of the
  /// migration machinery). Versions must be 1..N in order.
  std::span<const Migration> migrations = {};
  /// Open for reading only (reports): PRAGMA query_only, so every write fails
  /// with SQLite's "attempt to write a readonly database"; never creates the
  /// file, never migrates (a schema older than the program's is refused too),
  /// leaves journal mode and synchronous as they are, and never checkpoints a
  /// WAL that already holds frames on close, so the database file keeps its
  /// bytes. (The connection itself is read-write when the OS allows it: a
  /// SQLITE_OPEN_READONLY connection cannot take the lock that removes the
  /// empty -wal and -shm files on close and would leave them behind.)
  bool read_only = false;
};

class Store {
 public:
  /// Open (creating when allowed) and migrate `path`. Refused, with the file
  /// left as it was: a file that is not SQLite, an SQLite file of another
  /// application, a schema newer than this program knows, a failed migration.
  static Result<Store> open(const std::string& path, const OpenOptions& options = {});

  Store(Store&& other) noexcept;
  Store& operator=(Store&& other) noexcept;
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;
  ~Store();

  const std::string& path() const noexcept { return path_; }
  int schema_version() const noexcept { return schema_version_; }
  Result<StoreSettings> settings();
  /// PRAGMA integrity_check, PRAGMA foreign_key_check and every checkpoint's CRCs.
  Result<void> integrity_check();

  // ------------------------------------------------------- enrollment tokens
  /// A one-time token: `secret` (16..64 bytes) is the TLS 1.3 PSK for `identity`.
  Result<void> add_token(std::string_view identity, std::span<const std::uint8_t> secret,
                         UnixMs created_at, UnixMs expires_at);
  /// Atomically mark the token used and return its secret. Fails when the
  /// identity is unknown, was already used, or expired (expires_at <= now).
  Result<Blob> consume_token(std::string_view identity, UnixMs now);
  /// Record which device a consumed token enrolled.
  Result<void> bind_token_device(std::string_view identity, std::int64_t device);
  Result<std::vector<TokenRecord>> tokens();

  // ----------------------------------------------------------------- devices
  /// Insert, or update the device of the same name (its id and first
  /// enrolled_at are kept; last_seen is kept when the record has none).
  Result<std::int64_t> upsert_device(const DeviceRecord& device);
  Result<void> set_device_status(std::int64_t device, DeviceStatus status);
  Result<void> set_device_seen(std::int64_t device, UnixMs at);
  Result<DeviceRecord> device(std::int64_t id);
  Result<std::optional<DeviceRecord>> device_by_name(std::string_view name);
  Result<std::optional<DeviceRecord>> device_by_fingerprint(std::string_view fingerprint);
  Result<std::vector<DeviceRecord>> devices();

  // -------------------------------------------------------------------- runs
  Result<std::int64_t> create_run(RunKind kind, std::string_view config_json, std::uint64_t seed,
                                  UnixMs created_at);
  Result<RunRecord> run(std::int64_t id);
  Result<std::vector<RunRecord>> runs();
  /// finished_at becomes `at` for a terminal status and NULL for running.
  Result<void> set_run_status(std::int64_t run, RunStatus status, UnixMs at);

  // ------------------------------------------------------------------ rounds
  /// One transaction: the round (status committed), one cost row per selected
  /// device (costs.size() == round.selected) and the checkpoint.
  Result<void> commit_round(const RoundRecord& round, std::span<const DeviceCost> costs,
                            const Checkpoint& checkpoint);
  /// Record an abandoned round (status abandoned) and its costs, optionally
  /// with a checkpoint of the unchanged model and the state after the round.
  Result<void> abandon_round(const RoundRecord& round, std::span<const DeviceCost> costs);
  Result<void> abandon_round(const RoundRecord& round, std::span<const DeviceCost> costs,
                             const Checkpoint& checkpoint);
  /// The newest committed round of `run` with its checkpoint; nullopt if none.
  Result<std::optional<CheckpointedRound>> last_committed_round(std::int64_t run);
  /// The newest round of any status that has a checkpoint; nullopt if none.
  Result<std::optional<CheckpointedRound>> last_checkpoint(std::int64_t run);
  /// The number the next round of `run` takes: newest recorded round + 1, or 0.
  Result<std::int64_t> next_round(std::int64_t run);
  Result<Checkpoint> checkpoint(std::int64_t run, std::int64_t round);

  // ---------------------------------------------------- assignments, events
  Result<std::int64_t> add_assignment(const Assignment& assignment);
  Result<std::int64_t> add_event(const Event& event);

  // ------------------------------------------------------- report queries
  /// Run `body` inside one read transaction (BEGIN DEFERRED ... COMMIT), so
  /// every query it makes sees the same snapshot: a report that combines
  /// rounds(), device_costs() and the rest cannot see a round committed
  /// between two of them. `body` must only read (a write inside it may fail
  /// with SQLITE_BUSY); the transaction ends when body returns or throws.
  Result<void> read_snapshot(const std::function<Result<void>()>& body);
  /// All rounds of `run` by round number (accuracy, losses, time, bytes).
  Result<std::vector<RoundRecord>> rounds(std::int64_t run);
  /// All cost rows of `run` by round, then device.
  Result<std::vector<DeviceRoundCost>> device_costs(std::int64_t run);
  /// Per device over `run`: memory against budget, totals; by device id.
  Result<std::vector<DeviceRunSummary>> device_summaries(std::int64_t run);
  Result<std::vector<Assignment>> assignments(std::int64_t run);
  /// Events of `run` (all events when nullopt), oldest first.
  Result<std::vector<Event>> events(std::optional<std::int64_t> run);

 private:
  Store(sqlite3* db, std::string path, int schema_version);
  Result<void> write(std::string_view what, const std::function<Result<void>()>& body);
  Result<void> record_round(std::string_view what, const RoundRecord& round, RoundStatus status,
                            std::span<const DeviceCost> costs, const Checkpoint* checkpoint);
  Result<std::optional<CheckpointedRound>> newest_checkpointed(std::int64_t run, bool committed_only);
  Error sqlite_error(std::string_view what, int rc) const;

  sqlite3* db_ = nullptr;
  std::string path_;
  int schema_version_ = 0;
};

}  // namespace fleetdl::core
