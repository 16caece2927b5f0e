// fleetdl/wire/announce.hpp — the two UDP datagrams of fleet discovery: the
// agent's Announce ("I am here, this is what I have") and the orchestrator's
// Invite ("connect to me there"), with encoders into a caller buffer and
// strict decoders from a span. No heap, no exceptions, no RTTI, no printing:
// firmware can announce itself with the same code the orchestrator decodes.
//
// Datagram layout, version 1. Integers little-endian. Offsets from the first
// byte of the UDP payload; a datagram is never larger than kMaxDatagramBytes.
//
//    0  u8[4]  magic "FDLD"
//    4  u8     version (kDiscoveryVersion = 1)
//    5  u8     type (DatagramType: 1 announce, 2 invite)
//    6  u16    body length B (announce 66 + name bytes, invite 56)
//    8  u8[B]  body (layouts at Announce and Invite below)
//    8+B u32   CRC-32 (IEEE, core/crc32.hpp) of bytes [0, 8 + B)
//
// The datagram must be exactly 12 + B bytes: trailing bytes are refused, as
// are a wrong CRC, an unknown version or type, and every field out of its
// domain. Every refusal names the field in one line (DatagramVerdict).
//
// These datagrams are not authenticated and are not meant to be: an announce
// only says that an agent exists, an invite only says where to open a TLS
// connection. Trust comes from that TLS handshake (enrollment PSK or mutual
// certificates, orchestrator/core/fleet_ca.hpp), never from a datagram.
// docs/fleet-discovery.md describes the flow and the byte layouts.
#pragma once

#include "fleetdl/core/crc32.hpp"
#include "fleetdl/wire/frame.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

