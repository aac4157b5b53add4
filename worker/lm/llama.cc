#include "worker/lm/llama.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "worker/lora_linear.h"

namespace fedlora::worker::lm {
namespace {

// Where a LoRA target lives in a layer.
std::string ModulePath(int64_t layer, const std::string& target) {
  const bool mlp = target == "gate_proj" || target == "up_proj" || target == "down_proj";
  return fmt::format("model.layers.{}.{}.{}", layer, mlp ? "mlp" : "self_attn", target);
}

// A weight as an fp32 tensor: F32 in place over the mapping (which the tensor keeps alive),
// F16 / BF16 widened into new memory.
torch::Tensor ToTensor(const WeightView& w, const std::shared_ptr<const Checkpoint>& checkpoint) {
  if (w.dtype == safetensors::Dtype::kF32 && reinterpret_cast<uintptr_t>(w.data) % alignof(float) == 0) {
    auto* keep = new std::shared_ptr<const Checkpoint>(checkpoint);
    // The mapping is private and writable, so a tensor over it is safe even if written to.
    return torch::from_blob(const_cast<std::byte*>(w.data), w.shape, [keep](void*) { delete keep; },
                            torch::TensorOptions().dtype(torch::kFloat));
  }
  torch::Tensor t = torch::empty(w.shape, torch::kFloat);
  float* dst = t.data_ptr<float>();
  const size_t elem = safetensors::DtypeSize(w.dtype);
  // Widening is memory-bound: split it over LibTorch's threads.
  at::parallel_for(0, static_cast<int64_t>(w.numel), 1 << 16, [&](int64_t begin, int64_t end) {
    (void)safetensors::ToFloat(w.dtype, w.data + static_cast<size_t>(begin) * elem, static_cast<size_t>(end - begin),
                               dst + begin);
  });
  return t;
}

torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  return x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps) * weight;
}

// [.., D] -> [-x2, x1] with x1, x2 the halves.
torch::Tensor RotateHalf(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

struct Layer {
  torch::Tensor input_norm, post_norm;
  LoraLinear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr}, gate{nullptr}, up{nullptr}, down{nullptr};

  LoraLinear& Module(const std::string& target) {
    if (target == "q_proj") return q;
    if (target == "k_proj") return k;
    if (target == "v_proj") return v;
    if (target == "o_proj") return o;
    if (target == "gate_proj") return gate;
    if (target == "up_proj") return up;
    return down;
  }
};

}  // namespace

struct LlamaModel::Impl {
  std::shared_ptr<const Checkpoint> checkpoint;
  LlamaConfig config;
  AdapterSpec spec;
  torch::Tensor embed, final_norm, lm_head;
  std::vector<Layer> layers;
  std::vector<torch::Tensor> adapter;  // Spec() order
  std::vector<TensorOwner> owners;     // Spec() order: the LoRA factors' layers
  std::vector<LoraLinearImpl*> lora_layers;
  torch::Tensor inv_freq;              // [D / 2]
  int64_t num_classes = 0;             // > 0: a classifier
  LoraLinear score{nullptr};           // the classifier's head [classes, hidden], no bias

  // The residual stream after the last layer [N, T, hidden] (before the final norm).
  torch::Tensor Residual(const torch::Tensor& ids, const torch::Tensor& mask);

  // Each example's next-token NLL [N, T - 1] (zero where no token is predicted) and the
  // predicted positions [N, T - 1]: token t + 1 of an example, given the ones up to t, counts
  // when both are real.
  std::pair<torch::Tensor, torch::Tensor> TokenNll(const torch::Tensor& logits, const Batch& batch) {
    const int64_t n = batch.inputs.size(0), t = batch.inputs.size(1);
    if (t < 2) return {torch::zeros({n, 0}), torch::zeros({n, 0}, torch::kBool)};
    const torch::Tensor real = batch.mask.defined() ? batch.mask.to(torch::kBool) : torch::ones({n, t}, torch::kBool);
    const torch::Tensor predicted = real.narrow(1, 0, t - 1) & real.narrow(1, 1, t - 1);
    const torch::Tensor targets = batch.inputs.narrow(1, 1, t - 1).to(torch::kLong);
    const torch::Tensor logp = torch::log_softmax(logits.narrow(1, 0, t - 1), -1);
    const torch::Tensor nll = -logp.gather(2, targets.unsqueeze(-1)).squeeze(-1);
    return {nll.masked_fill(predicted.logical_not(), 0.0), predicted};
  }

