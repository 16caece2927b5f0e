// fleetdl/wire/frame.hpp — the wire protocol's frame layer: the fixed frame
// header, message type and close reason values, the receive Limits, a no-heap
// writer (SpanWriter), frame encoders (into a caller buffer, or into a
// std::vector) and the incremental stream decoder (FrameDecoder) that turns
// any split of a byte stream into whole, CRC-checked frames.
//
// Transport-agnostic: bytes in, bytes out. The agent moves them over TCP+TLS,
// firmware over a serial link. The decoder writes payloads into a buffer the
// caller provides (its size bounds the frame), never allocates, never prints,
// needs neither exceptions nor RTTI; a microcontroller can use it as is.
//
// Frame layout, version 1. Integers little-endian. Offsets from frame start.
//
//    0  u8[4]  magic "FDLW"
//    4  u8     protocol version (kProtocolVersion = 1)
//    5  u8     message type (MessageType; 1 .. 14)
//    6  u16    flags, must be 0
//    8  u32    payload length L, at most Limits::max_frame_payload
//   12  u64    device id (0 = not yet assigned)
//   20  u64    run id
//   28  u32    round
//   32  u64    sequence number (strictly increasing per sender, device, run)
//   40  u8[L]  payload (wire/messages.hpp gives each type's layout)
//   40+L u32   CRC-32 (IEEE, core/crc32.hpp) of bytes [0, 40 + L)
//
// The decoder checks each header field as soon as its last byte arrives, so
// a bad magic fails at the first wrong byte and an oversized length fails at
// byte 12, before a single payload byte is accepted or stored. docs/wire.md
// describes the whole protocol.
#pragma once

#include "fleetdl/core/bytes.hpp"
#include "fleetdl/core/crc32.hpp"
#include "fleetdl/core/error.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace fleetdl::wire {

// ---------------------------------------------------------------------------
// Constants

inline constexpr std::uint8_t kMagic[4] = {'F', 'D', 'L', 'W'};
inline constexpr std::uint8_t kProtocolVersion = 1;
inline constexpr std::size_t kHeaderBytes = 40;
inline constexpr std::size_t kCrcBytes = 4;
inline constexpr std::size_t kFrameOverhead = kHeaderBytes + kCrcBytes;
/// Most dimensions of an activation shape (infer_request / infer_response).
inline constexpr std::size_t kMaxDims = 8;

/// Header field offsets (tests patch fields through these).
namespace layout {
inline constexpr std::size_t kVersion = 4;
inline constexpr std::size_t kType = 5;
inline constexpr std::size_t kFlags = 6;
inline constexpr std::size_t kLength = 8;
inline constexpr std::size_t kDevice = 12;
inline constexpr std::size_t kRun = 20;
inline constexpr std::size_t kRound = 28;
inline constexpr std::size_t kSeq = 32;
}  // namespace layout

/// Bytes a frame with `payload` payload bytes occupies on the wire.
constexpr std::size_t frame_bytes(std::size_t payload) noexcept { return kFrameOverhead + payload; }

/// Message types. Stable values: they travel in every frame header.
enum class MessageType : std::uint8_t {
  hello = 1,           ///< device -> orchestrator: version, name, capabilities
  hello_ack = 2,       ///< orchestrator -> device: device id, heartbeat interval
  enroll = 3,          ///< device -> orchestrator: token identity, CSR
  enroll_ack = 4,      ///< orchestrator -> device: device id, certificate, CA
  assign_chunk = 5,    ///< orchestrator -> device: one chunk of a module
  assign_result = 6,   ///< device -> orchestrator: module accepted or refused
  train_round = 7,     ///< orchestrator -> device: round config, global parameters
  update = 8,          ///< device -> orchestrator: encoded delta, examples, metrics
  infer_request = 9,   ///< either way: request id, shape, float32 activations
  infer_response = 10, ///< either way: request id, shape, float32 outputs
  heartbeat = 11,      ///< either way: sender clock
  metrics = 12,        ///< either way: (name, value) pairs
  error = 13,          ///< either way: code, message (before a close)
  bye = 14,            ///< either way: orderly goodbye with a reason code
};

