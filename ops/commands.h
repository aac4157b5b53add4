// Each `fedlora` subcommand registers itself on the root CLI11 app. A failing command throws
// CommandError, which RunCommandLine reports once.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "schema/status.h"

namespace fedlora::ops {

void RegisterRun(CLI::App& app);
void RegisterPretrain(CLI::App& app);
void RegisterBroker(CLI::App& app);
void RegisterAggregator(CLI::App& app);
void RegisterWorker(CLI::App& app);
void RegisterHistory(CLI::App& app);
void RegisterLog(CLI::App& app);
void RegisterCompare(CLI::App& app);
void RegisterPrivacy(CLI::App& app);
void RegisterInspect(CLI::App& app);
void RegisterReplay(CLI::App& app);
void RegisterLoadgen(CLI::App& app);
void RegisterKeygen(CLI::App& app);
void RegisterDiff(CLI::App& app);
void RegisterLineage(CLI::App& app);
void RegisterExport(CLI::App& app);
void RegisterImport(CLI::App& app);
void RegisterTag(CLI::App& app);
void RegisterBranch(CLI::App& app);
void RegisterRollback(CLI::App& app);
void RegisterDashboard(CLI::App& app);
void RegisterGenerate(CLI::App& app);
void RegisterScore(CLI::App& app);

// "61.8 KB", "1.27 GB"; "-" for a negative count (unknown).
std::string HumanBytes(double bytes);

// A command that cannot go on: main prints "fedlora <command>: <status>" once and exits with
// `exit_code` (2: the request as given cannot be carried out, 1: it failed).
struct CommandError {
  std::string command;
  Status status;
  int exit_code = 1;
};
// Throws CommandError{command, status, exit_code}.
[[noreturn]] void Fail(std::string_view command, const Status& status, int exit_code = 1);

// Parses the command line and runs the chosen command; a CommandError is reported here, once.
int RunCommandLine(CLI::App& app, int argc, char** argv);

}  // namespace fedlora::ops
