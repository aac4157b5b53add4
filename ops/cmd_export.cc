// `fedlora export` (a stored version as a Hugging Face PEFT LoRA checkpoint) and `fedlora import`
// (a PEFT LoRA checkpoint as version 0 of a new adapter, ready for an aggregator to train on).
#include <fmt/format.h>

#include "ops/commands.h"
#include "ops/flags.h"
#include "worker/federation/peft_files.h"

namespace fedlora::ops {

void RegisterExport(CLI::App& app) {
  struct Flags {
    StoreLayout store;
    std::string adapter = "default";
    std::optional<std::string> version;
    std::string format = "peft";
    std::string out;
    std::string base;
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
  cmd->add_option("--base", f->base,
                  "A language model's checkpoint directory, checked against the adapter and written as "
                  "base_model_name_or_path (absolute), so that PEFT finds the base");
  cmd->callback([f] {
    auto done = federation::ExportPeftVersion({f->store, f->adapter, f->version, f->out, f->base});
    if (!done.ok()) {
      const Code c = done.status().code();
      Fail("export", done.status(), c == Code::kInvalidArgument || c == Code::kNotFound || c == Code::kAlreadyExists ? 2 : 1);
    }
    const auto& g = done->global;
    fmt::print("export: version {} of '{}' (rank {}, alpha {:g}, {} LoRA modules, {} tensors, {} values, content hash "
               "{}) -> {}/adapter_model.safetensors, adapter_config.json\n",
               done->version, f->adapter, g.spec.rank, g.spec.alpha, done->modules, g.spec.tensors.size(),
               g.spec.numel(), g.info.content_hash, f->out);
    if (g.spec.has_residuals()) {
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
    std::string base;
    bool no_sync = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand(
      "import", "Read a PEFT LoRA checkpoint (adapter_model.safetensors + adapter_config.json, F32) and store it as "
                "version 0 of a new adapter; `fedlora aggregator --adapter ID` then trains on from it");
  cmd->add_option("--in", f->in, "Directory holding the checkpoint")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--adapter", f->adapter, "Id of the new adapter (must not exist in the store)")->required();
  cmd->add_option("--store", f->store.dir, "Store directory")->capture_default_str();
  cmd->add_option("--base", f->base,
                  "The language model the adapter is for (its checkpoint directory): the factors are checked against "
                  "it and the adapter records its architecture [default: base_model_name_or_path when that is a "
                  "local directory]");
  cmd->add_flag("--no-sync", f->no_sync, "Do not fsync the commit (tests only)");
  cmd->callback([f] {
    auto done = federation::ImportPeftAdapter({f->in, f->store, f->adapter, f->base, !f->no_sync});
    if (!done.ok()) {
      const Code c = done.status().code();
      Fail("import", done.status(), c == Code::kInvalidArgument || c == Code::kAlreadyExists ? 2 : 1);
    }
    fmt::print("import: {} tensors (rank {}, alpha {:g}, model '{}') from {} -> adapter '{}' version 0 in {}, content "
               "hash {}{}\n",
               done->spec.tensors.size(), done->spec.rank, done->spec.alpha, done->spec.model, f->in, f->adapter,
               f->store.dir, done->content_hash,
               !done->exported_hash                        ? ""
               : *done->exported_hash == done->content_hash ? " (identical to the exported version)"
                                                           : " (differs from the hash recorded at export)");
  });
}

}  // namespace fedlora::ops
