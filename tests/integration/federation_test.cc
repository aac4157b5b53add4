// Starts broker, aggregator and four workers (one leaving early, one joining late) as separate `fedlora` processes on loopback,
// kills the aggregator with SIGKILL mid-run and restarts it, and checks the guarantees of a
// federation from the outside, through the store: accuracy rose, every acknowledged update is
// in the log exactly once, every version's lineage names its updates with their staleness,
// and every logged update was consumed by exactly one version (nothing lost, nothing applied
// twice) across the crash.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "tests/testing/fixtures.h"
#include "tests/testing/process.h"

namespace fedlora {
namespace {

using nlohmann::json;
using testing::Process;
using testing::Quote;
using testing::RunCapture;
using testing::WaitUntil;

constexpr const char* kBinary = FEDLORA_BINARY;
constexpr int kVersions = 40;

json History(const std::string& store) {
  int rc = -1;
  std::string out = RunCapture(std::string(kBinary) + " history --json --store " + Quote(store) + " 2>/dev/null", &rc);
  if (rc != 0) return json::array();
  return json::parse(out, nullptr, false);
}

class FederationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = dir_.path("store");
    int rc = -1;
    const std::string out = RunCapture(std::string(kBinary) + " pretrain --arch mlp --epochs 3 --store " + Quote(store_) + " 2>&1", &rc);
    ASSERT_EQ(rc, 0) << out;
  }

  std::unique_ptr<Process> StartAggregator(const std::string& backend, const std::string& log_name) {
    return std::make_unique<Process>(
        std::vector<std::string>{kBinary, "aggregator", "--store", store_, "--broker", backend, "--arch", "mlp",
                                 "--clients", "4", "--mode", "fedbuff", "--buffer-size", "4",
                                 "--max-versions", std::to_string(kVersions), "--eval-every", "10",
                                 "--eval-samples", "2000"},
        dir_.path(log_name));
  }

  testing::TempDir dir_;
  std::string store_;
};

