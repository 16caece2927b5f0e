// fleetdl/wire/messages.hpp — the wire protocol's messages: one struct per
// MessageType with validate(Limits), encode(writer) and decode(payload), the
// Message variant with decode_message(), frame encoders for messages
// (encode_message into a vector, encode_message_into a caller buffer), and
// no-heap views of the two large messages a microcontroller receives
// (AssignChunkView, ActivationsView).
//
// Payload encoding: little-endian integers, IEEE-754 floats (f32 / f64),
// `str` = u16 length + UTF-8 bytes, `blob` = u32 length + bytes, arrays
// without a count field take it from fields before them. Layouts, in order:
//
//   hello (1)          u16 protocol_version, str agent_name, u32 features,
//                      u32 cores, u64 ram_bytes, u64 storage_bytes,
//                      f64 mac_per_s, f64 link_bytes_per_s, u64 memory_budget_bytes
//   hello_ack (2)      u16 protocol_version, u64 device_id, u32 heartbeat_interval_ms
//   enroll (3)         str token_identity, blob csr_pem
//   enroll_ack (4)     u64 device_id, blob certificate_pem, blob ca_certificate_pem
//   assign_chunk (5)   u64 module_id, u8 kind, u32 chunk_index, u32 chunk_count,
//                      u64 total_bytes, u32 module_crc, blob data
//   assign_result (6)  u64 module_id, u8 accepted, u16 reason_code, str reason_text,
//                      u64 peak_memory_bytes, u64 budget_bytes
//   train_round (7)    u16 strategy_id, u32 local_epochs, u32 batch_size,
//                      f32 learning_rate, f32 momentum, f32 weight_decay,
//                      f32 proximal_mu, u8 flags, u8 codec_id, u32 deadline_ms,
//                      u64 seed, u32 example_limit, u8 dataset_id, str partition_spec,
//                      u32 shard_index, u32 shard_count, u64 partition_seed,
//                      u32 train_limit, u32 param_count, f32[param_count],
//                      u32 control_count, f32[control_count] server_control
//   update (8)         u32 example_count, u32 local_steps, u8 codec_id, blob delta,
//                      f64 loss_before, f64 loss, f64 accuracy, f64 compute_ms,
//                      u64 peak_memory_bytes, u64 bytes_received,
//                      u32 control_count, f32[control_count] control_delta
//   infer_request (9)  u64 request_id, u8 rank, u32[rank] dims, f32[prod(dims)]
//   infer_response (10) u64 request_id, f64 compute_ms, u8 rank, u32[rank] dims,
//                      f32[prod(dims)]
//   heartbeat (11)     u64 clock_ms
//   metrics (12)       u16 count, count x (str name, f64 value)
//   error (13)         u16 code, str message
//   bye (14)           u16 code
//
// Every decoder checks each declared count and length against Limits and
// against the bytes left before it resizes anything, refuses trailing bytes,
// and then applies the same validate() the encoders apply, so an encoder
// never produces bytes a peer with the same Limits refuses. A decode failure
// closes the connection with CloseReason::malformed_payload; the Error's
// message names the message and the field. docs/wire.md has the rules.
#pragma once

#include "fleetdl/wire/frame.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace fleetdl::wire {

/// What an assign_chunk's module is.
enum class ModuleKind : std::uint8_t {
  fdl_model = 1,   ///< a .fdl model file (io/fdl.hpp)
  micro_blob = 2,  ///< an int8 micro runtime blob (micro/blob.hpp)
};

/// Update codec ids: 0 is raw little-endian float32 (d x 4 bytes, no
/// header); the others are fl::CodecKind values (fl/codec.hpp), whose bytes
/// carry their own header. Listed here so wire/ does not need Eigen.
enum class CodecId : std::uint8_t {
  raw_f32 = 0x00,
  fp16 = 0x01,
  topk_pairs = 0x02,
  topk_bitmap = 0x03,
  quant2 = 0x12,
  quant4 = 0x14,
  quant8 = 0x18,
};

constexpr bool is_known_codec(std::uint8_t c) noexcept {
  return c == 0x00 || c == 0x01 || c == 0x02 || c == 0x03 || c == 0x12 || c == 0x14 || c == 0x18;
}

/// hello capability bits (Hello::features). Other bits must be 0.
namespace feature {
inline constexpr std::uint32_t train = 1U << 0;            ///< runs FL training rounds (float model)
inline constexpr std::uint32_t float_inference = 1U << 1;  ///< serves float model inference
inline constexpr std::uint32_t micro_inference = 1U << 2;  ///< runs int8 micro blobs
inline constexpr std::uint32_t all = train | float_inference | micro_inference;
}  // namespace feature

namespace detail {

inline std::string quote(const char* field) { return std::string("'") + field + "'"; }

/// Sticky first-error reader and checker of one message's fields. Every read
/// checks the bytes left; every length is checked against its limit and the
/// bytes left before anything is resized.
class Fields {
 public:
  Fields(std::span<const std::uint8_t> p, const char* msg) : r_(p.data(), p.size()), msg_(msg) {}
  explicit Fields(const char* msg) : r_(nullptr, 0), msg_(msg) {}

  bool ok() const { return !failed_; }
  Result<void> result() {
    if (failed_) return std::move(err_);
    return success();
  }

  void fail(Errc c, const std::string& what) {
    if (failed_) return;
    failed_ = true;
    err_ = make_error(c, std::string(msg_) + ": " + what);
  }

  // -- reads ----------------------------------------------------------------
  template <class T>
  void get(const char* field, T& v) {
    if (failed_) return;
    bool got = false;
    if constexpr (std::is_same_v<T, std::uint8_t>) got = r_.u8(v);
    else if constexpr (std::is_same_v<T, std::uint16_t>) got = r_.u16(v);
    else if constexpr (std::is_same_v<T, std::uint32_t>) got = r_.u32(v);
    else if constexpr (std::is_same_v<T, std::uint64_t>) got = r_.u64(v);
    else if constexpr (std::is_same_v<T, float>) got = r_.f32(v);
    else if constexpr (std::is_same_v<T, double>) got = r_.f64(v);
    else static_assert(sizeof(T) == 0, "Fields::get: unsupported type");
    if (!got)
      fail(Errc::truncated, "payload ends inside " + quote(field) + " (needs " + std::to_string(sizeof(T)) +
                                " bytes, " + std::to_string(r_.remaining()) + " left)");
  }

