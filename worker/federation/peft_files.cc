#include "worker/federation/peft_files.h"

#include <fmt/format.h>

#include <filesystem>

#include "aggregator/commit.h"
#include "schema/validate.h"
#include "storage/adapter_store.h"
#include "storage/peft.h"
#include "storage/reader.h"
#include "worker/lm/checkpoint.h"

namespace fedlora::federation {

Result<ExportReport> ExportPeftVersion(const ExportRequest& r) {
  ASSIGN_OR_RETURN(auto stored, storage::StoredAdapter::Open(r.store, r.adapter));
  ExportReport out;
  out.version = stored.cursor().version;
  if (r.version) {
    ASSIGN_OR_RETURN(out.version, storage::ResolveVersion(r.store, r.adapter, *r.version));
  }
  ASSIGN_OR_RETURN(out.global, stored.Global(out.version));
  const auto& g = out.global;
  storage::PeftAdapter peft{g.spec,
                            g.state,
                            {{"fedlora.adapter", r.adapter},
                             {"fedlora.version", std::to_string(out.version)},
                             {"fedlora.content_hash", g.info.content_hash}},
                            {}};
  if (!r.base.empty()) {
    ASSIGN_OR_RETURN(const std::string arch, worker::lm::MatchAdapter(g.spec, r.base));
    if (arch != g.spec.model) {
      return InvalidArgument(fmt::format("'{}' is a {}, the adapter was trained on a {}", r.base, arch, g.spec.model));
    }
    peft.base_model = std::filesystem::absolute(r.base).lexically_normal().string();
  }
  RETURN_IF_ERROR(storage::WritePeft(r.out, peft));
  for (const auto& t : g.spec.tensors) out.modules += t.role == TensorRole::kLoraA;
  return out;
}

Result<ImportReport> ImportPeftAdapter(const ImportRequest& r) {
  RETURN_IF_ERROR(ValidateId("--adapter", r.adapter, 128));
  ASSIGN_OR_RETURN(storage::PeftAdapter peft, storage::ReadPeft(r.in));
  std::string base = r.base;
  std::error_code ec;
  if (base.empty() && !peft.base_model.empty() &&
      std::filesystem::is_regular_file(std::filesystem::path(peft.base_model) / "config.json", ec)) {
    base = peft.base_model;
  }
  if (!base.empty()) {
    ASSIGN_OR_RETURN(const std::string arch, worker::lm::MatchAdapter(peft.spec, base));
    if (peft.spec.model != "unknown" && peft.spec.model != arch) {
      return InvalidArgument(fmt::format("the adapter records model '{}', '{}' is a {}", peft.spec.model, base, arch));
    }
    peft.spec.model = arch;
  }
  storage::AdapterStoreOptions so;
  so.path = r.store.adapters();
  so.sync = r.sync;
  ASSIGN_OR_RETURN(auto store, storage::AdapterStore::Open(so));
  ASSIGN_OR_RETURN(const auto cursor, store->GetCursor(r.adapter));
  if (cursor) {
    return AlreadyExists(fmt::format("store '{}' already has adapter '{}' (at version {}); import into a new adapter id",
                                     r.store.dir, r.adapter, cursor->version));
  }
  aggregator::EngineOptions options;  // version 0 records the default settings; an aggregator records its own
  codec::VersionInfo info;
  aggregator::FillVersionZero(info, r.adapter, options, peft.state);
  info.commit_unix_ms = aggregator::NowUnixMs();
  info.origin = "peft:" + std::filesystem::absolute(r.in).string();
  RETURN_IF_ERROR(aggregator::CommitVersion(*store, options, nullptr, info, peft.spec, peft.state, false).status());
  ImportReport out;
  out.spec = std::move(peft.spec);
  out.content_hash = info.content_hash;
  if (auto it = peft.metadata.find("fedlora.content_hash"); it != peft.metadata.end()) out.exported_hash = it->second;
  return out;
}

}  // namespace fedlora::federation
