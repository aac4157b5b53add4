// `fedlora export` and `fedlora import` without the command line: a stored version written as a
// Hugging Face PEFT LoRA checkpoint (storage/peft.h), and a PEFT checkpoint stored as version 0
// of a new adapter; a language model's adapter is checked against its checkpoint directory.
//
// LibTorch-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "schema/codec.h"
#include "schema/status.h"
#include "storage/layout.h"

namespace fedlora::federation {

struct ExportRequest {
  storage::StoreLayout store;
  std::string adapter = "default";
  std::optional<std::string> version;  // a number or a tag (default: the latest)
  std::string out;                     // directory to write (existing export files are never overwritten)
  std::string base;                    // a language model's checkpoint: checked, and written as base_model_name_or_path
};

struct ExportReport {
  uint64_t version = 0;
  codec::DecodedGlobal global;         // what was written: spec, tensors, record
  size_t modules = 0;                  // LoRA modules
};

// Errors: kNotFound (no such store, adapter or version), kInvalidArgument (a bad version or tag;
// an adapter that does not fit --base, or was trained on another architecture), kAlreadyExists
// (an export file is there), the writer's.
Result<ExportReport> ExportPeftVersion(const ExportRequest& request);

struct ImportRequest {
  std::string in;                      // the checkpoint directory
  storage::StoreLayout store;
  std::string adapter;                 // the new adapter's id (must not exist in the store)
  std::string base;                    // the language model it is for (default: base_model_name_or_path, when local)
  bool sync = true;                    // fsync the commit
};

struct ImportReport {
  AdapterSpec spec;
  std::string content_hash;            // of the stored version 0
  std::optional<std::string> exported_hash;  // the hash fedlora recorded at export, if it did
};

// Errors: kInvalidArgument (an adapter id that is not one, a checkpoint that does not fit its
// base or names another model), kAlreadyExists (the adapter exists), the reader's and the store's.
Result<ImportReport> ImportPeftAdapter(const ImportRequest& request);

}  // namespace fedlora::federation
