// `fedlora tag` (name a version) and `fedlora branch` (a new adapter whose version 0 is a stored
// version, to start a new line of training from it; the source's history is never touched).
#include <fmt/format.h>

#include "aggregator/branch.h"
#include "ops/commands.h"
#include "ops/flags.h"
#include "storage/reader.h"

namespace fedlora::ops {

void RegisterTag(CLI::App& app) {
  struct Flags {
    StoreLayout store;
    std::string adapter = "default";
    std::string version;
    std::string name;
    bool list = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand("tag", "Name a version (`tag 12 good-run`), or list the names (`tag --list`). Tags "
                                        "never move; inspect, diff, export and branch accept them where they take a "
                                        "version. Works while an aggregator runs");
  cmd->add_option("VERSION", f->version, "The version to name");
  cmd->add_option("NAME", f->name, "The tag");
  cmd->add_flag("--list", f->list, "List the adapter's tags");
  cmd->add_option("--store", f->store.dir, "Store directory")->capture_default_str();
  cmd->add_option("--adapter", f->adapter, "Adapter id")->capture_default_str();
  cmd->callback([f] {
    if (f->list) {
      auto tags = storage::ReadTags(f->store, f->adapter);
      if (!tags.ok()) Fail("tag", tags.status());
      if (tags->empty()) fmt::print("adapter '{}' has no tags\n", f->adapter);
      for (const auto& [name, v] : *tags) fmt::print("{:<24} version {}\n", name, v);
      return;
    }
    if (f->version.empty() || f->name.empty()) Fail("tag", InvalidArgument("usage: fedlora tag VERSION NAME, or --list"), 2);
    auto stored = storage::StoredAdapter::Open(f->store, f->adapter);
    if (!stored.ok()) Fail("tag", stored.status());
    auto version = storage::ResolveVersion(f->store, f->adapter, f->version);
    if (!version.ok()) Fail("tag", version.status(), 2);
    auto record = stored->Record(*version);
    if (!record.ok()) Fail("tag", record.status(), 2);
    if (Status s = storage::AddTag(f->store, f->adapter, f->name, *version); !s.ok()) Fail("tag", s, 2);
    fmt::print("tag: '{}' names version {} of '{}' (content hash {})\n", f->name, *version, f->adapter,
               record->content_hash);
  });
}

void RegisterBranch(CLI::App& app) {
  struct Flags {
    StoreLayout store;
    StoreLayout to;
    std::string adapter = "default";
    std::string from;
    std::string name;
    bool no_sync = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand(
      "branch", "Start a new adapter from a stored version: version 0 of --name is version --from of --adapter (its "
                "tensors and method state). `fedlora aggregator --adapter NAME` then trains it on its own history");
  cmd->add_option("--from", f->from, "The version (number or tag) to branch from")->required();
  cmd->add_option("--name", f->name, "Id of the new adapter")->required();
  cmd->add_option("--store", f->store.dir, "Store holding the source")->capture_default_str();
  cmd->add_option("--adapter", f->adapter, "Source adapter")->capture_default_str();
  cmd->add_option("--to-store", f->to.dir, "Store to create the branch in (default: --store; it must not be in use "
                                            "by a running aggregator)");
  cmd->add_flag("--no-sync", f->no_sync, "Do not fsync the commit (tests only)");
  cmd->callback([f] {
    const StoreLayout& to = f->to.dir.empty() ? f->store : f->to;
    auto done = aggregator::BranchAdapter({f->store, f->adapter, f->from, to, f->name, !f->no_sync});
    if (!done.ok()) {
      const Code c = done.status().code();
      Fail("branch", done.status(), c == Code::kInvalidArgument || c == Code::kNotFound || c == Code::kAlreadyExists ? 2 : 1);
    }
    fmt::print("branch: adapter '{}' version 0 in {} = '{}' version {} (content hash {}); train it with `fedlora "
               "aggregator --store {} --adapter {}`\n",
               f->name, to.dir, f->adapter, done->version, done->content_hash, to.dir, f->name);
  });
}

}  // namespace fedlora::ops
