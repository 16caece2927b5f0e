// fleetdl/partition/louvain.hpp — a weighted undirected graph (Graph, CSR
// adjacency), weighted modularity with a resolution parameter (modularity())
// and seeded multi-level Louvain community detection (louvain()).
//
// Louvain: Blondel, Guillaume, Lambiotte, Lefebvre, "Fast unfolding of
// communities in large networks", J. Stat. Mech. 2008 (P10008); resolution
// as in Reichardt & Bornholdt, Phys. Rev. E 74 016110 (2006). NoNN (Bhardwaj
// et al., ACM TECS 2019) runs it on the filter graph with gamma = 0.7.
//
// Modularity convention (the one of networkx's
// `modularity(G, communities, weight="weight", resolution=gamma)` and of
// python-louvain's `modularity`):
//
//   Q = sum_c [ L_c / m  -  gamma * (tot_c / (2m))^2 ]
//
//   m      = sum of all edge weights, each undirected edge once, a self-loop once
//   L_c    = sum of the weights of the edges with both ends in c, each once,
//            self-loops included once; in the notation in_c / (2m) of the
//            NoNN paper, in_c = 2 L_c (every edge counted from both ends,
//            a self-loop counted twice)
//   tot_c  = sum of the weighted degrees of c's nodes, where a self-loop adds
//            twice its weight to its node's degree (networkx's G.degree), so
//            sum over all nodes of the degree is 2m.
//
// A graph without edges (m = 0) has Q = 0 here (networkx divides by zero).
//
// louvain(): each level shuffles the node visit order once with
// fleetdl::Rng(seed) (so a seed fixes the result on every platform), then
// moves nodes one at a time to the neighbouring community with the largest
// strictly positive modularity gain, in passes over all nodes, until a pass
// moves nothing or raises Q by less than `threshold`. The communities then
// become the nodes of the next level (weights summed, internal weights as
// self-loops). A level whose Q gain is below `threshold` is discarded and the
// algorithm stops — the scheme of python-louvain's best_partition (whose
// __MIN is 1e-7, our default threshold). Each pass is O(n + m): adjacency is
// CSR, community weights are gathered in a scratch array with a touched list.
// Ties keep the node in its community; among other communities with equal
// gain the first met in the node's (sorted) neighbour list wins.
//
// Refinement (LouvainOptions::refine, on by default): after coarsening, the
// final partition is projected back down level by level and local moving
// runs again at each level from the projected partition (Rotta & Noack,
// "Multilevel local search algorithms for modularity clustering", ACM JEA
// 16, 2011). Classic Louvain can leave a node in a poor community once its
// level is aggregated; refinement only ever raises Q. On Zachary's karate
// club (gamma 1) it takes 17 of seeds 0..19 to the optimum 0.4198 instead of
// 7; the rest stop near 0.398. refine = false is classic Louvain.
//
// Result: communities as sorted node lists, ordered by their smallest node id
// (isolated nodes are singleton communities), and their modularity computed
// directly by modularity() on the input graph.
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/core/rng.hpp"
#include "fleetdl/core/tensor.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace fleetdl::partition {

/// One undirected weighted edge; u == v is a self-loop.
struct Edge {
  Index u = 0;
  Index v = 0;
  double w = 1.0;
  friend bool operator==(const Edge& a, const Edge& b) { return a.u == b.u && a.v == b.v && a.w == b.w; }
};

/// A weighted undirected graph on nodes 0..nodes()-1. Its edge list is
/// canonical: u <= v, sorted by (u, v), no duplicates, weights finite and
/// > 0. Adjacency is kept as CSR (each non-loop edge in both endpoint rows,
/// a self-loop once in its node's row), neighbours sorted ascending.
class Graph {
 public:
  Graph() = default;

