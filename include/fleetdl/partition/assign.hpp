// fleetdl/partition/assign.hpp — NoNN filter-to-student assignment
// (assign_students) in two modes, its manifest (PartitionManifest, to_json)
// and the whole pipeline activations -> filter graph -> Louvain -> students
// (partition_filters).
//
// Source: NoNN (Bhardwaj, Lin, Marculescu, ACM TECS 2019) and the
// post-processing of its public code (ActivationNetwork.partition_activation_network).
//
// AssignMode::reference — the public code's post-processing, quirks included:
//  1. all communities of size <= 1 are merged into one cluster; all
//     communities that share a size s > 1 are merged into one cluster. The
//     clusters are built in ascending order of that size (np.unique), each
//     from its communities in the order given (louvain() orders them by
//     smallest filter id, as python-louvain's renumbering does);
//  2. clusters are sorted by filter count, largest first, with a stable sort:
//     equal counts keep step 1's order (the cluster made of smaller
//     communities first), like Python's sorted(..., reverse=True);
//  3. the largest cluster "P0" is DROPPED (its filters are `unused`);
//  4. clusters 1..N go to students 0..N-1;
//  5. each leftover cluster (N+1, N+2, ...) in turn goes to the student with
//     the fewest filters at that moment (ties: lowest student index, like
//     Python's min over a dict);
//  6. with fewer than N+1 clusters the public code shrinks N to clusters - 1.
//     Here that is an error unless AssignOptions::allow_shrink is set; then the
//     manifest's `students` is the effective N and `note` says so. Zero
//     students left is always an error.
//
// AssignMode::balanced — uses every filter (also those with no kept edge,
// which are singleton communities) and gives student i a target of
// floor(C/N) + (i < C mod N ? 1 : 0) filters, so sizes differ by at most one.
// Communities are placed largest first (ties: the given order): whole into the
// student whose remaining room is the smallest that still fits it (best fit;
// ties lowest index); a community too big for every student's room is split —
// its filters in ascending order fill the student with the most room (ties
// lowest index), then the next, until it is placed. `split_communities`
// counts the communities that had to be split.
//
// Every student's filter list is sorted ascending (the teacher's channel
// order used for the student-to-teacher feature matching).
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/core/json.hpp"
#include "fleetdl/core/tensor.hpp"
#include "fleetdl/partition/filter_graph.hpp"
#include "fleetdl/partition/louvain.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace fleetdl::partition {

enum class AssignMode {
  reference,  ///< the public NoNN code's post-processing (drops the largest cluster)
  balanced,   ///< every filter used, student sizes within one filter
};

inline const char* assign_mode_name(AssignMode m) { return m == AssignMode::reference ? "reference" : "balanced"; }

struct AssignOptions {
  Index students = 2;                      ///< N, requested number of students
  AssignMode mode = AssignMode::reference;
  bool allow_shrink = false;               ///< reference mode: accept fewer students than N
};

/// How the filter graph was built (present when partition_filters made it).
struct GraphSummary {
  Index images = 0;
  Index images_skipped = 0;
  Index k = 0;
  double p = 0.0;
  double threshold = 0.0;
  Index edges = 0;
};

/// The result of a knowledge partitioning: which teacher filters each
/// student reproduces.
struct PartitionManifest {
  AssignMode mode = AssignMode::reference;
  Index filters = 0;               ///< C, teacher filters
  Index students_requested = 0;    ///< N asked for
  Index students = 0;              ///< effective N (= assignment.size())
  double gamma = 0.0;              ///< Louvain resolution
  std::uint64_t seed = 0;          ///< Louvain seed
  double modularity = 0.0;         ///< Q of the Louvain communities at gamma
  Index communities = 0;           ///< Louvain communities (isolated filters included)
  Index clusters = 0;              ///< reference: clusters after merging; balanced: = communities
  std::vector<std::vector<Index>> assignment;  ///< per student, sorted teacher filter indices
  std::vector<Index> sizes;        ///< per student, assignment[i].size()
  std::vector<Index> unused;       ///< filters no student gets (reference: P0), sorted
  Index split_communities = 0;     ///< balanced: communities split over students
  std::string note;                ///< empty, or why the result differs from the request
  std::optional<GraphSummary> graph;

