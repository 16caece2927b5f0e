// tests/core/test_store.cpp — fleetdl::core::Store, the fleet's SQLite record:
// opening and migrating, refusing foreign or newer files without touching
// them, schema.sql against the migrations, one-time tokens, atomic rounds,
// resume points, report queries, concurrency, and SIGKILL at random moments.
#include "store.hpp"

#include "fleetdl/core/crc32.hpp"

#include <catch2/catch.hpp>
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace fs = std::filesystem;
using namespace fleetdl::core;

namespace {

// ------------------------------------------------------------------ helpers
struct TempDir {
  fs::path dir;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "fleetdl-store-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    dir = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string file(const std::string& name) const { return (dir / name).string(); }
};

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << bytes;
}

bool exists(const std::string& path) { return fs::exists(path); }

/// A plain connection to run SQL a test needs behind the store's back.
struct RawDb {
  sqlite3* db = nullptr;
  explicit RawDb(const std::string& path) {
    REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) ==
            SQLITE_OK);
  }
  ~RawDb() { sqlite3_close_v2(db); }
  RawDb(const RawDb&) = delete;
  RawDb& operator=(const RawDb&) = delete;
  void exec(const std::string& sql) {
    char* err = nullptr;
    const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
    INFO(sql << " -> " << (err != nullptr ? err : "ok"));
    sqlite3_free(err);
    REQUIRE(rc == SQLITE_OK);
  }
  std::int64_t integer(const std::string& sql) {
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(st) == SQLITE_ROW);
    const std::int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
  }
  /// Rows of `sql` (with one optional text parameter) as "a|b|c" strings.
  std::vector<std::string> rows(const std::string& sql, const std::string* param = nullptr) {
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
    if (param != nullptr) sqlite3_bind_text(st, 1, param->c_str(), -1, SQLITE_TRANSIENT);
    std::vector<std::string> out;
    while (sqlite3_step(st) == SQLITE_ROW) {
      std::string row;
      for (int c = 0; c < sqlite3_column_count(st); ++c) {
        const auto* t = sqlite3_column_text(st, c);
        // Appends, not "|" + std::string: GCC 12 warns -Wrestrict on the latter at -O2.
        if (c != 0) row += '|';
        row += t != nullptr ? reinterpret_cast<const char*>(t) : "NULL";
      }
      out.push_back(row);
    }
    sqlite3_finalize(st);
    return out;
  }
};

std::int64_t raw_user_version(const std::string& path) {
  RawDb raw(path);
  return raw.integer("PRAGMA user_version");
}

Store open_ok(const std::string& path, const OpenOptions& options = {}) {
  auto s = Store::open(path, options);
  INFO((s.ok() ? std::string("ok") : s.error().message));
  REQUIRE(s.ok());
  return std::move(s).value();
}

template <class T>
void require_ok(const fleetdl::Result<T>& r) {
  INFO((r.ok() ? std::string("ok") : r.error().message));
  REQUIRE(r.ok());
}