  // Rotary tables cos, sin [N, 1, T, D] of positions [N, T].
  std::pair<torch::Tensor, torch::Tensor> Rotary(const torch::Tensor& pos) const {
    const torch::Tensor freqs = pos.to(torch::kFloat).unsqueeze(-1) * inv_freq;  // [N, T, D/2]
    const torch::Tensor emb = torch::cat({freqs, freqs}, -1).unsqueeze(1);
    return {emb.cos(), emb.sin()};
  }

  // The SwiGLU block's output for the residual stream h.
  torch::Tensor Mlp(Layer& layer, const torch::Tensor& h) const {
    const torch::Tensor x = RmsNorm(h, layer.post_norm, config.rms_norm_eps);
    return layer.down(torch::silu(layer.gate(x)) * layer.up(x));
  }

  // Logits of the residual stream h.
  torch::Tensor Head(const torch::Tensor& h) const { return Dense(RmsNorm(h, final_norm, config.rms_norm_eps), lm_head); }

  // Attention of x's tokens to themselves (causal and padding masks in `bias`).
  torch::Tensor Attention(Layer& layer, const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                          const torch::Tensor& bias) {
    torch::Tensor keys, values;
    return AttentionCached(layer, x, cos, sin, bias, {}, {}, keys, values);
  }

  // Attention of x's tokens [N, T, hidden] to the past keys and values [N, KV, P, D] (undefined:
  // none) and to themselves; bias [N, 1, 1, T, P + T]. `keys` and `values` receive the past
  // with x's appended.
  torch::Tensor AttentionCached(Layer& layer, const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                const torch::Tensor& bias, const torch::Tensor& past_keys,
                                const torch::Tensor& past_values, torch::Tensor& keys, torch::Tensor& values) {
    const int64_t n = x.size(0), t = x.size(1), d = config.head_dim;
    const int64_t heads = config.num_heads, kv = config.num_kv_heads, group = heads / kv;
    torch::Tensor q = layer.q(x).view({n, t, heads, d}).transpose(1, 2);  // [N, H, T, D]
    torch::Tensor k = layer.k(x).view({n, t, kv, d}).transpose(1, 2);     // [N, KV, T, D]
    const torch::Tensor v = layer.v(x).view({n, t, kv, d}).transpose(1, 2);
    q = q * cos + RotateHalf(q) * sin;
    k = k * cos + RotateHalf(k) * sin;
    keys = past_keys.defined() ? torch::cat({past_keys, k}, 2) : k;  // [N, KV, P + T, D]
    values = past_values.defined() ? torch::cat({past_values, v}, 2) : v;
    // Grouped-query: the `group` query heads of a key/value head attend together.
    const torch::Tensor q5 = q.reshape({n, kv, group, t, d});
    const torch::Tensor scores =
        torch::matmul(q5, keys.unsqueeze(2).transpose(-1, -2)) * (1.0 / std::sqrt(static_cast<double>(d))) + bias;
    const torch::Tensor out = torch::matmul(torch::softmax(scores, -1), values.unsqueeze(2));  // [N, KV, G, T, D]
    return layer.o(out.reshape({n, heads, t, d}).transpose(1, 2).reshape({n, t, heads * d}));
  }
};

LlamaModel::LlamaModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LlamaModel::~LlamaModel() = default;