  /// One JSON object (format "fleetdl.nonn_partition", version 1). Keys in
  /// this order: format, version, mode, filters, students_requested,
  /// students, gamma, seed, modularity, communities, clusters, sizes,
  /// assignment, unused, split_communities, note, graph (object or null).
  /// Numbers use json::number (shortest round-trip text); the seed is an
  /// integer (readers that parse numbers as doubles lose seeds >= 2^53).
  std::string to_json() const {
    auto list = [](const std::vector<Index>& v) {
      std::string s = "[";
      for (std::size_t i = 0; i < v.size(); ++i) {
        if (i) s += ',';
        s += std::to_string(v[i]);
      }
      return s + "]";
    };
    std::string s = "{";
    s += "\"format\":\"fleetdl.nonn_partition\",\"version\":1";
    s += ",\"mode\":\"" + std::string(assign_mode_name(mode)) + "\"";
    s += ",\"filters\":" + std::to_string(filters);
    s += ",\"students_requested\":" + std::to_string(students_requested);
    s += ",\"students\":" + std::to_string(students);
    s += ",\"gamma\":" + json::number(gamma);
    s += ",\"seed\":" + std::to_string(seed);
    s += ",\"modularity\":" + json::number(modularity);
    s += ",\"communities\":" + std::to_string(communities);
    s += ",\"clusters\":" + std::to_string(clusters);
    s += ",\"sizes\":" + list(sizes);
    s += ",\"assignment\":[";
    for (std::size_t i = 0; i < assignment.size(); ++i) {
      if (i) s += ',';
      s += list(assignment[i]);
    }
    s += "]";
    s += ",\"unused\":" + list(unused);
    s += ",\"split_communities\":" + std::to_string(split_communities);
    s += ",\"note\":\"" + json::escape(note) + "\"";
    s += ",\"graph\":";
    if (graph) {
      s += "{\"images\":" + std::to_string(graph->images);
      s += ",\"images_skipped\":" + std::to_string(graph->images_skipped);
      s += ",\"k\":" + std::to_string(graph->k);
      s += ",\"p\":" + json::number(graph->p);
      s += ",\"threshold\":" + json::number(graph->threshold);
      s += ",\"edges\":" + std::to_string(graph->edges) + "}";
    } else {
      s += "null";
    }
    return s + "}";
  }
};

namespace detail::assign {

inline PartitionManifest base(const LouvainResult& lv, Index C, const AssignOptions& opt) {
  PartitionManifest m;
  m.mode = opt.mode;
  m.filters = C;
  m.students_requested = opt.students;
  m.gamma = lv.gamma;
  m.seed = lv.seed;
  m.modularity = lv.modularity;
  m.communities = static_cast<Index>(lv.communities.size());
  return m;
}

inline void finish(PartitionManifest& m) {
  m.students = static_cast<Index>(m.assignment.size());
  m.sizes.clear();
  for (auto& a : m.assignment) {
    std::sort(a.begin(), a.end());
    m.sizes.push_back(static_cast<Index>(a.size()));
  }
  std::sort(m.unused.begin(), m.unused.end());
}

inline Result<PartitionManifest> reference(const LouvainResult& lv, Index C, const AssignOptions& opt) {
  const Communities& comms = lv.communities;
  const Index N = opt.students;
  // 1. Merge by size, clusters built in ascending size order.
  std::vector<Index> sizes;
  for (const auto& c : comms) sizes.push_back(static_cast<Index>(c.size()));
  std::vector<Index> uniq = sizes;
  std::sort(uniq.begin(), uniq.end());
  uniq.erase(std::unique(uniq.begin(), uniq.end()), uniq.end());
  std::vector<std::vector<Index>> clusters;
  for (const Index s : uniq) {
    std::vector<Index> cl;
    for (std::size_t c = 0; c < comms.size(); ++c)
      if (s <= 1 ? sizes[c] <= 1 : sizes[c] == s) cl.insert(cl.end(), comms[c].begin(), comms[c].end());
    clusters.push_back(std::move(cl));
  }
  // 2. Largest first, stable.
  std::stable_sort(clusters.begin(), clusters.end(),
                   [](const auto& x, const auto& y) { return x.size() > y.size(); });
  const Index K = static_cast<Index>(clusters.size());
  PartitionManifest m = base(lv, C, opt);
  m.clusters = K;
  Index eff = N;
  if (K - 1 < N) {
    eff = K - 1;
    const std::string why = "N=" + std::to_string(N) + " is larger than the communities allow: only " +
                            std::to_string(K) + " clusters after merging (the largest is dropped), so at most " +
                            std::to_string(std::max<Index>(eff, 0)) + (eff == 1 ? " student" : " students");
    if (eff < 1) return make_error(Errc::invalid_argument, "assign_students: " + why);
    if (!opt.allow_shrink)
      return make_error(Errc::invalid_argument, "assign_students: " + why + " (allow_shrink, --allow-shrink in the CLI, accepts " +
                                                    std::to_string(eff) + ")");
    m.note = "students shrunk from " + std::to_string(N) + " to " + std::to_string(eff) + ": only " +
             std::to_string(K) + " clusters after merging";
  }
  // 3. Drop P0; 4. clusters 1..eff to students; 5. leftovers to the fewest.
  m.unused = clusters[0];
  m.assignment.assign(static_cast<std::size_t>(eff), {});
  for (Index i = 0; i < eff; ++i) m.assignment[static_cast<std::size_t>(i)] = clusters[static_cast<std::size_t>(i + 1)];
  for (Index c = eff + 1; c < K; ++c) {
    std::size_t fewest = 0;
    for (std::size_t i = 1; i < m.assignment.size(); ++i)
      if (m.assignment[i].size() < m.assignment[fewest].size()) fewest = i;
    const auto& cl = clusters[static_cast<std::size_t>(c)];
    m.assignment[fewest].insert(m.assignment[fewest].end(), cl.begin(), cl.end());
  }
  finish(m);
  return m;
}

inline Result<PartitionManifest> balanced(const LouvainResult& lv, Index C, const AssignOptions& opt) {
  const Index N = opt.students;
  if (N > C)
    return make_error(Errc::invalid_argument, "assign_students: N=" + std::to_string(N) +
                                                  " students is more than the C=" + std::to_string(C) +
                                                  " filters in balanced mode (every student needs at least one)");
  PartitionManifest m = base(lv, C, opt);
  m.clusters = m.communities;
  const auto Ns = static_cast<std::size_t>(N);
  std::vector<Index> room(Ns);
  for (std::size_t i = 0; i < Ns; ++i) room[i] = C / N + (static_cast<Index>(i) < C % N ? 1 : 0);
  m.assignment.assign(Ns, {});
  std::vector<std::size_t> order(lv.communities.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) {
    return lv.communities[x].size() > lv.communities[y].size();
  });
  for (const std::size_t c : order) {
    std::vector<Index> comm = lv.communities[c];
    std::sort(comm.begin(), comm.end());
    const auto s = static_cast<Index>(comm.size());
    std::size_t fit = Ns;
    for (std::size_t i = 0; i < Ns; ++i)
      if (room[i] >= s && (fit == Ns || room[i] < room[fit])) fit = i;
    if (fit < Ns) {
      m.assignment[fit].insert(m.assignment[fit].end(), comm.begin(), comm.end());
      room[fit] -= s;
      continue;
    }
    ++m.split_communities;
    std::size_t pos = 0;
    while (pos < comm.size()) {
      std::size_t most = 0;
      for (std::size_t i = 1; i < Ns; ++i)
        if (room[i] > room[most]) most = i;
      const auto take = std::min(static_cast<std::size_t>(room[most]), comm.size() - pos);
      FLEETDL_ASSERT(take > 0, "balanced assignment: no room left (communities do not cover C filters)");
      m.assignment[most].insert(m.assignment[most].end(), comm.begin() + static_cast<std::ptrdiff_t>(pos),
                                comm.begin() + static_cast<std::ptrdiff_t>(pos + take));
      room[most] -= static_cast<Index>(take);
      pos += take;
    }
  }
  finish(m);
  return m;
}

}  // namespace detail::assign

