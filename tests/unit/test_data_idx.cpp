// tests/unit/test_data_idx.cpp — the IDX reader (plain and gzip), Dataset
// and load_fashion_mnist: a table of bad inputs, each rejected with a
// specific Errc and a message naming the file and the problem; round trips;
// the real Fashion-MNIST files when installed. Fixtures are generated at run
// time into a temporary directory; nothing binary is committed.
#include "fleetdl/core/rng.hpp"
#include "fleetdl/data/dataset.hpp"
#include "fleetdl/data/idx.hpp"

#include <catch2/catch.hpp>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

namespace {

using fleetdl::Errc;
using fleetdl::Index;
using Bytes = std::vector<std::uint8_t>;
namespace fs = std::filesystem;
namespace fd = fleetdl::data;

void put_be32(Bytes& b, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<std::uint8_t>(v >> s));
}

/// An IDX file: magic, dims, then payload.
Bytes idx_file(std::uint32_t magic, const std::vector<std::uint32_t>& dims, const Bytes& payload) {
  Bytes b;
  put_be32(b, magic);
  for (const auto d : dims) put_be32(b, d);
  b.insert(b.end(), payload.begin(), payload.end());
  return b;
}

Bytes iota_bytes(std::size_t n, unsigned start = 0) {
  Bytes b(n);
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::uint8_t>(start + i * 7);
  return b;
}