  /// Read a declared length (u16 for str, u32 for blob) and take that many
  /// bytes, after checking it against `limit` and the bytes left.
  std::span<const std::uint8_t> bytes(const char* field, bool u16_length, std::uint64_t limit, const char* limit_name) {
    if (failed_) return {};
    std::uint64_t n = 0;
    if (u16_length) {
      std::uint16_t k = 0;
      get(field, k);
      n = k;
    } else {
      std::uint32_t k = 0;
      get(field, k);
      n = k;
    }
    if (failed_) return {};
    if (!max_len(field, n, limit, limit_name)) return {};
    if (n > r_.remaining()) {
      fail(Errc::truncated, quote(field) + " declares " + std::to_string(n) + " bytes, " +
                                std::to_string(r_.remaining()) + " left");
      return {};
    }
    return {r_.take(static_cast<std::size_t>(n)), static_cast<std::size_t>(n)};
  }
  void str(const char* field, std::string& s, std::uint64_t limit, const char* limit_name) {
    const auto b = bytes(field, true, limit, limit_name);
    if (!failed_) s.assign(reinterpret_cast<const char*>(b.data()), b.size());
  }
  void blob(const char* field, std::string& s, std::uint64_t limit, const char* limit_name) {
    const auto b = bytes(field, false, limit, limit_name);
    if (!failed_) s.assign(reinterpret_cast<const char*>(b.data()), b.size());
  }
  void blob(const char* field, std::vector<std::uint8_t>& v, std::uint64_t limit, const char* limit_name) {
    const auto b = bytes(field, false, limit, limit_name);
    if (!failed_) v.assign(b.begin(), b.end());
  }

  /// `count` float32 values (count already checked against its limit): the
  /// raw little-endian bytes, after checking count x 4 against the bytes left.
  std::span<const std::uint8_t> f32_bytes(const char* field, std::uint64_t count) {
    if (failed_) return {};
    if (count > r_.remaining() / 4) {
      fail(Errc::truncated, quote(field) + " declares " + std::to_string(count) + " float32 values (" +
                                std::to_string(count * 4) + " bytes), " + std::to_string(r_.remaining()) + " left");
      return {};
    }
    const std::size_t n = static_cast<std::size_t>(count) * 4;
    return {r_.take(n), n};
  }
  void f32_array(const char* field, std::uint64_t count, std::vector<float>& out) {
    const auto b = f32_bytes(field, count);
    if (failed_) return;
    out.resize(static_cast<std::size_t>(count));
    load_f32s(b, out.data());
  }

  /// Refuse trailing bytes.
  void end() {
    if (!failed_ && !r_.at_end())
      fail(Errc::corrupt, std::to_string(r_.remaining()) + " trailing bytes after the last field");
  }
  std::size_t remaining() const { return r_.remaining(); }

  // -- checks ---------------------------------------------------------------
  bool max_len(const char* field, std::uint64_t n, std::uint64_t limit, const char* limit_name) {
    if (failed_) return false;
    if (n > limit) {
      fail(Errc::limit_exceeded, quote(field) + " is " + std::to_string(n) + " long, limit " + limit_name + " " +
                                     std::to_string(limit));
      return false;
    }
    return true;
  }
  void str_fits(const char* field, std::size_t n, std::uint64_t limit, const char* limit_name) {
    if (max_len(field, n, limit, limit_name) && n > 0xFFFF)
      fail(Errc::limit_exceeded, quote(field) + " is " + std::to_string(n) + " bytes, a str holds at most 65535");
  }
  void blob_fits(const char* field, std::size_t n, std::uint64_t limit, const char* limit_name) {
    if (max_len(field, n, limit, limit_name) && n > 0xFFFFFFFFULL)
      fail(Errc::limit_exceeded, quote(field) + " is " + std::to_string(n) + " bytes, a blob holds at most 2^32-1");
  }
  void require(bool cond, const char* field, const char* rule) {
    if (!failed_ && !cond) fail(Errc::corrupt, quote(field) + " " + rule);
  }
  void finite(double v, const char* field) { require(std::isfinite(v), field, "is not finite"); }
  void finite_nonneg(double v, const char* field) {
    finite(v, field);
    require(!(v < 0), field, "is negative");
  }
  void all_finite(std::span<const float> v, const char* field) {
    if (failed_) return;
    for (std::size_t i = 0; i < v.size(); ++i)
      if (!std::isfinite(v[i])) {
        fail(Errc::corrupt, quote(field) + " value " + std::to_string(i) + " is not finite");
        return;
      }
  }
  void all_finite_le(std::span<const std::uint8_t> le, const char* field) {
    if (failed_) return;
    for (std::size_t i = 0; i < le.size() / 4; ++i) {
      // Exponent all ones = inf or NaN.
      if (((le[4 * i + 3] & 0x7F) == 0x7F) && ((le[4 * i + 2] & 0x80) == 0x80)) {
        fail(Errc::corrupt, quote(field) + " value " + std::to_string(i) + " is not finite");
        return;
      }
    }
  }

  static void load_f32s(std::span<const std::uint8_t> le, float* out) {
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (!le.empty()) std::memcpy(out, le.data(), le.size());
#else
    for (std::size_t i = 0; i < le.size() / 4; ++i) {
      const std::uint32_t u = load_u32(le.data() + 4 * i);
      std::memcpy(out + i, &u, 4);
    }
#endif
  }

 private:
  ByteReader r_;
  const char* msg_;
  Error err_{};
  bool failed_ = false;
};

template <class W>
void put_f32s(W& w, std::span<const float> v) {
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  w.raw(v.data(), v.size() * 4);
#else
  for (float x : v) w.f32(x);
#endif
}

template <class W>
void put_blob(W& w, std::span<const std::uint8_t> b) {
  w.u32(static_cast<std::uint32_t>(b.size()));
  w.raw(b.data(), b.size());
}
template <class W>
void put_blob(W& w, const std::string& s) {
  w.u32(static_cast<std::uint32_t>(s.size()));
  w.raw(s.data(), s.size());
}

/// Element count of a shape, or 0 when a dim is 0 or the product exceeds
/// `limit` (checked step by step: no overflow).
inline std::uint64_t shape_count(std::span<const std::uint32_t> dims, std::uint64_t limit) {
  std::uint64_t n = 1;
  for (std::uint32_t d : dims) {
    if (d == 0) return 0;
    n *= d;
    if (n > limit) return 0;
  }
  return n;
}

}  // namespace detail

// ---------------------------------------------------------------------------
// Messages

struct Hello {
  static constexpr MessageType kType = MessageType::hello;
  std::uint16_t protocol_version = kProtocolVersion;  ///< highest version the sender speaks, >= 1
  std::string agent_name;                             ///< non-empty
  std::uint32_t features = 0;                         ///< feature:: bits
  std::uint32_t cores = 1;                            ///< >= 1
  std::uint64_t ram_bytes = 0;
  std::uint64_t storage_bytes = 0;
  double mac_per_s = 0;         ///< measured multiply-accumulates per second, finite >= 0
  double link_bytes_per_s = 0;  ///< measured link throughput, finite >= 0
  std::uint64_t memory_budget_bytes = 0;  ///< what fleetdl may use on the device

