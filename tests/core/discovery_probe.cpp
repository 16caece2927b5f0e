// tests/core/discovery_probe.cpp — a small program around the Announcer and
// the DiscoveryListener (orchestrator/core/discovery.hpp), for tests that
// need discovery in separate processes or network namespaces
// (tests/core/netns_discovery.sh).
//
//   discovery_probe announce --name N --target IP:PORT [--target IP:PORT ...]
//                            [--interval-ms 100] [--timeout-ms 20000]
//     Announces until the first valid invite, prints
//       invited name=N orchestrator=IP enroll_port=E fleet_port=F fleet_id=ID via=IP:PORT
//     and exits 0; exits 1 if no invite came within the timeout.
//
//   discovery_probe listen --port P --expect K [--bind ADDR] [--timeout-ms 20000]
//                          [--enroll-port 47801] [--fleet-port 47802] [--advertise IP]
//     Listens for announces, prints "listening on ADDR:PORT", then
//       discovered name=N nonce=X from=IP:PORT
//     for each new agent, and exits 0 once K distinct agent names have been
//     discovered and sent an invite (printing "invited K agents"); exits 1
//     on timeout.
//
// Exit 2 on a usage error. Everything runs on one io_context on the main thread.
#include "discovery.hpp"

#include <asio.hpp>

#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace fleetdl::core;
using asio::ip::udp;

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "discovery_probe: %s\n"
               "usage: discovery_probe announce --name N --target IP:PORT [--target IP:PORT ...] "
               "[--interval-ms MS] [--timeout-ms MS]\n"
               "       discovery_probe listen --port P --expect K [--bind ADDR] [--timeout-ms MS] "
               "[--enroll-port P] [--fleet-port P] [--advertise IP]\n",
               why.c_str());
  std::exit(2);
}

unsigned long number(const std::string& flag, const std::string& text, unsigned long max) {
  char* end = nullptr;
  errno = 0;
  const unsigned long v = std::strtoul(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || v > max || text[0] == '-')
    usage("flag '" + flag + "': '" + text + "' is not a number in 0 .. " + std::to_string(max));
  return v;
}

asio::ip::address_v4 ipv4(const std::string& flag, const std::string& text) {
  std::error_code ec;
  const auto a = asio::ip::make_address_v4(text, ec);
  if (ec) usage("flag '" + flag + "': '" + text + "' is not an IPv4 address");
  return a;
}

udp::endpoint ip_port(const std::string& flag, const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos) usage("flag '" + flag + "': '" + text + "' is not IP:PORT");
  const auto port = number(flag, text.substr(colon + 1), 65535);
  if (port == 0) usage("flag '" + flag + "': port 0");
  return udp::endpoint(ipv4(flag, text.substr(0, colon)), static_cast<std::uint16_t>(port));
}

std::string text(const udp::endpoint& e) { return e.address().to_string() + ":" + std::to_string(e.port()); }

int announce(const std::vector<std::string>& args) {
  AnnouncerOptions o;
  o.interval = std::chrono::milliseconds(100);
  o.caps.cores = 1;
  unsigned long timeout_ms = 20000;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& f = args[i];
    if (i + 1 >= args.size()) usage("flag '" + f + "' needs a value");
    const std::string& v = args[++i];
    if (f == "--name")
      o.name = v;
    else if (f == "--target")
      o.targets.push_back(ip_port(f, v));
    else if (f == "--interval-ms")
      o.interval = std::chrono::milliseconds(number(f, v, 60000));
    else if (f == "--timeout-ms")
      timeout_ms = number(f, v, 3600000);
    else
      usage("unknown flag '" + f + "'");
  }
  if (o.name.empty()) usage("announce needs --name");
  if (o.targets.empty()) usage("announce needs at least one --target");

  asio::io_context io;
  int rc = 1;
  Announcer agent(io, o, [&](const OrchestratorEndpoint& e) {
    std::printf("invited name=%s orchestrator=%s enroll_port=%u fleet_port=%u fleet_id=%" PRIu64 " via=%s\n",
                o.name.c_str(), e.address.to_string().c_str(), static_cast<unsigned>(e.enroll_port),
                static_cast<unsigned>(e.fleet_port), e.fleet_id, text(e.invited_by).c_str());
    std::fflush(stdout);
    rc = 0;
    io.stop();
  });
  if (auto r = agent.start(); !r) {
    std::fprintf(stderr, "discovery_probe: %s\n", r.error().message.c_str());
    return 1;
  }
  asio::steady_timer deadline(io, std::chrono::milliseconds(timeout_ms));
  deadline.async_wait([&](const std::error_code& ec) {
    if (!ec) io.stop();
  });
  io.run();
  agent.stop();
  if (rc != 0) {
    const AnnouncerStats s = agent.stats();
    std::fprintf(stderr,
                 "discovery_probe: announce '%s': no invite within %lu ms (%" PRIu64 " announces sent, %" PRIu64
                 " send errors, %" PRIu64 " invites malformed, %" PRIu64 " for another nonce or fleet)\n",
                 o.name.c_str(), timeout_ms, s.announces_sent, s.send_errors, s.invites_malformed,
                 s.invites_wrong_nonce + s.invites_wrong_fleet);
  }
  return rc;
}