/// Raw gzip (RFC 1952) of `in`, in memory.
Bytes gzip(const Bytes& in, int level = 6) {
  z_stream zs{};
  REQUIRE(deflateInit2(&zs, level, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  Bytes out(deflateBound(&zs, static_cast<uLong>(in.size())) + 64);
  zs.next_in = const_cast<Bytef*>(in.data());
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&zs, Z_FINISH) == Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

/// A fresh temporary directory, removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "fleetdl_data_XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

void write_plain(const std::string& path, const Bytes& b) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  if (!b.empty()) REQUIRE(std::fwrite(b.data(), 1, b.size(), f) == b.size());
  std::fclose(f);
}

/// Write `b` gzip-compressed with zlib's gzwrite, as the real .gz files are.
void write_gz(const std::string& path, const Bytes& b) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, b.data(), static_cast<unsigned>(b.size())) == static_cast<int>(b.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

constexpr std::uint32_t kLabels = 0x00000801, kImages = 0x00000803;

Bytes small_images() { return idx_file(kImages, {2, 3, 4}, iota_bytes(24)); }
Bytes small_labels() { return idx_file(kLabels, {5}, Bytes{3, 1, 4, 1, 5}); }

struct BadCase {
  const char* what;
  Bytes bytes;
  Errc code;
  std::vector<std::string> needles;  // substrings the message must contain
  fd::IdxLimits limits{};
};

std::vector<BadCase> bad_cases() {
  const Bytes good = small_images();
  const Bytes good_gz = gzip(good);
  std::vector<BadCase> v;
  v.push_back({"wrong magic (2 dims)", idx_file(0x00000802, {2, 2}, Bytes(4)), Errc::bad_magic,
               {"magic 0x00000802 is not an IDX ubyte file (expected 0x00000801 or 0x00000803)"}});
  v.push_back({"wrong magic (nonzero lead bytes)", idx_file(0x12340803, {1, 1, 1}, Bytes(1)), Errc::bad_magic,
               {"magic 0x12340803 is not an IDX ubyte file"}});
  v.push_back({"a text file", Bytes{'h', 'e', 'l', 'l', 'o', '\n'}, Errc::bad_magic, {"is not an IDX ubyte file"}});
  v.push_back({"wrong magic (0 dims)", idx_file(0x00000800, {}, {}), Errc::bad_magic, {"0 dimensions"}});
  v.push_back({"float32 type byte", idx_file(0x00000D03, {1, 1, 1}, Bytes(4)), Errc::unsupported,
               {"type 0x0d (float32) is not supported"}});
  v.push_back({"unknown type byte", idx_file(0x00000701, {1}, Bytes(1)), Errc::bad_magic,
               {"type byte 0x07 is not an IDX type"}});
  v.push_back({"zero dimension", idx_file(kImages, {3, 0, 28}, {}), Errc::corrupt, {"dimension 1 is 0", "3x0x28"}});
  v.push_back({"zero count", idx_file(kLabels, {0}, {}), Errc::corrupt, {"dimension 0 is 0"}});
  v.push_back({"dimension over FLEETDL_MAX_DIM", idx_file(kImages, {1, (1U << 20) + 1, 1}, {}), Errc::limit_exceeded,
               {"dimension 1 is 1048577", "FLEETDL_MAX_DIM"}});
  v.push_back({"product over FLEETDL_MAX_IDX_BYTES", idx_file(kImages, {1U << 20, 1U << 20, 1U << 20}, {}),
               Errc::limit_exceeded, {"1048576x1048576x1048576", "FLEETDL_MAX_IDX_BYTES"}});
  v.push_back({"product over a tight limit", idx_file(kImages, {2, 3, 4}, iota_bytes(24)), Errc::limit_exceeded,
               {"need 24 payload bytes, above the limit 20"}, fd::IdxLimits{1U << 20, 20}});
  v.push_back({"header + payload over a tight limit", idx_file(kImages, {2, 3, 4}, iota_bytes(24)),
               Errc::limit_exceeded, {"make a 40-byte file (16-byte header), above the limit 30"}, fd::IdxLimits{1U << 20, 30}});
  v.push_back({"product overflows 64 bits", idx_file(kImages, {0xFFFFFFFFU, 0xFFFFFFFFU, 0xFFFFFFFFU}, {}),
               Errc::limit_exceeded, {"overflow"}, fd::IdxLimits{0xFFFFFFFFU, ~std::uint64_t{0}}});
  v.push_back({"truncated payload", idx_file(kImages, {2, 3, 4}, iota_bytes(23)), Errc::truncated,
               {"payload is truncated", "need 24 bytes", "file has 23"}});
  v.push_back({"no payload", idx_file(kLabels, {5}, {}), Errc::truncated, {"need 5 bytes", "file has 0"}});
  v.push_back({"trailing bytes", idx_file(kImages, {2, 3, 4}, iota_bytes(26)), Errc::corrupt,
               {"2 trailing bytes after the 24-byte payload"}});
  v.push_back({"truncated header", Bytes{0, 0, 8, 3, 0, 0, 0, 2, 0, 0}, Errc::truncated, {"needs 16 bytes, file has 10"}});
  v.push_back({"shorter than the magic", Bytes{0, 0, 8}, Errc::truncated, {"3 bytes, too short"}});
  v.push_back({"empty file", Bytes{}, Errc::truncated, {"file is empty"}});
  // The same checks behind gzip.
  v.push_back({"gzip: wrong magic", gzip(idx_file(0x00000802, {2, 2}, Bytes(4))), Errc::bad_magic,
               {"magic 0x00000802 is not an IDX ubyte file"}});
  v.push_back({"gzip: empty content", gzip(Bytes{}), Errc::truncated, {"file is empty"}});
  v.push_back({"gzip: truncated payload", gzip(idx_file(kImages, {2, 3, 4}, iota_bytes(20))), Errc::truncated,
               {"payload is truncated", "file has 20"}});
  v.push_back({"gzip: payload ends inside the header block", gzip(idx_file(kLabels, {5}, Bytes{1, 2})),
               Errc::truncated, {"need 5 bytes", "file has 2"}});
  v.push_back({"gzip: trailing bytes", gzip(idx_file(kImages, {2, 3, 4}, iota_bytes(30))), Errc::corrupt,
               {"6 trailing bytes after the 24-byte payload"}});
  v.push_back({"gzip: trailing bytes inside the header block", gzip(idx_file(kLabels, {2}, Bytes{1, 2, 3, 4, 5})),
               Errc::corrupt, {"3 trailing bytes after the 2-byte payload"}});
  v.push_back({"gzip: header announces more than the file can hold", gzip(idx_file(kImages, {60000, 28, 28}, iota_bytes(10))),
               Errc::truncated, {"need 47040000 bytes after the header, more than a", "gzip file can hold"}});
  v.push_back({"gzip: over the limit", gzip(idx_file(kImages, {1U << 20, 1U << 20, 1U << 20}, {})),
               Errc::limit_exceeded, {"FLEETDL_MAX_IDX_BYTES"}});
  // Broken gzip streams.
  v.push_back({"gzip: cut in half", Bytes(good_gz.begin(), good_gz.begin() + static_cast<long>(good_gz.size() / 2)),
               Errc::truncated, {"gzip stream is truncated"}});
  v.push_back({"gzip: last trailer byte missing", Bytes(good_gz.begin(), good_gz.end() - 1), Errc::truncated,
               {"gzip stream is truncated"}});
  v.push_back({"gzip: magic only", Bytes{0x1F, 0x8B}, Errc::truncated, {"gzip stream is truncated"}});
  {
    Bytes b = good_gz;
    b[b.size() - 8] ^= 0x01;  // CRC-32 of the trailer
    v.push_back({"gzip: CRC mismatch", b, Errc::corrupt, {"gzip stream is corrupt", "incorrect data check"}});
  }
  {
    Bytes b = good_gz;
    b[b.size() - 4] ^= 0x01;  // ISIZE of the trailer
    v.push_back({"gzip: length mismatch", b, Errc::corrupt, {"gzip stream is corrupt", "incorrect length check"}});
  }
  {
    Bytes b = good_gz;
    b[2] = 7;  // compression method must be 8 (deflate)
    v.push_back({"gzip: bad method", b, Errc::corrupt, {"gzip stream is corrupt", "unknown compression method"}});
  }
  {
    Bytes b = good_gz;
    b.insert(b.end(), {'j', 'u', 'n', 'k'});
    v.push_back({"gzip: garbage after the stream", b, Errc::corrupt, {"4 bytes of garbage after the end of the gzip stream"}});
  }
  {
    // A bomb: the header promises 8 bytes, the stream inflates to 16 MiB.
    Bytes content = idx_file(kImages, {2, 2, 2}, Bytes(8, 1));
    content.resize(content.size() + (16U << 20), 0);
    v.push_back({"gzip: small header, huge stream", gzip(content, 9), Errc::corrupt,
                 {"at least 65536 trailing bytes after the 8-byte payload"}});
  }
  return v;
}

}  // namespace