  /// Builds a graph from an edge list in any order and orientation. Errors
  /// (Errc::invalid_argument) for a negative node count, an endpoint out of
  /// range, a non-finite or non-positive weight, or the same pair twice.
  static Result<Graph> from_edges(Index nodes, std::vector<Edge> edges) {
    if (nodes < 0) return make_error(Errc::invalid_argument, "graph: node count " + std::to_string(nodes) + " is negative");
    for (std::size_t e = 0; e < edges.size(); ++e) {
      Edge& ed = edges[e];
      if (ed.u < 0 || ed.u >= nodes || ed.v < 0 || ed.v >= nodes)
        return make_error(Errc::invalid_argument, "graph: edge " + std::to_string(e) + " (" + std::to_string(ed.u) +
                                                      ", " + std::to_string(ed.v) + ") has an endpoint outside [0, " +
                                                      std::to_string(nodes) + ")");
      if (!std::isfinite(ed.w) || !(ed.w > 0.0))
        return make_error(Errc::invalid_argument, "graph: edge " + std::to_string(e) + " (" + std::to_string(ed.u) +
                                                      ", " + std::to_string(ed.v) +
                                                      ") has weight that is not finite and > 0");
      if (ed.u > ed.v) std::swap(ed.u, ed.v);
    }
    std::sort(edges.begin(), edges.end(),
              [](const Edge& a, const Edge& b) { return a.u != b.u ? a.u < b.u : a.v < b.v; });
    for (std::size_t e = 1; e < edges.size(); ++e)
      if (edges[e].u == edges[e - 1].u && edges[e].v == edges[e - 1].v)
        return make_error(Errc::invalid_argument, "graph: edge (" + std::to_string(edges[e].u) + ", " +
                                                      std::to_string(edges[e].v) + ") is listed twice");
    Graph g;
    g.n_ = nodes;
    g.edges_ = std::move(edges);
    g.build_csr();
    return g;
  }

  Index nodes() const { return n_; }
  const std::vector<Edge>& edges() const { return edges_; }
  Index edge_count() const { return static_cast<Index>(edges_.size()); }

  /// Neighbours of i (sorted; i itself if it has a self-loop) and the weights.
  std::span<const Index> neighbors(Index i) const {
    return {adj_.data() + off_[static_cast<std::size_t>(i)], adj_.data() + off_[static_cast<std::size_t>(i) + 1]};
  }
  std::span<const double> weights(Index i) const {
    return {wt_.data() + off_[static_cast<std::size_t>(i)], wt_.data() + off_[static_cast<std::size_t>(i) + 1]};
  }
  /// Weighted degree; a self-loop counts twice (networkx G.degree).
  double degree(Index i) const { return deg_[static_cast<std::size_t>(i)]; }
  /// m: the sum of edge weights, each edge (and self-loop) once.
  double total_weight() const { return m_; }

 private:
  void build_csr() {
    const auto n = static_cast<std::size_t>(n_);
    off_.assign(n + 1, 0);
    deg_.assign(n, 0.0);
    m_ = 0.0;
    for (const Edge& e : edges_) {
      ++off_[static_cast<std::size_t>(e.u) + 1];
      if (e.u != e.v) ++off_[static_cast<std::size_t>(e.v) + 1];
    }
    for (std::size_t i = 0; i < n; ++i) off_[i + 1] += off_[i];
    adj_.resize(static_cast<std::size_t>(off_[n]));
    wt_.resize(adj_.size());
    std::vector<Index> fill(off_.begin(), off_.end() - 1);
    // Edges are sorted by (u, v): row x receives first (y, x) for y < x
    // (ascending y), then (x, z) for z >= x (ascending z), so every row comes
    // out sorted without a sort.
    for (const Edge& e : edges_) {
      const auto u = static_cast<std::size_t>(e.u), v = static_cast<std::size_t>(e.v);
      adj_[static_cast<std::size_t>(fill[u])] = e.v;
      wt_[static_cast<std::size_t>(fill[u]++)] = e.w;
      deg_[u] += e.w;
      deg_[v] += e.w;  // a self-loop adds 2w to its node
      if (u != v) {
        adj_[static_cast<std::size_t>(fill[v])] = e.u;
        wt_[static_cast<std::size_t>(fill[v]++)] = e.w;
      }
      m_ += e.w;
    }
  }

