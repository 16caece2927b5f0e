// fleetdl/compress/huffman.hpp — length-limited canonical Huffman coding: code
// lengths from symbol frequencies, canonical codes, an MSB-first bit writer and
// a bounds-checked bit reader, and a self-describing "Huffman block" (table +
// bit stream) used by compress/store.hpp for cluster indices and sparse gaps.
//
// Code lengths come from the classic Huffman merge (Huffman 1952) with a fixed
// tie-break (lower weight first, then lower node id; leaves have ids 0..n-1 in
// symbol order, merged nodes n, n+1, ... in creation order), so the same
// frequencies always give the same lengths. Lengths are limited to
// FLEETDL_HUFFMAN_MAX_BITS (default 24) the way bzip2 does it: when the tree is
// too deep every non-zero frequency f becomes 1 + f/2 and the tree is rebuilt;
// this flattens the distribution until it fits (it always does once all
// frequencies are equal, because the alphabet is at most 2^16 symbols).
//
// Codes are canonical (as in DEFLATE, RFC 1951 §3.2.2): shorter codes first,
// equal lengths in symbol order, so the table stores only the lengths.
// A lone used symbol gets the 1-bit code "0". The decoder accepts only complete
// codes (Kraft sum exactly 1), or that lone-symbol case, and rejects everything
// else, so every bit pattern either decodes to a symbol of the table or fails.
//
// Block layout (all integers little-endian):
//   alphabet   u16   number of symbols (1..65535)
//   lengths    ceil(5 * alphabet / 8) bytes: each symbol's code length (0 =
//              unused, 1..FLEETDL_HUFFMAN_MAX_BITS) in 5 bits, MSB-first
//   stream     u32 byte count, then the codes of the symbols, MSB-first,
//              the last byte padded with zero bits
// The number of symbols is not stored: the caller knows it from its context.
#pragma once

#include "fleetdl/core/bytes.hpp"
#include "fleetdl/core/config.hpp"
#include "fleetdl/core/error.hpp"

#include <algorithm>
#include <cstdint>
#include <queue>
#include <string>
#include <utility>
#include <vector>

// Longest Huffman code in bits (1..31; lengths are stored in 5 bits).
#ifndef FLEETDL_HUFFMAN_MAX_BITS
#  define FLEETDL_HUFFMAN_MAX_BITS 24
#endif
static_assert(FLEETDL_HUFFMAN_MAX_BITS >= 1 && FLEETDL_HUFFMAN_MAX_BITS <= 31,
              "FLEETDL_HUFFMAN_MAX_BITS must be in 1..31 (lengths are stored in 5 bits)");

namespace fleetdl::compress {

inline constexpr int huffman_max_bits = FLEETDL_HUFFMAN_MAX_BITS;
/// Largest alphabet a Huffman block may declare.
inline constexpr std::size_t huffman_max_alphabet = 0xFFFF;

/// MSB-first bit writer.
class BitWriter {
 public:
  /// Append the low `len` bits of `code`, most significant first.
  void put(std::uint32_t code, int len) {
    for (int i = len - 1; i >= 0; --i) {
      cur_ = static_cast<std::uint8_t>((cur_ << 1) | ((code >> i) & 1U));
      if (++fill_ == 8) {
        buf_.push_back(cur_);
        cur_ = 0;
        fill_ = 0;
      }
    }
    bits_ += static_cast<std::uint64_t>(len);
  }
  /// Pad the last byte with zero bits and return the bytes.
  std::vector<std::uint8_t> finish() {
    if (fill_ > 0) buf_.push_back(static_cast<std::uint8_t>(cur_ << (8 - fill_)));
    cur_ = 0;
    fill_ = 0;
    return std::move(buf_);
  }
  std::uint64_t bits() const { return bits_; }

