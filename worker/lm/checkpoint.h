// A Llama-family checkpoint directory as Hugging Face writes it: `config.json` (the
// architecture and its sizes) and the weights in `model.safetensors`, or in shards listed by
// `model.safetensors.index.json`. The files are mapped, not read: a weight is a view of the
// page cache until the model widens it (F16, BF16) or uses it in place (F32).
//
// Supported `architectures`: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (RMSNorm,
// rotary embeddings, grouped-query attention, SwiGLU MLP, tied or untied lm_head, q/k/v biases
// for Qwen2 and Llama's `attention_bias`). Anything else is refused with what was found and
// what is supported.
//
// No LibTorch here: worker/lm/llama.h builds the model from these views.
// Thread safety: a Checkpoint is immutable after Open.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "schema/adapter.h"
#include "schema/language_model.h"
#include "schema/safetensors.h"
#include "schema/status.h"

namespace fedlora::worker::lm {

// The architectures and PEFT's module names (schema/language_model.h).
using fedlora::kArchitectures;
using fedlora::kDefaultLoraTargets;
using fedlora::kLoraTargets;
using fedlora::kSupportedArchitectures;

struct LlamaConfig {
  std::string architecture;  // e.g. "LlamaForCausalLM"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;        // num_hidden_layers
  int64_t num_heads = 0;         // num_attention_heads
  int64_t num_kv_heads = 0;      // num_key_value_heads (default: num_heads)
  int64_t head_dim = 0;          // head_dim (default: hidden_size / num_heads)
  int64_t max_positions = 0;     // max_position_embeddings
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;         // q, k and v projections carry a bias (Qwen2; Llama's attention_bias)
  bool o_bias = false;           // o_proj carries a bias (Llama's attention_bias)
  int64_t sliding_window = 0;    // Mistral: a token sees at most this many (0: unlimited)
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
};

// Parses config.json's text; `origin` names it in errors. Errors: kInvalidArgument (not JSON, a
// missing or malformed field, sizes that do not fit together), kUnimplemented (an unsupported
// architecture, activation, rope_scaling or Qwen2 sliding window, named with what is supported).
Result<LlamaConfig> ParseConfig(std::string_view json_text, std::string_view origin);

// DIR/config.json, parsed, without touching the weights. Errors: kNotFound (no such directory
// or no config.json), those of ParseConfig.
Result<LlamaConfig> ReadConfig(const std::string& dir);

// One weight of the checkpoint, as its file holds it.
struct WeightView {
  std::string name;
  safetensors::Dtype dtype = safetensors::Dtype::kF32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;  // little-endian, row-major; alignment not guaranteed
  uint64_t numel = 0;
};

// The weights a checkpoint of `config` must hold (Hugging Face names) with their shapes, in a
// fixed order: embeddings, each layer, the final norm, lm_head unless tied.
std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedWeights(const LlamaConfig& config);

// Checks a language model's adapter against the checkpoint in `dir` (every tensor a LoRA factor
// of a module the model has, with that module's shapes at the adapter's rank) and returns the
// checkpoint's architecture. Errors: ReadConfig's, kInvalidArgument naming the first tensor
// that does not fit.
Result<std::string> MatchAdapter(const AdapterSpec& spec, const std::string& dir);

class Checkpoint {
 public:
  // Reads DIR/config.json, maps the weight files and checks every tensor against the config.
  // Errors: kNotFound (no such directory, no config.json, no weights file, a shard the index
  // names), kInvalidArgument / kUnimplemented (the config, see ParseConfig), kDataLoss (a
  // malformed index or safetensors file, naming the file), kFailedPrecondition (tensors missing,
  // extra or misshapen against the config, or of a dtype other than F32/F16/BF16: every such
  // tensor named, up to a limit).
  static Result<std::shared_ptr<const Checkpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const LlamaConfig& config() const { return config_; }
  // The weight named `name` (one of ExpectedWeights), or null.
  const WeightView* Find(std::string_view name) const;
  // Bytes of every mapped weight file.
  uint64_t file_bytes() const { return file_bytes_; }

 private:
  std::string dir_;
  LlamaConfig config_;
  std::vector<safetensors::MappedFile> files_;
  std::vector<WeightView> weights_;
  uint64_t file_bytes_ = 0;
};

}  // namespace fedlora::worker::lm
