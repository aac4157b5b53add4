#include "aggregator/methods/sa_fedlora.h"

#include <cmath>

#include "aggregator/methods/rank_scores.h"

namespace fedlora::methods {

void SaFedLoraParams::Visit(ParamVisitor& v) {
  v.Uint("initiating-versions", initiating_versions, "sa-fedlora: versions trained with the proximal term");
  v.Float("proximal-mu", proximal_mu, "sa-fedlora: weight mu of (mu/2)||theta - theta_global||^2");
  v.Uint("heating-until", heating_until, "sa-fedlora: keep every rank until this version");
  v.Uint("cooling-until", cooling_until, "sa-fedlora: the cubic budget reaches its minimum here");
  v.Uint("min-budget", min_budget, "sa-fedlora: ranks per module kept after cooling");
  v.Uint("max-budget", max_budget, "sa-fedlora: ranks per module while heating (0: the adapter's rank)");
  v.Uint("probe-batches", probe_batches, "lora-a2, sa-fedlora: batches whose gradients score the ranks");
}

Status SaFedLoraParams::Validate() const {
  if (!(std::isfinite(proximal_mu) && proximal_mu >= 0)) return InvalidArgument("proximal mu must be >= 0");
  if (min_budget == 0) return InvalidArgument("SA-FedLoRA minimum rank budget must be at least 1");
  if (max_budget != 0 && max_budget < min_budget) {
    return InvalidArgument("SA-FedLoRA maximum rank budget is below the minimum");
  }
  if (cooling_until < heating_until) return InvalidArgument("SA-FedLoRA cooling must end after heating ends");
  return Status::Ok();
}

uint32_t AnnealedBudget(const SaFedLoraParams& c, uint32_t rank, uint64_t version) {
  const uint32_t hi = std::min(rank, c.max_budget == 0 ? rank : c.max_budget);
  const uint32_t lo = std::min(hi, c.min_budget);
  if (version < c.heating_until) return hi;
  if (version >= c.cooling_until) return lo;
  const double progress = static_cast<double>(version - c.heating_until) /
                          static_cast<double>(c.cooling_until - c.heating_until);
  const double remaining = 1.0 - progress;
  const double b = lo + (hi - lo) * remaining * remaining * remaining;
  return static_cast<uint32_t>(std::lround(b));
}

namespace {

class SaFedLoraServer final : public PlainServer {
 public:
  SaFedLoraServer(std::string_view name, const AdapterSpec& spec, const LoraLayout& layout, SaFedLoraParams params)
      : PlainServer(name, spec, layout), params_(params) {}
  MethodState StateAt(uint64_t version) const override {
    MethodState s = PlainServer::StateAt(version);
    s.rank_budget = AnnealedBudget(params_, spec_.rank, version);
    s.probe_batches = params_.probe_batches;
    if (version < params_.initiating_versions) s.proximal_mu = params_.proximal_mu;
    return s;
  }

 private:
  SaFedLoraParams params_;
};

class SaFedLoraClient final : public ClientHalf {
 public:
  Result<TrainPlan> Plan(ClientRound& round) const override {
    ASSIGN_OR_RETURN(TrainPlan plan, ClientHalf::Plan(round));
    plan.proximal_mu = round.state.proximal_mu;
    const uint32_t budget = round.state.rank_budget;
    if (round.state.probe_batches == 0 || budget == 0 || budget >= round.rank) return plan;
    ASSIGN_OR_RETURN(AdapterState grad, round.probe(plan.start, round.state.probe_batches));
    RankScores scores = ScoreRanks(round, plan.start, grad);
    for (size_t m = 0; m < scores.b.size(); ++m) {
      for (uint32_t i = 0; i < round.rank; ++i) scores.b[m][i] += scores.a[m][i];
    }
    plan.ranks = SelectRanks(scores.b, budget, 0);
    return plan;
  }
};

}  // namespace

const Method& SaFedLoraMethod() {
  static const BasicMethod<SaFedLoraParams, SaFedLoraServer, SaFedLoraClient> method(
      "sa-fedlora", "SA-FedLoRA: proximal start, annealed rank budget");
  return method;
}

}  // namespace fedlora::methods
