// fleetdl/fl/dp.hpp — differential privacy for federated learning: strategy
// wrappers for central DP (fixed and adaptive clipping), a client-side local-DP
// helper, and a Rényi-DP accountant for the sampled Gaussian mechanism.
//
//   DpFixedClipping<S>     central DP around ANY Strategy<S> (decorator owning
//                          the inner strategy): clip every client update
//                          Δ_i = params_i − global to L2 norm ≤ C, let the inner
//                          strategy aggregate global + clip(Δ_i), add Gaussian
//                          noise N(0, (z·C/m)²) to every coordinate of the result.
//                          Flower's DifferentialPrivacyServerSideFixedClipping;
//                          McMahan et al., "Learning Differentially Private
//                          Recurrent Language Models", ICLR 2018 (arXiv 1710.06963).
//   DpAdaptiveClipping<S>  the same with the clipping norm tracking a quantile
//                          of the update norms: Andrew, Thakkar, McMahan,
//                          Ramaswamy, "Differentially Private Learning with
//                          Adaptive Clipping", NeurIPS 2021 (arXiv 1905.03871).
//   privatize_update_local local DP on the client: clip the own update to C and
//                          add N(0, σ²) per coordinate (the Gaussian mechanism,
//                          Dwork & Roth 2014, Thm A.1), plus gaussian_noise_stddev().
//   RdpAccountant          RDP of the sampled Gaussian mechanism: Mironov,
//                          Talwar, Zhang, "Rényi Differential Privacy of the
//                          Sampled Gaussian Mechanism", arXiv 1908.10530 (2019);
//                          the computation of TensorFlow Privacy's compute_rdp and
//                          Opacus' RDP accountant. ε(δ) by Mironov 2017 Prop. 3
//                          or by Balle et al. 2020 Thm. 21 (arXiv 1905.09982).
//
// Semantics and deliberate choices (see each class for details):
//   * Every vector operation is over the flat parameter vector; no per-layer loops.
//   * All randomness comes from an Rng passed in (the wrappers own a copy given
//     at creation, because Strategy::aggregate() takes no Rng). The noise is
//     therefore reproducible, and NOT cryptographically secure: xoshiro256** +
//     Box–Muller in floating point is fine for research and simulation, not for
//     a deployment facing a real adversary (Mironov, "On Significance of the
//     Least Significant Bits for Differential Privacy", CCS 2012).
//   * Noise std is z·C/m with m = the number of sampled clients; the (ε, δ) the
//     accountant reports assumes the inner strategy outputs the UNWEIGHTED mean of
//     the clipped parameters (sensitivity C/m). With `equal_weights = true` (the
//     default) the wrappers hand every clipped update to the inner strategy with
//     num_examples = 1 so that FedAvg-like strategies compute exactly that mean;
//     Flower keeps the clients' example counts (set equal_weights = false to match
//     it; the reported ε is then not a valid bound when counts differ). Inner
//     strategies with a server optimizer (FedAvgM, FedAdam, ...) transform the
//     mean before the noise is added; their sensitivity differs and the ε is
//     only indicative. SCAFFOLD control deltas are passed through unprotected.
//   * Client-level privacy: q is the client sampling rate per round (sampled /
//     available, taken from configure()), and one accountant step per round.
//     Like TF Privacy, the analysis assumes Poisson sampling; fixed-size
//     uniform sampling is the usual approximation.
//   * The library never prints; each wrapper exposes last_round() (clip norm,
//     noise std, clipped count, q) and accountant() for the caller to log.
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/core/rng.hpp"
#include "fleetdl/core/tensor.hpp"
#include "fleetdl/fl/strategy.hpp"

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdio>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace fleetdl::fl {

// ---------------------------------------------------------------------------
// Clipping
// ---------------------------------------------------------------------------

namespace detail {
/// A writable Eigen column-vector expression (Vector, Map, segment, ...).
template <class V>
concept DpWritableVector =
    requires(std::remove_cvref_t<V>& v, typename std::remove_cvref_t<V>::Scalar s) {
      v.squaredNorm();
      v *= s;
    } && std::remove_cvref_t<V>::ColsAtCompileTime == 1 && !std::is_const_v<std::remove_reference_t<V>>;

inline std::string dp_fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}
}  // namespace detail

/// Scale `v` in place by min(1, C/||v||₂) (McMahan et al. 2018, "flat
/// clipping") and return the L2 norm it had before. Norms are accumulated in
/// double. Afterwards ||v||₂ ≤ C holds for the stored (rounded) values: if
/// rounding the scaled entries leaves the norm a few ulps above C, the vector
/// is shrunk once more by the excess. Accepts any writable Eigen column vector
/// expression (Vector, VectorMap, segment). Precondition: C ≥ 0, v finite.
template <class V>
  requires detail::DpWritableVector<V>
double clip_l2(V&& v, double clipping_norm) {
  using S = typename std::remove_cvref_t<V>::Scalar;
  const double norm = std::sqrt(v.template cast<double>().squaredNorm());
  if (!(norm > clipping_norm)) return norm;  // also norm == 0
  v *= static_cast<S>(clipping_norm / norm);
  // Rounding of S-precision products may leave the norm marginally above C.
  for (int pass = 0; pass < 4; ++pass) {
    const double after = std::sqrt(v.template cast<double>().squaredNorm());
    if (after <= clipping_norm) break;
    const double shrink = clipping_norm / after * (1.0 - 4.0 * static_cast<double>(std::numeric_limits<S>::epsilon()));
    v *= static_cast<S>(shrink);
  }
  return norm;
}

