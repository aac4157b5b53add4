#include "aggregator/replay.h"

#include <gtest/gtest.h>

#include "aggregator/branch.h"
#include "aggregator/commit.h"
#include "aggregator/engine_config.h"
#include "aggregator/engine_flags.h"
#include "aggregator/rollback.h"
#include "aggregator/server_state.h"
#include "schema/hash.h"
#include "tests/testing/fixtures.h"

namespace fedlora::aggregator {
namespace {

using testing::FilledState;
using testing::MakeUpdate;
using testing::SmallSpec;
using testing::TempDir;

constexpr const char* kAdapter = "default";

EngineOptions Settings(uint32_t k, bool adam_and_dp) {
  EngineOptions o;
  o.mode = wire::Mode::FedBuff;
  o.buffer_size = k;
  if (adam_and_dp) {
    o.server_optimizer.kind = ServerOptimizerKind::kAdam;
    o.server_lr = 0.05;
    o.client_dp.noise_multiplier = 0.3;
    o.client_dp.clip = 2.0;
  }
  return o;
}

// An update whose delta differs per index, from clients c0..c3, trained from version `base`.
codec::Bytes Update(int i, uint64_t base) {
  AdapterState delta = FilledState(SmallSpec(), 0.01f * static_cast<float>(i % 5) - 0.02f);
  for (auto& t : delta.tensors) t.values[0] += 0.1f * static_cast<float>(i % 3);
  return MakeUpdate("u" + std::to_string(i), "c" + std::to_string(i % 4), base, delta, 10 + i);
}

struct Original {
  TempDir dir;
  std::unique_ptr<storage::UpdateLog> log;
  std::unique_ptr<storage::AdapterStore> store;

  Original() {
    auto l = storage::UpdateLog::Open({dir.path("log"), false});
    EXPECT_TRUE(l.ok()) << l.status().ToString();
    log = std::move(*l);
    store = OpenStore(dir.path("adapters"));
  }

  static std::unique_ptr<storage::AdapterStore> OpenStore(const std::string& path) {
    storage::AdapterStoreOptions so;
    so.path = path;
    so.sync = false;
    auto s = storage::AdapterStore::Open(so);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return std::move(*s);
  }

  void Append(int first, int count) {
    for (int i = first; i < first + count; ++i) {
      // Bases lag behind like real workers': every update trained from version (i / 4).
      const codec::Bytes bytes = Update(i, static_cast<uint64_t>(i / 4));
      const std::string id = "u" + std::to_string(i), client = "c" + std::to_string(i % 4);
      storage::LogAppend item{kAdapter, client, id, codec::AsBytes(bytes), std::nullopt};
      auto r = log->AppendBatch({&item, 1});
      ASSERT_TRUE(r[0].ok()) << r[0].status().ToString();
    }
  }

  void CommitVersionZero(const EngineOptions& o) {
    codec::VersionInfo info;
    info.adapter_id = kAdapter;
    const AdapterState state = FilledState(SmallSpec(), 0.5f);
    info.content_hash = ToHex(HashAdapter(state));
    auto g = CommitVersion(*store, o, nullptr, info, SmallSpec(), state, false);
    ASSERT_TRUE(g.ok()) << g.status().ToString();
  }

