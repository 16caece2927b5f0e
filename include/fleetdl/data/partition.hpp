// fleetdl/data/partition.hpp — seeded client partitioners for federated
// learning: partition_iid, partition_dirichlet, partition_shards,
// partition_k_labels, and partition_stats to measure how non-IID a
// partition is.
//
// Every partitioner returns one list of sample indices per client, each
// sorted ascending. Each sample goes to at most one client and the union of
// the lists is every sample (no partitioner drops any). The output depends
// only on the arguments: the same seed gives the same partition on every
// platform (fleetdl::Rng, never std:: distributions). Bad arguments give a
// Result holding Errc::invalid_argument and a message naming the function.
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/core/rng.hpp"
#include "fleetdl/core/tensor.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <vector>

// How many Dirichlet draws partition_dirichlet makes while looking for one
// that gives every client at least min_size samples before it gives up.
#ifndef FLEETDL_DIRICHLET_MAX_TRIES
#  define FLEETDL_DIRICHLET_MAX_TRIES 1000
#endif

namespace fleetdl::data {

/// Sample indices per client; each client's list is sorted ascending.
using ClientPartition = std::vector<std::vector<Index>>;

namespace detail {

inline Error partition_error(const char* fn, const std::string& what) {
  return make_error(Errc::invalid_argument, std::string(fn) + ": " + what);
}

/// Checks shared by the label-based partitioners; returns the indices of
/// each class, ascending.
inline Result<std::vector<std::vector<Index>>> indices_by_class(const char* fn, std::span<const std::uint8_t> labels,
                                                                int classes, int clients) {
  if (clients < 1) return partition_error(fn, "clients = " + std::to_string(clients) + " must be >= 1");
  if (classes < 1 || classes > 256)
    return partition_error(fn, "classes = " + std::to_string(classes) + " must be in [1, 256] (labels are bytes)");
  if (labels.empty()) return partition_error(fn, "labels is empty, nothing to partition");
  std::vector<std::vector<Index>> by_class(static_cast<std::size_t>(classes));
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] >= classes)
      return partition_error(fn, "label " + std::to_string(labels[i]) + " at index " + std::to_string(i) +
                                     " is not below classes = " + std::to_string(classes));
    by_class[labels[i]].push_back(static_cast<Index>(i));
  }
  return by_class;
}

inline ClientPartition sorted(ClientPartition parts) {
  for (auto& p : parts) std::sort(p.begin(), p.end());
  return parts;
}

/// Start of part t when m items are cut into k near-equal parts (the first
/// m % k parts one longer), without overflowing for any m.
inline Index even_cut(Index m, Index k, Index t) { return t * (m / k) + std::min(t, m % k); }

}  // namespace detail

/// IID: shuffle [0, n_samples) and deal it into `clients` contiguous parts
/// whose sizes differ by at most one. Needs n_samples >= clients.
inline Result<ClientPartition> partition_iid(Index n_samples, int clients, std::uint64_t seed) {
  const char* fn = "partition_iid";
  if (clients < 1) return detail::partition_error(fn, "clients = " + std::to_string(clients) + " must be >= 1");
  if (n_samples < clients)
    return detail::partition_error(fn, std::to_string(clients) + " clients but only " + std::to_string(n_samples) +
                                           " samples; every client needs at least one");
  std::vector<Index> order(static_cast<std::size_t>(n_samples));
  std::iota(order.begin(), order.end(), Index{0});
  Rng rng(seed);
  rng.shuffle(order.begin(), order.end());
  ClientPartition parts(static_cast<std::size_t>(clients));
  for (Index c = 0; c < clients; ++c) {
    const Index b = detail::even_cut(n_samples, clients, c), e = detail::even_cut(n_samples, clients, c + 1);
    parts[static_cast<std::size_t>(c)].assign(order.begin() + b, order.begin() + e);
  }
  return detail::sorted(std::move(parts));
}