TEST_CASE("parse_idx rejects bad input with a specific error naming the file", "[data][idx]") {
  const std::string name = "train-images-idx3-ubyte.gz";
  for (const auto& c : bad_cases()) {
    INFO(c.what);
    auto r = fd::parse_idx(c.bytes, name, c.limits);
    REQUIRE_FALSE(r.ok());
    INFO(r.error().message);
    CHECK(r.error().code == c.code);
    CHECK(r.error().message.rfind(name + ": ", 0) == 0);
    for (const auto& needle : c.needles) CHECK(contains(r.error().message, needle));
  }
}

TEST_CASE("parse_idx: the example message is exact", "[data][idx]") {
  auto r = fd::parse_idx(idx_file(0x00000802, {}, {}), "train-images-idx3-ubyte.gz");
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::bad_magic);
  CHECK(r.error().message.rfind(
            "train-images-idx3-ubyte.gz: magic 0x00000802 is not an IDX ubyte file (expected 0x00000801 or 0x00000803)",
            0) == 0);
}

TEST_CASE("read_idx rejects the bad inputs from files too", "[data][idx]") {
  TempDir dir;
  int i = 0;
  for (const auto& c : bad_cases()) {
    INFO(c.what);
    const std::string path = dir.file("bad" + std::to_string(i++) + ".idx");
    write_plain(path, c.bytes);
    auto r = fd::read_idx(path, c.limits);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == c.code);
    CHECK(r.error().message.rfind(path + ": ", 0) == 0);
  }
}

TEST_CASE("corrupted deflate data gives an error, never a crash", "[data][idx]") {
  const Bytes good = idx_file(kImages, {3, 5, 7}, iota_bytes(105, 3));
  const Bytes gz = gzip(good);
  REQUIRE(gz.size() > 18);
  // Bytes 0..9 are the gzip header; 4..9 (mtime, flags, OS) are not checked
  // by any decoder. Everything after is deflate data or the CRC/length
  // trailer, so inverting any one byte must be detected.
  for (std::size_t pos = 10; pos < gz.size(); ++pos) {
    Bytes b = gz;
    b[pos] ^= 0xFF;
    auto r = fd::parse_idx(b, "flip.gz");
    INFO("byte " << pos);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.rfind("flip.gz: ", 0) == 0);
    CHECK(r.error().code != Errc::ok);
  }
  // Random multi-byte damage.
  fleetdl::Rng rng(42);
  for (int trial = 0; trial < 300; ++trial) {
    Bytes b = gz;
    const int flips = 1 + static_cast<int>(rng.below(4));
    for (int f = 0; f < flips; ++f) b[10 + rng.below(b.size() - 10)] ^= static_cast<std::uint8_t>(1 + rng.below(255));
    auto r = fd::parse_idx(b, "flip.gz");
    if (r.ok()) {
      CHECK(r->data == Bytes(good.begin() + 16, good.end()));  // only if the damage cancelled out
    } else {
      CHECK(r.error().message.rfind("flip.gz: ", 0) == 0);
    }
  }
}

