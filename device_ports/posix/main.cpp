// device_ports/posix/main.cpp — fleetdl-agent: the POSIX device agent's
// program (docs/agent.md). Parses the options, measures the capabilities,
// runs the Agent on one io_context until it stops (--exit-after-runs, a
// fatal error, SIGINT or SIGTERM). Exit codes: 0 done, 1 failure, 2 usage.
#include "agent.hpp"

#include <asio/signal_set.hpp>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <string>

namespace {

int fail(const std::string& m, int code) {
  std::fprintf(stderr, "fleetdl-agent: %s\n", m.c_str());
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  namespace a = fleetdl::agent;
  bool help = false;
  auto opt = a::parse_options(argc, argv, &help);
  if (help) {
    std::fputs(a::usage().c_str(), stdout);
    return 0;
  }
  if (!opt) return fail(opt.error().message, 2);

  std::FILE* log = stderr;
  if (!opt->log_file.empty()) {
    log = std::fopen(opt->log_file.c_str(), "a");
    if (log == nullptr) return fail(opt->log_file + ": cannot open the log", 1);
  }
  const std::string name = opt->name;
  auto write_log = [log, name](const std::string& line) {
    const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    std::tm tm{};
    gmtime_r(&now, &tm);
    char ts[32];
    std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    std::fprintf(log, "%s %s: %s\n", ts, name.c_str(), line.c_str());
    std::fflush(log);
  };

  // The state directory first, so storage is measured where the agent keeps it.
  if (auto st = a::StateDir::open(opt->state_dir); !st) return fail(st.error().message, 1);
  const a::Capabilities caps = a::measure_capabilities(*opt);
  write_log("capabilities: " + std::to_string(caps.cores) + " cores, " + std::to_string(caps.ram_bytes) + " B RAM, " +
            std::to_string(caps.storage_bytes) + " B storage, " + std::to_string(caps.mac_per_s) + " MAC/s, link " +
            std::to_string(caps.link_bytes_per_s) + " B/s, budget " + std::to_string(opt->budget_bytes) + " B");

  asio::io_context io;
  auto agent = a::Agent::create(io, std::move(*opt), caps, write_log);
  if (!agent) return fail(agent.error().message, 1);
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](std::error_code ec, int sig) {
    if (ec) return;
    write_log("signal " + std::to_string(sig) + ": stopping");
    (*agent)->shutdown();
  });
  (*agent)->start();
  // The agent stops by itself on a fatal error or after --exit-after-runs;
  // the signal set would keep run() busy, so it is cancelled once the agent
  // has stopped.
  asio::steady_timer watch(io);
  std::function<void()> poll = [&] {
    watch.expires_after(std::chrono::milliseconds(50));
    watch.async_wait([&](std::error_code ec) {
      if (ec) return;
      if ((*agent)->phase() == a::Phase::stopped) {
        signals.cancel();
        return;
      }
      poll();
    });
  };
  poll();
  io.run();
  const std::string fatal = (*agent)->fatal_error();
  agent->reset();
  if (!fatal.empty()) return fail(fatal, 1);
  return 0;
}
