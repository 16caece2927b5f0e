// tests/unit/test_micro_codec.cpp — the micro blob's encoded int8 weights
// (micro/weight_codec.hpp, tensor encoding 1):
//
//   * encode_weights -> check_weight_encoding -> WeightStream round-trips a
//     table of weight vectors exactly (all zeros, runs longer than the run
//     limit, no zeros, one value, sparse, clustered), deterministically, and
//     sparse clustered weights really shrink;
//   * a blob whose conv2d and fully_connected filters are encoded computes the
//     same bytes as the same blob with raw filters, needs exactly one decode
//     row more arena, and runs without the heap;
//   * a table of corrupted encodings, each refused with its own message
//     before anything runs, and byte flips of the encoded data that are either
//     refused or run.
#include "fleetdl/micro/blob_writer.hpp"
#include "fleetdl/micro/interpreter.hpp"
#include "fleetdl/micro/planner.hpp"
#include "fleetdl/micro/verifier.hpp"
#include "fleetdl/micro/weight_codec.hpp"

#include "heap_counter.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace {

namespace mi = fleetdl::micro;
using I8 = std::vector<std::int8_t>;
using Bytes = std::vector<std::uint8_t>;

// Bytes at a 16-byte boundary (the verifier insists).
struct AlignedBytes {
  explicit AlignedBytes(const Bytes& b) : store(b.size() + 16, 0) {
    off = (16 - reinterpret_cast<std::uintptr_t>(store.data()) % 16) % 16;
    std::memcpy(store.data() + off, b.data(), b.size());
    n = b.size();
  }
  std::uint8_t* data() { return store.data() + off; }
  std::size_t size() const { return n; }
  Bytes store;
  std::size_t off = 0, n = 0;
};

// n weights: a fraction `zeros` exactly 0, the rest drawn from `values`
// distinct non-zero levels in [-127, 127] (all levels when values = 0).
I8 weights(std::size_t n, double zeros, int values, std::mt19937& g) {
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<std::int8_t> levels;
  if (values == 0) {
    for (int v = -127; v <= 127; ++v)
      if (v != 0) levels.push_back(static_cast<std::int8_t>(v));
  } else {
    std::uniform_int_distribution<int> d(1, 127);
    for (int k = 0; k < values; ++k) levels.push_back(static_cast<std::int8_t>(k % 2 ? -d(g) : d(g)));
  }
  std::uniform_int_distribution<std::size_t> pick(0, levels.size() - 1);
  I8 w(n);
  for (auto& x : w) x = u(g) < zeros ? 0 : levels[pick(g)];
  return w;
}

I8 decode(const Bytes& enc, std::size_t n) {
  mi::WeightCodecHeader h;
  REQUIRE(mi::parse_weight_codec(enc.data(), enc.size(), h) == nullptr);
  mi::WeightStream s(h);
  I8 out(n, 99);
  REQUIRE(s.read(out.data(), static_cast<std::uint32_t>(n)));
  return out;
}

}  // namespace

