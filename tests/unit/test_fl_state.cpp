// tests/unit/test_fl_state.cpp — Strategy::save_state() / load_state(): the
// server state a checkpoint carries from round to round.
//
//   * Rng::state() / set_state() continue the same stream (also with a
//     Box-Muller spare pending) and refuse the all-zero words and a
//     non-finite spare without changing the generator.
//   * FedAvgM, FedAdam, FedYogi, FedAdagrad, SCAFFOLD and the central-DP
//     wrappers (fixed clipping around FedAvg and FedAdam, adaptive clipping
//     around FedAvgM): state saved after round k and loaded into a freshly
//     built strategy aggregates rounds k+1 and k+2 bit for bit as the
//     original, accountant and clipping norm included; a fresh strategy
//     without the state does not.
//   * State saved before the first round, stateless FedAvg (0 bytes, and
//     leftover bytes refused).
//   * FedBuff (asynchronous, not a Strategy) and the Oort selector have their
//     own save_state()/load_state(): a restored FedBuff (partly filled
//     buffer included) steps bit for bit as the original, a restored Oort
//     selector picks the same clients; bad bytes are refused, nothing changes.
//   * Malformed bytes (every truncation, a trailing byte, NaN/inf values,
//     invalid noise stream, sampling rate, accountant, clip, moments) and a
//     state saved for another model size are refused, and the strategy is
//     left exactly as it was: its own state bytes are unchanged and its next
//     round equals that of an untouched twin.
//
// The synthetic federation: 10 available clients, fraction_fit 0.4 (so
// configure() picks 4 and a DP wrapper's sampling rate is 0.4), 4 updates per
// round around a fixed centre with different spreads (some are clipped at
// C = 0.5, some not), all drawn from fleetdl::Rng with fixed seeds.
#include "fleetdl/core/bytes.hpp"
#include "fleetdl/core/rng.hpp"
#include "fleetdl/fl/dp.hpp"
#include "fleetdl/fl/fedavg.hpp"
#include "fleetdl/fl/fedbuff.hpp"
#include "fleetdl/fl/fedopt.hpp"
#include "fleetdl/fl/scaffold.hpp"
#include "fleetdl/fl/selection.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

namespace {

using fleetdl::ByteReader;
using fleetdl::ByteWriter;
using fleetdl::Errc;
using fleetdl::Index;
using fleetdl::Rng;
using fleetdl::RngState;
using fleetdl::Vector;
using fleetdl::VectorMap;
namespace fl = fleetdl::fl;

using Bytes = std::vector<std::uint8_t>;
using Strat = fl::Strategy<double>;
using StratPtr = std::unique_ptr<Strat>;

constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

constexpr Index kAvailable = 10;
constexpr Index kSampled = 4;  // fraction_fit 0.4 of 10
constexpr double kFraction = 0.4;
constexpr std::uint64_t kNoiseSeed = 4242;

// ------------------------------------------------------------------ helpers

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

bool bit_equal(const Vector<double>& a, const Vector<double>& b) {
  if (a.size() != b.size()) return false;
  if (a.size() == 0) return true;
  return std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(double)) == 0;
}

Bytes save(const Strat& s) {
  ByteWriter w;
  s.save_state(w);
  return std::move(w).bytes();
}

fleetdl::Result<void> load(Strat& s, const Bytes& b, Index dim) {
  ByteReader r(b.data(), b.size());
  return s.load_state(r, dim);
}

std::string msg(const fleetdl::Result<void>& r) { return r.ok() ? std::string("ok") : r.error().message; }

void put_u64(Bytes& b, std::size_t at, std::uint64_t v) {
  REQUIRE(at + 8 <= b.size());
  for (std::size_t i = 0; i < 8; ++i) b[at + i] = static_cast<std::uint8_t>(v >> (8 * i));
}
void put_u32(Bytes& b, std::size_t at, std::uint32_t v) {
  REQUIRE(at + 4 <= b.size());
  for (std::size_t i = 0; i < 4; ++i) b[at + i] = static_cast<std::uint8_t>(v >> (8 * i));
}
void put_f64(Bytes& b, std::size_t at, double v) {
  std::uint64_t u = 0;
  std::memcpy(&u, &v, 8);
  put_u64(b, at, u);
}
double get_f64(const Bytes& b, std::size_t at) {
  std::uint64_t u = 0;
  for (std::size_t i = 0; i < 8; ++i) u |= static_cast<std::uint64_t>(b[at + i]) << (8 * i);
  double v = 0.0;
  std::memcpy(&v, &u, 8);
  return v;
}

Vector<double> random_vector(Index d, Rng& rng, double scale) {
  Vector<double> v(d);
  for (Index i = 0; i < d; ++i) v[i] = scale * rng.normal();
  return v;
}

Vector<double> initial_global(Index d) {
  Rng rng(7);
  return random_vector(d, rng, 1.0);
}

/// The round's 4 updates: the same for every strategy given (round, d).
std::vector<fl::ClientUpdate<double>> round_updates(long round, Index d) {
  Rng rng(1000u + 17u * static_cast<std::uint64_t>(round) + static_cast<std::uint64_t>(d));
  const Vector<double> centre = initial_global(d) + random_vector(d, rng, 0.05);
  static constexpr double spread[kSampled] = {0.03, 0.06, 0.1, 0.15};
  std::vector<fl::ClientUpdate<double>> out;
  for (Index i = 0; i < kSampled; ++i) {
    fl::ClientUpdate<double> u;
    u.client = 2 * i + 1;
    u.params = centre + random_vector(d, rng, spread[static_cast<std::size_t>(i)]);
    u.num_examples = 5 + 7 * i;
    u.local_steps = 3;
    u.control_delta = random_vector(d, rng, 0.01);
    out.push_back(std::move(u));
  }
  return out;
}

