// orchestrator/core/fleet_server.cpp — see fleet_server.hpp.
#include "fleet_server.hpp"

#include <asio.hpp>
#include <asio/ssl.hpp>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

namespace fleetdl::core {

namespace {

using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using SslStream = asio::ssl::stream<tcp::socket>;

std::string endpoint_text(const tcp::socket& s) {
  std::error_code ec;
  const auto ep = s.remote_endpoint(ec);
  if (ec) return "(unknown peer)";
  return ep.address().to_string() + ":" + std::to_string(ep.port());
}

constexpr std::size_t kReadChunk = 64 * 1024;

}  // namespace

class Session;

struct FleetServer::Impl {
  ServerOptions opt;
  const FleetCa* ca = nullptr;
  asio::io_context io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::optional<asio::ssl::context> enroll_ctx, fleet_ctx;
  std::optional<tcp::acceptor> enroll_acc, fleet_acc;
  std::optional<Store> store;  ///< the io thread's own connection
  wire::ReplayGuard guard;     ///< io thread only
  std::atomic<std::uint64_t> seq{0};  ///< frames we send: strictly increasing, also across restarts
  std::thread thread;

  mutable std::mutex mu;  ///< guards what follows
  std::condition_variable cv;
  std::deque<Inbound> inbox;
  std::map<std::int64_t, std::shared_ptr<Session>> sessions;  ///< hello'd, by device
  std::map<std::int64_t, wire::Hello> hellos;
  ServerCounters counters;

  void push(Inbound in) {
    {
      std::lock_guard lk(mu);
      inbox.push_back(std::move(in));
    }
    cv.notify_all();
  }
  /// (device, run) pairs the orchestrator has sent a frame of; a device may bind frames only to these
  std::set<std::pair<std::int64_t, std::uint64_t>> runs_of_device;
  bool knows_run(std::int64_t device, std::uint64_t run) {
    std::lock_guard lk(mu);
    return runs_of_device.count({device, run}) > 0;
  }
  void count_close(wire::CloseReason r) {
    std::lock_guard lk(mu);
    ++counters.closes[wire::close_reason_name(r)];
  }
  void event(std::optional<std::int64_t> device, std::string kind, std::string message) {
    Event e;
    e.at = unix_ms_now();
    e.device = device;
    e.kind = std::move(kind);
    e.message = std::move(message);
    (void)store->add_event(e);  // best effort: an event that cannot be written must not stop the fleet
  }
  void accept(bool enroll);
};

/// One TLS connection: enrollment or fleet.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(FleetServer::Impl& s, tcp::socket sock, bool enroll)
      : srv_(s),
        peer_(endpoint_text(sock)),
        stream_(std::move(sock), enroll ? *s.enroll_ctx : *s.fleet_ctx),
        enroll_(enroll),
        payload_(s.opt.limits.max_frame_payload),
        decoder_(std::span<std::uint8_t>(payload_), s.opt.limits),
        rbuf_(kReadChunk),
        timer_(s.io) {}

  void start() {
    last_rx_ = Clock::now();
    arm_timer(std::chrono::milliseconds(srv_.opt.hello_timeout_ms));
    stream_.async_handshake(asio::ssl::stream_base::server,
                            [self = shared_from_this()](const std::error_code& ec) { self->on_handshake(ec); });
  }

  std::int64_t device() const { return device_; }

  /// Queue a frame (io thread).
  void enqueue(std::vector<std::uint8_t> frame) {
    if (closed_) return;
    out_.push_back(std::move(frame));
    if (!writing_) write_next();
  }

  /// Close with `reason`: an `error` frame first unless normal, then TLS
  /// shutdown and the socket (io thread).
  void fail(wire::CloseReason reason, const std::string& text) {
    if (closing_) return;
    closing_ = true;
    srv_.count_close(reason);
    if (reason != wire::CloseReason::normal) {
      wire::ErrorNotice n(reason, text.substr(0, srv_.opt.limits.max_string_bytes));
      auto f = wire::encode_message(n, binding(0, 0), srv_.opt.limits);
      if (f && handshake_done_) {
        out_.push_back(std::move(*f));
        if (!writing_) write_next();
      }
      srv_.event(device_ > 0 ? std::optional<std::int64_t>(device_) : std::nullopt, "closed",
                 peer_ + ": " + wire::close_reason_name(reason) + ": " + text);
    }
    if (!writing_) finish_close();
    detach(std::string(wire::close_reason_name(reason)) + (text.empty() ? "" : ": " + text));
  }