  // What an aggregator started with `o` does: resume from the store, fold the log, commit
  // every version, until `until_version` (0: the end of the log).
  void Aggregate(const EngineOptions& o, uint64_t until_version = 0) {
    auto resumed = ResumeEngine(*store, o, kAdapter, [this](uint64_t v) -> Result<std::shared_ptr<const AdapterState>> {
      ASSIGN_OR_RETURN(auto g, storage::ReadVersion(*store, kAdapter, v));
      return std::make_shared<const AdapterState>(std::move(g.state));
    });
    ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
    Engine& engine = *resumed->engine;
    auto records = log->Read(kAdapter, engine.next_seq(), 1000, 1 << 30);
    ASSERT_TRUE(records.ok());
    for (const auto& r : *records) {
      auto made = engine.Consume(r.seq, *codec::VerifyEnvelope(codec::AsBytes(r.bytes)).value()->body_as_Update());
      ASSERT_TRUE(made.ok()) << made.status().ToString();
      if (!*made) continue;
      auto g = CommitVersion(*store, o, &engine, **made, engine.spec(), engine.state(), false);
      ASSERT_TRUE(g.ok()) << g.status().ToString();
      if ((*made)->version == until_version) return;
    }
  }
};

// Settings from the recorded flags, which must be one of `known`.
ReplayOptions FromRecorded(std::vector<EngineOptions> known) {
  ReplayOptions ro;
  ro.settings = [known](uint64_t version, const std::string& recorded) -> Result<EngineOptions> {
    for (const auto& o : known) {
      if (EngineConfigFlags(o) == recorded) return o;
    }
    return InvalidArgument("version " + std::to_string(version) + " recorded unknown settings: " + recorded);
  };
  return ro;
}

std::string Hash(storage::AdapterStore& store, uint64_t v) {
  auto info = storage::ReadVersionInfo(store, kAdapter, v);
  EXPECT_TRUE(info.ok()) << info.status().ToString();
  return info.ok() ? info->content_hash : "";
}

TEST(ReplayTest, ReproducesEveryVersionAcrossARestartWithOtherSettings) {
  Original original;
  const EngineOptions k2 = Settings(2, true), k3 = Settings(3, true);
  original.CommitVersionZero(k2);
  original.Append(0, 6);
  original.Aggregate(k2);  // versions 1..3
  original.Append(6, 6);
  original.Aggregate(k3);  // restarted with K = 3: versions 4, 5
  auto cursor = original.store->GetCursor(kAdapter);
  ASSERT_TRUE(cursor.ok() && *cursor);
  ASSERT_EQ((*cursor)->version, 5u);

  TempDir out_dir;
  auto out = Original::OpenStore(out_dir.path("adapters"));
  auto report = Replay(*original.log, original.store.get(), *out, FromRecorded({k2, k3}));
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->versions, 5u);
  EXPECT_EQ(report->records, 12u);
  EXPECT_EQ(report->setting_changes, 1u);
  EXPECT_EQ(report->compared, 6u);
  EXPECT_EQ(report->identical, 6u);
  EXPECT_FALSE(report->first_difference);
  // Checked here too, independently of the report: every stored version, tensors included.
  for (uint64_t v = 0; v <= 5; ++v) {
    EXPECT_EQ(Hash(*out, v), Hash(*original.store, v)) << "version " << v;
    auto g = storage::ReadVersion(*out, kAdapter, v);
    ASSERT_TRUE(g.ok());
    EXPECT_EQ(ToHex(HashAdapter(g->state)), Hash(*original.store, v));
  }
  // The noise seed and Adam's moments after the last version are the original's too.
  auto a = original.store->GetServerState(kAdapter);
  auto b = out->GetServerState(kAdapter);
  ASSERT_TRUE(a.ok() && b.ok() && *a && *b);
  EXPECT_EQ(**a, **b);
}

TEST(ReplayTest, IgnoringTheRecordedChangeOfSettingsPartsAtTheFirstVersionAfterIt) {
  Original original;
  const EngineOptions k2 = Settings(2, false), k3 = Settings(3, false);
  original.CommitVersionZero(k2);
  original.Append(0, 6);
  original.Aggregate(k2);
  original.Append(6, 6);
  original.Aggregate(k3);

  TempDir out_dir;
  auto out = Original::OpenStore(out_dir.path("adapters"));
  ReplayOptions ro;
  ro.settings = [&](uint64_t, const std::string&) -> Result<EngineOptions> { return k2; };
  ro.stop_at_original_final = false;
  auto report = Replay(*original.log, original.store.get(), *out, ro);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->versions, 6u);  // 12 records, K = 2 throughout
  EXPECT_EQ(report->identical, 4u);  // versions 0..3
  ASSERT_TRUE(report->first_difference);
  EXPECT_EQ(*report->first_difference, 4u);
}