Result<std::unique_ptr<LlamaModel>> LlamaModel::Create(std::shared_ptr<const Checkpoint> checkpoint,
                                                      const LlamaOptions& options) {
  if (options.lora_rank == 0 && !options.full) return InvalidArgument("LoRA rank must be positive");
  if (options.full && options.lora_residual) return InvalidArgument("full fine-tuning keeps no LoRA residual");
  if (!(options.lora_alpha > 0) || !std::isfinite(options.lora_alpha)) {
    return InvalidArgument(fmt::format("LoRA alpha must be positive, got {}", options.lora_alpha));
  }
  if (options.target_modules.empty() && !options.full) return InvalidArgument("no LoRA target modules");
  for (const auto& t : options.target_modules) {
    if (std::find(kLoraTargets.begin(), kLoraTargets.end(), t) == kLoraTargets.end()) {
      return InvalidArgument(fmt::format("'{}' is not a LoRA target of a Llama-family model (known: {})", t,
                                         fmt::join(kLoraTargets, ", ")));
    }
  }
  auto impl = std::make_unique<Impl>();
  impl->checkpoint = checkpoint;
  impl->config = checkpoint->config();
  const LlamaConfig& c = impl->config;
  std::map<std::string, torch::Tensor> weights;  // full fine-tuning: every tensor by name
  auto weight = [&](const std::string& name) -> torch::Tensor {
    const WeightView* w = checkpoint->Find(name);
    if (w == nullptr) return {};  // Open checked every expected name
    torch::Tensor t = ToTensor(*w, checkpoint);
    if (options.full) weights[name] = t;
    return t;
  };
  const uint32_t rank = options.full ? 0 : options.lora_rank;
  const double scale = rank == 0 ? 1.0 : static_cast<double>(options.lora_alpha) / rank;
  AdapterSpec& spec = impl->spec;
  spec.model = c.architecture;
  spec.rank = rank;
  spec.alpha = options.lora_alpha;
  spec.seed = options.lora_seed;
  for (const auto& t : kLoraTargets) {  // PEFT's order, whatever order they were given in
    if (options.full) break;
    if (std::find(options.target_modules.begin(), options.target_modules.end(), t) != options.target_modules.end()) {
      spec.target_modules.push_back(t);
    }
  }
  try {
    torch::NoGradGuard no_grad;
    impl->embed = weight("model.embed_tokens.weight");
    impl->final_norm = weight("model.norm.weight");
    impl->lm_head = c.tie_word_embeddings ? impl->embed : weight("lm_head.weight");
    for (int64_t i = 0; i < c.num_layers; ++i) {
      Layer layer;
      const std::string p = fmt::format("model.layers.{}.", i);
      layer.input_norm = weight(p + "input_layernorm.weight");
      layer.post_norm = weight(p + "post_attention_layernorm.weight");
      for (const auto& target : kLoraTargets) {
        const std::string path = ModulePath(i, target);
        const bool lora = std::find(spec.target_modules.begin(), spec.target_modules.end(), target) != spec.target_modules.end();
        const bool has_bias = (c.qkv_bias && (target == "q_proj" || target == "k_proj" || target == "v_proj")) ||
                              (c.o_bias && target == "o_proj");
        LoraLinear module(weight(path + ".weight"), has_bias ? weight(path + ".bias") : torch::Tensor(),
                          lora ? rank : 0, scale, lora && options.lora_residual, LoraApply::kSeparate);
        if (lora) {
          module->ResetLora(options.lora_seed, path);
          impl->lora_layers.push_back(module.get());
          spec.tensors.push_back({path + ".lora_A", {rank, static_cast<uint32_t>(module->weight.size(1))},
                                  TensorRole::kLoraA});
          impl->adapter.push_back(module->lora_A);
          impl->owners.push_back({module.get(), LinearPart::kA});
          spec.tensors.push_back({path + ".lora_B", {static_cast<uint32_t>(module->weight.size(0)), rank},
                                  TensorRole::kLoraB});
          impl->adapter.push_back(module->lora_B);
          impl->owners.push_back({module.get(), LinearPart::kB});
          if (options.lora_residual) {
            spec.tensors.push_back({path + ".lora_residual",
                                    {static_cast<uint32_t>(module->weight.size(0)), static_cast<uint32_t>(module->weight.size(1))},
                                    TensorRole::kLoraResidual});
            impl->adapter.push_back(module->lora_residual);
            impl->owners.push_back({});
          }
        }
        layer.Module(target) = std::move(module);
      }
      impl->layers.push_back(std::move(layer));
    }
    if (options.full) {  // every tensor of the checkpoint, in its order, trains
      for (const auto& [name, shape] : ExpectedWeights(c)) {
        const auto it = weights.find(name);
        if (it == weights.end()) continue;
        std::vector<uint32_t> dims;
        for (int64_t d : shape) dims.push_back(static_cast<uint32_t>(d));
        spec.tensors.push_back({name, std::move(dims), TensorRole::kDense});
        impl->adapter.push_back(it->second);
        impl->owners.push_back({});
      }
    }
    if (options.num_classes > 0) {  // the classifier's head, after the checkpoint's tensors
      impl->num_classes = options.num_classes;
      impl->score = LoraLinear(c.hidden_size, options.num_classes, 0, 1.0, false, LoraApply::kSeparate,
                               /*has_bias=*/false);
      impl->score->ResetBase(options.lora_seed, "score");
      spec.tensors.push_back({kClassifierHead, {options.num_classes, static_cast<uint32_t>(c.hidden_size)},
                              TensorRole::kDense});
      impl->adapter.push_back(impl->score->weight);
      impl->owners.push_back({impl->score.get(), LinearPart::kWeight});
    }
    // inv_freq_i = theta^(-2i / D), in fp32 as the reference implementations compute it.
    impl->inv_freq =
        1.0 / torch::pow(c.rope_theta, torch::arange(0, c.head_dim, 2, torch::kLong).to(torch::kFloat) / c.head_dim);
  } catch (const c10::Error& e) {
    return Internal(fmt::format("building the model of '{}': {}", checkpoint->dir(), e.what_without_backtrace()));
  }
  std::unique_ptr<LlamaModel> model(new LlamaModel(std::move(impl)));
  (void)model->SetPretraining(false);
  return model;
}