  Result<void> validate(const Limits& l = {}) const {
    detail::Fields f("hello");
    check(f, l);
    return f.result();
  }
  template <class W>
  void encode(W& w) const {
    w.u16(protocol_version);
    w.str(agent_name);
    w.u32(features);
    w.u32(cores);
    w.u64(ram_bytes);
    w.u64(storage_bytes);
    w.f64(mac_per_s);
    w.f64(link_bytes_per_s);
    w.u64(memory_budget_bytes);
  }
  static Result<Hello> decode(std::span<const std::uint8_t> p, const Limits& l = {}) {
    detail::Fields f(p, "hello");
    Hello m;
    f.get("protocol_version", m.protocol_version);
    f.str("agent_name", m.agent_name, l.max_string_bytes, "max_string_bytes");
    f.get("features", m.features);
    f.get("cores", m.cores);
    f.get("ram_bytes", m.ram_bytes);
    f.get("storage_bytes", m.storage_bytes);
    f.get("mac_per_s", m.mac_per_s);
    f.get("link_bytes_per_s", m.link_bytes_per_s);
    f.get("memory_budget_bytes", m.memory_budget_bytes);
    f.end();
    m.check(f, l);
    FLEETDL_TRY(f.result());
    return m;
  }
  void check(detail::Fields& f, const Limits& l) const {
    f.require(protocol_version >= 1, "protocol_version", "must be >= 1");
    f.str_fits("agent_name", agent_name.size(), l.max_string_bytes, "max_string_bytes");
    f.require(!agent_name.empty(), "agent_name", "is empty");
    f.require((features & ~feature::all) == 0, "features", "has unknown bits set (known: 0x7)");
    f.require(cores >= 1, "cores", "must be >= 1");
    f.finite_nonneg(mac_per_s, "mac_per_s");
    f.finite_nonneg(link_bytes_per_s, "link_bytes_per_s");
  }
  bool operator==(const Hello&) const = default;
};

struct HelloAck {
  static constexpr MessageType kType = MessageType::hello_ack;
  std::uint16_t protocol_version = kProtocolVersion;  ///< the version both ends will speak, >= 1
  std::uint64_t device_id = 0;                        ///< assigned id, >= 1
  std::uint32_t heartbeat_interval_ms = 1000;         ///< >= 1

  Result<void> validate(const Limits& l = {}) const {
    detail::Fields f("hello_ack");
    check(f, l);
    return f.result();
  }
  template <class W>
  void encode(W& w) const {
    w.u16(protocol_version);
    w.u64(device_id);
    w.u32(heartbeat_interval_ms);
  }
  static Result<HelloAck> decode(std::span<const std::uint8_t> p, const Limits& l = {}) {
    detail::Fields f(p, "hello_ack");
    HelloAck m;
    f.get("protocol_version", m.protocol_version);
    f.get("device_id", m.device_id);
    f.get("heartbeat_interval_ms", m.heartbeat_interval_ms);
    f.end();
    m.check(f, l);
    FLEETDL_TRY(f.result());
    return m;
  }
  void check(detail::Fields& f, const Limits&) const {
    f.require(protocol_version >= 1, "protocol_version", "must be >= 1");
    f.require(device_id != 0, "device_id", "must not be 0 (0 means unassigned)");
    f.require(heartbeat_interval_ms >= 1, "heartbeat_interval_ms", "must be >= 1");
  }
  bool operator==(const HelloAck&) const = default;
};

struct Enroll {
  static constexpr MessageType kType = MessageType::enroll;
  std::string token_identity;  ///< who the enrollment token names, non-empty
  std::string csr_pem;         ///< PKCS#10 request, PEM, non-empty

  Result<void> validate(const Limits& l = {}) const {
    detail::Fields f("enroll");
    check(f, l);
    return f.result();
  }
  template <class W>
  void encode(W& w) const {
    w.str(token_identity);
    detail::put_blob(w, csr_pem);
  }
  static Result<Enroll> decode(std::span<const std::uint8_t> p, const Limits& l = {}) {
    detail::Fields f(p, "enroll");
    Enroll m;
    f.str("token_identity", m.token_identity, l.max_string_bytes, "max_string_bytes");
    f.blob("csr_pem", m.csr_pem, l.max_pem_bytes, "max_pem_bytes");
    f.end();
    m.check(f, l);
    FLEETDL_TRY(f.result());
    return m;
  }
  void check(detail::Fields& f, const Limits& l) const {
    f.str_fits("token_identity", token_identity.size(), l.max_string_bytes, "max_string_bytes");
    f.require(!token_identity.empty(), "token_identity", "is empty");
    f.blob_fits("csr_pem", csr_pem.size(), l.max_pem_bytes, "max_pem_bytes");
    f.require(!csr_pem.empty(), "csr_pem", "is empty");
  }
  bool operator==(const Enroll&) const = default;
};

struct EnrollAck {
  static constexpr MessageType kType = MessageType::enroll_ack;
  std::uint64_t device_id = 0;     ///< >= 1
  std::string certificate_pem;     ///< the device's certificate, non-empty
  std::string ca_certificate_pem;  ///< the CA to trust for the orchestrator, non-empty

  Result<void> validate(const Limits& l = {}) const {
    detail::Fields f("enroll_ack");
    check(f, l);
    return f.result();
  }
  template <class W>
  void encode(W& w) const {
    w.u64(device_id);
    detail::put_blob(w, certificate_pem);
    detail::put_blob(w, ca_certificate_pem);
  }
  static Result<EnrollAck> decode(std::span<const std::uint8_t> p, const Limits& l = {}) {
    detail::Fields f(p, "enroll_ack");
    EnrollAck m;
    f.get("device_id", m.device_id);
    f.blob("certificate_pem", m.certificate_pem, l.max_pem_bytes, "max_pem_bytes");
    f.blob("ca_certificate_pem", m.ca_certificate_pem, l.max_pem_bytes, "max_pem_bytes");
    f.end();
    m.check(f, l);
    FLEETDL_TRY(f.result());
    return m;
  }
  void check(detail::Fields& f, const Limits& l) const {
    f.require(device_id != 0, "device_id", "must not be 0 (0 means unassigned)");
    f.blob_fits("certificate_pem", certificate_pem.size(), l.max_pem_bytes, "max_pem_bytes");
    f.require(!certificate_pem.empty(), "certificate_pem", "is empty");
    f.blob_fits("ca_certificate_pem", ca_certificate_pem.size(), l.max_pem_bytes, "max_pem_bytes");
    f.require(!ca_certificate_pem.empty(), "ca_certificate_pem", "is empty");
  }
  bool operator==(const EnrollAck&) const = default;
};

/// One chunk of an assign_chunk, its data viewed in place (no heap).
struct AssignChunkView {
  std::uint64_t module_id = 0;
  ModuleKind kind = ModuleKind::fdl_model;
  std::uint32_t chunk_index = 0;
  std::uint32_t chunk_count = 1;
  std::uint64_t total_bytes = 0;
  std::uint32_t module_crc = 0;
  std::span<const std::uint8_t> data;
};

