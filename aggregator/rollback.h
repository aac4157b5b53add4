// Rolling an adapter back: the next version holds an earlier version's tensors. History is never
// rewritten: the rollback is a version of its own (its record names the version it restores in
// `rollback_to`), committed like any other and replayed like any other.
//
// What a rollback to W at version N keeps and what it resets:
//  - tensors: version W's, exactly (the same content hash);
//  - log position: version N's. Updates the aggregator had consumed but not yet folded (a
//    partly filled FedBuff buffer) are consumed again by the new engine, so none is lost;
//  - updates trained from a rolled-back version (base W+1..N) are dropped with reason
//    "rolled-back-base", now and whenever one arrives later: they carry the change the rollback
//    undoes. Updates from W or earlier are folded as usual, their staleness counted in versions
//    committed since their base (the rolled-back ones included);
//  - the privacy ledger: version N's, carried forward; privacy once spent is never refunded;
//  - the client-level DP noise seed and AS-LoRA's factor scores: kept;
//  - Adam's moments: reset to zero (their history points along the directions being undone).
// Thread safety: as the store (the caller serialises commits).
#pragma once

#include <memory>
#include <string>

#include "aggregator/engine.h"
#include "schema/codec.h"
#include "schema/status.h"
#include "storage/adapter_store.h"

namespace fedlora::aggregator {

struct PreparedRollback {
  std::unique_ptr<Engine> engine;  // at version N+1, holding version `to`'s tensors
  codec::VersionInfo info;         // the record of version N+1 (commit time and evaluation unset)
};

// Prepares the rollback of `adapter_id`'s latest version N in `store` to version `to` (<= N; a
// what-if replay may roll back to the current version), under `options`. Commit `info` through
// CommitVersion with `engine`. Errors: kNotFound (no such adapter or version), kFailedPrecondition
// (the latest version is final), the store's and Engine::Create's.
Result<PreparedRollback> PrepareRollback(storage::AdapterStore& store, const EngineOptions& options,
                                         const std::string& adapter_id, uint64_t to, Engine::BaseLookup base_lookup);

}  // namespace fedlora::aggregator