namespace fleetdl::wire {

// ---------------------------------------------------------------------------
// Constants

inline constexpr std::uint8_t kDiscoveryMagic[4] = {'F', 'D', 'L', 'D'};
inline constexpr std::uint8_t kDiscoveryVersion = 1;
/// The UDP port an orchestrator listens on for announcements by default.
inline constexpr std::uint16_t kDefaultDiscoveryPort = 47800;
/// Largest datagram either side sends or accepts (receive buffers are this
/// size + 1, so a longer datagram is seen as too long, not cut short).
inline constexpr std::size_t kMaxDatagramBytes = 512;
/// magic + version + type + body length.
inline constexpr std::size_t kDatagramHeaderBytes = 8;
inline constexpr std::size_t kDatagramOverhead = kDatagramHeaderBytes + kCrcBytes;
/// Longest agent name (same rule as device names / certificate CNs:
/// 1..64 bytes of [A-Za-z0-9._-], starting with a letter or digit).
inline constexpr std::size_t kMaxAgentNameBytes = 64;
/// SHA-256 fingerprints (of a DER certificate).
inline constexpr std::size_t kFingerprintBytes = 32;

/// Announce body without the name: nonce 8, sequence 4, flags 1, cores 4,
/// ram 8, budget 8, fingerprint 32, name length 1, then the name.
inline constexpr std::size_t kAnnounceFixedBody = 8 + 4 + 1 + 4 + 8 + 8 + kFingerprintBytes + 1;
/// Invite body: fleet id 8, nonce 8, enroll port 2, fleet port 2, address 4,
/// CA fingerprint 32.
inline constexpr std::size_t kInviteBody = 8 + 8 + 2 + 2 + 4 + kFingerprintBytes;
inline constexpr std::size_t kMinAnnounceBytes = kDatagramOverhead + kAnnounceFixedBody + 1;
inline constexpr std::size_t kMaxAnnounceBytes = kDatagramOverhead + kAnnounceFixedBody + kMaxAgentNameBytes;
inline constexpr std::size_t kInviteBytes = kDatagramOverhead + kInviteBody;
static_assert(kMaxAnnounceBytes <= kMaxDatagramBytes && kInviteBytes <= kMaxDatagramBytes);
// An invite answers an announce and must never be larger than the smallest
// one: a forged source address then gains an attacker no amplification.
static_assert(kInviteBytes < kMinAnnounceBytes);

/// Announce flag bits; the others must be 0 in version 1.
inline constexpr std::uint8_t kAnnounceEnrolled = 0x01;

/// Announce body offsets (from the body start, datagram offset 8).
namespace announce_layout {
inline constexpr std::size_t kNonce = 0;
inline constexpr std::size_t kSequence = 8;
inline constexpr std::size_t kFlags = 12;
inline constexpr std::size_t kCores = 13;
inline constexpr std::size_t kRam = 17;
inline constexpr std::size_t kBudget = 25;
inline constexpr std::size_t kFingerprint = 33;
inline constexpr std::size_t kNameLength = 65;
inline constexpr std::size_t kName = 66;
}  // namespace announce_layout

/// Invite body offsets (from the body start, datagram offset 8).
namespace invite_layout {
inline constexpr std::size_t kFleetId = 0;
inline constexpr std::size_t kNonce = 8;
inline constexpr std::size_t kEnrollPort = 16;
inline constexpr std::size_t kFleetPort = 18;
inline constexpr std::size_t kAddress = 20;
inline constexpr std::size_t kCaFingerprint = 24;
}  // namespace invite_layout

enum class DatagramType : std::uint8_t {
  announce = 1,  ///< agent -> orchestrator (broadcast or unicast)
  invite = 2,    ///< orchestrator -> agent (unicast, to the announce's source)
};

/// Why a datagram was refused. Stable values (metrics count by them).
enum class DatagramFault : std::uint8_t {
  none = 0,
  truncated = 1,        ///< shorter than its header, or than its body length says
  oversized = 2,        ///< longer than kMaxDatagramBytes
  bad_magic = 3,        ///< does not start with "FDLD"
  bad_version = 4,      ///< version byte is not kDiscoveryVersion
  unknown_type = 5,     ///< type byte is neither announce nor invite
  unexpected_type = 6,  ///< a valid type, but not the one the receiver takes
  bad_length = 7,       ///< body length wrong for the type, or trailing bytes
  bad_crc = 8,          ///< CRC-32 mismatch
  bad_field = 9,        ///< a body field out of its domain (the message names it)
};
inline constexpr std::size_t kDatagramFaultCount = 10;

constexpr const char* datagram_fault_name(DatagramFault f) noexcept {
  switch (f) {
    case DatagramFault::none: return "none";
    case DatagramFault::truncated: return "truncated";
    case DatagramFault::oversized: return "oversized";
    case DatagramFault::bad_magic: return "bad_magic";
    case DatagramFault::bad_version: return "bad_version";
    case DatagramFault::unknown_type: return "unknown_type";
    case DatagramFault::unexpected_type: return "unexpected_type";
    case DatagramFault::bad_length: return "bad_length";
    case DatagramFault::bad_crc: return "bad_crc";
    case DatagramFault::bad_field: return "bad_field";
  }
  return "unknown";
}

constexpr const char* datagram_type_name(DatagramType t) noexcept {
  switch (t) {
    case DatagramType::announce: return "announce";
    case DatagramType::invite: return "invite";
  }
  return "unknown";
}

/// ok, or a fault with a one-line message naming the field. No heap.
struct DatagramVerdict {
  DatagramFault fault = DatagramFault::none;
  char text[kMessageBytes] = {};

  bool ok() const noexcept { return fault == DatagramFault::none; }
  explicit operator bool() const noexcept { return ok(); }
  const char* message() const noexcept { return ok() ? "ok" : text; }
};

using Fingerprint = std::array<std::uint8_t, kFingerprintBytes>;

constexpr bool is_zero(const Fingerprint& f) noexcept {
  for (std::uint8_t b : f)
    if (b != 0) return false;
  return true;
}

/// The device-name rule: 1..64 bytes of [A-Za-z0-9._-], first a letter or digit.
constexpr bool is_valid_agent_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > kMaxAgentNameBytes) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-'))) return false;
  }
  return true;
}

/// What the orchestrator needs to place work before any connection: the same
/// capability fields as the hello message.
struct Capabilities {
  std::uint32_t cores = 1;                   ///< >= 1
  std::uint64_t ram_bytes = 0;
  std::uint64_t memory_budget_bytes = 0;     ///< what fleetdl may use on the device
  bool operator==(const Capabilities&) const = default;
};

/// An agent's announcement. Body layout (offsets from the body start):
///
///    0  u64    nonce: random per agent process start, never 0
///    8  u32    sequence: the agent's announce counter (wraps)
///   12  u8     flags: bit 0 enrolled; other bits 0
///   13  u32    cores (>= 1)
///   17  u64    ram bytes
///   25  u64    memory budget bytes
///   33  u8[32] certificate SHA-256 fingerprint: all zero iff not enrolled
///   65  u8     name length n (1 .. 64)
///   66  u8[n]  name ([A-Za-z0-9._-], first a letter or digit)
struct Announce {
  std::uint64_t nonce = 0;
  std::uint32_t sequence = 0;
  bool enrolled = false;
  Capabilities caps;
  Fingerprint cert_fingerprint{};  ///< zero when not enrolled