namespace detail {
inline void check_chunk(Fields& f, const AssignChunkView& c, const Limits& l) {
  f.require(c.kind == ModuleKind::fdl_model || c.kind == ModuleKind::micro_blob, "kind",
            "is not a module kind (1 fdl_model, 2 micro_blob)");
  f.require(c.chunk_count >= 1, "chunk_count", "must be >= 1");
  f.require(c.chunk_index < c.chunk_count, "chunk_index", "must be below chunk_count");
  f.require(c.chunk_count <= (c.total_bytes > 0 ? c.total_bytes : 1), "chunk_count",
            "exceeds total_bytes (every chunk but an empty module's only one carries data)");
  f.blob_fits("data", c.data.size(), l.max_chunk_bytes, "max_chunk_bytes");
  f.require(c.data.size() <= c.total_bytes, "data", "is longer than total_bytes");
}
}  // namespace detail

struct AssignChunk {
  static constexpr MessageType kType = MessageType::assign_chunk;
  std::uint64_t module_id = 0;
  ModuleKind kind = ModuleKind::fdl_model;
  std::uint32_t chunk_index = 0;   ///< 0 .. chunk_count-1, sent in order
  std::uint32_t chunk_count = 1;   ///< >= 1
  std::uint64_t total_bytes = 0;   ///< whole module; ChunkAssembler checks max_module_bytes
  std::uint32_t module_crc = 0;    ///< CRC-32 of the whole module
  std::vector<std::uint8_t> data;  ///< at most max_chunk_bytes

  AssignChunkView view() const {
    return AssignChunkView{module_id, kind, chunk_index, chunk_count, total_bytes, module_crc, data};
  }
  Result<void> validate(const Limits& l = {}) const {
    detail::Fields f("assign_chunk");
    detail::check_chunk(f, view(), l);
    return f.result();
  }
  template <class W>
  void encode(W& w) const {
    w.u64(module_id);
    w.u8(static_cast<std::uint8_t>(kind));
    w.u32(chunk_index);
    w.u32(chunk_count);
    w.u64(total_bytes);
    w.u32(module_crc);
    detail::put_blob(w, std::span<const std::uint8_t>(data));
  }
  /// No-heap decode (except an error's message): data views the payload.
  static Result<AssignChunkView> decode_view(std::span<const std::uint8_t> p, const Limits& l = {}) {
    detail::Fields f(p, "assign_chunk");
    AssignChunkView v;
    std::uint8_t kind = 0;
    f.get("module_id", v.module_id);
    f.get("kind", kind);
    v.kind = static_cast<ModuleKind>(kind);
    f.get("chunk_index", v.chunk_index);
    f.get("chunk_count", v.chunk_count);
    f.get("total_bytes", v.total_bytes);
    f.get("module_crc", v.module_crc);
    v.data = f.bytes("data", false, l.max_chunk_bytes, "max_chunk_bytes");
    f.end();
    detail::check_chunk(f, v, l);
    FLEETDL_TRY(f.result());
    return v;
  }
  static Result<AssignChunk> decode(std::span<const std::uint8_t> p, const Limits& l = {}) {
    auto v = decode_view(p, l);
    if (!v) return std::move(v).error();
    AssignChunk m;
    m.module_id = v->module_id;
    m.kind = v->kind;
    m.chunk_index = v->chunk_index;
    m.chunk_count = v->chunk_count;
    m.total_bytes = v->total_bytes;
    m.module_crc = v->module_crc;
    m.data.assign(v->data.begin(), v->data.end());
    return m;
  }
  bool operator==(const AssignChunk&) const = default;
};

struct AssignResult {
  static constexpr MessageType kType = MessageType::assign_result;
  std::uint64_t module_id = 0;
  bool accepted = false;
  std::uint16_t reason_code = 0;  ///< application-defined; 0 when accepted
  std::string reason_text;
  std::uint64_t peak_memory_bytes = 0;  ///< what running the module needs
  std::uint64_t budget_bytes = 0;       ///< what the device allows

  Result<void> validate(const Limits& l = {}) const {
    detail::Fields f("assign_result");
    check(f, l);
    return f.result();
  }
  template <class W>
  void encode(W& w) const {
    w.u64(module_id);
    w.u8(accepted ? 1 : 0);
    w.u16(reason_code);
    w.str(reason_text);
    w.u64(peak_memory_bytes);
    w.u64(budget_bytes);
  }
  static Result<AssignResult> decode(std::span<const std::uint8_t> p, const Limits& l = {}) {
    detail::Fields f(p, "assign_result");
    AssignResult m;
    std::uint8_t acc = 0;
    f.get("module_id", m.module_id);
    f.get("accepted", acc);
    f.require(acc <= 1, "accepted", "must be 0 or 1");
    m.accepted = acc == 1;
    f.get("reason_code", m.reason_code);
    f.str("reason_text", m.reason_text, l.max_string_bytes, "max_string_bytes");
    f.get("peak_memory_bytes", m.peak_memory_bytes);
    f.get("budget_bytes", m.budget_bytes);
    f.end();
    m.check(f, l);
    FLEETDL_TRY(f.result());
    return m;
  }
  void check(detail::Fields& f, const Limits& l) const {
    f.str_fits("reason_text", reason_text.size(), l.max_string_bytes, "max_string_bytes");
  }
  bool operator==(const AssignResult&) const = default;
};

/// What a train_round's data shard is drawn from. The data never travels:
/// each device reads its own copy.
enum class DatasetId : std::uint8_t {
  fashion_mnist = 1,  ///< Fashion-MNIST training set (data/dataset.hpp)
};

constexpr bool is_known_dataset(std::uint8_t d) noexcept { return d == 1; }

/// RoundConfig::flags bits. Other bits must be 0.
namespace round_flag {
inline constexpr std::uint8_t scaffold = 1U << 0;     ///< SCAFFOLD: correct with the control variates
inline constexpr std::uint8_t loss_before = 1U << 1;  ///< q-FedAvg: report the loss at the received model
inline constexpr std::uint8_t all = scaffold | loss_before;
}  // namespace round_flag

/// Training configuration of one round (the fixed part of train_round): the
/// client config, the codec, deadline and seed, and the device's data shard.
struct RoundConfig {
  std::uint16_t strategy_id = 0;   ///< orchestrator's strategy id (FedAvg, FedProx, ...)
  std::uint32_t local_epochs = 1;  ///< >= 1
  std::uint32_t batch_size = 32;   ///< >= 1
  float learning_rate = 0.01f;     ///< finite > 0
  float momentum = 0.0f;           ///< local SGD momentum, finite >= 0
  float weight_decay = 0.0f;       ///< local SGD L2 weight decay, finite >= 0
  float proximal_mu = 0.0f;        ///< FedProx mu, finite >= 0
  std::uint8_t flags = 0;          ///< round_flag:: bits
  CodecId codec = CodecId::raw_f32;  ///< codec of the update's delta
  std::uint32_t deadline_ms = 0;   ///< 0 = none
  std::uint64_t seed = 0;          ///< the client's local training seed for this round
  std::uint32_t example_limit = 0; ///< 0 = all local examples
  // The data shard: partition `spec` of the first `train_limit` training
  // images into `shard_count` clients, drawn with `partition_seed`; this
  // device trains on client `shard_index`.
  DatasetId dataset = DatasetId::fashion_mnist;
  std::string partition_spec;       ///< the run config's "partition" JSON object, non-empty
  std::uint32_t shard_index = 0;    ///< < shard_count
  std::uint32_t shard_count = 1;    ///< >= 1
  std::uint64_t partition_seed = 0; ///< the run config's seed (sim::make_partition forks it)
  std::uint32_t train_limit = 0;    ///< first images of the training set, 0 = all
  // The update's privacy and sparsity: top-k codecs keep
  // max(1, round(topk_fraction x d)) coordinates; with dp_clip > 0 the
  // device clips its delta to L2 norm dp_clip and adds Gaussian noise of
  // standard deviation dp_noise_multiplier x dp_clip to every coordinate
  // (local DP, fl::privatize_update_local) before the codec.
  float topk_fraction = 0.01f;      ///< finite, in (0, 1]
  float dp_clip = 0.0f;             ///< finite >= 0; 0 = no local DP
  float dp_noise_multiplier = 0.0f; ///< finite >= 0; > 0 needs dp_clip > 0

