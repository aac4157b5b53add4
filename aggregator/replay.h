// Replay rebuilds an adapter's global versions from its stored update log into a new
// AdapterStore, driving the same Engine the live aggregator runs and writing through the same
// CommitVersion, so that with the settings each original version recorded it reproduces every
// version bit for bit (same content hash). Settings the original changed between restarts are
// followed: the engine restarts from the replayed store at that version, as the aggregator
// did. With other settings (method, staleness rule, K, DP) it is a what-if analysis, and the
// report says where the two histories part. In a what-if the version numbers of the two
// timelines no longer correspond, so an update trained from the original's version b counts as
// trained from this replay's latest version that had consumed no more of the log than version
// b had (with the original's settings, b itself). A rollback of the original (aggregator/rollback.h)
// is made at the same log position, to the corresponding version.
// Thread safety: one call at a time per output store.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "aggregator/aggregator.h"
#include "aggregator/engine.h"
#include "schema/codec.h"
#include "schema/status.h"
#include "storage/adapter_store.h"
#include "storage/update_log.h"

namespace fedlora::aggregator {

struct ReplayProgress {
  uint64_t version = 0;   // just committed
  uint64_t seq = 0;       // log records consumed so far
  uint64_t last_seq = 0;  // the last record this replay will consume
  double seconds = 0;     // since the replay started
};

struct ReplayOptions {
  std::string adapter_id = "default";
  // The settings that make version `version` (>= 1). `recorded` is what the original recorded
  // for that version (for versions past its last one: its last one's), empty when it recorded
  // none (stores older than the record, or no original). Errors end the replay.
  std::function<Result<EngineOptions>(uint64_t version, const std::string& recorded)> settings;
  // Version 0 when there is no original store (with one, version 0 is copied from it).
  std::optional<InitialAdapter> initial;
  // Mark the version the original made final final too, and stop there (a reproduction);
  // false for a what-if, which folds the whole log.
  bool stop_at_original_final = true;
  uint64_t max_versions = 0;  // mark this version final and stop (0: no limit)
  uint64_t until_seq = 0;     // consume the log up to this record (0: all of it)
  uint32_t eval_every = 0;    // evaluate every N versions (0: never); needs `evaluate`
  Evaluator evaluate;         // also evaluates the last version (reported, not stored)
  std::function<void(const ReplayProgress&)> on_version;
};

struct ReplayReport {
  uint64_t versions = 0;         // committed after version 0
  uint64_t records = 0;          // log records consumed
  uint64_t applied = 0;          // updates folded in
  uint64_t dropped = 0;          // updates dropped (with their reasons in the lineage)
  double seconds = 0;            // wall time, evaluation excluded
  double eval_seconds = 0;
  uint64_t setting_changes = 0;  // engine restarts because the settings changed
  uint64_t rollbacks = 0;        // the original's rollbacks, made here at the same log positions
  bool final = false;            // the last version was committed final
  codec::VersionInfo last;       // the replay's last version
  std::optional<EvalOutcome> last_eval;  // of `last`, when an evaluator was given
  // Against the original (absent without one).
  std::optional<codec::VersionInfo> original_last;
  uint64_t compared = 0;                      // versions present in both, version 0 included
  uint64_t identical = 0;                     // of those, with equal content hashes
  std::optional<uint64_t> first_difference;   // the first version whose hash differs
};

// Replays `log` into `out`, which must not hold the adapter yet. `original` (may be null: then
// options.initial is required) supplies version 0, the recorded settings, the client-level DP
// noise seed and the versions to compare with. Errors: kFailedPrecondition (out already holds
// the adapter; no version 0), kNotFound (the original has no such adapter), kDataLoss (a log
// record is missing or unreadable), and the settings', engine's and store's errors.
Result<ReplayReport> Replay(storage::UpdateLog& log, storage::AdapterStore* original, storage::AdapterStore& out,
                            const ReplayOptions& options);

}  // namespace fedlora::aggregator