  Index n_ = 0;
  std::vector<Edge> edges_;
  std::vector<Index> off_{0};
  std::vector<Index> adj_;
  std::vector<double> wt_;
  std::vector<double> deg_;
  double m_ = 0.0;
};

/// Communities: each a sorted list of node ids.
using Communities = std::vector<std::vector<Index>>;

namespace detail::louvain {

/// Checks that `parts` is a partition of 0..n-1 and returns node -> part.
inline Result<std::vector<Index>> membership(const char* fn, Index n, std::span<const std::vector<Index>> parts) {
  std::vector<Index> of(static_cast<std::size_t>(n), -1);
  for (std::size_t c = 0; c < parts.size(); ++c)
    for (const Index i : parts[c]) {
      if (i < 0 || i >= n)
        return make_error(Errc::invalid_argument, std::string(fn) + ": community " + std::to_string(c) + " has node " +
                                                      std::to_string(i) + ", outside [0, " + std::to_string(n) + ")");
      auto& slot = of[static_cast<std::size_t>(i)];
      if (slot >= 0)
        return make_error(Errc::invalid_argument, std::string(fn) + ": node " + std::to_string(i) +
                                                      " is in communities " + std::to_string(slot) + " and " +
                                                      std::to_string(c));
      slot = static_cast<Index>(c);
    }
  for (Index i = 0; i < n; ++i)
    if (of[static_cast<std::size_t>(i)] < 0)
      return make_error(Errc::invalid_argument,
                        std::string(fn) + ": node " + std::to_string(i) + " is in no community (the communities must "
                                                                          "cover every node exactly once)");
  return of;
}

/// Q of a membership vector (every node in [0, parts)).
inline double modularity_of(const Graph& g, const std::vector<Index>& of, std::size_t parts, double gamma) {
  const double m = g.total_weight();
  if (!(m > 0.0)) return 0.0;
  std::vector<double> inner(parts, 0.0), tot(parts, 0.0);
  for (const Edge& e : g.edges())
    if (of[static_cast<std::size_t>(e.u)] == of[static_cast<std::size_t>(e.v)])
      inner[static_cast<std::size_t>(of[static_cast<std::size_t>(e.u)])] += e.w;
  for (Index i = 0; i < g.nodes(); ++i) tot[static_cast<std::size_t>(of[static_cast<std::size_t>(i)])] += g.degree(i);
  double q = 0.0;
  for (std::size_t c = 0; c < parts; ++c) {
    const double t = tot[c] / (2.0 * m);
    q += inner[c] / m - gamma * t * t;
  }
  return q;
}

/// One level's graph: CSR without self-loops, self-loop weights apart.
struct Level {
  Index n = 0;
  std::vector<Index> off, adj;
  std::vector<double> wt;
  std::vector<double> self;  ///< self-loop weight (counted once, as in m)
  std::vector<double> deg;   ///< weighted degree, self-loop twice
};

inline Level level_from(const Graph& g) {
  Level L;
  L.n = g.nodes();
  const auto n = static_cast<std::size_t>(L.n);
  L.off.assign(n + 1, 0);
  L.self.assign(n, 0.0);
  L.deg.assign(n, 0.0);
  for (Index i = 0; i < L.n; ++i) {
    const auto nb = g.neighbors(i);
    const auto w = g.weights(i);
    for (std::size_t t = 0; t < nb.size(); ++t) {
      if (nb[t] == i) {
        L.self[static_cast<std::size_t>(i)] = w[t];
      } else {
        L.adj.push_back(nb[t]);
        L.wt.push_back(w[t]);
      }
    }
    L.off[static_cast<std::size_t>(i) + 1] = static_cast<Index>(L.adj.size());
    L.deg[static_cast<std::size_t>(i)] = g.degree(i);
  }
  return L;
}

/// Collapses level L by community (comm in [0, k)). Internal weights become
/// self-loops; each inter-community weight is summed once (from the lower
/// community id) and mirrored, so the new graph is exactly symmetric.
inline Level aggregate(const Level& L, const std::vector<Index>& comm, Index k) {
  const auto K = static_cast<std::size_t>(k);
  std::vector<std::vector<Index>> members(K);
  for (Index i = 0; i < L.n; ++i) members[static_cast<std::size_t>(comm[static_cast<std::size_t>(i)])].push_back(i);
  Level A;
  A.n = k;
  A.self.assign(K, 0.0);
  A.deg.assign(K, 0.0);
  std::vector<double> acc(K, 0.0);
  std::vector<Index> touched;
  std::vector<std::vector<std::pair<Index, double>>> rows(K);
  for (std::size_t c = 0; c < K; ++c) {
    for (const Index i : members[c]) {
      const auto ii = static_cast<std::size_t>(i);
      A.self[c] += L.self[ii];
      A.deg[c] += L.deg[ii];
      for (Index t = L.off[ii]; t < L.off[ii + 1]; ++t) {
        const Index j = L.adj[static_cast<std::size_t>(t)];
        const double w = L.wt[static_cast<std::size_t>(t)];
        const auto cj = static_cast<std::size_t>(comm[static_cast<std::size_t>(j)]);
        if (cj == c) {
          if (j > i) A.self[c] += w;
        } else if (cj > c) {
          if (acc[cj] == 0.0) touched.push_back(static_cast<Index>(cj));
          acc[cj] += w;
        }
      }
    }
    std::sort(touched.begin(), touched.end());
    for (const Index d : touched) {
      rows[c].push_back({d, acc[static_cast<std::size_t>(d)]});
      rows[static_cast<std::size_t>(d)].push_back({static_cast<Index>(c), acc[static_cast<std::size_t>(d)]});
      acc[static_cast<std::size_t>(d)] = 0.0;
    }
    touched.clear();
  }
  A.off.assign(K + 1, 0);
  for (std::size_t c = 0; c < K; ++c) {
    // rows[c] holds lower ids (pushed while visiting them, ascending) then
    // higher ids (ascending): sorted already.
    for (const auto& [d, w] : rows[c]) {
      A.adj.push_back(d);
      A.wt.push_back(w);
    }
    A.off[c + 1] = static_cast<Index>(A.adj.size());
  }
  return A;
}

/// Renumbers comm to 0..k-1 in order of first appearance; returns k.
inline Index renumber(std::vector<Index>& comm) {
  std::vector<Index> map(comm.size(), -1);
  Index k = 0;
  for (Index& c : comm) {
    auto& m = map[static_cast<std::size_t>(c)];
    if (m < 0) m = k++;
    c = m;
  }
  return k;
}

}  // namespace detail::louvain

