// Rank scoring shared by lora-a2 and sa-fedlora (docs/methods.md sections 3 and 4): a rank's
// score is the Frobenius norm of the change its outer product would make, estimated from the
// gradient summed over a few probe batches at the start of the round.
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <vector>

#include "aggregator/methods/method.h"

namespace fedlora::methods {

// ||dB[:, i]|| * ||A[i, :]||, the Frobenius norm of the rank's outer product dB[:, i] A[i, :].
// b is d x r, a is r x k, row-major.
double RankScore(const std::vector<float>& b, const std::vector<float>& a, uint32_t d, uint32_t r, uint32_t k,
                 uint32_t i);

// Per module (layout order) and rank below `client_rank`: the B-phase score ||gB[:, i]|| ||A[i, :]||
// and the A-phase score ||B[:, i]|| ||gA[i, :]|| of `start` under gradients `grad`.
struct RankScores {
  std::vector<std::vector<double>> b, a;
};
RankScores ScoreRanks(const ClientRound& round, const AdapterState& start, const AdapterState& grad);

// Ranks by descending score (ties: lower module, then lower rank first), either `per_module`
// in each module or `global_total` over all modules together (when > 0). Negative scores are
// never picked. Each module's list comes out sorted.
std::vector<std::vector<uint32_t>> SelectRanks(const std::vector<std::vector<double>>& scores, uint32_t per_module,
                                               uint32_t global_total);

}  // namespace fedlora::methods
