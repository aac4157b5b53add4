// Aggregator owns one adapter (one fine-tuning job): it subscribes to the adapter's update log
// at the broker with credit-based flow control, folds records in sequence order through the
// Engine, and commits each new version together with its lineage and the consumed log
// position in one atomic write to its AdapterStore. Then it sends the version to the broker,
// which announces it to workers.
//
// Exactly-once: on start it resumes from the store's cursor and asks the broker for the log
// from there, so a restarted aggregator neither applies an update twice nor skips one
// (updates buffered but not yet committed are simply read again).
//
// The aggregator has no LibTorch: evaluation of the global on a test set is injected as a
// callback by whoever links a model (ops/).
// Thread safety: Run() owns the socket and the engine; Version() may be read from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "aggregator/engine.h"
#include "schema/adapter.h"
#include "schema/codec.h"
#include "ops/observe/prometheus.h"
#include "schema/transport/security.h"
#include "schema/status.h"

namespace fedlora::aggregator {

struct EvalOutcome {
  double accuracy = 0;
  double loss = 0;
  size_t samples = 0;
  std::vector<double> class_accuracy;  // per label (labels absent from the sample: 0)
  std::vector<double> class_loss;      // per label: mean loss per prediction (absent labels: 0)
};
using Evaluator = std::function<Result<EvalOutcome>(const AdapterSpec&, const AdapterState&)>;

struct InitialAdapter {
  AdapterSpec spec;
  AdapterState state;
};

struct AggregatorOptions {
  std::string adapter_id = "default";
  std::string broker = "tcp://127.0.0.1:5556";         // the broker's backend endpoint
  std::string store_path = "fedlora-data/adapters";
  bool sync = true;                 // fsync each commit; false only for tests
  EngineOptions engine;
  uint32_t window = 64;             // credit: log records in flight from the broker
  uint64_t max_versions = 0;        // mark this version final and stop; 0: until stopped
  uint32_t eval_every = 10;         // evaluate every N versions (0: never); always the final one
  Evaluator evaluate;               // optional
  std::optional<InitialAdapter> initial;  // version 0, used only when the store is empty
  // Paranoid Pirate liveness: with nothing to send for an interval, send a Heartbeat; the broker
  // answers each. Silence from the broker for interval x liveness means it is gone: reconnect on
  // a fresh socket (backing off up to 8 intervals) and resubscribe. A heartbeat answer with a
  // new broker incarnation means it restarted: resubscribe at once.
  std::chrono::milliseconds heartbeat_interval{1000};
  int heartbeat_liveness = 3;
  security::ClientKeys keys;  // CURVE keys when the broker is secured
  std::string secret;         // without CURVE: the broker's aggregator secret (security.h); empty: none
  std::chrono::milliseconds poll_interval{100};
  int hwm = 1000;
  // Called on the aggregator thread after each durable commit.
  std::function<void(const codec::VersionInfo&)> on_commit;
};

// A rollback the aggregator committed (aggregator/rollback.h).
struct RollbackDone {
  uint64_t version = 0;       // the new version
  std::string content_hash;   // equal to the restored version's
  uint64_t consumed_seq = 0;  // the log position it resumes from
};

class Aggregator {
 public:
  // Opens the store and, if it holds no version of the adapter yet, commits version 0 from
  // options.initial (evaluated when an evaluator is set). Errors: kFailedPrecondition (empty
  // store and no initial adapter), store errors.
  static Result<std::unique_ptr<Aggregator>> Create(AggregatorOptions options);
  virtual ~Aggregator() = default;

  // Consumes and commits until `stop` is requested or max_versions is committed.
  // Errors: store failures and corrupt log records (the cursor stays consistent: restart).
  virtual Status Run(std::stop_token stop) = 0;
  virtual uint64_t Version() const = 0;
  virtual bool Finished() const = 0;  // the final version is committed
  // Rolls the live adapter back to version `to` (< the current version): Run commits the
  // rollback between two log records, sends the new global and resumes from its log position.
  // Callable from any thread; waits up to `timeout`. Errors: kInvalidArgument (`to` is not
  // earlier than the current version), kNotFound, kFailedPrecondition (the adapter is final),
  // kUnavailable (Run is not running, or did not get to it in time), store errors.
  virtual Result<RollbackDone> Rollback(uint64_t to, std::chrono::milliseconds timeout) = 0;
  // Prometheus families (aggregator/metrics.h). Callable from any thread.
  virtual void WriteMetrics(prometheus::Writer& w) const = 0;
};

}  // namespace fedlora::aggregator