TEST_F(FederationTest, SeparateProcessesSurviveAggregatorCrashWithNothingLostOrDoubled) {
  Process broker({kBinary, "broker", "--store", store_, "--frontend", "tcp://127.0.0.1:*", "--backend",
                  "tcp://127.0.0.1:*", "--announce", "tcp://127.0.0.1:*"},
                 dir_.path("broker.out"));
  std::smatch m;
  const std::regex endpoints(R"(frontend=(\S+) backend=(\S+) announce=(\S+))");
  std::string text;
  ASSERT_TRUE(WaitUntil([&] {
    text = broker.Output();
    return std::regex_search(text, m, endpoints);
  }, std::chrono::seconds(30))) << text;
  const std::string frontend = m[1], backend = m[2], announce = m[3];
  {
    // `fedlora broker` has handed over to fedlora-broker: no LibTorch in the broker's process.
    std::ifstream maps("/proc/" + std::to_string(broker.pid()) + "/maps");
    const std::string mapped((std::istreambuf_iterator<char>(maps)), std::istreambuf_iterator<char>());
    EXPECT_NE(mapped.find("fedlora-broker"), std::string::npos);
    EXPECT_EQ(mapped.find("libtorch"), std::string::npos);
  }

  // Workers first: they must wait for the adapter to appear (started in any order).
  // Worker 2 leaves early (after 4 updates); worker 3 joins late (after the crash).
  std::vector<std::unique_ptr<Process>> workers;
  auto start_worker = [&](int i, std::string speed, std::vector<std::string> extra) {
    std::vector<std::string> args = {kBinary, "worker", "--index", std::to_string(i), "--store", store_, "--arch", "mlp",
                                     "--clients", "4", "--broker", frontend, "--announce", announce, "--speed", speed,
                                     "--local-steps", "20", "--ack-log", dir_.path("acks-" + std::to_string(i) + ".jsonl")};
    args.insert(args.end(), extra.begin(), extra.end());
    workers.push_back(std::make_unique<Process>(args, dir_.path("worker-" + std::to_string(i) + ".out")));
  };
  start_worker(0, "2", {});
  start_worker(1, "3", {});
  start_worker(2, "2", {"--max-updates", "4"});
  auto aggregator = StartAggregator(backend, "aggregator-1.out");

  // Crash the aggregator once it has committed a few versions, then restart it.
  ASSERT_TRUE(WaitUntil([&] { return aggregator->Output().find("version=5 ") != std::string::npos; },
                        std::chrono::seconds(120)))
      << aggregator->Output();
  aggregator->Signal(SIGKILL);
  ASSERT_TRUE(aggregator->Wait(std::chrono::seconds(10)));
  const size_t versions_at_crash = History(store_).size();
  aggregator = StartAggregator(backend, "aggregator-2.out");
  start_worker(3, "1", {});
  auto status = aggregator->Wait(std::chrono::seconds(240));
  ASSERT_TRUE(status) << "aggregator did not finish\n" << aggregator->Output();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << aggregator->Output();
  EXPECT_LT(versions_at_crash, static_cast<size_t>(kVersions + 1)) << "the crash came after the run ended";

  // Workers leave by themselves once the final version is announced.
  for (auto& w : workers) {
    auto s = w->Wait(std::chrono::seconds(60));
    ASSERT_TRUE(s) << w->Output();
    EXPECT_TRUE(WIFEXITED(*s) && WEXITSTATUS(*s) == 0) << w->Output();
  }
  broker.Signal(SIGTERM);
  ASSERT_TRUE(broker.Wait(std::chrono::seconds(20)));

  // Versions 0..kVersions, contiguous, each with lineage.
  json history = History(store_);
  ASSERT_EQ(history.size(), static_cast<size_t>(kVersions + 1));
  for (size_t v = 0; v < history.size(); ++v) ASSERT_EQ(history[v]["version"].get<uint64_t>(), v);

  // Accuracy rose.
  ASSERT_FALSE(history.front()["test_accuracy"].is_null());
  ASSERT_FALSE(history.back()["test_accuracy"].is_null());
  const double first = history.front()["test_accuracy"], last = history.back()["test_accuracy"];
  std::printf("accuracy (2,000 test images): version 0 %.4f, version %d %.4f\n", first, kVersions, last);
  EXPECT_GT(last, first + 0.02) << "accuracy v0 " << first << " final " << last;

  // The log: every record once, and every acknowledged update in it at its acknowledged seq.
  int rc = -1;
  json log = json::parse(RunCapture(std::string(kBinary) + " log --json --store " + Quote(store_), &rc));
  ASSERT_EQ(rc, 0);
  std::map<std::string, uint64_t> seq_of;
  std::map<uint64_t, json> record_at;
  for (const auto& r : log) {
    const std::string key = r["client_id"].get<std::string>() + "/" + r["update_id"].get<std::string>();
    EXPECT_TRUE(seq_of.emplace(key, r["seq"].get<uint64_t>()).second) << "logged twice: " << key;
    record_at[r["seq"].get<uint64_t>()] = r;
  }
  size_t acked = 0;
  std::map<std::string, size_t> acked_by;
  for (int i = 0; i < 4; ++i) {
    std::ifstream in(dir_.path("acks-" + std::to_string(i) + ".jsonl"));
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      json a = json::parse(line);
      const std::string key = a["client_id"].get<std::string>() + "/" + a["update_id"].get<std::string>();
      ASSERT_TRUE(seq_of.count(key)) << "acknowledged but not logged: " << key;
      EXPECT_EQ(seq_of[key], a["seq"].get<uint64_t>()) << key;
      ++acked;
      acked_by[a["client_id"]]++;
    }
  }
  EXPECT_GT(acked, static_cast<size_t>(kVersions));
  EXPECT_EQ(acked_by["worker-2"], 4u) << "the early leaver should stop after --max-updates";
  EXPECT_GT(acked_by["worker-3"], 0u) << "the late joiner should contribute";

  // Lineage: each applied update is a logged record with the stated base and staleness; every
  // record up to the final consumed position is applied or dropped exactly once.
  std::map<uint64_t, int> consumed;
  for (size_t v = 1; v < history.size(); ++v) {
    const json& ver = history[v];
    ASSERT_FALSE(ver["applied"].empty()) << "version " << v << " names no updates";
    for (const auto& a : ver["applied"]) {
      const uint64_t seq = a["seq"];
      ASSERT_TRUE(record_at.count(seq)) << "version " << v << " names unlogged seq " << seq;
      EXPECT_EQ(a["update_id"], record_at[seq]["update_id"]);
      EXPECT_EQ(a["base_version"], record_at[seq]["base_version"]);
      EXPECT_EQ(a["staleness"].get<uint64_t>(), ver["parent_version"].get<uint64_t>() - a["base_version"].get<uint64_t>());
      consumed[seq]++;
    }
    for (const auto& d : ver["dropped_updates"]) consumed[d["seq"].get<uint64_t>()]++;
  }
  const uint64_t last_consumed = history.back()["consumed_seq"];
  for (uint64_t seq = 1; seq <= last_consumed; ++seq) {
    EXPECT_EQ(consumed[seq], 1) << "log record " << seq << " consumed " << consumed[seq] << " times";
  }
}

}  // namespace
}  // namespace fedlora
