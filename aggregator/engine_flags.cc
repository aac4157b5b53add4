#include "aggregator/engine_flags.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>

#include "aggregator/engine_config.h"
#include "aggregator/methods/registry.h"

namespace fedlora::aggregator {

namespace {

// Every registered method's hyperparameters as text flags, each flag once (lora-a2 and
// sa-fedlora share --probe-batches), with the first method's help and default.
class FlagCollector final : public methods::ParamVisitor {
 public:
  void Float(std::string_view flag, float& v, std::string_view help) override { Add(flag, "FLOAT", fmt::format("{}", v), help); }
  void Double(std::string_view flag, double& v, std::string_view help) override {
    Add(flag, "FLOAT", fmt::format("{}", v), help);
  }
  void Uint(std::string_view flag, uint32_t& v, std::string_view help) override { Add(flag, "UINT", fmt::format("{}", v), help); }
  void Choice(std::string_view flag, std::string& v, std::vector<std::string> choices, std::string_view help) override {
    Add(flag, fmt::format("{{{}}}", fmt::join(choices, ",")), v, help);
  }
  struct Flag {
    std::string name, type, default_text, help;
  };
  std::vector<Flag> flags;

 private:
  void Add(std::string_view flag, std::string type, std::string default_text, std::string_view help) {
    for (const Flag& f : flags) {
      if (f.name == flag) return;
    }
    flags.push_back({std::string(flag), std::move(type), std::move(default_text), std::string(help)});
  }
};

void AddMethodParamFlags(CLI::App* app, std::map<std::string, std::string, std::less<>>& values) {
  FlagCollector collector;
  for (const methods::Method* m : methods::AllMethods()) m->DefaultParams()->Visit(collector);
  for (const auto& flag : collector.flags) {
    app->add_option("--" + flag.name, values[flag.name], flag.help)
        ->type_name(flag.type)
        ->default_str(flag.default_text);
  }
}

// Hyperparameters added after versions first recorded their settings, with the value those
// versions ran with: (method, flag, value). A recorded string of that method without the flag
// predates it and replays with this value; newer strings name every hyperparameter of their
// method.
struct LegacyParam {
  std::string_view method, flag, value;
};
constexpr LegacyParam kLegacyParams[] = {
    {"hetlora", "hetlora-rule", "deltas"},
    {"as-lora", "as-score", "change"},
    {"flora", "flora-merge", "truncate"},
};

}  // namespace

void AddEngineFlags(CLI::App* app, EngineFlags& f) {
  std::string names;
  for (const methods::Method* m : methods::AllMethods()) names += fmt::format("\n  {:<11} {}", m->name(), m->summary());
  app->add_option("--method", f.method, "Federation method (docs/methods.md):" + names)->capture_default_str();
  AddMethodParamFlags(app, f.method_params);
  auto& dp = f.engine.client_dp;
  app->add_option("--client-dp-noise", dp.noise_multiplier,
                  "Client-level DP (fedbuff, sync): noise multiplier z; each server step adds N(0, (z C)^2) to the "
                  "sum of clipped client contributions (0: off; plan z with `fedlora privacy`)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--client-dp-clip", dp.clip, "Client-level DP: L2 bound C on each client's contribution to a step")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("--client-dp-budget", dp.budget,
                  "Client-level DP: epsilon at which the adapter is made final and training stops (0: none)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--client-dp-seed", dp.seed,
                  "Client-level DP: the server's secret noise seed [default: the store's, else a fresh random one]");
  app->add_option("--dp-delta", f.engine.dp_delta, "delta of every epsilon reported (client- and record-level)")
      ->check(CLI::Range(1e-300, 0.5))
      ->capture_default_str();
  app->add_option("--mode", f.mode, "Aggregation: fedbuff, fedasync or sync (barrier baseline)")
      ->check(CLI::IsMember({"fedbuff", "fedasync", "sync"}))
      ->capture_default_str();
  app->add_option("--buffer-size,-K", f.engine.buffer_size, "FedBuff: updates per version")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app->add_option("--fedasync-alpha", f.engine.fedasync_alpha, "FedAsync mixing weight")->capture_default_str();
  app->add_option("--server-optimizer", f.server_optimizer,
                  "Server step of fedbuff and sync: sgd, adam or adamw (lazy: only carried elements move; "
                  "moments are stored with every version)")
      ->check(CLI::IsMember({"sgd", "adam", "adamw"}))
      ->capture_default_str();
  app->add_option("--server-lr", f.server_lr, "Server step size [default: 1 for sgd, 1e-3 for adam and adamw]");
  auto& so = f.engine.server_optimizer;
  app->add_option("--server-beta1", so.beta1, "adam, adamw: first-moment decay")->capture_default_str();
  app->add_option("--server-beta2", so.beta2, "adam, adamw: second-moment decay")->capture_default_str();
  app->add_option("--server-eps", so.eps, "adam, adamw: denominator epsilon")->capture_default_str();
  app->add_option("--server-weight-decay", so.weight_decay, "adamw: decoupled weight decay")->capture_default_str();
  app->add_option("--staleness", f.staleness, "Staleness weight: constant, polynomial, hinge")
      ->check(CLI::IsMember({"constant", "polynomial", "hinge"}))
      ->capture_default_str();
  app->add_option("--staleness-a", f.engine.staleness.a,
                  "Polynomial exponent / hinge slope [default: 0.5 for polynomial, 10 for hinge (FedAsync's)]");
  app->add_option("--staleness-b", f.engine.staleness.b, "Hinge: staleness kept at full weight")->capture_default_str();
  app->add_option("--max-staleness", f.engine.staleness.max_staleness, "Drop updates staler than this")
      ->capture_default_str();
  app->add_option("--rank-scale", f.rank_scale,
                  "LoRA scale of a worker that trains fewer ranks r_k than the adapter's r: global (alpha/r, as "
                  "the global) or own (alpha/r_k, PEFT's convention for a rank-r_k adapter); updates arrive in the "
                  "global's units either way")
      ->check(CLI::IsMember({"global", "own"}))
      ->capture_default_str();
  app->add_option("--round-size", f.engine.round_size,
                  "Sync mode: clients per round (`run`: every worker unless given; at most the workers)")
      ->capture_default_str();
}

Status ResolveEngineFlags(EngineFlags& f) {
  if (f.mode == "fedbuff") {
    f.engine.mode = wire::Mode::FedBuff;
  } else if (f.mode == "fedasync") {
    f.engine.mode = wire::Mode::FedAsync;
  } else if (f.mode == "sync") {
    f.engine.mode = wire::Mode::Sync;
  } else {
    return InvalidArgument("unknown mode '" + f.mode + "' (fedbuff, fedasync, sync)");
  }
  ASSIGN_OR_RETURN(f.engine.staleness.fn, ParseStalenessFn(f.staleness));
  f.engine.own_rank_scale = f.rank_scale == "own";
  ASSIGN_OR_RETURN(f.engine.method, methods::MethodChoice::Named(f.method));
  std::map<std::string, std::string, std::less<>> given;
  for (const auto& [flag, value] : f.method_params) {
    if (!value.empty()) given.emplace(flag, value);
  }
  RETURN_IF_ERROR(methods::SetParams(f.engine.method.params(), given));
  ASSIGN_OR_RETURN(f.engine.server_optimizer.kind, ParseServerOptimizer(f.server_optimizer));
  f.engine.server_lr = f.server_lr.value_or(DefaultServerLr(f.engine.server_optimizer.kind));
  return ValidateEngineOptions(f.engine);
}

Result<EngineOptions> RecordedEngineOptions(const codec::VersionInfo& info) {
  if (info.settings) return EngineOptionsOf(*info.settings);
  if (info.config.empty()) return NotFound(fmt::format("version {} recorded no settings", info.version));
  return ParseEngineConfig(SplitFlags(info.config));
}

Result<EngineOptions> ParseEngineConfig(const std::vector<std::string>& args) {
  CLI::App app("engine settings");
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  EngineFlags flags;
  AddEngineFlags(&app, flags);
  std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 consumes from the back
  try {
    app.parse(reversed);
  } catch (const CLI::ParseError& e) {
    return InvalidArgument(fmt::format("engine settings '{}': {}", fmt::join(args, " "), e.what()));
  }
  // The method the settings were recorded with is the first one named (what-if changes follow).
  const auto first = std::find(args.begin(), args.end(), "--method");
  const std::string recorded = first != args.end() && first + 1 != args.end() ? *(first + 1) : "fedavg";
  if (flags.method == recorded) {
    for (const LegacyParam& p : kLegacyParams) {
      if (p.method == recorded && flags.method_params[std::string(p.flag)].empty()) {
        flags.method_params[std::string(p.flag)] = std::string(p.value);
      }
    }
  }
  RETURN_IF_ERROR(ResolveEngineFlags(flags));
  return flags.engine;
}

std::vector<std::string> SplitFlags(std::string_view text) {
  std::vector<std::string> out;
  bool comment = false;
  std::string token;
  auto flush = [&] {
    if (!token.empty()) out.push_back(std::move(token));
    token.clear();
  };
  for (char c : text) {
    if (c == '\n') {
      flush();
      comment = false;
    } else if (comment) {
      continue;
    } else if (c == '#' && token.empty()) {
      comment = true;
    } else if (std::isspace(static_cast<unsigned char>(c))) {
      flush();
    } else {
      token.push_back(c);
    }
  }
  flush();
  return out;
}

}  // namespace fedlora::aggregator
