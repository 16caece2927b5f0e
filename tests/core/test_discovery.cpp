// tests/core/test_discovery.cpp — fleet discovery: the announce and invite
// datagrams (fleetdl/wire/announce.hpp) byte by byte, and the Announcer and
// DiscoveryListener (orchestrator/core/discovery.hpp) over real loopback UDP
// sockets on ephemeral ports. Every network case runs its io_context on a
// thread and waits with a deadline, so a broken case fails instead of hanging.
#include "discovery.hpp"

#include "fleetdl/wire.hpp"

#include <catch2/catch.hpp>

#include <asio.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace w = fleetdl::wire;
using namespace fleetdl::core;
using asio::ip::udp;
using namespace std::chrono_literals;
using Bytes = std::vector<std::uint8_t>;

w::Fingerprint fingerprint_from(std::uint8_t first) {
  w::Fingerprint f{};
  for (std::size_t i = 0; i < f.size(); ++i) f[i] = static_cast<std::uint8_t>(first + i);
  return f;
}

// The golden announce: agent "edge-01", nonce 0x0102030405060708, sequence 7,
// enrolled, fingerprint a0 a1 .. bf, 4 cores, 2 GiB RAM, 256 MiB budget.
w::Announce golden_announce() {
  w::Announce a;
  REQUIRE(a.set_name("edge-01"));
  a.nonce = 0x0102030405060708ULL;
  a.sequence = 7;
  a.enrolled = true;
  a.cert_fingerprint = fingerprint_from(0xA0);
  a.caps.cores = 4;
  a.caps.ram_bytes = 0x80000000ULL;
  a.caps.memory_budget_bytes = 0x10000000ULL;
  return a;
}

// Written from docs/fleet-discovery.md, field by field; the CRC-32 is zlib's
// of the 81 bytes before it.
const Bytes kGoldenAnnounce = {
    0x46, 0x44, 0x4c, 0x44, 0x01, 0x01, 0x49, 0x00,                    // "FDLD", v1, announce, body 73
    0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,                    // nonce
    0x07, 0x00, 0x00, 0x00,                                            // sequence 7
    0x01,                                                              // flags: enrolled
    0x04, 0x00, 0x00, 0x00,                                            // cores 4
    0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00,                    // ram 2 GiB
    0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00,                    // budget 256 MiB
    0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa,  // certificate fingerprint
    0xab, 0xac, 0xad, 0xae, 0xaf, 0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5,
    0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xbb, 0xbc, 0xbd, 0xbe, 0xbf,
    0x07, 0x65, 0x64, 0x67, 0x65, 0x2d, 0x30, 0x31,                    // name length 7, "edge-01"
    0x25, 0x58, 0xb5, 0xe8,                                            // CRC-32 0xe8b55825
};

// The golden invite: fleet 0x1122334455667788, nonce as above, enroll port
// 47801, fleet port 47802, address 10.77.3.1, CA fingerprint 20 21 .. 3f.
w::Invite golden_invite() {
  w::Invite i;
  i.fleet_id = 0x1122334455667788ULL;
  i.nonce = 0x0102030405060708ULL;
  i.enroll_port = 47801;
  i.fleet_port = 47802;
  i.address = {10, 77, 3, 1};
  i.ca_fingerprint = fingerprint_from(0x20);
  return i;
}

const Bytes kGoldenInvite = {
    0x46, 0x44, 0x4c, 0x44, 0x01, 0x02, 0x38, 0x00,                    // "FDLD", v1, invite, body 56
    0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,                    // fleet id
    0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,                    // nonce
    0xb9, 0xba, 0xba, 0xba,                                            // enroll port 47801, fleet port 47802
    0x0a, 0x4d, 0x03, 0x01,                                            // 10.77.3.1
    0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a,  // CA fingerprint
    0x2b, 0x2c, 0x2d, 0x2e, 0x2f, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35,
    0x36, 0x37, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f,
    0x94, 0x57, 0x3a, 0x78,                                            // CRC-32 0x783a5794
};

// Recompute the trailing CRC after a test edits a field.
void reseal(Bytes& b) {
  const std::uint32_t c = fleetdl::crc32(b.data(), b.size() - 4);
  for (int i = 0; i < 4; ++i) b[b.size() - 4 + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(c >> (8 * i));
}

Bytes encode(const w::Announce& a) {
  Bytes out(w::kMaxDatagramBytes);
  w::DatagramVerdict v;
  const std::size_t n = w::encode_announce(a, out, v);
  INFO(v.message());
  REQUIRE(n != 0);
  out.resize(n);
  return out;
}

Bytes encode(const w::Invite& i) {
  Bytes out(w::kMaxDatagramBytes);
  w::DatagramVerdict v;
  const std::size_t n = w::encode_invite(i, out, v);
  INFO(v.message());
  REQUIRE(n != 0);
  out.resize(n);
  return out;
}

struct Malformed {
  const char* what;
  std::function<void(Bytes&)> edit;
  w::DatagramFault fault;
  const char* field;  // a substring the one-line message must contain
};

constexpr std::size_t kBody = w::kDatagramHeaderBytes;  // body offset in a datagram

// ---------------------------------------------------------------- network helpers

// An io_context running on its own thread until destroyed. Declare it before
// the objects that use it, so they are destroyed (stopped) first.
struct Loop {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> guard = asio::make_work_guard(io);
  std::thread thread{[this] { io.run(); }};
  ~Loop() {
    guard.reset();
    io.stop();
    thread.join();
  }
};

bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds limit = 5000ms) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return done();
}