TEST_CASE("weight codec: encode, check and decode round-trip exactly", "[micro][codec]") {
  std::mt19937 g(5);
  struct Case {
    const char* name;
    I8 w;
  };
  I8 runs(9000, 0);
  runs[0] = 5;
  runs[4500] = -7;  // zero runs of 4499 and 4499: longer than the 4096 limit
  I8 alternating(1000);
  for (std::size_t i = 0; i < alternating.size(); ++i) alternating[i] = i % 2 ? 0 : -127;
  const std::vector<Case> cases = {
      {"one zero", I8{0}},
      {"one value", I8{127}},
      {"all zeros, 10000", I8(10000, 0)},
      {"one value repeated", I8(777, -3)},
      {"long runs", runs},
      {"alternating", alternating},
      {"dense, every level", weights(5000, 0.0, 0, g)},
      {"sparse 90%, every level", weights(20000, 0.9, 0, g)},
      {"sparse 80%, 16 levels", weights(20280, 0.8, 16, g)},
      {"half zeros, 2 levels", weights(3000, 0.5, 2, g)},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    const Bytes enc = mi::encode_weights(c.w);
    CHECK(mi::check_weight_encoding(enc.data(), enc.size(), c.w.size()) == nullptr);
    CHECK(decode(enc, c.w.size()) == c.w);
    CHECK(mi::encode_weights(c.w) == enc);  // deterministic
    // More elements than the stream can hold are refused. (The zero padding
    // of the last byte can itself read as up to 7 one-bit codes, each a run
    // of up to 4096 zeros, so the count must exceed that; the blob's count
    // comes from the tensor shape, and exactly that many are decoded.)
    CHECK(mi::check_weight_encoding(enc.data(), enc.size(), c.w.size() + 7 * 4096 + 1) != nullptr);
  }
  // The end of the stream: a byte more, or a 1 in the padding bits, is refused.
  {
    const I8 w = weights(1001, 0.6, 5, g);
    Bytes enc = mi::encode_weights(w);
    enc.push_back(0);
    CHECK(std::string(mi::check_weight_encoding(enc.data(), enc.size(), w.size()) ? mi::check_weight_encoding(enc.data(), enc.size(), w.size()) : "") ==
          "encoded weights: bytes left over after the last element");
  }
  {
    bool found = false;
    for (std::size_t n = 100; n < 140 && !found; ++n) {
      const I8 w = weights(n, 0.5, 3, g);
      Bytes enc = mi::encode_weights(w);
      mi::WeightCodecHeader h;
      REQUIRE(mi::parse_weight_codec(enc.data(), enc.size(), h) == nullptr);
      mi::WeightStream s(h);
      I8 out(n);
      REQUIRE(s.read(out.data(), static_cast<std::uint32_t>(n)));
      if (s.bits_read() % 8 == 0) continue;  // no padding bits to spoil
      found = true;
      enc.back() |= 1;
      const char* e = mi::check_weight_encoding(enc.data(), enc.size(), n);
      CHECK(std::string(e ? e : "") == "encoded weights: padding bits after the last element are not 0");
    }
    CHECK(found);
  }
  // Runs are checked whole: a 65,535-byte stream of one-bit "4096 zeros"
  // codes declares 2,147,450,880 zeros, and the check walks its 524,280 bits
  // (not 2^31 elements); one element more is refused.
  {
    Bytes enc = {0, 0, 0x00, 0x10, 1, 0, 1, 0};  // k 0, r 4096, L 1, reserved, m 1
    const std::uint32_t n = 65535u * 8u * 4096u;
    for (int b = 0; b < 4; ++b) enc.push_back(static_cast<std::uint8_t>(n >> (8 * b)));
    enc.insert(enc.end(), {1, 0, 0xFF, 0x0F});  // count[1] = 1; symbol 4095 = a run of 4096
    const std::size_t tables = enc.size();
    enc.resize(tables + 65535, 0);
    CHECK(mi::check_weight_encoding(enc.data(), enc.size(), n) == nullptr);
    enc[8] = static_cast<std::uint8_t>((n + 1) & 0xFF);
    const char* e = mi::check_weight_encoding(enc.data(), enc.size(), n + 1);
    CHECK(std::string(e ? e : "") == "encoded weights: the stream ends early or holds an invalid code");
  }
  // Real savings where pruning and clustering leave them: 80% zeros and 16
  // levels need about H = 0.72 + 0.2 * 4 = 1.5 bits per weight.
  const I8 pruned = weights(20280, 0.8, 16, g);
  const Bytes enc = mi::encode_weights(pruned);
  CHECK(enc.size() < pruned.size() / 4);
  CHECK(enc.size() > pruned.size() / 8);  // and not below the entropy
  // Dense weights over every level save little (8 bits -> about 7.9).
  const I8 dense = weights(5000, 0.0, 0, g);
  CHECK(mi::encode_weights(dense).size() > dense.size() * 9 / 10);
}

