// tests/core/fleet_rogue.cpp — a misbehaving device for
// tests/core/fleet_rogue_test.py: it speaks to a real `fleetdl fleet run` over
// real TLS (enrollment with a one-time token, then mutual TLS with the
// certificate it got), and sends what a well-behaved agent never would.
//
//   fleet_rogue enroll --host H --enroll-port E --token ID:HEX --name N --state-dir D
//     Enrolls like fleetdl-agent (key + CSR, TLS 1.3 PSK, `enroll`), stores
//     key.pem, cert.pem, ca.pem and device_id in D, prints
//       {"enrolled": ID, "name": "N"}
//
//   fleet_rogue prime --connect H:F --state-dir D [--budget BYTES]
//     One orderly session: hello, hello_ack, bye, the server closes. Leaves
//     the device row as the malformed cases' hellos leave it.
//
//   fleet_rogue malformed --connect H:F --state-dir D [--budget BYTES] [--case NAME ...]
//                         [--phase pre-hello|post-hello]
//     One connection per case (all cases, or those named, of the phase); each sends one bad
//     frame (before or after a valid hello) and prints one JSON line:
//       {"case":..., "phase":"pre-hello"|"post-hello", "expect":REASON|"none",
//        "error_code":N|null, "error_reason":..., "error_text":...,
//        "closed":bool, "close_ms":N, "extra_frames":[...], "ok":bool, "note":...}
//     `expect` is the CloseReason the `error` frame must carry ("none": no
//     error frame, the connection just closes). Exit 0 when every case is ok.
//
//   fleet_rogue train --connect H:F --state-dir D [--budget BYTES] [--examples N]
//                     [--no-replay | --replay-until R]
//     A device that takes the module (assign_result accepted) and answers
//     every train_round with a raw-float32 update (delta = -0.001 x the
//     global parameters, `examples` examples). After each update of rounds
//     1 .. R (all rounds by default, none with --no-replay) it sends: the
//     same frame bytes again (a replay, same seq); a
//     second update for the same round with a fresh seq (a duplicate, delta
//     1.0 and 99999 examples, so counting it would show); from round 2 on,
//     the previous round's update bytes again and a fresh-seq update for the
//     previous round. (The orchestrator forgets a run's replay state once
//     the run ends, right after the last round's updates, so copies sent after
//     the last round's update race with that; the test stops one round
//     earlier.) Prints one JSON line per update and a final
//       {"done": true, "bye": bool, "error": ..., "rounds": [...], ...}
//     Exit 0 when the run ended with `bye` on the one connection.
//
// Every wait has a deadline (--timeout-ms, default 30000, for the whole
// program). Exit 1 on a failure, 2 on a usage error.
#include "fleet_ca.hpp"

#include "fleetdl/wire.hpp"

#include <asio.hpp>
#include <asio/ssl.hpp>

#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace w = fleetdl::wire;
namespace core = fleetdl::core;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using SslStream = asio::ssl::stream<tcp::socket>;
using Bytes = std::vector<std::uint8_t>;

struct UsageError {
  std::string what;
};

// ------------------------------------------------------------ small helpers
std::string json_str(const std::string& s) {
  std::string o = "\"";
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      o += '\\';
      o += ch;
    } else if (c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += ch;
    }
  }
  return o + "\"";
}

std::uint64_t unix_ms() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

/// Sequence numbers: strictly increasing and above anything an earlier
/// process of this device sent (milliseconds x 1024, as docs/wire.md suggests).
std::uint64_t g_seq = 0;
std::uint64_t next_seq() {
  if (g_seq == 0) g_seq = unix_ms() * 1024;
  return ++g_seq;
}

Bytes must(fleetdl::Result<Bytes> r, const char* what) {
  if (!r) {
    std::fprintf(stderr, "fleet_rogue: encoding %s: %s\n", what, r.error().message.c_str());
    std::exit(1);
  }
  return std::move(*r);
}

void put_u32(Bytes& b, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(v >> (8 * i));
}
std::uint32_t get_u32(const Bytes& b, std::size_t at) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | b[at + static_cast<std::size_t>(i)];
  return v;
}

/// Re-seal a frame whose header or payload was edited: a correct CRC over
/// whatever the bytes now say (so the decoder judges the edited field, not the CRC).
void reseal(Bytes& f) {
  const std::uint32_t crc = fleetdl::crc32(f.data(), f.size() - w::kCrcBytes);
  put_u32(f, f.size() - w::kCrcBytes, crc);
}

/// A frame of `type` around an arbitrary payload, with a correct CRC.
Bytes raw_frame(w::MessageType type, const w::Binding& b, const Bytes& payload) {
  return must(w::encode_frame(type, b, payload, w::Limits{}), "raw frame");
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "fleet_rogue: cannot read %s\n", path.c_str());
    std::exit(1);
  }
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_text(const std::string& path, const std::string& text, mode_t mode) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out) {
      std::fprintf(stderr, "fleet_rogue: cannot write %s\n", path.c_str());
      std::exit(1);
    }
  }
  ::chmod(path.c_str(), mode);
}

// ------------------------------------------------------------ one TLS connection
struct Frame {
  w::FrameHeader header;
  Bytes payload;
  std::size_t bytes = 0;  ///< the whole frame on the wire
};

