// `fedlora export` (a stored version as a Hugging Face PEFT LoRA checkpoint) and `fedlora import`
// (a PEFT LoRA checkpoint as version 0 of a new adapter, ready for an aggregator to train on).
#include <fmt/format.h>

#include <filesystem>

#include "aggregator/commit.h"
#include "ops/commands.h"
#include "ops/flags.h"
#include "ops/peft.h"
#include "ops/stored.h"
#include "schema/validate.h"

namespace fedlora::ops {

void RegisterExport(CLI::App& app) {
  struct Flags {
    StoreLayout store;
    std::string adapter = "default";
    std::optional<std::string> version;
    std::string format = "peft";
    std::string out;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand("export", "Write a stored version as a Hugging Face PEFT LoRA checkpoint: "
                                           "adapter_model.safetensors and adapter_config.json in --out");
  cmd->add_option("--store", f->store.dir, "Store directory")->capture_default_str();
  cmd->add_option("--adapter", f->adapter, "Adapter id")->capture_default_str();
  cmd->add_option("--version", f->version, "The version to export, a number or a tag (default: the latest)");
  cmd->add_option("--format", f->format, "Output format")->check(CLI::IsMember({"peft"}))->capture_default_str();
  cmd->add_option("--out", f->out, "Directory to write (created; existing export files are never overwritten)")
      ->required();
  cmd->callback([f] {
    auto stored = StoredAdapter::Open(f->store, f->adapter);
    if (!stored.ok()) Fail("export", stored.status());
    uint64_t version = stored->cursor().version;
    if (f->version) {
      auto v = ResolveVersion(f->store, f->adapter, *f->version);
      if (!v.ok()) Fail("export", v.status(), 2);
      version = *v;
    }
    auto global = stored->Global(version);
    if (!global.ok()) Fail("export", global.status());
    PeftAdapter peft{global->spec, global->state,
                     {{"fedlora.adapter", f->adapter},
                      {"fedlora.version", std::to_string(version)},
                      {"fedlora.content_hash", global->info.content_hash}}};
    if (Status s = WritePeft(f->out, peft); !s.ok()) Fail("export", s, s.code() == Code::kAlreadyExists ? 2 : 1);
    size_t modules = 0;
    for (const auto& t : global->spec.tensors) modules += t.role == TensorRole::kLoraA;
    fmt::print("export: version {} of '{}' (rank {}, alpha {:g}, {} LoRA modules, {} tensors, {} values, content hash "
               "{}) -> {}/adapter_model.safetensors, adapter_config.json\n",
               version, f->adapter, global->spec.rank, global->spec.alpha, modules, global->spec.tensors.size(),
               global->spec.numel(), global->info.content_hash, f->out);
    if (global->spec.has_residuals()) {
      fmt::print("export: each module's residual is merged into its factors (rank_pattern and alpha_pattern in "
                 "adapter_config.json give the per-module ranks)\n");
    }
  });
}

void RegisterImport(CLI::App& app) {
  struct Flags {
    StoreLayout store;
    std::string adapter;
    std::string in;
    bool no_sync = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand(
      "import", "Read a PEFT LoRA checkpoint (adapter_model.safetensors + adapter_config.json, F32) and store it as "
                "version 0 of a new adapter; `fedlora aggregator --adapter ID` then trains on from it");
  cmd->add_option("--in", f->in, "Directory holding the checkpoint")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--adapter", f->adapter, "Id of the new adapter (must not exist in the store)")->required();
  cmd->add_option("--store", f->store.dir, "Store directory")->capture_default_str();
  cmd->add_flag("--no-sync", f->no_sync, "Do not fsync the commit (tests only)");
  cmd->callback([f] {
    if (Status s = ValidateId("--adapter", f->adapter, 128); !s.ok()) Fail("import", s, 2);
    auto peft = ReadPeft(f->in);
    if (!peft.ok()) Fail("import", peft.status());
    storage::AdapterStoreOptions so;
    so.path = f->store.adapters();
    so.sync = !f->no_sync;
    auto store = storage::AdapterStore::Open(so);
    if (!store.ok()) Fail("import", store.status());
    auto cursor = (*store)->GetCursor(f->adapter);
    if (!cursor.ok()) Fail("import", cursor.status());
    if (*cursor) {
      Fail("import", AlreadyExists(fmt::format("store '{}' already has adapter '{}' (at version {}); import into a new "
                                               "adapter id",
                                               f->store.dir, f->adapter, (*cursor)->version)),
           2);
    }
    aggregator::EngineOptions options;  // version 0 records the default settings; an aggregator records its own
    codec::VersionInfo info;
    aggregator::FillVersionZero(info, f->adapter, options, peft->state);
    info.commit_unix_ms = aggregator::NowUnixMs();
    info.origin = "peft:" + std::filesystem::absolute(f->in).string();
    auto committed = aggregator::CommitVersion(**store, options, nullptr, info, peft->spec, peft->state, false);
    if (!committed.ok()) Fail("import", committed.status());
    const auto from = peft->metadata.find("fedlora.content_hash");
    fmt::print("import: {} tensors (rank {}, alpha {:g}, model '{}') from {} -> adapter '{}' version 0 in {}, content "
               "hash {}{}\n",
               peft->spec.tensors.size(), peft->spec.rank, peft->spec.alpha, peft->spec.model, f->in, f->adapter,
               f->store.dir, info.content_hash,
               from == peft->metadata.end()          ? ""
               : from->second == info.content_hash ? " (identical to the exported version)"
                                                   : " (differs from the hash recorded at export)");
  });
}

}  // namespace fedlora::ops
