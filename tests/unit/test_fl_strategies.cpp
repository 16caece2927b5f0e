// tests/unit/test_fl_strategies.cpp — the fl/ strategies against results worked
// out by hand on small vectors: FedAvg, FedAvgM, FedProx (helpers), FedAdam /
// FedYogi / FedAdagrad (one and two rounds, Adam bias-correction variants),
// SCAFFOLD (server update, client variate, gradient correction), FedNova (with
// and without momentum; a_i checked against nn::Sgd), q-FedAvg (q = 0, 1, 2),
// FedBuff (staleness weights, flush at K, stale drops) and HeteroFL (index
// sets, sub-model construction, gather/scatter, holder-weighted averaging).
// Also: bad input (empty round, wrong dimension, NaN, zero examples) leaves
// the global model and the strategy state unchanged, and configure() is
// deterministic for a seed and respects fraction / minimum clients.
//
// The common round (unless a case says otherwise): global x = [1, 2, -1] and
//   A: y = [2, 2, 0],  n = 1
//   B: y = [0, 4, -2], n = 2
//   C: y = [1, 0, 1],  n = 1
// so the example-weighted average is ([2,2,0] + 2[0,4,-2] + [1,0,1]) / 4
// = [3, 10, -3] / 4 = [0.75, 2.5, -0.75].
#include "fleetdl/fl/client.hpp"
#include "fleetdl/fl/fedavg.hpp"
#include "fleetdl/fl/fedbuff.hpp"
#include "fleetdl/fl/fednova.hpp"
#include "fleetdl/fl/fedopt.hpp"
#include "fleetdl/fl/fedprox.hpp"
#include "fleetdl/fl/heterofl.hpp"
#include "fleetdl/fl/qfedavg.hpp"
#include "fleetdl/fl/scaffold.hpp"
#include "fleetdl/nn/optim.hpp"
#include "fleetdl/nn/train.hpp"
#include "fleetdl/nn/zoo.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using fleetdl::ConstVectorMap;
using fleetdl::Errc;
using fleetdl::Index;
using fleetdl::Rng;
using fleetdl::Shape;
using fleetdl::Vector;
using fleetdl::VectorMap;
namespace fl = fleetdl::fl;
namespace nn = fleetdl::nn;

constexpr double kTol = 1e-12;

template <class S = double>
Vector<S> vec(std::initializer_list<double> v) {
  Vector<S> r(static_cast<Index>(v.size()));
  Index i = 0;
  for (double x : v) r[i++] = static_cast<S>(x);
  return r;
}
template <class S>
VectorMap<S> map(Vector<S>& v) {
  return VectorMap<S>(v.data(), v.size());
}
template <class S>
ConstVectorMap<S> cmap(const Vector<S>& v) {
  return ConstVectorMap<S>(v.data(), v.size());
}

template <class S = double>
fl::ClientUpdate<S> upd(Index client, std::initializer_list<double> params, Index n) {
  fl::ClientUpdate<S> u;
  u.client = client;
  u.params = vec<S>(params);
  u.num_examples = n;
  return u;
}

/// The common round A, B, C (file comment), with the fields every strategy
/// may read filled in: local_steps 1, loss_before 1, a zero control delta.
template <class S = double>
std::vector<fl::ClientUpdate<S>> abc() {
  std::vector<fl::ClientUpdate<S>> u{upd<S>(0, {2, 2, 0}, 1), upd<S>(1, {0, 4, -2}, 2), upd<S>(2, {1, 0, 1}, 1)};
  for (auto& x : u) {
    x.local_steps = 1;
    x.loss_before = 1.0;
    x.control_delta = Vector<S>::Zero(3);
  }
  return u;
}

template <class S>
void check_vec(const Vector<S>& got, std::initializer_list<double> want, double tol = kTol) {
  REQUIRE(got.size() == static_cast<Index>(want.size()));
  Index i = 0;
  for (double w : want) {
    INFO("coordinate " << i << ": got " << static_cast<double>(got[i]) << ", want " << w);
    CHECK(static_cast<double>(got[i]) == Approx(w).margin(tol));
    ++i;
  }
}

template <class S>
Vector<S> agg(fl::Strategy<S>& s, const Vector<S>& x, const std::vector<fl::ClientUpdate<S>>& u, long round = 1) {
  Vector<S> g = x;
  auto r = s.aggregate(round, map(g), u);
  INFO((r.ok() ? std::string("ok") : r.error().message));
  REQUIRE(r.ok());
  return g;
}

/// Every way a round can be malformed: an error, a message naming the
/// strategy, and the global model untouched.
void check_bad_rounds(fl::Strategy<double>& s, const std::vector<fl::ClientUpdate<double>>& good, bool needs_examples) {
  const Vector<double> x = vec({1, 2, -1});
  const std::string who = s.name();
  auto expect_error = [&](const std::vector<fl::ClientUpdate<double>>& u, Errc code, const char* what) {
    INFO(who << ": " << what);
    Vector<double> g = x;
    auto r = s.aggregate(1, map(g), u);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == code);
    CHECK(r.error().message.find(who) != std::string::npos);
    CHECK(g == x);
  };
  expect_error({}, Errc::invalid_argument, "empty round");
  auto wrong_dim = good;
  wrong_dim[1].params = vec({1, 2});
  expect_error(wrong_dim, Errc::shape_mismatch, "wrong dimension");
  auto nan = good;
  nan[2].params[1] = std::numeric_limits<double>::quiet_NaN();
  expect_error(nan, Errc::invalid_argument, "NaN");
  auto inf = good;
  inf[0].params[0] = std::numeric_limits<double>::infinity();
  expect_error(inf, Errc::invalid_argument, "infinity");
  if (needs_examples) {
    auto zero = good;
    zero[1].num_examples = 0;
    expect_error(zero, Errc::invalid_argument, "zero examples");
  }
}

}  // namespace

// ---------------------------------------------------------------- FedAvg

TEMPLATE_TEST_CASE("fedavg: example-weighted average", "[fl]", float, double) {
  using S = TestType;
  fl::FedAvg<S> s;
  // [0.75, 2.5, -0.75] (file comment); exact in binary floating point.
  const Vector<S> g = agg<S>(s, vec<S>({1, 2, -1}), abc<S>());
  check_vec(g, {0.75, 2.5, -0.75}, 0.0);
  CHECK(s.name() == "fedavg");
}

TEST_CASE("fedavg: one client returns its model; equal weights give the plain mean", "[fl]") {
  fl::FedAvg<double> s;
  check_vec(agg(s, vec({1, 2, -1}), {upd(7, {3, -1, 0.5}, 10)}), {3, -1, 0.5});
  // (1 + 3 + 8) / 3 = 4, (0 + 0 + 3) / 3 = 1
  check_vec(agg(s, vec({0, 0}), {upd(0, {1, 0}, 5), upd(1, {3, 0}, 5), upd(2, {8, 3}, 5)}), {4, 1});
}

TEST_CASE("fedavgm: two rounds with server momentum", "[fl]") {
  fl::FedAvgMOptions o;
  o.server_learning_rate = 0.5;
  o.server_momentum = 0.9;
  fl::FedAvgM<double> s(o);
  // Round 1: delta = x - avg = [1,2,-1] - [0.75,2.5,-0.75] = [0.25, -0.5, -0.25]
  //   m = 0.9*0 + delta = [0.25, -0.5, -0.25]
  //   x = x - 0.5 m = [0.875, 2.25, -0.875]
  Vector<double> x = agg(s, vec({1, 2, -1}), abc());
  check_vec(x, {0.875, 2.25, -0.875});
  check_vec(s.momentum(), {0.25, -0.5, -0.25});
  // Round 2, same client models: delta = x - avg = [0.125, -0.25, -0.125]
  //   m = 0.9 [0.25, -0.5, -0.25] + delta = [0.35, -0.7, -0.35]
  //   x = x - 0.5 m = [0.875 - 0.175, 2.25 + 0.35, -0.875 + 0.175] = [0.7, 2.6, -0.7]
  x = agg(s, x, abc(), 2);
  check_vec(x, {0.7, 2.6, -0.7});
  check_vec(s.momentum(), {0.35, -0.7, -0.35});
}

TEST_CASE("fedavgm: beta = 0, eta = 1 is FedAvg (Flower); eta alone scales the step", "[fl]") {
  fl::FedAvgM<double> m;  // Flower's defaults: eta 1, beta 0
  fl::FedAvg<double> a;
  for (int round = 1; round <= 2; ++round) CHECK(agg(m, vec({1, 2, -1}), abc(), round) == agg(a, vec({1, 2, -1}), abc()));
  fl::FedAvgMOptions o;
  o.server_learning_rate = 2.0;
  fl::FedAvgM<double> m2(o);
  // x - 2 (x - avg) = [1 - 0.5, 2 + 1, -1 + 0.5]
  check_vec(agg(m2, vec({1, 2, -1}), abc()), {0.5, 3, -0.5});
}

TEST_CASE("fedavg family: malformed rounds leave the global model unchanged", "[fl]") {
  fl::FedAvg<double> a;
  check_bad_rounds(a, abc(), true);
  fl::FedAvgMOptions mo;
  mo.server_momentum = 0.9;
  fl::FedAvgM<double> m(mo);
  check_bad_rounds(m, abc(), true);
  CHECK(m.momentum().size() == 0);  // no state was created by the failed rounds
  fl::FedProx<double> p;
  check_bad_rounds(p, abc(), true);
}

