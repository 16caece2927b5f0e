// tests/fuzz/fuzz_micro_verifier.cpp — libFuzzer harness for the micro
// runtime's blob verifier (fleetdl/micro/verifier.hpp), planner and
// interpreter.
//
// Each input is checked twice: as is (magic, length and CRC checks first),
// and with its length field and CRC-32 made consistent so that mutations
// reach the structural checks behind the checksum. Whatever verify() accepts
// must plan, initialise in a fixed 64 KiB arena (or be refused only because
// the arena is too small, with arena_used() equal to the plan when it fits)
// and invoke without a kernel refusing its arguments; ASan and UBSan watch
// every access. Any other outcome aborts.
//
// Built and run by tests/fuzz/meson.build (suite 'fuzz', 20 s, seeds from
// gen_micro_seeds) when clang++ accepts -fsanitize=fuzzer; by hand:
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined \
//     -fno-sanitize-recover=undefined -I include \
//     tests/fuzz/fuzz_micro_verifier.cpp -o fuzz_micro_verifier
//   ./fuzz_micro_verifier -max_total_time=20 -max_len=8192 corpus/ seeds/
// bench/micro/fuzz_long.sh runs it for longer.
#include "fleetdl/core/crc32.hpp"
#include "fleetdl/micro/interpreter.hpp"
#include "fleetdl/micro/planner.hpp"
#include "fleetdl/micro/verifier.hpp"

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace {

namespace mi = fleetdl::micro;

constexpr std::size_t kMaxBlob = std::size_t{1} << 16;
alignas(16) std::uint8_t g_blob[kMaxBlob];
alignas(16) std::uint8_t g_arena[std::size_t{1} << 16];

void check(const std::uint8_t* blob, std::size_t size) {
  const mi::VerifyResult v = mi::verify(blob, size);
  if (!v) {
    if (v.message == nullptr || mi::describe(v.code) == nullptr) std::abort();
    return;
  }
  const mi::PlanResult plan = mi::plan_arena_bytes(blob, size);
  if (!plan) std::abort();
  mi::InitResult r = mi::Interpreter::init(blob, size, g_arena, sizeof g_arena);
  if (!r) {
    if (r.code != mi::ErrorCode::arena_too_small || plan.plan.total <= sizeof g_arena) std::abort();
    if (!r.need_is_lower_bound && r.need != plan.plan.total) std::abort();
    return;
  }
  if (r.interpreter.arena_used() != plan.plan.total) std::abort();
  for (std::uint32_t i = 0; i < r.interpreter.input_count(); ++i)
    std::memset(r.interpreter.input(i), static_cast<int>(i * 37 + 11), r.interpreter.input_info(i).bytes);
  if (!r.interpreter.invoke()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > kMaxBlob - 4) return 0;
  // The verifier insists on a 16-byte aligned blob: work on an aligned copy.
  std::memcpy(g_blob, data, size);
  check(g_blob, size);
  // The same bytes with length and CRC made consistent.
  if (size >= mi::kHeaderBytes + mi::kCrcBytes) {
    const std::uint64_t len = size;
    for (int i = 0; i < 8; ++i) g_blob[mi::layout::kLength + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(len >> (8 * i));
    const std::uint32_t crc = fleetdl::crc32(g_blob, size - 4);
    for (int i = 0; i < 4; ++i) g_blob[size - 4 + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(crc >> (8 * i));
    check(g_blob, size);
  }
  return 0;
}
