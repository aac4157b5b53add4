#include "broker/broker.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <limits>
#include <set>
#include <thread>
#include <sys/resource.h>
#include <zmq.hpp>

#include "schema/hash.h"
#include "schema/transport/transport.h"
#include "storage/update_log.h"
#include "tests/testing/disk.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/process.h"
#include "tests/testing/raw_peer.h"
#include "tests/testing/running_broker.h"

namespace fedlora::broker {
namespace {

using testing::FilledState;
using testing::Peer;
using testing::RunningBroker;
using testing::MakeUpdate;
using testing::SmallSpec;

codec::Bytes Global(uint64_t version) {
  codec::GlobalInfo info{"default", version, "hash", 0, wire::Mode::FedBuff, false, {}};
  return codec::BuildGlobal(info, SmallSpec(), FilledState(SmallSpec(), 0));
}

// Registers the adapter the way an aggregator does and waits until the broker knows it.
void Register(RunningBroker& broker, Peer& worker, uint64_t version = 0, const security::ClientKeys& agg_keys = {},
              std::string_view secret = {}) {
  Peer agg(broker.endpoints().backend, agg_keys, secret);
  agg.Send(Global(version));
  // The aggregator peer connects asynchronously: poll for up to 10 s (a busy machine can take
  // far longer than 100 quick round trips to finish the connection).
  for (int i = 0; i < 500; ++i) {
    worker.Send(codec::BuildFetch("default", -1));
    const auto* e = worker.Reply();  // exactly one reply per fetch: none may be left over
    ASSERT_TRUE(e) << "no reply to fetch";
    if (e->body_type() == wire::Body::GlobalAdapter && e->body_as_GlobalAdapter()->version() == version) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  FAIL() << "adapter never registered";
}

Status ErrorOf(const wire::Envelope* e) {
  if (!e || e->body_type() != wire::Body::Error) return Status::Ok();
  return codec::StatusFromError(*e->body_as_Error());
}

// Sends `fetches` fetches and `updates` updates and checks that what the broker has taken from
// the connection but not read is only its handshake: every frame's wire bytes are accounted for.
// A wrong framing size would leave 2-42 bytes per frame unaccounted (5-10 KB here).
void ExpectOnlyTheHandshakeUnread(const RunningBroker& broker, Peer& worker, const std::string& client,
                                  uint64_t handshake_at_most) {
  for (int i = 0; i < 200; ++i) {
    worker.Send(codec::BuildFetch("default", -1));
    ASSERT_TRUE(worker.Reply());
  }
  for (int i = 0; i < 50; ++i) {
    worker.Send(MakeUpdate(fmt::format("a{}", i), client, 0, FilledState(SmallSpec(), 0.1f)));
    const auto* e = worker.Reply();
    ASSERT_TRUE(e);
    ASSERT_EQ(e->body_type(), wire::Body::Ack) << ErrorOf(e).ToString();
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(150));  // a few measurements
  const uint64_t unread = broker.stats().connections.unread_bytes.load();
  EXPECT_GT(unread, 64u);  // the greeting at least: the measurement sees the connection
  EXPECT_LE(unread, handshake_at_most);
}

class BrokerTest : public ::testing::Test {
 protected:
  testing::TempDir dir_;
};

TEST_F(BrokerTest, AcknowledgesALoggedUpdateWithItsSequenceNumber) {
  RunningBroker broker(dir_.path("log"));
  Peer worker(broker.endpoints().frontend);
  Register(broker, worker);
  worker.Send(MakeUpdate("u1", "c1", 0, FilledState(SmallSpec(), 0.1f)));
  const auto* e = worker.Reply();
  ASSERT_TRUE(e);
  ASSERT_EQ(e->body_type(), wire::Body::Ack) << ErrorOf(e).ToString();
  EXPECT_EQ(e->body_as_Ack()->seq(), 1u);
  EXPECT_EQ(e->body_as_Ack()->update_id()->str(), "u1");
  EXPECT_FALSE(e->body_as_Ack()->duplicate());
}

TEST_F(BrokerTest, RetriedUpdateGetsTheSameAcknowledgement) {
  RunningBroker broker(dir_.path("log"));
  Peer worker(broker.endpoints().frontend);
  Register(broker, worker);
  const codec::Bytes update = MakeUpdate("u1", "c1", 0, FilledState(SmallSpec(), 0.1f));
  worker.Send(update);
  ASSERT_EQ(worker.Reply()->body_as_Ack()->seq(), 1u);
  worker.Send(update);
  const auto* e = worker.Reply();
  ASSERT_EQ(e->body_type(), wire::Body::Ack);
  EXPECT_EQ(e->body_as_Ack()->seq(), 1u);
  EXPECT_TRUE(e->body_as_Ack()->duplicate());
  EXPECT_EQ(broker.stats().updates_logged.load(), 1u);
}

TEST_F(BrokerTest, RejectsBadInputWithCodeAndReasonAndKeepsServing) {
  RunningBroker broker(dir_.path("log"));
  Peer worker(broker.endpoints().frontend);
  Register(broker, worker);
  struct Case {
    std::string name;
    std::string bytes;
    Code code;
  };
  auto str = [](const codec::Bytes& b) { return std::string(reinterpret_cast<const char*>(b.data()), b.size()); };
  AdapterState wrong_shape = FilledState(SmallSpec(), 0);
  wrong_shape.tensors[1].shape = {2, 4};
  AdapterState nan = FilledState(SmallSpec(), 0);
  nan.tensors[0].values[0] = std::numeric_limits<float>::quiet_NaN();
  const std::string valid = str(MakeUpdate("ok", "c1", 0, FilledState(SmallSpec(), 0)));
  auto encoded = [&](const std::string& id, codec::EncodedTensor t) {
    codec::UpdateHeader h{id, "c1", "default", 0, 10, 1, 0.5f, std::nullopt, 10, {}};
    return str(codec::BuildUpdate(h, {std::move(t)}));
  };
  std::vector<Case> cases = {
      {"unsorted sparse indices", encoded("u", {"head.weight", {2, 4}, wire::Encoding::Sparse, {4, 2}, {1, 2}}),
       Code::kInvalidArgument},
      {"sparse index out of range", encoded("u", {"head.weight", {2, 4}, wire::Encoding::Sparse, {8}, {1}}),
       Code::kInvalidArgument},
      {"rank out of range", encoded("u", {"m.lora_A", {2, 3}, wire::Encoding::RankSlice, {2}, {1, 2, 3}}),
       Code::kInvalidArgument},
      {"random bytes", std::string(64, '\x5a'), Code::kInvalidArgument},
      {"truncated", valid.substr(0, valid.size() / 2), Code::kInvalidArgument},
      {"oversize", std::string(1536 << 10, 'x'), Code::kResourceExhausted},
      {"unknown adapter", str(MakeUpdate("u", "c1", 0, FilledState(SmallSpec(), 0), 10, "nope")), Code::kNotFound},
      {"wrong shape", str(MakeUpdate("u", "c1", 0, wrong_shape)), Code::kInvalidArgument},
      {"nan", str(MakeUpdate("u", "c1", 0, nan)), Code::kInvalidArgument},
      {"future base", str(MakeUpdate("u", "c1", 9, FilledState(SmallSpec(), 0))), Code::kInvalidArgument},
      {"wrong socket", str(codec::BuildCredit("default", 1, 1, false)), Code::kInvalidArgument},
  };
  for (const auto& c : cases) {
    worker.SendRaw(c.bytes);
    const auto* e = worker.Reply();
    ASSERT_TRUE(e) << c.name;
    EXPECT_EQ(ErrorOf(e).code(), c.code) << c.name << ": " << ErrorOf(e).ToString();
    EXPECT_FALSE(ErrorOf(e).message().empty()) << c.name;
  }
  worker.SendRaw(valid);
  const auto* e = worker.Reply();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->body_type(), wire::Body::Ack);
  worker.SendRaw(encoded("sparse-ok", {"head.weight", {2, 4}, wire::Encoding::Sparse, {2, 4}, {1, 2}}));
  e = worker.Reply();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->body_type(), wire::Body::Ack);
  EXPECT_EQ(broker.stats().updates_logged.load(), 2u);
}

TEST_F(BrokerTest, FetchReturnsTheGlobalOrSaysItIsCurrent) {
  RunningBroker broker(dir_.path("log"));
  Peer worker(broker.endpoints().frontend);
  worker.Send(codec::BuildFetch("default", -1));
  EXPECT_EQ(ErrorOf(worker.Reply()).code(), Code::kNotFound);
  Register(broker, worker, 3);
  worker.Send(codec::BuildFetch("default", 3));
  const auto* e = worker.Reply();
  ASSERT_EQ(e->body_type(), wire::Body::Announce);
  EXPECT_EQ(e->body_as_Announce()->version(), 3u);
}

TEST_F(BrokerTest, DispatchRespectsTheCreditWindow) {
  RunningBroker broker(dir_.path("log"));
  Peer worker(broker.endpoints().frontend);
  Register(broker, worker);
  for (int i = 0; i < 5; ++i) {
    worker.Send(MakeUpdate("u" + std::to_string(i), "c1", 0, FilledState(SmallSpec(), 0)));
    ASSERT_EQ(worker.Reply()->body_type(), wire::Body::Ack);
  }
  Peer agg(broker.endpoints().backend);
  agg.Send(codec::BuildCredit("default", 1, 2, true));
  std::vector<uint64_t> got;
  auto frames = agg.Receive();
  ASSERT_FALSE(frames.empty());
  auto env = codec::VerifyEnvelope(transport::View(frames[0]));
  ASSERT_TRUE(env.ok());
  const auto* d = (*env)->body_as_Deliver();
  ASSERT_TRUE(d);
  for (auto s : *d->seqs()) got.push_back(s);
  EXPECT_EQ(got, (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(frames.size(), 3u);  // header + one frame per record
  EXPECT_EQ(d->log_head(), 5u);
  auto rec = codec::VerifyEnvelope(transport::View(frames[1]));
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ((*rec)->body_as_Update()->update_id()->str(), "u0");
  // Nothing beyond the window arrives until more credit is granted.
  agg.Send(codec::BuildCredit("default", 3, 10, false));
  frames = agg.Receive();
  ASSERT_FALSE(frames.empty());
  EXPECT_EQ(frames.size(), 4u);  // records 3, 4, 5
}

TEST_F(BrokerTest, ResubscribeRestartsDeliveryFromTheGivenPosition) {
  RunningBroker broker(dir_.path("log"));
  Peer worker(broker.endpoints().frontend);
  Register(broker, worker);
  for (int i = 0; i < 3; ++i) {
    worker.Send(MakeUpdate("u" + std::to_string(i), "c1", 0, FilledState(SmallSpec(), 0)));
    ASSERT_EQ(worker.Reply()->body_type(), wire::Body::Ack);
  }
  Peer agg(broker.endpoints().backend);
  agg.Send(codec::BuildCredit("default", 1, 10, true));
  ASSERT_EQ(agg.Receive().size(), 4u);
  agg.Send(codec::BuildCredit("default", 2, 10, true));  // as a restarted aggregator would
  ASSERT_EQ(agg.Receive().size(), 3u);                    // records 2 and 3 again
}

// Records still held in memory are sent as received; older ones are read back from the log.
// Either way the aggregator gets every record once, in order, byte for byte as logged.
TEST_F(BrokerTest, DispatchSendsRecentRecordsFromMemoryAndOlderOnesFromTheLog) {
  std::vector<codec::Bytes> sent;
  for (int i = 0; i < 5; ++i) {
    sent.push_back(MakeUpdate("u" + std::to_string(i), "c1", 0, FilledState(SmallSpec(), 0.1f * i)));
  }
  for (const size_t kept : {size_t{0}, size_t{2}, size_t{5}}) {
    SCOPED_TRACE(fmt::format("{} records fit in memory", kept));
    testing::TempDir dir;
    RunningBroker broker(dir.path("log"), [&](BrokerOptions& o) { o.recent_bytes = kept * sent[0].size(); });
    Peer worker(broker.endpoints().frontend);
    Register(broker, worker);
    for (const auto& u : sent) {
      worker.Send(u);
      ASSERT_EQ(worker.Reply()->body_type(), wire::Body::Ack);
    }
    Peer agg(broker.endpoints().backend);
    agg.Send(codec::BuildCredit("default", 1, 10, true));
    std::vector<uint64_t> seqs;
    while (seqs.size() < sent.size()) {
      auto frames = agg.Receive();
      ASSERT_FALSE(frames.empty()) << "delivery stopped after " << seqs.size() << " records";
      const auto* d = (*codec::VerifyEnvelope(transport::View(frames[0])))->body_as_Deliver();
      ASSERT_TRUE(d);
      ASSERT_EQ(frames.size(), d->seqs()->size() + 1);
      for (size_t i = 0; i < d->seqs()->size(); ++i) {
        const uint64_t seq = d->seqs()->Get(i);
        seqs.push_back(seq);
        ASSERT_LE(seq, sent.size());
        EXPECT_EQ(transport::View(frames[i + 1]).size(), sent[seq - 1].size());
        EXPECT_EQ(std::memcmp(frames[i + 1].data(), sent[seq - 1].data(), sent[seq - 1].size()), 0);
      }
    }
    EXPECT_EQ(seqs, (std::vector<uint64_t>{1, 2, 3, 4, 5}));
    EXPECT_EQ(broker.stats().records_read_back.load(), sent.size() - kept);
    // The broker counts a delivery once its send returns, which can be after we received it.
    for (int i = 0; i < 100 && broker.stats().records_delivered.load() < sent.size(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_EQ(broker.stats().records_delivered.load(), sent.size());
  }
}

// Adapters are the unit of sharding: on one broker each has its own sequence, and each
// aggregator receives its own adapter's records and nothing else.
TEST_F(BrokerTest, AdaptersOnOneBrokerHaveTheirOwnLogsAndAggregators) {
  RunningBroker broker(dir_.path("log"));
  Peer worker(broker.endpoints().frontend);
  Register(broker, worker);
  Peer second(broker.endpoints().backend);
  {
    codec::GlobalInfo info{"second", 0, "hash", 0, wire::Mode::FedBuff, false, {}};
    second.Send(codec::BuildGlobal(info, SmallSpec(), FilledState(SmallSpec(), 0)));
  }
  const auto publish = [&](const std::string& id, const std::string& adapter) -> const wire::Envelope* {
    for (int i = 0; i < 500; ++i) {  // until the second adapter's registration has arrived
      worker.Send(MakeUpdate(id, "c1", 0, FilledState(SmallSpec(), 0), 10, adapter));
      const auto* e = worker.Reply();
      if (!e || e->body_type() != wire::Body::Error || ErrorOf(e).code() != Code::kNotFound) return e;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return nullptr;
  };
  for (const auto& [id, adapter] : std::vector<std::pair<std::string, std::string>>{
           {"a1", "default"}, {"b1", "second"}, {"a2", "default"}, {"b2", "second"}, {"b3", "second"}}) {
    const auto* e = publish(id, adapter);
    ASSERT_TRUE(e && e->body_type() == wire::Body::Ack) << id << ": " << ErrorOf(e).ToString();
  }
  Peer first(broker.endpoints().backend);
  const auto delivered = [](Peer& agg, const std::string& adapter) {
    agg.Send(codec::BuildCredit(adapter, 1, 10, true));
    std::vector<std::string> ids;
    auto frames = agg.Receive();
    if (frames.empty()) return ids;
    const auto* d = (*codec::VerifyEnvelope(transport::View(frames[0])))->body_as_Deliver();
    EXPECT_EQ(d->adapter_id()->str(), adapter);
    for (size_t i = 1; i < frames.size(); ++i) {
      ids.push_back((*codec::VerifyEnvelope(transport::View(frames[i])))->body_as_Update()->update_id()->str());
    }
    return ids;
  };
  EXPECT_EQ(delivered(first, "default"), (std::vector<std::string>{"a1", "a2"}));
  EXPECT_EQ(delivered(second, "second"), (std::vector<std::string>{"b1", "b2", "b3"}));
}

TEST_F(BrokerTest, RestartedBrokerServesTheStoredGlobalAndRemembersIds) {
  const codec::Bytes update = MakeUpdate("u1", "c1", 0, FilledState(SmallSpec(), 0.2f));
  {
    RunningBroker broker(dir_.path("log"));
    Peer worker(broker.endpoints().frontend);
    Register(broker, worker, 2);
    worker.Send(update);
    ASSERT_EQ(worker.Reply()->body_type(), wire::Body::Ack);
  }
  RunningBroker broker(dir_.path("log"));
  Peer worker(broker.endpoints().frontend);
  worker.Send(codec::BuildFetch("default", -1));
  const auto* e = worker.Reply();
  ASSERT_TRUE(e);
  ASSERT_EQ(e->body_type(), wire::Body::GlobalAdapter);
  EXPECT_EQ(e->body_as_GlobalAdapter()->version(), 2u);
  worker.Send(update);
  e = worker.Reply();
  ASSERT_EQ(e->body_type(), wire::Body::Ack);
  EXPECT_TRUE(e->body_as_Ack()->duplicate());
  EXPECT_EQ(e->body_as_Ack()->seq(), 1u);
}

std::string Str(const codec::Bytes& b) { return std::string(reinterpret_cast<const char*>(b.data()), b.size()); }

// The classes of bad input the first test does not cover, each answered with its code while
// the broker goes on serving.
TEST_F(BrokerTest, RefusesForeignSchemasNormsAndReusedIdsAndKeepsServing) {
  // FilledState(spec, 0.5) has norm 9.82, FilledState(spec, 1) 12.05.
  RunningBroker broker(dir_.path("log"), [](BrokerOptions& o) { o.max_update_norm = 11.0; });
  Peer worker(broker.endpoints().frontend);
  Register(broker, worker);
  const std::string valid = Str(MakeUpdate("ok", "c1", 0, FilledState(SmallSpec(), 0.5f)));

  std::string wrong_identifier = valid;
  wrong_identifier.replace(4, 4, "XXXX");  // the file identifier follows the root offset
  // Schema version 2 of an envelope that is otherwise fine.
  flatbuffers::FlatBufferBuilder b;
  auto hello = wire::CreateHello(b, wire::Role::Worker, b.CreateString("c1"));
  b.Finish(wire::CreateEnvelope(b, 2, wire::Body::Hello, hello.Union()), "FLR1");
  const std::string newer_schema(reinterpret_cast<const char*>(b.GetBufferPointer()), b.GetSize());
  AdapterState inf = FilledState(SmallSpec(), 0);
  inf.tensors[2].values[3] = std::numeric_limits<float>::infinity();

  struct Case {
    std::string name;
    std::string bytes;
    Code code;
    std::string reason;  // a part of the reason the sender must see
  };
  const std::vector<Case> cases = {
      {"wrong file identifier", wrong_identifier, Code::kInvalidArgument, "identifier"},
      {"newer schema version", newer_schema, Code::kFailedPrecondition, "schema"},
      {"infinite value", Str(MakeUpdate("u", "c1", 0, inf)), Code::kInvalidArgument, "non-finite"},
      {"norm beyond the bound", Str(MakeUpdate("big", "c1", 0, FilledState(SmallSpec(), 1.0f))),
       Code::kInvalidArgument, "norm"},
  };
  for (const auto& c : cases) {
    worker.SendRaw(c.bytes);
    const Status s = ErrorOf(worker.Reply());
    EXPECT_EQ(s.code(), c.code) << c.name << ": " << s.ToString();
    EXPECT_NE(s.message().find(c.reason), std::string::npos) << c.name << ": " << s.ToString();
  }
  worker.SendRaw(valid);
  const auto* e = worker.Reply();
  ASSERT_TRUE(e);
  ASSERT_EQ(e->body_type(), wire::Body::Ack) << ErrorOf(e).ToString();

  // The same update id with other bytes: refused, and the log keeps the first.
  worker.Send(MakeUpdate("ok", "c1", 0, FilledState(SmallSpec(), 0.25f)));
  const Status reused = ErrorOf(worker.Reply());
  EXPECT_EQ(reused.code(), Code::kAlreadyExists) << reused.ToString();
  worker.Send(MakeUpdate("next", "c1", 0, FilledState(SmallSpec(), 0.25f)));
  e = worker.Reply();
  ASSERT_TRUE(e);
  ASSERT_EQ(e->body_type(), wire::Body::Ack) << ErrorOf(e).ToString();
  EXPECT_EQ(e->body_as_Ack()->seq(), 2u);
  EXPECT_EQ(broker.stats().updates_logged.load(), 2u);
}

// With the ingest queue bounded to one update, a burst that outruns the synced log writer is
// partly refused with "retry later"; re-sending what was refused logs every update once, and
// the queue never held more than its bound.
TEST_F(BrokerTest, SaturatedIngestSaysRetryLaterAndStaysWithinItsBound) {
  const std::string one = Str(MakeUpdate("probe", "c1", 0, FilledState(SmallSpec(), 0.1f)));
  RunningBroker broker(dir_.path("log"), [&](BrokerOptions& o) {
    o.sync = true;  // a real fsync per group commit: the writer is the bottleneck
    o.ingest_queue_bytes = one.size();
  });
  Peer worker(broker.endpoints().frontend);
  Register(broker, worker);
  constexpr int kUpdates = 200;
  std::set<std::string> pending;
  for (int i = 0; i < kUpdates; ++i) pending.insert("u" + std::to_string(i));
  uint64_t refused = 0;
  for (int round = 0; round < 200 && !pending.empty(); ++round) {
    for (const auto& id : pending) worker.Send(MakeUpdate(id, "c1", 0, FilledState(SmallSpec(), 0.1f)));
    const size_t sent = pending.size();
    for (size_t i = 0; i < sent; ++i) {
      const auto* e = worker.Reply();
      ASSERT_TRUE(e) << "no reply";
      if (e->body_type() == wire::Body::Ack) {
        pending.erase(e->body_as_Ack()->update_id()->str());
        continue;
      }
      ASSERT_EQ(e->body_type(), wire::Body::Error);
      const auto* err = e->body_as_Error();
      ASSERT_EQ(codec::StatusFromError(*err).code(), Code::kResourceExhausted) << err->reason()->str();
      EXPECT_GT(err->retry_after_ms(), 0u);
      EXPECT_NE(err->reason()->str().find("retry later"), std::string::npos) << err->reason()->str();
      refused++;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(pending.empty()) << pending.size() << " updates never acknowledged";
  EXPECT_GT(refused, 0u) << "the burst never saturated the queue";
  EXPECT_EQ(broker.stats().retry_later.load(), refused);
  EXPECT_EQ(broker.stats().updates_logged.load(), static_cast<uint64_t>(kUpdates));
  EXPECT_EQ(broker.stats().updates_duplicate.load(), 0u);
  EXPECT_LE(broker.stats().ingest_queue_peak.load(), one.size());
}

// Issue 21: without CURVE, any process that reached the aggregator socket could subscribe to an
// adapter no live aggregator held and receive its logged updates. With an aggregator secret, a
// peer without it, or with another one, cannot get a single message through (the handshake is
// refused); a peer presenting it subscribes as before, and workers are not affected.
TEST_F(BrokerTest, WithAnAggregatorSecretOnlyPeersPresentingItReachTheAggregatorSocket) {
  const std::string secret = security::GenerateSecret();
  RunningBroker broker(dir_.path("log"), [&](BrokerOptions& o) { o.aggregator_secret = secret; });
  Peer worker(broker.endpoints().frontend);
  Register(broker, worker, 0, {}, secret);
  worker.Send(MakeUpdate("u0", "c1", 0, FilledState(SmallSpec(), 0)));
  ASSERT_EQ(worker.Reply()->body_type(), wire::Body::Ack);

  Peer stranger(broker.endpoints().backend);
  stranger.Send(codec::BuildCredit("default", 1, 10, true));
  Peer impostor(broker.endpoints().backend, {}, std::string(64, '0'));
  impostor.Send(codec::BuildCredit("default", 1, 10, true));
  impostor.Send(Global(7));
  EXPECT_TRUE(stranger.Receive(std::chrono::seconds(2)).empty()) << "a peer without the secret was served";
  EXPECT_TRUE(impostor.Receive(std::chrono::milliseconds(500)).empty()) << "a wrong secret was served";
  // The wrong secret is refused by the broker's handler (and counted); a peer offering no
  // mechanism at all fails the handshake inside libzmq before the handler is asked.
  EXPECT_EQ(broker.stats().auth_denied.load(), 1u);
  // Nobody replaced the global workers fetch.
  worker.Send(codec::BuildFetch("default", -1));
  const auto* g = worker.Reply();
  ASSERT_TRUE(g && g->body_type() == wire::Body::GlobalAdapter);
  EXPECT_EQ(g->body_as_GlobalAdapter()->version(), 0u);

  Peer holder(broker.endpoints().backend, {}, secret);
  holder.Send(codec::BuildCredit("default", 1, 10, true));
  auto frames = holder.Receive();
  ASSERT_FALSE(frames.empty()) << "the aggregator with the secret got nothing";
  auto env = codec::VerifyEnvelope(transport::View(frames[0]));
  ASSERT_TRUE(env.ok());
  ASSERT_EQ((*env)->body_type(), wire::Body::Deliver);
  EXPECT_EQ((*env)->body_as_Deliver()->seqs()->Get(0), 1u);
}

TEST_F(BrokerTest, RateLimitRefusesTheExcessOfOneClientOnly) {
  RunningBroker broker(dir_.path("log"), [](BrokerOptions& o) { o.max_updates_per_s = 2; });
  Peer worker(broker.endpoints().frontend);
  Register(broker, worker);
  int acked = 0, limited = 0;
  for (int i = 0; i < 6; ++i) {
    worker.Send(MakeUpdate("a" + std::to_string(i), "c1", 0, FilledState(SmallSpec(), 0.1f)));
    const auto* e = worker.Reply();
    ASSERT_TRUE(e);
    if (e->body_type() == wire::Body::Ack) {
      acked++;
      continue;
    }
    const auto* err = e->body_as_Error();
    ASSERT_TRUE(err);
    EXPECT_EQ(codec::StatusFromError(*err).code(), Code::kResourceExhausted);
    EXPECT_NE(err->reason()->str().find("rate limit"), std::string::npos) << err->reason()->str();
    EXPECT_GT(err->retry_after_ms(), 0u);
    limited++;
  }
  // A burst of two (one second's worth), then at most a refill of a few tokens while sending.
  EXPECT_GE(acked, 2);
  EXPECT_GE(limited, 1);
  EXPECT_EQ(broker.stats().rate_limited.load(), static_cast<uint64_t>(limited));
  worker.Send(MakeUpdate("b0", "c2", 0, FilledState(SmallSpec(), 0.1f)));  // another client is unaffected
  EXPECT_EQ(worker.Reply()->body_type(), wire::Body::Ack);
}

TEST_F(BrokerTest, AnswersHeartbeatsWithItsIncarnationAndDropsSilentAggregators) {
  uint64_t first = 0;
  {
    RunningBroker broker(dir_.path("log"), [](BrokerOptions& o) {
      o.heartbeat_interval = std::chrono::milliseconds(50);
    });
    Peer worker(broker.endpoints().frontend);
    Register(broker, worker);
    worker.Send(MakeUpdate("u0", "c1", 0, FilledState(SmallSpec(), 0.1f)));
    ASSERT_EQ(worker.Reply()->body_type(), wire::Body::Ack);
    Peer agg(broker.endpoints().backend);
    agg.Send(codec::BuildHeartbeat(0));
    const auto* e = agg.Reply();
    ASSERT_TRUE(e);
    ASSERT_EQ(e->body_type(), wire::Body::Heartbeat);
    first = e->body_as_Heartbeat()->incarnation();
    EXPECT_NE(first, 0u);
    agg.Send(codec::BuildCredit("default", 1, 10, true));
    ASSERT_EQ(agg.Receive().size(), 2u);  // record 1
    // Silent for well over 3 intervals: the subscription goes, and a new record is not sent.
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    EXPECT_EQ(broker.stats().aggregators_expired.load(), 1u);
    worker.Send(MakeUpdate("u1", "c1", 0, FilledState(SmallSpec(), 0.1f)));
    ASSERT_EQ(worker.Reply()->body_type(), wire::Body::Ack);
    EXPECT_TRUE(agg.Receive(std::chrono::milliseconds(300)).empty());
    // Resubscribing (what a restarted or standby aggregator does) resumes delivery.
    agg.Send(codec::BuildCredit("default", 2, 10, true));
    EXPECT_EQ(agg.Receive().size(), 2u);  // record 2
  }
  RunningBroker restarted(dir_.path("log"));
  Peer agg(restarted.endpoints().backend);
  agg.Send(codec::BuildHeartbeat(first));
  const auto* e = agg.Reply();
  ASSERT_TRUE(e);
  ASSERT_EQ(e->body_type(), wire::Body::Heartbeat);
  EXPECT_NE(e->body_as_Heartbeat()->incarnation(), first) << "a restart must be visible to peers";
}

// The theft of issue 21: any DEALER on the backend sent Credit{resubscribe} and took the
// adapter's subscription from a live aggregator (and its globals were taken as well). While the
// holder is heard from, a newcomer's Credit and global are refused with when to retry; the
// holder keeps every record; once it falls silent, the newcomer's retry takes over.
TEST_F(BrokerTest, AnAliveAggregatorsSubscriptionAndGlobalCannotBeTaken) {
  RunningBroker broker(dir_.path("log"), [](BrokerOptions& o) { o.heartbeat_interval = std::chrono::milliseconds(100); });
  Peer worker(broker.endpoints().frontend);
  Register(broker, worker, 3);
  worker.Send(MakeUpdate("u0", "c1", 0, FilledState(SmallSpec(), 0.1f)));
  ASSERT_EQ(worker.Reply()->body_type(), wire::Body::Ack);
  Peer agg(broker.endpoints().backend);
  agg.Send(codec::BuildCredit("default", 1, 10, true));
  ASSERT_EQ(agg.Receive().size(), 2u);  // record 1

  Peer thief(broker.endpoints().backend);
  thief.Send(codec::BuildCredit("default", 1, 50, true));
  const Status refused = ErrorOf(thief.Reply());
  EXPECT_EQ(refused.code(), Code::kUnavailable) << refused.ToString();
  EXPECT_NE(refused.message().find("held by another aggregator"), std::string::npos) << refused.ToString();
  thief.Send(Global(99));
  EXPECT_EQ(ErrorOf(thief.Reply()).code(), Code::kUnavailable);
  EXPECT_EQ(broker.stats().subscriptions_refused.load(), 2u);
  worker.Send(codec::BuildFetch("default", -1));
  const auto* fetched = worker.Reply();
  ASSERT_TRUE(fetched);
  ASSERT_EQ(fetched->body_type(), wire::Body::GlobalAdapter);
  EXPECT_EQ(fetched->body_as_GlobalAdapter()->version(), 3u) << "the thief's global replaced the real one";

  // The holder heartbeats (as an aggregator does every interval) for 5 lease lengths: each new
  // record goes to it, none to the thief, whose retries are refused.
  for (int i = 1; i <= 5; ++i) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
    while (std::chrono::steady_clock::now() < until) {
      agg.Send(codec::BuildHeartbeat(0));
      ASSERT_EQ(agg.Reply()->body_type(), wire::Body::Heartbeat);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    thief.Send(codec::BuildCredit("default", 1, 50, true));
    EXPECT_EQ(ErrorOf(thief.Reply()).code(), Code::kUnavailable) << "retry " << i;
    worker.Send(MakeUpdate(fmt::format("u{}", i), "c1", 0, FilledState(SmallSpec(), 0.1f)));
    ASSERT_EQ(worker.Reply()->body_type(), wire::Body::Ack);
    agg.Send(codec::BuildCredit("default", static_cast<uint64_t>(i) + 1, 10, false));
    auto frames = agg.Receive();
    ASSERT_EQ(frames.size(), 2u) << "record " << i + 1 << " did not reach its aggregator";
  }
  EXPECT_TRUE(thief.Receive(std::chrono::milliseconds(200)).empty()) << "a refused peer received records";

  // Failover: the holder falls silent past the lease; the next subscriber gets the log.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  Peer standby(broker.endpoints().backend);
  standby.Send(codec::BuildCredit("default", 1, 10, true));
  auto frames = standby.Receive();
  ASSERT_GE(frames.size(), 2u) << "the lease did not lapse with its holder's silence";
  auto env = codec::VerifyEnvelope(transport::View(frames[0]));
  ASSERT_TRUE(env.ok());
  ASSERT_EQ((*env)->body_type(), wire::Body::Deliver);
  EXPECT_EQ((*env)->body_as_Deliver()->seqs()->Get(0), 1u);
}

// Issue 21: an aggregator whose position is not in the broker's log (the log was lost or
// replaced, its tail truncated, or records lost and their sequence numbers reissued) used to be
// served from that position, skipping acknowledged updates silently. Its Credit is refused now,
// with a reason that says what happened, and a Credit whose position the log holds is served.
TEST_F(BrokerTest, ACreditWhosePositionIsNotInThisLogIsRefusedWithTheReason) {
  RunningBroker broker(dir_.path("log"));
  Peer worker(broker.endpoints().frontend);
  Register(broker, worker);
  for (int i = 0; i < 3; ++i) {
    worker.Send(MakeUpdate("u" + std::to_string(i), "c1", 0, FilledState(SmallSpec(), 0.1f * i)));
    ASSERT_EQ(worker.Reply()->body_type(), wire::Body::Ack);
  }
  Peer agg(broker.endpoints().backend);
  agg.Send(codec::BuildCredit("default", 1, 10, true));
  std::string log_id, hash_of_2;
  for (uint64_t seen = 0; seen < 3;) {
    auto frames = agg.Receive();
    ASSERT_FALSE(frames.empty()) << "delivery stopped after " << seen << " records";
    const auto* d = (*codec::VerifyEnvelope(transport::View(frames[0])))->body_as_Deliver();
    ASSERT_TRUE(d && d->log_id());
    log_id = d->log_id()->str();
    for (size_t i = 0; i < d->seqs()->size(); ++i) {
      if (d->seqs()->Get(i) == 2) hash_of_2 = ToHex(HashBytes(transport::View(frames[i + 1])));
      seen = d->seqs()->Get(i);
    }
  }
  ASSERT_EQ(log_id.size(), 32u);
  ASSERT_FALSE(hash_of_2.empty());
  const auto refusal = [&](const codec::Bytes& credit) {
    agg.Send(credit);
    return ErrorOf(agg.Reply());
  };
  Status s = refusal(codec::BuildCredit("default", 3, 10, true, std::string(32, '0'), hash_of_2));
  EXPECT_EQ(s.code(), Code::kFailedPrecondition) << s.ToString();
  EXPECT_NE(s.message().find("is not the log the aggregator consumed"), std::string::npos) << s.ToString();
  s = refusal(codec::BuildCredit("default", 6, 10, true, log_id, {}));
  EXPECT_EQ(s.code(), Code::kDataLoss) << s.ToString();
  EXPECT_NE(s.message().find("ends at seq 3: 2 acknowledged updates are missing"), std::string::npos) << s.ToString();
  s = refusal(codec::BuildCredit("default", 3, 10, true, log_id, std::string(32, 'f')));
  EXPECT_EQ(s.code(), Code::kDataLoss) << s.ToString();
  EXPECT_NE(s.message().find("is not the update the aggregator consumed there"), std::string::npos) << s.ToString();
  EXPECT_EQ(broker.stats().positions_refused.load(), 3u);

  // The right log, the right record: delivery resumes after it.
  agg.Send(codec::BuildCredit("default", 3, 10, true, log_id, hash_of_2));
  auto frames = agg.Receive();
  ASSERT_EQ(frames.size(), 2u);
  const auto* d = (*codec::VerifyEnvelope(transport::View(frames[0])))->body_as_Deliver();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->seqs()->Get(0), 3u);
}

// Issue 21: under Debian's usual soft limit of 1,024 open files, 1,100 idle connections left
// the log without descriptors. A broker takes what the hard limit allows.
TEST_F(BrokerTest, RaisesTheOpenFileLimitToTheHardLimit) {
  rlimit limit{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &limit), 0);
  if (limit.rlim_max > 512) {
    limit.rlim_cur = 512;
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &limit), 0);
  }
  RunningBroker broker(dir_.path("log"));
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &limit), 0);
  EXPECT_EQ(limit.rlim_cur, limit.rlim_max);
  EXPECT_EQ(RaiseOpenFileLimit(), limit.rlim_max);
}

// Found by ops/bench/pipeline: while a vanished aggregator's lease ran out (3 s), every turn of
// the broker's loop read its records back from the log and dropped them when the send failed:
// 53 reads of 12 records of 12.8 MiB. Now a failed send waits until the owner is heard from.
TEST_F(BrokerTest, RecordsForAVanishedAggregatorAreNotReadBackOverAndOver) {
  RunningBroker broker(dir_.path("log"), [](BrokerOptions& o) { o.recent_bytes = 0; });  // every record from the log
  Peer worker(broker.endpoints().frontend);
  Register(broker, worker);
  {
    Peer agg(broker.endpoints().backend);
    agg.Send(codec::BuildCredit("default", 1, 100, /*resubscribe=*/true));
    worker.Send(MakeUpdate("u0", "c1", 0, FilledState(SmallSpec(), 0.1f)));
    ASSERT_EQ(worker.Reply()->body_type(), wire::Body::Ack);
    ASSERT_FALSE(agg.Receive().empty()) << "the subscribed aggregator got no Deliver";
  }  // gone, its lease still running
  for (int i = 1; i <= 5; ++i) {
    worker.Send(MakeUpdate("u" + std::to_string(i), "c1", 0, FilledState(SmallSpec(), 0.1f)));
    ASSERT_EQ(worker.Reply()->body_type(), wire::Body::Ack);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(600));  // about 30 turns of the loop
  EXPECT_LE(broker.stats().records_read_back.load(), 6u);
}

// Issue 21: libzmq keeps every frame of a message until its last one arrives, so a peer whose
// frames all say "more" grew the broker for as long as it sent (1.5 GiB in the report). Now the
// connection is closed once it holds more unread than one message may: 2 x 1 MiB + 1 MiB here.
TEST_F(BrokerTest, AnEndlessMessageIsCutOffAndTheBrokerKeepsServing) {
  RunningBroker broker(dir_.path("log"));
  Peer worker(broker.endpoints().frontend);
  Register(broker, worker);
  testing::RawPeer endless(broker.endpoints().frontend);
  ASSERT_TRUE(endless.connected());
  constexpr uint64_t kGiveUp = 512u << 20;
  bool closed = false;
  while (!closed && endless.sent() < kGiveUp) {
    if (!endless.Header(4096, /*more=*/true) || !endless.Body(4096)) closed = endless.ClosedByPeer(200);
  }
  EXPECT_TRUE(closed || endless.ClosedByPeer(5000)) << "still open after " << endless.sent() << " bytes";
  EXPECT_LT(endless.sent(), kGiveUp);
  EXPECT_EQ(broker.stats().connections.closed_unread.load(), 1u);
  std::printf("an endless message was cut off after %.1f MiB sent\n", endless.sent() / 1048576.0);
  worker.Send(MakeUpdate("after", "c1", 0, FilledState(SmallSpec(), 0.1f)));
  const auto* e = worker.Reply();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->body_type(), wire::Body::Ack) << ErrorOf(e).ToString();
}

TEST_F(BrokerTest, EveryReadFrameIsAccountedForWithItsFraming) {
  RunningBroker broker(dir_.path("log"));
  Peer worker(broker.endpoints().frontend);
  Register(broker, worker);
  ExpectOnlyTheHandshakeUnread(broker, worker, "c1", 512);
}

// Issue 21: a dozen connections each stalled one byte short of a large frame held 1.5 GiB. Each
// stalled frame here is within one connection's bound (1.5 of 3 MiB), so a slow upload is let
// be; together they pass the broker's 4 MiB, and connections are closed, the fullest first, until
// the rest fit: of four, two stay.
TEST_F(BrokerTest, StalledMessagesTogetherStayWithinTheBrokersBound) {
  RunningBroker broker(dir_.path("log"), [](BrokerOptions& o) { o.max_unread_bytes = 4u << 20; });
  std::vector<std::unique_ptr<testing::RawPeer>> stalled;
  for (int i = 0; i < 4; ++i) {
    stalled.push_back(std::make_unique<testing::RawPeer>(broker.endpoints().frontend));
    ASSERT_TRUE(stalled.back()->Header(2u << 20, /*more=*/false));
    ASSERT_TRUE(stalled.back()->Body(3u << 19));
  }
  ASSERT_TRUE(testing::WaitUntil([&] { return broker.stats().connections.closed_unread.load() >= 2; },
                                 std::chrono::seconds(10)));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // several measurements more
  EXPECT_EQ(broker.stats().connections.closed_unread.load(), 2u);
  size_t closed = 0;
  for (auto& peer : stalled) closed += peer->ClosedByPeer(500) ? 1 : 0;
  EXPECT_EQ(closed, 2u);
  // What the two left hold stays held: 1.5 MiB each and their handshakes.
  EXPECT_LE(broker.stats().connections.unread_bytes.load(), 4u << 20);
  EXPECT_GE(broker.stats().connections.unread_bytes.load(), 3u << 20);
}

// Issue 21: connections were not capped. Past the cap a connection is closed as soon as it is
// accepted, those already in are served, and new ones get in once others close.
TEST_F(BrokerTest, ConnectionsPastTheCapAreClosedAndTheCapRecovers) {
  RunningBroker broker(dir_.path("log"), [](BrokerOptions& o) { o.max_connections = 8; });
  Peer worker(broker.endpoints().frontend);
  Register(broker, worker);
  ASSERT_TRUE(testing::WaitUntil([&] { return broker.stats().connections.open.load() == 1; },
                                 std::chrono::seconds(10)));  // the worker; Register's aggregator left
  std::vector<std::unique_ptr<testing::RawPeer>> flood;
  for (int i = 0; i < 27; ++i) flood.push_back(std::make_unique<testing::RawPeer>(broker.endpoints().frontend, false));
  ASSERT_TRUE(testing::WaitUntil([&] { return broker.stats().connections.refused.load() >= 20; },
                                 std::chrono::seconds(10)));
  size_t closed = 0;
  for (auto& peer : flood) closed += peer->ClosedByPeer(500) ? 1 : 0;
  EXPECT_EQ(closed, 20u);
  EXPECT_EQ(broker.stats().connections.open.load(), 8u);
  worker.Send(MakeUpdate("during", "c1", 0, FilledState(SmallSpec(), 0.1f)));
  const auto* e = worker.Reply();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->body_type(), wire::Body::Ack) << ErrorOf(e).ToString();

