#include "aggregator/engine_config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <map>

namespace fedlora::aggregator {
namespace {

class Flags {
 public:
  // fmt prints floating-point numbers as the shortest text that reads back to the same value.
  template <typename T>
  void Add(std::string_view name, const T& value) {
    if (!text_.empty()) text_ += ' ';
    text_ += fmt::format("--{} {}", name, value);
  }
  std::string Take() { return std::move(text_); }

 private:
  std::string text_;
};

// Collects a method's hyperparameters into stored form.
class ParamWriter final : public methods::ParamVisitor {
 public:
  void Float(std::string_view flag, float& value, std::string_view) override { Add(flag, value); }
  void Double(std::string_view flag, double& value, std::string_view) override { Add(flag, value); }
  void Uint(std::string_view flag, uint32_t& value, std::string_view) override { Add(flag, value); }
  void Choice(std::string_view flag, std::string& value, std::vector<std::string>, std::string_view) override {
    params.push_back({std::string(flag), 0, value});
  }
  std::vector<codec::EngineSettings::Param> params;

 private:
  void Add(std::string_view flag, double value) { params.push_back({std::string(flag), value, std::nullopt}); }
};

// Sets a method's hyperparameters from stored form; every stored one must be the method's.
class ParamReader final : public methods::ParamVisitor {
 public:
  explicit ParamReader(const std::vector<codec::EngineSettings::Param>& params) {
    for (const auto& p : params) unused_.emplace(p.name, &p);
  }
  void Float(std::string_view flag, float& value, std::string_view) override {
    if (const auto* p = Take(flag, false)) value = static_cast<float>(p->number);
  }
  void Double(std::string_view flag, double& value, std::string_view) override {
    if (const auto* p = Take(flag, false)) value = p->number;
  }
  void Uint(std::string_view flag, uint32_t& value, std::string_view) override {
    if (const auto* p = Take(flag, false)) value = static_cast<uint32_t>(p->number);
  }
  void Choice(std::string_view flag, std::string& value, std::vector<std::string> choices, std::string_view) override {
    const auto* p = Take(flag, true);
    if (p == nullptr) return;
    if (std::find(choices.begin(), choices.end(), *p->choice) == choices.end()) {
      Fail(fmt::format("--{} {} is not one of {}", flag, *p->choice, fmt::join(choices, ", ")));
      return;
    }
    value = *p->choice;
  }
  Status Finish(std::string_view method) {
    if (status_.ok() && !unused_.empty()) {
      Fail(fmt::format("method {} has no hyperparameter --{}", method, unused_.begin()->first));
    }
    return status_;
  }

