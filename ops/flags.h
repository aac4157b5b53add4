// Command-line flags shared by several `fedlora` subcommands, bound to the components'
// option structs so every default is stated once (in the struct) and shown by --help.
#pragma once

#include <CLI/CLI.hpp>

#include <optional>
#include <string>

#include "aggregator/aggregator.h"
#include "ops/federation.h"
#include "worker/client.h"

namespace fedlora::ops {

// Where a run keeps its data: <store>/log (update log), <store>/adapters (versions and
// lineage), <store>/base (frozen base models).
struct StoreLayout {
  std::string dir = "fedlora-data";
  std::string log() const { return dir + "/log"; }
  std::string adapters() const { return dir + "/adapters"; }
};

void AddTaskFlags(CLI::App* app, TaskOptions& task);
// --partition and --classes-per-client (part of AddTaskFlags; `run` adds them on their own).
void AddPartitionFlags(CLI::App* app, TaskOptions& task);

// Server rule flags: --method and its hyperparameters, --mode, --buffer-size, --fedasync-alpha,
// --server-optimizer and its hyperparameters, --staleness, --staleness-a, --staleness-b,
// --max-staleness, --round-size, as-lora's --as-*, client-level DP (--client-dp-*), --dp-delta.
struct EngineFlags {
  std::string method = "fedavg";
  std::string mode = "fedbuff";
  std::string staleness = "polynomial";
  std::string server_optimizer = "sgd";
  std::optional<double> server_lr;  // unset: the optimizer's default
  aggregator::EngineOptions engine;
};
void AddEngineFlags(CLI::App* app, EngineFlags& flags);
// Parses the string flags into flags.engine. Errors: kInvalidArgument.
Status ResolveEngineFlags(EngineFlags& flags);

// --local-steps, --batch-size, --lr and record-level DP-SGD (--dp-noise, --dp-epsilon,
// --dp-steps, --dp-clip, and --dp-delta unless `delta_flag` is false: a command that also has
// AddEngineFlags' --dp-delta copies EngineOptions::dp_delta into training.dp.delta itself).
void AddTrainingFlags(CLI::App* app, worker::WorkerTraining& training, bool delta_flag = true);

// Installs SIGINT/SIGTERM handlers that set a flag instead of killing the process.
void InstallStopSignals();
bool StopSignalled();

// Logging: quiet components unless --verbose; "warn" by default for interactive commands.
void SetupLogging(bool verbose);

}  // namespace fedlora::ops
