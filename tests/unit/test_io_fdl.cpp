// tests/unit/test_io_fdl.cpp — the .fdl model file (fleetdl/io/fdl.hpp).
//
// Round trips of every zoo model and of a hand-built model holding every node
// kind (float/double models, f32/f64 storage, cross-type reads), save/load and
// atomic replacement through a temporary directory, a table of bad files each
// rejected with a specific Errc and a message naming the file and the
// problem, crafted files with a CORRECT length and CRC-32 that drive the
// parser past the checksum, exhaustive truncations and bit flips, and a
// deterministic mutation fuzz loop. Files are built at run time by a
// test-side encoder written from the layout comment at the top of fdl.hpp
// (not by the library's writer); nothing binary is committed.
//
// The last test cases are regressions for defects found while writing this
// file (the comment above each says which; the empty-write one is only
// visible under -fsanitize=undefined).
#include "fleetdl/io/fdl.hpp"
#include "fleetdl/core/crc32.hpp"
#include "fleetdl/core/rng.hpp"
#include "fleetdl/nn/zoo.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using fleetdl::Errc;
using fleetdl::Index;
using fleetdl::Shape;
using Bytes = std::vector<std::uint8_t>;
namespace fs = std::filesystem;
namespace io = fleetdl::io;
namespace nn = fleetdl::nn;

constexpr std::uint32_t kMaxDim = FLEETDL_MAX_DIM;
constexpr std::uint32_t kMaxNodes = FLEETDL_MAX_NODES;
constexpr int kMaxDepth = FLEETDL_MAX_DEPTH;
constexpr std::size_t kHeader = 24;  // magic 8, version 4, flags 4, length 8

// ---------------------------------------------------------------------------
// A test-side encoder, independent of fleetdl::ByteWriter and fleetdl::crc32.

/// Little-endian writer.
struct LE {
  Bytes b;
  LE& u8(std::uint8_t v) {
    b.push_back(v);
    return *this;
  }
  LE& u16(std::uint16_t v) { return put(v, 2); }
  LE& u32(std::uint32_t v) { return put(v, 4); }
  LE& u64(std::uint64_t v) { return put(v, 8); }
  LE& f32(float v) {
    std::uint32_t u = 0;
    std::memcpy(&u, &v, 4);
    return u32(u);
  }
  LE& f64(double v) {
    std::uint64_t u = 0;
    std::memcpy(&u, &v, 8);
    return u64(u);
  }
  LE& str(const std::string& s) {
    u16(static_cast<std::uint16_t>(s.size()));
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  LE& raw(const Bytes& x) {
    b.insert(b.end(), x.begin(), x.end());
    return *this;
  }

 private:
  LE& put(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) b.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
    return *this;
  }
};

/// CRC-32 (IEEE 802.3, reflected 0xEDB88320), written from the standard.
std::uint32_t crc32_ref(const std::uint8_t* p, std::size_t n) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1U) ? 0xEDB88320U ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t c = 0xFFFFFFFFU;
  for (std::size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFFU] ^ (c >> 8);
  return ~c;
}

std::uint32_t get_u32(const Bytes& b, std::size_t at) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(b[at + static_cast<std::size_t>(i)]) << (8 * i);
  return v;
}
std::uint64_t get_u64(const Bytes& b, std::size_t at) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(b[at + static_cast<std::size_t>(i)]) << (8 * i);
  return v;
}
void set_u32(Bytes& b, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(v >> (8 * i));
}
void set_u64(Bytes& b, std::size_t at, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) b[at + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(v >> (8 * i));
}

/// Make edited bytes self-consistent again: length field = size, and a
/// correct CRC-32 in the last four bytes, so the decoder gets past both.
void reseal(Bytes& b) {
  if (b.size() < kHeader + 4) return;
  set_u64(b, 16, b.size());
  set_u32(b, b.size() - 4, crc32_ref(b.data(), b.size() - 4));
}

/// One tensor record as the file stores it.
struct TensorSpec {
  std::string name;
  std::uint8_t dtype = 1;  // 1 f32, 2 f64; any other value is written as f32
  std::uint8_t flags = 1;  // bit 0: trainable
  std::vector<std::uint32_t> dims;
  std::vector<double> values;
};

/// A whole file; the optional fields override the counts the layout implies.
struct FileSpec {
  std::uint32_t version = 1, flags = 0;
  Bytes arch;  // input shape (3 x u32) + top-level node list
  std::optional<std::uint32_t> arch_len, meta_count, tensor_count;
  std::optional<Bytes> meta_raw;  // replaces the whole metadata section
  io::Metadata meta;
  std::vector<TensorSpec> tensors;
  Bytes trailing;  // after the tensors, before the CRC
};

Bytes build(const FileSpec& s) {
  LE w;
  w.raw(Bytes(io::fdl_magic, io::fdl_magic + 8)).u32(s.version).u32(s.flags).u64(0);
  w.u32(s.arch_len.value_or(static_cast<std::uint32_t>(s.arch.size()))).raw(s.arch);
  if (s.meta_raw) {
    w.raw(*s.meta_raw);
  } else {
    w.u32(s.meta_count.value_or(static_cast<std::uint32_t>(s.meta.size())));
    for (const auto& [k, v] : s.meta) w.str(k).str(v);
  }
  w.u32(s.tensor_count.value_or(static_cast<std::uint32_t>(s.tensors.size())));
  for (const auto& t : s.tensors) {
    w.str(t.name).u8(t.dtype).u8(t.flags).u8(static_cast<std::uint8_t>(t.dims.size()));
    for (auto d : t.dims) w.u32(d);
    for (double v : t.values) {
      if (t.dtype == 2)
        w.f64(v);
      else
        w.f32(static_cast<float>(v));
    }
  }
  w.raw(s.trailing);
  Bytes b = std::move(w.b);
  b.resize(b.size() + 4);
  reseal(b);
  return b;
}

// Architecture records (kind u16, label, config), from nn::NodeKind.
enum Kind : std::uint16_t {
  k_dense = 1, k_conv = 2, k_maxpool = 3, k_avgpool = 4, k_gap = 5, k_bn = 6, k_relu = 7, k_relu6 = 8,
  k_sigmoid = 9, k_tanh = 10, k_softmax = 11, k_flatten = 12, k_dropout = 13, k_seq = 32, k_residual = 33,
  k_concat = 34,
};
LE& node(LE& w, std::uint16_t kind, const std::string& label = "") { return w.u16(kind).str(label); }
LE& input(LE& w, std::uint32_t c, std::uint32_t h, std::uint32_t wd) { return w.u32(c).u32(h).u32(wd); }
LE& dense(LE& w, std::uint32_t in, std::uint32_t out, std::uint8_t bias = 1) {
  return node(w, k_dense).u32(in).u32(out).u8(bias);
}
LE& conv(LE& w, std::uint32_t cin, std::uint32_t cout, std::uint32_t k, std::uint32_t stride = 1, std::uint32_t pad = 0,
         std::uint32_t dil = 1, std::uint32_t groups = 1, std::uint8_t bias = 1) {
  node(w, k_conv);
  for (auto v : {cin, cout, k, k, stride, stride, pad, pad, dil, dil, groups}) w.u32(v);
  return w.u8(bias);
}
LE& pool(LE& w, std::uint16_t kind, std::uint32_t k, std::uint32_t s, std::uint32_t p) {
  return node(w, kind).u32(k).u32(s).u32(p);
}
LE& bn(LE& w, std::uint32_t c, double eps = 1e-5, double mom = 0.1) { return node(w, k_bn).u32(c).f64(eps).f64(mom); }

/// Values exactly representable in float, so f32/f64 comparisons are exact.
std::vector<double> ramp(std::size_t n, double base) {
  std::vector<double> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = base + 0.0625 * static_cast<double>(i % 13) - 0.375;
  return v;
}

/// The tiny reference model, input 2x4x4:
///   conv 2->3 k3 (3x2x2), batchnorm 3, relu, flatten (12), dense 12->2.
Bytes tiny_arch() {
  LE a;
  input(a, 2, 4, 4).u32(5);
  conv(a, 2, 3, 3);
  bn(a, 3);
  node(a, k_relu);
  node(a, k_flatten);
  dense(a, 12, 2);
  return a.b;
}
FileSpec tiny_spec() {
  FileSpec s;
  s.arch = tiny_arch();
  s.meta = {{"origin", "tiny"}};
  s.tensors = {
      {"0.weight", 1, 1, {3, 2, 3, 3}, ramp(54, 0.0)},
      {"0.bias", 1, 1, {3}, ramp(3, 0.5)},
      {"1.weight", 1, 1, {3}, ramp(3, 1.25)},
      {"1.bias", 1, 1, {3}, ramp(3, -0.25)},
      {"1.running_mean", 1, 0, {3}, ramp(3, 0.125)},
      {"1.running_var", 1, 0, {3}, {0.5, 1.5, 2.25}},
      {"4.weight", 1, 1, {2, 12}, ramp(24, 0.25)},
      {"4.bias", 1, 1, {2}, {0.75, -0.5}},
  };
  return s;
}

template <class S>
fleetdl::Result<io::ModelFile<S>> decode(const Bytes& b, const std::string& name = "crafted.fdl") {
  return io::decode_model<S>(b.data(), b.size(), name);
}

