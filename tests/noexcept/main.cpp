// tests/noexcept/main.cpp — the core library builds and works with exceptions
// off (-fno-exceptions, as on Cortex-M firmware): every failure comes back as
// a Result<T>. Covers core, nn (build, init, train step, slice, costs), io
// (encode, decode, reject bad bytes), data (IDX parsing, partitioners) and
// wire (frames and messages encoded, streamed, decoded and refused).
#include <fleetdl/core.hpp>
#include <fleetdl/data.hpp>
#include <fleetdl/io.hpp>
#include <fleetdl/nn.hpp>
#include <fleetdl/wire.hpp>

#include <algorithm>
#include <cstdio>

#if FLEETDL_EXCEPTIONS
#  error "tests/noexcept must be compiled with exceptions disabled (cpp_eh=none)"
#endif

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

fleetdl::Result<int> parse_digit(char c) {
  if (c < '0' || c > '9') return fleetdl::make_error(fleetdl::Errc::invalid_argument, "parse_digit: not a digit");
  return c - '0';
}

fleetdl::Result<void> chain(char c) {
  FLEETDL_TRY(parse_digit(c));
  return fleetdl::success();
}

}  // namespace

int main() {
  using namespace fleetdl;
  // core
  const auto bad = parse_digit('x');
  check(!bad.ok() && bad.error().code == Errc::invalid_argument, "Result carries the error");
  check(parse_digit('7').ok() && *parse_digit('7') == 7, "Result carries the value");
  check(!chain('x').ok() && chain('3').ok(), "FLEETDL_TRY propagates");
  check(crc32("123456789", 9) == 0xCBF43926U, "crc32 check value");

  // nn: build, train one step, slice, cost report
  auto m = nn::make_model<float>("lenet5");
  check(m.ok(), "make_model lenet5");
  if (!m.ok()) return 1;
  m->init(1);
  auto unknown = nn::make_model<float>("no-such-net");
  check(!unknown.ok() && unknown.error().code == Errc::not_found, "unknown model is an error");
  std::vector<nn::NodePtr<float>> broken;
  broken.push_back(std::make_unique<nn::Dense<float>>(5, 3));
  check(!nn::Model<float>::create(Shape{4, 1, 1}, std::move(broken)).ok(), "shape mismatch is an error");

  Rng rng(3);
  Matrix<float> x(784, 8);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(rng.uniform());
  std::vector<std::uint8_t> y(8);
  for (auto& v : y) v = static_cast<std::uint8_t>(rng.below(10));
  ThreadPool pool(2);
  nn::ExecContext<float> ctx{&pool, true, &rng};
  Matrix<float> g;
  const double l0 = nn::softmax_cross_entropy(m->forward(x, ctx), y, &g);
  m->zero_grad();
  m->backward(g, ctx);
  nn::Adam<float> opt(nn::AdamOptions{});
  for (int i = 0; i < 20; ++i) {
    nn::softmax_cross_entropy(m->forward(x, ctx), y, &g);
    m->zero_grad();
    m->backward(g, ctx);
    opt.step(m->params(), std::as_const(*m).grads());
  }
  const double l1 = nn::softmax_cross_entropy<float>(m->forward(x, ctx), y, nullptr);
  check(l1 < l0, "training lowers the loss");
  auto head = m->slice(0, 3);
  check(head.ok() && head->output_shape() == (Shape{16, 14, 14}), "slice");
  check(!m->slice(3, 3).ok(), "empty slice is an error");
  check(m->cost_report().size() == 10, "cost report rows");

  // io
  auto bytes = io::encode_model(*m);
  auto back = io::decode_model<float>(bytes.data(), bytes.size(), "m.fdl");
  check(back.ok() && back->model.params() == m->params(), "fdl round trip");
  bytes[bytes.size() / 2] ^= 0x10;
  auto corrupt = io::decode_model<float>(bytes.data(), bytes.size(), "m.fdl");
  check(!corrupt.ok() && corrupt.error().code == Errc::checksum_mismatch, "corrupt fdl rejected");
  auto missing = io::load_model<float>("/nonexistent/dir/m.fdl");
  check(!missing.ok() && missing.error().code == Errc::io_error, "missing file is an error");

  // data
  const std::uint8_t idx[] = {0, 0, 8, 1, 0, 0, 0, 2, 3, 4};
  auto labels = data::parse_idx(std::span<const std::uint8_t>(idx, sizeof idx), "labels.idx");
  check(labels.ok() && labels->count() == 2, "parse_idx");
  auto short_idx = data::parse_idx(std::span<const std::uint8_t>(idx, sizeof idx - 1), "labels.idx");
  check(!short_idx.ok() && short_idx.error().code == Errc::truncated, "truncated idx rejected");
  auto parts = data::partition_iid(100, 4, 9);
  check(parts.ok() && parts->size() == 4, "partition_iid");
  auto no_clients = data::partition_iid(100, 0, 9);
  check(!no_clients.ok(), "zero clients rejected");

  // wire: a message into a frame (vector and caller buffer), streamed byte by
  // byte through the no-heap decoder, decoded; bad bytes refused by reason.
  {
    wire::Update up;
    up.example_count = 60;
    up.codec = wire::CodecId::raw_f32;
    up.delta = {0, 0, 128, 63};
    up.loss = 0.5;
    up.accuracy = 0.75;
    const wire::Binding bind{7, 2, 3, 11};
    auto frame = wire::encode_message(up, bind);
    check(frame.ok(), "wire: encode_message");
    std::uint8_t out[256];
    auto n = wire::encode_message_into(out, up, bind);
    check(n.ok() && frame.ok() && *n == frame->size() && std::equal(frame->begin(), frame->end(), out),
          "wire: encode_message_into gives the same bytes");
    std::uint8_t buf[256];
    wire::FrameDecoder dec(buf);
    int frames = 0;
    if (frame.ok()) {
      for (std::size_t i = 0; i < frame->size(); ++i) {
        const auto r = dec.feed(std::span<const std::uint8_t>(frame->data() + i, 1));
        if (r.status == wire::FeedStatus::frame) {
          ++frames;
          check(r.frame.header.binding == bind, "wire: binding");
          auto m = wire::decode_message(r.frame);
          check(m.ok() && std::holds_alternative<wire::Update>(*m) && std::get<wire::Update>(*m) == up,
                "wire: decode_message round trip");
        }
      }
    }
    check(frames == 1 && dec.finish().ok(), "wire: one frame, clean end");
    wire::ReplayGuard guard;
    wire::FrameHeader h{wire::MessageType::update, 0, bind};
    check(guard.accept(h).ok() && guard.accept(h).reason == wire::CloseReason::replay, "wire: replay refused");
    if (frame.ok()) {
      auto bad = *frame;
      bad[wire::layout::kVersion] = 9;
      wire::FrameDecoder dec2(buf);
      const auto r = dec2.feed(bad);
      check(r.status == wire::FeedStatus::closed && r.reason == wire::CloseReason::bad_version, "wire: bad version");
      auto trailing = std::vector<std::uint8_t>(frame->begin() + wire::kHeaderBytes, frame->end() - wire::kCrcBytes);
      trailing.push_back(0);
      auto m = wire::Update::decode(trailing);
      check(!m.ok() && m.error().message == "update: 1 trailing bytes after the last field", "wire: trailing bytes");
    }
  }

  if (failures == 0) std::printf("noexcept: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