inline constexpr std::uint8_t kMinMessageType = 1;
inline constexpr std::uint8_t kMaxMessageType = 14;

constexpr bool is_known_type(std::uint8_t t) noexcept { return t >= kMinMessageType && t <= kMaxMessageType; }

constexpr const char* message_type_name(MessageType t) noexcept {
  switch (t) {
    case MessageType::hello: return "hello";
    case MessageType::hello_ack: return "hello_ack";
    case MessageType::enroll: return "enroll";
    case MessageType::enroll_ack: return "enroll_ack";
    case MessageType::assign_chunk: return "assign_chunk";
    case MessageType::assign_result: return "assign_result";
    case MessageType::train_round: return "train_round";
    case MessageType::update: return "update";
    case MessageType::infer_request: return "infer_request";
    case MessageType::infer_response: return "infer_response";
    case MessageType::heartbeat: return "heartbeat";
    case MessageType::metrics: return "metrics";
    case MessageType::error: return "error";
    case MessageType::bye: return "bye";
  }
  return "unknown";
}

/// Why a connection is closed. Stable values: they travel in error and bye
/// messages. The frame decoder, ReplayGuard and ChunkAssembler produce these;
/// the programs close the connection with the reason (and may first send an
/// `error` message carrying it).
enum class CloseReason : std::uint16_t {
  normal = 0,             ///< no error (an orderly bye)
  bad_magic = 1,          ///< the stream does not start a frame with "FDLW"
  bad_version = 2,        ///< frame protocol version is not kProtocolVersion
  unknown_type = 3,       ///< message type byte outside 1 .. 14
  bad_flags = 4,          ///< header flags not 0
  oversized = 5,          ///< a declared size exceeds a limit (checked before allocation)
  truncated = 6,          ///< the stream ended inside a frame
  bad_crc = 7,            ///< frame CRC-32 mismatch
  malformed_payload = 8,  ///< the payload does not decode as its message type
  bad_chunk_order = 9,    ///< module chunk out of order or repeated
  chunk_mismatch = 10,    ///< chunk disagrees with the module's totals or CRC
  replay = 11,            ///< sequence number not above the last one accepted
  duplicate = 12,         ///< a second update for the same (device, run, round)
  unexpected_message = 13,///< valid message, wrong time (the programs' state machines)
  timeout = 14,           ///< heartbeat or round deadline missed (the programs)
  internal_error = 15,    ///< the sender failed on its own side
};

constexpr const char* close_reason_name(CloseReason r) noexcept {
  switch (r) {
    case CloseReason::normal: return "normal";
    case CloseReason::bad_magic: return "bad_magic";
    case CloseReason::bad_version: return "bad_version";
    case CloseReason::unknown_type: return "unknown_type";
    case CloseReason::bad_flags: return "bad_flags";
    case CloseReason::oversized: return "oversized";
    case CloseReason::truncated: return "truncated";
    case CloseReason::bad_crc: return "bad_crc";
    case CloseReason::malformed_payload: return "malformed_payload";
    case CloseReason::bad_chunk_order: return "bad_chunk_order";
    case CloseReason::chunk_mismatch: return "chunk_mismatch";
    case CloseReason::replay: return "replay";
    case CloseReason::duplicate: return "duplicate";
    case CloseReason::unexpected_message: return "unexpected_message";
    case CloseReason::timeout: return "timeout";
    case CloseReason::internal_error: return "internal_error";
  }
  return "unknown";
}

