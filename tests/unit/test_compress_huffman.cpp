// tests/unit/test_compress_huffman.cpp — compress/huffman.hpp: code lengths for
// hand-checked frequency tables, canonical codes, the length limit, round
// trips over many distributions (one symbol, all-equal, skewed, empty), and
// damaged tables and streams.
#include "fleetdl/compress/huffman.hpp"

#include "fleetdl/core/rng.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

namespace cz = fleetdl::compress;
using fleetdl::ByteReader;
using fleetdl::ByteWriter;
using fleetdl::Errc;
using fleetdl::Rng;
using Lens = std::vector<std::uint8_t>;

double kraft(const Lens& l) {
  double s = 0;
  for (auto x : l)
    if (x) s += std::ldexp(1.0, -x);
  return s;
}

std::vector<std::uint32_t> round_trip(const std::vector<std::uint32_t>& sym, std::size_t alphabet) {
  ByteWriter w;
  cz::huffman_write_block(w, sym, alphabet);
  ByteReader r(w.bytes().data(), w.size());
  auto back = cz::huffman_read_block(r, sym.size(), alphabet, "test");
  REQUIRE(back.ok());
  CHECK(r.at_end());
  return *back;
}

}  // namespace

TEST_CASE("huffman: code lengths of known tables", "[compress][huffman]") {
  // CLRS 16.3: a:45 b:13 c:12 d:16 e:9 f:5 -> 1,3,3,3,4,4.
  CHECK(cz::huffman_code_lengths({45, 13, 12, 16, 9, 5}) == Lens{1, 3, 3, 3, 4, 4});
  // Powers of two: 8,4,2,1,1 -> 1,2,3,4,4.
  CHECK(cz::huffman_code_lengths({8, 4, 2, 1, 1}) == Lens{1, 2, 3, 4, 4});
  // All equal over 8 symbols: 3 bits each; zero frequencies get no code.
  CHECK(cz::huffman_code_lengths({5, 5, 5, 5, 5, 5, 5, 5}) == Lens(8, 3));
  CHECK(cz::huffman_code_lengths({0, 7, 0, 7}) == Lens{0, 1, 0, 1});
  // A single used symbol gets a 1-bit code; no used symbols, no codes.
  CHECK(cz::huffman_code_lengths({0, 0, 9}) == Lens{0, 0, 1});
  CHECK(cz::huffman_code_lengths({0, 0}) == Lens{0, 0});
  // Ties: equal weights merge lower node ids first -> deterministic.
  CHECK(cz::huffman_code_lengths({1, 1, 1}) == Lens{2, 2, 1});
}

TEST_CASE("huffman: canonical codes", "[compress][huffman]") {
  // Lengths 1,3,3,3,4,4 -> 0, 100, 101, 110, 1110, 1111.
  CHECK(cz::canonical_codes({1, 3, 3, 3, 4, 4}) == std::vector<std::uint32_t>{0b0, 0b100, 0b101, 0b110, 0b1110, 0b1111});
  // Symbol order within a length, zero lengths skipped (RFC 1951 example).
  CHECK(cz::canonical_codes({3, 3, 3, 3, 3, 2, 4, 4}) ==
        std::vector<std::uint32_t>{0b010, 0b011, 0b100, 0b101, 0b110, 0b00, 0b1110, 0b1111});
  CHECK(cz::canonical_codes({0, 2, 1, 0, 2}) == std::vector<std::uint32_t>{0, 0b10, 0b0, 0, 0b11});
}

TEST_CASE("huffman: length limit", "[compress][huffman]") {
  // Fibonacci frequencies give a maximally deep tree (depth n-1).
  std::vector<std::uint64_t> fib{1, 1};
  while (fib.size() < 40) fib.push_back(fib[fib.size() - 1] + fib[fib.size() - 2]);
  // Unlimited, the tree is 39 deep; each limit holds and the code stays complete.
  const auto free_len = cz::huffman_code_lengths(fib, 31);
  CHECK(*std::max_element(free_len.begin(), free_len.end()) <= 31);
  CHECK(kraft(free_len) == 1.0);
  for (int lim : {6, 8, 12, 24}) {
    const auto l = cz::huffman_code_lengths(fib, lim);
    CHECK(*std::max_element(l.begin(), l.end()) <= lim);
    CHECK(kraft(l) == 1.0);
  }
  // The default limit holds and the decoder accepts the result.
  const auto l24 = cz::huffman_code_lengths(fib);
  CHECK(*std::max_element(l24.begin(), l24.end()) <= cz::huffman_max_bits);
  CHECK(cz::HuffmanDecoder::create(l24).ok());
}