namespace {

// conv2d (3x3, 2 -> 4, same, relu) -> max pool -> fully_connected (64 -> 10),
// with the filters raw or encoded; weights 70% zeros over 6 levels.
struct Built {
  Bytes blob;
  std::uint16_t conv_filter = 0, fc_filter = 0, bias = 0;
};
Built build(bool encode, std::uint32_t seed) {
  std::mt19937 g(seed);
  const I8 kw = weights(4 * 9 * 2, 0.7, 6, g), dw = weights(10 * 64, 0.7, 6, g);
  std::vector<std::int32_t> kb(4), db(10);
  for (auto& b : kb) b = static_cast<std::int32_t>(g() % 4001) - 2000;
  for (auto& b : db) b = static_cast<std::int32_t>(g() % 1001) - 500;
  const std::vector<float> ks = {0.004f, 0.01f, 0.007f, 0.015f};
  mi::BlobWriter w;
  Built out;
  const auto x = w.activation({1, 8, 8, 2}, 0.05f, -3);
  out.conv_filter = encode ? w.constant_int8_encoded({4, 3, 3, 2}, 1.0f, kw) : w.constant_int8({4, 3, 3, 2}, 1.0f, kw);
  out.bias = w.constant_int32({1, 1, 1, 4}, kb);
  const auto s = w.constant_float({1, 1, 1, 4}, ks);
  const auto c = w.activation({1, 8, 8, 4}, 0.08f, -128);
  const auto p = w.activation({1, 4, 4, 4}, 0.08f, -128);
  out.fc_filter = encode ? w.constant_int8_encoded({10, 1, 1, 64}, 0.01f, dw) : w.constant_int8({10, 1, 1, 64}, 0.01f, dw);
  const auto fb = w.constant_int32({1, 1, 1, 10}, db);
  const auto y = w.activation({1, 1, 1, 10}, 0.15f, 4);
  mi::ConvOptions co;
  co.padding = mi::Padding::same;
  co.activation = mi::Activation::relu;
  w.conv2d(x, out.conv_filter, out.bias, s, c, co);
  w.max_pool2d(c, p);
  w.fully_connected(p, out.fc_filter, fb, mi::kNoTensor, y);
  w.inputs({x});
  w.outputs({y});
  out.blob = w.finish();
  return out;
}

// Run the blob on `input`; empty on any failure.
I8 run(AlignedBytes& b, const I8& input, std::size_t* used = nullptr) {
  alignas(16) static std::uint8_t arena[1 << 14];
  auto r = mi::Interpreter::init(b.data(), b.size(), arena, sizeof arena);
  if (!r) return {};
  std::memcpy(r.interpreter.input(0), input.data(), input.size());
  if (!r.interpreter.invoke()) return {};
  if (used != nullptr) *used = r.interpreter.arena_used();
  const auto* o = r.interpreter.output(0);
  return I8(o, o + r.interpreter.output_info(0).bytes);
}

}  // namespace

