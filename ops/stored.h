// Read access to a stored run for the inspection and export commands: open a store's adapter,
// read a version's record (lineage) and its global tensors, and describe what a version holds
// (per-module norms, singular values and effective rank of each LoRA product, sparsity).
// No LibTorch: the spectra come from aggregator/methods/lowrank (exact, double precision).
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ops/flags.h"
#include "schema/codec.h"
#include "storage/adapter_store.h"

namespace fedlora::ops {

class StoredAdapter {
 public:
  // Opens <store>/adapters (read-only unless `writable`). Errors: kNotFound (no store, or no
  // such adapter in it), store errors.
  static Result<StoredAdapter> Open(const StoreLayout& store, const std::string& adapter, bool writable = false);

  const std::string& adapter() const { return adapter_; }
  const storage::Cursor& cursor() const { return cursor_; }
  storage::AdapterStore& store() { return *store_; }
  // A version's record and global. Errors: kNotFound naming the range that exists.
  Result<codec::VersionInfo> Record(uint64_t version);
  Result<codec::DecodedGlobal> Global(uint64_t version);

 private:
  std::unique_ptr<storage::AdapterStore> store_;
  std::string adapter_;
  storage::Cursor cursor_;
};

// Tags name versions of an adapter. They live in <store>/tags.json
// ({"<adapter>": {"<name>": version}}), outside RocksDB, so a tag can be added while an
// aggregator holds the store; writes are atomic (a temporary file renamed over it, under a lock).
Result<std::map<std::string, uint64_t>> ReadTags(const StoreLayout& store, const std::string& adapter);
// Errors: kInvalidArgument (name syntax, or a name that reads as a number), kAlreadyExists
// (the name already tags a version: tags never move), kUnavailable.
Status AddTag(const StoreLayout& store, const std::string& adapter, const std::string& name, uint64_t version);
// A version given as a number or as a tag name. Errors: kNotFound naming the known tags.
Result<uint64_t> ResolveVersion(const StoreLayout& store, const std::string& adapter, const std::string& text);

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

}  // namespace fedlora::ops
