// The default task, wired for the command line: which data, which split, which model, and
// the pieces every role needs from them (the frozen base, version 0 of the adapter, each
// client's shard, the evaluator of a global). This header is LibTorch-free so that only
// ops/federation.cc pays LibTorch's compile time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "aggregator/aggregator.h"
#include "schema/status.h"
#include "worker/data.h"

namespace fedlora::ops {

struct TaskOptions {
  std::string data_dir = worker::kDefaultFashionMnistDir;
  std::string arch = "vit-tiny";    // base model: "vit-tiny" or "mlp"
  uint32_t rank = 8;                // LoRA rank
  float lora_alpha = 16.0f;         // LoRA scale alpha / r
  uint64_t lora_seed = 1;           // seed of every client's identical A initialisation
  bool full = false;                // no LoRA: every base parameter is trained (method "full")
  bool lora_residual = false;       // LoRA modules keep a residual (flora --flora-merge exact)
  int num_clients = 6;              // clients the private data is split across
  double dirichlet_alpha = 0.5;     // non-IID strength: 0.5 mild, 0.1 strong, 0.01 extreme
  uint64_t partition_seed = 11;
  std::string partition = "dirichlet";  // or "pathological"
  int classes_per_client = 2;           // pathological split
};

// <store>/base/<arch>.pt
std::string BasePath(const std::string& store_dir, const std::string& arch);

// Pretrains the base into `base_path` unless the file exists (epochs 0: the default).
// `progress(epoch, epochs, loss)` after each epoch. Returns true when it pretrained.
Result<bool> EnsureBase(const TaskOptions& task, const std::string& base_path, uint32_t epochs,
                        const std::function<void(uint32_t, uint32_t, double)>& progress);

// Version 0: the base's head, LoRA A from the shared seed, LoRA B zero.
Result<aggregator::InitialAdapter> MakeInitialAdapter(const TaskOptions& task, const std::string& base_path);

// Evaluates a global on the first `max_samples` test images (0: all). The returned callable
// owns its own model and must be called from one thread at a time.
Result<aggregator::Evaluator> MakeEvaluator(const std::string& base_path,
                                            std::shared_ptr<const worker::Dataset> test,
                                            size_t max_samples);

// Every client's shard of the private training split (deterministic in `task`).
Result<std::vector<std::vector<size_t>>> ClientShards(const worker::Dataset& train, const TaskOptions& task);

// A client's accuracy on its own label mix: sum_c p(c) acc(c), p the label distribution of
// train[shard] and acc the per-class test accuracy of the model it would use.
double MixAccuracy(const worker::Dataset& train, const std::vector<size_t>& shard,
                   const std::vector<double>& class_accuracy);

// Intra-op threads of LibTorch for this process.
void SetTorchThreads(int threads);

}  // namespace fedlora::ops