// A plain socket the test drives by hand: sends forged datagrams, collects
// what comes back.
struct RawPeer {
  udp::socket sock;
  explicit RawPeer(asio::io_context& io) : sock(io, udp::endpoint(asio::ip::address_v4::loopback(), 0)) {
    sock.non_blocking(true);
  }
  void send(const Bytes& b, std::uint16_t port) {
    sock.send_to(asio::buffer(b), udp::endpoint(asio::ip::address_v4::loopback(), port));
  }
  // Every datagram that arrives within `window`.
  std::vector<Bytes> collect(std::chrono::milliseconds window) {
    std::vector<Bytes> got;
    const auto deadline = std::chrono::steady_clock::now() + window;
    while (std::chrono::steady_clock::now() < deadline) {
      std::error_code ec;
      Bytes buf(w::kMaxDatagramBytes + 1);
      udp::endpoint from;
      const std::size_t n = sock.receive_from(asio::buffer(buf), from, 0, ec);
      if (ec == asio::error::would_block) {
        std::this_thread::sleep_for(2ms);
        continue;
      }
      REQUIRE(!ec);
      buf.resize(n);
      got.push_back(std::move(buf));
    }
    return got;
  }
  std::uint16_t port() const { return sock.local_endpoint().port(); }
};

ListenerOptions listener_options(const w::Fingerprint& ca = fingerprint_from(0x40)) {
  ListenerOptions o;
  o.bind_address = asio::ip::address_v4::loopback();
  o.port = 0;
  o.fleet_id = 77;
  o.ca_fingerprint = ca;
  o.enroll_port = 47801;
  o.fleet_port = 47802;
  o.invite_interval = 50ms;
  return o;
}

AnnouncerOptions announcer_options(const std::string& name, std::uint16_t listener_port) {
  AnnouncerOptions o;
  o.name = name;
  o.caps.cores = 2;
  o.caps.ram_bytes = 1ULL << 30;
  o.caps.memory_budget_bytes = 1ULL << 28;
  o.targets = {udp::endpoint(asio::ip::address_v4::loopback(), listener_port)};
  o.interval = 20ms;
  o.bind = udp::endpoint(asio::ip::address_v4::loopback(), 0);
  return o;
}

// Counts callbacks by name, from the io thread.
struct Tally {
  std::mutex m;
  std::map<std::string, int> count;
  void add(const std::string& name) {
    std::lock_guard<std::mutex> l(m);
    ++count[name];
  }
  int of(const std::string& name) {
    std::lock_guard<std::mutex> l(m);
    auto it = count.find(name);
    return it == count.end() ? 0 : it->second;
  }
  std::size_t distinct() {
    std::lock_guard<std::mutex> l(m);
    return count.size();
  }
};

}  // namespace

// ======================================================================= datagrams

TEST_CASE("discovery: fingerprint_bytes reads 64 hex digits, refuses anything else", "[discovery]") {
  const std::string hex = "00ff10Ab" + std::string(56, '7');
  auto f = fingerprint_bytes(hex);
  REQUIRE(f.ok());
  CHECK((*f)[0] == 0x00);
  CHECK((*f)[1] == 0xff);
  CHECK((*f)[2] == 0x10);
  CHECK((*f)[3] == 0xab);
  CHECK((*f)[31] == 0x77);
  for (const std::string& bad : {std::string(), hex.substr(1), hex + "0", "g" + hex.substr(1), hex.substr(0, 63) + " "}) {
    CAPTURE(bad);
    auto e = fingerprint_bytes(bad);
    REQUIRE_FALSE(e.ok());
    CHECK(e.error().message.rfind("fingerprint: ", 0) == 0);
  }
}

TEST_CASE("discovery: golden announce datagram", "[discovery]") {
  const w::Announce a = golden_announce();
  CHECK(encode(a) == kGoldenAnnounce);
  CHECK(kGoldenAnnounce.size() == w::kDatagramOverhead + w::kAnnounceFixedBody + 7);

  w::Announce back;
  const w::DatagramVerdict v = w::decode_announce(kGoldenAnnounce, back);
  INFO(v.message());
  REQUIRE(v.ok());
  CHECK(back == a);
  CHECK(back.name() == "edge-01");
  CHECK(back.caps.ram_bytes == 0x80000000ULL);
  CHECK(w::peek_datagram_type(kGoldenAnnounce) == 1);
}

TEST_CASE("discovery: golden invite datagram", "[discovery]") {
  const w::Invite i = golden_invite();
  CHECK(encode(i) == kGoldenInvite);
  CHECK(kGoldenInvite.size() == w::kInviteBytes);

  w::Invite back;
  const w::DatagramVerdict v = w::decode_invite(kGoldenInvite, back);
  INFO(v.message());
  REQUIRE(v.ok());
  CHECK(back == i);
  CHECK(w::peek_datagram_type(kGoldenInvite) == 2);
  CHECK(w::peek_datagram_type(Bytes{1, 2, 3}) == 0);
}