TEST_CASE("fedavgm: invalid options and a changed model dimension are errors", "[fl]") {
  fl::FedAvgMOptions o;
  o.server_momentum = 1.0;
  fl::FedAvgM<double> bad(o);
  Vector<double> g = vec({1, 2, -1});
  auto r = bad.aggregate(1, map(g), abc());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("server_momentum") != std::string::npos);

  fl::FedAvgMOptions ok;
  ok.server_momentum = 0.5;
  fl::FedAvgM<double> s(ok);
  (void)agg(s, vec({1, 2, -1}), abc());
  Vector<double> g2 = vec({1, 2});
  const std::vector<fl::ClientUpdate<double>> two{upd(0, {1, 1}, 1)};
  auto r2 = s.aggregate(2, map(g2), two);
  REQUIRE_FALSE(r2.ok());
  CHECK(r2.error().code == Errc::shape_mismatch);
  s.reset();
  CHECK(s.aggregate(2, map(g2), two).ok());
}

// ---------------------------------------------------------------- FedProx

TEST_CASE("fedprox: proximal gradient and term; strategy sends mu and averages like FedAvg", "[fl]") {
  // w = [1, -2, 0.5], w_t = [0, -1, 0.5], mu = 0.1
  // grads [1, 1, 1] += 0.1 (w - w_t) = 0.1 [1, -1, 0] -> [1.1, 0.9, 1]
  // term = 0.1/2 * (1 + 1 + 0) = 0.1
  Vector<double> g = vec({1, 1, 1});
  const Vector<double> w = vec({1, -2, 0.5}), wt = vec({0, -1, 0.5});
  REQUIRE(fl::add_proximal_gradient(map(g), cmap(w), cmap(wt), 0.1).ok());
  check_vec(g, {1.1, 0.9, 1});
  auto t = fl::proximal_term(cmap(w), cmap(wt), 0.1);
  REQUIRE(t.ok());
  CHECK(*t == Approx(0.1).margin(kTol));

  // Errors: wrong sizes, negative mu; grads unchanged.
  const Vector<double> short_w = vec({1, 2});
  auto e1 = fl::add_proximal_gradient(map(g), cmap(short_w), cmap(wt), 0.1);
  REQUIRE_FALSE(e1.ok());
  CHECK(e1.error().code == Errc::shape_mismatch);
  auto e2 = fl::add_proximal_gradient(map(g), cmap(w), cmap(wt), -1.0);
  REQUIRE_FALSE(e2.ok());
  CHECK(e2.error().code == Errc::invalid_argument);
  check_vec(g, {1.1, 0.9, 1});
  CHECK_FALSE(fl::proximal_term(cmap(w), cmap(short_w), 0.1).ok());

  fl::FedProxOptions o;
  o.proximal_mu = 0.25;
  fl::FedProx<double> s(o);
  CHECK(s.name() == "fedprox");
  Rng rng(1);
  const std::vector<Index> avail{0, 1, 2};
  for (const auto& ins : s.configure(1, avail, rng)) CHECK(ins.config.prox_mu == 0.25);
  check_vec(agg(s, vec({1, 2, -1}), abc()), {0.75, 2.5, -0.75});
}

TEST_CASE("fedprox: the proximal gradient is the derivative of the term", "[fl]") {
  // Central difference of mu/2 ||w - w_t||^2 against mu (w - w_t).
  const Vector<double> w = vec({0.3, -1.2, 2.0, 0.7}), wt = vec({0.1, 0.4, -0.5, 0.7});
  Vector<double> grad = Vector<double>::Zero(4);
  REQUIRE(fl::add_proximal_gradient(map(grad), cmap(w), cmap(wt), 0.5).ok());
  for (Index i = 0; i < 4; ++i) {
    Vector<double> wp = w, wm = w;
    wp[i] += 1e-6;
    wm[i] -= 1e-6;
    const double num = (*fl::proximal_term(cmap(wp), cmap(wt), 0.5) - *fl::proximal_term(cmap(wm), cmap(wt), 0.5)) / 2e-6;
    CHECK(grad[i] == Approx(num).margin(1e-8));
  }
}

// ---------------------------------------------------------------- FedOpt

namespace {
// FedOpt rounds: x0 = [0, 0]; round 1 clients average to [0.4, -0.3]:
//   [0.4, 0] (n 1), [0.4, -0.6] (n 1), [0.4, -0.3] (n 2) -> [1.6, -1.2] / 4
// round 2 clients average to [0.1, -0.075]:
//   [0.1, 0] (n 1), [0.1, -0.15] (n 1), [0.1, -0.075] (n 2)
template <class S = double>
std::vector<fl::ClientUpdate<S>> opt_round(int r) {
  if (r == 1) return {upd<S>(0, {0.4, 0}, 1), upd<S>(1, {0.4, -0.6}, 1), upd<S>(2, {0.4, -0.3}, 2)};
  return {upd<S>(0, {0.1, 0}, 1), upd<S>(1, {0.1, -0.15}, 1), upd<S>(2, {0.1, -0.075}, 2)};
}
}  // namespace

TEST_CASE("fedopt: Flower's defaults and eta_l in the client config", "[fl]") {
  const fl::FedAdamOptions adam;
  CHECK(adam.eta == 1e-1);
  CHECK(adam.eta_l == 1e-1);
  CHECK(adam.beta_1 == 0.9);
  CHECK(adam.beta_2 == 0.99);
  CHECK(adam.tau == 1e-9);
  CHECK(adam.bias_correction == fl::AdamBiasCorrection::none);
  const fl::FedYogiOptions yogi;
  CHECK(yogi.eta == 1e-2);
  CHECK(yogi.eta_l == 0.0316);
  CHECK(yogi.beta_1 == 0.9);
  CHECK(yogi.beta_2 == 0.99);
  CHECK(yogi.tau == 1e-3);
  const fl::FedAdagradOptions adagrad;
  CHECK(adagrad.eta == 1e-1);
  CHECK(adagrad.eta_l == 1e-1);
  CHECK(adagrad.beta_1 == 0.0);
  CHECK(adagrad.tau == 1e-9);
  CHECK(adam.fraction_fit == 1.0);
  CHECK(adam.min_fit_clients == 2);
  CHECK(adam.min_available_clients == 2);

  fl::FedYogi<double> s;
  CHECK(s.name() == "fedyogi");
  Rng rng(3);
  const std::vector<Index> avail{4, 9};
  const auto ins = s.configure(1, avail, rng);
  REQUIRE(ins.size() == 2);
  for (const auto& i : ins) CHECK(i.config.lr == 0.0316);
}

TEST_CASE("fedadam: one round with Flower's defaults", "[fl]") {
  fl::FedAdam<double> s;
  // delta = avg - x = [0.75,2.5,-0.75] - [1,2,-1] = [-0.25, 0.5, 0.25]
  // m = 0.1 delta = [-0.025, 0.05, 0.025]; v = 0.01 delta^2 = [0.000625, 0.0025, 0.000625]
  // sqrt(v) = [0.025, 0.05, 0.025];  step = 0.1 m / (sqrt(v) + 1e-9)
  //   0.1 * 0.025 / (0.025 + 1e-9) = 0.1 / (1 + 4e-8) = 0.1 - 4e-9 (to 1e-16)
  //   0.1 * 0.05 / (0.05 + 1e-9)   = 0.1 / (1 + 2e-8) = 0.1 - 2e-9
  // x = [1 - 0.1 + 4e-9, 2 + 0.1 - 2e-9, -1 + 0.1 - 4e-9]
  check_vec(agg(s, vec({1, 2, -1}), abc()), {0.900000004, 2.099999998, -0.900000004}, 1e-15);
  check_vec(s.first_moment(), {-0.025, 0.05, 0.025});
  check_vec(s.second_moment(), {0.000625, 0.0025, 0.000625});
}

TEMPLATE_TEST_CASE("fedadam: two rounds", "[fl]", float, double) {
  using S = TestType;
  const double tol = std::is_same_v<S, float> ? 1e-6 : kTol;
  fl::FedAdamOptions o;
  o.tau = 0.01;
  fl::FedAdam<S> s(o);
  // Round 1: delta = [0.4, -0.3]; m = 0.1 delta = [0.04, -0.03]
  //   v = 0.01 delta^2 = [0.0016, 0.0009], sqrt(v) = [0.04, 0.03]
  //   x = 0.1 m / (sqrt(v) + 0.01) = 0.1 [0.04/0.05, -0.03/0.04] = [0.08, -0.075]
  Vector<S> x = agg<S>(s, vec<S>({0, 0}), opt_round<S>(1));
  check_vec(x, {0.08, -0.075}, tol);
  // Round 2: delta = [0.1, -0.075] - [0.08, -0.075] = [0.02, 0]
  //   m = 0.9 [0.04, -0.03] + 0.1 [0.02, 0] = [0.038, -0.027]
  //   v = 0.99 [0.0016, 0.0009] + 0.01 [0.0004, 0] = [0.001588, 0.000891]
  //   sqrt(v) = [0.0398497176903, 0.0298496231132]
  //   x = [0.08 + 0.1 * 0.038 / 0.0498497176903, -0.075 - 0.1 * 0.027 / 0.0398496231132]
  //     = [0.08 + 0.0762291177576, -0.075 - 0.0677547185912]
  x = agg<S>(s, x, opt_round<S>(2), 2);
  check_vec(x, {0.15622911775759513, -0.14275471859119615}, tol);
  check_vec(s.first_moment(), {0.038, -0.027}, tol);
  check_vec(s.second_moment(), {0.001588, 0.000891}, tol);
  CHECK(s.steps() == 2);
}

