#include "aggregator/methods/hetlora.h"

#include <fmt/format.h>

#include <cmath>

#include "aggregator/methods/pair_change.h"

namespace fedlora::methods {

void HetLoraParams::Visit(ParamVisitor& v) {
  v.Choice("hetlora-rule", rule, {"paper", "deltas"},
           "hetlora: paper = zero-padded factors averaged with weights ||B_k A_k||_F / Z; deltas = an unsent "
           "rank keeps the global value, weights n_k ||B_k A_k||_F");
  v.Float("hetlora-prune-lambda", prune_lambda,
          "hetlora (paper rule): weight of the penalty on the norm of a client's top ranks' product (0: no "
          "rank self-pruning)");
  v.Float("hetlora-prune-gamma", prune_gamma, "hetlora: a client that prunes keeps floor(gamma r_k) of its ranks");
}

Status HetLoraParams::Validate() const {
  if (!(std::isfinite(prune_lambda) && prune_lambda >= 0)) return InvalidArgument("hetlora prune lambda must be >= 0");
  if (!(std::isfinite(prune_gamma) && prune_gamma > 0 && prune_gamma < 1)) {
    return InvalidArgument("hetlora prune gamma must be in (0, 1)");
  }
  return Status::Ok();
}

namespace {

class HetLoraServer final : public PlainServer {
 public:
  HetLoraServer(std::string_view name, const AdapterSpec& spec, const LoraLayout& layout, HetLoraParams params)
      : PlainServer(name, spec, layout), paper_(params.rule == "paper"), params_(std::move(params)) {}

  MethodState StateAt(uint64_t version) const override {
    MethodState s = PlainServer::StateAt(version);
    if (paper_) {
      s.prune_lambda = params_.prune_lambda;
      s.prune_gamma = params_.prune_gamma;
    }
    return s;
  }

  bool NeedsBase() const override { return true; }

  double Weight(const wire::Update& u, const AdapterState& base, double data_weight) const override {
    const std::vector<double> norms = EndProductNorms(u, base, spec_, layout_, scratch_);
    double norm = 0;
    for (size_t m : layout_.by_name()) {  // the order the sum has always been taken in
      if (norms[m] >= 0) norm += norms[m];
    }
    return paper_ ? norm : data_weight * norm;
  }

  // Zero padding: a rank the update does not carry counts as the client's zero, i.e. a change of
  // minus the base value, in both factors of every module it carries.
  void Buffer(const wire::Update& u, const AdapterState& base, double weight,
              std::vector<std::vector<float>>& acc) override {
    if (!paper_) return;
    const float w = static_cast<float>(weight);
    const uint32_t r = spec_.rank;
    for (const CarriedPair& p : CarriedPairs(u, layout_)) {
      const LoraModule& m = layout_.modules()[p.module];
      std::vector<bool> sent(r, false);
      for (uint32_t i : CarriedRanks(p.a ? *p.a : *p.b, r)) sent[i] = true;
      const auto& a = base.tensors[m.a].values;
      const auto& b = base.tensors[m.b].values;
      auto& acc_a = acc[m.a];
      auto& acc_b = acc[m.b];
      for (uint32_t i = 0; i < r; ++i) {
        if (sent[i]) continue;
        for (uint32_t c = 0; c < m.cols; ++c) acc_a[static_cast<size_t>(i) * m.cols + c] -= w * a[static_cast<size_t>(i) * m.cols + c];
        for (uint32_t row = 0; row < m.rows; ++row) acc_b[static_cast<size_t>(row) * r + i] -= w * b[static_cast<size_t>(row) * r + i];
      }
    }
  }

 private:
  bool paper_;
  HetLoraParams params_;
  mutable PairScratch scratch_;  // the engine weighs one update at a time
};

// The sum over modules of ||B[:, from:to] A[from:to, :]||_F in `state`.
double TailNorm(const ClientRound& round, const AdapterState& state, uint32_t from, uint32_t to) {
  std::vector<uint32_t> tail;
  for (uint32_t i = from; i < to; ++i) tail.push_back(i);
  double norm = 0;
  for (const LoraModule& m : round.layout.modules()) norm += ProductNorm(Slice(state, m, round.spec.rank, tail));
  return norm;
}

class HetLoraClient final : public ClientHalf {
 public:
  Result<TrainPlan> Plan(ClientRound& round) const override {
    ASSIGN_OR_RETURN(TrainPlan plan, ClientHalf::Plan(round));
    if (round.state.prune_lambda <= 0) return plan;
    const uint32_t rank = round.personal->rank > 0 ? std::min(round.personal->rank, round.rank) : round.rank;
    plan.rank = rank;
    for (auto& r : plan.ranks) r.resize(rank);
    const auto keep = static_cast<uint32_t>(std::floor(round.state.prune_gamma * static_cast<double>(rank)));
    if (keep >= 1 && keep < rank) {
      plan.tail_lambda = round.state.prune_lambda;
      plan.tail_from = keep;
    }
    return plan;
  }
  std::vector<codec::EncodedTensor> Upload(ClientRound& round, const TrainPlan& plan,
                                           const AdapterState& delta) const override {
    if (plan.tail_lambda > 0) {
      AdapterState end = plan.start;
      for (size_t t = 0; t < end.tensors.size(); ++t) {
        for (size_t i = 0; i < end.tensors[t].values.size(); ++i) end.tensors[t].values[i] += delta.tensors[t].values[i];
      }
      const double tail = TailNorm(round, end, plan.tail_from, plan.rank);
      PersonalState& me = *round.personal;
      if (me.tail_norm >= 0 && tail < me.tail_norm) {
        me.rank = plan.tail_from;  // the top ranks shrink: prune them from the next round on
        me.tail_norm = -1;
      } else {
        me.tail_norm = tail;
      }
    }
    return ClientHalf::Upload(round, plan, delta);
  }
};

class HetLora final : public BasicMethod<HetLoraParams, HetLoraServer, HetLoraClient> {
 public:
  using BasicMethod::BasicMethod;
  Status Supports(const EngineSetup& setup, const MethodParams&) const override {
    return setup.client_dp ? NoClientDp(name()) : Status::Ok();
  }
};

}  // namespace

const Method& HetLoraMethod() {
  static const HetLora method("hetlora", "HetLoRA: per-client ranks, zero-padded norm-weighted mean");
  return method;
}

}  // namespace fedlora::methods
