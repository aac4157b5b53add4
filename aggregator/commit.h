// The engine and the store: how a version is written to an AdapterStore: the GlobalAdapter envelope workers load, its
// VersionRecord (lineage, ledger, the settings that made it) and the engine's server state, in
// one atomic commit. The live aggregator and `fedlora replay` both write through here, so a
// replayed store holds exactly what the live one would.
// Thread safety: as the store's Commit (serialised).
#pragma once

#include <memory>
#include <string>

#include "aggregator/engine.h"
#include "schema/codec.h"
#include "schema/status.h"
#include "storage/adapter_store.h"

namespace fedlora::aggregator {

// Commits `info.version` with `state`. `engine` is the engine that produced it (null for
// version 0, whose method state follows from `options` alone). Sets info.config to the
// canonical flags of `options`. Returns the GlobalAdapter envelope as committed.
// Errors: the store's (kFailedPrecondition for a skipped or reused version, kUnavailable).
Result<std::shared_ptr<const std::string>> CommitVersion(storage::AdapterStore& store, const EngineOptions& options,
                                                         const Engine* engine, codec::VersionInfo& info,
                                                         const AdapterSpec& spec, const AdapterState& state,
                                                         bool final);

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
