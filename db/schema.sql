-- db/schema.sql: the full, current schema of the fleetdl record (fleet.db).
-- user_version: 1
--
-- This file documents the latest schema; it is what db/migrations/0001..N
-- produce, applied in order to an empty database. A test (tests/core,
-- "[store] schema.sql equals the migrated schema") builds one database from
-- this file and one through the migrations and compares their sqlite_master,
-- columns, foreign keys and indexes. When you add migration N, bring this file
-- to what N produces and bump the user_version line above (db/embed_sql.py
-- refuses a mismatch at build time).
--
-- The store also sets PRAGMA application_id = 0x46444C46 ('FDLF') so it can
-- tell a fleetdl database from somebody else's SQLite file, and opens every
-- connection with journal_mode=WAL, foreign_keys=ON, busy_timeout and
-- synchronous=FULL. docs/fleet-db.md describes the tables and statuses.
--
-- Conventions: every table is STRICT. Times are Unix time in milliseconds
-- (INTEGER, *_at); durations carry their unit in the name (compute_ms,
-- round_seconds); sizes are bytes (*_bytes). Status columns are TEXT with a
-- named CHECK, so a violation reports the constraint's name.

CREATE TABLE devices (
  id                    INTEGER PRIMARY KEY AUTOINCREMENT,
  name                  TEXT    NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 128),
  cert_fingerprint      TEXT    UNIQUE,  -- SHA-256 of the device certificate (hex); NULL for simulated devices
  enrolled_at           INTEGER NOT NULL,
  cores                 INTEGER NOT NULL CHECK (cores >= 1),
  ram_bytes             INTEGER NOT NULL CHECK (ram_bytes >= 0),
  storage_bytes         INTEGER NOT NULL CHECK (storage_bytes >= 0),
  macs_per_second       REAL    NOT NULL CHECK (macs_per_second >= 0),
  link_bytes_per_second REAL    NOT NULL CHECK (link_bytes_per_second >= 0),
  memory_budget_bytes   INTEGER NOT NULL CHECK (memory_budget_bytes >= 0),
  profile               TEXT    NOT NULL DEFAULT '',
  last_seen             INTEGER,
  status                TEXT    NOT NULL DEFAULT 'enrolled'
    CONSTRAINT devices_status CHECK (status IN ('enrolled', 'online', 'offline', 'revoked'))
) STRICT;

CREATE TABLE enrollment_tokens (
  identity    TEXT    PRIMARY KEY CHECK (length(identity) BETWEEN 1 AND 128),
  secret      BLOB    NOT NULL CHECK (length(secret) BETWEEN 16 AND 64),  -- the TLS 1.3 external PSK
  created_at  INTEGER NOT NULL,
  expires_at  INTEGER NOT NULL CHECK (expires_at > created_at),
  consumed_at INTEGER,
  consumed_by INTEGER REFERENCES devices(id) ON DELETE SET NULL,
  CONSTRAINT enrollment_tokens_consumed CHECK (consumed_by IS NULL OR consumed_at IS NOT NULL)
) STRICT;
CREATE INDEX enrollment_tokens_by_device ON enrollment_tokens(consumed_by);

CREATE TABLE runs (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  created_at  INTEGER NOT NULL,
  kind        TEXT    NOT NULL CONSTRAINT runs_kind CHECK (kind IN ('train', 'infer')),
  config      TEXT    NOT NULL CONSTRAINT runs_config_json CHECK (json_valid(config)),
  seed        INTEGER NOT NULL,  -- the uint64 seed, stored as its two's-complement int64
  status      TEXT    NOT NULL DEFAULT 'running'
    CONSTRAINT runs_status CHECK (status IN ('running', 'finished', 'failed', 'abandoned')),
  finished_at INTEGER,
  CONSTRAINT runs_finished_at CHECK ((status = 'running') = (finished_at IS NULL))
) STRICT;

