// Overload, end to end: 16 lightweight publishers (`fedlora loadgen`, no pause between updates)
// flood a broker whose ingest queue is bounded to 0.25 MiB, while the aggregator is frozen
// (SIGSTOP) for the first half of the flood and then has to catch up. The log absorbs the
// backlog on disk; the broker refuses what it cannot take yet with "retry later"; and:
//  - the peak RSS of broker and aggregator stays under the stated bound (512 MiB each);
//  - every acknowledged update is in the log exactly once, and after the catch-up every log
//    record was folded into or dropped by exactly one version.
#include <gtest/gtest.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "tests/testing/fixtures.h"
#include "tests/testing/ledger.h"
#include "tests/testing/process.h"

namespace fedlora {
namespace {

using nlohmann::json;
using testing::Process;
using testing::ProcStatusKib;
using testing::Quote;
using testing::RunCapture;
using testing::WaitUntil;

constexpr const char* kBinary = FEDLORA_BINARY;
#ifndef FEDLORA_SANITIZE
constexpr uint64_t kBoundKib = 512 * 1024;  // the memory bound stated in docs/reliability.md
#else
// AddressSanitizer's shadow memory and quarantine add several hundred MiB to every process;
// the stated bound is checked by the plain build, this one only catches runaway growth.
constexpr uint64_t kBoundKib = 2048 * 1024;
#endif

json RunJson(const std::string& command) {
  int rc = -1;
  const std::string out = RunCapture(command + " 2>&1", &rc);
  if (rc != 0) {
    ADD_FAILURE() << command << " exited " << rc << ": " << out.substr(0, 2000);
    return json();
  }
  return json::parse(out, nullptr, false);
}

TEST(FloodTest, MemoryStaysBoundedAndEveryAcknowledgedUpdateArrives) {
  testing::TempDir dir;
  const std::string store = dir.path("store");
  int rc = -1;
  std::string out = RunCapture(std::string(kBinary) + " pretrain --arch mlp --epochs 1 --store " + Quote(store) + " 2>&1", &rc);
  ASSERT_EQ(rc, 0) << out;

  Process broker({kBinary, "broker", "--store", store, "--frontend", "tcp://127.0.0.1:*", "--backend",
                  "tcp://127.0.0.1:*", "--announce", "tcp://127.0.0.1:*", "--ingest-queue-mib", "0.25"},
                 dir.path("broker.out"));
  const auto bound = testing::WaitForBroker(broker);
  ASSERT_TRUE(bound);
  const std::string frontend = bound->frontend, backend = bound->backend;
  Process aggregator({kBinary, "aggregator", "--store", store, "--broker", backend, "--arch", "mlp", "--buffer-size",
                      "3", "--eval-every", "0", "--max-staleness", "1000000"},
                     dir.path("aggregator.out"));
  auto history = [&] { return RunJson(std::string(kBinary) + " history --json --store " + Quote(store)); };
  auto log = [&] { return RunJson(std::string(kBinary) + " log --json --store " + Quote(store)); };
  ASSERT_TRUE(WaitUntil([&] { return aggregator.Output().find("at version=0") != std::string::npos; },
                        std::chrono::seconds(60)))
      << aggregator.Output();

  // Freeze the aggregator: nothing is consumed while the flood runs.
  aggregator.Signal(SIGSTOP);
  const std::string acks = dir.path("acks.jsonl");
  Process loadgen({kBinary, "loadgen", "--broker", frontend, "--clients", "16", "--updates", "0", "--duration", "16",
                   "--timeout-ms", "2000", "--ack-log", acks, "--json"},
                  dir.path("loadgen.out"));
  uint64_t broker_rss_max = 0, aggregator_rss_max = 0;
  auto sample = [&] {
    broker_rss_max = std::max(broker_rss_max, ProcStatusKib(broker.pid(), "VmRSS"));
    aggregator_rss_max = std::max(aggregator_rss_max, ProcStatusKib(aggregator.pid(), "VmRSS"));
  };
  // The 8 s of flood start with the first acknowledgement: on a loaded machine the publishers
  // took long enough to start (a LibTorch-linked process, 16 clients learning the adapter) that
  // a window counted from their launch once ended before anything was logged.
  ASSERT_TRUE(WaitUntil([&] {
    sample();
    std::error_code ec;
    return std::filesystem::file_size(acks, ec) > 0 && !ec;
  }, std::chrono::seconds(30)))
      << "no update was acknowledged:\n" << loadgen.Output();
  for (int i = 0; i < 40; ++i) {  // 8 s
    sample();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  const json frozen_log = log();
  ASSERT_TRUE(frozen_log.is_array());
  const size_t backlog = frozen_log.size();
  aggregator.Signal(SIGCONT);
  while (!loadgen.Wait(std::chrono::milliseconds(200))) sample();
  const json summary = json::parse(loadgen.Output().substr(loadgen.Output().find('{')), nullptr, false);
  ASSERT_TRUE(summary.is_object()) << loadgen.Output();

  // Let the aggregator catch up with everything logged (a partial buffer of fewer than K = 3
  // updates stays unfolded, as it should).
  json final_log;
  ASSERT_TRUE(WaitUntil([&] {
    sample();
    final_log = log();
    const json h = history();
    if (!final_log.is_array() || final_log.empty() || !h.is_array() || h.empty()) return false;
    return h.back()["consumed_seq"].get<uint64_t>() + 3 > final_log.back()["seq"].get<uint64_t>();
  }, std::chrono::seconds(120))) << aggregator.Output();
  const uint64_t broker_peak = ProcStatusKib(broker.pid(), "VmHWM");
  const uint64_t aggregator_peak = ProcStatusKib(aggregator.pid(), "VmHWM");
  aggregator.Signal(SIGTERM);
  ASSERT_TRUE(aggregator.Wait(std::chrono::seconds(20)));
  broker.Signal(SIGTERM);
  ASSERT_TRUE(broker.Wait(std::chrono::seconds(20)));

  std::printf("backlog while frozen: %zu records; acknowledged %llu, retry-later %llu; peak RSS broker %.0f MiB, "
              "aggregator %.0f MiB (sampled max %.0f / %.0f)\n",
              backlog, static_cast<unsigned long long>(summary["acked"].get<uint64_t>()),
              static_cast<unsigned long long>(summary["retry_later"].get<uint64_t>()), broker_peak / 1024.0,
              aggregator_peak / 1024.0, broker_rss_max / 1024.0, aggregator_rss_max / 1024.0);
  EXPECT_GT(backlog, 1000u) << "the flood never built a backlog";
  EXPECT_GT(summary["retry_later"].get<uint64_t>(), 0u) << "ingest never saturated";
  EXPECT_GT(broker_peak, 0u);
  EXPECT_GT(aggregator_peak, 0u);
  EXPECT_LT(broker_peak, kBoundKib);
  EXPECT_LT(aggregator_peak, kBoundKib);

  const json final_history = history();
  ASSERT_TRUE(final_history.is_array());
  const testing::AckCount count = testing::ExpectAckedExactlyOnce(final_log, acks);
  EXPECT_EQ(count.acked, summary["acked"].get<uint64_t>());
  // Logged but unacknowledged: at most the one update each client had in flight when loadgen stopped.
  EXPECT_LE(count.acked, final_log.size());
  EXPECT_LE(final_log.size(), count.acked + 16);
  EXPECT_GE(testing::ExpectEveryRecordConsumedOnce(final_history) + 3, final_log.size());
}

}  // namespace
}  // namespace fedlora