/// One round as a simulator runs it: configure() over the 10 available
/// clients (this sets a DP wrapper's sampling rate and SCAFFOLD's N), then
/// aggregate() of the round's updates into `g`.
void run_round(Strat& s, Vector<double>& g, long round, bool configure = true) {
  if (configure) {
    std::vector<Index> avail(static_cast<std::size_t>(kAvailable));
    std::iota(avail.begin(), avail.end(), Index{0});
    Rng sel(500u + static_cast<std::uint64_t>(round));
    const auto ins = s.configure(round, avail, sel);
    REQUIRE(static_cast<Index>(ins.size()) == kSampled);
  }
  const auto ups = round_updates(round, g.size());
  const auto r = s.aggregate(round, VectorMap<double>(g.data(), g.size()), ups);
  INFO(s.name() << ", round " << round << ": " << msg(r));
  REQUIRE(r.ok());
}

// --------------------------------------------------------------- strategies

enum class Kind { plain, dp_fixed, dp_adaptive };
/// The state after the DP header (or the whole state of a plain strategy).
enum class Inner { fedavg, fedavgm, fedopt, scaffold };

struct Case {
  std::string name;
  Kind kind;
  Inner inner;
  std::function<StratPtr()> make;
};

fl::FedAvgOptions fedavg_options() {
  fl::FedAvgOptions o;
  o.fraction_fit = kFraction;
  return o;
}
StratPtr make_fedavg() { return std::make_unique<fl::FedAvg<double>>(fedavg_options()); }
StratPtr make_fedavgm() {
  fl::FedAvgMOptions o;
  o.fraction_fit = kFraction;
  o.server_momentum = 0.9;
  o.server_learning_rate = 0.5;
  return std::make_unique<fl::FedAvgM<double>>(o);
}
StratPtr make_fedadam() {
  fl::FedAdamOptions o;
  o.fraction_fit = kFraction;
  return std::make_unique<fl::FedAdam<double>>(o);
}
StratPtr make_fedadam_standard() {
  fl::FedAdamOptions o;
  o.fraction_fit = kFraction;
  o.bias_correction = fl::AdamBiasCorrection::standard;  // the step count enters the update
  return std::make_unique<fl::FedAdam<double>>(o);
}
StratPtr make_fedyogi() {
  fl::FedYogiOptions o;
  o.fraction_fit = kFraction;
  return std::make_unique<fl::FedYogi<double>>(o);
}
StratPtr make_fedadagrad() {
  fl::FedAdagradOptions o;
  o.fraction_fit = kFraction;
  return std::make_unique<fl::FedAdagrad<double>>(o);
}
StratPtr make_scaffold() {
  fl::ScaffoldOptions o;
  o.fraction_fit = kFraction;
  return std::make_unique<fl::Scaffold<double>>(o);
}
StratPtr make_dp_fixed(StratPtr inner) {
  fl::FixedClippingConfig cfg;
  cfg.noise_multiplier = 0.7;
  cfg.clipping_norm = 0.5;
  auto r = fl::DpFixedClipping<double>::create(std::move(inner), cfg, Rng(kNoiseSeed));
  REQUIRE(r.ok());
  return StratPtr(std::move(r).value());
}
StratPtr make_dp_adaptive(StratPtr inner) {
  fl::AdaptiveClippingConfig cfg;
  cfg.noise_multiplier = 0.5;
  cfg.num_sampled_clients = kSampled;
  cfg.clipped_count_stddev = 2.0;  // z = 0.5 < 2 sigma_b
  cfg.initial_clipping_norm = 0.5;
  auto r = fl::DpAdaptiveClipping<double>::create(std::move(inner), cfg, Rng(kNoiseSeed));
  INFO((r.ok() ? std::string("ok") : r.error().message));
  REQUIRE(r.ok());
  return StratPtr(std::move(r).value());
}

std::vector<Case> all_cases() {
  return {
      {"fedavgm", Kind::plain, Inner::fedavgm, make_fedavgm},
      {"fedadam", Kind::plain, Inner::fedopt, make_fedadam},
      {"fedadam(standard bias correction)", Kind::plain, Inner::fedopt, make_fedadam_standard},
      {"fedyogi", Kind::plain, Inner::fedopt, make_fedyogi},
      {"fedadagrad", Kind::plain, Inner::fedopt, make_fedadagrad},
      {"scaffold", Kind::plain, Inner::scaffold, make_scaffold},
      {"dp_fixed(fedavg)", Kind::dp_fixed, Inner::fedavg, [] { return make_dp_fixed(make_fedavg()); }},
      {"dp_adaptive(fedavgm)", Kind::dp_adaptive, Inner::fedavgm, [] { return make_dp_adaptive(make_fedavgm()); }},
      {"dp_fixed(fedadam)", Kind::dp_fixed, Inner::fedopt, [] { return make_dp_fixed(make_fedadam()); }},
  };
}

const fl::detail::DpWrapperBase<double>* as_dp(const Strat& s) {
  return dynamic_cast<const fl::detail::DpWrapperBase<double>*>(&s);
}
const fl::DpAdaptiveClipping<double>* as_adaptive(const Strat& s) {
  return dynamic_cast<const fl::DpAdaptiveClipping<double>*>(&s);
}
const fl::Scaffold<double>* as_scaffold(const Strat& s) { return dynamic_cast<const fl::Scaffold<double>*>(&s); }
const fl::FedOpt<double>* as_fedopt(const Strat& s) { return dynamic_cast<const fl::FedOpt<double>*>(&s); }
const fl::FedAvgM<double>* as_fedavgm(const Strat& s) { return dynamic_cast<const fl::FedAvgM<double>*>(&s); }

// ------------------------------------------------------------ state layout
// DP wrapper: 4 x u64 rng words | f64 spare | u8 flag | f64 q | u32 orders |
// f64 rdp x orders | u64 steps | (adaptive: f64 clip) | inner state.

constexpr std::size_t kSpare = 32, kFlag = 40, kQ = 41, kOrders = 49, kRdp = 53;

