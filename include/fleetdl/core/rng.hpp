// fleetdl/core/rng.hpp — a seeded, portable random number generator.
//
// std::*_distribution output differs between standard libraries, so fleetdl
// draws everything from its own generator (xoshiro256**, seeded through
// splitmix64) and its own transforms. The same seed gives the same stream on
// every compiler and platform.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>

namespace fleetdl {

/// Everything an Rng's future output depends on: the xoshiro256** words and
/// the Box-Muller spare. Rng::state() and Rng::set_state() make a generator
/// part of a checkpoint.
struct RngState {
  std::uint64_t s[4]{};
  double spare = 0.0;
  bool has_spare = false;
};

class Rng {
 public:
  explicit Rng(std::uint64_t seed = 0x5eed) { reseed(seed); }

  void reseed(std::uint64_t seed) {
    std::uint64_t x = seed;
    for (auto& s : s_) s = splitmix64(x);
  }

  /// An independent generator for sub-stream `stream` (e.g. a client id),
  /// derived from this generator's seed state without advancing it.
  Rng fork(std::uint64_t stream) const {
    std::uint64_t x = s_[0] ^ (stream * 0x9E3779B97F4A7C15ULL) ^ s_[3];
    return Rng(splitmix64(x));
  }

  std::uint64_t next_u64() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  /// Uniform double in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

  /// Uniform integer in [0, n), unbiased: draws below 2^64 mod n are
  /// rejected so every residue is equally likely (portable to 32-bit targets).
  std::uint64_t below(std::uint64_t n) {
    if (n == 0) return 0;
    const std::uint64_t threshold = (0 - n) % n;
    for (;;) {
      const std::uint64_t r = next_u64();
      if (r >= threshold) return r % n;
    }
  }

  /// Standard normal by the Box-Muller transform (both values used).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = 0.0;
    do u1 = uniform(); while (u1 <= 0.0);
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    constexpr double two_pi = 6.283185307179586476925286766559;
    spare_ = r * std::sin(two_pi * u2);
    has_spare_ = true;
    return r * std::cos(two_pi * u2);
  }
  double normal(double mean, double stddev) { return mean + stddev * normal(); }

  /// Gamma(shape, 1) by Marsaglia & Tsang (2000); shape < 1 via boosting.
  double gamma(double shape) {
    if (shape <= 0.0) return 0.0;
    if (shape < 1.0) {
      double u = 0.0;
      do u = uniform(); while (u <= 0.0);
      return gamma(shape + 1.0) * std::pow(u, 1.0 / shape);
    }
    const double d = shape - 1.0 / 3.0;
    const double c = 1.0 / std::sqrt(9.0 * d);
    for (;;) {
      double x = 0.0, v = 0.0;
      do {
        x = normal();
        v = 1.0 + c * x;
      } while (v <= 0.0);
      v = v * v * v;
      const double u = uniform();
      if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
      if (u > 0.0 && std::log(u) < 0.5 * x * x + d * (1.0 - v + std::log(v))) return d * v;
    }
  }

  /// The generator's whole state: an Rng given it by set_state() produces
  /// the same stream from here on.
  RngState state() const {
    RngState st;
    for (int i = 0; i < 4; ++i) st.s[i] = s_[i];
    st.spare = spare_;
    st.has_spare = has_spare_;
    return st;
  }
  /// Continue from state(). An all-zero word set is xoshiro's one fixed
  /// point (never reached from a seed) and is refused: returns false and
  /// leaves the generator unchanged. So is a spare that is not finite.
  bool set_state(const RngState& st) {
    if ((st.s[0] | st.s[1] | st.s[2] | st.s[3]) == 0 || !std::isfinite(st.spare)) return false;
    for (int i = 0; i < 4; ++i) s_[i] = st.s[i];
    spare_ = st.spare;
    has_spare_ = st.has_spare;
    return true;
  }

  /// Fisher-Yates shuffle of [first, last).
  template <class It>
  void shuffle(It first, It last) {
    const auto n = static_cast<std::uint64_t>(last - first);
    for (std::uint64_t i = n; i > 1; --i) {
      const std::uint64_t j = below(i);
      using std::swap;
      swap(first[static_cast<std::ptrdiff_t>(i - 1)], first[static_cast<std::ptrdiff_t>(j)]);
    }
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static std::uint64_t splitmix64(std::uint64_t& x) {
    std::uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

  std::uint64_t s_[4]{};
  double spare_ = 0.0;
  bool has_spare_ = false;
};

}  // namespace fleetdl
