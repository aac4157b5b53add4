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
#include "storage/layout.h"

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

// What a finished rollback made: version `version` holds version `to`'s tensors.
struct RollbackOutcome {
  uint64_t version = 0;
  uint64_t to = 0;
  std::string content_hash;
};

// `fedlora rollback` into a store no aggregator holds: `to` is a version or a tag. Errors:
// kFailedPrecondition (an aggregator holds the store, saying how to roll back through it; the
// latest version is final or recorded no settings), kNotFound (no such adapter or version),
// kInvalidArgument (`to` is the latest version, or no version or tag), the store's.
Result<RollbackOutcome> RollbackStoredAdapter(const storage::StoreLayout& layout, const std::string& adapter,
                                              const std::string& to);

// `fedlora rollback` through a running aggregator's HTTP endpoint (its --http HOST:PORT:
// POST /api/rollback?to=...). Errors: the aggregator's answer as a code (400 kInvalidArgument,
// 403 kPermissionDenied, 404 kNotFound, 409 kFailedPrecondition, else kUnavailable), and
// kUnavailable when it cannot be reached.
Result<RollbackOutcome> RollbackThroughAggregator(const std::string& address, const std::string& to);

}  // namespace fedlora::aggregator
