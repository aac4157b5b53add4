#include "worker/local_round.h"

#include <fmt/format.h>

#include <optional>

#include "aggregator/methods/registry.h"

namespace fedlora::worker {
namespace {

std::vector<float> ToVector(const torch::Tensor& t) {
  torch::Tensor c = t.detach().to(torch::kFloat).contiguous();
  return {c.data_ptr<float>(), c.data_ptr<float>() + c.numel()};
}

// A residual (flora's exact remainder beyond rank r) is the aggregator's alone.
bool Trainable(const AdapterSpec& spec, size_t t) { return spec.tensors[t].role != TensorRole::kLoraResidual; }

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
  // A client of lower rank holds the top-`trained` slice: the other ranks of B are zero locally.
  uint32_t trained = my_rank;  // the plan may lower it (hetlora's self-pruning)
  auto Restrict = [&](AdapterState& start) {
    if (trained >= rank) return;
    for (const methods::LoraModule& m : layout.modules()) {
      auto& b = start.tensors[m.b].values;
      for (uint32_t row = 0; row < m.rows; ++row) {
        for (uint32_t i = trained; i < rank; ++i) b[static_cast<size_t>(row) * rank + i] = 0.0f;
      }
    }
  };

  methods::ClientRound ctx{spec, layout, global, state, client, my_rank, &personal, {},
                          static_cast<double>(train.lr) * train.steps};
  // Gradients at the start, summed over probe batches (DP-SGD ones when DP is on: each batch is
  // one more application of the mechanism, since the ranks a client uploads must not leak its data).
  ctx.probe = [&](const AdapterState& plan_start, uint32_t batches) -> Result<AdapterState> {
    AdapterState start = plan_start;
    Restrict(start);
    RETURN_IF_ERROR(model.LoadAdapter(start));
    for (size_t t = 0; t < tensors.size(); ++t) tensors[t].set_requires_grad(Trainable(spec, t));
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
  if (plan.rank > my_rank) {
    return Internal(fmt::format("method {} planned rank {} above the client's {}", state.method, plan.rank, my_rank));
  }
  if (plan.rank > 0) trained = plan.rank;
  plan.rank = trained;

  Restrict(plan.start);
  // With own_rank_scale a rank-r_k client trains at LoRA's scale alpha / r_k, as a rank-r_k
  // adapter would (PEFT's convention), not the global's alpha / r: its local B is the global's
  // times r_k / r, so that its product equals the global's over its ranks, and its change to B
  // goes up times r / r_k, in the global's units, so the server's folds stay exact.
  const bool rescaled = state.own_rank_scale && !layout.empty() && trained < rank;
  const float to_local = rescaled ? static_cast<float>(trained) / static_cast<float>(rank) : 1.0f;
  const float to_global = rescaled ? static_cast<float>(rank) / static_cast<float>(trained) : 1.0f;
  AdapterState local_start = plan.start;
  if (rescaled) {
    for (const methods::LoraModule& m : layout.modules()) {
      for (float& v : local_start.tensors[m.b].values) v *= to_local;
    }
  }
  struct ScaleGuard {  // the model goes back to the global's scale whatever happens
    Model& model;
    double global_scale;
    ~ScaleGuard() { model.SetLoraScale(global_scale); }
  };
  const double global_scale = spec.rank > 0 ? spec.alpha / static_cast<double>(spec.rank) : 1.0;
  std::optional<ScaleGuard> guard;
  if (rescaled) {
    model.SetLoraScale(spec.alpha / static_cast<double>(trained));
    guard.emplace(ScaleGuard{model, global_scale});
  }
  RETURN_IF_ERROR(model.LoadAdapter(local_start));
  for (size_t t = 0; t < spec.tensors.size(); ++t) {
    if (plan.trains[t] && !Trainable(spec, t)) {
      return Internal(fmt::format("method {} planned to train '{}', which the aggregator alone writes", state.method,
                                  spec.tensors[t].name));
    }
    tensors[t].set_requires_grad(plan.trains[t]);
  }
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
  }
  std::vector<std::pair<torch::Tensor, torch::Tensor>> tails;  // (B, A) of every module
  if (plan.tail_lambda > 0 && plan.tail_from < trained) {
    for (const methods::LoraModule& m : layout.modules()) tails.emplace_back(tensors[m.b], tensors[m.a]);
  }
  if (!anchors.empty() || !tails.empty()) {
    const double mu = plan.proximal_mu, lambda = plan.tail_lambda;
    const int64_t from = plan.tail_from, n = static_cast<int64_t>(trained) - plan.tail_from;
    options.regularizer = [&anchors, &tails, mu, lambda, from, n] {
      torch::Tensor sum = torch::zeros({});
      for (auto& [param, anchor] : anchors) sum = sum + (param - anchor).pow(2).sum() * (mu / 2.0);
      // ||B[:, from:r] A[from:r, :]||_F, kept differentiable where the product is zero.
      for (auto& [b, a] : tails) {
        const torch::Tensor p = torch::mm(b.narrow(1, from, n), a.narrow(0, from, n));
        sum = sum + (p.pow(2).sum() + 1e-12).sqrt() * lambda;
      }
      return sum;
    };
  }
  if (plan.lr_scale != 1.0) options.lr = train.lr * static_cast<float>(plan.lr_scale);

  ASSIGN_OR_RETURN(round.trained, TrainLocal(model, data, shard, options, stop));
  if (train.dp.enabled()) round.dp_steps += round.trained.steps;
  for (size_t t = 0; t < tensors.size(); ++t) tensors[t].set_requires_grad(Trainable(spec, t));
  if (round.trained.stopped) return round;

  // The delta against the local start, in the global's units; the method decides what of it
  // goes up.
  AdapterState delta = model.ExportAdapter();
  for (size_t t = 0; t < delta.tensors.size(); ++t) {
    auto& d = delta.tensors[t].values;
    const auto& s = local_start.tensors[t].values;
    for (size_t i = 0; i < d.size(); ++i) d[i] -= s[i];
  }
  if (rescaled) {
    for (const methods::LoraModule& m : layout.modules()) {
      for (float& v : delta.tensors[m.b].values) v *= to_global;
    }
  }
  round.upload = half->Upload(ctx, plan, delta);
  round.factor_scores = std::move(plan.factor_scores);
  for (const auto& e : round.upload) round.values_uploaded += e.values.size();
  return round;
}

}  // namespace fedlora::worker