TEST_CASE("discovery: datagrams round-trip at their extremes", "[discovery]") {
  w::Announce a;
  REQUIRE(a.set_name("a"));
  a.nonce = ~0ULL;
  a.sequence = ~0U;
  a.caps.cores = ~0U;
  a.caps.ram_bytes = ~0ULL;
  a.caps.memory_budget_bytes = 0;
  Bytes b = encode(a);
  CHECK(b.size() == w::kMinAnnounceBytes);
  w::Announce back;
  REQUIRE(w::decode_announce(b, back).ok());
  CHECK(back == a);
  CHECK(!back.enrolled);

  const std::string longest(64, 'x');
  REQUIRE(a.set_name(longest));
  b = encode(a);
  CHECK(b.size() == w::kMaxAnnounceBytes);
  REQUIRE(w::decode_announce(b, back).ok());
  CHECK(back.name() == longest);

  w::Invite i = golden_invite();
  i.enroll_port = 0;  // enrollment closed is a valid invite
  i.address = {0, 0, 0, 0};
  w::Invite iback;
  REQUIRE(w::decode_invite(encode(i), iback).ok());
  CHECK(iback == i);

  // An invite never outweighs the smallest announce it answers.
  CHECK(w::kInviteBytes < w::kMinAnnounceBytes);
}

TEST_CASE("discovery: malformed announces are refused with the field named", "[discovery]") {
  namespace L = w::announce_layout;
  const std::size_t name_at = kBody + L::kName;
  const std::vector<Malformed> rows = {
      {"empty", [](Bytes& b) { b.clear(); }, w::DatagramFault::truncated, "shorter than"},
      {"header only", [](Bytes& b) { b.resize(8); }, w::DatagramFault::truncated, "shorter than"},
      {"513 bytes", [](Bytes& b) { b.resize(513, 0); }, w::DatagramFault::oversized, "exceeds 512"},
      {"magic", [](Bytes& b) { b[2] = 'X'; }, w::DatagramFault::bad_magic, "bad magic, byte 2"},
      {"frame magic", [](Bytes& b) { b[3] = 'W'; }, w::DatagramFault::bad_magic, "'FDLD'"},
      {"version 2", [](Bytes& b) { b[4] = 2; }, w::DatagramFault::bad_version, "'version' 2"},
      {"version 0", [](Bytes& b) { b[4] = 0; }, w::DatagramFault::bad_version, "'version' 0"},
      {"type 0", [](Bytes& b) { b[5] = 0; }, w::DatagramFault::unknown_type, "'type' 0"},
      {"type 3", [](Bytes& b) { b[5] = 3; }, w::DatagramFault::unknown_type, "'type' 3"},
      {"type invite", [](Bytes& b) { b[5] = 2; }, w::DatagramFault::unexpected_type, "'type' is invite"},
      {"body length without a name", [](Bytes& b) { b[6] = 66; }, w::DatagramFault::bad_length, "'body_length' 66"},
      {"body length 200", [](Bytes& b) { b[6] = 200; }, w::DatagramFault::bad_length, "'body_length' 200"},
      {"body length 65535", [](Bytes& b) { b[6] = 0xff; b[7] = 0xff; }, w::DatagramFault::bad_length, "'body_length'"},
      {"body length beyond the bytes", [](Bytes& b) { b[6] = 74; }, w::DatagramFault::truncated, "needs a datagram of 86"},
      {"last byte missing", [](Bytes& b) { b.pop_back(); }, w::DatagramFault::truncated, "got 84"},
      {"trailing byte", [](Bytes& b) { b.push_back(0); }, w::DatagramFault::bad_length, "1 trailing bytes"},
      {"CRC flipped", [](Bytes& b) { b.back() ^= 1; }, w::DatagramFault::bad_crc, "'crc' mismatch"},
      {"body bit flipped", [](Bytes& b) { b[kBody + L::kCores] ^= 0x10; }, w::DatagramFault::bad_crc, "'crc'"},
      {"flags bit 1", [](Bytes& b) { b[kBody + L::kFlags] = 0x03; reseal(b); }, w::DatagramFault::bad_field, "'flags' 3"},
      {"flags bit 7", [](Bytes& b) { b[kBody + L::kFlags] = 0x81; reseal(b); }, w::DatagramFault::bad_field, "'flags'"},
      {"name length short", [](Bytes& b) { b[kBody + L::kNameLength] = 6; reseal(b); }, w::DatagramFault::bad_length,
       "'name_length' 6"},
      {"name length long", [](Bytes& b) { b[kBody + L::kNameLength] = 200; reseal(b); }, w::DatagramFault::bad_length,
       "'name_length' 200"},
      {"name with '/'", [=](Bytes& b) { b[name_at + 4] = '/'; reseal(b); }, w::DatagramFault::bad_field, "'name'"},
      {"name with a space", [=](Bytes& b) { b[name_at + 1] = ' '; reseal(b); }, w::DatagramFault::bad_field, "'name'"},
      {"name with NUL", [=](Bytes& b) { b[name_at + 1] = 0; reseal(b); }, w::DatagramFault::bad_field, "'name'"},
      {"name with 0xff", [=](Bytes& b) { b[name_at + 6] = 0xff; reseal(b); }, w::DatagramFault::bad_field, "'name'"},
      {"name with a newline", [=](Bytes& b) { b[name_at + 2] = '\n'; reseal(b); }, w::DatagramFault::bad_field, "'name'"},
      {"name starting with '-'", [=](Bytes& b) { b[name_at] = '-'; reseal(b); }, w::DatagramFault::bad_field, "'name'"},
      {"name starting with '.'", [=](Bytes& b) { b[name_at] = '.'; reseal(b); }, w::DatagramFault::bad_field, "'name'"},
      {"nonce 0", [](Bytes& b) { std::memset(&b[kBody + L::kNonce], 0, 8); reseal(b); }, w::DatagramFault::bad_field,
       "'nonce' is 0"},
      {"cores 0", [](Bytes& b) { std::memset(&b[kBody + L::kCores], 0, 4); reseal(b); }, w::DatagramFault::bad_field,
       "'cores' is 0"},
      {"enrolled, zero fingerprint",
       [](Bytes& b) { std::memset(&b[kBody + L::kFingerprint], 0, 32); reseal(b); }, w::DatagramFault::bad_field,
       "'cert_fingerprint' is all zero"},
      {"not enrolled, fingerprint set", [](Bytes& b) { b[kBody + L::kFlags] = 0; reseal(b); },
       w::DatagramFault::bad_field, "'cert_fingerprint' is not zero"},
  };
  for (const Malformed& row : rows) {
    Bytes b = kGoldenAnnounce;
    row.edit(b);
    w::Announce out = golden_announce();
    out.sequence = 12345;
    const w::Announce before = out;
    const w::DatagramVerdict v = w::decode_announce(b, out);
    INFO(row.what << ": " << v.message());
    CHECK(!v.ok());
    CHECK(v.fault == row.fault);
    CHECK(std::string(v.message()).find(row.field) != std::string::npos);
    CHECK(std::string(v.message()).rfind("announce", 0) == 0);
    CHECK(std::string(v.message()).find('\n') == std::string::npos);
    CHECK(out == before);  // untouched on failure
  }
}

