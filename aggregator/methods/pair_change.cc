#include "aggregator/methods/pair_change.h"

#include <algorithm>
#include <cmath>

namespace fedlora::methods {
namespace {

// Adds an update's carried values of a factor (over `ranks`) to a sliced factor pair.
void AddDelta(lowrank::Factors& f, const wire::Tensor& t, const TensorSpec& spec, bool is_a,
              const std::vector<uint32_t>& ranks, std::vector<int>& position) {
  const uint32_t r = is_a ? spec.shape[0] : spec.shape[1];
  position.assign(r, -1);
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

// Slice into `f`, reusing its buffers.
void SliceInto(lowrank::Factors& f, const AdapterState& state, const LoraModule& m, uint32_t r,
               const std::vector<uint32_t>& ranks) {
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
  }
  for (uint32_t row = 0; row < f.rows; ++row) {
    for (uint32_t j = 0; j < f.rank; ++j) {
      f.b[static_cast<size_t>(row) * f.rank + j] = b[static_cast<size_t>(row) * r + ranks[j]];
    }
  }
}

lowrank::Factors Slice(const AdapterState& state, const LoraModule& m, uint32_t r, const std::vector<uint32_t>& ranks) {
  lowrank::Factors f;
  SliceInto(f, state, m, r, ranks);
  return f;
}

std::vector<PairChange> PairChanges(const wire::Update& u, const AdapterState& base, const AdapterSpec& spec,
                                    const LoraLayout& layout) {
  std::vector<PairChange> out;
  std::vector<int> position;
  PairChangesInto(u, base, spec, layout, out, position);
  return out;
}

void PairChangesInto(const wire::Update& u, const AdapterState& base, const AdapterSpec& spec,
                     const LoraLayout& layout, std::vector<PairChange>& out, std::vector<int>& position) {
  size_t n = 0;
  for (const CarriedPair& p : CarriedPairs(u, layout)) {
    const LoraModule& mod = layout.modules()[p.module];
    const auto ranks = CarriedRanks(p.a ? *p.a : *p.b, spec.rank);
    if (n == out.size()) out.emplace_back();
    PairChange& c = out[n++];
    c.module = p.module;
    SliceInto(c.start, base, mod, spec.rank, ranks);
    c.end = c.start;  // a copy into memory it already has
    if (p.a) AddDelta(c.end, *p.a, spec.tensors[mod.a], true, ranks, position);
    if (p.b) AddDelta(c.end, *p.b, spec.tensors[mod.b], false, ranks, position);
  }
  out.resize(n);
}

namespace {

// g += sum over the `rows` rows v of `x` (rows x R, row-major) of v v^T, each entry summed over
// the rows in order. R a compile-time constant: the inner loops have a fixed length, which GCC
// vectorises at -O2; each entry's sum is unchanged by that (the lanes are different entries).
template <uint32_t R>
void AddGram(const double* __restrict x, size_t rows, double* __restrict g) {
  for (size_t row = 0; row < rows; ++row) {
    const double* v = x + row * R;
    for (uint32_t i = 0; i < R; ++i) {
      const double vi = v[i];
      double* gi = g + static_cast<size_t>(i) * R;
      for (uint32_t j = 0; j < R; ++j) gi[j] += vi * v[j];
    }
  }
}

void AddGram(const double* x, size_t rows, uint32_t r, double* g) {
  switch (r) {
    case 4: return AddGram<4>(x, rows, g);
    case 8: return AddGram<8>(x, rows, g);
    case 16: return AddGram<16>(x, rows, g);
    case 32: return AddGram<32>(x, rows, g);
    case 64: return AddGram<64>(x, rows, g);
    default: break;
  }
  for (size_t row = 0; row < rows; ++row) {
    const double* v = x + row * r;
    for (uint32_t i = 0; i < r; ++i) {
      for (uint32_t j = 0; j < r; ++j) g[static_cast<size_t>(i) * r + j] += v[i] * v[j];
    }
  }
}

}  // namespace

double ProductNorm(const lowrank::Factors& f, PairScratch& scratch) {
  const uint32_t r = f.rank;
  // (B^T B)_ij = sum over rows of B_ri B_rj, and (A A^T)_ij = sum over columns of A_ic A_jc (A
  // read transposed, so both are sums of outer products of contiguous rows): every entry summed
  // in the order the direct double loop over i, j and then rows (columns) takes, so the norm is
  // the same to the last bit.
  auto& gb = scratch.gram_b;
  auto& ga = scratch.gram_a;
  gb.assign(static_cast<size_t>(r) * r, 0.0);
  ga.assign(static_cast<size_t>(r) * r, 0.0);
  AddGram(f.b.data(), f.rows, r, gb.data());
  auto& at = scratch.transposed;
  at.resize(static_cast<size_t>(f.cols) * r);
  for (uint32_t i = 0; i < r; ++i) {
    for (uint32_t c = 0; c < f.cols; ++c) at[static_cast<size_t>(c) * r + i] = f.a[static_cast<size_t>(i) * f.cols + c];
  }
  AddGram(at.data(), f.cols, r, ga.data());
  double sum = 0;
  for (size_t k = 0; k < gb.size(); ++k) sum += gb[k] * ga[k];
  return std::sqrt(std::max(0.0, sum));
}

double ProductNorm(const lowrank::Factors& f) {
  PairScratch scratch;
  return ProductNorm(f, scratch);
}

std::vector<double> EndProductNorms(const wire::Update& u, const AdapterState& base, const AdapterSpec& spec,
                                    const LoraLayout& layout, PairScratch& scratch) {
  std::vector<double> norms(layout.modules().size(), -1.0);
  for (const CarriedPair& p : CarriedPairs(u, layout)) {
    const LoraModule& mod = layout.modules()[p.module];
    const auto ranks = CarriedRanks(p.a ? *p.a : *p.b, spec.rank);
    SliceInto(scratch.end, base, mod, spec.rank, ranks);
    if (p.a) AddDelta(scratch.end, *p.a, spec.tensors[mod.a], true, ranks, scratch.position);
    if (p.b) AddDelta(scratch.end, *p.b, spec.tensors[mod.b], false, ranks, scratch.position);
    norms[p.module] = ProductNorm(scratch.end, scratch);
  }
  return norms;
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