torch::Tensor LlamaModel::Impl::Residual(const torch::Tensor& ids, const torch::Tensor& mask_in) {
  Impl& m = *this;
  const LlamaConfig& c = m.config;
  TORCH_CHECK(ids.dim() == 2, "ids must be [N, T], got ", ids.sizes());
  const int64_t n = ids.size(0), t = ids.size(1);
  const torch::Tensor tokens = ids.to(torch::kLong);
  if (tokens.numel() > 0) {
    TORCH_CHECK(tokens.min().item<int64_t>() >= 0 && tokens.max().item<int64_t>() < c.vocab_size,
                "token ids must lie in [0, ", c.vocab_size, ")");
  }
  const torch::Tensor real = mask_in.defined() ? mask_in.to(torch::kBool) : torch::ones({n, t}, torch::kBool);
  TORCH_CHECK(real.sizes() == ids.sizes(), "mask must have the shape of ids");
  // Positions of real tokens only: left padding does not shift them.
  const torch::Tensor pos = (real.to(torch::kLong).cumsum(1) - 1).clamp_min(0);  // [N, T]
  if (t > 0) {
    TORCH_CHECK(pos.max().item<int64_t>() < c.max_positions, "a sequence is longer than max_position_embeddings (",
                c.max_positions, ")");
  }

  // Rotary tables [N, 1, T, D].
  const auto [cos, sin] = m.Rotary(pos);
  // Additive mask [N, 1, 1, T, T]: query i sees key j when j <= i, j is real and (Mistral)
  // within the window; every position sees itself, so no softmax row is empty.
  const torch::Tensor idx = torch::arange(t, torch::kLong);
  torch::Tensor allowed = (idx.unsqueeze(0) <= idx.unsqueeze(1)).unsqueeze(0) & real.unsqueeze(1);  // [N, T(i), T(j)]
  if (c.sliding_window > 0) allowed = allowed & ((pos.unsqueeze(2) - pos.unsqueeze(1)) < c.sliding_window);
  allowed = allowed | torch::eye(t, torch::kBool).unsqueeze(0);
  const torch::Tensor bias =
      torch::zeros({n, t, t}).masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity()).view({n, 1, 1, t, t});

  torch::Tensor h = m.embed.index_select(0, tokens.reshape({-1})).view({n, t, c.hidden_size});
  for (Layer& layer : m.layers) {
    h = h + m.Attention(layer, RmsNorm(h, layer.input_norm, c.rms_norm_eps), cos, sin, bias);
    h = h + m.Mlp(layer, h);
  }
  return h;
}

torch::Tensor LlamaModel::Forward(const torch::Tensor& ids, const torch::Tensor& mask) {
  return impl_->Head(impl_->Residual(ids, mask));
}

