#include "aggregator/server_optimizer.h"

#include <fmt/format.h>

#include <cmath>

namespace fedlora::aggregator {

std::string_view ServerOptimizerName(ServerOptimizerKind kind) {
  switch (kind) {
    case ServerOptimizerKind::kSgd: return "sgd";
    case ServerOptimizerKind::kAdam: return "adam";
    case ServerOptimizerKind::kAdamW: return "adamw";
  }
  return "unknown";
}

Result<ServerOptimizerKind> ParseServerOptimizer(std::string_view name) {
  for (auto kind : {ServerOptimizerKind::kSgd, ServerOptimizerKind::kAdam, ServerOptimizerKind::kAdamW}) {
    if (name == ServerOptimizerName(kind)) return kind;
  }
  return InvalidArgument(fmt::format("unknown server optimizer '{}' (sgd, adam, adamw)", name));
}

double DefaultServerLr(ServerOptimizerKind kind) { return kind == ServerOptimizerKind::kSgd ? 1.0 : 1e-3; }

Status ValidateServerOptimizer(const ServerOptimizerOptions& o) {
  if (!(o.beta1 >= 0 && o.beta1 < 1)) return InvalidArgument("server beta1 must be in [0, 1)");
  if (!(o.beta2 >= 0 && o.beta2 < 1)) return InvalidArgument("server beta2 must be in [0, 1)");
  if (!(o.eps > 0) || !std::isfinite(o.eps)) return InvalidArgument("server eps must be positive");
  if (!(o.weight_decay >= 0) || !std::isfinite(o.weight_decay)) {
    return InvalidArgument("server weight decay must be non-negative");
  }
  return Status::Ok();
}

Result<ServerOptimizer> ServerOptimizer::Create(const ServerOptimizerOptions& options, double lr,
                                                const AdapterSpec& spec, ServerOptimizerState state,
                                                uint64_t version) {
  RETURN_IF_ERROR(ValidateServerOptimizer(options));
  if (!(lr > 0) || !std::isfinite(lr)) return InvalidArgument("server learning rate must be positive");
  const std::string_view name = ServerOptimizerName(options.kind);
  if (options.kind == ServerOptimizerKind::kSgd) {
    if (!state.empty()) {
      return FailedPrecondition(fmt::format(
          "the global was trained with server optimizer '{}' (its moments are stored with each version): "
          "resume with that optimizer, or start a new store", state.optimizer));
    }
    return ServerOptimizer(options, lr, {});
  }
  if (state.empty()) {
    if (version > 0) {
      return FailedPrecondition(fmt::format(
          "version {} has no stored '{}' moments: it was trained with server optimizer 'sgd': resume with "
          "that optimizer, or start a new store", version, name));
    }
    state.optimizer = std::string(name);
    state.version = version;
    for (const auto& t : spec.tensors) {
      state.steps.push_back(0);
      state.m.emplace_back(t.numel(), 0.0f);
      state.v.emplace_back(t.numel(), 0.0f);
    }
    return ServerOptimizer(options, lr, std::move(state));
  }
  if (state.optimizer != name) {
    return FailedPrecondition(fmt::format(
        "the global was trained with server optimizer '{}', not '{}': resume with that optimizer, or start a "
        "new store", state.optimizer, name));
  }
  if (state.version != version) {
    return FailedPrecondition(fmt::format("stored server optimizer moments are of version {}, the global is at {}",
                                          state.version, version));
  }
  if (state.steps.size() != spec.tensors.size() || state.m.size() != spec.tensors.size() ||
      state.v.size() != spec.tensors.size()) {
    return DataLoss("server optimizer moments do not match the adapter spec");
  }
  for (size_t t = 0; t < spec.tensors.size(); ++t) {
    if (state.m[t].size() != spec.tensors[t].numel() || state.v[t].size() != spec.tensors[t].numel()) {
      return DataLoss(fmt::format("server optimizer moments of '{}' do not match its shape", spec.tensors[t].name));
    }
  }
  return ServerOptimizer(options, lr, std::move(state));
}

double ServerOptimizer::Apply(size_t t, std::vector<float>& x, const std::vector<float>& sum, double scale,
                              const std::vector<uint8_t>* carried) {
  double sq = 0;
  if (options_.kind == ServerOptimizerKind::kSgd) {
    const float step_scale = static_cast<float>(lr_ * scale);
    for (size_t i = 0; i < x.size(); ++i) {
      const float step = step_scale * sum[i];
      x[i] += step;
      sq += static_cast<double>(step) * step;
    }
    return sq;
  }
  const auto touched = [&](size_t i) { return carried == nullptr || (*carried)[i] != 0; };
  bool any = false;
  for (size_t i = 0; i < x.size() && !any; ++i) any = touched(i);
  if (!any) return 0;
  const uint64_t step = ++state_.steps[t];
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double correct1 = 1.0 - std::pow(b1, static_cast<double>(step));
  const double correct2 = 1.0 - std::pow(b2, static_cast<double>(step));
  const double decay = options_.kind == ServerOptimizerKind::kAdamW ? lr_ * options_.weight_decay : 0.0;
  auto& m = state_.m[t];
  auto& v = state_.v[t];
  for (size_t i = 0; i < x.size(); ++i) {
    if (!touched(i)) continue;
    const double g = scale * sum[i];
    const double mi = b1 * m[i] + (1.0 - b1) * g;
    const double vi = b2 * v[i] + (1.0 - b2) * g * g;
    m[i] = static_cast<float>(mi);
    v[i] = static_cast<float>(vi);
    const double before = x[i];
    const double moved = before - decay * before + lr_ * (mi / correct1) / (std::sqrt(vi / correct2) + options_.eps);
    x[i] = static_cast<float>(moved);
    const double d = static_cast<double>(x[i]) - before;
    sq += d * d;
  }
  return sq;
}

}  // namespace fedlora::aggregator
