// tests/unit/test_wire.cpp — wire/: the frame format pinned by hand-written
// golden bytes; a round trip of every message type through a frame, the
// stream decoder and decode_message; the same stream fed one byte at a time
// and in seeded random splits; a table of malformed frames, one row per close
// reason, and a table of malformed payloads for every message type, each
// naming its field; the decoder staying failed; no heap in the decoder, the
// views and the buffer encoders; ReplayGuard (replay, duplicate update,
// independent streams, window, capacity) and ChunkAssembler (in order, out
// of order, repeat, totals, CRC, oversized module at the first chunk).
#include "fleetdl/fl/codec.hpp"
#include "fleetdl/wire.hpp"

#include "heap_counter.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

namespace w = fleetdl::wire;
using Bytes = std::vector<std::uint8_t>;
using fleetdl::ByteWriter;
using w::CloseReason;
using w::FeedStatus;
using w::MessageType;

// The frame of w::Heartbeat{0x1122334455667788} with binding device
// 0x0102030405060708, run 9, round 3, seq 42, written field by field from
// the layout in docs/wire.md. The CRC-32 was computed independently
// (Python's zlib.crc32 over the 48 bytes before it).
const Bytes kGoldenHeartbeat = {
    0x46, 0x44, 0x4c, 0x57,                          // magic "FDLW"
    0x01,                                            // version 1
    0x0b,                                            // type 11 heartbeat
    0x00, 0x00,                                      // flags
    0x08, 0x00, 0x00, 0x00,                          // payload length 8
    0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,  // device
    0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // run 9
    0x03, 0x00, 0x00, 0x00,                          // round 3
    0x2a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq 42
    0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,  // clock_ms
    0x50, 0xe1, 0xbd, 0x67,                          // CRC-32 0x67bde150
};

const w::Binding kGoldenBinding{0x0102030405060708ULL, 9, 3, 42};

struct Decoded {
  w::FrameHeader header;
  Bytes payload;
};

// Feed `stream` to `dec` in the pieces given by `splits` (sizes, cycled),
// collecting every frame. Returns the last status.
FeedStatus feed_all(w::FrameDecoder& dec, const Bytes& stream, const std::vector<std::size_t>& splits,
                    std::vector<Decoded>& out, w::FeedResult* last = nullptr) {
  std::size_t pos = 0, k = 0;
  FeedStatus status = FeedStatus::need_more;
  while (pos < stream.size()) {
    const std::size_t piece = std::min(splits[k++ % splits.size()], stream.size() - pos);
    std::span<const std::uint8_t> in(stream.data() + pos, piece);
    while (!in.empty()) {
      const w::FeedResult r = dec.feed(in);
      REQUIRE(r.consumed <= in.size());
      in = in.subspan(r.consumed);
      pos += r.consumed;
      status = r.status;
      if (last != nullptr) *last = r;
      if (r.status == FeedStatus::frame) {
        out.push_back({r.frame.header, Bytes(r.frame.payload.begin(), r.frame.payload.end())});
      } else if (r.status == FeedStatus::closed) {
        return status;
      } else {
        REQUIRE(in.empty());
      }
    }
  }
  return status;
}

Bytes payload_of(const Bytes& frame) {
  return Bytes(frame.begin() + w::kHeaderBytes, frame.end() - w::kCrcBytes);
}

void put_u32(Bytes& b, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(v >> (8 * i));
}

void reseal(Bytes& frame) {
  const std::size_t n = frame.size() - w::kCrcBytes;
  put_u32(frame, n, fleetdl::crc32(frame.data(), n));
}

std::vector<w::Message> sample_messages() {
  std::vector<w::Message> m;
  w::Hello hello;
  hello.agent_name = "rpi4-kitchen";
  hello.features = w::feature::train | w::feature::float_inference;
  hello.cores = 4;
  hello.ram_bytes = 4ULL << 30;
  hello.storage_bytes = 32ULL << 30;
  hello.mac_per_s = 2.5e9;
  hello.link_bytes_per_s = 1.2e7;
  hello.memory_budget_bytes = 512ULL << 20;
  m.emplace_back(hello);
  m.emplace_back(w::HelloAck{1, 77, 2500});
  m.emplace_back(w::Enroll{"device-token-17", "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"});
  m.emplace_back(w::EnrollAck{77, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                              "-----BEGIN CERTIFICATE-----\nCACA\n-----END CERTIFICATE-----\n"});
  w::AssignChunk chunk;
  chunk.module_id = 5;
  chunk.kind = w::ModuleKind::micro_blob;
  chunk.chunk_index = 1;
  chunk.chunk_count = 3;
  chunk.total_bytes = 10;
  chunk.module_crc = 0xDEADBEEF;
  chunk.data = {1, 2, 3, 4};
  m.emplace_back(chunk);
  m.emplace_back(w::AssignResult{5, false, 3, "peak memory 900 KiB exceeds the 512 KiB budget", 921600, 524288});
  w::TrainRound train;
  train.config.strategy_id = 2;
  train.config.local_epochs = 3;
  train.config.batch_size = 16;
  train.config.learning_rate = 0.05f;
  train.config.momentum = 0.9f;
  train.config.weight_decay = 5e-4f;
  train.config.proximal_mu = 0.01f;
  train.config.flags = w::round_flag::scaffold | w::round_flag::loss_before;
  train.config.codec = w::CodecId::quant8;
  train.config.deadline_ms = 30000;
  train.config.seed = 0xFEEDFACECAFEBEEFULL;
  train.config.example_limit = 600;
  train.config.partition_spec = R"({"kind": "dirichlet", "alpha": 0.3})";
  train.config.shard_index = 7;
  train.config.shard_count = 20;
  train.config.partition_seed = 42;
  train.config.train_limit = 12000;
  train.parameters = {0.5f, -1.25f, 3.0e-8f, 0.0f, -0.0f, 1e30f};
  train.server_control = {0.0f, 0.125f, -0.5f, 1e-6f, 2.0f, -0.0f};
  m.emplace_back(train);
  w::Update update;
  update.example_count = 600;
  update.local_steps = 114;
  update.codec = w::CodecId::fp16;
  update.delta = {'F', 'C', 1, 1, 2, 0, 0, 0, 0x00, 0x3c, 0x00, 0xc0};
  update.loss_before = 2.3026;
  update.loss = 0.4321;
  update.accuracy = 0.875;
  update.compute_ms = 1234.5;
  update.peak_memory_bytes = 3 << 20;
  update.bytes_received = 1 << 20;
  update.control_delta = {0.25f, -0.75f};
  m.emplace_back(update);
  m.emplace_back(w::InferRequest{99, {1, 2, 3}, {1, 2, 3, 4, 5, -6.5f}});
  m.emplace_back(w::InferResponse{99, 4.25, {1, 10}, {0.1f, 0.2f, 0.0f, 0.05f, 0.05f, 0.1f, 0.1f, 0.1f, 0.2f, 0.1f}});
  m.emplace_back(w::Heartbeat{123456789});
  m.emplace_back(w::Metrics{{{"loss", 0.25}, {"battery_pct", 81}, {"temp_c", -4.5}}});
  m.emplace_back(w::ErrorNotice{CloseReason::unexpected_message, "train_round before hello_ack"});
  m.emplace_back(w::Bye{0});
  return m;
}

w::Binding binding_for(std::size_t i) { return w::Binding{77, 3, static_cast<std::uint32_t>(i / 4), 1000 + i}; }

}  // namespace

// ---------------------------------------------------------------------------
// Format pinned by hand-written bytes

TEST_CASE("wire: golden heartbeat frame", "[wire]") {
  auto enc = w::encode_message(w::Heartbeat{0x1122334455667788ULL}, kGoldenBinding);
  REQUIRE(enc.ok());
  CHECK(*enc == kGoldenHeartbeat);

  std::uint8_t buf[64];
  Bytes into(kGoldenHeartbeat.size() + 7);
  auto n = w::encode_message_into(into, w::Heartbeat{0x1122334455667788ULL}, kGoldenBinding);
  REQUIRE(n.ok());
  REQUIRE(*n == kGoldenHeartbeat.size());
  into.resize(*n);
  CHECK(into == kGoldenHeartbeat);

  w::FrameDecoder dec(buf);
  const w::FeedResult r = dec.feed(kGoldenHeartbeat);
  REQUIRE(r.status == FeedStatus::frame);
  CHECK(r.consumed == kGoldenHeartbeat.size());
  CHECK(r.frame.header.type == MessageType::heartbeat);
  CHECK(r.frame.header.payload_bytes == 8);
  CHECK(r.frame.header.binding == kGoldenBinding);
  auto msg = w::decode_message(r.frame);
  REQUIRE(msg.ok());
  REQUIRE(std::holds_alternative<w::Heartbeat>(*msg));
  CHECK(std::get<w::Heartbeat>(*msg).clock_ms == 0x1122334455667788ULL);
  CHECK(dec.finish().ok());
}

