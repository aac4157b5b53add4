// A language-model checkpoint with, optionally, a stored adapter version applied: what
// `fedlora generate` and `fedlora score` run on.
//
// LibTorch-free header (the model is behind worker::Model).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "schema/status.h"

namespace fedlora::worker {
class Model;
}
namespace fedlora::worker::lm {
class LlamaModel;
class Tokenizer;
}

namespace fedlora::federation {

struct StoredModelRef {
  std::string base;                    // checkpoint directory (empty: the store's own language model)
  std::optional<std::string> store;    // apply a version of an adapter in this store
  std::optional<std::string> adapter;  // default "default"
  std::optional<std::string> version;  // a number or a tag (default: the latest)
};

struct StoredModel {
  StoredModel();
  StoredModel(StoredModel&&) noexcept;
  StoredModel& operator=(StoredModel&&) noexcept;
  ~StoredModel();

  std::unique_ptr<worker::Model> model;
  worker::lm::LlamaModel* llama = nullptr;  // `model`, as what it is
  std::unique_ptr<worker::lm::Tokenizer> tokenizer;
  std::string base;                         // the checkpoint directory used
  std::string architecture;                 // config.json's ("LlamaForCausalLM", ...)
  std::optional<std::string> store, adapter;
  std::optional<uint64_t> version;          // the version applied (none: the bare base)

  // "LlamaForCausalLM 'DIR' + version 12 of adapter 'default' in 'STORE'", or "(bare base)".
  std::string Describe() const;
};

// Errors: kInvalidArgument (an adapter or version without a store, no base and no store; a
// version made for another architecture than the checkpoint's; a bad version or tag), kNotFound
// (no checkpoint directory or config.json, no such store, adapter or version), and those of
// loading the model, the adapter and the tokenizer.
Result<StoredModel> OpenStoredModel(StoredModelRef ref);

}  // namespace fedlora::federation
