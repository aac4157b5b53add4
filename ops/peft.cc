#include "ops/peft.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace fedlora::ops {
namespace {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

constexpr std::string_view kPrefix = "base_model.model.";
constexpr const char* kWeights = "adapter_model.safetensors";
constexpr const char* kConfig = "adapter_config.json";

std::string PeftName(const TensorSpec& t) {
  if (t.role == TensorRole::kDense) return std::string(kPrefix) + t.name;
  return std::string(kPrefix) + t.name + ".weight";
}

// Our name and role from PEFT's key.
Result<std::pair<std::string, TensorRole>> FedloraName(const std::string& key) {
  if (!key.starts_with(kPrefix)) {
    return InvalidArgument(fmt::format("tensor '{}' does not start with '{}'", key, kPrefix));
  }
  std::string name = key.substr(kPrefix.size());
  for (auto [suffix, role] : {std::pair{".lora_A.weight", TensorRole::kLoraA}, {".lora_B.weight", TensorRole::kLoraB}}) {
    if (name.ends_with(suffix)) {
      return std::pair{name.substr(0, name.size() - std::string_view(".weight").size()), role};
    }
  }
  return std::pair{name, TensorRole::kDense};
}

Result<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(fmt::format("cannot read '{}'", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string EncodeSafetensors(const std::vector<std::pair<std::string, const DenseTensor*>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const size_t bytes = t->values.size() * sizeof(float);
    header[name] = {{"dtype", "F32"}, {"shape", t->shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string json = header.dump();
  json.append((8 - (8 + json.size()) % 8) % 8, ' ');  // data starts 8-byte aligned
  std::string out(8, '\0');
  const uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  out += json;
  out.reserve(out.size() + offset);
  for (const auto& [name, t] : tensors) {
    out.append(reinterpret_cast<const char*>(t->values.data()), t->values.size() * sizeof(float));
  }
  return out;
}

Result<SafetensorsFile> DecodeSafetensors(std::string_view bytes) {
  if (bytes.size() < 8) return DataLoss("safetensors file is shorter than its 8-byte header length");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  if (n > bytes.size() - 8) {
    return DataLoss(fmt::format("safetensors header says {} bytes, the file has {} after the length", n, bytes.size() - 8));
  }
  const auto header = nlohmann::json::parse(bytes.substr(8, n), nullptr, false);
  if (!header.is_object()) return DataLoss("safetensors header is not a JSON object");
  const std::string_view data = bytes.substr(8 + n);
  SafetensorsFile out;
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) return DataLoss("__metadata__ is not an object");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) return DataLoss(fmt::format("metadata '{}' is not a string", k));
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") || !value.contains("data_offsets")) {
      return DataLoss(fmt::format("tensor '{}': needs dtype, shape and data_offsets", key));
    }
    if (value["dtype"] != "F32") {
      return InvalidArgument(fmt::format("tensor '{}' is {}; fedlora adapters are F32", key, value["dtype"].dump()));
    }
    DenseTensor t;
    t.name = key;
    size_t numel = 1;
    for (const auto& d : value["shape"]) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > UINT32_MAX) {
        return DataLoss(fmt::format("tensor '{}' has a bad shape {}", key, value["shape"].dump()));
      }
      t.shape.push_back(d.get<uint32_t>());
      numel *= t.shape.back();
    }
    const auto& off = value["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      return DataLoss(fmt::format("tensor '{}' has bad data_offsets", key));
    }
    const uint64_t begin = off[0], end = off[1];
    if (begin > end || end > data.size() || end - begin != numel * sizeof(float)) {
      return DataLoss(fmt::format("tensor '{}': offsets [{}, {}) do not hold {} floats within {} data bytes", key,
                                  begin, end, numel, data.size()));
    }
    spans.emplace_back(begin, end);
    t.values.resize(numel);
    if (numel > 0) std::memcpy(t.values.data(), data.data() + begin, numel * sizeof(float));
    out.tensors.push_back(std::move(t));
  }
  // The data must be covered exactly: no overlap, no gap.
  std::sort(spans.begin(), spans.end());
  uint64_t at = 0;
  for (const auto& [b, e] : spans) {
    if (b != at) return DataLoss(fmt::format("safetensors data has a gap or an overlap at byte {}", std::min(b, at)));
    at = e;
  }
  if (at != data.size()) return DataLoss(fmt::format("safetensors data has {} bytes no tensor uses", data.size() - at));
  return out;
}