TEST_CASE("wire: golden payloads of hello_ack and infer_request", "[wire]") {
  // hello_ack: u16 version 1, u64 device 7, u32 heartbeat 500 ms.
  const Bytes ack = {0x01, 0x00, 0x07, 0, 0, 0, 0, 0, 0, 0, 0xf4, 0x01, 0x00, 0x00};
  auto enc = w::encode_message(w::HelloAck{1, 7, 500}, w::Binding{});
  REQUIRE(enc.ok());
  CHECK(payload_of(*enc) == ack);
  // infer_request: u64 id 2, u8 rank 2, u32 dims 1 and 2, f32 1.0 and -2.0.
  const Bytes req = {0x02, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x01, 0, 0, 0, 0x02, 0, 0, 0,
                     0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0};
  auto enc2 = w::encode_message(w::InferRequest{2, {1, 2}, {1.0f, -2.0f}}, w::Binding{});
  REQUIRE(enc2.ok());
  CHECK(payload_of(*enc2) == req);
  auto back = w::InferRequest::decode(req);
  REQUIRE(back.ok());
  CHECK(back->values == std::vector<float>{1.0f, -2.0f});
}

TEST_CASE("wire: golden payloads of train_round and update", "[wire]") {
  w::TrainRound t;
  t.config.strategy_id = 6;
  t.config.local_epochs = 2;
  t.config.batch_size = 32;
  t.config.learning_rate = 0.5f;
  t.config.momentum = 0.25f;
  t.config.weight_decay = 0.0f;
  t.config.proximal_mu = 1.0f;
  t.config.flags = w::round_flag::scaffold;
  t.config.codec = w::CodecId::fp16;
  t.config.deadline_ms = 1000;
  t.config.seed = 5;
  t.config.example_limit = 0;
  t.config.partition_spec = "{}";
  t.config.shard_index = 1;
  t.config.shard_count = 4;
  t.config.partition_seed = 9;
  t.config.train_limit = 200;
  t.config.topk_fraction = 0.25f;
  t.config.dp_clip = 2.0f;
  t.config.dp_noise_multiplier = 0.5f;
  t.parameters = {1.0f};
  t.server_control = {-2.0f};
  const Bytes round = {
      0x06, 0x00,                                      // strategy_id 6
      0x02, 0x00, 0x00, 0x00,                          // local_epochs 2
      0x20, 0x00, 0x00, 0x00,                          // batch_size 32
      0x00, 0x00, 0x00, 0x3f,                          // learning_rate 0.5
      0x00, 0x00, 0x80, 0x3e,                          // momentum 0.25
      0x00, 0x00, 0x00, 0x00,                          // weight_decay 0
      0x00, 0x00, 0x80, 0x3f,                          // proximal_mu 1
      0x01,                                            // flags: scaffold
      0x01,                                            // codec_id fp16
      0xe8, 0x03, 0x00, 0x00,                          // deadline_ms 1000
      0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seed 5
      0x00, 0x00, 0x00, 0x00,                          // example_limit 0
      0x01,                                            // dataset_id fashion-mnist
      0x02, 0x00, '{', '}',                            // partition_spec "{}"
      0x01, 0x00, 0x00, 0x00,                          // shard_index 1
      0x04, 0x00, 0x00, 0x00,                          // shard_count 4
      0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // partition_seed 9
      0xc8, 0x00, 0x00, 0x00,                          // train_limit 200
      0x00, 0x00, 0x80, 0x3e,                          // topk_fraction 0.25
      0x00, 0x00, 0x00, 0x40,                          // dp_clip 2
      0x00, 0x00, 0x00, 0x3f,                          // dp_noise_multiplier 0.5
      0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x3f,  // param_count 1, 1.0
      0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0,  // control_count 1, -2.0
  };
  auto enc = w::encode_message(t, w::Binding{});
  REQUIRE(enc.ok());
  CHECK(payload_of(*enc) == round);
  auto back = w::TrainRound::decode(round);
  REQUIRE(back.ok());
  CHECK(*back == t);
  CHECK(back->config.scaffold());
  CHECK_FALSE(back->config.loss_before());

  w::Update u;
  u.example_count = 3;
  u.local_steps = 4;
  u.codec = w::CodecId::raw_f32;
  u.delta = {0x00, 0x00, 0x80, 0x3f};
  u.loss_before = 2.0;
  u.loss = 0.5;
  u.accuracy = 1.0;
  u.compute_ms = 0.0;
  u.peak_memory_bytes = 0x100;
  u.bytes_received = 7;
  u.control_delta = {0.5f};
  const Bytes upd = {
      0x03, 0x00, 0x00, 0x00,                          // example_count 3
      0x04, 0x00, 0x00, 0x00,                          // local_steps 4
      0x00,                                            // codec_id raw f32
      0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x3f,  // delta: 4 bytes
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40,  // loss_before 2.0
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xe0, 0x3f,  // loss 0.5
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf0, 0x3f,  // accuracy 1.0
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // compute_ms 0
      0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // peak_memory_bytes 256
      0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // bytes_received 7
      0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3f,  // control_count 1, 0.5
  };
  auto enc2 = w::encode_message(u, w::Binding{});
  REQUIRE(enc2.ok());
  CHECK(payload_of(*enc2) == upd);
  auto back2 = w::Update::decode(upd);
  REQUIRE(back2.ok());
  CHECK(*back2 == u);
}

TEST_CASE("wire: header constants and type values are stable", "[wire]") {
  CHECK(w::kHeaderBytes == 40);
  CHECK(w::frame_bytes(0) == 44);
  const std::pair<MessageType, int> values[] = {
      {MessageType::hello, 1},         {MessageType::hello_ack, 2},      {MessageType::enroll, 3},
      {MessageType::enroll_ack, 4},    {MessageType::assign_chunk, 5},   {MessageType::assign_result, 6},
      {MessageType::train_round, 7},   {MessageType::update, 8},         {MessageType::infer_request, 9},
      {MessageType::infer_response, 10}, {MessageType::heartbeat, 11},   {MessageType::metrics, 12},
      {MessageType::error, 13},        {MessageType::bye, 14}};
  for (const auto& [t, v] : values) {
    CAPTURE(v);
    CHECK(static_cast<int>(t) == v);
    CHECK(std::string(w::message_type_name(t)) != "unknown");
  }
  CHECK(static_cast<int>(CloseReason::bad_magic) == 1);
  CHECK(static_cast<int>(CloseReason::malformed_payload) == 8);
  CHECK(static_cast<int>(CloseReason::duplicate) == 12);
  CHECK(std::string(w::close_reason_name(CloseReason::bad_chunk_order)) == "bad_chunk_order");
  CHECK(std::string(w::close_reason_name(static_cast<CloseReason>(999))) == "unknown");
  // The update codec ids mirror fl::CodecKind.
  namespace fl = fleetdl::fl;
  CHECK(static_cast<int>(w::CodecId::fp16) == static_cast<int>(fl::CodecKind::fp16));
  CHECK(static_cast<int>(w::CodecId::topk_pairs) == static_cast<int>(fl::CodecKind::topk_pairs));
  CHECK(static_cast<int>(w::CodecId::topk_bitmap) == static_cast<int>(fl::CodecKind::topk_bitmap));
  CHECK(static_cast<int>(w::CodecId::quant2) == static_cast<int>(fl::CodecKind::quant2));
  CHECK(static_cast<int>(w::CodecId::quant4) == static_cast<int>(fl::CodecKind::quant4));
  CHECK(static_cast<int>(w::CodecId::quant8) == static_cast<int>(fl::CodecKind::quant8));
}

TEST_CASE("wire: default and micro limits let their largest messages fit a frame", "[wire]") {
  for (const w::Limits& l : {w::Limits{}, w::micro_limits()}) {
    // train_round: 79 bytes of config, the partition spec, u32 count,
    // count x 4, u32 control count (0 without SCAFFOLD).
    CHECK(87 + std::uint64_t{l.max_partition_spec_bytes} + 4ULL * l.max_train_params <= l.max_frame_payload);
    // assign_chunk: 29 bytes of fields, u32 length, data.
    CHECK(33 + std::uint64_t{l.max_chunk_bytes} <= l.max_frame_payload);
    // infer_response: 8 + 8 + 1 + kMaxDims x 4 + values.
    CHECK(17 + 4ULL * w::kMaxDims + 4ULL * l.max_activations <= l.max_frame_payload);
  }
  // The real thing at the default limit: 2'000'000 parameters in one frame.
  w::TrainRound big;
  big.config.partition_spec = std::string(w::Limits{}.max_partition_spec_bytes, ' ');
  big.parameters.assign(w::Limits{}.max_train_params, 0.25f);
  auto enc = w::encode_message(big, w::Binding{1, 1, 1, 1});
  REQUIRE(enc.ok());
  CHECK(enc->size() == w::frame_bytes(87 + big.config.partition_spec.size() + 4ULL * big.parameters.size()));
  Bytes buf(w::Limits{}.max_frame_payload);
  w::FrameDecoder dec(buf);
  const auto r = dec.feed(*enc);
  REQUIRE(r.status == FeedStatus::frame);
  auto back = w::TrainRound::decode(r.frame.payload);
  REQUIRE(back.ok());
  CHECK(back->parameters.size() == big.parameters.size());
  big.parameters.push_back(0.0f);
  auto too_many = w::encode_message(big, w::Binding{});
  REQUIRE(!too_many.ok());
  CHECK(too_many.error().message.find("max_train_params") != std::string::npos);
}

// ---------------------------------------------------------------------------
// Round trips

