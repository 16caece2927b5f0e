// orchestrator/cli/fleet.cpp — `fleetdl fleet up|down|token|run|resume`: the
// headless front end of the fleet runtime (docs/fleet.md).
//
//   fleet up --devices N [--profiles FILE] [--db fleet.db] [--agent PATH]
//            [--discovery-port P | --host H --enroll-port E --fleet-port F]
//       mints N one-time enrollment tokens into the database and starts N
//       local agents (fleetdl-agent) with varied profiles, each in its own
//       state directory fleet.db.agents/NAME/ with its log; their pids go to
//       fleet.db.agents/pids. The agents find the orchestrator by announcing
//       to 127.0.0.1 on the discovery port (default 47800), unless --host or
//       a port is given: then they connect there directly.
//   fleet down [--db fleet.db]      stops the agents `fleet up` started.
//   fleet token [--db fleet.db] [--count N] [--ttl S]
//       mints tokens for agents started by hand (printed one per line).
//   fleet run --config FILE [--db fleet.db] [--threads T] [--data-dir DIR] [--json]
//   fleet resume [--db fleet.db] [--run ID] [--threads T] [--data-dir DIR] [--json]
//   fleet infer --modules DIR|MODEL.fdl [--db fleet.db] [--replicas N] [--batch B] [--test-limit N]
//               [--wait S] [--timeout S] [--bind A] [--enroll-port P] [--fleet-port P]
//               [--discovery-port P] [--no-discovery] [--threads T] [--data-dir DIR] [--json]
//       distributed inference on the connected devices: a NoNN module set
//       (one student per device, the combiner here) or one model on N devices.
#include "cli_common.hpp"

#include "fleet_ca.hpp"
#include "fleet_run.hpp"
#include "store.hpp"

#include "fleetdl/core/file.hpp"
#include "fleetdl/core/json.hpp"

#include <asio.hpp>

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace fleetdl::cli {

namespace {

namespace fs = std::filesystem;
namespace core = fleetdl::core;

/// One class of local agent (`fleet up --profiles`).
struct AgentProfile {
  std::string name;
  std::uint64_t budget = 64ULL << 20;  ///< bytes
  double slowdown = 1.0;
  double bandwidth = 0;  ///< bytes/s, 0 = uncapped
  double dropout = 0;
};

/// The default mix: fast, mid and weak devices in turn.
std::vector<AgentProfile> default_profiles() {
  return {{"fast", 64ULL << 20, 1.0, 0, 0}, {"mid", 32ULL << 20, 2.0, 2.0e6, 0}, {"weak", 16ULL << 20, 3.0, 5.0e5, 0}};
}

Result<std::vector<AgentProfile>> load_profiles(const std::string& path) {
  auto doc = json::parse_file(path);
  if (!doc) return std::move(doc).error();
  auto bad = [&](const std::string& what) { return make_error(Errc::invalid_argument, path + ": " + what); };
  if (!doc->is_array() || doc->items().empty()) return bad("must be a non-empty JSON array of profiles");
  std::vector<AgentProfile> out;
  for (std::size_t i = 0; i < doc->items().size(); ++i) {
    const auto& v = doc->items()[i];
    const std::string at = "[" + std::to_string(i) + "]";
    if (!v.is_object()) return bad(at + ": must be an object");
    AgentProfile p;
    for (const auto& [k, x] : v.members()) {
      const std::string key = at + "." + k;
      if (k == "name") {
        if (!x.is_string() || !core::is_valid_device_name(x.as_string())) return bad(key + ": must be a name of [A-Za-z0-9._-]");
        p.name = x.as_string();
      } else if (k == "budget_bytes" || k == "slowdown" || k == "bandwidth_bytes_per_second" || k == "dropout") {
        if (!x.is_number() || !std::isfinite(x.as_double())) return bad(key + ": must be a number");
        const double d = x.as_double();
        if (k == "budget_bytes") {
          if (d < 1024 || d > 1e15) return bad(key + ": must be in [1024, 1e15]");
          p.budget = static_cast<std::uint64_t>(d);
        } else if (k == "slowdown") {
          if (d < 1 || d > 1000) return bad(key + ": must be in [1, 1000]");
          p.slowdown = d;
        } else if (k == "bandwidth_bytes_per_second") {
          if (d < 0) return bad(key + ": must be >= 0 (0 = uncapped)");
          p.bandwidth = d;
        } else {
          if (d < 0 || d >= 1) return bad(key + ": must be in [0, 1)");
          p.dropout = d;
        }
      } else {
        return bad(key + ": unknown key (known: name, budget_bytes, slowdown, bandwidth_bytes_per_second, dropout)");
      }
    }
    if (p.name.empty()) return bad(at + ".name: required key is missing");
    out.push_back(p);
  }
  return out;
}

fs::path agents_dir(const std::string& db) { return fs::path(db + ".agents"); }
fs::path ca_dir(const std::string& db) { return fs::path(db + ".ca"); }

/// fleetdl-agent next to this program (installed) or in the build tree.
std::string find_agent(const std::string& given) {
  if (!given.empty()) return given;
  if (const char* env = std::getenv("FLEETDL_AGENT"); env && *env) return env;
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const fs::path& p : {self.parent_path() / "fleetdl-agent",
                              self.parent_path().parent_path().parent_path() / "device_ports" / "posix" / "fleetdl-agent"})
      if (fs::exists(p, ec)) return p.string();
  }
  return "fleetdl-agent";
}

