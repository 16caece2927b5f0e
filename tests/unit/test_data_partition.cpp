// tests/unit/test_data_partition.cpp — the federated client partitioners
// (IID, Dirichlet, shards, k labels) and partition_stats: disjointness,
// coverage, determinism, the label statistics each scheme promises, and a
// table of bad arguments.
#include "fleetdl/data/dataset.hpp"
#include "fleetdl/data/idx.hpp"
#include "fleetdl/data/partition.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <set>
#include <string>
#include <vector>

namespace {

using fleetdl::Errc;
using fleetdl::Index;
using fleetdl::data::ClientPartition;
using Labels = std::vector<std::uint8_t>;
namespace fd = fleetdl::data;

/// `per_class` samples of each of `classes` labels, in a shuffled order.
Labels balanced_labels(int classes, int per_class, std::uint64_t seed = 1) {
  Labels l;
  for (int c = 0; c < classes; ++c) l.insert(l.end(), static_cast<std::size_t>(per_class), static_cast<std::uint8_t>(c));
  fleetdl::Rng rng(seed);
  rng.shuffle(l.begin(), l.end());
  return l;
}

/// n labels with skewed class frequencies (class c drawn with weight c + 1).
Labels skewed_labels(int classes, Index n, std::uint64_t seed = 2) {
  fleetdl::Rng rng(seed);
  const int total = classes * (classes + 1) / 2;
  Labels l(static_cast<std::size_t>(n));
  for (auto& x : l) {
    int r = static_cast<int>(rng.below(static_cast<std::uint64_t>(total)));
    int c = 0;
    while (r >= c + 1) r -= ++c;
    x = static_cast<std::uint8_t>(c);
  }
  return l;
}

/// Every client's list sorted strictly ascending, in range, no sample in two
/// clients, and (if cover) every sample somewhere.
void check_partition(const ClientPartition& parts, Index n, bool cover = true) {
  std::vector<int> seen(static_cast<std::size_t>(n), 0);
  for (std::size_t c = 0; c < parts.size(); ++c) {
    INFO("client " << c);
    CHECK(std::adjacent_find(parts[c].begin(), parts[c].end(), std::greater_equal<Index>()) == parts[c].end());
    for (const Index i : parts[c]) {
      REQUIRE(i >= 0);
      REQUIRE(i < n);
      ++seen[static_cast<std::size_t>(i)];
    }
  }
  CHECK(std::count_if(seen.begin(), seen.end(), [](int s) { return s > 1; }) == 0);
  if (cover) CHECK(std::count(seen.begin(), seen.end(), 0) == 0);
}

fd::PartitionStats stats(const ClientPartition& parts, const Labels& labels, int classes) {
  auto s = fd::partition_stats(parts, labels, classes);
  REQUIRE(s.ok());
  return std::move(s).value();
}

int holders_of(const fd::PartitionStats& st, int label) {
  int h = 0;
  for (Index c = 0; c < st.histogram.rows(); ++c) h += st.histogram(c, label) > 0;
  return h;
}

}  // namespace

TEST_CASE("partition_iid: near-equal, disjoint, covering, deterministic", "[data][partition]") {
  for (const Index n : {Index{10}, Index{101}, Index{6000}}) {
    for (const int clients : {1, 3, 10}) {
      INFO("n " << n << " clients " << clients);
      auto p = fd::partition_iid(n, clients, 7);
      REQUIRE(p.ok());
      REQUIRE(p->size() == static_cast<std::size_t>(clients));
      check_partition(*p, n);
      Index lo = n, hi = 0;
      for (const auto& part : *p) {
        lo = std::min(lo, static_cast<Index>(part.size()));
        hi = std::max(hi, static_cast<Index>(part.size()));
      }
      CHECK(hi - lo <= 1);
      CHECK(*fd::partition_iid(n, clients, 7) == *p);
      if (clients > 1) CHECK(*fd::partition_iid(n, clients, 8) != *p);
    }
  }
}

