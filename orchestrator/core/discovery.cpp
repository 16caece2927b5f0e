// orchestrator/core/discovery.cpp — Announcer and DiscoveryListener
// (discovery.hpp).
//
// Both classes keep their state in a shared Impl that every pending Asio
// handler holds, so a handler that completes after its object is gone finds
// live memory (and a bumped generation, which tells it to do nothing).
// Locking: `cb` (recursive) serialises callbacks with start()/stop(); `m`
// guards the socket, timer and counters. Order is always cb, then m; no
// handler takes cb while holding m, and callbacks run without m.
// Sends are synchronous on a non-blocking socket: a UDP send either goes to
// the kernel at once or fails (counted), so no buffer has to outlive it.
#include "discovery.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <random>
#include <utility>

namespace fleetdl::core {

namespace {

using asio::ip::udp;
using Clock = std::chrono::steady_clock;

std::string endpoint_text(const udp::endpoint& e) { return e.address().to_string() + ":" + std::to_string(e.port()); }

Error socket_error(const std::string& who, const char* call, const udp::endpoint& at, const std::error_code& ec) {
  return make_error(Errc::io_error, who + ": " + call + " " + endpoint_text(at) + ": " + ec.message());
}

}  // namespace

Result<wire::Fingerprint> fingerprint_bytes(std::string_view hex) {
  wire::Fingerprint f{};
  const auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (hex.size() != 2 * f.size())
    return make_error(Errc::invalid_argument, "fingerprint: " + std::to_string(hex.size()) + " hex digits, not " +
                                                  std::to_string(2 * f.size()));
  for (std::size_t i = 0; i < f.size(); ++i) {
    const int hi = digit(hex[2 * i]), lo = digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return make_error(Errc::invalid_argument, "fingerprint: not a hex digit at " + std::to_string(2 * i));
    f[i] = static_cast<std::uint8_t>(hi * 16 + lo);
  }
  return f;
}

std::vector<udp::endpoint> default_announce_targets(std::uint16_t port) {
  return {udp::endpoint(asio::ip::address_v4::broadcast(), port), udp::endpoint(asio::ip::address_v4::loopback(), port)};
}

// ======================================================================= Announcer

struct Announcer::Impl : std::enable_shared_from_this<Announcer::Impl> {
  Impl(asio::io_context& io, AnnouncerOptions o, InviteHandler h)
      : opt(std::move(o)), on_invite(std::move(h)), sock(io), timer(io) {}

  AnnouncerOptions opt;
  InviteHandler on_invite;
  std::recursive_mutex cb;
  mutable std::mutex m;
  udp::socket sock;
  asio::steady_timer timer;
  std::uint64_t generation = 0;  // written holding cb and m
  bool running = false;
  std::uint64_t nonce = 0;
  std::uint32_t sequence = 0;
  std::mt19937_64 rng;
  std::vector<udp::endpoint> targets;
  std::uint16_t port = 0;
  std::array<std::uint8_t, wire::kMaxDatagramBytes + 1> rx{};
  udp::endpoint rx_from;
  AnnouncerStats st;

  std::string who() const { return "announcer '" + opt.name + "'"; }

