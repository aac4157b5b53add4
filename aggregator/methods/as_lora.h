// AS-LoRA (adaptive selection of LoRA components, Kim, Park, Han, Ahn, 2026): per module and
// version the server picks which factor trains (the other is frozen, so aggregating the active
// one is exact), from a curvature-aware score smoothed by an EMA (factor_selection.h), with a
// hysteresis margin. Warm-up: B everywhere. Needs fedbuff or sync (it scores server steps).
// Scores (--as-score):
//  - gradient (default, what the paper scores): each client sums the gradient g_f of both
//    factors of every module over --as-probe-batches batches at the global it starts from
//    (DP-SGD gradients under record-level DP) and sends the predicted loss decrease of a step
//    -eta g_f, S_f = eta ||g_f||^2 - (eta^2 / 2) sum(F_f g_f^2) with F_f = g_f^2 (diagonal
//    Gauss-Newton) and eta its learning rate times its steps; the server smooths the weighted
//    mean over each step's updates, for both factors. Refused with client-level DP: the scores
//    are per-client releases the server's clipping and noise do not cover.
//  - change (fedlora before 2026-12): the aggregated change of each module's active factor
//    stands in for g_f (scored only for the active factor; the other keeps its last score).
#pragma once

#include "aggregator/methods/method.h"

namespace fedlora::methods {

struct AsLoraParams final : MethodParams {
  uint32_t warmup = 5;  // versions [0, warmup) train B everywhere
  float margin = 0.1f;  // relative hysteresis margin before a module switches factor
  float beta = 0.9f;    // EMA weight on the past of the scores and Fisher proxies
  std::string score = "gradient";  // "gradient" or "change"
  uint32_t probe_batches = 2;      // gradient: batches each client's score sums

  std::unique_ptr<MethodParams> Clone() const override { return std::make_unique<AsLoraParams>(*this); }
  void Visit(ParamVisitor& v) override;
  Status Validate() const override;
};

}  // namespace fedlora::methods