/// Receive limits. Every declared size read from the wire is compared with
/// these (and with the bytes actually present) before anything is allocated
/// or copied. Both ends should use the same values: encoders refuse what the
/// peer's decoder would refuse. The defaults suit a POSIX device or the
/// orchestrator; micro_limits() suits a microcontroller on a serial link.
struct Limits {
  /// Largest frame payload (bytes). Bounds every message, including a
  /// train_round's whole parameter vector and an update's encoded delta.
  std::uint32_t max_frame_payload = 8U << 20;  // 8 MiB
  /// Largest data of one assign_chunk (bytes).
  std::uint32_t max_chunk_bytes = 64U << 10;  // 64 KiB
  /// Largest module (model file or micro blob) an assignment may declare.
  std::uint64_t max_module_bytes = std::uint64_t{64} << 20;  // 64 MiB
  /// Most float32 global parameters in one train_round (they travel in one
  /// frame: 2'000'000 x 4 bytes fit the default 8 MiB payload).
  std::uint32_t max_train_params = 2'000'000;
  /// Longest string (agent name, token identity, reason and error texts,
  /// metric names), bytes.
  std::uint32_t max_string_bytes = 256;
  /// Longest PEM blob (CSR, certificate, CA certificate), bytes.
  std::uint32_t max_pem_bytes = 16U << 10;  // 16 KiB
  /// Most (name, value) entries in one metrics message.
  std::uint32_t max_metrics = 256;
  /// Most float32 values in one infer_request / infer_response.
  std::uint32_t max_activations = 2'000'000;
  /// Longest partition spec of a train_round (the run config's "partition"
  /// JSON object as text), bytes.
  std::uint32_t max_partition_spec_bytes = 1024;
};

/// Limits for a microcontroller speaking over a serial link: 16 KiB frames,
/// 4 KiB chunks, modules up to 512 KiB, 3'000 parameters, 4'000 activations.
constexpr Limits micro_limits() noexcept {
  Limits l;
  l.max_frame_payload = 16U << 10;
  l.max_chunk_bytes = 4U << 10;
  l.max_module_bytes = std::uint64_t{512} << 10;
  l.max_train_params = 3'000;
  l.max_string_bytes = 64;
  l.max_pem_bytes = 4U << 10;
  l.max_metrics = 32;
  l.max_activations = 4'000;
  l.max_partition_spec_bytes = 256;
  return l;
}

/// What binds a frame to its context: replays and duplicates are judged on
/// these (wire/session.hpp ReplayGuard).
struct Binding {
  std::uint64_t device = 0;  ///< 0 = not yet assigned (hello, enroll)
  std::uint64_t run = 0;
  std::uint32_t round = 0;
  std::uint64_t seq = 0;
  bool operator==(const Binding&) const = default;
};

struct FrameHeader {
  MessageType type = MessageType::heartbeat;
  std::uint32_t payload_bytes = 0;
  Binding binding;
};

/// A decoded frame: its header and a view of its payload, which lives in the
/// decoder's buffer and stays valid until the next FrameDecoder::feed().
struct FrameView {
  FrameHeader header;
  std::span<const std::uint8_t> payload;
};

// ---------------------------------------------------------------------------
// Verdict: ok, or a close reason with a one-line message. No heap.

inline constexpr std::size_t kMessageBytes = 160;

struct Verdict {
  CloseReason reason = CloseReason::normal;
  char text[kMessageBytes] = {};

  bool ok() const noexcept { return reason == CloseReason::normal; }
  explicit operator bool() const noexcept { return ok(); }
  const char* message() const noexcept { return ok() ? "ok" : text; }
};