/// A client connection driven by its own io_context: every wait runs the
/// context until a condition holds or a deadline passes.
class Conn {
 public:
  explicit Conn(asio::ssl::context ctx) : ctx_(std::move(ctx)), stream_(io_, ctx_), rx_(w::Limits{}.max_frame_payload),
                                 decoder_(rx_, w::Limits{}), in_(64 * 1024), hb_(io_) {}
  ~Conn() {
    std::error_code ig;
    hb_.cancel();
    stream_.lowest_layer().close(ig);
    io_.restart();
    io_.poll();
  }

  /// TCP connect + TLS handshake.
  bool connect(const std::string& host, std::uint16_t port, Clock::time_point deadline, std::string& err) {
    std::error_code ec;
    const auto addr = asio::ip::make_address(host, ec);
    if (ec) {
      err = "address '" + host + "': " + ec.message();
      return false;
    }
    // (the handlers write members, not locals: after a timeout they still run, aborted, in ~Conn)
    stream_.lowest_layer().async_connect(tcp::endpoint(addr, port), [this](const std::error_code& e) {
      if (e) {
        connect_ec_ = e;
        connected_ = true;
        return;
      }
      std::error_code nd;
      stream_.lowest_layer().set_option(tcp::no_delay(true), nd);
      stream_.async_handshake(asio::ssl::stream_base::client, [this](const std::error_code& e2) {
        connect_ec_ = e2;
        connected_ = true;
      });
    });
    if (!drive(deadline, [&] { return connected_; })) {
      err = "connect/handshake timed out";
      return false;
    }
    if (connect_ec_) {
      err = core::handshake_error(stream_, connect_ec_, host).message;
      return false;
    }
    start_reading();
    return true;
  }

  /// Queue bytes; they go out in order.
  void write(Bytes b) {
    if (closed_) return;
    out_.push_back(std::move(b));
    if (!writing_) write_next();
  }

  /// Until every queued byte is written (or the connection failed).
  bool flush(Clock::time_point deadline) {
    return drive(deadline, [&] { return out_.empty() || closed_; }) && out_.empty();
  }

  /// The next frame that is not a heartbeat (heartbeats are counted), or
  /// nullopt when the connection closed or the deadline passed (see closed()).
  std::optional<Frame> next(Clock::time_point deadline) {
    for (;;) {
      drive(deadline, [&] { return !frames_.empty() || closed_; });
      if (frames_.empty()) return std::nullopt;
      Frame f = std::move(frames_.front());
      frames_.pop_front();
      if (f.header.type == w::MessageType::heartbeat) {
        ++heartbeats_in_;
        continue;
      }
      return f;
    }
  }

  /// Send heartbeats every `ms` bound to (device, run) from now on.
  void heartbeats(std::uint32_t ms, std::uint64_t device, std::uint64_t run) {
    hb_ms_ = ms;
    hb_device_ = device;
    hb_run_ = run;
    arm_heartbeat();
  }
  void stop_heartbeats() {
    hb_ms_ = 0;
    hb_.cancel();
  }

  /// Shut the TCP write side (no TLS close_notify): the peer sees the stream
  /// end wherever it was, e.g. inside a frame.
  void half_close() {
    std::error_code ig;
    stream_.lowest_layer().shutdown(tcp::socket::shutdown_send, ig);
  }

  bool closed() const { return closed_; }
  const std::string& close_text() const { return close_text_; }
  std::uint64_t heartbeats_in() const { return heartbeats_in_; }
  /// The peer sent something the decoder refused (a bug in the orchestrator).
  const std::string& protocol_error() const { return protocol_error_; }

 private:
  template <class Pred>
  bool drive(Clock::time_point deadline, Pred done) {
    for (;;) {
      if (done()) return true;
      if (Clock::now() >= deadline) return false;
      if (io_.stopped()) io_.restart();
      if (io_.run_one_until(deadline) == 0) return done();
    }
  }

  void start_reading() {
    stream_.async_read_some(asio::buffer(in_), [this](const std::error_code& ec, std::size_t n) {
      if (ec) {
        closed_ = true;
        close_text_ = ec.message();
        return;
      }
      std::span<const std::uint8_t> in(in_.data(), n);
      while (!in.empty()) {
        const w::FeedResult r = decoder_.feed(in);
        in = in.subspan(r.consumed);
        if (r.status == w::FeedStatus::closed) {
          protocol_error_ = std::string(w::close_reason_name(r.reason)) + ": " + r.message;
          closed_ = true;
          close_text_ = "undecodable input from the orchestrator";
          return;
        }
        if (r.status == w::FeedStatus::frame) {
          Frame f;
          f.header = r.frame.header;
          f.payload.assign(r.frame.payload.begin(), r.frame.payload.end());
          f.bytes = w::kFrameOverhead + f.payload.size();
          frames_.push_back(std::move(f));
        }
      }
      start_reading();
    });
  }

  void write_next() {
    writing_ = true;
    asio::async_write(stream_, asio::buffer(out_.front()), [this](const std::error_code& ec, std::size_t) {
      writing_ = false;
      if (ec) {
        out_.clear();
        closed_ = true;
        if (close_text_.empty()) close_text_ = "write: " + ec.message();
        return;
      }
      out_.pop_front();
      if (!out_.empty()) write_next();
    });
  }