std::vector<pid_t> read_pids(const fs::path& file) {
  std::vector<pid_t> out;
  std::ifstream in(file);
  long long v = 0;
  while (in >> v)
    if (v > 1) out.push_back(static_cast<pid_t>(v));
  return out;
}

bool is_agent(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return s.find("fleetdl-agent") != std::string::npos;
}

int cmd_up(int argc, char** argv) {
  const std::string cmd = "fleet up";
  Args a(cmd, argc, argv, {"--devices", "--profiles", "--db", "--agent", "--host", "--enroll-port", "--fleet-port",
                           "--discovery-port", "--ttl", "--data-dir", "--seed"},
         {});
  if (!a.positional().empty()) throw UsageError{"unexpected argument '" + a.positional()[0] + "'"};
  if (!a.has("--devices")) throw UsageError{"--devices N is required"};
  const auto n = static_cast<int>(a.integer("--devices", 1, 1, 4096));
  const std::string db = a.str("--db", "fleet.db");
  const std::string host = a.str("--host", "127.0.0.1");
  const auto eport = a.integer("--enroll-port", 47801, 1, 65535);
  const auto fport = a.integer("--fleet-port", 47802, 1, 65535);
  const bool direct = a.has("--host") || a.has("--enroll-port") || a.has("--fleet-port");
  const auto dport = a.integer("--discovery-port", 47800, 1, 65535);
  if (direct && a.has("--discovery-port"))
    throw UsageError{"--discovery-port cannot be combined with --host, --enroll-port or --fleet-port (those connect directly)"};
  const double ttl = a.number("--ttl", 3600, 1, 1e9);
  const auto seed = a.integer("--seed", 1, 0, 1LL << 53);
  std::vector<AgentProfile> profiles = default_profiles();
  if (a.has("--profiles")) {
    auto p = load_profiles(a.str("--profiles", ""));
    if (!p) return fail(cmd, p.error().message, 2);
    profiles = std::move(*p);
  }
  const std::string agent = find_agent(a.str("--agent", ""));
  const fs::path dir = agents_dir(db);
  const fs::path pid_file = dir / "pids";
  std::error_code ec;
  for (const pid_t p : read_pids(pid_file))
    if (::kill(p, 0) == 0 && is_agent(p))
      return fail(cmd, "agents of " + db + " are already running (pid " + std::to_string(p) + "); run `fleetdl fleet down --db " +
                           db + "` first");
  auto store = core::Store::open(db);
  if (!store) return fail(cmd, store.error().message);
  fs::create_directories(dir, ec);
  if (ec) return fail(cmd, dir.string() + ": " + ec.message());
  std::vector<pid_t> pids;
  std::ostringstream summary;
  for (int i = 0; i < n; ++i) {
    const AgentProfile& p = profiles[static_cast<std::size_t>(i) % profiles.size()];
    char name[80];
    std::snprintf(name, sizeof name, "%s-%03d", p.name.c_str(), i);
    const fs::path state = dir / name;
    fs::create_directories(state, ec);
    ::chmod(state.c_str(), 0700);
    std::vector<std::string> args{agent, "--name", name, "--state-dir", state.string(), "--budget", std::to_string(p.budget),
                                  "--seed", std::to_string(seed + i), "--slowdown", num(p.slowdown),
                                  "--log", (state / "agent.log").string()};
    if (direct)
      args.insert(args.end(), {"--connect", host + ":" + std::to_string(eport) + ":" + std::to_string(fport)});
    else
      args.insert(args.end(), {"--announce-to", "127.0.0.1:" + std::to_string(dport)});
    if (p.bandwidth > 0) args.insert(args.end(), {"--bandwidth", std::to_string(static_cast<long long>(p.bandwidth))});
    if (p.dropout > 0) args.insert(args.end(), {"--dropout", num(p.dropout)});
    if (a.has("--data-dir")) args.insert(args.end(), {"--data-dir", a.str("--data-dir", "")});
    const bool enrolled = fs::exists(state / "device_id", ec);
    if (!enrolled) {
      auto tok = core::generate_token();
      if (!tok) return fail(cmd, tok.error().message);
      const auto now = core::unix_ms_now();
      auto added = store->add_token(tok->identity, tok->secret, now, now + static_cast<core::UnixMs>(ttl * 1000));
      if (!added) return fail(cmd, added.error().message);
      args.insert(args.end(), {"--token", core::encode_token(*tok)});
    }
    std::vector<char*> cargs;
    for (auto& s : args) cargs.push_back(s.data());
    cargs.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) return fail(cmd, std::string("fork: ") + std::strerror(errno));
    if (pid == 0) {
      ::setsid();
      const std::string out = (state / "agent.out").string();
      FILE* f = std::freopen(out.c_str(), "a", stdout);
      FILE* g = std::freopen(out.c_str(), "a", stderr);
      (void)f;
      (void)g;
      ::execv(cargs[0], cargs.data());
      std::fprintf(stderr, "fleetdl fleet up: cannot run %s: %s\n", cargs[0], std::strerror(errno));
      ::_exit(127);
    }
    pids.push_back(pid);
    summary << "  " << name << " (pid " << pid << ", budget " << p.budget << " B, slowdown " << num(p.slowdown)
            << (p.bandwidth > 0 ? ", " + num(p.bandwidth) + " B/s" : std::string()) << ")\n";
  }
  // an agent that cannot start at all exits at once: tell now, not at `fleet run`
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  for (std::size_t i = 0; i < pids.size(); ++i) {
    int status = 0;
    if (::waitpid(pids[i], &status, WNOHANG) == pids[i]) {
      for (const pid_t p : pids) ::kill(p, SIGTERM);
      return fail(cmd, "agent " + std::to_string(i) + " exited at once (status " + std::to_string(WEXITSTATUS(status)) +
                           "); see " + (dir / "*" / "agent.out").string());
    }
  }
  std::string pid_text;
  for (const pid_t p : pids) pid_text += std::to_string(p) + "\n";
  auto w = write_file_atomic(pid_file.string(), std::vector<std::uint8_t>(pid_text.begin(), pid_text.end()));
  if (!w) return fail(cmd, w.error().message);
  if (direct)
    std::printf("started %d agents for %s (orchestrator at %s:%lld/%lld):\n%s", n, db.c_str(), host.c_str(),
                static_cast<long long>(eport), static_cast<long long>(fport), summary.str().c_str());
  else
    std::printf("started %d agents for %s (announcing to 127.0.0.1:%lld until a fleet run invites them):\n%s", n,
                db.c_str(), static_cast<long long>(dport), summary.str().c_str());
  return 0;
}

