// tests/noexcept/main.cpp — fleetdl builds and works with exceptions off
// (-fno-exceptions, as on the Cortex-M firmware): errors come back as Result<T>.
#include <fleetdl/core.hpp>

#include <cstdio>

#if FLEETDL_EXCEPTIONS
#  error "tests/noexcept must be compiled with exceptions disabled (cpp_eh=none)"
#endif

namespace {

fleetdl::Result<int> parse_digit(char c) {
  if (c < '0' || c > '9')
    return fleetdl::make_error(fleetdl::Errc::invalid_argument, "parse_digit: not a digit");
  return c - '0';
}

fleetdl::Result<void> chain(char c) {
  FLEETDL_TRY(parse_digit(c));
  return fleetdl::success();
}

}  // namespace

int main() {
  int failures = 0;
  const auto bad = parse_digit('x');
  if (bad.ok() || bad.error().code != fleetdl::Errc::invalid_argument) ++failures;
  const auto good = parse_digit('7');
  if (!good.ok() || *good != 7) ++failures;
  if (chain('x').ok() || !chain('3').ok()) ++failures;
  if (failures != 0) std::fprintf(stderr, "noexcept: %d check(s) failed\n", failures);
  return failures == 0 ? 0 : 1;
}