Status WritePeft(const std::string& dir, const PeftAdapter& a) {
  const auto& spec = a.spec;
  if (spec.rank == 0 || std::none_of(spec.tensors.begin(), spec.tensors.end(),
                                     [](const TensorSpec& t) { return t.role != TensorRole::kDense; })) {
    return FailedPrecondition("this adapter has no LoRA factors (full-model fine-tuning): PEFT's LoRA format does not apply");
  }
  RETURN_IF_ERROR(CheckStateMatchesSpec(spec, a.state));
  const std::filesystem::path root(dir);
  for (const char* f : {kWeights, kConfig}) {
    if (std::filesystem::exists(root / f)) {
      return AlreadyExists(fmt::format("'{}' exists; export into an empty or new directory", (root / f).string()));
    }
  }
  std::error_code ec;
  std::filesystem::create_directories(root, ec);
  if (ec) return Unavailable(fmt::format("cannot create '{}': {}", dir, ec.message()));

  std::vector<std::pair<std::string, const DenseTensor*>> tensors;
  std::set<std::string> modules_to_save;
  std::string order;
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    const auto& t = spec.tensors[i];
    tensors.emplace_back(PeftName(t), &a.state.tensors[i]);
    if (t.role == TensorRole::kDense) modules_to_save.insert(t.name.substr(0, t.name.rfind('.')));
    order += (i ? "," : "") + t.name;
  }
  auto metadata = a.metadata;
  metadata["format"] = "pt";
  metadata["fedlora.model"] = spec.model;
  metadata["fedlora.seed"] = std::to_string(spec.seed);
  metadata["fedlora.order"] = order;
  const std::string weights = EncodeSafetensors(tensors, metadata);
  nlohmann::ordered_json config = {
      {"peft_type", "LORA"},
      {"task_type", nullptr},
      {"base_model_name_or_path", nullptr},
      {"revision", nullptr},
      {"r", spec.rank},
      {"lora_alpha", spec.alpha},
      {"target_modules", spec.target_modules},
      {"lora_dropout", 0.0},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"modules_to_save", modules_to_save.empty() ? nlohmann::ordered_json(nullptr)
                                                  : nlohmann::ordered_json(std::vector<std::string>(
                                                        modules_to_save.begin(), modules_to_save.end()))},
      {"init_lora_weights", true},
      {"inference_mode", true}};
  for (const auto& [name, text] : {std::pair<const char*, std::string>{kWeights, weights}, {kConfig, config.dump(2) + "\n"}}) {
    std::ofstream out(root / name, std::ios::binary);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    if (!out.flush()) return Unavailable(fmt::format("cannot write '{}'", (root / name).string()));
  }
  return Status::Ok();
}

