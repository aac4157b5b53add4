#include "aggregator/accountant.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>

namespace fedlora::privacy {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// log(exp(a) + exp(b)).
double LogAdd(double a, double b) {
  if (a == -kInf) return b;
  if (b == -kInf) return a;
  const double hi = std::max(a, b);
  return hi + std::log1p(std::exp(std::min(a, b) - hi));
}

// A sum of signed terms given by their logarithms, kept as sign and log magnitude so that
// terms far beyond the range of a double still add up.
class SignedLogSum {
 public:
  void Add(int sign, double log_x) {
    if (sign == 0 || log_x == -kInf) return;
    if (sign_ == 0) {
      sign_ = sign;
      log_ = log_x;
    } else if (sign == sign_) {
      log_ = LogAdd(log_, log_x);
    } else if (log_x > log_) {
      log_ = log_x + std::log1p(-std::exp(log_ - log_x));
      sign_ = sign;
    } else if (log_x < log_) {
      log_ = log_ + std::log1p(-std::exp(log_x - log_));
    } else {
      sign_ = 0;
      log_ = -kInf;
    }
  }
  int sign() const { return sign_; }
  double log() const { return log_; }

 private:
  int sign_ = 0;
  double log_ = -kInf;
};

// log(erfc(x)), accurate where erfc underflows (x > 25: the asymptotic series).
double LogErfc(double x) {
  if (x < 25) return std::log(std::erfc(x));
  const double r = 1.0 / (x * x);
  return -x * x - std::log(x) - 0.5 * std::log(std::numbers::pi) + std::log1p(-0.5 * r + 0.75 * r * r - 1.875 * r * r * r);
}

// log A_alpha for an integer order: A = sum_k C(a, k) (1 - q)^(a - k) q^k exp((k^2 - k) / (2 sigma^2)).
double LogAInteger(double q, double sigma, int alpha) {
  double log_a = -kInf;
  for (int k = 0; k <= alpha; ++k) {
    const double log_coef = std::lgamma(alpha + 1.0) - std::lgamma(k + 1.0) - std::lgamma(alpha - k + 1.0);
    const double term = log_coef + (alpha - k) * std::log1p(-q) + k * std::log(q) +
                        (static_cast<double>(k) * k - k) / (2 * sigma * sigma);
    log_a = LogAdd(log_a, term);
  }
  return log_a;
}

// log A_alpha for a fractional order, by the two-sided series of Mironov, Talwar and Zhang
// (2019, section 3.3) split at z0 = sigma^2 log(1/q - 1) + 1/2; the generalised binomial
// coefficients C(alpha, i) alternate in sign once i > alpha.
double LogAFractional(double q, double sigma, double alpha) {
  SignedLogSum a0, a1;
  const double z0 = sigma * sigma * std::log(1 / q - 1) + 0.5;
  const double s2 = 2 * sigma * sigma;
  const double root2_sigma = std::sqrt(2.0) * sigma;
  double log_coef = 0;  // log |C(alpha, i)|
  int sign = 1;         // sign of C(alpha, i)
  for (int i = 0; i < 100000; ++i) {
    if (i > 0) {
      const double factor = (alpha - i + 1) / i;
      log_coef += std::log(std::abs(factor));
      if (factor < 0) sign = -sign;
    }
    const double j = alpha - i;
    const double log_t0 = log_coef + i * std::log(q) + j * std::log1p(-q);
    const double log_t1 = log_coef + j * std::log(q) + i * std::log1p(-q);
    const double log_s0 = log_t0 + (static_cast<double>(i) * i - i) / s2 + std::log(0.5) + LogErfc((i - z0) / root2_sigma);
    const double log_s1 = log_t1 + (j * j - j) / s2 + std::log(0.5) + LogErfc((z0 - j) / root2_sigma);
    a0.Add(sign, log_s0);
    a1.Add(sign, log_s1);
    if (i > alpha && std::max(log_s0, log_s1) < -30) break;
  }
  SignedLogSum total;
  total.Add(a0.sign(), a0.log());
  total.Add(a1.sign(), a1.log());
  return total.sign() > 0 ? total.log() : -kInf;
}

}  // namespace

const std::vector<double>& DefaultOrders() {
  static const std::vector<double> orders = [] {
    std::vector<double> o;
    for (int i = 11; i <= 109; ++i) o.push_back(i / 10.0);
    for (int i = 12; i <= 63; ++i) o.push_back(i);
    return o;
  }();
  return orders;
}