TEST(ReplayTest, AWhatIfWithAnotherKBuildsAnInternallyConsistentStore) {
  Original original;
  const EngineOptions k2 = Settings(2, false);
  original.CommitVersionZero(k2);
  original.Append(0, 12);  // update i was trained from the original's version i / 4
  original.Aggregate(k2);

  TempDir out_dir;
  auto out = Original::OpenStore(out_dir.path("adapters"));
  ReplayOptions ro;
  ro.settings = [](uint64_t, const std::string&) -> Result<EngineOptions> { return Settings(6, false); };
  ro.stop_at_original_final = false;
  auto report = Replay(*original.log, original.store.get(), *out, ro);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->versions, 2u);
  ASSERT_TRUE(report->first_difference);
  EXPECT_EQ(*report->first_difference, 1u);
  EXPECT_EQ(report->identical, 1u);  // version 0 only
  // Update 4 says it was trained from version 1, which the original made after 2 records; at
  // that log position this timeline was still at version 0, so it counts as trained from 0
  // (not "from the future", which would drop it).
  EXPECT_EQ(report->dropped, 0u);
  for (uint64_t v = 1; v <= 2; ++v) {
    auto info = storage::ReadVersionInfo(*out, kAdapter, v);
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->parent_version, v - 1);
    EXPECT_EQ(info->consumed_seq, 6 * v);
    ASSERT_EQ(info->applied.size(), 6u);
    EXPECT_TRUE(info->dropped.empty());
    for (const auto& a : info->applied) EXPECT_LT(a.base_version, v);
    EXPECT_TRUE(info->settings.has_value());
    auto recorded = RecordedConfig(*info);
    ASSERT_TRUE(recorded.ok());
    EXPECT_EQ(*recorded, EngineConfigFlags(Settings(6, false)));
    auto g = storage::ReadVersion(*out, kAdapter, v);
    ASSERT_TRUE(g.ok());
    EXPECT_EQ(ToHex(HashAdapter(g->state)), info->content_hash);
    EXPECT_NE(info->content_hash, Hash(*original.store, v));
  }
  auto v1 = storage::ReadVersionInfo(*out, kAdapter, 1);
  ASSERT_TRUE(v1.ok());
  EXPECT_EQ(v1->applied[4].base_version, 0u);  // original base 1, re-based
  EXPECT_EQ(v1->applied[4].staleness, 0u);
}

TEST(ReplayTest, ALogAloneWithVersionZeroAndTheSettingsRebuildsTheVersions) {
  Original original;
  const EngineOptions k2 = Settings(2, false);
  original.CommitVersionZero(k2);
  original.Append(0, 8);
  original.Aggregate(k2);

  TempDir out_dir;
  auto out = Original::OpenStore(out_dir.path("adapters"));
  ReplayOptions ro;
  ro.settings = [&](uint64_t, const std::string& recorded) -> Result<EngineOptions> {
    EXPECT_TRUE(recorded.empty());  // nothing recorded without the original store
    return k2;
  };
  ro.stop_at_original_final = false;
  auto missing = Replay(*original.log, nullptr, *out, ro);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kFailedPrecondition);
  ro.initial = InitialAdapter{SmallSpec(), FilledState(SmallSpec(), 0.5f)};
  auto report = Replay(*original.log, nullptr, *out, ro);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->versions, 4u);
  EXPECT_FALSE(report->original_last);
  for (uint64_t v = 0; v <= 4; ++v) EXPECT_EQ(Hash(*out, v), Hash(*original.store, v)) << "version " << v;
}

TEST(ReplayTest, RefusesAnOutputStoreThatAlreadyHoldsTheAdapterAndUnknownSettings) {
  Original original;
  original.CommitVersionZero(Settings(2, false));
  original.Append(0, 4);
  original.Aggregate(Settings(2, false));
  TempDir out_dir;
  auto out = Original::OpenStore(out_dir.path("adapters"));
  ReplayOptions bad = FromRecorded({Settings(3, false)});
  auto report = Replay(*original.log, original.store.get(), *out, bad);
  ASSERT_FALSE(report.ok());
  EXPECT_NE(report.status().message().find("recorded unknown settings"), std::string::npos);
  // The settings of version 1 are resolved before anything is written.
  auto cursor = out->GetCursor(kAdapter);
  ASSERT_TRUE(cursor.ok());
  EXPECT_FALSE(*cursor);

  ASSERT_TRUE(Replay(*original.log, original.store.get(), *out, FromRecorded({Settings(2, false)})).ok());
  auto again = Replay(*original.log, original.store.get(), *out, FromRecorded({Settings(2, false)}));
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), Code::kFailedPrecondition);
}