TEST_CASE("weight codec: encoded filters compute exactly what raw filters do", "[micro][codec][runtime]") {
  for (std::uint32_t seed : {1u, 2u, 3u}) {
    INFO("seed " << seed);
    AlignedBytes raw(build(false, seed).blob), enc(build(true, seed).blob);
    const auto pr = mi::plan_arena_bytes(raw.data(), raw.size());
    const auto pe = mi::plan_arena_bytes(enc.data(), enc.size());
    REQUIRE(pr);
    REQUIRE(pe);
    // One decode row more: the dense row (64) is the longest (conv: 3*3*2 = 18).
    CHECK(pe.plan.total == pr.plan.total + 64);
    CHECK(enc.size() < raw.size());
    std::mt19937 g(seed + 100);
    for (int trial = 0; trial < 5; ++trial) {
      const I8 x = weights(128, 0.0, 0, g);
      std::size_t used_raw = 0, used_enc = 0;
      const I8 a = run(raw, x, &used_raw), b = run(enc, x, &used_enc);
      REQUIRE(a.size() == 10);
      CHECK(a == b);
      CHECK(used_raw == pr.plan.total);
      CHECK(used_enc == pe.plan.total);
    }
  }
  // No heap from init to the end of invoke with encoded filters.
  AlignedBytes enc(build(true, 9).blob);
  alignas(16) static std::uint8_t arena[1 << 14];
  long allocations = -1;
  bool ran = false;
  {
    fleetdl_test::HeapCounter counter;
    auto r = mi::Interpreter::init(enc.data(), enc.size(), arena, sizeof arena);
    if (r) {
      std::memset(r.interpreter.input(0), 7, r.interpreter.input_info(0).bytes);
      ran = static_cast<bool>(r.interpreter.invoke());
    }
    allocations = counter.count();
  }
  CHECK(ran);
  CHECK(allocations == 0);
}