/// Q of `communities` on g (convention in the header comment). Errors if the
/// communities are not a partition of the nodes or gamma is not finite.
inline Result<double> modularity(const Graph& g, std::span<const std::vector<Index>> communities, double gamma = 1.0) {
  if (!std::isfinite(gamma))
    return make_error(Errc::invalid_argument, "modularity: resolution gamma is not finite");
  auto of = detail::louvain::membership("modularity", g.nodes(), communities);
  if (!of) return std::move(of).error();
  return detail::louvain::modularity_of(g, *of, communities.size(), gamma);
}

struct LouvainOptions {
  double gamma = 0.7;       ///< resolution (NoNN's 0.7; 1 is classic modularity)
  std::uint64_t seed = 0;   ///< seeds the node visit order
  double threshold = 1e-7;  ///< minimum Q gain of a pass / a level (python-louvain's __MIN)
  bool refine = true;       ///< multilevel refinement after coarsening (false: classic Louvain)
};

struct LouvainResult {
  Communities communities;  ///< sorted node lists, ordered by smallest node id
  double modularity = 0.0;  ///< Q of `communities` on the input graph, at gamma
  Index levels = 0;         ///< coarsening levels kept (0 when nothing moved or no edges)
  double gamma = 0.7;       ///< the options used, for manifests
  std::uint64_t seed = 0;
};