namespace detail {

// Appends text and decimal numbers to a Verdict's message, cutting at its
// capacity. Keeps the decoder free of snprintf (and of the heap).
class VerdictText {
 public:
  explicit VerdictText(Verdict& v) noexcept : v_(v) { v_.text[0] = '\0'; }
  VerdictText& operator<<(const char* s) noexcept {
    while (s != nullptr && *s != '\0' && n_ + 1 < kMessageBytes) v_.text[n_++] = *s++;
    v_.text[n_] = '\0';
    return *this;
  }
  VerdictText& operator<<(std::string_view s) noexcept {
    for (char c : s) {
      if (n_ + 1 >= kMessageBytes) break;
      v_.text[n_++] = (c == '\n' || c == '\r') ? ' ' : c;
    }
    v_.text[n_] = '\0';
    return *this;
  }
  VerdictText& operator<<(std::uint64_t x) noexcept {
    char digits[20];
    int k = 0;
    do {
      digits[k++] = static_cast<char>('0' + x % 10);
      x /= 10;
    } while (x != 0);
    while (k > 0 && n_ + 1 < kMessageBytes) v_.text[n_++] = digits[--k];
    v_.text[n_] = '\0';
    return *this;
  }
  VerdictText& operator<<(std::uint32_t x) noexcept { return *this << static_cast<std::uint64_t>(x); }
  VerdictText& operator<<(std::uint16_t x) noexcept { return *this << static_cast<std::uint64_t>(x); }
  VerdictText& operator<<(std::uint8_t x) noexcept { return *this << static_cast<std::uint64_t>(x); }

 private:
  Verdict& v_;
  std::size_t n_ = 0;
};

inline std::uint16_t load_u16(const std::uint8_t* p) noexcept {
  return static_cast<std::uint16_t>(p[0] | (p[1] << 8));
}
inline std::uint32_t load_u32(const std::uint8_t* p) noexcept {
  return static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) |
         (static_cast<std::uint32_t>(p[2]) << 16) | (static_cast<std::uint32_t>(p[3]) << 24);
}
inline std::uint64_t load_u64(const std::uint8_t* p) noexcept {
  return static_cast<std::uint64_t>(load_u32(p)) | (static_cast<std::uint64_t>(load_u32(p + 4)) << 32);
}
inline void store_le(std::uint8_t* p, std::uint64_t v, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}

}  // namespace detail

// ---------------------------------------------------------------------------
// SpanWriter: ByteWriter's interface over a caller buffer, no heap. Writing
// past the end sets overflowed() and writes nothing more.

class SpanWriter {
 public:
  explicit SpanWriter(std::span<std::uint8_t> out) noexcept : out_(out) {}

  void u8(std::uint8_t v) noexcept { put(v, 1); }
  void u16(std::uint16_t v) noexcept { put(v, 2); }
  void u32(std::uint32_t v) noexcept { put(v, 4); }
  void u64(std::uint64_t v) noexcept { put(v, 8); }
  void i32(std::int32_t v) noexcept { put(static_cast<std::uint32_t>(v), 4); }
  void f32(float v) noexcept {
    std::uint32_t u = 0;
    std::memcpy(&u, &v, 4);
    put(u, 4);
  }
  void f64(double v) noexcept {
    std::uint64_t u = 0;
    std::memcpy(&u, &v, 8);
    put(u, 8);
  }
  /// u16 length + bytes, as ByteWriter::str.
  void str(std::string_view s) noexcept {
    if (s.size() > 0xFFFF) overflow_ = true;
    u16(static_cast<std::uint16_t>(s.size()));
    raw(s.data(), s.size());
  }
  void raw(const void* p, std::size_t n) noexcept {
    if (overflow_ || out_.size() - n_ < n) {
      overflow_ = true;
      return;
    }
    if (n != 0) std::memcpy(out_.data() + n_, p, n);
    n_ += n;
  }
  std::size_t size() const noexcept { return n_; }
  bool overflowed() const noexcept { return overflow_; }
  std::span<std::uint8_t> written() const noexcept { return out_.first(n_); }

 private:
  void put(std::uint64_t v, std::size_t n) noexcept {
    if (overflow_ || out_.size() - n_ < n) {
      overflow_ = true;
      return;
    }
    detail::store_le(out_.data() + n_, v, n);
    n_ += n;
  }
  std::span<std::uint8_t> out_;
  std::size_t n_ = 0;
  bool overflow_ = false;
};

// ---------------------------------------------------------------------------
// Encoding frames