TEST_CASE("discovery: malformed invites are refused with the field named", "[discovery]") {
  namespace L = w::invite_layout;
  const std::vector<Malformed> rows = {
      {"11 bytes", [](Bytes& b) { b.resize(11); }, w::DatagramFault::truncated, "shorter than"},
      {"600 bytes", [](Bytes& b) { b.resize(600, 0); }, w::DatagramFault::oversized, "exceeds 512"},
      {"magic", [](Bytes& b) { b[0] = 'f'; }, w::DatagramFault::bad_magic, "byte 0"},
      {"version 9", [](Bytes& b) { b[4] = 9; }, w::DatagramFault::bad_version, "'version' 9"},
      {"type 200", [](Bytes& b) { b[5] = 200; }, w::DatagramFault::unknown_type, "'type' 200"},
      {"type announce", [](Bytes& b) { b[5] = 1; }, w::DatagramFault::unexpected_type, "'type' is announce"},
      {"body length 57", [](Bytes& b) { b[6] = 57; }, w::DatagramFault::bad_length, "'body_length' 57"},
      {"body length 55", [](Bytes& b) { b[6] = 55; }, w::DatagramFault::bad_length, "is not 56"},
      {"trailing bytes", [](Bytes& b) { b.insert(b.end(), 3, 0); }, w::DatagramFault::bad_length, "3 trailing bytes"},
      {"cut short", [](Bytes& b) { b.resize(40); }, w::DatagramFault::truncated, "needs a datagram of 68"},
      {"CRC", [](Bytes& b) { b[b.size() - 2] ^= 0x80; }, w::DatagramFault::bad_crc, "'crc'"},
      {"fleet id 0", [](Bytes& b) { std::memset(&b[kBody + L::kFleetId], 0, 8); reseal(b); },
       w::DatagramFault::bad_field, "'fleet_id' is 0"},
      {"nonce 0", [](Bytes& b) { std::memset(&b[kBody + L::kNonce], 0, 8); reseal(b); }, w::DatagramFault::bad_field,
       "'nonce' is 0"},
      {"fleet port 0", [](Bytes& b) { std::memset(&b[kBody + L::kFleetPort], 0, 2); reseal(b); },
       w::DatagramFault::bad_field, "'fleet_port' is 0"},
      {"multicast address",
       [](Bytes& b) { b[kBody + L::kAddress] = 224; b[kBody + L::kAddress + 3] = 251; reseal(b); },
       w::DatagramFault::bad_field, "'address' 224.77.3.251"},
      {"broadcast address", [](Bytes& b) { std::memset(&b[kBody + L::kAddress], 0xff, 4); reseal(b); },
       w::DatagramFault::bad_field, "'address' 255.255.255.255"},
      {"zero CA fingerprint", [](Bytes& b) { std::memset(&b[kBody + L::kCaFingerprint], 0, 32); reseal(b); },
       w::DatagramFault::bad_field, "'ca_fingerprint' is all zero"},
  };
  for (const Malformed& row : rows) {
    Bytes b = kGoldenInvite;
    row.edit(b);
    w::Invite out;
    const w::DatagramVerdict v = w::decode_invite(b, out);
    INFO(row.what << ": " << v.message());
    CHECK(!v.ok());
    CHECK(v.fault == row.fault);
    CHECK(std::string(v.message()).find(row.field) != std::string::npos);
    CHECK(std::string(v.message()).rfind("invite", 0) == 0);
    CHECK(out == w::Invite{});
  }
}

