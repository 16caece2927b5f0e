// fleetdl/fl/strategy.hpp — the federated-learning strategy interface and the
// types that cross it: what the server asks of a client (ClientInstruction),
// what a client returns (ClientUpdate), and the two hooks every strategy has
// (Flower's split): configure() picks clients and their configs, aggregate()
// turns the updates into the new global parameters.
//
// Everything works on flat parameter vectors (the Model's params() buffer):
// a client update carries the client's full local parameter vector, and
// aggregation is written as Eigen expressions over those vectors — there are
// no per-layer loops anywhere in fl/.
#pragma once

#include "fleetdl/core/bytes.hpp"
#include "fleetdl/core/error.hpp"
#include "fleetdl/core/rng.hpp"
#include "fleetdl/core/tensor.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace fleetdl::fl {

/// Per-client training configuration for one round.
struct ClientConfig {
  double lr = 0.01;        ///< local learning rate (eta_l)
  double momentum = 0.0;   ///< local SGD momentum
  double weight_decay = 0.0;  ///< local SGD L2 weight decay (added to the gradient, as torch.optim.SGD)
  int epochs = 1;          ///< local epochs
  Index batch = 32;        ///< local batch size
  double prox_mu = 0.0;    ///< FedProx: add mu/2 ||w - w_t||^2 to the local loss
  double width = 1.0;      ///< HeteroFL: sub-model width ratio in (0, 1]
  bool scaffold = false;   ///< SCAFFOLD: apply the control-variate correction
  std::map<std::string, double> extra;  ///< strategy-specific values
};

/// The server's instruction to one client for one round.
struct ClientInstruction {
  Index client = -1;
  ClientConfig config;
};

/// What a client sends back after local training.
template <class S>
struct ClientUpdate {
  Index client = -1;
  Vector<S> params;          ///< the client's parameters after local training
  Index num_examples = 0;    ///< local training examples (aggregation weight)
  Index local_steps = 0;     ///< optimizer steps taken (FedNova's tau_i)
  double loss_before = 0.0;  ///< local loss at the received global model (q-FedAvg)
  Vector<S> control_delta;   ///< SCAFFOLD: c_i^+ - c_i (empty otherwise)
  long base_round = 0;       ///< round of the global model it started from (FedBuff)
  double width = 1.0;        ///< HeteroFL width of params (1 = full model)
};

/// A strategy: configure + aggregate.
template <class S>
class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual std::string name() const = 0;

  /// Pick the clients of a round from `available` and give each a config.
  virtual std::vector<ClientInstruction> configure(long round, std::span<const Index> available, Rng& rng) = 0;

  /// Fold the round's updates into `global` (the current global parameters,
  /// updated in place). An error leaves `global` unchanged.
  virtual Result<void> aggregate(long round, VectorMap<S> global, std::span<const ClientUpdate<S>> updates) = 0;

  /// Minimum number of updates for aggregate() to accept a round.
  virtual Index min_updates() const { return 1; }

  /// Append what this strategy carries from round to round (FedAvgM's
  /// momentum, FedOpt's moments and step count, SCAFFOLD's c, a DP
  /// wrapper's noise stream, accountant and clipping norm) to a checkpoint.
  /// Little-endian; vectors of the model's size are written as raw S values
  /// without a length (load_state() is told the size), an empty vector as
  /// nothing. A strategy's state is the tail of the stream: a wrapper writes
  /// its own first, then its inner strategy's. Stateless strategies write
  /// nothing.
  virtual void save_state(ByteWriter& w) const { (void)w; }

  /// Continue from save_state()'s bytes for a model of `dim` parameters. The
  /// bytes are untrusted: sizes and values are checked before use, the rest
  /// of the stream must be consumed exactly, and on error the strategy is
  /// unchanged. A restored strategy aggregates the next round bit for bit
  /// as the one that saved.
  virtual Result<void> load_state(ByteReader& r, Index dim) {
    (void)dim;
    if (!r.at_end())
      return make_error(Errc::corrupt, name() + ": state: " + std::to_string(r.remaining()) +
                                           " bytes, but this strategy keeps no state between rounds");
    return success();
  }
};