CREATE TABLE rounds (
  run           INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  round         INTEGER NOT NULL CHECK (round >= 0),
  started_at    INTEGER NOT NULL,
  finished_at   INTEGER NOT NULL CHECK (finished_at >= started_at),
  status        TEXT    NOT NULL CONSTRAINT rounds_status CHECK (status IN ('committed', 'abandoned')),
  selected      INTEGER NOT NULL CHECK (selected >= 0),
  completed     INTEGER NOT NULL CHECK (completed BETWEEN 0 AND selected),
  test_accuracy REAL    CHECK (test_accuracy BETWEEN 0 AND 1),
  test_loss     REAL    CHECK (test_loss >= 0),
  train_loss    REAL    CHECK (train_loss >= 0),
  round_seconds REAL    NOT NULL CHECK (round_seconds >= 0),  -- virtual clock in simulation, wall clock on a fleet
  bytes_up      INTEGER NOT NULL CHECK (bytes_up >= 0),
  bytes_down    INTEGER NOT NULL CHECK (bytes_down >= 0),
  PRIMARY KEY (run, round)
) STRICT, WITHOUT ROWID;

CREATE TABLE device_round_costs (
  run               INTEGER NOT NULL,
  round             INTEGER NOT NULL,
  device            INTEGER NOT NULL REFERENCES devices(id) ON DELETE RESTRICT,
  bytes_up          INTEGER NOT NULL CHECK (bytes_up >= 0),
  bytes_down        INTEGER NOT NULL CHECK (bytes_down >= 0),
  compute_ms        REAL    NOT NULL CHECK (compute_ms >= 0),
  peak_memory_bytes INTEGER NOT NULL CHECK (peak_memory_bytes >= 0),
  budget_bytes      INTEGER NOT NULL CHECK (budget_bytes >= 0),
  energy_joules     REAL    NOT NULL CHECK (energy_joules >= 0),
  status            TEXT    NOT NULL CONSTRAINT device_round_costs_status
    CHECK (status IN ('ok', 'straggler', 'dropped', 'rejected', 'duplicate', 'abandoned')),
  examples          INTEGER NOT NULL CHECK (examples >= 0),
  PRIMARY KEY (run, round, device),
  FOREIGN KEY (run, round) REFERENCES rounds(run, round) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;
CREATE INDEX device_round_costs_by_device ON device_round_costs(device);

CREATE TABLE assignments (
  id                   INTEGER PRIMARY KEY,
  run                  INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  device               INTEGER NOT NULL REFERENCES devices(id) ON DELETE RESTRICT,
  module_name          TEXT    NOT NULL CHECK (length(module_name) >= 1),
  module_kind          TEXT    NOT NULL
    CONSTRAINT assignments_module_kind CHECK (module_kind IN ('whole', 'student', 'segment')),
  module_bytes         INTEGER NOT NULL CHECK (module_bytes >= 0),
  peak_memory_bytes    INTEGER NOT NULL CHECK (peak_memory_bytes >= 0),
  predicted_latency_ms REAL    NOT NULL CHECK (predicted_latency_ms >= 0),
  assigned_at          INTEGER NOT NULL
) STRICT;
CREATE INDEX assignments_by_run ON assignments(run, device);
CREATE INDEX assignments_by_device ON assignments(device);

CREATE TABLE events (
  id      INTEGER PRIMARY KEY,
  at      INTEGER NOT NULL,
  run     INTEGER REFERENCES runs(id) ON DELETE CASCADE,
  device  INTEGER REFERENCES devices(id) ON DELETE SET NULL,
  kind    TEXT    NOT NULL CHECK (length(kind) >= 1),
  message TEXT    NOT NULL
) STRICT;
CREATE INDEX events_by_run ON events(run, id);
CREATE INDEX events_by_device ON events(device);

CREATE TABLE checkpoints (
  run              INTEGER NOT NULL,
  round            INTEGER NOT NULL,
  parameters       BLOB    NOT NULL,  -- the global model's flat parameters after the round
  parameters_crc32 INTEGER NOT NULL CHECK (parameters_crc32 BETWEEN 0 AND 4294967295),
  state            BLOB    NOT NULL,  -- strategy, optimizer and RNG state, opaque to the store
  state_crc32      INTEGER NOT NULL CHECK (state_crc32 BETWEEN 0 AND 4294967295),
  PRIMARY KEY (run, round),
  FOREIGN KEY (run, round) REFERENCES rounds(run, round) ON DELETE CASCADE
) STRICT;