/// Rejected with `code`; the message starts with "<name>: " and contains every part.
template <class S = float>
void expect_error(const Bytes& b, Errc code, const std::vector<std::string>& parts,
                  const std::string& name = "crafted.fdl") {
  auto r = decode<S>(b, name);
  CHECK_FALSE(r.ok());
  if (r.ok()) return;
  const std::string& msg = r.error().message;
  INFO("message: " << msg);
  CHECK(std::string(fleetdl::errc_name(r.error().code)) == fleetdl::errc_name(code));
  CHECK(msg.rfind(name + ": ", 0) == 0);
  for (const auto& p : parts) CHECK_THAT(msg, Catch::Contains(p));
}

/// Index of the first element where two vectors differ (-1: equal).
template <class A, class B>
Index first_diff(const A& a, const B& b) {
  if (a.size() != b.size()) return 0;
  for (Index i = 0; i < a.size(); ++i)
    if (!(a[i] == b[i])) return i;
  return -1;
}

template <class S>
fleetdl::Matrix<S> random_batch(const Shape& in, Index n, std::uint64_t seed) {
  fleetdl::Rng rng(seed);
  fleetdl::Matrix<S> x(in.size(), n);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<S>(rng.uniform(-1.0, 1.0));
  return x;
}

template <class S>
fleetdl::Matrix<S> run(nn::Model<S>& m, const fleetdl::Matrix<S>& x, bool training = false) {
  fleetdl::Rng rng(99);
  nn::ExecContext<S> ctx;
  ctx.training = training;
  ctx.rng = &rng;
  return m.forward(x, ctx);
}

template <class S>
bool same_matrix(const fleetdl::Matrix<S>& a, const fleetdl::Matrix<S>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() && (a.array() == b.array()).all();
}

/// Architecture equality beyond the bytes: per-node cost rows (names carry
/// labels), tensor names, dims and flags.
template <class S, class T>
void check_same_structure(nn::Model<S>& a, nn::Model<T>& b) {
  CHECK(a.input_shape() == b.input_shape());
  CHECK(a.output_shape() == b.output_shape());
  REQUIRE(a.size() == b.size());
  for (bool recurse : {false, true}) {
    const auto ca = a.cost_report(recurse), cb = b.cost_report(recurse);
    REQUIRE(ca.size() == cb.size());
    for (std::size_t i = 0; i < ca.size(); ++i) {
      CHECK(ca[i].name == cb[i].name);
      CHECK(ca[i].type == cb[i].type);
      CHECK(ca[i].in == cb[i].in);
      CHECK(ca[i].out == cb[i].out);
      CHECK(ca[i].params == cb[i].params);
      CHECK(ca[i].buffers == cb[i].buffers);
      CHECK(ca[i].macs == cb[i].macs);
    }
  }
  const auto ta = a.tensors();
  const auto tb = b.tensors();
  REQUIRE(ta.size() == tb.size());
  for (std::size_t i = 0; i < ta.size(); ++i) {
    CHECK(ta[i].name == tb[i].name);
    CHECK(ta[i].dims == tb[i].dims);
    CHECK(ta[i].trainable == tb[i].trainable);
  }
}

/// Kinds of the nodes stored in the file (the Residual body and Concat
/// branches are configs, not nodes; a nested Sequential node is a node).
template <class S>
void collect_kinds(const nn::Node<S>& n, std::set<int>& out);
template <class S>
void collect_children(const nn::Sequential<S>& s, std::set<int>& out) {
  for (Index i = 0; i < s.size(); ++i) collect_kinds(s.at(i), out);
}
template <class S>
void collect_kinds(const nn::Node<S>& n, std::set<int>& out) {
  out.insert(static_cast<int>(n.kind()));
  if (const auto* s = dynamic_cast<const nn::Sequential<S>*>(&n)) {
    collect_children(*s, out);
  } else if (const auto* r = dynamic_cast<const nn::Residual<S>*>(&n)) {
    collect_children(r->body(), out);
    if (r->projection()) collect_children(*r->projection(), out);
  } else if (const auto* c = dynamic_cast<const nn::Concat<S>*>(&n)) {
    for (Index i = 0; i < c->size(); ++i) collect_children(c->branch(i), out);
  }
}

/// Every node kind, input 3x12x12, with labels, non-default configs and
/// non-trivial parameters and running statistics.
template <class S>
nn::Model<S> every_kind_model(std::uint64_t seed) {
  using namespace nn;
  std::vector<NodePtr<S>> v;
  Conv2DOptions o;
  o.in_channels = 3;
  o.out_channels = 6;
  o.kernel_h = 3;
  o.kernel_w = 3;
  o.pad_h = 2;
  o.pad_w = 2;
  o.dilation_h = 2;
  o.dilation_w = 2;
  o.groups = 3;
  o.bias = false;
  v.push_back(std::make_unique<Conv2D<S>>(o));  // 0: 6x12x12
  v.back()->label = "grouped dilated";
  v.push_back(std::make_unique<BatchNorm<S>>(6, 1e-3, 0.05));  // 1
  v.back()->label = "bn \xc2\xb7 1";
  v.push_back(relu6<S>());  // 2
  {
    Sequential<S> body;
    body.add(std::make_unique<Conv2D<S>>(6, 6, 3, 1, 1));
    body.add(std::make_unique<BatchNorm<S>>(6, 2e-5, 0.2));
    body.add(relu<S>());
    body.at(0).label = "inner";
    v.push_back(std::make_unique<Residual<S>>(std::move(body)));  // 3: identity shortcut
    v.back()->label = "identity shortcut";
  }
  {
    Sequential<S> body, proj;
    body.add(std::make_unique<Conv2D<S>>(6, 8, 3, 2, 1));  // 8x6x6
    proj.add(std::make_unique<Conv2D<S>>(6, 8, 1, 2));     // 8x6x6
    v.push_back(std::make_unique<Residual<S>>(std::move(body), std::move(proj)));  // 4
  }
  {
    auto c = std::make_unique<Concat<S>>();
    Sequential<S> b0, b1, b2;
    b0.add(std::make_unique<Conv2D<S>>(8, 4, 1));
    b0.add(nn::tanh<S>());
    b0.at(0).label = "1x1";
    b1.add(std::make_unique<AvgPool2D<S>>(3, 1, 1));
    b1.add(sigmoid<S>());
    b2.add(std::make_unique<MaxPool2D<S>>(3, 1, 1));
    c->add(std::move(b0)).add(std::move(b1)).add(std::move(b2));
    c->label = "three branches";
    v.push_back(std::move(c));  // 5: 20x6x6
  }
  v.push_back(std::make_unique<AvgPool2D<S>>(2, 2, 1));  // 6: 20x4x4, padded
  v.push_back(std::make_unique<Dropout<S>>(0.25));       // 7
  {
    std::vector<NodePtr<S>> inner;
    inner.push_back(std::make_unique<Conv2D<S>>(20, 10, 1));
    inner.push_back(relu<S>());
    v.push_back(std::make_unique<Sequential<S>>(std::move(inner)));  // 8: 10x4x4
    v.back()->label = "nested";
  }
  v.push_back(std::make_unique<GlobalAvgPool<S>>());        // 9: 10x1x1
  v.push_back(std::make_unique<Flatten<S>>());              // 10
  v.push_back(std::make_unique<Dense<S>>(10, 7, false));    // 11
  v.push_back(std::make_unique<Softmax<S>>());              // 12
  auto m = Model<S>::create(Shape{3, 12, 12}, std::move(v));
  REQUIRE(m.ok());
  m->init(seed);
  fleetdl::Rng rng(seed + 1);
  for (Index i = 0; i < m->param_count(); ++i) m->params()[i] += static_cast<S>(rng.uniform(-0.05, 0.05));
  for (auto& t : m->tensors()) {
    const bool var = t.name.size() > 11 && t.name.compare(t.name.size() - 11, 11, "running_var") == 0;
    if (t.trainable) continue;
    for (Index k = 0; k < t.size(); ++k) t.data[k] = static_cast<S>(var ? rng.uniform(0.5, 2.0) : rng.uniform(-0.5, 0.5));
  }
  return std::move(*m);
}

template <class S>
nn::Model<S> zoo(std::string_view name, std::uint64_t seed) {
  auto m = nn::make_model<S>(name);
  REQUIRE(m.ok());
  m->init(seed);
  return std::move(*m);
}

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "fleetdl_io_XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
  std::vector<std::string> entries() const {
    std::set<std::string> s;
    for (const auto& e : fs::directory_iterator(path)) s.insert(e.path().filename().string());
    return {s.begin(), s.end()};
  }
};