TEST_CASE("fedopt, fedavgm: server state restored into a fresh strategy continues bit for bit", "[fl]") {
  // what `fleet resume` does: round 1 in one strategy, its state into a new one, round 2 there
  fl::FedAdamOptions o;
  o.tau = 0.01;
  fl::FedAdam<double> a(o), b(o);
  Vector<double> x = agg(a, vec({0, 0}), opt_round<double>(1));
  REQUIRE(b.restore(a.first_moment(), a.second_moment(), a.steps()).ok());
  const Vector<double> xa = agg(a, x, opt_round<double>(2), 2);
  const Vector<double> xb = agg(b, x, opt_round<double>(2), 2);
  CHECK((xa.array() == xb.array()).all());
  CHECK(b.steps() == 2);
  // not restored: m and v start again at zero, and the step differs
  fl::FedAdam<double> fresh(o);
  CHECK_FALSE((agg(fresh, x, opt_round<double>(2), 2).array() == xa.array()).all());
  // inconsistent state is refused and changes nothing
  fl::FedAdam<double> c(o);
  CHECK_FALSE(c.restore(vec({1, 2}), vec({1}), 1).ok());
  CHECK_FALSE(c.restore(vec({1, 2}), vec({1, 2}), 0).ok());
  CHECK_FALSE(c.restore(Vector<double>(), Vector<double>(), 3).ok());
  CHECK(c.steps() == 0);
  CHECK(c.first_moment().size() == 0);

  fl::FedAvgMOptions mo;
  mo.server_learning_rate = 0.5;
  mo.server_momentum = 0.9;
  fl::FedAvgM<double> m1(mo), m2(mo);
  const Vector<double> y = agg(m1, vec({1, 2, -1}), abc());
  m2.restore_momentum(m1.momentum());
  CHECK((agg(m1, y, abc(), 2).array() == agg(m2, y, abc(), 2).array()).all());
  check_vec(m2.momentum(), {0.35, -0.7, -0.35});
}

TEST_CASE("fedadam: bias correction variants", "[fl]") {
  fl::FedAdamOptions o;
  o.tau = 0.01;
  // standard (Kingma & Ba, t = server steps): t = 1 gives sqrt(1 - 0.99) / (1 - 0.9) = 0.1 / 0.1 = 1,
  // so round 1 equals no correction: [0.08, -0.075]. Round 2: t = 2,
  //   eta_t = 0.1 * sqrt(1 - 0.9801) / (1 - 0.81) = 0.1 * 0.141067359797 / 0.19 = 0.1 * 0.742459788403
  //   x = [0.08 + 0.0742459788403 * 0.038 / 0.0498497176903, -0.075 - 0.0742459788403 * 0.027 / 0.0398496231132]
  o.bias_correction = fl::AdamBiasCorrection::standard;
  fl::FedAdam<double> std_s(o);
  Vector<double> x = agg(std_s, vec({0, 0}), opt_round(1), 1);
  check_vec(x, {0.08, -0.075});
  x = agg(std_s, x, opt_round(2), 2);
  check_vec(x, {0.13659705464048719, -0.12530515402855608});
  // flower (t = round + 1): round 1 already uses t = 2, eta_1 = 0.1 * 0.742459788403
  //   x = 0.0742459788403 * [0.8, -0.75] = [0.0593967830723, -0.0556844841303]
  o.bias_correction = fl::AdamBiasCorrection::flower;
  fl::FedAdam<double> fl_s(o);
  x = agg(fl_s, vec({0, 0}), opt_round(1), 1);
  check_vec(x, {0.059396783072277422, -0.055684484130260087});
  // round 2 (t = 3): delta = [0.1, -0.075] - x, m, v as Adam; value from the same rule
  x = agg(fl_s, x, opt_round(2), 2);
  check_vec(x, {0.11034252490916219, -0.10178267766588325});
}

TEST_CASE("fedyogi: one and two rounds, both signs of v - delta^2", "[fl]") {
  fl::FedYogiOptions o;
  o.eta = 0.1;
  o.tau = 0.01;
  fl::FedYogi<double> s(o);
  // Round 1: v = 0, v - delta^2 < 0 -> v = 0 + 0.01 delta^2 = [0.0016, 0.0009]: same as Adam,
  //   x = [0.08, -0.075]
  Vector<double> x = agg(s, vec({0, 0}), opt_round(1));
  check_vec(x, {0.08, -0.075});
  check_vec(s.second_moment(), {0.0016, 0.0009});
  // Round 2: delta = [0.02, 0], delta^2 = [0.0004, 0]
  //   v - delta^2 = [0.0012, 0.0009] > 0 -> v = v - 0.01 delta^2 = [0.001596, 0.0009]
  //   (Adam would give 0.001588: Yogi decreases v additively)
  //   m = [0.038, -0.027]
  //   x = [0.08 + 0.1 * 0.038 / (0.0399499687109 + 0.01), -0.075 - 0.1 * 0.027 / (0.03 + 0.01)]
  //     = [0.08 + 0.0760761237308, -0.075 - 0.0675]
  x = agg(s, x, opt_round(2), 2);
  check_vec(x, {0.1560761237308356, -0.1425});
  check_vec(s.second_moment(), {0.001596, 0.0009});
}

TEST_CASE("fedadagrad: one and two rounds (Flower: beta_1 = 0)", "[fl]") {
  fl::FedAdagradOptions o;
  o.tau = 0.1;
  fl::FedAdagrad<double> s(o);
  // Round 1: m = delta = [0.4, -0.3]; v = delta^2 = [0.16, 0.09]
  //   x = 0.1 [0.4 / (0.4 + 0.1), -0.3 / (0.3 + 0.1)] = [0.08, -0.075]
  Vector<double> x = agg(s, vec({0, 0}), opt_round(1));
  check_vec(x, {0.08, -0.075});
  // Round 2: delta = [0.02, 0]; m = [0.02, 0]; v = [0.16 + 0.0004, 0.09] = [0.1604, 0.09]
  //   x = [0.08 + 0.1 * 0.02 / (0.40049968789 + 0.1), -0.075 + 0] = [0.08 + 0.0039960064879, -0.075]
  x = agg(s, x, opt_round(2), 2);
  check_vec(x, {0.083996006487899164, -0.075});
  check_vec(s.second_moment(), {0.1604, 0.09});
  CHECK(s.name() == "fedadagrad");
}

TEST_CASE("fedopt: malformed rounds leave model and optimizer state unchanged", "[fl]") {
  fl::FedAdam<double> adam;
  fl::FedYogi<double> yogi;
  fl::FedAdagrad<double> adagrad;
  for (fl::FedOpt<double>* s : {static_cast<fl::FedOpt<double>*>(&adam), static_cast<fl::FedOpt<double>*>(&yogi),
                                static_cast<fl::FedOpt<double>*>(&adagrad)}) {
    (void)agg<double>(*s, vec({1, 2, -1}), abc());
    const Vector<double> m = s->first_moment(), v = s->second_moment();
    check_bad_rounds(*s, abc(), true);
    CHECK(s->first_moment() == m);
    CHECK(s->second_moment() == v);
    CHECK(s->steps() == 1);
  }
  fl::FedAdamOptions o;
  o.tau = 0.0;
  fl::FedAdam<double> bad(o);
  Vector<double> g = vec({1, 2, -1});
  auto r = bad.aggregate(1, map(g), abc());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("tau") != std::string::npos);
}

// ---------------------------------------------------------------- SCAFFOLD

TEST_CASE("scaffold: server update of x and c", "[fl]") {
  fl::ScaffoldOptions o;
  o.total_clients = 6;  // N = 6, |S| = 3
  fl::Scaffold<double> s(o);
  auto u = abc();
  u[0].control_delta = vec({0.3, 0, -0.3});
  u[1].control_delta = vec({0.3, 0.6, 0});
  u[2].control_delta = vec({0, -0.3, 0.6});
  // x <- x + 1 * (avg - x) = avg = [0.75, 2.5, -0.75]
  // mean(dc) = [0.6, 0.3, 0.3] / 3 = [0.2, 0.1, 0.1]; c = 0 + 3/6 * mean = [0.1, 0.05, 0.05]
  Vector<double> x = agg(s, vec({1, 2, -1}), u);
  check_vec(x, {0.75, 2.5, -0.75});
  check_vec(s.control(), {0.1, 0.05, 0.05});
  // Round 2 with eta_g = 1 again from x = [1, 2, -1]: c accumulates -> [0.2, 0.1, 0.1]
  x = agg(s, vec({1, 2, -1}), u, 2);
  check_vec(s.control(), {0.2, 0.1, 0.1});

  // eta_g = 0.5: x = [1,2,-1] + 0.5 ([0.75,2.5,-0.75] - [1,2,-1]) = [0.875, 2.25, -0.875]
  // weighted control (Flower baseline): (1 [0.3,0,-0.3] + 2 [0.3,0.6,0] + 1 [0,-0.3,0.6]) / 4
  //   = [0.9, 0.9, 0.3] / 4 = [0.225, 0.225, 0.075]; c = 0.5 * that = [0.1125, 0.1125, 0.0375]
  fl::ScaffoldOptions w;
  w.total_clients = 6;
  w.server_learning_rate = 0.5;
  w.weighted_control = true;
  fl::Scaffold<double> sw(w);
  check_vec(agg(sw, vec({1, 2, -1}), u), {0.875, 2.25, -0.875});
  check_vec(sw.control(), {0.1125, 0.1125, 0.0375});
}