  Result<void> check_options() const {
    if (!wire::is_valid_agent_name(opt.name))
      return make_error(Errc::invalid_argument,
                        "announcer: name '" + opt.name + "' must be 1-64 characters of A-Z a-z 0-9 . _ -, first a letter or digit");
    if (opt.caps.cores == 0) return make_error(Errc::invalid_argument, who() + ": caps.cores is 0, must be >= 1");
    if (opt.interval.count() < 1) return make_error(Errc::invalid_argument, who() + ": interval must be >= 1 ms");
    if (!(opt.jitter >= 0.0 && opt.jitter <= 0.9))
      return make_error(Errc::invalid_argument, who() + ": jitter must be in [0, 0.9]");
    if (opt.enrolled && wire::is_zero(opt.cert_fingerprint))
      return make_error(Errc::invalid_argument, who() + ": enrolled, but cert_fingerprint is all zero");
    if (!opt.enrolled && !wire::is_zero(opt.cert_fingerprint))
      return make_error(Errc::invalid_argument, who() + ": not enrolled, but cert_fingerprint is set");
    if (opt.enrolled && wire::is_zero(opt.fleet_ca_fingerprint))
      return make_error(Errc::invalid_argument,
                        who() + ": enrolled, but fleet_ca_fingerprint is all zero (it must pin the fleet's CA)");
    if (!opt.bind.address().is_v4())
      return make_error(Errc::invalid_argument, who() + ": bind address " + endpoint_text(opt.bind) + " is not IPv4");
    for (const udp::endpoint& t : opt.targets)
      if (!t.address().is_v4() || t.port() == 0)
        return make_error(Errc::invalid_argument, who() + ": target " + endpoint_text(t) + " is not an IPv4 address and port");
    return success();
  }

  Result<void> start() {
    std::scoped_lock lock(cb, m);
    if (running) return make_error(Errc::invalid_argument, who() + ": already running");
    FLEETDL_TRY(check_options());
    if (nonce == 0) nonce = opt.nonce;
    if (nonce == 0) {
      std::random_device rd;
      while (nonce == 0) nonce = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
    }
    rng.seed(opt.jitter_seed != 0 ? opt.jitter_seed : nonce);
    targets = opt.targets.empty() ? default_announce_targets(opt.port) : opt.targets;

    std::error_code ec;
    sock.open(udp::v4(), ec);
    if (ec) return socket_error(who(), "open", opt.bind, ec);
    sock.set_option(asio::socket_base::broadcast(true), ec);
    if (!ec) sock.bind(opt.bind, ec);
    if (!ec) sock.non_blocking(true, ec);
    if (ec) {
      std::error_code ignored;
      sock.close(ignored);
      return socket_error(who(), "bind", opt.bind, ec);
    }
    port = sock.local_endpoint(ec).port();
    running = true;
    ++generation;
    arm_receive();
    send_round();
    arm_timer();
    return success();
  }

  void stop() {
    std::scoped_lock lock(cb, m);
    if (!running) return;
    running = false;
    ++generation;
    std::error_code ignored;
    timer.cancel();
    sock.close(ignored);
    port = 0;
  }

  // ---- holding m
  void send_round() {
    wire::Announce a;
    (void)a.set_name(opt.name);  // checked by start()
    a.nonce = nonce;
    a.sequence = sequence++;
    a.enrolled = opt.enrolled;
    a.caps = opt.caps;
    a.cert_fingerprint = opt.cert_fingerprint;
    std::array<std::uint8_t, wire::kMaxDatagramBytes> buf{};
    wire::DatagramVerdict v;
    const std::size_t n = wire::encode_announce(a, buf, v);
    FLEETDL_ASSERT(n != 0, "announce fields were checked by start()");
    for (const udp::endpoint& t : targets) {
      std::error_code ec;
      sock.send_to(asio::buffer(buf.data(), n), t, 0, ec);
      if (ec)
        ++st.send_errors;
      else
        ++st.announces_sent;
    }
  }

  void arm_timer() {
    double u = 0.0;
    if (opt.jitter > 0.0) u = std::uniform_real_distribution<double>(-opt.jitter, opt.jitter)(rng);
    const double us = static_cast<double>(std::chrono::duration_cast<std::chrono::microseconds>(opt.interval).count()) * (1.0 + u);
    timer.expires_after(std::chrono::microseconds(std::max<long long>(1000, std::llround(us))));
    timer.async_wait([self = shared_from_this(), gen = generation](const std::error_code& ec) {
      std::lock_guard<std::mutex> lock(self->m);
      if (ec || gen != self->generation) return;
      self->send_round();
      self->arm_timer();
    });
  }

  void arm_receive() {
    sock.async_receive_from(asio::buffer(rx), rx_from,
                            [self = shared_from_this(), gen = generation](const std::error_code& ec, std::size_t n) {
                              self->on_receive(gen, ec, n);
                            });
  }

