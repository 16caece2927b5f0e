// tests/unit/test_nn_optim.cpp — SGD (plain, momentum, Nesterov, weight
// decay, dampening), Adam, Adam with L2 decay and AdamW against updates worked
// out by hand from the torch.optim update rules, and the StepLR / cosine
// learning-rate schedules (also as the training loop applies them), and
// train_classifier's loss hook (used, and bit-identical to the default when
// it is cross-entropy).
//
// Every case starts from p0 = [1, -2, 0.5] with gradients
// g1 = [0.5, 0.25, -1] (first step) and g2 = [-0.5, 1, 0.25] (second step),
// lr = 0.1. Expected values are literals; the comments show the arithmetic.
#include "fleetdl/nn.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

namespace {

using fleetdl::Index;
using VecD = fleetdl::Vector<double>;
namespace nn = fleetdl::nn;

constexpr double kTol = 1e-12;

VecD vec(std::initializer_list<double> v) {
  VecD r(static_cast<Index>(v.size()));
  Index i = 0;
  for (double x : v) r[i++] = x;
  return r;
}

const VecD p0 = vec({1.0, -2.0, 0.5});
const VecD g1 = vec({0.5, 0.25, -1.0});
const VecD g2 = vec({-0.5, 1.0, 0.25});

void step(nn::Optimizer<double>& opt, VecD& p, const VecD& g) {
  opt.step(fleetdl::VectorMap<double>(p.data(), p.size()), fleetdl::ConstVectorMap<double>(g.data(), g.size()));
}

void require_values(const VecD& got, std::initializer_list<double> want, const char* what) {
  INFO(what);
  REQUIRE(got.size() == static_cast<Index>(want.size()));
  Index i = 0;
  for (double w : want) {
    INFO("element " << i << ": got " << got[i] << ", want " << w);
    CHECK(std::abs(got[i] - w) <= kTol);
    ++i;
  }
}

}  // namespace

TEST_CASE("sgd: plain step", "[nn][optim]") {
  nn::SgdOptions o;
  o.lr = 0.1;
  nn::Sgd<double> sgd(o);
  VecD p = p0;
  step(sgd, p, g1);
  // p1 = p0 - lr*g1 = [1 - 0.05, -2 - 0.025, 0.5 + 0.1]
  require_values(p, {0.95, -2.025, 0.6}, "plain sgd step 1");
  CHECK(sgd.momentum_buffer().size() == 0);  // no momentum, no state
  step(sgd, p, g2);
  // p2 = p1 - lr*g2 = [0.95 + 0.05, -2.025 - 0.1, 0.6 - 0.025]
  require_values(p, {1.0, -2.125, 0.575}, "plain sgd step 2");
}

TEST_CASE("sgd: momentum, first and second step", "[nn][optim]") {
  nn::SgdOptions o;
  o.lr = 0.1;
  o.momentum = 0.9;
  nn::Sgd<double> sgd(o);
  VecD p = p0;
  step(sgd, p, g1);
  // step 1: buf = g1 (torch initialises the buffer with the gradient)
  //         p1 = p0 - 0.1*g1 = [0.95, -2.025, 0.6]
  require_values(p, {0.95, -2.025, 0.6}, "momentum step 1");
  require_values(sgd.momentum_buffer(), {0.5, 0.25, -1.0}, "momentum buffer after step 1");
  step(sgd, p, g2);
  // step 2: buf = 0.9*g1 + g2 = [0.45 - 0.5, 0.225 + 1, -0.9 + 0.25] = [-0.05, 1.225, -0.65]
  //         p2 = p1 - 0.1*buf = [0.95 + 0.005, -2.025 - 0.1225, 0.6 + 0.065]
  require_values(sgd.momentum_buffer(), {-0.05, 1.225, -0.65}, "momentum buffer after step 2");
  require_values(p, {0.955, -2.1475, 0.665}, "momentum step 2");

  // reset() forgets the buffer: the next step is a first step again
  sgd.reset();
  VecD q = p0;
  step(sgd, q, g1);
  require_values(q, {0.95, -2.025, 0.6}, "first step after reset");
}

