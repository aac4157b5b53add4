// The aggregator's link to a real broker, in one process: liveness while it evaluates, and the
// adapter's lease (docs/protocol.md) when another connection holds it.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <thread>

#include "aggregator/aggregator.h"
#include "storage/update_log.h"
#include "tests/testing/disk.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/running_broker.h"
#include "tests/testing/samples.h"

namespace fedlora::aggregator {
namespace {

using namespace std::chrono_literals;
using testing::FilledState;
using testing::MakeUpdate;
using testing::Peer;
using testing::RunningBroker;
using testing::SmallSpec;

constexpr auto kInterval = 100ms;  // heartbeats of broker and aggregator; the lease is 3 of them

void FastLiveness(broker::BrokerOptions& o) { o.heartbeat_interval = kInterval; }

AggregatorOptions Options(const std::string& store, const RunningBroker& broker) {
  AggregatorOptions o;
  o.store_path = store;
  o.broker = broker.endpoints().backend;
  o.sync = false;
  o.engine.buffer_size = 1;  // one version per update
  o.heartbeat_interval = kInterval;
  o.poll_interval = 20ms;
  o.initial = InitialAdapter{SmallSpec(), FilledState(SmallSpec(), 0)};
  return o;
}

// Runs `agg` on its own thread until destroyed.
class Running {
 public:
  explicit Running(std::unique_ptr<Aggregator> agg) : agg_(std::move(agg)) {
    thread_ = std::jthread([this](std::stop_token stop) { EXPECT_TRUE(agg_->Run(stop).ok()); });
  }
  ~Running() {
    thread_.request_stop();
    thread_.join();
  }
  Aggregator& operator*() { return *agg_; }
  Aggregator* operator->() { return agg_.get(); }