namespace detail {

/// Raw S values of a state vector (save_state()).
template <class S>
void write_state_vector(ByteWriter& w, const Vector<S>& v) {
  w.raw(v.data(), static_cast<std::size_t>(v.size()) * sizeof(S));
}

/// Read `dim` raw S values, checked finite; false (v untouched) when too few
/// bytes remain or a value is NaN or infinite.
template <class S>
bool read_state_vector(ByteReader& r, Index dim, Vector<S>& v) {
  if (dim < 0 || static_cast<std::size_t>(dim) > r.remaining() / sizeof(S)) return false;
  const std::size_t n = static_cast<std::size_t>(dim) * sizeof(S);
  const std::uint8_t* p = r.take(n);
  if (!p) return false;
  Vector<S> out(dim);
  std::memcpy(out.data(), p, n);
  if (!out.allFinite()) return false;
  v = std::move(out);
  return true;
}

/// The whole rest of `r` as an optional state vector: nothing (out emptied)
/// or exactly `dim` finite S values. On error `out` is untouched; the message
/// names `who` and `what`.
template <class S>
Result<void> read_state_tail(ByteReader& r, Index dim, Vector<S>& out, const std::string& who, const char* what) {
  if (r.at_end()) {
    out.resize(0);
    return success();
  }
  const std::size_t bytes = r.remaining();
  Vector<S> v;
  if (!read_state_vector(r, dim, v) || !r.at_end())
    return make_error(Errc::corrupt, who + ": state: " + std::to_string(bytes) + " bytes are not " + what + " of " +
                                         std::to_string(dim) + " finite values");
  out = std::move(v);
  return success();
}

/// Validate a round's updates: non-empty, same dimension as global, finite,
/// positive example counts. Returns the total example count.
template <class S>
Result<double> check_updates(const std::string& who, Index dim, std::span<const ClientUpdate<S>> updates,
                             bool need_examples = true) {
  if (updates.empty()) return make_error(Errc::invalid_argument, who + ": no updates to aggregate");
  double total = 0;
  for (std::size_t i = 0; i < updates.size(); ++i) {
    const auto& u = updates[i];
    if (u.params.size() != dim)
      return make_error(Errc::shape_mismatch, who + ": update " + std::to_string(i) + " (client " +
                                                  std::to_string(u.client) + ") has " + std::to_string(u.params.size()) +
                                                  " parameters, the global model has " + std::to_string(dim));
    if (!u.params.allFinite())
      return make_error(Errc::invalid_argument, who + ": update " + std::to_string(i) + " (client " +
                                                    std::to_string(u.client) + ") contains NaN or infinity");
    if (need_examples && u.num_examples <= 0)
      return make_error(Errc::invalid_argument, who + ": update " + std::to_string(i) + " (client " +
                                                    std::to_string(u.client) + ") reports no training examples");
    total += static_cast<double>(u.num_examples);
  }
  return total;
}

/// Columns = client parameter vectors (d x n), for coordinate-wise rules.
template <class S>
Matrix<S> stack_params(std::span<const ClientUpdate<S>> updates) {
  const Index d = updates.empty() ? 0 : updates[0].params.size();
  Matrix<S> m(d, static_cast<Index>(updates.size()));
  for (std::size_t i = 0; i < updates.size(); ++i) m.col(static_cast<Index>(i)) = updates[i].params;
  return m;
}

/// Sum_i w_i p_i / Sum_i w_i with w_i = num_examples (Flower's weighted average).
template <class S>
Vector<S> weighted_average(std::span<const ClientUpdate<S>> updates) {
  const Index d = updates[0].params.size();
  Vector<double> acc = Vector<double>::Zero(d);
  double total = 0;
  for (const auto& u : updates) {
    acc += static_cast<double>(u.num_examples) * u.params.template cast<double>();
    total += static_cast<double>(u.num_examples);
  }
  return (acc / total).template cast<S>();
}

}  // namespace detail

/// Uniform sampling of clients (Flower's default): `fraction` of the
/// available clients, at least `min_clients`, drawn without replacement.
inline std::vector<Index> sample_uniform(std::span<const Index> available, double fraction, Index min_clients,
                                         Rng& rng) {
  std::vector<Index> pool(available.begin(), available.end());
  Index k = static_cast<Index>(static_cast<double>(pool.size()) * fraction);
  k = std::max(k, min_clients);
  k = std::min<Index>(k, static_cast<Index>(pool.size()));
  // partial Fisher-Yates: the first k of a seeded shuffle
  for (Index i = 0; i < k; ++i) {
    const auto j = static_cast<Index>(i + static_cast<Index>(rng.below(static_cast<std::uint64_t>(static_cast<Index>(pool.size()) - i))));
    std::swap(pool[static_cast<std::size_t>(i)], pool[static_cast<std::size_t>(j)]);
  }
  pool.resize(static_cast<std::size_t>(k));
  std::sort(pool.begin(), pool.end());
  return pool;
}

}  // namespace fleetdl::fl
