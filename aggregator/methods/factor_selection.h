// AS-LoRA's server half (docs/methods.md section 5): per LoRA module and version, which factor
// trains. From each version's aggregated (already noised, when DP is on) pseudo-gradient g_f of
// the active factor f the selector keeps an EMA Fisher proxy F_f of g_f^2 and scores the
// predicted loss decrease of a step -eta g_f,
//     S_f = eta ||g_f||^2 - (eta^2 / 2) sum(F_f * g_f^2),
// smoothed by an EMA. Warm-up: B everywhere (A's gradient is zero while B is zero); then each
// factor that has never been observed is tried once; afterwards a module switches only when
// the other factor's smoothed score exceeds the active one's by the relative margin. A factor
// keeps the score it had when it was last active. Scores are post-processing of what the
// server step already released, so they cost no privacy.
// Thread safety: one thread at a time.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "schema/codec.h"
#include "schema/status.h"

namespace fedlora::methods {

inline constexpr int kFactorB = 0;
inline constexpr int kFactorA = 1;

struct FactorSelectionOptions {
  uint32_t warmup = 5;   // versions [0, warmup) train B
  double margin = 0.1;   // relative hysteresis margin
  double beta = 0.9;     // EMA weight on the past (scores and Fisher proxies)
  double eta = 1.0;      // step size in the score (the server learning rate)
};

class FactorSelector {
 public:
  // One module per entry of `modules` (spec order of the lora_A tensors), with the element
  // counts of its A and B factors. `stored`: the state committed with the version resumed from
  // (empty: fresh). Errors: kDataLoss (stored state of other modules or shapes).
  static Result<FactorSelector> Create(const FactorSelectionOptions& options, std::vector<std::string> modules,
                                       std::vector<size_t> a_sizes, std::vector<size_t> b_sizes,
                                       std::vector<codec::FactorScore> stored);

  // The aggregated pseudo-gradient of factor `factor` of module `m` at the version just made.
  // `noise_variance`: per-coordinate variance of noise the server itself added to g (client-
  // level DP), subtracted from ||g||^2 in expectation; 0 otherwise.
  void Observe(size_t m, int factor, std::span<const float> g, double noise_variance);
  // A score computed elsewhere (the clients' mean predicted decrease from their gradients), for
  // either factor: smoothed into that factor's score by the same EMA.
  void ObserveScore(size_t m, int factor, double score);
  // Decides what every module trains from `version` on.
  void Choose(uint64_t version);

  uint8_t active(size_t m) const { return state_[m].active; }
  std::vector<uint8_t> ActiveVector() const;
  const std::vector<codec::FactorScore>& state() const { return state_; }

 private:
  FactorSelector(FactorSelectionOptions options, std::vector<codec::FactorScore> state)
      : options_(options), state_(std::move(state)) {}

  FactorSelectionOptions options_;
  std::vector<codec::FactorScore> state_;
};

}  // namespace fedlora::methods