 private:
  const codec::EngineSettings::Param* Take(std::string_view flag, bool choice) {
    auto it = unused_.find(std::string(flag));
    if (it == unused_.end()) return nullptr;  // not stored: the method's default
    const auto* p = it->second;
    unused_.erase(it);
    if (p->choice.has_value() != choice) {
      Fail(fmt::format("stored hyperparameter --{} is {} but the method takes {}", flag,
                       p->choice ? "a choice" : "a number", choice ? "a choice" : "a number"));
      return nullptr;
    }
    return p;
  }
  void Fail(std::string message) {
    if (status_.ok()) status_ = InvalidArgument(std::move(message));
  }
  std::map<std::string, const codec::EngineSettings::Param*> unused_;
  Status status_;
};

}  // namespace

codec::EngineSettings EngineSettingsOf(const EngineOptions& o) {
  codec::EngineSettings s;
  s.method = std::string(o.method.name());
  ParamWriter writer;
  std::unique_ptr<methods::MethodParams> params = o.method.params().Clone();
  params->Visit(writer);
  s.params = std::move(writer.params);
  s.mode = o.mode;
  s.buffer_size = o.buffer_size;
  s.fedasync_alpha = o.fedasync_alpha;
  s.round_size = o.round_size;
  s.own_rank_scale = o.own_rank_scale;
  s.server_optimizer = std::string(ServerOptimizerName(o.server_optimizer.kind));
  s.server_lr = o.server_lr;
  s.server_beta1 = o.server_optimizer.beta1;
  s.server_beta2 = o.server_optimizer.beta2;
  s.server_eps = o.server_optimizer.eps;
  s.server_weight_decay = o.server_optimizer.weight_decay;
  s.staleness = std::string(StalenessFnName(o.staleness.fn));
  s.staleness_a = StalenessA(o.staleness);
  s.staleness_b = o.staleness.b;
  s.max_staleness = o.staleness.max_staleness;
  s.client_dp_noise = o.client_dp.noise_multiplier;
  s.client_dp_clip = o.client_dp.clip;
  s.client_dp_budget = o.client_dp.budget;
  s.dp_delta = o.dp_delta;
  return s;
}

Result<EngineOptions> EngineOptionsOf(const codec::EngineSettings& s) {
  EngineOptions o;
  ASSIGN_OR_RETURN(o.method, methods::MethodChoice::Named(s.method));
  ParamReader reader(s.params);
  o.method.params().Visit(reader);
  RETURN_IF_ERROR(reader.Finish(s.method));
  o.mode = s.mode;
  o.buffer_size = s.buffer_size;
  o.fedasync_alpha = s.fedasync_alpha;
  o.round_size = s.round_size;
  o.own_rank_scale = s.own_rank_scale;
  ASSIGN_OR_RETURN(o.server_optimizer.kind, ParseServerOptimizer(s.server_optimizer));
  o.server_lr = s.server_lr;
  o.server_optimizer.beta1 = s.server_beta1;
  o.server_optimizer.beta2 = s.server_beta2;
  o.server_optimizer.eps = s.server_eps;
  o.server_optimizer.weight_decay = s.server_weight_decay;
  ASSIGN_OR_RETURN(o.staleness.fn, ParseStalenessFn(s.staleness));
  o.staleness.a = s.staleness_a;
  o.staleness.b = s.staleness_b;
  o.staleness.max_staleness = s.max_staleness;
  o.client_dp.noise_multiplier = s.client_dp_noise;
  o.client_dp.clip = s.client_dp_clip;
  o.client_dp.budget = s.client_dp_budget;
  o.dp_delta = s.dp_delta;
  return o;
}

Result<std::string> RecordedConfig(const codec::VersionInfo& info) {
  if (!info.settings) return info.config;
  ASSIGN_OR_RETURN(EngineOptions options, EngineOptionsOf(*info.settings));
  return EngineConfigFlags(options);
}

std::string EngineConfigFlags(const EngineOptions& o) {
  Flags f;
  f.Add("method", o.method.name());
  f.Add("mode", codec::ModeName(o.mode));
  f.Add("buffer-size", o.buffer_size);
  f.Add("fedasync-alpha", o.fedasync_alpha);
  f.Add("round-size", o.round_size);
  f.Add("rank-scale", o.own_rank_scale ? "own" : "global");
  f.Add("server-optimizer", ServerOptimizerName(o.server_optimizer.kind));
  f.Add("server-lr", o.server_lr);
  f.Add("server-beta1", o.server_optimizer.beta1);
  f.Add("server-beta2", o.server_optimizer.beta2);
  f.Add("server-eps", o.server_optimizer.eps);
  f.Add("server-weight-decay", o.server_optimizer.weight_decay);
  f.Add("staleness", StalenessFnName(o.staleness.fn));
  f.Add("staleness-a", StalenessA(o.staleness));
  f.Add("staleness-b", o.staleness.b);
  f.Add("max-staleness", o.staleness.max_staleness);
  f.Add("client-dp-noise", o.client_dp.noise_multiplier);
  f.Add("client-dp-clip", o.client_dp.clip);
  f.Add("client-dp-budget", o.client_dp.budget);
  f.Add("dp-delta", o.dp_delta);
  std::string text = f.Take();
  // The chosen method's hyperparameters (methods/method.h), in the method's order.
  if (std::string params = methods::ParamFlags(o.method.params()); !params.empty()) text += ' ' + params;
  return text;
}

}  // namespace fedlora::aggregator
