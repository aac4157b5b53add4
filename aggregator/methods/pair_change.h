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
// The same values into `out`, whose factors keep their memory from one call to the next (at 7B
// shapes an update's factors in double precision, start and end, are four times its bytes:
// fresh memory for them cost a page fault per 4 KiB); `position` is scratch.
void PairChangesInto(const wire::Update& update, const AdapterState& base, const AdapterSpec& spec,
                     const LoraLayout& layout, std::vector<PairChange>& out, std::vector<int>& position);

// ||B A||_F from the r x r Gram matrices: sum_ij (B^T B)_ij (A A^T)_ij, each Gram entry summed
// over rows (columns) in order and the products summed over i, then j, in order (the result of
// the direct double loop, to the last bit, which replays of stored runs rely on).
// O(r^2 (rows + cols)).
double ProductNorm(const lowrank::Factors& f);

// Buffers reused from one update to the next, so that weighing an update by its products
// allocates nothing once they have grown (at 7B shapes the factors of every module in double
// precision are twice the update: allocating them afresh per update cost a page fault per 4 KiB).
struct PairScratch {
  lowrank::Factors end;
  std::vector<double> gram_b, gram_a, transposed;
  std::vector<int> position;
};
// ProductNorm's value, with the Grams in `scratch`.
double ProductNorm(const lowrank::Factors& f, PairScratch& scratch);
// For each module the update carries, in layout order: ProductNorm of its factors after the
// update (PairChanges' `end`), built in `scratch`. Returns one norm per module of the layout,
// -1 for a module the update does not carry.
std::vector<double> EndProductNorms(const wire::Update& update, const AdapterState& base, const AdapterSpec& spec,
                                    const LoraLayout& layout, PairScratch& scratch);

// sqrt(sum of squared element differences) over every tensor.
double StepNorm(const AdapterState& before, const AdapterState& after);

}  // namespace fedlora::methods