  bool scaffold() const noexcept { return (flags & round_flag::scaffold) != 0; }
  bool loss_before() const noexcept { return (flags & round_flag::loss_before) != 0; }
  bool operator==(const RoundConfig&) const = default;
};

/// train_round. The global parameters (and SCAFFOLD's server control
/// variate, when used) travel in the same frame, so their count is bounded by
/// Limits::max_train_params and the frame payload; a module too big for one
/// frame is a module too big for a small device, and both ends can raise the
/// two limits together (docs/wire.md, "Parameters").
struct TrainRound {
  static constexpr MessageType kType = MessageType::train_round;
  RoundConfig config;
  std::vector<float> parameters;      ///< finite
  std::vector<float> server_control;  ///< SCAFFOLD's c: empty or parameters.size() values, finite

  Result<void> validate(const Limits& l = {}) const {
    detail::Fields f("train_round");
    check(f, l);
    f.max_len("parameters", parameters.size(), l.max_train_params, "max_train_params");
    f.all_finite(parameters, "parameters");
    f.all_finite(server_control, "server_control");
    return f.result();
  }
  template <class W>
  void encode(W& w) const {
    const RoundConfig& c = config;
    w.u16(c.strategy_id);
    w.u32(c.local_epochs);
    w.u32(c.batch_size);
    w.f32(c.learning_rate);
    w.f32(c.momentum);
    w.f32(c.weight_decay);
    w.f32(c.proximal_mu);
    w.u8(c.flags);
    w.u8(static_cast<std::uint8_t>(c.codec));
    w.u32(c.deadline_ms);
    w.u64(c.seed);
    w.u32(c.example_limit);
    w.u8(static_cast<std::uint8_t>(c.dataset));
    w.str(c.partition_spec);
    w.u32(c.shard_index);
    w.u32(c.shard_count);
    w.u64(c.partition_seed);
    w.u32(c.train_limit);
    w.f32(c.topk_fraction);
    w.f32(c.dp_clip);
    w.f32(c.dp_noise_multiplier);
    w.u32(static_cast<std::uint32_t>(parameters.size()));
    detail::put_f32s(w, parameters);
    w.u32(static_cast<std::uint32_t>(server_control.size()));
    detail::put_f32s(w, server_control);
  }
  static Result<TrainRound> decode(std::span<const std::uint8_t> p, const Limits& l = {}) {
    detail::Fields f(p, "train_round");
    TrainRound m;
    RoundConfig& c = m.config;
    std::uint8_t codec = 0, dataset = 0;
    std::uint32_t count = 0, control_count = 0;
    f.get("strategy_id", c.strategy_id);
    f.get("local_epochs", c.local_epochs);
    f.get("batch_size", c.batch_size);
    f.get("learning_rate", c.learning_rate);
    f.get("momentum", c.momentum);
    f.get("weight_decay", c.weight_decay);
    f.get("proximal_mu", c.proximal_mu);
    f.get("flags", c.flags);
    f.get("codec_id", codec);
    f.require(is_known_codec(codec), "codec_id", "is not a known codec");
    c.codec = static_cast<CodecId>(codec);
    f.get("deadline_ms", c.deadline_ms);
    f.get("seed", c.seed);
    f.get("example_limit", c.example_limit);
    f.get("dataset_id", dataset);
    f.require(is_known_dataset(dataset), "dataset_id", "is not a known dataset (1 fashion-mnist)");
    c.dataset = static_cast<DatasetId>(dataset);
    f.str("partition_spec", c.partition_spec, l.max_partition_spec_bytes, "max_partition_spec_bytes");
    f.get("shard_index", c.shard_index);
    f.get("shard_count", c.shard_count);
    f.get("partition_seed", c.partition_seed);
    f.get("train_limit", c.train_limit);
    f.get("topk_fraction", c.topk_fraction);
    f.get("dp_clip", c.dp_clip);
    f.get("dp_noise_multiplier", c.dp_noise_multiplier);
    f.get("param_count", count);
    f.max_len("parameters", count, l.max_train_params, "max_train_params");
    f.f32_array("parameters", count, m.parameters);
    f.get("control_count", control_count);
    f.require(control_count == 0 || control_count == count, "server_control",
              "count must be 0 or param_count");
    f.f32_array("server_control", control_count, m.server_control);
    f.end();
    m.check(f, l);
    f.all_finite(m.parameters, "parameters");
    f.all_finite(m.server_control, "server_control");
    FLEETDL_TRY(f.result());
    return m;
  }
  void check(detail::Fields& f, const Limits& l) const {
    const RoundConfig& c = config;
    f.require(c.local_epochs >= 1, "local_epochs", "must be >= 1");
    f.require(c.batch_size >= 1, "batch_size", "must be >= 1");
    f.finite(c.learning_rate, "learning_rate");
    f.require(!(c.learning_rate <= 0), "learning_rate", "must be > 0");
    f.finite_nonneg(c.momentum, "momentum");
    f.finite_nonneg(c.weight_decay, "weight_decay");
    f.finite_nonneg(c.proximal_mu, "proximal_mu");
    f.require((c.flags & ~round_flag::all) == 0, "flags", "has unknown bits set (known: 0x3)");
    f.require(is_known_codec(static_cast<std::uint8_t>(c.codec)), "codec_id", "is not a known codec");
    f.require(is_known_dataset(static_cast<std::uint8_t>(c.dataset)), "dataset_id",
              "is not a known dataset (1 fashion-mnist)");
    f.str_fits("partition_spec", c.partition_spec.size(), l.max_partition_spec_bytes, "max_partition_spec_bytes");
    f.require(!c.partition_spec.empty(), "partition_spec", "is empty");
    f.require(c.shard_count >= 1, "shard_count", "must be >= 1");
    f.require(c.shard_index < c.shard_count, "shard_index", "must be below shard_count");
    f.require(server_control.empty() || server_control.size() == parameters.size(), "server_control",
              "count must be 0 or param_count");
    f.finite(c.topk_fraction, "topk_fraction");
    f.require(!(c.topk_fraction <= 0.0f) && !(c.topk_fraction > 1.0f), "topk_fraction", "must be in (0, 1]");
    f.finite_nonneg(c.dp_clip, "dp_clip");
    f.finite_nonneg(c.dp_noise_multiplier, "dp_noise_multiplier");
    f.require(!(c.dp_noise_multiplier > 0.0f) || c.dp_clip > 0.0f, "dp_noise_multiplier", "needs dp_clip > 0");
  }
  bool operator==(const TrainRound&) const = default;
};