TEST_CASE("sgd: nesterov", "[nn][optim]") {
  nn::SgdOptions o;
  o.lr = 0.1;
  o.momentum = 0.9;
  o.nesterov = true;
  nn::Sgd<double> sgd(o);
  VecD p = p0;
  step(sgd, p, g1);
  // step 1: buf = g1; d = g1 + 0.9*buf = 1.9*g1 = [0.95, 0.475, -1.9]
  //         p1 = p0 - 0.1*d = [1 - 0.095, -2 - 0.0475, 0.5 + 0.19]
  require_values(p, {0.905, -2.0475, 0.69}, "nesterov step 1");
  step(sgd, p, g2);
  // step 2: buf = 0.9*g1 + g2 = [-0.05, 1.225, -0.65]
  //         d = g2 + 0.9*buf = [-0.5 - 0.045, 1 + 1.1025, 0.25 - 0.585] = [-0.545, 2.1025, -0.335]
  //         p2 = p1 - 0.1*d = [0.905 + 0.0545, -2.0475 - 0.21025, 0.69 + 0.0335]
  require_values(p, {0.9595, -2.25775, 0.7235}, "nesterov step 2");
}

TEST_CASE("sgd: weight decay", "[nn][optim]") {
  nn::SgdOptions o;
  o.lr = 0.1;
  o.weight_decay = 0.01;
  nn::Sgd<double> sgd(o);
  VecD p = p0;
  step(sgd, p, g1);
  // d = g1 + 0.01*p0 = [0.5 + 0.01, 0.25 - 0.02, -1 + 0.005] = [0.51, 0.23, -0.995]
  // p1 = p0 - 0.1*d = [1 - 0.051, -2 - 0.023, 0.5 + 0.0995]
  require_values(p, {0.949, -2.023, 0.5995}, "weight decay step");

  // with momentum 0.9 and weight decay 0.1, two steps: the decay term enters
  // the gradient before the momentum buffer
  nn::SgdOptions m;
  m.lr = 0.1;
  m.momentum = 0.9;
  m.weight_decay = 0.1;
  nn::Sgd<double> sgdm(m);
  VecD q = p0;
  step(sgdm, q, g1);
  // d1 = g1 + 0.1*p0 = [0.6, 0.05, -0.95] = buf; q1 = p0 - 0.1*d1 = [0.94, -2.005, 0.595]
  require_values(q, {0.94, -2.005, 0.595}, "momentum + weight decay step 1");
  step(sgdm, q, g2);
  // d2 = g2 + 0.1*q1 = [-0.5 + 0.094, 1 - 0.2005, 0.25 + 0.0595] = [-0.406, 0.7995, 0.3095]
  // buf = 0.9*d1 + d2 = [0.54 - 0.406, 0.045 + 0.7995, -0.855 + 0.3095] = [0.134, 0.8445, -0.5455]
  // q2 = q1 - 0.1*buf = [0.94 - 0.0134, -2.005 - 0.08445, 0.595 + 0.05455]
  require_values(q, {0.9266, -2.08945, 0.64955}, "momentum + weight decay step 2");
}

TEST_CASE("sgd: dampening", "[nn][optim]") {
  nn::SgdOptions o;
  o.lr = 0.1;
  o.momentum = 0.9;
  o.dampening = 0.5;
  nn::Sgd<double> sgd(o);
  VecD p = p0;
  step(sgd, p, g1);
  // step 1: torch ignores dampening on the first step: buf = g1
  //         p1 = p0 - 0.1*g1 = [0.95, -2.025, 0.6]
  require_values(p, {0.95, -2.025, 0.6}, "dampening step 1");
  step(sgd, p, g2);
  // step 2: buf = 0.9*g1 + (1 - 0.5)*g2 = [0.45 - 0.25, 0.225 + 0.5, -0.9 + 0.125] = [0.2, 0.725, -0.775]
  //         p2 = p1 - 0.1*buf = [0.95 - 0.02, -2.025 - 0.0725, 0.6 + 0.0775]
  require_values(sgd.momentum_buffer(), {0.2, 0.725, -0.775}, "dampened buffer");
  require_values(p, {0.93, -2.0975, 0.6775}, "dampening step 2");
}