TEST_CASE("partition_iid: every client's labels follow the global distribution", "[data][partition]") {
  const Labels labels = skewed_labels(10, 6000);
  auto p = fd::partition_iid(static_cast<Index>(labels.size()), 10, 3);
  REQUIRE(p.ok());
  const auto st = stats(*p, labels, 10);
  CHECK(st.min_size == 600);
  CHECK(st.max_size == 600);
  CHECK(st.mean_labels == 10.0);
  // 600 draws over 10 classes: TV to the global distribution is about 0.05.
  for (const double tv : st.tv) CHECK(tv < 0.1);
  CHECK(st.mean_tv < 0.07);
  CHECK(st.mean_kl < 0.02);
}

TEST_CASE("partition_dirichlet: small alpha is far more skewed than large alpha", "[data][partition]") {
  const Labels labels = balanced_labels(10, 600);
  const Index n = static_cast<Index>(labels.size());
  for (const std::uint64_t seed : {1U, 2U, 3U}) {
    INFO("seed " << seed);
    auto skewed = fd::partition_dirichlet(labels, 10, 10, 0.1, seed);
    auto flat = fd::partition_dirichlet(labels, 10, 10, 100.0, seed);
    REQUIRE(skewed.ok());
    REQUIRE(flat.ok());
    check_partition(*skewed, n);
    check_partition(*flat, n);
    const auto s = stats(*skewed, labels, 10), f = stats(*flat, labels, 10);
    CHECK(s.mean_tv > 0.5);
    CHECK(f.mean_tv < 0.1);
    CHECK(s.mean_tv > 5.0 * f.mean_tv);
    CHECK(s.mean_kl > 10.0 * f.mean_kl);
    CHECK(s.mean_labels < f.mean_labels);
    CHECK(f.mean_labels == 10.0);
  }
}

TEST_CASE("partition_dirichlet: determinism and min_size", "[data][partition]") {
  const Labels labels = skewed_labels(10, 3000);
  const Index n = static_cast<Index>(labels.size());
  auto a = fd::partition_dirichlet(labels, 10, 20, 0.3, 11);
  REQUIRE(a.ok());
  check_partition(*a, n);
  CHECK(*fd::partition_dirichlet(labels, 10, 20, 0.3, 11) == *a);
  CHECK(*fd::partition_dirichlet(labels, 10, 20, 0.3, 12) != *a);

  // Li et al. resample until every client has at least min_size samples.
  auto m = fd::partition_dirichlet(labels, 10, 20, 0.1, 11, 30);
  REQUIRE(m.ok());
  check_partition(*m, n);
  for (const auto& part : *m) CHECK(part.size() >= 30);
  CHECK(*fd::partition_dirichlet(labels, 10, 20, 0.1, 11, 30) == *m);

  SECTION("more clients than samples is allowed when min_size is 0") {
    const Labels few{0, 1, 1, 2};
    auto p = fd::partition_dirichlet(few, 3, 10, 1.0, 5);
    REQUIRE(p.ok());
    check_partition(*p, 4);
  }
  SECTION("vanishing alpha: whole classes go to single clients") {
    auto p = fd::partition_dirichlet(labels, 10, 10, 1e-6, 5);
    REQUIRE(p.ok());
    check_partition(*p, n);
    const auto st = stats(*p, labels, 10);
    for (int c = 0; c < 10; ++c) CHECK(holders_of(st, c) == 1);
  }
  SECTION("an unreachable min_size gives up after bounded retries") {
    // Two classes, four clients: with alpha ~ 0 each class lands on one
    // client, so two clients always stay empty.
    const Labels two = balanced_labels(2, 1000);
    auto p = fd::partition_dirichlet(two, 2, 4, 1e-4, 5, 500);
    REQUIRE_FALSE(p.ok());
    CHECK(p.error().code == Errc::limit_exceeded);
    CHECK(p.error().message.find("partition_dirichlet: no Dirichlet draw in") == 0);
    CHECK(p.error().message.find("FLEETDL_DIRICHLET_MAX_TRIES") != std::string::npos);
  }
}

