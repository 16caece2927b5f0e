// tests/odr/a.cpp — translation unit "a" of the ODR test (see odr.hpp).
#include <fleetdl/fleetdl.hpp>

#include "odr.hpp"

odr_test::Values odr_test::from_a() {
  Values v{};
  v.crc = fleetdl::crc32("123456789", 9);
  fleetdl::Rng rng(42);
  v.rng = rng.next_u64();
  fleetdl::Rng rng7(7);
  v.below = rng7.below(1000);
  const fleetdl::Result<int> r = fleetdl::make_error(fleetdl::Errc::corrupt, "odr test");
  v.result_error = !r.ok();
  return v;
}