TEST_CASE("scaffold: N from configure(), config flag, and errors", "[fl]") {
  fl::Scaffold<double> s;  // total_clients = 0: N = available at the last configure()
  Vector<double> g = vec({1, 2, -1});
  auto no_n = s.aggregate(1, map(g), abc());
  REQUIRE_FALSE(no_n.ok());
  CHECK(no_n.error().message.find("federation size") != std::string::npos);
  Rng rng(5);
  const std::vector<Index> avail{0, 1, 2, 3};  // N = 4
  const auto ins = s.configure(1, avail, rng);
  REQUIRE(ins.size() == 4);
  for (const auto& i : ins) CHECK(i.config.scaffold);
  auto u = abc();
  u[0].control_delta = vec({0.4, 0, 0});
  // c = 3/4 * [0.4, 0, 0] / 3 = [0.1, 0, 0]
  (void)agg(s, vec({1, 2, -1}), u);
  check_vec(s.control(), {0.1, 0, 0});

  check_bad_rounds(s, u, true);
  auto missing = u;
  missing[1].control_delta.resize(0);
  Vector<double> g2 = vec({1, 2, -1});
  auto r = s.aggregate(2, map(g2), missing);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::shape_mismatch);
  auto nan = u;
  nan[2].control_delta[0] = std::numeric_limits<double>::quiet_NaN();
  CHECK_FALSE(s.aggregate(2, map(g2), nan).ok());
  CHECK(g2 == vec({1, 2, -1}));
  check_vec(s.control(), {0.1, 0, 0});  // unchanged by the failed rounds
}

TEST_CASE("scaffold: client variate (option II) and gradient correction", "[fl]") {
  fl::ScaffoldClientState<double> st;
  CHECK(st.empty());
  CHECK(st.bytes() == 0);
  // Before the first round c_i = 0: g <- g - 0 + c
  const Vector<double> c1 = vec({0.25, 0.5});
  Vector<double> g = vec({1, 1});
  REQUIRE(st.correct(map(g), cmap(c1)).ok());
  check_vec(g, {1.25, 1.5});
  // Round 1: x = [1, 2], y = [0.8, 2.3], K = 4, lr = 0.05
  //   (x - y) / (K lr) = [0.2, -0.3] / 0.2 = [1, -1.5]
  //   c_i+ = 0 - c + [1, -1.5] = [0.75, -2];  delta c_i = c_i+ - 0 = [0.75, -2]
  const Vector<double> x = vec({1, 2}), y1 = vec({0.8, 2.3});
  auto d1 = st.update(cmap(x), cmap(y1), cmap(c1), 4, 0.05);
  REQUIRE(d1.ok());
  check_vec(*d1, {0.75, -2});
  check_vec(st.control(), {0.75, -2});
  CHECK(st.bytes() == 2 * sizeof(double));
  // Round 2: c = [0.5, -0.5], y = [1.2, 2], K = 2, lr = 0.1: (x - y) / 0.2 = [-1, 0]
  //   c_i+ = [0.75, -2] - [0.5, -0.5] + [-1, 0] = [-0.75, -1.5];  delta = [-1.5, 0.5]
  const Vector<double> c2 = vec({0.5, -0.5}), y2 = vec({1.2, 2});
  auto d2 = st.update(cmap(x), cmap(y2), cmap(c2), 2, 0.1);
  REQUIRE(d2.ok());
  check_vec(*d2, {-1.5, 0.5});
  check_vec(st.control(), {-0.75, -1.5});
  // correction: g - c_i + c = [1, 1] - [-0.75, -1.5] + [0.5, -0.5] = [2.25, 2]
  g = vec({1, 1});
  REQUIRE(st.correct(map(g), cmap(c2)).ok());
  check_vec(g, {2.25, 2});
  // An empty server variate means zero.
  g = vec({1, 1});
  const Vector<double> none;
  REQUIRE(st.correct(map(g), cmap(none)).ok());
  check_vec(g, {1.75, 2.5});

  // Errors: K = 0, lr <= 0, wrong sizes; state unchanged.
  CHECK_FALSE(st.update(cmap(x), cmap(y2), cmap(c2), 0, 0.1).ok());
  CHECK_FALSE(st.update(cmap(x), cmap(y2), cmap(c2), 2, 0.0).ok());
  const Vector<double> y3 = vec({1, 2, 3});
  auto bad = st.update(cmap(x), cmap(y3), cmap(c2), 2, 0.1);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().code == Errc::shape_mismatch);
  Vector<double> g3 = vec({1, 1, 1});
  CHECK_FALSE(st.correct(map(g3), cmap(none)).ok());
  check_vec(st.control(), {-0.75, -1.5});

  // Compact storage: c_i in float for a double model.
  fl::ScaffoldClientState<double, float> small;
  REQUIRE(small.update(cmap(x), cmap(y1), cmap(c1), 4, 0.05).ok());
  CHECK(small.bytes() == 2 * sizeof(float));
  check_vec(small.control(), {0.75, -2}, 0.0);
}

// ---------------------------------------------------------------- FedNova

TEST_CASE("fednova: ||a_i||_1 matches SGD with momentum", "[fl]") {
  CHECK(*fl::fednova_norm(5, 0.0) == 5.0);
  // rho = 0.5: tau 1 -> 1; tau 2 -> (2 - 0.5 * 0.75 / 0.5) / 0.5 = 2.5; tau 4 -> (4 - 0.9375) / 0.5 = 6.125
  CHECK(*fl::fednova_norm(1, 0.5) == Approx(1.0).margin(kTol));
  CHECK(*fl::fednova_norm(2, 0.5) == Approx(2.5).margin(kTol));
  CHECK(*fl::fednova_norm(4, 0.5) == Approx(6.125).margin(kTol));
  CHECK_FALSE(fl::fednova_norm(0, 0.5).ok());
  CHECK_FALSE(fl::fednova_norm(3, 1.0).ok());
  // With a constant gradient g, tau steps of torch-style momentum SGD move the
  // parameters by lr * g * ||a||_1.
  for (Index tau : {1, 3, 7}) {
    nn::SgdOptions so;
    so.lr = 0.1;
    so.momentum = 0.9;
    nn::Sgd<double> opt(so);
    Vector<double> p = vec({0.0}), grad = vec({2.0});
    for (Index k = 0; k < tau; ++k) opt.step(map(p), cmap(grad));
    CHECK(-p[0] == Approx(0.1 * 2.0 * *fl::fednova_norm(tau, 0.9)).margin(kTol));
  }
}

TEST_CASE("fednova: different local steps, without momentum", "[fl]") {
  fl::FedNova<double> s;
  auto u = abc();
  u[0].local_steps = 1;
  u[1].local_steps = 2;
  u[2].local_steps = 4;
  // p = [0.25, 0.5, 0.25], a = [1, 2, 4], tau_eff = 0.25 + 1 + 1 = 2.25
  // d_A = (x - y_A)/1 = [-1, 0, -1]; d_B = [1, -2, 1]/2 = [0.5, -1, 0.5]; d_C = [0, 2, -2]/4 = [0, 0.5, -0.5]
  // sum p d = [-0.25 + 0.25 + 0, 0 - 0.5 + 0.125, -0.25 + 0.25 - 0.125] = [0, -0.375, -0.125]
  // x = [1, 2, -1] - 2.25 [0, -0.375, -0.125] = [1, 2.84375, -0.71875]
  check_vec(agg(s, vec({1, 2, -1}), u), {1, 2.84375, -0.71875});
  // FedAvg would give [0.75, 2.5, -0.75]: B and C's extra steps are normalised away.
}

TEST_CASE("fednova: equal local steps reduce to FedAvg", "[fl]") {
  for (double rho : {0.0, 0.9}) {
    fl::FedNovaOptions o;
    o.momentum = rho;
    fl::FedNova<double> s(o);
    auto u = abc();
    for (auto& x : u) x.local_steps = 3;
    check_vec(agg(s, vec({1, 2, -1}), u), {0.75, 2.5, -0.75});
  }
}

TEST_CASE("fednova: different local steps with momentum 0.5", "[fl]") {
  fl::FedNovaOptions o;
  o.momentum = 0.5;
  fl::FedNova<double> s(o);
  Rng rng(2);
  const std::vector<Index> avail{0, 1};
  for (const auto& i : s.configure(1, avail, rng)) CHECK(i.config.momentum == 0.5);
  auto u = abc();
  u[0].local_steps = 1;
  u[1].local_steps = 2;
  u[2].local_steps = 4;
  // a = [1, 2.5, 6.125]; tau_eff = 0.25 * 1 + 0.5 * 2.5 + 0.25 * 6.125 = 0.25 + 1.25 + 1.53125 = 3.03125
  // d_A = [-1, 0, -1]; d_B = [1, -2, 1] / 2.5 = [0.4, -0.8, 0.4]; d_C = [0, 2, -2] / 6.125
  // sum p d = [-0.25 + 0.2, -0.4 + 0.5/6.125, -0.25 + 0.2 - 0.5/6.125]
  //         = [-0.05, -0.4 + 0.0816326530612, -0.05 - 0.0816326530612]
  //         = [-0.05, -0.318367346939, -0.131632653061]
  // x = [1, 2, -1] - 3.03125 * that = [1.1515625, 2.96505102041, -0.600988520408]
  check_vec(agg(s, vec({1, 2, -1}), u), {1.1515625, 2.9650510204081633, -0.60098852040816326}, 1e-11);
}

