// The LoRA structure of an adapter spec: which tensors pair up as a module's A (r x k) and
// B (d x r) factors, and how an update's tensor (dense, sparse or rank slices) maps onto the
// elements of its spec tensor. Shared by the engine and every method's two halves.
// Thread safety: immutable after construction; the helpers are pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "schema/adapter.h"
#include "schema/codec.h"
#include "schema/status.h"

namespace fedlora::methods {

struct LoraModule {
  std::string name;  // "<name>.lora_A" / "<name>.lora_B"
  size_t a = 0;      // spec index of A (r x k)
  size_t b = 0;      // spec index of B (d x r)
  uint32_t rows = 0; // d
  uint32_t cols = 0; // k
  int residual = -1; // spec index of its d x k residual ("<name>.lora_residual"), or -1
};

class LoraLayout {
 public:
  LoraLayout() = default;
  // Errors: kInvalidArgument (a LoRA factor that is not 2-D, does not end in .lora_A/.lora_B,
  // has another rank than the spec's, or lacks its other factor; a residual that is not d x k
  // or has no module; residuals on some modules only; an unknown role).
  static Result<LoraLayout> Of(const AdapterSpec& spec);

  // In the spec order of their A factors (the order of MethodState::active).
  const std::vector<LoraModule>& modules() const { return modules_; }
  // Module positions sorted by module name.
  const std::vector<size_t>& by_name() const { return by_name_; }
  // Whether the modules carry residuals (all of them or none: Of() refuses a mix).
  bool has_residuals() const { return !modules_.empty() && modules_[0].residual >= 0; }
  // The module of spec tensor t (its A, B or residual), or -1 for a dense tensor.
  int module_of(size_t t) const { return module_of_[t]; }
  // Spec index of the tensor with this name, or -1.
  int tensor(std::string_view name) const;
  uint32_t rank() const { return rank_; }
  bool empty() const { return modules_.empty(); }

 private:
  std::vector<LoraModule> modules_;
  std::vector<size_t> by_name_;
  std::vector<int> module_of_;
  std::map<std::string, size_t, std::less<>> index_;
  uint32_t rank_ = 0;
};

// Calls f(flat_index, value) for every element an update's tensor carries, in increasing flat
// order per rank (the tensor was validated against `spec`).
template <typename F>
void ForEachCarried(const wire::Tensor& t, const TensorSpec& spec, F&& f) {
  const auto values = codec::DenseValues(t);
  switch (t.encoding()) {
    case wire::Encoding::Dense:
      for (size_t i = 0; i < values.size(); ++i) f(i, values[i]);
      return;
    case wire::Encoding::Sparse: {
      const auto indices = codec::Indices(t);
      for (size_t j = 0; j < indices.size(); ++j) f(indices[j], values[j]);
      return;
    }
    case wire::Encoding::RankSlice: {
      const auto ranks = codec::Ranks(t);
      const size_t nr = ranks.size();
      if (spec.role == TensorRole::kLoraA) {  // r x k: whole rows
        const size_t k = spec.shape[1];
        for (size_t j = 0; j < nr; ++j) {
          for (size_t c = 0; c < k; ++c) f(ranks[j] * k + c, values[j * k + c]);
        }
      } else {  // d x r: columns, sent as a d x |ranks| matrix
        const size_t d = spec.shape[0];
        const size_t r = spec.shape[1];
        for (size_t row = 0; row < d; ++row) {
          for (size_t j = 0; j < nr; ++j) f(row * r + ranks[j], values[row * nr + j]);
        }
      }
      return;
    }
    default:
      return;  // rejected by validation
  }
}

// The ranks a LoRA factor of an update covers: its rank list, or every rank when not sliced.
std::vector<uint32_t> CarriedRanks(const wire::Tensor& t, uint32_t rank);

// An update's LoRA tensors by module (layout order): (A, B), either may be null.
struct CarriedPair {
  size_t module = 0;
  const wire::Tensor* a = nullptr;
  const wire::Tensor* b = nullptr;
};
std::vector<CarriedPair> CarriedPairs(const wire::Update& update, const LoraLayout& layout);

}  // namespace fedlora::methods