/// Full round-trip check of one model stored as `dtype` and read back as T.
template <class S, class T>
void check_round_trip(nn::Model<S>& m, const io::Metadata& meta, io::DType dtype) {
  const Bytes bytes = io::encode_model(m, meta, dtype);
  auto r = decode<T>(bytes, "rt.fdl");
  REQUIRE(r.ok());
  CHECK(r->version == 1);
  CHECK(r->metadata == meta);
  check_same_structure(m, r->model);
  // Re-encoding in the same dtype gives the very same bytes (architecture,
  // metadata, names, flags, values) whenever T holds the stored values
  // exactly (always, except f64 storage read as float).
  if (dtype == io::DType::f32 || std::is_same_v<T, double>) CHECK(io::encode_model(r->model, meta, dtype) == bytes);
  // Values: exact, after rounding through the stored dtype.
  const auto stored = [&](S v) -> T {
    return dtype == io::DType::f32 ? static_cast<T>(static_cast<float>(v)) : static_cast<T>(v);
  };
  fleetdl::Vector<T> ep(m.param_count()), eb(m.buffer_count());
  for (Index i = 0; i < ep.size(); ++i) ep[i] = stored(m.params()[i]);
  for (Index i = 0; i < eb.size(); ++i) eb[i] = stored(m.buffers()[i]);
  CHECK(first_diff(r->model.params(), ep) == -1);
  CHECK(first_diff(r->model.buffers(), eb) == -1);
  // Identical forward output (eval, and training with the same RNG) when the
  // decoded model holds exactly the original values.
  if constexpr (std::is_same_v<S, T>) {
    nn::Model<S> ref(m);
    ref.params() = ep;
    ref.buffers() = eb;
    const auto x = random_batch<S>(m.input_shape(), 3, 1234);
    const fleetdl::Matrix<S> ya = run(ref, x), yb = run(r->model, x);
    CHECK(same_matrix(ya, yb));
    const fleetdl::Matrix<S> ta = run(ref, x, true), tb = run(r->model, x, true);
    CHECK(same_matrix(ta, tb));
    CHECK(first_diff(ref.buffers(), r->model.buffers()) == -1);  // running stats updated alike
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Round trips

TEST_CASE("fdl: the test-side CRC-32 is the standard one", "[io]") {
  const char* s = "123456789";
  CHECK(crc32_ref(reinterpret_cast<const std::uint8_t*>(s), 9) == 0xCBF43926U);
  CHECK(fleetdl::crc32(s, 9) == 0xCBF43926U);
}

TEST_CASE("fdl: the layout documented in fdl.hpp is the layout written", "[io]") {
  // A file built by hand from the layout comment decodes, and re-encoding the
  // decoded model gives the same bytes: writer, reader and comment agree.
  const Bytes hand = build(tiny_spec());
  auto r = decode<float>(hand);
  REQUIRE(r.ok());
  CHECK(io::encode_model(r->model, r->metadata) == hand);
  CHECK(r->metadata == io::Metadata{{"origin", "tiny"}});
  const auto spec = tiny_spec();
  auto tensors = r->model.tensors();
  REQUIRE(tensors.size() == spec.tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    INFO(spec.tensors[i].name);
    CHECK(tensors[i].name == spec.tensors[i].name);
    CHECK(tensors[i].trainable == (spec.tensors[i].flags == 1));
    for (Index k = 0; k < tensors[i].size(); ++k)
      CHECK(tensors[i].data[k] == static_cast<float>(spec.tensors[i].values[static_cast<std::size_t>(k)]));
  }
  // Header fields.
  CHECK(std::memcmp(hand.data(), "FLEETDL\x1a", 8) == 0);
  CHECK(get_u32(hand, 8) == 1);
  CHECK(get_u32(hand, 12) == 0);
  CHECK(get_u64(hand, 16) == hand.size());
  CHECK(get_u32(hand, hand.size() - 4) == crc32_ref(hand.data(), hand.size() - 4));
}

TEMPLATE_TEST_CASE("fdl: every zoo model round-trips", "[io]", float, double) {
  using S = TestType;
  for (auto name : nn::model_names) {
    INFO("model " << name);
    auto m = zoo<S>(name, 42);
    const io::Metadata meta = {{"name", std::string(name)}, {"round", "3"}, {"clients", "10"}};
    check_round_trip<S, S>(m, meta, io::DType::f32);
    check_round_trip<S, S>(m, meta, io::DType::f64);
  }
}

TEMPLATE_TEST_CASE("fdl: a model with every node kind round-trips", "[io]", float, double) {
  using S = TestType;
  auto m = every_kind_model<S>(7);
  std::set<int> kinds;
  for (Index i = 0; i < m.size(); ++i) collect_kinds(m.node(i), kinds);
  CHECK(kinds == std::set<int>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 32, 33, 34});
  const io::Metadata meta = {{"dataset", "synthetic"}, {"note", "every kind"}};
  check_round_trip<S, S>(m, meta, io::DType::f32);
  check_round_trip<S, S>(m, meta, io::DType::f64);

  // Configuration details survive (not only through byte equality).
  const Bytes bytes = io::encode_model(m, meta, io::DType::f64);
  auto r = decode<S>(bytes);
  REQUIRE(r.ok());
  auto& d = r->model;
  const auto& c0 = dynamic_cast<const nn::Conv2D<S>&>(d.node(0));
  CHECK(c0.options().groups == 3);
  CHECK(c0.options().dilation_h == 2);
  CHECK(c0.options().dilation_w == 2);
  CHECK(c0.options().pad_h == 2);
  CHECK_FALSE(c0.options().bias);
  CHECK(d.node(0).label == "grouped dilated");
  const auto& bn1 = dynamic_cast<const nn::BatchNorm<S>&>(d.node(1));
  CHECK(bn1.eps() == 1e-3);
  CHECK(bn1.momentum() == 0.05);
  CHECK(d.node(1).label == "bn \xc2\xb7 1");
  const auto& res = dynamic_cast<const nn::Residual<S>&>(d.node(3));
  CHECK(res.projection() == nullptr);
  CHECK(res.body().at(0).label == "inner");
  const auto& bn2 = dynamic_cast<const nn::BatchNorm<S>&>(res.body().at(1));
  CHECK(bn2.eps() == 2e-5);
  CHECK(bn2.momentum() == 0.2);
  CHECK(dynamic_cast<const nn::Residual<S>&>(d.node(4)).projection() != nullptr);
  const auto& cat = dynamic_cast<const nn::Concat<S>&>(d.node(5));
  CHECK(cat.size() == 3);
  CHECK(cat.branch(0).at(0).label == "1x1");
  CHECK(dynamic_cast<const nn::AvgPool2D<S>&>(cat.branch(1).at(0)).padding() == 1);
  const auto& ap = dynamic_cast<const nn::AvgPool2D<S>&>(d.node(6));
  CHECK(ap.kernel() == 2);
  CHECK(ap.stride() == 2);
  CHECK(ap.padding() == 1);
  CHECK(dynamic_cast<const nn::Dropout<S>&>(d.node(7)).p() == 0.25);
  CHECK(d.node(8).kind() == nn::NodeKind::sequential);
  CHECK(d.node(8).label == "nested");
  CHECK_FALSE(dynamic_cast<const nn::Dense<S>&>(d.node(11)).has_bias());
  // Running statistics are non-trivial and survive exactly (f64 storage).
  CHECK(first_diff(d.buffers(), m.buffers()) == -1);
  CHECK(m.buffers().cwiseAbs().minCoeff() > S(0));
}

TEST_CASE("fdl: float files read as double and double files read as float", "[io]") {
  auto mf = every_kind_model<float>(11);
  auto md = every_kind_model<double>(12);
  const io::Metadata meta = {{"k", "v"}};
  check_round_trip<float, double>(mf, meta, io::DType::f32);
  check_round_trip<float, double>(mf, meta, io::DType::f64);
  check_round_trip<double, float>(md, meta, io::DType::f32);
  check_round_trip<double, float>(md, meta, io::DType::f64);

  // A float model's file read as double and written back as f32 is the same
  // file; the double model computes the same function to float precision.
  const Bytes ff = io::encode_model(mf, meta);
  auto rd = decode<double>(ff);
  REQUIRE(rd.ok());
  CHECK(io::encode_model(rd->model, meta, io::DType::f32) == ff);
  const auto xf = random_batch<float>(mf.input_shape(), 2, 5);
  const fleetdl::Matrix<double> xd = xf.cast<double>();
  const fleetdl::Matrix<float> yf = run(mf, xf);
  const fleetdl::Matrix<double> yd = run(rd->model, xd);
  REQUIRE(yf.rows() == yd.rows());
  for (Index i = 0; i < yf.size(); ++i) CHECK(yd.data()[i] == Approx(yf.data()[i]).margin(1e-5));

  // Tensors may mix dtypes within one file.
  auto spec = tiny_spec();
  spec.tensors[0].dtype = 2;
  spec.tensors[0].values[3] = 0.1;  // not representable in float
  spec.tensors[5].dtype = 2;
  auto r64 = decode<double>(build(spec));
  REQUIRE(r64.ok());
  CHECK(r64->model.params()[3] == 0.1);
  auto r32 = decode<float>(build(spec));
  REQUIRE(r32.ok());
  CHECK(r32->model.params()[3] == static_cast<float>(0.1));
  // A finite double beyond float's range is fine as double, not as float.
  spec.tensors[0].values[4] = 1e300;
  CHECK(decode<double>(build(spec)).ok());
  expect_error<float>(build(spec), Errc::corrupt, {"tensor 0 '0.weight'", "value 4 is not finite"});
}

TEST_CASE("fdl: metadata is preserved exactly", "[io]") {
  auto m = zoo<float>("cnn1", 3);
  io::Metadata meta = {
      {"", ""},
      {"dup", "1"},
      {"dup", "2"},
      {std::string("nul\0key", 7), std::string("\xff\x00\x01", 3)},
      {"longest", std::string(65535, 'x')},
      {std::string(65535, 'k'), "longest key"},
  };
  for (int i = 0; i < 50; ++i) meta.emplace_back("key" + std::to_string(i), std::to_string(i * i));
  const Bytes b = io::encode_model(m, meta);
  auto r = decode<float>(b);
  REQUIRE(r.ok());
  CHECK(r->metadata == meta);
  CHECK(io::encode_model(r->model, r->metadata) == b);
}

TEST_CASE("fdl: the documented limits themselves are accepted", "[io]") {
  SECTION("composites nested exactly FLEETDL_MAX_DEPTH deep") {
    // kMaxDepth nested Sequential nodes around a Dense 4->2.
    LE a;
    input(a, 4, 1, 1);
    for (int d = 0; d < kMaxDepth; ++d) node(a.u32(1), k_seq);
    dense(a.u32(1), 4, 2);
    FileSpec s;
    s.arch = a.b;
    std::string prefix;
    for (int d = 0; d <= kMaxDepth; ++d) prefix += "0.";
    s.tensors = {{prefix + "weight", 1, 1, {2, 4}, ramp(8, 0)}, {prefix + "bias", 1, 1, {2}, {1, 2}}};
    auto r = decode<float>(build(s));
    REQUIRE(r.ok());
    CHECK(r->model.param_count() == 10);
    CHECK(io::encode_model(r->model, r->metadata) == build(s));
  }
  SECTION("exactly FLEETDL_MAX_NODES nodes") {
    LE a;
    input(a, 3, 1, 1).u32(1);
    node(a, k_seq).u32(kMaxNodes - 1);
    for (std::uint32_t i = 0; i + 1 < kMaxNodes; ++i) node(a, k_relu);
    FileSpec s;
    s.arch = a.b;
    auto r = decode<float>(build(s));
    REQUIRE(r.ok());
    CHECK(r->model.size() == 1);
  }
}

// ---------------------------------------------------------------------------
// Save and load

TEST_CASE("fdl: save_model/load_model through a temporary directory", "[io]") {
  TempDir dir;
  const std::string path = dir.file("model.fdl");
  auto m = zoo<float>("cnn1", 1);
  const io::Metadata meta = {{"round", "1"}};
  REQUIRE(io::save_model(path, m, meta).ok());
  CHECK(dir.entries() == std::vector<std::string>{"model.fdl"});  // no model.fdl.tmp left
  auto bytes = io::read_file_bytes(path);
  REQUIRE(bytes.ok());
  CHECK(*bytes == io::encode_model(m, meta));
  auto l = io::load_model<float>(path);
  REQUIRE(l.ok());
  CHECK(l->metadata == meta);
  CHECK(first_diff(l->model.params(), m.params()) == -1);

  SECTION("an existing file is replaced") {
    auto m2 = zoo<double>("lenet300_100", 2);
    const io::Metadata meta2 = {{"round", "2"}};
    REQUIRE(io::save_model(path, m2, meta2, io::DType::f64).ok());
    CHECK(dir.entries() == std::vector<std::string>{"model.fdl"});
    auto l2 = io::load_model<double>(path);
    REQUIRE(l2.ok());
    CHECK(l2->metadata == meta2);
    CHECK(first_diff(l2->model.params(), m2.params()) == -1);
  }
  SECTION("a failed save leaves the existing file untouched") {
    fs::create_directory(path + ".tmp");  // the temporary cannot be created
    auto s = io::save_model(path, zoo<float>("lenet5", 3));
    REQUIRE_FALSE(s.ok());
    CHECK(s.error().code == Errc::io_error);
    CHECK_THAT(s.error().message, Catch::Contains(path));
    auto again = io::read_file_bytes(path);
    REQUIRE(again.ok());
    CHECK(*again == *bytes);
  }
  SECTION("saving into a missing directory fails and creates nothing") {
    const std::string bad = dir.file("missing/model.fdl");
    auto s = io::save_model(bad, m);
    REQUIRE_FALSE(s.ok());
    CHECK(s.error().code == Errc::io_error);
    CHECK_THAT(s.error().message, Catch::Contains(bad));
    CHECK_FALSE(fs::exists(dir.path / "missing"));
    CHECK(dir.entries() == std::vector<std::string>{"model.fdl"});
  }
  SECTION("saving over a directory fails and leaves no temporary") {
    fs::create_directory(dir.path / "adir");
    const std::string bad = dir.file("adir");
    auto s = io::save_model(bad, m);
    REQUIRE_FALSE(s.ok());
    CHECK(s.error().code == Errc::io_error);
    CHECK_THAT(s.error().message, Catch::Contains(bad));
    CHECK(fs::is_directory(dir.path / "adir"));
    CHECK(dir.entries() == std::vector<std::string>{"adir", "model.fdl"});
  }
  SECTION("load errors name the path") {
    const std::string missing = dir.file("nope.fdl");
    auto r = io::load_model<float>(missing);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::io_error);
    CHECK(r.error().message.rfind(missing + ": ", 0) == 0);
    CHECK_THAT(r.error().message, Catch::Contains("cannot open"));

    auto d = io::load_model<float>(dir.path.string());
    REQUIRE_FALSE(d.ok());
    CHECK_THAT(d.error().message, Catch::Contains(dir.path.string()));

    Bytes flipped = *bytes;
    flipped[flipped.size() / 2] ^= 0x10;
    const std::string corrupt = dir.file("corrupt.fdl");
    REQUIRE(io::write_file_atomic(corrupt, flipped).ok());
    auto c = io::load_model<float>(corrupt);
    REQUIRE_FALSE(c.ok());
    CHECK(c.error().code == Errc::checksum_mismatch);
    CHECK(c.error().message.rfind(corrupt + ": ", 0) == 0);

    const std::string empty = dir.file("empty.fdl");
    std::FILE* f = std::fopen(empty.c_str(), "wb");
    REQUIRE(f != nullptr);
    std::fclose(f);
    auto eb = io::read_file_bytes(empty);
    REQUIRE(eb.ok());
    CHECK(eb->empty());
    auto e = io::load_model<float>(empty);
    REQUIRE_FALSE(e.ok());
    CHECK(e.error().code == Errc::bad_magic);
    CHECK(e.error().message.rfind(empty + ": ", 0) == 0);
  }
  SECTION("read_file_bytes refuses a file over max_bytes") {
    const auto size = static_cast<std::uint64_t>(bytes->size());
    auto r = io::read_file_bytes(path, size - 1);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::limit_exceeded);
    CHECK(r.error().message.rfind(path + ": ", 0) == 0);
    CHECK_THAT(r.error().message, Catch::Contains(std::to_string(size)));
    auto ok = io::read_file_bytes(path, size);
    REQUIRE(ok.ok());
    CHECK(ok->size() == bytes->size());
  }
}

