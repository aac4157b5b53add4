// `fedlora inspect`, `fedlora diff`, `fedlora lineage`: what the stored versions of an adapter
// contain beyond `history`'s rows. All open the store read-only (they work beside a run).
//  inspect --version V: per LoRA module the norm, singular values and effective rank of
//    dW = (alpha/r) B A, sparsity, the change since V-1; the updates folded and dropped.
//  inspect --factors: AS-LoRA's choice of the trained factor per module over versions.
//  diff V1 V2: per module, how far V2 moved from V1.
//  lineage --update ID: the version that folded (or dropped) an update.
#include <fmt/format.h>

#include <filesystem>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>

#include "aggregator/methods/adapter_stats.h"
#include "ops/commands.h"
#include "ops/flags.h"
#include "schema/codec.h"
#include "storage/reader.h"

namespace fedlora::ops {
namespace {

constexpr size_t kColumns = 60;  // versions per block of the text grid

char Letter(uint8_t active) { return active == 1 ? 'A' : 'B'; }

std::string Percent(double share) { return fmt::format("{:.0f}%", 100 * share); }

std::string TopValues(const std::vector<double>& s, size_t n) {
  std::string out;
  for (size_t i = 0; i < std::min(n, s.size()); ++i) out += fmt::format("{}{:.3g}", i ? " " : "", s[i]);
  if (s.size() > n) out += " ...";
  return out.empty() ? "-" : out;
}

nlohmann::json StatsJson(const methods::AdapterStats& st) {
  nlohmann::json modules = nlohmann::json::array();
  for (const auto& m : st.modules) {
    nlohmann::json j = {{"module", m.module},
                        {"shape", {m.rows, m.cols}},
                        {"rank", m.rank},
                        {"norm", m.norm},
                        {"singular_values", m.singular_values},
                        {"effective_rank", m.effective_rank},
                        {"zeros_a", m.zeros_a},
                        {"zeros_b", m.zeros_b}};
    j["change"] = m.change ? nlohmann::json(*m.change) : nlohmann::json(nullptr);
    j["cosine"] = m.cosine ? nlohmann::json(*m.cosine) : nlohmann::json(nullptr);
    modules.push_back(std::move(j));
  }
  nlohmann::json dense = nlohmann::json::array();
  for (const auto& d : st.dense) {
    dense.push_back({{"name", d.name},
                     {"norm", d.norm},
                     {"zeros", d.zeros},
                     {"change", d.change ? nlohmann::json(*d.change) : nlohmann::json(nullptr)}});
  }
  return {{"modules", modules}, {"dense", dense}};
}

void PrintStats(const methods::AdapterStats& st, const std::string& change_header) {
  const std::string header = "module (dW = alpha/r B A)";
  size_t width = header.size();
  for (const auto& m : st.modules) width = std::max(width, m.module.size());
  for (const auto& d : st.dense) width = std::max(width, d.name.size());
  if (!st.modules.empty()) {
    fmt::print("{:<{}}  {:>11}  {:>11}  {:>7}  {:>8}  {:>9}  {}\n", header, width, "||dW||",
               change_header, "cosine", "eff.rank", "zeros A/B", "singular values");
    for (const auto& m : st.modules) {
      fmt::print("{:<{}}  {:>11.4g}  {:>11}  {:>7}  {:>8.2f}  {:>9}  {}\n", m.module, width, m.norm,
                 m.change ? fmt::format("{:.4g}", *m.change) : "-", m.cosine ? fmt::format("{:.3f}", *m.cosine) : "-",
                 m.effective_rank, Percent(m.zeros_a) + "/" + Percent(m.zeros_b), TopValues(m.singular_values, 4));
    }
  }
  if (!st.dense.empty()) {
    fmt::print("\n{:<{}}  {:>11}  {:>11}  {:>7}\n", "dense tensor", width, "norm", change_header, "zeros");
    for (const auto& d : st.dense) {
      fmt::print("{:<{}}  {:>11.4g}  {:>11}  {:>7}\n", d.name, width, d.norm,
                 d.change ? fmt::format("{:.4g}", *d.change) : "-", Percent(d.zeros));
    }
  }
}

nlohmann::json LineageJson(const codec::VersionInfo& v) {
  nlohmann::json applied = nlohmann::json::array(), dropped = nlohmann::json::array();
  for (const auto& a : v.applied) {
    applied.push_back({{"seq", a.seq}, {"client_id", a.client_id}, {"update_id", a.update_id},
                       {"base_version", a.base_version}, {"staleness", a.staleness}, {"weight", a.weight},
                       {"num_samples", a.num_samples}, {"train_loss", a.train_loss}});
  }
  for (const auto& d : v.dropped) {
    dropped.push_back({{"seq", d.seq}, {"client_id", d.client_id}, {"update_id", d.update_id},
                       {"base_version", d.base_version}, {"staleness", d.staleness}, {"reason", d.reason}});
  }
  return {{"applied", applied}, {"dropped", dropped}};
}

void InspectVersion(const StoreLayout& layout, const std::string& adapter, uint64_t version, bool json) {
  auto stored = storage::StoredAdapter::Open(layout, adapter);
  if (!stored.ok()) Fail("inspect", stored.status());
  auto record = stored->Record(version);
  if (!record.ok()) Fail("inspect", record.status());
  auto global = stored->Global(version);
  if (!global.ok()) Fail("inspect", global.status());
  std::optional<codec::DecodedGlobal> parent;
  if (version > 0) {
    auto p = stored->Global(version - 1);
    if (!p.ok()) Fail("inspect", p.status());
    if (p->spec.tensors.size() == global->spec.tensors.size()) parent = std::move(*p);
  }
  const methods::AdapterStats st = methods::Describe(global->spec, global->state, parent ? &parent->state : nullptr);
  const codec::VersionInfo& v = *record;
  if (json) {
    nlohmann::json j = StatsJson(st);
    j["version"] = v.version;
    j["parent_version"] = v.parent_version;
    j["method"] = v.method;
    j["mode"] = codec::ModeName(v.mode);
    j["content_hash"] = v.content_hash;
    j["consumed_seq"] = v.consumed_seq;
    j["rank"] = global->spec.rank;
    j["alpha"] = global->spec.alpha;
    j["lineage"] = LineageJson(v);
    fmt::print("{}\n", j.dump(2));
    return;
  }
  fmt::print("adapter '{}' version {} of {}: method {} ({}), rank {}, alpha {:g}, content hash {}, log consumed to seq "
             "{}\n\n",
             adapter, v.version, stored->cursor().version, v.method, codec::ModeName(v.mode), global->spec.rank,
             global->spec.alpha, v.content_hash, v.consumed_seq);
  PrintStats(st, version > 0 ? fmt::format("vs v{}", version - 1) : "change");
  fmt::print("\n{} updates folded (mean staleness {:.2f}, max {}), {} dropped\n", v.applied.size(), v.mean_staleness,
             v.max_staleness, v.dropped.size());
  if (!v.applied.empty()) {
    fmt::print("  {:>8}  {:<16}  {:<24}  {:>6}  {:>9}  {:>8}\n", "seq", "client", "update", "base", "staleness",
               "weight");
    for (const auto& a : v.applied) {
      fmt::print("  {:>8}  {:<16}  {:<24}  {:>6}  {:>9}  {:>8.4f}\n", a.seq, a.client_id, a.update_id, a.base_version,
                 a.staleness, a.weight);
    }
  }
  for (const auto& d : v.dropped) {
    fmt::print("  dropped seq {} ({} {}, base {}, staleness {}): {}\n", d.seq, d.client_id, d.update_id,
               d.base_version, d.staleness, d.reason);
  }
}

}  // namespace

void RegisterDiff(CLI::App& app) {
  struct Flags {
    StoreLayout store;
    std::string adapter = "default";
    std::string from_text;
    std::string to_text;
    uint64_t from = 0;
    uint64_t to = 0;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand("diff", "How far version V2 of an adapter moved from V1: per LoRA module the change "
                                         "||dW2 - dW1|| of (alpha/r) B A and the cosine between them, per dense "
                                         "tensor the change, and the updates folded in between");
  cmd->add_option("V1", f->from_text, "The earlier version (a number or a tag)")->required();
  cmd->add_option("V2", f->to_text, "The later version (a number or a tag)")->required();
  cmd->add_option("--store", f->store.dir, "Store directory")->capture_default_str();
  cmd->add_option("--adapter", f->adapter, "Adapter id")->capture_default_str();
  cmd->add_flag("--json", f->json, "Print JSON");
  cmd->callback([f] {
    auto stored = storage::StoredAdapter::Open(f->store, f->adapter);
    if (!stored.ok()) Fail("diff", stored.status());
    for (auto [text, out] : {std::pair{&f->from_text, &f->from}, {&f->to_text, &f->to}}) {
      auto v = storage::ResolveVersion(f->store, f->adapter, *text);
      if (!v.ok()) Fail("diff", v.status(), 2);
      *out = *v;
    }
    auto a = stored->Global(f->from);
    if (!a.ok()) Fail("diff", a.status());
    auto b = stored->Global(f->to);
    if (!b.ok()) Fail("diff", b.status());
    if (CheckStateMatchesSpec(a->spec, b->state).ok() == false) {
      Fail("diff", FailedPrecondition(fmt::format("versions {} and {} have different tensors", f->from, f->to)));
    }
    auto counts = storage::CountLineage(*stored, f->from, f->to);
    if (!counts.ok()) Fail("diff", counts.status());
    const size_t folded = counts->folded, dropped = counts->dropped;
    const methods::AdapterStats st = methods::Describe(b->spec, b->state, &a->state);
    if (f->json) {
      nlohmann::json j = StatsJson(st);
      j["from"] = f->from;
      j["to"] = f->to;
      j["updates_folded"] = folded;
      j["updates_dropped"] = dropped;
      fmt::print("{}\n", j.dump(2));
      return;
    }
    fmt::print("adapter '{}': version {} against version {} ({} updates folded and {} dropped in between)\n\n",
               f->adapter, f->to, f->from, folded, dropped);
    PrintStats(st, fmt::format("vs v{}", f->from));
  });
}

void RegisterLineage(CLI::App& app) {
  struct Flags {
    StoreLayout store;
    std::string adapter = "default";
    std::string update;
    std::string client;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand("lineage", "Which version first folded an update in (or dropped it, and why), with "
                                            "its staleness and weight; or where it waits if not consumed yet");
  cmd->add_option("--update", f->update, "The update id")->required();
  cmd->add_option("--client", f->client, "Only this client's update of that id (ids are unique per client)");
  cmd->add_option("--store", f->store.dir, "Store directory")->capture_default_str();
  cmd->add_option("--adapter", f->adapter, "Adapter id")->capture_default_str();
  cmd->add_flag("--json", f->json, "Print JSON");
  cmd->callback([f] {
    auto stored = storage::StoredAdapter::Open(f->store, f->adapter);
    if (!stored.ok()) Fail("lineage", stored.status());
    auto where = storage::FindUpdate(f->store, *stored, f->update, f->client);
    if (!where.ok()) Fail("lineage", where.status());
    if (where->outcomes.empty()) {
      const std::string why =
          where->waiting_at
              ? fmt::format("it is logged at seq {} and waits: the latest version {} consumed the log to seq {}",
                            *where->waiting_at, stored->cursor().version, stored->cursor().consumed_seq)
              : "it is not in any version";
      Fail("lineage", NotFound(fmt::format("update '{}'{}: {}", f->update,
                                           f->client.empty() ? "" : " of client '" + f->client + "'", why)));
    }
    nlohmann::json found = nlohmann::json::array();
    for (const auto& o : where->outcomes) {
      const auto& a = o.item;
      if (o.folded) {
        found.push_back({{"version", o.version}, {"outcome", "folded"}, {"seq", a.seq}, {"client_id", a.client_id},
                         {"base_version", a.base_version}, {"staleness", a.staleness}, {"weight", a.weight}});
      } else {
        found.push_back({{"version", o.version}, {"outcome", "dropped"}, {"seq", a.seq}, {"client_id", a.client_id},
                         {"base_version", a.base_version}, {"staleness", a.staleness}, {"reason", o.reason}});
      }
    }
    if (f->json) {
      fmt::print("{}\n", found.dump(2));
      return;
    }
    for (const auto& e : found) {
      if (e["outcome"] == "folded") {
        fmt::print("update '{}' of {} (log seq {}, trained from version {}) was folded into version {} with staleness "
                   "{} and weight {:.4f}\n",
                   f->update, e["client_id"].get<std::string>(), e["seq"].get<uint64_t>(),
                   e["base_version"].get<uint64_t>(), e["version"].get<uint64_t>(), e["staleness"].get<uint32_t>(),
                   e["weight"].get<double>());
      } else {
        fmt::print("update '{}' of {} (log seq {}, trained from version {}) was dropped by version {}: {}\n", f->update,
                   e["client_id"].get<std::string>(), e["seq"].get<uint64_t>(), e["base_version"].get<uint64_t>(),
                   e["version"].get<uint64_t>(), e["reason"].get<std::string>());
      }
    }
  });
}

void RegisterInspect(CLI::App& app) {
  struct Flags {
    StoreLayout store;
    std::string adapter = "default";
    uint64_t from = 0;
    uint64_t to = UINT64_MAX;
    bool factors = false;
    std::optional<std::string> version;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand(
      "inspect", "Inspect an adapter's stored versions. --version V: per LoRA module the norm, singular values and "
                 "effective rank of (alpha/r) B A, sparsity and the change since V-1, and the updates folded or dropped "
                 "(lineage). --factors: which LoRA factor each module trained at every version under as-lora");
  cmd->add_option("--store", f->store.dir, "Store directory")->capture_default_str();
  cmd->add_option("--adapter", f->adapter, "Adapter id")->capture_default_str();
  auto* version = cmd->add_option("--version", f->version, "The version to inspect (a number or a tag)");
  cmd->add_option("--from", f->from, "First version (--factors)")->capture_default_str();
  cmd->add_option("--to", f->to, "Last version (--factors)");
  auto* factors = cmd->add_flag("--factors", f->factors, "AS-LoRA: each module's trained factor over versions");
  cmd->add_flag("--json", f->json, "Print JSON");
  version->excludes(factors);
  cmd->callback([f] {
    if (f->version) {
      auto v = storage::ResolveVersion(f->store, f->adapter, *f->version);
      if (!v.ok()) Fail("inspect", v.status(), 2);
      InspectVersion(f->store, f->adapter, *v, f->json);
      return;
    }
    if (!f->factors) Fail("inspect", InvalidArgument("say what to inspect: --version V or --factors"), 2);
    storage::AdapterStoreOptions so;
    so.path = f->store.adapters();
    so.read_only = true;
    auto store = storage::AdapterStore::Open(so);
    if (!store.ok()) Fail("inspect", store.status());
    auto cursor = (*store)->GetCursor(f->adapter);
    if (!cursor.ok()) Fail("inspect", cursor.status());
    if (!*cursor) Fail("inspect", NotFound(fmt::format("store '{}' has no adapter '{}'", f->store.dir, f->adapter)));
    auto records = (*store)->GetRecords(f->adapter, f->from, f->to);
    if (!records.ok()) Fail("inspect", records.status());
    std::vector<codec::VersionInfo> versions;
    for (const auto& bytes : *records) {
      auto rec = codec::VerifyVersionRecord(codec::AsBytes(bytes));
      if (!rec.ok()) Fail("inspect", rec.status());
      versions.push_back(codec::DecodeVersionRecord(**rec));
    }
    if (versions.empty()) Fail("inspect", NotFound("no versions in that range"));
    if (versions.back().factors.empty()) {
      Fail("inspect", FailedPrecondition(fmt::format(
                          "adapter '{}' is trained with method '{}', which records no factor choices (as-lora does)",
                          f->adapter, versions.back().method)));
    }
    // Module names from the latest record; a version without choices (version 0, before the
    // first server step) trains B everywhere, as an empty choice list means on the wire.
    std::vector<std::string> modules;
    for (const auto& fs : versions.back().factors) modules.push_back(fs.module);
    auto letter_at = [](const codec::VersionInfo& v, size_t m) {
      return m < v.factors.size() ? Letter(v.factors[m].active) : 'B';
    };
    if (f->json) {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& v : versions) {
        nlohmann::json row = {{"version", v.version}};
        auto& mods = row["modules"] = nlohmann::json::object();
        for (size_t m = 0; m < modules.size(); ++m) {
          nlohmann::json e = {{"active", std::string(1, letter_at(v, m))}};
          if (m < v.factors.size()) {
            const auto& s = v.factors[m];
            e["score_b"] = s.seen[0] ? nlohmann::json(s.score[0]) : nlohmann::json(nullptr);
            e["score_a"] = s.seen[1] ? nlohmann::json(s.score[1]) : nlohmann::json(nullptr);
          }
          mods[modules[m]] = e;
        }
        out.push_back(row);
      }
      fmt::print("{}\n", out.dump(2));
      return;
    }
    size_t width = 6;
    for (const auto& m : modules) width = std::max(width, m.size());
    fmt::print("AS-LoRA factor per module and version of adapter '{}' (B: B trains, A frozen; A: the reverse)\n",
               f->adapter);
    for (size_t begin = 0; begin < versions.size(); begin += kColumns) {
      const size_t end = std::min(versions.size(), begin + kColumns);
      std::string ruler;
      for (size_t i = begin; i < end; ++i) ruler += versions[i].version % 10 == 0 ? '|' : ' ';
      fmt::print("\n{:<{}}  versions {}..{}\n{:<{}}  {}\n", "module", width, versions[begin].version,
                 versions[end - 1].version, "", width, ruler);
      for (size_t m = 0; m < modules.size(); ++m) {
        std::string row;
        for (size_t i = begin; i < end; ++i) row += letter_at(versions[i], m);
        fmt::print("{:<{}}  {}\n", modules[m], width, row);
      }
    }
    fmt::print("\n{:<{}}  {:>8}  {:>6}  {:>6}  {:>12}  {:>12}\n", "module", width, "switches", "A", "now", "score B",
               "score A");
    const codec::VersionInfo& last = versions.back();
    for (size_t m = 0; m < modules.size(); ++m) {
      size_t switches = 0, a_versions = 0;
      for (size_t i = 0; i < versions.size(); ++i) {
        const char c = letter_at(versions[i], m);
        a_versions += c == 'A';
        if (i > 0 && c != letter_at(versions[i - 1], m)) ++switches;
      }
      const auto& s = last.factors[m];
      fmt::print("{:<{}}  {:>8}  {:>5.0f}%  {:>6}  {:>12}  {:>12}\n", modules[m], width, switches,
                 100.0 * static_cast<double>(a_versions) / static_cast<double>(versions.size()), Letter(s.active),
                 s.seen[0] ? fmt::format("{:.4g}", s.score[0]) : "-", s.seen[1] ? fmt::format("{:.4g}", s.score[1]) : "-");
    }
    fmt::print("(A: share of the listed versions that trained A; scores: EMA of eta ||g||^2 - eta^2/2 sum F g^2)\n");
  });
}

}  // namespace fedlora::ops