/// Assigns the C filters to students from Louvain communities that must be a
/// partition of 0..C-1 (as louvain() returns on a filter graph). Errors
/// (Errc::invalid_argument): C < 1, N < 1, communities that are not a
/// partition of the filters, N > C in balanced mode, too few clusters in
/// reference mode (see the header comment).
inline Result<PartitionManifest> assign_students(const LouvainResult& lv, Index filters, const AssignOptions& opt = {}) {
  if (filters < 1)
    return make_error(Errc::invalid_argument, "assign_students: C=" + std::to_string(filters) +
                                                  " filters; need at least one");
  if (opt.students < 1)
    return make_error(Errc::invalid_argument, "assign_students: N=" + std::to_string(opt.students) +
                                                  " students; need at least one");
  auto of = detail::louvain::membership("assign_students", filters, lv.communities);
  if (!of) return std::move(of).error();
  // an empty community would repeat the merged "size <= 1" cluster in
  // reference mode (one filter, two students) or make an empty student
  for (std::size_t c = 0; c < lv.communities.size(); ++c)
    if (lv.communities[c].empty())
      return make_error(Errc::invalid_argument, "assign_students: community " + std::to_string(c) + " is empty");
  return opt.mode == AssignMode::reference ? detail::assign::reference(lv, filters, opt)
                                           : detail::assign::balanced(lv, filters, opt);
}

/// The whole NoNN partitioning: filter_graph -> louvain -> assign_students,
/// with the graph's parameters recorded in the manifest.
template <class Derived>
Result<PartitionManifest> partition_filters(const Eigen::MatrixBase<Derived>& activations,
                                            const FilterGraphOptions& graph_opt = {},
                                            const LouvainOptions& louvain_opt = {}, const AssignOptions& opt = {}) {
  auto fg = filter_graph(activations, graph_opt);
  if (!fg) return std::move(fg).error();
  auto lv = louvain(fg->graph, louvain_opt);
  if (!lv) return std::move(lv).error();
  auto m = assign_students(*lv, fg->filters, opt);
  if (!m) return std::move(m).error();
  m->graph = GraphSummary{fg->images, fg->images_skipped, fg->k, fg->p, fg->threshold, fg->graph.edge_count()};
  return m;
}

}  // namespace fleetdl::partition
