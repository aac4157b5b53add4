// AS-LoRA (adaptive selection of LoRA components, Kim, Park, Han, Ahn, 2026): per module and
// version the server picks which factor trains (the other is frozen, so aggregating the active
// one is exact), from a curvature-aware score of the aggregated pseudo-gradients
// (factor_selection.h). Warm-up: B everywhere. Needs fedbuff or sync (it scores server steps).
#pragma once

#include "aggregator/methods/method.h"

namespace fedlora::methods {

struct AsLoraParams final : MethodParams {
  uint32_t warmup = 5;  // versions [0, warmup) train B everywhere
  float margin = 0.1f;  // relative hysteresis margin before a module switches factor
  float beta = 0.9f;    // EMA weight on the past of the scores and Fisher proxies

  std::unique_ptr<MethodParams> Clone() const override { return std::make_unique<AsLoraParams>(*this); }
  void Visit(ParamVisitor& v) override;
  Status Validate() const override;
};

}  // namespace fedlora::methods
