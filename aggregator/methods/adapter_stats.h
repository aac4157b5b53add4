// What a version of an adapter holds: per LoRA module the norm, singular values and effective
// rank of its update dW = (alpha / r) B A, the sparsity of its factors, and, against another
// version, how far it moved (exactly, from the factors: no d x k matrix is formed). No LibTorch:
// the spectra come from lowrank (double precision).
// Thread safety: pure functions.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "schema/adapter.h"

namespace fedlora::methods {

// One LoRA module: its update to the base weight, dW = (alpha / r) B A.
struct ModuleStats {
  std::string module;
  uint32_t rows = 0, cols = 0, rank = 0;
  double norm = 0;                     // ||dW||_F
  std::vector<double> singular_values; // of dW, descending, numerically non-zero ones
  double effective_rank = 0;           // exp(entropy of s / sum s) (Roy & Vetterli); 0 if dW = 0
  double zeros_a = 0, zeros_b = 0;     // share of exact zeros in A and in B
  std::optional<double> change;        // ||dW - dW_other||_F against another version
  std::optional<double> cosine;        // <dW, dW_other> / (||dW|| ||dW_other||)
};
// Any other trained tensor (a classifier head, ...).
struct DenseStats {
  std::string name;
  double norm = 0;
  double zeros = 0;
  std::optional<double> change;
};
struct AdapterStats {
  std::vector<ModuleStats> modules;
  std::vector<DenseStats> dense;
};

// Describes `state`; with `other` (same spec), also how far it is from it.
AdapterStats Describe(const AdapterSpec& spec, const AdapterState& state, const AdapterState* other = nullptr);

}  // namespace fedlora::methods
