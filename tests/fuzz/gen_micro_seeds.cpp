// tests/fuzz/gen_micro_seeds.cpp — writes valid micro model blobs (one per
// op kind and a few chains, one with encoded filters) into the directory given as argv[1]: the seed
// corpus of fuzz_micro_verifier. Built with the project compiler.
#include "fleetdl/micro/blob_writer.hpp"
#include "fleetdl/micro/verifier.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdint>
#include <string>
#include <vector>

namespace mi = fleetdl::micro;

namespace {

std::vector<std::int8_t> ramp(std::size_t n) {
  std::vector<std::int8_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::int8_t>(static_cast<int>(i * 29 % 255) - 127);
  return v;
}

// Pruned-looking weights: two of every three zero, for the encoded seed.
std::vector<std::int8_t> sparse(std::size_t n) {
  std::vector<std::int8_t> v = ramp(n);
  for (std::size_t i = 0; i < n; ++i)
    if (i % 3 != 0) v[i] = 0;
  return v;
}

// encoded: the filters use the zero-run Huffman encoding (micro/weight_codec.hpp).
std::vector<std::uint8_t> classifier(bool encoded = false) {
  mi::BlobWriter w;
  const auto x = w.activation({1, 6, 6, 2}, 0.05f, -3);
  const auto k = encoded ? w.constant_int8_encoded({3, 3, 3, 2}, 0.01f, sparse(54))
                         : w.constant_int8({3, 3, 3, 2}, 0.01f, ramp(54));
  const auto b = w.constant_int32({1, 1, 1, 3}, {100, -50, 7});
  const auto s = w.constant_float({1, 1, 1, 3}, {0.01f, 0.02f, 0.005f});
  const auto c = w.activation({1, 6, 6, 3}, 0.08f, -128);
  const auto p = w.activation({1, 3, 3, 3}, 0.08f, -128);
  const auto d = encoded ? w.constant_int8_encoded({4, 1, 1, 27}, 0.01f, sparse(108))
                         : w.constant_int8({4, 1, 1, 27}, 0.01f, ramp(108));
  const auto l = w.activation({1, 1, 1, 4}, 0.15f, 4);
  const auto y = w.activation({1, 1, 1, 4}, 1.0f / 256, -128);
  mi::ConvOptions o;
  o.padding = mi::Padding::same;
  o.activation = mi::Activation::relu;
  w.conv2d(x, k, b, s, c, o);
  w.max_pool2d(c, p);
  w.fully_connected(p, d, mi::kNoTensor, mi::kNoTensor, l);
  w.softmax(l, y);
  w.inputs({x});
  w.outputs({y});
  return w.finish();
}

std::vector<std::uint8_t> residual_concat() {
  mi::BlobWriter w;
  const auto x = w.activation({1, 4, 4, 2}, 0.04f, 7);
  const auto k = w.constant_int8({2, 1, 1, 2}, 0.01f, ramp(4));
  const auto y = w.activation({1, 4, 4, 2}, 0.04f, 7);
  const auto z = w.activation({1, 4, 4, 2}, 0.05f, -20);
  const auto dk = w.constant_int8({1, 3, 3, 4}, 0.02f, ramp(36));
  const auto d = w.activation({1, 4, 4, 4}, 0.05f, -20);
  const auto c = w.activation({1, 4, 4, 6}, 0.05f, -20);
  const auto g = w.activation({1, 1, 1, 6}, 0.05f, -20);
  const auto r = w.activation({1, 2, 3, 1}, 0.05f, -20);
  w.conv2d(x, k, mi::kNoTensor, mi::kNoTensor, y);
  w.add(x, y, z, mi::Activation::relu6);
  mi::ConvOptions o;
  o.padding = mi::Padding::same;
  w.depthwise_conv2d(z, dk, mi::kNoTensor, mi::kNoTensor, d, 2, o);
  w.concatenation({z, d}, c, 3);
  w.global_average_pool2d(c, g);
  w.reshape(g, r);
  w.inputs({x});
  w.outputs({r});
  return w.finish();
}

std::vector<std::uint8_t> pools() {
  mi::BlobWriter w;
  const auto x = w.activation({2, 5, 5, 3}, 0.1f, 0);
  const auto a = w.activation({2, 5, 5, 3}, 0.1f, 0);
  const auto m = w.activation({2, 2, 2, 3}, 0.1f, 0);
  mi::PoolOptions p;
  p.padding = mi::Padding::same;
  p.filter_h = p.filter_w = 3;
  p.stride_h = p.stride_w = 1;
  w.average_pool2d(x, a, p);
  w.max_pool2d(a, m);
  w.inputs({x});
  w.outputs({m, a});
  return w.finish();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: gen_micro_seeds DIR\n");
    return 2;
  }
  const std::vector<std::vector<std::uint8_t>> seeds = {classifier(), residual_concat(), pools(), classifier(true)};
  for (std::size_t i = 0; i < seeds.size(); ++i) {
    const std::string path = std::string(argv[1]) + "/seed" + std::to_string(i) + ".fdlmicro";
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr || std::fwrite(seeds[i].data(), 1, seeds[i].size(), f) != seeds[i].size() || std::fclose(f) != 0) {
      std::fprintf(stderr, "gen_micro_seeds: cannot write %s\n", path.c_str());
      return 1;
    }
    std::vector<std::uint8_t> copy(seeds[i].size() + 16);  // verify needs 16-byte alignment
    std::uint8_t* p = copy.data() + (16 - reinterpret_cast<std::uintptr_t>(copy.data()) % 16) % 16;
    std::copy(seeds[i].begin(), seeds[i].end(), p);
    const auto r = mi::verify(p, seeds[i].size());
    if (!r) {
      std::fprintf(stderr, "gen_micro_seeds: seed %zu invalid: %s (index %u)\n", i, r.message, r.index);
      return 1;
    }
  }
  return 0;
}