TEST_CASE("discovery: encoders refuse what decoders would refuse", "[discovery]") {
  std::array<std::uint8_t, w::kMaxDatagramBytes> buf{};
  w::DatagramVerdict v;

  w::Announce a;
  CHECK(!a.set_name(""));
  CHECK(!a.set_name(std::string(65, 'a')));
  CHECK(!a.set_name("_lead"));
  CHECK(!a.set_name("has space"));
  CHECK(!a.set_name("caf\xc3\xa9"));
  CHECK(a.set_name("Node_7.rack-2"));
  CHECK(a.name() == "Node_7.rack-2");

  w::Announce unset;
  unset.nonce = 1;
  CHECK(w::encode_announce(unset, buf, v) == 0);
  CHECK(v.fault == w::DatagramFault::bad_field);
  CHECK(std::string(v.message()).find("'name' is not set") != std::string::npos);

  a.nonce = 0;
  CHECK(w::encode_announce(a, buf, v) == 0);
  CHECK(std::string(v.message()).find("'nonce' is 0") != std::string::npos);
  a.nonce = 5;
  a.enrolled = true;
  CHECK(w::encode_announce(a, buf, v) == 0);
  CHECK(std::string(v.message()).find("'cert_fingerprint'") != std::string::npos);
  a.cert_fingerprint = fingerprint_from(1);
  CHECK(w::encode_announce(a, std::span<std::uint8_t>(buf.data(), 20), v) == 0);
  CHECK(v.fault == w::DatagramFault::oversized);
  CHECK(std::string(v.message()).find("the buffer has 20") != std::string::npos);
  CHECK(w::encode_announce(a, buf, v) == w::kDatagramOverhead + w::kAnnounceFixedBody + 13);
  CHECK(v.ok());

  w::Invite i = golden_invite();
  i.fleet_port = 0;
  CHECK(w::encode_invite(i, buf, v) == 0);
  CHECK(std::string(v.message()).find("'fleet_port' is 0") != std::string::npos);
  i = golden_invite();
  i.address = {239, 1, 2, 3};
  CHECK(w::encode_invite(i, buf, v) == 0);
  CHECK(std::string(v.message()).find("multicast") != std::string::npos);
  i = golden_invite();
  CHECK(w::encode_invite(i, std::span<std::uint8_t>(buf.data(), w::kInviteBytes - 1), v) == 0);
  CHECK(v.fault == w::DatagramFault::oversized);
}

TEST_CASE("discovery: random and mutated bytes never crash the decoders", "[discovery]") {
  std::mt19937_64 rng(20240606);
  std::uniform_int_distribution<int> byte(0, 255);
  std::size_t accepted = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    Bytes b;
    switch (iter % 3) {
      case 0: b.resize(static_cast<std::size_t>(rng() % 600)); for (auto& x : b) x = static_cast<std::uint8_t>(byte(rng)); break;
      case 1: b = kGoldenAnnounce; b[rng() % b.size()] = static_cast<std::uint8_t>(byte(rng)); if (rng() % 2) reseal(b); break;
      case 2: b = kGoldenInvite; b[rng() % b.size()] = static_cast<std::uint8_t>(byte(rng)); if (rng() % 2) reseal(b); break;
    }
    w::Announce a;
    if (w::decode_announce(b, a).ok()) {
      ++accepted;
      CHECK(encode(a) == b);  // whatever decodes re-encodes to the same bytes
    }
    w::Invite i;
    if (w::decode_invite(b, i).ok()) {
      ++accepted;
      CHECK(encode(i) == b);
    }
  }
  CHECK(accepted > 0);  // some mutations are harmless (a sequence byte, a port byte)
}

// ======================================================================= sockets

TEST_CASE("discovery: options are checked before any socket opens", "[discovery]") {
  asio::io_context io;
  AnnouncerOptions ao = announcer_options("bad name", 9);
  Announcer bad(io, ao, {});
  auto r = bad.start();
  REQUIRE(!r.ok());
  CHECK(r.error().code == fleetdl::Errc::invalid_argument);
  CHECK(r.error().message.find("name 'bad name'") != std::string::npos);

  ao = announcer_options("ok", 9);
  ao.enrolled = true;
  ao.cert_fingerprint = fingerprint_from(1);
  Announcer unpinned(io, ao, {});
  r = unpinned.start();
  REQUIRE(!r.ok());
  CHECK(r.error().message.find("fleet_ca_fingerprint") != std::string::npos);

  ao = announcer_options("ok", 9);
  ao.jitter = 1.5;
  Announcer jittery(io, ao, {});
  CHECK(!jittery.start().ok());

  ListenerOptions lo = listener_options();
  lo.fleet_id = 0;
  DiscoveryListener l1(io, lo);
  r = l1.start();
  REQUIRE(!r.ok());
  CHECK(r.error().message.find("fleet_id is 0") != std::string::npos);
  lo = listener_options();
  lo.fleet_port = 0;
  DiscoveryListener l2(io, lo);
  CHECK(!l2.start().ok());
  lo = listener_options();
  lo.advertise = asio::ip::address_v4::broadcast();
  DiscoveryListener l3(io, lo);
  CHECK(!l3.start().ok());
  CHECK(l3.local_port() == 0);
}