struct Update {
  static constexpr MessageType kType = MessageType::update;
  std::uint32_t example_count = 0;  ///< local examples the delta was trained on
  std::uint32_t local_steps = 0;    ///< optimizer steps taken (FedNova's tau, SCAFFOLD's K)
  CodecId codec = CodecId::raw_f32;
  std::vector<std::uint8_t> delta;  ///< opaque bytes of fl/codec.hpp (or raw f32)
  double loss_before = 0;           ///< loss at the received model (q-FedAvg; else 0), finite
  double loss = 0;                  ///< last-epoch training loss, finite
  double accuracy = 0;              ///< in [0, 1]
  double compute_ms = 0;            ///< finite >= 0
  std::uint64_t peak_memory_bytes = 0;
  std::uint64_t bytes_received = 0;
  /// SCAFFOLD's c_i+ - c_i: empty or the model's parameter count (which only
  /// the receiver knows; the decoder bounds it by max_train_params), finite.
  std::vector<float> control_delta;

  Result<void> validate(const Limits& l = {}) const {
    detail::Fields f("update");
    check(f, l);
    f.all_finite(control_delta, "control_delta");
    return f.result();
  }
  template <class W>
  void encode(W& w) const {
    w.u32(example_count);
    w.u32(local_steps);
    w.u8(static_cast<std::uint8_t>(codec));
    detail::put_blob(w, std::span<const std::uint8_t>(delta));
    w.f64(loss_before);
    w.f64(loss);
    w.f64(accuracy);
    w.f64(compute_ms);
    w.u64(peak_memory_bytes);
    w.u64(bytes_received);
    w.u32(static_cast<std::uint32_t>(control_delta.size()));
    detail::put_f32s(w, control_delta);
  }
  static Result<Update> decode(std::span<const std::uint8_t> p, const Limits& l = {}) {
    detail::Fields f(p, "update");
    Update m;
    std::uint8_t codec = 0;
    std::uint32_t control_count = 0;
    f.get("example_count", m.example_count);
    f.get("local_steps", m.local_steps);
    f.get("codec_id", codec);
    f.require(is_known_codec(codec), "codec_id", "is not a known codec");
    m.codec = static_cast<CodecId>(codec);
    f.blob("delta", m.delta, l.max_frame_payload, "max_frame_payload");
    f.get("loss_before", m.loss_before);
    f.get("loss", m.loss);
    f.get("accuracy", m.accuracy);
    f.get("compute_ms", m.compute_ms);
    f.get("peak_memory_bytes", m.peak_memory_bytes);
    f.get("bytes_received", m.bytes_received);
    f.get("control_count", control_count);
    f.max_len("control_delta", control_count, l.max_train_params, "max_train_params");
    f.f32_array("control_delta", control_count, m.control_delta);
    f.end();
    m.check(f, l);
    f.all_finite(m.control_delta, "control_delta");
    FLEETDL_TRY(f.result());
    return m;
  }
  void check(detail::Fields& f, const Limits& l) const {
    f.require(is_known_codec(static_cast<std::uint8_t>(codec)), "codec_id", "is not a known codec");
    f.blob_fits("delta", delta.size(), l.max_frame_payload, "max_frame_payload");
    f.finite(loss_before, "loss_before");
    f.finite(loss, "loss");
    f.finite(accuracy, "accuracy");
    f.require(accuracy >= 0 && accuracy <= 1, "accuracy", "is outside [0, 1]");
    f.finite_nonneg(compute_ms, "compute_ms");
    f.max_len("control_delta", control_delta.size(), l.max_train_params, "max_train_params");
  }
  bool operator==(const Update&) const = default;
};

/// An infer_request or infer_response viewed in place (no heap): the shape
/// and the raw little-endian float32 bytes of the values.
struct ActivationsView {
  std::uint64_t request_id = 0;
  double compute_ms = 0;  ///< responses only
  std::uint8_t rank = 0;
  std::uint32_t dims[kMaxDims] = {};
  std::span<const std::uint8_t> values_le;  ///< count() x 4 bytes

  std::size_t count() const noexcept { return values_le.size() / 4; }
  float value(std::size_t i) const noexcept {
    const std::uint32_t u = detail::load_u32(values_le.data() + 4 * i);
    float v = 0;
    std::memcpy(&v, &u, 4);
    return v;
  }
  /// Copy the values into `out` (out.size() >= count()).
  void copy_to(std::span<float> out) const noexcept { detail::Fields::load_f32s(values_le, out.data()); }
};

namespace detail {

/// Check a shape (rank 1 .. kMaxDims, dims >= 1, product <= max_activations)
/// and return its element count, 0 after a failure.
inline std::uint64_t check_shape(Fields& f, std::span<const std::uint32_t> dims, const Limits& l) {
  f.require(!dims.empty() && dims.size() <= kMaxDims, "rank", "must be 1 .. 8");
  for (std::uint32_t d : dims) f.require(d >= 1, "dims", "has a 0 dimension");
  if (!f.ok()) return 0;
  const std::uint64_t n = shape_count(dims, l.max_activations);
  if (n == 0) f.fail(Errc::limit_exceeded, "'dims' hold more values than max_activations " + std::to_string(l.max_activations));
  return n;
}

// rank, dims, values of an infer_request / infer_response.
inline void read_activations(Fields& f, ActivationsView& v, const Limits& l) {
  f.get("rank", v.rank);
  f.require(v.rank >= 1 && v.rank <= kMaxDims, "rank", "must be 1 .. 8");
  if (!f.ok()) return;
  for (std::uint8_t i = 0; i < v.rank; ++i) f.get("dims", v.dims[i]);
  const std::uint64_t n = check_shape(f, std::span<const std::uint32_t>(v.dims, v.rank), l);
  v.values_le = f.f32_bytes("values", n);
  f.end();
  f.all_finite_le(v.values_le, "values");
}

template <class W>
void put_activations(W& w, std::span<const std::uint32_t> dims, std::span<const float> values) {
  w.u8(static_cast<std::uint8_t>(dims.size()));
  for (std::uint32_t d : dims) w.u32(d);
  put_f32s(w, values);
}

inline void check_activations(Fields& f, std::span<const std::uint32_t> dims, std::span<const float> values,
                              const Limits& l) {
  const std::uint64_t n = check_shape(f, dims, l);
  f.require(!f.ok() || n == values.size(), "values", "count is not the product of dims");
  f.all_finite(values, "values");
}

}  // namespace detail

struct InferRequest {
  static constexpr MessageType kType = MessageType::infer_request;
  std::uint64_t request_id = 0;
  std::vector<std::uint32_t> dims;  ///< 1 .. kMaxDims dims, each >= 1
  std::vector<float> values;        ///< prod(dims) finite values, row-major

