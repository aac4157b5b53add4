// Product-space views of an update's LoRA pairs, for the methods that weigh or fold B A rather
// than each factor (hetlora's norm weight, flora's exact stacking).
// Thread safety: pure functions.
#pragma once

#include <vector>

#include "aggregator/methods/lora_layout.h"
#include "aggregator/methods/lowrank.h"

namespace fedlora::methods {

// Factors B[:, ranks] and A[ranks, :] of module m in `state`, in double precision.
lowrank::Factors Slice(const AdapterState& state, const LoraModule& m, uint32_t rank,
                       const std::vector<uint32_t>& ranks);

// The factors one module of an update starts from (the base version over the carried ranks)
// and ends at (start plus the carried delta).
struct PairChange {
  size_t module = 0;
  lowrank::Factors start, end;
};
// One per module the update carries, in layout order.
std::vector<PairChange> PairChanges(const wire::Update& update, const AdapterState& base, const AdapterSpec& spec,
                                    const LoraLayout& layout);

// ||B A||_F from the r x r Gram matrices: sum_ij (B^T B)_ij (A A^T)_ij.
double ProductNorm(const lowrank::Factors& f);

// sqrt(sum of squared element differences) over every tensor.
double StepNorm(const AdapterState& before, const AdapterState& after);

}  // namespace fedlora::methods
