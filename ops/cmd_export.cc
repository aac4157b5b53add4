// `fedlora export` (a stored version as a Hugging Face PEFT LoRA checkpoint) and `fedlora import`
// (a PEFT LoRA checkpoint as version 0 of a new adapter, ready for an aggregator to train on).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>
#include <map>

#include "aggregator/commit.h"
#include "ops/commands.h"
#include "ops/flags.h"
#include "storage/peft.h"
#include "storage/reader.h"
#include "schema/validate.h"
#include "worker/lm/checkpoint.h"

namespace fedlora::ops {
namespace {

// Checks a language model's adapter against the checkpoint in `dir` (every LoRA factor names a
// module of the model, with its shapes) and returns the checkpoint's architecture.
Result<std::string> MatchCheckpoint(const AdapterSpec& spec, const std::string& dir) {
  ASSIGN_OR_RETURN(const worker::lm::LlamaConfig config, worker::lm::ReadConfig(dir));
  std::map<std::string, std::vector<int64_t>> weights;
  for (auto& [name, shape] : worker::lm::ExpectedWeights(config)) weights.emplace(name, shape);
  for (const auto& t : spec.tensors) {
    if (t.role != TensorRole::kLoraA && t.role != TensorRole::kLoraB) {
      return InvalidArgument(fmt::format("tensor '{}' is not a LoRA factor: a {} adapter holds only LoRA pairs",
                                         t.name, config.architecture));
    }
    const std::string module = t.name.substr(0, t.name.rfind('.'));
    const auto it = weights.find(module + ".weight");
    if (it == weights.end()) {
      return InvalidArgument(fmt::format("tensor '{}': the {} in '{}' has no module '{}'", t.name, config.architecture,
                                         dir, module));
    }
    const auto out = static_cast<uint32_t>(it->second[0]), in = static_cast<uint32_t>(it->second[1]);
    const std::vector<uint32_t> want =
        t.role == TensorRole::kLoraA ? std::vector<uint32_t>{spec.rank, in} : std::vector<uint32_t>{out, spec.rank};
    if (t.shape != want) {
      return InvalidArgument(fmt::format("tensor '{}' has shape [{}], the checkpoint in '{}' needs [{}]", t.name,
                                         fmt::join(t.shape, ","), dir, fmt::join(want, ",")));
    }
  }
  return config.architecture;
}

}  // namespace

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
    auto stored = storage::StoredAdapter::Open(f->store, f->adapter);
    if (!stored.ok()) Fail("export", stored.status());
    uint64_t version = stored->cursor().version;
    if (f->version) {
      auto v = storage::ResolveVersion(f->store, f->adapter, *f->version);
      if (!v.ok()) Fail("export", v.status(), 2);
      version = *v;
    }
    auto global = stored->Global(version);
    if (!global.ok()) Fail("export", global.status());
    storage::PeftAdapter peft{global->spec, global->state,
                     {{"fedlora.adapter", f->adapter},
                      {"fedlora.version", std::to_string(version)},
                      {"fedlora.content_hash", global->info.content_hash}},
                     {}};
    if (!f->base.empty()) {
      auto arch = MatchCheckpoint(global->spec, f->base);
      if (!arch.ok()) Fail("export", arch.status(), 2);
      if (*arch != global->spec.model) {
        Fail("export", InvalidArgument(fmt::format("'{}' is a {}, the adapter was trained on a {}", f->base, *arch,
                                                   global->spec.model)),
             2);
      }
      peft.base_model = std::filesystem::absolute(f->base).lexically_normal().string();
    }
    if (Status s = storage::WritePeft(f->out, peft); !s.ok()) Fail("export", s, s.code() == Code::kAlreadyExists ? 2 : 1);
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
    if (Status s = ValidateId("--adapter", f->adapter, 128); !s.ok()) Fail("import", s, 2);
    auto peft = storage::ReadPeft(f->in);
    if (!peft.ok()) Fail("import", peft.status());
    std::string base = f->base;
    std::error_code ec;
    if (base.empty() && !peft->base_model.empty() &&
        std::filesystem::is_regular_file(std::filesystem::path(peft->base_model) / "config.json", ec)) {
      base = peft->base_model;
    }
    if (!base.empty()) {
      auto arch = MatchCheckpoint(peft->spec, base);
      if (!arch.ok()) Fail("import", arch.status(), 2);
      if (peft->spec.model != "unknown" && peft->spec.model != *arch) {
        Fail("import", InvalidArgument(fmt::format("the adapter records model '{}', '{}' is a {}", peft->spec.model,
                                                   base, *arch)),
             2);
      }
      peft->spec.model = *arch;
    }
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