  flood.clear();
  ASSERT_TRUE(testing::WaitUntil([&] { return broker.stats().connections.open.load() == 1; },
                                 std::chrono::seconds(10)));
  Peer later(broker.endpoints().frontend);
  later.Send(MakeUpdate("after", "c2", 0, FilledState(SmallSpec(), 0.1f)));
  e = later.Reply();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->body_type(), wire::Body::Ack) << ErrorOf(e).ToString();
}

// Issue 21: a full disk aborted the broker in some runs (an assertion inside RocksDB after a WAL
// append met it). Now publishers are told RESOURCE_EXHAUSTED with a time to retry, fetches and
// heartbeats are still answered, and updates are logged again once space returns; three times
// over. The log lives on a tmpfs the test mounts (CI runs as root).
TEST_F(BrokerTest, AFullDiskIsAnsweredAndTheBrokerLogsAgainWhenSpaceReturns) {
  const std::string mount = dir_.path("tmpfs");
  testing::Tmpfs tmpfs(mount, "128m");
  ASSERT_TRUE(tmpfs.mounted()) << "this test mounts a tmpfs and needs root, as CI has: " << tmpfs.why_not();
  RunningBroker broker(mount + "/log");
  Peer worker(broker.endpoints().frontend);
  Register(broker, worker);
  Peer agg(broker.endpoints().backend);
  uint64_t n = 0;
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(::testing::Message() << "round " << round);
    // Less than the reserve left (the log's small updates land in WAL space RocksDB has
    // preallocated, so publishing alone would take long to use up the rest).
    ASSERT_TRUE(testing::FillLeaving(mount + "/filler", storage::kFreeSpaceReserve - (1u << 20)));
    Status refused;
    for (int i = 0; i < 5000 && refused.ok(); ++i) {
      worker.Send(MakeUpdate(fmt::format("u{}", ++n), "c1", 0, FilledState(SmallSpec(), 0.1f)));
      const auto* e = worker.Reply();
      ASSERT_TRUE(e);
      if (e->body_type() == wire::Body::Error) {
        refused = ErrorOf(e);
        EXPECT_GT(e->body_as_Error()->retry_after_ms(), 0u);
      }
    }
    ASSERT_EQ(refused.code(), Code::kResourceExhausted) << refused.ToString();
    EXPECT_NE(refused.message().find("is full"), std::string::npos) << refused.ToString();
    worker.Send(codec::BuildFetch("default", -1));
    ASSERT_TRUE(worker.Reply() != nullptr) << "a fetch went unanswered while the disk was full";
    agg.Send(codec::BuildHeartbeat(0));
    const auto* beat = agg.Reply();
    ASSERT_TRUE(beat);
    EXPECT_EQ(beat->body_type(), wire::Body::Heartbeat);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // RocksDB aborted within about a second
    std::filesystem::remove(mount + "/filler");
    bool logged = false;
    for (int attempt = 0; attempt < 100 && !logged; ++attempt) {
      worker.Send(MakeUpdate(fmt::format("u{}", ++n), "c1", 0, FilledState(SmallSpec(), 0.1f)));
      const auto* e = worker.Reply();
      ASSERT_TRUE(e);
      logged = e->body_type() == wire::Body::Ack;
      if (!logged) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_TRUE(logged) << "the broker did not log again once space returned";
  }
}

