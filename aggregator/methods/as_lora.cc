#include "aggregator/methods/as_lora.h"

#include <fmt/format.h>

#include <cmath>
#include <optional>

#include "aggregator/methods/factor_selection.h"

namespace fedlora::methods {

void AsLoraParams::Visit(ParamVisitor& v) {
  v.Uint("as-warmup", warmup, "as-lora: versions that train B everywhere before any choice");
  v.Float("as-margin", margin,
          "as-lora: a module switches factor when the other's smoothed score beats the active one's by this "
          "fraction");
  v.Float("as-beta", beta, "as-lora: EMA weight on the past of the scores and Fisher proxies");
  v.Choice("as-score", score, {"gradient", "change"},
           "as-lora: gradient = clients score both factors from probe gradients (the paper); change = the "
           "server scores the active factor's aggregated change");
  v.Uint("as-probe-batches", probe_batches, "as-lora (gradient score): batches each client's scores sum");
}

Status AsLoraParams::Validate() const {
  if (!(std::isfinite(margin) && margin >= 0)) return InvalidArgument("AS-LoRA margin must be >= 0");
  if (!(std::isfinite(beta) && beta >= 0 && beta < 1)) return InvalidArgument("AS-LoRA EMA weight beta must be in [0, 1)");
  if (score == "gradient" && probe_batches == 0) return InvalidArgument("AS-LoRA gradient scores need --as-probe-batches >= 1");
  return Status::Ok();
}

namespace {

class AsLoraServer final : public PlainServer {
 public:
  AsLoraServer(std::string_view name, const AdapterSpec& spec, const LoraLayout& layout, FactorSelector selector,
               uint32_t probe_batches)
      : PlainServer(name, spec, layout), selector_(std::move(selector)), probe_batches_(probe_batches),
        scores_(layout_.modules().size()) {}

  MethodState StateAt(uint64_t version) const override {
    MethodState s = PlainServer::StateAt(version);
    s.active = selector_.ActiveVector();
    s.probe_batches = probe_batches_;
    return s;
  }
  bool RestrictsFolds() const override { return true; }
  bool Moves(size_t t, uint64_t) const override {
    const TensorRole role = spec_.tensors[t].role;
    if (role == TensorRole::kDense) return true;
    const uint8_t active = selector_.active(static_cast<size_t>(layout_.module_of(t)));
    return (active == kFactorA) == (role == TensorRole::kLoraA);
  }
  Status Check(const wire::Update& u) const override {
    for (const CarriedPair& p : CarriedPairs(u, layout_)) {
      if (p.a && p.b) {
        return InvalidArgument(fmt::format("as-lora trains one factor per module; the update carries both of '{}'",
                                           layout_.modules()[p.module].name));
      }
    }
    const size_t n = codec::FactorScores(u).size();
    if (gradient() && n != 0 && n != 2 * layout_.modules().size()) {
      return InvalidArgument(fmt::format("as-lora: {} factor scores for {} modules (two each)", n, layout_.modules().size()));
    }
    return Status::Ok();
  }

  // Gradient scores: the weighted sum of each module's scores over the step's updates.
  void Buffer(const wire::Update& u, const AdapterState&, double weight, std::vector<std::vector<float>>&) override {
    const auto scores = codec::FactorScores(u);
    if (!gradient() || scores.empty()) return;
    for (size_t m = 0; m < scores_.size(); ++m) {
      scores_[m].sum[kFactorB] += weight * scores[2 * m];
      scores_[m].sum[kFactorA] += weight * scores[2 * m + 1];
      scores_[m].weight += weight;
    }
  }

  // Each module's active factor, as aggregated in this step (the sum over the updates that
  // carried it, per unit of their weight), feeds the selector. A module whose active factor no
  // update of the step carried (all trained before a switch) is not observed this time.
  void Step(AdapterState&, const StepSums& sums) override {
    if (gradient()) {
      for (size_t m = 0; m < scores_.size(); ++m) {
        if (scores_[m].weight > 0) {
          for (int f : {kFactorB, kFactorA}) selector_.ObserveScore(m, f, scores_[m].sum[f] / scores_[m].weight);
        }
        scores_[m] = {};
      }
      return;
    }
    for (size_t m = 0; m < layout_.modules().size(); ++m) {
      const int factor = selector_.active(m);
      const double weight = sums.carried_weight[m][factor];
      if (!(weight > 0)) continue;
      const LoraModule& mod = layout_.modules()[m];
      const auto& sum = sums.acc[factor == kFactorA ? mod.a : mod.b];
      std::vector<float> g(sum.size());
      for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(sum[i] / weight);
      const double noise_sd = sums.noise_sd / weight;
      selector_.Observe(m, factor, g, noise_sd * noise_sd);
    }
  }

  void Finish(uint64_t version, codec::VersionInfo& info) override {
    selector_.Choose(version);
    for (const auto& f : selector_.state()) {
      codec::FactorScore light = f;  // the record keeps the choice and scores, not the Fisher proxies
      light.fisher[0].clear();
      light.fisher[1].clear();
      info.factors.push_back(std::move(light));
    }
  }

