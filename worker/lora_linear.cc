#include "worker/lora_linear.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "schema/hash.h"

namespace fedlora::worker {

uint64_t DeriveSeed(uint64_t seed, std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a
  for (char c : name) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return SplitMix64(seed ^ SplitMix64(h));
}

torch::Tensor SeededUniform(std::vector<int64_t> shape, double bound, uint64_t seed) {
  std::mt19937_64 rng(seed);
  torch::Tensor t = torch::empty(shape, torch::kFloat);
  float* data = t.data_ptr<float>();
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;  // [0, 1)
    data[i] = static_cast<float>((2.0 * u - 1.0) * bound);
  }
  return t;
}

torch::Tensor Dense(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  const int64_t in = weight.size(1);
  const int64_t out = weight.size(0);
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = out;
  const torch::Tensor rows = x.reshape({-1, in});
  const int64_t n = rows.size(0);
  // oneDNN's 1x1 convolution takes a slow path below kMinConvRows rows (measured on a
  // 2048 x 2048 weight, one thread: ~15 ms per row up to 15 rows, 14 ms for all of 16): a
  // generation step has one row per sequence. A few rows go through the BLAS product; up to
  // kMinConvRows they are padded to it.
  constexpr int64_t kMinConvRows = 16, kMaxBlasRows = 4;
  if (n <= kMaxBlasRows) return torch::nn::functional::linear(rows, weight, bias).view(out_shape);
  auto options = torch::nn::functional::Conv2dFuncOptions();
  if (bias.defined()) options.bias(bias);
  const torch::Tensor padded = n < kMinConvRows ? torch::constant_pad_nd(rows, {0, 0, 0, kMinConvRows - n}) : rows;
  torch::Tensor y = torch::nn::functional::conv2d(padded.view({-1, in, 1, 1}), weight.view({out, in, 1, 1}), options);
  return y.view({-1, out}).narrow(0, 0, n).reshape(out_shape);
}

LoraLinearImpl::LoraLinearImpl(int64_t in_features, int64_t out_features, int64_t rank, double scale, bool residual,
                               LoraApply apply, bool has_bias)
    : rank_(rank), scale_(scale), residual_scale_(scale), apply_(apply) {
  weight = register_parameter("weight", torch::zeros({out_features, in_features}));
  if (has_bias) bias = register_parameter("bias", torch::zeros({out_features}));
  RegisterLora(in_features, out_features, residual);
}

LoraLinearImpl::LoraLinearImpl(torch::Tensor w, torch::Tensor b, int64_t rank, double scale, bool residual,
                               LoraApply apply)
    : rank_(rank), scale_(scale), residual_scale_(scale), apply_(apply) {
  const int64_t out_features = w.size(0), in_features = w.size(1);
  weight = register_parameter("weight", std::move(w), /*requires_grad=*/false);
  if (b.defined()) bias = register_parameter("bias", std::move(b), /*requires_grad=*/false);
  RegisterLora(in_features, out_features, residual);
}

void LoraLinearImpl::RegisterLora(int64_t in_features, int64_t out_features, bool residual) {
  if (rank_ == 0) return;
  lora_A = register_parameter("lora_A", torch::zeros({rank_, in_features}));
  lora_B = register_parameter("lora_B", torch::zeros({out_features, rank_}));
  if (residual) lora_residual = register_buffer("lora_residual", torch::zeros({out_features, in_features}));
}

void LoraLinearImpl::ResetBase(uint64_t seed, std::string_view name) {
  torch::NoGradGuard no_grad;
  const double bound = 1.0 / std::sqrt(static_cast<double>(weight.size(1)));
  weight.copy_(SeededUniform(weight.sizes().vec(), bound, DeriveSeed(seed, fmt::format("{}.weight", name))));
  if (bias.defined()) {
    bias.copy_(SeededUniform(bias.sizes().vec(), bound, DeriveSeed(seed, fmt::format("{}.bias", name))));
  }
}

