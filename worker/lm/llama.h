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

namespace fedlora::worker::lm {

// PEFT's module names that can carry LoRA, and the default targets (PEFT's for Llama).
inline const std::vector<std::string> kLoraTargets = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                      "gate_proj", "up_proj", "down_proj"};
inline const std::vector<std::string> kDefaultLoraTargets = {"q_proj", "v_proj"};

struct LlamaOptions {
  uint32_t lora_rank = 8;
  float lora_alpha = 16.0f;
  uint64_t lora_seed = 1;
  std::vector<std::string> target_modules = kDefaultLoraTargets;  // PEFT's short names
  bool lora_residual = false;  // LoRA modules keep a residual (flora, see worker/model.h)
};

class LlamaModel {
 public:
  // Errors: kInvalidArgument (an unknown target module, rank 0, alpha not positive).
  static Result<std::unique_ptr<LlamaModel>> Create(std::shared_ptr<const Checkpoint> checkpoint,
                                                    const LlamaOptions& options);
  ~LlamaModel();

  // ids: int64 [N, T]; mask: [N, T], 1 on real tokens and 0 on padding (undefined: no
  // padding). Returns fp32 logits [N, T, vocab]; rows of padding positions are meaningless.
  // Errors (c10::Error): ids out of the vocabulary, T beyond max_position_embeddings or
  // Mistral's sliding window.
  torch::Tensor Forward(const torch::Tensor& ids, const torch::Tensor& mask = {});

  const LlamaConfig& config() const;
  const AdapterSpec& Spec() const;
  AdapterState ExportAdapter() const;
  // Checks names and shapes (kInvalidArgument) and finiteness; leaves the model unchanged on error.
  Status LoadAdapter(const AdapterState& state);
  // The live adapter tensors, in Spec() order.
  std::vector<torch::Tensor> AdapterTensors();

 private:
  struct Impl;
  explicit LlamaModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fedlora::worker::lm
