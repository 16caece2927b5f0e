// fleetdl/data/idx.hpp — reader for IDX files (the MNIST / Fashion-MNIST
// format), plain or gzip-compressed: parse_idx() from bytes, read_idx() from
// a path. Only unsigned-byte IDX files with 1 dimension (labels, magic
// 0x00000801) or 3 dimensions (images, magic 0x00000803) are accepted.
//
// The bytes are untrusted. Every size is checked before anything is
// allocated: each dimension is nonzero and <= IdxLimits::max_dim
// (FLEETDL_MAX_DIM), their product is computed with overflow checks and the
// whole file must fit IdxLimits::max_bytes (FLEETDL_MAX_IDX_BYTES). A gzip
// file is inflated in steps: first the header, which is validated, then
// exactly the payload size the header announces, into a buffer of exactly
// that size; the stream must end right there. A small .gz file therefore can
// never make the reader allocate more than its header justifies.
//
// Format: http://yann.lecun.com/exdb/mnist/ ("THE IDX FILE FORMAT"): a
// big-endian magic 0x0000TTNN (TT element type, NN dimension count), NN
// big-endian u32 dimensions, then the elements in row-major order.
//
// gzip support needs zlib (link with -lz). It is detected with
// __has_include(<zlib.h>); set FLEETDL_ZLIB=0 to build without it, in which
// case gzip input is rejected with Errc::unsupported.
#pragma once

#include "fleetdl/core/config.hpp"
#include "fleetdl/core/error.hpp"
#include "fleetdl/core/file.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

// Whether gzip-compressed IDX files can be read (needs zlib, -lz).
#ifndef FLEETDL_ZLIB
#  if defined(__has_include)
#    if __has_include(<zlib.h>)
#      define FLEETDL_ZLIB 1
#    else
#      define FLEETDL_ZLIB 0
#    endif
#  else
#    define FLEETDL_ZLIB 0
#  endif
#endif

#if FLEETDL_ZLIB
#  include <zlib.h>
#endif

namespace fleetdl::data {

/// Size limits applied to an IDX file before any allocation. The defaults
/// come from the FLEETDL_MAX_DIM and FLEETDL_MAX_IDX_BYTES macros; pass
/// tighter ones on small targets.
struct IdxLimits {
  std::uint64_t max_dim = FLEETDL_MAX_DIM;          ///< largest single dimension
  std::uint64_t max_bytes = FLEETDL_MAX_IDX_BYTES;  ///< largest (decompressed) file, header included
};

/// A decoded unsigned-byte IDX file.
struct IdxArray {
  std::vector<std::uint32_t> dims;  ///< 1 (labels) or 3 (count, rows, columns)
  std::vector<std::uint8_t> data;   ///< elements, row-major; size == product of dims

  /// Number of items: the first dimension.
  std::uint64_t count() const { return dims.empty() ? 0 : dims[0]; }
  /// "60000x28x28".
  std::string dims_str() const {
    std::string s;
    for (std::size_t i = 0; i < dims.size(); ++i) {
      if (i) s += 'x';
      s += std::to_string(dims[i]);
    }
    return s;
  }
};

namespace detail {

inline constexpr std::uint32_t idx_labels_magic = 0x00000801;
inline constexpr std::uint32_t idx_images_magic = 0x00000803;
inline constexpr std::size_t idx_max_header = 16;  // 4-byte magic + 3 dimensions

inline std::string hex32(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", static_cast<unsigned>(v));
  return buf;
}

inline std::string hex8(unsigned v) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02x", v & 0xFFU);
  return buf;
}

inline const char* idx_type_name(unsigned t) {
  switch (t) {
    case 0x08: return "unsigned byte";
    case 0x09: return "signed byte";
    case 0x0B: return "int16";
    case 0x0C: return "int32";
    case 0x0D: return "float32";
    case 0x0E: return "float64";
    default: return nullptr;
  }
}

inline Error idx_error(Errc code, std::string_view name, const std::string& what) {
  std::string m(name);
  m += ": ";
  m += what;
  return make_error(code, std::move(m));
}

inline std::uint32_t load_be32(const std::uint8_t* p) {
  return (static_cast<std::uint32_t>(p[0]) << 24) | (static_cast<std::uint32_t>(p[1]) << 16) |
         (static_cast<std::uint32_t>(p[2]) << 8) | static_cast<std::uint32_t>(p[3]);
}

/// A validated header: dimensions, header length and payload length.
struct IdxHeader {
  std::vector<std::uint32_t> dims;
  std::size_t header_bytes = 0;
  std::size_t payload_bytes = 0;