TEST_CASE("adam: first and second step", "[nn][optim]") {
  nn::AdamOptions o;
  o.lr = 0.1;  // beta1 0.9, beta2 0.999, eps 1e-8
  nn::Adam<double> adam(o);
  VecD p = p0;
  step(adam, p, g1);
  CHECK(adam.steps() == 1);
  // step 1: m = 0.1*g1, v = 0.001*g1^2; bias corrections 1 - 0.9 = 0.1 and
  // 1 - 0.999 = 0.001 give m_hat = g1, v_hat = g1^2, so the update is
  // lr * g / (|g| + eps):
  //   [0]: 0.1 * 0.5 / 0.50000001  = 0.09999999800000004 -> 1 - that    = 0.900000002
  //   [1]: 0.1 * 0.25 / 0.25000001 = 0.09999999600000016 -> -2 - that   = -2.099999996
  //   [2]: 0.1 * -1 / 1.00000001   = -0.09999999900000001 -> 0.5 + that = 0.599999999
  require_values(p, {0.90000000199999996, -2.0999999960000002, 0.59999999900000001}, "adam step 1");
  step(adam, p, g2);
  CHECK(adam.steps() == 2);
  // step 2: bias corrections 1 - 0.9^2 = 0.19 and 1 - 0.999^2 = 0.001999.
  //   [0]: m = 0.9*0.05 + 0.1*(-0.5) = -0.005; v = 0.999*0.00025 + 0.001*0.25 = 0.00049975
  //        m_hat = -0.005/0.19 = -0.026315789473684211; v_hat = 0.00049975/0.001999 = 0.25
  //        p = 0.900000002 + 0.1*0.026315789473684211/(0.5 + 1e-8) = 0.90526315978947365
  //   [1]: m = 0.9*0.025 + 0.1*1 = 0.1225; v = 0.999*0.0000625 + 0.001*1 = 0.0010624375
  //        m_hat = 0.64473684210526316; v_hat = 0.53148449224612306, sqrt = 0.72902982946250084
  //        p = -2.099999996 - 0.1*0.64473684210526316/(0.72902982946250084 + 1e-8)
  //          = -2.099999996 - 0.088437647844512753 = -2.1884376438445128
  //   [2]: m = 0.9*(-0.1) + 0.1*0.25 = -0.065; v = 0.999*0.001 + 0.001*0.0625 = 0.0010615
  //        m_hat = -0.34210526315789474; v_hat = 0.53101550775387694, sqrt = 0.72870810874716973
  //        p = 0.599999999 + 0.046946816476541893 = 0.64694681547654189
  require_values(p, {0.90526315978947365, -2.1884376438445129, 0.6469468154765419}, "adam step 2");
}

TEST_CASE("adam: L2 weight decay and AdamW", "[nn][optim]") {
  SECTION("coupled L2 decay: g += wd * p before the moments") {
    nn::AdamOptions o;
    o.lr = 0.1;
    o.weight_decay = 0.1;
    nn::Adam<double> adam(o);
    VecD p = p0;
    step(adam, p, g1);
    // g' = g1 + 0.1*p0 = [0.6, 0.05, -0.95]; step 1 moves by lr*g'/(|g'| + eps):
    //   [0]: 1 - 0.1*0.6/0.60000001 = 1 - 0.099999998333333361 = 0.90000000166666664
    //   [1]: -2 - 0.1*0.05/0.05000001 = -2 - 0.099999980000004 = -2.099999980000004
    //   [2]: 0.5 + 0.1*0.95/0.95000001 = 0.5 + 0.099999998947368432 = 0.59999999894736843
    require_values(p, {0.90000000166666664, -2.099999980000004, 0.59999999894736843}, "adam+L2 step 1");
    step(adam, p, g2);
    // g'' = g2 + 0.1*p1 = [-0.40999999983333334, 0.790000002, 0.30999999989473684]
    //   [0]: m = 0.9*0.06 + 0.1*g''0 = 0.013000000016666666, v = 0.999*0.00036 + 0.001*g''0^2 = 0.00052773999986333
    //        p = p1 - 0.1*(m/0.19)/(sqrt(v/0.001999) + 1e-8) = 0.8866836230649791
    //   [1]: m = 0.08350000019999996, v = 0.00062659750315999937 -> p = -2.1784955115772234
    //   [2]: m = -0.054500000010526316, v = 0.00099769749993473684 -> p = 0.64060222551784998
    require_values(p, {0.8866836230649791, -2.1784955115772234, 0.64060222551784998}, "adam+L2 step 2");
  }
  SECTION("AdamW: p *= 1 - lr*wd, then the plain Adam update") {
    nn::AdamOptions o;
    o.lr = 0.1;
    o.weight_decay = 0.1;
    o.decoupled = true;
    nn::Adam<double> adamw(o);
    VecD p = p0;
    step(adamw, p, g1);
    // decay: p0 * (1 - 0.01) = [0.99, -1.98, 0.495]; the moments see g1 alone,
    // so the update is the plain Adam step 1 (see above):
    //   [0.99 - 0.09999999800000004, -1.98 - 0.09999999600000016, 0.495 + 0.09999999900000001]
    require_values(p, {0.89000000199999996, -2.0799999960000002, 0.59499999900000001}, "adamw step 1");
    step(adamw, p, g2);
    // decay: p1*0.99 = [0.88110000198, -2.05919999604, 0.58904999901]; then the
    // plain Adam step 2 moves by [+0.005263157894736..., -0.088437647844512753, +0.046946816476541893]
    require_values(p, {0.88636315976947365, -2.1476376438845129, 0.6359968154865419}, "adamw step 2");
  }
}

