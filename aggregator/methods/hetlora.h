// HetLoRA (Cho, Liu, Xu, Fahrezi, Joshi, EMNLP 2024): clients train LoRA of their own rank
// r_k <= r (the top-r_k slice of the global: distribution by truncation). Server rules:
//  - paper (default): each client's factors are zero-padded to rank r and averaged with the
//    sparsity weights p_k = ||B_k A_k||_F / Z (Z their sum over the step): a rank a client
//    does not have is averaged with its zeros;
//  - deltas (fedlora before 2026-12; the rule recorded settings without --hetlora-rule replay
//    with): an unsent rank keeps the global value (the zero-padded *change* is averaged), and
//    the weight is n_k ||B_k A_k||_F.
// ||B_k A_k||_F is summed over the modules, from the client's local factors (its base version's
// factors plus its delta over the ranks it trained). Not supported with client-level DP: the
// weights have no fixed per-client sensitivity.
// Rank self-pruning (paper rule): a client of rank r_k adds prune_lambda x the sum over modules
// of ||B[:, t:r_k] A[t:r_k, :]||_F, t = floor(prune_gamma r_k), to its local loss; when that
// norm ends a round below where it ended the previous one, the client keeps only its first t
// ranks from then on (it remembers its rank between rounds). prune_lambda 0: no pruning.
#pragma once

#include "aggregator/methods/method.h"

namespace fedlora::methods {

struct HetLoraParams final : MethodParams {
  std::string rule = "paper";  // "paper" or "deltas"
  float prune_lambda = 0.01f;
  float prune_gamma = 0.9f;

  std::unique_ptr<MethodParams> Clone() const override { return std::make_unique<HetLoraParams>(*this); }
  void Visit(ParamVisitor& v) override;
  Status Validate() const override;
};

}  // namespace fedlora::methods
