// A broker served on its own thread and a raw protocol peer, for in-process tests of the
// broker and of the roles that talk to it.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <zmq.hpp>

#include "broker/broker.h"
#include "schema/codec.h"
#include "schema/transport/security.h"
#include "schema/transport/transport.h"

namespace fedlora::testing {

// A broker on ephemeral loopback ports, served on its own thread; `tweak` changes options.
class RunningBroker {
 public:
  explicit RunningBroker(const std::string& log_path, const std::function<void(broker::BrokerOptions&)>& tweak = {}) {
    broker::BrokerOptions o;
    o.frontend = o.backend = o.announce = "tcp://127.0.0.1:*";
    o.log_path = log_path;
    o.sync = false;
    o.max_message_bytes = 1 << 20;
    o.poll_interval = std::chrono::milliseconds(20);
    if (tweak) tweak(o);
    auto b = broker::Broker::Create(o);
    EXPECT_TRUE(b.ok()) << b.status().ToString();
    broker_ = std::move(*b);
    thread_ = std::jthread([this](std::stop_token stop) { EXPECT_TRUE(broker_->Run(stop).ok()); });
  }
  ~RunningBroker() {
    thread_.request_stop();
    thread_.join();
  }
  const broker::BrokerEndpoints& endpoints() const { return broker_->Endpoints(); }
  const broker::BrokerStats& stats() const { return broker_->Stats(); }

 private:
  std::unique_ptr<broker::Broker> broker_;
  std::jthread thread_;
};

// A raw protocol peer (DEALER) with bounded waits.
class Peer {
 public:
  // `secret`: the broker's aggregator secret, presented at the handshake (without CURVE).
  explicit Peer(const std::string& endpoint, const security::ClientKeys& keys = {}, std::string_view secret = {})
      : socket_(ctx_, zmq::socket_type::dealer) {
    transport::Configure(socket_, 1000);
    security::ApplyClient(socket_, keys);
    security::ApplySecretClient(socket_, secret);
    socket_.connect(endpoint);
  }
  void Send(const codec::Bytes& bytes) { SendRaw({reinterpret_cast<const char*>(bytes.data()), bytes.size()}); }
  void SendRaw(std::string_view bytes) {
    std::vector<zmq::message_t> frames;
    frames.emplace_back(bytes.data(), bytes.size());
    ASSERT_TRUE(transport::SendMultipart(socket_, frames));
  }
  // Every frame of the next message, or empty after `wait` (20 s by default: a loaded CI
  // machine can be slow; a test that times out fails rather than reading a stale reply later).
  std::vector<zmq::message_t> Receive(std::chrono::milliseconds wait = std::chrono::seconds(20)) {
    std::vector<zmq::message_t> frames;
    const auto deadline = std::chrono::steady_clock::now() + wait;
    while (std::chrono::steady_clock::now() < deadline) {
      std::vector<zmq::pollitem_t> items = {{socket_.handle(), 0, ZMQ_POLLIN, 0}};
      zmq::poll(items, std::chrono::milliseconds(50));
      if (transport::TryRecvMultipart(socket_, frames)) return frames;
    }
    return {};
  }
  // The envelope of the next single-frame reply.
  const wire::Envelope* Reply(std::chrono::milliseconds wait = std::chrono::seconds(20)) {
    auto frames = Receive(wait);
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

}  // namespace fedlora::testing