template <class T>
std::string error_of(const fleetdl::Result<T>& r) {
  REQUIRE_FALSE(r.ok());
  const std::string& m = r.error().message;
  INFO(m);
  CHECK(m.find('\n') == std::string::npos);  // one line
  CHECK_FALSE(m.empty());
  return m;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

DeviceRecord sample_device(const std::string& name, std::int64_t budget = 256 * 1024) {
  DeviceRecord d;
  d.name = name;
  d.cert_fingerprint = "fp-" + name;
  d.enrolled_at = 1'700'000'000'000;
  d.capabilities = DeviceCapabilities{4, 512 << 20, 8LL << 30, 2.5e9, 1.25e6, budget, "pi-zero-2"};
  d.status = DeviceStatus::online;
  return d;
}

RoundRecord sample_round(std::int64_t run, std::int64_t round, std::int64_t selected) {
  RoundRecord r;
  r.run = run;
  r.round = round;
  r.started_at = 1'700'000'000'000 + round * 1000;
  r.finished_at = r.started_at + 900;
  r.selected = selected;
  r.completed = selected;
  r.test_accuracy = 0.5 + 0.001 * static_cast<double>(round);
  r.test_loss = 1.0 / static_cast<double>(round + 1);
  r.train_loss = 2.0 / static_cast<double>(round + 1);
  r.round_seconds = 0.9;
  r.bytes_up = 1000 * selected;
  r.bytes_down = 2000 * selected;
  return r;
}

std::vector<DeviceCost> sample_costs(const std::vector<std::int64_t>& devices, std::int64_t round) {
  std::vector<DeviceCost> out;
  for (std::size_t i = 0; i < devices.size(); ++i) {
    DeviceCost c;
    c.device = devices[i];
    c.bytes_up = 1000;
    c.bytes_down = 2000;
    c.compute_ms = 10.0 * static_cast<double>(i + 1);
    c.peak_memory_bytes = 200 * 1024 + static_cast<std::int64_t>(i) * 40 * 1024 + round;
    c.budget_bytes = 256 * 1024;
    c.energy_joules = 0.25;
    c.status = i == 3 ? CostStatus::straggler : CostStatus::ok;
    c.examples = 60;
    out.push_back(c);
  }
  return out;
}

Checkpoint sample_checkpoint(std::int64_t round, std::size_t bytes = 64) {
  Checkpoint cp;
  for (std::size_t i = 0; i < bytes; ++i)
    cp.parameters.push_back(static_cast<std::uint8_t>(i * 7 + static_cast<std::size_t>(round)));
  cp.state = {1, 2, 3, static_cast<std::uint8_t>(round)};
  return cp;
}

/// A store with one run and `n` devices, for the round tests.
struct Fixture {
  TempDir tmp;
  std::string path = tmp.file("fleet.db");
  Store store = open_ok(path);
  std::int64_t run = 0;
  std::vector<std::int64_t> devices;
  explicit Fixture(int n = 4) {
    for (int i = 0; i < n; ++i) {
      auto id = store.upsert_device(sample_device("dev-" + std::to_string(i)));
      require_ok(id);
      devices.push_back(*id);
    }
    auto r = store.create_run(RunKind::train, R"({"strategy":"fedavg","rounds":10})", 42, 1'700'000'000'000);
    require_ok(r);
    run = *r;
  }
};

// --------------------------------------------------- schema comparison
/// SQL text without comments and with canonical spacing, so the comparison
/// is about statements, not layout (ALTER TABLE rewrites the stored text).
std::string normalize_sql(const std::string& sql) {
  std::string out;
  bool space = false;
  const auto put = [&](char c) {
    const bool punct = c == '(' || c == ')' || c == ',' || c == ';';
    if (space && !out.empty() && !punct && out.back() != '(') out += ' ';
    space = false;
    out += c;
  };
  for (std::size_t i = 0; i < sql.size();) {
    const char c = sql[i];
    if (c == '\'' || c == '"') {
      const std::size_t j = sql.find(c, i + 1);
      const std::size_t end = j == std::string::npos ? sql.size() : j + 1;
      for (std::size_t k = i; k < end; ++k) put(sql[k]);
      i = end;
    } else if (sql.compare(i, 2, "--") == 0) {
      const std::size_t j = sql.find('\n', i);
      i = j == std::string::npos ? sql.size() : j;
      space = true;
    } else if (sql.compare(i, 2, "/*") == 0) {
      const std::size_t j = sql.find("*/", i + 2);
      i = j == std::string::npos ? sql.size() : j + 2;
      space = true;
    } else if (std::isspace(static_cast<unsigned char>(c)) != 0) {
      space = true;
      ++i;
    } else {
      put(c);
      ++i;
    }
  }
  return out;
}

std::vector<std::string> describe_schema(RawDb& db) {
  std::vector<std::string> out;
  std::vector<std::string> tables;
  for (const std::string& row :
       db.rows("SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_schema ORDER BY type, name")) {
    // The sql column may hold '|': split only the first three fields.
    std::size_t a = row.find('|'), b = row.find('|', a + 1), c = row.find('|', b + 1);
    const std::string type = row.substr(0, a), name = row.substr(a + 1, b - a - 1);
    out.push_back(row.substr(0, c) + "|" + normalize_sql(row.substr(c + 1)));
    if (type == "table") tables.push_back(name);
  }
  for (const std::string& t : tables) {
    for (const std::string& r : db.rows("SELECT * FROM pragma_table_xinfo(?1)", &t)) out.push_back("column " + t + "|" + r);
    for (const std::string& r : db.rows("SELECT * FROM pragma_foreign_key_list(?1)", &t)) out.push_back("fk " + t + "|" + r);
    for (const std::string& r : db.rows("SELECT * FROM pragma_index_list(?1)", &t)) out.push_back("index " + t + "|" + r);
    for (const std::string& idx : db.rows("SELECT name FROM pragma_index_list(?1) ORDER BY name", &t))
      for (const std::string& r : db.rows("SELECT * FROM pragma_index_xinfo(?1)", &idx))
        out.push_back("index column " + idx + "|" + r);
  }
  return out;
}

// ---------------------------------------------------------- crash child
constexpr int kCrashRounds = 120;
constexpr int kCrashDevices = 4;
constexpr std::size_t kCrashParams = 32 * 1024;  // 128 KiB of float parameters per checkpoint

std::uint64_t splitmix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

std::vector<float> initial_params() {
  std::vector<float> p(kCrashParams);
  for (std::size_t i = 0; i < p.size(); ++i) p[i] = static_cast<float>(splitmix(i) >> 40) * 1e-7f;
  return p;
}

/// One "training round": depends on the previous parameters and the round, so
/// a resume that started from the wrong checkpoint ends elsewhere.
void train_round(std::vector<float>& p, std::int64_t round) {
  for (std::size_t i = 0; i < p.size(); ++i)
    p[i] = p[i] * 0.999f +
           static_cast<float>(splitmix(static_cast<std::uint64_t>(round) * kCrashParams + i) >> 44) * 1e-9f;
}

Blob to_blob(const std::vector<float>& p) {
  Blob b(p.size() * sizeof(float));
  std::memcpy(b.data(), p.data(), b.size());
  return b;
}

std::vector<float> from_blob(const Blob& b) {
  std::vector<float> p(b.size() / sizeof(float));
  std::memcpy(p.data(), b.data(), p.size() * sizeof(float));
  return p;
}

/// The forked orchestrator: resume from the last committed round and commit
/// rounds until kCrashRounds, announcing each round on `announce` before its
/// commit. Never returns.
[[noreturn]] void crash_child(const std::string& path, int announce) {
  auto opened = Store::open(path);
  if (!opened) _exit(2);
  Store store = std::move(opened).value();
  std::vector<std::int64_t> devices;
  for (int i = 0; i < kCrashDevices; ++i) {
    auto id = store.upsert_device(sample_device("crash-" + std::to_string(i)));
    if (!id) _exit(3);
    devices.push_back(*id);
  }
  auto runs = store.runs();
  if (!runs) _exit(4);
  std::int64_t run = 0;
  if (runs->empty()) {
    auto r = store.create_run(RunKind::train, "{}", 7, 1);
    if (!r) _exit(5);
    run = *r;
  } else {
    run = runs->front().id;
  }
  auto last = store.last_committed_round(run);
  if (!last) _exit(6);
  std::vector<float> params = initial_params();
  std::int64_t round = 1;
  if (*last) {
    params = from_blob((*last)->checkpoint.parameters);
    // The opaque state says which round it follows: resume must agree.
    if ((*last)->checkpoint.state.size() != 8 || (*last)->checkpoint.state[0] != (*last)->round.round % 251) _exit(7);
    round = (*last)->round.round + 1;
  }
  for (; round <= kCrashRounds; ++round) {
    train_round(params, round);
    Checkpoint cp{to_blob(params), Blob(8, static_cast<std::uint8_t>(round % 251))};
    const std::int64_t r64 = round;
    if (::write(announce, &r64, sizeof r64) != static_cast<ssize_t>(sizeof r64)) _exit(8);
    if (!store.commit_round(sample_round(run, round, kCrashDevices), sample_costs(devices, round), cp))
      _exit(9);
    if (!store.add_event(Event{0, round, run, std::nullopt, "round", "committed"})) _exit(10);
  }
  _exit(0);
}

/// What a reader must find however the writer died: an intact file, rounds
/// 1..n all committed with all their costs, and the checkpoint of round r is
/// exactly the uninterrupted run's parameters after r rounds.
std::int64_t verify_crash_db(const std::string& path, const std::vector<std::uint32_t>& expected_crc) {
  if (!exists(path)) return 0;
  Store store = open_ok(path);
  require_ok(store.integrity_check());
  auto runs = store.runs();
  require_ok(runs);
  if (runs->empty()) return 0;
  REQUIRE(runs->size() == 1);
  const std::int64_t run = runs->front().id;
  auto rounds = store.rounds(run);
  require_ok(rounds);
  auto costs = store.device_costs(run);
  require_ok(costs);
  REQUIRE(costs->size() == rounds->size() * kCrashDevices);
  for (std::size_t i = 0; i < rounds->size(); ++i) {
    const RoundRecord& r = (*rounds)[i];
    REQUIRE(r.round == static_cast<std::int64_t>(i) + 1);
    REQUIRE(r.status == RoundStatus::committed);
    for (int d = 0; d < kCrashDevices; ++d) REQUIRE((*costs)[i * kCrashDevices + static_cast<std::size_t>(d)].round == r.round);
    auto cp = store.checkpoint(run, r.round);
    require_ok(cp);
    REQUIRE(fleetdl::crc32(cp->parameters.data(), cp->parameters.size()) ==
            expected_crc[static_cast<std::size_t>(r.round)]);
  }
  auto last = store.last_committed_round(run);
  require_ok(last);
  if (!rounds->empty()) {
    REQUIRE(last->has_value());
    REQUIRE((*last)->round.round == static_cast<std::int64_t>(rounds->size()));
  }
  return static_cast<std::int64_t>(rounds->size());
}

}  // namespace