// ---------------------------------------------------------------------------
// Rényi-DP accountant for the sampled Gaussian mechanism
// ---------------------------------------------------------------------------

/// How RDP is converted to (ε, δ)-DP.
enum class RdpConversion {
  /// ε = min_α RDP(α) − log δ / (α − 1)  (Mironov 2017, Prop. 3). The classic
  /// conversion of TensorFlow Privacy ≤ 0.5 / compute_dp_sgd_privacy; its
  /// published tutorial numbers (ε = 3.01 for MNIST, z = 1.1, 60 epochs) use it.
  mironov2017,
  /// ε = min_α RDP(α) + log((α−1)/α) − (log δ + log α)/(α − 1)  (Balle, Barthe,
  /// Gaboardi, Hsu, Sato 2020, Thm. 21), with ε = 0 when δ² > 1 − e^{−RDP}
  /// (KL bound) and orders ≤ 1.01 skipped — exactly dp_accounting's
  /// compute_epsilon (TF Privacy ≥ 0.8, Opacus). Tighter; the default.
  balle2020,
};

/// ε and the Rényi order that attained it (NaN when ε is infinite).
struct PrivacySpent {
  double epsilon = 0.0;
  double order = 0.0;
};

namespace detail {

inline double rdp_log_add(double x, double y) {
  const double lo = std::min(x, y), hi = std::max(x, y);
  if (lo == -std::numeric_limits<double>::infinity()) return hi;
  return std::log1p(std::exp(lo - hi)) + hi;
}

/// log(e^x − e^y); false when the result would be negative (a numerical failure
/// of the fractional-order series — the caller then treats the order as ∞).
inline bool rdp_log_sub(double x, double y, double& out) {
  if (x < y) return false;
  if (y == -std::numeric_limits<double>::infinity()) {
    out = x;
    return true;
  }
  if (x == y) {
    out = -std::numeric_limits<double>::infinity();
    return true;
  }
  out = std::log(std::expm1(x - y)) + y;
  return true;
}

/// log(erfc(x)), accurate for large x (erfc underflows past x ≈ 26.5): there
/// the asymptotic series log erfc(x) = −x² − log(x√π) − 1/(2x²) + 5/(8x⁴) −
/// 37/(24x⁶) + 353/(64x⁸) + …, as in TF Privacy's _log_erfc.
inline double rdp_log_erfc(double x) {
  if (x < 26.0) return std::log(std::erfc(x));
  const double x2 = x * x;
  constexpr double log_sqrt_pi = 0.57236494292470008707171367567653;  // log(√π)
  return -x2 - std::log(x) - log_sqrt_pi - 0.5 / x2 + 0.625 / (x2 * x2) - 37.0 / 24.0 / (x2 * x2 * x2) +
         353.0 / 64.0 / (x2 * x2 * x2 * x2);
}

/// log A_α for integer α ≥ 2, 0 < q < 1 (Mironov et al. 2019, Sec. 3.3, the
/// binomial expansion): A_α = Σ_i C(α,i) q^i (1−q)^{α−i} exp((i² − i)/(2σ²)).
inline double rdp_log_a_int(double q, double sigma, long alpha) {
  double log_a = -std::numeric_limits<double>::infinity();
  double log_binom = 0.0;  // log C(α, i), updated multiplicatively
  const double log_q = std::log(q), log_1mq = std::log1p(-q);
  const double inv_2s2 = 1.0 / (2.0 * sigma * sigma);
  for (long i = 0; i <= alpha; ++i) {
    if (i > 0) log_binom += std::log(static_cast<double>(alpha - i + 1)) - std::log(static_cast<double>(i));
    const double di = static_cast<double>(i);
    const double s = log_binom + di * log_q + static_cast<double>(alpha - i) * log_1mq + (di * di - di) * inv_2s2;
    log_a = rdp_log_add(log_a, s);
  }
  return log_a;
}

/// log A_α for fractional α > 1, 0 < q < 1 (Mironov et al. 2019, Sec. 3.3,
/// the two-sided series split at z0 = σ² log(1/q − 1) + 1/2; TF Privacy's
/// _compute_log_a_frac). Returns +∞ if the series fails numerically or does not
/// settle within 100000 terms (a conservative answer: the order is then unused).
inline double rdp_log_a_frac(double q, double sigma, double alpha) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  double log_a0 = -inf, log_a1 = -inf;
  const double z0 = sigma * sigma * std::log(1.0 / q - 1.0) + 0.5;
  const double log_q = std::log(q), log_1mq = std::log1p(-q);
  const double inv_2s2 = 1.0 / (2.0 * sigma * sigma);
  const double sqrt2_sigma = std::sqrt(2.0) * sigma;
  const double log_half = std::log(0.5);
  double log_abs_coef = 0.0;  // log |C(α, i)|, generalized binomial coefficient
  bool coef_positive = true;
  for (long i = 0; i < 100000; ++i) {
    const double di = static_cast<double>(i);
    const double j = alpha - di;
    const double log_t0 = log_abs_coef + di * log_q + j * log_1mq;
    const double log_t1 = log_abs_coef + j * log_q + di * log_1mq;
    const double log_e0 = log_half + rdp_log_erfc((di - z0) / sqrt2_sigma);
    const double log_e1 = log_half + rdp_log_erfc((z0 - j) / sqrt2_sigma);
    const double log_s0 = log_t0 + (di * di - di) * inv_2s2 + log_e0;
    const double log_s1 = log_t1 + (j * j - j) * inv_2s2 + log_e1;
    if (coef_positive) {
      log_a0 = rdp_log_add(log_a0, log_s0);
      log_a1 = rdp_log_add(log_a1, log_s1);
    } else {
      if (!rdp_log_sub(log_a0, log_s0, log_a0) || !rdp_log_sub(log_a1, log_s1, log_a1)) return inf;
    }
    if (std::max(log_s0, log_s1) < -30.0) return rdp_log_add(log_a0, log_a1);
    // C(α, i+1) = C(α, i) (α − i) / (i + 1)
    const double factor = alpha - di;
    log_abs_coef += std::log(std::fabs(factor)) - std::log(di + 1.0);
    if (factor < 0) coef_positive = !coef_positive;
  }
  return inf;
}

}  // namespace detail