 private:
  std::vector<std::uint8_t> buf_;
  std::uint8_t cur_ = 0;
  int fill_ = 0;
  std::uint64_t bits_ = 0;
};

/// MSB-first bit reader over a byte span; never reads past it.
class BitReader {
 public:
  BitReader(const std::uint8_t* p, std::size_t n) : p_(p), n_(n) {}
  /// Next bit, or -1 past the end.
  int bit() {
    if (pos_ >= n_ * 8) return -1;
    const int b = (p_[pos_ >> 3] >> (7 - (pos_ & 7))) & 1;
    ++pos_;
    return b;
  }
  std::size_t bit_position() const { return pos_; }
  std::size_t bit_size() const { return n_ * 8; }
  /// True if every bit after the current position is zero (clean padding).
  bool rest_is_zero_padding() const {
    const std::size_t used_bytes = (pos_ + 7) / 8;
    if (used_bytes != n_) return false;
    if (pos_ % 8 == 0) return true;
    const std::uint8_t mask = static_cast<std::uint8_t>(0xFFU >> (pos_ % 8));
    return (p_[n_ - 1] & mask) == 0;
  }

 private:
  const std::uint8_t* p_;
  std::size_t n_;
  std::size_t pos_ = 0;
};

namespace detail {
/// Unlimited Huffman code lengths (0 for zero-frequency symbols).
inline std::vector<std::uint8_t> huffman_tree_lengths(const std::vector<std::uint64_t>& f, int& depth) {
  const std::size_t n = f.size();
  std::vector<std::uint8_t> len(n, 0);
  depth = 0;
  std::vector<std::size_t> used;
  for (std::size_t i = 0; i < n; ++i)
    if (f[i] > 0) used.push_back(i);
  if (used.empty()) return len;
  if (used.size() == 1) {
    len[used[0]] = 1;
    depth = 1;
    return len;
  }
  // Node ids: leaves 0..n-1, internal n.. ; parent links give the depths.
  std::vector<std::size_t> parent(n + used.size(), 0);
  using Item = std::pair<std::uint64_t, std::size_t>;  // (weight, id)
  std::priority_queue<Item, std::vector<Item>, std::greater<Item>> q;
  for (std::size_t i : used) q.push({f[i], i});
  std::size_t next = n;
  while (q.size() > 1) {
    const Item a = q.top();
    q.pop();
    const Item b = q.top();
    q.pop();
    parent[a.second] = next;
    parent[b.second] = next;
    // Weights cannot overflow: each is at most the sum of all frequencies,
    // which callers bound by the symbol count (< 2^40).
    q.push({a.first + b.first, next});
    ++next;
  }
  const std::size_t root = next - 1;
  // Internal nodes are created in increasing id order with parents after
  // children, so depths resolve from the root downwards by descending id.
  std::vector<int> d(next, 0);
  for (std::size_t id = root; id-- > n;) d[id] = d[parent[id]] + 1;
  for (std::size_t i : used) {
    const int di = d[parent[i]] + 1;
    len[i] = static_cast<std::uint8_t>(std::min(di, 255));
    depth = std::max(depth, di);
  }
  return len;
}
}  // namespace detail

/// Code lengths for the given frequencies, each at most `max_bits`
/// (precondition: 1 <= max_bits <= 31 and f.size() <= 2^max_bits).
inline std::vector<std::uint8_t> huffman_code_lengths(std::vector<std::uint64_t> f, int max_bits = huffman_max_bits) {
  FLEETDL_ASSERT(max_bits >= 1 && max_bits <= 31, "huffman_code_lengths: max_bits must be in 1..31");
  FLEETDL_ASSERT(f.size() <= (std::size_t{1} << max_bits), "huffman_code_lengths: alphabet larger than 2^max_bits");
  for (;;) {
    int depth = 0;
    auto len = detail::huffman_tree_lengths(f, depth);
    if (depth <= max_bits) return len;
    for (auto& x : f)
      if (x > 0) x = 1 + x / 2;
  }
}

/// Canonical codes for code lengths (RFC 1951 §3.2.2); 0-length symbols get 0.
inline std::vector<std::uint32_t> canonical_codes(const std::vector<std::uint8_t>& len) {
  int maxl = 0;
  for (auto l : len) maxl = std::max<int>(maxl, l);
  std::vector<std::uint32_t> count(static_cast<std::size_t>(maxl) + 1, 0), next(static_cast<std::size_t>(maxl) + 2, 0);
  for (auto l : len)
    if (l) ++count[l];
  std::uint32_t code = 0;
  for (int b = 1; b <= maxl; ++b) {
    code = (code + count[static_cast<std::size_t>(b - 1)]) << 1;
    next[static_cast<std::size_t>(b)] = code;
  }
  std::vector<std::uint32_t> codes(len.size(), 0);
  for (std::size_t s = 0; s < len.size(); ++s)
    if (len[s]) codes[s] = next[len[s]]++;
  return codes;
}

/// Canonical decoder built from validated code lengths.
class HuffmanDecoder {
 public:
  /// Check lengths (each <= FLEETDL_HUFFMAN_MAX_BITS, Kraft sum exactly 1 or a
  /// lone 1-bit code, at least one symbol) and build the decoding tables.
  static Result<HuffmanDecoder> create(const std::vector<std::uint8_t>& len) {
    HuffmanDecoder d;
    d.count_.assign(huffman_max_bits + 1, 0);
    std::size_t used = 0;
    for (auto l : len) {
      if (l > huffman_max_bits)
        return make_error(Errc::corrupt, "Huffman code length " + std::to_string(l) + " exceeds " +
                                             std::to_string(huffman_max_bits) + " bits");
      if (l) {
        ++d.count_[l];
        ++used;
      }
    }
    if (used == 0) return make_error(Errc::corrupt, "Huffman table has no symbols");
    std::int64_t left = 1;
    for (int b = 1; b <= huffman_max_bits; ++b) {
      left = (left << 1) - static_cast<std::int64_t>(d.count_[static_cast<std::size_t>(b)]);
      if (left < 0) return make_error(Errc::corrupt, "Huffman code lengths are over-subscribed");
    }
    const bool lone = used == 1 && d.count_[1] == 1;
    if (left != 0 && !lone) return make_error(Errc::corrupt, "Huffman code lengths are incomplete");
    // Symbols sorted by (length, symbol): the canonical order.
    std::vector<std::uint32_t> offs(huffman_max_bits + 2, 0);
    for (int b = 1; b <= huffman_max_bits; ++b)
      offs[static_cast<std::size_t>(b + 1)] = offs[static_cast<std::size_t>(b)] + d.count_[static_cast<std::size_t>(b)];
    d.sorted_.assign(used, 0);
    for (std::size_t s = 0; s < len.size(); ++s)
      if (len[s]) d.sorted_[offs[len[s]]++] = static_cast<std::uint32_t>(s);
    return d;
  }

