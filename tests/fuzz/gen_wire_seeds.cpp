// tests/fuzz/gen_wire_seeds.cpp — writes the seed corpus of fuzz_wire into the
// directory given as argv[1]: one stream per message type (a valid frame),
// a stream of every type in turn, a module sent in three chunks and a stream
// ending mid-frame. Byte 0 of each seed is the harness's split seed. Sizes
// stay within fuzz_wire's limits. Built with the project compiler.
#include "fleetdl/wire.hpp"

#include <cstdio>
#include <cstdint>
#include <string>
#include <vector>

namespace w = fleetdl::wire;
using Bytes = std::vector<std::uint8_t>;

namespace {

std::vector<w::Message> samples() {
  std::vector<w::Message> m;
  w::Hello hello;
  hello.agent_name = "pi-zero";
  hello.features = w::feature::train;
  hello.cores = 1;
  hello.ram_bytes = 512U << 20;
  hello.mac_per_s = 1e8;
  hello.link_bytes_per_s = 1e6;
  m.emplace_back(hello);
  m.emplace_back(w::HelloAck{1, 12, 1000});
  m.emplace_back(w::Enroll{"token", "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"});
  m.emplace_back(w::EnrollAck{12, "CERT", "CA"});
  w::AssignChunk c;
  c.module_id = 1;
  c.kind = w::ModuleKind::micro_blob;
  c.total_bytes = 3;
  c.data = {1, 2, 3};
  c.module_crc = fleetdl::crc32(c.data.data(), 3);
  m.emplace_back(c);
  m.emplace_back(w::AssignResult{1, true, 0, "", 1000, 2000});
  w::TrainRound t;
  t.config.codec = w::CodecId::topk_pairs;
  t.parameters = {1, 2, 3, 4};
  t.config.partition_spec = R"({"kind":"iid"})";
  t.config.shard_index = 1;
  t.config.shard_count = 3;
  m.emplace_back(t);
  w::TrainRound ts = t;  // SCAFFOLD: with the server control variate
  ts.config.flags = w::round_flag::scaffold | w::round_flag::loss_before;
  ts.config.momentum = 0.9f;
  ts.config.weight_decay = 1e-4f;
  ts.server_control = {0.5f, -0.5f, 0, 1};
  m.emplace_back(ts);
  w::Update u;
  u.example_count = 10;
  u.local_steps = 2;
  u.delta = {0, 0, 0x80, 0x3f};
  u.accuracy = 0.5;
  m.emplace_back(u);
  w::Update us = u;
  us.loss_before = 2.5;
  us.control_delta = {0.25f, 0, 0, -1};
  m.emplace_back(us);
  m.emplace_back(w::InferRequest{5, {1, 2, 2}, {1, 2, 3, 4}});
  m.emplace_back(w::InferResponse{5, 0.5, {2}, {0.25f, 0.75f}});
  m.emplace_back(w::Heartbeat{42});
  m.emplace_back(w::Metrics{{{"loss", 1.0}, {"acc", 0.5}}});
  m.emplace_back(w::ErrorNotice{w::CloseReason::replay, "seq 1 is not above 2"});
  m.emplace_back(w::Bye{0});
  return m;
}

bool append(Bytes& out, const w::Message& m, std::uint64_t seq) {
  auto f = w::encode_message(m, w::Binding{12, 3, static_cast<std::uint32_t>(seq / 3), seq});
  if (!f.ok()) {
    std::fprintf(stderr, "gen_wire_seeds: %s\n", f.error().message.c_str());
    return false;
  }
  out.insert(out.end(), f->begin(), f->end());
  return true;
}

bool write(const std::string& path, const Bytes& b) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  const bool ok = std::fwrite(b.data(), 1, b.size(), f) == b.size();
  return std::fclose(f) == 0 && ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: gen_wire_seeds DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  std::vector<Bytes> seeds;
  const auto msgs = samples();
  for (std::size_t i = 0; i < msgs.size(); ++i) {
    Bytes s{static_cast<std::uint8_t>(i * 17)};
    if (!append(s, msgs[i], i + 1)) return 1;
    seeds.push_back(s);
  }
  Bytes all{0x5a};
  for (std::size_t i = 0; i < msgs.size(); ++i)
    if (!append(all, msgs[i], 100 + i)) return 1;
  seeds.push_back(all);
  // A 10-byte module in chunks of 4, 4 and 2.
  const Bytes module = {10, 20, 30, 40, 50, 60, 70, 80, 90, 100};
  Bytes chunks{0x33};
  for (std::uint32_t i = 0; i < 3; ++i) {
    w::AssignChunk c;
    c.module_id = 8;
    c.kind = w::ModuleKind::fdl_model;
    c.chunk_index = i;
    c.chunk_count = 3;
    c.total_bytes = module.size();
    c.module_crc = fleetdl::crc32(module.data(), module.size());
    c.data.assign(module.begin() + 4 * i, module.begin() + std::min<std::size_t>(4 * i + 4, module.size()));
    if (!append(chunks, c, 10 + i)) return 1;
  }
  seeds.push_back(chunks);
  Bytes cut = all;
  cut.resize(cut.size() - 5);
  seeds.push_back(cut);
  for (std::size_t i = 0; i < seeds.size(); ++i) {
    const std::string path = dir + "/seed" + std::to_string(i) + ".fdlw";
    if (!write(path, seeds[i])) {
      std::fprintf(stderr, "gen_wire_seeds: cannot write %s\n", path.c_str());
      return 1;
    }
  }
  return 0;
}