// ====================================================================== tests

TEST_CASE("[store] a fresh database gets the latest schema, WAL and foreign keys", "[store]") {
  TempDir tmp;
  const std::string path = tmp.file("fleet.db");
  {
    Store store = open_ok(path);
    CHECK(store.schema_version() == latest_schema_version());
    CHECK(latest_schema_version() == static_cast<int>(builtin_migrations().size()));
    CHECK(store.path() == path);
    auto s = store.settings();
    require_ok(s);
    CHECK(s->journal_mode == "wal");
    CHECK(s->foreign_keys);
    CHECK(s->busy_timeout_ms == 5000);
    CHECK(s->synchronous == 2);  // FULL
    CHECK(s->user_version == latest_schema_version());
    CHECK(s->application_id == fleet_application_id);
    require_ok(store.integrity_check());
  }
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);  // it holds enrollment secrets

  OpenOptions opt;
  opt.busy_timeout_ms = 1234;
  opt.synchronous_full = false;
  Store again = open_ok(path, opt);
  auto s = again.settings();
  require_ok(s);
  CHECK(s->busy_timeout_ms == 1234);
  CHECK(s->synchronous == 1);  // NORMAL

  // ":memory:" works too (no file, journal_mode "memory"), for tests of other parts.
  Store mem = open_ok(":memory:");
  CHECK(mem.schema_version() == latest_schema_version());
  require_ok(mem.create_run(RunKind::train, "{}", 1, 1));

  OpenOptions no_create;
  no_create.create = false;
  const std::string m = error_of(Store::open(tmp.file("missing.db"), no_create));
  CHECK(m == tmp.file("missing.db") + ": no such fleet database");
  CHECK_FALSE(exists(tmp.file("missing.db")));
}

TEST_CASE("[store] reopening is idempotent", "[store]") {
  TempDir tmp;
  const std::string path = tmp.file("fleet.db");
  std::int64_t id = 0;
  {
    Store store = open_ok(path);
    auto r = store.upsert_device(sample_device("alpha"));
    require_ok(r);
    id = *r;
  }
  std::vector<std::string> schema_before;
  {
    RawDb raw(path);
    schema_before = describe_schema(raw);
  }
  for (int i = 0; i < 3; ++i) {
    Store store = open_ok(path);
    CHECK(store.schema_version() == latest_schema_version());
    auto d = store.device(id);
    require_ok(d);
    CHECK(d->name == "alpha");
    auto all = store.devices();
    require_ok(all);
    CHECK(all->size() == 1);
  }
  RawDb raw(path);
  CHECK(describe_schema(raw) == schema_before);
  CHECK(raw.integer("PRAGMA user_version") == latest_schema_version());
}

TEST_CASE("[store] an empty file and a version-0 database are migrated", "[store]") {
  TempDir tmp;
  SECTION("zero-byte file") {
    const std::string path = tmp.file("empty.db");
    write_bytes(path, "");
    Store store = open_ok(path);
    CHECK(store.schema_version() == latest_schema_version());
    require_ok(store.integrity_check());
  }
  SECTION("SQLite file at user_version 0 without tables") {
    const std::string path = tmp.file("v0.db");
    {
      RawDb raw(path);
      raw.exec("CREATE TABLE scratch(x); DROP TABLE scratch;");
      REQUIRE(raw.integer("PRAGMA user_version") == 0);
    }
    Store store = open_ok(path);
    CHECK(store.schema_version() == latest_schema_version());
    CHECK(raw_user_version(path) == latest_schema_version());
    auto id = store.create_run(RunKind::infer, "{}", 1, 1);
    require_ok(id);
  }
}

