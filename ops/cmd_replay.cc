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

#include "aggregator/replay.h"
#include "ops/commands.h"
#include "ops/flags.h"
#include "ops/progress.h"
#include "worker/federation/replay_store.h"

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

std::string Accuracy(float a) { return a >= 0 ? fmt::format("{:.4f}", a) : "-"; }

void PrintReport(const ReplayFlags& f, const federation::ReplayOutcome& o) {
  const auto& r = o.report;
  const double vps = r.seconds > 0 ? static_cast<double>(r.versions) / r.seconds : 0;
  const double ups = r.seconds > 0 ? static_cast<double>(r.records) / r.seconds : 0;
  const auto& original_eval = o.original_eval;
  if (f.json) {
    nlohmann::json j = {{"store", f.out},
                        {"what_if", o.what_if},
                        {"settings", o.what_if ? nlohmann::json(WhatIfArgs(f).value()) : nlohmann::json(nullptr)},
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
    return;
  }
  fmt::print("replayed {} versions from {} log records in {:.2f} s: {:.1f} versions/s, {:.0f} updates/s{}\n", r.versions,
             r.records, r.seconds, vps, ups, r.eval_seconds > 0 ? fmt::format(" (+{:.1f} s evaluating)", r.eval_seconds) : "");
  fmt::print("  folded / dropped            {} / {}\n", r.applied, r.dropped);
  if (r.rollbacks > 0) fmt::print("  rollbacks                   {} (made at the original's log positions)\n", r.rollbacks);
  if (r.setting_changes > 0) {
    fmt::print("  settings changed            {} times (the original was restarted with other flags)\n", r.setting_changes);
  }
  const std::string acc = r.last_eval ? fmt::format("{:.4f} ({} test images)", r.last_eval->accuracy, r.last_eval->samples)
                                      : (o.eval_note.empty() ? "-" : o.eval_note);
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

void RunReplay(const ReplayFlags& f) {
  auto what_if = WhatIfArgs(f);
  if (!what_if.ok()) Fail("replay", what_if.status(), 2);
  federation::ReplayRequest request;
  request.log = f.log;
  request.original = f.original;
  request.out = f.out;
  request.adapter = f.adapter;
  request.what_if = *what_if;
  request.until_seq = f.until_seq;
  request.max_versions = f.max_versions;
  request.eval_every = f.eval_every;
  request.eval_samples = f.eval_samples;
  request.evaluate = !f.no_eval;
  request.data_dir = f.data_dir;
  request.base = f.base;
  request.text = f.text;

  StatusLine status;
  federation::ReplayCallbacks cb;
  cb.warning = [](const std::string& line) { fmt::print(stderr, "replay: warning: {}\n", line); };
  cb.starting = [&f](const federation::ReplayOutcome& o) {
    if (f.json) return;
    fmt::print("replaying {} records of '{}' from {} into {} ({})\n", o.log_records, f.adapter, o.log_path, o.out_path,
               o.what_if ? fmt::format("what-if: {} on top of the recorded settings", fmt::join(WhatIfArgs(f).value(), " "))
                         : "the recorded settings");
    std::fflush(stdout);
  };
  cb.on_version = [&status](const aggregator::ReplayProgress& p) {
    status.Update(fmt::format("replay: version {}  log record {} of {}  {:.1f} versions/s", p.version, p.seq,
                              p.last_seq, p.seconds > 0 ? static_cast<double>(p.version) / p.seconds : 0.0));
  };
  auto outcome = federation::ReplayStore(request, cb);
  status.Clear();
  if (!outcome.ok()) {
    // Exit 2: the request cannot be carried out as given (a flag, a path, an adapter that is not
    // there, an occupied output); 1: the data it names could not rebuild the versions.
    const Code c = outcome.status().code();
    Fail("replay", outcome.status(), c == Code::kInvalidArgument || c == Code::kNotFound || c == Code::kAlreadyExists ? 2 : 1);
  }
  PrintReport(f, *outcome);
  if (!outcome->verdict.ok()) Fail("replay", outcome->verdict);
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