/// Label skew by a Dirichlet prior (Li, Diao, Chen & He 2021, "Federated
/// Learning on Non-IID Data Silos: An Experimental Study", §4.1; the same
/// procedure as their NIID-Bench code and Flower's niid_bench baseline): for
/// each class draw proportions p ~ Dir(alpha, ..., alpha) over the clients,
/// shuffle the class's samples and cut them at floor(cumsum(p) * count).
/// As in that code, a client that already holds >= n/clients samples gets
/// proportion 0 for the remaining classes, which keeps sizes from running
/// away. Small alpha (0.1) gives few classes per client; large alpha (100)
/// approaches IID.
///
/// The whole draw is repeated until every client has at least min_size
/// samples, at most FLEETDL_DIRICHLET_MAX_TRIES times (Errc::limit_exceeded
/// after that). With min_size = 0 clients may be empty and one draw is made.
/// If every eligible gamma variate underflows to 0 (alpha far below 0.01),
/// the class goes whole to one eligible client chosen uniformly: the limit
/// of Dir(alpha) as alpha -> 0.
inline Result<ClientPartition> partition_dirichlet(std::span<const std::uint8_t> labels, int classes, int clients,
                                                   double alpha, std::uint64_t seed, Index min_size = 0) {
  const char* fn = "partition_dirichlet";
  auto by_class_r = detail::indices_by_class(fn, labels, classes, clients);
  if (!by_class_r) return std::move(by_class_r).error();
  if (!(alpha > 0.0) || !std::isfinite(alpha))
    return detail::partition_error(fn, "alpha = " + std::to_string(alpha) + " must be a finite number > 0");
  if (min_size < 0) return detail::partition_error(fn, "min_size = " + std::to_string(min_size) + " must be >= 0");
  const Index n = static_cast<Index>(labels.size());
  if (min_size > 0 && n / clients < min_size)
    return detail::partition_error(fn, std::to_string(clients) + " clients with at least " + std::to_string(min_size) +
                                           " samples each need more than the " + std::to_string(n) + " samples given");

  const auto& by_class = *by_class_r;
  Rng rng(seed);
  std::vector<double> p(static_cast<std::size_t>(clients));
  std::vector<Index> idx;
  Index best = -1;
  for (int attempt = 0; attempt < FLEETDL_DIRICHLET_MAX_TRIES; ++attempt) {
    ClientPartition parts(static_cast<std::size_t>(clients));
    for (const auto& members : by_class) {
      if (members.empty()) continue;
      idx = members;
      rng.shuffle(idx.begin(), idx.end());
      const Index m = static_cast<Index>(idx.size());
      double sum = 0.0;
      for (std::size_t j = 0; j < p.size(); ++j) {
        const double g = rng.gamma(alpha);  // Dir(alpha) = normalised Gamma(alpha, 1) variates
        const bool eligible = static_cast<Index>(parts[j].size()) * clients < n;
        p[j] = eligible ? g : 0.0;
        sum += p[j];
      }
      if (!(sum > 0.0) || !std::isfinite(sum)) {
        std::vector<std::size_t> eligible;
        for (std::size_t j = 0; j < parts.size(); ++j)
          if (static_cast<Index>(parts[j].size()) * clients < n) eligible.push_back(j);
        // Some client is always eligible: the samples assigned so far are < n.
        const std::size_t pick = eligible[static_cast<std::size_t>(rng.below(eligible.size()))];
        std::fill(p.begin(), p.end(), 0.0);
        p[pick] = 1.0;
        sum = 1.0;
      }
      double cum = 0.0;
      Index start = 0;
      for (std::size_t j = 0; j < p.size(); ++j) {
        cum += p[j] / sum;
        Index end = j + 1 == p.size() ? m : static_cast<Index>(std::floor(cum * static_cast<double>(m)));
        end = std::clamp(end, start, m);
        parts[j].insert(parts[j].end(), idx.begin() + start, idx.begin() + end);
        start = end;
      }
    }
    Index smallest = n;
    for (const auto& part : parts) smallest = std::min(smallest, static_cast<Index>(part.size()));
    if (smallest >= min_size) return detail::sorted(std::move(parts));
    best = std::max(best, smallest);
  }
  return make_error(Errc::limit_exceeded,
                    std::string(fn) + ": no Dirichlet draw in " + std::to_string(FLEETDL_DIRICHLET_MAX_TRIES) +
                        " tries (FLEETDL_DIRICHLET_MAX_TRIES) gave every client at least " + std::to_string(min_size) +
                        " samples (best smallest client: " + std::to_string(best) +
                        "); raise alpha, lower min_size or use fewer clients");
}