TEST_CASE("wire: every message type round-trips through a frame", "[wire]") {
  const auto msgs = sample_messages();
  REQUIRE(msgs.size() == 14);
  Bytes buf(1 << 16);
  for (std::size_t i = 0; i < msgs.size(); ++i) {
    const auto type = w::message_type(msgs[i]);
    CAPTURE(w::message_type_name(type));
    CHECK(static_cast<std::size_t>(type) == i + 1);
    const w::Binding b = binding_for(i);
    auto enc = w::encode_message(msgs[i], b);
    REQUIRE(enc.ok());
    // The caller-buffer encoder writes the same bytes.
    Bytes into(enc->size());
    auto n = std::visit([&](const auto& m) { return w::encode_message_into(into, m, b); }, msgs[i]);
    REQUIRE(n.ok());
    CHECK(*n == enc->size());
    CHECK(into == *enc);

    w::FrameDecoder dec(buf);
    const auto r = dec.feed(*enc);
    REQUIRE(r.status == FeedStatus::frame);
    CHECK(r.consumed == enc->size());
    CHECK(r.frame.header.type == type);
    CHECK(r.frame.header.binding == b);
    auto back = w::decode_message(r.frame);
    REQUIRE(back.ok());
    CHECK(*back == msgs[i]);
    // And re-encoding the decoded message gives the same frame.
    auto again = w::encode_message(*back, b);
    REQUIRE(again.ok());
    CHECK(*again == *enc);
  }
}

TEST_CASE("wire: views decode assign_chunk and activations in place", "[wire]") {
  const auto msgs = sample_messages();
  const auto& chunk = std::get<w::AssignChunk>(msgs[4]);
  auto enc = w::encode_message(chunk, w::Binding{});
  REQUIRE(enc.ok());
  const Bytes p = payload_of(*enc);
  auto v = w::AssignChunk::decode_view(p);
  REQUIRE(v.ok());
  CHECK(v->module_id == 5);
  CHECK(v->kind == w::ModuleKind::micro_blob);
  CHECK(v->data.data() == p.data() + p.size() - 4);  // in place
  CHECK(Bytes(v->data.begin(), v->data.end()) == chunk.data);

  const auto& resp = std::get<w::InferResponse>(msgs[9]);
  auto enc2 = w::encode_message(resp, w::Binding{});
  REQUIRE(enc2.ok());
  const Bytes p2 = payload_of(*enc2);
  auto av = w::InferResponse::decode_view(p2);
  REQUIRE(av.ok());
  CHECK(av->request_id == 99);
  CHECK(av->compute_ms == 4.25);
  CHECK(av->rank == 2);
  CHECK(av->dims[0] == 1);
  CHECK(av->dims[1] == 10);
  REQUIRE(av->count() == 10);
  for (std::size_t i = 0; i < 10; ++i) CHECK(av->value(i) == resp.values[i]);

  // InferResponseRef encodes the same bytes from spans.
  w::InferResponseRef ref{resp.request_id, resp.compute_ms, resp.dims, resp.values};
  Bytes into(enc2->size());
  auto n = w::encode_message_into(into, ref, w::Binding{});
  REQUIRE(n.ok());
  CHECK(into == *enc2);
}

TEST_CASE("wire: a stream of frames decodes the same in any split", "[wire]") {
  const auto msgs = sample_messages();
  Bytes stream;
  std::vector<Decoded> expected;
  for (std::size_t i = 0; i < msgs.size() * 2; ++i) {
    auto enc = w::encode_message(msgs[i % msgs.size()], binding_for(i));
    REQUIRE(enc.ok());
    w::FrameHeader h;
    h.type = w::message_type(msgs[i % msgs.size()]);
    h.payload_bytes = static_cast<std::uint32_t>(enc->size() - w::kFrameOverhead);
    h.binding = binding_for(i);
    expected.push_back({h, payload_of(*enc)});
    stream.insert(stream.end(), enc->begin(), enc->end());
  }
  const auto same = [&](const std::vector<Decoded>& got) {
    REQUIRE(got.size() == expected.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      CAPTURE(i);
      CHECK(got[i].header.type == expected[i].header.type);
      CHECK(got[i].header.payload_bytes == expected[i].header.payload_bytes);
      CHECK(got[i].header.binding == expected[i].header.binding);
      CHECK(got[i].payload == expected[i].payload);
    }
  };
  Bytes buf(4096);
  SECTION("whole stream at once") {
    w::FrameDecoder dec(buf);
    std::vector<Decoded> got;
    CHECK(feed_all(dec, stream, {stream.size()}, got) == FeedStatus::frame);
    same(got);
    CHECK(dec.frames() == expected.size());
    CHECK(dec.finish().ok());
  }
  SECTION("one byte at a time") {
    w::FrameDecoder dec(buf);
    std::vector<Decoded> got;
    feed_all(dec, stream, {1}, got);
    same(got);
    CHECK(dec.finish().ok());
  }
  SECTION("seeded random splits") {
    for (std::uint32_t seed = 1; seed <= 20; ++seed) {
      CAPTURE(seed);
      std::mt19937 gen(seed);
      std::uniform_int_distribution<std::size_t> len(1, 97);
      std::vector<std::size_t> splits(64);
      for (auto& s : splits) s = len(gen);
      w::FrameDecoder dec(buf);
      std::vector<Decoded> got;
      feed_all(dec, stream, splits, got);
      same(got);
      CHECK(dec.idle());
      CHECK(dec.finish().ok());
    }
  }
}

// ---------------------------------------------------------------------------
// Malformed frames: one row per close reason

TEST_CASE("wire: malformed frames close with a defined reason", "[wire]") {
  auto good = w::encode_message(w::Metrics{{{"loss", 0.5}}}, w::Binding{4, 5, 6, 7});
  REQUIRE(good.ok());
  const Bytes frame = *good;
  const std::size_t payload_len = frame.size() - w::kFrameOverhead;

  struct Row {
    const char* name;
    std::function<Bytes()> make;
    CloseReason reason;
    const char* needle;          // the message names this
    std::size_t consumed_at_most;  // bytes the decoder needed to decide
  };
  const std::vector<Row> rows = {
      {"bad magic", [&] { Bytes b = frame; b[0] = 'X'; return b; }, CloseReason::bad_magic, "magic", 1},
      {"bad magic 4th byte", [&] { Bytes b = frame; b[3] = 'X'; return b; }, CloseReason::bad_magic, "byte 3", 4},
      {"wrong version", [&] { Bytes b = frame; b[w::layout::kVersion] = 2; return b; }, CloseReason::bad_version,
       "version 2", 5},
      {"version 0", [&] { Bytes b = frame; b[w::layout::kVersion] = 0; return b; }, CloseReason::bad_version,
       "version 0", 5},
      {"unknown type 0", [&] { Bytes b = frame; b[w::layout::kType] = 0; return b; }, CloseReason::unknown_type,
       "type 0", 6},
      {"unknown type 15", [&] { Bytes b = frame; b[w::layout::kType] = 15; return b; }, CloseReason::unknown_type,
       "type 15", 6},
      {"nonzero flags", [&] { Bytes b = frame; b[w::layout::kFlags + 1] = 0x80; return b; }, CloseReason::bad_flags,
       "flags", 8},
      {"oversized length", [&] {
         Bytes b(frame.begin(), frame.begin() + w::kHeaderBytes);  // the header alone
         put_u32(b, w::layout::kLength, w::Limits{}.max_frame_payload + 1);
         return b;
       }, CloseReason::oversized, "max_frame_payload", 12},
      {"length 0xFFFFFFFF", [&] {
         Bytes b(frame.begin(), frame.begin() + w::kHeaderBytes);
         put_u32(b, w::layout::kLength, 0xFFFFFFFFU);
         return b;
       }, CloseReason::oversized, "payload length 4294967295", 12},
      {"bad CRC (payload byte flipped)", [&] { Bytes b = frame; b[w::kHeaderBytes + 3] ^= 0x01; return b; },
       CloseReason::bad_crc, "CRC-32", frame.size()},
      {"bad CRC (header byte flipped)", [&] { Bytes b = frame; b[w::layout::kSeq] ^= 0x01; return b; },
       CloseReason::bad_crc, "CRC-32", frame.size()},
      {"bad CRC (crc byte flipped)", [&] { Bytes b = frame; b.back() ^= 0x80; return b; }, CloseReason::bad_crc,
       "CRC-32", frame.size()},
      {"bad length (one too short)", [&] {
         Bytes b = frame;
         put_u32(b, w::layout::kLength, static_cast<std::uint32_t>(payload_len - 1));
         b.pop_back();  // the frame now ends one byte early: the CRC is read from the wrong place
         return b;
       }, CloseReason::bad_crc, "CRC-32", frame.size()},
  };
  Bytes buf(1 << 12);
  for (const Row& row : rows) {
    CAPTURE(row.name);
    const Bytes bytes = row.make();
    for (std::size_t split : {bytes.size(), std::size_t{1}, std::size_t{5}}) {
      CAPTURE(split);
      w::FrameDecoder dec(buf);
      std::vector<Decoded> got;
      w::FeedResult last;
      REQUIRE(feed_all(dec, bytes, {split}, got, &last) == FeedStatus::closed);
      CHECK(got.empty());
      CHECK(last.reason == row.reason);
      const std::string msg = last.message;
      CAPTURE(msg);
      CHECK(msg.find(row.needle) != std::string::npos);
      CHECK(msg.find('\n') == std::string::npos);
      CHECK(!msg.empty());
      CHECK(dec.failed());
      CHECK(dec.verdict().reason == row.reason);
      // Decided from the bytes up to the bad field: no more were consumed.
      std::size_t used = 0;
      {
        w::FrameDecoder again(buf);
        std::span<const std::uint8_t> in(bytes);
        const auto r = again.feed(in);
        REQUIRE(r.status == FeedStatus::closed);
        used = r.consumed;
      }
      CHECK(used <= row.consumed_at_most);
      // It stays failed: the next (valid) frame is refused with the same reason, nothing consumed.
      const auto r2 = dec.feed(frame);
      CHECK(r2.status == FeedStatus::closed);
      CHECK(r2.consumed == 0);
      CHECK(r2.reason == row.reason);
      CHECK(dec.finish().reason == row.reason);
    }
  }
}