  std::string_view name() const noexcept { return std::string_view(name_.data(), name_len_); }
  /// Stores `n` if it satisfies is_valid_agent_name; returns whether it did.
  bool set_name(std::string_view n) noexcept {
    if (!is_valid_agent_name(n)) return false;
    std::memcpy(name_.data(), n.data(), n.size());
    name_len_ = static_cast<std::uint8_t>(n.size());
    return true;
  }
  bool operator==(const Announce& o) const noexcept {
    return nonce == o.nonce && sequence == o.sequence && enrolled == o.enrolled && caps == o.caps &&
           cert_fingerprint == o.cert_fingerprint && name() == o.name();
  }

 private:
  std::array<char, kMaxAgentNameBytes> name_{};
  std::uint8_t name_len_ = 0;
};

/// The orchestrator's answer to an announce. Body layout (56 bytes):
///
///    0  u64    fleet id (!= 0)
///    8  u64    the agent's nonce, echoed (!= 0)
///   16  u16    enroll port (0 = enrollment closed)
///   18  u16    fleet port (>= 1)
///   20  u8[4]  IPv4 address to connect to, in dotted order a.b.c.d;
///              0.0.0.0 = the invite's source address. Never multicast or
///              255.255.255.255.
///   24  u8[32] SHA-256 fingerprint of the fleet CA certificate (not all zero)
struct Invite {
  std::uint64_t fleet_id = 0;
  std::uint64_t nonce = 0;
  std::uint16_t enroll_port = 0;
  std::uint16_t fleet_port = 0;
  std::array<std::uint8_t, 4> address{};  ///< a, b, c, d of a.b.c.d; zero = source
  Fingerprint ca_fingerprint{};
  bool operator==(const Invite&) const = default;
};

namespace detail {

// Appends text and decimal numbers to a DatagramVerdict's message, cutting at
// its capacity; bytes outside printable ASCII become '?', so text taken from a
// datagram cannot forge log lines. No snprintf, no heap.
class DatagramText {
 public:
  explicit DatagramText(DatagramVerdict& v) noexcept : t_(v.text) { t_[0] = '\0'; }
  DatagramText& operator<<(std::string_view s) noexcept {
    for (char c : s) {
      if (n_ + 1 >= kMessageBytes) break;
      t_[n_++] = (c >= 0x20 && c < 0x7F) ? c : '?';
    }
    t_[n_] = '\0';
    return *this;
  }
  DatagramText& operator<<(const char* s) noexcept { return *this << std::string_view(s == nullptr ? "" : s); }
  DatagramText& operator<<(std::uint64_t x) noexcept {
    char digits[20];
    std::size_t k = 0;
    do {
      digits[k++] = static_cast<char>('0' + x % 10);
      x /= 10;
    } while (x != 0);
    while (k > 0 && n_ + 1 < kMessageBytes) t_[n_++] = digits[--k];
    t_[n_] = '\0';
    return *this;
  }
  DatagramText& operator<<(std::uint32_t x) noexcept { return *this << static_cast<std::uint64_t>(x); }
  DatagramText& operator<<(std::uint16_t x) noexcept { return *this << static_cast<std::uint64_t>(x); }
  DatagramText& operator<<(std::uint8_t x) noexcept { return *this << static_cast<std::uint64_t>(x); }

