#include "worker/local_round.h"

#include <fmt/format.h>

#include "aggregator/methods/registry.h"

namespace fedlora::worker {
namespace {

std::vector<float> ToVector(const torch::Tensor& t) {
  torch::Tensor c = t.detach().to(torch::kFloat).contiguous();
  return {c.data_ptr<float>(), c.data_ptr<float>() + c.numel()};
}

}  // namespace

Result<LocalRound> RunLocalRound(Model& model, const AdapterSpec& spec, const AdapterState& global,
                                 const MethodState& state, const ClientSettings& client, PersonalState& personal,
                                 const Dataset& data, const std::vector<size_t>& shard,
                                 const LocalTrainOptions& train, std::stop_token stop) {
  ASSIGN_OR_RETURN(const methods::Method* method, methods::FindMethod(state.method));
  const uint32_t rank = spec.rank;
  const uint32_t my_rank = client.rank == 0 ? rank : client.rank;
  if (!method->full_model() && my_rank > rank) {
    return InvalidArgument(fmt::format("client rank {} is above the adapter's rank {}", my_rank, rank));
  }
  ASSIGN_OR_RETURN(methods::LoraLayout layout, methods::LoraLayout::Of(spec));
  std::vector<torch::Tensor> tensors = model.AdapterTensors();
  LocalRound round;
  // A client of lower rank holds the top-my_rank slice: the other ranks of B are zero locally.
  auto Restrict = [&](AdapterState& start) {
    if (my_rank >= rank) return;
    for (const methods::LoraModule& m : layout.modules()) {
      auto& b = start.tensors[m.b].values;
      for (uint32_t row = 0; row < m.rows; ++row) {
        for (uint32_t i = my_rank; i < rank; ++i) b[static_cast<size_t>(row) * rank + i] = 0.0f;
      }
    }
  };

  methods::ClientRound ctx{spec, layout, global, state, client, my_rank, &personal, {}};
  // Gradients at the start, summed over probe batches (DP-SGD ones when DP is on: each batch is
  // one more application of the mechanism, since the ranks a client uploads must not leak its data).
  ctx.probe = [&](const AdapterState& plan_start, uint32_t batches) -> Result<AdapterState> {
    AdapterState start = plan_start;
    Restrict(start);
    RETURN_IF_ERROR(model.LoadAdapter(start));
    for (auto& t : tensors) t.set_requires_grad(true);
    RETURN_IF_ERROR(AccumulateGradients(model, data, shard, batches, train.batch_size, train.seed ^ 0x5eedULL, train.dp));
    if (train.dp.enabled()) round.dp_steps += batches;
    AdapterState grad = start;
    for (size_t t = 0; t < tensors.size(); ++t) {
      const torch::Tensor& g = tensors[t].grad();
      if (g.defined()) {
        grad.tensors[t].values = ToVector(g);
      } else {
        std::fill(grad.tensors[t].values.begin(), grad.tensors[t].values.end(), 0.0f);
      }
    }
    model.Train(true);
    return grad;
  };
  const std::unique_ptr<methods::ClientHalf> half = method->Client();
  ASSIGN_OR_RETURN(methods::TrainPlan plan, half->Plan(ctx));

  Restrict(plan.start);
  RETURN_IF_ERROR(model.LoadAdapter(plan.start));
  for (size_t t = 0; t < spec.tensors.size(); ++t) tensors[t].set_requires_grad(plan.trains[t]);
  for (const auto& r : plan.ranks) round.kept_ranks.push_back(static_cast<uint32_t>(r.size()));

  LocalTrainOptions options = train;
  // Gradient masks: a factor trains only on its kept ranks.
  for (size_t m = 0; m < layout.modules().size(); ++m) {
    if (plan.ranks[m].size() == rank) continue;
    torch::Tensor keep = torch::zeros({static_cast<int64_t>(rank)});
    for (uint32_t i : plan.ranks[m]) keep[i] = 1.0f;
    const methods::LoraModule& mod = layout.modules()[m];
    if (plan.trains[mod.a]) options.grad_masks.emplace_back(tensors[mod.a], keep.view({-1, 1}));
    if (plan.trains[mod.b]) options.grad_masks.emplace_back(tensors[mod.b], keep.view({1, -1}));
  }
  std::vector<std::pair<torch::Tensor, torch::Tensor>> anchors;  // (parameter, its start value)
  if (plan.proximal_mu > 0) {
    for (size_t t = 0; t < spec.tensors.size(); ++t) {
      if (plan.trains[t]) anchors.emplace_back(tensors[t], tensors[t].detach().clone());
    }
    const double mu = plan.proximal_mu;
    options.regularizer = [&anchors, mu] {
      torch::Tensor sum = torch::zeros({});
      for (auto& [param, anchor] : anchors) sum = sum + (param - anchor).pow(2).sum();
      return sum * (mu / 2.0);
    };
  }
  if (plan.lr_scale != 1.0) options.lr = train.lr * static_cast<float>(plan.lr_scale);

  ASSIGN_OR_RETURN(round.trained, TrainLocal(model, data, shard, options, stop));
  if (train.dp.enabled()) round.dp_steps += round.trained.steps;
  for (auto& t : tensors) t.set_requires_grad(true);
  if (round.trained.stopped) return round;

  // The delta against the local start; the method decides what of it goes up.
  AdapterState delta = model.ExportAdapter();
  for (size_t t = 0; t < delta.tensors.size(); ++t) {
    auto& d = delta.tensors[t].values;
    const auto& s = plan.start.tensors[t].values;
    for (size_t i = 0; i < d.size(); ++i) d[i] -= s[i];
  }
  round.upload = half->Upload(ctx, plan, delta);
  for (const auto& e : round.upload) round.values_uploaded += e.values.size();
  return round;
}

}  // namespace fedlora::worker