TEST_CASE("wire: oversized is decided from the header, before any payload", "[wire]") {
  Bytes header(w::kHeaderBytes);
  w::write_header(header.data(), MessageType::train_round, w::Binding{1, 1, 1, 1}, 5000);
  SECTION("above max_frame_payload") {
    w::Limits l;
    l.max_frame_payload = 4096;
    Bytes buf(8192);
    w::FrameDecoder dec(buf, l);
    const auto r = dec.feed(header);
    REQUIRE(r.status == FeedStatus::closed);
    CHECK(r.reason == CloseReason::oversized);
    CHECK(r.consumed == w::layout::kLength + 4);  // stopped right after the length field
    CHECK(std::string(r.message).find("train_round") != std::string::npos);
    CHECK(std::string(r.message).find("5000 exceeds max_frame_payload 4096") != std::string::npos);
  }
  SECTION("above the caller's buffer") {
    Bytes buf(4999);
    w::FrameDecoder dec(buf);
    const auto r = dec.feed(header);
    REQUIRE(r.status == FeedStatus::closed);
    CHECK(r.reason == CloseReason::oversized);
    CHECK(r.consumed == w::layout::kLength + 4);
    CHECK(std::string(r.message).find("buffer of 4999 bytes") != std::string::npos);
  }
  SECTION("exactly the buffer is fine") {
    Bytes buf(5000);
    w::FrameDecoder dec(buf);
    const auto r = dec.feed(header);
    CHECK(r.status == FeedStatus::need_more);
    CHECK(r.consumed == header.size());
  }
}

TEST_CASE("wire: truncated streams fail at finish()", "[wire]") {
  auto good = w::encode_message(w::Heartbeat{1}, w::Binding{1, 1, 0, 1});
  REQUIRE(good.ok());
  Bytes buf(64);
  for (std::size_t cut : {std::size_t{1}, std::size_t{20}, w::kHeaderBytes, w::kHeaderBytes + 3, good->size() - 1}) {
    CAPTURE(cut);
    w::FrameDecoder dec(buf);
    const auto r = dec.feed(std::span<const std::uint8_t>(good->data(), cut));
    CHECK(r.status == FeedStatus::need_more);
    CHECK(!dec.idle());
    const w::Verdict& v = dec.finish();
    CHECK(v.reason == CloseReason::truncated);
    CHECK(std::string(v.message()).find("stream ended " + std::to_string(cut) + " bytes into the frame") !=
          std::string::npos);
    CHECK(dec.failed());
    CHECK(dec.feed(*good).status == FeedStatus::closed);
    dec.reset();
    CHECK(!dec.failed());
    CHECK(dec.feed(*good).status == FeedStatus::frame);
  }
  // Between frames the end of the stream is fine.
  w::FrameDecoder dec(buf);
  CHECK(dec.finish().ok());
  CHECK(dec.feed(*good).status == FeedStatus::frame);
  CHECK(dec.finish().ok());
}

// ---------------------------------------------------------------------------
// Malformed payloads of every message type

namespace {

struct PayloadRow {
  const char* name;
  MessageType type;
  std::function<void(ByteWriter&)> write;
  const char* needle;  // the field named in the message
};

void hello_head(ByteWriter& b, std::string_view name) {
  b.u16(1);
  b.str(name);
}
void hello_tail(ByteWriter& b, double mac = 1e9) {
  b.u32(0);
  b.u32(2);
  b.u64(1);
  b.u64(1);
  b.f64(mac);
  b.f64(1e6);
  b.u64(1);
}
void chunk_head(ByteWriter& b, std::uint8_t kind = 1, std::uint32_t index = 0, std::uint32_t count = 1,
                std::uint64_t total = 4) {
  b.u64(1);
  b.u8(kind);
  b.u32(index);
  b.u32(count);
  b.u64(total);
  b.u32(0);
}
// train_round up to (not including) param_count.
struct RoundHead {
  float lr = 0.1f;
  std::uint8_t codec = 0;
  float momentum = 0.0f;
  float weight_decay = 0.0f;
  std::uint8_t flags = 0;
  std::uint8_t dataset = 1;
  std::string spec = R"({"kind":"iid"})";
  std::uint32_t shard_index = 0;
  std::uint32_t shard_count = 1;
  float topk_fraction = 0.01f;
  float dp_clip = 0.0f;
  float dp_noise = 0.0f;
};
void round_head(ByteWriter& b, const RoundHead& h) {
  b.u16(0);
  b.u32(1);
  b.u32(8);
  b.f32(h.lr);
  b.f32(h.momentum);
  b.f32(h.weight_decay);
  b.f32(0.0f);
  b.u8(h.flags);
  b.u8(h.codec);
  b.u32(0);
  b.u64(0);
  b.u32(0);
  b.u8(h.dataset);
  b.str(h.spec);
  b.u32(h.shard_index);
  b.u32(h.shard_count);
  b.u64(0);
  b.u32(0);
  b.f32(h.topk_fraction);
  b.f32(h.dp_clip);
  b.f32(h.dp_noise);
}
void round_head(ByteWriter& b, float lr = 0.1f, std::uint8_t codec = 0) {
  RoundHead h;
  h.lr = lr;
  h.codec = codec;
  round_head(b, h);
}
// update from loss_before to bytes_received.
void update_tail(ByteWriter& b, double accuracy = 0.5, double loss_before = 0.0) {
  b.f64(loss_before);
  b.f64(0.1);
  b.f64(accuracy);
  b.f64(1.0);
  b.u64(0);
  b.u64(0);
}

}  // namespace