torch::Tensor LlamaModel::Classify(const torch::Tensor& ids, const torch::Tensor& mask) {
  Impl& m = *impl_;
  TORCH_CHECK(m.num_classes > 0, "the model has no classification head");
  const torch::Tensor h = m.Residual(ids, mask);
  const int64_t n = ids.size(0), t = ids.size(1);
  const torch::Tensor real = mask.defined() ? mask.to(torch::kBool) : torch::ones({n, t}, torch::kBool);
  TORCH_CHECK(t > 0 && real.any(1).all().item<bool>(), "every row needs a real token to classify");
  // The last real token of each row, whichever side the padding is on.
  const torch::Tensor last = (real.to(torch::kLong) * torch::arange(t, torch::kLong)).argmax(1);  // [N]
  const torch::Tensor pooled = h.index({torch::arange(n, torch::kLong), last});                  // [N, hidden]
  return m.score(RmsNorm(pooled, m.final_norm, m.config.rms_norm_eps));
}

int64_t LlamaModel::num_classes() const { return impl_->num_classes; }

size_t LlamaModel::EvalBatchSize() const { return impl_->num_classes > 0 ? 32 : 8; }


torch::Tensor LlamaModel::ForwardCached(const torch::Tensor& ids, const torch::Tensor& mask_in, KvCache& cache) {
  torch::NoGradGuard no_grad;
  Impl& m = *impl_;
  const LlamaConfig& c = m.config;
  TORCH_CHECK(ids.dim() == 2, "ids must be [N, T], got ", ids.sizes());
  const int64_t n = ids.size(0), t = ids.size(1), layers = static_cast<int64_t>(m.layers.size());
  const bool started = cache.count.defined();
  if (started) {
    TORCH_CHECK(cache.count.size(0) == n, "the cache holds ", cache.count.size(0), " rows, ids have ", n);
    TORCH_CHECK(static_cast<int64_t>(cache.keys.size()) == layers && static_cast<int64_t>(cache.values.size()) == layers,
                "the cache was filled by another model");
  }
  const torch::Tensor tokens = ids.to(torch::kLong);
  if (tokens.numel() > 0) {
    TORCH_CHECK(tokens.min().item<int64_t>() >= 0 && tokens.max().item<int64_t>() < c.vocab_size,
                "token ids must lie in [0, ", c.vocab_size, ")");
  }
  const torch::Tensor real = mask_in.defined() ? mask_in.to(torch::kBool) : torch::ones({n, t}, torch::kBool);
  TORCH_CHECK(real.sizes() == ids.sizes(), "mask must have the shape of ids");
  if (t == 0) return torch::zeros({n, 0, c.vocab_size});
  const torch::Tensor past_count = started ? cache.count : torch::zeros({n}, torch::kLong);
  const torch::Tensor past_real = started ? cache.mask : torch::zeros({n, 0}, torch::kBool);
  const torch::Tensor past_pos = started ? cache.positions : torch::zeros({n, 0}, torch::kLong);
  const int64_t p = past_real.size(1);
  // Positions continue from the real tokens of the past, as Forward's cumsum over the whole row.
  const torch::Tensor pos = (past_count.unsqueeze(1) + real.to(torch::kLong).cumsum(1) - 1).clamp_min(0);  // [N, T]
  if (t > 0) {
    TORCH_CHECK(pos.max().item<int64_t>() < c.max_positions, "a sequence is longer than max_position_embeddings (",
                c.max_positions, ")");
  }

  const auto [cos, sin] = m.Rotary(pos);
  // Additive mask [N, 1, 1, T, P + T]: new token i (column P + i of the row) sees key j when
  // j <= P + i, j is real and (Mistral) within the window; it always sees itself.
  const torch::Tensor key_real = torch::cat({past_real, real}, 1);  // [N, P + T]
  const torch::Tensor key_pos = torch::cat({past_pos, pos}, 1);
  const torch::Tensor qi = torch::arange(p, p + t, torch::kLong).unsqueeze(1);  // [T, 1]
  const torch::Tensor kj = torch::arange(p + t, torch::kLong).unsqueeze(0);     // [1, P + T]
  torch::Tensor allowed = (kj <= qi).unsqueeze(0) & key_real.unsqueeze(1);    // [N, T, P + T]
  if (c.sliding_window > 0) allowed = allowed & ((pos.unsqueeze(2) - key_pos.unsqueeze(1)) < c.sliding_window);
  allowed = allowed | (kj == qi).unsqueeze(0);
  const torch::Tensor bias = torch::zeros({n, t, p + t})
                                 .masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity())
                                 .view({n, 1, 1, t, p + t});

  const torch::Tensor empty_kv = torch::zeros({n, c.num_kv_heads, 0, c.head_dim});
  std::vector<torch::Tensor> keys(m.layers.size()), values(m.layers.size());
  torch::Tensor h = m.embed.index_select(0, tokens.reshape({-1})).view({n, t, c.hidden_size});
  for (size_t l = 0; l < m.layers.size(); ++l) {
    Layer& layer = m.layers[l];
    h = h + m.AttentionCached(layer, RmsNorm(h, layer.input_norm, c.rms_norm_eps), cos, sin, bias,
                              started ? cache.keys[l] : empty_kv, started ? cache.values[l] : empty_kv, keys[l],
                              values[l]);
    h = h + m.Mlp(layer, h);
  }
  torch::Tensor logits = m.Head(h);
  // Nothing above changed the cache: an error leaves it as it was.
  cache.keys = std::move(keys);
  cache.values = std::move(values);
  cache.mask = key_real;
  cache.positions = key_pos;
  cache.count = past_count + real.to(torch::kLong).sum(1);
  return logits;
}

