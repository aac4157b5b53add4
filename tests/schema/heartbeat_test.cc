// Both halves of the broker-aggregator heartbeats (schema/transport/heartbeat.h) on made-up
// times: the broker's leases and the aggregator's watch of the broker, without sleeping.
#include "schema/transport/heartbeat.h"

#include <gtest/gtest.h>

#include <vector>

namespace fedlora::transport {
namespace {

using std::chrono::milliseconds;
const HeartbeatClock::time_point t0{};

TEST(LeasesTest, AHolderHeardFromWithinTheLeaseKeepsItsAdapterAgainstEveryoneElse) {
  Leases leases(milliseconds(3000));
  leases.Heard("agg-1", t0);
  EXPECT_EQ(leases.HeldAgainst("agg-1", "thief", t0 + milliseconds(1000)), milliseconds(2001));
  EXPECT_EQ(leases.HeldAgainst("agg-1", "thief", t0 + milliseconds(3000)), milliseconds(1)) << "lapses after, not at";
  EXPECT_FALSE(leases.HeldAgainst("agg-1", "thief", t0 + milliseconds(3001)).has_value());
  EXPECT_FALSE(leases.HeldAgainst("agg-1", "agg-1", t0 + milliseconds(10))) << "the holder itself is never refused";
  EXPECT_FALSE(leases.HeldAgainst("", "anyone", t0)) << "nobody holds it";
  EXPECT_FALSE(leases.HeldAgainst("never-heard", "thief", t0));
  // Every message renews the lease.
  leases.Heard("agg-1", t0 + milliseconds(2900));
  EXPECT_TRUE(leases.Alive("agg-1", t0 + milliseconds(5900)));
  EXPECT_FALSE(leases.Alive("agg-1", t0 + milliseconds(5901)));
}

TEST(LeasesTest, SilentPeersAreForgottenAndLivePeersKept) {
  Leases leases(milliseconds(3000));
  leases.Heard("old", t0);
  leases.Heard("live", t0 + milliseconds(2000));
  leases.ForgetSilent(t0 + milliseconds(4000));
  EXPECT_EQ(leases.peers(), 1u);
  EXPECT_FALSE(leases.Alive("old", t0 + milliseconds(4000)));
  EXPECT_TRUE(leases.Alive("live", t0 + milliseconds(4000)));
}

TEST(BrokerWatchTest, HeartbeatsAfterAnIntervalWithoutSendingAndOnlyThen) {
  BrokerWatch watch(milliseconds(1000), 3, t0);
  EXPECT_EQ(watch.At(t0 + milliseconds(999)), BrokerWatch::Due::kNothing);
  EXPECT_EQ(watch.At(t0 + milliseconds(1000)), BrokerWatch::Due::kHeartbeat);
  watch.Sent(t0 + milliseconds(1000));
  watch.Heard(t0 + milliseconds(1001));
  EXPECT_EQ(watch.At(t0 + milliseconds(1999)), BrokerWatch::Due::kNothing);
  // Any message sent (a credit, a global) counts as a heartbeat.
  watch.Sent(t0 + milliseconds(1500));
  EXPECT_EQ(watch.At(t0 + milliseconds(2400)), BrokerWatch::Due::kNothing);
  EXPECT_TRUE(watch.HeartbeatDue(t0 + milliseconds(2500)));
}

TEST(BrokerWatchTest, ASilentBrokerIsReconnectedToWithAWaitThatDoublesToEightIntervalsAndResetsWhenHeard) {
  BrokerWatch watch(milliseconds(1000), 3, t0);
  auto t = t0;
  std::vector<int64_t> limits;
  for (int i = 0; i < 4; ++i) {
    const auto limit = watch.limit();
    limits.push_back(std::chrono::duration_cast<milliseconds>(limit).count());
    watch.Sent(t + limit);  // heartbeats go out meanwhile; the broker answers none
    EXPECT_NE(watch.At(t + limit), BrokerWatch::Due::kReconnect) << "reconnected before the limit";
    t += limit + milliseconds(1);
    ASSERT_EQ(watch.At(t), BrokerWatch::Due::kReconnect) << i;
    watch.Reconnected(t);
  }
  EXPECT_EQ(limits, (std::vector<int64_t>{3000, 6000, 8000, 8000}));
  watch.Heard(t + milliseconds(10));
  EXPECT_EQ(watch.limit(), milliseconds(3000));
  // A busy aggregator reads nothing, yet its heartbeats are due on time.
  watch.Sent(t);
  EXPECT_EQ(watch.At(t + milliseconds(9000)), BrokerWatch::Due::kReconnect);
  EXPECT_TRUE(watch.HeartbeatDue(t + milliseconds(1000)));
}

}  // namespace
}  // namespace fedlora::transport
