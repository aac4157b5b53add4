// Crash faults, end to end: while lightweight publishers (`fedlora loadgen`) publish, the broker
// or the aggregator is killed with SIGKILL at a random moment and restarted, 20 times. After
// every restart the federation must make progress again; at the end:
//  - every acknowledged update is in the log exactly once, at the sequence number acknowledged;
//  - versions are numbered 0..N without a gap or a repeat, and every log record up to the last
//    consumed one was folded into or dropped by exactly one version;
//  - a clean replay of the log (`fedlora replay`, the recorded settings) rebuilds every version
//    with the same content hash.
// The random moments come from a fixed seed (printed), so a failure can be rerun.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "tests/testing/fixtures.h"
#include "tests/testing/ledger.h"
#include "tests/testing/process.h"

namespace fedlora {
namespace {

using nlohmann::json;
using testing::Process;
using testing::Quote;
using testing::RunCapture;
using testing::WaitUntil;

constexpr const char* kBinary = FEDLORA_BINARY;
constexpr int kTrials = 20;

json RunJson(const std::string& command) {
  int rc = -1;
  const std::string out = RunCapture(command + " 2>/dev/null", &rc);
  if (rc != 0) return json();
  return json::parse(out, nullptr, false);
}

size_t CountLines(const std::string& path) {
  std::ifstream in(path);
  size_t n = 0;
  for (std::string line; std::getline(in, line);) n += !line.empty();
  return n;
}

class CrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = dir_.path("store");
    int rc = -1;
    const std::string out =
        RunCapture(std::string(kBinary) + " pretrain --arch mlp --epochs 1 --store " + Quote(store_) + " 2>&1", &rc);
    ASSERT_EQ(rc, 0) << out;
  }

  std::unique_ptr<Process> StartBroker(const std::string& frontend, const std::string& backend,
                                       const std::string& announce) {
    return std::make_unique<Process>(std::vector<std::string>{kBinary, "broker", "--store", store_, "--frontend",
                                                              frontend, "--backend", backend, "--announce", announce},
                                     dir_.path("broker.out"));
  }
  std::unique_ptr<Process> StartAggregator(const std::string& backend) {
    return std::make_unique<Process>(
        std::vector<std::string>{kBinary, "aggregator", "--store", store_, "--broker", backend, "--arch", "mlp",
                                 "--buffer-size", "3", "--eval-every", "0", "--max-staleness", "1000"},
        dir_.path("aggregator.out"));
  }
  json History() { return RunJson(std::string(kBinary) + " history --json --store " + Quote(store_)); }
  uint64_t LatestVersion() {
    const json h = History();
    return h.is_array() && !h.empty() ? h.back()["version"].get<uint64_t>() : 0;
  }

  testing::TempDir dir_;
  std::string store_;
};