TEST_CASE("discovery: three agents on loopback are discovered and invited", "[discovery]") {
  Loop loop;
  Tally discovered;
  Tally invited;
  DiscoveryListener listener(loop.io, listener_options(),
                             [&](const DiscoveredAgent& a) { discovered.add(a.name); });
  REQUIRE(listener.start().ok());
  const std::uint16_t port = listener.local_port();
  REQUIRE(port != 0);

  std::vector<std::unique_ptr<Announcer>> agents;
  const std::vector<std::string> names = {"agent-a", "agent-b", "agent-c"};
  std::mutex em;
  std::vector<OrchestratorEndpoint> endpoints;
  for (const std::string& n : names) {
    agents.push_back(std::make_unique<Announcer>(loop.io, announcer_options(n, port), [&, n](const OrchestratorEndpoint& e) {
      invited.add(n);
      std::lock_guard<std::mutex> l(em);
      endpoints.push_back(e);
    }));
    REQUIRE(agents.back()->start().ok());
    CHECK(agents.back()->nonce() != 0);
  }
  REQUIRE(wait_until([&] { return invited.distinct() == 3 && discovered.distinct() == 3; }));
  // Let a few more rounds go by: on_discovered still fired once per agent.
  REQUIRE(wait_until([&] {
    for (const auto& a : listener.agents())
      if (a.announces < 6) return false;
    return true;
  }));
  for (const std::string& n : names) CHECK(discovered.of(n) == 1);
  CHECK(listener.agent_count() == 3);

  {
    std::lock_guard<std::mutex> l(em);
    for (const OrchestratorEndpoint& e : endpoints) {
      CHECK(e.address == asio::ip::address_v4::loopback());  // invite address 0: the source address
      CHECK(e.enroll_port == 47801);
      CHECK(e.fleet_port == 47802);
      CHECK(e.fleet_id == 77);
      CHECK(e.ca_fingerprint == fingerprint_from(0x40));
      CHECK(e.invited_by.port() == port);
    }
  }
  for (std::size_t k = 0; k < names.size(); ++k) {
    const auto row = listener.find(names[k]);
    REQUIRE(row);
    CHECK(row->nonce == agents[k]->nonce());
    CHECK(row->source.port() == agents[k]->local_port());
    CHECK(row->caps.cores == 2);
    CHECK(row->caps.memory_budget_bytes == (1ULL << 28));
    CHECK(!row->enrolled);
    CHECK(row->first_seen <= row->last_seen);
    // Rate limit: announces every ~20 ms, invites at most every 50 ms.
    CHECK(row->invites_sent < row->announces);
  }
  const DiscoveryStats s = listener.stats();
  CHECK(s.agents_discovered == 3);
  CHECK(s.rejected_total() == 0);
  CHECK(s.invites_rate_limited > 0);
  CHECK(s.invites_sent + s.invites_rate_limited + s.send_errors == s.announces);
  for (const auto& a : agents) {
    const AnnouncerStats as = a->stats();
    CHECK(as.send_errors == 0);
    CHECK(as.invites_accepted >= 1);
    CHECK(as.invites_malformed == 0);
  }
  CHECK(!listener.find("nobody"));
}

TEST_CASE("discovery: a garbage flood is counted and does not disturb discovery", "[discovery]") {
  Loop loop;
  Tally discovered;
  Tally invited;
  DiscoveryListener listener(loop.io, listener_options(), [&](const DiscoveredAgent& a) { discovered.add(a.name); });
  REQUIRE(listener.start().ok());
  const std::uint16_t port = listener.local_port();
  std::vector<std::unique_ptr<Announcer>> agents;
  for (const char* n : {"flood-1", "flood-2", "flood-3"}) {
    agents.push_back(std::make_unique<Announcer>(loop.io, announcer_options(n, port),
                                                 [&, n = std::string(n)](const OrchestratorEndpoint&) { invited.add(n); }));
    REQUIRE(agents.back()->start().ok());
  }

  RawPeer attacker(loop.io);
  std::mt19937_64 rng(7);
  std::uint64_t sent = 0, crc = 0, oversized = 0, announce_garbage = 0;
  std::map<std::string, std::uint64_t> kinds;
  for (int batch = 0; batch < 40; ++batch) {
    for (int k = 0; k < 50; ++k) {
      Bytes b;
      switch ((batch * 50 + k) % 6) {
        case 0:  // random bytes
          b.resize(1 + rng() % 300);
          for (auto& x : b) x = static_cast<std::uint8_t>(rng());
          break;
        case 1:  // a valid announce cut short
          b = kGoldenAnnounce;
          b.resize(rng() % b.size());
          break;
        case 2:  // wrong CRC
          b = kGoldenAnnounce;
          b[kBody + 20] ^= 0x55;
          ++crc;
          break;
        case 3:  // too long for any datagram
          b.assign(600 + rng() % 800, 0x46);
          ++oversized;
          break;
        case 4:  // an invite where announces belong
          b = kGoldenInvite;
          break;
        case 5:  // an announce with a forbidden name character
          b = kGoldenAnnounce;
          b[kBody + w::announce_layout::kName + 3] = '\x01';
          reseal(b);
          ++announce_garbage;
          break;
      }
      attacker.send(b, port);
      // Garbage to the agents' ports too: they must shrug it off.
      attacker.send(b, agents[static_cast<std::size_t>(k % 3)]->local_port());
      ++sent;
    }
    // Pace the flood so the kernel's receive buffer never drops a datagram,
    // which lets the test require an exact count.
    REQUIRE(wait_until([&] { return listener.stats().rejected_total() == sent; }));
  }
  REQUIRE(wait_until([&] { return invited.distinct() == 3 && discovered.distinct() == 3; }));
  const DiscoveryStats s = listener.stats();
  INFO("last rejection: " << listener.last_rejection());
  CHECK(s.rejected_total() == sent);
  CHECK(s.rejected_by(w::DatagramFault::bad_crc) == crc);
  CHECK(s.rejected_by(w::DatagramFault::oversized) == oversized);
  CHECK(s.rejected_by(w::DatagramFault::unexpected_type) == sent / 6);
  CHECK(s.rejected_by(w::DatagramFault::bad_field) == announce_garbage);
  CHECK(s.rejected_by(w::DatagramFault::bad_magic) > 0);
  CHECK(s.rejected_by(w::DatagramFault::truncated) > 0);
  CHECK(s.agents_discovered == 3);
  CHECK(listener.agent_count() == 3);
  CHECK(listener.last_rejection().find("(from 127.0.0.1:" + std::to_string(attacker.port()) + ")") != std::string::npos);
  for (const char* n : {"flood-1", "flood-2", "flood-3"}) CHECK(discovered.of(n) == 1);
  std::uint64_t agent_side = 0;
  for (const auto& a : agents) {
    const AnnouncerStats as = a->stats();
    agent_side += as.invites_malformed + as.invites_wrong_nonce;
    CHECK(as.invites_accepted >= 1);
  }
  // Every garbage datagram reached an agent; the golden invite (kind 4) is a
  // valid invite for a nonce none of them has.
  REQUIRE(wait_until([&] {
    std::uint64_t n = 0;
    for (const auto& a : agents) n += a->stats().invites_malformed + a->stats().invites_wrong_nonce;
    return n == sent;
  }));
  std::uint64_t wrong_nonce = 0;
  for (const auto& a : agents) wrong_nonce += a->stats().invites_wrong_nonce;
  CHECK(wrong_nonce == sent / 6);
  (void)agent_side;
}