/// Write a frame header into out[0, kHeaderBytes).
inline void write_header(std::uint8_t* out, MessageType type, const Binding& b, std::uint32_t payload_bytes) noexcept {
  std::memcpy(out, kMagic, 4);
  out[layout::kVersion] = kProtocolVersion;
  out[layout::kType] = static_cast<std::uint8_t>(type);
  detail::store_le(out + layout::kFlags, 0, 2);
  detail::store_le(out + layout::kLength, payload_bytes, 4);
  detail::store_le(out + layout::kDevice, b.device, 8);
  detail::store_le(out + layout::kRun, b.run, 8);
  detail::store_le(out + layout::kRound, b.round, 4);
  detail::store_le(out + layout::kSeq, b.seq, 8);
}

/// Seal a frame whose payload the caller already wrote in place at
/// out[kHeaderBytes, kHeaderBytes + payload_bytes) (e.g. with a SpanWriter
/// over out.subspan(kHeaderBytes)): writes the header in front and the CRC
/// behind. Returns the frame's size, or 0 when out cannot hold it or the
/// payload exceeds a u32. No heap.
inline std::size_t seal_frame(std::span<std::uint8_t> out, MessageType type, const Binding& b,
                              std::size_t payload_bytes) noexcept {
  if (payload_bytes > 0xFFFFFFFFULL || out.size() < kFrameOverhead || out.size() - kFrameOverhead < payload_bytes)
    return 0;
  write_header(out.data(), type, b, static_cast<std::uint32_t>(payload_bytes));
  const std::uint32_t crc = crc32(out.data(), kHeaderBytes + payload_bytes);
  detail::store_le(out.data() + kHeaderBytes + payload_bytes, crc, 4);
  return frame_bytes(payload_bytes);
}

/// Copy `payload` into a frame in `out` (the two must not overlap). Returns
/// the frame's size, or 0 when out is too small. No heap.
inline std::size_t write_frame(std::span<std::uint8_t> out, MessageType type, const Binding& b,
                               std::span<const std::uint8_t> payload) noexcept {
  if (out.size() < kFrameOverhead || out.size() - kFrameOverhead < payload.size()) return 0;
  if (!payload.empty()) std::memcpy(out.data() + kHeaderBytes, payload.data(), payload.size());
  return seal_frame(out, type, b, payload.size());
}

/// A frame as a new vector (POSIX convenience). Refuses a payload above
/// limits.max_frame_payload, which the peer would close on.
inline Result<std::vector<std::uint8_t>> encode_frame(MessageType type, const Binding& b,
                                                      std::span<const std::uint8_t> payload,
                                                      const Limits& limits = {}) {
  if (payload.size() > limits.max_frame_payload)
    return make_error(Errc::limit_exceeded, std::string("wire: ") + message_type_name(type) + " payload of " +
                                                std::to_string(payload.size()) + " bytes exceeds max_frame_payload " +
                                                std::to_string(limits.max_frame_payload));
  std::vector<std::uint8_t> out(frame_bytes(payload.size()));
  (void)write_frame(out, type, b, payload);
  return out;
}

// ---------------------------------------------------------------------------
// FrameDecoder: incremental, no heap.

enum class FeedStatus : std::uint8_t {
  need_more = 0,  ///< every byte given was consumed; no frame completed
  frame = 1,      ///< a frame completed; `consumed` bytes were used
  closed = 2,     ///< the stream is bad: close with `reason`
};

struct FeedResult {
  FeedStatus status = FeedStatus::need_more;
  std::size_t consumed = 0;     ///< bytes of the input used by this call
  FrameView frame;              ///< status == frame: valid until the next feed()
  CloseReason reason = CloseReason::normal;  ///< status == closed
  const char* message = "ok";   ///< status == closed: one line, owned by the decoder
};