 private:
  char* t_;
  std::size_t n_ = 0;
};

inline bool fault(DatagramVerdict& v, DatagramFault f) noexcept {
  v.fault = f;
  return false;
}

// Checks header, length and CRC of a whole datagram of `want` type; on
// success `body` views its body. Every datagram check that is not a body
// field lives here, so both decoders refuse the same way.
inline bool open_datagram(std::span<const std::uint8_t> in, DatagramType want, DatagramVerdict& v,
                          std::span<const std::uint8_t>& body) noexcept {
  DatagramText t(v);
  const char* what = datagram_type_name(want);
  if (in.size() > kMaxDatagramBytes) {
    t << what << ": datagram of " << static_cast<std::uint64_t>(in.size()) << " bytes exceeds "
      << static_cast<std::uint64_t>(kMaxDatagramBytes);
    return fault(v, DatagramFault::oversized);
  }
  if (in.size() < kDatagramOverhead) {
    t << what << ": datagram of " << static_cast<std::uint64_t>(in.size()) << " bytes is shorter than the "
      << static_cast<std::uint64_t>(kDatagramOverhead) << " of header and CRC";
    return fault(v, DatagramFault::truncated);
  }
  for (std::size_t k = 0; k < 4; ++k) {
    if (in[k] != kDiscoveryMagic[k]) {
      t << what << ": bad magic, byte " << static_cast<std::uint64_t>(k) << " is " << in[k] << ", expected "
        << kDiscoveryMagic[k] << " ('FDLD')";
      return fault(v, DatagramFault::bad_magic);
    }
  }
  if (in[4] != kDiscoveryVersion) {
    t << what << ": 'version' " << in[4] << " is not supported (this end speaks " << kDiscoveryVersion << ")";
    return fault(v, DatagramFault::bad_version);
  }
  const std::uint8_t type = in[5];
  if (type != static_cast<std::uint8_t>(DatagramType::announce) &&
      type != static_cast<std::uint8_t>(DatagramType::invite)) {
    t << what << ": unknown 'type' " << type << " (1 announce, 2 invite)";
    return fault(v, DatagramFault::unknown_type);
  }
  if (type != static_cast<std::uint8_t>(want)) {
    t << what << ": 'type' is " << datagram_type_name(static_cast<DatagramType>(type)) << ", expected " << what;
    return fault(v, DatagramFault::unexpected_type);
  }
  const std::uint16_t len = load_u16(in.data() + 6);
  const bool len_ok = want == DatagramType::invite
                          ? len == kInviteBody
                          : (len > kAnnounceFixedBody && len <= kAnnounceFixedBody + kMaxAgentNameBytes);
  if (!len_ok) {
    t << what << ": 'body_length' " << len << " is not ";
    if (want == DatagramType::invite)
      t << static_cast<std::uint64_t>(kInviteBody);
    else
      t << static_cast<std::uint64_t>(kAnnounceFixedBody + 1) << " .. "
        << static_cast<std::uint64_t>(kAnnounceFixedBody + kMaxAgentNameBytes);
    return fault(v, DatagramFault::bad_length);
  }
  const std::size_t need = kDatagramOverhead + len;
  if (in.size() < need) {
    t << what << ": 'body_length' " << len << " needs a datagram of " << static_cast<std::uint64_t>(need)
      << " bytes, got " << static_cast<std::uint64_t>(in.size());
    return fault(v, DatagramFault::truncated);
  }
  if (in.size() > need) {
    t << what << ": " << static_cast<std::uint64_t>(in.size() - need) << " trailing bytes after the CRC ("
      << static_cast<std::uint64_t>(need) << " expected)";
    return fault(v, DatagramFault::bad_length);
  }
  const std::uint32_t want_crc = load_u32(in.data() + kDatagramHeaderBytes + len);
  const std::uint32_t got_crc = crc32(in.data(), kDatagramHeaderBytes + len);
  if (want_crc != got_crc) {
    t << what << ": 'crc' mismatch, bytes give " << got_crc << ", datagram says " << want_crc;
    return fault(v, DatagramFault::bad_crc);
  }
  body = in.subspan(kDatagramHeaderBytes, len);
  return true;
}

inline void write_datagram_header(std::uint8_t* out, DatagramType type, std::size_t body) noexcept {
  std::memcpy(out, kDiscoveryMagic, 4);
  out[4] = kDiscoveryVersion;
  out[5] = static_cast<std::uint8_t>(type);
  store_le(out + 6, body, 2);
}

inline std::size_t seal_datagram(std::uint8_t* out, std::size_t body) noexcept {
  store_le(out + kDatagramHeaderBytes + body, crc32(out, kDatagramHeaderBytes + body), 4);
  return kDatagramOverhead + body;
}

inline bool check_announce(const Announce& a, DatagramVerdict& v) noexcept {
  DatagramText t(v);
  if (!is_valid_agent_name(a.name())) {
    // set_name() stores only valid names, so the only way here is an unset one.
    t << "announce: 'name' is not set (1-64 characters of A-Z a-z 0-9 . _ -, first a letter or digit)";
    return fault(v, DatagramFault::bad_field);
  }
  if (a.nonce == 0) {
    t << "announce from '" << a.name() << "': 'nonce' is 0";
    return fault(v, DatagramFault::bad_field);
  }
  if (a.caps.cores == 0) {
    t << "announce from '" << a.name() << "': 'cores' is 0, must be >= 1";
    return fault(v, DatagramFault::bad_field);
  }
  if (a.enrolled == is_zero(a.cert_fingerprint)) {
    t << "announce from '" << a.name() << "': 'cert_fingerprint' "
      << (a.enrolled ? "is all zero but the agent says it is enrolled"
                     : "is not zero but the agent says it is not enrolled");
    return fault(v, DatagramFault::bad_field);
  }
  return true;
}

constexpr bool is_forbidden_invite_address(const std::array<std::uint8_t, 4>& a) noexcept {
  const bool multicast = a[0] >= 224 && a[0] <= 239;
  const bool limited_broadcast = a[0] == 255 && a[1] == 255 && a[2] == 255 && a[3] == 255;
  return multicast || limited_broadcast;
}

inline bool check_invite(const Invite& i, DatagramVerdict& v) noexcept {
  DatagramText t(v);
  if (i.fleet_id == 0) {
    t << "invite: 'fleet_id' is 0";
    return fault(v, DatagramFault::bad_field);
  }
  if (i.nonce == 0) {
    t << "invite: 'nonce' is 0";
    return fault(v, DatagramFault::bad_field);
  }
  if (i.fleet_port == 0) {
    t << "invite: 'fleet_port' is 0";
    return fault(v, DatagramFault::bad_field);
  }
  if (is_forbidden_invite_address(i.address)) {
    t << "invite: 'address' " << i.address[0] << "." << i.address[1] << "." << i.address[2] << "." << i.address[3]
      << " is multicast or broadcast";
    return fault(v, DatagramFault::bad_field);
  }
  if (is_zero(i.ca_fingerprint)) {
    t << "invite: 'ca_fingerprint' is all zero";
    return fault(v, DatagramFault::bad_field);
  }
  return true;
}

}  // namespace detail

