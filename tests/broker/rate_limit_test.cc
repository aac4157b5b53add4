// The broker's per-client rate limit (broker/rate_limit.h) on made-up times.
#include "broker/rate_limit.h"

#include <gtest/gtest.h>

#include <string>

namespace fedlora::broker {
namespace {

using std::chrono::milliseconds;
const RateLimiter::Clock::time_point t0{};

TEST(RateLimiterTest, ABurstOfRateUpdatesThenOneEveryOneOverRateSecondsEachClientOnItsOwn) {
  RateLimiter limit(2.0);
  EXPECT_EQ(limit.Take("a", t0), 0u);
  EXPECT_EQ(limit.Take("a", t0), 0u);
  EXPECT_EQ(limit.Take("a", t0), 500u) << "the third in the same instant waits for a token";
  EXPECT_EQ(limit.Take("b", t0), 0u) << "another client has its own bucket";
  EXPECT_EQ(limit.Take("a", t0 + milliseconds(250)), 250u);
  EXPECT_EQ(limit.Take("a", t0 + milliseconds(500)), 0u);
  // A refused attempt takes nothing: the wait shrinks as time passes, however often it asks.
  EXPECT_EQ(limit.Take("a", t0 + milliseconds(600)), 400u);
  EXPECT_EQ(limit.Take("a", t0 + milliseconds(700)), 300u);
  // An idle client refills to the burst, not beyond.
  EXPECT_EQ(limit.Take("a", t0 + milliseconds(60000)), 0u);
  EXPECT_EQ(limit.Take("a", t0 + milliseconds(60000)), 0u);
  EXPECT_GT(limit.Take("a", t0 + milliseconds(60000)), 0u);
}

TEST(RateLimiterTest, NoLimitAndSlowRates) {
  RateLimiter none(0);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(none.Take("a", t0), 0u);
  EXPECT_EQ(none.clients(), 0u);
  RateLimiter slow(0.5);  // a burst of one, then one every 2 s
  EXPECT_EQ(slow.Take("a", t0), 0u);
  EXPECT_EQ(slow.Take("a", t0), 2000u);
  EXPECT_EQ(slow.Take("a", t0 + milliseconds(1999)), 1u);
  EXPECT_EQ(slow.Take("a", t0 + milliseconds(2000)), 0u);
}

TEST(RateLimiterTest, TheTableKeepsOnlyClientsWhoseBucketsAreNotFull) {
  RateLimiter limit(1.0, /*sweep_at=*/4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(limit.Take("c" + std::to_string(i), t0), 0u);
  EXPECT_EQ(limit.clients(), 4u);
  // A fifth client while the four are still refilling: nobody is swept.
  EXPECT_EQ(limit.Take("c4", t0 + milliseconds(100)), 0u);
  EXPECT_EQ(limit.clients(), 5u);
  // Much later every bucket is full again; the next new client sweeps them all out.
  limit.Take("c5", t0 + milliseconds(60000));
  limit.Take("c6", t0 + milliseconds(60000));
  limit.Take("c7", t0 + milliseconds(60000));
  limit.Take("c8", t0 + milliseconds(60000));
  limit.Take("c9", t0 + milliseconds(60000));
  // c8 found the table at its next sweep size (8) and swept c0..c4, full again; c5..c7 had just
  // spent their tokens and stay, with c8 and c9.
  EXPECT_EQ(limit.clients(), 5u);
}

}  // namespace
}  // namespace fedlora::broker
