// orchestrator/core/fleet_server.hpp — the orchestrator's network side: the
// enrollment listener (TLS 1.3 PSK with one-time tokens), the fleet listener
// (mutual TLS 1.3, certificates of this fleet's CA), and one session per
// connected device speaking the wire protocol (docs/fleet.md).
//
// The server runs its own io_context on one thread. The round engine talks to
// it from its own thread: send() encodes a message and queues the frame
// (returning the exact frame size, which is what the database records as
// bytes down), and next() hands over what the devices sent, in arrival
// order, as Inbound events (a device connected, a message, a device gone).
//
// What is checked where:
//   * a peer without a valid certificate, or with a used/unknown token, fails
//     the TLS handshake: no frame of it is ever decoded;
//   * every frame goes through a wire::FrameDecoder (limits checked before
//     any copy) and a wire::ReplayGuard (replays and duplicate updates are
//     refused before the round engine sees them); a verdict closes the
//     connection with its CloseReason, after an `error` frame, and is
//     recorded as an event;
//   * a fleet connection must send `hello` first, within the hello timeout;
//   * a session silent for 3 heartbeat intervals is closed with `timeout`.
//
// The server keeps a second connection to the fleet database (SQLite allows
// it; writes wait on busy_timeout) for what happens on its thread: consuming
// enrollment tokens during the PSK handshake, recording enrolled devices and
// their capabilities, and events.
#pragma once

#include "fleet_ca.hpp"
#include "store.hpp"

#include "fleetdl/core/error.hpp"
#include "fleetdl/wire.hpp"

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace fleetdl::core {

/// Something a device did, for the round engine.
struct Inbound {
  enum class Kind { connected, message, closed };
  Kind kind = Kind::message;
  std::int64_t device = 0;
  wire::FrameHeader header{};  ///< message: the frame's header (binding)
  wire::Message message;       ///< message: the decoded message
  std::size_t frame_bytes = 0;  ///< message: bytes of the whole frame on the wire
  std::string reason;           ///< closed: why
};

struct ServerOptions {
  std::string db_path;                   ///< the fleet database (a second connection is opened)
  std::string bind_address = "127.0.0.1";
  std::uint16_t enroll_port = 0;         ///< 0: an ephemeral port
  std::uint16_t fleet_port = 0;          ///< 0: an ephemeral port
  std::vector<std::string> server_names = {"127.0.0.1", "localhost"};  ///< SANs of the server certificate
  wire::Limits limits{};
  std::uint32_t heartbeat_ms = 1000;
  std::uint32_t hello_timeout_ms = 10000;
  int cert_days = 365;
};

/// Counters for tests and metrics.
struct ServerCounters {
  std::uint64_t enrolled = 0;
  std::uint64_t enroll_handshakes_failed = 0;
  std::uint64_t fleet_handshakes_failed = 0;
  std::uint64_t sessions_opened = 0;
  std::uint64_t frames_in = 0;
  std::uint64_t frames_refused = 0;  ///< replays and duplicates (connection kept)
  std::map<std::string, std::uint64_t> closes;  ///< by CloseReason name
};

class FleetServer {
 public:
  /// Bind both listeners and start the io thread. `ca` must outlive the server.
  static Result<std::unique_ptr<FleetServer>> start(const ServerOptions& options, const FleetCa& ca);
  ~FleetServer();
  FleetServer(const FleetServer&) = delete;
  FleetServer& operator=(const FleetServer&) = delete;

  std::uint16_t enroll_port() const;
  std::uint16_t fleet_port() const;

  /// Encode `m` bound to `b` and queue it for `device`. Returns the frame's
  /// size in bytes; an error when the device is not connected or the message
  /// breaks the limits.
  Result<std::size_t> send(std::int64_t device, const wire::Message& m, const wire::Binding& b);
  /// Close a device's connection (an `error` frame first when reason != normal).
  void close(std::int64_t device, wire::CloseReason reason, const std::string& text);
  /// The next event, or nullopt once `deadline` passes.
  std::optional<Inbound> next(std::chrono::steady_clock::time_point deadline);
  /// Devices with an open, hello'd session, ascending.
  std::vector<std::int64_t> connected() const;
  /// A connected device's hello.
  std::optional<wire::Hello> hello_of(std::int64_t device) const;
  ServerCounters counters() const;
  /// Forget what the replay guard knows of `run` (its rounds are over).
  void forget_run(std::uint64_t run);

  struct Impl;

 private:
  explicit FleetServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fleetdl::core