/// RDP ε_α of ONE step of the sampled Gaussian mechanism with sampling rate q
/// and noise multiplier z (noise std / L2 sensitivity), at order α > 1.
/// q = 0 → 0; z = 0 (and q > 0) → +∞; q = 1 → α/(2z²) (the plain Gaussian
/// mechanism); otherwise log A_α / (α − 1) (Mironov et al. 2019).
/// Preconditions (checked by RdpAccountant): 0 ≤ q ≤ 1, z ≥ 0, α > 1.
inline double rdp_sampled_gaussian(double q, double z, double alpha) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  if (q == 0.0) return 0.0;
  if (z == 0.0) return inf;
  if (q == 1.0) return alpha / (2.0 * z * z);
  if (std::isinf(alpha)) return inf;
  double log_a = 0.0;
  if (alpha == std::floor(alpha) && alpha < 1e9)
    log_a = detail::rdp_log_a_int(q, z, static_cast<long>(alpha));
  else
    log_a = detail::rdp_log_a_frac(q, z, alpha);
  return log_a / (alpha - 1.0);
}

/// Rényi-DP accountant: accumulates the RDP of sampled Gaussian steps at a
/// fixed list of orders (RDP composes additively) and converts to (ε, δ).
///
/// Default orders (dp_accounting's list, ending at 256 as fleetdl chose):
///   1.25, 1.5, 1.75, 2, 2.25, 2.5, 3, 3.5, 4, 4.5, 5, 6, …, 64, 128, 256.
/// Use with_orders() for another list, e.g. TF Privacy's older tutorial list
/// {1.1, 1.2, …, 10.9, 12, …, 63} to reproduce its published numbers.
class RdpAccountant {
 public:
  RdpAccountant() : orders_(default_orders()), rdp_(orders_.size(), 0.0) {}

  static std::vector<double> default_orders() {
    std::vector<double> o{1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5};
    for (int a = 5; a <= 64; ++a) o.push_back(a);
    o.push_back(128.0);
    o.push_back(256.0);
    return o;
  }

  /// An accountant over `orders` (each finite and > 1; non-empty).
  static Result<RdpAccountant> with_orders(std::vector<double> orders) {
    if (orders.empty()) return make_error(Errc::invalid_argument, "RdpAccountant: the list of orders is empty");
    for (std::size_t i = 0; i < orders.size(); ++i)
      if (!(orders[i] > 1.0) || !std::isfinite(orders[i]))
        return make_error(Errc::invalid_argument, "RdpAccountant: order " + std::to_string(i) + " is " +
                                                      detail::dp_fmt(orders[i]) + "; every Rényi order must be finite and > 1");
    RdpAccountant a;
    a.orders_ = std::move(orders);
    a.rdp_.assign(a.orders_.size(), 0.0);
    return a;
  }

  /// Account `count` steps of the sampled Gaussian mechanism with sampling
  /// rate q ∈ [0, 1] and noise multiplier z ≥ 0. The per-step RDP of the last
  /// (q, z) is cached, so calling once per round is cheap.
  Result<void> step(double q, double z, long count = 1) {
    if (!(q >= 0.0 && q <= 1.0))
      return make_error(Errc::invalid_argument, "RdpAccountant::step: sampling rate q = " + detail::dp_fmt(q) +
                                                    " is outside [0, 1]");
    if (!(z >= 0.0) || !std::isfinite(z))
      return make_error(Errc::invalid_argument, "RdpAccountant::step: noise multiplier z = " + detail::dp_fmt(z) +
                                                    " must be finite and >= 0");
    if (count < 0)
      return make_error(Errc::invalid_argument, "RdpAccountant::step: negative step count " + std::to_string(count));
    if (count == 0) return success();
    if (cache_.empty() || q != cache_q_ || z != cache_z_) {
      cache_.resize(orders_.size());
      for (std::size_t i = 0; i < orders_.size(); ++i) cache_[i] = rdp_sampled_gaussian(q, z, orders_[i]);
      cache_q_ = q;
      cache_z_ = z;
    }
    for (std::size_t i = 0; i < orders_.size(); ++i) rdp_[i] += static_cast<double>(count) * cache_[i];
    steps_ += count;
    return success();
  }