void LoraLinearImpl::ResetLora(uint64_t seed, std::string_view name) {
  if (rank_ == 0) return;
  torch::NoGradGuard no_grad;
  const double bound = 1.0 / std::sqrt(static_cast<double>(lora_A.size(1)));
  lora_A.copy_(SeededUniform(lora_A.sizes().vec(), bound, DeriveSeed(seed, fmt::format("{}.lora_A", name))));
  lora_B.zero_();
}

torch::Tensor LoraLinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor y;
  if (rank_ == 0 || !lora_enabled_) {
    y = Dense(x, weight, bias);
  } else if (apply_ == LoraApply::kFold) {
    torch::Tensor w = weight + scale_ * torch::mm(lora_B, lora_A);
    if (lora_residual.defined()) w = w + residual_scale_ * lora_residual;
    y = Dense(x, w, bias);
  } else {
    y = Dense(x, weight, bias) + scale_ * Dense(Dense(x, lora_A), lora_B);
    if (lora_residual.defined()) y = y + residual_scale_ * Dense(x, lora_residual);
  }
  if (capture_) {
    captured_input = x.detach();
    captured_output = y;
  }
  return y;
}

Result<std::vector<torch::Tensor>> PerExampleGradients(const AdapterSpec& spec, const std::vector<TensorOwner>& owners,
                                                       const std::vector<torch::Tensor>& tensors,
                                                       const std::function<torch::Tensor()>& losses_of,
                                                       torch::Tensor* losses) {
  std::vector<LoraLinearImpl*> captured;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!tensors[i].requires_grad()) continue;
    if (owners[i].layer == nullptr) {
      return FailedPrecondition(fmt::format("no per-example gradient rule for trainable tensor '{}' (DP-SGD "
                                            "covers LoRA factors and the head)", spec.tensors[i].name));
    }
    if (std::find(captured.begin(), captured.end(), owners[i].layer) == captured.end()) {
      captured.push_back(owners[i].layer);
    }
  }
  std::vector<torch::Tensor> out(tensors.size());
  if (captured.empty()) return out;
  for (auto* layer : captured) layer->set_capture(true);
  struct Release {
    std::vector<LoraLinearImpl*>& layers;
    ~Release() {
      for (auto* layer : layers) layer->set_capture(false);
    }
  } release{captured};
  const torch::Tensor per_example = losses_of();
  std::vector<torch::Tensor> outputs;
  for (auto* layer : captured) outputs.push_back(layer->captured_output);
  const std::vector<torch::Tensor> grads = torch::autograd::grad({per_example.sum()}, outputs);
  const int64_t n = per_example.size(0);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!tensors[i].requires_grad()) continue;
    LoraLinearImpl* layer = owners[i].layer;
    const size_t c = static_cast<size_t>(std::find(captured.begin(), captured.end(), layer) - captured.begin());
    // [N, T, in] and [N, T, out] (T = 1 for a layer applied once per example).
    const torch::Tensor x = layer->captured_input.reshape({n, -1, layer->captured_input.size(-1)});
    const torch::Tensor g = grads[c].reshape({n, -1, grads[c].size(-1)});
    switch (owners[i].part) {
      case LinearPart::kB:  // s * sum_t g_t (A x_t)^T: [N, out, r]
        out[i] = torch::bmm(g.transpose(1, 2), torch::matmul(x, layer->lora_A.t())) * layer->scale();
        break;
      case LinearPart::kA:  // s * sum_t (B^T g_t) x_t^T: [N, r, in]
        out[i] = torch::bmm(torch::matmul(g, layer->lora_B).transpose(1, 2), x) * layer->scale();
        break;
      case LinearPart::kWeight:  // sum_t g_t x_t^T: [N, out, in]
        out[i] = torch::bmm(g.transpose(1, 2), x);
        break;
      case LinearPart::kBias:
        out[i] = g.sum(1);
        break;
    }
  }
  if (losses != nullptr) *losses = per_example.detach();
  return out;
}

}  // namespace fedlora::worker
