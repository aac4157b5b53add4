// The whole federation in one process, as `fedlora run` runs it: a broker, an aggregator and
// heterogeneous workers on real loopback sockets, with a real store. Create() prepares every
// part (pretraining the base if it is missing, loading and partitioning the task's data,
// evaluating version 0); Run() trains until the duration, the final version, every worker's
// privacy budget or an error ends it, then evaluates the latest version on the whole test split
// and on each client's own label mix. Printing is the caller's: progress comes back through
// callbacks, the result as a RunSummary. Create() sets process-wide LibTorch state: one intra-op
// thread (the parts share the cores as threads) and the allocator tuned for training.
//
// LibTorch-free header; the implementation links the broker, the aggregator and the worker.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "aggregator/aggregator.h"
#include "broker/broker.h"
#include "schema/codec.h"
#include "schema/status.h"
#include "storage/layout.h"
#include "worker/client.h"
#include "worker/federation/task.h"

namespace fedlora::federation {

struct EmbeddedOptions {
  storage::StoreLayout store;
  TaskOptions task;                     // task.num_clients is the number of workers
  aggregator::EngineOptions engine;     // resolved; under Sync, round_size at most the workers
  worker::WorkerTraining training;      // every worker's; speed_factor comes from `speeds`
  // Per worker, assigned in turn (worker i gets element i mod size); empty: the defaults.
  std::vector<double> speeds = {1, 1.5, 2, 3, 5, 8};  // slowdown factors, each >= 1
  std::vector<uint32_t> ranks;          // LoRA ranks in 1..256; the adapter's rank becomes the largest
  std::vector<float> upload_densities;  // flasc, in (0, 1]
  std::vector<uint32_t> rank_budgets;   // lora-a2, >= 1
  double duration_s = 300;              // of federated training
  uint64_t max_versions = 0;            // stop once this version is committed (0: no limit)
  uint32_t eval_every = 10;             // versions between periodic evaluations (0: none)
  size_t eval_samples = 2000;           // test examples per periodic evaluation (0: all)
  std::string adapter = "default";
  bool fresh = false;                   // delete the store's log and adapters first (not the base)
};

// Errors: kInvalidArgument naming the option (an empty or too slow speed list, a rank outside
// 1..256, a density outside (0, 1], a zero rank budget, a Sync round larger than the workers,
// record-level DP-SGD with a full-model method, a non-positive duration, no workers).
Status CheckOptions(const EmbeddedOptions& options);

// Progress while Create() prepares; each is optional.
struct SetupCallbacks {
  std::function<void(const std::string&)> note;                       // a line: "no base model at ...: pretraining it"
  std::function<void(uint32_t, uint32_t, double)> pretrain_progress;  // (epoch or step, of, loss)
  std::function<void(size_t, size_t)> reading_progress;              // text files tokenized (done, total)
};

// What Create() found and measured, for the header of a run.
struct Setup {
  std::string base_path;            // the image base file or the checkpoint directory
  std::string base_model;           // the adapter spec's model name
  bool language_model = false;
  bool perplexity = false;          // the headline figure is perplexity (lm-finetune), else accuracy
  std::string unit;                 // "images", "text examples", ...
  size_t train_examples = 0;        // over every client's shard
  size_t test_examples = 0;
  uint64_t start_version = 0;       // > 0: a stored run resumed
  double base_accuracy = -1;        // version 0 on the whole test split
  double base_loss = -1;
  std::vector<double> base_class_loss;
};

// The figures of a moment of the run, for a progress line.
struct LiveFigures {
  double elapsed_s = 0;
  uint64_t version = 0;
  double last_accuracy = -1;        // the latest evaluation's (-1: none yet)
  double last_loss = -1;
  uint64_t last_accuracy_version = 0;
  uint64_t folded = 0;
  uint64_t dropped = 0;
  double mean_staleness = 0;
  uint64_t bytes_uploaded = 0;
};

struct SourcePerplexity {
  std::string name;
  double base = 0;
  double final = 0;
};

struct RunSummary {
  std::string stop_reason;          // "duration reached", "final version committed", "interrupted", ...
  double federated_seconds = 0;
  codec::VersionInfo last;          // the latest version's record (version, privacy ledger, ...)
  uint64_t versions_committed = 0;  // by this run
  double final_accuracy = 0;        // the latest version on the whole test split
  double final_loss = 0;
  // Each client's figure on its own label (source) mix, with the model it would use: the
  // global, or under a personalised method the global with the client's own factors.
  bool personalised = false;
  std::vector<double> client_accuracies;
  std::vector<double> client_perplexities;  // perplexity tasks only
  std::vector<SourcePerplexity> sources;    // perplexity tasks: each source's held-out perplexity
  uint64_t updates_logged = 0;
  uint64_t updates_duplicate = 0;
  uint64_t messages_rejected = 0;
  uint64_t folded = 0;
  uint64_t dropped = 0;
  uint64_t bytes_uploaded = 0;
  double mean_staleness = 0;
  uint32_t max_staleness = 0;
};

class EmbeddedFederation {
 public:
  // Checks the options, then prepares the parts; nothing runs yet. The store is opened (and
  // with `fresh`, emptied first). Errors: CheckOptions', kFailedPrecondition (a missing --base
  // checkpoint), and those of pretraining, the data loaders, the broker, the aggregator and the
  // workers.
  static Result<std::unique_ptr<EmbeddedFederation>> Create(EmbeddedOptions options,
                                                            const SetupCallbacks& callbacks = {});
  virtual ~EmbeddedFederation() = default;

  virtual const Setup& setup() const = 0;
  // For serving HTTP beside the run (stop serving before this object is destroyed).
  virtual broker::Broker& broker() = 0;
  virtual aggregator::Aggregator& aggregator() = 0;

  // Runs every part on its own thread until the duration passes, the final version is
  // committed, every worker's privacy budget is spent, `interrupted()` returns true or a part
  // fails (the first error is returned, with the part's name). `on_tick` is called about every
  // 500 ms. Then stops the parts and evaluates the latest version, read from the store as any
  // tool would (`note` says so first). Call once.
  virtual Result<RunSummary> Run(const std::function<bool()>& interrupted,
                                 const std::function<void(const LiveFigures&)>& on_tick = {},
                                 const std::function<void(const std::string&)>& note = {}) = 0;
};

}  // namespace fedlora::federation
