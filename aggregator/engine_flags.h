// The aggregation engine's settings as command-line flags, and the parser of the flag text that
// versions recorded before the settings table (VersionRecord.settings): --method and its
// hyperparameters, --mode, --buffer-size, --fedasync-alpha, --server-optimizer and its
// hyperparameters, --staleness*, --max-staleness, --round-size, --rank-scale, client-level DP
// (--client-dp-*) and --dp-delta. Every default is stated once, in EngineOptions and the
// methods' parameter structs, and shown by --help. A version's recorded flags and a what-if's
// changes are read by the same definitions that `fedlora aggregator` parses.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "aggregator/engine.h"
#include "schema/codec.h"
#include "schema/status.h"

namespace fedlora::aggregator {

// The flags as given, before ResolveEngineFlags turns the text ones into `engine`.
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
  EngineOptions engine;
};
void AddEngineFlags(CLI::App* app, EngineFlags& flags);
// Parses the string flags into flags.engine. Errors: kInvalidArgument.
Status ResolveEngineFlags(EngineFlags& flags);
// The EngineOptions that `fedlora aggregator` would run with given these engine flags (a
// flag given twice: the last one counts), e.g. a version's recorded settings
// (aggregator/engine_config.h) followed by what-if changes. Unset flags keep their defaults.
// Errors: kInvalidArgument (an unknown flag, a bad value).
Result<EngineOptions> ParseEngineConfig(const std::vector<std::string>& args);
// The EngineOptions a version was made with: its settings table, or the flags text of a store
// from before the table. Errors: kNotFound (a store older than either), ParseEngineConfig's and
// EngineOptionsOf's.
Result<EngineOptions> RecordedEngineOptions(const codec::VersionInfo& info);
// Splits a flags text into arguments at whitespace; lines starting with '#' are comments.
std::vector<std::string> SplitFlags(std::string_view text);

}  // namespace fedlora::aggregator