TEST_CASE("wire: malformed payloads of every message type are refused, naming the field", "[wire]") {
  const w::Limits l;
  const std::string long_name(l.max_string_bytes + 1, 'a');
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<PayloadRow> rows = {
      // hello
      {"hello name over limit", MessageType::hello, [&](ByteWriter& b) { hello_head(b, long_name); hello_tail(b); },
       "'agent_name' is 257 long, limit max_string_bytes 256"},
      {"hello name longer than payload", MessageType::hello, [](ByteWriter& b) { b.u16(1); b.u16(50); b.raw("abc", 3); },
       "'agent_name' declares 50 bytes, 3 left"},
      {"hello empty name", MessageType::hello, [](ByteWriter& b) { hello_head(b, ""); hello_tail(b); }, "'agent_name' is empty"},
      {"hello truncated", MessageType::hello, [](ByteWriter& b) { hello_head(b, "x"); b.u32(0); b.u16(2); },
       "payload ends inside 'cores' (needs 4 bytes, 2 left)"},
      {"hello trailing", MessageType::hello, [](ByteWriter& b) { hello_head(b, "x"); hello_tail(b); b.u8(0); },
       "1 trailing bytes"},
      {"hello non-finite mac", MessageType::hello, [&](ByteWriter& b) { hello_head(b, "x"); hello_tail(b, inf); },
       "'mac_per_s' is not finite"},
      {"hello unknown feature", MessageType::hello, [](ByteWriter& b) {
         hello_head(b, "x");
         b.u32(0x100);
         b.u32(2); b.u64(1); b.u64(1); b.f64(1); b.f64(1); b.u64(1);
       }, "'features'"},
      // hello_ack
      {"hello_ack device 0", MessageType::hello_ack, [](ByteWriter& b) { b.u16(1); b.u64(0); b.u32(100); }, "'device_id'"},
      {"hello_ack truncated", MessageType::hello_ack, [](ByteWriter& b) { b.u16(1); b.u64(3); }, "'heartbeat_interval_ms'"},
      // enroll
      {"enroll csr longer than payload", MessageType::enroll, [](ByteWriter& b) { b.str("tok"); b.u32(1000); b.raw("----", 4); },
       "'csr_pem' declares 1000 bytes, 4 left"},
      {"enroll csr over limit", MessageType::enroll, [&](ByteWriter& b) { b.str("tok"); b.u32(l.max_pem_bytes + 1); },
       "'csr_pem' is 16385 long, limit max_pem_bytes"},
      {"enroll empty token", MessageType::enroll, [](ByteWriter& b) { b.str(""); b.u32(1); b.u8('x'); }, "'token_identity' is empty"},
      // enroll_ack
      {"enroll_ack certificate over limit", MessageType::enroll_ack, [](ByteWriter& b) { b.u64(4); b.u32(0xFFFFFFFF); },
       "'certificate_pem' is 4294967295 long"},
      {"enroll_ack trailing", MessageType::enroll_ack, [](ByteWriter& b) {
         b.u64(4); b.u32(1); b.u8('c'); b.u32(1); b.u8('a'); b.u16(0);
       }, "2 trailing bytes"},
      // assign_chunk
      {"assign_chunk data over max_chunk_bytes", MessageType::assign_chunk, [&](ByteWriter& b) {
         chunk_head(b, 1, 0, 1, 1 << 20); b.u32(l.max_chunk_bytes + 1);
       }, "'data' is 65537 long, limit max_chunk_bytes"},
      {"assign_chunk data longer than payload", MessageType::assign_chunk, [](ByteWriter& b) {
         chunk_head(b); b.u32(4); b.u8(1);
       }, "'data' declares 4 bytes, 1 left"},
      {"assign_chunk index >= count", MessageType::assign_chunk, [](ByteWriter& b) {
         chunk_head(b, 1, 3, 3, 100); b.u32(1); b.u8(1);
       }, "'chunk_index' must be below chunk_count"},
      {"assign_chunk unknown kind", MessageType::assign_chunk, [](ByteWriter& b) {
         chunk_head(b, 9); b.u32(1); b.u8(1);
       }, "'kind'"},
      {"assign_chunk count 0", MessageType::assign_chunk, [](ByteWriter& b) {
         chunk_head(b, 1, 0, 0); b.u32(0);
       }, "'chunk_count' must be >= 1"},
      {"assign_chunk data beyond total", MessageType::assign_chunk, [](ByteWriter& b) {
         chunk_head(b, 1, 0, 1, 2); b.u32(3); b.raw("abc", 3);
       }, "'data' is longer than total_bytes"},
      // assign_result
      {"assign_result accepted = 2", MessageType::assign_result, [](ByteWriter& b) {
         b.u64(1); b.u8(2); b.u16(0); b.str(""); b.u64(0); b.u64(0);
       }, "'accepted' must be 0 or 1"},
      {"assign_result reason text over limit", MessageType::assign_result, [&](ByteWriter& b) {
         b.u64(1); b.u8(0); b.u16(0); b.str(long_name); b.u64(0); b.u64(0);
       }, "'reason_text' is 257 long"},
      // train_round
      {"train_round params over max_train_params", MessageType::train_round, [&](ByteWriter& b) {
         round_head(b); b.u32(l.max_train_params + 1);
       }, "'parameters' is 2000001 long, limit max_train_params 2000000"},
      {"train_round params beyond payload", MessageType::train_round, [](ByteWriter& b) {
         round_head(b); b.u32(3); b.f32(1); b.f32(2);
       }, "'parameters' declares 3 float32 values (12 bytes), 8 left"},
      {"train_round NaN parameter", MessageType::train_round, [&](ByteWriter& b) {
         round_head(b); b.u32(2); b.f32(1); b.f32(nan); b.u32(0);
       }, "'parameters' value 1 is not finite"},
      {"train_round zero learning rate", MessageType::train_round, [](ByteWriter& b) {
         round_head(b, 0.0f); b.u32(0); b.u32(0);
       }, "'learning_rate' must be > 0"},
      {"train_round unknown codec", MessageType::train_round, [](ByteWriter& b) {
         round_head(b, 0.1f, 7); b.u32(0); b.u32(0);
       }, "'codec_id' is not a known codec"},
      {"train_round trailing", MessageType::train_round, [](ByteWriter& b) {
         round_head(b); b.u32(1); b.f32(1); b.u32(0); b.u8(0);
       }, "1 trailing bytes"},
      {"train_round negative momentum", MessageType::train_round, [](ByteWriter& b) {
         RoundHead h; h.momentum = -0.5f; round_head(b, h); b.u32(0); b.u32(0);
       }, "'momentum' is negative"},
      {"train_round infinite weight decay", MessageType::train_round, [](ByteWriter& b) {
         RoundHead h; h.weight_decay = std::numeric_limits<float>::infinity(); round_head(b, h); b.u32(0); b.u32(0);
       }, "'weight_decay' is not finite"},
      {"train_round unknown flag", MessageType::train_round, [](ByteWriter& b) {
         RoundHead h; h.flags = 0x04; round_head(b, h); b.u32(0); b.u32(0);
       }, "'flags' has unknown bits set"},
      {"train_round unknown dataset", MessageType::train_round, [](ByteWriter& b) {
         RoundHead h; h.dataset = 2; round_head(b, h); b.u32(0); b.u32(0);
       }, "'dataset_id' is not a known dataset"},
      {"train_round empty partition spec", MessageType::train_round, [](ByteWriter& b) {
         RoundHead h; h.spec = ""; round_head(b, h); b.u32(0); b.u32(0);
       }, "'partition_spec' is empty"},
      {"train_round partition spec over limit", MessageType::train_round, [&](ByteWriter& b) {
         RoundHead h; h.spec = std::string(l.max_partition_spec_bytes + 1, ' '); round_head(b, h); b.u32(0); b.u32(0);
       }, "'partition_spec' is 1025 long, limit max_partition_spec_bytes 1024"},
      {"train_round shard index = count", MessageType::train_round, [](ByteWriter& b) {
         RoundHead h; h.shard_index = 3; h.shard_count = 3; round_head(b, h); b.u32(0); b.u32(0);
       }, "'shard_index' must be below shard_count"},
      {"train_round shard count 0", MessageType::train_round, [](ByteWriter& b) {
         RoundHead h; h.shard_index = 0; h.shard_count = 0; round_head(b, h); b.u32(0); b.u32(0);
       }, "'shard_count' must be >= 1"},
      {"train_round control count not param count", MessageType::train_round, [](ByteWriter& b) {
         round_head(b); b.u32(2); b.f32(1); b.f32(2); b.u32(1); b.f32(0);
       }, "'server_control' count must be 0 or param_count"},
      {"train_round control beyond payload", MessageType::train_round, [](ByteWriter& b) {
         round_head(b); b.u32(2); b.f32(1); b.f32(2); b.u32(2); b.f32(0);
       }, "'server_control' declares 2 float32 values (8 bytes), 4 left"},
      {"train_round NaN control", MessageType::train_round, [&](ByteWriter& b) {
         round_head(b); b.u32(1); b.f32(1); b.u32(1); b.f32(nan);
       }, "'server_control' value 0 is not finite"},
      {"train_round top-k fraction 0", MessageType::train_round, [](ByteWriter& b) {
         RoundHead h; h.topk_fraction = 0.0f; round_head(b, h); b.u32(0); b.u32(0);
       }, "'topk_fraction' must be in (0, 1]"},
      {"train_round top-k fraction above 1", MessageType::train_round, [](ByteWriter& b) {
         RoundHead h; h.topk_fraction = 1.5f; round_head(b, h); b.u32(0); b.u32(0);
       }, "'topk_fraction' must be in (0, 1]"},
      {"train_round negative DP clip", MessageType::train_round, [](ByteWriter& b) {
         RoundHead h; h.dp_clip = -1.0f; round_head(b, h); b.u32(0); b.u32(0);
       }, "'dp_clip' is negative"},
      {"train_round DP noise without a clip", MessageType::train_round, [](ByteWriter& b) {
         RoundHead h; h.dp_noise = 1.0f; round_head(b, h); b.u32(0); b.u32(0);
       }, "'dp_noise_multiplier' needs dp_clip > 0"},
      {"train_round NaN DP noise", MessageType::train_round, [&](ByteWriter& b) {
         RoundHead h; h.dp_clip = 1.0f; h.dp_noise = nan; round_head(b, h); b.u32(0); b.u32(0);
       }, "'dp_noise_multiplier' is not finite"},
      {"train_round missing control count", MessageType::train_round, [](ByteWriter& b) {
         round_head(b); b.u32(1); b.f32(1);
       }, "payload ends inside 'control_count'"},
      // update
      {"update delta beyond payload", MessageType::update, [](ByteWriter& b) {
         b.u32(10); b.u32(1); b.u8(1); b.u32(100); b.raw("FC", 2);
       }, "'delta' declares 100 bytes, 2 left"},
      {"update accuracy above 1", MessageType::update, [](ByteWriter& b) {
         b.u32(10); b.u32(1); b.u8(1); b.u32(0); update_tail(b, 1.5); b.u32(0);
       }, "'accuracy' is outside [0, 1]"},
      {"update truncated metrics", MessageType::update, [](ByteWriter& b) {
         b.u32(10); b.u32(1); b.u8(1); b.u32(0); b.f64(0.0); b.f64(0.1);
       }, "payload ends inside 'accuracy'"},
      {"update trailing", MessageType::update, [](ByteWriter& b) {
         b.u32(10); b.u32(1); b.u8(0); b.u32(0); update_tail(b); b.u32(0); b.u32(0);
       }, "4 trailing bytes"},
      {"update truncated local_steps", MessageType::update, [](ByteWriter& b) { b.u32(10); b.u16(1); },
       "payload ends inside 'local_steps' (needs 4 bytes, 2 left)"},
      {"update NaN loss_before", MessageType::update, [&](ByteWriter& b) {
         b.u32(10); b.u32(1); b.u8(0); b.u32(0); update_tail(b, 0.5, std::numeric_limits<double>::quiet_NaN()); b.u32(0);
       }, "'loss_before' is not finite"},
      {"update control over max_train_params", MessageType::update, [&](ByteWriter& b) {
         b.u32(10); b.u32(1); b.u8(0); b.u32(0); update_tail(b); b.u32(l.max_train_params + 1);
       }, "'control_delta' is 2000001 long, limit max_train_params 2000000"},
      {"update control beyond payload", MessageType::update, [](ByteWriter& b) {
         b.u32(10); b.u32(1); b.u8(0); b.u32(0); update_tail(b); b.u32(3); b.f32(1);
       }, "'control_delta' declares 3 float32 values (12 bytes), 4 left"},
      {"update infinite control", MessageType::update, [&](ByteWriter& b) {
         b.u32(10); b.u32(1); b.u8(0); b.u32(0); update_tail(b); b.u32(2); b.f32(1); b.f32(-std::numeric_limits<float>::infinity());
       }, "'control_delta' value 1 is not finite"},
      // infer_request
      {"infer_request rank 0", MessageType::infer_request, [](ByteWriter& b) { b.u64(1); b.u8(0); }, "'rank' must be 1 .. 8"},
      {"infer_request rank 9", MessageType::infer_request, [](ByteWriter& b) { b.u64(1); b.u8(9); }, "'rank' must be 1 .. 8"},
      {"infer_request zero dim", MessageType::infer_request, [](ByteWriter& b) { b.u64(1); b.u8(2); b.u32(1); b.u32(0); },
       "'dims' has a 0 dimension"},
      {"infer_request dims over max_activations", MessageType::infer_request, [](ByteWriter& b) {
         b.u64(1); b.u8(3); b.u32(65536); b.u32(65536); b.u32(65536);
       }, "'dims' hold more values than max_activations"},
      {"infer_request values beyond payload", MessageType::infer_request, [](ByteWriter& b) {
         b.u64(1); b.u8(1); b.u32(4); b.f32(1); b.f32(2);
       }, "'values' declares 4 float32 values (16 bytes), 8 left"},
      {"infer_request trailing", MessageType::infer_request, [](ByteWriter& b) {
         b.u64(1); b.u8(1); b.u32(1); b.f32(1); b.u8(0);
       }, "1 trailing bytes"},
      {"infer_request infinite value", MessageType::infer_request, [](ByteWriter& b) {
         b.u64(1); b.u8(1); b.u32(2); b.f32(1); b.f32(std::numeric_limits<float>::infinity());
       }, "'values' value 1 is not finite"},
      // infer_response
      {"infer_response negative compute_ms", MessageType::infer_response, [](ByteWriter& b) {
         b.u64(1); b.f64(-1); b.u8(1); b.u32(1); b.f32(0);
       }, "'compute_ms' is negative"},
      {"infer_response values short", MessageType::infer_response, [](ByteWriter& b) {
         b.u64(1); b.f64(1); b.u8(2); b.u32(2); b.u32(2); b.f32(0);
       }, "'values' declares 4 float32 values"},
      // heartbeat
      {"heartbeat truncated", MessageType::heartbeat, [](ByteWriter& b) { b.u32(1); }, "payload ends inside 'clock_ms'"},
      {"heartbeat trailing", MessageType::heartbeat, [](ByteWriter& b) { b.u64(1); b.u8(1); }, "1 trailing bytes"},
      // metrics
      {"metrics count over max_metrics", MessageType::metrics, [&](ByteWriter& b) { b.u16(static_cast<std::uint16_t>(l.max_metrics + 1)); },
       "'entries' is 257 long, limit max_metrics 256"},
      {"metrics count beyond payload", MessageType::metrics, [](ByteWriter& b) { b.u16(200); b.str("a"); b.f64(1); },
       "'count' declares 200 entries"},
      {"metrics name over limit", MessageType::metrics, [&](ByteWriter& b) { b.u16(1); b.str(long_name); b.f64(1); },
       "'name' is 257 long"},
      {"metrics empty name", MessageType::metrics, [](ByteWriter& b) { b.u16(1); b.str(""); b.f64(1); b.u16(0); }, "'name' is empty"},
      {"metrics NaN value", MessageType::metrics, [](ByteWriter& b) {
         b.u16(1); b.str("x"); b.f64(std::numeric_limits<double>::quiet_NaN());
       }, "'value' is not finite"},
      // error
      {"error message over limit", MessageType::error, [&](ByteWriter& b) { b.u16(8); b.str(long_name); }, "'message' is 257 long"},
      {"error truncated", MessageType::error, [](ByteWriter& b) { b.u16(8); b.u8(3); }, "'message'"},
      // bye
      {"bye trailing", MessageType::bye, [](ByteWriter& b) { b.u16(0); b.u16(0); }, "2 trailing bytes"},
      {"bye empty", MessageType::bye, [](ByteWriter&) {}, "payload ends inside 'code'"},
  };
  {
    // A length one short with the CRC made to match: the frame is whole,
    // its payload is not.
    auto f = w::encode_message(w::Heartbeat{5}, w::Binding{1, 1, 1, 1});
    REQUIRE(f.ok());
    Bytes b = *f;
    put_u32(b, w::layout::kLength, 7);
    b.erase(b.begin() + static_cast<std::ptrdiff_t>(w::kHeaderBytes + 7));
    reseal(b);
    Bytes buf(64);
    w::FrameDecoder dec(buf);
    const auto r = dec.feed(b);
    REQUIRE(r.status == FeedStatus::frame);
    auto m = w::decode_message(r.frame);
    REQUIRE(!m.ok());
    CHECK(m.error().message == "heartbeat: payload ends inside 'clock_ms' (needs 8 bytes, 7 left)");
  }
  std::vector<bool> covered(w::kMaxMessageType + 1, false);
  Bytes buf(1 << 16);
  for (const auto& row : rows) {
    CAPTURE(row.name);
    ByteWriter b;
    row.write(b);
    // Through a valid frame: the frame layer accepts it, the payload decoder does not.
    auto frame = w::encode_frame(row.type, w::Binding{1, 2, 3, 4}, b.bytes());
    REQUIRE(frame.ok());
    w::FrameDecoder dec(buf);
    const auto r = dec.feed(*frame);
    REQUIRE(r.status == FeedStatus::frame);
    auto m = w::decode_message(r.frame);
    REQUIRE(!m.ok());
    const std::string msg = m.error().message;
    CAPTURE(msg);
    CHECK(msg.rfind(std::string(w::message_type_name(row.type)) + ": ", 0) == 0);  // names the message
    CHECK(msg.find(row.needle) != std::string::npos);                              // and the field
    CHECK(msg.find('\n') == std::string::npos);
    covered[static_cast<std::size_t>(row.type)] = true;
  }
  for (std::size_t t = w::kMinMessageType; t <= w::kMaxMessageType; ++t) {
    CAPTURE(t);
    CHECK(covered[t]);
  }
}