/// Turns a byte stream into frames. Feed it whatever arrived, in any split
/// (one byte at a time works); each call returns at the first completed frame
/// (so its payload can be handled before the buffer is reused) or after
/// consuming all input. Typical loop:
///
///   std::span<const std::uint8_t> in = received;
///   while (!in.empty()) {
///     FeedResult r = decoder.feed(in);
///     in = in.subspan(r.consumed);
///     if (r.status == FeedStatus::frame) handle(r.frame);
///     else if (r.status == FeedStatus::closed) { close(r.reason, r.message); break; }
///   }
///   // at end of stream: if (!decoder.finish()) close(CloseReason::truncated, ...)
///
/// Payloads are stored in the caller's buffer; a frame whose payload is larger
/// than the buffer or limits.max_frame_payload is `oversized`, decided from the
/// length field alone. After a failure the decoder stays failed (every later
/// feed() returns the same reason, consuming nothing) until reset().
class FrameDecoder {
 public:
  explicit FrameDecoder(std::span<std::uint8_t> payload_buffer, const Limits& limits = {}) noexcept
      : buf_(payload_buffer), max_payload_(limits.max_frame_payload) {}

  FeedResult feed(std::span<const std::uint8_t> in) noexcept {
    FeedResult r;
    if (failed()) return closed_result(0);
    if (ready_) start_next();
    std::size_t i = 0;
    const std::size_t n = in.size();
    while (i < n) {
      if (hfill_ < kHeaderBytes) {
        const std::uint8_t b = in[i++];
        hdr_[hfill_++] = b;
        if (!check_header_byte()) return closed_result(i);
        continue;
      }
      if (pfill_ < len_) {
        std::size_t take = len_ - pfill_;
        if (take > n - i) take = n - i;
        std::memcpy(buf_.data() + pfill_, in.data() + i, take);
        pfill_ += take;
        i += take;
        continue;
      }
      crcb_[cfill_++] = in[i++];
      if (cfill_ == kCrcBytes) {
        const std::uint32_t want = detail::load_u32(crcb_);
        const std::uint32_t got = crc32_update(crc32(hdr_, kHeaderBytes), buf_.data(), len_);
        if (want != got) {
          detail::VerdictText(fail_) << "frame " << frames_ << " (" << message_type_name(header_.type)
                                     << ", seq " << header_.binding.seq << "): CRC-32 mismatch, header+payload give "
                                     << got << ", frame says " << want;
          fail_.reason = CloseReason::bad_crc;
          return closed_result(i);
        }
        ready_ = true;
        ++frames_;
        r.status = FeedStatus::frame;
        r.consumed = i;
        r.frame.header = header_;
        r.frame.payload = std::span<const std::uint8_t>(buf_.data(), len_);
        return r;
      }
    }
    r.consumed = n;
    return r;
  }

  /// The stream ended: ok between frames, `truncated` inside one (the
  /// decoder then stays failed). A decoder that already failed returns its
  /// failure.
  const Verdict& finish() noexcept {
    if (failed()) return fail_;
    if (!ready_ && hfill_ > 0) {
      const std::size_t have = hfill_ + pfill_ + cfill_;
      detail::VerdictText t(fail_);
      t << "frame " << frames_ << ": stream ended " << static_cast<std::uint64_t>(have) << " bytes into the frame";
      if (hfill_ < kHeaderBytes)
        t << " (header needs " << static_cast<std::uint64_t>(kHeaderBytes) << ")";
      else
        t << " (frame needs " << static_cast<std::uint64_t>(frame_bytes(len_)) << ")";
      fail_.reason = CloseReason::truncated;
    }
    return fail_;
  }

  /// Forget everything (a new connection on the same buffer).
  void reset() noexcept {
    start_next();
    fail_ = Verdict{};
    frames_ = 0;
  }

  bool failed() const noexcept { return !fail_.ok(); }
  const Verdict& verdict() const noexcept { return fail_; }
  /// Frames completed so far.
  std::uint64_t frames() const noexcept { return frames_; }
  /// True between frames (no partial frame buffered).
  bool idle() const noexcept { return ready_ || hfill_ == 0; }