// ---------------------------------------------------------------------------
// Bad files

TEST_CASE("fdl: bad headers are rejected with a specific error naming the file", "[io]") {
  const Bytes good = build(tiny_spec());
  REQUIRE(decode<float>(good).ok());
  const auto with = [&](auto edit, bool seal = true) {
    Bytes b = good;
    edit(b);
    if (seal) reseal(b);
    return b;
  };
  struct Case {
    const char* what;
    Bytes bytes;
    Errc code;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"empty", {}, Errc::bad_magic, {"bad magic"}},
      {"shorter than the magic", Bytes(good.begin(), good.begin() + 7), Errc::bad_magic, {"bad magic"}},
      {"wrong magic", with([](Bytes& b) { b[7] = 0; }), Errc::bad_magic, {"not a fleetdl model file"}},
      {"PNG signature", Bytes{0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 0}, Errc::bad_magic, {"bad magic"}},
      {"magic only", Bytes(good.begin(), good.begin() + 8), Errc::truncated, {"inside the header", "8 bytes"}},
      {"header cut at 20 bytes", Bytes(good.begin(), good.begin() + 20), Errc::truncated, {"inside the header"}},
      {"version 2", with([](Bytes& b) { set_u32(b, 8, 2); }), Errc::bad_version, {"version 2", "reads version 1"}},
      {"version 0", with([](Bytes& b) { set_u32(b, 8, 0); }), Errc::bad_version, {"version 0"}},
      {"version 0xFFFFFFFF", with([](Bytes& b) { set_u32(b, 8, 0xFFFFFFFFU); }), Errc::bad_version, {"4294967295"}},
      {"unknown header flags", with([](Bytes& b) { set_u32(b, 12, 1); }), Errc::unsupported, {"unknown header flags"}},
      {"length larger than the file", with([&](Bytes& b) { set_u64(b, 16, good.size() + 1); }, false),
       Errc::truncated, {"header says " + std::to_string(good.size() + 1) + " bytes, file has " +
                         std::to_string(good.size())}},
      {"length 2^64-1", with([](Bytes& b) { set_u64(b, 16, ~std::uint64_t{0}); }, false), Errc::truncated,
       {"header says 18446744073709551615 bytes"}},
      {"length smaller than the file", with([&](Bytes& b) { set_u64(b, 16, good.size() - 1); }, false),
       Errc::corrupt, {"trailing bytes"}},
      {"bytes appended after the CRC", with([](Bytes& b) { b.push_back(0); }, false), Errc::corrupt,
       {"trailing bytes"}},
      {"header only, length 24", with([](Bytes& b) { b.resize(24); set_u64(b, 16, 24); }, false), Errc::truncated,
       {"too short"}},
      {"header + 3 bytes", with([](Bytes& b) { b.resize(27); set_u64(b, 16, 27); }, false), Errc::truncated,
       {"too short"}},
      {"CRC field flipped", with([](Bytes& b) { b.back() ^= 0x80; }, false), Errc::checksum_mismatch, {"CRC-32"}},
      {"body byte flipped", with([](Bytes& b) { b[40] ^= 0x01; }, false), Errc::checksum_mismatch,
       {"CRC-32 mismatch"}},
  };
  for (const auto& c : cases) {
    INFO("case: " << c.what);
    expect_error<float>(c.bytes, c.code, c.parts, "bad.fdl");
    expect_error<double>(c.bytes, c.code, c.parts, "dir/other name.fdl");
  }
  SECTION("a size over FLEETDL_MAX_MODEL_BYTES is refused before reading") {
    auto r = io::decode_model<float>(good.data(), static_cast<std::size_t>(FLEETDL_MAX_MODEL_BYTES) + 1, "huge.fdl");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::limit_exceeded);
    CHECK_THAT(r.error().message, Catch::StartsWith("huge.fdl: ") && Catch::Contains("FLEETDL_MAX_MODEL_BYTES"));
  }
}