int cmd_down(int argc, char** argv) {
  const std::string cmd = "fleet down";
  Args a(cmd, argc, argv, {"--db"}, {});
  if (!a.positional().empty()) throw UsageError{"unexpected argument '" + a.positional()[0] + "'"};
  const std::string db = a.str("--db", "fleet.db");
  const fs::path pid_file = agents_dir(db) / "pids";
  int stopped = 0;
  std::vector<pid_t> live;
  for (const pid_t p : read_pids(pid_file))
    if (::kill(p, 0) == 0 && is_agent(p) && ::kill(p, SIGTERM) == 0) live.push_back(p);
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (const pid_t p : live) {
    while (::kill(p, 0) == 0 && is_agent(p) && std::chrono::steady_clock::now() < until) {
      (void)::waitpid(p, nullptr, WNOHANG);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (::kill(p, 0) == 0 && is_agent(p)) ::kill(p, SIGKILL);
    ++stopped;
  }
  std::error_code ec;
  fs::remove(pid_file, ec);
  std::printf("stopped %d agents of %s\n", stopped, db.c_str());
  return 0;
}

int cmd_token(int argc, char** argv) {
  const std::string cmd = "fleet token";
  Args a(cmd, argc, argv, {"--db", "--count", "--ttl"}, {});
  if (!a.positional().empty()) throw UsageError{"unexpected argument '" + a.positional()[0] + "'"};
  const std::string db = a.str("--db", "fleet.db");
  const auto count = a.integer("--count", 1, 1, 10000);
  const double ttl = a.number("--ttl", 3600, 1, 1e9);
  auto store = core::Store::open(db);
  if (!store) return fail(cmd, store.error().message);
  std::string out;
  for (long long i = 0; i < count; ++i) {
    auto tok = core::generate_token();
    if (!tok) return fail(cmd, tok.error().message);
    const auto now = core::unix_ms_now();
    auto added = store->add_token(tok->identity, tok->secret, now, now + static_cast<core::UnixMs>(ttl * 1000));
    if (!added) return fail(cmd, added.error().message);
    out += core::encode_token(*tok) + "\n";
  }
  std::fputs(out.c_str(), stdout);
  return 0;
}

core::FleetRunOptions run_options(const Args& a, const std::string& db, bool json) {
  core::FleetRunOptions o;
  o.db_path = db;
  o.ca_dir = ca_dir(db);
  o.threads = static_cast<int>(a.integer("--threads", 1, 1, FLEETDL_MAX_THREADS));
  o.data_dir = a.str("--data-dir", "");
  o.log = [json](const std::string& line) {
    std::fprintf(json ? stderr : stdout, "%s\n", line.c_str());
    std::fflush(json ? stderr : stdout);
  };
  if (json)
    o.on_round = [](const core::RoundRecord& r) {
      std::printf("{\"round\":%lld,\"status\":\"%s\",\"selected\":%lld,\"completed\":%lld,\"accuracy\":%s,"
                  "\"bytes_up\":%lld,\"bytes_down\":%lld,\"round_seconds\":%s}\n",
                  static_cast<long long>(r.round), core::to_string(r.status), static_cast<long long>(r.selected),
                  static_cast<long long>(r.completed), r.test_accuracy ? json::number(*r.test_accuracy).c_str() : "null",
                  static_cast<long long>(r.bytes_up), static_cast<long long>(r.bytes_down),
                  json::number(r.round_seconds).c_str());
      std::fflush(stdout);
    };
  return o;
}

int finish_run(const std::string& cmd, const Result<std::int64_t>& r, const std::string& db, bool json) {
  if (!r) return fail(cmd, r.error().message);
  if (json) {
    std::printf("{\"run\":%lld,\"db\":\"%s\"}\n", static_cast<long long>(*r), json::escape(db).c_str());
  } else {
    std::printf("run %lld finished; report: fleetdl report --db %s --run %lld --out run-%lld.html\n",
                static_cast<long long>(*r), db.c_str(), static_cast<long long>(*r), static_cast<long long>(*r));
  }
  return 0;
}

int cmd_run(int argc, char** argv) {
  const std::string cmd = "fleet run";
  Args a(cmd, argc, argv, {"--config", "--db", "--threads", "--data-dir"}, {"--json"});
  if (!a.positional().empty()) throw UsageError{"unexpected argument '" + a.positional()[0] + "'"};
  if (!a.has("--config")) throw UsageError{"--config FILE is required"};
  const std::string path = a.str("--config", "");
  const std::string db = a.str("--db", "fleet.db");
  auto text = read_file(path, json::Limits{}.max_bytes);
  if (!text) return fail(cmd, text.error().message, 2);
  const std::string config_text(text->begin(), text->end());
  auto cfg = core::parse_fleet_config(config_text, path);
  if (!cfg) return fail(cmd, cfg.error().message, 2);
  const bool json = a.has("--json");
  auto r = core::fleet_run(*cfg, config_text, run_options(a, db, json));
  return finish_run(cmd, r, db, json);
}

int cmd_resume(int argc, char** argv) {
  const std::string cmd = "fleet resume";
  Args a(cmd, argc, argv, {"--db", "--run", "--threads", "--data-dir"}, {"--json"});
  if (!a.positional().empty()) throw UsageError{"unexpected argument '" + a.positional()[0] + "'"};
  const std::string db = a.str("--db", "fleet.db");
  std::error_code ec;
  if (!fs::exists(db, ec)) return fail(cmd, db + ": no such file");
  std::int64_t run = 0;
  if (a.has("--run")) {
    run = a.integer("--run", 1, 1, std::numeric_limits<long long>::max());
  } else {
    auto st = core::Store::open(db);
    if (!st) return fail(cmd, st.error().message);
    auto runs = st->runs();
    if (!runs) return fail(cmd, runs.error().message);
    for (const auto& r : *runs)
      if (r.status != core::RunStatus::finished) run = std::max(run, r.id);
    if (run == 0) return fail(cmd, db + ": no unfinished run to resume");
  }
  const bool json = a.has("--json");
  auto r = core::fleet_resume(run, run_options(a, db, json));
  return finish_run(cmd, r, db, json);
}

int cmd_fleet_infer(int argc, char** argv) {
  const std::string cmd = "fleet infer";
  Args a(cmd, argc, argv,
         {"--modules", "--db", "--replicas", "--batch", "--test-limit", "--wait", "--timeout", "--bind", "--enroll-port",
          "--fleet-port", "--discovery-port", "--threads", "--data-dir"},
         {"--json", "--no-discovery"});
  if (!a.positional().empty()) throw UsageError{"unexpected argument '" + a.positional()[0] + "'"};
  if (!a.has("--modules")) throw UsageError{"--modules DIR|MODEL.fdl is required"};
  core::FleetInferOptions o;
  o.db_path = a.str("--db", "fleet.db");
  o.ca_dir = ca_dir(o.db_path);
  o.modules = a.str("--modules", "");
  o.replicas = static_cast<long>(a.integer("--replicas", 1, 1, 4096));
  o.batch = static_cast<long>(a.integer("--batch", 32, 1, 65536));
  o.test_limit = static_cast<long>(a.integer("--test-limit", -1, 1, 1 << 30));
  o.threads = static_cast<int>(a.integer("--threads", 1, 1, FLEETDL_MAX_THREADS));
  o.data_dir = a.str("--data-dir", "");
  o.fleet.wait_seconds = a.number("--wait", 60, 0.1, 1e6);
  o.request_timeout_seconds = a.number("--timeout", 120, 0.1, 1e6);
  o.fleet.bind_address = a.str("--bind", "127.0.0.1");
  o.fleet.enroll_port = static_cast<std::uint16_t>(a.integer("--enroll-port", 47801, 0, 65535));
  o.fleet.fleet_port = static_cast<std::uint16_t>(a.integer("--fleet-port", 47802, 0, 65535));
  o.fleet.discovery_port = static_cast<std::uint16_t>(a.integer("--discovery-port", 47800, 1, 65535));
  o.fleet.discovery = !a.has("--no-discovery");
  {
    std::error_code aec;
    (void)asio::ip::make_address_v4(o.fleet.bind_address, aec);
    if (aec) throw UsageError{"--bind: '" + o.fleet.bind_address + "' is not an IPv4 address"};
  }
  if (a.has("--replicas") && fs::is_directory(o.modules))
    throw UsageError{"--replicas applies to one model file; a NoNN module directory puts one student on each device"};
  const bool json_out = a.has("--json");
  o.log = [json_out](const std::string& line) {
    std::fprintf(json_out ? stderr : stdout, "%s\n", line.c_str());
    std::fflush(json_out ? stderr : stdout);
  };
  std::ostringstream cfg;
  cfg << "{\"job\":\"infer\",\"modules\":\"" << json::escape(o.modules) << "\",\"replicas\":" << o.replicas
      << ",\"batch\":" << o.batch << ",\"test_limit\":" << o.test_limit << "}";
  auto r = core::fleet_infer(o, cfg.str());
  if (!r) return fail(cmd, r.error().message);
  const auto per_image = [&](std::int64_t bytes, long images) { return images > 0 ? static_cast<double>(bytes) / images : 0.0; };
  if (json_out) {
    std::ostringstream out;
    out << "{\"run\":" << r->run << ",\"images\":" << r->images << ",\"test_accuracy\":" << json::number(r->accuracy)
        << ",\"matches_local\":" << (r->matches_local ? (*r->matches_local ? "true" : "false") : "null")
        << ",\"wall_seconds\":" << json::number(r->wall_seconds) << ",\"devices\":[";
    for (std::size_t i = 0; i < r->devices.size(); ++i) {
      const auto& d = r->devices[i];
      out << (i ? "," : "") << "{\"device\":" << d.device << ",\"name\":\"" << json::escape(d.name) << "\",\"module\":\""
          << json::escape(d.module) << "\",\"features\":" << d.features << ",\"module_bytes\":" << d.module_bytes
          << ",\"bytes_down\":" << d.bytes_down << ",\"bytes_up\":" << d.bytes_up
          << ",\"request_bytes_down\":" << d.request_bytes_down << ",\"images\":" << d.images
          << ",\"bytes_up_per_image\":" << json::number(per_image(d.bytes_up, d.images))
          << ",\"feature_bytes_per_image\":" << d.features * 4 << ",\"compute_ms\":" << json::number(d.compute_ms)
          << ",\"peak_memory_bytes\":" << d.peak_memory_bytes << ",\"budget_bytes\":" << d.budget_bytes
          << ",\"lost\":" << (d.lost ? "true" : "false") << "}";
    }
    out << "]}";
    std::printf("%s\n", out.str().c_str());
  } else {
    std::printf("run %lld: accuracy %.4f on %ld images in %.2f s%s\n", static_cast<long long>(r->run), r->accuracy,
                r->images, r->wall_seconds,
                r->matches_local ? (*r->matches_local ? " (equal to the same modules run locally)"
                                                      : " (DIFFERS from the same modules run locally)")
                                 : "");
    std::printf("%-16s %-20s %8s %12s %12s %14s %10s %12s %12s\n", "device", "module", "features", "bytes down",
                "bytes up", "up B/image", "compute ms", "peak B", "budget B");
    for (const auto& d : r->devices)
      std::printf("%-16s %-20s %8ld %12lld %12lld %14.1f %10.1f %12lld %12lld%s\n", d.name.c_str(), d.module.c_str(),
                  d.features, static_cast<long long>(d.bytes_down), static_cast<long long>(d.bytes_up),
                  per_image(d.bytes_up, d.images), d.compute_ms, static_cast<long long>(d.peak_memory_bytes),
                  static_cast<long long>(d.budget_bytes), d.lost ? "  (lost mid-run)" : "");
  }
  return 0;
}

}  // namespace

int cmd_fleet(int argc, char** argv) {
  if (argc < 1) throw UsageError{"missing subcommand (known: up, down, token, run, resume, infer)"};
  const std::string sub = argv[0];
  if (sub == "up") return cmd_up(argc - 1, argv + 1);
  if (sub == "down") return cmd_down(argc - 1, argv + 1);
  if (sub == "token") return cmd_token(argc - 1, argv + 1);
  if (sub == "run") return cmd_run(argc - 1, argv + 1);
  if (sub == "resume") return cmd_resume(argc - 1, argv + 1);
  if (sub == "infer") return cmd_fleet_infer(argc - 1, argv + 1);
  throw UsageError{"unknown subcommand '" + sub + "' (known: up, down, token, run, resume, infer)"};
}

}  // namespace fleetdl::cli
