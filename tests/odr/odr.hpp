// tests/odr/odr.hpp — the ODR test: a.cpp and b.cpp both include the umbrella
// <fleetdl/fleetdl.hpp> and compute the same values; linking them into one
// program fails on any non-inline definition in a header, and main() checks
// that both translation units agree.
#pragma once

#include <cstdint>

namespace odr_test {

struct Values {
  std::uint32_t crc;      // crc32("123456789")
  std::uint64_t rng;      // first draw of Rng(42)
  std::uint64_t below;    // Rng(7).below(1000)
  bool result_error;      // a Result<int> holding an Error reports !ok()
};

Values from_a();
Values from_b();

}  // namespace odr_test