TEST_CASE("wire: smaller limits are enforced when decoding and encoding", "[wire]") {
  const w::Limits micro = w::micro_limits();
  w::TrainRound tr;
  tr.config.partition_spec = "{}";
  tr.parameters.assign(5000, 1.0f);  // above max_train_params 3000, and 20 KB: above the 16 KiB frame
  auto big = w::encode_message(tr, w::Binding{});  // fine under the default limits
  REQUIRE(big.ok());
  auto refused = w::TrainRound::decode(payload_of(*big), micro);
  REQUIRE(!refused.ok());
  CHECK(refused.error().code == fleetdl::Errc::limit_exceeded);
  CHECK(refused.error().message.find("max_train_params 3000") != std::string::npos);
  auto enc_refused = w::encode_message(tr, w::Binding{}, micro);
  REQUIRE(!enc_refused.ok());
  CHECK(enc_refused.error().message == refused.error().message);  // same rule, same words

  // A frame over a micro peer's payload limit is oversized at the header.
  Bytes buf(micro.max_frame_payload);
  w::FrameDecoder dec(buf, micro);
  const auto r = dec.feed(*big);
  CHECK(r.status == FeedStatus::closed);
  CHECK(r.reason == CloseReason::oversized);
  CHECK(r.consumed == 12);
}