  /// ε for the given δ ∈ (0, 1) after the steps so far, minimised over the
  /// orders, and the minimising order. ε = +∞ (order NaN) if every order is ∞.
  Result<PrivacySpent> epsilon(double delta, RdpConversion conv = RdpConversion::balle2020) const {
    if (!(delta > 0.0 && delta < 1.0))
      return make_error(Errc::invalid_argument, "RdpAccountant::epsilon: delta = " + detail::dp_fmt(delta) +
                                                    " must be in (0, 1)");
    constexpr double inf = std::numeric_limits<double>::infinity();
    PrivacySpent best{inf, std::numeric_limits<double>::quiet_NaN()};
    for (std::size_t i = 0; i < orders_.size(); ++i) {
      const double a = orders_[i], r = rdp_[i];
      double eps = inf;
      if (conv == RdpConversion::mironov2017) {
        eps = r - std::log(delta) / (a - 1.0);
      } else if (delta * delta + std::expm1(-r) > 0.0) {
        eps = 0.0;  // δ ≥ sqrt(1 − e^{−KL}) already
      } else if (a > 1.01) {
        eps = r + std::log1p(-1.0 / a) - std::log(delta * a) / (a - 1.0);
      }
      if (std::isnan(eps)) continue;
      if (eps < best.epsilon) best = {eps, a};
    }
    if (best.epsilon < 0.0) best.epsilon = 0.0;
    return best;
  }

  const std::vector<double>& orders() const { return orders_; }
  /// Accumulated RDP per order (same indexing as orders()).
  const std::vector<double>& rdp() const { return rdp_; }
  long steps() const { return steps_; }
  void reset() {
    std::fill(rdp_.begin(), rdp_.end(), 0.0);
    steps_ = 0;
  }
  /// Continue from a checkpoint: rdp() and steps() as they were, over the
  /// same orders. Each RDP must be >= 0 and not NaN (+inf is a legal total),
  /// the step count >= 0; on error nothing changes.
  Result<void> restore(std::vector<double> rdp, long steps) {
    if (rdp.size() != orders_.size())
      return make_error(Errc::invalid_argument, "RdpAccountant::restore: " + std::to_string(rdp.size()) +
                                                    " RDP values for " + std::to_string(orders_.size()) + " orders");
    for (std::size_t i = 0; i < rdp.size(); ++i)
      if (!(rdp[i] >= 0.0))
        return make_error(Errc::invalid_argument, "RdpAccountant::restore: RDP at order " + detail::dp_fmt(orders_[i]) +
                                                      " is " + detail::dp_fmt(rdp[i]));
    if (steps < 0)
      return make_error(Errc::invalid_argument, "RdpAccountant::restore: negative step count " + std::to_string(steps));
    rdp_ = std::move(rdp);
    steps_ = steps;
    return success();
  }

 private:
  std::vector<double> orders_;
  std::vector<double> rdp_;
  long steps_ = 0;
  std::vector<double> cache_;
  double cache_q_ = -1.0, cache_z_ = -1.0;
};

// ---------------------------------------------------------------------------
// Local DP (client side)
// ---------------------------------------------------------------------------

/// σ of the classic Gaussian mechanism: σ = Δ₂ · sqrt(2 ln(1.25/δ)) / ε, which
/// gives (ε, δ)-DP for ONE release of a query with L2 sensitivity Δ₂ (Dwork &
/// Roth 2014, Thm. A.1; Flower's LocalDpMod uses the same formula). The theorem
/// is proved only for ε < 1, so ε ≥ 1 is rejected: for larger ε use
/// RdpAccountant with q = 1 (any ε, and composition over rounds).
inline Result<double> gaussian_noise_stddev(double sensitivity, double epsilon, double delta) {
  if (!(sensitivity >= 0.0) || !std::isfinite(sensitivity))
    return make_error(Errc::invalid_argument, "gaussian_noise_stddev: sensitivity " + detail::dp_fmt(sensitivity) +
                                                  " must be finite and >= 0");
  if (!(epsilon > 0.0 && epsilon < 1.0))
    return make_error(Errc::invalid_argument,
                      "gaussian_noise_stddev: epsilon " + detail::dp_fmt(epsilon) +
                          " is outside (0, 1), where the classic Gaussian mechanism bound holds; use RdpAccountant "
                          "(q = 1) for larger epsilon");
  if (!(delta > 0.0 && delta < 1.0))
    return make_error(Errc::invalid_argument, "gaussian_noise_stddev: delta " + detail::dp_fmt(delta) + " must be in (0, 1)");
  return sensitivity * std::sqrt(2.0 * std::log(1.25 / delta)) / epsilon;
}

/// What privatize_update_local did.
struct LocalDpReport {
  double update_norm = 0.0;   ///< ||params − global||₂ before clipping
  bool clipped = false;       ///< update_norm > C
  double noise_stddev = 0.0;  ///< σ added per coordinate
};

/// Local DP for one client (Flower's LocalDpMod): Δ = params − global is
/// clipped to L2 norm ≤ C, N(0, σ²) is added to every coordinate, and params
/// becomes global + Δ̃ (in place). With σ = gaussian_noise_stddev(C, ε, δ) one
/// release is (ε, δ)-DP w.r.t. replacing the client's update by zero
/// (sensitivity C); with σ = z·C, RdpAccountant::step(1, z) per round accounts
/// the client's releases over many rounds.
template <class V, class G>
  requires detail::DpWritableVector<V>
