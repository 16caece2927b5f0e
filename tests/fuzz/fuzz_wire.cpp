// tests/fuzz/fuzz_wire.cpp — libFuzzer harness for the wire protocol
// (fleetdl/wire.hpp): the stream decoder, every message decoder, the views,
// ReplayGuard and ChunkAssembler.
//
// Input: byte 0 seeds the split of the rest (the stream) into pieces of 1 ..
// 64 bytes. The stream is decoded three ways — in those pieces, whole, and
// with a 64-byte buffer — and must give the same frames and the same end
// (the small buffer may only end earlier, with `oversized`). Every frame's
// payload is decoded as its message type; whatever decodes must re-encode to
// exactly the frame it came from (the encoding is canonical and validate()
// accepts all decode() accepts), and the no-heap views must agree with the
// owning decoders. Accepted frames go through a ReplayGuard and assign_chunk
// messages through a ChunkAssembler. Each input is checked as is and with
// the CRC of every frame its length fields delimit rewritten, so mutations
// reach the checks behind the checksum. ASan and UBSan watch every access; any
// disagreement aborts.
//
// Built and run by tests/fuzz/meson.build (suite 'fuzz', 20 s, seeds from
// gen_wire_seeds) when clang++ accepts -fsanitize=fuzzer; by hand:
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined \
//     -fno-sanitize-recover=undefined -I include \
//     tests/fuzz/fuzz_wire.cpp -o fuzz_wire
//   ./fuzz_wire -max_total_time=60 -max_len=8192 corpus/ seeds/
#include "fleetdl/wire.hpp"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

namespace w = fleetdl::wire;

w::Limits fuzz_limits() {
  w::Limits l;  // small enough that the fuzzer reaches every limit
  l.max_frame_payload = 8192;
  l.max_chunk_bytes = 512;
  l.max_module_bytes = 4096;
  l.max_train_params = 512;
  l.max_string_bytes = 64;
  l.max_pem_bytes = 1024;
  l.max_metrics = 16;
  l.max_activations = 512;
  l.max_partition_spec_bytes = 128;
  return l;
}

struct Seen {
  w::FrameHeader header;
  std::vector<std::uint8_t> frame;  // header + payload + CRC, rebuilt
};

struct Outcome {
  std::vector<Seen> frames;
  w::CloseReason reason = w::CloseReason::normal;
};

void require(bool ok) {
  if (!ok) std::abort();
}

bool same_header(const w::FrameHeader& a, const w::FrameHeader& b) {
  return a.type == b.type && a.payload_bytes == b.payload_bytes && a.binding == b.binding;
}

// Decode `stream` fed in pieces from `next_piece`, with a buffer of `cap` bytes.
template <class NextPiece>
Outcome run(const std::uint8_t* stream, std::size_t n, std::size_t cap, const w::Limits& l, NextPiece next_piece) {
  Outcome out;
  std::vector<std::uint8_t> buf(cap);
  w::FrameDecoder dec(buf, l);
  std::size_t pos = 0;
  while (pos < n) {
    const std::size_t piece = std::min(next_piece(), n - pos);
    std::span<const std::uint8_t> in(stream + pos, piece);
    while (!in.empty()) {
      const w::FeedResult r = dec.feed(in);
      require(r.consumed <= in.size());
      in = in.subspan(r.consumed);
      pos += r.consumed;
      if (r.status == w::FeedStatus::frame) {
        require(r.frame.payload.size() == r.frame.header.payload_bytes);
        require(r.frame.payload.size() <= l.max_frame_payload && r.frame.payload.size() <= cap);
        Seen s;
        s.header = r.frame.header;
        s.frame.resize(w::frame_bytes(r.frame.payload.size()));
        require(w::write_frame(s.frame, r.frame.header.type, r.frame.header.binding, r.frame.payload) ==
                s.frame.size());
        // The rebuilt frame is the one in the stream.
        require(pos >= s.frame.size() && std::memcmp(stream + pos - s.frame.size(), s.frame.data(), s.frame.size()) == 0);
        out.frames.push_back(std::move(s));
      } else if (r.status == w::FeedStatus::closed) {
        require(r.message != nullptr && r.message[0] != '\0' && std::strchr(r.message, '\n') == nullptr);
        require(r.reason != w::CloseReason::normal);
        // Stays failed.
        require(dec.feed(std::span<const std::uint8_t>(stream, n)).status == w::FeedStatus::closed);
        out.reason = r.reason;
        return out;
      } else {
        require(in.empty());
      }
    }
  }
  const w::Verdict& end = dec.finish();
  require(end.ok() || end.reason == w::CloseReason::truncated);
  out.reason = end.reason;
  return out;
}