  void on_receive(std::uint64_t gen, const std::error_code& ec, std::size_t n) {
    std::optional<OrchestratorEndpoint> accepted;
    {
      std::lock_guard<std::mutex> lock(m);
      if (gen != generation) return;
      if (ec) {
        if (ec == asio::error::operation_aborted) return;
        ++st.receive_errors;
      } else {
        accepted = judge(std::span<const std::uint8_t>(rx.data(), n));
      }
      arm_receive();
    }
    if (!accepted) return;
    std::lock_guard<std::recursive_mutex> lock(cb);
    if (gen != generation) return;  // stopped meanwhile; generation cannot change while we hold cb
    if (on_invite) on_invite(*accepted);
  }

  // ---- holding m
  std::optional<OrchestratorEndpoint> judge(std::span<const std::uint8_t> bytes) {
    wire::Invite inv;
    if (!wire::decode_invite(bytes, inv)) {
      ++st.invites_malformed;
      return std::nullopt;
    }
    if (inv.nonce != nonce) {
      ++st.invites_wrong_nonce;
      return std::nullopt;
    }
    if (!wire::is_zero(opt.fleet_ca_fingerprint) && inv.ca_fingerprint != opt.fleet_ca_fingerprint) {
      ++st.invites_wrong_fleet;
      return std::nullopt;
    }
    if (!opt.enrolled && inv.enroll_port == 0) {
      ++st.invites_enrollment_closed;
      return std::nullopt;
    }
    OrchestratorEndpoint e;
    const bool from_source = inv.address == std::array<std::uint8_t, 4>{};
    e.address = from_source ? rx_from.address().to_v4() : asio::ip::address_v4(inv.address);
    e.enroll_port = inv.enroll_port;
    e.fleet_port = inv.fleet_port;
    e.fleet_id = inv.fleet_id;
    e.ca_fingerprint = inv.ca_fingerprint;
    e.invited_by = rx_from;
    ++st.invites_accepted;
    return e;
  }
};

Announcer::Announcer(asio::io_context& io, AnnouncerOptions options, InviteHandler on_invite)
    : impl_(std::make_shared<Impl>(io, std::move(options), std::move(on_invite))) {}

Announcer::~Announcer() { impl_->stop(); }

Result<void> Announcer::start() { return impl_->start(); }
void Announcer::stop() { impl_->stop(); }

bool Announcer::running() const {
  std::lock_guard<std::mutex> lock(impl_->m);
  return impl_->running;
}
std::uint64_t Announcer::nonce() const {
  std::lock_guard<std::mutex> lock(impl_->m);
  return impl_->nonce;
}
std::uint16_t Announcer::local_port() const {
  std::lock_guard<std::mutex> lock(impl_->m);
  return impl_->port;
}
AnnouncerStats Announcer::stats() const {
  std::lock_guard<std::mutex> lock(impl_->m);
  return impl_->st;
}

// ======================================================================= DiscoveryListener

struct DiscoveryListener::Impl : std::enable_shared_from_this<DiscoveryListener::Impl> {
  Impl(asio::io_context& io, ListenerOptions o, DiscoveredHandler h)
      : opt(std::move(o)), on_discovered(std::move(h)), sock(io) {}

  using Key = std::pair<std::string, std::uint64_t>;

  ListenerOptions opt;
  DiscoveredHandler on_discovered;
  std::recursive_mutex cb;
  mutable std::mutex m;
  udp::socket sock;
  std::uint64_t generation = 0;  // written holding cb and m
  bool running = false;
  std::uint16_t port = 0;
  std::array<std::uint8_t, wire::kMaxDatagramBytes + 1> rx{};
  udp::endpoint rx_from;
  std::map<Key, DiscoveredAgent> table;
  // No row can be stale before this instant (the least recent last_seen plus
  // stale_after, as of the last scan), so a flood of new agents into a full
  // table costs one comparison each, not a scan.
  Clock::time_point no_stale_before{};
  DiscoveryStats st;
  std::string last_rejection;