TEST_CASE("discovery: an enrolled agent ignores invites from another fleet", "[discovery]") {
  Loop loop;
  DiscoveryListener other_fleet(loop.io, listener_options(fingerprint_from(0x60)));
  ListenerOptions mine_opts = listener_options(fingerprint_from(0x40));
  mine_opts.fleet_id = 78;
  mine_opts.fleet_port = 47902;
  DiscoveryListener my_fleet(loop.io, mine_opts);
  REQUIRE(other_fleet.start().ok());
  REQUIRE(my_fleet.start().ok());

  std::mutex em;
  std::vector<OrchestratorEndpoint> got;
  AnnouncerOptions ao = announcer_options("enrolled-1", other_fleet.local_port());
  ao.enrolled = true;
  ao.cert_fingerprint = fingerprint_from(0x90);
  ao.fleet_ca_fingerprint = fingerprint_from(0x40);
  ao.targets.push_back(udp::endpoint(asio::ip::address_v4::loopback(), my_fleet.local_port()));
  Announcer agent(loop.io, ao, [&](const OrchestratorEndpoint& e) {
    std::lock_guard<std::mutex> l(em);
    got.push_back(e);
  });
  REQUIRE(agent.start().ok());
  REQUIRE(wait_until([&] { return agent.stats().invites_wrong_fleet >= 3 && agent.stats().invites_accepted >= 3; }));
  agent.stop();
  CHECK(!agent.running());
  {
    std::lock_guard<std::mutex> l(em);
    REQUIRE(!got.empty());
    for (const OrchestratorEndpoint& e : got) {
      CHECK(e.fleet_id == 78);
      CHECK(e.fleet_port == 47902);
      CHECK(e.ca_fingerprint == fingerprint_from(0x40));
    }
  }
  // Both listeners saw the agent and its certificate fingerprint.
  REQUIRE(other_fleet.find("enrolled-1"));
  CHECK(other_fleet.find("enrolled-1")->enrolled);
  CHECK(other_fleet.find("enrolled-1")->cert_fingerprint == fingerprint_from(0x90));
  CHECK(my_fleet.agent_count() == 1);
}

TEST_CASE("discovery: an unenrolled agent ignores invites while enrollment is closed", "[discovery]") {
  Loop loop;
  ListenerOptions lo = listener_options();
  lo.enroll_port = 0;
  DiscoveryListener listener(loop.io, lo);
  REQUIRE(listener.start().ok());
  std::atomic<int> calls{0};
  Announcer agent(loop.io, announcer_options("newcomer", listener.local_port()),
                  [&](const OrchestratorEndpoint&) { ++calls; });
  REQUIRE(agent.start().ok());
  REQUIRE(wait_until([&] { return agent.stats().invites_enrollment_closed >= 2; }));
  CHECK(calls == 0);
  CHECK(agent.stats().invites_accepted == 0);
}

TEST_CASE("discovery: forged invites with another nonce are ignored; stop and restart keep the nonce", "[discovery]") {
  Loop loop;
  RawPeer fake_orchestrator(loop.io);
  std::atomic<int> calls{0};
  std::atomic<std::uint32_t> last_address{0};
  AnnouncerOptions ao = announcer_options("restarts", fake_orchestrator.port());
  ao.nonce = 0xABCDEF;
  // Catch2 is not thread-safe: callbacks (io thread) record, the test checks.
  Announcer agent(loop.io, ao, [&](const OrchestratorEndpoint& e) {
    last_address = e.address.to_uint();
    ++calls;
  });
  REQUIRE(agent.start().ok());
  CHECK(agent.nonce() == 0xABCDEF);
  CHECK(!agent.start().ok());  // already running

  // The announce it sends carries the configured nonce; sequences increase.
  std::vector<Bytes> heard = fake_orchestrator.collect(200ms);
  REQUIRE(heard.size() >= 2);
  w::Announce first, second;
  REQUIRE(w::decode_announce(heard[0], first).ok());
  REQUIRE(w::decode_announce(heard[1], second).ok());
  CHECK(first.nonce == 0xABCDEF);
  CHECK(second.sequence == first.sequence + 1);

  w::Invite inv = golden_invite();  // nonce 0x0102030405060708: not ours
  fake_orchestrator.send(encode(inv), agent.local_port());
  REQUIRE(wait_until([&] { return agent.stats().invites_wrong_nonce == 1; }));
  CHECK(calls == 0);
  inv.nonce = 0xABCDEF;
  fake_orchestrator.send(encode(inv), agent.local_port());
  REQUIRE(wait_until([&] { return calls == 1; }));
  CHECK(asio::ip::address_v4(last_address.load()) == asio::ip::make_address_v4("10.77.3.1"));  // the invite's own address wins

  agent.stop();
  REQUIRE(agent.start().ok());
  CHECK(agent.nonce() == 0xABCDEF);
  fake_orchestrator.collect(60ms);
  fake_orchestrator.send(encode(inv), agent.local_port());
  REQUIRE(wait_until([&] { return calls == 2; }));
  heard = fake_orchestrator.collect(60ms);
  REQUIRE(!heard.empty());
  w::Announce later;
  REQUIRE(w::decode_announce(heard.back(), later).ok());
  CHECK(later.sequence > second.sequence);  // the counter continued across the restart
}