TEST_CASE("fednova: malformed rounds", "[fl]") {
  fl::FedNova<double> s;
  check_bad_rounds(s, abc(), true);
  auto u = abc();
  u[1].local_steps = 0;
  Vector<double> g = vec({1, 2, -1});
  auto r = s.aggregate(1, map(g), u);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("local_steps") != std::string::npos);
  CHECK(g == vec({1, 2, -1}));
}

// ---------------------------------------------------------------- q-FedAvg

TEST_CASE("qfedavg: q = 0 is the plain mean of the client models", "[fl]") {
  fl::QFedAvgOptions o;
  o.q = 0.0;
  fl::QFedAvg<double> s(o);
  // F^0 = 1, h_i = L: x - sum L (x - y_i) / (3 L) = mean(y_i)
  //   = ([2,2,0] + [0,4,-2] + [1,0,1]) / 3 = [1, 2, -1/3]  (examples ignored)
  auto u = abc();
  u[0].loss_before = 0.3;
  u[1].loss_before = 7.0;
  check_vec(agg(s, vec({1, 2, -1}), u), {1, 2, -1.0 / 3.0});
  // ... which is FedAvg with equal example counts.
  for (auto& x : u) x.num_examples = 5;
  fl::FedAvg<double> a;
  check_vec(agg(s, vec({1, 2, -1}), u), {1, 2, -1.0 / 3.0});
  check_vec(agg(a, vec({1, 2, -1}), u), {1, 2, -1.0 / 3.0});
}

TEST_CASE("qfedavg: q = 1 and q = 2 favour the high-loss client", "[fl]") {
  // x = [1, 0], lr = 0.5 (L = 2), loss_epsilon = 0
  //   A: y = [0, 0], F = 1  -> dw_A = 2 ([1,0] - [0,0]) = [2, 0],  ||dw||^2 = 4
  //   B: y = [1, 1], F = 4  -> dw_B = 2 ([1,0] - [1,1]) = [0, -2], ||dw||^2 = 4
  std::vector<fl::ClientUpdate<double>> u{upd(0, {0, 0}, 1), upd(1, {1, 1}, 1)};
  u[0].loss_before = 1.0;
  u[1].loss_before = 4.0;
  fl::QFedAvgOptions o;
  o.learning_rate = 0.5;
  o.loss_epsilon = 0.0;
  o.q = 1.0;
  fl::QFedAvg<double> s1(o);
  // q = 1: Delta_A = [2, 0], Delta_B = 4 [0, -2] = [0, -8]
  //   h_A = 1 * 1 * 4 + 2 * 1 = 6, h_B = 1 * 1 * 4 + 2 * 4 = 12, sum h = 18
  //   x = [1, 0] - [2, -8] / 18 = [8/9, 4/9]
  check_vec(agg(s1, vec({1, 0}), u), {8.0 / 9.0, 4.0 / 9.0});
  o.q = 2.0;
  fl::QFedAvg<double> s2(o);
  // q = 2: Delta_A = [2, 0], Delta_B = 16 [0, -2] = [0, -32]
  //   h_A = 2 * 1 * 4 + 2 * 1 = 10, h_B = 2 * 4 * 4 + 2 * 16 = 64, sum h = 74
  //   x = [1 - 2/74, 32/74]
  check_vec(agg(s2, vec({1, 0}), u), {1.0 - 2.0 / 74.0, 32.0 / 74.0});
  // Flower's defaults
  const fl::QFedAvgOptions d;
  CHECK(d.q == 0.2);
  CHECK(d.learning_rate == 0.1);
  CHECK(d.loss_epsilon == 1e-10);
  CHECK(d.min_fit_clients == 1);
  fl::QFedAvg<double> sd;
  Rng rng(1);
  const std::vector<Index> avail{3};
  const auto ins = sd.configure(1, avail, rng);
  REQUIRE(ins.size() == 1);
  CHECK(ins[0].config.lr == 0.1);
}

TEST_CASE("qfedavg: zero loss is kept finite by epsilon; bad losses are errors", "[fl]") {
  fl::QFedAvg<double> s;  // q = 0.2, epsilon 1e-10
  auto u = abc();
  for (auto& x : u) x.loss_before = 0.0;
  const Vector<double> g = agg(s, vec({1, 2, -1}), u);
  CHECK(g.allFinite());
  // q-FedAvg does not use example counts: zero examples is accepted.
  auto z = abc();
  z[0].num_examples = 0;
  (void)agg(s, vec({1, 2, -1}), z);
  for (double bad : {-1.0, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    auto b = abc();
    b[1].loss_before = bad;
    Vector<double> x = vec({1, 2, -1});
    auto r = s.aggregate(1, map(x), b);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.find("loss_before") != std::string::npos);
    CHECK(x == vec({1, 2, -1}));
  }
  check_bad_rounds(s, abc(), false);
}

// ---------------------------------------------------------------- FedBuff

TEST_CASE("fedbuff: staleness weights and defaults", "[fl]") {
  CHECK(fl::FedBuff<double>::staleness_weight(0) == 1.0);
  CHECK(fl::FedBuff<double>::staleness_weight(3) == Approx(0.5).margin(kTol));
  CHECK(fl::FedBuff<double>::staleness_weight(8) == Approx(1.0 / 3.0).margin(kTol));
  const fl::FedBuffOptions o;
  CHECK(o.buffer_size == 10);
  CHECK(o.max_staleness == 5);
  CHECK(o.server_learning_rate == 1.0);
}

TEST_CASE("fedbuff: buffer flush at K with staleness-weighted deltas", "[fl]") {
  fl::FedBuffOptions o;
  o.buffer_size = 2;
  o.server_learning_rate = 0.5;
  fl::FedBuff<double> s(o);
  Vector<double> x = vec({0, 0});
  auto d = [](std::initializer_list<double> delta, long base) {
    auto u = upd(0, delta, 1);
    u.base_round = base;
    return u;
  };
  // Version 0: two fresh deltas fill the buffer:
  //   x = [0,0] + 0.5 * ([2,0] + [0,2]) / 2 = [0.5, 0.5]
  auto r = s.submit_delta(map(x), d({2, 0}, 0));
  REQUIRE(r.ok());
  CHECK_FALSE(*r);
  CHECK(s.buffered() == 1);
  CHECK(x == vec({0, 0}));
  r = s.submit_delta(map(x), d({0, 2}, 0));
  REQUIRE(r.ok());
  CHECK(*r);
  CHECK(s.version() == 1);
  CHECK(s.buffered() == 0);
  check_vec(x, {0.5, 0.5});
  // Version 1: a delta from version 0 (s = 1, w = 1/sqrt(2)) and one from version 1 (w = 1):
  //   x += 0.5 / 2 * ([4,4]/sqrt(2) + [2,-2]) = 0.25 [2 sqrt2 + 2, 2 sqrt2 - 2]
  //   x = [0.5 + 0.5 sqrt2 + 0.5, 0.5 + 0.5 sqrt2 - 0.5] = [1 + sqrt2/2, sqrt2/2]
  REQUIRE_FALSE(*s.submit_delta(map(x), d({4, 4}, 0)));
  REQUIRE(*s.submit_delta(map(x), d({2, -2}, 1)));
  check_vec(x, {1.0 + std::sqrt(2.0) / 2.0, std::sqrt(2.0) / 2.0});
  CHECK(s.version() == 2);
  CHECK(s.accepted() == 4);
  CHECK(s.dropped() == 0);
}

TEST_CASE("fedbuff: stale updates are dropped, max staleness is inclusive", "[fl]") {
  fl::FedBuffOptions o;
  o.buffer_size = 1;  // every accepted update is a server step
  fl::FedBuff<double> s(o);
  Vector<double> x = vec({0, 0});
  auto d = [](std::initializer_list<double> delta, long base) {
    auto u = upd(0, delta, 1);
    u.base_round = base;
    return u;
  };
  // Versions 0..4 with fresh unit steps: x = [5, 0]
  for (long v = 0; v < 5; ++v) REQUIRE(*s.submit_delta(map(x), d({1, 0}, v)));
  CHECK(s.version() == 5);
  check_vec(x, {5, 0});
  // s = 5 - 0 = 5 = max_staleness: accepted with weight 1/sqrt(6)
  REQUIRE(*s.submit_delta(map(x), d({0, 6}, 0)));
  check_vec(x, {5, 6 / std::sqrt(6.0)});
  // version 6: base 0 has s = 6 > 5: dropped, x unchanged, no error
  const Vector<double> before = x;
  auto r = s.submit_delta(map(x), d({9, 9}, 0));
  REQUIRE(r.ok());
  CHECK_FALSE(*r);
  CHECK(s.dropped() == 1);
  CHECK(x == before);
  CHECK(s.version() == 6);
  // s = 3: weight 1/2: x += [4, 2] / 2
  REQUIRE(*s.submit_delta(map(x), d({4, 2}, 3)));
  check_vec(x, {7, 6 / std::sqrt(6.0) + 1});
}

