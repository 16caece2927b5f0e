// fleetdl/fl/fedbuff.hpp — FedBuff: asynchronous federated learning with a
// buffer of K client updates and staleness-weighted aggregation.
//
// Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek, Huba, "Federated Learning
// with Buffered Asynchronous Aggregation", AISTATS 2022 (Algorithm 1).
// Clients train on whatever model version they downloaded and report when
// they finish; the server
//   - computes the staleness s = version() - base_round of each update,
//   - drops it if s > max_staleness (counted in dropped()),
//   - else adds w(s) * delta_i to a buffer, w(s) = 1 / sqrt(1 + s),
//   - when K updates are in the buffer: x <- x + eta_g * sum_i w(s_i) delta_i / K,
//     version() + 1, buffer cleared.
// delta_i = y_i - x_base is the client's change relative to the model IT
// started from (not the current x), so the server must know x_base or
// receive the delta. FedBuff is therefore not a Strategy (no synchronous
// aggregate()); it has two entry points with explicit meanings:
//   submit(global, update, base)  update.params = the client's model y_i,
//                                 base = x_base (simulators keep it);
//   submit_delta(global, update)  update.params = y_i - x_base, computed by
//                                 the client (the paper's and the wire's
//                                 form: the server keeps no old models).
// In both, update.base_round = the version() the client downloaded.
// Examples counts are not used (the paper weights by staleness only).
//
// Defaults: K = 10, eta_g = 1, max_staleness = 5 (REFERENCES.md §5).
// Memory: one accumulator of d doubles, whatever K is.
#pragma once

#include "fleetdl/fl/strategy.hpp"

#include <cmath>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace fleetdl::fl {

struct FedBuffOptions {
  Index buffer_size = 10;             ///< K: updates per server step
  double server_learning_rate = 1.0;  ///< eta_g
  long max_staleness = 5;             ///< updates older than this many versions are dropped
  ClientConfig client{};              ///< sent to every client started by configure()
};

template <class S>
class FedBuff {
 public:
  explicit FedBuff(FedBuffOptions o = {}) : o_(std::move(o)) {}

  std::string name() const { return "fedbuff"; }
  const FedBuffOptions& options() const { return o_; }

  /// Staleness weight 1 / sqrt(1 + s).
  static double staleness_weight(long s) { return 1.0 / std::sqrt(1.0 + static_cast<double>(s)); }

  /// Start `count` clients (uniform without replacement from `available`,
  /// fewer if not enough) on the current version.
  std::vector<ClientInstruction> configure(std::span<const Index> available, Index count, Rng& rng) const {
    std::vector<ClientInstruction> out;
    if (available.empty() || count <= 0) return out;
    const auto ids = sample_uniform(available, 0.0, count, rng);
    for (Index id : ids) out.push_back(ClientInstruction{id, o_.client});
    return out;
  }

  /// Submit a client's trained model y = update.params that started from
  /// `base` (the version update.base_round). Returns true when the buffer
  /// filled and `global` was updated; false when buffered or dropped as
  /// stale. An error leaves `global` and the buffer unchanged.
  Result<bool> submit(VectorMap<S> global, const ClientUpdate<S>& update, ConstVectorMap<S> base) {
    if (base.size() != update.params.size())
      return make_error(Errc::shape_mismatch, "fedbuff: client " + std::to_string(update.client) + " sent " +
                                                  std::to_string(update.params.size()) +
                                                  " parameters, its base model has " + std::to_string(base.size()));
    if (!base.allFinite())
      return make_error(Errc::invalid_argument, "fedbuff: the base model of client " + std::to_string(update.client) +
                                                    " contains NaN or infinity");
    const Vector<S> delta = update.params - base;
    return add(global, delta, update);
  }

  /// Submit a client's delta y - x_base (update.params holds the delta).
  Result<bool> submit_delta(VectorMap<S> global, const ClientUpdate<S>& update) {
    return add(global, update.params, update);
  }

  long version() const { return version_; }   ///< server steps taken (model version)
  Index buffered() const { return count_; }   ///< updates waiting in the buffer
  long dropped() const { return dropped_; }   ///< updates discarded as too stale
  long accepted() const { return accepted_; } ///< updates added to a buffer
  /// For a checkpoint: version, dropped and accepted counts (u64 each), the
  /// buffered count (u64), then the accumulator (dim f64) when it is not
  /// empty. Little-endian.
  void save_state(ByteWriter& w) const {
    w.u64(static_cast<std::uint64_t>(version_));
    w.u64(static_cast<std::uint64_t>(dropped_));
    w.u64(static_cast<std::uint64_t>(accepted_));
    w.u64(static_cast<std::uint64_t>(count_));
    if (count_ > 0) detail::write_state_vector(w, acc_);
  }

