// tests/fuzz/fuzz_probe.cpp — configure-time probe: does clang++ link a
// libFuzzer target with -fsanitize=fuzzer,address,undefined?
#include <cstddef>
#include <cstdint>
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t) { return 0; }