Result<LocalDpReport> privatize_update_local(V&& params, const Eigen::MatrixBase<G>& global, double clipping_norm,
                                             double noise_stddev, Rng& rng) {
  using S = typename std::remove_cvref_t<V>::Scalar;
  if (params.size() != global.size())
    return make_error(Errc::shape_mismatch, "privatize_update_local: update has " + std::to_string(params.size()) +
                                                " parameters, the global model " + std::to_string(global.size()));
  if (!(clipping_norm > 0.0) || !std::isfinite(clipping_norm))
    return make_error(Errc::invalid_argument, "privatize_update_local: clipping norm " + detail::dp_fmt(clipping_norm) +
                                                  " must be finite and > 0");
  if (!(noise_stddev >= 0.0) || !std::isfinite(noise_stddev))
    return make_error(Errc::invalid_argument, "privatize_update_local: noise stddev " + detail::dp_fmt(noise_stddev) +
                                                  " must be finite and >= 0");
  if (!params.allFinite() || !global.allFinite())
    return make_error(Errc::invalid_argument, "privatize_update_local: parameters contain NaN or infinity");
  Vector<S> delta = params - global.template cast<S>();
  LocalDpReport rep;
  rep.update_norm = clip_l2(delta, clipping_norm);
  rep.clipped = rep.update_norm > clipping_norm;
  rep.noise_stddev = noise_stddev;
  if (noise_stddev > 0.0)
    for (Index i = 0; i < delta.size(); ++i) delta[i] += static_cast<S>(noise_stddev * rng.normal());
  params = global.template cast<S>() + delta;
  return rep;
}

// ---------------------------------------------------------------------------
// Central DP strategy wrappers
// ---------------------------------------------------------------------------

/// What a DP wrapper did in its last successful aggregate().
struct DpRoundReport {
  long round = -1;
  Index num_updates = 0;          ///< updates aggregated
  Index num_clipped = 0;          ///< updates with ||Δ|| > C (scaled down)
  double max_update_norm = 0.0;   ///< largest ||Δ_i|| before clipping
  double clipping_norm = 0.0;     ///< C used this round
  double next_clipping_norm = 0.0;///< C for the next round (adaptive; = C when fixed)
  double noise_multiplier = 0.0;  ///< z applied to the update (z_Δ when adaptive)
  double noise_stddev = 0.0;      ///< per-coordinate σ = z·C/m
  Index num_sampled_clients = 0;  ///< m used in σ
  double sampling_rate = 1.0;     ///< q stepped into the accountant
  double noised_unclipped_fraction = std::numeric_limits<double>::quiet_NaN();  ///< adaptive: b̃
};

struct FixedClippingConfig {
  double noise_multiplier = 1.0;  ///< z ≥ 0; σ = z·C/m
  double clipping_norm = 1.0;     ///< C > 0
  Index num_sampled_clients = 0;  ///< m in σ; 0 = the number of updates of each round
  bool equal_weights = true;      ///< give the inner strategy num_examples = 1 (see the file comment)
  double sampling_rate = 0.0;     ///< q for the accountant; 0 = sampled/available from configure()
};

struct AdaptiveClippingConfig {
  double noise_multiplier = 1.0;         ///< z of the whole mechanism (update + count), as accounted
  Index num_sampled_clients = 0;         ///< m (expected clients per round), required > 0
  double initial_clipping_norm = 0.1;    ///< C₀ (Andrew et al.: 0.1)
  double target_quantile = 0.5;          ///< γ ∈ [0, 1]
  double clip_lr = 0.2;                  ///< η_C > 0
  double clipped_count_stddev = -1.0;    ///< σ_b ≥ 0; negative = m/20 if z > 0, else 0
  bool equal_weights = true;             ///< as FixedClippingConfig
  double sampling_rate = 0.0;            ///< as FixedClippingConfig
};

namespace detail {

/// Shared machinery of the central-DP wrappers: delegation, clipping, noise,
/// sampling-rate tracking and accounting.
template <class S>
class DpWrapperBase : public Strategy<S> {
 public:
  std::vector<ClientInstruction> configure(long round, std::span<const Index> available, Rng& rng) override {
    auto ins = inner_->configure(round, available, rng);
    configured_q_ = available.empty() ? 1.0
                                      : std::min(1.0, static_cast<double>(ins.size()) /
                                                          static_cast<double>(available.size()));
    return ins;
  }
  Index min_updates() const override { return inner_->min_updates(); }

  Strategy<S>& inner() { return *inner_; }
  const Strategy<S>& inner() const { return *inner_; }
  const DpRoundReport& last_round() const { return report_; }
  /// ε accounting over all successful rounds (client-level, q per round).
  const RdpAccountant& accountant() const { return accountant_; }

  /// The noise stream (4 u64, the spare as f64, a u8 flag), the sampling
  /// rate of the last configure() (f64), the accountant (u32 order count,
  /// f64 RDP per order, u64 steps), what the derived wrapper adds
  /// (save_extra), then the inner strategy's state.
  void save_state(ByteWriter& w) const override {
    const RngState st = noise_rng_.state();
    for (const auto word : st.s) w.u64(word);
    w.f64(st.spare);
    w.u8(st.has_spare ? 1 : 0);
    w.f64(configured_q_);
    w.u32(static_cast<std::uint32_t>(accountant_.rdp().size()));
    for (const double v : accountant_.rdp()) w.f64(v);
    w.u64(static_cast<std::uint64_t>(accountant_.steps()));
    save_extra(w);
    inner_->save_state(w);
  }

