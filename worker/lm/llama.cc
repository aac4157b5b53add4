#include "worker/lm/llama.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>

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
  torch::Tensor inv_freq;              // [D / 2]

  torch::Tensor Attention(Layer& layer, const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                          const torch::Tensor& bias) {
    const int64_t n = x.size(0), t = x.size(1), d = config.head_dim;
    const int64_t heads = config.num_heads, kv = config.num_kv_heads, group = heads / kv;
    torch::Tensor q = layer.q(x).view({n, t, heads, d}).transpose(1, 2);  // [N, H, T, D]
    torch::Tensor k = layer.k(x).view({n, t, kv, d}).transpose(1, 2);     // [N, KV, T, D]
    torch::Tensor v = layer.v(x).view({n, t, kv, d}).transpose(1, 2);
    q = q * cos + RotateHalf(q) * sin;
    k = k * cos + RotateHalf(k) * sin;
    // Grouped-query: the `group` query heads of a key/value head attend together.
    const torch::Tensor q5 = q.reshape({n, kv, group, t, d});
    const torch::Tensor scores =
        torch::matmul(q5, k.unsqueeze(2).transpose(-1, -2)) * (1.0 / std::sqrt(static_cast<double>(d))) + bias;
    const torch::Tensor out = torch::matmul(torch::softmax(scores, -1), v.unsqueeze(2));  // [N, KV, G, T, D]
    return layer.o(out.reshape({n, heads, t, d}).transpose(1, 2).reshape({n, t, heads * d}));
  }
};

LlamaModel::LlamaModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LlamaModel::~LlamaModel() = default;

Result<std::unique_ptr<LlamaModel>> LlamaModel::Create(std::shared_ptr<const Checkpoint> checkpoint,
                                                      const LlamaOptions& options) {
  if (options.lora_rank == 0) return InvalidArgument("LoRA rank must be positive");
  if (!(options.lora_alpha > 0) || !std::isfinite(options.lora_alpha)) {
    return InvalidArgument(fmt::format("LoRA alpha must be positive, got {}", options.lora_alpha));
  }
  if (options.target_modules.empty()) return InvalidArgument("no LoRA target modules");
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
  auto weight = [&](const std::string& name) -> torch::Tensor {
    const WeightView* w = checkpoint->Find(name);
    return w != nullptr ? ToTensor(*w, checkpoint) : torch::Tensor();  // Open checked every expected name
  };
  const double scale = static_cast<double>(options.lora_alpha) / options.lora_rank;
  AdapterSpec& spec = impl->spec;
  spec.model = c.architecture;
  spec.rank = options.lora_rank;
  spec.alpha = options.lora_alpha;
  spec.seed = options.lora_seed;
  for (const auto& t : kLoraTargets) {  // PEFT's order, whatever order they were given in
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
                          lora ? options.lora_rank : 0, scale, lora && options.lora_residual, LoraApply::kSeparate);
        if (lora) {
          module->ResetLora(options.lora_seed, path);
          spec.tensors.push_back({path + ".lora_A", {options.lora_rank, static_cast<uint32_t>(module->weight.size(1))},
                                  TensorRole::kLoraA});
          impl->adapter.push_back(module->lora_A);
          spec.tensors.push_back({path + ".lora_B", {static_cast<uint32_t>(module->weight.size(0)), options.lora_rank},
                                  TensorRole::kLoraB});
          impl->adapter.push_back(module->lora_B);
          if (options.lora_residual) {
            spec.tensors.push_back({path + ".lora_residual",
                                    {static_cast<uint32_t>(module->weight.size(0)), static_cast<uint32_t>(module->weight.size(1))},
                                    TensorRole::kLoraResidual});
            impl->adapter.push_back(module->lora_residual);
          }
        }
        layer.Module(target) = std::move(module);
      }
      impl->layers.push_back(std::move(layer));
    }
    // inv_freq_i = theta^(-2i / D), in fp32 as the reference implementations compute it.
    impl->inv_freq =
        1.0 / torch::pow(c.rope_theta, torch::arange(0, c.head_dim, 2, torch::kLong).to(torch::kFloat) / c.head_dim);
  } catch (const c10::Error& e) {
    return Internal(fmt::format("building the model of '{}': {}", checkpoint->dir(), e.what_without_backtrace()));
  }
  return std::unique_ptr<LlamaModel>(new LlamaModel(std::move(impl)));
}

torch::Tensor LlamaModel::Forward(const torch::Tensor& ids, const torch::Tensor& mask_in) {
  Impl& m = *impl_;
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
  const torch::Tensor freqs = pos.to(torch::kFloat).unsqueeze(-1) * m.inv_freq;  // [N, T, D/2]
  const torch::Tensor emb = torch::cat({freqs, freqs}, -1).unsqueeze(1);
  const torch::Tensor cos = emb.cos(), sin = emb.sin();
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
    const torch::Tensor x = RmsNorm(h, layer.post_norm, c.rms_norm_eps);
    h = h + layer.down(torch::silu(layer.gate(x)) * layer.up(x));
  }
  return Dense(RmsNorm(h, m.final_norm, c.rms_norm_eps), m.lm_head);
}

const LlamaConfig& LlamaModel::config() const { return impl_->config; }
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
    impl_->adapter[i].copy_(
        torch::from_blob(const_cast<float*>(state.tensors[i].values.data()), impl_->adapter[i].sizes(), torch::kFloat));
  }
  return Status::Ok();
}

}  // namespace fedlora::worker::lm