 private:
  std::unique_ptr<Aggregator> agg_;
  std::jthread thread_;
};

bool WaitForVersion(Aggregator& agg, uint64_t version, std::chrono::milliseconds limit = 20s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (agg.Version() < version && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(10ms);
  return agg.Version() >= version;
}

void Publish(Peer& worker, const std::string& id) {
  worker.Send(MakeUpdate(id, "c1", 0, FilledState(SmallSpec(), 0.1f)));
  const auto* reply = worker.Reply();
  ASSERT_TRUE(reply);
  ASSERT_EQ(reply->body_type(), wire::Body::Ack);
}

// Waits until the broker knows the adapter (its global was registered).
void AwaitAdapter(Peer& worker) {
  for (int i = 0; i < 500; ++i) {
    worker.Send(codec::BuildFetch("default", -1));
    const auto* e = worker.Reply();
    ASSERT_TRUE(e);
    if (e->body_type() == wire::Body::GlobalAdapter) return;
    std::this_thread::sleep_for(20ms);
  }
  FAIL() << "the adapter was never registered";
}

// An evaluation longer than the broker's liveness limit (here 800 ms against 300 ms) used to
// block the aggregator's heartbeats, so the broker dropped its subscription while it evaluated
// (seen with text-classify's 11,768 test glosses). It heartbeats meanwhile now.
TEST(AggregatorLinkTest, AnEvaluationLongerThanTheLeaseKeepsTheSubscription) {
  testing::TempDir dir;
  RunningBroker broker(dir.path("log"), FastLiveness);
  auto options = Options(dir.path("store"), broker);
  std::atomic<int> evaluations{0};
  options.eval_every = 1;
  options.evaluate = [&](const AdapterSpec&, const AdapterState&) -> Result<EvalOutcome> {
    std::this_thread::sleep_for(800ms);
    ++evaluations;
    EvalOutcome outcome;
    outcome.accuracy = 0.5;
    outcome.samples = 1;
    return outcome;
  };
  auto created = Aggregator::Create(std::move(options));
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  Running agg(std::move(*created));
  Peer worker(broker.endpoints().frontend);
  AwaitAdapter(worker);
  Publish(worker, "u1");
  ASSERT_TRUE(WaitForVersion(*agg, 1));
  Publish(worker, "u2");
  ASSERT_TRUE(WaitForVersion(*agg, 2));
  EXPECT_EQ(evaluations.load(), 3);  // versions 0, 1 and 2
  EXPECT_EQ(broker.stats().aggregators_expired.load(), 0u) << "the broker took the aggregator for dead";
}

// Another connection holds the adapter and heartbeats (an aggregator's previous socket or
// process, still heard from): a new aggregator is refused, waits out the lease the broker names
// and resubscribes; it then consumes from its cursor, so it gets the record the holder was sent.
TEST(AggregatorLinkTest, ARefusedAggregatorSubscribesWhenTheLeaseLapses) {
  testing::TempDir dir;
  RunningBroker broker(dir.path("log"), FastLiveness);
  Peer holder(broker.endpoints().backend);
  codec::GlobalInfo info{"default", 0, "hash", 0, wire::Mode::FedBuff, false, {}};
  holder.Send(codec::BuildGlobal(info, SmallSpec(), FilledState(SmallSpec(), 0)));
  holder.Send(codec::BuildCredit("default", 1, 10, true));
  std::atomic<bool> heartbeating{true};
  std::jthread beats([&] {
    // The Peer's socket is used only by this thread from here on.
    while (heartbeating) {
      holder.Send(codec::BuildHeartbeat(0));
      holder.Receive(50ms);
      std::this_thread::sleep_for(30ms);
    }
  });
  Peer worker(broker.endpoints().frontend);
  AwaitAdapter(worker);  // the holder's global registers it
  Publish(worker, "u1");  // delivered to the holder, which ignores it

  auto created = Aggregator::Create(Options(dir.path("store"), broker));
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  Running agg(std::move(*created));
  std::this_thread::sleep_for(1s);  // 3 lease lengths
  EXPECT_GE(broker.stats().subscriptions_refused.load(), 2u);  // its Credit and global, at least
  EXPECT_EQ(agg->Version(), 0u) << "the aggregator got records while another held the adapter";

  heartbeating = false;
  beats.join();
  ASSERT_TRUE(WaitForVersion(*agg, 1)) << "the aggregator did not take the adapter once the lease lapsed";
  Publish(worker, "u2");
  EXPECT_TRUE(WaitForVersion(*agg, 2));
}

// Issue 21: a full disk under the adapter store. The commit is refused (RESOURCE_EXHAUSTED)
// and used to end Run with that error; now the aggregator waits, heartbeating (the broker keeps
// its lease), and commits the version once space returns.
TEST(AggregatorLinkTest, ACommitRefusedForAFullDiskWaitsForSpaceAndKeepsTheLease) {
  testing::TempDir dir;
  const std::string mount = dir.path("tmpfs");
  testing::Tmpfs tmpfs(mount, "128m");
  ASSERT_TRUE(tmpfs.mounted()) << "this test mounts a tmpfs and needs root, as CI has: " << tmpfs.why_not();
  RunningBroker broker(dir.path("log"), FastLiveness);
  auto created = Aggregator::Create(Options(mount + "/store", broker));
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  Running agg(std::move(*created));
  Peer worker(broker.endpoints().frontend);
  AwaitAdapter(worker);
  ASSERT_TRUE(testing::FillLeaving(mount + "/filler", storage::kFreeSpaceReserve - (1u << 20)));
  Publish(worker, "u1");
  std::this_thread::sleep_for(1500ms);  // 5 lease lengths
  EXPECT_EQ(agg->Version(), 0u) << "committed on a full disk";
  EXPECT_EQ(broker.stats().aggregators_expired.load(), 0u) << "the aggregator fell silent while it waited";
  std::filesystem::remove(mount + "/filler");
  EXPECT_TRUE(WaitForVersion(*agg, 1)) << "the version was not committed once space returned";
}

// A broker restarted on the same ports and `log_path`, as a restarted broker process would be.
std::unique_ptr<RunningBroker> Restart(std::unique_ptr<RunningBroker>& broker, const std::string& log_path,
                                       const std::function<void()>& while_down = {}) {
  const broker::BrokerEndpoints at = broker->endpoints();
  broker.reset();
  if (while_down) while_down();
  return std::make_unique<RunningBroker>(log_path, [&](broker::BrokerOptions& o) {
    FastLiveness(o);
    o.frontend = at.frontend;
    o.backend = at.backend;
    o.announce = at.announce;
  });
}

// Issue 21: when the broker came back with its log directory lost (an empty log), or with an
// older copy of it (as after a truncated write-ahead log), the aggregator resubscribed from its
// cursor and was served whatever the log held past it: acknowledged updates were never applied,
// with no error. Its cursor records the log's identity and position now; the broker refuses it
// and the aggregator stops, saying what happened and how to recover.
TEST(AggregatorLinkTest, AnAggregatorWhoseLogWasLostOrRolledBackStopsAndSaysWhy) {
  for (const bool lost : {true, false}) {
    SCOPED_TRACE(lost ? "log lost" : "log restored from an older copy");
    testing::TempDir dir;
    const std::string log = dir.path("log"), older = dir.path("log-at-seq-1");
    auto broker = std::make_unique<RunningBroker>(log, FastLiveness);
    auto created = Aggregator::Create(Options(dir.path("store"), *broker));
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    std::unique_ptr<Aggregator> agg = std::move(*created);
    std::promise<Status> ended;
    auto result = ended.get_future();
    std::jthread running([&](std::stop_token stop) { ended.set_value(agg->Run(stop)); });
    {
      Peer worker(broker->endpoints().frontend);
      AwaitAdapter(worker);
      Publish(worker, "u1");
      ASSERT_TRUE(WaitForVersion(*agg, 1));
    }
    // An ordinary restart (the same log) changes nothing; a copy of the log is kept meanwhile.
    broker = Restart(broker, log, [&] { std::filesystem::copy(log, older, std::filesystem::copy_options::recursive); });
    {
      Peer worker(broker->endpoints().frontend);
      AwaitAdapter(worker);
      Publish(worker, "u2");
      ASSERT_TRUE(WaitForVersion(*agg, 2)) << "an ordinary broker restart stopped the aggregator";
    }
    broker = Restart(broker, log, [&] {
      std::filesystem::remove_all(log);
      if (!lost) std::filesystem::rename(older, log);
    });
    ASSERT_EQ(result.wait_for(20s), std::future_status::ready) << "the aggregator went on with a log that lost updates";
    const Status status = result.get();
    EXPECT_EQ(status.code(), lost ? Code::kFailedPrecondition : Code::kDataLoss) << status.ToString();
    EXPECT_NE(status.message().find(lost ? "is not the log the aggregator consumed" : "1 acknowledged update is missing"),
              std::string::npos)
        << status.ToString();
    EXPECT_NE(status.message().find("Restore the original log directory"), std::string::npos) << status.ToString();
    EXPECT_EQ(agg->Version(), 2u);
    EXPECT_GE(broker->stats().positions_refused.load(), 1u);
  }
}

}  // namespace
}  // namespace fedlora::aggregator