  void arm_heartbeat() {
    if (hb_ms_ == 0) return;
    hb_.expires_after(std::chrono::milliseconds(hb_ms_));
    hb_.async_wait([this](const std::error_code& ec) {
      if (ec || hb_ms_ == 0 || closed_) return;
      w::Heartbeat h;
      h.clock_ms = unix_ms();
      write(must(w::encode_message(h, w::Binding{hb_device_, hb_run_, 0, next_seq()}), "heartbeat"));
      arm_heartbeat();
    });
  }

  asio::io_context io_;
  asio::ssl::context ctx_;
  SslStream stream_;
  Bytes rx_;
  w::FrameDecoder decoder_;
  Bytes in_;
  std::deque<Frame> frames_;
  std::deque<Bytes> out_;
  bool writing_ = false;
  bool closed_ = false;
  bool connected_ = false;
  std::error_code connect_ec_;
  std::string close_text_, protocol_error_;
  std::uint64_t heartbeats_in_ = 0;
  asio::steady_timer hb_;
  std::uint32_t hb_ms_ = 0;
  std::uint64_t hb_device_ = 0, hb_run_ = 0;
};

// ------------------------------------------------------------ options
struct Options {
  std::string mode;
  std::string host = "127.0.0.1";
  std::uint16_t enroll_port = 0, fleet_port = 0;
  std::string token, name, state_dir;
  std::uint64_t budget = std::uint64_t{1} << 30;
  std::uint32_t examples = 300;
  std::uint32_t replay_until = 0xFFFFFFFFu;  ///< train: replay in rounds 1 .. this
  std::vector<std::string> cases;
  std::string phase;  ///< malformed: only the cases of this phase
  int timeout_ms = 30000;
};

std::uint16_t port_of(const std::string& s) {
  char* end = nullptr;
  const long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || v < 1 || v > 65535) throw UsageError{"bad port '" + s + "'"};
  return static_cast<std::uint16_t>(v);
}

Options parse(int argc, char** argv) {
  if (argc < 2) throw UsageError{"missing mode (enroll | prime | malformed | train)"};
  Options o;
  o.mode = argv[1];
  if (o.mode != "enroll" && o.mode != "prime" && o.mode != "malformed" && o.mode != "train")
    throw UsageError{"unknown mode '" + o.mode + "'"};
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError{a + " needs a value"};
      return argv[++i];
    };
    if (a == "--host") o.host = value();
    else if (a == "--enroll-port") o.enroll_port = port_of(value());
    else if (a == "--connect") {
      const std::string v = value();
      const auto colon = v.rfind(':');
      if (colon == std::string::npos) throw UsageError{"--connect takes HOST:FLEET_PORT"};
      o.host = v.substr(0, colon);
      o.fleet_port = port_of(v.substr(colon + 1));
    } else if (a == "--token") o.token = value();
    else if (a == "--name") o.name = value();
    else if (a == "--state-dir") o.state_dir = value();
    else if (a == "--budget") o.budget = std::strtoull(value().c_str(), nullptr, 10);
    else if (a == "--examples") o.examples = static_cast<std::uint32_t>(std::strtoul(value().c_str(), nullptr, 10));
    else if (a == "--no-replay") o.replay_until = 0;
    else if (a == "--replay-until") o.replay_until = static_cast<std::uint32_t>(std::strtoul(value().c_str(), nullptr, 10));
    else if (a == "--case") o.cases.push_back(value());
    else if (a == "--phase") {
      o.phase = value();
      if (o.phase != "pre-hello" && o.phase != "post-hello") throw UsageError{"--phase takes pre-hello or post-hello"};
    }
    else if (a == "--timeout-ms") o.timeout_ms = std::atoi(value().c_str());
    else throw UsageError{"unknown option '" + a + "'"};
  }
  if (o.state_dir.empty()) throw UsageError{"--state-dir is required"};
  if (o.mode == "enroll" && (o.enroll_port == 0 || o.token.empty() || o.name.empty()))
    throw UsageError{"enroll needs --enroll-port, --token and --name"};
  if (o.mode != "enroll" && o.fleet_port == 0) throw UsageError{o.mode + " needs --connect HOST:FLEET_PORT"};
  return o;
}

