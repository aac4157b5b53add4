// fedlora: federated LoRA fine-tuning without round barriers. See README.md.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdio>

#include "ops/commands.h"

namespace fedlora::ops {

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

int main(int argc, char** argv) {
  CLI::App app{
      "fedlora: asynchronous federated LoRA fine-tuning with a durable, replayable update log.\n"
      "Start with `fedlora run` (the whole federation on this machine), or run the roles as\n"
      "separate processes: `fedlora pretrain`, `fedlora broker`, `fedlora aggregator`,\n"
      "`fedlora worker`. Inspect a store with `fedlora history`, `inspect` and `log`, watch it\n"
      "with `fedlora dashboard` (or --http on run and aggregator), roll it back with\n"
      "`fedlora rollback`; compare the federation methods on one task with `fedlora compare`;\n"
      "plan a private run with `fedlora privacy`.",
      "fedlora"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "fedlora 0.1.0");
  fedlora::ops::RegisterRun(app);
  fedlora::ops::RegisterPretrain(app);
  fedlora::ops::RegisterBroker(app);
  fedlora::ops::RegisterAggregator(app);
  fedlora::ops::RegisterWorker(app);
  fedlora::ops::RegisterHistory(app);
  fedlora::ops::RegisterLog(app);
  fedlora::ops::RegisterCompare(app);
  fedlora::ops::RegisterPrivacy(app);
  fedlora::ops::RegisterInspect(app);
  fedlora::ops::RegisterDiff(app);
  fedlora::ops::RegisterLineage(app);
  fedlora::ops::RegisterExport(app);
  fedlora::ops::RegisterImport(app);
  fedlora::ops::RegisterTag(app);
  fedlora::ops::RegisterBranch(app);
  fedlora::ops::RegisterRollback(app);
  fedlora::ops::RegisterDashboard(app);
  fedlora::ops::RegisterReplay(app);
  fedlora::ops::RegisterLoadgen(app);
  fedlora::ops::RegisterKeygen(app);
  CLI11_PARSE(app, argc, argv);
  return 0;
}
