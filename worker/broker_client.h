// BrokerClient is the publishing side of the wire protocol (docs/protocol.md), without any
// training: fetch the current global, publish an update until the broker acknowledges it, wait
// for announcements. The training Worker uses it, and so do load generators and fault tests
// that publish pre-made updates.
//
// Requests follow the Lazy Pirate pattern of worker/publish_protocol.h (which `fedlora loadgen`
// drives too): a request without a reply within request_timeout is sent again on a fresh socket
// (so a late reply to an abandoned attempt is never taken for the current one), with exponential
// backoff up to max_backoff. An update is always re-sent with the same update id, which the
// broker's log turns into exactly one record, however many times a broker restart or a lost
// reply makes us send it.
// LibTorch-free. Thread safety: one thread per client; stats from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <stop_token>
#include <string>
#include <zmq.hpp>

#include "schema/codec.h"
#include "schema/transport/security.h"
#include "schema/status.h"
#include "worker/publish_protocol.h"

namespace fedlora::worker {

struct BrokerClientOptions {
  std::string broker = "tcp://127.0.0.1:5555";    // the broker's frontend
  std::string announce = "tcp://127.0.0.1:5557";  // the broker's announce socket ("" : none)
  std::string adapter_id = "default";
  std::string client_id = "worker-0";              // for log lines
  std::chrono::milliseconds request_timeout{4000};
  std::chrono::milliseconds max_backoff{4000};
  int hwm = 100;
  security::ClientKeys keys;  // CURVE keys when the broker is secured
};

struct PublishOutcome {
  enum class Kind {
    kAcked,     // logged durably: seq is its log position (duplicate: logged by an earlier send)
    kRejected,  // refused for good (status says why): do not send it again
    kFinal,     // the adapter is final: training has ended
    kStopped,   // stop was requested before an answer came
  };
  Kind kind = Kind::kStopped;
  uint64_t seq = 0;
  bool duplicate = false;
  Status status;
};

class BrokerClient {
 public:
  BrokerClient(zmq::context_t& ctx, BrokerClientOptions options);

  // One fetch round trip: the global when it is newer than `have` (-1: any), nullopt when
  // `have` is current or the reply was lost (the next fetch repairs that; `not_found` gets the
  // broker's error when it does not know the adapter yet). Errors: an undecodable global.
  Result<std::optional<codec::DecodedGlobal>> Fetch(std::stop_token stop, int64_t have, Status* not_found = nullptr);
  // Fetches until the broker has a global (backing off), or stop.
  Result<std::optional<codec::DecodedGlobal>> FetchUntilAvailable(std::stop_token stop);
  // Waits up to `wait` for an announcement of a version newer than `have` (a periodic fetch
  // covers announcements lost to a PUB socket), then fetches.
  Result<std::optional<codec::DecodedGlobal>> WaitForNewer(std::stop_token stop, uint64_t have,
                                                           std::chrono::milliseconds wait);
  // Sends `update` (whose id is `update_id`) until the broker acknowledges or refuses it for
  // good; "retry later" errors and silence back off and send again.
  PublishOutcome PublishUntilAcked(std::stop_token stop, std::string_view update_id, const codec::Bytes& update);

  // Requests re-sent on a fresh socket after a timeout.
  uint64_t retries() const { return retries_.load(); }
  // "Retry later" errors (retry_after_ms > 0: saturated ingest, rate limit, unknown adapter)
  // waited out before sending again.
  uint64_t retry_laters() const { return retry_laters_.load(); }

 private:
  void Connect();
  void Reconnect();
  PirateTiming Timing() const;
  template <typename Matches>
  std::optional<zmq::message_t> Attempt(std::stop_token stop, LazyPirate& pirate, const codec::Bytes& body,
                                        const Matches& matches);
  Result<std::optional<codec::DecodedGlobal>> FetchOnce(std::stop_token stop, LazyPirate& pirate, int64_t have,
                                                        Status* not_found);

  zmq::context_t& ctx_;
  BrokerClientOptions options_;
  std::optional<zmq::socket_t> socket_;
  std::optional<zmq::socket_t> sub_;
  std::atomic<uint64_t> retries_{0};
  std::atomic<uint64_t> retry_laters_{0};
};

// Sleeps until `d` passes (or time point `t`) or `stop` is requested.
void WaitFor(std::stop_token stop, std::chrono::milliseconds d);
void WaitUntil(std::stop_token stop, std::chrono::steady_clock::time_point t);

}  // namespace fedlora::worker
