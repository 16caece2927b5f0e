// tests/fuzz/gen_fdl_seeds.cpp — writes small valid .fdl model files into the
// directory given as argv[1]: the seed corpus of fuzz_fdl (every node kind the
// format stores: conv, dense, BatchNorm, activations, pools, flatten,
// residual and concat, f32 and f64 weights, metadata). Built with the
// project compiler.
#include "fleetdl/io/fdl.hpp"
#include "fleetdl/nn/model.hpp"

#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace nn = fleetdl::nn;
using S = float;

namespace {

bool write(const std::string& dir, const std::string& name, const nn::Model<S>& m, fleetdl::io::DType dtype) {
  const auto bytes = fleetdl::io::encode_model(m, {{"seed", name}}, dtype);
  const std::string path = dir + "/" + name + ".fdl";
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return false;
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  return std::fclose(f) == 0 && ok;
}

nn::Model<S> build(const fleetdl::Shape& in, std::vector<nn::NodePtr<S>> nodes) {
  auto m = nn::Model<S>::create(in, std::move(nodes));
  if (!m) {
    std::fprintf(stderr, "gen_fdl_seeds: %s\n", m.error().message.c_str());
    std::exit(1);
  }
  m->init(3);
  return std::move(*m);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: gen_fdl_seeds DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  std::vector<std::pair<std::string, nn::Model<S>>> models;
  {  // conv, BN, ReLU, max-pool, flatten, dense
    std::vector<nn::NodePtr<S>> v;
    v.push_back(std::make_unique<nn::Conv2D<S>>(1, 2, 3, 1, 1));
    v.push_back(std::make_unique<nn::BatchNorm<S>>(2));
    v.push_back(nn::relu<S>());
    v.push_back(std::make_unique<nn::MaxPool2D<S>>(2));
    v.push_back(std::make_unique<nn::Flatten<S>>());
    v.push_back(std::make_unique<nn::Dense<S>>(2 * 3 * 3, 3));
    models.emplace_back("conv_bn_dense", build({1, 6, 6}, std::move(v)));
  }
  {  // residual block, average pool, global average pool, ReLU6
    nn::Sequential<S> body;
    body.add(std::make_unique<nn::Conv2D<S>>(2, 2, 3, 1, 1));
    body.add(nn::relu6<S>());
    std::vector<nn::NodePtr<S>> v;
    v.push_back(std::make_unique<nn::Conv2D<S>>(1, 2, 1));
    v.push_back(std::make_unique<nn::Residual<S>>(std::move(body)));
    v.push_back(std::make_unique<nn::AvgPool2D<S>>(2));
    v.push_back(std::make_unique<nn::GlobalAvgPool<S>>());
    models.emplace_back("residual_pools", build({1, 4, 4}, std::move(v)));
  }
  {  // concat of two branches, then dense
    nn::Sequential<S> a, b;
    a.add(std::make_unique<nn::Conv2D<S>>(1, 2, 1));
    b.add(std::make_unique<nn::Conv2D<S>>(1, 1, 3, 1, 1));
    std::vector<nn::Sequential<S>> branches;
    branches.push_back(std::move(a));
    branches.push_back(std::move(b));
    std::vector<nn::NodePtr<S>> v;
    v.push_back(std::make_unique<nn::Concat<S>>(std::move(branches)));
    v.push_back(std::make_unique<nn::Flatten<S>>());
    v.push_back(std::make_unique<nn::Dense<S>>(3 * 3 * 3, 2));
    models.emplace_back("concat_dense", build({1, 3, 3}, std::move(v)));
  }
  for (const auto& [name, m] : models) {
    if (!write(dir, name, m, fleetdl::io::DType::f32) || !write(dir, name + "_f64", m, fleetdl::io::DType::f64)) {
      std::fprintf(stderr, "gen_fdl_seeds: cannot write into %s\n", dir.c_str());
      return 1;
    }
  }
  return 0;
}