TEST_CASE("[store] pending migrations run in one transaction", "[store]") {
  TempDir tmp;
  const std::string path = tmp.file("fleet.db");
  const auto builtin = builtin_migrations();
  const int n = static_cast<int>(builtin.size());
  std::vector<Migration> good(builtin.begin(), builtin.end());
  good.push_back(Migration{n + 1, "9999_test_add_notes",
                           "CREATE TABLE notes (id INTEGER PRIMARY KEY, run INTEGER REFERENCES runs(id), "
                           "text TEXT NOT NULL) STRICT;"});
  std::vector<Migration> bad(builtin.begin(), builtin.end());
  bad.push_back(Migration{n + 1, "9999_test_broken",
                          "CREATE TABLE half (x INTEGER) STRICT; INSERT INTO half VALUES (1); "
                          "CREATE TABLE oops (;"});

  SECTION("v1 -> v2 keeps the data") {
    std::int64_t run = 0;
    {
      Store store = open_ok(path);
      auto r = store.create_run(RunKind::train, "{}", 3, 1);
      require_ok(r);
      run = *r;
    }
    OpenOptions opt;
    opt.migrations = good;
    Store store = open_ok(path, opt);
    CHECK(store.schema_version() == n + 1);
    require_ok(store.run(run));
    RawDb raw(path);
    CHECK(raw.integer("PRAGMA user_version") == n + 1);
    CHECK(raw.integer("SELECT count(*) FROM sqlite_schema WHERE name = 'notes'") == 1);
  }
  SECTION("a failing step leaves the database at its previous version, byte for byte") {
    { Store store = open_ok(path); }
    const std::string before = read_bytes(path);
    OpenOptions opt;
    opt.migrations = bad;
    const std::string m = error_of(Store::open(path, opt));
    CHECK(contains(m, path + ": migration 9999_test_broken (schema version " + std::to_string(n) +
                          " -> " + std::to_string(n + 1) + ") failed"));
    CHECK(contains(m, "the database is unchanged"));
    CHECK(read_bytes(path) == before);
    RawDb raw(path);
    CHECK(raw.integer("PRAGMA user_version") == n);
    CHECK(raw.integer("SELECT count(*) FROM sqlite_schema WHERE name = 'half'") == 0);
  }
  SECTION("a failing step on a new file creates nothing") {
    OpenOptions opt;
    opt.migrations = bad;
    error_of(Store::open(path, opt));
    CHECK_FALSE(exists(path));
    CHECK_FALSE(exists(path + "-journal"));
  }
}

TEST_CASE("[store] a newer schema is refused and the file is left as it was", "[store]") {
  TempDir tmp;
  const std::string path = tmp.file("fleet.db");
  const std::string expected = path + ": schema version 9 is newer than this fleetdl supports (" +
                               std::to_string(latest_schema_version()) + "); use a newer fleetdl";
  SECTION("rollback-journal file written by a newer fleetdl") {
    {
      RawDb raw(path);
      raw.exec("CREATE TABLE devices (id INTEGER PRIMARY KEY, future TEXT); INSERT INTO devices VALUES (1, 'x');"
               "PRAGMA user_version = 9; PRAGMA application_id = " + std::to_string(fleet_application_id) + ";");
    }
    const std::string before = read_bytes(path);
    CHECK(error_of(Store::open(path)) == expected);
    CHECK(Store::open(path).error().code == fleetdl::Errc::bad_version);
    CHECK(read_bytes(path) == before);
    CHECK_FALSE(exists(path + "-wal"));
    CHECK_FALSE(exists(path + "-shm"));
    CHECK_FALSE(exists(path + "-journal"));
    CHECK(raw_user_version(path) == 9);
  }
  SECTION("a WAL database of ours raised to version 9 (no application_id either)") {
    { Store store = open_ok(path); }
    {
      RawDb raw(path);
      raw.exec("PRAGMA user_version = 9; PRAGMA application_id = 0;");
    }
    REQUIRE_FALSE(exists(path + "-wal"));  // the last close checkpointed
    const std::string before = read_bytes(path);
    CHECK(error_of(Store::open(path)) == expected);
    CHECK(read_bytes(path) == before);
    CHECK(raw_user_version(path) == 9);
  }
  SECTION("the newer version is still in the -wal file (its writer died before a checkpoint)") {
    { Store store = open_ok(path); }
    {
      RawDb raw(path);
      // Leave the frames in the WAL, as a killed process would.
      REQUIRE(sqlite3_db_config(raw.db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr) == SQLITE_OK);
      raw.exec("PRAGMA wal_autocheckpoint = 0; CREATE TABLE from_the_future (x INTEGER) STRICT;"
               "PRAGMA user_version = 9;");
    }
    REQUIRE(fs::file_size(path + "-wal") > 0);
    const std::string before = read_bytes(path);
    const std::string wal_before = read_bytes(path + "-wal");
    CHECK(error_of(Store::open(path)) == expected);
    CHECK(read_bytes(path) == before);  // the WAL was not checkpointed into it
    CHECK(read_bytes(path + "-wal") == wal_before);
    CHECK(raw_user_version(path) == 9);
  }
}

TEST_CASE("[store] files that are not fleetdl databases are refused unchanged", "[store]") {
  TempDir tmp;
  const std::string path = tmp.file("fleet.db");
  SECTION("not SQLite at all") {
    std::string junk = "this is a model file, not a database\n";
    for (int i = 0; i < 200; ++i) junk += static_cast<char>(i * 37);
    write_bytes(path, junk);
    const std::string m = error_of(Store::open(path));
    CHECK(contains(m, path + ": not an SQLite database"));
    CHECK(Store::open(path).error().code == fleetdl::Errc::bad_magic);
    CHECK(read_bytes(path) == junk);
    CHECK_FALSE(exists(path + "-wal"));
    CHECK_FALSE(exists(path + "-journal"));
  }
  SECTION("somebody else's SQLite file") {
    {
      RawDb raw(path);
      raw.exec("CREATE TABLE recipes (name TEXT); CREATE TABLE cooks (name TEXT);");
    }
    const std::string before = read_bytes(path);
    CHECK(error_of(Store::open(path)) ==
          path + ": not a fleetdl database (user_version 0 but it has tables: cooks, recipes)");
    CHECK(read_bytes(path) == before);
  }
  SECTION("another application's application_id") {
    {
      RawDb raw(path);
      raw.exec("PRAGMA application_id = 1234; PRAGMA user_version = 1; CREATE TABLE t(x);");
    }
    const std::string before = read_bytes(path);
    CHECK(error_of(Store::open(path)) == path + ": not a fleetdl database (application_id 0x000004d2)");
    CHECK(read_bytes(path) == before);
  }
  SECTION("a read-only file") {
    { Store store = open_ok(path); }
    fs::permissions(path, fs::perms::owner_read);
    if (::access(path.c_str(), W_OK) == 0) return;  // running as root: nothing is read-only
    CHECK(error_of(Store::open(path)) == path + ": the file is read-only; the fleet record needs write access");
  }
  SECTION("a directory") {
    fs::create_directory(path);
    CHECK(error_of(Store::open(path)) == path + ": not a regular file");
  }
}