std::size_t num_orders() { return fl::RdpAccountant::default_orders().size(); }
std::size_t steps_offset() { return kRdp + 8 * num_orders(); }
std::size_t clip_offset() { return steps_offset() + 8; }

std::size_t header_size(Kind k) {
  switch (k) {
    case Kind::plain: return 0;
    case Kind::dp_fixed: return steps_offset() + 8;
    case Kind::dp_adaptive: return steps_offset() + 16;
  }
  return 0;
}

std::size_t inner_size(Inner in, Index d, bool after_a_round) {
  const std::size_t vd = static_cast<std::size_t>(d) * sizeof(double);
  switch (in) {
    case Inner::fedavg: return 0;
    case Inner::fedavgm:
    case Inner::scaffold: return after_a_round ? vd : 0;
    case Inner::fedopt: return 8 + (after_a_round ? 2 * vd : 0);
  }
  return 0;
}

std::size_t state_size(const Case& c, Index d, bool after_a_round) {
  return header_size(c.kind) + inner_size(c.inner, d, after_a_round);
}

/// Prefix lengths of a full state (after a round) that are themselves valid
/// states: the empty momentum / control variate.
std::vector<std::size_t> valid_cuts(const Case& c) {
  if (c.inner == Inner::fedavgm || c.inner == Inner::scaffold) return {header_size(c.kind)};
  return {};
}

/// Set-state clears a spare that is not pending, so the spare field of a
/// reloaded generator reads 0 where the original may hold a consumed value.
Bytes canonical(const Case& c, Bytes b) {
  if (c.kind != Kind::plain && b.size() > kFlag && b[kFlag] == 0) put_f64(b, kSpare, 0.0);
  return b;
}

/// Everything observable beyond the state bytes must match too.
void check_same_observables(const Strat& a, const Strat& b) {
  if (const auto* da = as_dp(a)) {
    const auto* db = as_dp(b);
    REQUIRE(db != nullptr);
    CHECK(da->accountant().steps() == db->accountant().steps());
    REQUIRE(da->accountant().rdp().size() == db->accountant().rdp().size());
    bool rdp_same = true;
    for (std::size_t i = 0; i < da->accountant().rdp().size(); ++i)
      rdp_same = rdp_same && same_bits(da->accountant().rdp()[i], db->accountant().rdp()[i]);
    CHECK(rdp_same);
    CHECK(same_bits(da->last_round().noise_stddev, db->last_round().noise_stddev));
    CHECK(same_bits(da->last_round().sampling_rate, db->last_round().sampling_rate));
  }
  if (const auto* aa = as_adaptive(a)) {
    const auto* ab = as_adaptive(b);
    REQUIRE(ab != nullptr);
    CHECK(same_bits(aa->clipping_norm(), ab->clipping_norm()));
  }
  const Strat* ia = &a;
  const Strat* ib = &b;
  if (const auto* da = as_dp(a)) {
    ia = &da->inner();
    ib = &as_dp(b)->inner();
  }
  if (const auto* oa = as_fedopt(*ia)) {
    const auto* ob = as_fedopt(*ib);
    REQUIRE(ob != nullptr);
    CHECK(oa->steps() == ob->steps());
    CHECK(bit_equal(oa->first_moment(), ob->first_moment()));
    CHECK(bit_equal(oa->second_moment(), ob->second_moment()));
  }
  if (const auto* ma = as_fedavgm(*ia)) {
    const auto* mb = as_fedavgm(*ib);
    REQUIRE(mb != nullptr);
    CHECK(bit_equal(ma->momentum(), mb->momentum()));
  }
  if (const auto* sa = as_scaffold(a)) {
    const auto* sb = as_scaffold(b);
    REQUIRE(sb != nullptr);
    CHECK(bit_equal(sa->control(), sb->control()));
  }
}

/// A strategy of case `c` after round 1, and its global model.
std::pair<StratPtr, Vector<double>> after_round_one(const Case& c, Index d) {
  StratPtr s = c.make();
  Vector<double> g = initial_global(d);
  run_round(*s, g, 1);
  return {std::move(s), std::move(g)};
}

/// Loading `bytes` for a model of `dim` parameters into a strategy of case
/// `c` that has run round 1 (on a d-parameter model) fails, and the strategy
/// is unchanged: its state bytes are the same, and its round 2 matches that
/// of a twin that never saw the bad bytes, bit for bit.
void expect_refused(const Case& c, const Bytes& bytes, Index dim, Index d) {
  auto [target, gt] = after_round_one(c, d);
  auto [twin, gw] = after_round_one(c, d);
  REQUIRE(bit_equal(gt, gw));
  const Bytes before = save(*target);
  const auto r = load(*target, bytes, dim);
  INFO("load_state: " << msg(r));
  CHECK_FALSE(r.ok());
  if (!r.ok()) {
    CHECK(r.error().code == Errc::corrupt);
    CHECK_FALSE(r.error().message.empty());
  }
  const bool unchanged = save(*target) == before;
  CHECK(unchanged);
  if (!unchanged) return;  // (a zeroed noise stream would never finish a round)
  run_round(*target, gt, 2);
  run_round(*twin, gw, 2);
  CHECK(bit_equal(gt, gw));
  CHECK(save(*target) == save(*twin));
  check_same_observables(*target, *twin);
}

struct Corruption {
  std::string what;
  Bytes bytes;
};

