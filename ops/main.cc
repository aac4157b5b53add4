// fedlora: federated LoRA fine-tuning without round barriers. See README.md.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>

#include "ops/commands.h"

namespace {

// `fedlora broker` runs as `fedlora-broker` when that is installed beside this binary: the
// same command without LibTorch in the process (this one has it loaded already, ~160 MiB of
// resident memory a broker has no use for). Returns only if there is nothing to hand over to.
void HandOverBroker(char** argv) {
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return;
  const std::string lean = (self.parent_path() / "fedlora-broker").string();
  if (::access(lean.c_str(), X_OK) != 0) return;
  ::execv(lean.c_str(), argv);
  std::fprintf(stderr, "fedlora broker: cannot run %s (%s); running here instead\n", lean.c_str(), std::strerror(errno));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "broker") == 0) HandOverBroker(argv);
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
  fedlora::ops::RegisterGenerate(app);
  fedlora::ops::RegisterScore(app);
  return fedlora::ops::RunCommandLine(app, argc, argv);
}