TEST_CASE("partition_shards: McMahan et al. label-sorted shards", "[data][partition]") {
  SECTION("shards aligned with classes: at most shards_per_client labels each") {
    // 6000 samples, 20 clients x 2 shards = 40 shards of 150; each class
    // (600) is exactly 4 shards, so no shard straddles two labels.
    const Labels labels = balanced_labels(10, 600);
    auto p = fd::partition_shards(labels, 20, 2, 9);
    REQUIRE(p.ok());
    check_partition(*p, 6000);
    const auto st = stats(*p, labels, 10);
    CHECK(st.min_size == 300);
    CHECK(st.max_size == 300);
    for (const int d : st.distinct_labels) CHECK(d <= 2);
    for (Index c = 0; c < st.histogram.rows(); ++c)
      for (Index l = 0; l < st.histogram.cols(); ++l) CHECK(st.histogram(c, l) % 150 == 0);
    CHECK(st.mean_tv > 0.75);  // at most 2 of 10 balanced labels: TV >= 0.8 - rounding
    CHECK(*fd::partition_shards(labels, 20, 2, 9) == *p);
    CHECK(*fd::partition_shards(labels, 20, 2, 10) != *p);
  }
  SECTION("unaligned shards: the label-boundary bound") {
    // 1000 skewed samples (class 0 has ~18) into 7 x 3 = 21 shards of 47 or
    // 48. A client's labels are at most shards_per_client plus the label
    // boundaries that fall inside its shards; each of the (labels present -
    // 1) boundaries lies inside at most one shard, so the excess summed over
    // all clients is at most 9.
    const Labels labels = skewed_labels(10, 1000);
    const int spc = 3;
    for (const std::uint64_t seed : {4U, 5U, 6U}) {
      auto p = fd::partition_shards(labels, 7, spc, seed);
      REQUIRE(p.ok());
      check_partition(*p, 1000);
      const auto st = stats(*p, labels, 10);
      int excess = 0;
      for (const int d : st.distinct_labels) excess += std::max(0, d - spc);
      CHECK(excess <= 9);
      // Shard sizes differ by at most one, so client sizes lie in [3*47, 3*48].
      CHECK(st.min_size >= 3 * 47);
      CHECK(st.max_size <= 3 * 48);
    }
  }
  SECTION("every class larger than a shard: at most 2 labels per shard") {
    // Class c has 100 + 13c samples (1585 in all); 7 x 3 shards of 75 or 76.
    // A shard no longer than any class spans at most two labels, so a
    // client holds at most 2 * shards_per_client.
    Labels labels;
    for (int c = 0; c < 10; ++c) labels.insert(labels.end(), static_cast<std::size_t>(100 + 13 * c), static_cast<std::uint8_t>(c));
    fleetdl::Rng rng(3);
    rng.shuffle(labels.begin(), labels.end());
    const int spc = 3;
    for (const std::uint64_t seed : {1U, 2U, 3U, 4U}) {
      auto p = fd::partition_shards(labels, 7, spc, seed);
      REQUIRE(p.ok());
      check_partition(*p, static_cast<Index>(labels.size()));
      const auto st = stats(*p, labels, 10);
      int excess = 0;
      for (const int d : st.distinct_labels) {
        CHECK(d <= 2 * spc);
        excess += std::max(0, d - spc);
      }
      CHECK(excess <= 9);
    }
  }
  SECTION("real Fashion-MNIST train labels, 100 clients x 2 shards of 300") {
    const std::string path = std::string(FLEETDL_FASHION_MNIST_DIR) + "/train-labels-idx1-ubyte.gz";
    if (!std::filesystem::exists(path)) {
      WARN("Fashion-MNIST not installed; skipped");
      return;
    }
    auto lab = fd::read_idx(path);
    REQUIRE(lab.ok());
    auto p = fd::partition_shards(lab->data, 100, 2, 2017);
    REQUIRE(p.ok());
    check_partition(*p, 60000);
    const auto st = stats(*p, lab->data, 10);
    for (const int d : st.distinct_labels) CHECK(d <= 2);
    CHECK(st.min_size == 600);
    CHECK(st.max_size == 600);
  }
}

