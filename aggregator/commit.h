// The engine and the store: how a version is written to an AdapterStore: the GlobalAdapter envelope workers load, its
// VersionRecord (lineage, ledger, the settings that made it) and the engine's server state, in
// one atomic commit. The live aggregator and `fedlora replay` both write through here, so a
// replayed store holds exactly what the live one would.
// Thread safety: as the store's Commit (serialised).
#pragma once

#include <list>
#include <memory>
#include <string>
#include <utility>

#include "aggregator/engine.h"
#include "schema/codec.h"
#include "schema/status.h"
#include "storage/adapter_store.h"

namespace fedlora::aggregator {

// Commits `info.version` with `state`. `engine` is the engine that produced it (null for
// version 0, whose method state follows from `options` alone). Sets info.config to the
// canonical flags of `options`; `log_id` and `consumed_hash` go to the cursor (storage::Cursor).
// Returns the GlobalAdapter envelope as committed.
// Errors: the store's (kFailedPrecondition for a skipped or reused version, kUnavailable).
Result<std::shared_ptr<const std::string>> CommitVersion(storage::AdapterStore& store, const EngineOptions& options,
                                                         const Engine* engine, codec::VersionInfo& info,
                                                         const AdapterSpec& spec, const AdapterState& state,
                                                         bool final, std::string_view log_id = {},
                                                         std::string_view consumed_hash = {});

// Milliseconds since the Unix epoch (commit times of versions).
uint64_t NowUnixMs();

// The record fields of version 0 of `state` under `options` (identity, method, content hash).
void FillVersionZero(codec::VersionInfo& info, const std::string& adapter_id, const EngineOptions& options,
                     const AdapterState& state);

// The last few versions read back from a store, for the engine's base lookups (FedAsync's
// x_base, the product-space methods' base factors): stale updates mostly name recent versions.
// Thread safety: one thread.
class VersionCache {
 public:
  VersionCache(storage::AdapterStore& store, std::string adapter_id, size_t capacity = 4)
      : store_(store), adapter_id_(std::move(adapter_id)), capacity_(capacity) {}
  Result<std::shared_ptr<const AdapterState>> Get(uint64_t version);

 private:
  storage::AdapterStore& store_;
  std::string adapter_id_;
  size_t capacity_;
  std::list<std::pair<uint64_t, std::shared_ptr<const AdapterState>>> entries_;  // most recent first
};

struct ResumedEngine {
  std::unique_ptr<Engine> engine;
  bool final = false;  // the latest version was committed final
};

// The engine an aggregator restarted with `options` runs: the store's latest version of
// `adapter_id`, the server state committed with it and the privacy ledger of its record.
// Errors: kNotFound (no such adapter), kFailedPrecondition (the adapter was trained with another
// method; stored state the options cannot continue), the store's and Engine::Create's.
Result<ResumedEngine> ResumeEngine(storage::AdapterStore& store, const EngineOptions& options,
                                   const std::string& adapter_id, Engine::BaseLookup base_lookup);

}  // namespace fedlora::aggregator