TEST_CASE("fedbuff: submit with the base model, and bad input", "[fl]") {
  fl::FedBuffOptions o;
  o.buffer_size = 2;
  fl::FedBuff<double> s(o);
  Vector<double> x = vec({1, 1});
  const Vector<double> base = vec({1, 1});
  auto u = upd(3, {3, 1}, 1);  // y = [3, 1] from base [1, 1]: delta [2, 0]
  REQUIRE_FALSE(*s.submit(map(x), u, cmap(base)));
  auto v = upd(4, {1, 5}, 1);  // delta [0, 4]
  REQUIRE(*s.submit(map(x), v, cmap(base)));
  // x = [1, 1] + ([2, 0] + [0, 4]) / 2 = [2, 3]
  check_vec(x, {2, 3});

  const Vector<double> x0 = x;
  auto expect_error = [&](const fl::ClientUpdate<double>& w, Errc code) {
    auto r = s.submit_delta(map(x), w);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == code);
    CHECK(r.error().message.find("fedbuff") != std::string::npos);
    CHECK(x == x0);
    CHECK(s.buffered() == 0);
  };
  auto wrong = upd(0, {1, 2, 3}, 1);
  wrong.base_round = 1;
  expect_error(wrong, Errc::shape_mismatch);
  auto nan = upd(0, {1, std::numeric_limits<double>::quiet_NaN()}, 1);
  nan.base_round = 1;
  expect_error(nan, Errc::invalid_argument);
  auto future = upd(0, {1, 1}, 1);
  future.base_round = 2;  // the server is at version 1
  expect_error(future, Errc::invalid_argument);
  auto negative = upd(0, {1, 1}, 1);
  negative.base_round = -1;
  expect_error(negative, Errc::invalid_argument);
  const Vector<double> short_base = vec({1});
  CHECK_FALSE(s.submit(map(x), u, cmap(short_base)).ok());

  // configure: count clients, deterministic for a seed
  Rng r1(9), r2(9);
  const std::vector<Index> avail{1, 2, 3, 4, 5, 6};
  const auto a = s.configure(avail, 3, r1), b = s.configure(avail, 3, r2);
  REQUIRE(a.size() == 3);
  for (std::size_t i = 0; i < a.size(); ++i) CHECK(a[i].client == b[i].client);
}

// ---------------------------------------------------------------- HeteroFL

namespace {
template <class S>
nn::Model<S> hetero_cnn() {
  // 2x4x4 -> conv(2->4, 3x3, pad 1) -> BN(4) -> ReLU -> maxpool 2 -> flatten(16) -> dense(16->6) -> ReLU -> dense(6->3)
  std::vector<nn::NodePtr<S>> n;
  n.push_back(std::make_unique<nn::Conv2D<S>>(2, 4, 3, 1, 1));
  n.push_back(std::make_unique<nn::BatchNorm<S>>(4));
  n.push_back(nn::relu<S>());
  n.push_back(std::make_unique<nn::MaxPool2D<S>>(2));
  n.push_back(std::make_unique<nn::Flatten<S>>());
  n.push_back(std::make_unique<nn::Dense<S>>(16, 6));
  n.push_back(nn::relu<S>());
  n.push_back(std::make_unique<nn::Dense<S>>(6, 3));
  auto m = nn::Model<S>::create(Shape{2, 4, 4}, std::move(n));
  REQUIRE(m.ok());
  m->init(11);
  return std::move(*m);
}

template <class S>
nn::Model<S> hetero_dw() {
  // 1x4x4 -> conv(1->4) -> ReLU6 -> depthwise conv(4, groups 4) -> BN(4) -> Tanh -> avgpool 2 -> dropout
  //       -> global avg pool -> dense(4->5) -> Sigmoid -> dense(5->3) -> Softmax
  std::vector<nn::NodePtr<S>> n;
  n.push_back(std::make_unique<nn::Conv2D<S>>(1, 4, 3, 1, 1));
  n.push_back(nn::relu6<S>());
  n.push_back(std::make_unique<nn::Conv2D<S>>(4, 4, 3, 1, 1, 1, 4));
  n.push_back(std::make_unique<nn::BatchNorm<S>>(4));
  n.push_back(nn::tanh<S>());
  n.push_back(std::make_unique<nn::AvgPool2D<S>>(2));
  n.push_back(std::make_unique<nn::Dropout<S>>(0.5));
  n.push_back(std::make_unique<nn::GlobalAvgPool<S>>());
  n.push_back(std::make_unique<nn::Dense<S>>(4, 5));
  n.push_back(nn::sigmoid<S>());
  n.push_back(std::make_unique<nn::Dense<S>>(5, 3));
  n.push_back(std::make_unique<nn::Softmax<S>>());
  auto m = nn::Model<S>::create(Shape{1, 4, 4}, std::move(n));
  REQUIRE(m.ok());
  m->init(12);
  // non-trivial running statistics for the kept channels
  auto b = m->buffers();
  for (Index i = 0; i < b.size(); ++i) b[i] = static_cast<S>(i < 4 ? 0.1 * static_cast<double>(i) : 1.0 + 0.2 * static_cast<double>(i - 4));
  return std::move(*m);
}

/// dense(2->2) -> dense(2->1): 9 parameters
///   D1: W[o][i] at o*2 + i (0..3), b at 4, 5;  D2: W[0][i] at 6, 7, b at 8.
nn::Model<double> hetero_mlp() {
  std::vector<nn::NodePtr<double>> n;
  n.push_back(std::make_unique<nn::Dense<double>>(2, 2));
  n.push_back(std::make_unique<nn::Dense<double>>(2, 1));
  auto m = nn::Model<double>::create(Shape{2, 1, 1}, std::move(n));
  REQUIRE(m.ok());
  return std::move(*m);
}
}  // namespace