// A rollback to version 1 after version 4: the tensors of 1 in version 5, the log position and
// privacy ledger of 4, Adam's moments reset; later updates trained from 2..4 are dropped (also
// after a restart: the ranges are part of the stored server state); replay rebuilds it all.
TEST(RollbackTest, RestoresTensorsDropsRolledBackBasesAndReplaysBitForBit) {
  const EngineOptions o = Settings(3, true);
  Original orig;
  orig.CommitVersionZero(o);
  orig.Append(0, 24);  // update i is trained from version i / 4
  orig.Aggregate(o, 4);
  auto v4 = storage::ReadVersionInfo(*orig.store, kAdapter, 4);
  ASSERT_TRUE(v4.ok());
  ASSERT_EQ(v4->consumed_seq, 12u);
  VersionCache bases(*orig.store, kAdapter);
  auto lookup = [&bases](uint64_t v) { return bases.Get(v); };

  auto beyond = PrepareRollback(*orig.store, o, kAdapter, 9, lookup);
  ASSERT_FALSE(beyond.ok());
  EXPECT_EQ(beyond.status().code(), Code::kNotFound);

  auto prepared = PrepareRollback(*orig.store, o, kAdapter, 1, lookup);
  ASSERT_TRUE(prepared.ok()) << prepared.status().ToString();
  Engine& engine = *prepared->engine;
  ASSERT_TRUE(CommitVersion(*orig.store, o, &engine, prepared->info, engine.spec(), engine.state(), false).ok());
  auto v5 = storage::ReadVersionInfo(*orig.store, kAdapter, 5);
  ASSERT_TRUE(v5.ok());
  EXPECT_EQ(v5->rollback_to, std::optional<uint64_t>(1));
  EXPECT_EQ(v5->parent_version, 4u);
  EXPECT_EQ(v5->content_hash, Hash(*orig.store, 1));
  EXPECT_EQ(v5->consumed_seq, 12u);
  EXPECT_TRUE(v5->applied.empty());
  EXPECT_GT(v5->update_norm, 0.0f) << "the rollback moved the adapter";
  ASSERT_TRUE(v5->privacy && v5->privacy->client && v4->privacy && v4->privacy->client);
  EXPECT_EQ(v5->privacy->client->steps, v4->privacy->client->steps);
  EXPECT_EQ(v5->privacy->client->epsilon, v4->privacy->client->epsilon);
  auto stored = orig.store->GetServerState(kAdapter);
  ASSERT_TRUE(stored.ok() && stored->has_value());
  auto state = DecodeServerState(codec::AsBytes(**stored), engine.spec());
  ASSERT_TRUE(state.ok()) << state.status().ToString();
  ASSERT_FALSE(state->optimizer.empty());
  for (size_t i = 0; i < state->optimizer.steps.size(); ++i) {
    EXPECT_EQ(state->optimizer.steps[i], 0u);
    for (float m : state->optimizer.m[i]) ASSERT_EQ(m, 0.0f);
  }
  ASSERT_EQ(state->rolled_back.size(), 1u);
  EXPECT_EQ(state->rolled_back[0].first, 2u);
  EXPECT_EQ(state->rolled_back[0].last, 4u);
  EXPECT_TRUE(state->noise_seed.has_value());

  // A restarted aggregator folds the rest: updates 12..19 (bases 3 and 4) are dropped, 20..23
  // (base 5, the rollback itself) folded.
  orig.Aggregate(o);
  auto cursor = orig.store->GetCursor(kAdapter);
  ASSERT_TRUE(cursor.ok() && cursor->has_value());
  size_t dropped = 0, folded = 0;
  for (uint64_t v = 6; v <= (*cursor)->version; ++v) {
    auto info = storage::ReadVersionInfo(*orig.store, kAdapter, v);
    ASSERT_TRUE(info.ok());
    for (const auto& a : info->applied) {
      EXPECT_EQ(a.base_version, 5u);
      folded++;
    }
    for (const auto& d : info->dropped) {
      EXPECT_TRUE(d.base_version >= 2 && d.base_version <= 4) << d.base_version;
      EXPECT_EQ(d.reason, "rolled-back-base");
      dropped++;
    }
  }
  EXPECT_EQ(dropped, 8u);
  EXPECT_EQ(folded, 3u) << "one version of K = 3; update 23 waits in the buffer";

  // The reproduction follows the rollback exactly.
  TempDir out_dir;
  auto out = Original::OpenStore(out_dir.path("adapters"));
  auto report = Replay(*orig.log, orig.store.get(), *out, FromRecorded({o}));
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->compared, (*cursor)->version + 1);
  EXPECT_EQ(report->identical, report->compared);
  EXPECT_FALSE(report->first_difference.has_value());
  auto replayed5 = storage::ReadVersionInfo(*out, kAdapter, 5);
  ASSERT_TRUE(replayed5.ok());
  EXPECT_EQ(replayed5->rollback_to, std::optional<uint64_t>(1));

  // A what-if (K = 2) rolls back at the same log position, to its own version that had
  // consumed no more of the log than the original's version 1.
  TempDir what_if_dir;
  auto what_if = Original::OpenStore(what_if_dir.path("adapters"));
  ReplayOptions ro;
  ro.settings = [](uint64_t, const std::string&) -> Result<EngineOptions> { return Settings(2, true); };
  ro.stop_at_original_final = false;
  auto wi = Replay(*orig.log, orig.store.get(), *what_if, ro);
  ASSERT_TRUE(wi.ok()) << wi.status().ToString();
  auto original_v1 = storage::ReadVersionInfo(*orig.store, kAdapter, 1);
  ASSERT_TRUE(original_v1.ok());
  size_t rollbacks = 0;
  for (uint64_t v = 1; v <= wi->last.version; ++v) {
    auto info = storage::ReadVersionInfo(*what_if, kAdapter, v);
    ASSERT_TRUE(info.ok());
    if (!info->rollback_to) continue;
    rollbacks++;
    const uint64_t target = *info->rollback_to;
    EXPECT_EQ(info->consumed_seq, 12u);
    EXPECT_EQ(info->content_hash, Hash(*what_if, target));
    auto t = storage::ReadVersionInfo(*what_if, kAdapter, target);
    ASSERT_TRUE(t.ok());
    EXPECT_LE(t->consumed_seq, original_v1->consumed_seq);
    auto next = storage::ReadVersionInfo(*what_if, kAdapter, target + 1);
    ASSERT_TRUE(next.ok());
    EXPECT_GT(next->consumed_seq, original_v1->consumed_seq);
  }
  EXPECT_EQ(rollbacks, 1u);
}