 private:
  void start_next() noexcept {
    ready_ = false;
    hfill_ = 0;
    pfill_ = 0;
    cfill_ = 0;
    len_ = 0;
  }

  FeedResult closed_result(std::size_t consumed) const noexcept {
    FeedResult r;
    r.status = FeedStatus::closed;
    r.consumed = consumed;
    r.reason = fail_.reason;
    r.message = fail_.text;
    return r;
  }

  // Check the header field the byte just stored completes. hfill_ >= 1.
  bool check_header_byte() noexcept {
    const std::size_t k = hfill_ - 1;
    if (k < 4) {
      if (hdr_[k] != kMagic[k]) {
        detail::VerdictText(fail_) << "frame " << frames_ << ": bad magic, byte " << static_cast<std::uint64_t>(k)
                                   << " is " << hdr_[k] << ", expected " << kMagic[k] << " ('FDLW')";
        fail_.reason = CloseReason::bad_magic;
        return false;
      }
      return true;
    }
    if (k == layout::kVersion) {
      if (hdr_[k] != kProtocolVersion) {
        detail::VerdictText(fail_) << "frame " << frames_ << ": protocol version " << hdr_[k]
                                   << " is not supported (this end speaks " << kProtocolVersion << ")";
        fail_.reason = CloseReason::bad_version;
        return false;
      }
      return true;
    }
    if (k == layout::kType) {
      if (!is_known_type(hdr_[k])) {
        detail::VerdictText(fail_) << "frame " << frames_ << ": unknown message type " << hdr_[k] << " (known: "
                                   << kMinMessageType << " .. " << kMaxMessageType << ")";
        fail_.reason = CloseReason::unknown_type;
        return false;
      }
      header_.type = static_cast<MessageType>(hdr_[k]);
      return true;
    }
    if (k == layout::kFlags + 1) {
      const std::uint16_t flags = detail::load_u16(hdr_ + layout::kFlags);
      if (flags != 0) {
        detail::VerdictText(fail_) << "frame " << frames_ << " (" << message_type_name(header_.type) << "): flags are "
                                   << flags << ", must be 0";
        fail_.reason = CloseReason::bad_flags;
        return false;
      }
      return true;
    }
    if (k == layout::kLength + 3) {
      len_ = detail::load_u32(hdr_ + layout::kLength);
      if (len_ > max_payload_ || len_ > buf_.size()) {
        detail::VerdictText t(fail_);
        t << "frame " << frames_ << " (" << message_type_name(header_.type) << "): payload length " << len_;
        if (len_ > max_payload_)
          t << " exceeds max_frame_payload " << max_payload_;
        else
          t << " exceeds the decoder buffer of " << static_cast<std::uint64_t>(buf_.size()) << " bytes";
        fail_.reason = CloseReason::oversized;
        return false;
      }
      header_.payload_bytes = len_;
      return true;
    }
    if (k == kHeaderBytes - 1) {
      header_.binding.device = detail::load_u64(hdr_ + layout::kDevice);
      header_.binding.run = detail::load_u64(hdr_ + layout::kRun);
      header_.binding.round = detail::load_u32(hdr_ + layout::kRound);
      header_.binding.seq = detail::load_u64(hdr_ + layout::kSeq);
    }
    return true;
  }

  std::span<std::uint8_t> buf_;
  std::uint32_t max_payload_;
  std::uint8_t hdr_[kHeaderBytes] = {};
  std::uint8_t crcb_[kCrcBytes] = {};
  std::size_t hfill_ = 0;
  std::size_t pfill_ = 0;
  std::size_t cfill_ = 0;
  std::uint32_t len_ = 0;
  bool ready_ = false;
  FrameHeader header_{};
  Verdict fail_{};
  std::uint64_t frames_ = 0;
};

}  // namespace fleetdl::wire
