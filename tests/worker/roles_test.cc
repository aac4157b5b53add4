// The roles of one process each (worker/federation/roles.h), wired to the mlp image task:
// the aggregator commits version 0 from the task's base, a worker gets its shard of the
// partition, and what cannot start says why.
#include "worker/federation/roles.h"

#include <gtest/gtest.h>

#include "storage/reader.h"
#include "tests/testing/fixtures.h"

namespace fedlora::federation {
namespace {

TaskOptions MlpTask() {
  TaskOptions task;
  task.arch = "mlp";
  task.num_clients = 3;
  return task;
}

TEST(RolesTest, TheAggregatorStartsFromTheTasksBaseAndAWorkerFromItsShard) {
  testing::TempDir dir;
  storage::StoreLayout store{dir.path("store")};
  auto built = EnsureBase(MlpTask(), BasePath(store.dir, "mlp"), 1, {});
  ASSERT_TRUE(built.ok()) << built.status().ToString();

  AggregatorRole agg;
  agg.store = store;
  agg.task = MlpTask();
  agg.eval_samples = 100;
  auto aggregator = MakeAggregatorRole(std::move(agg));
  ASSERT_TRUE(aggregator.ok()) << aggregator.status().ToString();
  EXPECT_EQ((*aggregator)->Version(), 0u);
  aggregator->reset();  // closes the store
  auto stored = storage::StoredAdapter::Open(store, "default");
  ASSERT_TRUE(stored.ok()) << stored.status().ToString();
  auto zero = stored->Global(0);
  ASSERT_TRUE(zero.ok()) << zero.status().ToString();
  EXPECT_EQ(zero->spec.model, "mlp");

  auto data = LoadTaskData(MlpTask());
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  for (int index = 0; index < 3; ++index) {
    WorkerRole role;
    role.store = store;
    role.task = MlpTask();
    role.index = index;
    auto made = MakeWorkerRole(std::move(role));
    ASSERT_TRUE(made.ok()) << made.status().ToString();
    EXPECT_TRUE(made->worker);
    EXPECT_EQ(made->shard_size, data->shards[static_cast<size_t>(index)].size()) << index;
  }
  WorkerRole outside;
  outside.store = store;
  outside.task = MlpTask();
  outside.index = 3;
  auto refused = MakeWorkerRole(std::move(outside));
  EXPECT_EQ(refused.status().code(), Code::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("--index 3 is outside 0..2"), std::string::npos)
      << refused.status().ToString();
}

TEST(RolesTest, WithoutTheBaseModelNeitherRoleStartsAndBothSayHowToMakeIt) {
  testing::TempDir dir;
  AggregatorRole agg;
  agg.store = storage::StoreLayout{dir.path("store")};
  agg.task = MlpTask();
  auto aggregator = MakeAggregatorRole(std::move(agg));
  EXPECT_EQ(aggregator.status().code(), Code::kFailedPrecondition);
  EXPECT_NE(aggregator.status().message().find("fedlora pretrain"), std::string::npos) << aggregator.status().ToString();
  EXPECT_FALSE(std::filesystem::exists(dir.path("store/adapters")));
  WorkerRole worker;
  worker.store = storage::StoreLayout{dir.path("store")};
  worker.task = MlpTask();
  auto made = MakeWorkerRole(std::move(worker));
  EXPECT_EQ(made.status().code(), Code::kFailedPrecondition);
  EXPECT_NE(made.status().message().find("fedlora pretrain"), std::string::npos) << made.status().ToString();
}

}  // namespace
}  // namespace fedlora::federation
