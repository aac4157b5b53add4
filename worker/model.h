// The LibTorch models a worker trains: a small patch transformer ("vit-tiny", default) and a
// tiny MLP ("mlp", for fast tests), each with LoRA pairs on its projections and a trainable
// classification head. The base weights are frozen during federated fine-tuning; only the
// adapter (LoRA A/B factors and the head) trains.
//
// Adapter tensor names are stable and form the wire contract, e.g.
//   vit-tiny: "blocks.<i>.attn.{q,k,v,o}.lora_{A,B}", "blocks.<i>.mlp.{fc1,fc2}.lora_{A,B}",
//             "head.weight", "head.bias"
//   mlp:      "fc1.lora_{A,B}", "fc2.lora_{A,B}", "head.weight", "head.bias"
// A is r x in_features (seeded random init, identical on every client for the same
// ModelOptions::lora_seed), B is out_features x r (zero init), the LoRA scale is alpha / r.
//
// Include this header only from worker/ and ops/ translation units: it pulls in LibTorch.
// Thread safety: a Model is used by one thread at a time.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "schema/adapter.h"
#include "schema/status.h"

namespace fedlora::worker {

struct ModelOptions {
  std::string arch = "vit-tiny";            // "vit-tiny" or "mlp"
  uint32_t lora_rank = 8;                   // r
  float lora_alpha = 16.0f;                 // scale = alpha / r
  uint64_t lora_seed = 1;                   // seed of the A initialisation
  std::vector<std::string> target_modules;  // empty: every projection that can carry LoRA
  // Full fine-tuning (method "full"): no LoRA; every parameter of the network is an adapter
  // tensor (role Dense) and trains. The spec then has rank 0 and no target modules.
  bool full = false;
  // Every LoRA layer also holds a dense d x k residual R ("<module>.lora_residual", role
  // LoraResidual, zero at first) and computes W + (alpha / r) (B A + R): the part of an exact
  // product sum beyond rank r (method flora). R is set by LoadAdapter and never trains.
  bool lora_residual = false;
  // Seed of the base weights' initialisation. Only pretraining depends on it: fine-tuning
  // loads the pretrained base over these values.
  uint64_t init_seed = 0;
};

class Model {
 public:
  // Errors: kInvalidArgument (unknown arch or target module, rank 0).
  static Result<std::unique_ptr<Model>> Create(const ModelOptions& options);
  virtual ~Model() = default;

  // images: uint8 [N, 28, 28] or float [N, 1, 28, 28] already normalised; returns logits [N, 10].
  virtual torch::Tensor Forward(const torch::Tensor& images) = 0;

  // The adapter's layout (names, shapes, roles, rank, alpha, seed, target modules).
  virtual const AdapterSpec& Spec() const = 0;
  // Copies the current adapter values out / in (in Spec() order). LoadAdapter checks names and
  // shapes (kInvalidArgument on mismatch) and leaves the model unchanged on error.
  virtual AdapterState ExportAdapter() const = 0;
  virtual Status LoadAdapter(const AdapterState& state) = 0;

  // The LoRA scale of every LoRA layer (alpha / r unless set): a client that trains fewer ranks
  // than the adapter's uses alpha / r_k, as PEFT does for a rank-r_k adapter.
  virtual void SetLoraScale(double scale) = 0;

  // Pretraining mode trains every base weight and the head with LoRA disabled (B stays zero);
  // fine-tuning mode freezes the base and trains only the adapter tensors.
  virtual void SetPretraining(bool pretraining) = 0;
  virtual std::vector<torch::Tensor> TrainableParameters() = 0;
  // The live adapter tensors, in Spec() order (for methods that freeze or mask parts of them).
  virtual std::vector<torch::Tensor> AdapterTensors() = 0;

  // The frozen base (every non-LoRA weight, head included) as a file. LoadBase checks the
  // architecture matches. Errors: kNotFound, kDataLoss, kInvalidArgument.
  virtual Status SaveBase(const std::string& path) = 0;
  virtual Status LoadBase(const std::string& path) = 0;

  virtual void Train(bool on) = 0;  // train/eval mode (dropout etc.)

  // Per-example gradients for DP-SGD: for every adapter tensor (Spec() order) that requires
  // grad, the gradient of each example's cross-entropy, [N, ...shape]; an undefined tensor for
  // the others. `losses` receives the per-example losses [N]. One forward and one backward to
  // the LoRA layers' and the head's outputs; each factor's per-example gradient is then a
  // batched product of the captured layer input with the output gradient (for B,
  // s * g^T (x A^T); for A, s * (g B)^T x), O(N T r (d_in + d_out)) per layer, never a loop
  // over examples. Errors: kFailedPrecondition (a trainable tensor that is neither a LoRA
  // factor nor the head, as in full fine-tuning).
  virtual Result<std::vector<torch::Tensor>> PerExampleGradients(const torch::Tensor& images,
                                                                 const torch::Tensor& labels,
                                                                 torch::Tensor* losses) = 0;
};

}  // namespace fedlora::worker