TEST_CASE("fdl: crafted architectures with a correct CRC are rejected precisely", "[io]") {
  struct Case {
    const char* what;
    Bytes bytes;
    Errc code;
    std::vector<std::string> parts;
  };
  const auto arch_file = [](const LE& a) {
    FileSpec s;
    s.arch = a.b;
    return build(s);
  };
  const auto one = [&](auto write) {  // input 2x4x4, the nodes `write` adds
    LE a;
    input(a, 2, 4, 4);
    write(a);
    return arch_file(a);
  };
  const auto nested = [&](std::uint16_t kind, int depth) {  // `depth` composites around a relu
    LE a;
    input(a, 2, 4, 4).u32(1);
    for (int d = 0; d < depth; ++d) {
      node(a, kind);
      if (kind == k_residual) a.u8(0);
      if (kind == k_concat) a.u32(1);
      a.u32(1);
    }
    node(a, k_relu);
    return arch_file(a);
  };
  std::vector<Case> cases = {
      {"unknown node kind 99", one([](LE& a) { node(a.u32(1), 99); }), Errc::unsupported,
       {"architecture node.0", "unknown node kind 99"}},
      {"unknown node kind 14 (gap in the enum)", one([](LE& a) { node(a.u32(2), k_relu); node(a, 14); }),
       Errc::unsupported, {"node.1", "unknown node kind 14"}},
      {"unknown node kind 0", one([](LE& a) { node(a.u32(1), 0); }), Errc::unsupported, {"unknown node kind 0"}},
      {"unknown kind inside a residual body",
       one([](LE& a) { node(a.u32(1), k_residual).u8(0).u32(2); node(a, k_relu); node(a, 0xFFFF); }),
       Errc::unsupported, {"node.0.body.1", "unknown node kind 65535"}},
      {"node count 0xFFFFFFFF", one([](LE& a) { a.u32(0xFFFFFFFFU); }), Errc::limit_exceeded,
       {"4294967295 nodes exceed FLEETDL_MAX_NODES (" + std::to_string(kMaxNodes) + ")"}},
      {"node count FLEETDL_MAX_NODES + 1", one([](LE& a) { a.u32(kMaxNodes + 1); }), Errc::limit_exceeded,
       {"FLEETDL_MAX_NODES"}},
      {"4000 nodes announced, 3 present", one([](LE& a) { node(node(node(a.u32(4000), k_relu), k_relu), k_relu); }),
       Errc::truncated, {"4000 nodes announced", "architecture bytes left"}},
      {"nodes over FLEETDL_MAX_NODES across nested lists",
       one([](LE& a) {
         a.u32(2);
         for (int s = 0; s < 2; ++s) {
           node(a, k_seq).u32(kMaxNodes / 2 + 10);
           for (std::uint32_t i = 0; i < kMaxNodes / 2 + 10; ++i) node(a, k_relu);
         }
       }),
       Errc::limit_exceeded, {"FLEETDL_MAX_NODES"}},
      {"sequentials nested FLEETDL_MAX_DEPTH + 1 deep", nested(k_seq, kMaxDepth + 1), Errc::limit_exceeded,
       {"FLEETDL_MAX_DEPTH (" + std::to_string(kMaxDepth) + ")"}},
      {"residuals nested FLEETDL_MAX_DEPTH + 1 deep", nested(k_residual, kMaxDepth + 1), Errc::limit_exceeded,
       {"FLEETDL_MAX_DEPTH"}},
      {"concats nested FLEETDL_MAX_DEPTH + 1 deep", nested(k_concat, kMaxDepth + 1), Errc::limit_exceeded,
       {"FLEETDL_MAX_DEPTH"}},
      {"label runs past the architecture", one([](LE& a) { a.u32(1).u16(k_relu).u16(1000).u8('x'); }),
       Errc::truncated, {"architecture ends inside a node header"}},
      {"dense config cut short", one([](LE& a) { node(a.u32(1), k_dense).u32(32); }), Errc::truncated,
       {"dense config"}},
      {"conv config cut short", one([](LE& a) { node(a.u32(1), k_conv).u32(2).u32(3).u32(3); }), Errc::truncated,
       {"conv2d config"}},
      {"batchnorm config cut short", one([](LE& a) { node(a.u32(1), k_bn).u32(2).u32(0); }), Errc::truncated,
       {"batchnorm config"}},
      {"dropout config cut short", one([](LE& a) { node(a.u32(1), k_dropout).u32(0); }), Errc::truncated,
       {"dropout config"}},
      {"residual flag missing", one([](LE& a) { node(a.u32(1), k_residual); }), Errc::truncated,
       {"residual config"}},
      {"dense bias flag 2", one([](LE& a) { node(a.u32(2), k_flatten); dense(a, 32, 2, 2); }), Errc::corrupt,
       {"node.1", "dense bias flag 2 is not 0 or 1"}},
      {"conv bias flag 7", one([](LE& a) { conv(a.u32(1), 2, 3, 3, 1, 0, 1, 1, 7); }), Errc::corrupt,
       {"conv2d bias flag 7"}},
      {"residual projection flag 2", one([](LE& a) { node(a.u32(1), k_residual).u8(2).u32(0); }), Errc::corrupt,
       {"residual projection flag 2"}},
      {"concat with 0 branches", one([](LE& a) { node(a.u32(1), k_concat).u32(0); }), Errc::corrupt,
       {"concat branch count 0"}},
      {"concat with 0xFFFFFFFF branches", one([](LE& a) { node(a.u32(1), k_concat).u32(0xFFFFFFFFU).u32(0); }),
       Errc::corrupt, {"concat branch count 4294967295"}},
      {"pooling stride 0", one([](LE& a) { pool(a.u32(1), k_maxpool, 2, 0, 0); }), Errc::corrupt,
       {"pooling stride 0"}},
      {"dropout p = 1", one([](LE& a) { node(a.u32(1), k_dropout).f64(1.0); }), Errc::corrupt, {"dropout p"}},
      {"dropout p = NaN", one([](LE& a) { node(a.u32(1), k_dropout).f64(std::nan("")); }), Errc::corrupt,
       {"dropout p"}},
      {"batchnorm eps = inf", one([](LE& a) { bn(a.u32(1), 2, HUGE_VAL); }), Errc::corrupt, {"not finite"}},
      {"batchnorm momentum = NaN", one([](LE& a) { bn(a.u32(1), 2, 1e-5, std::nan("")); }), Errc::corrupt,
       {"not finite"}},
      {"batchnorm eps = 0", one([](LE& a) { bn(a.u32(1), 2, 0.0); }), Errc::invalid_argument,
       {"architecture invalid", "eps"}},
      {"conv groups not dividing the channels", one([](LE& a) { conv(a.u32(1), 2, 3, 3, 1, 0, 1, 2); }),
       Errc::invalid_argument, {"architecture invalid", "groups 2"}},
      {"pool kernel 0", one([](LE& a) { pool(a.u32(1), k_avgpool, 0, 1, 0); }), Errc::invalid_argument,
       {"architecture invalid", "avgpool2d"}},
      {"avgpool padding over kernel/2", one([](LE& a) { pool(a.u32(1), k_avgpool, 2, 1, 2); }),
       Errc::invalid_argument, {"architecture invalid"}},
      {"channel mismatch between convolutions", one([](LE& a) { conv(conv(a.u32(2), 2, 3, 3), 4, 1, 1); }),
       Errc::shape_mismatch, {"architecture invalid", "node 1", "expects 4 input channels"}},
      {"dense expecting 13 features after 2x4x4", one([](LE& a) { node(a.u32(2), k_flatten); dense(a, 13, 2); }),
       Errc::shape_mismatch, {"architecture invalid", "expects 13 input features"}},
      {"batchnorm channel mismatch", one([](LE& a) { bn(a.u32(1), 5); }), Errc::shape_mismatch,
       {"architecture invalid", "batchnorm"}},
      {"residual body changes channels without projection",
       one([](LE& a) { node(a.u32(1), k_residual).u8(0).u32(1); conv(a, 2, 3, 1); }), Errc::shape_mismatch,
       {"architecture invalid", "add a projection"}},
      {"concat branches differ in height",
       one([](LE& a) { node(a.u32(1), k_concat).u32(2).u32(0).u32(1); pool(a, k_maxpool, 2, 2, 0); }),
       Errc::shape_mismatch, {"architecture invalid", "concat"}},
      {"kernel larger than the input", one([](LE& a) { conv(a.u32(1), 2, 3, 5); }), Errc::shape_mismatch,
       {"architecture invalid", "kernel larger"}},
  };
  // Architecture length fields that disagree with the bytes.
  {
    FileSpec s = tiny_spec();
    s.arch_len = 1000000;
    cases.push_back({"architecture length larger than the file", build(s), Errc::truncated,
                     {"architecture needs 1000000 bytes, file has"}});
    s.arch_len = 0xFFFFFFFFU;
    cases.push_back({"architecture length 0xFFFFFFFF", build(s), Errc::truncated,
                     {"architecture needs 4294967295 bytes"}});
    s = tiny_spec();
    s.arch_len = static_cast<std::uint32_t>(s.arch.size() - 1);
    cases.push_back({"architecture length one byte short", build(s), Errc::truncated,
                     {"architecture ends inside a dense config"}});
    s = tiny_spec();
    s.arch.insert(s.arch.end(), {1, 2, 3, 4});
    cases.push_back({"junk after the architecture", build(s), Errc::corrupt,
                     {"4 unread bytes after the architecture"}});
    s = tiny_spec();
    s.arch.resize(12);  // the input shape, no node count
    cases.push_back({"architecture without a node list", build(s), Errc::truncated,
                     {"architecture ends inside a node list"}});
  }
  for (const auto& c : cases) {
    INFO("case: " << c.what);
    expect_error<float>(c.bytes, c.code, c.parts, "crafted.fdl");
    expect_error<double>(c.bytes, c.code, c.parts, "crafted.fdl");
  }
}

