// orchestrator/core/discovery.hpp — fleet discovery over UDP: the agent's
// Announcer and the orchestrator's DiscoveryListener.
//
// Flow (docs/fleet-discovery.md has the long form):
//   * An agent's Announcer sends an Announce datagram (fleetdl/wire/announce.hpp)
//     every `interval` (±jitter) to a list of targets: by default the limited
//     broadcast 255.255.255.255 and 127.0.0.1, on kDefaultDiscoveryPort.
//   * The orchestrator's DiscoveryListener keeps a bounded table of the agents
//     it hears and answers each with a unicast Invite (at most one per agent
//     per invite_interval) saying where to connect: the enrollment port (TLS
//     with a one-time-token PSK) for an agent without a certificate, the fleet
//     port (mutual TLS) for an enrolled one.
//   * The Announcer checks the invite (its nonce echoed; the fleet CA's
//     fingerprint when it knows one) and hands the orchestrator's endpoint to
//     its callback. It keeps announcing until stopped; an agent stops it once
//     connected and starts it again when the connection is lost.
//
// Datagrams are not authenticated. They only say where to connect; trust comes
// from the TLS handshake that follows (fleet_ca.hpp). Hostile datagrams are
// decoded strictly, counted by reason and dropped; nothing they declare is
// allocated, and the agent table never grows past its capacity.
//
// Threading: both classes run on a caller's io_context (one thread runs it, as
// everywhere in the core). start(), stop() and the accessors may be called
// from any thread. Callbacks run on the io_context's thread; once stop()
// returns, no callback is running or will run (stop() may also be called from
// inside a callback). A stopped object may be started again.
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/wire/announce.hpp"

#include <asio.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fleetdl::core {

// ---------------------------------------------------------------- agent side

/// Where an accepted invite tells the agent to connect.
struct OrchestratorEndpoint {
  asio::ip::address_v4 address;        ///< the invite's address, or its source address when that is 0.0.0.0
  std::uint16_t enroll_port = 0;       ///< TLS-PSK enrollment; 0 = enrollment closed
  std::uint16_t fleet_port = 0;        ///< mutual TLS
  std::uint64_t fleet_id = 0;
  wire::Fingerprint ca_fingerprint{};  ///< the fleet CA's, as the invite states it (unverified until TLS)
  asio::ip::udp::endpoint invited_by;  ///< the invite datagram's source
};

struct AnnouncerOptions {
  std::string name;                          ///< is_valid_agent_name
  std::uint64_t nonce = 0;                   ///< 0: drawn from std::random_device by start()
  wire::Capabilities caps;
  bool enrolled = false;
  wire::Fingerprint cert_fingerprint{};      ///< the agent's certificate's; required when enrolled
  /// Invites stating another CA fingerprint are ignored. Required when
  /// enrolled; an unenrolled agent may set it (e.g. from its token) or leave
  /// it zero to take any fleet's invite.
  wire::Fingerprint fleet_ca_fingerprint{};
  /// Where announces go. Empty: default_announce_targets(port).
  std::vector<asio::ip::udp::endpoint> targets;
  std::uint16_t port = wire::kDefaultDiscoveryPort;
  std::chrono::milliseconds interval{500};   ///< between announce rounds, >= 1 ms
  double jitter = 0.2;                       ///< each wait is interval x (1 + u), u uniform in [-jitter, jitter], jitter in [0, 0.9]
  std::uint64_t jitter_seed = 0;             ///< 0: the nonce
  asio::ip::udp::endpoint bind{asio::ip::address_v4::any(), 0};  ///< IPv4 only
};

/// 255.255.255.255:port and 127.0.0.1:port.
std::vector<asio::ip::udp::endpoint> default_announce_targets(std::uint16_t port);

/// The 32 bytes of a SHA-256 fingerprint written as 64 hex digits (as
/// fleet_ca.hpp's fingerprint_sha256 gives it), for the datagrams' fields.
Result<wire::Fingerprint> fingerprint_bytes(std::string_view hex);

struct AnnouncerStats {
  std::uint64_t announces_sent = 0;          ///< datagrams sent (rounds x targets, minus errors)
  std::uint64_t send_errors = 0;             ///< e.g. no route to a broadcast target
  std::uint64_t receive_errors = 0;
  std::uint64_t invites_accepted = 0;        ///< passed to the callback
  std::uint64_t invites_malformed = 0;       ///< not an invite datagram (any DatagramFault)
  std::uint64_t invites_wrong_nonce = 0;     ///< for another agent or an earlier run of this one
  std::uint64_t invites_wrong_fleet = 0;     ///< CA fingerprint differs from fleet_ca_fingerprint
  std::uint64_t invites_enrollment_closed = 0;  ///< unenrolled agent, invite's enroll port is 0
};

class Announcer {
 public:
  using InviteHandler = std::function<void(const OrchestratorEndpoint&)>;

  Announcer(asio::io_context& io, AnnouncerOptions options, InviteHandler on_invite);
  ~Announcer();  ///< stop()
  Announcer(const Announcer&) = delete;
  Announcer& operator=(const Announcer&) = delete;