/// Pathological non-IID shards (McMahan et al. 2017, "Communication-Efficient
/// Learning of Deep Networks from Decentralized Data", §3): sort the samples
/// by label (stable, so ties keep index order), cut them into
/// clients * shards_per_client contiguous shards and give each client
/// shards_per_client shards chosen at random.
///
/// When the shard count does not divide the sample count the shards differ
/// in size by at most one sample (the first n % shards are one longer), so
/// no sample is dropped. A shard may straddle a label boundary; a client
/// therefore holds at most shards_per_client labels plus the number of label
/// boundaries inside its shards — summed over all clients, at most
/// (distinct labels - 1) extra. When every label's count is a multiple of the
/// shard size (60000 Fashion-MNIST samples, 100 clients x 2 shards) each
/// client holds at most shards_per_client labels.
inline Result<ClientPartition> partition_shards(std::span<const std::uint8_t> labels, int clients,
                                                int shards_per_client, std::uint64_t seed) {
  const char* fn = "partition_shards";
  if (clients < 1) return detail::partition_error(fn, "clients = " + std::to_string(clients) + " must be >= 1");
  if (shards_per_client < 1)
    return detail::partition_error(fn, "shards_per_client = " + std::to_string(shards_per_client) + " must be >= 1");
  const Index n = static_cast<Index>(labels.size());
  const Index shards = static_cast<Index>(clients) * shards_per_client;
  if (n < shards)
    return detail::partition_error(fn, std::to_string(clients) + " clients x " + std::to_string(shards_per_client) +
                                           " shards = " + std::to_string(shards) + " shards but only " +
                                           std::to_string(n) + " samples; every shard needs at least one");
  // Stable counting sort by label.
  std::vector<Index> start(257, 0);
  for (const std::uint8_t l : labels) ++start[static_cast<std::size_t>(l) + 1];
  for (std::size_t l = 1; l < start.size(); ++l) start[l] += start[l - 1];
  std::vector<Index> order(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) order[static_cast<std::size_t>(start[labels[static_cast<std::size_t>(i)]]++)] = i;

  std::vector<Index> shard_ids(static_cast<std::size_t>(shards));
  std::iota(shard_ids.begin(), shard_ids.end(), Index{0});
  Rng rng(seed);
  rng.shuffle(shard_ids.begin(), shard_ids.end());
  ClientPartition parts(static_cast<std::size_t>(clients));
  for (Index t = 0; t < shards; ++t) {
    const Index s = shard_ids[static_cast<std::size_t>(t)];
    auto& part = parts[static_cast<std::size_t>(t / shards_per_client)];
    part.insert(part.end(), order.begin() + detail::even_cut(n, shards, s), order.begin() + detail::even_cut(n, shards, s + 1));
  }
  return detail::sorted(std::move(parts));
}

