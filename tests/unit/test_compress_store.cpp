// tests/unit/test_compress_store.cpp — compress/store.hpp: bit-exact round
// trips of dense, pruned, clustered and pruned+clustered models (and a
// BatchNorm model, -0.0f and NaN), byte accounting (reported == written,
// ratio against params x 4), gap fillers, and a table of damaged inputs —
// truncations, bit flips, huge counts, codebook indices out of range, gap
// overflow, tensor names/shapes that do not match the model — each rejected
// with a clear error and the model left untouched.
#include "fleetdl/compress.hpp"

#include "fleetdl/nn/zoo.hpp"

#include <catch2/catch.hpp>

#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace {

namespace cz = fleetdl::compress;
namespace nn = fleetdl::nn;
using fleetdl::ByteWriter;
using fleetdl::Errc;
using fleetdl::Index;
using fleetdl::Shape;
using Model = nn::Model<float>;
using Bytes = std::vector<std::uint8_t>;
using Enc = cz::TensorEncoding;

Model zoo(const char* name, std::uint64_t seed) {
  auto m = nn::make_model<float>(name);
  REQUIRE(m.ok());
  m->init(seed);
  return std::move(m).value();
}

bool same_bits(const Model& a, const Model& b) {
  return a.param_count() == b.param_count() && a.buffer_count() == b.buffer_count() &&
         std::memcmp(a.params().data(), b.params().data(), static_cast<std::size_t>(a.param_count()) * 4) == 0 &&
         std::memcmp(a.buffers().data(), b.buffers().data(), static_cast<std::size_t>(a.buffer_count()) * 4) == 0;
}

/// Encode, check the accounting, decode into a fresh copy, compare bits.
cz::StoreReport round_trip(const Model& m, const cz::StoreOptions& opt = {}) {
  auto c = cz::encode_compressed(m, opt);
  REQUIRE(c.ok());
  const auto& r = c->report;
  CHECK(r.total_bytes == c->bytes.size());
  std::size_t sum = r.fixed_bytes;
  for (const auto& t : r.tensors) sum += t.bytes;
  CHECK(sum == r.total_bytes);
  CHECK(r.raw_param_bytes == static_cast<std::size_t>(m.param_count()) * 4);
  CHECK(r.ratio == Approx(static_cast<double>(m.param_count()) * 4 / static_cast<double>(c->bytes.size())));
  Model back = m;
  back.params().setConstant(7.0f);
  back.buffers().setConstant(7.0f);
  auto d = cz::decode_compressed(back, c->bytes);
  REQUIRE(d.ok());
  CHECK(same_bits(m, back));
  return r;
}

Model tiny() {  // Dense(4 -> 3): "0.weight" {3, 4}, "0.bias" {3}
  std::vector<nn::NodePtr<float>> v;
  v.push_back(std::make_unique<nn::Dense<float>>(4, 3));
  auto m = Model::create(Shape{4, 1, 1}, std::move(v));
  REQUIRE(m.ok());
  m->init(2);
  return std::move(m).value();
}

void record(ByteWriter& w, const std::string& name, const std::vector<std::uint32_t>& dims, std::uint8_t enc,
            const Bytes& payload) {
  w.str(name);
  w.u8(static_cast<std::uint8_t>(dims.size()));
  for (auto d : dims) w.u32(d);
  w.u8(enc);
  w.u32(static_cast<std::uint32_t>(payload.size()));
  w.raw(payload.data(), payload.size());
}

Bytes seal(const ByteWriter& records, std::uint32_t count, std::uint32_t version = 1) {
  ByteWriter w;
  w.raw(cz::fdlz_magic, 8);
  w.u32(version);
  w.u32(0);
  w.u64(0);
  w.u32(count);
  w.raw(records.bytes().data(), records.size());
  w.patch_u64(16, w.size() + 4);
  w.u32(fleetdl::crc32(w.bytes().data(), w.size()));
  return std::move(w).bytes();
}

Bytes dense_payload(std::size_t n, float v = 0.5f) {
  ByteWriter w;
  for (std::size_t i = 0; i < n; ++i) w.f32(v);
  return std::move(w).bytes();
}