TEST_CASE("[store] db/schema.sql equals the migrated schema", "[store]") {
  TempDir tmp;
  const std::string migrated = tmp.file("migrated.db");
  { Store store = open_ok(migrated); }
  const std::string documented = tmp.file("documented.db");
  {
    RawDb raw(documented);
    raw.exec(std::string(documented_schema()));
  }
  RawDb a(migrated), b(documented);
  const auto da = describe_schema(a), db = describe_schema(b);
  CHECK(da.size() > 50);
  // Report the first difference, not two walls of text.
  for (std::size_t i = 0; i < std::min(da.size(), db.size()); ++i) {
    INFO("entry " << i);
    REQUIRE(da[i] == db[i]);
  }
  CHECK(da.size() == db.size());
  // Every table is STRICT.
  CHECK(a.integer("SELECT count(*) FROM pragma_table_list WHERE schema = 'main' AND type = 'table' "
                  "AND name NOT LIKE 'sqlite_%' AND strict = 0") == 0);
}

TEST_CASE("[store] enrollment tokens are one-time and expire", "[store]") {
  Fixture f;
  Store& s = f.store;
  const Blob secret(32, 0xAB);
  require_ok(s.add_token("tok-1", secret, 1000, 5000));
  require_ok(s.add_token("tok-2", secret, 1000, 2000));
  CHECK(contains(error_of(s.add_token("tok-1", secret, 1000, 5000)), "enrollment token 'tok-1' already exists"));
  CHECK(contains(error_of(s.add_token("short", Blob(8, 1), 1000, 5000)), "add enrollment token 'short'"));
  CHECK(contains(error_of(s.add_token("backwards", secret, 5000, 1000)), "'backwards'"));

  auto got = s.consume_token("tok-1", 4999);
  require_ok(got);
  CHECK(*got == secret);
  CHECK(error_of(s.consume_token("tok-1", 4999)) == "enrollment token 'tok-1' was already used");
  CHECK(error_of(s.consume_token("tok-2", 2000)) == "enrollment token 'tok-2' expired at 1970-01-01T00:00:02Z");
  CHECK(error_of(s.consume_token("nope", 0)) == "enrollment token 'nope' is unknown");
  CHECK(s.consume_token("nope", 0).error().code == fleetdl::Errc::not_found);
  // An identity off the network is quoted safely in the message.
  CHECK(error_of(s.consume_token(std::string("ev\nil\x01", 6), 0)) == "enrollment token 'ev?il?' is unknown");

  require_ok(s.bind_token_device("tok-1", f.devices[0]));
  CHECK(contains(error_of(s.bind_token_device("tok-2", f.devices[0])), "no consumed token"));
  auto list = s.tokens();
  require_ok(list);
  REQUIRE(list->size() == 2);
  CHECK((*list)[0].identity == "tok-1");
  CHECK((*list)[0].consumed_at == 4999);
  CHECK((*list)[0].consumed_by == f.devices[0]);
  CHECK_FALSE((*list)[1].consumed_at.has_value());

  // Two stores (two connections) racing on one token: exactly one wins.
  require_ok(s.add_token("race", secret, 1000, 1'000'000));
  Store other = open_ok(f.path);
  std::atomic<int> wins{0};
  std::thread t([&] {
    if (other.consume_token("race", 2000).ok()) ++wins;
  });
  if (s.consume_token("race", 2000).ok()) ++wins;
  t.join();
  CHECK(wins == 1);
}

TEST_CASE("[store] devices: upsert by name, status, last seen, lookups", "[store]") {
  Fixture f(0);
  Store& s = f.store;
  auto a = s.upsert_device(sample_device("alpha"));
  require_ok(a);
  auto b = s.upsert_device(sample_device("beta"));
  require_ok(b);
  CHECK(*a != *b);
  DeviceRecord changed = sample_device("alpha", 999);
  changed.enrolled_at = 5;  // the first enrollment time is kept
  changed.cert_fingerprint = "fp-new";
  auto a2 = s.upsert_device(changed);
  require_ok(a2);
  CHECK(*a2 == *a);
  auto d = s.device(*a);
  require_ok(d);
  CHECK(d->capabilities.memory_budget_bytes == 999);
  CHECK(d->capabilities.profile == "pi-zero-2");
  CHECK(d->capabilities.macs_per_second == 2.5e9);
  CHECK(d->enrolled_at == 1'700'000'000'000);
  CHECK(d->cert_fingerprint == "fp-new");
  CHECK(d->status == DeviceStatus::online);

  require_ok(s.set_device_status(*a, DeviceStatus::revoked));
  require_ok(s.set_device_seen(*a, 77));
  d = s.device(*a);
  require_ok(d);
  CHECK(d->status == DeviceStatus::revoked);
  CHECK(d->last_seen == 77);
  CHECK(error_of(s.set_device_status(12345, DeviceStatus::online)) == f.path + ": no device 12345");
  CHECK(error_of(s.device(12345)) == f.path + ": no device 12345");

  auto by_name = s.device_by_name("beta");
  require_ok(by_name);
  REQUIRE(by_name->has_value());
  CHECK((*by_name)->id == *b);
  auto by_fp = s.device_by_fingerprint("fp-new");
  require_ok(by_fp);
  REQUIRE(by_fp->has_value());
  CHECK((*by_fp)->name == "alpha");
  auto none = s.device_by_name("gamma");
  require_ok(none);
  CHECK_FALSE(none->has_value());

  DeviceRecord dup = sample_device("gamma");
  dup.cert_fingerprint = "fp-new";  // belongs to alpha
  CHECK(contains(error_of(s.upsert_device(dup)), "upsert device 'gamma'"));
  DeviceRecord bad = sample_device("delta");
  bad.capabilities.cores = 0;
  CHECK(contains(error_of(s.upsert_device(bad)), "cores >= 1"));
  auto all = s.devices();
  require_ok(all);
  CHECK(all->size() == 2);

  // updates (every hello) use up no id, nor do refused inserts (rolled
  // back): the next new device takes the next one
  for (int i = 0; i < 3; ++i) require_ok(s.upsert_device(changed));
  auto e = s.upsert_device(sample_device("epsilon"));
  require_ok(e);
  CHECK(*e == *b + 1);
}

