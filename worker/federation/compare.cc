#include "worker/federation/compare.h"

#include <fmt/format.h>

#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "ops/process/child.h"
#include "storage/adapter_store.h"
#include "storage/layout.h"
#include "storage/update_log.h"

namespace fedlora::federation {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Runs `args` with stdout and stderr appended to `log_path`. Returns the exit status, or -1 when
// it could not start; an interruption is passed on to the child as SIGINT.
int RunChild(const std::vector<std::string>& args, const std::string& log_path, const std::string& label,
             const CompareCallbacks& cb) {
  process::ChildOptions o;
  o.args = args;
  o.output_path = log_path;
  auto child = process::Child::Start(std::move(o));
  if (!child.ok()) return -1;
  const auto started = Clock::now();
  bool signalled = false;
  std::optional<int> status;
  while (!(status = (*child)->Wait(std::chrono::milliseconds(250)))) {
    if (cb.interrupted && cb.interrupted() && !signalled) {
      (*child)->Signal(SIGINT);
      signalled = true;
    }
    if (cb.running) cb.running(label, std::chrono::duration<double>(Clock::now() - started).count());
  }
  return process::ExitCode(*status);
}

// The summary `run --summary` wrote, into `r`; false when it cannot be read.
bool ReadSummary(const std::string& path, MethodResult& r) {
  std::ifstream in(path);
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return false;
  r.base_accuracy = j.value("base_accuracy", -1.0);
  r.final_accuracy = j.value("final_accuracy", -1.0);
  r.client_accuracy = j.value("client_accuracy_mean", -1.0);
  r.personal = j.value("client_models", std::string()) == "personal";
  r.final_version = j.value("final_version", uint64_t{0});
  r.updates = j.value("updates_logged", uint64_t{0});
  r.bytes = j.value("bytes_uploaded", uint64_t{0});
  r.seconds = j.value("federated_seconds", 0.0);
  if (j.contains("privacy") && j["privacy"].is_object()) r.epsilon_spent = j["privacy"].value("worker_epsilon_max", -1.0);
  return true;
}

}  // namespace

Result<std::vector<CurvePoint>> ReadCurve(const std::string& store_dir, const std::string& adapter) {
  const storage::StoreLayout store{store_dir};
  storage::UpdateLogOptions lo;
  lo.path = store.log();
  lo.read_only = true;
  ASSIGN_OR_RETURN(auto log, storage::UpdateLog::Open(lo));
  std::vector<double> cumulative{0.0};  // cumulative[seq] = bytes of records 1..seq
  for (uint64_t next = 1;;) {
    ASSIGN_OR_RETURN(auto batch, log->Read(adapter, next, 4096, 64u << 20));
    if (batch.empty()) break;
    for (const auto& rec : batch) {
      cumulative.resize(rec.seq + 1, cumulative.back());
      cumulative[rec.seq] = cumulative[rec.seq - 1] + static_cast<double>(rec.bytes.size());
      next = rec.seq + 1;
    }
  }
  storage::AdapterStoreOptions so;
  so.path = store.adapters();
  so.read_only = true;
  ASSIGN_OR_RETURN(auto adapters, storage::AdapterStore::Open(so));
  ASSIGN_OR_RETURN(auto cursor, adapters->GetCursor(adapter));
  if (!cursor) return NotFound("the run committed no version");
  std::vector<CurvePoint> curve;
  for (uint64_t v = 0; v <= cursor->version; ++v) {
    ASSIGN_OR_RETURN(auto info, storage::ReadVersionInfo(*adapters, adapter, v));
    if (info.test_accuracy < 0) continue;
    const double bytes = info.consumed_seq < cumulative.size() ? cumulative[info.consumed_seq] : cumulative.back();
    curve.push_back({bytes, info.test_accuracy, v});
  }
  return curve;
}