/// A file for tiny() whose weight record is (enc, payload) and bias dense.
Bytes tiny_file(std::uint8_t enc, const Bytes& payload) {
  ByteWriter r;
  record(r, "0.weight", {3, 4}, enc, payload);
  record(r, "0.bias", {3}, 0, dense_payload(3));
  return seal(r, 2);
}

void expect_rejected(const Bytes& b, Errc code, const std::string& fragment) {
  Model m = tiny();
  const Model before = m;
  auto r = cz::decode_compressed(m, b, "t.fdlz");
  REQUIRE_FALSE(r.ok());
  INFO(r.error().message);
  CHECK(r.error().code == code);
  CHECK(r.error().message.find(fragment) != std::string::npos);
  CHECK(r.error().message.rfind("t.fdlz: ", 0) == 0);
  CHECK(same_bits(m, before));
}

}  // namespace

TEST_CASE("store: bit-exact round trips and encodings", "[compress][store]") {
  // Dense: random init weights have no structure to exploit.
  Model d = zoo("lenet5", 1);
  auto rd = round_trip(d);
  for (const auto& t : rd.tensors) CHECK(t.encoding == Enc::dense);
  // Record overhead: u16 name length + name + ndim u8 + 4 per dim + encoding
  // u8 + payload length u32: conv weights 32, dense weights 24, biases 18.
  CHECK(rd.total_bytes == static_cast<std::size_t>(d.param_count()) * 4 + 32 + 2 * 32 + 2 * 24 + 4 * 18);

  // Pruned: sparse weights, dense biases.
  Model p = zoo("lenet300_100", 2);
  cz::magnitude_prune(p, 0.9);
  auto rp = round_trip(p);
  CHECK(rp.tensors[0].encoding == Enc::sparse);
  CHECK(rp.tensors[1].encoding == Enc::dense);
  CHECK(rp.ratio > 3.0);

  // Clustered (no pruning): codebook + indices.
  Model c = zoo("cnn1", 3);
  cz::cluster_model(c, 16, 20);
  auto rc = round_trip(c);
  CHECK(rc.tensors[2].encoding == Enc::clustered);
  CHECK(rc.tensors[2].codebook <= 16);

  // Pruned + clustered: the Deep Compression pipeline.
  Model pc = zoo("lenet300_100", 4);
  cz::magnitude_prune(pc, 0.92);
  cz::cluster_model(pc, 32, 30);
  auto rpc = round_trip(pc);
  CHECK(rpc.tensors[0].encoding == Enc::clustered_sparse);
  CHECK(rpc.ratio > rp.ratio);
  CHECK(rpc.ratio > 15.0);

  // Options: sparse and clustering disabled -> dense everywhere.
  cz::StoreOptions dense_only;
  dense_only.allow_sparse = false;
  dense_only.allow_clustered = false;
  for (const auto& t : round_trip(pc, dense_only).tensors) CHECK(t.encoding == Enc::dense);

  // BatchNorm buffers, -0.0f and NaN payloads survive.
  Model v = zoo("vgg_fmnist", 5);
  for (Index i = 0; i < v.buffer_count(); ++i) v.buffers()[i] = static_cast<float>(i % 7) * 0.25f;
  v.params()[0] = -0.0f;
  v.params()[1] = std::numeric_limits<float>::quiet_NaN();
  v.params()[2] = std::numeric_limits<float>::infinity();
  round_trip(v);
  cz::magnitude_prune(v, 0.95);
  v.params()[v.param_count() - 1] = -0.0f;
  round_trip(v);
}

