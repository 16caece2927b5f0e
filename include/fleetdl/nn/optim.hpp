// fleetdl/nn/optim.hpp — optimizers over the flat parameter buffer (SGD with
// momentum, Nesterov and weight decay; Adam; AdamW) and learning-rate
// schedules (step, cosine). Update rules match torch.optim.
#pragma once

#include "fleetdl/core/tensor.hpp"

#include <cmath>
#include <memory>
#include <string>

namespace fleetdl::nn {

template <class S>
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  /// One update of params from grads (both the model's flat buffers).
  virtual void step(VectorMap<S> params, ConstVectorMap<S> grads) = 0;
  virtual void reset() = 0;  ///< forget momentum / moment estimates
  double lr() const { return lr_; }
  void set_lr(double lr) { lr_ = lr; }

 protected:
  explicit Optimizer(double lr) : lr_(lr) {}
  double lr_;
};

struct SgdOptions {
  double lr = 0.01;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

/// torch.optim.SGD: g += wd*p; buf = m*buf + (1-dampening)*g (buf = g at the
/// first step); g = nesterov ? g + m*buf : buf; p -= lr*g.
template <class S>
class Sgd final : public Optimizer<S> {
 public:
  explicit Sgd(const SgdOptions& o) : Optimizer<S>(o.lr), o_(o) {}
  void step(VectorMap<S> p, ConstVectorMap<S> g) override {
    Vector<S> d = g;
    if (o_.weight_decay != 0.0) d += static_cast<S>(o_.weight_decay) * p;
    if (o_.momentum != 0.0) {
      if (buf_.size() != p.size()) {
        buf_ = d;
      } else {
        buf_ = static_cast<S>(o_.momentum) * buf_ + static_cast<S>(1.0 - o_.dampening) * d;
      }
      if (o_.nesterov)
        d += static_cast<S>(o_.momentum) * buf_;
      else
        d = buf_;
    }
    p -= static_cast<S>(this->lr_) * d;
  }
  void reset() override { buf_.resize(0); }
  const Vector<S>& momentum_buffer() const { return buf_; }

 private:
  SgdOptions o_;
  Vector<S> buf_;
};

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool decoupled = false;  ///< true: AdamW (p *= 1 - lr*wd before the update)
};

/// torch.optim.Adam / AdamW (amsgrad off).
template <class S>
class Adam final : public Optimizer<S> {
 public:
  explicit Adam(const AdamOptions& o) : Optimizer<S>(o.lr), o_(o) {}
  void step(VectorMap<S> p, ConstVectorMap<S> g) override {
    if (m_.size() != p.size()) {
      m_.setZero(p.size());
      v_.setZero(p.size());
      t_ = 0;
    }
    ++t_;
    const S b1 = static_cast<S>(o_.beta1), b2 = static_cast<S>(o_.beta2);
    const S lr = static_cast<S>(this->lr_);
    const S bc1 = static_cast<S>(1.0 - std::pow(o_.beta1, static_cast<double>(t_)));
    const S bc2s = static_cast<S>(std::sqrt(1.0 - std::pow(o_.beta2, static_cast<double>(t_))));
    const S eps = static_cast<S>(o_.eps), wd = static_cast<S>(o_.weight_decay);
    const S step = lr / bc1;
    const Index n = p.size();
    S* pp = p.data();
    const S* gp = g.data();
    S* mp = m_.data();
    S* vp = v_.data();
    for (Index i = 0; i < n; ++i) {
      S gi = gp[i];
      if (o_.weight_decay != 0.0) {
        if (o_.decoupled)
          pp[i] *= S(1) - lr * wd;
        else
          gi += wd * pp[i];
      }
      mp[i] = b1 * mp[i] + (S(1) - b1) * gi;
      vp[i] = b2 * vp[i] + (S(1) - b2) * gi * gi;
      pp[i] -= step * mp[i] / (std::sqrt(vp[i]) / bc2s + eps);
    }
  }
  void reset() override {
    m_.resize(0);
    v_.resize(0);
    t_ = 0;
  }
  long steps() const { return t_; }

 private:
  AdamOptions o_;
  Vector<S> m_, v_;
  long t_ = 0;
};

/// Learning rate at an epoch (or step) for a base rate.
struct LrSchedule {
  enum class Kind { constant, step, cosine } kind = Kind::constant;
  long step_size = 1;     ///< step: decay every step_size epochs
  double gamma = 0.1;     ///< step: multiply by gamma
  long t_max = 1;         ///< cosine: period
  double eta_min = 0.0;   ///< cosine: floor

  static LrSchedule constant() { return {}; }
  static LrSchedule step_lr(long step_size, double gamma) {
    LrSchedule s;
    s.kind = Kind::step;
    s.step_size = step_size;
    s.gamma = gamma;
    return s;
  }
  static LrSchedule cosine(long t_max, double eta_min = 0.0) {
    LrSchedule s;
    s.kind = Kind::cosine;
    s.t_max = t_max;
    s.eta_min = eta_min;
    return s;
  }
  /// torch StepLR: base * gamma^(floor(e/step)); CosineAnnealingLR (closed form):
  /// eta_min + (base - eta_min) * (1 + cos(pi * e / t_max)) / 2 for e <= t_max;
  /// unlike torch, the rate then stays at eta_min instead of rising again.
  double at(double base, long epoch) const {
    switch (kind) {
      case Kind::step: return base * std::pow(gamma, static_cast<double>(epoch / (step_size > 0 ? step_size : 1)));
      case Kind::cosine: {
        constexpr double pi = 3.14159265358979323846;
        const double e = static_cast<double>(epoch > t_max ? t_max : epoch);
        return eta_min + (base - eta_min) * (1.0 + std::cos(pi * e / static_cast<double>(t_max))) / 2.0;
      }
      default: return base;
    }
  }
};

}  // namespace fleetdl::nn
