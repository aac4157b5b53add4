#include "ops/flags.h"

#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <csignal>
#include <thread>

#include "aggregator/engine_config.h"
#include "aggregator/methods/registry.h"
#include "ops/commands.h"

namespace fedlora::ops {

void AddTaskFlags(CLI::App* app, TaskOptions& task) {
  app->add_option("--data-dir", task.data_dir, "Fashion-MNIST IDX files (Debian package dataset-fashion-mnist)")
      ->capture_default_str();
  app->add_option("--arch", task.arch, "Base model: vit-tiny or mlp")
      ->check(CLI::IsMember({"vit-tiny", "mlp"}))
      ->capture_default_str();
  app->add_option("--rank", task.rank, "LoRA rank r")->check(CLI::Range(1, 256))->capture_default_str();
  app->add_option("--lora-alpha", task.lora_alpha, "LoRA alpha (scale alpha/r)")->capture_default_str();
  app->add_option("--lora-seed", task.lora_seed, "Seed of the shared LoRA A initialisation")->capture_default_str();
  app->add_option("--clients", task.num_clients, "Number of clients the private data is split across")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  app->add_option("--dirichlet", task.dirichlet_alpha, "Dirichlet alpha of the non-IID label split")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("--partition-seed", task.partition_seed, "Seed of the data partition")->capture_default_str();
  AddPartitionFlags(app, task);
}

void AddLanguageTaskFlags(CLI::App* app, TaskOptions& task) {
  app->add_option("--task", task.task,
                  "image: classify Fashion-MNIST with a base fedlora pretrains; lm-finetune (or lm): fine-tune a "
                  "language model on next tokens of --text; text-classify: fine-tune it as a classifier of WordNet's "
                  "glosses (--wordnet) into their 45 lexicographer classes. The language model is the checkpoint of "
                  "--base or, without it, fedlora's own (<store>/base/fedlora-lm, made by `fedlora pretrain --task lm` "
                  "when missing)")
      ->check(CLI::IsMember(kTaskNames))
      ->capture_default_str();
  AddTextFlags(app, task);
  app->add_option("--target-modules", task.target_modules,
                  "LoRA targets, comma-separated (lm: PEFT's names q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,"
                  "down_proj, default q_proj,v_proj; image: the model's module paths, default all)")
      ->delimiter(',');
}

void AddTextFlags(CLI::App* app, TaskOptions& task) {
  app->add_option("--text", task.text,
                  "lm: text files or directories (each file one source, the unit of the non-IID split; fortune "
                  "files split at '%' lines, other files at blank lines)")
      ->capture_default_str();
  app->add_option("--seq-len", task.seq_len, "lm: tokens per example at most (lm-finetune cuts longer texts into windows, text-classify truncates "
                  "longer glosses)")
      ->check(CLI::Range(2, 1 << 20))
      ->capture_default_str();
  app->add_option("--examples-per-source", task.examples_per_source,
                  "lm-finetune: use the first N examples of each source; text-classify: a seeded sample of N glosses "
                  "of each class (0: all)")
      ->capture_default_str();
  app->add_option("--wordnet", task.wordnet_dir,
                  "text-classify: the WordNet directory holding data.noun, data.verb, data.adj and data.adv (Debian's "
                  "wordnet-base)")
      ->capture_default_str();
}

void AddPartitionFlags(CLI::App* app, TaskOptions& task) {
  app->add_option("--partition", task.partition,
                  "Label split across clients: dirichlet (see --dirichlet) or pathological (each client holds "
                  "--classes-per-client label-sorted shards)")
      ->check(CLI::IsMember({"dirichlet", "pathological"}))
      ->capture_default_str();
  app->add_option("--classes-per-client", task.classes_per_client,
                  "Pathological split: shards (classes, or text sources) per client")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
}

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
  ASSIGN_OR_RETURN(f.engine.staleness.fn, aggregator::ParseStalenessFn(f.staleness));
  f.engine.own_rank_scale = f.rank_scale == "own";
  ASSIGN_OR_RETURN(f.engine.method, methods::MethodChoice::Named(f.method));
  std::map<std::string, std::string, std::less<>> given;
  for (const auto& [flag, value] : f.method_params) {
    if (!value.empty()) given.emplace(flag, value);
  }
  RETURN_IF_ERROR(methods::SetParams(f.engine.method.params(), given));
  ASSIGN_OR_RETURN(f.engine.server_optimizer.kind, aggregator::ParseServerOptimizer(f.server_optimizer));
  f.engine.server_lr = f.server_lr.value_or(aggregator::DefaultServerLr(f.engine.server_optimizer.kind));
  return aggregator::ValidateEngineOptions(f.engine);
}

