// The broker is the hub that workers and aggregators talk to over ZeroMQ.
//
//  - ingest (ROUTER `frontend`): workers publish updates. Each is verified, validated against
//    its adapter's spec, appended to the durable update log, and only then acknowledged.
//    Arrivals are drained in batches and written with one synced write (group commit).
//    Rejected messages get an Error reply with a code and a reason; bad input never stops
//    the broker. Workers also fetch the current global here.
//  - dispatch (ROUTER `backend`): aggregators subscribe with Credit messages and receive log
//    records in sequence order, never more than the credit window allows; they send each
//    committed global back, which the broker keeps and serves.
//  - announce (PUB `announce`): every new global version is announced to workers.
//
// docs/protocol.md describes every message. The broker has no LibTorch and one thread: Run()
// owns all sockets. Thread safety: Stats() may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <stop_token>
#include <string>

#include "schema/status.h"

namespace fedlora::broker {

struct BrokerOptions {
  std::string frontend = "tcp://127.0.0.1:5555";  // workers (ROUTER); "tcp://127.0.0.1:*" picks a port
  std::string backend = "tcp://127.0.0.1:5556";   // aggregators (ROUTER)
  std::string announce = "tcp://127.0.0.1:5557";  // new versions (PUB)
  std::string log_path = "fedlora-data/log";      // update log directory
  bool sync = true;                     // fsync each group commit; false only for tests
  // Larger messages get a kResourceExhausted error before decoding; beyond twice this, ZeroMQ
  // drops the connection before allocating the message at all.
  size_t max_message_bytes = 64u << 20;
  size_t max_batch = 256;               // most updates in one group commit
  size_t max_batch_bytes = 64u << 20;   // most bytes in one group commit
  size_t deliver_max_bytes = 8u << 20;  // most record bytes in one Deliver message
  int hwm = 1000;                       // ZeroMQ high-water mark of every socket
  std::chrono::milliseconds poll_interval{100};
};

struct BrokerStats {
  std::atomic<uint64_t> updates_logged{0};
  std::atomic<uint64_t> updates_duplicate{0};
  std::atomic<uint64_t> messages_rejected{0};  // answered with an Error
  std::atomic<uint64_t> bytes_logged{0};
  std::atomic<uint64_t> group_commits{0};
  std::atomic<uint64_t> fetches{0};
  std::atomic<uint64_t> records_delivered{0};
};

struct BrokerEndpoints {
  std::string frontend;
  std::string backend;
  std::string announce;
};

class Broker {
 public:
  // Opens the update log and binds the sockets. Errors: kUnavailable (address in use, store
  // cannot be opened), kInvalidArgument (bad endpoint).
  static Result<std::unique_ptr<Broker>> Create(const BrokerOptions& options);
  virtual ~Broker() = default;

  // The endpoints actually bound (ports resolved).
  virtual const BrokerEndpoints& Endpoints() const = 0;
  // Serves until `stop` is requested. Returns an error only for a fault that makes serving
  // impossible (the log cannot be read); bad input never ends it.
  virtual Status Run(std::stop_token stop) = 0;
  virtual const BrokerStats& Stats() const = 0;
};

}  // namespace fedlora::broker