TEST_CASE("[store] runs: create, read, status", "[store]") {
  Fixture f(0);
  Store& s = f.store;
  auto id = s.create_run(RunKind::infer, R"({"mode":"split"})", 0xFFFFFFFFFFFFFFF0ULL, 10);
  require_ok(id);
  auto r = s.run(*id);
  require_ok(r);
  CHECK(r->kind == RunKind::infer);
  CHECK(r->config_json == R"({"mode":"split"})");
  CHECK(r->seed == 0xFFFFFFFFFFFFFFF0ULL);  // all 64 bits survive
  CHECK(r->status == RunStatus::running);
  CHECK_FALSE(r->finished_at.has_value());
  require_ok(s.set_run_status(*id, RunStatus::finished, 99));
  r = s.run(*id);
  require_ok(r);
  CHECK(r->status == RunStatus::finished);
  CHECK(r->finished_at == 99);
  require_ok(s.set_run_status(*id, RunStatus::running, 100));  // resumed
  r = s.run(*id);
  require_ok(r);
  CHECK_FALSE(r->finished_at.has_value());
  CHECK(contains(error_of(s.create_run(RunKind::train, "{not json", 1, 1)), "runs_config_json"));
  CHECK(error_of(s.run(999)) == f.path + ": no run 999");
  CHECK(error_of(s.set_run_status(999, RunStatus::failed, 1)) == f.path + ": no run 999");
  auto all = s.runs();
  require_ok(all);
  CHECK(all->size() == 2);
}

TEST_CASE("[store] commit_round writes the whole round or nothing", "[store]") {
  Fixture f;
  Store& s = f.store;
  const Checkpoint cp = sample_checkpoint(1);
  const auto nothing_written = [&] {
    auto rounds = s.rounds(f.run);
    require_ok(rounds);
    CHECK(rounds->empty());
    auto costs = s.device_costs(f.run);
    require_ok(costs);
    CHECK(costs->empty());
    CHECK(s.checkpoint(f.run, 1).error().code == fleetdl::Errc::not_found);
    auto last = s.last_committed_round(f.run);
    require_ok(last);
    CHECK_FALSE(last->has_value());
    require_ok(s.integrity_check());
  };

  SECTION("a cost row naming a device that does not exist (foreign key)") {
    auto costs = sample_costs(f.devices, 1);
    costs[2].device = 4242;
    CHECK(error_of(s.commit_round(sample_round(f.run, 1, 4), costs, cp)) ==
          f.path + ": commit round 1 of run " + std::to_string(f.run) +
              ": cost of device 4242: no device 4242");
    nothing_written();
  }
  SECTION("a cost row breaking a CHECK") {
    auto costs = sample_costs(f.devices, 1);
    costs[3].bytes_up = -1;
    const std::string m = error_of(s.commit_round(sample_round(f.run, 1, 4), costs, cp));
    CHECK(contains(m, "cost of device " + std::to_string(f.devices[3])));
    CHECK(contains(m, "bytes_up >= 0"));
    nothing_written();
  }
  SECTION("the same device twice") {
    auto costs = sample_costs(f.devices, 1);
    costs[1].device = costs[0].device;
    CHECK(contains(error_of(s.commit_round(sample_round(f.run, 1, 4), costs, cp)), "two cost rows"));
    nothing_written();
  }
  SECTION("the round row breaking a CHECK") {
    RoundRecord r = sample_round(f.run, 1, 4);
    r.completed = 5;  // more than selected: the round row itself fails
    CHECK(contains(error_of(s.commit_round(r, sample_costs(f.devices, 1), cp)), "table rounds"));
    nothing_written();
  }
  SECTION("selected and the cost rows disagree") {
    CHECK(contains(error_of(s.commit_round(sample_round(f.run, 1, 3), sample_costs(f.devices, 1), cp)),
                   "3 devices selected but 4 cost rows given"));
    nothing_written();
  }
  SECTION("no such run") {
    CHECK(error_of(s.commit_round(sample_round(777, 1, 4), sample_costs(f.devices, 1), cp)) ==
          f.path + ": commit round 1 of run 777: no run 777");
  }
  // After any failure the same round commits cleanly: nothing was left behind.
  require_ok(s.commit_round(sample_round(f.run, 1, 4), sample_costs(f.devices, 1), cp));
  CHECK(error_of(s.commit_round(sample_round(f.run, 1, 4), sample_costs(f.devices, 1), cp)) ==
        f.path + ": commit round 1 of run " + std::to_string(f.run) + ": run " + std::to_string(f.run) +
            " already has round 1");
  auto back = s.checkpoint(f.run, 1);
  require_ok(back);
  CHECK(back->parameters == cp.parameters);
  CHECK(back->state == cp.state);
  require_ok(s.integrity_check());
}