// ---------------------------------------------------------------------------
// Encoders: into a caller buffer, no heap. They refuse what the decoders
// refuse, so whatever encodes also decodes. Return the datagram's size, or 0
// with `v` saying why (a bad field, or `oversized` when out is too small).

inline std::size_t encode_announce(const Announce& a, std::span<std::uint8_t> out, DatagramVerdict& v) noexcept {
  v = DatagramVerdict{};
  if (!detail::check_announce(a, v)) return 0;
  const std::size_t body = kAnnounceFixedBody + a.name().size();
  if (out.size() < kDatagramOverhead + body) {
    detail::DatagramText(v) << "announce: needs " << static_cast<std::uint64_t>(kDatagramOverhead + body)
                                   << " bytes, the buffer has " << static_cast<std::uint64_t>(out.size());
    detail::fault(v, DatagramFault::oversized);
    return 0;
  }
  namespace L = announce_layout;
  std::uint8_t* p = out.data();
  detail::write_datagram_header(p, DatagramType::announce, body);
  std::uint8_t* b = p + kDatagramHeaderBytes;
  detail::store_le(b + L::kNonce, a.nonce, 8);
  detail::store_le(b + L::kSequence, a.sequence, 4);
  b[L::kFlags] = a.enrolled ? kAnnounceEnrolled : 0;
  detail::store_le(b + L::kCores, a.caps.cores, 4);
  detail::store_le(b + L::kRam, a.caps.ram_bytes, 8);
  detail::store_le(b + L::kBudget, a.caps.memory_budget_bytes, 8);
  std::memcpy(b + L::kFingerprint, a.cert_fingerprint.data(), kFingerprintBytes);
  b[L::kNameLength] = static_cast<std::uint8_t>(a.name().size());
  std::memcpy(b + L::kName, a.name().data(), a.name().size());
  return detail::seal_datagram(p, body);
}

