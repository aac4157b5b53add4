#include "aggregator/staleness.h"

#include <fmt/format.h>

#include <cmath>

namespace fedlora::aggregator {

double DefaultStalenessA(StalenessFn fn) { return fn == StalenessFn::kHinge ? 10.0 : 0.5; }

double StalenessA(const StalenessOptions& o) { return o.a.value_or(DefaultStalenessA(o.fn)); }

double StalenessWeight(const StalenessOptions& o, uint64_t tau) {
  const double t = static_cast<double>(tau);
  const double a = StalenessA(o);
  switch (o.fn) {
    case StalenessFn::kConstant:
      return 1.0;
    case StalenessFn::kPolynomial:
      return std::pow(t + 1.0, -a);
    case StalenessFn::kHinge:
      return t <= o.b ? 1.0 : 1.0 / (a * (t - o.b) + 1.0);
  }
  return 1.0;
}

Result<StalenessFn> ParseStalenessFn(std::string_view name) {
  if (name == "constant") return StalenessFn::kConstant;
  if (name == "polynomial") return StalenessFn::kPolynomial;
  if (name == "hinge") return StalenessFn::kHinge;
  return InvalidArgument(fmt::format("unknown staleness function '{}' (constant, polynomial, hinge)", name));
}

std::string_view StalenessFnName(StalenessFn fn) {
  switch (fn) {
    case StalenessFn::kConstant: return "constant";
    case StalenessFn::kPolynomial: return "polynomial";
    case StalenessFn::kHinge: return "hinge";
  }
  return "?";
}

}  // namespace fedlora::aggregator