TEST_CASE("partition_k_labels: exactly k labels per client", "[data][partition]") {
  const Labels labels = skewed_labels(10, 5000);
  const Index n = static_cast<Index>(labels.size());
  struct Case {
    int clients, k;
  };
  for (const Case c : {Case{10, 1}, Case{10, 2}, Case{4, 3}, Case{5, 2}, Case{7, 10}, Case{100, 2}, Case{3, 4}}) {
    INFO("clients " << c.clients << " k " << c.k);
    auto p = fd::partition_k_labels(labels, 10, c.clients, c.k, 21);
    REQUIRE(p.ok());
    check_partition(*p, n);  // clients * k >= 10: every label is held
    const auto st = stats(*p, labels, 10);
    for (const int d : st.distinct_labels) CHECK(d == c.k);
    // Holders per label differ by at most one.
    int lo = c.clients, hi = 0;
    for (int l = 0; l < 10; ++l) {
      lo = std::min(lo, holders_of(st, l));
      hi = std::max(hi, holders_of(st, l));
    }
    CHECK(lo >= 1);
    CHECK(hi - lo <= 1);
    // Within a label, the holders' shares differ by at most one sample.
    for (int l = 0; l < 10; ++l) {
      Index mn = n, mx = 0;
      for (Index cl = 0; cl < st.histogram.rows(); ++cl) {
        const Index h = st.histogram(cl, l);
        if (h == 0) continue;
        mn = std::min(mn, h);
        mx = std::max(mx, h);
      }
      CHECK(mx - mn <= 1);
    }
    CHECK(*fd::partition_k_labels(labels, 10, c.clients, c.k, 21) == *p);
    if (c.k < 10) CHECK(*fd::partition_k_labels(labels, 10, c.clients, c.k, 22) != *p);
  }
  SECTION("labels absent from the data are not handed out") {
    Labels some = labels;
    for (auto& l : some) l = static_cast<std::uint8_t>(l % 5);  // only 0..4 occur
    auto p = fd::partition_k_labels(some, 10, 5, 2, 1);
    REQUIRE(p.ok());
    check_partition(*p, n);
    const auto st = stats(*p, some, 10);
    for (const int d : st.distinct_labels) CHECK(d == 2);
  }
}

TEST_CASE("partition_stats: exact numbers on a hand-made partition", "[data][partition]") {
  // Global: labels 0,0,1,1 -> {0.5, 0.5, 0}.
  const Labels labels{0, 0, 1, 1};
  const ClientPartition parts{{0, 1}, {2}, {}, {3}};
  const auto st = stats(parts, labels, 3);
  CHECK(st.sizes == std::vector<Index>{2, 1, 0, 1});
  CHECK(st.assigned == 4);
  CHECK(st.empty_clients == 1);
  CHECK(st.min_size == 0);
  CHECK(st.max_size == 2);
  CHECK(st.mean_size == 1.0);
  CHECK(st.global == std::vector<double>{0.5, 0.5, 0.0});
  CHECK(st.histogram(0, 0) == 2);
  CHECK(st.histogram(1, 1) == 1);
  CHECK(st.histogram(3, 1) == 1);
  CHECK(st.histogram.sum() == 4);
  CHECK(st.distinct_labels == std::vector<int>{1, 1, 0, 1});
  CHECK(st.mean_labels == 0.75);
  // Each non-empty client holds one of two equally likely labels:
  // TV = 0.5, KL = log 2.
  for (const int c : {0, 1, 3}) {
    CHECK(st.tv[static_cast<std::size_t>(c)] == Approx(0.5));
    CHECK(st.kl[static_cast<std::size_t>(c)] == Approx(std::log(2.0)));
  }
  CHECK(st.mean_tv == Approx(0.5));
  CHECK(st.mean_kl == Approx(std::log(2.0)));

  const auto iid = stats({{0, 2}, {1, 3}}, labels, 3);
  CHECK(iid.mean_tv == 0.0);
  CHECK(iid.mean_kl == 0.0);
  CHECK(iid.mean_labels == 2.0);
}