const LlamaConfig& LlamaModel::config() const { return impl_->config; }
const Checkpoint& LlamaModel::checkpoint() const { return *impl_->checkpoint; }

Status LlamaModel::CheckData(const Dataset& data) const {
  if (!data.is_text() || data.offsets.size() != data.size() + 1 || data.offsets.back() != data.tokens.size()) {
    return InvalidArgument(fmt::format("a {} reads token sequences; the data holds {}", impl_->config.architecture,
                                       data.is_text() ? "malformed offsets" : "images"));
  }
  for (size_t i = 0; i < data.tokens.size(); ++i) {
    if (data.tokens[i] < 0 || data.tokens[i] >= impl_->config.vocab_size) {
      return InvalidArgument(fmt::format("token {} of the data is id {}, outside the vocabulary [0, {})", i,
                                         data.tokens[i], impl_->config.vocab_size));
    }
  }
  const int64_t classes = impl_->num_classes;
  if (classes > 0 && data.num_classes != classes) {
    return InvalidArgument(fmt::format("the classifier has {} classes, the data {}", classes, data.num_classes));
  }
  for (size_t i = 0; i < data.size(); ++i) {
    if (classes > 0 && data.offsets[i + 1] == data.offsets[i]) {
      return InvalidArgument(fmt::format("example {} has no tokens to classify", i));
    }
    if (classes > 0 && data.labels[i] >= classes) {
      return InvalidArgument(fmt::format("example {} has label {}, beyond the classifier's {} classes", i,
                                         data.labels[i], classes));
    }
    if (data.offsets[i + 1] - data.offsets[i] > static_cast<size_t>(impl_->config.max_positions)) {
      return InvalidArgument(fmt::format("example {} has {} tokens, beyond max_position_embeddings ({})", i,
                                         data.offsets[i + 1] - data.offsets[i], impl_->config.max_positions));
    }
  }
  return Status::Ok();
}

Batch LlamaModel::MakeBatch(const Dataset& data, const std::vector<size_t>& examples) const {
  size_t longest = 0;
  for (size_t e : examples) longest = std::max(longest, data.offsets[e + 1] - data.offsets[e]);
  const auto n = static_cast<int64_t>(examples.size());
  Batch batch;
  batch.inputs = torch::zeros({n, static_cast<int64_t>(longest)}, torch::kLong);
  batch.mask = torch::zeros({n, static_cast<int64_t>(longest)}, torch::kLong);
  int64_t* ids = batch.inputs.data_ptr<int64_t>();
  int64_t* real = batch.mask.data_ptr<int64_t>();
  for (size_t i = 0; i < examples.size(); ++i) {
    const size_t begin = data.offsets[examples[i]], len = data.offsets[examples[i] + 1] - begin;
    for (size_t j = 0; j < len; ++j) {
      ids[i * longest + j] = data.tokens[begin + j];
      real[i * longest + j] = 1;
    }
  }
  if (impl_->num_classes > 0) {
    batch.targets = torch::empty({n}, torch::kLong);
    for (size_t i = 0; i < examples.size(); ++i) batch.targets.data_ptr<int64_t>()[i] = data.labels[examples[i]];
  }
  return batch;
}

