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
#include "tests/testing/samples.h"

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

// Registers the "default" adapter (SmallSpec, version 0) on a broker as an aggregator does, with
// `secret` (a `fedlora broker` without CURVE asks for its store's aggregator.secret), and waits
// until a fetch from the frontend returns it. False after 20 s.
inline bool RegisterSmallAdapter(const std::string& backend, const std::string& frontend, std::string_view secret) {
  Peer registrar(backend, {}, secret);
  codec::GlobalInfo info{"default", 0, "hash", 0, wire::Mode::FedBuff, false, {}};
  registrar.Send(codec::BuildGlobal(info, SmallSpec(), FilledState(SmallSpec(), 0)));
  Peer probe(frontend);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    probe.Send(codec::BuildFetch("default", -1));
    const auto* e = probe.Reply();
    if (e && e->body_type() == wire::Body::GlobalAdapter) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

}  // namespace fedlora::testing
