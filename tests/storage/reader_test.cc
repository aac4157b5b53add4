// Read access to a stored run (storage/reader.h): versions and globals of an adapter, and the
// tags that name versions, with the errors a command shows its user.
#include "storage/reader.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <functional>

#include "tests/testing/fixtures.h"

namespace fedlora::storage {
namespace {

AdapterSpec Spec() {
  AdapterSpec spec;
  spec.model = "mlp";
  spec.rank = 1;
  spec.alpha = 1;
  spec.tensors = {{"m.lora_A", {1, 2}, TensorRole::kLoraA}, {"m.lora_B", {2, 1}, TensorRole::kLoraB}};
  return spec;
}

// Commits versions 0..last of adapter "a", version v's tensors all equal to v and its log
// position 3v (or as `edit` changes the record).
void Commit(const StoreLayout& layout, uint64_t last,
            const std::function<void(codec::VersionInfo&)>& edit = {}) {
  AdapterStoreOptions o;
  o.path = layout.adapters();
  auto store = AdapterStore::Open(o);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  for (uint64_t v = 0; v <= last; ++v) {
    AdapterState state;
    for (const auto& t : Spec().tensors) state.tensors.push_back({t.name, t.shape, std::vector<float>(2, float(v))});
    codec::GlobalInfo g;
    g.adapter_id = "a";
    g.version = v;
    const codec::Bytes global = codec::BuildGlobal(g, Spec(), state);
    codec::VersionInfo info;
    info.adapter_id = "a";
    info.version = v;
    info.consumed_seq = 3 * v;
    if (edit) edit(info);
    const codec::Bytes record = codec::BuildVersionRecord(info);
    ASSERT_TRUE((*store)->Commit({"a", v, info.consumed_seq, codec::AsBytes(global), codec::AsBytes(record)}).ok());
  }
}

TEST(StoreReaderTest, ReadsVersionsAndGlobalsAndSaysWhatExists) {
  testing::TempDir dir;
  StoreLayout layout{dir.path("store")};
  std::filesystem::create_directories(layout.dir);
  Commit(layout, 2);
  auto stored = StoredAdapter::Open(layout, "a");
  ASSERT_TRUE(stored.ok()) << stored.status().ToString();
  EXPECT_EQ(stored->cursor().version, 2u);
  auto record = stored->Record(1);
  ASSERT_TRUE(record.ok());
  EXPECT_EQ(record->consumed_seq, 3u);
  auto global = stored->Global(2);
  ASSERT_TRUE(global.ok());
  EXPECT_EQ(global->state.tensors[1].values, (std::vector<float>{2, 2}));
  auto past = stored->Record(3);
  EXPECT_EQ(past.status().code(), Code::kNotFound);
  EXPECT_NE(past.status().message().find("versions 0..2"), std::string::npos) << past.status().message();

  auto other = StoredAdapter::Open(layout, "b");
  EXPECT_EQ(other.status().code(), Code::kNotFound);
  EXPECT_NE(other.status().message().find("it has: a"), std::string::npos) << other.status().message();
  auto none = StoredAdapter::Open(StoreLayout{dir.path("nothing")}, "a");
  EXPECT_EQ(none.status().code(), Code::kNotFound);
  EXPECT_NE(none.status().message().find("no adapter store"), std::string::npos);
}

TEST(StoreReaderTest, TagsNameVersionsNeverMoveAndResolve) {
  testing::TempDir dir;
  StoreLayout layout{dir.path("store")};
  std::filesystem::create_directories(layout.dir);
  EXPECT_TRUE(ReadTags(layout, "a")->empty());
  ASSERT_TRUE(AddTag(layout, "a", "best", 2).ok());
  ASSERT_TRUE(AddTag(layout, "b", "best", 5).ok()) << "tags are per adapter";
  EXPECT_EQ(AddTag(layout, "a", "best", 1).code(), Code::kAlreadyExists) << "a tag moved";
  EXPECT_EQ(AddTag(layout, "a", "12", 1).code(), Code::kInvalidArgument) << "a name that reads as a number";
  EXPECT_EQ(AddTag(layout, "a", "no spaces", 1).code(), Code::kInvalidArgument);
  EXPECT_EQ(*ResolveVersion(layout, "a", "best"), 2u);
  EXPECT_EQ(*ResolveVersion(layout, "b", "best"), 5u);
  EXPECT_EQ(*ResolveVersion(layout, "a", "7"), 7u);
  auto unknown = ResolveVersion(layout, "a", "worst");
  EXPECT_EQ(unknown.status().code(), Code::kNotFound);
  EXPECT_NE(unknown.status().message().find("best"), std::string::npos) << "the known tags are named";
  EXPECT_EQ((*ReadTags(layout, "a")).at("best"), 2u);
}

// `fedlora log` reads a log against the store beside it: another log, or one that ends before
// what the store consumed, is said to be so.
TEST(StoreReaderTest, ALogIsCheckedAgainstWhatTheStoreBesideItConsumed) {
  testing::TempDir dir;
  StoreLayout layout{dir.path("store")};
  std::filesystem::create_directories(layout.dir);
  EXPECT_FALSE(ConsumedCursor(layout, "a")) << "no store: nothing to check against";
  Commit(layout, 2);  // consumed up to seq 6
  const auto consumed = ConsumedCursor(layout, "a");
  ASSERT_TRUE(consumed);
  EXPECT_EQ(consumed->consumed_seq, 6u);
  EXPECT_FALSE(ConsumedCursor(layout, "b")) << "no such adapter";

  auto log = UpdateLog::Open({layout.log(), false});
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  const std::string bytes = "a record";
  for (int i = 0; i < 4; ++i) {
    const std::string id = "u" + std::to_string(i);
    LogAppend a{"a", "c", id, {reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()}, std::nullopt};
    ASSERT_TRUE((*log)->AppendBatch({&a, 1})[0].ok());
  }
  Cursor same = *consumed;
  same.log_id = (*log)->Id();
  EXPECT_TRUE(CheckLogIdentity(**log, same, layout.adapters()).ok());
  Cursor other = same;
  other.log_id = "0123456789abcdef0123456789abcdef";
  const Status replaced = CheckLogIdentity(**log, other, layout.adapters());
  EXPECT_EQ(replaced.code(), Code::kFailedPrecondition);
  EXPECT_NE(replaced.message().find("lost or replaced"), std::string::npos) << replaced.ToString();
  const Status short_log = CheckLogHead(**log, "a", same, layout.adapters());  // 4 records, 6 consumed
  EXPECT_EQ(short_log.code(), Code::kDataLoss);
  EXPECT_NE(short_log.message().find("2 acknowledged record(s) are missing"), std::string::npos) << short_log.ToString();
  same.consumed_seq = 4;
  EXPECT_TRUE(CheckLogHead(**log, "a", same, layout.adapters()).ok());
}

// `fedlora lineage` and `diff`: where an update went, and what versions folded in between.
TEST(StoreReaderTest, FindsWhereAnUpdateWentAndCountsTheLineageBetweenVersions) {
  testing::TempDir dir;
  StoreLayout layout{dir.path("store")};
  Commit(layout, 2, [](codec::VersionInfo& info) {
    info.consumed_seq = info.version;
    if (info.version == 1) {
      codec::LineageItem item;
      item.seq = 1;
      item.client_id = "c";
      item.update_id = "u1";
      item.weight = 0.5f;
      info.applied.push_back(item);
    }
    if (info.version == 2) info.dropped.push_back({2, "c", "u2", 0, 7, "stale"});
  });
  {
    auto log = UpdateLog::Open({layout.log(), false});
    ASSERT_TRUE(log.ok()) << log.status().ToString();
    for (int i = 1; i <= 3; ++i) {
      const codec::Bytes update = testing::MakeUpdate("u" + std::to_string(i), "c", 0, testing::FilledState(testing::SmallSpec(), 0.1f), 8);
      const std::string id = "u" + std::to_string(i);
      LogAppend a{"a", "c", id, codec::AsBytes(update), std::nullopt};
      ASSERT_TRUE((*log)->AppendBatch({&a, 1})[0].ok());
    }
  }
  auto stored = StoredAdapter::Open(layout, "a");
  ASSERT_TRUE(stored.ok()) << stored.status().ToString();

  auto u1 = FindUpdate(layout, *stored, "u1", "");
  ASSERT_TRUE(u1.ok()) << u1.status().ToString();
  ASSERT_EQ(u1->outcomes.size(), 1u);
  EXPECT_TRUE(u1->outcomes[0].folded);
  EXPECT_EQ(u1->outcomes[0].version, 1u);
  EXPECT_FLOAT_EQ(u1->outcomes[0].item.weight, 0.5f);
  auto u2 = FindUpdate(layout, *stored, "u2", "c");
  ASSERT_TRUE(u2.ok());
  ASSERT_EQ(u2->outcomes.size(), 1u);
  EXPECT_FALSE(u2->outcomes[0].folded);
  EXPECT_EQ(u2->outcomes[0].reason, "stale");
  EXPECT_EQ(u2->outcomes[0].item.staleness, 7u);
  auto other_client = FindUpdate(layout, *stored, "u2", "d");
  ASSERT_TRUE(other_client.ok());
  EXPECT_TRUE(other_client->outcomes.empty());
  EXPECT_FALSE(other_client->waiting_at);
  auto u3 = FindUpdate(layout, *stored, "u3", "");  // logged at seq 3, past the consumed seq 2
  ASSERT_TRUE(u3.ok());
  EXPECT_TRUE(u3->outcomes.empty());
  ASSERT_TRUE(u3->waiting_at);
  EXPECT_EQ(*u3->waiting_at, 3u);

  auto counts = CountLineage(*stored, 0, 2);
  ASSERT_TRUE(counts.ok()) << counts.status().ToString();
  EXPECT_EQ(counts->folded, 1u);
  EXPECT_EQ(counts->dropped, 1u);
  auto backwards = CountLineage(*stored, 2, 1);
  ASSERT_TRUE(backwards.ok());
  EXPECT_EQ(backwards->folded, 0u);
  EXPECT_EQ(backwards->dropped, 1u);
  auto none = CountLineage(*stored, 1, 1);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->folded + none->dropped, 0u);
}

}  // namespace
}  // namespace fedlora::storage