Result<aggregator::EngineOptions> RecordedEngineOptions(const codec::VersionInfo& info) {
  if (info.settings) return aggregator::EngineOptionsOf(*info.settings);
  if (info.config.empty()) return NotFound(fmt::format("version {} recorded no settings", info.version));
  return ParseEngineConfig(SplitFlags(info.config));
}

Result<aggregator::EngineOptions> ParseEngineConfig(const std::vector<std::string>& args) {
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

void AddTrainingFlags(CLI::App* app, worker::WorkerTraining& t, bool delta_flag) {
  app->add_option("--local-steps", t.steps, "Optimizer steps per local run")->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  app->add_option("--batch-size", t.batch_size, "Local batch size (DP-SGD: the expected Poisson batch size)")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  app->add_option("--lr", t.lr, "Local learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  auto& dp = t.dp;
  app->add_option("--dp-noise", dp.noise_multiplier,
                  "Record-level DP-SGD: noise multiplier sigma of each worker's local training (0: off, or derived "
                  "from --dp-epsilon and --dp-steps)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--dp-epsilon", dp.epsilon,
                  "Record-level DP-SGD: epsilon budget of each worker's data; a worker stops before a local run "
                  "that would exceed it (0: none)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--dp-steps", dp.planned_steps,
                  "Record-level DP-SGD: DP-SGD steps the epsilon is planned for; without --dp-noise the noise is "
                  "the smallest that spends exactly --dp-epsilon over them")
      ->capture_default_str();
  app->add_option("--dp-clip", dp.clip, "Record-level DP-SGD: per-example L2 clip norm")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  if (delta_flag) {
    app->add_option("--dp-delta", dp.delta, "delta of the epsilon reported")
        ->check(CLI::Range(1e-300, 0.5))
        ->capture_default_str();
  }
}

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }
}  // namespace

void AddClientKeyFlags(CLI::App* app, ClientKeyFlags& flags) {
  app->add_option("--broker-key", flags.broker_key,
                  "The secured broker's public key file (its .pub from `fedlora keygen`); needs --key")
      ->check(CLI::ExistingFile);
  app->add_option("--key", flags.key, "This client's secret key file (.key from `fedlora keygen`); its public key "
                                      "must be in the broker's --allow list")
      ->check(CLI::ExistingFile);
}

void InstallStopSignals() {
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
}

void AddHttpFlag(CLI::App* app, std::string& address, std::string_view what) {
  app->add_option("--http", address,
                  fmt::format("Serve {} over HTTP on HOST:PORT (port 0 picks a free one; the address is printed). "
                              "Bind to 127.0.0.1 unless the network is trusted: the endpoint has no authentication",
                              what));
}

bool StopSignalled() { return g_stop.load(); }

Status RunUntilSignalled(const std::function<Status(std::stop_token)>& body) {
  InstallStopSignals();
  Status result;
  std::atomic<bool> done{false};
  std::jthread thread([&](std::stop_token stop) {
    result = body(stop);
    done = true;
  });
  // Signal handlers can only set a flag; check it a few times a second.
  while (!done && !StopSignalled()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  thread.request_stop();
  thread.join();
  return result;
}

void SetupLogging(bool verbose) {
  // Log lines go to stderr, so that stdout carries only results (--json output stays parseable).
  if (!spdlog::get("fedlora")) spdlog::set_default_logger(spdlog::stderr_color_mt("fedlora"));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v");
  spdlog::set_level(verbose ? spdlog::level::info : spdlog::level::warn);
}

void Fail(std::string_view command, const Status& status, int exit_code) {
  fmt::print(stderr, "fedlora {}: {}\n", command, status.ToString());
  throw CLI::RuntimeError(exit_code);
}

std::string HumanBytes(double bytes) {
  if (bytes < 0) return "-";
  if (bytes >= 1e9) return fmt::format("{:.2f} GB", bytes / 1e9);
  if (bytes >= 1e6) return fmt::format("{:.1f} MB", bytes / 1e6);
  if (bytes >= 1e3) return fmt::format("{:.1f} KB", bytes / 1e3);
  return fmt::format("{:.0f} B", bytes);
}

}  // namespace fedlora::ops
