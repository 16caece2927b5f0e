// tests/fuzz/fuzz_fdl.cpp — libFuzzer harness for the .fdl decoder
// (fleetdl/io/fdl.hpp). Built and run for 20 s by the Meson suite 'fuzz'
// (tests/fuzz/meson.build, seeds from gen_fdl_seeds).
//
// Each input is decoded twice: as is (magic, header, length and CRC checks),
// and with its length field and CRC-32 fixed up so that mutations reach the
// architecture, metadata and tensor parsers behind the checksum. Whatever
// decodes must re-encode and decode again to the same bytes.
//
// By hand (clang 14+; Eigen from the system):
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined \
//     -fno-sanitize-recover=undefined -I include -I /usr/include/eigen3 \
//     tests/fuzz/fuzz_fdl.cpp -o fuzz_fdl
//   mkdir -p fdl_corpus && ./fuzz_fdl -max_len=65536 -max_total_time=300 fdl_corpus
// Seeds help: any .fdl file (e.g. from `fleetdl` or io::save_model) copied
// into fdl_corpus/. Without seeds the fuzzer finds the magic by itself.
#include "fleetdl/core/crc32.hpp"
#include "fleetdl/io/fdl.hpp"

#include <cstdint>
#include <cstdlib>
#include <vector>

namespace {

void check(const std::uint8_t* data, std::size_t size) {
  auto r = fleetdl::io::decode_model<float>(data, size, "fuzz.fdl");
  if (!r) {
    // Every error names the file.
    if (r.error().message.rfind("fuzz.fdl: ", 0) != 0) std::abort();
    return;
  }
  const auto once = fleetdl::io::encode_model(r->model, r->metadata);
  auto again = fleetdl::io::decode_model<float>(once.data(), once.size(), "again.fdl");
  if (!again) std::abort();
  if (fleetdl::io::encode_model(again->model, again->metadata) != once) std::abort();
  // A double read accepts everything a float read accepts.
  if (!fleetdl::io::decode_model<double>(data, size, "fuzz.fdl")) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  check(data, size);
  // The same bytes as a file body: length field and CRC made consistent.
  if (size >= fleetdl::io::fdl_header_bytes && size <= (std::size_t{1} << 20)) {
    std::vector<std::uint8_t> b(data, data + size);
    b.resize(size + 4);
    const std::uint64_t len = b.size();
    for (int i = 0; i < 8; ++i) b[16 + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(len >> (8 * i));
    const std::uint32_t crc = fleetdl::crc32(b.data(), size);
    for (int i = 0; i < 4; ++i) b[size + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(crc >> (8 * i));
    check(b.data(), b.size());
  }
  return 0;
}