/// Every single-field corruption of `good` (a state after 2 rounds) that the
/// layout of case `c` allows.
std::vector<Corruption> corruptions(const Case& c, const Bytes& good, Index d) {
  std::vector<Corruption> out;
  const auto with = [&](std::string what, const std::function<void(Bytes&)>& edit) {
    Bytes b = good;
    edit(b);
    out.push_back({std::move(what), std::move(b)});
  };
  with("one trailing byte", [](Bytes& b) { b.push_back(0); });
  with("eight trailing zero bytes", [](Bytes& b) { b.insert(b.end(), 8, std::uint8_t{0}); });

  const std::size_t in = header_size(c.kind);
  const std::size_t vd = static_cast<std::size_t>(d) * sizeof(double);
  switch (c.inner) {
    case Inner::fedavg: break;
    case Inner::fedavgm:
    case Inner::scaffold:
      with("NaN in the first value", [&](Bytes& b) { put_f64(b, in, kNan); });
      with("NaN in a middle value", [&](Bytes& b) { put_f64(b, in + vd / 2, kNan); });
      with("+inf in the last value", [&](Bytes& b) { put_f64(b, in + vd - 8, kInf); });
      with("-inf in the first value", [&](Bytes& b) { put_f64(b, in, -kInf); });
      with("one value missing", [&](Bytes& b) { b.resize(b.size() - 8); });
      break;
    case Inner::fedopt: {
      const std::size_t m0 = in + 8, v0 = in + 8 + vd;
      with("NaN in the first moment", [&](Bytes& b) { put_f64(b, m0, kNan); });
      with("+inf in the first moment", [&](Bytes& b) { put_f64(b, m0 + vd - 8, kInf); });
      with("NaN in the second moment", [&](Bytes& b) { put_f64(b, v0 + 8, kNan); });
      with("+inf in the second moment", [&](Bytes& b) { put_f64(b, v0 + vd - 8, kInf); });
      with("a negative second moment", [&](Bytes& b) { put_f64(b, v0, -1e-6); });
      with("a second moment of -inf", [&](Bytes& b) { put_f64(b, v0 + vd / 2, -kInf); });
      with("step count with no moments", [&](Bytes& b) { b.resize(in + 8); });
      with("moments with step count 0", [&](Bytes& b) { put_u64(b, in, 0); });
      with("step count 2^40 + 1", [&](Bytes& b) { put_u64(b, in, (std::uint64_t{1} << 40) + 1); });
      with("step count -1", [&](Bytes& b) { put_u64(b, in, ~std::uint64_t{0}); });
      with("only the first moment", [&](Bytes& b) { b.resize(in + 8 + vd); });
      break;
    }
  }

  if (c.kind == Kind::plain) return out;
  const std::size_t n = num_orders();
  with("all-zero rng words", [](Bytes& b) { std::fill(b.begin(), b.begin() + 32, std::uint8_t{0}); });
  with("NaN spare, pending", [](Bytes& b) {
    put_f64(b, kSpare, kNan);
    b[kFlag] = 1;
  });
  with("+inf spare, pending", [](Bytes& b) {
    put_f64(b, kSpare, kInf);
    b[kFlag] = 1;
  });
  with("NaN spare, not pending", [](Bytes& b) {
    put_f64(b, kSpare, kNan);
    b[kFlag] = 0;
  });
  with("spare flag 2", [](Bytes& b) { b[kFlag] = 2; });
  with("spare flag 255", [](Bytes& b) { b[kFlag] = 255; });
  with("sampling rate 1.5", [](Bytes& b) { put_f64(b, kQ, 1.5); });
  with("sampling rate -0.25", [](Bytes& b) { put_f64(b, kQ, -0.25); });
  with("sampling rate NaN", [](Bytes& b) { put_f64(b, kQ, kNan); });
  with("sampling rate +inf", [](Bytes& b) { put_f64(b, kQ, kInf); });
  with("order count - 1", [n](Bytes& b) { put_u32(b, kOrders, static_cast<std::uint32_t>(n - 1)); });
  with("order count + 1", [n](Bytes& b) { put_u32(b, kOrders, static_cast<std::uint32_t>(n + 1)); });
  with("order count 0", [](Bytes& b) { put_u32(b, kOrders, 0); });
  with("order count 2^32 - 1", [](Bytes& b) { put_u32(b, kOrders, 0xFFFFFFFFu); });
  with("NaN RDP at the first order", [](Bytes& b) { put_f64(b, kRdp, kNan); });
  with("negative RDP at a middle order", [n](Bytes& b) { put_f64(b, kRdp + 8 * (n / 2), -1.0); });
  with("tiny negative RDP", [](Bytes& b) { put_f64(b, kRdp + 8 * 3, -1e-300); });
  with("-inf RDP at the last order", [n](Bytes& b) { put_f64(b, kRdp + 8 * (n - 1), -kInf); });
  with("accountant steps 2^40 + 1", [](Bytes& b) { put_u64(b, steps_offset(), (std::uint64_t{1} << 40) + 1); });
  with("accountant steps -1", [](Bytes& b) { put_u64(b, steps_offset(), ~std::uint64_t{0}); });
  if (c.kind == Kind::dp_adaptive) {
    with("clipping norm 0", [](Bytes& b) { put_f64(b, clip_offset(), 0.0); });
    with("clipping norm -0", [](Bytes& b) { put_f64(b, clip_offset(), -0.0); });
    with("clipping norm -1", [](Bytes& b) { put_f64(b, clip_offset(), -1.0); });
    with("clipping norm +inf", [](Bytes& b) { put_f64(b, clip_offset(), kInf); });
    with("clipping norm NaN", [](Bytes& b) { put_f64(b, clip_offset(), kNan); });
  }
  return out;
}

}  // namespace

// ===================================================================== Rng