TEST(RollbackTest, AFinalVersionIsNotRolledBack) {
  const EngineOptions o = Settings(3, false);
  Original orig;
  orig.CommitVersionZero(o);
  orig.Append(0, 6);
  orig.Aggregate(o);
  auto prepared = PrepareRollback(*orig.store, o, kAdapter, 0, nullptr);
  ASSERT_TRUE(prepared.ok()) << prepared.status().ToString();
  ASSERT_TRUE(CommitVersion(*orig.store, o, prepared->engine.get(), prepared->info, prepared->engine->spec(),
                            prepared->engine->state(), /*final=*/true)
                  .ok());
  auto again = PrepareRollback(*orig.store, o, kAdapter, 1, nullptr);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), Code::kFailedPrecondition);
}

// `fedlora rollback` without a running aggregator: straight into the store, refused while a
// process holds it (with the way through the aggregator), and what cannot be rolled back to.
TEST(RollbackTest, AStoreNoAggregatorHoldsIsRolledBackInPlace) {
  const EngineOptions o = Settings(3, false);
  Original orig;
  orig.CommitVersionZero(o);
  orig.Append(0, 12);
  orig.Aggregate(o);
  const std::string v1 = Hash(*orig.store, 1);
  auto cursor = orig.store->GetCursor(kAdapter);
  ASSERT_TRUE(cursor.ok() && *cursor);
  const uint64_t latest = (*cursor)->version;
  ASSERT_GE(latest, 3u);
  const storage::StoreLayout layout{orig.dir.path()};

  auto held = RollbackStoredAdapter(layout, kAdapter, "1");  // the test holds the store open, as an aggregator would
  EXPECT_EQ(held.status().code(), Code::kFailedPrecondition) << held.status().ToString();
  EXPECT_NE(held.status().message().find("--aggregator HOST:PORT"), std::string::npos) << held.status().ToString();
  orig.store.reset();

  auto done = RollbackStoredAdapter(layout, kAdapter, "1");
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_EQ(done->version, latest + 1);
  EXPECT_EQ(done->to, 1u);
  EXPECT_EQ(done->content_hash, v1);
  EXPECT_EQ(RollbackStoredAdapter(layout, kAdapter, std::to_string(latest + 1)).status().code(),
            Code::kInvalidArgument);  // the latest version already
  EXPECT_EQ(RollbackStoredAdapter(layout, kAdapter, "99").status().code(), Code::kNotFound);
  EXPECT_EQ(RollbackStoredAdapter(layout, "no-such-adapter", "1").status().code(), Code::kNotFound);
  auto reopened = Original::OpenStore(orig.dir.path("adapters"));
  auto record = storage::ReadVersionInfo(*reopened, kAdapter, latest + 1);
  ASSERT_TRUE(record.ok()) << record.status().ToString();
  ASSERT_TRUE(record->rollback_to);
  EXPECT_EQ(*record->rollback_to, 1u);
}