TEST_CASE("read_idx: missing file and a directory", "[data][idx]") {
  auto r = fd::read_idx("/nonexistent/fleetdl/train-labels-idx1-ubyte.gz");
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::not_found);
  CHECK(contains(r.error().message, "/nonexistent/fleetdl/train-labels-idx1-ubyte.gz: cannot open"));
  TempDir dir;
  auto d = fd::read_idx(dir.path.string());
  REQUIRE_FALSE(d.ok());
  CHECK(d.error().code == Errc::io_error);
  CHECK(contains(d.error().message, dir.path.string()));
}

TEST_CASE("read_idx refuses a file far above the byte limit before decoding it", "[data][idx]") {
  TempDir dir;
  const std::string path = dir.file("big.idx");
  write_plain(path, idx_file(kLabels, {200000}, Bytes(200000, 1)));
  auto r = fd::read_idx(path, fd::IdxLimits{1U << 20, 1000});
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::limit_exceeded);
  CHECK(contains(r.error().message, path + ": file is"));
  CHECK(fd::read_idx(path).ok());
}

TEST_CASE("IDX round trip, plain and gzip", "[data][idx]") {
  const Bytes images = small_images(), labels = small_labels();
  for (const bool compressed : {false, true}) {
    INFO("gzip " << compressed);
    auto im = fd::parse_idx(compressed ? gzip(images) : images, "images");
    REQUIRE(im.ok());
    CHECK(im->dims == std::vector<std::uint32_t>{2, 3, 4});
    CHECK(im->count() == 2);
    CHECK(im->dims_str() == "2x3x4");
    CHECK(im->data == iota_bytes(24));
    auto lb = fd::parse_idx(compressed ? gzip(labels) : labels, "labels");
    REQUIRE(lb.ok());
    CHECK(lb->dims == std::vector<std::uint32_t>{5});
    CHECK(lb->data == Bytes{3, 1, 4, 1, 5});
  }
  // Files: gzwrite output and plain.
  TempDir dir;
  write_gz(dir.file("im.gz"), images);
  write_plain(dir.file("im"), images);
  auto a = fd::read_idx(dir.file("im.gz"));
  auto b = fd::read_idx(dir.file("im"));
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(a->data == b->data);
  CHECK(a->dims == b->dims);
}

TEST_CASE("IDX gzip edge cases that are valid", "[data][idx]") {
  SECTION("labels shorter than the 16-byte header block") {
    auto r = fd::parse_idx(gzip(idx_file(kLabels, {1}, Bytes{7})), "one");
    REQUIRE(r.ok());
    CHECK(r->data == Bytes{7});
  }
  SECTION("labels exactly filling the header block") {
    auto r = fd::parse_idx(gzip(idx_file(kLabels, {8}, iota_bytes(8))), "eight");
    REQUIRE(r.ok());
    CHECK(r->data == iota_bytes(8));
  }
  SECTION("concatenated gzip members") {
    const Bytes content = idx_file(kImages, {4, 10, 10}, iota_bytes(400));
    Bytes two = gzip(Bytes(content.begin(), content.begin() + 150));
    const Bytes tail = gzip(Bytes(content.begin() + 150, content.end()));
    two.insert(two.end(), tail.begin(), tail.end());
    auto r = fd::parse_idx(two, "multi.gz");
    REQUIRE(r.ok());
    CHECK(r->data == iota_bytes(400));
  }
  SECTION("incompressible payload at level 0") {
    Bytes payload(3 * 100 * 100);
    fleetdl::Rng rng(7);
    for (auto& x : payload) x = static_cast<std::uint8_t>(rng.below(256));
    auto r = fd::parse_idx(gzip(idx_file(kImages, {3, 100, 100}, payload), 0), "stored.gz");
    REQUIRE(r.ok());
    CHECK(r->data == payload);
  }
}