  std::string who() const { return "discovery listener " + opt.bind_address.to_string() + ":" + std::to_string(opt.port); }

  Result<void> check_options() const {
    if (opt.fleet_id == 0) return make_error(Errc::invalid_argument, who() + ": fleet_id is 0");
    if (wire::is_zero(opt.ca_fingerprint)) return make_error(Errc::invalid_argument, who() + ": ca_fingerprint is all zero");
    if (opt.fleet_port == 0) return make_error(Errc::invalid_argument, who() + ": fleet_port is 0");
    if (wire::detail::is_forbidden_invite_address(opt.advertise.to_bytes()))
      return make_error(Errc::invalid_argument, who() + ": advertise address " + opt.advertise.to_string() +
                                                    " is multicast or broadcast");
    if (opt.capacity == 0) return make_error(Errc::invalid_argument, who() + ": capacity is 0");
    return success();
  }

  Result<void> start() {
    std::scoped_lock lock(cb, m);
    if (running) return make_error(Errc::invalid_argument, who() + ": already running");
    FLEETDL_TRY(check_options());
    const udp::endpoint at(opt.bind_address, opt.port);
    std::error_code ec;
    sock.open(udp::v4(), ec);
    if (ec) return socket_error(who(), "open", at, ec);
    sock.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) sock.bind(at, ec);
    if (!ec) sock.non_blocking(true, ec);
    if (ec) {
      std::error_code ignored;
      sock.close(ignored);
      return socket_error(who(), "bind", at, ec);
    }
    port = sock.local_endpoint(ec).port();
    running = true;
    ++generation;
    arm_receive();
    return success();
  }

  void stop() {
    std::scoped_lock lock(cb, m);
    if (!running) return;
    running = false;
    ++generation;
    std::error_code ignored;
    sock.close(ignored);
    port = 0;
  }

  void arm_receive() {
    sock.async_receive_from(asio::buffer(rx), rx_from,
                            [self = shared_from_this(), gen = generation](const std::error_code& ec, std::size_t n) {
                              self->on_receive(gen, ec, n);
                            });
  }

  void on_receive(std::uint64_t gen, const std::error_code& ec, std::size_t n) {
    std::optional<DiscoveredAgent> fresh;
    {
      std::lock_guard<std::mutex> lock(m);
      if (gen != generation) return;
      if (ec) {
        if (ec == asio::error::operation_aborted) return;
        ++st.receive_errors;
      } else {
        fresh = handle(std::span<const std::uint8_t>(rx.data(), n), Clock::now());
      }
      arm_receive();
    }
    if (!fresh) return;
    std::lock_guard<std::recursive_mutex> lock(cb);
    if (gen != generation) return;
    if (on_discovered) on_discovered(*fresh);
  }

  // ---- holding m. Returns the row when the announce came from a new agent.
  std::optional<DiscoveredAgent> handle(std::span<const std::uint8_t> bytes, Clock::time_point now) {
    ++st.datagrams;
    wire::Announce a;
    const wire::DatagramVerdict v = wire::decode_announce(bytes, a);
    if (!v) {
      ++st.rejected[static_cast<std::size_t>(v.fault)];
      last_rejection = std::string(v.message()) + " (from " + endpoint_text(rx_from) + ")";
      return std::nullopt;
    }
    ++st.announces;
    Key key(std::string(a.name()), a.nonce);
    auto it = table.find(key);
    const bool is_new = it == table.end();
    if (is_new) {
      if (table.size() >= opt.capacity && !evict_stale(now)) {
        ++st.table_full;
        return std::nullopt;
      }
      DiscoveredAgent row;
      row.name = key.first;
      row.nonce = a.nonce;
      row.first_seen = now;
      it = table.emplace(std::move(key), std::move(row)).first;
      ++st.agents_discovered;
    }
    DiscoveredAgent& row = it->second;
    row.source = rx_from;
    row.enrolled = a.enrolled;
    row.cert_fingerprint = a.cert_fingerprint;
    row.caps = a.caps;
    row.last_sequence = a.sequence;
    row.last_seen = now;
    ++row.announces;
    if (row.invites_sent == 0 || now - row.last_invite >= opt.invite_interval)
      send_invite(row, now);
    else
      ++st.invites_rate_limited;
    if (is_new) return row;
    return std::nullopt;
  }