TEST_F(BrokerTest, PlaintextBeyondLoopbackNeedsCurveOrInsecure) {
  BrokerOptions o;
  o.frontend = "tcp://0.0.0.0:*";
  o.backend = o.announce = "tcp://127.0.0.1:*";
  o.log_path = dir_.path("log");
  o.sync = false;
  auto refused = Broker::Create(o);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("--curve-secret"), std::string::npos) << refused.status().ToString();
  o.insecure = true;
  EXPECT_TRUE(Broker::Create(o).ok());
  EXPECT_TRUE(security::IsLoopback("tcp://localhost:5555"));
  EXPECT_TRUE(security::IsLoopback("tcp://[::1]:5555"));
  EXPECT_TRUE(security::IsLoopback("ipc:///tmp/x"));
  EXPECT_FALSE(security::IsLoopback("tcp://*:5555"));
  EXPECT_FALSE(security::IsLoopback("tcp://10.0.0.1:5555"));
}

class CurveTest : public BrokerTest {
 protected:
  void SetUp() override {
    for (auto* k : {&server_, &listed_, &unlisted_, &aggregator_}) {
      auto kp = security::Generate();
      ASSERT_TRUE(kp.ok()) << kp.status().ToString();
      *k = *kp;
    }
    const std::string allow = dir_.path("allow.txt");
    std::ofstream(allow) << "# role name key\nworker w1 " << listed_.public_key << "\naggregator agg "
                         << aggregator_.public_key << "\n";
    auto list = security::ReadAllowlist(allow);
    ASSERT_TRUE(list.ok()) << list.status().ToString();
    curve_ = BrokerOptions::Curve{server_, *list};
  }
  security::ClientKeys Keys(const security::KeyPair& own) const { return {server_.public_key, own}; }

