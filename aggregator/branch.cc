#include "aggregator/branch.h"

#include <fmt/format.h>

#include "aggregator/commit.h"
#include "aggregator/engine_flags.h"
#include "schema/validate.h"
#include "storage/adapter_store.h"
#include "storage/reader.h"

namespace fedlora::aggregator {

Result<BranchOutcome> BranchAdapter(const BranchRequest& r) {
  RETURN_IF_ERROR(ValidateId("--name", r.name, 128));
  BranchOutcome out;
  codec::DecodedGlobal source;
  EngineOptions options;  // the source version's recorded settings
  {
    ASSIGN_OR_RETURN(auto stored, storage::StoredAdapter::Open(r.from, r.adapter));
    ASSIGN_OR_RETURN(out.version, storage::ResolveVersion(r.from, r.adapter, r.version));
    ASSIGN_OR_RETURN(source, stored.Global(out.version));
    ASSIGN_OR_RETURN(const codec::VersionInfo record, stored.Record(out.version));
    auto recorded = RecordedEngineOptions(record);
    if (recorded.status().code() == Code::kNotFound) {
      return FailedPrecondition(recorded.status().WithContext("the source version's recorded settings").message());
    }
    RETURN_IF_ERROR(recorded.status().WithContext("the source version's recorded settings"));
    options = std::move(*recorded);
  }  // the read-only handle is closed before the store is opened for writing
  storage::AdapterStoreOptions so;
  so.path = r.to.adapters();
  so.sync = r.sync;
  auto store = storage::AdapterStore::Open(so);
  if (!store.ok()) {
    return store.status().WithContext(
        fmt::format("open '{}' for writing (a running aggregator holds it: stop it or use --to-store)", r.to.dir));
  }
  ASSIGN_OR_RETURN(const auto cursor, (*store)->GetCursor(r.name));
  if (cursor) return AlreadyExists(fmt::format("store '{}' already has adapter '{}'", r.to.dir, r.name));
  codec::VersionInfo info;
  FillVersionZero(info, r.name, options, source.state);
  info.commit_unix_ms = NowUnixMs();
  info.origin = fmt::format("{}@{} in {}", r.adapter, out.version, r.from.dir);
  RETURN_IF_ERROR(CommitVersion(**store, options, nullptr, info, source.spec, source.state, false).status());
  out.content_hash = info.content_hash;
  return out;
}

}  // namespace fedlora::aggregator
