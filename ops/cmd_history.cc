// `fedlora history` (one row per adapter version, with lineage in --json) and `fedlora log`
// (the stored update log). Both open the store read-only, so they work beside a live run.
#include <fmt/chrono.h>
#include <fmt/format.h>

#include <ctime>
#include <filesystem>
#include <optional>
#include <nlohmann/json.hpp>

#include "aggregator/engine_config.h"
#include "ops/commands.h"
#include "ops/flags.h"
#include "schema/codec.h"
#include "storage/adapter_store.h"
#include "storage/reader.h"
#include "storage/update_log.h"

namespace fedlora::ops {
namespace {

std::string FormatTime(uint64_t unix_ms) {
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03d}Z", tm, static_cast<int>(unix_ms % 1000));
}

// The ledger without its Renyi vectors (they are for the accountant, not for people).
nlohmann::json PrivacyJson(const std::optional<codec::PrivacyLedger>& ledger) {
  if (!ledger) return nullptr;
  nlohmann::json j = {{"delta", ledger->delta}};
  if (const auto& c = ledger->client) {
    j["client"] = {{"epsilon", c->epsilon},
                   {"steps", c->steps},
                   {"noise_multiplier", c->noise_multiplier},
                   {"clip", c->clip},
                   {"budget", c->budget > 0 ? nlohmann::json(c->budget) : nlohmann::json(nullptr)}};
  }
  auto& workers = j["workers"] = nlohmann::json::array();
  for (const auto& w : ledger->workers) {
    workers.push_back({{"client_id", w.client_id},
                       {"epsilon", w.non_private_updates == 0 ? nlohmann::json(w.epsilon) : nlohmann::json(nullptr)},
                       {"steps", w.steps},
                       {"updates", w.updates},
                       {"non_private_updates", w.non_private_updates},
                       {"noise_multiplier", w.noise_multiplier},
                       {"sample_rate", w.sample_rate}});
  }
  return j;
}

// "-" without that kind of DP; "inf" where a worker published without DP.
std::string ClientEpsilon(const codec::VersionInfo& v) {
  if (!v.privacy || !v.privacy->client) return "-";
  return fmt::format("{:.3f}", v.privacy->client->epsilon);
}
std::string WorkerEpsilon(const codec::VersionInfo& v) {
  if (!v.privacy || v.privacy->workers.empty()) return "-";
  double max_eps = 0;
  for (const auto& w : v.privacy->workers) {
    if (w.non_private_updates > 0) return "inf";
    max_eps = std::max(max_eps, w.epsilon);
  }
  return fmt::format("{:.3f}", max_eps);
}

// The recorded settings as flags; a table this build cannot read is shown as the reason.
std::string RecordedConfigText(const codec::VersionInfo& v) {
  auto text = aggregator::RecordedConfig(v);
  return text.ok() ? *text : fmt::format("(unreadable: {})", text.status().message());
}

nlohmann::json VersionJson(const codec::VersionInfo& v) {
  nlohmann::json j = {{"version", v.version},
                      {"parent_version", v.parent_version},
                      {"commit_time", FormatTime(v.commit_unix_ms)},
                      {"commit_unix_ms", v.commit_unix_ms},
                      {"mode", codec::ModeName(v.mode)},
                      {"method", v.method},
                      {"server_optimizer", v.server_optimizer},
                      {"consumed_seq", v.consumed_seq},
                      {"updates", v.applied.size()},
                      {"dropped", v.dropped.size()},
                      {"mean_staleness", v.mean_staleness},
                      {"max_staleness", v.max_staleness},
                      {"update_norm", v.update_norm},
                      {"content_hash", v.content_hash},
                      {"config", RecordedConfigText(v)}};
  if (!v.origin.empty()) j["origin"] = v.origin;
  j["rollback_to"] = v.rollback_to ? nlohmann::json(*v.rollback_to) : nlohmann::json(nullptr);
  j["test_accuracy"] = v.test_accuracy >= 0 ? nlohmann::json(v.test_accuracy) : nlohmann::json(nullptr);
  j["test_loss"] = v.test_loss >= 0 ? nlohmann::json(v.test_loss) : nlohmann::json(nullptr);
  j["eval_samples"] = v.eval_samples;
  auto& applied = j["applied"] = nlohmann::json::array();
  for (const auto& a : v.applied) {
    applied.push_back({{"seq", a.seq},
                       {"client_id", a.client_id},
                       {"update_id", a.update_id},
                       {"base_version", a.base_version},
                       {"staleness", a.staleness},
                       {"weight", a.weight},
                       {"num_samples", a.num_samples},
                       {"train_loss", a.train_loss}});
  }
  j["privacy"] = PrivacyJson(v.privacy);
  if (!v.factors.empty()) {
    auto& factors = j["factors"] = nlohmann::json::array();
    for (const auto& f : v.factors) {
      factors.push_back({{"module", f.module},
                         {"active", f.active == 1 ? "A" : "B"},
                         {"score_a", f.seen[1] ? nlohmann::json(f.score[1]) : nlohmann::json(nullptr)},
                         {"score_b", f.seen[0] ? nlohmann::json(f.score[0]) : nlohmann::json(nullptr)}});
    }
  }
  auto& dropped = j["dropped_updates"] = nlohmann::json::array();
  for (const auto& d : v.dropped) {
    dropped.push_back({{"seq", d.seq},
                       {"client_id", d.client_id},
                       {"update_id", d.update_id},
                       {"base_version", d.base_version},
                       {"staleness", d.staleness},
                       {"reason", d.reason}});
  }
  return j;
}

}  // namespace