  void send_invite(DiscoveredAgent& row, Clock::time_point now) {
    wire::Invite inv;
    inv.fleet_id = opt.fleet_id;
    inv.nonce = row.nonce;
    inv.enroll_port = opt.enroll_port;
    inv.fleet_port = opt.fleet_port;
    inv.address = opt.advertise.to_bytes();
    inv.ca_fingerprint = opt.ca_fingerprint;
    std::array<std::uint8_t, wire::kInviteBytes> buf{};
    wire::DatagramVerdict v;
    const std::size_t n = wire::encode_invite(inv, buf, v);
    FLEETDL_ASSERT(n == wire::kInviteBytes, "invite fields were checked by start()");
    std::error_code ec;
    sock.send_to(asio::buffer(buf.data(), n), row.source, 0, ec);
    if (ec) {
      ++st.send_errors;
      return;
    }
    row.last_invite = now;
    ++row.invites_sent;
    ++st.invites_sent;
  }

  // Evicts the least recently heard row if it is stale; returns whether it did.
  bool evict_stale(Clock::time_point now) {
    if (now < no_stale_before || table.empty()) return false;
    auto oldest = std::min_element(table.begin(), table.end(), [](const auto& x, const auto& y) {
      return x.second.last_seen < y.second.last_seen;
    });
    if (now - oldest->second.last_seen < opt.stale_after) {
      no_stale_before = oldest->second.last_seen + opt.stale_after;
      return false;
    }
    table.erase(oldest);
    ++st.evicted;
    return true;
  }
};

DiscoveryListener::DiscoveryListener(asio::io_context& io, ListenerOptions options, DiscoveredHandler on_discovered)
    : impl_(std::make_shared<Impl>(io, std::move(options), std::move(on_discovered))) {}

DiscoveryListener::~DiscoveryListener() { impl_->stop(); }

Result<void> DiscoveryListener::start() { return impl_->start(); }
void DiscoveryListener::stop() { impl_->stop(); }

bool DiscoveryListener::running() const {
  std::lock_guard<std::mutex> lock(impl_->m);
  return impl_->running;
}
std::uint16_t DiscoveryListener::local_port() const {
  std::lock_guard<std::mutex> lock(impl_->m);
  return impl_->port;
}
std::vector<DiscoveredAgent> DiscoveryListener::agents() const {
  std::lock_guard<std::mutex> lock(impl_->m);
  std::vector<DiscoveredAgent> out;
  out.reserve(impl_->table.size());
  for (const auto& [key, row] : impl_->table) out.push_back(row);
  return out;
}
std::size_t DiscoveryListener::agent_count() const {
  std::lock_guard<std::mutex> lock(impl_->m);
  return impl_->table.size();
}
std::optional<DiscoveredAgent> DiscoveryListener::find(std::string_view name) const {
  std::lock_guard<std::mutex> lock(impl_->m);
  std::optional<DiscoveredAgent> best;
  for (auto it = impl_->table.lower_bound(Impl::Key(std::string(name), 0));
       it != impl_->table.end() && it->first.first == name; ++it)
    if (!best || it->second.last_seen > best->last_seen) best = it->second;
  return best;
}
DiscoveryStats DiscoveryListener::stats() const {
  std::lock_guard<std::mutex> lock(impl_->m);
  return impl_->st;
}
std::string DiscoveryListener::last_rejection() const {
  std::lock_guard<std::mutex> lock(impl_->m);
  return impl_->last_rejection;
}

}  // namespace fleetdl::core
