// The one percentile definition behind fedlora's latency figures (ops/bench/ingest, its peer
// relays, `fedlora loadgen` and so ops/bench/scale), so that a p99 from one benchmark compares
// with a p99 from another.
//
// Nearest rank, no interpolation: the p-th percentile of n samples is the ceil(p * n)-th
// smallest (1-based), and the smallest for p = 0. So p50 of {1..100} is 50, p99 is 99, p100 is
// 100, and every reported figure is a latency some request actually saw.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

namespace fedlora::observe {

// p in [0, 1]; values outside are clamped, NaN counts as 0. Empty input returns 0, not NaN: the
// callers write figures to JSON, where NaN has no spelling. Selects in O(n) in a copy of its
// own, so the caller's samples stay as they are.
inline double Percentile(std::span<const double> values, double p) {
  if (values.empty()) return 0;
  std::vector<double> v(values.begin(), values.end());
  const double n = static_cast<double>(v.size());
  size_t index = 0;
  if (p > 0) {
    // p * n is inexact in binary (0.07 * 100 is 7.000000000000001): shaving a relative 1e-12
    // keeps its ceil from skipping to the next rank; no p a caller writes lies that close above
    // a whole rank.
    const double rank = std::ceil(std::min(p, 1.0) * n * (1 - 1e-12));
    index = static_cast<size_t>(std::clamp(rank, 1.0, n)) - 1;
  }
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(index), v.end());
  return v[index];
}

}  // namespace fedlora::observe
