// Plain, LibTorch-free descriptions of a LoRA adapter: its spec (which tensors, which shapes)
// and its state (the values). These are what the broker validates against, what the
// aggregator folds updates into, and what the worker loads into its model. The wire and
// store encodings of these live in schema/codec.h.
// Thread safety: plain values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "schema/status.h"

namespace fedlora {

// What a tensor of the adapter is, so that methods can treat LoRA factors specially.
enum class TensorRole : uint8_t {
  kLoraA = 0,  // r x k factor of a LoRA pair ("<module>.lora_A")
  kLoraB = 1,  // d x r factor of a LoRA pair ("<module>.lora_B")
  kDense = 2,  // any other trained tensor (classifier head, ...), averaged like a dense weight
  // d x k remainder of a module's exact product sum beyond rank r ("<module>.lora_residual",
  // flora), in B A's units: the layer computes W + (alpha / r) (B A + R). Only the aggregator
  // writes it: clients never train or upload it.
  kLoraResidual = 3,
};

struct TensorSpec {
  std::string name;             // canonical name, e.g. "blocks.0.attn.q.lora_A", "head.weight"
  std::vector<uint32_t> shape;  // row-major
  TensorRole role = TensorRole::kDense;

  size_t numel() const;
};

struct AdapterSpec {
  std::string model;                        // base model architecture, e.g. "vit-tiny", "mlp"
  uint32_t rank = 8;                        // LoRA rank r
  float alpha = 16.0f;                      // LoRA scale is alpha / r
  std::vector<std::string> target_modules;  // modules that carry a LoRA pair
  uint64_t seed = 0;                        // seed of the LoRA A initialisation
  std::vector<TensorSpec> tensors;          // every trained tensor, in a fixed order

  size_t numel() const;        // total number of values
  bool has_residuals() const;  // any tensor of role kLoraResidual
  // Index of the tensor with this name, or -1. `hint`: where to look first (an update lists its
  // tensors in the spec's order, so the next one is usually where the last one was, plus one).
  int Find(std::string_view name, size_t hint = 0) const;
};

// A dense fp32 tensor with its name and shape.
struct DenseTensor {
  std::string name;
  std::vector<uint32_t> shape;
  std::vector<float> values;  // row-major, size == product of shape
};

// The values of every tensor of an adapter, in the order of AdapterSpec::tensors.
struct AdapterState {
  std::vector<DenseTensor> tensors;

  size_t numel() const;
};

// Checks that `state` has exactly the tensors of `spec`, in order, with matching shapes and
// value counts. Returns kInvalidArgument naming the first mismatch.
Status CheckStateMatchesSpec(const AdapterSpec& spec, const AdapterState& state);

// Product of the dimensions (1 for a scalar shape).
size_t NumElements(const std::vector<uint32_t>& shape);

}  // namespace fedlora
