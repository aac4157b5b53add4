// Worker is a training client of one adapter. It fetches the current global, trains the
// adapter on its own data shard, publishes the delta as an update (retrying with the same
// update id until the broker acknowledges it, so a retry is never logged twice), and pulls a
// newer global whenever one exists. It waits for nobody: in the asynchronous modes it starts
// its next local run at once; only a global in Sync mode (the barrier baseline) makes it wait
// for the next version.
//
// The model is built from the global's spec (architecture, rank, alpha, LoRA seed) over the
// frozen base in `base_path`, so a worker holds no state between versions.
// This header is LibTorch-free; worker/client.cc is not.
// Thread safety: Run() on one thread; Stats() from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <stop_token>
#include <string>
#include <vector>

#include "aggregator/methods/method.h"
#include "schema/transport/security.h"
#include "schema/status.h"
#include "worker/data.h"

namespace fedlora::worker {

// Record-level DP-SGD of a worker's own data (docs/privacy.md). Sampling rate
// q = batch_size / shard size. Either the noise multiplier is given, or a target epsilon with
// the DP-SGD steps it must last (the noise multiplier is then the smallest that spends exactly
// epsilon over planned_steps). With an epsilon the worker keeps its own ledger and stops, with
// a message, before a local run that would spend more.
struct RecordDp {
  double noise_multiplier = 0;  // sigma; 0: derived from epsilon and planned_steps, or DP off
  double epsilon = 0;           // budget of the worker's data; 0: none
  uint64_t planned_steps = 0;   // DP-SGD steps the budget is planned for (with epsilon, no sigma)
  double clip = 1.0;            // per-example L2 clip norm C
  double delta = 1e-5;
  bool enabled() const { return noise_multiplier > 0 || epsilon > 0; }
};

struct WorkerTraining {
  uint32_t steps = 20;          // optimizer steps per local run
  uint32_t batch_size = 32;
  float lr = 2e-3f;             // Adam, fresh each local run
  double speed_factor = 1.0;    // >= 1: emulate a device this many times slower
  RecordDp dp;                  // off by default
};

struct WorkerEvent {
  enum class Kind { kFetched, kPublished, kRejected, kFinal, kBudgetSpent };
  Kind kind = Kind::kFetched;
  uint64_t version = 0;         // global version fetched / trained from
  std::string update_id;
  uint64_t seq = 0;             // log position of an acknowledged update
  bool duplicate = false;
  size_t bytes = 0;             // size of the published update
  float train_loss = 0;
  Status status;                // for kRejected
};

struct WorkerOptions {
  std::string client_id = "worker-0";
  std::string broker = "tcp://127.0.0.1:5555";    // the broker's frontend
  std::string announce = "tcp://127.0.0.1:5557";  // the broker's announce socket
  std::string adapter_id = "default";
  std::string base_path = "fedlora-data/base/vit-tiny.pt";
  WorkerTraining training;
  methods::ClientSettings heterogeneity;  // rank, FLASC density, LoRA-A2 budget of this client
  uint64_t seed = 1;                 // batch sampling; combined with client id and run number
  uint64_t max_updates = 0;          // leave after this many acknowledged updates; 0: until final
  std::chrono::milliseconds request_timeout{4000};  // then reconnect and resend
  std::chrono::milliseconds max_backoff{4000};
  security::ClientKeys keys;  // CURVE keys when the broker is secured
  // Called on the worker thread for every fetch, acknowledgement and rejection.
  std::function<void(const WorkerEvent&)> on_event;
};

struct WorkerStats {
  std::atomic<uint64_t> updates_acked{0};
  std::atomic<uint64_t> bytes_uploaded{0};   // bytes of acknowledged updates
  std::atomic<uint64_t> retries{0};
  std::atomic<uint64_t> latest_version{0};
  std::atomic<double> epsilon{0};            // record-level DP spent on this worker's data
  std::atomic<uint64_t> dp_steps{0};
  std::atomic<bool> budget_spent{false};     // stopped because the next run would exceed it
};

class Worker {
 public:
  // `data` must outlive the worker; `shard` indexes this client's examples in it.
  // Errors: kInvalidArgument (empty shard or client id, bad training or DP options; an epsilon
  // that no noise multiplier up to 1e4 reaches over the planned steps).
  static Result<std::unique_ptr<Worker>> Create(WorkerOptions options,
                                                std::shared_ptr<const Dataset> data,
                                                std::vector<size_t> shard);
  virtual ~Worker() = default;

  // Trains and publishes until `stop`, max_updates, or a final global. Errors: the base model
  // cannot be loaded or does not match the adapter spec; a permanent broker rejection of
  // every update is reported per update through on_event, not as an error.
  virtual Status Run(std::stop_token stop) = 0;
  virtual const WorkerStats& Stats() const = 0;
  // DP-SGD's noise multiplier and sampling rate this worker trains with (0, 0 without DP).
  virtual std::pair<double, double> DpParameters() const = 0;
  // FedSA-LoRA: this client's personal B factors by tensor name (empty under other methods).
  // Call only after Run() has returned.
  virtual std::map<std::string, std::vector<float>> PersonalFactors() const = 0;
};

// Sets glibc's allocator up for a training process: blocks up to 32 MiB come from the heap and
// up to 256 MiB of freed heap is kept. By default every allocation over 128 KiB is mapped
// afresh and unmapped on free, so each step paid page faults for the same tensors again
// (~450 faults per vit-tiny step; ops/bench/worker-steps measured +22% steps/s on vit-tiny
// and +27% on mlp without them). Call once, at the start of a process that trains; not in the
// broker or aggregator, whose resident memory it would raise.
void TuneAllocatorForTraining();  // defined in worker/train.cc

}  // namespace fedlora::worker
