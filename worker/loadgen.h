// `fedlora loadgen` without the command line: many lightweight publishers of pre-made updates
// (no model, no training) against a running broker, for load, fault and scale tests. Each client
// fetches the current global to learn the adapter's spec and version, then publishes small
// random dense deltas trained "from" the latest version it knows, each until acknowledged (same
// update id on every retry, with the Lazy Pirate reconnects of broker_client.h). With `ack_log`
// every acknowledgement is appended to a file as it arrives, which is what a fault test checks
// the log against.
//
// Clients are multiplexed, so a thousand of them take a few threads, not a thousand: each thread
// drives its share of the clients, every client a small state machine around its own DEALER
// socket, and waits for all of their replies and timers with one zmq::poll.
// LibTorch-free (part of fedlora::client).
#pragma once

#include <cstdint>
#include <functional>
#include <stop_token>
#include <string>
#include <vector>

#include "schema/status.h"
#include "schema/transport/security.h"

namespace fedlora::worker {

struct LoadOptions {
  std::string broker = "tcp://127.0.0.1:5555";  // the broker's worker endpoint
  std::string adapter = "default";
  std::string prefix = "load";  // client ids are <prefix>-<index>; update ids <client>-<n>
  uint32_t clients = 4;         // concurrent publishers, each with its own connection
  uint32_t threads = 0;         // that drive them (0: min(clients, hardware threads))
  uint64_t updates = 100;       // per client; 0: until `duration_s` or a stop
  double duration_s = 0;        // 0: no limit
  uint32_t interval_ms = 0;     // pause of each client between its updates
  uint32_t timeout_ms = 1000;   // resend an unanswered update after this long, on a fresh socket
  float scale = 1e-3f;          // standard deviation of the random delta values
  uint64_t seed = 1;
  std::string ack_log;          // append {client_id, update_id, seq, duplicate} per acknowledgement
  security::ClientKeys keys;    // CURVE keys of a secured broker (empty: plaintext)
};

struct LoadProgress {
  double elapsed_s = 0;
  uint64_t acked = 0;
  uint64_t rejected = 0;
  uint32_t clients = 0;
  uint32_t threads = 0;
};

struct LoadReport {
  uint32_t clients = 0;
  uint32_t threads = 0;
  uint64_t acked = 0;
  uint64_t duplicates = 0;      // acknowledgements of a resend the log already held
  uint64_t rejected = 0;
  uint64_t bytes = 0;           // of the acknowledged updates
  uint64_t retry_later = 0;     // "retry later" answers (saturated ingest, rate limit) waited out
  uint64_t timeouts = 0;        // requests given up (no reply in time, or unsendable)
  double seconds = 0;
  bool final = false;           // the adapter became final
  std::vector<double> latencies_ms;  // of each acknowledgement, from the update's first send
};

// Runs until every client's quota is acknowledged or refused, the duration passes, the adapter
// becomes final or `stop` is requested; `progress` about every 50 ms. Raises the process' limits
// of sockets and open files to what `clients` needs. Errors: kUnavailable (the ack log cannot be
// opened), a client's (an undecodable global from the broker).
Result<LoadReport> GenerateLoad(const LoadOptions& options, std::stop_token stop,
                                const std::function<void(const LoadProgress&)>& progress = {});

}  // namespace fedlora::worker