/// Quantity-based label skew "#C = k" (Li et al. 2021, §4.1): each client
/// holds exactly k distinct labels, and each label's samples are shuffled
/// and split equally (sizes differ by at most one) among the clients that
/// hold it.
///
/// Labels are handed out greedily, each client taking the k labels held by
/// the fewest clients so far (ties broken at random). The numbers of holders
/// per label then differ by at most one, so every label present is used as
/// soon as clients * k >= the number of labels present. (Li et al. give
/// client i label i % classes plus k-1 random ones, which covers every label
/// only when clients >= classes.) Errors when clients * k is below the
/// number of labels present (some samples would belong to no client), when
/// k exceeds that number, or when a label has fewer samples than holders.
inline Result<ClientPartition> partition_k_labels(std::span<const std::uint8_t> labels, int classes, int clients, int k,
                                                  std::uint64_t seed) {
  const char* fn = "partition_k_labels";
  auto by_class_r = detail::indices_by_class(fn, labels, classes, clients);
  if (!by_class_r) return std::move(by_class_r).error();
  if (k < 1) return detail::partition_error(fn, "k = " + std::to_string(k) + " must be >= 1");
  if (k > classes)
    return detail::partition_error(fn, "k = " + std::to_string(k) + " labels per client exceeds classes = " +
                                           std::to_string(classes));
  const auto& by_class = *by_class_r;
  std::vector<int> present;
  for (int c = 0; c < classes; ++c)
    if (!by_class[static_cast<std::size_t>(c)].empty()) present.push_back(c);
  const Index n_present = static_cast<Index>(present.size());
  if (k > n_present)
    return detail::partition_error(fn, "k = " + std::to_string(k) + " labels per client but only " +
                                           std::to_string(n_present) + " of the " + std::to_string(classes) +
                                           " classes occur in labels");
  if (static_cast<Index>(clients) * k < n_present)
    return detail::partition_error(fn, std::to_string(clients) + " clients x k = " + std::to_string(k) + " cover only " +
                                           std::to_string(static_cast<Index>(clients) * k) + " of the " +
                                           std::to_string(n_present) + " labels present; the rest would be dropped");

  Rng rng(seed);
  std::vector<std::vector<int>> holders(static_cast<std::size_t>(classes));  // clients holding each label
  std::vector<int> order;
  for (int c = 0; c < clients; ++c) {
    order = present;
    rng.shuffle(order.begin(), order.end());
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return holders[static_cast<std::size_t>(a)].size() < holders[static_cast<std::size_t>(b)].size();
    });
    for (int j = 0; j < k; ++j) holders[static_cast<std::size_t>(order[static_cast<std::size_t>(j)])].push_back(c);
  }
  for (const int l : present) {
    const auto& h = holders[static_cast<std::size_t>(l)];
    const auto count = by_class[static_cast<std::size_t>(l)].size();
    if (count < h.size())
      return detail::partition_error(fn, "label " + std::to_string(l) + " has " + std::to_string(count) +
                                             " samples but " + std::to_string(h.size()) +
                                             " clients hold it; each needs at least one");
  }

  ClientPartition parts(static_cast<std::size_t>(clients));
  std::vector<Index> idx;
  for (const int l : present) {
    const auto& h = holders[static_cast<std::size_t>(l)];
    idx = by_class[static_cast<std::size_t>(l)];
    rng.shuffle(idx.begin(), idx.end());
    const Index m = static_cast<Index>(idx.size()), parts_n = static_cast<Index>(h.size());
    for (Index t = 0; t < parts_n; ++t) {
      auto& part = parts[static_cast<std::size_t>(h[static_cast<std::size_t>(t)])];
      part.insert(part.end(), idx.begin() + detail::even_cut(m, parts_n, t), idx.begin() + detail::even_cut(m, parts_n, t + 1));
    }
  }
  return detail::sorted(std::move(parts));
}

