// fleetdl/compress/store.hpp — the stored compressed-model format (.fdlz): the
// weights of an nn::Model<float> with each tensor in the smallest of four
// encodings, exact byte accounting, and a decoder for untrusted bytes.
//
// Encodings (chosen per tensor, smallest payload wins; ties go to the lower id):
//   0 dense      n x f32
//   1 sparse     Deep Compression's relative indices (Han et al. 2016, §2):
//                each non-zero is stored as the gap (zeros skipped since the
//                previous entry) and its f32 value. A gap is at most max_gap
//                (chosen per tensor from StoreOptions::max_gaps, at most
//                FLEETDL_COMPRESS_MAX_GAP); a longer run of zeros is bridged by
//                filler entries of gap max_gap and value 0. Gaps are Huffman-coded.
//   2 clustered  codebook of k <= FLEETDL_COMPRESS_MAX_CODEBOOK distinct values
//                (f32) and a Huffman-coded codebook index per element.
//   3 clustered_sparse  gaps as in 1, then the codebook of the non-zero values
//                and one Huffman-coded index per entry; index k (one past the
//                codebook) marks a filler (+0.0).
// "Zero" means the bit pattern of +0.0f: -0.0f is stored as a value, so the
// round trip is bit-exact for every float, NaN payloads included.
// Clustering is detected from the values themselves (few distinct bit
// patterns), so a model clustered by compress/cluster.hpp is stored as such.
//
// Byte layout (version 1, integers little-endian):
//   magic     8 bytes  "FDLPACK" 0x1A
//   version   u32      1
//   flags     u32      0 (reserved)
//   length    u64      total length in bytes, CRC included
//   count     u32      number of tensors (must equal the model's)
//   count records, each:
//     name     u16 length + bytes (must equal the model's tensor name)
//     ndim u8, dims u32 x ndim (must equal the model's dims)
//     encoding u8 (0..3), payload u32 byte count, payload:
//       dense:            n x f32
//       sparse:           max_gap u16, entries u32, gap block, entries x f32
//       clustered:        k u16, k x f32, index block (n symbols)
//       clustered_sparse: max_gap u16, entries u32, gap block, k u16, k x f32,
//                         index block (entries symbols, alphabet <= k + 1)
//     (gap and index blocks are Huffman blocks, compress/huffman.hpp)
//   crc32     u32      CRC-32 of every byte before it
//
// Every byte is counted: StoreReport::total_bytes == bytes written, and the
// ratio is raw float32 parameter bytes (params x 4) over that total (BatchNorm
// running statistics are stored too and count against the ratio).
//
// Decoding treats the bytes as untrusted: length and CRC first, then every
// count is checked against limits and the bytes left before allocating, every
// tensor against the model, and the model is written only after all tensors
// decoded — an error leaves it untouched. Errors name the tensor.
#pragma once

#include "fleetdl/compress/huffman.hpp"
#include "fleetdl/core/bytes.hpp"
#include "fleetdl/core/crc32.hpp"
#include "fleetdl/core/error.hpp"
#include "fleetdl/nn/model.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

// Largest gap between stored non-zeros in a sparse tensor (the gap alphabet
// is max_gap + 1 symbols).
#ifndef FLEETDL_COMPRESS_MAX_GAP
#  define FLEETDL_COMPRESS_MAX_GAP 4095
#endif
// Largest codebook of a clustered tensor (distinct values).
#ifndef FLEETDL_COMPRESS_MAX_CODEBOOK
#  define FLEETDL_COMPRESS_MAX_CODEBOOK 256
#endif