torch::Tensor LlamaModel::Losses(const Batch& batch) {
  if (impl_->num_classes > 0) {
    return torch::nn::functional::cross_entropy(
        Classify(batch.inputs, batch.mask), batch.targets,
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  }
  auto [nll, predicted] = impl_->TokenNll(Forward(batch.inputs, batch.mask), batch);
  return nll.sum(1) / predicted.sum(1).clamp_min(1).to(torch::kFloat);
}

BatchScore LlamaModel::Score(const Batch& batch) {
  torch::NoGradGuard no_grad;
  if (impl_->num_classes > 0) return ClassificationScore(Classify(batch.inputs, batch.mask), batch.targets);
  BatchScore score;
  const torch::Tensor logits = Forward(batch.inputs, batch.mask);
  auto [nll, predicted] = impl_->TokenNll(logits, batch);
  score.loss_sum = nll.to(torch::kDouble).sum(1);
  score.count = predicted.to(torch::kDouble).sum(1);
  const int64_t t = batch.inputs.size(1);
  if (t < 2) {
    score.correct = torch::zeros({batch.size()}, torch::kDouble);
  } else {
    const torch::Tensor hit = logits.narrow(1, 0, t - 1).argmax(-1).eq(batch.inputs.narrow(1, 1, t - 1)) & predicted;
    score.correct = hit.to(torch::kDouble).sum(1);
  }
  return score;
}

void LlamaModel::SetLoraScale(double scale) {
  for (auto* layer : impl_->lora_layers) layer->set_scale(scale);
}

Status LlamaModel::SetPretraining(bool pretraining) {
  if (pretraining) {
    return Unimplemented(fmt::format("a {}'s base is the checkpoint '{}': fedlora fine-tunes it, and pretraining "
                                     "applies to the image models",
                                     impl_->config.architecture, impl_->checkpoint->dir()));
  }
  for (size_t i = 0; i < impl_->adapter.size(); ++i) {
    impl_->adapter[i].set_requires_grad(impl_->spec.tensors[i].role != TensorRole::kLoraResidual);
  }
  return Status::Ok();
}

std::vector<torch::Tensor> LlamaModel::TrainableParameters() {
  std::vector<torch::Tensor> trainable;
  for (const auto& t : impl_->adapter) {
    if (t.requires_grad()) trainable.push_back(t);
  }
  return trainable;
}

Status LlamaModel::SaveBase(const std::string& path) {
  return Unimplemented(fmt::format("a {}'s base is its checkpoint directory '{}'; it is not written to '{}'",
                                   impl_->config.architecture, impl_->checkpoint->dir(), path));
}

Status LlamaModel::LoadBase(const std::string& path) {
  return Unimplemented(fmt::format("a {}'s base is the checkpoint it is opened on ('{}'), not '{}'",
                                   impl_->config.architecture, impl_->checkpoint->dir(), path));
}

Result<std::vector<torch::Tensor>> LlamaModel::PerExampleGradients(const Batch& batch, torch::Tensor* losses) {
  return worker::PerExampleGradients(impl_->spec, impl_->owners, impl_->adapter, [&] { return Losses(batch); },
                                     losses);
}
const AdapterSpec& LlamaModel::Spec() const { return impl_->spec; }
std::vector<torch::Tensor> LlamaModel::AdapterTensors() { return impl_->adapter; }

AdapterState LlamaModel::ExportAdapter() const {
  AdapterState state;
  for (size_t i = 0; i < impl_->spec.tensors.size(); ++i) {
    const torch::Tensor t = impl_->adapter[i].detach().contiguous();
    state.tensors.push_back({impl_->spec.tensors[i].name, impl_->spec.tensors[i].shape,
                             std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel())});
  }
  return state;
}

Status LlamaModel::LoadAdapter(const AdapterState& state) {
  RETURN_IF_ERROR(CheckStateMatchesSpec(impl_->spec, state));
  for (const auto& t : state.tensors) {
    if (!std::all_of(t.values.begin(), t.values.end(), [](float v) { return std::isfinite(v); })) {
      return InvalidArgument(fmt::format("tensor '{}' holds non-finite values", t.name));
    }
  }
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < state.tensors.size(); ++i) {
    impl_->adapter[i].detach().copy_(
        torch::from_blob(const_cast<float*>(state.tensors[i].values.data()), impl_->adapter[i].sizes(), torch::kFloat));
  }
  return Status::Ok();
}

}  // namespace fedlora::worker::lm