  Result<void> load_state(ByteReader& r, Index dim) override {
    const auto bad = [&](const std::string& why) { return make_error(Errc::corrupt, this->name() + ": state: " + why); };
    RngState st;
    std::uint8_t spare_flag = 0;
    double q = 0.0;
    std::uint32_t orders = 0;
    for (auto& word : st.s)
      if (!r.u64(word)) return bad("truncated noise stream");
    if (!r.f64(st.spare) || !r.u8(spare_flag)) return bad("truncated noise stream");
    if (spare_flag > 1) return bad("noise stream flag " + std::to_string(spare_flag));
    st.has_spare = spare_flag == 1;
    Rng rng;
    if (!rng.set_state(st)) return bad("the noise stream's state is invalid");
    if (!r.f64(q) || !(q >= 0.0 && q <= 1.0)) return bad("the sampling rate is missing or outside [0, 1]");
    if (!r.u32(orders)) return bad("truncated accountant");
    if (orders != accountant_.orders().size())
      return bad(std::to_string(orders) + " accountant orders, this wrapper has " +
                 std::to_string(accountant_.orders().size()));
    if (r.remaining() < static_cast<std::size_t>(orders) * 8 + 8) return bad("truncated accountant");
    std::vector<double> rdp(orders);
    for (auto& v : rdp) (void)r.f64(v);
    std::uint64_t steps = 0;
    (void)r.u64(steps);
    if (steps > (std::uint64_t{1} << 40)) return bad("accountant step count " + std::to_string(steps));
    RdpAccountant acc = accountant_;
    if (auto ok = acc.restore(std::move(rdp), static_cast<long>(steps)); !ok) return bad(ok.error().message);
    double extra = 0.0;
    if (auto ok = load_extra(r, extra); !ok) return bad(ok.error().message);
    // the inner strategy last: it is the only part that can still fail, and
    // it leaves itself unchanged when it does
    if (auto ok = inner_->load_state(r, dim); !ok) return std::move(ok).error();
    noise_rng_ = rng;
    configured_q_ = q;
    accountant_ = std::move(acc);
    apply_extra(extra);
    return success();
  }

 protected:
  DpWrapperBase(std::unique_ptr<Strategy<S>> inner, Rng noise_rng, bool equal_weights, double sampling_rate)
      : inner_(std::move(inner)), noise_rng_(noise_rng), equal_weights_(equal_weights), sampling_rate_(sampling_rate) {}

  struct Clipped {
    Index num_unclipped = 0;  // ||Δ|| ≤ C
  };

  /// Clip, aggregate with the inner strategy, add N(0, σ²). On error `global`
  /// and all state are unchanged (the noise stream only advances on success).
  Result<Clipped> clip_aggregate_noise(long round, VectorMap<S> global, std::span<const ClientUpdate<S>> updates,
                                       double clip, double z_update, Index m_config) {
    auto checked = detail::check_updates<S>(this->name(), global.size(), updates, /*need_examples=*/false);
    if (!checked) return std::move(checked).error();
    const Index d = global.size();
    std::vector<ClientUpdate<S>> clipped(updates.begin(), updates.end());
    Vector<S> delta(d);
    DpRoundReport rep;
    Clipped out;
    for (auto& u : clipped) {
      delta = u.params - global;
      const double norm = clip_l2(delta, clip);
      rep.max_update_norm = std::max(rep.max_update_norm, norm);
      if (norm > clip)
        ++rep.num_clipped;
      else
        ++out.num_unclipped;
      u.params = global + delta;
      if (equal_weights_) u.num_examples = 1;
    }
    FLEETDL_TRY(inner_->aggregate(round, global, std::span<const ClientUpdate<S>>(clipped)));
    const Index m = m_config > 0 ? m_config : static_cast<Index>(updates.size());
    const double sigma = z_update * clip / static_cast<double>(m);
    if (sigma > 0.0)
      for (Index i = 0; i < d; ++i) global[i] += static_cast<S>(sigma * noise_rng_.normal());
    rep.round = round;
    rep.num_updates = static_cast<Index>(updates.size());
    rep.clipping_norm = clip;
    rep.next_clipping_norm = clip;
    rep.noise_multiplier = z_update;
    rep.noise_stddev = sigma;
    rep.num_sampled_clients = m;
    rep.sampling_rate = sampling_rate_ > 0.0 ? sampling_rate_ : configured_q_;
    report_ = rep;
    return out;
  }

  /// A derived wrapper's own state (one f64 at most), around load_state().
  virtual void save_extra(ByteWriter& w) const { (void)w; }
  virtual Result<void> load_extra(ByteReader& r, double& v) const {
    (void)r;
    (void)v;
    return success();
  }
  virtual void apply_extra(double v) { (void)v; }

  /// One accountant step for this round (call after a successful round).
  void account(double z_total) {
    // q and z were validated at creation / come from configure(): cannot fail.
    auto r = accountant_.step(report_.sampling_rate, z_total);
    (void)r;
  }

  std::unique_ptr<Strategy<S>> inner_;
  Rng noise_rng_;
  bool equal_weights_ = true;
  double sampling_rate_ = 0.0;
  double configured_q_ = 1.0;  // no configure() seen: no amplification assumed
  DpRoundReport report_;
  RdpAccountant accountant_;
};

}  // namespace detail