void RegisterHistory(CLI::App& app) {
  struct Flags {
    StoreLayout store;
    std::string adapter = "default";
    uint64_t from = 0;
    uint64_t to = UINT64_MAX;
    std::string client;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand("history", "List the versions of an adapter: commit time, updates folded in, "
                                            "staleness, accuracy, privacy spent (client-level epsilon, and the "
                                            "largest record-level epsilon of any worker); --json adds each "
                                            "version's lineage, privacy ledger and AS-LoRA choices");
  cmd->add_option("--store", f->store.dir, "Store directory")->capture_default_str();
  cmd->add_option("--adapter", f->adapter, "Adapter id")->capture_default_str();
  cmd->add_option("--from", f->from, "First version to list")->capture_default_str();
  cmd->add_option("--to", f->to, "Last version to list");
  cmd->add_option("--client", f->client, "Only versions that folded in an update of this client");
  cmd->add_flag("--json", f->json, "Print JSON (one array of versions, lineage included)");
  cmd->callback([f] {
    storage::AdapterStoreOptions so;
    so.path = f->store.adapters();
    so.read_only = true;
    auto store = storage::AdapterStore::Open(so);
    if (!store.ok()) Fail("history", store.status());
    auto cursor = (*store)->GetCursor(f->adapter);
    if (!cursor.ok()) Fail("history", cursor.status());
    if (!*cursor) {
      auto adapters = (*store)->Adapters();
      Fail("history", NotFound(fmt::format("store '{}' has no adapter '{}' (adapters: {})", f->store.dir, f->adapter,
                                           adapters.ok() ? fmt::format("{}", fmt::join(*adapters, ", ")) : "?")));
    }
    auto records = (*store)->GetRecords(f->adapter, f->from, f->to);
    if (!records.ok()) Fail("history", records.status());
    nlohmann::json out = nlohmann::json::array();
    if (!f->json) {
      fmt::print("{:>7}  {:<24}  {:>7}  {:>7}  {:>9}  {:>9}  {:>9}  {:>8}  {:>10}  {:>10}\n", "version",
                 "committed (UTC)", "updates", "dropped", "stale avg", "stale max", "norm", "accuracy", "eps client",
                 "eps worker");
    }
    for (const auto& bytes : *records) {
      auto rec = codec::VerifyVersionRecord(codec::AsBytes(bytes));
      if (!rec.ok()) Fail("history", rec.status());
      const codec::VersionInfo v = codec::DecodeVersionRecord(**rec);
      if (!f->client.empty()) {
        bool found = false;
        for (const auto& a : v.applied) found |= a.client_id == f->client;
        if (!found) continue;
      }
      if (f->json) {
        out.push_back(VersionJson(v));
        continue;
      }
      const std::string acc = v.test_accuracy >= 0 ? fmt::format("{:.4f}", v.test_accuracy) : "-";
      fmt::print("{:>7}  {:<24}  {:>7}  {:>7}  {:>9.2f}  {:>9}  {:>9.4f}  {:>8}  {:>10}  {:>10}\n", v.version,
                 FormatTime(v.commit_unix_ms), v.applied.size(), v.dropped.size(), v.mean_staleness, v.max_staleness,
                 v.update_norm, acc, ClientEpsilon(v), WorkerEpsilon(v));
      if (v.rollback_to) fmt::print("         ^ rollback: version {} holds version {}'s tensors\n", v.version, *v.rollback_to);
    }
    if (f->json) fmt::print("{}\n", out.dump(2));
  });
}

void RegisterLog(CLI::App& app) {
  struct Flags {
    StoreLayout store;
    std::string adapter = "default";
    uint64_t from = 1;
    size_t limit = 0;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand("log", "List the records of the durable update log");
  cmd->add_option("--store", f->store.dir, "Store directory")->capture_default_str();
  cmd->add_option("--adapter", f->adapter, "Adapter id")->capture_default_str();
  cmd->add_option("--from", f->from, "First sequence number")->capture_default_str();
  cmd->add_option("--limit", f->limit, "Most records to list (0: all)")->capture_default_str();
  cmd->add_flag("--json", f->json, "Print JSON");
  cmd->callback([f] {
    storage::UpdateLogOptions lo;
    lo.path = f->store.log();
    lo.read_only = true;
    auto log = storage::UpdateLog::Open(lo);
    if (!log.ok()) Fail("log", log.status());
    // The log against the aggregator's store beside it, if any: a log that was lost and made
    // afresh, replaced, or lost its tail reads cleanly on its own.
    const std::optional<storage::Cursor> consumed = storage::ConsumedCursor(f->store, f->adapter);
    if (consumed) {
      if (Status s = storage::CheckLogIdentity(**log, *consumed, f->store.adapters()); !s.ok()) Fail("log", s);
    }
    nlohmann::json out = nlohmann::json::array();
    if (!f->json) {
      fmt::print("{:>7}  {:<14}  {:<32}  {:>5}  {:>8}  {:>9}  {:>9}\n", "seq", "client", "update id", "base",
                 "samples", "loss", "bytes");
    }
    uint64_t next = std::max<uint64_t>(1, f->from);
    size_t listed = 0;
    while (f->limit == 0 || listed < f->limit) {
      auto batch = (*log)->Read(f->adapter, next, 256, 16u << 20);
      if (!batch.ok()) Fail("log", batch.status());
      if (batch->empty()) break;
      for (const auto& r : *batch) {
        if (f->limit != 0 && listed >= f->limit) break;
        auto env = codec::VerifyEnvelope(codec::AsBytes(r.bytes), codec::kMaxBufferBytes);
        if (!env.ok() || (*env)->body_type() != wire::Body::Update) {
          Fail("log", DataLoss(fmt::format("record {} is not a readable update", r.seq)));
        }
        const auto* u = (*env)->body_as_Update();
        if (f->json) {
          out.push_back({{"seq", r.seq},
                         {"client_id", u->client_id()->str()},
                         {"update_id", u->update_id()->str()},
                         {"base_version", u->base_version()},
                         {"num_samples", u->num_samples()},
                         {"local_steps", u->local_steps()},
                         {"train_loss", u->train_loss()},
                         {"bytes", r.bytes.size()}});
        } else {
          fmt::print("{:>7}  {:<14}  {:<32}  {:>5}  {:>8}  {:>9.4f}  {:>9}\n", r.seq, u->client_id()->str(),
                     u->update_id()->str(), u->base_version(), u->num_samples(), u->train_loss(), r.bytes.size());
        }
        ++listed;
        next = r.seq + 1;
      }
    }
    if (f->json) fmt::print("{}\n", out.dump(2));
    if (consumed) {
      if (Status s = storage::CheckLogHead(**log, f->adapter, *consumed, f->store.adapters()); !s.ok()) Fail("log", s);
    }
    if (Status s = (*log)->CheckAcknowledged(); !s.ok()) Fail("log", s);
  });
}

}  // namespace fedlora::ops