namespace detail::louvain {

/// Local moving on level L from the membership `comm` (ids in [0, L.n)),
/// visiting nodes in `order`, in passes until a pass moves nothing or raises
/// Q by less than `threshold`. Returns whether any node moved; `q` gets Q.
inline bool local_moving(const Level& L, std::vector<Index>& comm, const std::vector<Index>& order, double m,
                         double gamma, double threshold, double& q) {
  const auto n = static_cast<std::size_t>(L.n);
  std::vector<double> tot(n, 0.0), inner(n, 0.0);  // inner = L_c (internal weight once)
  for (std::size_t i = 0; i < n; ++i) {
    const auto c = static_cast<std::size_t>(comm[i]);
    tot[c] += L.deg[i];
    inner[c] += L.self[i];
    for (Index t = L.off[i]; t < L.off[i + 1]; ++t) {
      const auto j = static_cast<std::size_t>(L.adj[static_cast<std::size_t>(t)]);
      if (j > i && static_cast<std::size_t>(comm[j]) == c) inner[c] += L.wt[static_cast<std::size_t>(t)];
    }
  }
  auto q_of = [&] {
    double s = 0.0;
    for (std::size_t c = 0; c < n; ++c) {
      const double t = tot[c] / (2.0 * m);
      s += inner[c] / m - gamma * t * t;
    }
    return s;
  };
  std::vector<double> nw(n, 0.0);
  std::vector<char> seen(n, 0);
  std::vector<Index> touched;
  q = q_of();
  bool any_move = false;
  for (;;) {
    Index moved = 0;
    for (const Index i : order) {
      const auto ii = static_cast<std::size_t>(i);
      const auto ci = static_cast<std::size_t>(comm[ii]);
      const double ki = L.deg[ii];
      for (Index t = L.off[ii]; t < L.off[ii + 1]; ++t) {
        const auto c = static_cast<std::size_t>(comm[static_cast<std::size_t>(L.adj[static_cast<std::size_t>(t)])]);
        if (!seen[c]) {
          seen[c] = 1;
          touched.push_back(static_cast<Index>(c));
        }
        nw[c] += L.wt[static_cast<std::size_t>(t)];
      }
      // Take i out of its community, then put it where the gain
      // k_{i,c}/m - gamma * tot_c * k_i / (2 m^2) is largest (Blondel et al.
      // eq. 2 with the resolution); ties keep the current community.
      tot[ci] -= ki;
      inner[ci] -= nw[ci] + L.self[ii];
      std::size_t best = ci;
      double best_gain = nw[ci] / m - gamma * tot[ci] * ki / (2.0 * m * m);
      for (const Index cc : touched) {
        const auto c = static_cast<std::size_t>(cc);
        const double gain = nw[c] / m - gamma * tot[c] * ki / (2.0 * m * m);
        if (gain > best_gain) {
          best_gain = gain;
          best = c;
        }
      }
      tot[best] += ki;
      inner[best] += nw[best] + L.self[ii];
      if (best != ci) {
        comm[ii] = static_cast<Index>(best);
        ++moved;
      }
      for (const Index cc : touched) {
        nw[static_cast<std::size_t>(cc)] = 0.0;
        seen[static_cast<std::size_t>(cc)] = 0;
      }
      touched.clear();
    }
    if (moved > 0) any_move = true;
    const double q_new = q_of();
    const bool small = q_new - q < threshold;
    q = q_new;
    if (moved == 0 || small) break;
  }
  return any_move;
}

}  // namespace detail::louvain

