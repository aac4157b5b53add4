// Differential privacy from the outside: `fedlora privacy` (the accountant), a run that spends
// a client-level budget and stops, the ledger in `fedlora history`, record-level DP-SGD with
// as-lora and `fedlora inspect --factors`.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/testing/fixtures.h"
#include "tests/testing/process.h"

namespace fedlora {
namespace {

using nlohmann::json;
using testing::Quote;
using testing::RunCapture;
using testing::TempDir;

constexpr const char* kBinary = FEDLORA_BINARY;

TEST(PrivacyCli, EpsilonOfANoiseMultiplierAndNoiseForATargetEpsilon) {
  int rc = -1;
  // Opacus's published case (accountants_test.py): q 0.04, sigma 1.5, 2250 steps -> 7.32911117143.
  std::string out = RunCapture(std::string(kBinary) +
                                   " privacy -q 0.04 --noise-multiplier 1.5 --steps 2250 --delta 1e-5 --json 2>&1",
                               &rc);
  ASSERT_EQ(rc, 0) << out;
  json j = json::parse(out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << out;
  EXPECT_NEAR(j["epsilon"].get<double>(), 7.32911117143, 1e-6);

  out = RunCapture(std::string(kBinary) + " privacy -q 0.04 --epsilon 7.32911117143 --steps 2250 --json 2>&1", &rc);
  ASSERT_EQ(rc, 0) << out;
  j = json::parse(out, nullptr, false);
  EXPECT_NEAR(j["noise_multiplier"].get<double>(), 1.5, 1e-4);
  EXPECT_LE(j["epsilon"].get<double>(), 7.32911117143);

  out = RunCapture(std::string(kBinary) + " privacy -q 0.04 --steps 10 2>&1", &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("give --noise-multiplier or --epsilon"), std::string::npos) << out;
  out = RunCapture(std::string(kBinary) + " privacy -q 1 --steps 1000000000 --epsilon 0.001 --delta 1e-10 2>&1", &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("out of reach"), std::string::npos) << out;
}

json History(const std::string& store) {
  int rc = -1;
  const std::string out = RunCapture(std::string(kBinary) + " history --json --store " + Quote(store) + " 2>&1", &rc);
  EXPECT_EQ(rc, 0) << out;
  json j = json::parse(out, nullptr, false);
  EXPECT_TRUE(j.is_array()) << out;
  return j;
}

TEST(PrivacyRun, AClientLevelBudgetStopsTrainingWithAMessageAndTheLedgerIsInHistory) {
  TempDir dir;
  const std::string store = dir.path() + "/store";
  const std::string run = std::string(kBinary) + " run --arch mlp --local-steps 5 --store " + Quote(store) +
                          " --client-dp-noise 2 --client-dp-clip 0.5 --duration 120";
  int rc = -1;
  std::string out = RunCapture(run + " --client-dp-budget 6 --summary " + Quote(dir.path() + "/s.json") +
                                   " 2>&1",
                               &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("privacy budget spent"), std::string::npos) << out;
  EXPECT_NE(out.find("final version committed"), std::string::npos) << out;
  const json versions = History(store);
  ASSERT_GE(versions.size(), 3u);
  double previous = 0;
  for (size_t v = 1; v < versions.size(); ++v) {
    const json& client = versions[v]["privacy"]["client"];
    EXPECT_EQ(client["steps"].get<uint64_t>(), v);  // one noised step per version
    EXPECT_GT(client["epsilon"].get<double>(), previous);
    EXPECT_LE(client["epsilon"].get<double>(), 6.0);
    previous = client["epsilon"].get<double>();
  }
  // The last affordable step was taken: one more would exceed the budget.
  int prc = -1;
  const std::string next = RunCapture(std::string(kBinary) + " privacy -q 1 --noise-multiplier 2 --json --steps " +
                                          std::to_string(versions.size()) + " 2>&1",
                                      &prc);
  ASSERT_EQ(prc, 0) << next;
  EXPECT_GT(json::parse(next)["epsilon"].get<double>(), 6.0);
  out = RunCapture(std::string(kBinary) + " history --store " + Quote(store) + " 2>&1", &rc);
  EXPECT_NE(out.find("eps client"), std::string::npos) << out;

  // Running again: the adapter is final; nothing more is trained.
  out = RunCapture(run + " --client-dp-budget 6 2>&1", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(History(store).size(), versions.size());
}

TEST(PrivacyRun, AStoreWhoseBudgetCannotAffordAStepRefusesToStart) {
  TempDir dir;
  const std::string store = dir.path() + "/store";
  const std::string run = std::string(kBinary) + " run --arch mlp --local-steps 5 --store " + Quote(store) +
                          " --client-dp-noise 2";
  int rc = -1;
  // Stopped by time, not final: a later run may resume it.
  std::string out = RunCapture(run + " --duration 8 2>&1", &rc);
  ASSERT_EQ(rc, 0) << out;
  ASSERT_GE(History(store).size(), 2u);
  // Resumed with a budget below what is already spent.
  out = RunCapture(run + " --duration 30 --client-dp-budget 0.5 2>&1", &rc);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("spent its client-level privacy budget"), std::string::npos) << out;
}

TEST(PrivacyRun, RecordLevelDpSgdWithAsLoraFillsEachWorkersLedgerAndInspectShowsTheFactors) {
  TempDir dir;
  const std::string store = dir.path() + "/store";
  int rc = -1;
  std::string out = RunCapture(std::string(kBinary) + " run --arch mlp --local-steps 5 --store " + Quote(store) +
                                   " --method as-lora --as-score change --as-warmup 3 --dp-epsilon 4 --dp-steps 400 --max-versions 12"
                                   " --duration 120 2>&1",
                               &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("record-level DP-SGD"), std::string::npos) << out;
  const json versions = History(store);
  ASSERT_EQ(versions.size(), 13u);
  const json& last = versions.back();
  ASSERT_FALSE(last["privacy"].is_null());
  ASSERT_FALSE(last["privacy"]["workers"].empty());
  for (const auto& w : last["privacy"]["workers"]) {
    EXPECT_GT(w["epsilon"].get<double>(), 0.0);
    EXPECT_LE(w["epsilon"].get<double>(), 4.0);
    EXPECT_GT(w["noise_multiplier"].get<double>(), 0.0);
  }
  // Warm-up trains B; version 3 onwards A is tried on every module.
  for (const auto& v : versions) {
    if (v["version"].get<uint64_t>() == 0 || v["version"].get<uint64_t>() >= 3) continue;
    for (const auto& f : v["factors"]) EXPECT_EQ(f["active"], "B") << v.dump();
  }
  for (const auto& f : versions[3]["factors"]) EXPECT_EQ(f["active"], "A");
  out = RunCapture(std::string(kBinary) + " inspect --factors --store " + Quote(store) + " 2>&1", &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("fc1     BBBA"), std::string::npos) << out;
  EXPECT_NE(out.find("switches"), std::string::npos) << out;
  out = RunCapture(std::string(kBinary) + " inspect --store " + Quote(store) + " 2>&1", &rc);
  EXPECT_NE(rc, 0) << out;  // --factors is the view to ask for
}

TEST(PrivacyRun, WorkersStopAtTheirRecordLevelBudgetAndTheRunEnds) {
  TempDir dir;
  const std::string store = dir.path() + "/store";
  int rc = -1;
  // 5 steps per local run, a budget planned for 20: each worker affords 4 runs, then stops.
  const std::string out = RunCapture(std::string(kBinary) + " run --arch mlp --local-steps 5 --store " + Quote(store) +
                                         " --dp-epsilon 1 --dp-steps 20 --duration 120 2>&1",
                                     &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("every worker's privacy budget is spent"), std::string::npos) << out;
  EXPECT_NE(out.find("privacy budget spent: epsilon"), std::string::npos) << out;
  const json last = History(store).back();
  ASSERT_EQ(last["privacy"]["workers"].size(), 6u);
  for (const auto& w : last["privacy"]["workers"]) {
    EXPECT_EQ(w["steps"].get<uint64_t>(), 20u) << w.dump();
    EXPECT_LE(w["epsilon"].get<double>(), 1.0 + 1e-9);
  }
}

}  // namespace
}  // namespace fedlora