  Result<void> validate(const Limits& l = {}) const {
    detail::Fields f("infer_request");
    detail::check_activations(f, dims, values, l);
    return f.result();
  }
  template <class W>
  void encode(W& w) const {
    w.u64(request_id);
    detail::put_activations(w, dims, values);
  }
  static Result<ActivationsView> decode_view(std::span<const std::uint8_t> p, const Limits& l = {}) {
    detail::Fields f(p, "infer_request");
    ActivationsView v;
    f.get("request_id", v.request_id);
    detail::read_activations(f, v, l);
    FLEETDL_TRY(f.result());
    return v;
  }
  static Result<InferRequest> decode(std::span<const std::uint8_t> p, const Limits& l = {}) {
    auto v = decode_view(p, l);
    if (!v) return std::move(v).error();
    InferRequest m;
    m.request_id = v->request_id;
    m.dims.assign(v->dims, v->dims + v->rank);
    m.values.resize(v->count());
    v->copy_to(m.values);
    return m;
  }
  bool operator==(const InferRequest&) const = default;
};

struct InferResponse {
  static constexpr MessageType kType = MessageType::infer_response;
  std::uint64_t request_id = 0;
  double compute_ms = 0;            ///< finite >= 0
  std::vector<std::uint32_t> dims;  ///< 1 .. kMaxDims dims, each >= 1
  std::vector<float> values;        ///< prod(dims) finite values, row-major

  Result<void> validate(const Limits& l = {}) const {
    detail::Fields f("infer_response");
    f.finite_nonneg(compute_ms, "compute_ms");
    detail::check_activations(f, dims, values, l);
    return f.result();
  }
  template <class W>
  void encode(W& w) const {
    w.u64(request_id);
    w.f64(compute_ms);
    detail::put_activations(w, dims, values);
  }
  static Result<ActivationsView> decode_view(std::span<const std::uint8_t> p, const Limits& l = {}) {
    detail::Fields f(p, "infer_response");
    ActivationsView v;
    f.get("request_id", v.request_id);
    f.get("compute_ms", v.compute_ms);
    f.finite_nonneg(v.compute_ms, "compute_ms");
    detail::read_activations(f, v, l);
    FLEETDL_TRY(f.result());
    return v;
  }
  static Result<InferResponse> decode(std::span<const std::uint8_t> p, const Limits& l = {}) {
    auto v = decode_view(p, l);
    if (!v) return std::move(v).error();
    InferResponse m;
    m.request_id = v->request_id;
    m.compute_ms = v->compute_ms;
    m.dims.assign(v->dims, v->dims + v->rank);
    m.values.resize(v->count());
    v->copy_to(m.values);
    return m;
  }
  bool operator==(const InferResponse&) const = default;
};

/// infer_response encoded straight from caller spans (no heap): what a
/// microcontroller sends with encode_message_into().
struct InferResponseRef {
  static constexpr MessageType kType = MessageType::infer_response;
  std::uint64_t request_id = 0;
  double compute_ms = 0;
  std::span<const std::uint32_t> dims;
  std::span<const float> values;

  Result<void> validate(const Limits& l = {}) const {
    detail::Fields f("infer_response");
    f.finite_nonneg(compute_ms, "compute_ms");
    detail::check_activations(f, dims, values, l);
    return f.result();
  }
  template <class W>
  void encode(W& w) const {
    w.u64(request_id);
    w.f64(compute_ms);
    detail::put_activations(w, dims, values);
  }
};

struct Heartbeat {
  static constexpr MessageType kType = MessageType::heartbeat;
  std::uint64_t clock_ms = 0;  ///< sender's clock (monotonic ms)

  Result<void> validate(const Limits& = {}) const { return success(); }
  template <class W>
  void encode(W& w) const {
    w.u64(clock_ms);
  }
  static Result<Heartbeat> decode(std::span<const std::uint8_t> p, const Limits& = {}) {
    detail::Fields f(p, "heartbeat");
    Heartbeat m;
    f.get("clock_ms", m.clock_ms);
    f.end();
    FLEETDL_TRY(f.result());
    return m;
  }
  bool operator==(const Heartbeat&) const = default;
};

struct Metric {
  std::string name;  ///< non-empty, at most max_string_bytes
  double value = 0;  ///< finite
  bool operator==(const Metric&) const = default;
};

struct Metrics {
  static constexpr MessageType kType = MessageType::metrics;
  std::vector<Metric> entries;  ///< at most max_metrics

  Result<void> validate(const Limits& l = {}) const {
    detail::Fields f("metrics");
    f.max_len("entries", entries.size(), l.max_metrics, "max_metrics");
    f.require(entries.size() <= 0xFFFF, "entries", "count exceeds 65535");
    for (const auto& e : entries) {
      f.str_fits("name", e.name.size(), l.max_string_bytes, "max_string_bytes");
      f.require(!e.name.empty(), "name", "is empty");
      f.finite(e.value, "value");
    }
    return f.result();
  }
  template <class W>
  void encode(W& w) const {
    w.u16(static_cast<std::uint16_t>(entries.size()));
    for (const auto& e : entries) {
      w.str(e.name);
      w.f64(e.value);
    }
  }
  static Result<Metrics> decode(std::span<const std::uint8_t> p, const Limits& l = {}) {
    detail::Fields f(p, "metrics");
    Metrics m;
    std::uint16_t count = 0;
    f.get("count", count);
    f.max_len("entries", count, l.max_metrics, "max_metrics");
    // Each entry takes at least 2 + 1 + 8 bytes: refuse a count the payload
    // cannot hold before reserving for it.
    if (f.ok() && static_cast<std::size_t>(count) * 11 > f.remaining())
      f.fail(Errc::truncated, "'count' declares " + std::to_string(count) + " entries (at least " +
                                  std::to_string(count * 11) + " bytes), " + std::to_string(f.remaining()) + " left");
    if (f.ok()) m.entries.reserve(count);
    for (std::uint16_t i = 0; i < count && f.ok(); ++i) {
      Metric e;
      f.str("name", e.name, l.max_string_bytes, "max_string_bytes");
      f.get("value", e.value);
      f.require(!e.name.empty(), "name", "is empty");
      f.finite(e.value, "value");
      m.entries.push_back(std::move(e));
    }
    f.end();
    FLEETDL_TRY(f.result());
    return m;
  }
  bool operator==(const Metrics&) const = default;
};

/// error: sent before closing a connection for a reason, usually a
/// CloseReason value; other codes are application-defined.
struct ErrorNotice {
  static constexpr MessageType kType = MessageType::error;
  std::uint16_t code = 0;
  std::string message;  ///< one line, at most max_string_bytes