TEST_CASE("discovery: stop() from inside the callback ends the callbacks", "[discovery]") {
  Loop loop;
  DiscoveryListener listener(loop.io, listener_options());
  REQUIRE(listener.start().ok());
  std::atomic<int> calls{0};
  std::unique_ptr<Announcer> agent;
  AnnouncerOptions ao = announcer_options("stops-itself", listener.local_port());
  agent = std::make_unique<Announcer>(loop.io, ao, [&](const OrchestratorEndpoint&) {
    ++calls;
    agent->stop();  // connected: stop announcing
  });
  REQUIRE(agent->start().ok());
  REQUIRE(wait_until([&] { return calls >= 1; }));
  std::this_thread::sleep_for(150ms);
  CHECK(calls == 1);
  CHECK(!agent->running());
  CHECK(agent->local_port() == 0);
}

TEST_CASE("discovery: the agent table holds its capacity and evicts only stale rows", "[discovery]") {
  Loop loop;
  RawPeer peer(loop.io);
  auto announce_of = [](const std::string& name) {
    w::Announce a;
    REQUIRE(a.set_name(name));
    a.nonce = 1000 + name.back();
    return encode(a);
  };

  SECTION("full table refuses new agents while every row is fresh") {
    ListenerOptions lo = listener_options();
    lo.capacity = 3;
    lo.stale_after = 600000ms;
    lo.invite_interval = 600000ms;
    std::atomic<int> discovered{0};
    DiscoveryListener listener(loop.io, lo, [&](const DiscoveredAgent&) { ++discovered; });
    REQUIRE(listener.start().ok());
    for (const char* n : {"cap-0", "cap-1", "cap-2", "cap-3", "cap-4"}) peer.send(announce_of(n), listener.local_port());
    REQUIRE(wait_until([&] { return listener.stats().announces == 5; }));
    CHECK(listener.agent_count() == 3);
    CHECK(listener.stats().table_full == 2);
    CHECK(discovered == 3);
    CHECK(!listener.find("cap-3"));
    CHECK(peer.collect(100ms).size() == 3);  // refused agents get no invite

    // Known agents are still heard; repeats within invite_interval get no invite.
    for (int k = 0; k < 4; ++k) peer.send(announce_of("cap-1"), listener.local_port());
    REQUIRE(wait_until([&] { return listener.stats().announces == 9; }));
    CHECK(listener.find("cap-1")->announces == 5);
    CHECK(listener.find("cap-1")->invites_sent == 1);
    CHECK(listener.stats().invites_rate_limited == 4);
    CHECK(peer.collect(50ms).empty());
    CHECK(listener.agent_count() == 3);
  }

  SECTION("a stale row makes room") {
    ListenerOptions lo = listener_options();
    lo.capacity = 2;
    lo.stale_after = 400ms;  // generous: a loaded CI machine must not age b and c before new-d
    DiscoveryListener listener(loop.io, lo);
    REQUIRE(listener.start().ok());
    peer.send(announce_of("old-a"), listener.local_port());
    peer.send(announce_of("old-b"), listener.local_port());
    REQUIRE(wait_until([&] { return listener.agent_count() == 2; }));
    std::this_thread::sleep_for(600ms);
    peer.send(announce_of("old-b"), listener.local_port());  // b is alive again; a went quiet
    peer.send(announce_of("new-c"), listener.local_port());
    REQUIRE(wait_until([&] { return listener.stats().announces == 4; }));
    CHECK(listener.stats().evicted == 1);
    CHECK(!listener.find("old-a"));
    CHECK(listener.find("old-b"));
    CHECK(listener.find("new-c"));
    peer.send(announce_of("new-d"), listener.local_port());  // b and c are fresh: refused
    REQUIRE(wait_until([&] { return listener.stats().announces == 5; }));
    CHECK(listener.stats().table_full == 1);
    CHECK(listener.agent_count() == 2);
  }
}

TEST_CASE("discovery: an agent that restarts is a new row", "[discovery]") {
  Loop loop;
  std::atomic<int> discovered{0};
  DiscoveryListener listener(loop.io, listener_options(), [&](const DiscoveredAgent&) { ++discovered; });
  REQUIRE(listener.start().ok());
  RawPeer peer(loop.io);
  w::Announce a;
  REQUIRE(a.set_name("phoenix"));
  a.nonce = 1;
  peer.send(encode(a), listener.local_port());
  a.nonce = 2;  // the process restarted
  peer.send(encode(a), listener.local_port());
  REQUIRE(wait_until([&] { return discovered == 2; }));
  CHECK(listener.agent_count() == 2);
  CHECK(listener.find("phoenix")->nonce == 2);
}