TEST(RollbackTest, AnAggregatorThatCannotBeReachedIsUnavailable) {
  auto r = RollbackThroughAggregator("127.0.0.1:1", "3");
  EXPECT_EQ(r.status().code(), Code::kUnavailable) << r.status().ToString();
}

// `fedlora branch`: version 0 of a new adapter is a stored version, with its settings.
TEST(BranchTest, ANewAdapterStartsFromAStoredVersionWithItsSettings) {
  const EngineOptions o = Settings(3, false);
  Original orig;
  orig.CommitVersionZero(o);
  orig.Append(0, 9);
  orig.Aggregate(o);
  const std::string v2 = Hash(*orig.store, 2);
  const storage::StoreLayout layout{orig.dir.path()};
  BranchRequest r{layout, kAdapter, "2", layout, "side", false};
  auto held = BranchAdapter(r);  // the test holds the store open, as an aggregator would
  EXPECT_FALSE(held.ok());
  EXPECT_NE(held.status().message().find("a running aggregator holds it"), std::string::npos) << held.status().ToString();
  orig.store.reset();

  auto done = BranchAdapter(r);
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_EQ(done->version, 2u);
  EXPECT_EQ(done->content_hash, v2);
  EXPECT_EQ(BranchAdapter(r).status().code(), Code::kAlreadyExists);
  BranchRequest bad = r;
  bad.name = "not an id";
  EXPECT_EQ(BranchAdapter(bad).status().code(), Code::kInvalidArgument);
  BranchRequest missing = r;
  missing.name = "other";
  missing.version = "99";
  EXPECT_EQ(BranchAdapter(missing).status().code(), Code::kNotFound);
  auto store = Original::OpenStore(orig.dir.path("adapters"));
  auto zero = storage::ReadVersionInfo(*store, "side", 0);
  ASSERT_TRUE(zero.ok()) << zero.status().ToString();
  EXPECT_EQ(zero->content_hash, v2);
  EXPECT_NE(zero->origin.find("default@2"), std::string::npos) << zero->origin;
  auto settings = RecordedEngineOptions(*zero);
  ASSERT_TRUE(settings.ok()) << settings.status().ToString();
  EXPECT_EQ(settings->buffer_size, 3u);
}

}  // namespace
}  // namespace fedlora::aggregator
