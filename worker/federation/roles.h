// One role per process (`fedlora aggregator`, `fedlora worker`), wired to a task: the aggregator
// gets version 0 and its evaluator from the task's base model and held-out split, a worker its
// shard of the task's partition. The caller runs the role and prints.
//
// LibTorch-free header; the implementation builds the task's model.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "aggregator/aggregator.h"
#include "schema/status.h"
#include "storage/layout.h"
#include "worker/client.h"
#include "worker/federation/task.h"

namespace fedlora::federation {

struct AggregatorRole {
  storage::StoreLayout store;          // the adapters go to <store>/adapters; the image base is <store>/base/<arch>.pt
  TaskOptions task;                    // task.base: a language model's checkpoint directory
  aggregator::AggregatorOptions options;  // broker, adapter, engine, keys, ...; store_path, initial and evaluate are set here
  size_t eval_samples = 2000;          // test examples per evaluation (0: all)
};

// Errors: kInvalidArgument (an unknown task), kFailedPrecondition (no base model, saying how to
// make it), the data loaders', the evaluator's and aggregator::Aggregator::Create's.
Result<std::unique_ptr<aggregator::Aggregator>> MakeAggregatorRole(AggregatorRole role);

struct WorkerRole {
  storage::StoreLayout store;
  TaskOptions task;                    // task.num_clients shards; this worker trains shard `index`
  worker::WorkerOptions options;       // base_path is set here
  int index = 0;
  std::string base;                    // image: the base file (empty: <store>/base/<arch>.pt); lm: the checkpoint
};

struct MadeWorker {
  std::unique_ptr<worker::Worker> worker;
  size_t shard_size = 0;               // examples in its shard
};

// Errors: kInvalidArgument (an index outside the partition, an unknown task, the worker's
// options), kFailedPrecondition (no base model), the data loaders' and worker::Worker::Create's.
Result<MadeWorker> MakeWorkerRole(WorkerRole role);

}  // namespace fedlora::federation