/// Seeded multi-level Louvain (see the header comment). Errors
/// (Errc::invalid_argument) for a gamma that is not finite and > 0 or a
/// threshold that is not finite and > 0.
inline Result<LouvainResult> louvain(const Graph& g, const LouvainOptions& opt = {}) {
  namespace dl = detail::louvain;
  if (!std::isfinite(opt.gamma) || !(opt.gamma > 0.0))
    return make_error(Errc::invalid_argument, "louvain: resolution gamma = " + std::to_string(opt.gamma) +
                                                  " must be finite and > 0");
  if (!std::isfinite(opt.threshold) || !(opt.threshold > 0.0))
    return make_error(Errc::invalid_argument, "louvain: threshold = " + std::to_string(opt.threshold) +
                                                  " must be finite and > 0");
  const Index n0 = g.nodes();
  const double m = g.total_weight();
  Rng rng(opt.seed);
  LouvainResult res;
  res.gamma = opt.gamma;
  res.seed = opt.seed;

  auto shuffled = [&rng](Index n) {
    std::vector<Index> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), Index{0});
    rng.shuffle(order.begin(), order.end());
    return order;
  };

  std::vector<Index> node_comm(static_cast<std::size_t>(n0));
  std::iota(node_comm.begin(), node_comm.end(), Index{0});
  if (m > 0.0) {
    // Coarsening. graphs[l] is level l; up[l] maps its nodes to level l+1's.
    std::vector<dl::Level> graphs;
    std::vector<std::vector<Index>> up;
    graphs.push_back(dl::level_from(g));
    double q_kept = 0.0;
    for (;;) {
      const dl::Level& L = graphs.back();
      std::vector<Index> comm(static_cast<std::size_t>(L.n));
      std::iota(comm.begin(), comm.end(), Index{0});
      double q = 0.0;
      const bool moved = dl::local_moving(L, comm, shuffled(L.n), m, opt.gamma, opt.threshold, q);
      // python-louvain keeps the first level whatever its gain and later
      // levels only if they raise Q by at least the threshold.
      if (!moved || (res.levels > 0 && q - q_kept < opt.threshold)) break;
      const Index k = dl::renumber(comm);
      ++res.levels;
      q_kept = q;
      // Any move empties a singleton (an empty community is never a
      // neighbour's), so k < L.n and the next level is smaller.
      dl::Level next = dl::aggregate(L, comm, k);
      up.push_back(std::move(comm));
      graphs.push_back(std::move(next));
    }
    // graphs has levels+1 entries; the last is the aggregate of the kept
    // partition, whose nodes are the communities.
    const auto levels = static_cast<std::size_t>(res.levels);
    if (levels > 0) {
      // Membership of every level's nodes in the final communities.
      std::vector<Index> member(static_cast<std::size_t>(graphs[levels].n));
      std::iota(member.begin(), member.end(), Index{0});
      for (std::size_t l = levels; l-- > 0;) {
        std::vector<Index> below(up[l].size());
        for (std::size_t i = 0; i < below.size(); ++i) below[i] = member[static_cast<std::size_t>(up[l][i])];
        member = std::move(below);
        // Multilevel refinement (Rotta & Noack, "Multilevel local search
        // algorithms for modularity clustering", ACM JEA 16, 2011): local
        // moving again at each finer level, starting from the projected
        // partition, so nodes left in a poor community by an early
        // aggregation can still move. Q never decreases.
        if (opt.refine) {
          double q = 0.0;
          dl::local_moving(graphs[l], member, shuffled(graphs[l].n), m, opt.gamma, opt.threshold, q);
        }
      }
      node_comm = std::move(member);
    }
  }

  // Communities ordered by smallest member: scanning nodes in order, the
  // first node of each community opens it.
  std::vector<Index> slot(static_cast<std::size_t>(n0), -1);
  std::vector<Index> of(static_cast<std::size_t>(n0));
  for (Index i = 0; i < n0; ++i) {
    auto& s = slot[static_cast<std::size_t>(node_comm[static_cast<std::size_t>(i)])];
    if (s < 0) {
      s = static_cast<Index>(res.communities.size());
      res.communities.emplace_back();
    }
    res.communities[static_cast<std::size_t>(s)].push_back(i);
    of[static_cast<std::size_t>(i)] = s;
  }
  res.modularity = dl::modularity_of(g, of, res.communities.size(), opt.gamma);
  return res;
}

}  // namespace fleetdl::partition