TEST_CASE("fdl: crafted metadata and tensors with a correct CRC are rejected precisely", "[io]") {
  struct Case {
    const char* what;
    FileSpec spec;
    Errc code;
    std::vector<std::string> parts;
  };
  const auto edit = [](auto f) {
    FileSpec s = tiny_spec();
    f(s);
    return s;
  };
  const std::vector<Case> cases = {
      {"metadata count 0xFFFFFFFF", edit([](FileSpec& s) { s.meta_count = 0xFFFFFFFFU; }), Errc::truncated,
       {"4294967295 metadata entries announced"}},
      {"metadata string past the end",
       edit([](FileSpec& s) { s.meta_raw = LE().u32(1).u16(0xFFFF).u8('a').b; }), Errc::truncated,
       {"file ends inside metadata entry 0"}},
      {"tensor count one short", edit([](FileSpec& s) { s.tensor_count = 7; }), Errc::corrupt,
       {"7 tensors stored, the architecture has 8"}},
      {"tensor count 0xFFFFFFFF", edit([](FileSpec& s) { s.tensor_count = 0xFFFFFFFFU; }), Errc::corrupt,
       {"4294967295 tensors stored, the architecture has 8"}},
      {"an extra tensor", edit([](FileSpec& s) { s.tensors.push_back({"5.weight", 1, 1, {1}, {0}}); }),
       Errc::corrupt, {"9 tensors stored, the architecture has 8"}},
      {"wrong tensor name", edit([](FileSpec& s) { s.tensors[2].name = "1.gamma"; }), Errc::corrupt,
       {"tensor 2 '1.weight': stored name is '1.gamma'"}},
      {"tensors out of order", edit([](FileSpec& s) { std::swap(s.tensors[0], s.tensors[1]); }), Errc::corrupt,
       {"tensor 0 '0.weight': stored name is '0.bias'"}},
      {"wrong number of dims", edit([](FileSpec& s) { s.tensors[0].dims = {3, 18, 1}; }), Errc::corrupt,
       {"tensor 0 '0.weight': 3 dims stored, expected 4"}},
      {"wrong dim", edit([](FileSpec& s) { s.tensors[0].dims = {3, 2, 9, 1}; }), Errc::corrupt,
       {"tensor 0 '0.weight': dim 2 is 9, expected 3"}},
      {"wrong dim (transposed dense)", edit([](FileSpec& s) { s.tensors[6].dims = {12, 2}; }), Errc::corrupt,
       {"tensor 6 '4.weight': dim 0 is 12, expected 2"}},
      {"unknown dtype 3", edit([](FileSpec& s) { s.tensors[1].dtype = 3; }), Errc::unsupported,
       {"tensor 1 '0.bias': unknown dtype 3"}},
      {"unknown dtype 0", edit([](FileSpec& s) { s.tensors[7].dtype = 0; }), Errc::unsupported,
       {"tensor 7 '4.bias': unknown dtype 0"}},
      {"running stats flagged trainable", edit([](FileSpec& s) { s.tensors[4].flags = 1; }), Errc::corrupt,
       {"tensor 4 '1.running_mean': flags", "do not match the architecture"}},
      {"weight flagged not trainable", edit([](FileSpec& s) { s.tensors[0].flags = 0; }), Errc::corrupt,
       {"tensor 0 '0.weight': flags"}},
      {"reserved tensor flag bit", edit([](FileSpec& s) { s.tensors[0].flags = 3; }), Errc::corrupt,
       {"tensor 0 '0.weight': flags"}},
      {"NaN value (f32)", edit([](FileSpec& s) { s.tensors[0].values[5] = std::nan(""); }), Errc::corrupt,
       {"tensor 0 '0.weight': value 5 is not finite"}},
      {"+inf value (f32)", edit([](FileSpec& s) { s.tensors[7].values[1] = HUGE_VAL; }), Errc::corrupt,
       {"tensor 7 '4.bias': value 1 is not finite"}},
      {"-inf running variance (f64)",
       edit([](FileSpec& s) {
         s.tensors[5].dtype = 2;
         s.tensors[5].values[2] = -HUGE_VAL;
       }),
       Errc::corrupt, {"tensor 5 '1.running_var': value 2 is not finite"}},
      {"last tensor one value short", edit([](FileSpec& s) { s.tensors[7].values.pop_back(); }), Errc::truncated,
       {"tensor 7 '4.bias' needs 8 bytes, file has 4 left"}},
      {"f64 tensor with f32-sized data",
       edit([](FileSpec& s) {
         s.tensors[7].dtype = 2;
         s.tensors[7].values = {1.0};
       }),
       Errc::truncated, {"tensor 7 '4.bias' needs 16 bytes, file has 8 left"}},
      {"tensor name past the end",
       edit([](FileSpec& s) {
         s.tensors.resize(7);
         s.tensor_count = 8;
         s.trailing = LE().u16(300).u8('4').b;
       }),
       Errc::truncated, {"file ends inside the header of tensor 7 '4.bias'"}},
      {"one trailing byte after the tensors", edit([](FileSpec& s) { s.trailing = {0}; }), Errc::corrupt,
       {"1 unread bytes after the tensors"}},
      {"a whole extra copy of the last tensor",
       edit([](FileSpec& s) {
         s.trailing = LE().str("4.bias").u8(1).u8(1).u8(1).u32(2).f32(0).f32(0).b;
       }),
       Errc::corrupt, {"23 unread bytes after the tensors"}},
  };
  for (const auto& c : cases) {
    INFO("case: " << c.what);
    const Bytes b = build(c.spec);
    expect_error<float>(b, c.code, c.parts, "model.fdl");
    expect_error<double>(b, c.code, c.parts, "model.fdl");
  }
}

TEST_CASE("fdl: an architecture larger than the file fails before allocating", "[io]") {
  // If the decoder allocated before comparing the parameter count with the
  // bytes left it would ask for terabytes here (bad_alloc, or the OOM
  // killer); instead it must report the mismatch, quickly.
  struct Case {
    const char* what;
    Bytes arch;
    std::string needs;
  };
  std::vector<Case> cases;
  {
    LE a;
    input(a, 1000000, 1, 1).u32(1);
    dense(a, 1000000, 1000000);
    cases.push_back({"dense 1e6 x 1e6", a.b, "architecture needs 1000001000000 values (4000004000000 bytes)"});
  }
  {
    LE a;
    input(a, kMaxDim, 1, 1).u32(1);
    dense(a, kMaxDim, kMaxDim, 0);
    cases.push_back({"dense FLEETDL_MAX_DIM^2", a.b, "architecture needs 1099511627776 values"});
  }
  {
    LE a;
    input(a, 1024, 64, 64).u32(2);
    conv(a, 1024, 1024, 31, 1, 15);
    bn(a, 1024);
    cases.push_back({"conv 1024->1024 k31 + batchnorm", a.b,
                     "architecture needs " + std::to_string(1024LL * 1024 * 31 * 31 + 1024 + 4096) + " values"});
  }
  {
    LE a;  // a modest model that still needs more than the file has
    input(a, 2, 4, 4).u32(2);
    node(a, k_flatten);
    dense(a, 32, 1000);
    cases.push_back({"dense 32 x 1000, no tensors", a.b, "architecture needs 33000 values (132000 bytes), file has 4 left"});
  }
  for (const auto& c : cases) {
    INFO("case: " << c.what);
    FileSpec s;
    s.arch = c.arch;
    const Bytes b = build(s);
    const auto t0 = std::chrono::steady_clock::now();
    expect_error<float>(b, Errc::truncated, {c.needs, "left"}, "big.fdl");
    expect_error<double>(b, Errc::truncated, {c.needs, "left"}, "big.fdl");
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK(secs < 0.5);
  }
}

