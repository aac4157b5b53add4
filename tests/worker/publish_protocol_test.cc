// The publishing protocol's machine (worker/publish_protocol.h) on made-up times: what the
// worker's BrokerClient and `fedlora loadgen` both do when a reply is late, lost or says "later",
// tested without a broker, a socket or a sleep.
#include "worker/publish_protocol.h"

#include <gtest/gtest.h>

#include <vector>

namespace fedlora::worker {
namespace {

using std::chrono::milliseconds;
using Due = LazyPirate::Due;

const PirateClock::time_point t0{};
const PirateTiming kTiming{milliseconds(1000), milliseconds(200), milliseconds(3000)};

TEST(LazyPirateTest, AnUnansweredRequestIsGivenUpAndSentAgainAfterABackoffThatDoublesToItsCeiling) {
  LazyPirate p(kTiming, t0);
  EXPECT_EQ(p.At(t0), Due::kSend);
  auto t = t0;
  std::vector<int64_t> waits;
  for (int attempt = 0; attempt < 7; ++attempt) {
    ASSERT_EQ(p.At(t), Due::kSend) << attempt;
    p.Sent(t);
    EXPECT_TRUE(p.awaiting());
    EXPECT_EQ(p.At(t + milliseconds(999)), Due::kNothing) << "given up before the timeout";
    t += milliseconds(1000);
    ASSERT_EQ(p.At(t), Due::kGiveUp);
    p.GaveUp(t);
    EXPECT_FALSE(p.awaiting());
    waits.push_back(std::chrono::duration_cast<milliseconds>(p.wake() - t).count());
    EXPECT_EQ(p.At(p.wake() - milliseconds(1)), Due::kNothing) << "sent again before the backoff";
    t = p.wake();
  }
  EXPECT_EQ(waits, (std::vector<int64_t>{200, 400, 800, 1600, 3000, 3000, 3000}));
  EXPECT_EQ(p.give_ups(), 7u);
}

TEST(LazyPirateTest, AReplyStartsTheBackoffOverAndTheNextRequestWaitsOnlyThePause) {
  LazyPirate p(kTiming, t0);
  p.Sent(t0);
  p.GaveUp(t0 + milliseconds(1000));
  p.Sent(p.wake());
  p.GaveUp(p.wake());
  EXPECT_EQ(p.backoff(), milliseconds(800));
  const auto t = p.wake();
  p.Sent(t);
  p.Answered(t + milliseconds(5), milliseconds(50));
  EXPECT_FALSE(p.awaiting());
  EXPECT_EQ(p.backoff(), milliseconds(200));
  EXPECT_EQ(p.At(t + milliseconds(54)), Due::kNothing);
  EXPECT_EQ(p.At(t + milliseconds(55)), Due::kSend);
}

TEST(LazyPirateTest, RetryLaterWaitsTheBrokersDelayWithBoundedJitterAndDoesNotDoubleTheBackoff) {
  LazyPirate p(kTiming, t0);
  p.Sent(t0);
  p.RetryAfter(t0 + milliseconds(10), milliseconds(400), 1.25);
  EXPECT_FALSE(p.awaiting());
  EXPECT_EQ(p.wake(), t0 + milliseconds(510));
  EXPECT_EQ(p.backoff(), milliseconds(200));
  // Jitter outside [1, 1.5] is clamped: never sooner than the broker asked, at most half later.
  p.RetryAfter(t0, milliseconds(400), 0.2);
  EXPECT_EQ(p.wake(), t0 + milliseconds(400));
  p.RetryAfter(t0, milliseconds(400), 9.0);
  EXPECT_EQ(p.wake(), t0 + milliseconds(600));
  for (int i = 0; i < 1000; ++i) {
    const double j = RetryJitter();
    ASSERT_GE(j, 1.0);
    ASSERT_LT(j, 1.5);
  }
}

TEST(LazyPirateTest, ALostRequestThatTheNextRepairsIsSentAgainAtOnceAndANotYetBacksOff) {
  LazyPirate p(kTiming, t0);
  p.Sent(t0);
  p.GaveUp(t0 + milliseconds(1000), /*back_off=*/false);
  EXPECT_EQ(p.At(t0 + milliseconds(1000)), Due::kSend);
  EXPECT_EQ(p.backoff(), milliseconds(200));
  p.Sent(t0 + milliseconds(1000));
  p.BackOff(t0 + milliseconds(1100));  // answered: the adapter has no global yet
  EXPECT_EQ(p.wake(), t0 + milliseconds(1300));
  EXPECT_EQ(p.backoff(), milliseconds(400));
  EXPECT_EQ(p.give_ups(), 1u);
}

const wire::Envelope& Env(const codec::Bytes& bytes) {
  auto env = codec::VerifyEnvelope(codec::AsBytes(bytes));
  EXPECT_TRUE(env.ok()) << env.status().ToString();
  return **env;
}

TEST(PublishReplyTest, EachAnswerToAnUpdateMeansOneThingAndOtherMessagesAreNotAnswers) {
  const codec::Bytes ack = codec::BuildAck("u-1", 42, true);
  auto r = ClassifyPublishReply(Env(ack), "u-1");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->kind, PublishReply::Kind::kAcked);
  EXPECT_EQ(r->seq, 42u);
  EXPECT_TRUE(r->duplicate);
  EXPECT_FALSE(ClassifyPublishReply(Env(ack), "u-2").has_value()) << "a late ack of another update";

  const codec::Bytes final = codec::BuildError(FailedPrecondition("adapter is final"), "u-1");
  r = ClassifyPublishReply(Env(final), "u-1");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->kind, PublishReply::Kind::kFinal);

  const codec::Bytes bad = codec::BuildError(InvalidArgument("rank 9 exceeds the spec"), "u-1");
  r = ClassifyPublishReply(Env(bad), "u-1");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->kind, PublishReply::Kind::kRejected);
  EXPECT_EQ(r->status.code(), Code::kInvalidArgument);

  const codec::Bytes later = codec::BuildError(ResourceExhausted("ingest queue full"), "u-1", 250);
  r = ClassifyPublishReply(Env(later), "u-1");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->kind, PublishReply::Kind::kRetryLater);
  EXPECT_EQ(r->retry_after, milliseconds(250));

  const codec::Bytes announce = codec::BuildAnnounce("default", 3, "h", false);
  EXPECT_FALSE(ClassifyPublishReply(Env(announce), "u-1").has_value());

  // A fetch is answered by a global, an announcement or an error about no update.
  EXPECT_TRUE(AnswersFetch(Env(announce)));
  EXPECT_TRUE(AnswersFetch(Env(codec::BuildError(NotFound("no adapter 'x'")))));
  EXPECT_FALSE(AnswersFetch(Env(bad))) << "an error about an update does not answer a fetch";
  EXPECT_FALSE(AnswersFetch(Env(ack)));
}

}  // namespace
}  // namespace fedlora::worker
