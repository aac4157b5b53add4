// The linear layer every fedlora model is built from: y = x W^T + b with an optional LoRA pair
// (y += (alpha / r) (x A^T) B^T) and an optional dense residual R (flora's exact remainder
// beyond rank r, y += (alpha / r) x R^T), plus the seeded initialisations every client derives
// identically. Shared by the image models (worker/model.cc) and the language model
// (worker/lm/). Include only from worker/ translation units: it pulls in LibTorch.
// Thread safety: a layer is used by one thread at a time.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

#include "schema/adapter.h"
#include "schema/status.h"

namespace fedlora::worker {

// A per-tensor seed: stable across processes and platforms, so every client derives the same
// initial values from the same (seed, name).
uint64_t DeriveSeed(uint64_t seed, std::string_view name);

// Uniform(-bound, bound) values from mt19937_64 with an explicit bits-to-float mapping, so the
// values do not depend on a standard library's distributions or on LibTorch's generators.
torch::Tensor SeededUniform(std::vector<int64_t> shape, double bound, uint64_t seed);

// x W^T + b for x [..., in], computed as a 1x1 convolution over x viewed as [rows, in, 1, 1].
// Why: the Debian LibTorch links the reference BLAS, whose sgemm runs the small matrix
// products here 5-10x slower than oneDNN's convolution kernels (which LibTorch picks for fp32
// convolutions, forward and backward). Below 16 rows oneDNN's convolution is slower still
// (a generation step has one row per sequence): up to 4 rows use the BLAS product, 5 to 15 are
// padded to 16. `bias` may be undefined.
torch::Tensor Dense(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias = {});

// How a layer applies its LoRA pair.
enum class LoraApply {
  // W + scale B A is formed and applied once: one product with the activations instead of
  // three; the pair's gradients come from the weight's gradient through two small products.
  // Cheapest when the weight is small next to the activations (the image models).
  kFold,
  // x W^T + scale (x A^T) B^T: the weight's gradient is never formed. Cheapest for large
  // weights and frozen bases (the language model).
  kSeparate,
};

class LoraLinearImpl : public torch::nn::Module {
 public:
  // A layer with zero weights (ResetBase draws them). rank 0: no LoRA parameters.
  LoraLinearImpl(int64_t in_features, int64_t out_features, int64_t rank, double scale, bool residual,
                 LoraApply apply = LoraApply::kFold, bool has_bias = true);
  // A layer around given weights (out x in) and bias (out, or undefined for none).
  LoraLinearImpl(torch::Tensor weight, torch::Tensor bias, int64_t rank, double scale, bool residual,
                 LoraApply apply);

  // PyTorch's default Linear initialisation bound, drawn from a name-derived seed.
  void ResetBase(uint64_t seed, std::string_view name);
  // A: kaiming-uniform-like bound 1/sqrt(in) (as PEFT does); B: zero so that a fresh adapter
  // leaves the base's output unchanged.
  void ResetLora(uint64_t seed, std::string_view name);

  torch::Tensor forward(const torch::Tensor& x);

  bool has_lora() const { return rank_ > 0; }
  double scale() const { return scale_; }
  void set_scale(double scale) { scale_ = scale; }
  void set_lora_enabled(bool enabled) { lora_enabled_ = enabled; }
  // Per-example gradients: keep the next forward's input and output.
  void set_capture(bool capture) {
    capture_ = capture;
    if (!capture) captured_input = captured_output = torch::Tensor();
  }

  torch::Tensor weight, bias, lora_A, lora_B;  // bias may be undefined
  torch::Tensor lora_residual;  // undefined unless the layer keeps a residual
  torch::Tensor captured_input, captured_output;

 private:
  void RegisterLora(int64_t in_features, int64_t out_features, bool residual);

  int64_t rank_;
  double scale_;
  double residual_scale_;  // alpha / r: the global's scale, whatever scale the client trains at
  LoraApply apply_;
  bool lora_enabled_ = true;
  bool capture_ = false;
};
TORCH_MODULE(LoraLinear);

// Which tensor of which layer an adapter tensor is, for per-example gradients.
enum class LinearPart { kA, kB, kWeight, kBias };
struct TensorOwner {
  LoraLinearImpl* layer = nullptr;  // not owned; null: no per-example rule for the tensor
  LinearPart part = LinearPart::kA;
};

// DP-SGD's per-example gradients of a model's adapter tensors (spec order; `owners` and
// `tensors` parallel to spec.tensors). `losses_of` runs the forward pass and returns each
// example's loss [N]; while it runs, the owning layers keep their inputs and outputs. One
// backward to those outputs then gives each trainable tensor's gradient for every example as a
// batched product with the captured input (B: s g^T (x A^T); A: s (g B)^T x; a dense weight:
// g^T x; a bias: the sum of g), [N, ...shape], never a loop over examples. Tensors that do not
// require grad get an undefined tensor. `losses` (optional) receives the losses, detached.
// Errors: kFailedPrecondition (a trainable tensor without an owner).
Result<std::vector<torch::Tensor>> PerExampleGradients(const AdapterSpec& spec, const std::vector<TensorOwner>& owners,
                                                       const std::vector<torch::Tensor>& tensors,
                                                       const std::function<torch::Tensor()>& losses_of,
                                                       torch::Tensor* losses);

}  // namespace fedlora::worker
