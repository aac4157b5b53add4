// The load generator (worker/loadgen.h) against an in-process broker: every client's quota
// acknowledged once and logged as it arrives, a stop ends an unbounded run, and a bad ack log
// is refused before any client starts.
#include "worker/loadgen.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "tests/testing/fixtures.h"
#include "tests/testing/running_broker.h"
#include "tests/testing/samples.h"

namespace fedlora::worker {
namespace {

using testing::Peer;
using testing::RunningBroker;

// Registers adapter "default" at version 0 the way an aggregator does, and waits for it.
void Register(RunningBroker& broker) {
  Peer agg(broker.endpoints().backend);
  codec::GlobalInfo info{"default", 0, "hash", 0, wire::Mode::FedBuff, false, {}};
  agg.Send(codec::BuildGlobal(info, testing::SmallSpec(), testing::FilledState(testing::SmallSpec(), 0)));
  Peer worker(broker.endpoints().frontend);
  for (int i = 0; i < 500; ++i) {
    worker.Send(codec::BuildFetch("default", -1));
    const auto* e = worker.Reply();
    ASSERT_TRUE(e) << "no reply to fetch";
    if (e->body_type() == wire::Body::GlobalAdapter) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  FAIL() << "adapter never registered";
}

TEST(LoadgenTest, EveryClientsQuotaIsAcknowledgedOnceAndLogged) {
  testing::TempDir dir;
  RunningBroker broker(dir.path("log"));
  Register(broker);
  LoadOptions o;
  o.broker = broker.endpoints().frontend;
  o.clients = 3;
  o.threads = 2;
  o.updates = 4;
  o.ack_log = dir.path("acks.jsonl");
  auto r = GenerateLoad(o, std::stop_token());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->clients, 3u);
  EXPECT_EQ(r->threads, 2u);
  EXPECT_EQ(r->acked, 12u);
  EXPECT_EQ(r->duplicates, 0u);
  EXPECT_EQ(r->rejected, 0u);
  EXPECT_EQ(r->latencies_ms.size(), 12u);
  EXPECT_GT(r->bytes, 0u);
  EXPECT_FALSE(r->final);
  EXPECT_EQ(broker.stats().updates_logged.load(), 12u);
  std::ifstream acks(o.ack_log);
  std::set<std::string> ids;
  std::set<uint64_t> seqs;
  for (std::string line; std::getline(acks, line);) {
    const auto j = nlohmann::json::parse(line);
    ids.insert(j["update_id"].get<std::string>());
    seqs.insert(j["seq"].get<uint64_t>());
    EXPECT_FALSE(j["duplicate"].get<bool>());
    EXPECT_EQ(j["update_id"].get<std::string>().rfind(j["client_id"].get<std::string>() + "-", 0), 0u) << line;
  }
  EXPECT_EQ(ids.size(), 12u);
  EXPECT_EQ(seqs, (std::set<uint64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}));
}

TEST(LoadgenTest, AStopEndsAnUnboundedRun) {
  testing::TempDir dir;
  RunningBroker broker(dir.path("log"));
  Register(broker);
  LoadOptions o;
  o.broker = broker.endpoints().frontend;
  o.clients = 2;
  o.updates = 0;  // until stopped
  std::stop_source stop;
  std::jthread stopper([&stop] {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    stop.request_stop();
  });
  const auto start = std::chrono::steady_clock::now();
  auto r = GenerateLoad(o, stop.get_token());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_GT(r->acked, 0u);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
}

TEST(LoadgenTest, AnAckLogThatCannotBeOpenedIsRefused) {
  LoadOptions o;
  o.ack_log = "/nonexistent-dir/acks.jsonl";
  auto r = GenerateLoad(o, std::stop_token());
  EXPECT_EQ(r.status().code(), Code::kUnavailable);
  EXPECT_NE(r.status().message().find("/nonexistent-dir/acks.jsonl"), std::string::npos) << r.status().ToString();
}

}  // namespace
}  // namespace fedlora::worker
