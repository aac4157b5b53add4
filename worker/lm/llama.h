// A Llama-family decoder (Llama, Mistral, Qwen2) in LibTorch over a mapped Hugging Face
// checkpoint (worker/lm/checkpoint.h), with LoRA pairs where PEFT puts them.
//
// Per layer: h += o_proj(attention(rmsnorm(h) * input_layernorm));
//            h += down_proj(silu(gate_proj(x)) * up_proj(x)), x = rmsnorm(h) * post_attention_layernorm;
// then the final norm and lm_head (the embedding matrix when tied). Attention: q/k/v
// projections (biases for Qwen2), rotary embeddings in the rotate-half convention (dims i and
// i + D/2 turn together by pos * rope_theta^(-2i/D)), grouped-query attention (query head h
// reads key/value head h / (heads / kv_heads)), scores / sqrt(D), causal and padding masks.
// Positions count real tokens only, so left padding does not shift them. Everything is
// computed in fp32; F16 and BF16 weights are widened once when the model is built, F32 ones
// are used in place from the mapping.
//
// Adapter tensors follow the module path: "model.layers.<i>.self_attn.q_proj.lora_A" (r x in)
// and ".lora_B" (out x r), so PEFT's names are these with "base_model.model." in front and
// ".weight" behind. LoRA's scale is alpha / r; A starts seeded (every client the same), B zero.
// Full fine-tuning (method "full") makes every checkpoint tensor, by its Hugging Face name, an
// adapter tensor (role Dense) that trains; F32 ones over the private mapping are written
// copy-on-write, never to the file.
//
// As a worker::Model the task is next-token prediction: an example is a token sequence, its
// loss the mean negative log-likelihood of each token after the first given those before it.
// With LlamaOptions::num_classes > 0 it is sequence classification instead, as Hugging Face's
// LlamaForSequenceClassification computes it: a head "score.weight" [classes, hidden] (no bias,
// role Dense, seeded from the LoRA seed, part of the adapter and trained with it) reads the
// final-normed hidden state of each example's last real token; the loss is the cross-entropy
// of the example's label. An adapter's spec holding "score.weight" is a classifier's.
//
// Include only from worker/ and ops/ translation units: it pulls in LibTorch.
// Thread safety: a model is used by one thread at a time.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "schema/adapter.h"
#include "schema/status.h"
#include "worker/lm/checkpoint.h"
#include "worker/model.h"

namespace fedlora::worker::lm {

struct LlamaOptions {
  uint32_t lora_rank = 8;
  float lora_alpha = 16.0f;
  uint64_t lora_seed = 1;
  std::vector<std::string> target_modules = kDefaultLoraTargets;  // PEFT's short names
  bool lora_residual = false;  // LoRA modules keep a residual (flora, see worker/model.h)
  bool full = false;           // no LoRA: every weight is an adapter tensor and trains
  uint32_t num_classes = 0;    // > 0: sequence classification with a head of this many classes
};

// The classification head's adapter tensor (PEFT: the module "score" of modules_to_save).
inline constexpr const char* kClassifierHead = "score.weight";

// What LlamaModel::ForwardCached keeps of the tokens it has already run, so that each new
// token costs one step instead of a pass over the whole sequence. A default-constructed cache
// is empty; the first ForwardCached call fixes its batch size N. Rows stay aligned: every call
// appends T_new columns to every row (padding columns included, marked in `mask`).
struct KvCache {
  std::vector<torch::Tensor> keys;    // per layer: fp32 [N, KV, T_past, D], rotary embedding applied
  std::vector<torch::Tensor> values;  // per layer: fp32 [N, KV, T_past, D]
  torch::Tensor mask;                 // bool [N, T_past]: true on real tokens
  torch::Tensor positions;            // int64 [N, T_past]: each past token's rotary position
  torch::Tensor count;                // int64 [N]: real past tokens per row (the next real token's position)

  int64_t length() const { return mask.defined() ? mask.size(1) : 0; }  // T_past
  bool empty() const { return length() == 0; }
  void Clear() { *this = KvCache(); }
};

class LlamaModel final : public Model {
 public:
  // Errors: kInvalidArgument (an unknown target module, rank 0, alpha not positive).
  static Result<std::unique_ptr<LlamaModel>> Create(std::shared_ptr<const Checkpoint> checkpoint,
                                                    const LlamaOptions& options);
  ~LlamaModel() override;

  // ids: int64 [N, T]; mask: [N, T], 1 on real tokens and 0 on padding (undefined: no
  // padding). Returns fp32 logits [N, T, vocab]; rows of padding positions are meaningless.
  // Errors (c10::Error): ids out of the vocabulary, T beyond max_position_embeddings or
  // Mistral's sliding window.
  torch::Tensor Forward(const torch::Tensor& ids, const torch::Tensor& mask);
  torch::Tensor Forward(const torch::Tensor& ids) override { return Forward(ids, {}); }
  // A classifier's logits [N, classes] of ids [N, T] (mask as Forward's): the head on the
  // final-normed hidden state of each row's last real token. Errors (c10::Error): those of
  // Forward, a model without a classification head, a row without a real token.
  torch::Tensor Classify(const torch::Tensor& ids, const torch::Tensor& mask);
  // Classes of the head; 0 for a language model.
  int64_t num_classes() const;
  // Forward for the new tokens `ids` [N, T_new] only (mask [N, T_new] as Forward's, undefined:
  // all real), attending to the tokens in `cache` and causally to themselves; appends their
  // keys and values to `cache` and returns their logits [N, T_new, vocab]. Positions continue
  // from the cache (row by row: its real tokens, then cumsum of the new mask - 1), so a prompt
  // run in one call and its continuation run token by token give Forward's logits over the
  // whole sequence (same causal, padding and sliding-window masks, the same LoRA layers).
  // Computes without gradients. Errors (c10::Error, the cache left unchanged): ids out of the
  // vocabulary, a position beyond max_position_embeddings, a batch size other than the cache's.
  torch::Tensor ForwardCached(const torch::Tensor& ids, const torch::Tensor& mask, KvCache& cache);

  const LlamaConfig& config() const;
  const Checkpoint& checkpoint() const;

  // worker::Model.
  Status CheckData(const Dataset& data) const override;
  Batch MakeBatch(const Dataset& data, const std::vector<size_t>& examples) const override;
  torch::Tensor Losses(const Batch& batch) override;
  BatchScore Score(const Batch& batch) override;
  // 8 sequences (next-token logits are [N, T, vocab]); a classifier's are short: 32.
  size_t EvalBatchSize() const override;
  const AdapterSpec& Spec() const override;
  AdapterState ExportAdapter() const override;
  // Checks names and shapes (kInvalidArgument) and finiteness; leaves the model unchanged on error.
  Status LoadAdapter(const AdapterState& state) override;
  void SetLoraScale(double scale) override;
  Status SetPretraining(bool pretraining) override;
  std::vector<torch::Tensor> TrainableParameters() override;
  // The live adapter tensors, in Spec() order.
  std::vector<torch::Tensor> AdapterTensors() override;
  Status SaveBase(const std::string& path) override;
  Status LoadBase(const std::string& path) override;
  void Train(bool on) override { (void)on; }  // no dropout: training and evaluation compute the same
  Result<std::vector<torch::Tensor>> PerExampleGradients(const Batch& batch, torch::Tensor* losses) override;

 private:
  struct Impl;
  explicit LlamaModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fedlora::worker::lm