TEST_CASE("heterofl: index sets — sizes, layout, first and last layers full", "[fl]") {
  const auto model = hetero_cnn<double>();
  // Full: conv 4*2*9 + 4 = 76, BN 8, dense 16*6 + 6 = 102, dense 6*3 + 3 = 21 -> 207
  REQUIRE(model.param_count() == 207);
  auto full = fl::submodel_index(model, 1.0);
  REQUIRE(full.ok());
  REQUIRE(full->params.size() == 207);
  for (Index j = 0; j < 207; ++j) CHECK(full->params[j] == j);
  CHECK(full->buffers.size() == 8);

  // Width 0.5: conv 2 of 4 filters, all 2 input channels: 2*18 + 2 = 38; BN 2+2 = 4;
  // flatten keeps 2 channels * 2*2 = 8 features; dense 3 of 6 units: 3*8 + 3 = 27;
  // last dense 3 inputs, all 3 classes: 3*3 + 3 = 12 -> 81
  auto half = fl::submodel_index(model, 0.5);
  REQUIRE(half.ok());
  const auto& p = half->params;
  REQUIRE(p.size() == 81);
  CHECK(half->buffers.size() == 4);
  for (Index j = 0; j < 36; ++j) CHECK(p[j] == j);  // filters 0, 1: global [0, 36)
  CHECK(p[36] == 72);                                // conv bias 0 at 4*18
  CHECK(p[37] == 73);
  CHECK(p[38] == 76);  // gamma 0, 1 (BN at 76)
  CHECK(p[39] == 77);
  CHECK(p[40] == 80);  // beta 0, 1 at 76 + 4
  CHECK(p[41] == 81);
  // dense(16->6) at 84: W[o][i] = 84 + 16 o + i, o < 3, i < 8
  CHECK(p[42] == 84);
  CHECK(p[49] == 91);
  CHECK(p[50] == 100);
  CHECK(p[42 + 23] == 84 + 32 + 7);
  CHECK(p[66] == 180);  // bias 0..2 at 84 + 96
  CHECK(p[68] == 182);
  // dense(6->3) at 186: W[o][i] = 186 + 6 o + i, i < 3, all o; bias 204..206 (the last global entry)
  CHECK(p[69] == 186);
  CHECK(p[72] == 192);
  CHECK(p[77] == 200);
  CHECK(p[78] == 204);
  CHECK(p[80] == 206);
  CHECK(half->buffers[0] == 0);
  CHECK(half->buffers[2] == 4);  // running_var at 4

  // Width 0.25: conv 1 filter: 18 + 1; BN 2; dense ceil(1.5) = 2 units on 4 features: 2*4 + 2;
  // last dense 2 inputs: 3*2 + 3 -> 19 + 2 + 10 + 9 = 40
  auto quarter = fl::submodel_index(model, 0.25);
  REQUIRE(quarter.ok());
  CHECK(quarter->params.size() == 40);
  // Rounding guards: 0.1 * 30 is 3.0000000000000004 in binary but keeps 3.
  CHECK(fl::detail::hetero_scale(30, 0.1) == 3);
  CHECK(fl::detail::hetero_scale(6, 0.01) == 1);

  for (double bad : {0.0, -0.5, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    auto r = fl::submodel_index(model, bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::invalid_argument);
  }
}

TEST_CASE("heterofl: make_submodel computes what the zero-padded full model computes", "[fl]") {
  const auto cnn = hetero_cnn<double>();
  const auto dw = hetero_dw<double>();
  // dw at width 0.5: conv 2 * 9 + 2 = 20, depthwise 2 * 9 + 2 = 20, BN 4, dense(2->3) 3 * 2 + 3 = 9,
  // dense(3->3) 3 * 3 + 3 = 12 -> 65
  auto dw_half = fl::submodel_index(dw, 0.5);
  REQUIRE(dw_half.ok());
  CHECK(dw_half->params.size() == 65);
  for (const auto* mp : {&cnn, &dw}) {
    for (double width : {0.25, 0.5, 0.75}) {
      const auto& model = *mp;
      INFO("model " << (mp == &cnn ? "cnn" : "depthwise") << ", width " << width);
      auto sub = fl::make_submodel(model, width);
      REQUIRE(sub.ok());
      auto idx = fl::submodel_index(model, width);
      REQUIRE(idx.ok());
      CHECK(sub->param_count() == idx->params.size());
      CHECK(sub->input_shape() == model.input_shape());
      CHECK(sub->output_shape() == model.output_shape());  // 3 classes
      CHECK(static_cast<const nn::Conv2D<double>&>(sub->node(0)).options().in_channels == model.input_shape().c);
      // The full model with every parameter outside the index set to zero
      // computes exactly the sub-model (eval mode: dropped channels are 0).
      nn::Model<double> padded = model;
      auto bidx = idx->buffers;
      for (Index j = 0; j < bidx.size(); ++j) CHECK(sub->buffers()[j] == model.buffers()[bidx[j]]);
      Vector<double> zeros = Vector<double>::Zero(model.param_count());
      auto sp = fl::submodel_gather(std::as_const(model).params(), *idx);
      REQUIRE(sp.ok());
      CHECK(*sp == std::as_const(*sub).params());
      REQUIRE(fl::submodel_scatter(map(zeros), *idx, cmap(*sp)).ok());
      padded.params() = zeros;
      fleetdl::Matrix<double> in(model.input_shape().size(), 3);
      Rng rng(4);
      for (Index i = 0; i < in.size(); ++i) in.data()[i] = rng.uniform(-1, 1);
      nn::ExecContext<double> ctx;
      const fleetdl::Matrix<double> want = padded.forward(in, ctx);
      const fleetdl::Matrix<double> got = sub->forward(in, ctx);
      CHECK((want - got).cwiseAbs().maxCoeff() < 1e-12);
    }
  }
}

TEST_CASE("heterofl: gather / scatter round trip", "[fl]") {
  const auto model = hetero_cnn<double>();
  auto idx = fl::submodel_index(model, 0.5);
  REQUIRE(idx.ok());
  Vector<double> global = std::as_const(model).params();
  const Vector<double> orig = global;
  auto sub = fl::submodel_gather(cmap(global), *idx);
  REQUIRE(sub.ok());
  REQUIRE(fl::submodel_scatter(map(global), *idx, cmap(*sub)).ok());
  CHECK(global == orig);
  // Scatter changes exactly the indexed coordinates.
  Vector<double> ones = Vector<double>::Ones(sub->size());
  REQUIRE(fl::submodel_scatter(map(global), *idx, cmap(ones)).ok());
  const std::set<Index> held(idx->params.data(), idx->params.data() + idx->params.size());
  for (Index j = 0; j < global.size(); ++j) CHECK(global[j] == (held.count(j) ? 1.0 : orig[j]));
  // Size errors
  const Vector<double> short_global = vec({1, 2});
  CHECK_FALSE(fl::submodel_gather(cmap(short_global), *idx).ok());
  const Vector<double> short_sub = vec({1});
  CHECK_FALSE(fl::submodel_scatter(map(global), *idx, cmap(short_sub)).ok());
}

TEST_CASE("heterofl: aggregation over the holders of each coordinate", "[fl]") {
  auto s = fl::HeteroFL<double>::create(hetero_mlp());
  REQUIRE(s.ok());
  // Width 0.5 keeps D1 unit 0 (W 0, 1; b 4) and D2 on input 0 (W 6; b 8): {0, 1, 4, 6, 8}
  auto idx = s->index(0.5);
  REQUIRE(idx.ok());
  CHECK((*idx)->params == (Eigen::Matrix<Index, Eigen::Dynamic, 1>(5) << 0, 1, 4, 6, 8).finished());
  const Vector<double> x = vec({10, 11, 12, 13, 14, 15, 16, 17, 18});
  auto a = upd(0, {1, 2, 3, 4, 5, 6, 7, 8, 9}, 1);
  auto b = upd(1, {5, 6, 7, 8, 9, 10, 11, 12, 13}, 3);
  auto c = upd(2, {-1, -2, -3, -4, -5}, 4);
  c.width = 0.5;
  // Held by all (0, 1, 4, 6, 8): (1 A + 3 B + 4 C) / 8
  //   0: (1 + 15 - 4)/8 = 1.5   1: (2 + 18 - 8)/8 = 1.5   4: (5 + 27 - 12)/8 = 2.5
  //   6: (7 + 33 - 16)/8 = 3    8: (9 + 39 - 20)/8 = 3.5
  // Held by A and B only (2, 3, 5, 7): (A + 3 B) / 4
  //   2: (3 + 21)/4 = 6   3: (4 + 24)/4 = 7   5: (6 + 30)/4 = 9   7: (8 + 36)/4 = 11
  check_vec(agg<double>(*s, x, {a, b, c}), {1.5, 1.5, 6, 7, 2.5, 9, 3, 11, 3.5});
  // Only half-width clients: 2, 3, 5, 7 are held by nobody and keep x's values;
  // the rest is (4 C + 4 D) / 8.
  auto d = upd(3, {3, 2, 1, 0, -1}, 4);
  d.width = 0.5;
  check_vec(agg<double>(*s, x, {c, d}), {1, 0, 12, 13, -1, 15, -2, 17, -3});
  // extract() is the gather the server sends to a width-0.5 client
  auto e = s->extract(cmap(x), 0.5);
  REQUIRE(e.ok());
  check_vec(*e, {10, 11, 14, 16, 18});
}

TEST_CASE("heterofl: malformed rounds, unsupported models, configure widths", "[fl]") {
  // dense(2 -> 1) has 3 parameters: the common round fits it at width 1.
  std::vector<nn::NodePtr<double>> n;
  n.push_back(std::make_unique<nn::Dense<double>>(2, 1));
  auto m = nn::Model<double>::create(Shape{2, 1, 1}, std::move(n));
  REQUIRE(m.ok());
  fl::HeteroFLOptions o;
  o.width_of = [](Index client, long round) { return client % 2 == 0 ? 1.0 : 0.5 + 0.0 * static_cast<double>(round); };
  auto s = fl::HeteroFL<double>::create(*m, o);
  REQUIRE(s.ok());
  check_bad_rounds(*s, abc(), true);
  auto w = abc();
  w[0].width = 0.0;
  Vector<double> g = vec({1, 2, -1});
  auto r = s->aggregate(1, map(g), w);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("width") != std::string::npos);
  auto half = abc();
  half[2].width = 0.5;  // a width-0.5 dense(2->1) sub-model still has 3 parameters (output full)
  (void)agg<double>(*s, vec({1, 2, -1}), half);
  auto mlp = fl::HeteroFL<double>::create(hetero_mlp());
  auto wrong = upd(0, {1, 2, 3}, 1);
  wrong.width = 0.5;  // a width-0.5 sub-model of the MLP has 5 parameters
  Vector<double> g9 = Vector<double>::Zero(9);
  const std::vector<fl::ClientUpdate<double>> wrong_round{wrong};
  auto r2 = mlp->aggregate(1, map(g9), wrong_round);
  REQUIRE_FALSE(r2.ok());
  CHECK(r2.error().code == Errc::shape_mismatch);
  CHECK(g9 == Vector<double>::Zero(9));

  Rng rng(8);
  const std::vector<Index> avail{0, 1, 2, 3};
  for (const auto& ins : s->configure(1, avail, rng)) CHECK(ins.config.width == (ins.client % 2 == 0 ? 1.0 : 0.5));

  // A residual block cannot be width-scaled.
  std::vector<nn::NodePtr<double>> body;
  body.push_back(std::make_unique<nn::Dense<double>>(2, 2));
  std::vector<nn::NodePtr<double>> rn;
  rn.push_back(std::make_unique<nn::Residual<double>>(nn::Sequential<double>(std::move(body))));
  auto res = nn::Model<double>::create(Shape{2, 1, 1}, std::move(rn));
  REQUIRE(res.ok());
  auto bad = fl::HeteroFL<double>::create(*res);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().code == Errc::unsupported);
  CHECK(bad.error().message.find("residual") != std::string::npos);
  CHECK_FALSE(fl::make_submodel(*res, 0.5).ok());

  // Neither can a grouped (not depthwise) convolution.
  std::vector<nn::NodePtr<double>> gn;
  gn.push_back(std::make_unique<nn::Conv2D<double>>(4, 4, 1, 1, 0, 1, 2));
  auto grouped = nn::Model<double>::create(Shape{4, 2, 2}, std::move(gn));
  REQUIRE(grouped.ok());
  auto gi = fl::submodel_index(*grouped, 0.5);
  REQUIRE_FALSE(gi.ok());
  CHECK(gi.error().code == Errc::unsupported);
}

