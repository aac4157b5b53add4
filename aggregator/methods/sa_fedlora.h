// SA-FedLoRA (Yang et al., 2024; design of docs/methods.md section 4, a project choice where the
// paper is thin): an initiating stage of `initiating_versions` versions trains with the proximal
// term (mu/2) ||theta - theta_global||^2 against client drift; then an annealed per-module rank
// budget b(t): max_budget while heating (t < heating_until), the cubic cooling
// b(t) = b_min + (b_max - b_min) (1 - (t - t_h) / (t_c - t_h))^3 until cooling_until, then
// min_budget. Ranks beyond the budget are pruned by the LoRA-A2 score (both factors' terms);
// only kept ranks train and go up.
#pragma once

#include "aggregator/methods/method.h"

namespace fedlora::methods {

struct SaFedLoraParams final : MethodParams {
  uint32_t initiating_versions = 10;
  float proximal_mu = 0.01f;
  uint32_t heating_until = 20;
  uint32_t cooling_until = 60;
  uint32_t min_budget = 2;
  uint32_t max_budget = 0;  // 0: the adapter's rank
  uint32_t probe_batches = 2;

  std::unique_ptr<MethodParams> Clone() const override { return std::make_unique<SaFedLoraParams>(*this); }
  void Visit(ParamVisitor& v) override;
  Status Validate() const override;
};

// The annealed budget b(t) at `version` for an adapter of rank `rank`.
uint32_t AnnealedBudget(const SaFedLoraParams& params, uint32_t rank, uint64_t version);

}  // namespace fedlora::methods