namespace fleetdl::compress {

inline constexpr std::uint8_t fdlz_magic[8] = {'F', 'D', 'L', 'P', 'A', 'C', 'K', 0x1A};
inline constexpr std::uint32_t fdlz_version = 1;
/// Header (magic, version, flags, length, count) plus the trailing CRC.
inline constexpr std::size_t fdlz_fixed_bytes = 8 + 4 + 4 + 8 + 4 + 4;

enum class TensorEncoding : std::uint8_t { dense = 0, sparse = 1, clustered = 2, clustered_sparse = 3 };

inline const char* encoding_name(TensorEncoding e) {
  switch (e) {
    case TensorEncoding::dense: return "dense";
    case TensorEncoding::sparse: return "sparse";
    case TensorEncoding::clustered: return "clustered";
    case TensorEncoding::clustered_sparse: return "clustered_sparse";
  }
  return "unknown";
}

struct StoreOptions {
  /// Gap limits tried for the sparse encodings (each 1..FLEETDL_COMPRESS_MAX_GAP).
  std::vector<int> max_gaps{3, 7, 15, 31, 63, 127, 255};
  bool allow_sparse = true;
  bool allow_clustered = true;
};

/// How one tensor was stored.
struct StoredTensor {
  std::string name;
  TensorEncoding encoding = TensorEncoding::dense;
  Index elements = 0;
  Index nonzeros = 0;      ///< values whose bits are not +0.0f
  Index entries = 0;       ///< sparse: stored entries, fillers included
  Index fillers = 0;       ///< sparse: filler entries
  int max_gap = 0;         ///< sparse: gap limit used
  Index codebook = 0;      ///< clustered: codebook size
  std::size_t bytes = 0;   ///< record bytes: name, dims, encoding, length, payload
  std::size_t raw_bytes = 0;  ///< elements x 4
};

struct StoreReport {
  std::vector<StoredTensor> tensors;
  std::size_t fixed_bytes = fdlz_fixed_bytes;  ///< header + CRC
  std::size_t total_bytes = 0;                 ///< == bytes written
  std::size_t raw_param_bytes = 0;             ///< trainable params x 4
  double ratio = 0;                            ///< raw_param_bytes / total_bytes
};

struct CompressedModel {
  std::vector<std::uint8_t> bytes;
  StoreReport report;
};

namespace detail {

inline std::uint32_t f32_bits(float v) {
  std::uint32_t u = 0;
  std::memcpy(&u, &v, 4);
  return u;
}
inline float bits_f32(std::uint32_t u) {
  float v = 0;
  std::memcpy(&v, &u, 4);
  return v;
}

struct SparseEntries {
  std::vector<std::uint32_t> gaps;
  std::vector<Index> pos;  ///< position of each entry; -1 for a filler
};

inline SparseEntries sparse_entries(const std::vector<std::uint32_t>& bits, int max_gap) {
  SparseEntries e;
  Index prev = -1;
  const Index g = max_gap;
  for (Index i = 0; i < static_cast<Index>(bits.size()); ++i) {
    if (bits[static_cast<std::size_t>(i)] == 0) continue;
    Index gap = i - prev - 1;
    while (gap > g) {  // filler: a zero entry max_gap past the previous one
      e.gaps.push_back(static_cast<std::uint32_t>(g));
      e.pos.push_back(-1);
      prev += g + 1;
      gap -= g + 1;
    }
    e.gaps.push_back(static_cast<std::uint32_t>(gap));
    e.pos.push_back(i);
    prev = i;
  }
  return e;
}

/// Distinct bit patterns (sorted), or empty if more than the codebook limit.
inline std::vector<std::uint32_t> distinct_values(const std::vector<std::uint32_t>& bits, bool skip_zero) {
  std::vector<std::uint32_t> d;
  std::unordered_map<std::uint32_t, char> seen;
  for (auto b : bits) {
    if (skip_zero && b == 0) continue;
    if (seen.emplace(b, 0).second) {
      d.push_back(b);
      if (d.size() > FLEETDL_COMPRESS_MAX_CODEBOOK) return {};
    }
  }
  std::sort(d.begin(), d.end());
  return d;
}

inline std::vector<std::uint8_t> payload_dense(const std::vector<std::uint32_t>& bits) {
  ByteWriter w;
  for (auto b : bits) w.u32(b);
  return std::move(w).bytes();
}

inline std::vector<std::uint8_t> payload_sparse(const std::vector<std::uint32_t>& bits, int max_gap,
                                                const std::vector<std::uint32_t>* codebook, StoredTensor& st) {
  const auto e = sparse_entries(bits, max_gap);
  ByteWriter w;
  w.u16(static_cast<std::uint16_t>(max_gap));
  w.u32(static_cast<std::uint32_t>(e.gaps.size()));
  huffman_write_block(w, e.gaps, static_cast<std::size_t>(max_gap) + 1);
  st.entries = static_cast<Index>(e.gaps.size());
  st.fillers = static_cast<Index>(std::count(e.pos.begin(), e.pos.end(), Index{-1}));
  st.max_gap = max_gap;
  if (!codebook) {
    for (Index p : e.pos) w.u32(p < 0 ? 0U : bits[static_cast<std::size_t>(p)]);
    return std::move(w).bytes();
  }
  const auto& cb = *codebook;
  w.u16(static_cast<std::uint16_t>(cb.size()));
  for (auto b : cb) w.u32(b);
  std::vector<std::uint32_t> idx;
  idx.reserve(e.pos.size());
  for (Index p : e.pos)
    idx.push_back(p < 0 ? static_cast<std::uint32_t>(cb.size())
                        : static_cast<std::uint32_t>(std::lower_bound(cb.begin(), cb.end(), bits[static_cast<std::size_t>(p)]) -
                                                     cb.begin()));
  huffman_write_block(w, idx, cb.size() + 1);
  st.codebook = static_cast<Index>(cb.size());
  return std::move(w).bytes();
}

inline std::vector<std::uint8_t> payload_clustered(const std::vector<std::uint32_t>& bits,
                                                   const std::vector<std::uint32_t>& cb, StoredTensor& st) {
  ByteWriter w;
  w.u16(static_cast<std::uint16_t>(cb.size()));
  for (auto b : cb) w.u32(b);
  std::vector<std::uint32_t> idx;
  idx.reserve(bits.size());
  for (auto b : bits) idx.push_back(static_cast<std::uint32_t>(std::lower_bound(cb.begin(), cb.end(), b) - cb.begin()));
  huffman_write_block(w, idx, cb.size());
  st.codebook = static_cast<Index>(cb.size());
  return std::move(w).bytes();
}

inline Error tensor_error(Errc c, const std::string& src, std::size_t i, const std::string& name, const std::string& what) {
  return make_error(c, src + ": tensor " + std::to_string(i) + " '" + name + "': " + what);
}

/// Decode a record payload into out (n values as bits). `r` spans the payload.
inline Result<void> decode_payload(ByteReader& r, TensorEncoding enc, std::vector<std::uint32_t>& out,
                                   const std::string& src, std::size_t ti, const std::string& name) {
  const auto bad = [&](Errc c, const std::string& what) { return tensor_error(c, src, ti, name, what); };
  const std::size_t n = out.size();
  const auto read_codebook = [&](std::vector<std::uint32_t>& cb) -> Result<void> {
    std::uint16_t k = 0;
    if (!r.u16(k)) return bad(Errc::truncated, "codebook size truncated");
    if (k == 0 || k > FLEETDL_COMPRESS_MAX_CODEBOOK)
      return bad(Errc::limit_exceeded, "codebook size " + std::to_string(k) + " out of range 1.." +
                                           std::to_string(FLEETDL_COMPRESS_MAX_CODEBOOK));
    if (r.remaining() < std::size_t{k} * 4)
      return bad(Errc::truncated, "codebook needs " + std::to_string(std::size_t{k} * 4) + " bytes, " +
                                      std::to_string(r.remaining()) + " left");
    cb.resize(k);
    for (auto& b : cb) (void)r.u32(b);
    return success();
  };
  const auto huff_error = [&](Error e) { return bad(e.code, e.message); };
  switch (enc) {
    case TensorEncoding::dense: {
      if (r.remaining() < n * 4)
        return bad(Errc::truncated, "needs " + std::to_string(n * 4) + " bytes, payload has " + std::to_string(r.remaining()));
      for (auto& b : out) (void)r.u32(b);
      return success();
    }
    case TensorEncoding::clustered: {
      std::vector<std::uint32_t> cb;
      FLEETDL_TRY(read_codebook(cb));
      auto idx = huffman_read_block(r, n, huffman_max_alphabet, "codebook indices");
      if (!idx) return huff_error(std::move(idx).error());
      for (std::size_t i = 0; i < n; ++i) {
        const auto s = (*idx)[i];
        if (s >= cb.size())
          return bad(Errc::corrupt, "codebook index " + std::to_string(s) + " at element " + std::to_string(i) +
                                        " out of range (codebook has " + std::to_string(cb.size()) + " entries)");
        out[i] = cb[s];
      }
      return success();
    }
    case TensorEncoding::sparse:
    case TensorEncoding::clustered_sparse: {
      std::uint16_t max_gap = 0;
      std::uint32_t m = 0;
      if (!r.u16(max_gap) || !r.u32(m)) return bad(Errc::truncated, "sparse header truncated");
      if (max_gap == 0 || max_gap > FLEETDL_COMPRESS_MAX_GAP)
        return bad(Errc::limit_exceeded, "max gap " + std::to_string(max_gap) + " out of range 1.." +
                                             std::to_string(FLEETDL_COMPRESS_MAX_GAP));
      // Every entry advances at least one position.
      if (m > n)
        return bad(Errc::limit_exceeded, std::to_string(m) + " sparse entries for " + std::to_string(n) + " elements");
      auto gaps = huffman_read_block(r, m, std::size_t{max_gap} + 1, "gaps");
      if (!gaps) return huff_error(std::move(gaps).error());
      std::vector<std::size_t> pos(m);
      std::size_t next = 0;  // position after the previous entry
      for (std::size_t j = 0; j < m; ++j) {
        const std::size_t p = next + (*gaps)[j];
        if (p >= n)
          return bad(Errc::corrupt, "gap overflow: entry " + std::to_string(j) + " lands at position " +
                                        std::to_string(p) + " of " + std::to_string(n));
        pos[j] = p;
        next = p + 1;
      }
      std::fill(out.begin(), out.end(), 0U);
      if (enc == TensorEncoding::sparse) {
        if (r.remaining() < std::size_t{m} * 4)
          return bad(Errc::truncated, "sparse values need " + std::to_string(std::size_t{m} * 4) + " bytes, " +
                                          std::to_string(r.remaining()) + " left");
        for (std::size_t j = 0; j < m; ++j) (void)r.u32(out[pos[j]]);
        return success();
      }
      std::vector<std::uint32_t> cb;
      FLEETDL_TRY(read_codebook(cb));
      auto idx = huffman_read_block(r, m, huffman_max_alphabet, "codebook indices");
      if (!idx) return huff_error(std::move(idx).error());
      for (std::size_t j = 0; j < m; ++j) {
        const auto s = (*idx)[j];
        if (s > cb.size())
          return bad(Errc::corrupt, "codebook index " + std::to_string(s) + " at entry " + std::to_string(j) +
                                        " out of range (codebook has " + std::to_string(cb.size()) +
                                        " entries + filler)");
        out[pos[j]] = s == cb.size() ? 0U : cb[s];
      }
      return success();
    }
  }
  return bad(Errc::corrupt, "unknown encoding");
}

}  // namespace detail

/// Store every tensor of `model` in its smallest encoding. Fails only for a
/// tensor name over 65535 bytes or a tensor too large for a u32 payload.
inline Result<CompressedModel> encode_compressed(const nn::Model<float>& model, const StoreOptions& opt = {}) {
  for (int g : opt.max_gaps)
    if (g < 1 || g > FLEETDL_COMPRESS_MAX_GAP)
      return make_error(Errc::invalid_argument, "store: max gap " + std::to_string(g) + " out of range 1.." +
                                                    std::to_string(FLEETDL_COMPRESS_MAX_GAP));
  CompressedModel cm;
  auto& rep = cm.report;
  auto tensors = const_cast<nn::Model<float>&>(model).tensors();
  ByteWriter w;
  w.raw(fdlz_magic, 8);
  w.u32(fdlz_version);
  w.u32(0);
  const std::size_t len_at = w.size();
  w.u64(0);
  w.u32(static_cast<std::uint32_t>(tensors.size()));
  for (const auto& t : tensors) {
    if (t.name.size() > 0xFFFF) return make_error(Errc::invalid_argument, "store: tensor name longer than 65535 bytes");
    const std::size_t n = static_cast<std::size_t>(t.size());
    if (n * 4 > 0xFFFFFFF0U) return make_error(Errc::limit_exceeded, "store: tensor '" + t.name + "' too large");
    std::vector<std::uint32_t> bits(n);
    for (std::size_t i = 0; i < n; ++i) bits[i] = detail::f32_bits(t.data[i]);
    StoredTensor best;
    best.name = t.name;
    best.elements = t.size();
    best.nonzeros = static_cast<Index>(n - static_cast<std::size_t>(std::count(bits.begin(), bits.end(), 0U)));
    best.raw_bytes = n * 4;
    std::vector<std::uint8_t> payload = detail::payload_dense(bits);
    const auto consider = [&](std::vector<std::uint8_t>&& p, const StoredTensor& st) {
      if (p.size() < payload.size()) {
        payload = std::move(p);
        best = st;
      }
    };
    const StoredTensor base = best;
    if (opt.allow_sparse) {
      for (int g : opt.max_gaps) {
        StoredTensor st = base;
        st.encoding = TensorEncoding::sparse;
        auto p = detail::payload_sparse(bits, g, nullptr, st);
        consider(std::move(p), st);
      }
    }
    if (opt.allow_clustered) {
      const auto cb_all = detail::distinct_values(bits, false);
      if (!cb_all.empty()) {
        StoredTensor st = base;
        st.encoding = TensorEncoding::clustered;
        auto p = detail::payload_clustered(bits, cb_all, st);
        consider(std::move(p), st);
      }
      const auto cb_nz = detail::distinct_values(bits, true);
      if (opt.allow_sparse && !cb_nz.empty()) {
        for (int g : opt.max_gaps) {
          StoredTensor st = base;
          st.encoding = TensorEncoding::clustered_sparse;
          auto p = detail::payload_sparse(bits, g, &cb_nz, st);
          consider(std::move(p), st);
        }
      }
    }
    const std::size_t start = w.size();
    w.str(t.name);
    w.u8(static_cast<std::uint8_t>(t.dims.size()));
    for (Index d : t.dims) w.u32(static_cast<std::uint32_t>(d));
    w.u8(static_cast<std::uint8_t>(best.encoding));
    w.u32(static_cast<std::uint32_t>(payload.size()));
    w.raw(payload.data(), payload.size());
    best.bytes = w.size() - start;
    rep.tensors.push_back(std::move(best));
  }
  w.patch_u64(len_at, static_cast<std::uint64_t>(w.size() + 4));
  w.u32(crc32(w.bytes().data(), w.size()));
  cm.bytes = std::move(w).bytes();
  rep.total_bytes = cm.bytes.size();
  rep.raw_param_bytes = static_cast<std::size_t>(model.param_count()) * 4;
  rep.ratio = rep.total_bytes ? static_cast<double>(rep.raw_param_bytes) / static_cast<double>(rep.total_bytes) : 0.0;
  return cm;
}

/// Decode `bytes` into `model`, whose architecture must match the stored
/// tensors (names, order, dims). `source` names the input in errors. On
/// error the model is unchanged.
inline Result<void> decode_compressed(nn::Model<float>& model, const std::uint8_t* data, std::size_t size,
                                      const std::string& source = "compressed model") {
  const auto err = [&](Errc c, const std::string& what) { return make_error(c, source + ": " + what); };
  if (size < fdlz_fixed_bytes)
    return err(Errc::truncated, std::to_string(size) + " bytes, shorter than the " + std::to_string(fdlz_fixed_bytes) +
                                    "-byte header and checksum");
  if (std::memcmp(data, fdlz_magic, 8) != 0) return err(Errc::bad_magic, "not a compressed fleetdl model (bad magic)");
  ByteReader r(data, size);
  (void)r.take(8);
  std::uint32_t version = 0, flags = 0, count = 0;
  std::uint64_t length = 0;
  (void)r.u32(version);
  (void)r.u32(flags);
  (void)r.u64(length);
  if (version != fdlz_version) return err(Errc::bad_version, "version " + std::to_string(version) + " (supported: 1)");
  if (length != size)
    return err(length > size ? Errc::truncated : Errc::corrupt,
               "header says " + std::to_string(length) + " bytes, got " + std::to_string(size));
  if (length > FLEETDL_MAX_MODEL_BYTES) return err(Errc::limit_exceeded, "larger than FLEETDL_MAX_MODEL_BYTES");
  std::uint32_t stored_crc = 0;
  {
    ByteReader cr(data + size - 4, 4);
    (void)cr.u32(stored_crc);
  }
  if (crc32(data, size - 4) != stored_crc) return err(Errc::checksum_mismatch, "CRC-32 mismatch");
  if (flags != 0) return err(Errc::unsupported, "unknown flags " + std::to_string(flags));
  (void)r.u32(count);
  auto tensors = model.tensors();
  if (count != tensors.size())
    return err(Errc::shape_mismatch, std::to_string(count) + " tensors stored, the model has " +
                                         std::to_string(tensors.size()));
  ByteReader body(data + r.position(), size - 4 - r.position());
  std::vector<std::vector<std::uint32_t>> decoded(tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    std::string name;
    if (!body.str(name)) return err(Errc::truncated, "tensor " + std::to_string(i) + ": name truncated");
    if (name != t.name)
      return err(Errc::shape_mismatch, "tensor " + std::to_string(i) + " is '" + name.substr(0, 64) +
                                           "', the model expects '" + t.name + "'");
    const auto bad = [&](Errc c, const std::string& what) { return detail::tensor_error(c, source, i, t.name, what); };
    std::uint8_t ndim = 0;
    if (!body.u8(ndim)) return bad(Errc::truncated, "dims truncated");
    if (ndim != t.dims.size())
      return bad(Errc::shape_mismatch, std::to_string(ndim) + " dims stored, the model has " + std::to_string(t.dims.size()));
    std::string dims_s;
    bool dims_ok = true;
    for (std::size_t d = 0; d < ndim; ++d) {
      std::uint32_t v = 0;
      if (!body.u32(v)) return bad(Errc::truncated, "dims truncated");
      dims_s += (d ? "x" : "") + std::to_string(v);
      dims_ok = dims_ok && static_cast<Index>(v) == t.dims[d];
    }
    if (!dims_ok) return bad(Errc::shape_mismatch, "stored dims " + dims_s + " do not match the model");
    std::uint8_t enc = 0;
    std::uint32_t plen = 0;
    if (!body.u8(enc) || !body.u32(plen)) return bad(Errc::truncated, "record header truncated");
    if (enc > 3) return bad(Errc::corrupt, "unknown encoding " + std::to_string(enc));
    const std::uint8_t* pp = body.take(plen);
    if (!pp)
      return bad(Errc::truncated, "payload needs " + std::to_string(plen) + " bytes, " + std::to_string(body.remaining()) +
                                      " left");
    ByteReader pr(pp, plen);
    // n is bounded by the model (already allocated), not by the file.
    decoded[i].assign(static_cast<std::size_t>(t.size()), 0U);
    FLEETDL_TRY(detail::decode_payload(pr, static_cast<TensorEncoding>(enc), decoded[i], source, i, t.name));
    if (!pr.at_end())
      return bad(Errc::corrupt, std::to_string(pr.remaining()) + " unused bytes at the end of the payload");
  }
  if (!body.at_end()) return err(Errc::corrupt, std::to_string(body.remaining()) + " bytes after the last tensor");
  for (std::size_t i = 0; i < tensors.size(); ++i)
    for (std::size_t j = 0; j < decoded[i].size(); ++j) tensors[i].data[j] = detail::bits_f32(decoded[i][j]);
  return success();
}

inline Result<void> decode_compressed(nn::Model<float>& model, const std::vector<std::uint8_t>& bytes,
                                      const std::string& source = "compressed model") {
  return decode_compressed(model, bytes.data(), bytes.size(), source);
}

}  // namespace fleetdl::compress
