// `fedlora replay` on a real stored run: a short federation (broker, aggregator, workers on
// loopback, the mlp model) is replayed from its update log with the recorded settings, which
// must rebuild every version bit for bit; a what-if with another K builds a different,
// internally consistent store.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/testing/fixtures.h"
#include "tests/testing/process.h"

namespace fedlora {
namespace {

using nlohmann::json;
using testing::Json;
using testing::Quote;
using testing::RunCapture;

constexpr const char* kBinary = FEDLORA_BINARY;

class ReplayCli : public ::testing::Test {
 protected:
  // One stored run for every test: 6 versions of FedBuff K = 3 with three workers.
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    store_ = dir_->path("run");
    int rc = -1;
    std::string out = RunCapture(std::string(kBinary) + " pretrain --arch mlp --epochs 2 --store " + Quote(store_) +
                                     " 2>&1",
                                 &rc);
    ASSERT_EQ(rc, 0) << out;
    out = RunCapture(std::string(kBinary) +
                         " run --arch mlp --workers 3 --speeds 1,2,4 --local-steps 4 --buffer-size 3 --max-versions 6 "
                         "--duration 240 --eval-every 3 --eval-samples 500 --server-optimizer adam --store " +
                         Quote(store_) + " 2>&1",
                     &rc);
    ASSERT_EQ(rc, 0) << out;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static testing::TempDir* dir_;
  static std::string store_;
};
testing::TempDir* ReplayCli::dir_ = nullptr;
std::string ReplayCli::store_;

TEST_F(ReplayCli, TheRecordedSettingsRebuildEveryVersionBitForBit) {
  const std::string out = dir_->path("same");
  const json report = Json(std::string(kBinary) + " replay --json --log " + Quote(store_) + " --out " + Quote(out));
  EXPECT_FALSE(report["what_if"].get<bool>());
  EXPECT_EQ(report["last_version"], 6u);
  EXPECT_TRUE(report["final"].get<bool>());
  EXPECT_EQ(report["compared"], 7u);
  EXPECT_EQ(report["identical"], 7u);
  EXPECT_TRUE(report["first_difference"].is_null());
  EXPECT_GT(report["versions_per_s"].get<double>(), 0.0);
  // The same accuracy on the same test images (the original evaluated version 6 too).
  ASSERT_FALSE(report["last_accuracy"].is_null());
  EXPECT_NEAR(report["last_accuracy"].get<double>(), report["original"]["accuracy"].get<double>(), 0.002);

  // Independently of the report: both histories, version by version.
  const json a = Json(std::string(kBinary) + " history --json --store " + Quote(store_));
  const json b = Json(std::string(kBinary) + " history --json --store " + Quote(out));
  ASSERT_EQ(a.size(), 7u);
  ASSERT_EQ(b.size(), 7u);
  for (size_t v = 0; v < a.size(); ++v) {
    EXPECT_EQ(a[v]["content_hash"], b[v]["content_hash"]) << "version " << v;
    EXPECT_EQ(a[v]["consumed_seq"], b[v]["consumed_seq"]) << "version " << v;
    EXPECT_EQ(a[v]["updates"], b[v]["updates"]) << "version " << v;
    EXPECT_EQ(a[v]["config"], b[v]["config"]) << "version " << v;
  }
  EXPECT_NE(a[1]["config"].get<std::string>().find("--server-optimizer adam"), std::string::npos);
}

TEST_F(ReplayCli, AWhatIfWithAnotherKBuildsADifferentConsistentStore) {
  const std::string out = dir_->path("k2");
  const json report = Json(std::string(kBinary) + " replay --json --no-eval --log " + Quote(store_) + " --out " +
                           Quote(out) + " -- --buffer-size 2");
  EXPECT_TRUE(report["what_if"].get<bool>());
  EXPECT_EQ(report["first_difference"], 1u);
  const json original = Json(std::string(kBinary) + " history --json --store " + Quote(store_));
  const json b = Json(std::string(kBinary) + " history --json --store " + Quote(out));
  ASSERT_EQ(b.size(), report["last_version"].get<size_t>() + 1);
  // Folding every record of the log two at a time makes more versions than K = 3 did.
  EXPECT_GT(b.size(), original.size());
  uint64_t consumed = 0;
  for (size_t v = 1; v < b.size(); ++v) {
    EXPECT_EQ(b[v]["version"], v);
    EXPECT_EQ(b[v]["parent_version"], v - 1);
    EXPECT_EQ(b[v]["updates"].get<size_t>() + b[v]["dropped"].get<size_t>(), 2u) << "version " << v;
    EXPECT_GT(b[v]["consumed_seq"].get<uint64_t>(), consumed);
    consumed = b[v]["consumed_seq"].get<uint64_t>();
    EXPECT_NE(b[v]["config"].get<std::string>().find("--buffer-size 2 "), std::string::npos);
    // Everything else as recorded: adam stays adam.
    EXPECT_NE(b[v]["config"].get<std::string>().find("--server-optimizer adam"), std::string::npos);
  }

  // The same what-if from a settings file builds the same store.
  const std::string file = dir_->path("k2.flags");
  std::ofstream(file) << "# what if K were 2\n--buffer-size 2\n";
  const json from_file = Json(std::string(kBinary) + " replay --json --no-eval --log " + Quote(store_) + " --out " +
                              Quote(dir_->path("k2-file")) + " --config " + Quote(file));
  EXPECT_EQ(from_file["settings"], json::array({"--buffer-size", "2"}));
  EXPECT_EQ(from_file["last_hash"], report["last_hash"]);
  EXPECT_EQ(from_file["last_version"], report["last_version"]);
}

TEST_F(ReplayCli, BadSettingsAndAnOccupiedOutputAreRefusedBeforeAnythingIsWritten) {
  const std::string out = dir_->path("bad");
  int rc = -1;
  std::string text = RunCapture(std::string(kBinary) + " replay --log " + Quote(store_) + " --out " + Quote(out) +
                                    " -- --buffer-sise 2 2>&1",
                                &rc);
  EXPECT_EQ(rc, 2) << text;
  EXPECT_NE(text.find("buffer-sise"), std::string::npos) << text;
  EXPECT_FALSE(std::filesystem::exists(out + "/adapters"));
  text = RunCapture(std::string(kBinary) + " replay --no-eval --log " + Quote(store_) + " --out " + Quote(store_) + " 2>&1",
                    &rc);
  EXPECT_EQ(rc, 2) << text;
  EXPECT_NE(text.find("already holds a store"), std::string::npos) << text;
}

// Stores written by fedlora before the method modules (tests/data/legacy-stores, one per method
// and mode: Adam with client-level DP, FedAsync with hinge staleness, sync, record-level DP,
// heterogeneous ranks) open and replay with today's binary, every version bit for bit under the
// settings each one recorded (as flags: they predate the settings table), and export and import
// as before.
TEST(LegacyStores, ReplayBitForBitUnderTheirRecordedSettings) {
  const std::filesystem::path fixtures = std::filesystem::path(FEDLORA_SOURCE_DIR) / "tests/data/legacy-stores";
  testing::TempDir dir;
  int stores = 0, round_trips = 0;
  for (const auto& entry : std::filesystem::directory_iterator(fixtures)) {
    const std::string file = entry.path().filename().string();
    if (!file.ends_with(".tar.xz")) continue;
    const std::string name = file.substr(0, file.size() - 7);
    SCOPED_TRACE(name);
    int rc = -1;
    const std::string untar =
        RunCapture("tar -xJf " + Quote(entry.path().string()) + " -C " + Quote(dir.path()) + " 2>&1", &rc);
    ASSERT_EQ(rc, 0) << untar;
    const json report = Json(std::string(kBinary) + " replay --json --no-eval --log " + Quote(dir.path(name)) +
                             " --out " + Quote(dir.path(name + "-replayed")));
    EXPECT_FALSE(report["what_if"].get<bool>());
    EXPECT_GE(report["compared"].get<int>(), 4);
    EXPECT_EQ(report["identical"], report["compared"]);
    EXPECT_TRUE(report["first_difference"].is_null()) << report.dump();
    ++stores;

    // Their latest version exports as a PEFT adapter, and imports back to the same content
    // (except a flora store's residual modules, which go out at their own ranks: rank_pattern,
    // which import refuses by design).
    const json history = Json(std::string(kBinary) + " history --json --store " + Quote(dir.path(name)));
    ASSERT_TRUE(history.is_array() && !history.empty());
    const json& latest = history.back();
    const std::string peft = dir.path(name + "-peft");
    const std::string exported = RunCapture(std::string(kBinary) + " export --version " +
                                                std::to_string(latest["version"].get<uint64_t>()) +
                                                " --format peft --out " + Quote(peft) + " --store " +
                                                Quote(dir.path(name)) + " 2>&1",
                                            &rc);
    ASSERT_EQ(rc, 0) << exported;
    std::ifstream config_file(peft + "/adapter_config.json");
    const json config = json::parse(config_file, nullptr, false);
    ASSERT_TRUE(config.is_object()) << peft;
    if (config.contains("rank_pattern") && !config["rank_pattern"].empty()) continue;
    const std::string imported = RunCapture(std::string(kBinary) + " import --in " + Quote(peft) +
                                                " --adapter back --store " + Quote(dir.path(name + "-imported")) + " 2>&1",
                                            &rc);
    ASSERT_EQ(rc, 0) << imported;
    const json back = Json(std::string(kBinary) + " history --json --adapter back --store " +
                           Quote(dir.path(name + "-imported")));
    ASSERT_EQ(back.size(), 1u);
    EXPECT_EQ(back[0]["content_hash"], latest["content_hash"]);
    ++round_trips;
  }
  EXPECT_EQ(stores, 10);
  EXPECT_GE(round_trips, 8);
}

}  // namespace
}  // namespace fedlora
