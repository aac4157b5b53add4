// LoRA-A2 (Koo, Jang, Ok, 2024): alternating freeze and adaptive rank selection. The trained
// factor flips every `phase_length` versions (B first), so aggregation is exact in each phase,
// with lr_A = a_lr_ratio x lr_B (the paper: lr_B = 5 lr_A). Each client scores the ranks of the
// trained factor from probe gradients (B-phase: ||dB[:, i]|| ||A[i, :]||; A-phase:
// ||B[:, i]|| ||dA[i, :]||), trains and uploads only its top rank_budget x modules ranks over
// all modules together. Async adaptation (project choice): the phase belongs to the global
// version; an update trained in a phase that has since ended is applied to the factor it
// trained, with its staleness weight.
#pragma once

#include "aggregator/methods/method.h"

namespace fedlora::methods {

struct LoraA2Params final : MethodParams {
  uint32_t phase_length = 10;
  uint32_t rank_budget = 1;   // ranks per module a client uploads
  float a_lr_ratio = 0.2f;
  uint32_t probe_batches = 2;

  std::unique_ptr<MethodParams> Clone() const override { return std::make_unique<LoraA2Params>(*this); }
  void Visit(ParamVisitor& v) override;
  Status Validate() const override;
};

}  // namespace fedlora::methods