// ------------------------------------------------------------ enroll
int do_enroll(const Options& o, Clock::time_point deadline) {
  auto tok = core::decode_token(o.token);
  if (!tok) {
    std::fprintf(stderr, "fleet_rogue: token: %s\n", tok.error().message.c_str());
    return 1;
  }
  auto ctx = core::make_enroll_client_context(*tok);
  if (!ctx) {
    std::fprintf(stderr, "fleet_rogue: %s\n", ctx.error().message.c_str());
    return 1;
  }
  auto kc = core::make_key_and_csr(o.name);
  if (!kc) {
    std::fprintf(stderr, "fleet_rogue: %s\n", kc.error().message.c_str());
    return 1;
  }
  Conn c(std::move(*ctx));
  std::string err;
  if (!c.connect(o.host, o.enroll_port, deadline, err)) {
    std::fprintf(stderr, "fleet_rogue: enrollment: %s\n", err.c_str());
    return 1;
  }
  c.write(must(w::encode_message(w::Enroll{tok->identity, kc->csr_pem}, w::Binding{0, 0, 0, next_seq()}), "enroll"));
  auto f = c.next(deadline);
  if (!f || f->header.type != w::MessageType::enroll_ack) {
    std::fprintf(stderr, "fleet_rogue: no enroll_ack (%s)\n", f ? w::message_type_name(f->header.type) : c.close_text().c_str());
    return 1;
  }
  auto ack = w::EnrollAck::decode(f->payload);
  if (!ack) {
    std::fprintf(stderr, "fleet_rogue: enroll_ack: %s\n", ack.error().message.c_str());
    return 1;
  }
  ::mkdir(o.state_dir.c_str(), 0700);
  write_text(o.state_dir + "/key.pem", kc->key_pem, 0600);
  write_text(o.state_dir + "/cert.pem", ack->certificate_pem, 0644);
  write_text(o.state_dir + "/ca.pem", ack->ca_certificate_pem, 0644);
  write_text(o.state_dir + "/device_id", std::to_string(ack->device_id) + "\n", 0644);
  std::printf("{\"enrolled\": %" PRIu64 ", \"name\": %s}\n", ack->device_id, json_str(o.name).c_str());
  return 0;
}

// ------------------------------------------------------------ fleet sessions
struct Identity {
  std::string name;
  std::uint64_t device = 0;
  std::string ca, cert, key;
};

Identity load_identity(const Options& o) {
  Identity id;
  id.ca = read_text(o.state_dir + "/ca.pem");
  id.cert = read_text(o.state_dir + "/cert.pem");
  id.key = read_text(o.state_dir + "/key.pem");
  id.device = std::strtoull(read_text(o.state_dir + "/device_id").c_str(), nullptr, 10);
  auto cn = core::cert_common_name(id.cert);
  if (!cn) {
    std::fprintf(stderr, "fleet_rogue: %s\n", cn.error().message.c_str());
    std::exit(1);
  }
  id.name = *cn;
  return id;
}

std::unique_ptr<Conn> open_fleet(const Options& o, const Identity& id, Clock::time_point deadline, std::string& err) {
  auto ctx = core::make_fleet_client_context(id.ca, id.cert, id.key, o.host);
  if (!ctx) {
    err = ctx.error().message;
    return nullptr;
  }
  auto c = std::make_unique<Conn>(std::move(*ctx));
  if (!c->connect(o.host, o.fleet_port, deadline, err)) return nullptr;
  return c;
}

w::Hello make_hello(const Options& o, const Identity& id) {
  w::Hello h;
  h.agent_name = id.name;
  h.features = w::feature::train | w::feature::float_inference;
  h.cores = 2;
  h.ram_bytes = std::uint64_t{4} << 30;
  h.storage_bytes = std::uint64_t{16} << 30;
  h.mac_per_s = 1e9;
  h.link_bytes_per_s = 0;
  h.memory_budget_bytes = o.budget;
  return h;
}

Bytes hello_frame(const Options& o, const Identity& id) {
  return must(w::encode_message(make_hello(o, id), w::Binding{id.device, 0, 0, next_seq()}), "hello");
}

/// hello, then hello_ack (its heartbeat interval), or an error text.
std::optional<std::uint32_t> say_hello(Conn& c, const Options& o, const Identity& id, Clock::time_point deadline,
                                       std::string& err) {
  c.write(hello_frame(o, id));
  auto f = c.next(deadline);
  if (!f) {
    err = "no hello_ack: " + (c.closed() ? "closed: " + c.close_text() : std::string("timed out"));
    return std::nullopt;
  }
  if (f->header.type != w::MessageType::hello_ack) {
    err = std::string("expected hello_ack, got ") + w::message_type_name(f->header.type);
    if (f->header.type == w::MessageType::error)
      if (auto e = w::ErrorNotice::decode(f->payload)) err += ": " + e->message;
    return std::nullopt;
  }
  auto ack = w::HelloAck::decode(f->payload);
  if (!ack || ack->device_id != id.device) {
    err = "bad hello_ack";
    return std::nullopt;
  }
  return ack->heartbeat_interval_ms;
}

int do_prime(const Options& o, Clock::time_point deadline) {
  const Identity id = load_identity(o);
  std::string err;
  auto c = open_fleet(o, id, deadline, err);
  if (!c) {
    std::fprintf(stderr, "fleet_rogue: %s\n", err.c_str());
    return 1;
  }
  if (!say_hello(*c, o, id, deadline, err)) {
    std::fprintf(stderr, "fleet_rogue: %s\n", err.c_str());
    return 1;
  }
  c->write(must(w::encode_message(w::Bye{}, w::Binding{id.device, 0, 0, next_seq()}), "bye"));
  auto f = c->next(deadline);  // the server closes without another frame
  if (f || !c->closed()) {
    std::fprintf(stderr, "fleet_rogue: after bye: %s\n", f ? w::message_type_name(f->header.type) : "still open");
    return 1;
  }
  std::printf("{\"primed\": %" PRIu64 "}\n", id.device);
  return 0;
}