/// Central DP with a fixed clipping norm (Flower's
/// DifferentialPrivacyServerSideFixedClipping; McMahan et al. 2018, DP-FedAvg).
/// Each round: Δ_i = params_i − global, Δ_i ← Δ_i·min(1, C/||Δ_i||), the inner
/// strategy aggregates {global + Δ_i}, then N(0, (z·C/m)²) is added to every
/// coordinate of the result (m = num_sampled_clients, or the number of updates
/// when 0). The accountant is stepped with (q, z) once per round.
template <class S>
class DpFixedClipping final : public detail::DpWrapperBase<S> {
 public:
  /// Wrap `inner`. `noise_rng` is the (owned) source of the Gaussian noise.
  static Result<std::unique_ptr<DpFixedClipping>> create(std::unique_ptr<Strategy<S>> inner,
                                                         const FixedClippingConfig& cfg, Rng noise_rng) {
    if (!inner) return make_error(Errc::invalid_argument, "dp_fixed_clipping: no inner strategy given");
    if (!(cfg.noise_multiplier >= 0.0) || !std::isfinite(cfg.noise_multiplier))
      return make_error(Errc::invalid_argument, "dp_fixed_clipping: noise multiplier " +
                                                    detail::dp_fmt(cfg.noise_multiplier) + " must be finite and >= 0");
    if (!(cfg.clipping_norm > 0.0) || !std::isfinite(cfg.clipping_norm))
      return make_error(Errc::invalid_argument, "dp_fixed_clipping: clipping norm " + detail::dp_fmt(cfg.clipping_norm) +
                                                    " must be finite and > 0");
    if (cfg.num_sampled_clients < 0)
      return make_error(Errc::invalid_argument, "dp_fixed_clipping: num_sampled_clients " +
                                                    std::to_string(cfg.num_sampled_clients) + " is negative");
    if (!(cfg.sampling_rate >= 0.0 && cfg.sampling_rate <= 1.0))
      return make_error(Errc::invalid_argument, "dp_fixed_clipping: sampling rate " + detail::dp_fmt(cfg.sampling_rate) +
                                                    " is outside [0, 1] (0 = take it from configure())");
    return std::unique_ptr<DpFixedClipping>(new DpFixedClipping(std::move(inner), cfg, noise_rng));
  }

  std::string name() const override { return "dp_fixed_clipping(" + this->inner_->name() + ")"; }

  Result<void> aggregate(long round, VectorMap<S> global, std::span<const ClientUpdate<S>> updates) override {
    auto r = this->clip_aggregate_noise(round, global, updates, cfg_.clipping_norm, cfg_.noise_multiplier,
                                        cfg_.num_sampled_clients);
    if (!r) return std::move(r).error();
    this->account(cfg_.noise_multiplier);
    return success();
  }

  double clipping_norm() const { return cfg_.clipping_norm; }
  const FixedClippingConfig& config() const { return cfg_; }

 private:
  DpFixedClipping(std::unique_ptr<Strategy<S>> inner, const FixedClippingConfig& cfg, Rng rng)
      : detail::DpWrapperBase<S>(std::move(inner), rng, cfg.equal_weights, cfg.sampling_rate), cfg_(cfg) {}
  FixedClippingConfig cfg_;
};