TEST_CASE("adam: reset restarts the moment estimates", "[nn][optim]") {
  nn::AdamOptions o;
  o.lr = 0.1;
  nn::Adam<double> adam(o);
  VecD p = p0;
  step(adam, p, g2);
  step(adam, p, g2);
  adam.reset();
  CHECK(adam.steps() == 0);
  VecD q = p0;
  step(adam, q, g1);
  require_values(q, {0.90000000199999996, -2.0999999960000002, 0.59999999900000001}, "first step after reset");
}

TEST_CASE("optimizers in float follow the double arithmetic", "[nn][optim]") {
  nn::AdamOptions ao;
  ao.lr = 0.1;
  ao.weight_decay = 0.1;
  ao.decoupled = true;
  nn::Adam<float> af(ao);
  nn::Adam<double> ad(ao);
  nn::SgdOptions so;
  so.lr = 0.1;
  so.momentum = 0.9;
  so.nesterov = true;
  so.weight_decay = 0.01;
  nn::Sgd<float> sf(so);
  nn::Sgd<double> sd(so);
  fleetdl::Vector<float> pf = p0.cast<float>(), qf = p0.cast<float>();
  VecD pd = p0, qd = p0;
  for (const VecD* g : {&g1, &g2, &g1}) {
    const fleetdl::Vector<float> gf = g->cast<float>();
    af.step(fleetdl::VectorMap<float>(pf.data(), 3), fleetdl::ConstVectorMap<float>(gf.data(), 3));
    sf.step(fleetdl::VectorMap<float>(qf.data(), 3), fleetdl::ConstVectorMap<float>(gf.data(), 3));
    step(ad, pd, *g);
    step(sd, qd, *g);
  }
  CHECK((pf.cast<double>() - pd).cwiseAbs().maxCoeff() < 1e-5);  // float ulp near 2 is 2.4e-7; Adam divides by sqrt(v)
  CHECK((qf.cast<double>() - qd).cwiseAbs().maxCoeff() < 1e-6);
  CHECK((pd - p0).cwiseAbs().minCoeff() > 0.1);  // the parameters really moved
}