// ------------------------------------------------------------ malformed cases
struct Case {
  std::string name;
  bool post_hello = false;
  std::string expect;  ///< a CloseReason name, or "none": no error frame, the connection closes
  std::string note;    ///< what the bytes are
  /// Sends the bad bytes; may set `wait_ms` (how long an answer may take).
  std::function<void(Conn&, const Identity&, int& wait_ms)> send;
  bool heartbeats = false;  ///< keep the session alive with heartbeats while waiting
};

std::vector<Case> all_cases(const Options& o) {
  std::vector<Case> cs;
  auto pre = [&](std::string name, std::string expect, std::string note, auto fn) {
    cs.push_back(Case{std::move(name), false, std::move(expect), std::move(note), fn, false});
  };
  auto post = [&](std::string name, std::string expect, std::string note, auto fn, bool hb = false) {
    cs.push_back(Case{std::move(name), true, std::move(expect), std::move(note), fn, hb});
  };

  // ---- before hello: the first frame of the connection is bad
  pre("bad_magic", "bad_magic", "a hello frame starting 'FDLX'", [&](Conn& c, const Identity& id, int&) {
    Bytes f = hello_frame(o, id);
    f[3] = 'X';
    c.write(std::move(f));
  });
  pre("wrong_version", "bad_version", "a hello frame with version byte 2", [&](Conn& c, const Identity& id, int&) {
    Bytes f = hello_frame(o, id);
    f[w::layout::kVersion] = 2;
    reseal(f);
    c.write(std::move(f));
  });
  pre("unknown_type_0", "unknown_type", "a frame of type 0", [&](Conn& c, const Identity& id, int&) {
    Bytes f = hello_frame(o, id);
    f[w::layout::kType] = 0;
    reseal(f);
    c.write(std::move(f));
  });
  pre("unknown_type_15", "unknown_type", "a frame of type 15", [&](Conn& c, const Identity& id, int&) {
    Bytes f = hello_frame(o, id);
    f[w::layout::kType] = 15;
    reseal(f);
    c.write(std::move(f));
  });
  pre("bad_flags", "bad_flags", "a hello frame with flags 0x0001", [&](Conn& c, const Identity& id, int&) {
    Bytes f = hello_frame(o, id);
    f[w::layout::kFlags] = 1;
    reseal(f);
    c.write(std::move(f));
  });
  pre("oversized", "oversized", "a header declaring a 4 GiB - 1 payload, no payload",
      [&](Conn& c, const Identity& id, int&) {
        Bytes f = hello_frame(o, id);
        put_u32(f, w::layout::kLength, 0xFFFFFFFFu);
        f.resize(w::kHeaderBytes);
        c.write(std::move(f));
      });
  pre("oversized_64mib", "oversized", "a header declaring a 64 MiB payload (above max_frame_payload), no payload",
      [&](Conn& c, const Identity& id, int&) {
        Bytes f = hello_frame(o, id);
        put_u32(f, w::layout::kLength, 64u << 20);
        f.resize(w::kHeaderBytes);
        c.write(std::move(f));
      });
  pre("bad_length_short", "bad_crc", "a hello frame whose length field is 4 short", [&](Conn& c, const Identity& id, int&) {
    Bytes f = hello_frame(o, id);
    put_u32(f, w::layout::kLength, get_u32(f, w::layout::kLength) - 4);
    c.write(std::move(f));
  });
  pre("bad_length_long", "bad_crc", "a hello frame whose length field is 8 long, followed by 8 more bytes",
      [&](Conn& c, const Identity& id, int&) {
        Bytes f = hello_frame(o, id);
        put_u32(f, w::layout::kLength, get_u32(f, w::layout::kLength) + 8);
        f.insert(f.end(), 8, 0x5A);
        c.write(std::move(f));
      });
  pre("bad_crc", "bad_crc", "a hello frame with one CRC bit flipped", [&](Conn& c, const Identity& id, int&) {
    Bytes f = hello_frame(o, id);
    f.back() ^= 0x01;
    c.write(std::move(f));
  });
  pre("payload_trailing_byte", "malformed_payload", "a hello whose payload has one byte after the last field",
      [&](Conn& c, const Identity& id, int&) {
        Bytes f = hello_frame(o, id);
        Bytes payload(f.begin() + w::kHeaderBytes, f.end() - w::kCrcBytes);
        payload.push_back(0);
        c.write(raw_frame(w::MessageType::hello, w::Binding{id.device, 0, 0, next_seq()}, payload));
      });
  pre("payload_bad_string_length", "malformed_payload",
      "a hello whose agent_name declares 200 bytes, more than the payload holds",
      [&](Conn& c, const Identity& id, int&) {
        Bytes f = hello_frame(o, id);
        Bytes payload(f.begin() + w::kHeaderBytes, f.end() - w::kCrcBytes);
        payload[2] = 200;  // u16 protocol_version, then the str's u16 byte count
        payload[3] = 0;
        c.write(raw_frame(w::MessageType::hello, w::Binding{id.device, 0, 0, next_seq()}, payload));
      });
  pre("truncated_eof", "none", "the first 30 bytes of a hello frame, then the TCP stream ends (no close_notify)",
      [&](Conn& c, const Identity& id, int&) {
        Bytes f = hello_frame(o, id);
        f.resize(30);
        c.write(std::move(f));
        c.flush(Clock::now() + std::chrono::seconds(5));
        c.half_close();
      });
  pre("heartbeat_before_hello", "unexpected_message", "a valid heartbeat as the first message",
      [&](Conn& c, const Identity& id, int&) {
        c.write(must(w::encode_message(w::Heartbeat{unix_ms()}, w::Binding{id.device, 0, 0, next_seq()}), "heartbeat"));
      });
  pre("hello_wrong_name", "unexpected_message", "a valid hello naming a device other than the certificate's",
      [&](Conn& c, const Identity& id, int&) {
        w::Hello h = make_hello(o, id);
        h.agent_name = id.name + "-impostor";
        c.write(must(w::encode_message(h, w::Binding{id.device, 0, 0, next_seq()}), "hello"));
      });

  // ---- after a valid hello and hello_ack
  post("post_bad_crc_update", "bad_crc", "an update frame with one CRC bit flipped", [&](Conn& c, const Identity& id, int&) {
    w::Update u;
    u.example_count = 10;
    u.delta = Bytes(16, 0);
    Bytes f = must(w::encode_message(u, w::Binding{id.device, 1, 1, next_seq()}), "update");
    f.back() ^= 0x80;
    c.write(std::move(f));
  });
  post("post_malformed_update", "malformed_payload", "an update with accuracy 2.0 (outside [0, 1])",
       [&](Conn& c, const Identity& id, int&) {
         w::Update u;
         u.example_count = 10;
         u.delta = Bytes(16, 0);
         Bytes f = must(w::encode_message(u, w::Binding{id.device, 1, 1, next_seq()}), "update");
         Bytes payload(f.begin() + w::kHeaderBytes, f.end() - w::kCrcBytes);
         // u32 examples, u32 steps, u8 codec, blob (u32 + 16), f64 loss_before, f64 loss, then f64 accuracy
         const std::size_t at = 4 + 4 + 1 + 4 + 16 + 8 + 8;
         const double two = 2.0;
         std::uint64_t bits;
         std::memcpy(&bits, &two, 8);
         for (int i = 0; i < 8; ++i) payload[at + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(bits >> (8 * i));
         c.write(raw_frame(w::MessageType::update, w::Binding{id.device, 1, 1, next_seq()}, payload));
       });
  post("post_wrong_device", "unexpected_message", "a heartbeat claiming another device id",
       [&](Conn& c, const Identity& id, int&) {
         c.write(must(w::encode_message(w::Heartbeat{unix_ms()}, w::Binding{id.device + 1000, 0, 0, next_seq()}),
                      "heartbeat"));
       });
  post("post_update_device0", "unexpected_message", "an update from device 0", [&](Conn& c, const Identity&, int&) {
    w::Update u;
    u.example_count = 10;
    u.delta = Bytes(16, 0);
    c.write(must(w::encode_message(u, w::Binding{0, 1, 1, next_seq()}), "update"));
  });
  post("post_second_hello", "unexpected_message", "a second hello on a hello'd connection",
       [&](Conn& c, const Identity& id, int& wait_ms) {
         c.write(hello_frame(o, id));
         wait_ms = 1000;
       },
       true);
  post("post_assign_chunk_out_of_order", "unexpected_message",
       "assign_chunk 1 of 2 (out of order, and orchestrator-to-device only) from the device",
       [&](Conn& c, const Identity& id, int& wait_ms) {
         w::AssignChunk ch;
         ch.module_id = 7;
         ch.kind = w::ModuleKind::fdl_model;
         ch.chunk_index = 1;
         ch.chunk_count = 2;
         ch.total_bytes = 8;
         ch.module_crc = 0;
         ch.data = Bytes(4, 1);
         c.write(must(w::encode_message(ch, w::Binding{id.device, 0, 0, next_seq()}), "assign_chunk"));
         wait_ms = 1000;
       },
       true);
  post("post_train_round_from_device", "unexpected_message", "a train_round (orchestrator-to-device only) from the device",
       [&](Conn& c, const Identity& id, int& wait_ms) {
         w::TrainRound t;
         t.config.local_epochs = 1;
         t.config.batch_size = 1;
         t.config.learning_rate = 0.1f;
         t.config.partition_spec = "{\"kind\":\"iid\"}";
         t.config.shard_count = 1;
         t.parameters = {0.0f, 1.0f};
         c.write(must(w::encode_message(t, w::Binding{id.device, 1, 1, next_seq()}), "train_round"));
         wait_ms = 1000;
       },
       true);
  post("post_truncated_stall", "timeout",
       "the first 30 bytes of a heartbeat frame, then silence (3 heartbeat intervals)",
       [&](Conn& c, const Identity& id, int& wait_ms) {
         Bytes f = must(w::encode_message(w::Heartbeat{unix_ms()}, w::Binding{id.device, 0, 0, next_seq()}), "heartbeat");
         f.resize(30);
         c.write(std::move(f));
         wait_ms = 5000;
       });
  post("post_replay_guard_full", "unexpected_message",
       "valid heartbeats for run ids the device was never sent: refused at the first, before the replay guard "
       "(4096 streams) could be filled",
       [&](Conn& c, const Identity& id, int&) {
         Bytes all;
         for (std::uint64_t k = 0; k < 5000; ++k) {
           Bytes f = must(w::encode_message(w::Heartbeat{k}, w::Binding{id.device, (std::uint64_t{1} << 40) + k, 0, next_seq()}),
                          "heartbeat");
           all.insert(all.end(), f.begin(), f.end());
         }
         c.write(std::move(all));
       });
  return cs;
}

int do_malformed(const Options& o, Clock::time_point deadline) {
  const Identity id = load_identity(o);
  auto cases = all_cases(o);
  for (const auto& want : o.cases) {
    bool known = false;
    for (const auto& c : cases) known = known || c.name == want;
    if (!known) throw UsageError{"unknown case '" + want + "'"};
  }
  bool all_ok = true;
  for (const Case& cs : cases) {
    if (!o.cases.empty() && std::find(o.cases.begin(), o.cases.end(), cs.name) == o.cases.end()) continue;
    if (!o.phase.empty() && o.phase != (cs.post_hello ? "post-hello" : "pre-hello")) continue;
    std::string err, note = cs.note;
    std::optional<std::uint16_t> code;
    std::string error_text;
    std::vector<std::string> extra;
    bool closed = false;
    long close_ms = -1;
    bool setup_ok = true;
    auto c = open_fleet(o, id, deadline, err);
    if (!c) setup_ok = false;
    if (setup_ok && cs.post_hello) {
      auto hb = say_hello(*c, o, id, deadline, err);
      if (!hb) setup_ok = false;
      else if (cs.heartbeats) c->heartbeats(std::max<std::uint32_t>(*hb / 3, 10), id.device, 0);
    }
    if (setup_ok) {
      int wait_ms = 3000;
      cs.send(*c, id, wait_ms);
      const auto t0 = Clock::now();
      const auto until = std::min(deadline, t0 + std::chrono::milliseconds(wait_ms));
      // the first frame that is not a heartbeat must be the error (if one is expected) ...
      auto f = c->next(until);
      if (f) {
        if (f->header.type == w::MessageType::error) {
          if (auto e = w::ErrorNotice::decode(f->payload)) {
            code = e->code;
            error_text = e->message;
          } else {
            extra.push_back("undecodable error frame");
          }
        } else {
          extra.push_back(w::message_type_name(f->header.type));
        }
        // ... and then the connection closes, with nothing else
        while (auto g = c->next(until)) extra.push_back(w::message_type_name(g->header.type));
      }
      closed = c->closed();
      if (closed)
        close_ms = static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count());
      if (!c->protocol_error().empty()) extra.push_back("orchestrator sent undecodable bytes: " + c->protocol_error());
      if (!closed) {
        // still open: end the session in order so the next case starts clean
        c->stop_heartbeats();
        c->write(must(w::encode_message(w::Bye{}, w::Binding{id.device, 0, 0, next_seq()}), "bye"));
        c->flush(std::min(deadline, Clock::now() + std::chrono::seconds(2)));
        (void)c->next(std::min(deadline, Clock::now() + std::chrono::seconds(2)));
        note += "; no error frame and still open after " + std::to_string(wait_ms) + " ms (ended with bye)";
      }
    }
    bool ok = setup_ok && closed && extra.empty();
    std::string got = code ? w::close_reason_name(static_cast<w::CloseReason>(*code)) : "none";
    if (ok) ok = got == cs.expect;
    all_ok = all_ok && ok;
    std::printf("{\"case\": %s, \"phase\": \"%s\", \"expect\": %s, \"error_code\": %s, \"error_reason\": %s, "
                "\"error_text\": %s, \"closed\": %s, \"close_ms\": %ld, \"extra_frames\": [",
                json_str(cs.name).c_str(), cs.post_hello ? "post-hello" : "pre-hello", json_str(cs.expect).c_str(),
                code ? std::to_string(*code).c_str() : "null", json_str(got).c_str(), json_str(error_text).c_str(),
                closed ? "true" : "false", close_ms);
    for (std::size_t i = 0; i < extra.size(); ++i) std::printf("%s%s", i ? ", " : "", json_str(extra[i]).c_str());
    std::printf("], \"ok\": %s, \"note\": %s, \"setup_error\": %s}\n", ok ? "true" : "false", json_str(note).c_str(),
                json_str(setup_ok ? "" : err).c_str());
    std::fflush(stdout);
  }
  return all_ok ? 0 : 1;
}

