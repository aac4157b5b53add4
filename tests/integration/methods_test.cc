// Every federation method end to end, in the asynchronous pipeline (FedBuff) and in the
// synchronous barrier baseline: a real `fedlora run` (broker, aggregator and workers on
// loopback, the mlp model on Fashion-MNIST) commits versions under the method, every update
// is folded (none dropped as invalid for the method), and the store records the method.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/testing/fixtures.h"
#include "tests/testing/process.h"

namespace fedlora {
namespace {

using nlohmann::json;
using testing::Quote;
using testing::RunCapture;

constexpr const char* kBinary = FEDLORA_BINARY;

// One pretrained mlp base for every run of the suite.
class MethodsEndToEnd : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    int rc = -1;
    const std::string out =
        RunCapture(std::string(kBinary) + " pretrain --arch mlp --epochs 2 --store " + Quote(dir_->path("shared")) + " 2>&1", &rc);
    ASSERT_EQ(rc, 0) << out;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static testing::TempDir* dir_;
};
testing::TempDir* MethodsEndToEnd::dir_ = nullptr;

// Flags that make each method exercise its distinctive path within two versions.
std::string MethodFlags(const std::string& method) {
  if (method == "lora-a2") return " --phase-length 1 --rank-budget 1";  // both phases, rank slices
  if (method == "sa-fedlora") return " --initiating-versions 1 --heating-until 0 --cooling-until 1 --min-budget 2";
  if (method == "hetlora" || method == "flora") return " --ranks 2,4,8";  // heterogeneous client ranks
  if (method == "flasc") return " --upload-density 0.1 --download-density 0.5";
  return "";
}

TEST_P(MethodsEndToEnd, CommitsVersionsFoldingEveryUpdate) {
  const auto& [method, mode] = GetParam();
  const std::string store = dir_->path(method + "-" + mode);
  std::filesystem::create_directories(store + "/base");
  std::filesystem::copy_file(dir_->path("shared/base/mlp.pt"), store + "/base/mlp.pt");
  int rc = -1;
  const std::string out = RunCapture(
      std::string(kBinary) + " run --arch mlp --workers 3 --speeds 1 --local-steps 4 --max-versions 3 --duration 240 " +
          "--eval-every 1 --eval-samples 300 --buffer-size 3 --mode " + mode + " --method " + method +
          MethodFlags(method) + " --store " + Quote(store) + " --summary " + Quote(store + "/summary.json") + " 2>&1",
      &rc);
  ASSERT_EQ(rc, 0) << out;
  std::ifstream in(store + "/summary.json");
  const json summary = json::parse(in, nullptr, false);
  ASSERT_FALSE(summary.is_discarded()) << out;
  EXPECT_EQ(summary["stop_reason"], "final version committed") << out;
  EXPECT_EQ(summary["final_version"], 3u);
  EXPECT_EQ(summary["method"], method);
  EXPECT_GE(summary["updates_folded"].get<uint64_t>(), 9u);  // 3 versions x 3 updates
  EXPECT_GT(summary["final_accuracy"].get<double>(), 0.3);
  // Each client's accuracy on its own label mix; fedsa's uses the client's personal B.
  EXPECT_EQ(summary["client_models"], method == "fedsa" ? "personal" : "global");
  ASSERT_EQ(summary["client_accuracies"].size(), 3u);
  for (const auto& a : summary["client_accuracies"]) {
    EXPECT_GT(a.get<double>(), 0.0);
    EXPECT_LE(a.get<double>(), 1.0);
  }

  const std::string text = RunCapture(std::string(kBinary) + " history --json --store " + Quote(store) + " 2>/dev/null", &rc);
  ASSERT_EQ(rc, 0);
  const json history = json::parse(text, nullptr, false);
  ASSERT_TRUE(history.is_array() && history.size() == 4u) << text;
  for (const auto& v : history) {
    EXPECT_EQ(v["method"], method);
    EXPECT_EQ(v["mode"], mode);
    for (const auto& d : v["dropped_updates"]) {
      EXPECT_EQ(d["reason"].get<std::string>().find("invalid"), std::string::npos) << d.dump();
    }
    if (v["version"].get<uint64_t>() > 0) {
      EXPECT_EQ(v["updates"].get<uint64_t>(), 3u) << v.dump();
      EXPECT_GT(v["update_norm"].get<double>(), 0.0) << v.dump();
    }
  }
}

// In sync mode a round is every worker, unless --round-size says otherwise (even when it says
// 6, the aggregator's default); a round larger than the workers could never close.
TEST_F(MethodsEndToEnd, SyncRoundIsEveryWorkerUnlessGivenAndNeverMoreThanTheWorkers) {
  const std::string store = dir_->path("round-size");
  std::filesystem::create_directories(store + "/base");
  std::filesystem::copy_file(dir_->path("shared/base/mlp.pt"), store + "/base/mlp.pt");
  const std::string run = std::string(kBinary) + " run --arch mlp --speeds 1 --local-steps 4 --eval-every 0 --mode sync " +
                          "--duration 240 --store " + Quote(store);
  int rc = -1;
  std::string out = RunCapture(run + " --workers 3 --round-size 4 2>&1", &rc);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_NE(out.find("round size 4 is more than the 3 workers"), std::string::npos) << out;

  out = RunCapture(run + " --workers 7 --round-size 6 --max-versions 2 2>&1", &rc);
  ASSERT_EQ(rc, 0) << out;
  const std::string text = RunCapture(std::string(kBinary) + " history --json --store " + Quote(store) + " 2>/dev/null", &rc);
  ASSERT_EQ(rc, 0);
  const json history = json::parse(text, nullptr, false);
  ASSERT_TRUE(history.is_array() && history.size() == 3u) << text;
  for (const auto& v : history) {
    if (v["version"].get<uint64_t>() > 0) {
      EXPECT_EQ(v["updates"].get<uint64_t>(), 6u) << v.dump();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllMethods, MethodsEndToEnd,
    ::testing::Combine(::testing::Values("fedavg", "ffa", "flasc", "lora-a2", "sa-fedlora", "hetlora", "flora", "fedsa",
                                         "as-lora", "full"),
                       ::testing::Values("fedbuff", "sync")),
    [](const auto& info) {
      std::string name = std::get<0>(info.param) + "_" + std::get<1>(info.param);
      for (char& c : name) {
        if (c == '-') c = '_';
      }
      return name;
    });

// A server optimizer with state (FLASC's AdamW): a run stopped by its time budget resumes
// with the moments committed with its latest version, and a resume that would silently drop
// them (sgd on an adamw store) is refused with a message naming the store's optimizer.
TEST(ServerOptimizerEndToEnd, AdamWMomentsResumeWithTheStoreAndAreNotDroppedSilently) {
  testing::TempDir dir;
  const std::string store = dir.path("store");
  int rc = -1;
  std::string out = RunCapture(std::string(kBinary) + " pretrain --arch mlp --epochs 1 --store " + Quote(store) + " 2>&1", &rc);
  ASSERT_EQ(rc, 0) << out;
  const std::string run = std::string(kBinary) +
                          " run --arch mlp --workers 2 --speeds 1 --local-steps 4 --eval-every 1 "
                          "--eval-samples 300 --buffer-size 2 --method flasc --store " + Quote(store);
  const auto versions = [&] {
    const std::string text = RunCapture(std::string(kBinary) + " history --json --store " + Quote(store) + " 2>/dev/null", &rc);
    return json::parse(text, nullptr, false);
  };
  out = RunCapture(run + " --server-optimizer adamw --duration 6 2>&1", &rc);
  ASSERT_EQ(rc, 0) << out;
  const uint64_t stopped_at = versions().back()["version"];
  ASSERT_GE(stopped_at, 1u) << out;
  out = RunCapture(run + " --server-optimizer adamw --duration 240 --max-versions " + std::to_string(stopped_at + 2) + " 2>&1", &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("resuming the stored run at version " + std::to_string(stopped_at)), std::string::npos) << out;
  out = RunCapture(run + " --server-optimizer sgd --duration 240 --max-versions " + std::to_string(stopped_at + 4) + " 2>&1", &rc);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("server optimizer 'adamw'"), std::string::npos) << out;

  const json history = versions();
  ASSERT_TRUE(history.is_array() && history.size() == stopped_at + 3) << history.dump();
  for (const auto& v : history) EXPECT_EQ(v["server_optimizer"], "adamw") << v.dump();
}

}  // namespace
}  // namespace fedlora
