#include "aggregator/methods/pair_change.h"

#include <algorithm>
#include <cmath>

namespace fedlora::methods {
namespace {

// Adds an update's carried values of a factor (over `ranks`) to a sliced factor pair.
void AddDelta(lowrank::Factors& f, const wire::Tensor& t, const TensorSpec& spec, bool is_a,
              const std::vector<uint32_t>& ranks) {
  const uint32_t r = is_a ? spec.shape[0] : spec.shape[1];
  std::vector<int> position(r, -1);
  for (size_t j = 0; j < ranks.size(); ++j) position[ranks[j]] = static_cast<int>(j);
  ForEachCarried(t, spec, [&](size_t flat, float v) {
    if (is_a) {
      const size_t rank = flat / f.cols;
      f.a[static_cast<size_t>(position[rank]) * f.cols + flat % f.cols] += v;
    } else {
      const size_t rank = flat % r;
      f.b[(flat / r) * f.rank + static_cast<size_t>(position[rank])] += v;
    }
  });
}

}  // namespace

lowrank::Factors Slice(const AdapterState& state, const LoraModule& m, uint32_t r, const std::vector<uint32_t>& ranks) {
  lowrank::Factors f;
  f.rows = m.rows;
  f.cols = m.cols;
  f.rank = static_cast<uint32_t>(ranks.size());
  f.b.resize(static_cast<size_t>(f.rows) * f.rank);
  f.a.resize(static_cast<size_t>(f.rank) * f.cols);
  const auto& a = state.tensors[m.a].values;
  const auto& b = state.tensors[m.b].values;
  for (uint32_t j = 0; j < f.rank; ++j) {
    for (uint32_t c = 0; c < f.cols; ++c) {
      f.a[static_cast<size_t>(j) * f.cols + c] = a[static_cast<size_t>(ranks[j]) * f.cols + c];
    }
    for (uint32_t row = 0; row < f.rows; ++row) {
      f.b[static_cast<size_t>(row) * f.rank + j] = b[static_cast<size_t>(row) * r + ranks[j]];
    }
  }
  return f;
}

std::vector<PairChange> PairChanges(const wire::Update& u, const AdapterState& base, const AdapterSpec& spec,
                                    const LoraLayout& layout) {
  std::vector<PairChange> out;
  for (const CarriedPair& p : CarriedPairs(u, layout)) {
    const LoraModule& mod = layout.modules()[p.module];
    const auto ranks = CarriedRanks(p.a ? *p.a : *p.b, spec.rank);
    PairChange c;
    c.module = p.module;
    c.start = Slice(base, mod, spec.rank, ranks);
    c.end = c.start;
    if (p.a) AddDelta(c.end, *p.a, spec.tensors[mod.a], true, ranks);
    if (p.b) AddDelta(c.end, *p.b, spec.tensors[mod.b], false, ranks);
    out.push_back(std::move(c));
  }
  return out;
}

double ProductNorm(const lowrank::Factors& f) {
  const uint32_t r = f.rank;
  double sum = 0;
  for (uint32_t i = 0; i < r; ++i) {
    for (uint32_t j = 0; j < r; ++j) {
      double bb = 0, aa = 0;
      for (uint32_t row = 0; row < f.rows; ++row) {
        bb += f.b[static_cast<size_t>(row) * r + i] * f.b[static_cast<size_t>(row) * r + j];
      }
      for (uint32_t c = 0; c < f.cols; ++c) {
        aa += f.a[static_cast<size_t>(i) * f.cols + c] * f.a[static_cast<size_t>(j) * f.cols + c];
      }
      sum += bb * aa;
    }
  }
  return std::sqrt(std::max(0.0, sum));
}

double StepNorm(const AdapterState& before, const AdapterState& after) {
  double sq = 0;
  for (size_t t = 0; t < before.tensors.size(); ++t) {
    const auto& x = before.tensors[t].values;
    const auto& y = after.tensors[t].values;
    for (size_t i = 0; i < x.size(); ++i) {
      const double d = static_cast<double>(y[i]) - x[i];
      sq += d * d;
    }
  }
  return std::sqrt(sq);
}

}  // namespace fedlora::methods