  /// Continue from save_state()'s bytes for a model of `dim` parameters; the
  /// stream must end there. Untrusted: counts are bounded and consistent,
  /// the accumulator finite; on error nothing changes.
  Result<void> load_state(ByteReader& r, Index dim) {
    const auto bad = [](const std::string& why) { return make_error(Errc::corrupt, "fedbuff: state: " + why); };
    std::uint64_t version = 0, dropped = 0, accepted = 0, count = 0;
    if (!r.u64(version) || !r.u64(dropped) || !r.u64(accepted) || !r.u64(count)) return bad("truncated");
    constexpr std::uint64_t limit = std::uint64_t{1} << 40;
    if (version > limit || dropped > limit || accepted > limit) return bad("a counter is out of range");
    if (count >= static_cast<std::uint64_t>(o_.buffer_size) || count > accepted)
      return bad(std::to_string(count) + " buffered updates (buffer_size " + std::to_string(o_.buffer_size) + ", " +
                 std::to_string(accepted) + " accepted)");
    Vector<double> acc;
    if (count > 0 && !detail::read_state_vector(r, dim, acc)) return bad("the buffer is truncated or not finite");
    if (!r.at_end()) return bad(std::to_string(r.remaining()) + " trailing bytes");
    acc_ = std::move(acc);
    count_ = static_cast<Index>(count);
    version_ = static_cast<long>(version);
    dropped_ = static_cast<long>(dropped);
    accepted_ = static_cast<long>(accepted);
    return success();
  }

  /// Start over: version 0, empty buffer, counters zero.
  void reset() {
    acc_.resize(0);
    count_ = 0;
    version_ = 0;
    dropped_ = 0;
    accepted_ = 0;
  }

 private:
  template <class D>
  Result<bool> add(VectorMap<S> global, const Eigen::MatrixBase<D>& delta, const ClientUpdate<S>& u) {
    const std::string who = "fedbuff";
    const std::string client = " (client " + std::to_string(u.client) + ")";
    if (o_.buffer_size <= 0)
      return make_error(Errc::invalid_argument, who + ": buffer_size = " + std::to_string(o_.buffer_size) + " must be > 0");
    if (!(o_.server_learning_rate > 0.0) || !std::isfinite(o_.server_learning_rate))
      return make_error(Errc::invalid_argument, who + ": server_learning_rate must be finite and > 0");
    if (o_.max_staleness < 0)
      return make_error(Errc::invalid_argument, who + ": max_staleness must be >= 0");
    if (delta.size() != global.size())
      return make_error(Errc::shape_mismatch, who + client + ": update has " + std::to_string(delta.size()) +
                                                  " parameters, the global model " + std::to_string(global.size()));
    if (acc_.size() != 0 && acc_.size() != global.size())
      return make_error(Errc::shape_mismatch, who + ": buffer holds " + std::to_string(acc_.size()) +
                                                  " parameters, the global model " + std::to_string(global.size()));
    if (!delta.allFinite()) return make_error(Errc::invalid_argument, who + client + ": update contains NaN or infinity");
    if (u.base_round < 0 || u.base_round > version_)
      return make_error(Errc::invalid_argument, who + client + ": base_round " + std::to_string(u.base_round) +
                                                    " is not a version the server has issued (current " +
                                                    std::to_string(version_) + ")");
    const long s = version_ - u.base_round;
    if (s > o_.max_staleness) {
      ++dropped_;
      return false;
    }
    if (acc_.size() == 0) acc_.setZero(global.size());
    acc_ += staleness_weight(s) * delta.template cast<double>();
    ++count_;
    ++accepted_;
    if (count_ < o_.buffer_size) return false;
    // x <- x + eta_g * sum_i w(s_i) delta_i / K
    global += (acc_ * (o_.server_learning_rate / static_cast<double>(o_.buffer_size))).template cast<S>();
    acc_.setZero();
    count_ = 0;
    ++version_;
    return true;
  }

  FedBuffOptions o_;
  Vector<double> acc_;
  Index count_ = 0;
  long version_ = 0;
  long dropped_ = 0;
  long accepted_ = 0;
};

}  // namespace fleetdl::fl