TEST_CASE("weight codec: corrupted encodings are refused before anything runs", "[micro][codec][verifier]") {
  const Built good = build(true, 4);
  AlignedBytes probe(good.blob);
  const mi::ModelView v(probe.data(), probe.size());
  const mi::TensorDesc fc = v.tensor(good.fc_filter);
  const std::size_t at = fc.data_offset;  // the dense filter's encoded bytes
  mi::WeightCodecHeader h;
  REQUIRE(mi::parse_weight_codec(probe.data() + at, fc.data_length, h) == nullptr);
  const std::size_t counts = at + mi::kCodecHeaderBytes, symbols = counts + 2 * h.max_len,
                    codebook = symbols + 2 * h.m, stream = codebook + h.k;
  const std::size_t rec = mi::kHeaderBytes + good.fc_filter * mi::kTensorRecordBytes;

  struct Edit {
    const char* what;
    std::function<void(Bytes&)> edit;
    const char* message;  // the verifier's message, or nullptr for "some bad_encoding"
  };
  auto put16 = [](Bytes& b, std::size_t p, std::uint16_t x) { mi::BlobWriter::put16(b, p, x); };
  auto put32 = [](Bytes& b, std::size_t p, std::uint32_t x) { mi::BlobWriter::put32(b, p, x); };
  const std::vector<Edit> edits = {
      {"codebook of 257", [&](Bytes& b) { put16(b, at, 257); }, "encoded weights: codebook larger than 256 entries"},
      {"run limit 4097", [&](Bytes& b) { put16(b, at + 2, 4097); }, "encoded weights: zero run limit above 4096"},
      {"empty alphabet", [&](Bytes& b) { put16(b, at, 0); put16(b, at + 2, 0); },
       "encoded weights: empty alphabet (no codebook and no runs)"},
      {"code length 0", [&](Bytes& b) { b[at + 4] = 0; }, "encoded weights: longest code length must be 1..15"},
      {"code length 16", [&](Bytes& b) { b[at + 4] = 16; }, "encoded weights: longest code length must be 1..15"},
      {"reserved byte", [&](Bytes& b) { b[at + 5] = 1; }, "encoded weights: reserved header byte is not 0"},
      {"no coded symbol", [&](Bytes& b) { put16(b, at + 6, 0); }, "encoded weights: coded symbol count must be 1..k+r"},
      {"more coded symbols than the alphabet", [&](Bytes& b) { put16(b, at + 6, static_cast<std::uint16_t>(h.k + h.r + 1)); },
       "encoded weights: coded symbol count must be 1..k+r"},
      {"tables past the data", [&](Bytes& b) { put32(b, rec + mi::layout::kTDataLength, 13); },
       "encoded weights: code tables run past the data"},
      {"shorter than the header", [&](Bytes& b) { put32(b, rec + mi::layout::kTDataLength, 11); },
       "encoded weights: shorter than the 12-byte codec header"},
      {"element count of another tensor", [&](Bytes& b) { put32(b, at + 8, 641); },
       "encoded weights: element count differs from the tensor's"},
      {"over-subscribed", [&](Bytes& b) { put16(b, counts, 3); }, "encoded weights: code lengths are over-subscribed"},
      {"counts do not add up", [&](Bytes& b) { put16(b, counts + 2 * (h.max_len - 1), 0); },
       "encoded weights: code length counts do not add up to the coded symbol count"},
      {"symbol outside the alphabet", [&](Bytes& b) { put16(b, symbols, static_cast<std::uint16_t>(h.k + h.r)); },
       "encoded weights: a coded symbol is outside the alphabet"},
      {"codebook -128", [&](Bytes& b) { b[codebook] = 0x80; },
       "encoded weights: codebook value -128 (weights are symmetric, [-127, 127])"},
      {"stream cut short", [&](Bytes& b) { put32(b, rec + mi::layout::kTDataLength, fc.data_length - 1); }, nullptr},
      {"int32 bias marked encoded",
       [&](Bytes& b) { put16(b, mi::kHeaderBytes + good.bias * mi::kTensorRecordBytes + mi::layout::kTEncoding, 1); },
       "only int8 constant tensors can be encoded"},
  };
  REQUIRE(stream < at + fc.data_length);
  for (const Edit& e : edits) {
    INFO(e.what);
    Bytes b = good.blob;
    e.edit(b);
    mi::BlobWriter::patch_crc(b);
    AlignedBytes a(b);
    const mi::VerifyResult r = mi::verify(a.data(), a.size());
    CHECK(r.code == mi::ErrorCode::bad_encoding);
    if (e.message != nullptr) CHECK(std::string(r.message) == e.message);
    // Refused by init as well, with the same message, before any op ran.
    alignas(16) static std::uint8_t arena[1 << 14];
    const auto init = mi::Interpreter::init(a.data(), a.size(), arena, sizeof arena);
    CHECK(init.code == mi::ErrorCode::bad_encoding);
  }

  // A depthwise filter cannot be encoded (the runtime decodes per output
  // channel, which 1HWO does not store contiguously).
  {
    mi::BlobWriter w;
    const auto x = w.activation({1, 4, 4, 3}, 0.05f, 0);
    const auto k = w.constant_int8_encoded({1, 3, 3, 3}, 1.0f, I8(27, 1));
    const auto s = w.constant_float({1, 1, 1, 3}, {0.01f, 0.01f, 0.01f});
    const auto y = w.activation({1, 2, 2, 3}, 0.1f, 0);
    w.depthwise_conv2d(x, k, mi::kNoTensor, s, y, 1);
    w.inputs({x});
    w.outputs({y});
    AlignedBytes a(w.finish());
    const auto r = mi::verify(a.data(), a.size());
    CHECK(r.code == mi::ErrorCode::bad_encoding);
    CHECK(std::string(r.message).find("depthwise_conv2d filters cannot be encoded") != std::string::npos);
  }

  // Byte flips anywhere in the encoded data, CRC recomputed: refused, or
  // (a flip the code absorbs, e.g. in the codebook) run to completion.
  int refused = 0, ran = 0;
  for (std::size_t i = at; i < at + fc.data_length; ++i)
    for (std::uint8_t mask : {std::uint8_t{0x01}, std::uint8_t{0x10}, std::uint8_t{0xFF}}) {
      Bytes b = good.blob;
      b[i] ^= mask;
      mi::BlobWriter::patch_crc(b);
      AlignedBytes a(b);
      if (!mi::verify(a.data(), a.size())) {
        ++refused;
        continue;
      }
      ++ran;
      CHECK(run(a, I8(128, 1)).size() == 10);
    }
  CHECK(refused > 0);
  CHECK(ran > 0);  // some flips are absorbed (a codebook value): those ran above
}