TEST_CASE("wire: encoders refuse what a peer would refuse", "[wire]") {
  w::Hello h;  // empty agent name
  auto e = w::encode_message(h, w::Binding{});
  REQUIRE(!e.ok());
  CHECK(e.error().message == "hello: 'agent_name' is empty");
  w::InferRequest req{1, {2, 2}, {1, 2, 3}};  // 3 values for a 2x2 shape
  auto e2 = w::encode_message(req, w::Binding{});
  REQUIRE(!e2.ok());
  CHECK(e2.error().message.find("'values' count is not the product of dims") != std::string::npos);
  w::TrainRound tr;
  tr.config.partition_spec = "{}";
  tr.parameters = {1, 2, 3};
  tr.server_control = {1, 2};  // neither 0 nor param_count values
  auto e5 = w::encode_message(tr, w::Binding{});
  REQUIRE(!e5.ok());
  CHECK(e5.error().message == "train_round: 'server_control' count must be 0 or param_count");
  tr.server_control.clear();
  tr.config.partition_spec.clear();
  auto e6 = w::encode_message(tr, w::Binding{});
  REQUIRE(!e6.ok());
  CHECK(e6.error().message == "train_round: 'partition_spec' is empty");
  w::Update up;
  up.control_delta = {std::numeric_limits<float>::quiet_NaN()};
  auto e7 = w::encode_message(up, w::Binding{});
  REQUIRE(!e7.ok());
  CHECK(e7.error().message == "update: 'control_delta' value 0 is not finite");
  w::Limits small;
  small.max_frame_payload = 16;
  auto e3 = w::encode_message(w::Metrics{{{"a_long_metric_name", 1.0}}}, w::Binding{}, small);
  REQUIRE(!e3.ok());
  CHECK(e3.error().code == fleetdl::Errc::limit_exceeded);
  CHECK(e3.error().message.find("max_frame_payload 16") != std::string::npos);
  std::uint8_t tiny[50];
  auto e4 = w::encode_message_into(tiny, w::Metrics{{{"a_long_metric_name", 1.0}}}, w::Binding{});
  REQUIRE(!e4.ok());
  CHECK(e4.error().message.find("too small") != std::string::npos);
  // Low-level writers report a too small buffer with 0.
  const std::uint8_t payload[8] = {};
  std::uint8_t exact[w::frame_bytes(8)];
  CHECK(w::write_frame(exact, MessageType::heartbeat, w::Binding{}, payload) == sizeof exact);
  CHECK(w::write_frame(std::span<std::uint8_t>(exact, sizeof exact - 1), MessageType::heartbeat, w::Binding{}, payload) == 0);
  // An ErrorNotice built from a Verdict carries its reason and message.
  w::Verdict v;
  v.reason = CloseReason::replay;
  std::strcpy(v.text, "seq 3 is not above 9");
  const w::ErrorNotice n(v);
  CHECK(n.reason() == CloseReason::replay);
  CHECK(n.message == "seq 3 is not above 9");
}

// ---------------------------------------------------------------------------
// No heap where a microcontroller needs none

TEST_CASE("wire: the decoder, the views and the buffer encoders do not allocate", "[wire]") {
  {
    fleetdl_test::HeapCounter sanity;
    int* volatile p = new int(3);  // volatile: the pair cannot be elided
    delete p;
    // The counting operator new lives in test_micro_runtime.cpp (same binary).
    REQUIRE(sanity.count() == 1);
  }
  w::AssignChunk chunk;  // a whole 4-byte module in one chunk
  chunk.module_id = 3;
  chunk.total_bytes = 4;
  chunk.data = {9, 8, 7, 6};
  chunk.module_crc = fleetdl::crc32(chunk.data.data(), 4);
  auto chunk_frame = w::encode_message(chunk, w::Binding{1, 1, 0, 1});
  auto req_frame = w::encode_message(w::InferRequest{3, {1, 4}, {1, 2, 3, 4}}, w::Binding{1, 1, 0, 2});
  REQUIRE(chunk_frame.ok());
  REQUIRE(req_frame.ok());
  Bytes stream = *chunk_frame;
  stream.insert(stream.end(), req_frame->begin(), req_frame->end());
  stream.push_back('X');  // then garbage: bad magic
  alignas(8) std::uint8_t buf[512];
  alignas(8) std::uint8_t out[512];
  alignas(8) std::uint8_t module[16];
  const std::uint32_t dims[2] = {1, 2};
  const float values[2] = {0.25f, 0.75f};
  fleetdl_test::HeapCounter heap;
  w::FrameDecoder dec(buf);
  std::span<const std::uint8_t> in(stream);
  int frames = 0;
  bool closed = false;
  float sum = 0;
  w::ChunkAssembler assembler(module);
  CloseReason chunk_reason = CloseReason::internal_error;
  while (!in.empty() && !closed) {
    const auto r = dec.feed(in.first(std::min<std::size_t>(in.size(), 7)));
    in = in.subspan(r.consumed);
    if (r.status == FeedStatus::frame) {
      ++frames;
      if (r.frame.header.type == MessageType::infer_request) {
        auto v = w::InferRequest::decode_view(r.frame.payload);
        if (v.ok())
          for (std::size_t i = 0; i < v->count(); ++i) sum += v->value(i);
      } else {
        auto v = w::AssignChunk::decode_view(r.frame.payload);
        if (v.ok()) chunk_reason = assembler.add(*v).reason;
      }
    } else if (r.status == FeedStatus::closed) {
      closed = true;
    }
  }
  auto n = w::encode_message_into(out, w::InferResponseRef{3, 1.5, dims, values}, w::Binding{2, 1, 0, 5});
  auto hb = w::encode_message_into(out, w::Heartbeat{5}, w::Binding{2, 1, 0, 6});
  const long allocations = heap.count();
  CHECK(allocations == 0);
  CHECK(frames == 2);
  CHECK(closed);
  CHECK(dec.verdict().reason == CloseReason::bad_magic);
  CHECK(sum == 10.0f);
  CHECK(chunk_reason == CloseReason::normal);
  CHECK(assembler.done());
  CHECK(Bytes(assembler.bytes().begin(), assembler.bytes().end()) == chunk.data);
  CHECK(n.ok());
  CHECK(hb.ok());
}

// ---------------------------------------------------------------------------
// ReplayGuard

namespace {
w::FrameHeader hdr(MessageType t, std::uint64_t device, std::uint64_t run, std::uint32_t round, std::uint64_t seq) {
  w::FrameHeader h;
  h.type = t;
  h.binding = w::Binding{device, run, round, seq};
  return h;
}
}  // namespace

TEST_CASE("wire: ReplayGuard refuses replays and duplicate updates", "[wire]") {
  w::ReplayGuard g;
  SECTION("sequence numbers must rise") {
    CHECK(g.accept(hdr(MessageType::heartbeat, 7, 1, 0, 10)).ok());
    CHECK(g.accept(hdr(MessageType::heartbeat, 7, 1, 0, 11)).ok());
    CHECK(g.accept(hdr(MessageType::metrics, 7, 1, 0, 20)).ok());  // gaps are fine
    const auto same = g.accept(hdr(MessageType::heartbeat, 7, 1, 0, 20));
    CHECK(same.reason == CloseReason::replay);
    CHECK(std::string(same.message()) == "heartbeat from device 7 run 1: seq 20 is not above the last accepted seq 20");
    CHECK(g.accept(hdr(MessageType::heartbeat, 7, 1, 0, 3)).reason == CloseReason::replay);
    CHECK(g.last_seq(7, 1) == 20U);  // refused frames change nothing
    CHECK(g.accept(hdr(MessageType::heartbeat, 7, 1, 0, 21)).ok());
  }
  SECTION("other devices and runs are independent") {
    CHECK(g.accept(hdr(MessageType::update, 7, 1, 4, 100)).ok());
    CHECK(g.accept(hdr(MessageType::update, 8, 1, 4, 1)).ok());    // other device, low seq, same round
    CHECK(g.accept(hdr(MessageType::update, 7, 2, 4, 1)).ok());    // other run
    CHECK(g.accept(hdr(MessageType::update, 7, 1, 4, 101)).reason == CloseReason::duplicate);
    CHECK(g.accept(hdr(MessageType::update, 8, 1, 4, 2)).reason == CloseReason::duplicate);
    CHECK(g.size() == 3);
  }
  SECTION("a replayed update is a replay; a re-sent one with a fresh seq a duplicate") {
    const auto u = hdr(MessageType::update, 7, 1, 5, 50);
    CHECK(g.accept(u).ok());
    CHECK(g.accept(u).reason == CloseReason::replay);
    const auto again = g.accept(hdr(MessageType::update, 7, 1, 5, 51));
    CHECK(again.reason == CloseReason::duplicate);
    CHECK(std::string(again.message()).find("round 5") != std::string::npos);
    CHECK(g.last_seq(7, 1) == 50U);
    // Other messages of the same round are not updates: fine.
    CHECK(g.accept(hdr(MessageType::metrics, 7, 1, 5, 51)).ok());
    // Later and earlier rounds (within the window) each take one update.
    CHECK(g.accept(hdr(MessageType::update, 7, 1, 6, 52)).ok());
    CHECK(g.accept(hdr(MessageType::update, 7, 1, 3, 53)).ok());  // late, FedBuff-style
    CHECK(g.accept(hdr(MessageType::update, 7, 1, 3, 54)).reason == CloseReason::duplicate);
    CHECK(g.accept(hdr(MessageType::update, 7, 1, 6, 55)).reason == CloseReason::duplicate);
    // A jump of more than the window forgets the old bits but stays safe.
    CHECK(g.accept(hdr(MessageType::update, 7, 1, 200, 56)).ok());
    const auto old = g.accept(hdr(MessageType::update, 7, 1, 100, 57));
    CHECK(old.reason == CloseReason::duplicate);
    CHECK(std::string(old.message()).find("too old") != std::string::npos);
    CHECK(g.accept(hdr(MessageType::update, 7, 1, 200 - 63, 58)).ok());  // last round inside the window
  }
  SECTION("check() records nothing") {
    CHECK(g.check(hdr(MessageType::update, 7, 1, 1, 1)).ok());
    CHECK(g.check(hdr(MessageType::update, 7, 1, 1, 1)).ok());
    CHECK(g.size() == 0);
  }
  SECTION("device 0 is not tracked, and cannot send updates") {
    CHECK(g.accept(hdr(MessageType::hello, 0, 0, 0, 1)).ok());
    CHECK(g.accept(hdr(MessageType::hello, 0, 0, 0, 1)).ok());
    CHECK(g.size() == 0);
    CHECK(g.accept(hdr(MessageType::update, 0, 1, 1, 9)).reason == CloseReason::unexpected_message);
  }
  SECTION("bounded: a full guard refuses new streams until a run is forgotten") {
    w::ReplayGuard small(3);
    CHECK(small.accept(hdr(MessageType::heartbeat, 1, 1, 0, 1)).ok());
    CHECK(small.accept(hdr(MessageType::heartbeat, 2, 1, 0, 1)).ok());
    CHECK(small.accept(hdr(MessageType::heartbeat, 3, 2, 0, 1)).ok());
    const auto full = small.accept(hdr(MessageType::heartbeat, 4, 1, 0, 1));
    CHECK(full.reason == CloseReason::oversized);
    CHECK(std::string(full.message()).find("capacity 3") != std::string::npos);
    CHECK(small.accept(hdr(MessageType::heartbeat, 1, 1, 0, 2)).ok());  // known streams go on
    small.forget_run(1);
    CHECK(small.size() == 1);
    CHECK(small.accept(hdr(MessageType::heartbeat, 4, 1, 0, 1)).ok());
    CHECK(small.accept(hdr(MessageType::heartbeat, 3, 2, 0, 1)).reason == CloseReason::replay);
  }
}