// ------------------------------------------------------------ train (replays and duplicates)
int do_train(const Options& o, Clock::time_point deadline) {
  const Identity id = load_identity(o);
  std::string err;
  auto c = open_fleet(o, id, deadline, err);
  if (!c) {
    std::fprintf(stderr, "fleet_rogue: %s\n", err.c_str());
    return 1;
  }
  auto hb = say_hello(*c, o, id, deadline, err);
  if (!hb) {
    std::fprintf(stderr, "fleet_rogue: %s\n", err.c_str());
    return 1;
  }
  c->heartbeats(std::max<std::uint32_t>(*hb / 2, 10), id.device, 0);
  w::ChunkAssembler assembler;
  bool module_ok = false, bye = false;
  std::string error;
  std::vector<std::uint32_t> rounds;
  std::uint64_t run = 0;
  Bytes previous;                // the previous round's update frame
  std::uint32_t previous_round = 0;
  std::size_t bytes_received = 0;
  int replays_sent = 0;
  while (!bye && error.empty()) {
    auto f = c->next(deadline);
    if (!f) {
      error = c->closed() ? "connection closed: " + c->close_text() : "timed out";
      break;
    }
    bytes_received += f->bytes;
    auto msg = w::decode_message(f->header.type, f->payload);
    if (!msg) {
      error = "undecodable " + std::string(w::message_type_name(f->header.type)) + ": " + msg.error().message;
      break;
    }
    if (auto* ch = std::get_if<w::AssignChunk>(&*msg)) {
      if (auto v = assembler.add(*ch); !v) {
        error = std::string("assign_chunk: ") + v.message();
        break;
      }
      if (!assembler.done()) continue;
      w::AssignResult r;
      r.module_id = ch->module_id;
      r.accepted = true;
      r.peak_memory_bytes = 8u << 20;
      r.budget_bytes = o.budget;
      c->write(must(w::encode_message(r, w::Binding{id.device, f->header.binding.run, 0, next_seq()}), "assign_result"));
      module_ok = true;
      std::printf("{\"module\": %" PRIu64 ", \"bytes\": %zu}\n", ch->module_id, assembler.take().size());
      std::fflush(stdout);
    } else if (auto* t = std::get_if<w::TrainRound>(&*msg)) {
      if (!module_ok) {
        error = "train_round before the module";
        break;
      }
      if (t->config.codec != w::CodecId::raw_f32) {
        error = "train_round asks for codec " + std::to_string(static_cast<int>(t->config.codec)) + "; the rogue sends raw";
        break;
      }
      const std::uint32_t r = f->header.binding.round;
      run = f->header.binding.run;
      rounds.push_back(r);
      const std::size_t d = t->parameters.size();
      w::Update u;
      u.example_count = o.examples;
      u.local_steps = 10;
      u.codec = w::CodecId::raw_f32;
      u.delta.resize(d * 4);
      for (std::size_t i = 0; i < d; ++i) {
        const float v = -0.001f * t->parameters[i];
        std::memcpy(u.delta.data() + 4 * i, &v, 4);  // little-endian hosts only (as the agent's raw path)
      }
      u.loss = 1.0;
      u.accuracy = 0.5;
      u.compute_ms = 5.0;
      u.peak_memory_bytes = 8u << 20;
      u.bytes_received = bytes_received;
      bytes_received = 0;
      const Bytes frame = must(w::encode_message(u, w::Binding{id.device, run, r, next_seq()}), "update");
      c->write(frame);
      std::printf("{\"round\": %u, \"update_bytes\": %zu, \"examples\": %u}\n", r, frame.size(), o.examples);
      std::fflush(stdout);
      if (r <= o.replay_until) {
        // a duplicate that would show if it counted: other delta, many examples
        w::Update dup = u;
        dup.example_count = 99999;
        const float one = 1.0f;
        for (std::size_t i = 0; i < d; ++i) std::memcpy(dup.delta.data() + 4 * i, &one, 4);
        c->write(frame);  // replay: the same bytes, the same seq
        c->write(must(w::encode_message(dup, w::Binding{id.device, run, r, next_seq()}), "duplicate update"));
        replays_sent += 2;
        if (!previous.empty()) {
          c->write(previous);  // the previous round's update again (old seq)
          c->write(must(w::encode_message(dup, w::Binding{id.device, run, previous_round, next_seq()}),
                        "duplicate of the previous round"));
          replays_sent += 2;
        }
      }
      previous = frame;
      previous_round = r;
    } else if (std::holds_alternative<w::Bye>(*msg)) {
      bye = true;
    } else if (auto* e = std::get_if<w::ErrorNotice>(&*msg)) {
      error = std::string("error frame: ") + w::close_reason_name(e->reason()) + ": " + e->message;
    } else if (!std::holds_alternative<w::HelloAck>(*msg)) {
      error = std::string("unexpected ") + w::message_type_name(f->header.type);
    }
  }
  if (!c->protocol_error().empty() && error.empty()) error = "undecodable bytes: " + c->protocol_error();
  std::printf("{\"done\": true, \"bye\": %s, \"error\": %s, \"run\": %" PRIu64 ", \"rounds\": [", bye ? "true" : "false",
              error.empty() ? "null" : json_str(error).c_str(), run);
  for (std::size_t i = 0; i < rounds.size(); ++i) std::printf("%s%u", i ? ", " : "", rounds[i]);
  std::printf("], \"replays_sent\": %d, \"heartbeats_received\": %" PRIu64 "}\n", replays_sent, c->heartbeats_in());
  std::fflush(stdout);
  return bye && error.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    const auto deadline = Clock::now() + std::chrono::milliseconds(o.timeout_ms);
    if (o.mode == "enroll") return do_enroll(o, deadline);
    if (o.mode == "prime") return do_prime(o, deadline);
    if (o.mode == "malformed") return do_malformed(o, deadline);
    return do_train(o, deadline);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "fleet_rogue: %s\n", e.what.c_str());
    return 2;
  }
}