  /// Next symbol, or an error on an invalid code / end of stream.
  Result<std::uint32_t> decode(BitReader& r) const {
    std::int64_t code = 0, first = 0, index = 0;
    for (int b = 1; b <= huffman_max_bits; ++b) {
      const int bit = r.bit();
      if (bit < 0) return make_error(Errc::truncated, "Huffman stream ends inside a code");
      code |= bit;
      const std::int64_t cnt = count_[static_cast<std::size_t>(b)];
      if (code - first < cnt) return sorted_[static_cast<std::size_t>(index + code - first)];
      index += cnt;
      first = (first + cnt) << 1;
      code <<= 1;
    }
    return make_error(Errc::corrupt, "invalid Huffman code in stream");
  }

 private:
  std::vector<std::uint32_t> count_;
  std::vector<std::uint32_t> sorted_;
};

/// Bytes of a Huffman block for `symbols` over `alphabet` (without writing).
inline std::size_t huffman_block_bytes(const std::vector<std::uint8_t>& len, const std::vector<std::uint64_t>& freq) {
  std::uint64_t bits = 0;
  for (std::size_t s = 0; s < len.size(); ++s) bits += static_cast<std::uint64_t>(len[s]) * freq[s];
  return 2 + (5 * len.size() + 7) / 8 + 4 + static_cast<std::size_t>((bits + 7) / 8);
}

/// Write a Huffman block of `symbols` (each < alphabet, 1 <= alphabet <= 65535).
inline void huffman_write_block(ByteWriter& w, const std::vector<std::uint32_t>& symbols, std::size_t alphabet,
                                int max_bits = huffman_max_bits) {
  FLEETDL_ASSERT(alphabet >= 1 && alphabet <= huffman_max_alphabet, "huffman_write_block: alphabet out of range");
  std::vector<std::uint64_t> freq(alphabet, 0);
  for (auto s : symbols) {
    FLEETDL_ASSERT(s < alphabet, "huffman_write_block: symbol outside the alphabet");
    ++freq[s];
  }
  // An empty stream still needs a valid table: give symbol 0 a 1-bit code.
  if (symbols.empty()) freq[0] = 1;
  const auto len = huffman_code_lengths(freq, max_bits);
  const auto codes = canonical_codes(len);
  w.u16(static_cast<std::uint16_t>(alphabet));
  BitWriter lw;
  for (auto l : len) lw.put(l, 5);
  const auto lb = lw.finish();
  w.raw(lb.data(), lb.size());
  BitWriter sw;
  for (auto s : symbols) sw.put(codes[s], len[s]);
  const auto sb = sw.finish();
  w.u32(static_cast<std::uint32_t>(sb.size()));
  w.raw(sb.data(), sb.size());
}

/// Read a Huffman block holding exactly `count` symbols. The declared
/// alphabet must be at most `max_alphabet`; `what` names the block in errors.
/// Every size is checked against the bytes left before anything is allocated.
inline Result<std::vector<std::uint32_t>> huffman_read_block(ByteReader& r, std::size_t count, std::size_t max_alphabet,
                                                             const std::string& what) {
  std::uint16_t alphabet = 0;
  if (!r.u16(alphabet)) return make_error(Errc::truncated, what + ": Huffman block header truncated");
  if (alphabet == 0 || alphabet > max_alphabet)
    return make_error(Errc::corrupt, what + ": Huffman alphabet " + std::to_string(alphabet) + " out of range 1.." +
                                         std::to_string(max_alphabet));
  const std::size_t table_bytes = (5 * std::size_t{alphabet} + 7) / 8;
  const std::uint8_t* tb = r.take(table_bytes);
  if (!tb)
    return make_error(Errc::truncated, what + ": Huffman table needs " + std::to_string(table_bytes) + " bytes, " +
                                           std::to_string(r.remaining()) + " left");
  std::vector<std::uint8_t> len(alphabet, 0);
  BitReader lr(tb, table_bytes);
  for (auto& l : len) {
    int v = 0;
    for (int i = 0; i < 5; ++i) v = (v << 1) | lr.bit();
    l = static_cast<std::uint8_t>(v);
  }
  auto dec = HuffmanDecoder::create(len);
  if (!dec) return make_error(dec.error().code, what + ": " + dec.error().message);
  std::uint32_t sbytes = 0;
  if (!r.u32(sbytes)) return make_error(Errc::truncated, what + ": Huffman stream length truncated");
  const std::uint8_t* sp = r.take(sbytes);
  if (!sp)
    return make_error(Errc::truncated, what + ": Huffman stream needs " + std::to_string(sbytes) + " bytes, " +
                                           std::to_string(r.remaining()) + " left");
  // Every code is at least one bit: more symbols than bits is impossible.
  if (count > std::size_t{sbytes} * 8)
    return make_error(Errc::corrupt, what + ": " + std::to_string(count) + " symbols cannot fit in a " +
                                         std::to_string(sbytes) + "-byte stream");
  std::vector<std::uint32_t> out(count);
  BitReader br(sp, sbytes);
  for (std::size_t i = 0; i < count; ++i) {
    auto s = dec->decode(br);
    if (!s) return make_error(s.error().code, what + ": symbol " + std::to_string(i) + ": " + s.error().message);
    out[i] = *s;
  }
  if (!br.rest_is_zero_padding())
    return make_error(Errc::corrupt, what + ": Huffman stream has trailing bytes or non-zero padding");
  return out;
}

}  // namespace fleetdl::compress