TEST_CASE("rng state: set_state continues the same stream, also mid Box-Muller", "[fl][state]") {
  Rng a(2024);
  (void)a.normal();  // leaves the Box-Muller spare pending
  const RngState st = a.state();
  REQUIRE(st.has_spare);

  Rng b(1);  // another stream until set_state
  Rng unrestored(1);
  REQUIRE(b.set_state(st));
  const RngState sb = b.state();
  CHECK(std::equal(std::begin(sb.s), std::end(sb.s), std::begin(st.s)));
  CHECK(sb.has_spare);
  CHECK(same_bits(sb.spare, st.spare));

  // the spare comes first, then fresh pairs
  bool all_same = true, differs_from_unrestored = false;
  for (int i = 0; i < 100; ++i) {
    const double x = a.normal(), y = b.normal();
    if (i == 0) CHECK(same_bits(y, st.spare));
    all_same = all_same && same_bits(x, y);
    differs_from_unrestored = differs_from_unrestored || !same_bits(y, unrestored.normal());
  }
  CHECK(all_same);
  CHECK(differs_from_unrestored);
  bool u64_same = true;
  for (int i = 0; i < 100; ++i) u64_same = u64_same && a.next_u64() == b.next_u64();
  CHECK(u64_same);

  // an odd number of normals again: the copy is taken with a spare pending
  (void)a.normal();
  (void)b.normal();
  Rng c(3);
  REQUIRE(c.set_state(a.state()));
  bool mixed_same = true;
  for (int i = 0; i < 100; ++i) {
    mixed_same = mixed_same && same_bits(a.normal(), c.normal());
    mixed_same = mixed_same && a.next_u64() == c.next_u64();
    mixed_same = mixed_same && same_bits(a.uniform(), c.uniform());
  }
  CHECK(mixed_same);

  // no spare pending: after two normals the pair is used up
  Rng e(77);
  (void)e.normal();
  (void)e.normal();
  const RngState se = e.state();
  CHECK_FALSE(se.has_spare);
  Rng f(78);
  REQUIRE(f.set_state(se));
  CHECK_FALSE(f.state().has_spare);
  bool none_pending_same = true;
  for (int i = 0; i < 100; ++i) none_pending_same = none_pending_same && same_bits(e.normal(), f.normal());
  for (int i = 0; i < 100; ++i) none_pending_same = none_pending_same && e.next_u64() == f.next_u64();
  CHECK(none_pending_same);
}

TEST_CASE("rng state: all-zero words and a non-finite spare are refused, the generator unchanged", "[fl][state]") {
  Rng g(9);
  (void)g.normal();  // a spare pending: it must survive the refused calls
  const Rng copy = g;

  RngState zero;  // xoshiro's fixed point
  CHECK_FALSE(g.set_state(zero));
  zero.has_spare = true;
  zero.spare = 0.25;
  CHECK_FALSE(g.set_state(zero));

  RngState bad = Rng(3).state();
  bad.has_spare = true;
  bad.spare = kNan;
  CHECK_FALSE(g.set_state(bad));
  bad.spare = kInf;
  CHECK_FALSE(g.set_state(bad));
  bad.spare = -kInf;
  CHECK_FALSE(g.set_state(bad));
  bad.has_spare = false;
  bad.spare = kNan;  // documented: a non-finite spare is refused even when not pending
  CHECK_FALSE(g.set_state(bad));

  const RngState sg = g.state(), sc = copy.state();
  REQUIRE(std::equal(std::begin(sg.s), std::end(sg.s), std::begin(sc.s)));
  CHECK(sg.has_spare == sc.has_spare);
  CHECK(same_bits(sg.spare, sc.spare));
  Rng c = copy;
  bool same = true;
  for (int i = 0; i < 50; ++i) same = same && same_bits(g.normal(), c.normal());
  for (int i = 0; i < 50; ++i) same = same && g.next_u64() == c.next_u64();
  CHECK(same);

  // a single non-zero word is a valid state
  RngState one;
  one.s[2] = 1;
  CHECK(g.set_state(one));
  CHECK(g.state().s[2] == 1);
  CHECK(g.state().s[0] == 0);
}

// ============================================================ round trips

TEST_CASE("strategy state: a restored strategy continues bit for bit", "[fl][state]") {
  bool saw_pending_spare = false, saw_consumed_spare = false;
  for (const Case& c : all_cases())
    for (const Index d : {Index{50}, Index{51}})
      for (const long k : {1L, 2L}) {
        INFO(c.name << ", d = " << d << ", state saved after round " << k);
        StratPtr a = c.make();
        Vector<double> g = initial_global(d);
        for (long r = 1; r <= k; ++r) run_round(*a, g, r);
        const Bytes st = save(*a);
        REQUIRE(st.size() == state_size(c, d, true));
        if (c.kind != Kind::plain) {
          REQUIRE(st[kFlag] <= 1);
          (st[kFlag] == 1 ? saw_pending_spare : saw_consumed_spare) = true;
          CHECK(same_bits(get_f64(st, kQ), kFraction));
          CHECK(as_dp(*a)->accountant().steps() == k);
        }

        StratPtr b = c.make();  // same options, same noise seed
        const auto loaded = load(*b, st, d);
        INFO("load_state: " << msg(loaded));
        REQUIRE(loaded.ok());
        CHECK(canonical(c, save(*b)) == canonical(c, st));
        StratPtr fresh = c.make();  // the same, without load_state

        Vector<double> ga = g, gb = g, gf = g;
        run_round(*a, ga, k + 1);
        run_round(*b, gb, k + 1);
        run_round(*fresh, gf, k + 1);
        CHECK(bit_equal(ga, gb));
        CHECK(save(*a) == save(*b));
        check_same_observables(*a, *b);
        if (const auto* da = as_dp(*a)) CHECK(da->accountant().steps() == k + 1);

        // without the state, round k+1 differs
        if (c.kind == Kind::plain && c.inner == Inner::scaffold) {
          // eta_g = 1: x is the average whatever c is; c itself differs
          CHECK(bit_equal(ga, gf));
          CHECK_FALSE(bit_equal(as_scaffold(*a)->control(), as_scaffold(*fresh)->control()));
        } else {
          CHECK_FALSE(bit_equal(ga, gf));
        }
        CHECK_FALSE(save(*a) == save(*fresh));
        if (const auto* af = as_adaptive(*fresh)) CHECK_FALSE(same_bits(af->clipping_norm(), as_adaptive(*a)->clipping_norm()));

        // and they stay together
        run_round(*a, ga, k + 2);
        run_round(*b, gb, k + 2);
        CHECK(bit_equal(ga, gb));
        CHECK(save(*a) == save(*b));
        check_same_observables(*a, *b);
      }
  // the noise stream was saved both with and without a Box-Muller spare pending
  CHECK(saw_pending_spare);
  CHECK(saw_consumed_spare);
}