  std::string dims_str() const {
    std::string s;
    for (std::size_t i = 0; i < dims.size(); ++i) {
      if (i) s += 'x';
      s += std::to_string(dims[i]);
    }
    return s;
  }
};

/// Validate an IDX header from the first bytes of a (decompressed) file.
/// `head` may hold fewer bytes than a full header (short file) or more
/// (payload bytes following it); only the header is looked at.
inline Result<IdxHeader> parse_idx_header(std::span<const std::uint8_t> head, std::string_view name,
                                          const IdxLimits& limits) {
  if (head.empty()) return idx_error(Errc::truncated, name, "file is empty, expected an IDX header");
  if (head.size() < 4)
    return idx_error(Errc::truncated, name,
                     "file has " + std::to_string(head.size()) + " bytes, too short for the 4-byte IDX magic");
  const std::uint32_t magic = load_be32(head.data());
  const unsigned type = (magic >> 8) & 0xFFU;
  const unsigned ndims = magic & 0xFFU;
  const std::string not_idx = "magic " + hex32(magic) + " is not an IDX ubyte file (expected " +
                              hex32(idx_labels_magic) + " or " + hex32(idx_images_magic) + ")";
  if ((magic >> 16) != 0) return idx_error(Errc::bad_magic, name, not_idx);
  if (type != 0x08) {
    if (const char* tn = idx_type_name(type))
      return idx_error(Errc::unsupported, name,
                       "magic " + hex32(magic) + ": IDX element type " + hex8(type) + " (" + tn +
                           ") is not supported, only unsigned byte (0x08)");
    return idx_error(Errc::bad_magic, name, not_idx + "; type byte " + hex8(type) + " is not an IDX type");
  }
  if (ndims != 1 && ndims != 3)
    return idx_error(Errc::bad_magic, name,
                     not_idx + "; " + std::to_string(ndims) + " dimensions, only 1 (labels) or 3 (images) are read");

  IdxHeader h;
  h.header_bytes = 4 + 4 * static_cast<std::size_t>(ndims);
  if (head.size() < h.header_bytes)
    return idx_error(Errc::truncated, name,
                     "header with " + std::to_string(ndims) + " dimensions needs " + std::to_string(h.header_bytes) +
                         " bytes, file has " + std::to_string(head.size()));
  h.dims.resize(ndims);
  for (unsigned i = 0; i < ndims; ++i) h.dims[i] = load_be32(head.data() + 4 + 4 * i);

  std::uint64_t product = 1;
  bool overflow = false;
  for (unsigned i = 0; i < ndims; ++i) {
    const std::uint64_t d = h.dims[i];
    if (d == 0)
      return idx_error(Errc::corrupt, name, "dimension " + std::to_string(i) + " is 0 (dims " + h.dims_str() + ")");
    if (d > limits.max_dim)
      return idx_error(Errc::limit_exceeded, name,
                       "dimension " + std::to_string(i) + " is " + std::to_string(d) + ", above the limit " +
                           std::to_string(limits.max_dim) + " (FLEETDL_MAX_DIM)");
    if (!overflow && product > UINT64_MAX / d) overflow = true;
    if (!overflow) product *= d;
  }
  if (overflow)
    return idx_error(Errc::limit_exceeded, name,
                     "dims " + h.dims_str() + " overflow a 64-bit element count");
  // header + payload <= max_bytes, written so that neither side overflows.
  if (product > limits.max_bytes)
    return idx_error(Errc::limit_exceeded, name,
                     "dims " + h.dims_str() + " need " + std::to_string(product) + " payload bytes, above the limit " +
                         std::to_string(limits.max_bytes) + " (FLEETDL_MAX_IDX_BYTES)");
  if (h.header_bytes > limits.max_bytes - product)
    return idx_error(Errc::limit_exceeded, name,
                     "dims " + h.dims_str() + " make a " + std::to_string(product + h.header_bytes) + "-byte file (" +
                         std::to_string(h.header_bytes) + "-byte header), above the limit " +
                         std::to_string(limits.max_bytes) + " (FLEETDL_MAX_IDX_BYTES)");
  if (product > static_cast<std::uint64_t>(PTRDIFF_MAX) || product > static_cast<std::uint64_t>(SIZE_MAX))
    return idx_error(Errc::limit_exceeded, name,
                     "dims " + h.dims_str() + " need " + std::to_string(product) +
                         " bytes, more than this platform can address");
  h.payload_bytes = static_cast<std::size_t>(product);
  return h;
}

inline bool is_gzip(std::span<const std::uint8_t> bytes) {
  return bytes.size() >= 2 && bytes[0] == 0x1F && bytes[1] == 0x8B;
}

#if FLEETDL_ZLIB
/// Pull-style gunzip over an in-memory .gz file. read() produces at most the
/// number of bytes asked for, so the caller bounds every allocation.
/// Concatenated gzip members (RFC 1952 §2.2) are read as one stream.
class GunzipStream {
 public:
  GunzipStream(std::span<const std::uint8_t> in, std::string_view name) : in_(in), name_(name) {}
  GunzipStream(const GunzipStream&) = delete;
  GunzipStream& operator=(const GunzipStream&) = delete;
  ~GunzipStream() {
    if (live_) inflateEnd(&zs_);
  }