  ErrorNotice() = default;
  ErrorNotice(std::uint16_t c, std::string m) : code(c), message(std::move(m)) {}
  ErrorNotice(CloseReason r, std::string m) : code(static_cast<std::uint16_t>(r)), message(std::move(m)) {}
  /// The Verdict of a decoder, guard or assembler, its message cut to fit.
  explicit ErrorNotice(const Verdict& v, const Limits& l = {})
      : code(static_cast<std::uint16_t>(v.reason)), message(v.message()) {
    if (message.size() > l.max_string_bytes) message.resize(l.max_string_bytes);
  }

  CloseReason reason() const noexcept { return static_cast<CloseReason>(code); }
  Result<void> validate(const Limits& l = {}) const {
    detail::Fields f("error");
    f.str_fits("message", message.size(), l.max_string_bytes, "max_string_bytes");
    return f.result();
  }
  template <class W>
  void encode(W& w) const {
    w.u16(code);
    w.str(message);
  }
  static Result<ErrorNotice> decode(std::span<const std::uint8_t> p, const Limits& l = {}) {
    detail::Fields f(p, "error");
    ErrorNotice m;
    f.get("code", m.code);
    f.str("message", m.message, l.max_string_bytes, "max_string_bytes");
    f.end();
    FLEETDL_TRY(f.result());
    return m;
  }
  bool operator==(const ErrorNotice&) const = default;
};

struct Bye {
  static constexpr MessageType kType = MessageType::bye;
  std::uint16_t code = 0;  ///< a CloseReason value (normal = 0) or application-defined

  Result<void> validate(const Limits& = {}) const { return success(); }
  template <class W>
  void encode(W& w) const {
    w.u16(code);
  }
  static Result<Bye> decode(std::span<const std::uint8_t> p, const Limits& = {}) {
    detail::Fields f(p, "bye");
    Bye m;
    f.get("code", m.code);
    f.end();
    FLEETDL_TRY(f.result());
    return m;
  }
  bool operator==(const Bye&) const = default;
};

// ---------------------------------------------------------------------------
// The variant, decoding by type, encoding into frames

/// Any message; alternative i has type value i + 1.
using Message = std::variant<Hello, HelloAck, Enroll, EnrollAck, AssignChunk, AssignResult, TrainRound, Update,
                             InferRequest, InferResponse, Heartbeat, Metrics, ErrorNotice, Bye>;

namespace detail {
template <std::size_t I>
constexpr bool variant_order_matches() {
  if constexpr (I == std::variant_size_v<Message>) {
    return true;
  } else {
    return static_cast<std::size_t>(std::variant_alternative_t<I, Message>::kType) == I + 1 &&
           variant_order_matches<I + 1>();
  }
}
static_assert(variant_order_matches<0>(), "Message alternatives must follow MessageType values");
static_assert(std::variant_size_v<Message> == kMaxMessageType);

template <class M>
Result<Message> decode_as(std::span<const std::uint8_t> p, const Limits& l) {
  auto r = M::decode(p, l);
  if (!r) return std::move(r).error();
  return Message(std::in_place_type<M>, std::move(r).value());
}
}  // namespace detail

constexpr MessageType message_type(const Message& m) noexcept { return static_cast<MessageType>(m.index() + 1); }

/// Decode a payload as `type`. A failure means CloseReason::malformed_payload.
inline Result<Message> decode_message(MessageType type, std::span<const std::uint8_t> payload, const Limits& l = {}) {
  switch (type) {
    case MessageType::hello: return detail::decode_as<Hello>(payload, l);
    case MessageType::hello_ack: return detail::decode_as<HelloAck>(payload, l);
    case MessageType::enroll: return detail::decode_as<Enroll>(payload, l);
    case MessageType::enroll_ack: return detail::decode_as<EnrollAck>(payload, l);
    case MessageType::assign_chunk: return detail::decode_as<AssignChunk>(payload, l);
    case MessageType::assign_result: return detail::decode_as<AssignResult>(payload, l);
    case MessageType::train_round: return detail::decode_as<TrainRound>(payload, l);
    case MessageType::update: return detail::decode_as<Update>(payload, l);
    case MessageType::infer_request: return detail::decode_as<InferRequest>(payload, l);
    case MessageType::infer_response: return detail::decode_as<InferResponse>(payload, l);
    case MessageType::heartbeat: return detail::decode_as<Heartbeat>(payload, l);
    case MessageType::metrics: return detail::decode_as<Metrics>(payload, l);
    case MessageType::error: return detail::decode_as<ErrorNotice>(payload, l);
    case MessageType::bye: return detail::decode_as<Bye>(payload, l);
  }
  return make_error(Errc::unsupported, "wire: unknown message type " + std::to_string(static_cast<unsigned>(type)));
}

inline Result<Message> decode_message(const FrameView& f, const Limits& l = {}) {
  return decode_message(f.header.type, f.payload, l);
}

/// A message in a frame, as a new vector. Refuses a message that validate()
/// refuses or whose payload exceeds limits.max_frame_payload.
template <class M>
Result<std::vector<std::uint8_t>> encode_message(const M& m, const Binding& b, const Limits& l = {}) {
  FLEETDL_TRY(m.validate(l));
  ByteWriter w;
  const std::uint8_t head[kHeaderBytes] = {};  // the header is written over these by seal_frame
  w.raw(head, kHeaderBytes);
  m.encode(w);
  std::vector<std::uint8_t> out = std::move(w).bytes();
  const std::size_t payload = out.size() - kHeaderBytes;
  if (payload > l.max_frame_payload)
    return make_error(Errc::limit_exceeded, std::string("wire: ") + message_type_name(M::kType) + " payload of " +
                                                std::to_string(payload) + " bytes exceeds max_frame_payload " +
                                                std::to_string(l.max_frame_payload));
  out.resize(out.size() + kCrcBytes);
  (void)seal_frame(out, M::kType, b, payload);
  return out;
}

inline Result<std::vector<std::uint8_t>> encode_message(const Message& m, const Binding& b, const Limits& l = {}) {
  return std::visit([&](const auto& x) { return encode_message(x, b, l); }, m);
}

/// A message in a frame written into `out` (no heap unless it fails).
/// Returns the frame's size.
template <class M>
Result<std::size_t> encode_message_into(std::span<std::uint8_t> out, const M& m, const Binding& b,
                                        const Limits& l = {}) {
  FLEETDL_TRY(m.validate(l));
  const char* name = message_type_name(M::kType);
  if (out.size() < kFrameOverhead)
    return make_error(Errc::invalid_argument, std::string("wire: ") + name + ": output buffer smaller than a frame header");
  SpanWriter w(out.subspan(kHeaderBytes, out.size() - kFrameOverhead));
  m.encode(w);
  if (w.overflowed())
    return make_error(Errc::invalid_argument, std::string("wire: ") + name + ": output buffer of " +
                                                  std::to_string(out.size()) + " bytes is too small");
  if (w.size() > l.max_frame_payload)
    return make_error(Errc::limit_exceeded, std::string("wire: ") + name + " payload of " + std::to_string(w.size()) +
                                                " bytes exceeds max_frame_payload " +
                                                std::to_string(l.max_frame_payload));
  return seal_frame(out, M::kType, b, w.size());
}

}  // namespace fleetdl::wire