  security::KeyPair server_, listed_, unlisted_, aggregator_;
  BrokerOptions::Curve curve_;
};

TEST_F(CurveTest, OnlyListedKeysGetInAndAWorkerPublishesOnlyAsItself) {
  RunningBroker broker(dir_.path("log"), [&](BrokerOptions& o) { o.curve = curve_; });
  Peer listed(broker.endpoints().frontend, Keys(listed_));
  Register(broker, listed, 0, Keys(aggregator_));
  listed.Send(MakeUpdate("u1", "w1", 0, FilledState(SmallSpec(), 0.1f)));
  const auto* e = listed.Reply();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->body_type(), wire::Body::Ack) << ErrorOf(e).ToString();

  // Authenticated as w1, publishing as someone else.
  listed.Send(MakeUpdate("u2", "w2", 0, FilledState(SmallSpec(), 0.1f)));
  const Status spoof = ErrorOf(listed.Reply());
  EXPECT_EQ(spoof.code(), Code::kPermissionDenied) << spoof.ToString();

  // An unlisted key and a plaintext client never get an answer, and nothing they send is logged.
  Peer unlisted(broker.endpoints().frontend, Keys(unlisted_));
  unlisted.Send(MakeUpdate("x1", "w1", 0, FilledState(SmallSpec(), 0.1f)));
  EXPECT_EQ(unlisted.Reply(std::chrono::milliseconds(1500)), nullptr);
  Peer plaintext(broker.endpoints().frontend);
  plaintext.Send(MakeUpdate("x2", "w1", 0, FilledState(SmallSpec(), 0.1f)));
  EXPECT_EQ(plaintext.Reply(std::chrono::milliseconds(1500)), nullptr);
  // A worker key cannot act as an aggregator.
  Peer wrong_role(broker.endpoints().backend, Keys(listed_));
  wrong_role.Send(codec::BuildHeartbeat(0));
  EXPECT_EQ(wrong_role.Reply(std::chrono::milliseconds(1500)), nullptr);

  EXPECT_GE(broker.stats().auth_denied.load(), 2u);  // the unlisted key and the wrong role
  EXPECT_EQ(broker.stats().updates_logged.load(), 1u);
  // The listed worker is still served.
  listed.Send(MakeUpdate("u3", "w1", 0, FilledState(SmallSpec(), 0.1f)));
  e = listed.Reply();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->body_type(), wire::Body::Ack) << ErrorOf(e).ToString();
}

