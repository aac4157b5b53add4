#include "worker/federation/stored_model.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "storage/reader.h"
#include "worker/federation/task.h"
#include "worker/lm/checkpoint.h"
#include "worker/lm/llama.h"
#include "worker/lm/tokenizer.h"
#include "worker/model.h"

namespace fedlora::federation {
namespace {

namespace fs = std::filesystem;

// config.json's architecture, without mapping the weights.
Result<std::string> CheckpointArchitecture(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return NotFound(fmt::format("--base '{}' is not a directory", dir));
  const std::string path = (fs::path(dir) / "config.json").string();
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(fmt::format("'{}' is not a checkpoint directory: it has no readable config.json", dir));
  std::stringstream text;
  text << in.rdbuf();
  ASSIGN_OR_RETURN(const worker::lm::LlamaConfig config, worker::lm::ParseConfig(text.str(), path));
  return config.architecture;
}

}  // namespace

StoredModel::StoredModel() = default;
StoredModel::StoredModel(StoredModel&&) noexcept = default;
StoredModel& StoredModel::operator=(StoredModel&&) noexcept = default;
StoredModel::~StoredModel() = default;

std::string StoredModel::Describe() const {
  if (!version) return fmt::format("{} '{}' (bare base)", architecture, base);
  return fmt::format("{} '{}' + version {} of adapter '{}' in '{}'", architecture, base, *version, *adapter, *store);
}

Result<StoredModel> OpenStoredModel(StoredModelRef ref) {
  if (!ref.store && (ref.adapter || ref.version)) {
    return InvalidArgument("--adapter and --version name an adapter in a store: give --store too");
  }
  if (ref.base.empty()) {
    if (!ref.store) return InvalidArgument("give the checkpoint with --base DIR (or --store, whose own language model is used)");
    ref.base = OwnLanguageModelPath(*ref.store);
  }
  StoredModel out;
  out.base = ref.base;
  ASSIGN_OR_RETURN(out.architecture, CheckpointArchitecture(ref.base));

  worker::ModelOptions mo;  // bare: the default LoRA, whose B is zero, leaves the base's outputs
  mo.arch = out.architecture;
  std::optional<AdapterState> state;
  if (ref.store) {
    storage::StoreLayout layout{*ref.store};
    out.store = *ref.store;
    out.adapter = ref.adapter.value_or("default");
    ASSIGN_OR_RETURN(auto stored, storage::StoredAdapter::Open(layout, *out.adapter));
    uint64_t version = stored.cursor().version;
    if (ref.version) {
      ASSIGN_OR_RETURN(version, storage::ResolveVersion(layout, *out.adapter, *ref.version));
    }
    ASSIGN_OR_RETURN(auto global, stored.Global(version));
    if (global.spec.model != out.architecture) {
      return InvalidArgument(fmt::format("version {} of adapter '{}' in '{}' is for a {}, and the checkpoint '{}' is a {}",
                                         version, *out.adapter, *ref.store,
                                         global.spec.model.empty() ? "(none)" : global.spec.model, ref.base,
                                         out.architecture));
    }
    mo = worker::ModelOptions::ForSpec(global.spec);
    out.version = version;
    state = std::move(global.state);
  }
  ASSIGN_OR_RETURN(out.model, worker::Model::Open(mo, ref.base));
  out.llama = dynamic_cast<worker::lm::LlamaModel*>(out.model.get());
  if (out.llama == nullptr) return Internal(fmt::format("the model of '{}' is not a Llama-family model", ref.base));
  if (state) {
    RETURN_IF_ERROR(out.model->LoadAdapter(*state).WithContext(
        fmt::format("loading version {} of adapter '{}'", *out.version, *out.adapter)));
  }
  ASSIGN_OR_RETURN(out.tokenizer, worker::lm::Tokenizer::Load(ref.base));
  return out;
}

}  // namespace fedlora::federation