TEST_CASE("store: gap fillers", "[compress][store]") {
  std::vector<nn::NodePtr<float>> nodes;
  nodes.push_back(std::make_unique<nn::Dense<float>>(1000, 1, false));
  auto mr = Model::create(Shape{1000, 1, 1}, std::move(nodes));
  REQUIRE(mr.ok());
  Model m = std::move(mr).value();
  m.params()[0] = 1.5f;
  m.params()[999] = -2.0f;
  cz::StoreOptions o;
  o.max_gaps = {7};
  o.allow_clustered = false;
  auto r = round_trip(m, o);
  REQUIRE(r.tensors[0].encoding == Enc::sparse);
  // Gap 998 with max gap 7: 124 fillers of 8 positions each, then gap 6.
  CHECK(r.tensors[0].fillers == 124);
  CHECK(r.tensors[0].entries == 126);
  o.allow_clustered = true;
  auto rc = round_trip(m, o);
  CHECK(rc.tensors[0].encoding == Enc::clustered_sparse);
  CHECK(rc.tensors[0].fillers == 124);
}

TEST_CASE("store: truncations and bit flips are rejected, model untouched", "[compress][store]") {
  Model m = tiny();
  cz::magnitude_prune(m, 0.5);
  auto c = cz::encode_compressed(m);
  REQUIRE(c.ok());
  const Bytes good = c->bytes;
  Model target = tiny();
  const Model before = target;
  for (std::size_t len = 0; len < good.size(); ++len) {
    Bytes b(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(len));
    CHECK_FALSE(cz::decode_compressed(target, b).ok());
  }
  for (std::size_t i = 0; i < good.size(); ++i) {
    for (int bit : {0, 7}) {
      Bytes b = good;
      b[i] = static_cast<std::uint8_t>(b[i] ^ (1U << bit));
      auto r = cz::decode_compressed(target, b);
      REQUIRE_FALSE(r.ok());
      if (i >= 24 && i + 4 < good.size()) CHECK(r.error().code == Errc::checksum_mismatch);
    }
  }
  CHECK(same_bits(target, before));
  Bytes longer = good;
  longer.push_back(0);
  CHECK_FALSE(cz::decode_compressed(target, longer).ok());
  CHECK(same_bits(target, before));
  REQUIRE(cz::decode_compressed(target, good).ok());
  CHECK(same_bits(target, m));
}

