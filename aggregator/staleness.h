// Staleness rules of asynchronous aggregation (FedAsync, Xie et al. 2019; FedBuff, Nguyen
// et al. 2022). The staleness of an update is tau = v_now - v_base: how many versions were
// committed after the one it was trained from. s(tau) down-weights it; past max_staleness
// it is dropped (and the drop recorded in the lineage).
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "schema/status.h"

namespace fedlora::aggregator {

enum class StalenessFn {
  kConstant,    // s = 1
  kPolynomial,  // s = (tau + 1)^-a
  kHinge,       // s = 1 if tau <= b else 1 / (a (tau - b) + 1)
};

struct StalenessOptions {
  StalenessFn fn = StalenessFn::kPolynomial;
  // Polynomial exponent or hinge slope; unset: the function's own default (DefaultStalenessA).
  std::optional<double> a;
  double b = 4;                  // hinge: staleness tolerated at full weight
  uint32_t max_staleness = 20;   // updates staler than this are dropped
};

double StalenessWeight(const StalenessOptions& options, uint64_t tau);

// The defaults of FedAsync (Xie et al. 2019): polynomial exponent 0.5, hinge slope 10 (with
// b = 4: weight 1/11 at staleness 5).
double DefaultStalenessA(StalenessFn fn);
// options.a, or the function's default.
double StalenessA(const StalenessOptions& options);

// "constant", "polynomial", "hinge". Errors: kInvalidArgument naming the accepted values.
Result<StalenessFn> ParseStalenessFn(std::string_view name);
std::string_view StalenessFnName(StalenessFn fn);

}  // namespace fedlora::aggregator