Result<std::string> PrepareBase(const CompareRequest& q, const std::string& out_dir, const CompareCallbacks& cb) {
  const bool text = IsTextClassification(q.task);
  const fs::path out(out_dir);
  const std::string base = !text               ? BasePath(out.string(), q.task.arch)
                           : q.task.base.empty() ? OwnLanguageModelPath(out.string())
                                                 : q.task.base;
  if (text && !q.task.base.empty() && !fs::is_directory(base)) {
    return NotFound(fmt::format("checkpoint directory '{}' does not exist", base));
  }
  if (fs::exists(base)) return base;
  const std::string log = (out / "pretrain.log").string();
  std::vector<std::string> args;
  if (text) {
    if (cb.note) cb.note(fmt::format("pretraining fedlora's own language model once for every run, about 5 minutes (log: {})", log));
    args = {q.executable, "pretrain", "--task", "lm", "--store", out.string()};
  } else {
    if (cb.note) cb.note(fmt::format("pretraining the {} base once for every run (log: {})", q.task.arch, log));
    args = {q.executable, "pretrain", "--store", out.string(), "--arch", q.task.arch, "--data-dir", q.task.data_dir};
  }
  const int rc = RunChild(args, log, "pretraining", cb);
  if (rc != 0) return Internal(fmt::format("pretraining failed (exit {}); see {}", rc, log));
  return base;
}

Result<std::vector<MethodResult>> RunMethods(const CompareRequest& q, const std::string& out_dir,
                                             const std::vector<std::string>& extra, const CompareCallbacks& cb) {
  const bool text = IsTextClassification(q.task);
  const fs::path out(out_dir);
  std::vector<MethodResult> results;
  for (size_t i = 0; i < q.methods.size(); ++i) {
    if (cb.interrupted && cb.interrupted()) break;
    MethodResult r;
    r.method = q.methods[i];
    const fs::path store = out / "runs" / r.method;
    std::error_code ec;
    fs::remove_all(store, ec);
    fs::create_directories(store / "base", ec);
    if (ec) return Unavailable(fmt::format("cannot create '{}': {}", store.string(), ec.message()));
    if (!text) {  // a language model is only read, so every run maps the same directory
      fs::copy_file(q.base, BasePath(store.string(), q.task.arch), fs::copy_options::overwrite_existing, ec);
      if (ec) return Unavailable(fmt::format("cannot copy the base model: {}", ec.message()));
    }
    const std::string summary = (store / "summary.json").string();
    std::vector<std::string> args = {q.executable, "run", "--store", store.string(), "--method", r.method,
                                     "--duration", fmt::format("{}", q.duration_s), "--workers",
                                     std::to_string(q.task.num_clients), "--speeds", q.speeds, "--dirichlet",
                                     fmt::format("{}", q.task.dirichlet_alpha), "--eval-every",
                                     std::to_string(q.eval_every), "--eval-samples", std::to_string(q.eval_samples),
                                     "--summary", summary};
    if (text) {
      args.insert(args.end(), {"--task", "text-classify", "--base", q.base, "--wordnet", q.task.wordnet_dir,
                               "--examples-per-source", std::to_string(q.task.examples_per_source)});
    } else {
      args.insert(args.end(), {"--arch", q.task.arch, "--data-dir", q.task.data_dir});
    }
    args.insert(args.end(), extra.begin(), extra.end());
    const std::string label = fmt::format("[{}/{}] {:<10}", i + 1, q.methods.size(), r.method);
    const int rc = RunChild(args, (store / "run.log").string(), label, cb);
    if (rc != 0) {
      r.error = fmt::format("exit {}; see {}", rc, (store / "run.log").string());
    } else if (!ReadSummary(summary, r)) {
      r.error = "unreadable " + summary;
    } else if (auto curve = ReadCurve(store.string(), "default"); !curve.ok()) {
      r.error = curve.status().ToString();
    } else {
      r.curve = std::move(*curve);
    }
    for (const auto& p : r.curve) {
      if (p.accuracy >= q.target) {
        r.bytes_to_target = p.bytes;
        break;
      }
    }
    if (cb.finished) cb.finished(label, r);
    results.push_back(std::move(r));
  }
  return results;
}

}  // namespace fedlora::federation