TEST_CASE("[store] resume points: last committed round, abandoned rounds, checkpoint CRCs", "[store]") {
  Fixture f;
  Store& s = f.store;
  auto none = s.next_round(f.run);
  require_ok(none);
  CHECK(*none == 0);
  for (std::int64_t r = 0; r <= 3; ++r)
    require_ok(s.commit_round(sample_round(f.run, r, 4), sample_costs(f.devices, r), sample_checkpoint(r, 1000)));
  RoundRecord lost = sample_round(f.run, 4, 4);
  lost.completed = 1;
  lost.test_accuracy.reset();
  auto costs = sample_costs(f.devices, 4);
  for (auto& c : costs) c.status = CostStatus::dropped;
  require_ok(s.abandon_round(lost, costs));

  auto last = s.last_committed_round(f.run);
  require_ok(last);
  REQUIRE(last->has_value());
  CHECK((*last)->round.round == 3);
  CHECK((*last)->round.status == RoundStatus::committed);
  CHECK((*last)->checkpoint.parameters == sample_checkpoint(3, 1000).parameters);
  auto next = s.next_round(f.run);
  require_ok(next);
  CHECK(*next == 5);

  // An abandoned round may carry the state after it (e.g. the selection RNG).
  require_ok(s.abandon_round(sample_round(f.run, 5, 4), sample_costs(f.devices, 5), sample_checkpoint(5)));
  auto ck = s.last_checkpoint(f.run);
  require_ok(ck);
  REQUIRE(ck->has_value());
  CHECK((*ck)->round.round == 5);
  CHECK((*ck)->round.status == RoundStatus::abandoned);
  last = s.last_committed_round(f.run);
  require_ok(last);
  CHECK((*last)->round.round == 3);
  auto rounds = s.rounds(f.run);
  require_ok(rounds);
  REQUIRE(rounds->size() == 6);
  CHECK((*rounds)[4].status == RoundStatus::abandoned);
  CHECK_FALSE((*rounds)[4].test_accuracy.has_value());
  require_ok(s.integrity_check());

  // Flip a byte behind the store's back: every read of it says so.
  {
    RawDb raw(f.path);
    raw.exec("UPDATE checkpoints SET parameters = zeroblob(1000) WHERE round = 3");
  }
  const std::string where = f.path + ": checkpoint of run " + std::to_string(f.run) + " round 3: parameters crc32 ";
  CHECK(contains(error_of(s.checkpoint(f.run, 3)), where));
  CHECK(s.checkpoint(f.run, 3).error().code == fleetdl::Errc::checksum_mismatch);
  CHECK(contains(error_of(s.last_committed_round(f.run)), where));
  CHECK(contains(error_of(s.integrity_check()), where));
}

TEST_CASE("[store] report queries return what was written", "[store]") {
  Fixture f;
  Store& s = f.store;
  for (std::int64_t r = 1; r <= 3; ++r)
    require_ok(s.commit_round(sample_round(f.run, r, 4), sample_costs(f.devices, r), sample_checkpoint(r)));
  Assignment a;
  a.run = f.run;
  a.device = f.devices[1];
  a.module_name = "student-1";
  a.module_kind = ModuleKind::student;
  a.module_bytes = 12345;
  a.peak_memory_bytes = 100000;
  a.predicted_latency_ms = 3.5;
  a.assigned_at = 11;
  auto aid = s.add_assignment(a);
  require_ok(aid);
  Assignment bad = a;
  bad.device = 999;
  CHECK(contains(error_of(s.add_assignment(bad)), "assign module 'student-1' to device 999"));
  require_ok(s.add_event(Event{0, 1, f.run, f.devices[0], "dropout", "dev-0 missed the deadline"}));
  require_ok(s.add_event(Event{0, 2, std::nullopt, std::nullopt, "enrolled", "dev-9 enrolled"}));

  auto rounds = s.rounds(f.run);
  require_ok(rounds);
  REQUIRE(rounds->size() == 3);
  const RoundRecord want = sample_round(f.run, 2, 4);
  const RoundRecord& got = (*rounds)[1];
  CHECK(got.round == 2);
  CHECK(got.started_at == want.started_at);
  CHECK(got.finished_at == want.finished_at);
  CHECK(got.test_accuracy == want.test_accuracy);
  CHECK(got.test_loss == want.test_loss);
  CHECK(got.train_loss == want.train_loss);
  CHECK(got.round_seconds == want.round_seconds);
  CHECK(got.bytes_up == 4000);
  CHECK(got.bytes_down == 8000);
  CHECK(got.selected == 4);

  auto costs = s.device_costs(f.run);
  require_ok(costs);
  REQUIRE(costs->size() == 12);
  const DeviceRoundCost& c = (*costs)[7];  // round 2, fourth device
  const DeviceCost want_c = sample_costs(f.devices, 2)[3];
  CHECK(c.round == 2);
  CHECK(c.cost.device == f.devices[3]);
  CHECK(c.cost.bytes_up == want_c.bytes_up);
  CHECK(c.cost.bytes_down == want_c.bytes_down);
  CHECK(c.cost.compute_ms == want_c.compute_ms);
  CHECK(c.cost.peak_memory_bytes == want_c.peak_memory_bytes);
  CHECK(c.cost.budget_bytes == want_c.budget_bytes);
  CHECK(c.cost.energy_joules == want_c.energy_joules);
  CHECK(c.cost.status == CostStatus::straggler);
  CHECK(c.cost.examples == 60);

  auto sums = s.device_summaries(f.run);
  require_ok(sums);
  REQUIRE(sums->size() == 4);
  CHECK((*sums)[0].name == "dev-0");
  CHECK((*sums)[0].rounds == 3);
  CHECK((*sums)[0].rounds_over_budget == 0);
  CHECK((*sums)[3].rounds_over_budget == 3);  // 320 KiB peak against a 256 KiB budget
  CHECK((*sums)[3].max_peak_memory_bytes == 200 * 1024 + 3 * 40 * 1024 + 3);
  CHECK((*sums)[3].budget_bytes == 256 * 1024);
  CHECK((*sums)[2].bytes_up == 3000);
  CHECK((*sums)[2].compute_ms == 90.0);
  CHECK((*sums)[2].energy_joules == 0.75);

  auto as = s.assignments(f.run);
  require_ok(as);
  REQUIRE(as->size() == 1);
  CHECK((*as)[0].id == *aid);
  CHECK((*as)[0].module_name == "student-1");
  CHECK((*as)[0].module_kind == ModuleKind::student);
  CHECK((*as)[0].module_bytes == 12345);
  CHECK((*as)[0].predicted_latency_ms == 3.5);

  auto ev = s.events(f.run);
  require_ok(ev);
  REQUIRE(ev->size() == 1);
  CHECK((*ev)[0].kind == "dropout");
  CHECK((*ev)[0].device == f.devices[0]);
  auto all = s.events(std::nullopt);
  require_ok(all);
  REQUIRE(all->size() == 2);
  CHECK_FALSE((*all)[1].run.has_value());
  CHECK((*all)[1].message == "dev-9 enrolled");
}