/// Central DP with adaptive clipping (Andrew et al. 2021, Alg. 1 with the
/// geometric update; Flower's DifferentialPrivacyServerSideAdaptiveClipping).
/// Each round with clip C_t:
///   b_i = 1[||Δ_i|| ≤ C_t],  clip and aggregate as DpFixedClipping,
///   add N(0, (z_Δ·C_t/m)²) per coordinate, with z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2),
///   b̃ = (Σ b_i + N(0, σ_b²)) / m,   C_{t+1} = C_t · exp(−η_C (b̃ − γ)).
/// z is the noise multiplier of the combined (update, count) release and is
/// what the accountant is stepped with (Andrew et al., Thm. 1 / Sec. 3.1).
///
/// Differences from Flower, on purpose: (1) Flower's server-side wrapper sets
/// its bit when the update WAS clipped but uses the same update rule, which
/// drives C away from the target quantile; fleetdl follows the paper (bit =
/// NOT clipped). (2) Flower updates C before noising and noises with the new
/// C; fleetdl noises with C_t, the norm the updates were clipped to (the
/// sensitivity). (3) b̃ divides by m (expected clients, as in the paper), not
/// by the number of results.
template <class S>
class DpAdaptiveClipping final : public detail::DpWrapperBase<S> {
 public:
  static Result<std::unique_ptr<DpAdaptiveClipping>> create(std::unique_ptr<Strategy<S>> inner,
                                                            const AdaptiveClippingConfig& cfg, Rng noise_rng) {
    if (!inner) return make_error(Errc::invalid_argument, "dp_adaptive_clipping: no inner strategy given");
    const double z = cfg.noise_multiplier;
    if (!(z >= 0.0) || !std::isfinite(z))
      return make_error(Errc::invalid_argument,
                        "dp_adaptive_clipping: noise multiplier " + detail::dp_fmt(z) + " must be finite and >= 0");
    if (cfg.num_sampled_clients <= 0)
      return make_error(Errc::invalid_argument, "dp_adaptive_clipping: num_sampled_clients " +
                                                    std::to_string(cfg.num_sampled_clients) +
                                                    " must be > 0 (the expected number of clients per round)");
    if (!(cfg.initial_clipping_norm > 0.0) || !std::isfinite(cfg.initial_clipping_norm))
      return make_error(Errc::invalid_argument, "dp_adaptive_clipping: initial clipping norm " +
                                                    detail::dp_fmt(cfg.initial_clipping_norm) + " must be finite and > 0");
    if (!(cfg.target_quantile >= 0.0 && cfg.target_quantile <= 1.0))
      return make_error(Errc::invalid_argument, "dp_adaptive_clipping: target quantile " +
                                                    detail::dp_fmt(cfg.target_quantile) + " is outside [0, 1]");
    if (!(cfg.clip_lr > 0.0) || !std::isfinite(cfg.clip_lr))
      return make_error(Errc::invalid_argument,
                        "dp_adaptive_clipping: clip learning rate " + detail::dp_fmt(cfg.clip_lr) + " must be finite and > 0");
    if (!(cfg.sampling_rate >= 0.0 && cfg.sampling_rate <= 1.0))
      return make_error(Errc::invalid_argument, "dp_adaptive_clipping: sampling rate " +
                                                    detail::dp_fmt(cfg.sampling_rate) + " is outside [0, 1]");
    if (!std::isfinite(cfg.clipped_count_stddev))
      return make_error(Errc::invalid_argument, "dp_adaptive_clipping: clipped_count_stddev is not finite");
    const double m = static_cast<double>(cfg.num_sampled_clients);
    double sigma_b = cfg.clipped_count_stddev;
    if (sigma_b < 0.0) sigma_b = z > 0.0 ? m / 20.0 : 0.0;
    double z_update = 0.0;
    if (z > 0.0) {
      // z⁻² = z_Δ⁻² + (2σ_b)⁻²  needs z < 2σ_b.
      if (!(z < 2.0 * sigma_b))
        return make_error(Errc::invalid_argument,
                          "dp_adaptive_clipping: noise multiplier z = " + detail::dp_fmt(z) +
                              " needs z < 2*clipped_count_stddev = " + detail::dp_fmt(2.0 * sigma_b) +
                              " for the update's noise multiplier (z^-2 - (2 sigma_b)^-2)^(-1/2) to exist" +
                              (cfg.clipped_count_stddev < 0.0
                                   ? " (sigma_b defaults to num_sampled_clients/20 = " + detail::dp_fmt(sigma_b) +
                                         "; sample more clients or set clipped_count_stddev)"
                                   : std::string()));
      z_update = 1.0 / std::sqrt(1.0 / (z * z) - 1.0 / (4.0 * sigma_b * sigma_b));
    }
    return std::unique_ptr<DpAdaptiveClipping>(
        new DpAdaptiveClipping(std::move(inner), cfg, noise_rng, sigma_b, z_update));
  }

  std::string name() const override { return "dp_adaptive_clipping(" + this->inner_->name() + ")"; }

  Result<void> aggregate(long round, VectorMap<S> global, std::span<const ClientUpdate<S>> updates) override {
    auto r = this->clip_aggregate_noise(round, global, updates, clip_, z_update_, cfg_.num_sampled_clients);
    if (!r) return std::move(r).error();
    const double m = static_cast<double>(cfg_.num_sampled_clients);
    double count = static_cast<double>(r->num_unclipped);
    if (sigma_b_ > 0.0) count += sigma_b_ * this->noise_rng_.normal();
    const double frac = count / m;
    clip_ *= std::exp(-cfg_.clip_lr * (frac - cfg_.target_quantile));
    this->report_.noised_unclipped_fraction = frac;
    this->report_.next_clipping_norm = clip_;
    this->account(cfg_.noise_multiplier);
    return success();
  }

  /// The clipping norm the next round will use.
  double clipping_norm() const { return clip_; }

 protected:
  void save_extra(ByteWriter& w) const override { w.f64(clip_); }
  Result<void> load_extra(ByteReader& r, double& v) const override {
    if (!r.f64(v)) return make_error(Errc::corrupt, "truncated clipping norm");
    if (!(v > 0.0) || !std::isfinite(v))
      return make_error(Errc::corrupt, "clipping norm " + detail::dp_fmt(v) + " must be finite and > 0");
    return success();
  }
  void apply_extra(double v) override { clip_ = v; }

 public:
  /// z_Δ, the noise multiplier applied to the aggregated update.
  double update_noise_multiplier() const { return z_update_; }
  /// σ_b, the std of the noise on the unclipped count.
  double clipped_count_stddev() const { return sigma_b_; }
  const AdaptiveClippingConfig& config() const { return cfg_; }

 private:
  DpAdaptiveClipping(std::unique_ptr<Strategy<S>> inner, const AdaptiveClippingConfig& cfg, Rng rng, double sigma_b,
                     double z_update)
      : detail::DpWrapperBase<S>(std::move(inner), rng, cfg.equal_weights, cfg.sampling_rate),
        cfg_(cfg),
        clip_(cfg.initial_clipping_norm),
        sigma_b_(sigma_b),
        z_update_(z_update) {}
  AdaptiveClippingConfig cfg_;
  double clip_;
  double sigma_b_;
  double z_update_;
};

}  // namespace fleetdl::fl
