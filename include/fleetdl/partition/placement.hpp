// fleetdl/partition/placement.hpp — which device runs which module: a
// placement that respects every device's memory budget and balances the
// predicted time, from the modules' cost reports and the devices' measured
// capabilities (the orchestrator's module assignment; issue 6).
//
// A module's demand (ModuleDemand) is what running it once costs: peak
// memory, MACs, bytes in and out. training_demand() and inference_demand()
// build it from a model's cost report, so the numbers are the layers' own,
// never a hand-written table. A device (DeviceCapacity) offers a memory
// budget, MAC/s and link bytes/s; the predicted time of module m on device d
// is macs / macs_per_second + (bytes_in + bytes_out) / link_bytes_per_second.
//
// place_modules() is a greedy makespan heuristic with a memory constraint:
//   1. longest-processing-time first: modules in descending order of MACs
//      (ties: more memory first, then the given order), each to the device
//      that would finish it soonest (its load so far + the module's time)
//      among those with room left (and, with `exclusive`, no module yet);
//      ties: less memory left over after placing, then the lower index;
//   2. if step 1 strands a module, first-fit-decreasing by memory (modules in
//      descending order of memory, each to the device with the least room
//      that still fits it, ties lower index), which packs tighter at the cost
//      of balance.
// Both are deterministic. A module larger than every budget, more modules
// than devices under `exclusive`, or a set neither pass can pack is an error
// that names the module and the numbers.
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/core/tensor.hpp"
#include "fleetdl/nn/model.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <span>
#include <string>
#include <vector>

namespace fleetdl::partition {

/// A device as placement sees it.
struct DeviceCapacity {
  std::string name;
  double memory_budget_bytes = 0;    ///< > 0
  double macs_per_second = 0;        ///< > 0, measured by the device
  double link_bytes_per_second = 0;  ///< > 0
};

/// What running a module once costs (one image for inference, one local
/// round for training).
struct ModuleDemand {
  std::string name;
  double memory_bytes = 0;  ///< peak memory while it runs
  double macs = 0;          ///< multiply-accumulates
  double bytes_in = 0;      ///< bytes the device receives
  double bytes_out = 0;     ///< bytes the device sends
};

struct PlacementOptions {
  bool exclusive = true;  ///< at most one module per device (NoNN: one student each)
};

struct Placement {
  std::vector<Index> device;           ///< per module: the index of its device
  std::vector<double> module_seconds;  ///< per module: predicted time on its device
  std::vector<double> device_seconds;  ///< per device: its modules' time, summed
  std::vector<double> device_memory;   ///< per device: its modules' memory, summed
  double makespan = 0;                 ///< the largest device_seconds
  bool packed_by_memory = false;       ///< step 2 placed it (step 1 stranded a module)
};

/// Predicted seconds of module `m` on device `d`.
inline double predicted_seconds(const ModuleDemand& m, const DeviceCapacity& d) {
  return m.macs / d.macs_per_second + (m.bytes_in + m.bytes_out) / d.link_bytes_per_second;
}

namespace detail {

inline std::string bytes_text(double b) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024.0 && u < 4) {
    b /= 1024.0;
    ++u;
  }
  char buf[48];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, unit[u]);
  return buf;
}

inline bool positive_finite(double v) { return std::isfinite(v) && v > 0.0; }
inline bool nonneg_finite(double v) { return std::isfinite(v) && v >= 0.0; }

/// Step 1 (order by MACs, soonest finish) or step 2 (order by memory, least
/// room that fits). Returns the index of the first module it cannot place, or
/// -1 with `out` filled.
inline Index greedy(std::span<const ModuleDemand> mods, std::span<const DeviceCapacity> devs, bool exclusive,
                    bool by_memory, Placement& out) {
  const std::size_t n = mods.size(), k = devs.size();
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    if (by_memory) return mods[a].memory_bytes > mods[b].memory_bytes;
    if (mods[a].macs != mods[b].macs) return mods[a].macs > mods[b].macs;
    return mods[a].memory_bytes > mods[b].memory_bytes;
  });
  out = Placement{};
  out.device.assign(n, -1);
  out.module_seconds.assign(n, 0.0);
  out.device_seconds.assign(k, 0.0);
  out.device_memory.assign(k, 0.0);
  std::vector<int> held(k, 0);
  for (const std::size_t m : order) {
    Index best = -1;
    double best_key = 0, best_left = 0;
    for (std::size_t d = 0; d < k; ++d) {
      if (exclusive && held[d] > 0) continue;
      const double left = devs[d].memory_budget_bytes - out.device_memory[d] - mods[m].memory_bytes;
      if (left < 0.0) continue;
      const double key = by_memory ? left : out.device_seconds[d] + predicted_seconds(mods[m], devs[d]);
      if (best < 0 || key < best_key || (key == best_key && left < best_left)) {
        best = static_cast<Index>(d);
        best_key = key;
        best_left = left;
      }
    }
    if (best < 0) return static_cast<Index>(m);
    const auto d = static_cast<std::size_t>(best);
    out.device[m] = best;
    out.module_seconds[m] = predicted_seconds(mods[m], devs[d]);
    out.device_seconds[d] += out.module_seconds[m];
    out.device_memory[d] += mods[m].memory_bytes;
    ++held[d];
  }
  out.makespan = k == 0 ? 0.0 : *std::max_element(out.device_seconds.begin(), out.device_seconds.end());
  return -1;
}

}  // namespace detail