  Result<void> open() {
    std::memset(&zs_, 0, sizeof zs_);
    // 16 + MAX_WBITS: expect a gzip wrapper, check its CRC-32 and length.
    const int rc = inflateInit2(&zs_, 16 + MAX_WBITS);
    if (rc != Z_OK) return idx_error(Errc::io_error, name_, std::string("zlib inflateInit2 failed: ") + zmsg(rc));
    live_ = true;
    return success();
  }

  /// Inflate up to n bytes into out. Returns how many were produced: fewer
  /// than n only when the gzip data ends cleanly.
  Result<std::size_t> read(std::uint8_t* out, std::size_t n) {
    std::size_t got = 0;
    while (got < n) {
      if (member_done_) {
        if (pos_ == in_.size()) break;  // clean end of the whole file
        if (!is_gzip(in_.subspan(pos_)))
          return idx_error(Errc::corrupt, name_,
                           std::to_string(in_.size() - pos_) + " bytes of garbage after the end of the gzip stream");
        inflateReset(&zs_);
        member_done_ = false;
      }
      const std::size_t in_chunk = std::min<std::size_t>(in_.size() - pos_, UINT_MAX);
      const std::size_t out_chunk = std::min<std::size_t>(n - got, UINT_MAX);
      // zlib does not write through next_in; the cast only fits its C API.
      zs_.next_in = const_cast<Bytef*>(reinterpret_cast<const Bytef*>(in_.data() + pos_));
      zs_.avail_in = static_cast<uInt>(in_chunk);
      zs_.next_out = reinterpret_cast<Bytef*>(out + got);
      zs_.avail_out = static_cast<uInt>(out_chunk);
      const int rc = inflate(&zs_, Z_NO_FLUSH);
      pos_ += in_chunk - zs_.avail_in;
      got += out_chunk - zs_.avail_out;
      if (rc == Z_STREAM_END) {
        member_done_ = true;
        continue;
      }
      if (rc == Z_OK) continue;
      if (rc == Z_BUF_ERROR) {  // no progress possible: input used up mid-stream
        if (pos_ == in_.size())
          return idx_error(Errc::truncated, name_,
                           "gzip stream is truncated: all " + std::to_string(in_.size()) +
                               " compressed bytes used up after " + std::to_string(total_out() + got) +
                               " decompressed bytes, before the end of the stream");
        return idx_error(Errc::corrupt, name_, "gzip stream is corrupt (inflate made no progress)");
      }
      if (rc == Z_DATA_ERROR || rc == Z_NEED_DICT)
        return idx_error(Errc::corrupt, name_,
                         std::string("gzip stream is corrupt (") + (zs_.msg ? zs_.msg : zmsg(rc)) + ") at compressed byte " +
                             std::to_string(pos_));
      return idx_error(Errc::io_error, name_, std::string("zlib inflate failed: ") + zmsg(rc));
    }
    out_total_ += got;
    return got;
  }

  std::uint64_t total_out() const { return out_total_; }

 private:
  static const char* zmsg(int rc) {
    switch (rc) {
      case Z_MEM_ERROR: return "out of memory";
      case Z_VERSION_ERROR: return "zlib version mismatch";
      case Z_STREAM_ERROR: return "stream error";
      case Z_DATA_ERROR: return "data error";
      case Z_NEED_DICT: return "needs a preset dictionary";
      case Z_BUF_ERROR: return "buffer error";
      default: return "unknown zlib error";
    }
  }