TEST_CASE("partitioners reject bad arguments", "[data][partition]") {
  const Labels labels = balanced_labels(10, 20);  // 200 samples
  const Labels empty;
  const Labels rare{0, 0, 0, 1, 1, 1, 2};  // label 2 has one sample
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  struct Bad {
    const char* what;
    std::function<fleetdl::Result<ClientPartition>()> call;
    std::string needle;
    Errc code = Errc::invalid_argument;
  };
  const std::vector<Bad> table{
      {"iid: zero clients", [] { return fd::partition_iid(10, 0, 1); }, "partition_iid: clients = 0 must be >= 1"},
      {"iid: negative clients", [] { return fd::partition_iid(10, -3, 1); }, "clients = -3"},
      {"iid: more clients than samples", [] { return fd::partition_iid(5, 10, 1); },
       "partition_iid: 10 clients but only 5 samples"},
      {"iid: negative samples", [] { return fd::partition_iid(-1, 2, 1); }, "only -1 samples"},
      {"dirichlet: zero clients", [&] { return fd::partition_dirichlet(labels, 10, 0, 0.5, 1); },
       "partition_dirichlet: clients = 0"},
      {"dirichlet: alpha 0", [&] { return fd::partition_dirichlet(labels, 10, 5, 0.0, 1); }, "alpha = 0.000000 must be"},
      {"dirichlet: alpha < 0", [&] { return fd::partition_dirichlet(labels, 10, 5, -1.0, 1); }, "alpha = -1.000000"},
      {"dirichlet: alpha NaN", [&] { return fd::partition_dirichlet(labels, 10, 5, nan, 1); }, "alpha = nan"},
      {"dirichlet: alpha inf", [&] { return fd::partition_dirichlet(labels, 10, 5, inf, 1); }, "alpha = inf"},
      {"dirichlet: negative min_size", [&] { return fd::partition_dirichlet(labels, 10, 5, 1.0, 1, -1); },
       "min_size = -1"},
      {"dirichlet: impossible min_size", [&] { return fd::partition_dirichlet(labels, 10, 5, 1.0, 1, 41); },
       "5 clients with at least 41 samples each need more than the 200 samples given"},
      {"dirichlet: empty labels", [&] { return fd::partition_dirichlet(empty, 10, 5, 1.0, 1); }, "labels is empty"},
      {"dirichlet: label >= classes", [&] { return fd::partition_dirichlet(labels, 5, 5, 1.0, 1); },
       "is not below classes = 5"},
      {"dirichlet: zero classes", [&] { return fd::partition_dirichlet(labels, 0, 5, 1.0, 1); }, "classes = 0"},
      {"dirichlet: too many classes", [&] { return fd::partition_dirichlet(labels, 300, 5, 1.0, 1); },
       "classes = 300"},
      {"shards: zero clients", [&] { return fd::partition_shards(labels, 0, 2, 1); }, "partition_shards: clients = 0"},
      {"shards: zero shards per client", [&] { return fd::partition_shards(labels, 5, 0, 1); },
       "shards_per_client = 0"},
      {"shards: more shards than samples", [&] { return fd::partition_shards(labels, 101, 2, 1); },
       "101 clients x 2 shards = 202 shards but only 200 samples"},
      {"shards: empty labels", [&] { return fd::partition_shards(empty, 1, 1, 1); }, "only 0 samples"},
      {"k-labels: k = 0", [&] { return fd::partition_k_labels(labels, 10, 5, 0, 1); },
       "partition_k_labels: k = 0 must be >= 1"},
      {"k-labels: k > classes", [&] { return fd::partition_k_labels(labels, 10, 5, 11, 1); },
       "k = 11 labels per client exceeds classes = 10"},
      {"k-labels: k > labels present", [&] { return fd::partition_k_labels(rare, 10, 5, 4, 1); },
       "only 3 of the 10 classes occur"},
      {"k-labels: labels left over", [&] { return fd::partition_k_labels(labels, 10, 4, 2, 1); },
       "4 clients x k = 2 cover only 8 of the 10 labels"},
      {"k-labels: a label with fewer samples than holders", [&] { return fd::partition_k_labels(rare, 3, 3, 3, 1); },
       "label 2 has 1 samples but 3 clients hold it"},
      {"k-labels: zero clients", [&] { return fd::partition_k_labels(labels, 10, 0, 1, 1); }, "clients = 0"},
      {"k-labels: label >= classes", [&] { return fd::partition_k_labels(labels, 9, 9, 1, 1); },
       "label 9 at index"},
  };
  for (const auto& b : table) {
    INFO(b.what);
    auto r = b.call();
    REQUIRE_FALSE(r.ok());
    INFO(r.error().message);
    CHECK(r.error().code == b.code);
    CHECK(r.error().message.find(b.needle) != std::string::npos);
  }

  auto s = fd::partition_stats({{0, 200}}, labels, 10);
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().code == Errc::invalid_argument);
  CHECK(s.error().message == "partition_stats: client 0 holds index 200, outside [0, 200)");
  CHECK_FALSE(fd::partition_stats({}, labels, 10).ok());
}