// CURVE boxes every frame in a MESSAGE command (33 bytes more than the frame, and its header).
TEST_F(CurveTest, EveryReadFrameIsAccountedForWithItsFraming) {
  RunningBroker broker(dir_.path("log"), [&](BrokerOptions& o) { o.curve = curve_; });
  Peer listed(broker.endpoints().frontend, Keys(listed_));
  Register(broker, listed, 0, Keys(aggregator_));
  ExpectOnlyTheHandshakeUnread(broker, listed, "w1", 2048);
}

TEST(SecurityTest, KeyFilesRoundTripAndBadAllowlistsNameTheLine) {
  testing::TempDir dir;
  auto keys = security::Generate();
  ASSERT_TRUE(keys.ok());
  const std::string prefix = dir.path("w1");
  ASSERT_TRUE(security::WriteKeyFiles(prefix, "w1", *keys).ok());
  EXPECT_EQ(security::WriteKeyFiles(prefix, "w1", *keys).code(), Code::kAlreadyExists);
  auto pair = security::ReadKeyPair(prefix + ".key");
  ASSERT_TRUE(pair.ok()) << pair.status().ToString();
  EXPECT_EQ(pair->public_key, keys->public_key);
  EXPECT_EQ(pair->secret_key, keys->secret_key);
  auto pub = security::ReadPublicKey(prefix + ".pub");
  ASSERT_TRUE(pub.ok());
  EXPECT_EQ(*pub, keys->public_key);
  EXPECT_FALSE(security::ReadKeyPair(prefix + ".pub").ok()) << "a public file holds no secret";
  EXPECT_FALSE(security::LoadClientKeys(prefix + ".pub", "").ok()) << "--broker-key without --key";

  const std::string bad = dir.path("allow.txt");
  std::ofstream(bad) << "worker w1 " << keys->public_key << "\nadmin root " << keys->public_key << "\n";
  auto list = security::ReadAllowlist(bad);
  ASSERT_FALSE(list.ok());
  EXPECT_NE(list.status().message().find(":2:"), std::string::npos) << list.status().ToString();
  std::ofstream(bad) << "worker w1 " << keys->public_key << "\nworker w2 " << keys->public_key << "\n";
  list = security::ReadAllowlist(bad);
  ASSERT_FALSE(list.ok());
  EXPECT_NE(list.status().message().find("already listed"), std::string::npos) << list.status().ToString();
  std::ofstream(bad) << "worker w1 not-a-key\n";
  EXPECT_FALSE(security::ReadAllowlist(bad).ok());
}

}  // namespace
}  // namespace fedlora::broker
