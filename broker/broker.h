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
// docs/protocol.md describes every message. The broker has no LibTorch and three threads: Run()
// owns every socket and does all validation; a log writer turns the admitted updates into
// synced group commits (while it fsyncs, Run() keeps receiving, fetching and dispatching, and
// what arrives meanwhile forms the next batch); with CURVE on, a ZAP handler authenticates
// each connection against the allowlist. Memory is bounded: updates admitted but not yet
// durable never exceed ingest_queue_bytes (beyond it senders get RESOURCE_EXHAUSTED with a
// retry delay), every socket has a high-water mark, the latest records kept for dispatch never
// exceed recent_bytes, and aggregators receive only what their credit window allows (the log
// absorbs any backlog on disk).
// Thread safety: Stats() may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>

#include "ops/observe/prometheus.h"
#include "schema/transport/security.h"
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
  // Longest the log writer waits for the senders it has just acknowledged to send again
  // before it starts the next group commit (never more than a quarter of the last commit's
  // duration; broker.cc explains why). Zero: never wait.
  std::chrono::microseconds commit_wait{2000};
  size_t deliver_max_bytes = 8u << 20;  // most record bytes in one Deliver message
  // The latest durable records kept in memory (all adapters together) so that dispatch to a
  // caught-up aggregator sends the received message instead of reading it back from the log.
  size_t recent_bytes = 32u << 20;
  int hwm = 1000;                       // ZeroMQ high-water mark of every socket
  std::chrono::milliseconds poll_interval{100};
  // Bytes of updates admitted but not yet durable (queued for, or inside, a group commit).
  // An update that would exceed it is refused RESOURCE_EXHAUSTED with retry_after_ms.
  size_t ingest_queue_bytes = 128u << 20;
  // > 0: updates per second each client may publish (token bucket, a burst of one second's
  // worth); beyond it RESOURCE_EXHAUSTED with retry_after_ms. Keyed by the authenticated name
  // under CURVE, by client_id otherwise.
  double max_updates_per_s = 0;
  // > 0: refuse updates whose L2 norm exceeds this (INVALID_ARGUMENT).
  double max_update_norm = 0;
  // Paranoid Pirate liveness: an aggregator silent for interval x liveness loses its
  // subscription (a restarted or standby aggregator takes over with a resubscribing Credit).
  std::chrono::milliseconds heartbeat_interval{1000};
  int heartbeat_liveness = 3;
  // CURVE: encrypt every socket and admit only the allowlist's keys. Without it the broker
  // binds only loopback endpoints unless `insecure` is set.
  struct Curve {
    security::KeyPair server;
    security::Allowlist allow;
  };
  std::optional<Curve> curve;
  bool insecure = false;  // allow plaintext on non-loopback endpoints
  // Without CURVE: the secret aggregators must present on the backend (security.h); empty: any
  // peer that reaches the backend may subscribe (a warning at start says so).
  std::string aggregator_secret;
  // Connections on all three sockets together; past it a new connection is closed as soon as it
  // is accepted. 0: the open-file limit less kReservedFiles (the log's files and the process's own).
  size_t max_connections = 0;
  // Bytes all connections together may have sent that the broker has not read yet (incomplete
  // messages, mostly); past it the connections holding most are closed. Each connection alone
  // may hold at most 2 x max_message_bytes + 1 MiB (the announce socket 1 MiB): one message in
  // progress, its handshake and ZMTP's own commands (broker/connection_guard.h).
  size_t max_unread_bytes = 1u << 30;
  // Open a log that lost acknowledged updates from its end (storage::UpdateLog::CheckAcknowledged)
  // and go on from what it holds, instead of refusing to start.
  bool accept_lost_log_tail = false;
};

// Descriptors kept free of connections for the log (RocksDB opens at most 256 files at once,
// storage/rocks.cc), libzmq's own and the process's (HTTP server, output).
inline constexpr size_t kReservedFiles = 512;

// The broker's connections (broker/connection_guard.h).
struct ConnectionStats {
  std::atomic<uint64_t> open{0};           // now, all sockets
  std::atomic<uint64_t> refused{0};        // closed as soon as accepted: past max_connections
  std::atomic<uint64_t> closed_unread{0};  // closed for holding more unread bytes than allowed
  std::atomic<uint64_t> unread_bytes{0};   // all connections together, at the last measurement
};

struct BrokerStats {
  std::atomic<uint64_t> updates_logged{0};
  std::atomic<uint64_t> updates_duplicate{0};
  std::atomic<uint64_t> messages_rejected{0};  // answered with an Error
  std::atomic<uint64_t> bytes_logged{0};
  std::atomic<uint64_t> group_commits{0};
  std::atomic<uint64_t> commit_wait_us{0};  // time the log writer spent waiting to fill batches
  std::atomic<uint64_t> fetches{0};
  std::atomic<uint64_t> records_delivered{0};
  std::atomic<uint64_t> records_read_back{0};  // delivered by reading the log (not held in memory)
  std::atomic<uint64_t> retry_later{0};     // refused because the ingest queue was full
  std::atomic<uint64_t> rate_limited{0};    // refused by the per-client rate limit
  std::atomic<uint64_t> auth_denied{0};     // connections refused by the allowlist or the aggregator secret
  std::atomic<uint64_t> aggregators_expired{0};  // subscriptions dropped for silence
  std::atomic<uint64_t> subscriptions_refused{0};  // Credits and globals refused: another aggregator holds the lease
  // Credits refused because the position they claim is not in this log (another log's id, past
  // the head, or a different record there): acknowledged updates were lost with the log.
  std::atomic<uint64_t> positions_refused{0};
  std::atomic<uint64_t> ingest_queue_bytes{0};   // now
  std::atomic<uint64_t> ingest_queue_peak{0};    // the most ever
  ConnectionStats connections;
};

struct BrokerEndpoints {
  std::string frontend;
  std::string backend;
  std::string announce;
};

// Raises this process's soft limit of open files to its hard limit (Broker::Create does, once
// per broker) and returns the limit now in force (0 if it cannot be read).
uint64_t RaiseOpenFileLimit();

class Broker {
 public:
  // Opens the update log and binds the sockets. Errors: kUnavailable (address in use, store
  // cannot be opened), kInvalidArgument (bad endpoint, or a non-loopback endpoint without
  // CURVE or `insecure`), kUnimplemented (CURVE asked of a libzmq without it).
  static Result<std::unique_ptr<Broker>> Create(const BrokerOptions& options);
  virtual ~Broker() = default;

  // The endpoints actually bound (ports resolved).
  virtual const BrokerEndpoints& Endpoints() const = 0;
  // Serves until `stop` is requested. Returns an error only for a fault that makes serving
  // impossible (the log cannot be read); bad input never ends it.
  virtual Status Run(std::stop_token stop) = 0;
  virtual const BrokerStats& Stats() const = 0;
  // Prometheus families (docs/protocol.md): the stats, and per adapter the log head, the lag of
  // its aggregator (records logged but not yet consumed) and whether one is subscribed. The
  // per-adapter figures are a snapshot the serving loop refreshes every 250 ms (and as soon as
  // an adapter appears).
  virtual void WriteMetrics(prometheus::Writer& w) const = 0;
};

}  // namespace fedlora::broker