TEST_CASE("strategy state: a DP wrapper restores the sampling rate of the last configure()", "[fl][state]") {
  const Index d = 50;
  for (const Case& c : all_cases()) {
    if (c.kind == Kind::plain) continue;
    INFO(c.name);
    StratPtr a = c.make();
    Vector<double> g = initial_global(d);
    run_round(*a, g, 1);
    run_round(*a, g, 2);
    const Bytes st = save(*a);
    Bytes q_one = st;
    put_f64(q_one, kQ, 1.0);  // a valid state, with another sampling rate

    StratPtr b = c.make(), other_q = c.make(), fresh = c.make();
    REQUIRE(load(*b, st, d).ok());
    REQUIRE(load(*other_q, q_one, d).ok());
    CHECK_FALSE(load(*fresh, Bytes(), d).ok());  // a DP wrapper's state is never empty

    // round 3 without configure(): q comes from the state
    Vector<double> ga = g, gb = g, go = g;
    run_round(*a, ga, 3, false);
    run_round(*b, gb, 3, false);
    run_round(*other_q, go, 3, false);
    CHECK(bit_equal(ga, gb));
    check_same_observables(*a, *b);
    CHECK(as_dp(*b)->last_round().sampling_rate == Approx(kFraction));
    // the sampling rate only enters the accounting: same model, other epsilon
    CHECK(bit_equal(ga, go));
    CHECK(as_dp(*other_q)->last_round().sampling_rate == 1.0);
    CHECK(as_dp(*other_q)->accountant().rdp().back() > as_dp(*a)->accountant().rdp().back());
    const auto eps_a = as_dp(*a)->accountant().epsilon(1e-5);
    const auto eps_o = as_dp(*other_q)->accountant().epsilon(1e-5);
    REQUIRE(eps_a.ok());
    REQUIRE(eps_o.ok());
    CHECK(eps_o->epsilon > eps_a->epsilon);
  }
}

TEST_CASE("strategy state: saved before the first round, and stateless FedAvg", "[fl][state]") {
  const Index d = 50;
  for (const Case& c : all_cases()) {
    INFO(c.name);
    StratPtr a = c.make();
    const Bytes st = save(*a);
    REQUIRE(st.size() == state_size(c, d, false));
    if (c.kind == Kind::plain && c.inner != Inner::fedopt) CHECK(st.empty());
    if (c.kind == Kind::plain && c.inner == Inner::fedopt) CHECK(st == Bytes(8, 0));  // step count 0, no moments

    // into a strategy that has state from two rounds: it starts over
    StratPtr b = c.make();
    Vector<double> gb = initial_global(d);
    run_round(*b, gb, 1);
    run_round(*b, gb, 2);
    REQUIRE_FALSE(save(*b) == st);
    const auto loaded = load(*b, st, d);
    INFO("load_state: " << msg(loaded));
    REQUIRE(loaded.ok());
    CHECK(save(*b) == st);
    if (const auto* db = as_dp(*b)) CHECK(db->accountant().steps() == 0);

    Vector<double> ga = initial_global(d);
    gb = ga;
    for (long r = 1; r <= 2; ++r) {
      run_round(*a, ga, r);
      run_round(*b, gb, r);
      CHECK(bit_equal(ga, gb));
      CHECK(save(*a) == save(*b));
      check_same_observables(*a, *b);
    }
  }

  fl::FedAvg<double> f(fedavg_options());
  CHECK(save(f).empty());
  Vector<double> g = initial_global(d);
  run_round(f, g, 1);
  run_round(f, g, 2);
  CHECK(save(f).empty());
  CHECK(load(f, Bytes(), d).ok());
  const auto one = load(f, Bytes{0}, d);
  REQUIRE_FALSE(one.ok());
  CHECK(one.error().code == Errc::corrupt);
  CHECK(one.error().message.find("fedavg") != std::string::npos);
  CHECK(one.error().message.find("1 bytes") != std::string::npos);
  // a FedAvgM momentum buffer is not a FedAvg state
  StratPtr m = make_fedavgm();
  Vector<double> gm = initial_global(d);
  run_round(*m, gm, 1);
  const Bytes momentum = save(*m);
  REQUIRE(momentum.size() == static_cast<std::size_t>(d) * sizeof(double));
  CHECK_FALSE(load(f, momentum, d).ok());
  // FedAvg still averages as before
  fl::FedAvg<double> untouched(fedavg_options());
  Vector<double> g1 = initial_global(d), g2 = g1;
  run_round(f, g1, 3);
  run_round(untouched, g2, 3);
  CHECK(bit_equal(g1, g2));
}

// ============================================================ bad bytes

