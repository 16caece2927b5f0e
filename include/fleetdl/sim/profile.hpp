// fleetdl/sim/profile.hpp — device profiles for the fleet simulator and the
// cost model that turns a profile plus a model's cost report into simulated
// time, energy and memory.
//
// A DeviceProfile describes a class of device (say "cortex-m7", "rpi-zero",
// "phone"): compute rate, link rates, memory, energy per MAC and per byte,
// and how often it is online or drops out. A fleet is N devices drawn from a
// few classes by weight; each device stores only its class index and a speed
// multiplier (8 bytes), so the fleet itself costs nothing per client.
//
// Cost model (all from the profile and the layers' cost reports, nothing
// measured on the host):
//   training MACs     = 3 x forward MACs per sample x samples x epochs
//                       (forward + the two backward products per layer)
//   compute time      = training MACs / (macs_per_second x speed)
//                       x straggler_slowdown when the device straggles
//   download time     = latency + bytes down / down_bytes_per_second
//   upload time       = latency + bytes up / up_bytes_per_second
//   energy            = MACs x energy_per_mac + bytes x energy_per_byte
//   training memory   = parameters x sizeof(S) x (weights + gradients
//                       + optimizer slots) + batch x the sum of every layer's
//                       input and output activation bytes (kept for backward)
// A device whose memory is below the training memory cannot train the model
// and is never selected (reported as ineligible).
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/core/rng.hpp"
#include "fleetdl/core/tensor.hpp"
#include "fleetdl/nn/node.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

