// tests/consumer/main.cpp — a program outside the fleetdl tree, built against
// an installed fleetdl (Meson via pkg-config, or CMake via find_package).
#include <fleetdl/core.hpp>

#include <cstdio>

int main() {
  const std::uint32_t crc = fleetdl::crc32("123456789", 9);
  if (crc != 0xCBF43926U) {
    std::fprintf(stderr, "consumer: crc32 = %08x, expected cbf43926\n", static_cast<unsigned>(crc));
    return 1;
  }
  std::puts("consumer: ok");
  return 0;
}