TEST_CASE("huffman: round trips over many distributions", "[compress][huffman]") {
  Rng rng(7);
  // Single symbol, all-equal frequencies, uniform, geometric, sparse alphabet, empty.
  CHECK(round_trip(std::vector<std::uint32_t>(100, 3), 5) == std::vector<std::uint32_t>(100, 3));
  CHECK(round_trip({}, 4).empty());
  CHECK(round_trip({0}, 1) == std::vector<std::uint32_t>{0});
  std::vector<std::uint32_t> eq;
  for (int i = 0; i < 64; ++i) eq.push_back(static_cast<std::uint32_t>(i % 16));
  CHECK(round_trip(eq, 16) == eq);
  for (std::size_t alphabet : {2u, 3u, 17u, 256u, 4096u}) {
    std::vector<std::uint32_t> uni, geo, two;
    for (int i = 0; i < 3000; ++i) {
      uni.push_back(static_cast<std::uint32_t>(rng.below(alphabet)));
      std::uint32_t g = 0;
      while (g + 1 < alphabet && rng.uniform() < 0.7) ++g;
      geo.push_back(g);
      two.push_back(rng.uniform() < 0.999 ? 0U : static_cast<std::uint32_t>(alphabet - 1));
    }
    CHECK(round_trip(uni, alphabet) == uni);
    CHECK(round_trip(geo, alphabet) == geo);
    CHECK(round_trip(two, alphabet) == two);
  }
  // Skewed enough to hit the length limit (Fibonacci counts up to 40 symbols).
  std::vector<std::uint32_t> deep;
  std::uint64_t a = 1, b = 1;
  for (std::uint32_t s = 0; s < 26; ++s) {
    for (std::uint64_t k = 0; k < a; ++k) deep.push_back(s);
    const std::uint64_t c = a + b;
    a = b;
    b = c;
  }
  CHECK(round_trip(deep, 26) == deep);
}

TEST_CASE("huffman: compression is near the entropy", "[compress][huffman]") {
  // 90% zeros over 16 symbols: H ~ 0.87 bits; Huffman within 1 bit/symbol.
  Rng rng(3);
  std::vector<std::uint32_t> s;
  for (int i = 0; i < 10000; ++i) s.push_back(rng.uniform() < 0.9 ? 0U : static_cast<std::uint32_t>(1 + rng.below(15)));
  ByteWriter w;
  cz::huffman_write_block(w, s, 16);
  CHECK(w.size() < 10000 * 2 / 8 + 64);  // < 2 bits per symbol
}

TEST_CASE("huffman: damaged tables and streams are rejected", "[compress][huffman]") {
  // Decoder table checks.
  CHECK(cz::HuffmanDecoder::create({1, 1}).ok());
  CHECK(cz::HuffmanDecoder::create({1}).ok());                        // lone symbol
  CHECK(cz::HuffmanDecoder::create({1, 1, 1}).error().code == Errc::corrupt);  // over-subscribed
  CHECK(cz::HuffmanDecoder::create({1, 2}).error().code == Errc::corrupt);     // incomplete
  CHECK(cz::HuffmanDecoder::create({2}).error().code == Errc::corrupt);        // lone but not 1 bit
  CHECK(cz::HuffmanDecoder::create({0, 0}).error().code == Errc::corrupt);     // empty
  CHECK(cz::HuffmanDecoder::create({25, 1}).error().message.find("exceeds") != std::string::npos);

  Rng rng(11);
  std::vector<std::uint32_t> sym;
  for (int i = 0; i < 500; ++i) sym.push_back(static_cast<std::uint32_t>(rng.below(10)));
  ByteWriter w;
  cz::huffman_write_block(w, sym, 10);
  const auto good = w.bytes();
  // Every truncation fails cleanly.
  for (std::size_t len = 0; len < good.size(); ++len) {
    ByteReader r(good.data(), len);
    CHECK_FALSE(cz::huffman_read_block(r, sym.size(), 10, "t").ok());
  }
  // More symbols than the stream holds (up to 7 padding bits could decode
  // as short codes: counts come from CRC-protected context), alphabet above
  // the caller's limit.
  {
    ByteReader r(good.data(), good.size());
    CHECK_FALSE(cz::huffman_read_block(r, sym.size() + 8, 10, "t").ok());
  }
  {
    ByteReader r(good.data(), good.size());
    auto e = cz::huffman_read_block(r, sym.size(), 9, "t");
    REQUIRE_FALSE(e.ok());
    CHECK(e.error().message.find("alphabet 10 out of range") != std::string::npos);
  }
  {  // a huge symbol count against a tiny stream is refused before allocating
    ByteReader r(good.data(), good.size());
    auto e = cz::huffman_read_block(r, std::size_t{1} << 40, 10, "t");
    REQUIRE_FALSE(e.ok());
    CHECK(e.error().message.find("cannot fit") != std::string::npos);
  }
}