TEST_CASE("lr schedules: constant, StepLR, cosine", "[nn][optim][schedule]") {
  const double base = 0.1;
  SECTION("constant") {
    const auto s = nn::LrSchedule::constant();
    for (long e : {0L, 1L, 7L, 1000L}) CHECK(s.at(base, e) == base);
  }
  SECTION("StepLR: base * gamma^floor(e / step)") {
    const auto s = nn::LrSchedule::step_lr(3, 0.5);
    // e = 0, 1, 2 -> 0.1; 3..5 -> 0.05; 6..8 -> 0.025; 9 -> 0.0125
    const std::vector<std::pair<long, double>> want{{0, 0.1},   {1, 0.1},    {2, 0.1},    {3, 0.05},
                                                    {5, 0.05},  {6, 0.025},  {8, 0.025},  {9, 0.0125}};
    for (const auto& [e, lr] : want) {
      INFO("epoch " << e);
      CHECK(std::abs(s.at(base, e) - lr) <= kTol);
    }
    // gamma 0.1 every 2 epochs: e = 5 -> 0.1 * 0.1^2 = 0.001
    CHECK(std::abs(nn::LrSchedule::step_lr(2, 0.1).at(base, 5) - 0.001) <= kTol);
  }
  SECTION("cosine: eta_min + (base - eta_min)(1 + cos(pi e / T)) / 2") {
    const auto s = nn::LrSchedule::cosine(10, 0.001);
    // base - eta_min = 0.099
    //   e = 0:  cos 0 = 1                          -> 0.001 + 0.099          = 0.1
    //   e = 1:  cos(pi/10)   = 0.95105651629515357 -> 0.001 + 0.099*0.97553  = 0.097577297556610102
    //   e = 3:  cos(3pi/10)  = 0.58778525229247313 -> 0.001 + 0.099*0.79389  = 0.07959536998847742
    //   e = 5:  cos(pi/2)    = 0                   -> 0.001 + 0.0495         = 0.0505
    //   e = 7:  cos(7pi/10)  = -0.58778525229247313 -> 0.001 + 0.099*0.20611 = 0.02140463001152258
    //   e = 10: cos pi = -1                         -> eta_min                = 0.001
    const std::vector<std::pair<long, double>> want{{0, 0.1},
                                                    {1, 0.097577297556610102},
                                                    {3, 0.07959536998847742},
                                                    {5, 0.0505},
                                                    {7, 0.02140463001152258},
                                                    {10, 0.001}};
    for (const auto& [e, lr] : want) {
      INFO("epoch " << e);
      CHECK(std::abs(s.at(base, e) - lr) <= kTol);
    }
    // eta_min 0, T = 4: e = 2 is half the base rate
    CHECK(std::abs(nn::LrSchedule::cosine(4).at(base, 2) - 0.05) <= kTol);
    // monotone non-increasing over [0, T]
    for (long e = 0; e < 10; ++e) CHECK(s.at(base, e + 1) <= s.at(base, e));
  }
}

TEST_CASE("train_classifier applies the schedule per epoch and restores the base rate", "[nn][optim][schedule]") {
  std::vector<nn::NodePtr<double>> v;
  v.push_back(std::make_unique<nn::Dense<double>>(4, 3));
  auto m = nn::Model<double>::create(fleetdl::Shape{4, 1, 1}, std::move(v));
  REQUIRE(m.ok());
  m->init(1);
  fleetdl::Rng rng(2);
  fleetdl::Matrix<double> x(4, 10);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = rng.uniform(-1, 1);
  std::vector<std::uint8_t> y(10);
  for (auto& l : y) l = static_cast<std::uint8_t>(rng.below(3));

  nn::SgdOptions so;
  so.lr = 0.1;
  nn::Sgd<double> sgd(so);
  nn::TrainOptions to;
  to.epochs = 4;
  to.batch = 5;
  to.schedule = nn::LrSchedule::step_lr(2, 0.5);
  std::vector<std::pair<int, double>> seen;
  nn::TrainCallbacks cb;
  cb.on_batch = [&](const nn::TrainProgress& pr) { seen.emplace_back(pr.epoch, pr.lr); };
  const auto rep = nn::train_classifier(*m, sgd, x, y, to, nullptr, cb);
  REQUIRE(rep.epochs.size() == 4);
  REQUIRE(seen.size() == 8);  // 2 batches per epoch
  for (const auto& [e, lr] : seen) {
    INFO("epoch " << e);
    CHECK(std::abs(lr - 0.1 * std::pow(0.5, e / 2)) <= kTol);
  }
  CHECK(sgd.lr() == 0.1);
}

namespace {

// A small classifier with Dropout (so the Dropout stream matters) on 5
// features; the last feature of sample i is i itself, which lets a loss hook
// check that the inputs it gets are the batch its labels belong to.
struct HookFixture {
  fleetdl::Matrix<double> x;
  std::vector<std::uint8_t> y;
  nn::Model<double> model;

