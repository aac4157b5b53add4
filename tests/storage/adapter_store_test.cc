#include "storage/adapter_store.h"

#include <gtest/gtest.h>

#include "tests/testing/fixtures.h"

namespace fedlora::storage {
namespace {

std::span<const std::byte> B(const std::string& s) { return {reinterpret_cast<const std::byte*>(s.data()), s.size()}; }

std::unique_ptr<AdapterStore> OpenStore(const std::string& path, bool read_only = false) {
  AdapterStoreOptions o;
  o.path = path;
  o.read_only = read_only;
  auto s = AdapterStore::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(*s) : nullptr;
}

TEST(AdapterStoreTest, CommitWritesVersionLineageAndCursorTogether) {
  testing::TempDir dir;
  auto store = OpenStore(dir.path("adapters"));
  const std::string g0 = "global-0", r0 = "record-0", g1 = "global-1", r1 = "record-1";
  ASSERT_TRUE(store->Commit({"a", 0, 0, B(g0), B(r0)}).ok());
  ASSERT_TRUE(store->Commit({"a", 1, 17, B(g1), B(r1)}).ok());
  auto cursor = store->GetCursor("a");
  ASSERT_TRUE(cursor.ok() && cursor->has_value());
  EXPECT_EQ((*cursor)->version, 1u);
  EXPECT_EQ((*cursor)->consumed_seq, 17u);
  EXPECT_EQ(*store->GetGlobal("a", 1), g1);
  EXPECT_EQ(*store->GetRecord("a", 0), r0);
  EXPECT_EQ(store->GetRecords("a", 0, 10)->size(), 2u);
  EXPECT_EQ(store->GetRecords("a", 1, 1)->front(), r1);
}

// Found by ops/bench/pipeline: a rank-64 adapter at 7B shapes (256 MiB and its header) was
// stored, and then unreadable ("stored version 0 is unreadable"): reading checked it against the
// network's default message limit. What the store accepted always reads back.
TEST(AdapterStoreTest, AVersionLargerThanAnyMessageLimitReadsBack) {
  testing::TempDir dir;
  auto store = OpenStore(dir.path("adapters"));
  const uint32_t n = static_cast<uint32_t>(codec::kDefaultMaxMessageBytes / sizeof(float) / 2 + 1024);
  AdapterSpec spec;
  spec.model = "large";
  spec.rank = 1;
  spec.alpha = 1;
  spec.target_modules = {"m"};
  spec.tensors = {{"m.lora_A", {1, n}, TensorRole::kLoraA}, {"m.lora_B", {n, 1}, TensorRole::kLoraB}};
  AdapterState state;
  for (const auto& t : spec.tensors) state.tensors.push_back({t.name, t.shape, std::vector<float>(t.numel(), 0.5f)});
  codec::GlobalInfo info{"a", 0, "hash", 0, wire::Mode::FedBuff, false, {}};
  const codec::Bytes global = codec::BuildGlobal(info, spec, state);
  state = {};
  ASSERT_GT(global.size(), codec::kDefaultMaxMessageBytes);
  const std::string record = "record-0";
  ASSERT_TRUE(store->Commit({"a", 0, 0, {reinterpret_cast<const std::byte*>(global.data()), global.size()}, B(record)}).ok());
  auto read = ReadVersion(*store, "a", 0);
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  ASSERT_EQ(read->state.tensors.size(), 2u);
  EXPECT_EQ(read->state.tensors[1].values.size(), n);
  EXPECT_EQ(read->state.tensors[1].values.back(), 0.5f);
}

// The cursor says which log its position is in (issue 21). A commit that leaves the log id out
// keeps the cursor's; the hash of the consumed record is kept while the position stays and is
// forgotten (not carried to another record) when it moves without one.
TEST(AdapterStoreTest, TheCursorKeepsItsLogIdentityAndTheHashOfItsRecord) {
  testing::TempDir dir;
  const std::string g = "g";
  const std::string log(32, 'a'), hash(32, 'b'), later(32, 'c');
  {
    auto store = OpenStore(dir.path("adapters"));
    ASSERT_TRUE(store->Commit({"a", 0, 0, B(g), B(g)}).ok());
    EXPECT_TRUE((*store->GetCursor("a"))->log_id.empty());
    ASSERT_TRUE(store->Commit({"a", 1, 5, B(g), B(g), {}, log, hash}).ok());
    ASSERT_TRUE(store->Commit({"a", 2, 5, B(g), B(g)}).ok());  // a rollback: nothing consumed
    auto cursor = **store->GetCursor("a");
    EXPECT_EQ(cursor.consumed_seq, 5u);
    EXPECT_EQ(cursor.log_id, log);
    EXPECT_EQ(cursor.consumed_hash, hash);
    ASSERT_TRUE(store->Commit({"a", 3, 9, B(g), B(g)}).ok());
    cursor = **store->GetCursor("a");
    EXPECT_EQ(cursor.log_id, log);
    EXPECT_TRUE(cursor.consumed_hash.empty()) << "the hash of record 5 was kept for record 9";
    ASSERT_TRUE(store->Commit({"a", 4, 12, B(g), B(g), {}, {}, later}).ok());
  }
  auto cursor = **OpenStore(dir.path("adapters"), true)->GetCursor("a");
  EXPECT_EQ(cursor.version, 4u);
  EXPECT_EQ(cursor.consumed_seq, 12u);
  EXPECT_EQ(cursor.log_id, log);
  EXPECT_EQ(cursor.consumed_hash, later);
}

TEST(AdapterStoreTest, FirstVersionMustBeZero) {
  testing::TempDir dir;
  auto store = OpenStore(dir.path("adapters"));
  const std::string g = "g";
  EXPECT_EQ(store->Commit({"a", 1, 0, B(g), B(g)}).code(), Code::kFailedPrecondition);
  EXPECT_FALSE(store->GetCursor("a")->has_value());
}

TEST(AdapterStoreTest, VersionCannotBeSkippedOrReused) {
  testing::TempDir dir;
  auto store = OpenStore(dir.path("adapters"));
  const std::string g = "g";
  ASSERT_TRUE(store->Commit({"a", 0, 0, B(g), B(g)}).ok());
  ASSERT_TRUE(store->Commit({"a", 1, 3, B(g), B(g)}).ok());
  EXPECT_EQ(store->Commit({"a", 1, 5, B(g), B(g)}).code(), Code::kFailedPrecondition);  // reused
  EXPECT_EQ(store->Commit({"a", 3, 5, B(g), B(g)}).code(), Code::kFailedPrecondition);  // skipped
  EXPECT_EQ((*store->GetCursor("a"))->version, 1u);
  EXPECT_EQ((*store->GetCursor("a"))->consumed_seq, 3u);
}

TEST(AdapterStoreTest, CursorCannotMoveBackwards) {
  testing::TempDir dir;
  auto store = OpenStore(dir.path("adapters"));
  const std::string g = "g";
  ASSERT_TRUE(store->Commit({"a", 0, 10, B(g), B(g)}).ok());
  EXPECT_EQ(store->Commit({"a", 1, 9, B(g), B(g)}).code(), Code::kFailedPrecondition);
  EXPECT_FALSE(store->GetGlobal("a", 1).ok());  // nothing of the refused commit was written
}

TEST(AdapterStoreTest, CommittedVersionsSurviveReopenAndAreReadableReadOnly) {
  testing::TempDir dir;
  const std::string g = std::string(10000, 'v');  // large enough for a blob file
  {
    auto store = OpenStore(dir.path("adapters"));
    ASSERT_TRUE(store->Commit({"a", 0, 0, B(g), B("r")}).ok());
    ASSERT_TRUE(store->Commit({"b", 0, 0, B(g), B("r")}).ok());
  }
  auto ro = OpenStore(dir.path("adapters"), true);
  EXPECT_EQ(*ro->GetGlobal("a", 0), g);
  EXPECT_EQ(*ro->Adapters(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(ro->Commit({"a", 1, 0, B(g), B("r")}).code(), Code::kFailedPrecondition);
  EXPECT_EQ(ro->GetGlobal("a", 7).status().code(), Code::kNotFound);
}

TEST(AdapterStoreTest, ServerStateIsCommittedWithItsVersionAndOnlyWithIt) {
  testing::TempDir dir;
  auto store = OpenStore(dir.path("adapters"));
  const std::string g = "g", s1 = "moments-1", s2 = "moments-2";
  ASSERT_TRUE(store->Commit({"a", 0, 0, B(g), B(g)}).ok());
  EXPECT_FALSE(store->GetServerState("a")->has_value());
  ASSERT_TRUE(store->Commit({"a", 1, 4, B(g), B(g), B(s1)}).ok());
  EXPECT_EQ(**store->GetServerState("a"), s1);
  // A refused commit writes none of its parts, the state included.
  EXPECT_EQ(store->Commit({"a", 3, 9, B(g), B(g), B(s2)}).code(), Code::kFailedPrecondition);
  EXPECT_EQ(**store->GetServerState("a"), s1);
  ASSERT_TRUE(store->Commit({"a", 2, 9, B(g), B(g), B(s2)}).ok());
  EXPECT_EQ(**store->GetServerState("a"), s2);
  EXPECT_FALSE(store->GetServerState("b")->has_value());
  store.reset();
  EXPECT_EQ(**OpenStore(dir.path("adapters"), true)->GetServerState("a"), s2);
}

}  // namespace
}  // namespace fedlora::storage