  std::span<const std::uint8_t> in_;
  std::string_view name_;
  z_stream zs_{};
  std::size_t pos_ = 0;
  std::uint64_t out_total_ = 0;
  bool live_ = false;
  bool member_done_ = false;
};
#endif

inline Error payload_truncated(std::string_view name, const IdxHeader& h, std::uint64_t have) {
  return idx_error(Errc::truncated, name,
                   "payload is truncated: dims " + h.dims_str() + " need " + std::to_string(h.payload_bytes) +
                       " bytes after the header, file has " + std::to_string(have));
}

inline Error payload_trailing(std::string_view name, const IdxHeader& h, std::uint64_t extra, bool at_least) {
  return idx_error(Errc::corrupt, name,
                   (at_least ? "at least " : "") + std::to_string(extra) + " trailing bytes after the " +
                       std::to_string(h.payload_bytes) + "-byte payload of dims " + h.dims_str());
}

inline Result<IdxArray> parse_idx_gzip(std::span<const std::uint8_t> bytes, std::string_view name,
                                       const IdxLimits& limits) {
#if FLEETDL_ZLIB
  GunzipStream gz(bytes, name);
  FLEETDL_TRY(gz.open());
  // 1. Header: at most 16 bytes, whatever the stream claims.
  std::uint8_t head[idx_max_header];
  auto got = gz.read(head, sizeof head);
  if (!got) return std::move(got).error();
  auto hdr = parse_idx_header(std::span<const std::uint8_t>(head, *got), name, limits);
  if (!hdr) return std::move(hdr).error();
  const IdxHeader& h = *hdr;
  // Deflate expands at most 1032:1 (a 258-byte match in 2 bits; zlib FAQ),
  // so a header announcing more than the compressed bytes can hold belongs
  // to a truncated file: say so before allocating for it.
  const std::uint64_t can_hold = static_cast<std::uint64_t>(bytes.size()) * 1032 + 4096;
  if (static_cast<std::uint64_t>(h.header_bytes) + h.payload_bytes > can_hold)
    return idx_error(Errc::truncated, name,
                     "payload is truncated: dims " + h.dims_str() + " need " + std::to_string(h.payload_bytes) +
                         " bytes after the header, more than a " + std::to_string(bytes.size()) +
                         "-byte gzip file can hold (deflate expands at most 1032:1)");
  // 2. Payload: exactly what the validated header announces.
  const std::size_t early = *got - h.header_bytes;  // payload bytes already inflated with the header
  if (early > h.payload_bytes) return payload_trailing(name, h, early - h.payload_bytes, false);
  IdxArray out;
  out.dims = h.dims;
  out.data.resize(h.payload_bytes);
  std::memcpy(out.data.data(), head + h.header_bytes, early);
  const bool header_stream_ended = *got < sizeof head;
  std::size_t have = early;
  if (!header_stream_ended && have < h.payload_bytes) {
    auto more = gz.read(out.data.data() + have, h.payload_bytes - have);
    if (!more) return std::move(more).error();
    have += *more;
  }
  if (have < h.payload_bytes) return payload_truncated(name, h, have);
  // 3. The stream must end here. Count (a bounded number of) extra bytes.
  std::uint8_t scratch[4096];
  std::uint64_t extra = 0;
  for (int i = 0; i < 16; ++i) {
    auto r = gz.read(scratch, sizeof scratch);
    if (!r) return std::move(r).error();
    extra += *r;
    if (*r < sizeof scratch) return extra ? Result<IdxArray>(payload_trailing(name, h, extra, false))
                                          : Result<IdxArray>(std::move(out));
  }
  return payload_trailing(name, h, extra, true);
#else
  (void)bytes;
  (void)limits;
  return idx_error(Errc::unsupported, name, "file is gzip-compressed but fleetdl was built without zlib (FLEETDL_ZLIB=0)");
#endif
}

}  // namespace detail

/// Decode an IDX file held in memory. gzip input (magic 1f 8b) is inflated
/// on the fly. `name` (usually the file name) prefixes every error message.
inline Result<IdxArray> parse_idx(std::span<const std::uint8_t> bytes, std::string_view name,
                                  const IdxLimits& limits = {}) {
  if (detail::is_gzip(bytes)) return detail::parse_idx_gzip(bytes, name, limits);
  auto hdr = detail::parse_idx_header(bytes, name, limits);
  if (!hdr) return std::move(hdr).error();
  const detail::IdxHeader& h = *hdr;
  const std::size_t have = bytes.size() - h.header_bytes;
  if (have < h.payload_bytes) return detail::payload_truncated(name, h, have);
  if (have > h.payload_bytes) return detail::payload_trailing(name, h, have - h.payload_bytes, false);
  IdxArray out;
  out.dims = h.dims;
  out.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(h.header_bytes), bytes.end());
  return out;
}

/// Read and decode an IDX file (plain or .gz) from `path`. Error messages
/// start with the path.
inline Result<IdxArray> read_idx(const std::string& path, const IdxLimits& limits = {}) {
  // A compressed file is (barely) larger than its content only for
  // incompressible data: stored deflate blocks add 5 bytes per 64 KiB.
  const std::uint64_t slack = limits.max_bytes / 1024 + 4096;
  const std::uint64_t cap = limits.max_bytes > UINT64_MAX - slack ? UINT64_MAX : limits.max_bytes + slack;
  auto bytes = read_file(path, cap);  // not_found for a missing file
  if (!bytes) return std::move(bytes).error();
  return parse_idx(*bytes, path, limits);
}

}  // namespace fleetdl::data