/// How a partition distributes samples and labels.
struct PartitionStats {
  std::vector<Index> sizes;                                     ///< samples per client
  Eigen::Matrix<Index, Eigen::Dynamic, Eigen::Dynamic> histogram;  ///< clients x classes sample counts
  std::vector<double> global;                                   ///< label distribution of all `labels`
  std::vector<int> distinct_labels;                             ///< labels with >= 1 sample, per client
  std::vector<double> tv;  ///< total variation 1/2 sum|p_client - p_global|, per client (0 when empty)
  std::vector<double> kl;  ///< KL(p_client || p_global) in nats, per client (0 when empty)
  Index assigned = 0;       ///< sum of sizes
  Index empty_clients = 0;  ///< clients with no sample
  Index min_size = 0, max_size = 0;
  double mean_size = 0.0;
  double mean_labels = 0.0;  ///< mean distinct labels per client (all clients)
  double mean_tv = 0.0;      ///< mean of tv over non-empty clients
  double mean_kl = 0.0;      ///< mean of kl over non-empty clients
};

/// Measure a partition of `labels`. Errors (invalid_argument) on an index
/// outside [0, labels.size()) or a label >= classes. The distances are 0 for
/// an IID split in the limit and grow with label skew; TV is in [0, 1].
inline Result<PartitionStats> partition_stats(const ClientPartition& parts, std::span<const std::uint8_t> labels,
                                              int classes) {
  const char* fn = "partition_stats";
  const int clients = static_cast<int>(parts.size());
  if (clients < 1) return detail::partition_error(fn, "no clients");
  auto by_class_r = detail::indices_by_class(fn, labels, classes, clients);
  if (!by_class_r) return std::move(by_class_r).error();
  const Index n = static_cast<Index>(labels.size());

  PartitionStats st;
  st.global.resize(static_cast<std::size_t>(classes));
  for (int c = 0; c < classes; ++c)
    st.global[static_cast<std::size_t>(c)] =
        static_cast<double>((*by_class_r)[static_cast<std::size_t>(c)].size()) / static_cast<double>(n);
  st.histogram.setZero(clients, classes);
  st.sizes.resize(parts.size());
  st.distinct_labels.assign(parts.size(), 0);
  st.tv.assign(parts.size(), 0.0);
  st.kl.assign(parts.size(), 0.0);
  st.min_size = n;
  Index nonempty = 0;
  for (int j = 0; j < clients; ++j) {
    const auto& part = parts[static_cast<std::size_t>(j)];
    for (const Index i : part) {
      if (i < 0 || i >= n)
        return detail::partition_error(fn, "client " + std::to_string(j) + " holds index " + std::to_string(i) +
                                               ", outside [0, " + std::to_string(n) + ")");
      ++st.histogram(j, labels[static_cast<std::size_t>(i)]);
    }
    const Index size = static_cast<Index>(part.size());
    st.sizes[static_cast<std::size_t>(j)] = size;
    st.assigned += size;
    st.min_size = std::min(st.min_size, size);
    st.max_size = std::max(st.max_size, size);
    if (size == 0) {
      ++st.empty_clients;
      continue;
    }
    ++nonempty;
    double tv = 0.0, kl = 0.0;
    for (int c = 0; c < classes; ++c) {
      const Index h = st.histogram(j, c);
      const double pc = static_cast<double>(h) / static_cast<double>(size);
      const double q = st.global[static_cast<std::size_t>(c)];
      tv += std::abs(pc - q);
      if (h > 0) {
        ++st.distinct_labels[static_cast<std::size_t>(j)];
        kl += pc * std::log(pc / q);  // q > 0: the client's samples are among `labels`
      }
    }
    st.tv[static_cast<std::size_t>(j)] = 0.5 * tv;
    st.kl[static_cast<std::size_t>(j)] = kl;
    st.mean_tv += 0.5 * tv;
    st.mean_kl += kl;
    st.mean_labels += st.distinct_labels[static_cast<std::size_t>(j)];
  }
  st.mean_size = static_cast<double>(st.assigned) / clients;
  st.mean_labels /= clients;
  if (nonempty > 0) {
    st.mean_tv /= static_cast<double>(nonempty);
    st.mean_kl /= static_cast<double>(nonempty);
  }
  return st;
}

}  // namespace fleetdl::data