TEST_CASE("[store] a reader reads while a writer commits", "[store]") {
  Fixture f;
  constexpr int kRounds = 40;
  std::atomic<bool> done{false};
  std::string writer_error;
  std::thread writer([&] {  // no Catch2 assertions off the main thread
    auto opened = Store::open(f.path);
    if (!opened) {
      writer_error = opened.error().message;
      done = true;
      return;
    }
    Store w = std::move(opened).value();
    for (int r = 1; r <= kRounds && writer_error.empty(); ++r) {
      auto ok = w.commit_round(sample_round(f.run, r, 4), sample_costs(f.devices, r), sample_checkpoint(r, 4096));
      if (!ok) writer_error = ok.error().message;
    }
    done = true;
  });
  Store reader = open_ok(f.path);
  std::size_t seen = 0;
  int reads = 0;
  while (!done || reads == 0) {
    auto costs = reader.device_costs(f.run);
    require_ok(costs);
    CHECK(costs->size() % 4 == 0);  // never half a round
    CHECK(costs->size() >= seen);
    seen = costs->size();
    auto last = reader.last_committed_round(f.run);
    require_ok(last);
    ++reads;
  }
  writer.join();
  CHECK(writer_error.empty());
  auto rounds = reader.rounds(f.run);
  require_ok(rounds);
  CHECK(rounds->size() == kRounds);
  CHECK(reads > 0);
}

TEST_CASE("[store] busy_timeout makes a writer wait for another writer", "[store]") {
  Fixture f;
  RawDb holder(f.path);
  holder.exec("BEGIN IMMEDIATE");
  {
    OpenOptions impatient;
    impatient.busy_timeout_ms = 0;
    Store s = open_ok(f.path, impatient);
    const std::string m = error_of(s.add_event(Event{0, 1, std::nullopt, std::nullopt, "x", "y"}));
    CHECK(contains(m, f.path + ": add event 'x': database is locked"));
  }
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    sqlite3_exec(holder.db, "COMMIT", nullptr, nullptr, nullptr);
  });
  const auto t0 = std::chrono::steady_clock::now();
  auto id = f.store.add_event(Event{0, 1, std::nullopt, std::nullopt, "x", "y"});  // default 5000 ms
  const auto waited = std::chrono::steady_clock::now() - t0;
  release.join();
  require_ok(id);
  CHECK(waited >= std::chrono::milliseconds(200));
}

TEST_CASE("[store] SIGKILL at random moments never loses or tears a committed round", "[store]") {
  TempDir tmp;
  const std::string path = tmp.file("fleet.db");
  // The uninterrupted run: parameters after each round.
  std::vector<std::uint32_t> expected_crc(kCrashRounds + 1);
  std::vector<float> p = initial_params();
  for (int r = 1; r <= kCrashRounds; ++r) {
    train_round(p, r);
    const Blob b = to_blob(p);
    expected_crc[static_cast<std::size_t>(r)] = fleetdl::crc32(b.data(), b.size());
  }
  const Blob final_params = to_blob(p);

  std::mt19937_64 rng(20240611);  // seeded: the same kill schedule every run
  int killed = 0;
  std::int64_t committed = 0;
  for (int attempt = 0; attempt < 12; ++attempt) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(fds[0]);
      crash_child(path, fds[1]);
    }
    ::close(fds[1]);
    // Kill after the child announced a randomly chosen round (so kills land
    // throughout the run, often inside a commit), then a random few hundred
    // microseconds later; the first attempt may kill during the migration.
    const std::int64_t target = committed + static_cast<std::int64_t>(rng() % 12);
    const auto extra = std::chrono::microseconds(rng() % 3000);
    std::int64_t announced = 0;
    while (announced < target) {
      std::int64_t r = 0;
      if (::read(fds[0], &r, sizeof r) != static_cast<ssize_t>(sizeof r)) break;
      announced = r;
    }
    std::this_thread::sleep_for(extra);
    ::kill(pid, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    ::close(fds[0]);
    if (WIFSIGNALED(status)) {
      CHECK(WTERMSIG(status) == SIGKILL);
      ++killed;
    } else {
      REQUIRE(WIFEXITED(status));
      REQUIRE(WEXITSTATUS(status) == 0);  // finished before the kill
    }
    const std::int64_t now = verify_crash_db(path, expected_crc);
    INFO("attempt " << attempt << ": " << committed << " -> " << now << " rounds");
    CHECK(now >= committed);  // a committed round is never lost
    committed = now;
  }
  CHECK(killed >= 6);

  // Resume to the end, uninterrupted.
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    crash_child(path, fds[1]);
  }
  ::close(fds[1]);
  std::int64_t r = 0;
  while (::read(fds[0], &r, sizeof r) == static_cast<ssize_t>(sizeof r)) {
  }
  ::close(fds[0]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  CHECK(verify_crash_db(path, expected_crc) == kCrashRounds);

  // Same final parameters as the uninterrupted run, bit for bit.
  Store store = open_ok(path);
  auto runs = store.runs();
  require_ok(runs);
  auto last = store.last_committed_round(runs->front().id);
  require_ok(last);
  REQUIRE(last->has_value());
  CHECK((*last)->round.round == kCrashRounds);
  CHECK((*last)->checkpoint.parameters == final_params);
  auto events = store.events(runs->front().id);
  require_ok(events);
  CHECK(events->size() <= static_cast<std::size_t>(kCrashRounds));  // one per round, a kill may skip one
}