namespace fleetdl::sim {

/// One class of device. Defaults: a Raspberry-Pi-Zero-class board on a
/// 1 Mbit/s uplink (the embedded default the CLI uses when a config gives no
/// profiles).
struct DeviceProfile {
  std::string name = "default";
  double weight = 1.0;                  ///< share of the fleet (relative to the other classes)
  double macs_per_second = 2.0e8;       ///< sustained training MAC rate
  double speed_jitter = 0.0;            ///< per-device speed factor uniform in [1 - j, 1 + j], j in [0, 1)
  double up_bytes_per_second = 1.25e5;  ///< uplink
  double down_bytes_per_second = 6.25e5;///< downlink
  double latency_seconds = 0.05;        ///< per transfer
  double memory_bytes = 64.0 * 1024 * 1024;  ///< RAM available for training
  double energy_per_mac_joules = 1.0e-9;
  double energy_per_byte_joules = 1.0e-6;
  double availability = 1.0;            ///< P(online at the start of a round)
  double dropout = 0.0;                 ///< P(drops out during a round it was selected for)
  double straggler_probability = 0.0;   ///< P(runs slow this round)
  double straggler_slowdown = 4.0;      ///< compute time factor when it does
  double width = 1.0;                   ///< HeteroFL: sub-model width this class trains, in (0, 1]
};

/// A device of the fleet: its class and speed factor (8 bytes).
struct Device {
  std::uint32_t profile = 0;
  float speed = 1.0f;
};

namespace detail {
inline std::string fmt(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", v);
  return b;
}
}  // namespace detail

/// Check a profile; the message names the field and the rule.
/// Largest profile weight: weights are relative shares, and the cap keeps
/// their sum finite (make_fleet divides by it).
inline constexpr double max_profile_weight = 1e12;

inline Result<void> validate(const DeviceProfile& p) {
  auto bad = [&](const char* field, const std::string& rule, double v) {
    return make_error(Errc::invalid_argument,
                      "profile '" + p.name + "': " + field + " = " + detail::fmt(v) + " " + rule);
  };
  auto positive = [&](const char* f, double v) -> Result<void> {
    if (!(v > 0.0) || !std::isfinite(v)) return bad(f, "must be a finite number > 0", v);
    return success();
  };
  auto nonneg = [&](const char* f, double v) -> Result<void> {
    if (!(v >= 0.0) || !std::isfinite(v)) return bad(f, "must be a finite number >= 0", v);
    return success();
  };
  auto prob = [&](const char* f, double v) -> Result<void> {
    if (!(v >= 0.0 && v <= 1.0)) return bad(f, "must be in [0, 1]", v);
    return success();
  };
  FLEETDL_TRY(positive("weight", p.weight));
  if (p.weight > max_profile_weight) return bad("weight", "must be at most 1e12 (weights are relative)", p.weight);
  FLEETDL_TRY(positive("macs_per_second", p.macs_per_second));
  if (!(p.speed_jitter >= 0.0 && p.speed_jitter < 1.0)) return bad("speed_jitter", "must be in [0, 1)", p.speed_jitter);
  FLEETDL_TRY(positive("up_bytes_per_second", p.up_bytes_per_second));
  FLEETDL_TRY(positive("down_bytes_per_second", p.down_bytes_per_second));
  FLEETDL_TRY(nonneg("latency_seconds", p.latency_seconds));
  FLEETDL_TRY(positive("memory_bytes", p.memory_bytes));
  FLEETDL_TRY(nonneg("energy_per_mac_joules", p.energy_per_mac_joules));
  FLEETDL_TRY(nonneg("energy_per_byte_joules", p.energy_per_byte_joules));
  FLEETDL_TRY(prob("availability", p.availability));
  FLEETDL_TRY(prob("dropout", p.dropout));
  FLEETDL_TRY(prob("straggler_probability", p.straggler_probability));
  if (!(p.straggler_slowdown >= 1.0) || !std::isfinite(p.straggler_slowdown))
    return bad("straggler_slowdown", "must be a finite number >= 1", p.straggler_slowdown);
  if (!(p.width > 0.0 && p.width <= 1.0)) return bad("width", "must be in (0, 1]", p.width);
  return success();
}

/// N devices drawn from `classes` by weight: class c gets its share of N by
/// largest remainder (ties to the lower class), the assignment is then
/// shuffled with `seed`, and each device draws its speed factor.
inline Result<std::vector<Device>> make_fleet(const std::vector<DeviceProfile>& classes, Index n, std::uint64_t seed) {
  if (classes.empty()) return make_error(Errc::invalid_argument, "make_fleet: no device profiles given");
  if (n <= 0) return make_error(Errc::invalid_argument, "make_fleet: the fleet needs at least 1 device, got " + std::to_string(n));
  if (classes.size() > std::numeric_limits<std::uint32_t>::max())
    return make_error(Errc::limit_exceeded, "make_fleet: too many device profiles");
  double total = 0;
  for (const auto& p : classes) {
    FLEETDL_TRY(validate(p));
    total += p.weight;
  }
  std::vector<Index> count(classes.size(), 0);
  std::vector<std::pair<double, std::size_t>> rem;
  Index given = 0;
  for (std::size_t c = 0; c < classes.size(); ++c) {
    // weights are finite and <= 1e12 (validate), so total is finite and share <= n
    const double share = static_cast<double>(n) * (classes[c].weight / total);
    count[c] = static_cast<Index>(std::floor(share));
    given += count[c];
    rem.emplace_back(-(share - std::floor(share)), c);
  }
  std::sort(rem.begin(), rem.end());
  for (std::size_t i = 0; given < n; ++i, ++given) ++count[rem[i % rem.size()].second];
  std::vector<Device> fleet;
  fleet.reserve(static_cast<std::size_t>(n));
  for (std::size_t c = 0; c < classes.size(); ++c)
    for (Index i = 0; i < count[c]; ++i) fleet.push_back(Device{static_cast<std::uint32_t>(c), 1.0f});
  Rng rng(seed);
  rng.shuffle(fleet.begin(), fleet.end());
  for (auto& d : fleet) {
    const double j = classes[d.profile].speed_jitter;
    d.speed = static_cast<float>(j > 0.0 ? rng.uniform(1.0 - j, 1.0 + j) : 1.0);
  }
  return fleet;
}

/// What one model costs a client: MACs and bytes, from its cost report.
struct ModelCost {
  double forward_macs_per_sample = 0;  ///< sum of the layers' MACs
  double param_bytes = 0;              ///< trainable parameters x sizeof(S)
  double activation_bytes_per_sample = 0;  ///< sum of every layer's in + out activation bytes
  Index params = 0;
};

/// Summarize a cost report (top-level rows; composite rows already include
/// their children).
inline ModelCost model_cost(const std::vector<nn::NodeCost>& report, std::size_t scalar_bytes) {
  ModelCost c;
  for (const auto& r : report) {
    c.forward_macs_per_sample += static_cast<double>(r.macs);
    c.params += r.params;
    c.activation_bytes_per_sample += static_cast<double>(r.act_in_bytes + r.act_out_bytes);
  }
  c.param_bytes = static_cast<double>(c.params) * static_cast<double>(scalar_bytes);
  return c;
}

/// Peak training memory (see the file comment). optimizer_slots: 1 for SGD
/// with momentum, 0 without, 2 for Adam; extra_vectors: other per-client
/// parameter-sized vectors (SCAFFOLD's c and c_i, the global copy).
inline double training_memory_bytes(const ModelCost& c, Index batch, int optimizer_slots, int extra_vectors) {
  return c.param_bytes * (2.0 + optimizer_slots + extra_vectors) +
         static_cast<double>(batch) * c.activation_bytes_per_sample;
}

}  // namespace fleetdl::sim
