// Local training and evaluation of a worker::Model on its task's data, and pretraining of the
// image models on Fashion-MNIST.
// Include only from worker/ and ops/: pulls in LibTorch through worker/model.h.
// Thread safety: each call uses the given model from the calling thread only.
#pragma once

#include <cstdint>
#include <functional>
#include <stop_token>
#include <string>
#include <vector>

#include "worker/data.h"
#include "worker/model.h"

namespace fedlora::worker {

// Record-level DP-SGD (Abadi et al. 2016) in local training: each step samples a Poisson batch
// (every example of the shard independently with probability q = batch_size / shard size),
// clips every example's gradient over the trainable adapter tensors to L2 norm `clip`, adds
// N(0, (noise_multiplier * clip)^2) to the sum, and divides by the expected batch size. The
// sampling and the noise draw from a secret seed, never from the public batch seed.
struct DpSgdOptions {
  double noise_multiplier = 0;  // sigma; 0: DP-SGD off
  double clip = 1.0;            // C
  uint64_t seed = 0;            // sampling and noise; 0: a fresh one from the OS per run
  bool enabled() const { return noise_multiplier > 0; }
};

// Defaults tuned on vit-tiny (LoRA rank 8, alpha 16): a fresh Adam at 1e-3 per run beat
// Adam at 5e-4 and 2e-3 and SGD with momentum at 0.01 and 0.05.
struct LocalTrainOptions {
  uint32_t steps = 20;       // optimizer steps per local run
  uint32_t batch_size = 32;
  float lr = 1e-3f;          // learning rate of the local optimizer (Adam, fresh every run)
  uint64_t seed = 1;         // batch sampling seed (combine with client id and run counter)
  double speed_factor = 1.0; // >= 1: after each step sleep (factor - 1) x step time, to emulate slow devices
  // Optional, for the methods: a term added to every step's loss (SA-FedLoRA's proximal term),
  // and a hook between backward and the optimizer step (gradient masks of frozen ranks).
  std::function<torch::Tensor()> regularizer;
  std::function<void()> after_backward;
  // Gradient masks (parameter, 0/1 mask broadcastable to it): LoRA-A2's unselected ranks. Under
  // DP-SGD they apply to every example's gradient before clipping.
  std::vector<std::pair<torch::Tensor, torch::Tensor>> grad_masks;
  DpSgdOptions dp;
};

struct LocalTrainResult {
  uint32_t steps = 0;      // optimizer steps (DP-SGD: each one application of the mechanism)
  uint64_t samples = 0;  // examples seen
  float mean_loss = 0;   // mean training loss over the steps
  bool stopped = false;  // the stop token fired before all steps ran
};

// Trains model.TrainableParameters() on batches sampled (with a seeded RNG) from
// data[indices], or with DP-SGD when options.dp is enabled. Returns early, with stopped = true,
// when `stop` is requested. Errors (DP-SGD only): those of Model::PerExampleGradients.
Result<LocalTrainResult> TrainLocal(Model& model, const Dataset& data, const std::vector<size_t>& indices,
                            const LocalTrainOptions& options, std::stop_token stop = {});

// Evaluation of a model on examples: image classification counts examples; a language model
// counts predicted tokens (accuracy is next-token accuracy, loss the mean NLL per token, and
// perplexity exp(loss)).
struct EvalResult {
  double accuracy = 0;       // right predictions / predictions, in [0, 1]
  double loss = 0;           // mean loss per prediction
  size_t samples = 0;        // examples
  uint64_t predictions = 0;  // image: examples; language model: predicted tokens
  std::vector<size_t> class_correct;  // per label (class or text source): right predictions
  std::vector<size_t> class_total;    // per label: predictions
  std::vector<double> class_loss_sum; // per label: summed loss of its predictions
};

// Sums the gradients of model.TrainableParameters() over `batches` batches sampled like
// TrainLocal's (without an optimizer step), leaving them in each parameter's grad(). With `dp`
// enabled each batch is a DP-SGD gradient (Poisson batch, clipped, noised) and counts as one
// application of the mechanism. Errors: those of Model::PerExampleGradients.
Status AccumulateGradients(Model& model, const Dataset& data, const std::vector<size_t>& indices,
                           uint32_t batches, uint32_t batch_size, uint64_t seed, const DpSgdOptions& dp = {});

// DP-SGD's sampling rate for a shard: min(1, batch_size / shard size).
double DpSampleRate(uint32_t batch_size, size_t shard_size);

// Evaluates on the first min(max_samples, data.size()) examples (0: all), in batches of
// model.EvalBatchSize().
EvalResult Evaluate(Model& model, const Dataset& data, size_t max_samples = 0);

struct PretrainOptions {
  ModelOptions model;               // LoRA fields are ignored for the base
  std::string data_dir = kDefaultFashionMnistDir;
  PublicSplitOptions split;
  uint32_t epochs = 12;              // ~35-40 s on 2 idle cores; the README's figures use it
  uint32_t batch_size = 64;
  float lr = 1e-3f;                 // Adam, constant (a cosine decay transferred worse)
  uint64_t seed = 42;
  std::string out_path;             // where SaveBase writes the base
};

struct PretrainReport {
  size_t public_examples = 0;
  double base_test_accuracy = 0;    // on the full 10k test set
  double seconds = 0;
};

// Builds the frozen base deterministically from the public split and saves it.
// `progress(epoch, epochs, mean_loss)` is called after every epoch when set.
Result<PretrainReport> Pretrain(const PretrainOptions& options,
                                const std::function<void(uint32_t, uint32_t, double)>& progress = {});

}  // namespace fedlora::worker
