// Hugging Face PEFT's LoRA checkpoint layout, written and read without Python or LibTorch:
// `adapter_model.safetensors` (the tensors) and `adapter_config.json` (rank, alpha, target
// modules). Tensor names map as PEFT's saved state dict has them:
//   <module>.lora_A  (r x in)   ->  base_model.model.<module>.lora_A.weight
//   <module>.lora_B  (out x r)  ->  base_model.model.<module>.lora_B.weight
//   any other tensor <name>     ->  base_model.model.<name>   (its module in modules_to_save)
// A module that keeps a non-zero residual R (flora, docs/methods.md) goes out as its exact
// product B A + R, factorised at its numerical rank r_m, with PEFT's rank_pattern (r_m) and
// alpha_pattern (alpha r_m / r, so its scale stays alpha / r); ReadPeft refuses such per-module
// ranks (a fedlora adapter has one rank).
// The safetensors header's __metadata__ also carries fedlora's own identity (adapter, version,
// content hash, model, tensor order), which PEFT ignores and `fedlora import` uses to rebuild the
// adapter exactly (same content hash).
//
// safetensors: an 8-byte little-endian header length N, N bytes of JSON (each tensor's dtype,
// shape and [begin, end) byte offsets into the data; padded with spaces to 8 bytes), then the
// data, little-endian, row-major, with no gaps or overlaps.
// Thread safety: pure functions.
#pragma once

#include <map>
#include <string>

#include "schema/adapter.h"
#include "schema/status.h"

namespace fedlora::storage {

struct PeftAdapter {
  AdapterSpec spec;
  AdapterState state;
  std::map<std::string, std::string> metadata;  // fedlora.* identity; written and read back
  // adapter_config.json's base_model_name_or_path (a language model's checkpoint directory or
  // hub id); empty: null.
  std::string base_model;
};

// A language model's adapter (spec.model one of kArchitectures, schema/language_model.h) goes out with
// task_type CAUSAL_LM. An adapter PEFT wrote for one has no fedlora metadata: ReadPeft then
// orders its LoRA tensors as fedlora's model does (layer by layer, PEFT's module order, A
// before B), and its model is "unknown" until the importer names the checkpoint.

// Writes DIR/adapter_model.safetensors and DIR/adapter_config.json (DIR is created). Refuses
// to overwrite an existing export (kAlreadyExists) and a spec without LoRA factors
// (kFailedPrecondition: a full-model adapter is not a PEFT LoRA adapter).
Status WritePeft(const std::string& dir, const PeftAdapter& adapter);

// Reads an export back. Every tensor must be F32 with a shape matching its role (A r x in,
// B out x r, r = the config's r), each factor must have its partner, values must be finite,
// and the data must be exactly covered by the tensors. Errors: kNotFound (missing files),
// kInvalidArgument / kDataLoss naming the file and what is wrong.
Result<PeftAdapter> ReadPeft(const std::string& dir);

// The encoding itself, exposed for tests: tensors in the given order, metadata in the header.
std::string EncodeSafetensors(const std::vector<std::pair<std::string, const DenseTensor*>>& tensors,
                              const std::map<std::string, std::string>& metadata);
struct SafetensorsFile {
  std::vector<DenseTensor> tensors;  // in data order
  std::map<std::string, std::string> metadata;
};
Result<SafetensorsFile> DecodeSafetensors(std::string_view bytes);

}  // namespace fedlora::storage
