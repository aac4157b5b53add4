// The model a worker trains, behind one interface for every task:
//   image: a small patch transformer ("vit-tiny", default) or a tiny MLP ("mlp", for fast
//          tests) classifying Fashion-MNIST, each with LoRA pairs on its projections and a
//          trainable classification head;
//   language model: a Llama-family decoder opened from a Hugging Face checkpoint directory
//          (worker/lm/llama.h), with LoRA pairs where PEFT puts them, trained on next tokens.
// Training, every method's client half, DP-SGD and evaluation see only this interface: a
// model turns a dataset's examples into a Batch, gives each example's loss, per-example
// gradients and evaluation sums. The base weights are frozen during federated fine-tuning;
// only the adapter trains.
//
// Adapter tensor names are stable and form the wire contract, e.g.
//   vit-tiny: "blocks.<i>.attn.{q,k,v,o}.lora_{A,B}", "blocks.<i>.mlp.{fc1,fc2}.lora_{A,B}",
//             "head.weight", "head.bias"
//   mlp:      "fc1.lora_{A,B}", "fc2.lora_{A,B}", "head.weight", "head.bias"
//   llama:    "model.layers.<i>.self_attn.q_proj.lora_{A,B}" (PEFT's module paths)
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
#include "worker/data.h"

namespace fedlora::worker {

// Examples in a model's input form.
struct Batch {
  torch::Tensor inputs;   // image: uint8 [N, 28, 28]; language model: int64 token ids [N, T]
  torch::Tensor targets;  // image: int64 labels [N]; language model: undefined (the next tokens)
  torch::Tensor mask;     // language model: [N, T], 1 on real tokens, 0 on padding
  int64_t size() const { return inputs.defined() ? inputs.size(0) : 0; }
};

// Evaluation sums of a batch, per example ([N], double).
struct BatchScore {
  torch::Tensor loss_sum;  // summed loss: image, the cross-entropy; language model, the NLL of every predicted token
  torch::Tensor correct;   // predictions that were right (image: the class; language model: the next token, by argmax)
  torch::Tensor count;     // predictions made (image: 1; language model: the predicted tokens)
};

// The evaluation sums of a classifier's logits [N, C] against labels [N]: the cross-entropy,
// whether the argmax is right, and a count of 1 per example (image models and the language
// model's sequence classifier alike).
BatchScore ClassificationScore(const torch::Tensor& logits, const torch::Tensor& targets);

// The architectures of the language-model task (config.json `architectures`).
bool IsLanguageModel(const std::string& arch);

struct ModelOptions {
  // "vit-tiny" or "mlp" (image task), or a language model's architecture as its checkpoint's
  // config.json names it ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM").
  std::string arch = "vit-tiny";
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
  // A language model as a sequence classifier with this many classes (0: next-token
  // prediction); see worker/lm/llama.h. The image models have their own 10-class head.
  uint32_t num_classes = 0;

  // The options of the model an adapter of `spec` belongs to.
  static ModelOptions ForSpec(const AdapterSpec& spec);
};

class Model {
 public:
  // An image model with freshly initialised base weights (LoadBase or pretraining sets them).
  // Errors: kInvalidArgument (unknown arch or target module, rank 0, a language model's arch:
  // those come from Open).
  static Result<std::unique_ptr<Model>> Create(const ModelOptions& options);
  // A model over its frozen base: an image model's base file (Create + LoadBase), or a
  // language model's checkpoint directory, whose config.json must name options.arch.
  // Errors: those of Create and LoadBase; for a language model those of lm::Checkpoint::Open
  // and kInvalidArgument (the checkpoint is another architecture).
  static Result<std::unique_ptr<Model>> Open(const ModelOptions& options, const std::string& base);
  virtual ~Model() = default;

  // The task's forward pass on Batch::inputs: image logits [N, 10] (uint8 [N, 28, 28] or float
  // [N, 1, 28, 28] already normalised), or language-model logits [N, T, vocab] (no padding).
  virtual torch::Tensor Forward(const torch::Tensor& inputs) = 0;

  // Whether `data` holds this model's kind of examples (images or token ids in its
  // vocabulary). Errors: kInvalidArgument, naming what is wrong.
  virtual Status CheckData(const Dataset& data) const = 0;
  // data[examples] as a batch (language model: right-padded to the longest example).
  virtual Batch MakeBatch(const Dataset& data, const std::vector<size_t>& examples) const = 0;
  // Each example's loss [N], differentiable: the cross-entropy of its label, or the mean NLL
  // of its next tokens. Training minimises their mean.
  virtual torch::Tensor Losses(const Batch& batch) = 0;
  // Evaluation sums of a batch (no gradients).
  virtual BatchScore Score(const Batch& batch) = 0;
  // Examples per evaluation batch.
  virtual size_t EvalBatchSize() const = 0;

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
  // Errors: kUnimplemented (a language model: its base is the checkpoint it was opened on).
  virtual Status SetPretraining(bool pretraining) = 0;
  virtual std::vector<torch::Tensor> TrainableParameters() = 0;
  // The live adapter tensors, in Spec() order (for methods that freeze or mask parts of them).
  virtual std::vector<torch::Tensor> AdapterTensors() = 0;

  // The frozen base (every non-LoRA weight, head included) as a file. LoadBase checks the
  // architecture matches. Errors: kNotFound, kDataLoss, kInvalidArgument; kUnimplemented for a
  // language model, whose base is the checkpoint directory given to Open.
  virtual Status SaveBase(const std::string& path) = 0;
  virtual Status LoadBase(const std::string& path) = 0;

  virtual void Train(bool on) = 0;  // train/eval mode (dropout etc.)

  // Per-example gradients for DP-SGD: for every adapter tensor (Spec() order) that requires
  // grad, the gradient of each example's loss (Losses), [N, ...shape]; an undefined tensor for
  // the others. `losses` receives the per-example losses [N]. One forward and one backward to
  // the LoRA layers' and the head's outputs; each factor's per-example gradient is then a
  // batched product of the captured layer input with the output gradient (for B,
  // s * g^T (x A^T); for A, s * (g B)^T x), O(N T r (d_in + d_out)) per layer, never a loop
  // over examples. Errors: kFailedPrecondition (a trainable tensor that is neither a LoRA
  // factor nor the head, as in full fine-tuning).
  virtual Result<std::vector<torch::Tensor>> PerExampleGradients(const Batch& batch, torch::Tensor* losses) = 0;
};

}  // namespace fedlora::worker
