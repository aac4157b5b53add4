#include "broker/broker.h"

#include <gtest/gtest.h>

#include <chrono>
#include <limits>
#include <thread>
#include <zmq.hpp>

#include "schema/transport.h"
#include "tests/testing/fixtures.h"

namespace fedlora::broker {
namespace {

using testing::FilledState;
using testing::MakeUpdate;
using testing::SmallSpec;

// A broker on ephemeral loopback ports, served on its own thread.
class RunningBroker {
 public:
  explicit RunningBroker(const std::string& log_path) {
    BrokerOptions o;
    o.frontend = o.backend = o.announce = "tcp://127.0.0.1:*";
    o.log_path = log_path;
    o.sync = false;
    o.max_message_bytes = 1 << 20;
    o.poll_interval = std::chrono::milliseconds(20);
    auto b = Broker::Create(o);
    EXPECT_TRUE(b.ok()) << b.status().ToString();
    broker_ = std::move(*b);
    thread_ = std::jthread([this](std::stop_token stop) { EXPECT_TRUE(broker_->Run(stop).ok()); });
  }
  ~RunningBroker() {
    thread_.request_stop();
    thread_.join();
  }
  const BrokerEndpoints& endpoints() const { return broker_->Endpoints(); }
  const BrokerStats& stats() const { return broker_->Stats(); }

 private:
  std::unique_ptr<Broker> broker_;
  std::jthread thread_;
};

// A raw protocol peer (DEALER) with bounded waits.
class Peer {
 public:
  explicit Peer(const std::string& endpoint) : socket_(ctx_, zmq::socket_type::dealer) {
    transport::Configure(socket_, 1000);
    socket_.connect(endpoint);
  }
  void Send(const codec::Bytes& bytes) { SendRaw({reinterpret_cast<const char*>(bytes.data()), bytes.size()}); }
  void SendRaw(std::string_view bytes) {
    std::vector<zmq::message_t> frames;
    frames.emplace_back(bytes.data(), bytes.size());
    ASSERT_TRUE(transport::SendMultipart(socket_, frames));
  }
  // Every frame of the next message, or empty after 20 s (a loaded CI machine can be slow;
  // a test that times out fails rather than reading a stale reply later).
  std::vector<zmq::message_t> Receive() {
    std::vector<zmq::message_t> frames;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      std::vector<zmq::pollitem_t> items = {{socket_.handle(), 0, ZMQ_POLLIN, 0}};
      zmq::poll(items, std::chrono::milliseconds(50));
      if (transport::TryRecvMultipart(socket_, frames)) return frames;
    }
    return {};
  }
  // The envelope of the next single-frame reply.
  const wire::Envelope* Reply() {
    auto frames = Receive();
    if (frames.empty()) return nullptr;
    last_ = std::move(frames[0]);
    auto env = codec::VerifyEnvelope(transport::View(last_));
    EXPECT_TRUE(env.ok());
    return env.ok() ? *env : nullptr;
  }

 private:
  zmq::context_t ctx_;
  zmq::socket_t socket_;
  zmq::message_t last_;
};

codec::Bytes Global(uint64_t version) {
  codec::GlobalInfo info{"default", version, "hash", 0, wire::Mode::FedBuff, false, {}};
  return codec::BuildGlobal(info, SmallSpec(), FilledState(SmallSpec(), 0));
}

// Registers the adapter the way an aggregator does and waits until the broker knows it.
void Register(RunningBroker& broker, Peer& worker, uint64_t version = 0) {
  Peer agg(broker.endpoints().backend);
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
    codec::UpdateHeader h{id, "c1", "default", 0, 10, 1, 0.5f};
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

}  // namespace
}  // namespace fedlora::broker