double SubsampledGaussianRdp(double q, double sigma, double alpha) {
  if (q <= 0) return 0;
  if (sigma <= 0) return kInf;
  if (q >= 1) return alpha / (2 * sigma * sigma);
  const double log_a = alpha == std::floor(alpha) ? LogAInteger(q, sigma, static_cast<int>(alpha))
                                                   : LogAFractional(q, sigma, alpha);
  return std::max(0.0, log_a / (alpha - 1));
}

Result<EpsilonAt> EpsilonFromRdp(std::span<const double> orders, std::span<const double> rdp, double delta) {
  if (!(delta > 0 && delta < 1)) return InvalidArgument(fmt::format("delta {} is not in (0, 1)", delta));
  if (orders.size() != rdp.size()) return InvalidArgument("orders and RDP values differ in length");
  // Nothing released: 0-DP (the conversion alone would still charge log-order terms).
  if (std::all_of(rdp.begin(), rdp.end(), [](double r) { return r == 0; })) return EpsilonAt{0, 0};
  EpsilonAt best{kInf, 0};
  for (size_t i = 0; i < orders.size(); ++i) {
    const double a = orders[i];
    if (!(a > 1) || !std::isfinite(rdp[i])) continue;
    const double eps = std::max(0.0, rdp[i] + std::log1p(-1 / a) - (std::log(delta) + std::log(a)) / (a - 1));
    if (eps < best.epsilon) best = {eps, a};
  }
  return best;
}

RdpAccountant::RdpAccountant() : rdp_(DefaultOrders().size(), 0.0) {}

Status RdpAccountant::Compose(double q, double sigma, uint64_t steps) {
  if (!(q >= 0 && q <= 1)) return InvalidArgument(fmt::format("sampling rate {} is not in [0, 1]", q));
  if (!(sigma >= 0) || !std::isfinite(sigma)) return InvalidArgument(fmt::format("noise multiplier {} is invalid", sigma));
  const auto& orders = DefaultOrders();
  for (size_t i = 0; i < orders.size(); ++i) rdp_[i] += static_cast<double>(steps) * SubsampledGaussianRdp(q, sigma, orders[i]);
  return Status::Ok();
}

Result<EpsilonAt> RdpAccountant::Epsilon(double delta) const { return EpsilonFromRdp(DefaultOrders(), rdp_, delta); }

Status RdpAccountant::Restore(std::vector<double> rdp) {
  if (rdp.size() != DefaultOrders().size()) {
    return InvalidArgument(fmt::format("{} RDP values for {} orders", rdp.size(), DefaultOrders().size()));
  }
  for (double v : rdp) {
    if (!(v >= 0)) return InvalidArgument("RDP values must be non-negative");
  }
  rdp_ = std::move(rdp);
  return Status::Ok();
}

Result<double> NoiseForEpsilon(double q, uint64_t steps, double target_epsilon, double delta) {
  if (!(q > 0 && q <= 1)) return InvalidArgument(fmt::format("sampling rate {} is not in (0, 1]", q));
  if (steps == 0) return InvalidArgument("steps must be at least 1");
  if (!(target_epsilon > 0) || !std::isfinite(target_epsilon)) {
    return InvalidArgument(fmt::format("target epsilon {} must be positive and finite", target_epsilon));
  }
  auto epsilon_at = [&](double sigma) -> Result<double> {
    RdpAccountant a;
    RETURN_IF_ERROR(a.Compose(q, sigma, steps));
    ASSIGN_OR_RETURN(EpsilonAt e, a.Epsilon(delta));
    return e.epsilon;
  };
  double hi = 1;
  for (;;) {
    ASSIGN_OR_RETURN(double e, epsilon_at(hi));
    if (e <= target_epsilon) break;
    hi *= 2;
    if (hi > 1e4) {
      return Status(Code::kOutOfRange, fmt::format("epsilon {} is out of reach with a noise multiplier up to 1e4 "
                                                   "(q {}, {} steps, delta {})", target_epsilon, q, steps, delta));
    }
  }
  double lo = 0;
  while (hi - lo > 1e-6 * hi) {
    const double mid = 0.5 * (lo + hi);
    ASSIGN_OR_RETURN(double e, epsilon_at(mid));
    (e <= target_epsilon ? hi : lo) = mid;
  }
  return hi;
}

}  // namespace fedlora::privacy