TEST_CASE("strategy state: malformed bytes are refused and leave the strategy unchanged", "[fl][state]") {
  const Index d = 50;
  for (const Case& c : all_cases()) {
    INFO(c.name);
    StratPtr src = c.make();
    Vector<double> g = initial_global(d);
    run_round(*src, g, 1);
    run_round(*src, g, 2);
    const Bytes good = save(*src);
    REQUIRE(good.size() == state_size(c, d, true));
    {
      StratPtr probe = c.make();
      const auto r = load(*probe, good, d);
      INFO("the good state: " << msg(r));
      REQUIRE(r.ok());
    }

    for (const Corruption& bad : corruptions(c, good, d)) {
      INFO("corruption: " << bad.what);
      expect_refused(c, bad.bytes, d, d);
    }

    // every truncation that is not itself a valid state
    const auto valid = valid_cuts(c);
    for (const std::size_t n : valid) {
      StratPtr probe = c.make();
      INFO("valid prefix of " << n << " bytes");
      CHECK(load(*probe, Bytes(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n)), d).ok());
    }
    auto [target, gt] = after_round_one(c, d);
    auto [twin, gw] = after_round_one(c, d);
    const Bytes before = save(*target);
    std::size_t refused = 0, tried = 0;
    bool unchanged = true;
    for (std::size_t n = 0; n < good.size(); ++n) {
      if (std::find(valid.begin(), valid.end(), n) != valid.end()) continue;
      ++tried;
      const auto r = load(*target, Bytes(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n)), d);
      if (!r.ok()) ++refused;
      INFO("cut to " << n << " of " << good.size() << " bytes: " << msg(r));
      CHECK_FALSE(r.ok());
      const bool same = save(*target) == before;
      CHECK(same);
      unchanged = unchanged && same;
    }
    CHECK(refused == tried);
    CHECK(tried == good.size() - valid.size());
    REQUIRE(unchanged);
    run_round(*target, gt, 2);
    run_round(*twin, gw, 2);
    CHECK(bit_equal(gt, gw));
    CHECK(save(*target) == save(*twin));
    check_same_observables(*target, *twin);
  }
}

TEST_CASE("strategy state: values at the edge of the valid range are accepted", "[fl][state]") {
  // the other side of the table above: these are states, not corruptions
  const Index d = 50;
  for (const Case& c : all_cases()) {
    if (c.kind == Kind::plain) continue;
    INFO(c.name);
    StratPtr src = c.make();
    Vector<double> g = initial_global(d);
    run_round(*src, g, 1);
    run_round(*src, g, 2);
    const Bytes good = save(*src);
    const auto accepted = [&](const char* what, const std::function<void(Bytes&)>& edit) {
      Bytes b = good;
      edit(b);
      StratPtr s = c.make();
      const auto r = load(*s, b, d);
      INFO(what << ": " << msg(r));
      CHECK(r.ok());
    };
    accepted("+inf RDP (a legal total)", [](Bytes& b) { put_f64(b, kRdp, kInf); });
    accepted("sampling rate 0", [](Bytes& b) { put_f64(b, kQ, 0.0); });
    accepted("sampling rate 1", [](Bytes& b) { put_f64(b, kQ, 1.0); });
    accepted("a single non-zero rng word", [](Bytes& b) {
      std::fill(b.begin(), b.begin() + 32, std::uint8_t{0});
      b[31] = 1;
    });
    if (c.kind == Kind::dp_adaptive) accepted("a tiny clipping norm", [](Bytes& b) { put_f64(b, clip_offset(), 1e-300); });
  }
}

TEST_CASE("strategy state: a state saved for another model size is refused", "[fl][state]") {
  const Index d = 50;
  for (const Case& c : all_cases()) {
    if (c.inner == Inner::fedavg) continue;  // nothing of the model's size to check
    INFO(c.name);
    StratPtr src = c.make();
    Vector<double> g = initial_global(d);
    run_round(*src, g, 1);
    run_round(*src, g, 2);
    const Bytes good = save(*src);
    for (const Index dim : {d - 1, d + 1, 2 * d, d / 2, Index{0}, Index{-1}}) {
      INFO("loaded for dim " << dim << ", saved for " << d);
      expect_refused(c, good, dim, d);
    }
    // the same bytes for the right size load (so the refusals are about the size)
    StratPtr probe = c.make();
    CHECK(load(*probe, good, d).ok());
  }
}

// ------------------------------------------------------------ FedBuff, Oort

namespace {

fl::ClientUpdate<double> buff_delta(Index client, long base, Index d, std::uint64_t seed) {
  Rng rng(seed);
  fl::ClientUpdate<double> u;
  u.client = client;
  u.base_round = base;
  u.num_examples = 10;
  u.params.resize(d);
  for (Index i = 0; i < d; ++i) u.params[i] = rng.normal(0.0, 0.1);
  return u;
}

Bytes buff_bytes(const fl::FedBuff<double>& b) {
  ByteWriter w;
  b.save_state(w);
  return w.bytes();
}

}  // namespace

