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
#include "aggregator/engine_flags.h"
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

// The engine's flags and the parser of recorded flag settings (aggregator/engine_flags.h).
using aggregator::AddEngineFlags;
using aggregator::EngineFlags;
using aggregator::ParseEngineConfig;
using aggregator::RecordedEngineOptions;
using aggregator::ResolveEngineFlags;
using aggregator::SplitFlags;

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