TEMPLATE_TEST_CASE("make_dataset, subset and head", "[data][dataset]", float, double) {
  auto im = fd::parse_idx(small_images(), "im");
  auto lb = fd::parse_idx(idx_file(kLabels, {2}, Bytes{9, 0}), "lb");
  REQUIRE(im.ok());
  REQUIRE(lb.ok());
  auto ds = fd::make_dataset<TestType>(*im, *lb, 10, "im", "lb");
  REQUIRE(ds.ok());
  CHECK(ds->size() == 2);
  CHECK(ds->shape == fleetdl::Shape{1, 3, 4});
  CHECK(ds->images.rows() == 12);
  CHECK(ds->images.cols() == 2);
  CHECK(ds->classes == 10);
  const Bytes px = iota_bytes(24);
  for (Index j = 0; j < 2; ++j)
    for (Index r = 0; r < 12; ++r)
      CHECK(ds->images(r, j) == static_cast<TestType>(px[static_cast<std::size_t>(j * 12 + r)]) / TestType(255));
  CHECK(ds->label_counts()[9] == 1);

  const std::vector<Index> idx{1, 0, 1};
  auto sub = ds->subset(idx);
  CHECK(sub.size() == 3);
  CHECK(sub.labels == std::vector<std::uint8_t>{0, 9, 0});
  CHECK(sub.images.col(0) == ds->images.col(1));
  CHECK(sub.images.col(1) == ds->images.col(0));
  CHECK(sub.shape == ds->shape);

  auto h = ds->head(1);
  CHECK(h.size() == 1);
  CHECK(h.labels == std::vector<std::uint8_t>{9});
  CHECK(h.images.col(0) == ds->images.col(0));
  CHECK(ds->head(100).size() == 2);
  CHECK(ds->head(0).empty());

  auto lim = fd::make_dataset<TestType>(*im, *lb, 10, "im", "lb", 1);
  REQUIRE(lim.ok());
  CHECK(lim->size() == 1);
  CHECK(lim->images.cols() == 1);
}

namespace {

/// (min, max) of a matrix. Plain loops rather than Eigen's vectorised
/// reductions (minCoeff, sum): with GCC 12, -O3 -march=native (AVX-512) and
/// -Werror those trip a false -Wmaybe-uninitialized inside the intrinsics.
template <class M>
std::pair<typename M::Scalar, typename M::Scalar> value_range(const M& m) {
  const auto* p = m.data();
  const auto mm = std::minmax_element(p, p + m.size());
  return {*mm.first, *mm.second};
}

/// A crafted Fashion-MNIST directory: n_images 28x28 images, the labels given.
void write_fashion_dir(const TempDir& dir, const std::string& split, std::uint32_t n_images,
                       const Bytes& labels, std::uint32_t h = 28, std::uint32_t w = 28) {
  write_gz(dir.file(split + "-images-idx3-ubyte.gz"),
           idx_file(kImages, {n_images, h, w}, iota_bytes(std::size_t{n_images} * h * w)));
  write_gz(dir.file(split + "-labels-idx1-ubyte.gz"),
           idx_file(kLabels, {static_cast<std::uint32_t>(labels.size())}, labels));
}

}  // namespace

TEST_CASE("load_fashion_mnist rejects inconsistent files", "[data][dataset]") {
  SECTION("image and label counts differ") {
    TempDir dir;
    write_fashion_dir(dir, "train", 3, Bytes{1, 2, 3, 4});
    auto r = fd::load_fashion_mnist<float>(dir.path.string(), true);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::corrupt);
    CHECK(contains(r.error().message, "train-images-idx3-ubyte.gz has 3 images"));
    CHECK(contains(r.error().message, "train-labels-idx1-ubyte.gz has 4 labels"));
  }
  SECTION("a label out of range") {
    TempDir dir;
    write_fashion_dir(dir, "t10k", 3, Bytes{1, 10, 3});
    auto r = fd::load_fashion_mnist<float>(dir.path.string(), false);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::corrupt);
    CHECK(contains(r.error().message, "t10k-labels-idx1-ubyte.gz: label 10 at index 1"));
  }
  SECTION("images are not 28x28") {
    TempDir dir;
    write_fashion_dir(dir, "train", 2, Bytes{1, 2}, 27, 28);
    auto r = fd::load_fashion_mnist<float>(dir.path.string());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::shape_mismatch);
    CHECK(contains(r.error().message, "train-images-idx3-ubyte.gz: images are 27x28"));
  }
  SECTION("a labels file where the images belong") {
    TempDir dir;
    write_gz(dir.file("train-images-idx3-ubyte.gz"), small_labels());
    write_gz(dir.file("train-labels-idx1-ubyte.gz"), small_labels());
    auto r = fd::load_fashion_mnist<float>(dir.path.string());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::shape_mismatch);
    CHECK(contains(r.error().message, "train-images-idx3-ubyte.gz: expected an images file"));
  }
  SECTION("a corrupt file inside") {
    TempDir dir;
    write_fashion_dir(dir, "train", 2, Bytes{1, 2});
    Bytes gz = gzip(idx_file(kLabels, {2}, Bytes{1, 2}));
    gz.resize(gz.size() - 3);
    write_plain(dir.file("train-labels-idx1-ubyte.gz"), gz);
    auto r = fd::load_fashion_mnist<float>(dir.path.string());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::truncated);
    CHECK(contains(r.error().message, "train-labels-idx1-ubyte.gz: gzip stream is truncated"));
  }
  SECTION("a missing directory names the path and the package") {
    auto r = fd::load_fashion_mnist<float>("/nonexistent/fashion", false);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::not_found);
    CHECK(contains(r.error().message, "/nonexistent/fashion/t10k-images-idx3-ubyte.gz"));
    CHECK(contains(r.error().message, "dataset-fashion-mnist"));
  }
  SECTION("a negative limit other than -1") {
    TempDir dir;
    write_fashion_dir(dir, "train", 2, Bytes{1, 2});
    auto r = fd::load_fashion_mnist<float>(dir.path.string(), true, -2);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::invalid_argument);
  }
}

