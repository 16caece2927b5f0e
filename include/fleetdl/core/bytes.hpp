// fleetdl/core/bytes.hpp — little-endian byte writer and bounds-checked reader.
//
// ByteReader never reads past its span: every get returns false (and leaves
// the output untouched) when too few bytes remain, so decoders of untrusted
// input can check sizes before allocating.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace fleetdl {

class ByteWriter {
 public:
  void u8(std::uint8_t v) { buf_.push_back(v); }
  void u16(std::uint16_t v) { put_le(v); }
  void u32(std::uint32_t v) { put_le(v); }
  void u64(std::uint64_t v) { put_le(v); }
  void i32(std::int32_t v) { put_le(static_cast<std::uint32_t>(v)); }
  void f32(float v) {
    std::uint32_t u = 0;
    std::memcpy(&u, &v, 4);
    put_le(u);
  }
  void f64(double v) {
    std::uint64_t u = 0;
    std::memcpy(&u, &v, 8);
    put_le(u);
  }
  /// u16 length + bytes. A longer string sets overflowed() (and is cut
  /// short by its length field), so callers can refuse what they wrote.
  void str(std::string_view s) {
    if (s.size() > 0xFFFF) overflow_ = true;
    u16(static_cast<std::uint16_t>(s.size()));
    raw(s.data(), s.size());
  }
  void raw(const void* p, std::size_t n) {
    const auto* b = static_cast<const std::uint8_t*>(p);
    buf_.insert(buf_.end(), b, b + n);
  }
  void patch_u32(std::size_t at, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) buf_[at + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(v >> (8 * i));
  }
  void patch_u64(std::size_t at, std::uint64_t v) {
    for (int i = 0; i < 8; ++i) buf_[at + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(v >> (8 * i));
  }
  std::size_t size() const { return buf_.size(); }
  /// A str() longer than 65535 bytes was written.
  bool overflowed() const { return overflow_; }
  const std::vector<std::uint8_t>& bytes() const& { return buf_; }
  std::vector<std::uint8_t>&& bytes() && { return std::move(buf_); }

 private:
  template <class U>
  void put_le(U v) {
    for (std::size_t i = 0; i < sizeof(U); ++i) buf_.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  std::vector<std::uint8_t> buf_;
  bool overflow_ = false;
};

class ByteReader {
 public:
  ByteReader(const std::uint8_t* data, std::size_t size) : p_(data), n_(size) {}

  std::size_t remaining() const { return n_ - pos_; }
  std::size_t position() const { return pos_; }
  bool at_end() const { return pos_ == n_; }

  bool u8(std::uint8_t& v) { return get_le(v); }
  bool u16(std::uint16_t& v) { return get_le(v); }
  bool u32(std::uint32_t& v) { return get_le(v); }
  bool u64(std::uint64_t& v) { return get_le(v); }
  bool i32(std::int32_t& v) {
    std::uint32_t u = 0;
    if (!get_le(u)) return false;
    v = static_cast<std::int32_t>(u);
    return true;
  }
  bool f32(float& v) {
    std::uint32_t u = 0;
    if (!get_le(u)) return false;
    std::memcpy(&v, &u, 4);
    return true;
  }
  bool f64(double& v) {
    std::uint64_t u = 0;
    if (!get_le(u)) return false;
    std::memcpy(&v, &u, 8);
    return true;
  }
  bool str(std::string& s) {
    std::uint16_t len = 0;
    const std::size_t save = pos_;
    if (!u16(len)) return false;
    if (remaining() < len) {
      pos_ = save;
      return false;
    }
    s.assign(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len;
    return true;
  }
  /// Pointer to the next n bytes (advancing past them), or nullptr.
  const std::uint8_t* take(std::size_t n) {
    if (remaining() < n) return nullptr;
    const std::uint8_t* r = p_ + pos_;
    pos_ += n;
    return r;
  }

 private:
  template <class U>
  bool get_le(U& v) {
    if (remaining() < sizeof(U)) return false;
    U r = 0;
    for (std::size_t i = 0; i < sizeof(U); ++i) r = static_cast<U>(r | (static_cast<U>(p_[pos_ + i]) << (8 * i)));
    v = r;
    pos_ += sizeof(U);
    return true;
  }
  const std::uint8_t* p_;
  std::size_t n_;
  std::size_t pos_ = 0;
};

}  // namespace fleetdl