TEST_CASE("fdl: every truncation is rejected", "[io]") {
  SECTION("prefixes of a zoo model, as they are") {
    const Bytes b = io::encode_model(zoo<float>("cnn1", 5));
    std::size_t accepted = 0, wrong = 0, first_wrong = b.size();
    for (std::size_t len = 0; len < b.size(); ++len) {
      auto r = io::decode_model<float>(b.data(), len, "cut.fdl");
      if (r.ok()) {
        ++accepted;
        continue;
      }
      const Errc want = len < 8 ? Errc::bad_magic : Errc::truncated;
      if (r.error().code != want || r.error().message.rfind("cut.fdl: ", 0) != 0) {
        if (wrong++ == 0) first_wrong = len;
      }
    }
    CHECK(accepted == 0);
    INFO("first unexpected error at length " << first_wrong);
    CHECK(wrong == 0);
  }
  SECTION("prefixes resealed with a correct length and CRC reach the parser") {
    const std::vector<std::pair<const char*, Bytes>> files = {
        {"tiny", build(tiny_spec())},
        {"every kind f32", io::encode_model(every_kind_model<float>(3), {{"a", "b"}})},
        {"every kind f64", io::encode_model(every_kind_model<double>(4), {{"c", "d"}}, io::DType::f64)},
    };
    for (const auto& [what, full] : files) {
      INFO("file: " << what);
      const std::size_t content = full.size() - 4;  // without the CRC
      const std::size_t arch_end = 28 + get_u32(full, 24);
      std::size_t tried = 0, accepted = 0, wrong = 0;
      std::string first_wrong;
      for (std::size_t len = kHeader; len < content;) {
        Bytes t(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(len));
        t.resize(len + 4);
        reseal(t);
        auto r = decode<float>(t, "cut.fdl");
        ++tried;
        if (r.ok())
          ++accepted;
        else if (r.error().code != Errc::truncated && wrong++ == 0)
          first_wrong = std::to_string(len) + ": " + r.error().message;
        // Every length through the architecture and metadata; then a dense
        // sample of the (large) tensor section, always including its end.
        const std::size_t step = len < arch_end + 64 || content - len < 64 ? 1 : 7;
        len += step;
      }
      CHECK(tried > 300);
      CHECK(accepted == 0);
      INFO("first non-truncated error: " << first_wrong);
      CHECK(wrong == 0);
    }
  }
}

TEST_CASE("fdl: every single bit flip is detected", "[io]") {
  // Expected outcome by region: magic, version, flags, length, else CRC.
  const auto expected = [](const Bytes& b, std::size_t pos, int bit) {
    if (pos < 8) return Errc::bad_magic;
    if (pos < 12) return Errc::bad_version;
    if (pos < 16) return Errc::unsupported;
    if (pos < 24) {
      Bytes c = b;
      c[pos] = static_cast<std::uint8_t>(c[pos] ^ (1U << bit));
      return get_u64(c, 16) > b.size() ? Errc::truncated : Errc::corrupt;
    }
    return Errc::checksum_mismatch;
  };
  const auto run_flips = [&](const Bytes& b, const std::vector<std::pair<std::size_t, int>>& flips) {
    std::size_t accepted = 0, wrong = 0;
    std::string first_wrong;
    for (const auto& [pos, bit] : flips) {
      Bytes c = b;
      c[pos] = static_cast<std::uint8_t>(c[pos] ^ (1U << bit));
      auto r = decode<float>(c, "flip.fdl");
      if (r.ok()) {
        ++accepted;
        continue;
      }
      if (r.error().code != expected(b, pos, bit) && wrong++ == 0)
        first_wrong = "byte " + std::to_string(pos) + " bit " + std::to_string(bit) + ": " + r.error().message;
    }
    CHECK(accepted == 0);
    INFO("first unexpected: " << first_wrong);
    CHECK(wrong == 0);
  };
  SECTION("all bits of the tiny model") {
    const Bytes b = build(tiny_spec());
    std::vector<std::pair<std::size_t, int>> flips;
    for (std::size_t p = 0; p < b.size(); ++p)
      for (int bit = 0; bit < 8; ++bit) flips.emplace_back(p, bit);
    run_flips(b, flips);
  }
  SECTION("header, CRC and 600 sampled bits of a zoo model") {
    const Bytes b = io::encode_model(zoo<float>("cnn1", 8));
    std::vector<std::pair<std::size_t, int>> flips;
    for (std::size_t p = 0; p < b.size(); ++p)
      if (p < 64 || p + 4 >= b.size())
        for (int bit = 0; bit < 8; ++bit) flips.emplace_back(p, bit);
    fleetdl::Rng rng(17);
    for (int i = 0; i < 600; ++i)
      flips.emplace_back(static_cast<std::size_t>(rng.below(b.size())), static_cast<int>(rng.below(8)));
    run_flips(b, flips);
  }
}

// ---------------------------------------------------------------------------
// Mutation fuzzing (deterministic): mutated files with a fixed-up length and
// CRC must never crash the decoder; whatever it accepts must re-encode and
// decode to the same model.