  /// Checks the options, opens and binds the socket (SO_BROADCAST) and sends
  /// the first announce round at once. Errors name the option or the socket
  /// call. Starting a started announcer is an error.
  Result<void> start();
  /// Stops announcing and closes the socket. The nonce and sequence persist
  /// across stop()/start(), so the orchestrator sees the same agent.
  void stop();

  bool running() const;
  std::uint64_t nonce() const;               ///< 0 until the first start() when options.nonce was 0
  std::uint16_t local_port() const;          ///< 0 when not running
  AnnouncerStats stats() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// ---------------------------------------------------------------- orchestrator side

/// One row of the listener's table, keyed by (name, nonce): an agent that
/// restarts (new nonce) is a new row; the old one ages out.
struct DiscoveredAgent {
  std::string name;
  std::uint64_t nonce = 0;
  asio::ip::udp::endpoint source;            ///< of the newest announce
  bool enrolled = false;
  wire::Fingerprint cert_fingerprint{};      ///< as announced (unverified until TLS)
  wire::Capabilities caps;                   ///< as announced, newest
  std::uint32_t last_sequence = 0;
  std::uint64_t announces = 0;               ///< valid announces heard
  std::uint64_t invites_sent = 0;
  std::chrono::steady_clock::time_point first_seen{};
  std::chrono::steady_clock::time_point last_seen{};
  std::chrono::steady_clock::time_point last_invite{};
};

struct ListenerOptions {
  asio::ip::address_v4 bind_address = asio::ip::address_v4::any();
  std::uint16_t port = wire::kDefaultDiscoveryPort;  ///< 0: an ephemeral port (tests; see local_port())
  std::uint64_t fleet_id = 0;                ///< != 0
  wire::Fingerprint ca_fingerprint{};        ///< the fleet CA certificate's SHA-256; not all zero
  std::uint16_t enroll_port = 0;             ///< 0: enrollment closed
  std::uint16_t fleet_port = 0;              ///< >= 1
  /// Address put in invites; 0.0.0.0 (default) lets the agent use the
  /// invite's source address, right whenever the orchestrator's TCP
  /// listeners are on the address that answers (the usual case).
  asio::ip::address_v4 advertise{};
  std::chrono::milliseconds invite_interval{500};  ///< at most one invite per agent per this
  /// Most agents in the table. A new agent when full evicts the one heard
  /// from least recently if it has been silent for stale_after; otherwise the
  /// new one is refused (counted as table_full) and gets no invite. A flood of
  /// forged announces thus cannot push out live agents, which re-announce
  /// every interval.
  std::size_t capacity = 4096;
  std::chrono::milliseconds stale_after{30000};
};

struct DiscoveryStats {
  std::uint64_t datagrams = 0;               ///< received, valid or not
  std::uint64_t announces = 0;               ///< valid announces
  std::uint64_t agents_discovered = 0;       ///< new (name, nonce) rows (on_discovered calls)
  std::uint64_t invites_sent = 0;
  std::uint64_t invites_rate_limited = 0;    ///< valid announces not answered (invite_interval)
  std::uint64_t table_full = 0;              ///< new agents refused: table full, no row stale
  std::uint64_t evicted = 0;                 ///< stale rows dropped for a new agent
  std::uint64_t send_errors = 0;
  std::uint64_t receive_errors = 0;
  /// Malformed datagrams by wire::DatagramFault (index 0, none, stays 0).
  std::array<std::uint64_t, wire::kDatagramFaultCount> rejected{};

  std::uint64_t rejected_total() const noexcept {
    std::uint64_t n = 0;
    for (std::uint64_t r : rejected) n += r;
    return n;
  }
  std::uint64_t rejected_by(wire::DatagramFault f) const noexcept { return rejected[static_cast<std::size_t>(f)]; }
};

class DiscoveryListener {
 public:
  using DiscoveredHandler = std::function<void(const DiscoveredAgent&)>;

  DiscoveryListener(asio::io_context& io, ListenerOptions options, DiscoveredHandler on_discovered = {});
  ~DiscoveryListener();  ///< stop()
  DiscoveryListener(const DiscoveryListener&) = delete;
  DiscoveryListener& operator=(const DiscoveryListener&) = delete;

  /// Checks the options, binds (SO_REUSEADDR) and starts receiving. The table
  /// and the counters persist across stop()/start().
  Result<void> start();
  void stop();

  bool running() const;
  std::uint16_t local_port() const;          ///< the bound port (the ephemeral one for port 0); 0 when not running
  std::vector<DiscoveredAgent> agents() const;  ///< a snapshot, ordered by (name, nonce)
  std::size_t agent_count() const;
  /// The most recently heard row with this name, if any.
  std::optional<DiscoveredAgent> find(std::string_view name) const;
  DiscoveryStats stats() const;
  /// One line describing the newest refused datagram ("" if none), for logs.
  std::string last_rejection() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace fleetdl::core