inline std::size_t encode_invite(const Invite& i, std::span<std::uint8_t> out, DatagramVerdict& v) noexcept {
  v = DatagramVerdict{};
  if (!detail::check_invite(i, v)) return 0;
  if (out.size() < kInviteBytes) {
    detail::DatagramText(v) << "invite: needs " << static_cast<std::uint64_t>(kInviteBytes)
                                   << " bytes, the buffer has " << static_cast<std::uint64_t>(out.size());
    detail::fault(v, DatagramFault::oversized);
    return 0;
  }
  namespace L = invite_layout;
  std::uint8_t* p = out.data();
  detail::write_datagram_header(p, DatagramType::invite, kInviteBody);
  std::uint8_t* b = p + kDatagramHeaderBytes;
  detail::store_le(b + L::kFleetId, i.fleet_id, 8);
  detail::store_le(b + L::kNonce, i.nonce, 8);
  detail::store_le(b + L::kEnrollPort, i.enroll_port, 2);
  detail::store_le(b + L::kFleetPort, i.fleet_port, 2);
  std::memcpy(b + L::kAddress, i.address.data(), 4);
  std::memcpy(b + L::kCaFingerprint, i.ca_fingerprint.data(), kFingerprintBytes);
  return detail::seal_datagram(p, kInviteBody);
}

// ---------------------------------------------------------------------------
// Decoders: the whole datagram (the UDP payload, nothing more) in, the
// struct out. `out` is written only on success.

/// The type byte of something that looks like a discovery datagram (magic and
/// version right, at least a header long), else 0. For a receiver that takes
/// both kinds; the typed decoders still check everything.
inline std::uint8_t peek_datagram_type(std::span<const std::uint8_t> in) noexcept {
  if (in.size() < kDatagramHeaderBytes || std::memcmp(in.data(), kDiscoveryMagic, 4) != 0 ||
      in[4] != kDiscoveryVersion)
    return 0;
  return in[5];
}

inline DatagramVerdict decode_announce(std::span<const std::uint8_t> in, Announce& out) noexcept {
  DatagramVerdict v;
  std::span<const std::uint8_t> body;
  if (!detail::open_datagram(in, DatagramType::announce, v, body)) return v;
  namespace L = announce_layout;
  const std::uint8_t* b = body.data();
  const std::uint8_t flags = b[L::kFlags];
  const std::size_t name_len = b[L::kNameLength];
  detail::DatagramText t(v);
  if (flags & ~kAnnounceEnrolled) {
    t << "announce: 'flags' " << flags << " has bits other than 0 (enrolled) set";
    detail::fault(v, DatagramFault::bad_field);
    return v;
  }
  if (kAnnounceFixedBody + name_len != body.size()) {
    t << "announce: 'name_length' " << static_cast<std::uint64_t>(name_len) << " disagrees with 'body_length' "
      << static_cast<std::uint64_t>(body.size()) << " (expected " << static_cast<std::uint64_t>(body.size() - kAnnounceFixedBody)
      << ")";
    detail::fault(v, DatagramFault::bad_length);
    return v;
  }
  Announce a;
  if (!a.set_name(std::string_view(reinterpret_cast<const char*>(b + L::kName), name_len))) {
    t << "announce: 'name' of " << static_cast<std::uint64_t>(name_len)
      << " bytes is not 1-64 characters of A-Z a-z 0-9 . _ -, first a letter or digit";
    detail::fault(v, DatagramFault::bad_field);
    return v;
  }
  a.nonce = detail::load_u64(b + L::kNonce);
  a.sequence = detail::load_u32(b + L::kSequence);
  a.enrolled = (flags & kAnnounceEnrolled) != 0;
  a.caps.cores = detail::load_u32(b + L::kCores);
  a.caps.ram_bytes = detail::load_u64(b + L::kRam);
  a.caps.memory_budget_bytes = detail::load_u64(b + L::kBudget);
  std::memcpy(a.cert_fingerprint.data(), b + L::kFingerprint, kFingerprintBytes);
  if (!detail::check_announce(a, v)) return v;
  out = a;
  return v;
}

inline DatagramVerdict decode_invite(std::span<const std::uint8_t> in, Invite& out) noexcept {
  DatagramVerdict v;
  std::span<const std::uint8_t> body;
  if (!detail::open_datagram(in, DatagramType::invite, v, body)) return v;
  namespace L = invite_layout;
  const std::uint8_t* b = body.data();
  Invite i;
  i.fleet_id = detail::load_u64(b + L::kFleetId);
  i.nonce = detail::load_u64(b + L::kNonce);
  i.enroll_port = detail::load_u16(b + L::kEnrollPort);
  i.fleet_port = detail::load_u16(b + L::kFleetPort);
  std::memcpy(i.address.data(), b + L::kAddress, 4);
  std::memcpy(i.ca_fingerprint.data(), b + L::kCaFingerprint, kFingerprintBytes);
  if (!detail::check_invite(i, v)) return v;
  out = i;
  return v;
}

}  // namespace fleetdl::wire
