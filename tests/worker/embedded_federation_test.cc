// The whole federation in one process (worker/federation/embedded.h), as `fedlora run` drives
// it, without the command line: option checks, an interrupted run resumed to its final version
// with the summary's figures, and a missing checkpoint refused before anything is written.
#include "worker/federation/embedded.h"

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>

#include "tests/testing/fixtures.h"
#include "tests/worker/small_run.h"

namespace fedlora::federation {
namespace {

TEST(EmbeddedFederationTest, RefusesEachBadOptionByName) {
  auto refused = [](const EmbeddedOptions& o, std::string_view words) {
    const Status s = CheckOptions(o);
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << words;
    EXPECT_NE(s.message().find(words), std::string::npos) << s.message();
  };
  const EmbeddedOptions good = SmallImageRun("unused");
  EXPECT_TRUE(CheckOptions(good).ok()) << CheckOptions(good).ToString();
  EmbeddedOptions o = good;
  o.speeds = {1, 0.5};
  refused(o, "speed factor 0.5 is below 1");
  o = good;
  o.speeds.clear();
  refused(o, "speeds is empty");
  o = good;
  o.ranks = {4, 300};
  refused(o, "rank 300 is not in 1..256");
  o = good;
  o.upload_densities = {0.1f, 0.0f};
  refused(o, "upload density 0 is not in (0, 1]");
  o = good;
  o.rank_budgets = {0};
  refused(o, "rank budget is 0");
  o = good;
  o.task.num_clients = 0;
  refused(o, "at least one worker");
  o = good;
  o.duration_s = 0;
  refused(o, "duration");
  o = good;
  o.engine.mode = wire::Mode::Sync;
  o.engine.round_size = 4;
  refused(o, "round size 4 is more than the 3 workers");
  o = good;
  o.engine.method = methods::MethodChoice::Named("full").value();
  o.training.dp.noise_multiplier = 1.0;
  refused(o, "record-level DP-SGD");
}

TEST(EmbeddedFederationTest, AMissingCheckpointIsRefusedBeforeAnythingIsWritten) {
  testing::TempDir dir;
  EmbeddedOptions o = SmallImageRun(dir.path("store"));
  o.task.task = "lm-finetune";
  o.task.base = dir.path("no-such-checkpoint");
  auto fed = EmbeddedFederation::Create(o);
  ASSERT_FALSE(fed.ok());
  EXPECT_EQ(fed.status().code(), Code::kFailedPrecondition) << fed.status().ToString();
  EXPECT_NE(fed.status().message().find("no-such-checkpoint"), std::string::npos) << fed.status().ToString();
  EXPECT_FALSE(std::filesystem::exists(dir.path("store/log")));
  EXPECT_FALSE(std::filesystem::exists(dir.path("store/adapters")));
}

TEST(EmbeddedFederationTest, AnInterruptedRunResumesAndRunsToItsFinalVersion) {
  testing::TempDir dir;
  EmbeddedOptions o = SmallImageRun(dir.path("store"));
  // A quick base (one epoch) so that Create finds it instead of pretraining the default.
  auto built = EnsureBase(o.task, BasePath(o.store.dir, "mlp"), 1, {});
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  ASSERT_TRUE(*built);
  std::vector<std::string> notes;
  SetupCallbacks cb;
  cb.note = [&notes](const std::string& line) { notes.push_back(line); };
  auto fed = EmbeddedFederation::Create(o, cb);
  ASSERT_TRUE(fed.ok()) << fed.status().ToString();
  {
    const federation::Setup& setup = (*fed)->setup();  // qualified: gtest has a Setup() too
    EXPECT_EQ(setup.unit, "images");
    EXPECT_EQ(setup.test_examples, 10000u);  // Fashion-MNIST's test split
    EXPECT_GT(setup.train_examples, 0u);
    EXPECT_EQ(setup.start_version, 0u);
    EXPECT_GE(setup.base_accuracy, 0.0);
    EXPECT_LE(setup.base_accuracy, 1.0);
    EXPECT_TRUE(notes.empty()) << notes.front();  // the base existed: nothing to pretrain
  }
  // Interrupted at the first tick that sees version 2.
  std::atomic<bool> stop = false;
  auto first = (*fed)->Run([&stop] { return stop.load(); },
                           [&stop](const LiveFigures& live) { stop = stop || live.version >= 2; });
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->stop_reason, "interrupted");
  EXPECT_GE(first->last.version, 2u);
  EXPECT_EQ(first->versions_committed, first->last.version);
  EXPECT_LT(first->federated_seconds, 200.0);
  // A run happens once.
  EXPECT_EQ((*fed)->Run([] { return false; }).status().code(), Code::kFailedPrecondition);
  fed->reset();

  // The same store again: it resumes where the first stopped and runs two more versions.
  const uint64_t resumed = first->last.version;
  o.max_versions = resumed + 2;
  auto again = EmbeddedFederation::Create(o);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ((*again)->setup().start_version, resumed);
  auto summary = (*again)->Run([] { return false; });
  ASSERT_TRUE(summary.ok()) << summary.status().ToString();
  EXPECT_EQ(summary->stop_reason, "final version committed");
  EXPECT_EQ(summary->last.version, resumed + 2);
  EXPECT_EQ(summary->versions_committed, 2u);
  EXPECT_GE(summary->final_accuracy, 0.0);
  EXPECT_LE(summary->final_accuracy, 1.0);
  ASSERT_EQ(summary->client_accuracies.size(), 3u);
  for (double a : summary->client_accuracies) {
    EXPECT_GE(a, 0.0);
    EXPECT_LE(a, 1.0);
  }
  EXPECT_TRUE(summary->client_perplexities.empty());  // an accuracy task
  EXPECT_FALSE(summary->personalised);
  // Each version folds at least one update (some may be the first run's, logged but not yet
  // folded when it stopped); updates sent after the final version are refused, not logged.
  EXPECT_GE(summary->folded, 2u);
  EXPECT_GT(summary->updates_logged, 0u);
  EXPECT_GT(summary->bytes_uploaded, 0u);
}

}  // namespace
}  // namespace fedlora::federation
