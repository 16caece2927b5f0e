// fleetdl/core/crc32.hpp — CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320),
// the checksum of .fdl files and wire frames. constexpr table, no allocation.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace fleetdl {

namespace detail {
constexpr std::array<std::uint32_t, 256> make_crc32_table() {
  std::array<std::uint32_t, 256> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1U) ? (0xEDB88320U ^ (c >> 1)) : (c >> 1);
    t[i] = c;
  }
  return t;
}
inline constexpr std::array<std::uint32_t, 256> crc32_table = make_crc32_table();
}  // namespace detail

/// Continue a CRC-32 over more bytes; start with crc = 0.
inline std::uint32_t crc32_update(std::uint32_t crc, const void* data, std::size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (std::size_t i = 0; i < n; ++i) crc = detail::crc32_table[(crc ^ p[i]) & 0xFFU] ^ (crc >> 8);
  return ~crc;
}

inline std::uint32_t crc32(const void* data, std::size_t n) { return crc32_update(0, data, n); }

}  // namespace fleetdl