 private:
  wire::Binding binding(std::uint64_t run, std::uint32_t round) {
    return wire::Binding{static_cast<std::uint64_t>(device_ > 0 ? device_ : 0), run, round, ++srv_.seq};
  }

  void arm_timer(std::chrono::milliseconds d) {
    timer_.expires_after(d);
    timer_.async_wait([self = shared_from_this()](const std::error_code& ec) {
      if (!ec) self->on_timer();
    });
  }

  void on_timer() {
    if (closed_ || closing_) return;
    if (!hello_done_) {
      fail(wire::CloseReason::timeout, enroll_ ? "no enrollment request in time" : "no hello in time");
      return;
    }
    const auto hb = std::chrono::milliseconds(srv_.opt.heartbeat_ms);
    if (Clock::now() - last_rx_ > 3 * hb) {
      fail(wire::CloseReason::timeout, "silent for 3 heartbeat intervals");
      return;
    }
    wire::Heartbeat h;
    h.clock_ms = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch()).count());
    if (auto f = wire::encode_message(h, binding(0, 0), srv_.opt.limits)) enqueue(std::move(*f));
    arm_timer(hb);
  }

  void on_handshake(const std::error_code& ec) {
    if (ec) {
      const Error e = handshake_error(stream_, ec, peer_);
      {
        std::lock_guard lk(srv_.mu);
        ++(enroll_ ? srv_.counters.enroll_handshakes_failed : srv_.counters.fleet_handshakes_failed);
      }
      srv_.event(std::nullopt, enroll_ ? "enroll_rejected" : "handshake_rejected", e.message);
      close_socket();
      return;
    }
    handshake_done_ = true;
    if (enroll_) {
      auto id = enrollment_identity(stream_);
      if (!id) {
        fail(wire::CloseReason::internal_error, id.error().message);
        return;
      }
      token_ = *id;
    } else {
      auto peer = verified_peer(stream_);
      if (!peer) {
        fail(wire::CloseReason::internal_error, peer.error().message);
        return;
      }
      auto rec = srv_.store->device_by_fingerprint(peer->fingerprint_sha256);
      if (!rec || !*rec) {
        fail(wire::CloseReason::unexpected_message,
             "certificate '" + peer->common_name + "' is not enrolled in this fleet's database");
        return;
      }
      if ((*rec)->status == DeviceStatus::revoked) {
        fail(wire::CloseReason::unexpected_message, "device '" + peer->common_name + "' is revoked");
        return;
      }
      device_ = (*rec)->id;
      name_ = peer->common_name;
      record_ = **rec;
    }
    read();
  }

  void read() {
    if (closed_ || closing_) return;
    stream_.async_read_some(asio::buffer(rbuf_), [self = shared_from_this()](const std::error_code& ec, std::size_t n) {
      self->on_read(ec, n);
    });
  }

  void on_read(const std::error_code& ec, std::size_t n) {
    if (closed_ || closing_) return;
    if (ec) {
      // the peer went away (EOF, reset, TLS alert): not a protocol error, unless it left a frame unfinished
      const wire::Verdict& cut = decoder_.finish();
      srv_.count_close(cut.ok() ? wire::CloseReason::normal : cut.reason);
      if (!cut.ok())
        srv_.event(device_ > 0 ? std::optional<std::int64_t>(device_) : std::nullopt, "closed",
                   peer_ + ": " + wire::close_reason_name(cut.reason) + ": " + cut.message() + " (" + ec.message() + ")");
      if (hello_done_ && !enroll_)
        srv_.event(device_, "disconnected", "device '" + name_ + "' (" + peer_ + ") disconnected: " + ec.message());
      detach("disconnected: " + ec.message());
      finish_close();
      return;
    }
    last_rx_ = Clock::now();
    std::span<const std::uint8_t> in(rbuf_.data(), n);
    while (!in.empty() && !closing_) {
      const wire::FeedResult r = decoder_.feed(in);
      in = in.subspan(r.consumed);
      if (r.status == wire::FeedStatus::frame) {
        handle(r.frame);
      } else if (r.status == wire::FeedStatus::closed) {
        fail(r.reason, r.message);
        return;
      }
    }
    read();
  }

  void handle(const wire::FrameView& f) {
    {
      std::lock_guard lk(srv_.mu);
      ++srv_.counters.frames_in;
    }
    auto msg = wire::decode_message(f, srv_.opt.limits);
    if (!msg) {
      fail(wire::CloseReason::malformed_payload, msg.error().message);
      return;
    }
    if (enroll_) {
      if (!std::holds_alternative<wire::Enroll>(*msg)) {
        fail(wire::CloseReason::unexpected_message, "an enrollment connection takes only `enroll`");
        return;
      }
      on_enroll(std::get<wire::Enroll>(*msg));
      return;
    }
    if (!hello_done_) {
      if (!std::holds_alternative<wire::Hello>(*msg)) {
        fail(wire::CloseReason::unexpected_message, "the first message must be `hello`");
        return;
      }
      on_hello(std::get<wire::Hello>(*msg));
      return;
    }
    switch (f.header.type) {  // after hello: only what a device sends (docs/wire.md, direction column)
      case wire::MessageType::assign_result:
      case wire::MessageType::update:
      case wire::MessageType::infer_request:
      case wire::MessageType::infer_response:
      case wire::MessageType::heartbeat:
      case wire::MessageType::metrics:
      case wire::MessageType::error:
      case wire::MessageType::bye:
        break;
      default:
        fail(wire::CloseReason::unexpected_message,
             std::string(wire::message_type_name(f.header.type)) + " from a device after hello");
        return;
    }
    // a run this device was never sent a frame of: refused before it takes a replay-guard stream
    if (f.header.binding.run != 0 && !srv_.knows_run(device_, f.header.binding.run)) {
      fail(wire::CloseReason::unexpected_message, "frame for run " + std::to_string(f.header.binding.run) +
                                                      ", which device " + std::to_string(device_) + " is not in");
      return;
    }
    if (f.header.binding.device != static_cast<std::uint64_t>(device_)) {
      fail(wire::CloseReason::unexpected_message, "frame claims device " + std::to_string(f.header.binding.device) +
                                                      ", the connection is device " + std::to_string(device_));
      return;
    }
    const wire::Verdict v = srv_.guard.accept(f.header);
    if (!v) {
      if (v.reason == wire::CloseReason::replay || v.reason == wire::CloseReason::duplicate) {
        // not counted, recorded; the connection stays (a retransmission is not an attack)
        {
          std::lock_guard lk(srv_.mu);
          ++srv_.counters.frames_refused;
        }
        srv_.event(device_, "duplicate", "device '" + name_ + "': " + v.message());
        return;
      }
      fail(v.reason, v.message());
      return;
    }
    if (std::holds_alternative<wire::Heartbeat>(*msg)) return;
    if (std::holds_alternative<wire::Bye>(*msg)) {
      fail(wire::CloseReason::normal, "");
      return;
    }
    if (std::holds_alternative<wire::ErrorNotice>(*msg)) {
      const auto& e = std::get<wire::ErrorNotice>(*msg);
      srv_.event(device_, "device_error", "device '" + name_ + "' reported error " + std::to_string(e.code) + ": " +
                                              e.message);
      fail(wire::CloseReason::normal, "");
      return;
    }
    Inbound in;
    in.kind = Inbound::Kind::message;
    in.device = device_;
    in.header = f.header;
    in.message = std::move(*msg);
    in.frame_bytes = wire::kFrameOverhead + f.payload.size();
    srv_.push(std::move(in));
  }

  void on_enroll(const wire::Enroll& e) {
    if (e.token_identity != token_) {
      fail(wire::CloseReason::unexpected_message,
           "enroll names token '" + e.token_identity + "', the handshake used '" + token_ + "'");
      return;
    }
    auto name = csr_common_name(e.csr_pem);
    if (!name) {
      fail(wire::CloseReason::malformed_payload, name.error().message);
      return;
    }
    auto cert = srv_.ca->issue_device_cert(e.csr_pem, *name, srv_.opt.cert_days);
    if (!cert) {
      fail(wire::CloseReason::malformed_payload, cert.error().message);
      return;
    }
    auto fp = fingerprint_sha256(*cert);
    if (!fp) {
      fail(wire::CloseReason::internal_error, fp.error().message);
      return;
    }
    DeviceRecord rec;
    if (auto old = srv_.store->device_by_name(*name); old && *old) rec = **old;  // re-enrollment: new certificate
    rec.name = *name;
    rec.cert_fingerprint = *fp;
    rec.enrolled_at = unix_ms_now();
    rec.status = DeviceStatus::enrolled;
    auto id = srv_.store->upsert_device(rec);
    if (!id) {
      fail(wire::CloseReason::internal_error, id.error().message);
      return;
    }
    (void)srv_.store->bind_token_device(token_, *id);
    device_ = *id;
    srv_.event(*id, "enrolled", "device '" + *name + "' enrolled with token '" + token_ + "' from " + peer_);
    {
      std::lock_guard lk(srv_.mu);
      ++srv_.counters.enrolled;
    }
    wire::EnrollAck ack;
    ack.device_id = static_cast<std::uint64_t>(*id);
    ack.certificate_pem = *cert;
    ack.ca_certificate_pem = srv_.ca->ca_cert_pem();
    auto f = wire::encode_message(ack, binding(0, 0), srv_.opt.limits);
    if (!f) {
      fail(wire::CloseReason::internal_error, f.error().message);
      return;
    }
    hello_done_ = true;  // nothing more is expected; the timer no longer applies
    enqueue(std::move(*f));
    closing_ = true;  // close once the acknowledgement is written
    if (!writing_) finish_close();
  }

  void on_hello(const wire::Hello& h) {
    if (h.agent_name != name_) {
      fail(wire::CloseReason::unexpected_message,
           "hello names '" + h.agent_name + "', the certificate '" + name_ + "'");
      return;
    }
    DeviceRecord rec = record_;
    rec.capabilities.cores = h.cores;
    rec.capabilities.ram_bytes = static_cast<std::int64_t>(h.ram_bytes);
    rec.capabilities.storage_bytes = static_cast<std::int64_t>(h.storage_bytes);
    rec.capabilities.macs_per_second = h.mac_per_s;
    rec.capabilities.link_bytes_per_second = h.link_bytes_per_s;
    rec.capabilities.memory_budget_bytes = static_cast<std::int64_t>(h.memory_budget_bytes);
    rec.status = DeviceStatus::online;
    rec.last_seen = unix_ms_now();
    if (auto up = srv_.store->upsert_device(rec); !up) {
      fail(wire::CloseReason::internal_error, up.error().message);
      return;
    }
    wire::HelloAck ack;
    ack.device_id = static_cast<std::uint64_t>(device_);
    ack.heartbeat_interval_ms = srv_.opt.heartbeat_ms;
    auto f = wire::encode_message(ack, binding(0, 0), srv_.opt.limits);
    if (!f) {
      fail(wire::CloseReason::internal_error, f.error().message);
      return;
    }
    hello_done_ = true;
    enqueue(std::move(*f));
    std::shared_ptr<Session> old;
    {
      std::lock_guard lk(srv_.mu);
      auto it = srv_.sessions.find(device_);
      if (it != srv_.sessions.end()) old = it->second;
      srv_.sessions[device_] = shared_from_this();
      srv_.hellos[device_] = h;
      ++srv_.counters.sessions_opened;
    }
    if (old) old->fail(wire::CloseReason::normal, "replaced by a new connection");
    registered_ = true;
    srv_.event(device_, "connected", "device '" + name_ + "' connected from " + peer_);
    Inbound in;
    in.kind = Inbound::Kind::connected;
    in.device = device_;
    srv_.push(std::move(in));
    arm_timer(std::chrono::milliseconds(srv_.opt.heartbeat_ms));
  }

  void write_next() {
    writing_ = true;
    asio::async_write(stream_, asio::buffer(out_.front()),
                      [self = shared_from_this()](const std::error_code& ec, std::size_t) {
                        self->out_.pop_front();
                        if (ec) {
                          self->writing_ = false;
                          self->out_.clear();
                          if (!self->closing_) {
                            self->srv_.count_close(wire::CloseReason::normal);
                            self->detach("write failed: " + ec.message());
                          }
                          self->closing_ = true;
                          self->finish_close();
                          return;
                        }
                        if (!self->out_.empty()) {
                          self->write_next();
                          return;
                        }
                        self->writing_ = false;
                        if (self->closing_) self->finish_close();
                      });
  }

  /// Leave the registry and tell the round engine (once).
  void detach(const std::string& why) {
    if (!registered_) return;
    registered_ = false;
    bool was_current = false;
    {
      std::lock_guard lk(srv_.mu);
      auto it = srv_.sessions.find(device_);
      if (it != srv_.sessions.end() && it->second.get() == this) {
        srv_.sessions.erase(it);
        srv_.hellos.erase(device_);
        was_current = true;
      }
    }
    if (!was_current) return;
    (void)srv_.store->set_device_status(device_, DeviceStatus::offline);
    Inbound in;
    in.kind = Inbound::Kind::closed;
    in.device = device_;
    in.reason = why;
    srv_.push(std::move(in));
  }

  void finish_close() {
    if (closed_) return;
    closed_ = true;
    timer_.cancel();
    // a TLS close_notify, bounded: the peer may be gone
    auto self = shared_from_this();
    stream_.async_shutdown([self](const std::error_code&) { self->close_socket(); });
    timer_.expires_after(std::chrono::milliseconds(500));
    timer_.async_wait([self](const std::error_code&) { self->close_socket(); });
  }

  void close_socket() {
    std::error_code ignored;
    stream_.lowest_layer().close(ignored);
  }

  FleetServer::Impl& srv_;
  std::string peer_;
  SslStream stream_;
  bool enroll_;
  std::vector<std::uint8_t> payload_;
  wire::FrameDecoder decoder_;
  std::vector<std::uint8_t> rbuf_;
  asio::steady_timer timer_;
  std::deque<std::vector<std::uint8_t>> out_;
  bool writing_ = false, closing_ = false, closed_ = false;
  bool handshake_done_ = false, hello_done_ = false, registered_ = false;
  Clock::time_point last_rx_;
  std::int64_t device_ = 0;
  std::string name_, token_;
  DeviceRecord record_;
};