// ---------------------------------------------------------------------------
// ChunkAssembler

namespace {
std::vector<w::AssignChunk> split_module(const Bytes& module, std::size_t chunk, std::uint64_t id = 9) {
  std::vector<w::AssignChunk> out;
  const std::uint32_t count = static_cast<std::uint32_t>(module.empty() ? 1 : (module.size() + chunk - 1) / chunk);
  for (std::uint32_t i = 0; i < count; ++i) {
    w::AssignChunk c;
    c.module_id = id;
    c.kind = w::ModuleKind::fdl_model;
    c.chunk_index = i;
    c.chunk_count = count;
    c.total_bytes = module.size();
    c.module_crc = fleetdl::crc32(module.data(), module.size());
    const std::size_t a = i * chunk, b = std::min(module.size(), a + chunk);
    c.data.assign(module.begin() + static_cast<std::ptrdiff_t>(a), module.begin() + static_cast<std::ptrdiff_t>(b));
    out.push_back(c);
  }
  return out;
}
Bytes test_module(std::size_t n) {
  Bytes m(n);
  for (std::size_t i = 0; i < n; ++i) m[i] = static_cast<std::uint8_t>(i * 131 + 7);
  return m;
}
}  // namespace

TEST_CASE("wire: ChunkAssembler joins chunks in order and checks the whole", "[wire]") {
  const Bytes module = test_module(1000);
  auto chunks = split_module(module, 300);
  REQUIRE(chunks.size() == 4);
  SECTION("in order, through frames, vector storage") {
    w::ChunkAssembler a;
    Bytes buf(1024);
    for (std::size_t i = 0; i < chunks.size(); ++i) {
      auto f = w::encode_message(chunks[i], w::Binding{1, 1, 0, i + 1});
      REQUIRE(f.ok());
      w::FrameDecoder dec(buf);
      const auto r = dec.feed(*f);
      REQUIRE(r.status == FeedStatus::frame);
      auto c = w::AssignChunk::decode(r.frame.payload);
      REQUIRE(c.ok());
      CHECK(!a.done());
      const auto v = a.add(*c);
      CHECK(v.ok());
    }
    REQUIRE(a.done());
    CHECK(a.module_id() == 9);
    CHECK(a.chunks() == 4);
    CHECK(Bytes(a.bytes().begin(), a.bytes().end()) == module);
    CHECK(a.take() == module);
    CHECK(!a.done());
    CHECK(a.bytes().empty());
  }
  SECTION("in order, caller buffer") {
    Bytes store(1000);
    w::ChunkAssembler a(store);
    for (const auto& c : chunks) CHECK(a.add(c).ok());
    REQUIRE(a.done());
    CHECK(a.bytes().data() == store.data());
    CHECK(store == module);
  }
  SECTION("a single-chunk module and an empty one") {
    w::ChunkAssembler a;
    auto one = split_module(test_module(10), 64);
    REQUIRE(one.size() == 1);
    CHECK(a.add(one[0]).ok());
    CHECK(a.done());
    a.reset();
    auto empty = split_module(Bytes{}, 64);
    CHECK(a.add(empty[0]).ok());
    CHECK(a.done());
    CHECK(a.bytes().empty());
  }
  SECTION("out of order") {
    w::ChunkAssembler a;
    CHECK(a.add(chunks[0]).ok());
    const auto v = a.add(chunks[2]);
    CHECK(v.reason == CloseReason::bad_chunk_order);
    CHECK(std::string(v.message()) == "assign_chunk: module 9 chunk 2 arrived, expected chunk 1");
    CHECK(a.chunks() == 1);
    w::ChunkAssembler b;
    CHECK(b.add(chunks[1]).reason == CloseReason::bad_chunk_order);  // must start at 0
  }
  SECTION("repeated chunk") {
    w::ChunkAssembler a;
    CHECK(a.add(chunks[0]).ok());
    CHECK(a.add(chunks[1]).ok());
    const auto v = a.add(chunks[1]);
    CHECK(v.reason == CloseReason::bad_chunk_order);
    CHECK(std::string(v.message()).find("(a repeat)") != std::string::npos);
  }
  SECTION("a chunk after completion") {
    w::ChunkAssembler a;
    for (const auto& c : chunks) REQUIRE(a.add(c).ok());
    CHECK(a.add(chunks[0]).reason == CloseReason::bad_chunk_order);
  }
  SECTION("totals that disagree") {
    w::ChunkAssembler a;
    CHECK(a.add(chunks[0]).ok());
    auto c1 = chunks[1];
    c1.total_bytes = 1001;
    auto v = a.add(c1);
    CHECK(v.reason == CloseReason::chunk_mismatch);
    CHECK(std::string(v.message()).find("total_bytes") != std::string::npos);
    c1 = chunks[1];
    c1.chunk_count = 5;
    CHECK(a.add(c1).reason == CloseReason::chunk_mismatch);
    c1 = chunks[1];
    c1.module_id = 10;
    CHECK(std::string(a.add(c1).message()).find("module_id") != std::string::npos);
    c1 = chunks[1];
    c1.module_crc ^= 1;
    CHECK(a.add(c1).reason == CloseReason::chunk_mismatch);
    CHECK(a.add(chunks[1]).ok());  // refusals changed nothing
  }
  SECTION("chunks that overrun or underrun the total") {
    w::ChunkAssembler a;
    auto c0 = chunks[0];
    c0.data.resize(c0.data.size() + 800);  // 1100 bytes of a 1000-byte module
    auto v = a.add(c0);
    CHECK(v.reason == CloseReason::chunk_mismatch);
    CHECK(std::string(v.message()).find("past total_bytes 1000") != std::string::npos);
    CHECK(a.add(chunks[0]).ok());
    CHECK(a.add(chunks[1]).ok());
    CHECK(a.add(chunks[2]).ok());
    auto last = chunks[3];
    last.data.pop_back();
    v = a.add(last);
    CHECK(v.reason == CloseReason::chunk_mismatch);
    CHECK(std::string(v.message()).find("ends at 999 bytes, total_bytes is 1000") != std::string::npos);
  }
  SECTION("CRC of the whole") {
    auto bad = split_module(module, 300);
    for (auto& c : bad) c.module_crc ^= 0x1;
    w::ChunkAssembler a;
    for (std::size_t i = 0; i + 1 < bad.size(); ++i) CHECK(a.add(bad[i]).ok());
    const auto v = a.add(bad.back());
    CHECK(v.reason == CloseReason::chunk_mismatch);
    CHECK(std::string(v.message()).find("CRC-32") != std::string::npos);
    CHECK(!a.done());
  }
  SECTION("oversized module refused at the first chunk, before storing") {
    w::Limits l;
    l.max_module_bytes = 999;
    w::ChunkAssembler a(l);
    const auto v = a.add(chunks[0]);
    CHECK(v.reason == CloseReason::oversized);
    CHECK(std::string(v.message()) == "assign_chunk: module 9 declares 1000 bytes, limit max_module_bytes 999");
    CHECK(a.received_bytes() == 0);
    CHECK(a.bytes().empty());
    // A declared size beyond the caller buffer too.
    Bytes store(500);
    w::ChunkAssembler b(store);
    const auto v2 = b.add(chunks[0]);
    CHECK(v2.reason == CloseReason::oversized);
    CHECK(std::string(v2.message()).find("the buffer holds 500") != std::string::npos);
    // The default limit: 64 MiB + 1 declared by one small chunk.
    w::AssignChunk huge = chunks[0];
    huge.total_bytes = w::Limits{}.max_module_bytes + 1;
    huge.chunk_count = 1000000;
    w::ChunkAssembler c;
    CHECK(c.add(huge).reason == CloseReason::oversized);
  }
}
