#include "worker/federation/replay_store.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <filesystem>
#include <memory>

#include "aggregator/engine_flags.h"
#include "storage/adapter_store.h"
#include "storage/update_log.h"
#include "worker/lm/checkpoint.h"

namespace fedlora::federation {
namespace {

namespace fs = std::filesystem;

struct Paths {
  std::string log;
  std::string original;  // empty: none found
  std::string store;     // the original store directory (for its base models); may be empty
};

// --log names a store (with log/ inside) or a log directory; the original defaults to the
// store's adapters/.
Result<Paths> ResolvePaths(const ReplayRequest& r) {
  Paths p;
  const fs::path given(r.log);
  if (!fs::is_directory(given)) return NotFound(fmt::format("no update log at '{}'", r.log));
  if (fs::is_directory(given / "log")) {
    p.store = given.string();
    p.log = (given / "log").string();
  } else {
    p.log = given.string();
    p.store = given.parent_path().string();
  }
  if (!r.original.empty()) {
    if (!fs::is_directory(r.original)) return NotFound(fmt::format("no original adapter store at '{}'", r.original));
    p.original = r.original;
  } else if (fs::is_directory(fs::path(p.store) / "adapters")) {
    p.original = (fs::path(p.store) / "adapters").string();
  }
  return p;
}

bool Contains(const std::vector<std::string>& args, std::string_view flag) {
  return std::find(args.begin(), args.end(), flag) != args.end();
}

// The record of the latest version up to `last` that was evaluated.
std::optional<codec::VersionInfo> LastEvaluated(storage::AdapterStore& store, const std::string& adapter,
                                                uint64_t last) {
  for (uint64_t v = last + 1; v-- > 0;) {
    auto info = storage::ReadVersionInfo(store, adapter, v);
    if (info.ok() && info->test_accuracy >= 0) return *info;
  }
  return std::nullopt;
}

// The evaluator of the replayed versions: the original's base model and the task's test split,
// when both can be found; else none, and the reason in `note`.
Result<aggregator::Evaluator> ReplayEvaluator(const ReplayRequest& r, const Paths& paths, const AdapterSpec& spec,
                                              size_t samples, std::string& note) {
  const bool lm = IsLanguageModel(spec.model);
  // A language model's base: the one given, else fedlora's own in the store when it is there.
  std::string lm_base = r.base;
  if (lm && lm_base.empty() && fs::is_directory(OwnLanguageModelPath(paths.store))) {
    lm_base = OwnLanguageModelPath(paths.store);
  }
  const std::string base = !lm_base.empty() ? lm_base : BasePath(paths.store, spec.model);
  if (lm && lm_base.empty()) {
    note = fmt::format("not evaluated: a {} adapter is evaluated on its checkpoint: give --base DIR (and the "
                       "original's --text or --wordnet, --seq-len, --examples-per-source)",
                       spec.model);
    return aggregator::Evaluator();
  }
  if (!fs::exists(base)) {
    note = fmt::format("not evaluated: no base model at '{}' (--base)", base);
    return aggregator::Evaluator();
  }
  Result<worker::Dataset> test = InvalidArgument("no test data");
  if (lm) {
    TaskOptions task = r.text;  // the held-out text of the original run, when given its flags
    // A classifier's adapter (its head) is evaluated on the glosses, a language model's on text.
    task.task = TaskOfSpec(spec);
    task.base = lm_base;
    auto data = LoadTaskData(task);
    test = data.ok() ? Result<worker::Dataset>(*data->test) : Result<worker::Dataset>(data.status());
  } else {
    test = worker::LoadFashionMnist(r.data_dir, worker::Split::kTest);
  }
  if (!test.ok()) {
    note = fmt::format("not evaluated: {}", test.status().ToString());
    return aggregator::Evaluator();
  }
  SetTorchThreads(2);
  return MakeEvaluator(base, std::make_shared<const worker::Dataset>(std::move(*test)), samples);
}

}  // namespace

Result<ReplayOutcome> ReplayStore(const ReplayRequest& r, const ReplayCallbacks& cb) {
  ReplayOutcome outcome;
  ASSIGN_OR_RETURN(const Paths paths, ResolvePaths(r));
  outcome.log_path = paths.log;
  outcome.original_path = paths.original;
  outcome.what_if = !r.what_if.empty();
  // The what-if flags are checked once up front, so a typo fails before anything is written.
  if (outcome.what_if) RETURN_IF_ERROR(aggregator::ParseEngineConfig(r.what_if).status());

  storage::UpdateLogOptions lo;
  lo.path = paths.log;
  lo.read_only = true;
  ASSIGN_OR_RETURN(auto log, storage::UpdateLog::Open(lo));
  outcome.log_records = log->LastSeq(r.adapter);
  if (outcome.log_records == 0) {
    return NotFound(fmt::format("the update log at '{}' has no records of adapter '{}'", paths.log, r.adapter));
  }
  if (paths.original.empty()) {
    return NotFound(fmt::format(
        "no original adapter store next to '{}' (version 0 lives there): give it with --original", paths.log));
  }
  storage::AdapterStoreOptions so;
  so.path = paths.original;
  so.read_only = true;
  ASSIGN_OR_RETURN(auto original, storage::AdapterStore::Open(so));
  ASSIGN_OR_RETURN(const auto cursor, original->GetCursor(r.adapter));
  if (!cursor) return NotFound(fmt::format("'{}' has no adapter '{}'", paths.original, r.adapter));
  if (!cursor->log_id.empty() && !log->Id().empty() && cursor->log_id != log->Id()) {
    return FailedPrecondition(fmt::format(
        "the update log at '{}' (id {}) is not the log the store '{}' consumed (id {}): its records cannot rebuild "
        "that store's versions. Give the original log with --log",
        paths.log, log->Id(), paths.original, cursor->log_id));
  }
  if (cursor->consumed_seq > outcome.log_records && cb.warning) {
    cb.warning(fmt::format("the store '{}' consumed the log up to seq {}, but the log at '{}' ends at seq {}: {} records "
                           "are missing from the log (truncated or restored from an older copy); the replay stops "
                           "where the log does",
                           paths.original, cursor->consumed_seq, paths.log, outcome.log_records,
                           cursor->consumed_seq - outcome.log_records));
  }
  const fs::path out_adapters = fs::path(r.out) / "adapters";
  outcome.out_path = out_adapters.string();
  if (fs::exists(out_adapters) && !fs::is_empty(out_adapters)) {
    return AlreadyExists(fmt::format("'{}' already holds a store: replay into a new directory", r.out));
  }

  aggregator::ReplayOptions ro;
  ro.adapter_id = r.adapter;
  ro.stop_at_original_final = !outcome.what_if;
  ro.max_versions = r.max_versions;
  ro.until_seq = r.until_seq;
  ro.eval_every = r.eval_every;
  // A what-if that picks another optimizer without a step size gets that optimizer's default.
  const bool drop_recorded_lr = Contains(r.what_if, "--server-optimizer") && !Contains(r.what_if, "--server-lr");
  ro.settings = [&r, what_if = outcome.what_if, drop_recorded_lr](
                    uint64_t version, const std::string& recorded) -> Result<aggregator::EngineOptions> {
    std::vector<std::string> args = aggregator::SplitFlags(recorded);
    if (recorded.empty() && !what_if) {
      return FailedPrecondition(fmt::format(
          "version {} of the original has no recorded settings (stored before fedlora recorded them): give the "
          "aggregator's flags after -- or in --config",
          version));
    }
    if (drop_recorded_lr) {
      if (auto it = std::find(args.begin(), args.end(), "--server-lr"); it != args.end() && it + 1 != args.end()) {
        args.erase(it, it + 2);
      }
    }
    args.insert(args.end(), r.what_if.begin(), r.what_if.end());
    return aggregator::ParseEngineConfig(args);
  };
  ro.on_version = cb.on_version;

  outcome.original_eval = LastEvaluated(*original, r.adapter, cursor->version);
  if (r.evaluate) {
    ASSIGN_OR_RETURN(const auto zero, storage::ReadVersion(*original, r.adapter, 0));
    const size_t samples = r.eval_samples > 0 ? r.eval_samples
                                              : (outcome.original_eval ? outcome.original_eval->eval_samples : size_t{2000});
    ASSIGN_OR_RETURN(ro.evaluate, ReplayEvaluator(r, paths, zero.spec, samples, outcome.eval_note));
  }

  storage::AdapterStoreOptions oo;
  oo.path = outcome.out_path;
  oo.sync = false;  // derived data: a crash means running replay again; the store is flushed on close
  ASSIGN_OR_RETURN(auto out, storage::AdapterStore::Open(oo));
  if (cb.starting) cb.starting(outcome);
  ASSIGN_OR_RETURN(outcome.report, aggregator::Replay(*log, original.get(), *out, ro));

  const auto& rep = outcome.report;
  if (!outcome.what_if && rep.first_difference) {
    outcome.verdict = DataLoss(fmt::format("version {} differs from the original although the recorded settings were "
                                           "used: the log or the original store is not what made it",
                                           *rep.first_difference));
  } else if (!outcome.what_if && rep.original_last && rep.last.version < rep.original_last->version) {
    outcome.verdict = DataLoss(fmt::format("the log rebuilds only {} of the original's {} versions", rep.last.version,
                                           rep.original_last->version));
  }
  return outcome;
}

}  // namespace fedlora::federation