TEST_CASE("fdl: deterministic mutation fuzz", "[io]") {
  const std::vector<Bytes> seeds = {
      build(tiny_spec()),
      io::encode_model(every_kind_model<float>(21), {{"x", "y"}}),
      io::encode_model(every_kind_model<double>(22), {}, io::DType::f64),
  };
  const std::uint32_t interesting[] = {0, 1, 2, 3, 7, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000U,
                                       0xFFFFFFFFU, kMaxDim, kMaxDim + 1, kMaxNodes, kMaxNodes + 1};
  fleetdl::Rng rng(0xFD1F022);
  std::map<Errc, int> seen;
  int accepted = 0, forwarded = 0, bad_prefix = 0, inconsistent = 0, double_disagrees = 0;
  std::string first_problem;
  const auto t0 = std::chrono::steady_clock::now();
  constexpr int iterations = 3000;
  for (int it = 0; it < iterations; ++it) {
    const Bytes& seed = seeds[rng.below(seeds.size())];
    const std::size_t arch_end = 28 + get_u32(seed, 24);
    Bytes b = seed;
    const int n_mut = 1 + static_cast<int>(rng.below(3));
    for (int k = 0; k < n_mut && !b.empty(); ++k) {
      // Favour the architecture and metadata: the tensor values are most of
      // the bytes but the least interesting to the parser.
      const bool in_arch = rng.below(10) < 6 && arch_end + 32 <= b.size();
      const std::size_t pos = in_arch ? 24 + static_cast<std::size_t>(rng.below(arch_end + 32 - 24))
                                      : static_cast<std::size_t>(rng.below(b.size()));
      switch (rng.below(9)) {
        case 0: b[pos] ^= static_cast<std::uint8_t>(1U << rng.below(8)); break;
        case 1: b[pos] = static_cast<std::uint8_t>(rng.below(256)); break;
        case 2:
          if (pos + 4 <= b.size()) set_u32(b, pos, interesting[rng.below(std::size(interesting))]);
          break;
        case 3: {
          const std::size_t n = 1 + rng.below(8);
          for (std::size_t i = 0; i < n; ++i)
            b.insert(b.begin() + static_cast<std::ptrdiff_t>(pos), static_cast<std::uint8_t>(rng.below(256)));
          break;
        }
        case 4: {
          const std::size_t n = std::min<std::size_t>(1 + rng.below(8), b.size() - pos);
          b.erase(b.begin() + static_cast<std::ptrdiff_t>(pos), b.begin() + static_cast<std::ptrdiff_t>(pos + n));
          break;
        }
        case 5: {  // overwrite with a chunk copied from elsewhere
          const std::size_t src = static_cast<std::size_t>(rng.below(b.size()));
          const std::size_t n = std::min({std::size_t{1} + rng.below(32), b.size() - src, b.size() - pos});
          const Bytes chunk(b.begin() + static_cast<std::ptrdiff_t>(src),
                            b.begin() + static_cast<std::ptrdiff_t>(src + n));
          std::copy(chunk.begin(), chunk.end(), b.begin() + static_cast<std::ptrdiff_t>(pos));
          break;
        }
        case 6: b.resize(static_cast<std::size_t>(rng.below(b.size()))); break;
        case 7:
          if (pos + 4 <= b.size())
            set_u32(b, pos, get_u32(b, pos) + static_cast<std::uint32_t>(rng.below(7)) - 3U);
          break;
        default: b[pos] = static_cast<std::uint8_t>(std::array<int, 4>{0, 1, 2, 0xFF}[rng.below(4)]); break;
      }
    }
    if (rng.below(16) != 0) reseal(b);
    auto r = decode<float>(b, "fuzz.fdl");
    auto rd = decode<double>(b, "fuzz.fdl");
    // A float read accepts a subset of what a double read accepts (a finite
    // double may overflow float); everything else is decided identically.
    const bool overflow = !r.ok() && r.error().message.find("is not finite") != std::string::npos;
    if ((r.ok() && !rd.ok()) || (!r.ok() && !rd.ok() && !overflow && r.error().code != rd.error().code)) {
      if (double_disagrees++ == 0) first_problem = "float/double disagree at iteration " + std::to_string(it);
    }
    if (!r.ok()) {
      ++seen[r.error().code];
      if (r.error().message.rfind("fuzz.fdl: ", 0) != 0 && bad_prefix++ == 0)
        first_problem = "message without the name: " + r.error().message;
      continue;
    }
    ++accepted;
    const Bytes e1 = io::encode_model(r->model, r->metadata);
    auto r2 = decode<float>(e1, "re.fdl");
    if (!r2.ok() || io::encode_model(r2->model, r2->metadata) != e1 || r2->metadata != r->metadata ||
        first_diff(r2->model.params(), r->model.params()) != -1 ||
        first_diff(r2->model.buffers(), r->model.buffers()) != -1) {
      if (inconsistent++ == 0)
        first_problem = "accepted model does not re-encode consistently at iteration " + std::to_string(it) +
                        (r2.ok() ? std::string() : ": " + r2.error().message);
      continue;
    }
    // Run the accepted model when it is small enough to do so quickly.
    Index macs = 0, act = 0;
    for (const auto& c : r->model.cost_report(true)) {
      macs += c.macs;
      act = std::max(act, c.act_out_bytes);
    }
    const Index in_size = r->model.input_shape().size();
    if (in_size > 0 && in_size <= (1 << 16) && macs <= 2000000 && act <= (1 << 22)) {
      const auto x = random_batch<float>(r->model.input_shape(), 2, static_cast<std::uint64_t>(it));
      const fleetdl::Matrix<float> y = run(r->model, x);
      CHECK(y.rows() == r->model.output_shape().size());
      ++forwarded;
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string codes;
  for (const auto& [code, n] : seen) codes += std::string(fleetdl::errc_name(code)) + " " + std::to_string(n) + "; ";
  INFO("accepted " << accepted << ", forwarded " << forwarded << ", " << secs << " s; rejected: " << codes
                   << first_problem);
  CHECK(bad_prefix == 0);
  CHECK(inconsistent == 0);
  CHECK(double_disagrees == 0);
  // The loop must reach past the CRC: value mutations are accepted, and the
  // parser's own checks (not only the checksum) reject most of the rest.
  CHECK(accepted > 100);
  CHECK(forwarded > 50);
  CHECK(seen[Errc::checksum_mismatch] < iterations / 8);
  CHECK(seen[Errc::truncated] > 0);
  CHECK(seen[Errc::corrupt] > 0);
  CHECK(seen[Errc::unsupported] > 0);
  CHECK(seen[Errc::limit_exceeded] + seen[Errc::shape_mismatch] + seen[Errc::invalid_argument] > 0);
}

// ---------------------------------------------------------------------------
// Defects of fdl.hpp (fail until the header is fixed; see the final report).

// decode_model prints header and tensor flags as "0x" followed by the DECIMAL
// value (std::to_string), so flags 0x10 are reported as "0x16".
TEST_CASE("fdl: flags in messages are printed in hexadecimal", "[io]") {
  Bytes b = build(tiny_spec());
  set_u32(b, 12, 0x10);
  reseal(b);
  expect_error<float>(b, Errc::unsupported, {"unknown header flags 0x10"});
  auto s = tiny_spec();
  s.tensors[0].flags = 0x11;
  expect_error<float>(build(s), Errc::corrupt, {"tensor 0 '0.weight': flags 0x11"});
}

// detail::read_dim returns false both when the bytes run out and when a value
// exceeds FLEETDL_MAX_DIM, so a dimension over the limit is reported as
// Errc::truncated ("architecture ends inside a dense config (or ...)"), and an
// input shape over the limit as Errc::corrupt. error.hpp reserves
// Errc::limit_exceeded for "a size exceeds a configured FLEETDL_MAX_* limit".
TEST_CASE("fdl: a dimension over FLEETDL_MAX_DIM is limit_exceeded, a missing one truncated", "[io]") {
  const auto file = [](auto write) {
    LE a;
    write(a);
    FileSpec s;
    s.arch = a.b;
    return build(s);
  };
  const std::uint32_t over = kMaxDim + 1;
  expect_error(file([&](LE& a) { dense(input(a, 2, 4, 4).u32(1), over, 2); }), Errc::limit_exceeded,
               {"node.0", "FLEETDL_MAX_DIM"});
  expect_error(file([&](LE& a) { conv(input(a, 2, 4, 4).u32(1), 2, over, 1); }), Errc::limit_exceeded,
               {"node.0", "FLEETDL_MAX_DIM"});
  expect_error(file([&](LE& a) { pool(input(a, 2, 4, 4).u32(1), k_maxpool, 2, over, 0); }), Errc::limit_exceeded,
               {"node.0", "FLEETDL_MAX_DIM"});
  expect_error(file([&](LE& a) { bn(input(a, 2, 4, 4).u32(1), over); }), Errc::limit_exceeded,
               {"node.0", "FLEETDL_MAX_DIM"});
  expect_error(file([&](LE& a) { input(a, 2, over, 4).u32(0); }), Errc::limit_exceeded, {"input shape", "FLEETDL_MAX_DIM"});
  expect_error(file([&](LE& a) { a.u32(2).u32(4); }), Errc::truncated, {"input shape"});
}

// Concat branches are Sequential composites but are not counted against
// FLEETDL_MAX_NODES ("Largest number of nodes (layers, composites)"): each
// 4-byte empty branch becomes a ~184-byte Sequential, so a file of a few MiB
// builds about a million composites (~50x the file size in memory).
TEST_CASE("fdl: concat branches count against FLEETDL_MAX_NODES", "[io]") {
  LE a;
  input(a, 1, 1, 1).u32(1);
  node(a, k_concat).u32(2);
  for (int b = 0; b < 2; ++b) {
    a.u32(1);
    node(a, k_concat).u32(kMaxNodes - 1);
    for (std::uint32_t i = 0; i + 1 < kMaxNodes; ++i) a.u32(0);
  }
  FileSpec s;
  s.arch = a.b;
  // 3 concat nodes + 2 + 2 * 4095 branches = 8195 composites.
  expect_error(build(s), Errc::limit_exceeded, {"FLEETDL_MAX_NODES"});
}

// encode_model writes strings with ByteWriter::str, which casts the length to
// u16: a metadata value or label of 65536+ bytes is written with a wrapped
// length, and non-finite values are written although decode_model rejects
// them. save_model then reports success for a file load_model cannot read.
TEST_CASE("fdl: save_model never reports success for a file load_model rejects", "[io]") {
  TempDir dir;
  const auto check = [&](const char* what, const auto& model, const io::Metadata& meta, io::DType dtype) {
    INFO(what);
    const std::string path = dir.file(std::string(what) + ".fdl");
    auto s = io::save_model(path, model, meta, dtype);
    if (!s.ok()) {  // refusing is fine, if nothing is left behind
      CHECK(s.error().code == Errc::invalid_argument);
      CHECK_FALSE(fs::exists(path));
      return;
    }
    using S = typename std::decay_t<decltype(model)>::Scalar;
    auto l = io::load_model<S>(path);
    INFO("saved, but load_model says: " << (l.ok() ? std::string("ok") : l.error().message));
    CHECK(l.ok());
    if (l.ok()) CHECK(l->metadata == meta);
  };
  auto m = zoo<float>("cnn1", 1);
  check("metadata value of 65536 bytes", m, {{"k", std::string(65536, 'v')}}, io::DType::f32);
  auto labelled = zoo<float>("cnn1", 1);
  labelled.node(0).label = std::string(70000, 'l');
  check("label of 70000 bytes", labelled, {}, io::DType::f32);
  auto nan = zoo<float>("cnn1", 1);
  nan.params()[0] = std::numeric_limits<float>::quiet_NaN();
  check("a NaN weight", nan, {}, io::DType::f32);
  auto big = zoo<double>("cnn1", 1);
  big.params()[0] = 1e300;  // finite, but not as f32
  check("a double weight beyond float range stored as f32", big, {}, io::DType::f32);
}

// read_file_bytes takes the size of whatever fopen opened. On ext4 fopen
// succeeds on a directory and ftell at SEEK_END gives LLONG_MAX, so a
// directory is reported as "9223372036854775807 bytes exceed the limit"
// (limit_exceeded), and with a large max_bytes the reader tries to allocate
// 9.2 EB: std::bad_alloc escapes (abort without exceptions).
TEST_CASE("fdl: reading a directory is an io_error, whatever max_bytes", "[io]") {
  TempDir dir;
  for (std::uint64_t max : {std::uint64_t{FLEETDL_MAX_MODEL_BYTES}, std::numeric_limits<std::uint64_t>::max()}) {
    INFO("max_bytes " << max);
    bool threw = false;
    try {
      auto r = io::read_file_bytes(dir.path.string(), max);
      CHECK_FALSE(r.ok());
      if (!r.ok()) {
        CHECK(r.error().code == Errc::io_error);
        CHECK(r.error().message.rfind(dir.path.string() + ": ", 0) == 0);
      }
    } catch (const std::exception&) {
      threw = true;
    }
    CHECK_FALSE(threw);
  }
  auto l = io::load_model<float>(dir.path.string());
  REQUIRE_FALSE(l.ok());
  CHECK(l.error().code == Errc::io_error);
}

// write_file_atomic passes bytes.data() to std::fwrite even when the vector is
// empty; data() is then nullptr, and glibc declares fwrite's buffer nonnull:
// undefined behaviour. This case passes in a plain build and aborts under
// -fsanitize=undefined ("null pointer passed as argument 1").
TEST_CASE("fdl: write_file_atomic writes an empty file without undefined behaviour", "[io]") {
  TempDir dir;
  const std::string path = dir.file("empty.bin");
  REQUIRE(io::write_file_atomic(path, {}).ok());
  CHECK(fs::file_size(path) == 0);
  CHECK(dir.entries() == std::vector<std::string>{"empty.bin"});
}