  HookFixture() {
    const Index n = 23;  // 3 batches of 8, the last one short
    fleetdl::Rng rng(11);
    x.resize(5, n);
    y.resize(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) {
      for (Index r = 0; r < 4; ++r) x(r, i) = rng.uniform(-1, 1);
      x(4, i) = static_cast<double>(i);
      y[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(rng.below(3));
    }
    std::vector<nn::NodePtr<double>> v;
    v.push_back(std::make_unique<nn::Dense<double>>(5, 6));
    v.push_back(std::make_unique<nn::Activation<double>>(nn::NodeKind::relu));
    v.push_back(std::make_unique<nn::Dropout<double>>(0.3));
    v.push_back(std::make_unique<nn::Dense<double>>(6, 3));
    auto m = nn::Model<double>::create(fleetdl::Shape{5, 1, 1}, std::move(v));
    REQUIRE(m.ok());
    model = std::move(m).value();
    model.init(3);
  }

  /// Train 2 epochs with SGD + momentum and the given hook (empty: default).
  nn::TrainReport train(const nn::LossHook<double>& loss) {
    nn::SgdOptions so;
    so.lr = 0.1;
    so.momentum = 0.9;
    nn::Sgd<double> sgd(so);
    nn::TrainOptions to;
    to.epochs = 2;
    to.batch = 8;
    to.seed = 5;
    return nn::train_classifier(model, sgd, x, y, to, nullptr, {}, {}, loss);
  }
};

}  // namespace

TEST_CASE("train_classifier: a loss hook equal to cross-entropy gives the default run bit for bit", "[nn][train]") {
  HookFixture def, hooked;
  REQUIRE(def.model.params() == hooked.model.params());
  const auto rd = def.train({});
  int calls = 0;
  bool inputs_match_labels = true;
  const auto rh = hooked.train([&](const fleetdl::Matrix<double>& logits, const std::vector<std::uint8_t>& labels,
                                   const fleetdl::Matrix<double>& inputs, fleetdl::Matrix<double>* grad) {
    ++calls;
    REQUIRE(grad != nullptr);
    REQUIRE(inputs.cols() == logits.cols());
    for (Index j = 0; j < inputs.cols(); ++j) {
      const auto i = static_cast<std::size_t>(inputs(4, j));
      inputs_match_labels = inputs_match_labels && hooked.y[i] == labels[static_cast<std::size_t>(j)] &&
                            inputs.col(j) == hooked.x.col(static_cast<Index>(i));
    }
    return nn::softmax_cross_entropy(logits, labels, grad);
  });
  CHECK(calls == 6);  // 2 epochs x 3 batches
  CHECK(inputs_match_labels);
  CHECK(hooked.model.params() == def.model.params());  // same order, same Dropout masks, same steps
  REQUIRE(rh.epochs.size() == rd.epochs.size());
  for (std::size_t e = 0; e < rd.epochs.size(); ++e) {
    CHECK(rh.epochs[e].loss == rd.epochs[e].loss);
    CHECK(rh.epochs[e].train_accuracy == rd.epochs[e].train_accuracy);
  }
  // and training did move the weights
  HookFixture init;
  CHECK((def.model.params() - init.model.params()).norm() > 1e-3);
}

TEST_CASE("train_classifier: the loss hook's gradient and value are the ones used", "[nn][train]") {
  HookFixture def, doubled, flat;
  def.train({});
  // twice the cross-entropy: twice the gradient, so other weights
  doubled.train([](const fleetdl::Matrix<double>& logits, const std::vector<std::uint8_t>& labels,
                   const fleetdl::Matrix<double>&, fleetdl::Matrix<double>* grad) {
    const double l = nn::softmax_cross_entropy(logits, labels, grad);
    *grad *= 2.0;
    return 2.0 * l;
  });
  CHECK((doubled.model.params() - def.model.params()).norm() > 1e-3);
  // a constant loss with a zero gradient: SGD does not move, and the reports
  // average the hook's value
  const auto rf = flat.train([](const fleetdl::Matrix<double>& logits, const std::vector<std::uint8_t>&,
                                const fleetdl::Matrix<double>&, fleetdl::Matrix<double>* grad) {
    grad->setZero(logits.rows(), logits.cols());
    return 7.0;
  });
  HookFixture init;
  CHECK(flat.model.params() == init.model.params());
  REQUIRE(rf.epochs.size() == 2);
  CHECK(std::abs(rf.epochs[0].loss - 7.0) <= kTol);
  CHECK(std::abs(rf.epochs[1].loss - 7.0) <= kTol);
}