TEST_CASE("store: damaged content with a valid CRC is rejected", "[compress][store]") {
  // Control: a hand-made valid file decodes.
  {
    Model m = tiny();
    REQUIRE(cz::decode_compressed(m, tiny_file(0, dense_payload(12, 0.25f))).ok());
    CHECK(m.params()[0] == 0.25f);
  }
  // Header.
  {
    Bytes b = tiny_file(0, dense_payload(12));
    b[0] = 'X';
    expect_rejected(b, Errc::bad_magic, "bad magic");
  }
  {
    ByteWriter r;
    expect_rejected(seal(r, 0, 2), Errc::bad_version, "version 2");
  }
  // Tensor count, names, dims, encoding, payload length vs the model.
  {
    ByteWriter r;
    record(r, "0.weight", {3, 4}, 0, dense_payload(12));
    expect_rejected(seal(r, 1), Errc::shape_mismatch, "1 tensors stored, the model has 2");
  }
  {
    ByteWriter r;
    record(r, "0.bias", {3}, 0, dense_payload(3));
    record(r, "0.weight", {3, 4}, 0, dense_payload(12));
    expect_rejected(seal(r, 2), Errc::shape_mismatch, "tensor 0 is '0.bias', the model expects '0.weight'");
  }
  {
    ByteWriter r;
    record(r, "0.weight", {4, 3}, 0, dense_payload(12));
    record(r, "0.bias", {3}, 0, dense_payload(3));
    expect_rejected(seal(r, 2), Errc::shape_mismatch, "tensor 0 '0.weight': stored dims 4x3");
  }
  {
    ByteWriter r;
    record(r, "0.weight", {3, 4, 1}, 0, dense_payload(12));
    record(r, "0.bias", {3}, 0, dense_payload(3));
    expect_rejected(seal(r, 2), Errc::shape_mismatch, "3 dims stored");
  }
  expect_rejected(tiny_file(9, dense_payload(12)), Errc::corrupt, "unknown encoding 9");
  expect_rejected(tiny_file(0, dense_payload(11)), Errc::truncated, "'0.weight': needs 48 bytes");
  expect_rejected(tiny_file(0, dense_payload(13)), Errc::corrupt, "4 unused bytes");
  {  // payload length larger than the file
    Bytes b = tiny_file(0, dense_payload(12));
    ByteWriter r;
    r.str("0.weight");
    r.u8(2);
    r.u32(3);
    r.u32(4);
    r.u8(0);
    r.u32(0xFFFFFFF0U);
    expect_rejected(seal(r, 2), Errc::truncated, "payload needs 4294967280 bytes");
  }
  // Sparse: huge entry count, gap limit, gap overflow.
  {
    ByteWriter p;
    p.u16(15);
    p.u32(0xFFFFFFFFU);
    expect_rejected(tiny_file(1, p.bytes()), Errc::limit_exceeded, "4294967295 sparse entries for 12 elements");
  }
  {
    ByteWriter p;
    p.u16(60000);
    p.u32(1);
    expect_rejected(tiny_file(1, p.bytes()), Errc::limit_exceeded, "max gap 60000");
  }
  {
    ByteWriter p;
    p.u16(15);
    p.u32(2);
    cz::huffman_write_block(p, {5, 9}, 16);  // positions 5, then 15 >= 12
    p.f32(1.0f);
    p.f32(2.0f);
    expect_rejected(tiny_file(1, p.bytes()), Errc::corrupt, "gap overflow: entry 1 lands at position 15 of 12");
  }
  {  // values missing
    ByteWriter p;
    p.u16(15);
    p.u32(2);
    cz::huffman_write_block(p, {1, 1}, 16);
    p.f32(1.0f);
    expect_rejected(tiny_file(1, p.bytes()), Errc::truncated, "sparse values need 8 bytes");
  }
  // Clustered: codebook size limits, index out of range, huge Huffman stream.
  {
    ByteWriter p;
    p.u16(0);
    expect_rejected(tiny_file(2, p.bytes()), Errc::limit_exceeded, "codebook size 0");
  }
  {
    ByteWriter p;
    p.u16(300);
    expect_rejected(tiny_file(2, p.bytes()), Errc::limit_exceeded, "codebook size 300");
  }
  {
    ByteWriter p;
    p.u16(4);
    p.f32(1.0f);
    expect_rejected(tiny_file(2, p.bytes()), Errc::truncated, "codebook needs 16 bytes");
  }
  {
    ByteWriter p;
    p.u16(2);
    p.f32(1.0f);
    p.f32(2.0f);
    cz::huffman_write_block(p, {0, 1, 0, 1, 0, 1, 2, 0, 1, 0, 1, 0}, 3);
    expect_rejected(tiny_file(2, p.bytes()), Errc::corrupt, "codebook index 2 at element 6 out of range");
  }
  {  // clustered sparse: index k is the filler, k + 1 is out of range
    ByteWriter p;
    p.u16(15);
    p.u32(2);
    cz::huffman_write_block(p, {0, 0}, 16);
    p.u16(1);
    p.f32(3.0f);
    cz::huffman_write_block(p, {1, 2}, 3);
    expect_rejected(tiny_file(3, p.bytes()), Errc::corrupt, "codebook index 2 at entry 1 out of range");
  }
  {
    ByteWriter p;
    p.u16(2);
    p.f32(1.0f);
    p.f32(2.0f);
    p.u16(2);
    p.u8(0x08);  // lengths 1, 1
    p.u8(0);
    p.u32(1);    // one stream byte for 12 symbols
    p.u8(0);
    expect_rejected(tiny_file(2, p.bytes()), Errc::corrupt, "12 symbols cannot fit in a 1-byte stream");
  }
  {
    ByteWriter p;
    p.u16(2);
    p.f32(1.0f);
    p.f32(2.0f);
    p.u16(2);
    p.u8(0x10);  // lengths 2, 0: incomplete code
    p.u8(0);
    p.u32(3);
    p.u8(0);
    p.u8(0);
    p.u8(0);
    expect_rejected(tiny_file(2, p.bytes()), Errc::corrupt, "incomplete");
  }
}