TEST_CASE("heterofl: many distinct widths in one round (index cache limit)", "[fl]") {
  auto s = fl::HeteroFL<double>::create(hetero_mlp());
  REQUIRE(s.ok());
  // Client k = 1..20 reports width k/20 and every parameter = k, n = 1. Widths <= 0.5
  // keep D1 unit 0 only (5 parameters), widths > 0.5 the whole MLP (9).
  //   held by all 20 (0, 1, 4, 6, 8): mean(1..20) = 10.5
  //   held by k = 11..20 (2, 3, 5, 7): mean(11..20) = 15.5
  std::vector<fl::ClientUpdate<double>> u;
  for (Index k = 1; k <= 20; ++k) {
    fl::ClientUpdate<double> c;
    c.client = k;
    c.width = static_cast<double>(k) / 20.0;
    c.params = Vector<double>::Constant(k <= 10 ? 5 : 9, static_cast<double>(k));
    c.num_examples = 1;
    u.push_back(c);
  }
  REQUIRE(u.size() > fl::HeteroFL<double>::max_cached_widths);
  check_vec(agg<double>(*s, Vector<double>::Zero(9), u), {10.5, 10.5, 15.5, 15.5, 10.5, 15.5, 10.5, 15.5, 10.5});
}

// ---------------------------------------------------------------- configure()

TEST_CASE("configure: deterministic for a seed, respects fraction and minimum clients", "[fl]") {
  const std::vector<Index> avail{3, 5, 8, 13, 21, 34, 55, 89, 144, 233};
  fl::FedAvgOptions o;
  o.fraction_fit = 0.5;
  o.client.lr = 0.05;
  o.client.epochs = 3;
  fl::FedAvg<double> s(o);
  Rng r1(42), r2(42), r3(43);
  const auto a = s.configure(1, avail, r1), b = s.configure(1, avail, r2), c = s.configure(1, avail, r3);
  REQUIRE(a.size() == 5);  // int(10 * 0.5)
  std::set<Index> ids;
  for (std::size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].client == b[i].client);
    CHECK(std::find(avail.begin(), avail.end(), a[i].client) != avail.end());
    if (i > 0) CHECK(a[i - 1].client < a[i].client);  // sorted, hence distinct
    ids.insert(a[i].client);
    CHECK(a[i].config.lr == 0.05);
    CHECK(a[i].config.epochs == 3);
  }
  bool differs = false;
  for (std::size_t i = 0; i < c.size(); ++i) differs = differs || c[i].client != a[i].client;
  CHECK(differs);  // another seed, another draw (for this seed pair)

  o.fraction_fit = 0.1;  // int(1) < min_fit_clients = 2
  fl::FedAvg<double> few(o);
  CHECK(few.configure(1, avail, r1).size() == 2);
  o.min_fit_clients = 7;
  fl::FedAvg<double> seven(o);
  CHECK(seven.configure(1, avail, r1).size() == 7);
  o.min_fit_clients = 20;  // cannot exceed the available clients
  fl::FedAvg<double> all(o);
  CHECK(all.configure(1, avail, r1).size() == 10);
  o.min_available_clients = 11;  // Flower waits: no round
  fl::FedAvg<double> wait(o);
  CHECK(wait.configure(1, avail, r1).empty());
  fl::FedAvg<double> def;  // fraction 1.0: everyone
  CHECK(def.configure(1, avail, r1).size() == 10);
  const std::vector<Index> one{7};
  CHECK(def.configure(1, one, r1).empty());  // min_available_clients = 2
}

// --------------------------------------------------------------------------
// The client half (fl/client.hpp): what the simulator and the device agent
// both run. A synthetic 4-class problem on 1x8x8 images, lenet300_100.

namespace {

fleetdl::data::Dataset<float> synthetic_local(Index n, std::uint64_t seed) {
  fleetdl::data::Dataset<float> d;
  d.shape = Shape{1, 8, 8};
  d.classes = 4;
  d.images.resize(64, n);
  d.labels.resize(static_cast<std::size_t>(n));
  Rng r(seed);
  for (Index i = 0; i < n; ++i) {
    const auto y = static_cast<std::uint8_t>(r.below(4));
    d.labels[static_cast<std::size_t>(i)] = y;
    for (Index p = 0; p < 64; ++p)
      d.images(p, i) = static_cast<float>(0.3 * r.normal() + (p / 16 == y ? 1.0 : 0.0));
  }
  return d;
}

nn::Model<float> client_model() {
  auto m = nn::make_model<float>("lenet300_100", Shape{1, 8, 8}, 4);
  REQUIRE(m);
  m->init(11);
  return std::move(*m);
}

}  // namespace

TEST_CASE("train_local: plain SGD is nn::train_classifier; steps, examples, loss", "[fl][client]") {
  const auto local = synthetic_local(50, 5);
  fl::ClientInstruction ins;
  ins.client = 7;
  ins.config.lr = 0.05;
  ins.config.momentum = 0.9;
  ins.config.epochs = 2;
  ins.config.batch = 16;
  fl::LocalTrainOptions<float> o;
  o.seed = 99;
  o.loss_before = true;
  auto m = client_model();
  const Vector<float> start = m.params();
  auto r = fl::train_local(m, local, ins, o);
  REQUIRE(r);

  // the same training by hand
  auto ref = client_model();
  const double loss0 = nn::evaluate(ref, local.images, local.labels, 1000).loss;
  nn::SgdOptions so;
  so.lr = 0.05;
  so.momentum = 0.9;
  nn::Sgd<float> opt(so);
  nn::TrainOptions to;
  to.epochs = 2;
  to.batch = 16;
  to.seed = 99;
  const auto rep = nn::train_classifier(ref, opt, local.images, local.labels, to);
  CHECK(r->update.params == ref.params());  // bit for bit
  CHECK(m.params() == ref.params());
  CHECK(r->update.params != start);
  CHECK(r->update.client == 7);
  CHECK(r->update.num_examples == 50);
  CHECK(r->update.local_steps == 4 * 2);  // ceil(50 / 16) batches, 2 epochs
  CHECK(r->update.loss_before == loss0);
  CHECK(r->last_loss == rep.epochs.back().loss);
  CHECK(r->update.control_delta.size() == 0);
}

TEST_CASE("train_local: FedProx keeps the model nearer the global one; SCAFFOLD returns delta c_i", "[fl][client]") {
  const auto local = synthetic_local(40, 6);
  fl::ClientInstruction ins;
  ins.config.lr = 0.1;
  ins.config.epochs = 3;
  ins.config.batch = 8;
  fl::LocalTrainOptions<float> o;
  auto plain = client_model();
  const Vector<float> global = plain.params();
  auto rp = fl::train_local(plain, local, ins, o);
  REQUIRE(rp);
  ins.config.prox_mu = 5.0;
  auto prox = client_model();
  auto rx = fl::train_local(prox, local, ins, o);
  REQUIRE(rx);
  CHECK((rx->update.params - global).norm() < 0.8 * (rp->update.params - global).norm());

  ins.config.prox_mu = 0.0;
  ins.config.scaffold = true;
  fl::ScaffoldClientState<float> st;
  const Vector<float> c = Vector<float>::Constant(global.size(), 0.01f);
  o.scaffold = &st;
  o.server_c = std::span<const float>(c.data(), static_cast<std::size_t>(c.size()));
  auto sm = client_model();
  auto rs = fl::train_local(sm, local, ins, o);
  REQUIRE(rs);
  REQUIRE(rs->update.control_delta.size() == global.size());
  // option II: c_i+ = (x - y) / (K lr) - c + c_i with c_i = 0, delta = c_i+ - 0
  const Vector<double> expect = ((global - rs->update.params).cast<double>() / (rs->update.local_steps * 0.1)) -
                                c.cast<double>();
  CHECK((rs->update.control_delta.cast<double>() - expect).cwiseAbs().maxCoeff() < 1e-4);
  CHECK(st.control().size() == global.size());
  CHECK(rs->update.params != rp->update.params);  // the correction changed the path
}

TEST_CASE("train_local: a bad config is an error and trains nothing", "[fl][client]") {
  const auto local = synthetic_local(20, 7);
  struct Row {
    const char* what;
    double lr;
    int epochs;
    Index batch;
    bool scaffold;
    const char* needle;
  };
  const Row rows[] = {
      {"zero lr", 0.0, 1, 8, false, "learning rate"},
      {"NaN lr", std::nan(""), 1, 8, false, "learning rate"},
      {"infinite lr", std::numeric_limits<double>::infinity(), 1, 8, false, "learning rate"},
      {"zero epochs", 0.1, 0, 8, false, "epochs and batch"},
      {"zero batch", 0.1, 1, 0, false, "epochs and batch"},
      {"SCAFFOLD without state", 0.1, 1, 8, true, "no client control state"},
  };
  for (const auto& row : rows) {
    SECTION(row.what) {
      fl::ClientInstruction ins;
      ins.client = 3;
      ins.config.lr = row.lr;
      ins.config.epochs = row.epochs;
      ins.config.batch = row.batch;
      ins.config.scaffold = row.scaffold;
      auto m = client_model();
      const Vector<float> before = m.params();
      auto r = fl::train_local(m, local, ins, fl::LocalTrainOptions<float>{});
      REQUIRE_FALSE(r);
      CHECK(r.error().code == Errc::invalid_argument);
      CHECK_THAT(r.error().message, Catch::Contains("client 3") && Catch::Contains(row.needle));
      CHECK(m.params() == before);
    }
  }
}