TEST_F(CrashTest, KillingBrokerOrAggregatorLosesAndDoublesNothing) {
  auto broker = StartBroker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*");
  const auto bound = testing::WaitForBroker(*broker);
  ASSERT_TRUE(bound);
  const std::string frontend = bound->frontend, backend = bound->backend, announce = bound->announce;
  auto aggregator = StartAggregator(backend);
  const std::string acks = dir_.path("acks.jsonl");
  Process loadgen({kBinary, "loadgen", "--broker", frontend, "--clients", "4", "--updates", "0", "--interval-ms", "5",
                   "--timeout-ms", "500", "--ack-log", acks},
                  dir_.path("loadgen.out"));
  ASSERT_TRUE(WaitUntil([&] { return LatestVersion() >= 2; }, std::chrono::seconds(60)))
      << aggregator->Output() << loadgen.Output();

  const uint32_t seed = 20261122;
  std::printf("fault schedule seed %u\n", seed);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> pause_ms(200, 1500);
  int broker_kills = 0, aggregator_kills = 0;
  for (int trial = 0; trial < kTrials; ++trial) {
    std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms(rng)));
    if (trial % 2 == 0) {
      // The broker: acknowledged updates must survive it; publishers resend the others.
      broker->Signal(SIGKILL);
      ASSERT_TRUE(broker->Wait(std::chrono::seconds(10)));
      ++broker_kills;
      const size_t acked_before = CountLines(acks);
      broker = StartBroker(frontend, backend, announce);
      ASSERT_TRUE(WaitUntil([&] { return CountLines(acks) > acked_before + 3; }, std::chrono::seconds(60)))
          << "trial " << trial << ": no acknowledgements after the broker restarted\n" << broker->Output();
    } else {
      // The aggregator: it resumes from its cursor; buffered updates are read again.
      aggregator->Signal(SIGKILL);
      ASSERT_TRUE(aggregator->Wait(std::chrono::seconds(10)));
      ++aggregator_kills;
      const uint64_t version_before = LatestVersion();
      aggregator = StartAggregator(backend);
      ASSERT_TRUE(WaitUntil([&] { return LatestVersion() > version_before; }, std::chrono::seconds(60)))
          << "trial " << trial << ": no new version after the aggregator restarted\n" << aggregator->Output();
    }
  }
  EXPECT_EQ(broker_kills + aggregator_kills, kTrials);

  // Let the publishers stop, then the aggregator catch up with the log (a partial buffer of
  // fewer than K = 3 updates stays unfolded, as it should).
  loadgen.Signal(SIGTERM);
  ASSERT_TRUE(loadgen.Wait(std::chrono::seconds(30))) << loadgen.Output();
  json log;
  ASSERT_TRUE(WaitUntil([&] {
    log = RunJson(std::string(kBinary) + " log --json --store " + Quote(store_));
    const json h = History();
    if (!log.is_array() || log.empty() || !h.is_array() || h.empty()) return false;
    return h.back()["consumed_seq"].get<uint64_t>() + 3 > log.back()["seq"].get<uint64_t>();
  }, std::chrono::seconds(60))) << aggregator->Output();
  aggregator->Signal(SIGTERM);
  ASSERT_TRUE(aggregator->Wait(std::chrono::seconds(20)));
  broker->Signal(SIGTERM);
  ASSERT_TRUE(broker->Wait(std::chrono::seconds(20)));
  log = RunJson(std::string(kBinary) + " log --json --store " + Quote(store_));
  const json history = History();
  ASSERT_TRUE(log.is_array());
  ASSERT_TRUE(history.is_array());

  // Every acknowledged update is in the log exactly once, at its acknowledged position.
  const testing::AckCount count = testing::ExpectAckedExactlyOnce(log, acks);
  EXPECT_GT(count.acked, 50u);
  std::printf("%d broker and %d aggregator kills; %zu updates acknowledged (%zu as duplicates of a resend), %zu "
              "logged, %zu versions\n",
              broker_kills, aggregator_kills, count.acked, count.duplicates, log.size(), history.size());

  // Versions 0..N, and every record up to the last consumed one folded or dropped exactly once.
  EXPECT_GT(testing::ExpectEveryRecordConsumedOnce(history), 0u);

  // A clean replay of the log rebuilds every version, hash for hash.
  const json replay = RunJson(std::string(kBinary) + " replay --json --no-eval --log " + Quote(store_) + " --out " +
                              Quote(dir_.path("replay")));
  ASSERT_TRUE(replay.is_object()) << "replay failed";
  EXPECT_EQ(replay["compared"].get<size_t>(), history.size());
  EXPECT_EQ(replay["identical"].get<size_t>(), history.size());
  EXPECT_TRUE(replay["first_difference"].is_null());
  const json rebuilt = RunJson(std::string(kBinary) + " history --json --store " + Quote(dir_.path("replay")));
  ASSERT_TRUE(rebuilt.is_array());
  ASSERT_GE(rebuilt.size(), history.size());
  for (size_t v = 0; v < history.size(); ++v) {
    EXPECT_EQ(rebuilt[v]["content_hash"], history[v]["content_hash"]) << "version " << v;
  }
}

}  // namespace
}  // namespace fedlora
