// Command-line flags shared by several `fedlora` subcommands, bound to the components'
// option structs so every default is stated once (in the struct) and shown by --help.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <map>
#include <optional>
#include <stop_token>
#include <string>

#include "aggregator/aggregator.h"
#include "storage/layout.h"
#include "worker/federation/task.h"
#include "worker/client.h"

namespace fedlora::ops {

// Where a run keeps its data: <store>/log (update log), <store>/adapters (versions and
// lineage), <store>/base (frozen base models).
using StoreLayout = storage::StoreLayout;  // storage/layout.h

// The tasks (worker/federation/task.h), as the commands name them.
using federation::BasePath;
using federation::DescribeEval;
using federation::EnsureBase;
using federation::IsLanguageTask;
using federation::IsTextClassification;
using federation::kTaskNames;
using federation::LoadTaskData;
using federation::MakeEvaluator;
using federation::MakeInitialAdapter;
using federation::MissingBase;
using federation::MixAccuracy;
using federation::OwnLanguageModelPath;
using federation::SetTorchThreads;
using federation::TaskBase;
using federation::TaskOfSpec;
using federation::TaskOptions;

void AddTaskFlags(CLI::App* app, TaskOptions& task);
// --task, --text, --seq-len, --examples-per-source, --target-modules (the lm task's data and
// LoRA targets; the checkpoint directory comes from each command's --base).
void AddLanguageTaskFlags(CLI::App* app, TaskOptions& task);
// --text, --seq-len, --examples-per-source (part of AddLanguageTaskFlags): the lm task's data.
void AddTextFlags(CLI::App* app, TaskOptions& task);
// --partition and --classes-per-client (part of AddTaskFlags; `run` adds them on their own).
void AddPartitionFlags(CLI::App* app, TaskOptions& task);

// Server rule flags: --method and its hyperparameters, --mode, --buffer-size, --fedasync-alpha,
// --server-optimizer and its hyperparameters, --staleness, --staleness-a, --staleness-b,
// --max-staleness, --round-size, as-lora's --as-*, client-level DP (--client-dp-*), --dp-delta.
struct EngineFlags {
  std::string method = "fedavg";
  // The methods' hyperparameters as given (flag without "--" -> text); every registered
  // method's flags are accepted, the chosen method's are applied (methods/method.h).
  std::map<std::string, std::string, std::less<>> method_params;
  std::string mode = "fedbuff";
  std::string staleness = "polynomial";
  std::string server_optimizer = "sgd";
  std::string rank_scale = "global";
  std::optional<double> server_lr;  // unset: the optimizer's default
  aggregator::EngineOptions engine;
};
void AddEngineFlags(CLI::App* app, EngineFlags& flags);
// Parses the string flags into flags.engine. Errors: kInvalidArgument.
Status ResolveEngineFlags(EngineFlags& flags);
// The EngineOptions that `fedlora aggregator` would run with given these engine flags (a
// flag given twice: the last one counts), e.g. a version's recorded settings
// (aggregator/engine_config.h) followed by what-if changes. Unset flags keep their defaults.
// Errors: kInvalidArgument (an unknown flag, a bad value).
Result<aggregator::EngineOptions> ParseEngineConfig(const std::vector<std::string>& args);
// The EngineOptions a version was made with: its settings table, or the flags text of a store
// from before the table. Errors: kNotFound (a store older than either), ParseEngineConfig's and
// aggregator::EngineOptionsOf's.
Result<aggregator::EngineOptions> RecordedEngineOptions(const codec::VersionInfo& info);
// Splits a flags text into arguments at whitespace; lines starting with '#' are comments.
std::vector<std::string> SplitFlags(std::string_view text);

// --local-steps, --batch-size, --lr and record-level DP-SGD (--dp-noise, --dp-epsilon,
// --dp-steps, --dp-clip, and --dp-delta unless `delta_flag` is false: a command that also has
// AddEngineFlags' --dp-delta copies EngineOptions::dp_delta into training.dp.delta itself).
void AddTrainingFlags(CLI::App* app, worker::WorkerTraining& training, bool delta_flag = true);

// --broker-key FILE and --key FILE: CURVE keys of a client of a secured broker.
struct ClientKeyFlags {
  std::string broker_key;
  std::string key;
};
void AddClientKeyFlags(CLI::App* app, ClientKeyFlags& flags);

// Installs SIGINT/SIGTERM handlers that set a flag instead of killing the process.
// --http HOST:PORT: serve `what` over HTTP (ops/live.h); empty (the default): no HTTP.
void AddHttpFlag(CLI::App* app, std::string& address, std::string_view what);

void InstallStopSignals();
bool StopSignalled();
// Runs `body(stop)` on a thread until it returns or SIGINT/SIGTERM arrives (then requests stop
// and waits for it).
Status RunUntilSignalled(const std::function<Status(std::stop_token)>& body);

// Logging: quiet components unless --verbose; "warn" by default for interactive commands.
void SetupLogging(bool verbose);

}  // namespace fedlora::ops