TEST_CASE("fedbuff state: a restored buffer steps bit for bit; bad bytes change nothing", "[fl][state]") {
  const Index d = 20;
  fl::FedBuffOptions o;
  o.buffer_size = 3;
  o.max_staleness = 1;
  fl::FedBuff<double> a(o);
  Vector<double> ga = Vector<double>::Zero(d);
  // version 0 -> 1 (3 updates), then 2 more buffered at version 1, one stale dropped
  std::uint64_t seed = 1;
  for (Index c = 0; c < 3; ++c) REQUIRE(a.submit_delta(VectorMap<double>(ga.data(), d), buff_delta(c, 0, d, seed++)).ok());
  REQUIRE(a.version() == 1);
  REQUIRE(a.submit_delta(VectorMap<double>(ga.data(), d), buff_delta(0, 1, d, seed++)).ok());
  REQUIRE(a.submit_delta(VectorMap<double>(ga.data(), d), buff_delta(1, 0, d, seed++)).ok());  // staleness 1: kept
  REQUIRE(a.buffered() == 2);

  const Bytes saved = buff_bytes(a);
  CHECK(saved.size() == 32 + static_cast<std::size_t>(d) * 8);
  fl::FedBuff<double> b(o);
  ByteReader r(saved.data(), saved.size());
  REQUIRE(b.load_state(r, d).ok());
  CHECK(buff_bytes(b) == saved);
  CHECK((b.version() == 1 && b.buffered() == 2 && b.accepted() == a.accepted() && b.dropped() == a.dropped()));
  Vector<double> gb = ga;
  const auto last = buff_delta(2, 1, d, 99);
  auto sa = a.submit_delta(VectorMap<double>(ga.data(), d), last);
  auto sb = b.submit_delta(VectorMap<double>(gb.data(), d), last);
  REQUIRE((sa.ok() && sb.ok() && *sa && *sb));
  CHECK(bit_equal(ga, gb));
  CHECK(a.version() == 2);
  // without the state the buffer is empty and the same update does not step
  fl::FedBuff<double> fresh(o);
  Vector<double> gf = gb;
  auto sf = fresh.submit_delta(VectorMap<double>(gf.data(), d), buff_delta(2, 0, d, 99));
  REQUIRE(sf.ok());
  CHECK_FALSE(*sf);

  // bad bytes: refused, b unchanged
  const Bytes before = buff_bytes(b);
  auto put_u64 = [](Bytes x, std::size_t at, std::uint64_t v) {
    for (int i = 0; i < 8; ++i) x[at + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(v >> (8 * i));
    return x;
  };
  std::vector<std::pair<std::string, Bytes>> bad;
  for (std::size_t n = 0; n < saved.size(); ++n)
    bad.emplace_back("cut to " + std::to_string(n), Bytes(saved.begin(), saved.begin() + static_cast<std::ptrdiff_t>(n)));
  {
    Bytes x = saved;
    x.push_back(0);
    bad.emplace_back("trailing byte", x);
  }
  bad.emplace_back("buffered = buffer_size", put_u64(saved, 24, 3));
  bad.emplace_back("buffered > accepted", put_u64(put_u64(saved, 16, 1), 24, 2));
  bad.emplace_back("version 2^41", put_u64(saved, 0, std::uint64_t{1} << 41));
  {
    Bytes x = saved;
    std::memcpy(x.data() + 32 + 8 * 5, &kNan, 8);
    bad.emplace_back("NaN in the buffer", x);
  }
  {
    Bytes x = put_u64(saved, 24, 0);  // an empty buffer with the vector still there: trailing bytes
    bad.emplace_back("vector without a count", x);
  }
  for (const auto& [what, bytes] : bad) {
    INFO(what);
    ByteReader br(bytes.data(), bytes.size());
    auto ok = b.load_state(br, d);
    CHECK_FALSE(ok.ok());
    if (!ok.ok()) CHECK(ok.error().code == Errc::corrupt);
    CHECK(buff_bytes(b) == before);
  }
  // a state for another model size
  ByteReader other(saved.data(), saved.size());
  CHECK_FALSE(b.load_state(other, d + 1).ok());
  CHECK(buff_bytes(b) == before);
}

TEST_CASE("oort state: a restored selector chooses the same clients; bad bytes change nothing", "[fl][state]") {
  fl::OortSelector a;
  Rng rng(7);
  std::vector<Index> all(12);
  std::iota(all.begin(), all.end(), Index{0});
  for (int round = 0; round < 3; ++round) {
    auto sel = a.select(all, 4, rng);
    REQUIRE(sel.ok());
    for (const Index c : sel->clients)
      REQUIRE(a.report(c, 50 + c, 0.1 * static_cast<double>(c + 1), 1.0 + 0.5 * static_cast<double>(c % 3)).ok());
  }
  ByteWriter w;
  a.save_state(w);
  const Bytes saved = w.bytes();
  REQUIRE(saved.size() == 16 + 24 * static_cast<std::size_t>(a.num_explored()));
  fl::OortSelector b;
  ByteReader r(saved.data(), saved.size());
  REQUIRE(b.load_state(r, 12).ok());
  CHECK(r.at_end());
  CHECK(same_bits(a.epsilon(), b.epsilon()));
  for (Index c = 0; c < 12; ++c) CHECK(same_bits(a.utility(c), b.utility(c)));
  Rng ra(11), rb(11);
  auto sa = a.select(all, 4, ra);
  auto sb = b.select(all, 4, rb);
  REQUIRE((sa.ok() && sb.ok()));
  CHECK(sa->clients == sb->clients);
  CHECK(sa->exploited == sb->exploited);
  // a fresh selector knows nobody: it only explores
  fl::OortSelector fresh;
  Rng rf(11);
  auto sf = fresh.select(all, 4, rf);
  REQUIRE(sf.ok());
  CHECK(sf->exploited.empty());
  CHECK_FALSE(sa->exploited.empty());

  auto state_of = [](const fl::OortSelector& o) {
    ByteWriter x;
    o.save_state(x);
    return x.bytes();
  };
  const Bytes before = state_of(b);
  auto put = [](Bytes x, std::size_t at, const void* v, std::size_t n) {
    std::memcpy(x.data() + at, v, n);
    return x;
  };
  const double eps_big = 1.5, neg = -1.0, zero = 0.0;
  const std::uint64_t id_big = 12, too_many = 13;
  std::vector<std::pair<std::string, Bytes>> bad{
      {"empty", {}},
      {"truncated entry", Bytes(saved.begin(), saved.end() - 1)},
      {"epsilon 1.5", put(saved, 0, &eps_big, 8)},
      {"epsilon NaN", put(saved, 0, &kNan, 8)},
      {"13 clients of 12", put(saved, 8, &too_many, 8)},
      {"client id 12", put(saved, 16, &id_big, 8)},
      {"negative utility", put(saved, 24, &neg, 8)},
      {"zero duration", put(saved, 32, &zero, 8)},
      {"infinite duration", put(saved, 32, &kInf, 8)},
  };
  if (a.num_explored() >= 2) {  // ids out of order: the second entry repeats the first's id
    std::uint64_t first = 0;
    std::memcpy(&first, saved.data() + 16, 8);
    bad.emplace_back("ids out of order", put(saved, 40, &first, 8));
  }
  for (const auto& [what, bytes] : bad) {
    INFO(what);
    ByteReader br(bytes.data(), bytes.size());
    CHECK_FALSE(b.load_state(br, 12).ok());
    CHECK(state_of(b) == before);
  }
}
