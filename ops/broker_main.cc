// fedlora-broker: `fedlora broker` in a process without LibTorch. `fedlora broker` runs it when it
// is installed beside `fedlora`; it takes the same flags (see `fedlora broker --help`), with or
// without the word `broker` first.
#include <CLI/CLI.hpp>

#include <cstring>
#include <filesystem>
#include <vector>

#include "ops/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"fedlora-broker: the fedlora broker alone, without LibTorch (the same as `fedlora broker`)",
               "fedlora-broker"};
  // Named as it was called: "fedlora" when `fedlora broker` handed over (its argv is kept).
  app.name(std::filesystem::path(argv[0]).filename().string());
  app.require_subcommand(1);
  fedlora::ops::RegisterBroker(app);
  std::vector<char*> args(argv, argv + argc);
  char broker[] = "broker";
  if (argc < 2 || std::strcmp(argv[1], "broker") != 0) args.insert(args.begin() + 1, broker);
  return fedlora::ops::RunCommandLine(app, static_cast<int>(args.size()), args.data());
}