Result<PeftAdapter> ReadPeft(const std::string& dir) {
  const std::filesystem::path root(dir);
  ASSIGN_OR_RETURN(const std::string config_text, ReadFile((root / kConfig).string()));
  const auto config = nlohmann::json::parse(config_text, nullptr, false);
  if (!config.is_object()) return InvalidArgument(fmt::format("'{}' is not a JSON object", (root / kConfig).string()));
  if (config.value("peft_type", "") != "LORA") {
    return InvalidArgument(fmt::format("'{}': peft_type is {}, fedlora imports LORA adapters", (root / kConfig).string(),
                                       config.contains("peft_type") ? config["peft_type"].dump() : "missing"));
  }
  if (!config.contains("r") || !config["r"].is_number_unsigned() || config["r"].get<uint32_t>() == 0) {
    return InvalidArgument(fmt::format("'{}': r must be a positive integer", (root / kConfig).string()));
  }
  if (config.value("fan_in_fan_out", false)) {
    return Unimplemented("fan_in_fan_out adapters (transposed, GPT-2 style Conv1D) are not supported");
  }
  ASSIGN_OR_RETURN(const std::string bytes, ReadFile((root / kWeights).string()));
  auto file = DecodeSafetensors(bytes);
  if (!file.ok()) return file.status().WithContext((root / kWeights).string());

  PeftAdapter out;
  out.metadata = file->metadata;
  auto& spec = out.spec;
  spec.rank = config["r"].get<uint32_t>();
  spec.alpha = config.value("lora_alpha", static_cast<float>(spec.rank));
  if (config.contains("target_modules") && config["target_modules"].is_array()) {
    for (const auto& m : config["target_modules"]) {
      if (m.is_string()) spec.target_modules.push_back(m.get<std::string>());
    }
  }
  spec.model = file->metadata.count("fedlora.model") ? file->metadata["fedlora.model"] : "unknown";
  if (file->metadata.count("fedlora.seed")) spec.seed = std::stoull(file->metadata["fedlora.seed"]);

  std::map<std::string, std::pair<TensorSpec, DenseTensor>> by_name;
  for (auto& t : file->tensors) {
    ASSIGN_OR_RETURN(auto named, FedloraName(t.name));
    const auto& [name, role] = named;
    for (float v : t.values) {
      if (!std::isfinite(v)) return InvalidArgument(fmt::format("tensor '{}' has a non-finite value", t.name));
    }
    if (role != TensorRole::kDense) {
      const bool ok = t.shape.size() == 2 && (role == TensorRole::kLoraA ? t.shape[0] : t.shape[1]) == spec.rank;
      if (!ok) {
        return InvalidArgument(fmt::format("tensor '{}' has shape [{}], a rank-{} {} factor must be {}", t.name,
                                           fmt::join(t.shape, ","), spec.rank, role == TensorRole::kLoraA ? "A" : "B",
                                           role == TensorRole::kLoraA ? "r x in" : "out x r"));
      }
    }
    TensorSpec ts{name, t.shape, role};
    t.name = name;
    by_name.emplace(name, std::pair{std::move(ts), std::move(t)});
  }
  // Each factor needs its partner, with matching inner shapes.
  for (const auto& [name, entry] : by_name) {
    if (entry.first.role == TensorRole::kDense) continue;
    const std::string module = name.substr(0, name.rfind('.'));
    const std::string partner = module + (entry.first.role == TensorRole::kLoraA ? ".lora_B" : ".lora_A");
    if (!by_name.count(partner)) return InvalidArgument(fmt::format("'{}' has no '{}'", name, partner));
  }
  // fedlora's own order when the export came from fedlora; otherwise the file's keys, sorted.
  std::vector<std::string> order;
  if (file->metadata.count("fedlora.order")) {
    std::stringstream ss(file->metadata["fedlora.order"]);
    for (std::string name; std::getline(ss, name, ',');) order.push_back(name);
    if (order.size() != by_name.size()) {
      return InvalidArgument("fedlora.order in the metadata does not list the file's tensors");
    }
  } else {
    for (const auto& [name, entry] : by_name) order.push_back(name);
  }
  for (const auto& name : order) {
    auto it = by_name.find(name);
    if (it == by_name.end()) return InvalidArgument(fmt::format("fedlora.order names '{}', which the file lacks", name));
    spec.tensors.push_back(it->second.first);
    out.state.tensors.push_back(std::move(it->second.second));
  }
  RETURN_IF_ERROR(CheckStateMatchesSpec(spec, out.state));
  return out;
}

}  // namespace fedlora::ops
