// `fedlora inspect`: what the stored versions of an adapter contain beyond `history`'s rows.
// --factors: AS-LoRA's choice of the trained factor per module over versions, with the
// smoothed scores behind the latest choice. Opens the store read-only (works beside a run).
#include <fmt/format.h>

#include <map>
#include <nlohmann/json.hpp>

#include "ops/commands.h"
#include "ops/flags.h"
#include "schema/codec.h"
#include "storage/adapter_store.h"

namespace fedlora::ops {
namespace {

constexpr size_t kColumns = 60;  // versions per block of the text grid

char Letter(uint8_t active) { return active == 1 ? 'A' : 'B'; }

}  // namespace

void RegisterInspect(CLI::App& app) {
  struct Flags {
    StoreLayout store;
    std::string adapter = "default";
    uint64_t from = 0;
    uint64_t to = UINT64_MAX;
    bool factors = false;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand(
      "inspect", "Inspect an adapter's stored versions. --factors: which LoRA factor each module trained at every "
                 "version under as-lora (B or A), how often it switched, and the latest scores");
  cmd->add_option("--store", f->store.dir, "Store directory")->capture_default_str();
  cmd->add_option("--adapter", f->adapter, "Adapter id")->capture_default_str();
  cmd->add_option("--from", f->from, "First version")->capture_default_str();
  cmd->add_option("--to", f->to, "Last version");
  cmd->add_flag("--factors", f->factors, "AS-LoRA: each module's trained factor over versions")->required();
  cmd->add_flag("--json", f->json, "Print JSON: per version, each module's factor and scores");
  cmd->callback([f] {
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
    if (versions.back().method != "as-lora") {
      Fail("inspect", FailedPrecondition(fmt::format(
                          "adapter '{}' is trained with method '{}': only as-lora chooses a factor per module",
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
