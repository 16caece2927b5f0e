// tests/odr/main.cpp — links a.cpp and b.cpp (both include the umbrella
// header) and checks they computed the same, correct values.
#include <cstdio>

#include "odr.hpp"

int main() {
  const odr_test::Values a = odr_test::from_a();
  const odr_test::Values b = odr_test::from_b();
  int failures = 0;
  if (a.crc != 0xCBF43926U) {
    std::fprintf(stderr, "odr: crc32(\"123456789\") = %08x, expected cbf43926\n",
                 static_cast<unsigned>(a.crc));
    ++failures;
  }
  if (a.crc != b.crc || a.rng != b.rng || a.below != b.below || a.result_error != b.result_error) {
    std::fprintf(stderr, "odr: the two translation units disagree\n");
    ++failures;
  }
  if (!a.result_error) {
    std::fprintf(stderr, "odr: Result<int> holding an Error reports ok()\n");
    ++failures;
  }
  if (failures == 0) std::puts("odr: ok");
  return failures == 0 ? 0 : 1;
}
