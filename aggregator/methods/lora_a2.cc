#include "aggregator/methods/lora_a2.h"

#include <cmath>

#include "aggregator/methods/rank_scores.h"

namespace fedlora::methods {

void LoraA2Params::Visit(ParamVisitor& v) {
  v.Uint("phase-length", phase_length, "lora-a2: versions per phase (B trains first, then A)");
  v.Uint("rank-budget", rank_budget, "lora-a2: ranks per module a client uploads");
  v.Float("a-lr-ratio", a_lr_ratio, "lora-a2: learning rate of A relative to B");
  v.Uint("probe-batches", probe_batches, "lora-a2, sa-fedlora: batches whose gradients score the ranks");
}

Status LoraA2Params::Validate() const {
  if (phase_length == 0) return InvalidArgument("LoRA-A2 phase length must be at least 1 version");
  if (rank_budget == 0) return InvalidArgument("LoRA-A2 rank budget must be at least 1");
  if (!(std::isfinite(a_lr_ratio) && a_lr_ratio > 0)) return InvalidArgument("a_lr_ratio must be positive");
  return Status::Ok();
}

namespace {

// Whether role `role` trains in `phase` (0: B, 1: A).
bool TrainsIn(uint8_t phase, TensorRole role) {
  return role == TensorRole::kDense || (phase == 0) == (role == TensorRole::kLoraB);
}

class LoraA2Server final : public PlainServer {
 public:
  LoraA2Server(std::string_view name, const AdapterSpec& spec, const LoraLayout& layout, LoraA2Params params)
      : PlainServer(name, spec, layout), params_(params) {}
  MethodState StateAt(uint64_t version) const override {
    MethodState s = PlainServer::StateAt(version);
    s.phase = Phase(version);
    s.a_lr_ratio = params_.a_lr_ratio;
    s.rank_budget = std::min(params_.rank_budget, spec_.rank);
    s.probe_batches = params_.probe_batches;
    return s;
  }
  bool Moves(size_t t, uint64_t version) const override { return TrainsIn(Phase(version), spec_.tensors[t].role); }
  Status Check(const wire::Update& u) const override {
    if (Carries(u, TensorRole::kLoraA) && Carries(u, TensorRole::kLoraB)) {
      return InvalidArgument("lora-a2 trains one factor per phase; the update carries both");
    }
    return Status::Ok();
  }

 private:
  uint8_t Phase(uint64_t version) const { return static_cast<uint8_t>((version / params_.phase_length) % 2); }
  LoraA2Params params_;
};

class LoraA2Client final : public ClientHalf {
 public:
  Result<TrainPlan> Plan(ClientRound& round) const override {
    ASSIGN_OR_RETURN(TrainPlan plan, ClientHalf::Plan(round));
    const uint8_t phase = round.state.phase;
    for (size_t t = 0; t < round.spec.tensors.size(); ++t) {
      plan.trains[t] = plan.uploads[t] = TrainsIn(phase, round.spec.tensors[t].role);
    }
    if (phase == 1) plan.lr_scale = round.state.a_lr_ratio;
    if (round.state.probe_batches == 0) return plan;
    ASSIGN_OR_RETURN(AdapterState grad, round.probe(plan.start, round.state.probe_batches));
    const RankScores scores = ScoreRanks(round, plan.start, grad);
    const uint32_t budget = round.client.rank_budget > 0 ? round.client.rank_budget : round.state.rank_budget;
    plan.ranks = SelectRanks(phase == 0 ? scores.b : scores.a, 0,
                             std::max<uint32_t>(1, budget) * static_cast<uint32_t>(round.layout.modules().size()));
    return plan;
  }
};

}  // namespace

const Method& LoraA2Method() {
  static const BasicMethod<LoraA2Params, LoraA2Server, LoraA2Client> method(
      "lora-a2", "LoRA-A2: alternating factors, top-scored rank slices");
  return method;
}

}  // namespace fedlora::methods
