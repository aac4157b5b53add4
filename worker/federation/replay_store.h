// `fedlora replay` without the command line: rebuilds every version of an adapter from a stored
// update log into a new store (aggregator::Replay), with the original store's settings, version 0
// and versions to compare with, and the original's base model and test data to evaluate the
// result. With no what-if settings it is a reproduction, and anything but the original's
// versions, bit for bit, is an error (`verdict`).
//
// LibTorch-free header; the implementation evaluates through the task's model.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "aggregator/replay.h"
#include "schema/codec.h"
#include "schema/status.h"
#include "worker/data.h"
#include "worker/federation/task.h"

namespace fedlora::federation {

struct ReplayRequest {
  std::string log;                // a store directory (with log/ inside) or a log directory
  std::string original;           // the original adapter store (empty: adapters/ next to the log)
  std::string out;                // the new store directory; its adapters/ must not hold a store
  std::string adapter = "default";
  std::vector<std::string> what_if;  // aggregator flags on top of the recorded settings (empty: a reproduction)
  uint64_t until_seq = 0;         // consume the log only up to this record (0: all of it)
  uint64_t max_versions = 0;      // mark this version final and stop (0: no limit)
  uint32_t eval_every = 0;        // also evaluate every N-th version (0: only the last)
  size_t eval_samples = 0;        // test examples per evaluation (0: as many as the original's latest)
  bool evaluate = true;           // false: no base model or data needed
  std::string data_dir = worker::kDefaultFashionMnistDir;  // image adapters' test split
  std::string base;               // the base model or checkpoint directory (empty: the store's own)
  TaskOptions text;               // a language model's evaluation data (--text, --wordnet, ...)
};

struct ReplayOutcome {
  std::string log_path;           // the log and the stores resolved from the request
  std::string original_path;
  std::string out_path;           // <out>/adapters
  uint64_t log_records = 0;       // the adapter's records in the log
  bool what_if = false;
  aggregator::ReplayReport report;
  std::optional<codec::VersionInfo> original_eval;  // the original's latest evaluated version
  std::string eval_note;          // why the replay was not evaluated (empty: it was, or not asked)
  // A reproduction that does not rebuild the original's versions: kDataLoss saying which
  // differ or are missing. OK for a what-if, and for a faithful reproduction.
  Status verdict;
};

// Progress while it runs; each is optional.
struct ReplayCallbacks {
  std::function<void(const std::string&)> warning;     // e.g. a log that ends before what the store consumed
  std::function<void(const ReplayOutcome&)> starting;  // paths and record count known, before the first version
  std::function<void(const aggregator::ReplayProgress&)> on_version;
};

// Errors (nothing written): kNotFound (no log, no original store, no such adapter, no records),
// kInvalidArgument (a what-if flag), kAlreadyExists (the out store exists), kFailedPrecondition
// (the log is not the one the original consumed; no recorded settings to reproduce with), the
// evaluator's; then the replay's own.
Result<ReplayOutcome> ReplayStore(const ReplayRequest& request, const ReplayCallbacks& callbacks = {});

}  // namespace fedlora::federation