int listen(const std::vector<std::string>& args) {
  ListenerOptions o;
  o.fleet_id = 0xF1EE7;
  for (std::size_t i = 0; i < o.ca_fingerprint.size(); ++i) o.ca_fingerprint[i] = static_cast<std::uint8_t>(i + 1);
  o.enroll_port = 47801;
  o.fleet_port = 47802;
  o.invite_interval = std::chrono::milliseconds(100);
  unsigned long timeout_ms = 20000;
  unsigned long expect = 0;
  bool have_port = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& f = args[i];
    if (i + 1 >= args.size()) usage("flag '" + f + "' needs a value");
    const std::string& v = args[++i];
    if (f == "--port") {
      o.port = static_cast<std::uint16_t>(number(f, v, 65535));
      have_port = true;
    } else if (f == "--expect") {
      expect = number(f, v, 4096);
    } else if (f == "--bind") {
      o.bind_address = ipv4(f, v);
    } else if (f == "--timeout-ms") {
      timeout_ms = number(f, v, 3600000);
    } else if (f == "--enroll-port") {
      o.enroll_port = static_cast<std::uint16_t>(number(f, v, 65535));
    } else if (f == "--fleet-port") {
      o.fleet_port = static_cast<std::uint16_t>(number(f, v, 65535));
    } else if (f == "--advertise") {
      o.advertise = ipv4(f, v);
    } else {
      usage("unknown flag '" + f + "'");
    }
  }
  if (!have_port) usage("listen needs --port");
  if (expect == 0) usage("listen needs --expect K with K >= 1");

  asio::io_context io;
  DiscoveryListener listener(io, o, [](const DiscoveredAgent& a) {
    std::printf("discovered name=%s nonce=%016" PRIx64 " from=%s\n", a.name.c_str(), a.nonce, text(a.source).c_str());
    std::fflush(stdout);
  });
  if (auto r = listener.start(); !r) {
    std::fprintf(stderr, "discovery_probe: %s\n", r.error().message.c_str());
    return 1;
  }
  std::printf("listening on %s:%u\n", o.bind_address.to_string().c_str(), static_cast<unsigned>(listener.local_port()));
  std::fflush(stdout);

  int rc = 1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  asio::steady_timer poll(io);
  std::function<void()> check = [&] {
    std::set<std::string> invited;
    for (const DiscoveredAgent& a : listener.agents())
      if (a.invites_sent > 0) invited.insert(a.name);
    if (invited.size() >= expect) {
      std::printf("invited %zu agents\n", invited.size());
      std::fflush(stdout);
      rc = 0;
      io.stop();
      return;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      const DiscoveryStats s = listener.stats();
      std::fprintf(stderr,
                   "discovery_probe: listen: %zu of %lu agents invited within %lu ms (%" PRIu64 " datagrams, %" PRIu64
                   " rejected, %" PRIu64 " send errors)\n",
                   invited.size(), expect, timeout_ms, s.datagrams, s.rejected_total(), s.send_errors);
      io.stop();
      return;
    }
    poll.expires_after(std::chrono::milliseconds(20));
    poll.async_wait([&](const std::error_code& ec) {
      if (!ec) check();
    });
  };
  check();
  io.run();
  listener.stop();
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) usage("missing mode (announce or listen)");
  const std::string mode = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (mode == "announce") return announce(args);
  if (mode == "listen") return listen(args);
  usage("unknown mode '" + mode + "'");
}
