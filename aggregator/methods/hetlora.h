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
#pragma once

#include "aggregator/methods/method.h"

namespace fedlora::methods {

struct HetLoraParams final : MethodParams {
  std::string rule = "paper";  // "paper" or "deltas"

  std::unique_ptr<MethodParams> Clone() const override { return std::make_unique<HetLoraParams>(*this); }
  void Visit(ParamVisitor& v) override;
};

}  // namespace fedlora::methods