  MethodMemory memory() const override { return {0, selector_.state()}; }

 private:
  bool gradient() const { return probe_batches_ > 0; }
  struct ScoreSum {
    double sum[2] = {0, 0};
    double weight = 0;
  };
  FactorSelector selector_;
  uint32_t probe_batches_;         // > 0: clients send gradient scores
  std::vector<ScoreSum> scores_;   // per module, over the step being buffered
};

// Per module, the predicted loss decrease of a step -eta g on B, then on A (see as_lora.h).
std::vector<float> GradientScores(const ClientRound& round, const AdapterState& grad, uint32_t batches) {
  std::vector<float> out;
  const double eta = round.step_size;
  for (const LoraModule& m : round.layout.modules()) {
    for (const size_t t : {m.b, m.a}) {
      double norm_sq = 0, curvature = 0;
      for (float v : grad.tensors[t].values) {
        const double g = static_cast<double>(v) / batches;  // the mean gradient over the probe batches
        norm_sq += g * g;
        curvature += g * g * g * g;
      }
      out.push_back(static_cast<float>(eta * norm_sq - 0.5 * eta * eta * curvature));
    }
  }
  return out;
}

class AsLoraClient final : public ClientHalf {
 public:
  Result<TrainPlan> Plan(ClientRound& round) const override {
    ASSIGN_OR_RETURN(TrainPlan plan, ClientHalf::Plan(round));
    const auto& active = round.state.active;
    for (size_t m = 0; m < round.layout.modules().size(); ++m) {
      const LoraModule& mod = round.layout.modules()[m];
      const bool a_trains = m < active.size() && active[m] == kFactorA;
      plan.trains[mod.a] = plan.uploads[mod.a] = a_trains;
      plan.trains[mod.b] = plan.uploads[mod.b] = !a_trains;
    }
    if (round.state.probe_batches > 0) {
      ASSIGN_OR_RETURN(AdapterState grad, round.probe(plan.start, round.state.probe_batches));
      plan.factor_scores = GradientScores(round, grad, round.state.probe_batches);
    }
    return plan;
  }
};

class AsLora final : public Method {
 public:
  std::string_view name() const override { return "as-lora"; }
  std::string_view summary() const override { return "AS-LoRA: server picks A or B per module by curvature score"; }
  std::unique_ptr<MethodParams> DefaultParams() const override { return std::make_unique<AsLoraParams>(); }
  Status Supports(const EngineSetup& setup, const MethodParams& params) const override {
    if (setup.mode == wire::Mode::FedAsync) {
      return InvalidArgument("as-lora scores aggregated server steps: use fedbuff or sync, not fedasync");
    }
    if (setup.client_dp && dynamic_cast<const AsLoraParams&>(params).score == "gradient") {
      return InvalidArgument("as-lora's gradient scores are per-client releases that client-level DP does not cover: "
                             "use --as-score change (scores from the noised aggregate, at no privacy cost)");
    }
    return Status::Ok();
  }
  Result<std::unique_ptr<ServerHalf>> Server(const MethodParams& params, const AdapterSpec& spec,
                                             const LoraLayout& layout, const EngineSetup& setup, uint64_t version,
                                             MethodMemory stored) const override {
    const auto& p = dynamic_cast<const AsLoraParams&>(params);
    if (version > 0 && stored.factors.empty()) {
      return DataLoss(fmt::format("version {} has no stored AS-LoRA state", version));
    }
    if (!stored.factors.empty() && stored.version != version) {
      return FailedPrecondition(
          fmt::format("stored AS-LoRA state is of version {}, the global is at {}", stored.version, version));
    }
    const bool gradient = p.score == "gradient";
    std::vector<std::string> names;
    std::vector<size_t> a_sizes, b_sizes;  // Fisher proxies: the change score keeps them
    for (const LoraModule& m : layout.modules()) {
      names.push_back(m.name);
      a_sizes.push_back(gradient ? 0 : spec.tensors[m.a].numel());
      b_sizes.push_back(gradient ? 0 : spec.tensors[m.b].numel());
    }
    const FactorSelectionOptions fo{p.warmup, p.margin, p.beta, setup.server_lr};
    const bool fresh = stored.factors.empty();
    ASSIGN_OR_RETURN(FactorSelector s, FactorSelector::Create(fo, std::move(names), std::move(a_sizes),
                                                              std::move(b_sizes), std::move(stored.factors)));
    if (fresh) s.Choose(version);
    return std::unique_ptr<ServerHalf>(
        std::make_unique<AsLoraServer>(name(), spec, layout, std::move(s), gradient ? p.probe_batches : 0));
  }
  std::unique_ptr<ClientHalf> Client() const override { return std::make_unique<AsLoraClient>(); }
};

}  // namespace

const Method& AsLoraMethod() {
  static const AsLora method;
  return method;
}

}  // namespace fedlora::methods