/// Place every module on a device (see the file comment). Errors name the
/// culprit: an invalid demand or capacity, a module larger than every
/// budget, too few devices, or a set that neither greedy pass can pack.
inline Result<Placement> place_modules(std::span<const ModuleDemand> modules, std::span<const DeviceCapacity> devices,
                                       const PlacementOptions& opt = {}) {
  if (modules.empty()) return make_error(Errc::invalid_argument, "placement: no modules to place");
  if (devices.empty()) return make_error(Errc::invalid_argument, "placement: no devices to place modules on");
  for (const auto& d : devices) {
    if (!detail::positive_finite(d.memory_budget_bytes))
      return make_error(Errc::invalid_argument, "placement: device '" + d.name + "': memory budget must be > 0");
    if (!detail::positive_finite(d.macs_per_second))
      return make_error(Errc::invalid_argument, "placement: device '" + d.name + "': MAC/s must be > 0");
    if (!detail::positive_finite(d.link_bytes_per_second))
      return make_error(Errc::invalid_argument, "placement: device '" + d.name + "': link bytes/s must be > 0");
  }
  for (const auto& m : modules)
    if (!detail::nonneg_finite(m.memory_bytes) || !detail::nonneg_finite(m.macs) ||
        !detail::nonneg_finite(m.bytes_in) || !detail::nonneg_finite(m.bytes_out))
      return make_error(Errc::invalid_argument,
                        "placement: module '" + m.name + "': memory, MACs and bytes must be finite and >= 0");
  // a module no device could ever hold
  const auto largest = std::max_element(devices.begin(), devices.end(), [](const auto& a, const auto& b) {
    return a.memory_budget_bytes < b.memory_budget_bytes;
  });
  for (const auto& m : modules)
    if (m.memory_bytes > largest->memory_budget_bytes)
      return make_error(Errc::limit_exceeded, "placement: module '" + m.name + "' needs " +
                                                detail::bytes_text(m.memory_bytes) +
                                                ", more than every device's budget (the largest: '" + largest->name +
                                                "', " + detail::bytes_text(largest->memory_budget_bytes) + ")");
  if (opt.exclusive && modules.size() > devices.size())
    return make_error(Errc::invalid_argument, "placement: " + std::to_string(modules.size()) + " modules but only " +
                                              std::to_string(devices.size()) + " devices (one module per device)");
  Placement p;
  if (detail::greedy(modules, devices, opt.exclusive, false, p) < 0) return p;
  const Index stranded = detail::greedy(modules, devices, opt.exclusive, true, p);
  if (stranded < 0) {
    p.packed_by_memory = true;
    return p;
  }
  const auto& m = modules[static_cast<std::size_t>(stranded)];
  return make_error(Errc::limit_exceeded, "placement: module '" + m.name + "' (" + detail::bytes_text(m.memory_bytes) +
                                            ") fits no device's remaining memory once the larger modules are placed");
}

/// One local training round of `model` on `examples` examples: training
/// memory as sim::training_memory_bytes counts it (parameters, gradients,
/// optimizer slots, extra parameter-sized vectors, every layer's activations
/// for one batch; the device agent refuses a module by the same rule),
/// 3 x the forward MACs per example (forward + backward), the parameters
/// down and the update up.
template <class S>
ModuleDemand training_demand(std::string name, const nn::Model<S>& model, Index batch, double examples,
                             int optimizer_slots = 1, int extra_vectors = 0) {
  double macs = 0, acts = 0;
  Index count = 0;
  for (const auto& r : model.cost_report()) {
    macs += static_cast<double>(r.macs);
    count += r.params;
    acts += static_cast<double>(r.act_in_bytes + r.act_out_bytes);
  }
  const double params = static_cast<double>(count) * sizeof(S);
  ModuleDemand d;
  d.name = std::move(name);
  d.memory_bytes = params * (2.0 + optimizer_slots + extra_vectors) + static_cast<double>(batch) * acts;
  d.macs = 3.0 * macs * examples;
  d.bytes_in = params;
  d.bytes_out = params;
  return d;
}

/// One image through `model`: its weights (and buffers) plus the largest
/// layer's input + output activations, the forward MACs, the input in and the
/// output out.
template <class S>
ModuleDemand inference_demand(std::string name, const nn::Model<S>& model) {
  double macs = 0, weights = 0, peak = 0, in = 0, out = 0;
  const auto report = model.cost_report();
  for (const auto& r : report) {
    macs += static_cast<double>(r.macs);
    weights += static_cast<double>(r.weight_bytes);
    peak = std::max(peak, static_cast<double>(r.act_in_bytes + r.act_out_bytes));
  }
  if (!report.empty()) {
    in = static_cast<double>(report.front().act_in_bytes);
    out = static_cast<double>(report.back().act_out_bytes);
  }
  ModuleDemand d;
  d.name = std::move(name);
  d.memory_bytes = weights + peak;
  d.macs = macs;
  d.bytes_in = in;
  d.bytes_out = out;
  return d;
}

}  // namespace fleetdl::partition