TEST_CASE("load_fashion_mnist reads crafted files, gzip or plain", "[data][dataset]") {
  TempDir dir;
  write_fashion_dir(dir, "train", 3, Bytes{9, 0, 5});
  auto r = fd::load_fashion_mnist<double>(dir.path.string() + "/", true);
  REQUIRE(r.ok());
  CHECK(r->size() == 3);
  CHECK(r->shape == fleetdl::Shape{1, 28, 28});
  CHECK(r->labels == Bytes{9, 0, 5});
  // Uncompressed files are found when the .gz ones are absent.
  write_plain(dir.file("t10k-images-idx3-ubyte"), idx_file(kImages, {1, 28, 28}, Bytes(784, 255)));
  write_plain(dir.file("t10k-labels-idx1-ubyte"), idx_file(kLabels, {1}, Bytes{4}));
  auto t = fd::load_fashion_mnist<float>(dir.path.string(), false);
  REQUIRE(t.ok());
  CHECK(t->labels == Bytes{4});
  CHECK(value_range(t->images) == std::pair{1.0f, 1.0f});
}

namespace {
/// Sum of column j's values * 255, i.e. of the original pixel bytes (a
/// plain loop, see value_range).
template <class M>
double pixel_byte_sum(const M& images, Index j) {
  double s = 0.0;
  for (Index r = 0; r < images.rows(); ++r) s += static_cast<double>(images(r, j)) * 255.0;
  return std::round(s);
}
}  // namespace

TEST_CASE("real Fashion-MNIST", "[data][dataset][fashion]") {
  const std::string dir = FLEETDL_FASHION_MNIST_DIR;
  if (!fs::exists(fs::path(dir) / "t10k-labels-idx1-ubyte.gz")) {
    WARN("Fashion-MNIST not installed in " << dir << " (Debian package dataset-fashion-mnist); skipped");
    return;
  }
  // Facts checked against the files with Python's gzip module: 6000 per
  // class in train, 1000 in test, first label 9 (ankle boot) in both, and
  // the first image's pixel bytes sum to 76247 (train) and 33456 (test).
  struct Split {
    bool train;
    Index n, per_class;
    double first_pixel_sum;
  };
  for (const Split s : {Split{true, 60000, 6000, 76247.0}, Split{false, 10000, 1000, 33456.0}}) {
    INFO("train " << s.train);
    auto r = fd::load_fashion_mnist<float>(dir, s.train);
    REQUIRE(r.ok());
    const auto& ds = *r;
    CHECK(ds.size() == s.n);
    CHECK(ds.images.cols() == s.n);
    CHECK(ds.images.rows() == 784);
    CHECK(ds.shape == fleetdl::Shape{1, 28, 28});
    CHECK(ds.classes == 10);
    CHECK(ds.labels[0] == 9);
    CHECK(fd::fashion_mnist_classes[ds.labels[0]] == "Ankle boot");
    CHECK(ds.label_counts() == std::vector<Index>(10, s.per_class));
    const auto [lo, hi] = value_range(ds.images);
    CHECK(lo == 0.0f);
    CHECK(hi == 1.0f);
    CHECK(pixel_byte_sum(ds.images, 0) == s.first_pixel_sum);
  }
  auto d = fd::load_fashion_mnist<double>(dir, true, 100);
  REQUIRE(d.ok());
  CHECK(d->size() == 100);
  CHECK(d->labels[0] == 9);
  CHECK(pixel_byte_sum(d->images, 0) == 76247.0);
}
