// `fedlora replay`: rebuilds every global version of an adapter from its stored update log into
// a new store. With the settings the original recorded it must reproduce every version bit for
// bit (and fails, exit 1, if one differs); with changed settings it is a what-if analysis and
// reports where and how the two histories part.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "aggregator/engine_config.h"
#include "aggregator/replay.h"
#include "ops/commands.h"
#include "worker/federation/task.h"
#include "ops/flags.h"
#include "ops/progress.h"
#include "storage/adapter_store.h"
#include "storage/update_log.h"
#include "worker/lm/checkpoint.h"

namespace fedlora::ops {
namespace {

namespace fs = std::filesystem;

struct ReplayFlags {
  std::string log;
  std::string original;
  std::string out;
  std::string adapter = "default";
  std::string config;
  std::vector<std::string> extra;
  uint64_t until_seq = 0;
  uint64_t max_versions = 0;
  uint32_t eval_every = 0;
  size_t eval_samples = 0;
  bool no_eval = false;
  std::string data_dir = worker::kDefaultFashionMnistDir;
  std::string base;
  TaskOptions text;  // a language model's evaluation text (--text, --seq-len, --examples-per-source)
  bool json = false;
};

// Where the log and the original adapter store are: --log names a store (with log/ inside)
// or a log directory; the original defaults to the store's adapters/.
struct Paths {
  std::string log;
  std::string original;  // empty: none
  std::string store;     // the original store directory (for its base models); may be empty
};

Result<Paths> ResolvePaths(const ReplayFlags& f) {
  Paths p;
  const fs::path given(f.log);
  if (!fs::is_directory(given)) return NotFound(fmt::format("no update log at '{}'", f.log));
  if (fs::is_directory(given / "log")) {
    p.store = given.string();
    p.log = (given / "log").string();
  } else {
    p.log = given.string();
    p.store = given.parent_path().string();
  }
  if (!f.original.empty()) {
    if (!fs::is_directory(f.original)) return NotFound(fmt::format("no original adapter store at '{}'", f.original));
    p.original = f.original;
  } else if (fs::is_directory(fs::path(p.store) / "adapters")) {
    p.original = (fs::path(p.store) / "adapters").string();
  }
  return p;
}

Result<std::vector<std::string>> WhatIfArgs(const ReplayFlags& f) {
  std::vector<std::string> args;
  if (!f.config.empty()) {
    std::ifstream in(f.config);
    if (!in) return NotFound(fmt::format("cannot read --config '{}'", f.config));
    std::stringstream text;
    text << in.rdbuf();
    args = SplitFlags(text.str());
  }
  args.insert(args.end(), f.extra.begin(), f.extra.end());
  return args;
}

bool Contains(const std::vector<std::string>& args, std::string_view flag) {
  return std::find(args.begin(), args.end(), flag) != args.end();
}

std::string Accuracy(float a) { return a >= 0 ? fmt::format("{:.4f}", a) : "-"; }

// The record of the latest version up to `last` that was evaluated.
std::optional<codec::VersionInfo> LastEvaluated(storage::AdapterStore& store, const std::string& adapter,
                                                uint64_t last) {
  for (uint64_t v = last + 1; v-- > 0;) {
    auto info = storage::ReadVersionInfo(store, adapter, v);
    if (info.ok() && info->test_accuracy >= 0) return *info;
  }
  return std::nullopt;
}

void RunReplay(const ReplayFlags& f) {
  auto paths = ResolvePaths(f);
  if (!paths.ok()) Fail("replay", paths.status(), 2);
  auto overrides = WhatIfArgs(f);
  if (!overrides.ok()) Fail("replay", overrides.status(), 2);
  const bool what_if = !overrides->empty();
  // Check the what-if flags once up front, so a typo fails before anything is written.
  if (what_if) {
    if (auto parsed = ParseEngineConfig(*overrides); !parsed.ok()) Fail("replay", parsed.status(), 2);
  }

  storage::UpdateLogOptions lo;
  lo.path = paths->log;
  lo.read_only = true;
  auto log = storage::UpdateLog::Open(lo);
  if (!log.ok()) Fail("replay", log.status());
  if ((*log)->LastSeq(f.adapter) == 0) {
    Fail("replay", NotFound(fmt::format("the update log at '{}' has no records of adapter '{}'", paths->log, f.adapter)));
  }
  std::unique_ptr<storage::AdapterStore> original;
  if (!paths->original.empty()) {
    storage::AdapterStoreOptions so;
    so.path = paths->original;
    so.read_only = true;
    auto opened = storage::AdapterStore::Open(so);
    if (!opened.ok()) Fail("replay", opened.status());
    original = std::move(*opened);
  } else {
    Fail("replay", FailedPrecondition(fmt::format(
                       "no original adapter store next to '{}' (version 0 lives there): give it with --original",
                       paths->log)), 2);
  }
  const fs::path out_adapters = fs::path(f.out) / "adapters";
  if (fs::exists(out_adapters) && !fs::is_empty(out_adapters)) {
    Fail("replay", FailedPrecondition(fmt::format("'{}' already holds a store: replay into a new directory", f.out)), 2);
  }
  storage::AdapterStoreOptions oo;
  oo.path = out_adapters.string();
  oo.sync = false;  // derived data: a crash means running replay again; the store is flushed on close
  auto out = storage::AdapterStore::Open(oo);
  if (!out.ok()) Fail("replay", out.status());

  aggregator::ReplayOptions ro;
  ro.adapter_id = f.adapter;
  ro.stop_at_original_final = !what_if;
  ro.max_versions = f.max_versions;
  ro.until_seq = f.until_seq;
  ro.eval_every = f.eval_every;
  // A what-if that picks another optimizer without a step size gets that optimizer's default.
  const bool drop_recorded_lr = Contains(*overrides, "--server-optimizer") && !Contains(*overrides, "--server-lr");
  ro.settings = [&, what_if](uint64_t version, const std::string& recorded) -> Result<aggregator::EngineOptions> {
    std::vector<std::string> args = SplitFlags(recorded);
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
    args.insert(args.end(), overrides->begin(), overrides->end());
    return ParseEngineConfig(args);
  };

  // Evaluation: the original's base model and the test split, when both are there.
  auto cursor = original->GetCursor(f.adapter);
  if (!cursor.ok()) Fail("replay", cursor.status());
  if (!*cursor) Fail("replay", NotFound(fmt::format("'{}' has no adapter '{}'", paths->original, f.adapter)));
  if (!(*cursor)->log_id.empty() && !(*log)->Id().empty() && (*cursor)->log_id != (*log)->Id()) {
    Fail("replay", FailedPrecondition(fmt::format(
                       "the update log at '{}' (id {}) is not the log the store '{}' consumed (id {}): its records "
                       "cannot rebuild that store's versions. Give the original log with --log",
                       paths->log, (*log)->Id(), paths->original, (*cursor)->log_id)));
  }
  if ((*cursor)->consumed_seq > (*log)->LastSeq(f.adapter)) {
    fmt::print(stderr,
               "replay: warning: the store '{}' consumed the log up to seq {}, but the log at '{}' ends at seq {}: "
               "{} records are missing from the log (truncated or restored from an older copy); the replay stops "
               "where the log does\n",
               paths->original, (*cursor)->consumed_seq, paths->log, (*log)->LastSeq(f.adapter),
               (*cursor)->consumed_seq - (*log)->LastSeq(f.adapter));
  }
  const auto original_eval = LastEvaluated(*original, f.adapter, (*cursor)->version);
  std::string eval_note;
  if (!f.no_eval) {
    auto zero = storage::ReadVersion(*original, f.adapter, 0);
    if (!zero.ok()) Fail("replay", zero.status());
    const bool lm = std::find(worker::lm::kArchitectures.begin(), worker::lm::kArchitectures.end(),
                              zero->spec.model) != worker::lm::kArchitectures.end();
    // A language model's base: --base, else fedlora's own in the store when it is there.
    std::string lm_base = f.base;
    if (lm && lm_base.empty() && std::filesystem::is_directory(OwnLanguageModelPath(paths->store))) {
      lm_base = OwnLanguageModelPath(paths->store);
    }
    const std::string base = !lm_base.empty() ? lm_base : BasePath(paths->store, zero->spec.model);
    Result<worker::Dataset> test = InvalidArgument("no --base checkpoint directory");
    if (lm && !lm_base.empty()) {
      TaskOptions task = f.text;  // the held-out text of the original run, when given its flags
      // A classifier's adapter (its head) is evaluated on the glosses, a language model's on text.
      task.task = TaskOfSpec(zero->spec);
      task.base = lm_base;
      auto data = LoadTaskData(task);
      test = data.ok() ? Result<worker::Dataset>(*data->test) : Result<worker::Dataset>(data.status());
    } else if (!lm) {
      test = worker::LoadFashionMnist(f.data_dir, worker::Split::kTest);
    }
    if (lm && lm_base.empty()) {
      eval_note = fmt::format("not evaluated: a {} adapter is evaluated on its checkpoint: give --base DIR (and the "
                              "original's --text or --wordnet, --seq-len, --examples-per-source)",
                              zero->spec.model);
    } else if (!fs::exists(base)) {
      eval_note = fmt::format("not evaluated: no base model at '{}' (--base)", base);
    } else if (!test.ok()) {
      eval_note = fmt::format("not evaluated: {}", test.status().ToString());
    } else {
      const size_t samples =
          f.eval_samples > 0 ? f.eval_samples : (original_eval ? original_eval->eval_samples : size_t{2000});
      SetTorchThreads(2);
      auto eval = MakeEvaluator(base, std::make_shared<const worker::Dataset>(std::move(*test)), samples);
      if (!eval.ok()) Fail("replay", eval.status());
      ro.evaluate = std::move(*eval);
    }
  }

  StatusLine status;
  ro.on_version = [&](const aggregator::ReplayProgress& p) {
    status.Update(fmt::format("replay: version {}  log record {} of {}  {:.1f} versions/s", p.version, p.seq,
                              p.last_seq, p.seconds > 0 ? static_cast<double>(p.version) / p.seconds : 0.0));
  };
  if (!f.json) {
    fmt::print("replaying {} records of '{}' from {} into {} ({})\n", (*log)->LastSeq(f.adapter), f.adapter,
               paths->log, out_adapters.string(),
               what_if ? fmt::format("what-if: {} on top of the recorded settings", fmt::join(*overrides, " "))
                       : "the recorded settings");
    std::fflush(stdout);
  }
  auto report = aggregator::Replay(**log, original.get(), **out, ro);
  status.Clear();
  if (!report.ok()) Fail("replay", report.status());
  const auto& r = *report;
  const double vps = r.seconds > 0 ? static_cast<double>(r.versions) / r.seconds : 0;
  const double ups = r.seconds > 0 ? static_cast<double>(r.records) / r.seconds : 0;

  if (f.json) {
    nlohmann::json j = {{"store", f.out},
                        {"what_if", what_if},
                        {"settings", what_if ? nlohmann::json(*overrides) : nlohmann::json(nullptr)},
                        {"versions", r.versions},
                        {"records", r.records},
                        {"applied", r.applied},
                        {"dropped", r.dropped},
                        {"seconds", r.seconds},
                        {"versions_per_s", vps},
                        {"updates_per_s", ups},
                        {"eval_seconds", r.eval_seconds},
                        {"setting_changes", r.setting_changes},
                        {"rollbacks", r.rollbacks},
                        {"final", r.final},
                        {"last_version", r.last.version},
                        {"last_hash", r.last.content_hash},
                        {"last_accuracy", r.last_eval ? nlohmann::json(r.last_eval->accuracy) : nlohmann::json(nullptr)},
                        {"compared", r.compared},
                        {"identical", r.identical},
                        {"first_difference", r.first_difference ? nlohmann::json(*r.first_difference) : nlohmann::json(nullptr)}};
    if (r.original_last) {
      j["original"] = {{"last_version", r.original_last->version},
                       {"last_hash", r.original_last->content_hash},
                       {"accuracy", original_eval ? nlohmann::json(original_eval->test_accuracy) : nlohmann::json(nullptr)},
                       {"accuracy_version", original_eval ? nlohmann::json(original_eval->version) : nlohmann::json(nullptr)}};
    }
    fmt::print("{}\n", j.dump(2));
  } else {
    fmt::print("replayed {} versions from {} log records in {:.2f} s: {:.1f} versions/s, {:.0f} updates/s{}\n",
               r.versions, r.records, r.seconds, vps, ups,
               r.eval_seconds > 0 ? fmt::format(" (+{:.1f} s evaluating)", r.eval_seconds) : "");
    fmt::print("  folded / dropped            {} / {}\n", r.applied, r.dropped);
    if (r.rollbacks > 0) {
      fmt::print("  rollbacks                   {} (made at the original's log positions)\n", r.rollbacks);
    }
    if (r.setting_changes > 0) {
      fmt::print("  settings changed            {} times (the original was restarted with other flags)\n",
                 r.setting_changes);
    }
    const std::string acc = r.last_eval ? fmt::format("{:.4f} ({} test images)", r.last_eval->accuracy, r.last_eval->samples)
                                        : (eval_note.empty() ? "-" : eval_note);
    if (r.original_last) {
      fmt::print("  original                    {} versions, latest hash {}, accuracy {}\n", r.original_last->version,
                 r.original_last->content_hash,
                 original_eval ? fmt::format("{} (version {})", Accuracy(original_eval->test_accuracy), original_eval->version)
                               : "-");
    }
    fmt::print("  replay                      {} versions{}, latest hash {}, accuracy {}\n", r.last.version,
               r.final ? " (final)" : "", r.last.content_hash, acc);
    if (r.first_difference) {
      fmt::print("  identical to the original   versions 0..{} ({} of {} compared hashes equal); first difference at "
                 "version {}\n",
                 *r.first_difference - 1, r.identical, r.compared, *r.first_difference);
    } else {
      fmt::print("  identical to the original   all {} versions both have (same content hashes)\n", r.compared);
    }
    fmt::print("  store                       {} (see: fedlora history --store {})\n", f.out, f.out);
  }
  if (!what_if && r.first_difference) {
    Fail("replay", DataLoss(fmt::format("version {} differs from the original although the recorded settings were "
                                        "used: the log or the original store is not what made it",
                                        *r.first_difference)));
  }
  if (!what_if && r.original_last && r.last.version < r.original_last->version) {
    Fail("replay", DataLoss(fmt::format("the log rebuilds only {} of the original's {} versions",
                                        r.last.version, r.original_last->version)));
  }
}

}  // namespace

void RegisterReplay(CLI::App& app) {
  auto f = std::make_shared<ReplayFlags>();
  auto* cmd = app.add_subcommand(
      "replay",
      "Rebuild every global version of an adapter from its stored update log into a new store. With the settings "
      "the original recorded with each version it reproduces every version bit for bit (exit 1 if one differs); "
      "with aggregator flags after -- (or in --config) it is a what-if: e.g. `fedlora replay --log fedlora-data "
      "--out /tmp/k3 -- --buffer-size 3`");
  cmd->add_option("--log", f->log, "The update log: a store directory (with log/ inside) or a log directory")
      ->required();
  cmd->add_option("--out", f->out, "New store directory to build (its adapters/ must not exist yet)")->required();
  cmd->add_option("--original", f->original,
                  "The original run's adapter store: version 0, recorded settings, versions to compare with "
                  "[default: adapters/ next to the log]");
  cmd->add_option("--adapter", f->adapter, "Adapter id")->capture_default_str();
  cmd->add_option("--config", f->config,
                  "File of aggregator flags (whitespace-separated, # comments) applied on top of the recorded "
                  "settings: a what-if replay");
  cmd->add_option("--until-seq", f->until_seq, "Consume the log only up to this record (0: all of it)")
      ->capture_default_str();
  cmd->add_option("--max-versions", f->max_versions, "Mark this version final and stop (0: no limit)")
      ->capture_default_str();
  cmd->add_option("--eval-every", f->eval_every,
                  "Also evaluate (and store the accuracy of) every N-th version (0: only the last)")
      ->capture_default_str();
  cmd->add_option("--eval-samples", f->eval_samples,
                  "Test images per evaluation [default: as many as the original's latest evaluation]");
  cmd->add_flag("--no-eval", f->no_eval, "Do not evaluate (needs no base model or dataset)");
  cmd->add_option("--data-dir", f->data_dir, "Fashion-MNIST IDX files")->capture_default_str();
  cmd->add_option("--base", f->base,
                  "Base model for evaluation [default: <store>/base/<model>.pt]; a language model's checkpoint "
                  "directory (required to evaluate one)");
  AddTextFlags(cmd, f->text);
  cmd->add_flag("--json", f->json, "Print the report as JSON");
  cmd->add_option("settings", f->extra, "Aggregator flags (after --) for a what-if replay, e.g. -- --method flora");
  cmd->callback([f] { RunReplay(*f); });
}

}  // namespace fedlora::ops