template <class M>
void roundtrip(const M& m, const Seen& s, const w::Limits& l) {
  auto again = w::encode_message(m, s.header.binding, l);
  require(again.ok());
  require(*again == s.frame);
}

void check_message(const Seen& s, const w::Limits& l, w::ReplayGuard& guard, w::ChunkAssembler& assembler) {
  const std::span<const std::uint8_t> payload(s.frame.data() + w::kHeaderBytes, s.header.payload_bytes);
  auto m = w::decode_message(s.header.type, payload, l);
  if (!m.ok()) {
    require(!m.error().message.empty() && m.error().message.find('\n') == std::string::npos);
  } else {
    require(w::message_type(*m) == s.header.type);
    std::visit([&](const auto& x) { roundtrip(x, s, l); }, *m);
  }
  // The views agree with the owning decoders.
  if (s.header.type == w::MessageType::assign_chunk) {
    auto v = w::AssignChunk::decode_view(payload, l);
    require(v.ok() == m.ok());
    if (v.ok()) {
      const auto& c = std::get<w::AssignChunk>(*m);
      require(v->data.size() == c.data.size() && v->total_bytes == c.total_bytes);
      const w::Verdict verdict = assembler.add(*v);
      if (!verdict.ok()) require(std::strchr(verdict.message(), '\n') == nullptr);
      if (assembler.done()) {
        require(assembler.bytes().size() == assembler.total_bytes());
        require(fleetdl::crc32(assembler.bytes().data(), assembler.bytes().size()) == c.module_crc);
        assembler.reset();
      }
    }
  }
  if (s.header.type == w::MessageType::infer_request || s.header.type == w::MessageType::infer_response) {
    auto v = s.header.type == w::MessageType::infer_request ? w::InferRequest::decode_view(payload, l)
                                                            : w::InferResponse::decode_view(payload, l);
    require(v.ok() == m.ok());
    if (v.ok()) {
      const auto& values = s.header.type == w::MessageType::infer_request ? std::get<w::InferRequest>(*m).values
                                                                          : std::get<w::InferResponse>(*m).values;
      require(v->count() == values.size());
      for (std::size_t i = 0; i < values.size(); ++i) require(v->value(i) == values[i]);
    }
  }
  const w::Verdict g = guard.accept(s.header);
  if (!g.ok()) require(std::strchr(g.message(), '\n') == nullptr && g.message()[0] != '\0');
}

// Rewrite the CRC of every frame the length fields delimit, so that
// mutations of headers and payloads get past the checksum.
std::vector<std::uint8_t> fix_crcs(const std::uint8_t* stream, std::size_t n) {
  std::vector<std::uint8_t> b(stream, stream + n);
  std::size_t pos = 0;
  while (n - pos >= w::kFrameOverhead) {
    const std::uint32_t len = w::detail::load_u32(b.data() + pos + w::layout::kLength);
    if (len > n - pos - w::kFrameOverhead) break;
    const std::uint32_t crc = fleetdl::crc32(b.data() + pos, w::kHeaderBytes + len);
    w::detail::store_le(b.data() + pos + w::kHeaderBytes + len, crc, 4);
    pos += w::frame_bytes(len);
  }
  return b;
}

void check_stream(const std::uint8_t* stream, std::size_t n, std::uint8_t split_seed) {
  const w::Limits l = fuzz_limits();
  std::uint32_t state = split_seed * 2654435761U + 1;
  const Outcome split = run(stream, n, l.max_frame_payload, l, [&] {
    state = state * 1664525U + 1013904223U;
    return static_cast<std::size_t>(1 + (state >> 24) % 64);
  });
  const Outcome whole = run(stream, n, l.max_frame_payload, l, [&] { return n; });
  require(split.reason == whole.reason && split.frames.size() == whole.frames.size());
  for (std::size_t i = 0; i < split.frames.size(); ++i) {
    require(same_header(split.frames[i].header, whole.frames[i].header));
    require(split.frames[i].frame == whole.frames[i].frame);
  }
  // A 64-byte buffer sees a prefix of the same frames, then the same end or oversized.
  const Outcome small = run(stream, n, 64, l, [&] { return std::size_t{7}; });
  require(small.frames.size() <= whole.frames.size());
  for (std::size_t i = 0; i < small.frames.size(); ++i) require(small.frames[i].frame == whole.frames[i].frame);
  require(small.reason == whole.reason || small.reason == w::CloseReason::oversized);

  w::ReplayGuard guard(8);
  w::ChunkAssembler assembler(l);
  for (const Seen& s : whole.frames) check_message(s, l, guard, assembler);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  check_stream(data + 1, size - 1, data[0]);
  const std::vector<std::uint8_t> fixed = fix_crcs(data + 1, size - 1);
  check_stream(fixed.data(), fixed.size(), data[0]);
  return 0;
}
