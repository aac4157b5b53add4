// Privacy accounting: Renyi differential privacy (RDP) of the Poisson-subsampled Gaussian
// mechanism (Mironov, Talwar, Zhang 2019), composed over steps by adding RDP order by order,
// and converted to (epsilon, delta) with the tight conversion of Balle et al. 2020
// (Canonne, Kamath, Steinke 2020):
//   epsilon = min over orders a of  rdp(a) + log((a - 1) / a) - (log delta + log a) / (a - 1).
// Shared by the aggregator (client-level DP, one mechanism per server step) and the worker
// (record-level DP-SGD, one mechanism per local step). No I/O, no LibTorch.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "schema/status.h"

namespace fedlora::privacy {

// The orders accounted: 1.1, 1.2, ..., 10.9 and 12, 13, ..., 63.
const std::vector<double>& DefaultOrders();

// RDP at order `alpha` (> 1) of one application of the Gaussian mechanism with noise
// multiplier `sigma` (noise standard deviation over L2 sensitivity) on a Poisson subsample of
// rate `q` in [0, 1]. q = 1 is the plain Gaussian mechanism, alpha / (2 sigma^2); sigma = 0
// is +infinity (no privacy); q = 0 is 0.
double SubsampledGaussianRdp(double q, double sigma, double alpha);

struct EpsilonAt {
  double epsilon = 0;  // +infinity when no order gives a finite bound
  double order = 0;    // the order that gave it
};
// Errors: kInvalidArgument (delta outside (0, 1), orders and rdp of different lengths).
Result<EpsilonAt> EpsilonFromRdp(std::span<const double> orders, std::span<const double> rdp, double delta);

// RDP composed over steps, at DefaultOrders(). Copyable; holds only the per-order sums.
class RdpAccountant {
 public:
  RdpAccountant();
  // `steps` applications of the subsampled Gaussian mechanism (q, sigma).
  // Errors: kInvalidArgument (q outside [0, 1], sigma negative or not finite).
  Status Compose(double q, double sigma, uint64_t steps = 1);
  // The (epsilon, delta) guarantee of everything composed so far.
  Result<EpsilonAt> Epsilon(double delta) const;
  const std::vector<double>& rdp() const { return rdp_; }
  // Restores per-order sums (from a ledger). Errors: kInvalidArgument (wrong length, negative).
  Status Restore(std::vector<double> rdp);

 private:
  std::vector<double> rdp_;
};

// The smallest noise multiplier (within relative 1e-6) for which `steps` applications at
// sampling rate q stay within (target_epsilon, delta), by bisection.
// Errors: kInvalidArgument (bad ranges), kOutOfRange (not reachable with sigma <= 1e4).
Result<double> NoiseForEpsilon(double q, uint64_t steps, double target_epsilon, double delta);

}  // namespace fedlora::privacy