void FleetServer::Impl::accept(bool enroll) {
  auto& acc = enroll ? *enroll_acc : *fleet_acc;
  acc.async_accept([this, enroll](const std::error_code& ec, tcp::socket sock) {
    if (ec == asio::error::operation_aborted) return;
    if (!ec) {
      std::error_code ignored;
      sock.set_option(tcp::no_delay(true), ignored);
      std::make_shared<Session>(*this, std::move(sock), enroll)->start();
    }
    accept(enroll);
  });
}

FleetServer::FleetServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

FleetServer::~FleetServer() {
  if (!impl_) return;
  impl_->work.reset();
  impl_->io.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

Result<std::unique_ptr<FleetServer>> FleetServer::start(const ServerOptions& options, const FleetCa& ca) {
  auto impl = std::make_unique<Impl>();
  Impl& s = *impl;
  s.opt = options;
  s.ca = &ca;
  s.seq = static_cast<std::uint64_t>(unix_ms_now()) * 1000;
  auto st = Store::open(options.db_path);
  if (!st) return std::move(st).error();
  s.store.emplace(std::move(*st));
  auto server_cert = ca.issue_server_cert(options.server_names, 30);
  if (!server_cert) return std::move(server_cert).error();
  auto fctx = make_fleet_server_context(ca, *server_cert);
  if (!fctx) return std::move(fctx).error();
  s.fleet_ctx.emplace(std::move(*fctx));
  Impl* raw = &s;
  auto ectx = make_enroll_server_context([raw](std::string_view identity) -> std::optional<std::vector<std::uint8_t>> {
    auto secret = raw->store->consume_token(identity, unix_ms_now());
    if (!secret) {
      raw->event(std::nullopt, "token_rejected", secret.error().message);
      return std::nullopt;
    }
    return std::vector<std::uint8_t>(secret->begin(), secret->end());
  });
  if (!ectx) return std::move(ectx).error();
  s.enroll_ctx.emplace(std::move(*ectx));

  std::error_code ec;
  const auto addr = asio::ip::make_address(options.bind_address, ec);
  if (ec) return make_error(Errc::invalid_argument, "bind address '" + options.bind_address + "': " + ec.message());
  for (int i = 0; i < 2; ++i) {
    const bool enroll = i == 0;
    auto& acc = enroll ? s.enroll_acc : s.fleet_acc;
    acc.emplace(s.io);
    const tcp::endpoint ep(addr, enroll ? options.enroll_port : options.fleet_port);
    acc->open(ep.protocol(), ec);
    if (!ec) acc->set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acc->bind(ep, ec);
    if (!ec) acc->listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
      return make_error(Errc::io_error, std::string(enroll ? "enrollment" : "fleet") + " port " +
                                            options.bind_address + ":" + std::to_string(ep.port()) + ": " + ec.message());
  }
  s.accept(true);
  s.accept(false);
  s.work.emplace(asio::make_work_guard(s.io));
  s.thread = std::thread([raw] { raw->io.run(); });
  return std::unique_ptr<FleetServer>(new FleetServer(std::move(impl)));
}

std::uint16_t FleetServer::enroll_port() const { return impl_->enroll_acc->local_endpoint().port(); }
std::uint16_t FleetServer::fleet_port() const { return impl_->fleet_acc->local_endpoint().port(); }

Result<std::size_t> FleetServer::send(std::int64_t device, const wire::Message& m, const wire::Binding& b) {
  wire::Binding bound = b;
  bound.device = static_cast<std::uint64_t>(device);
  bound.seq = ++impl_->seq;
  auto frame = wire::encode_message(m, bound, impl_->opt.limits);
  if (!frame) return std::move(frame).error();
  std::shared_ptr<Session> s;
  {
    std::lock_guard lk(impl_->mu);
    auto it = impl_->sessions.find(device);
    if (it == impl_->sessions.end())
      return make_error(Errc::not_found, "device " + std::to_string(device) + " is not connected");
    s = it->second;
  }
  if (bound.run != 0) {
    std::lock_guard lk(impl_->mu);
    impl_->runs_of_device.insert({device, bound.run});
  }
  const std::size_t n = frame->size();
  asio::post(impl_->io, [s, f = std::move(*frame)]() mutable { s->enqueue(std::move(f)); });
  return n;
}

void FleetServer::close(std::int64_t device, wire::CloseReason reason, const std::string& text) {
  std::shared_ptr<Session> s;
  {
    std::lock_guard lk(impl_->mu);
    auto it = impl_->sessions.find(device);
    if (it == impl_->sessions.end()) return;
    s = it->second;
  }
  asio::post(impl_->io, [s, reason, text] { s->fail(reason, text); });
}

std::optional<Inbound> FleetServer::next(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock lk(impl_->mu);
  if (!impl_->cv.wait_until(lk, deadline, [&] { return !impl_->inbox.empty(); })) return std::nullopt;
  Inbound in = std::move(impl_->inbox.front());
  impl_->inbox.pop_front();
  return in;
}

std::vector<std::int64_t> FleetServer::connected() const {
  std::lock_guard lk(impl_->mu);
  std::vector<std::int64_t> out;
  for (const auto& [d, s] : impl_->sessions) out.push_back(d);
  return out;
}

std::optional<wire::Hello> FleetServer::hello_of(std::int64_t device) const {
  std::lock_guard lk(impl_->mu);
  auto it = impl_->hellos.find(device);
  if (it == impl_->hellos.end()) return std::nullopt;
  return it->second;
}

ServerCounters FleetServer::counters() const {
  std::lock_guard lk(impl_->mu);
  return impl_->counters;
}

void FleetServer::forget_run(std::uint64_t run) {
  {
    std::lock_guard lk(impl_->mu);
    std::erase_if(impl_->runs_of_device, [run](const auto& p) { return p.second == run; });
  }
  asio::post(impl_->io, [impl = impl_.get(), run] { impl->guard.forget_run(run); });
}

}  // namespace fleetdl::core
