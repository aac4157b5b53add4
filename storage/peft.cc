#include "storage/peft.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>

#include "aggregator/methods/lora_layout.h"
#include "aggregator/methods/lowrank.h"
#include "schema/safetensors.h"
#include "schema/language_model.h"

namespace fedlora::storage {
namespace {

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

// "model.layers.<n>.<self_attn|mlp>.<target>.lora_<A|B>" as (n, target's place in PEFT's
// order, 0 for A and 1 for B); nullopt for any other name.
std::optional<std::tuple<uint64_t, size_t, int>> LanguageModelSlot(const std::string& name) {
  const std::vector<std::string>& kTargets = kLoraTargets;
  constexpr std::string_view kLayers = "model.layers.";
  if (!name.starts_with(kLayers)) return std::nullopt;
  size_t pos = kLayers.size();
  uint64_t layer = 0;
  const size_t digits_start = pos;
  while (pos < name.size() && name[pos] >= '0' && name[pos] <= '9' && pos - digits_start < 9) {
    layer = layer * 10 + static_cast<uint64_t>(name[pos++] - '0');
  }
  if (pos == digits_start || pos >= name.size() || name[pos] != '.') return std::nullopt;
  const std::string rest = name.substr(pos + 1);
  for (size_t t = 0; t < kTargets.size(); ++t) {
    const std::string group = t < 4 ? "self_attn." : "mlp.";
    for (int part = 0; part < 2; ++part) {
      if (rest == group + kTargets[t] + (part == 0 ? ".lora_A" : ".lora_B")) return std::tuple{layer, t, part};
    }
  }
  return std::nullopt;
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
  std::vector<safetensors::F32Tensor> out;
  out.reserve(tensors.size());
  for (const auto& [name, t] : tensors) out.push_back({name, t->shape, t->values});
  return safetensors::Encode(out, metadata);
}

Result<SafetensorsFile> DecodeSafetensors(std::string_view bytes) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size());
  ASSIGN_OR_RETURN(const safetensors::Header header, safetensors::ParseHeader(file));
  SafetensorsFile out;
  out.metadata = header.metadata;
  for (const auto& e : header.tensors) {
    if (e.dtype != safetensors::Dtype::kF32) {
      return InvalidArgument(fmt::format("tensor '{}' is {}; fedlora adapters are F32", e.name, safetensors::DtypeName(e.dtype)));
    }
    DenseTensor t;
    t.name = e.name;
    for (uint64_t d : e.shape) {
      if (d > UINT32_MAX) return DataLoss(fmt::format("tensor '{}' has a dimension of {}", e.name, d));
      t.shape.push_back(static_cast<uint32_t>(d));
    }
    t.values.resize(e.numel());
    if (!t.values.empty()) {
      RETURN_IF_ERROR(safetensors::ToFloat(e.dtype, file.data() + header.data_start + e.begin, t.values.size(), t.values.data()));
    }
    out.tensors.push_back(std::move(t));
  }
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

  // A module with a non-zero residual R (flora's exact remainder) goes out as its exact product
  // B A + R, factorised at its numerical rank r_m, with rank_pattern r_m and alpha_pattern
  // alpha r_m / r so that PEFT's scale alpha_m / r_m stays alpha / r.
  ASSIGN_OR_RETURN(const methods::LoraLayout layout, methods::LoraLayout::Of(spec));
  std::map<size_t, std::pair<DenseTensor, DenseTensor>> merged;  // spec index of A -> (A', B')
  nlohmann::ordered_json rank_pattern = nlohmann::ordered_json::object();
  nlohmann::ordered_json alpha_pattern = nlohmann::ordered_json::object();
  for (const methods::LoraModule& m : layout.modules()) {
    if (m.residual < 0) continue;
    const auto& r = a.state.tensors[static_cast<size_t>(m.residual)].values;
    if (std::all_of(r.begin(), r.end(), [](float v) { return v == 0.0f; })) continue;
    methods::lowrank::Factors p = methods::lowrank::FromDense(r, m.rows, m.cols);
    std::vector<double> product = methods::lowrank::Product(p);
    const auto& av = a.state.tensors[m.a].values;
    const auto& bv = a.state.tensors[m.b].values;
    for (uint32_t i = 0; i < m.rows; ++i) {
      for (uint32_t l = 0; l < spec.rank; ++l) {
        const double bil = bv[static_cast<size_t>(i) * spec.rank + l];
        for (uint32_t j = 0; j < m.cols; ++j) {
          product[static_cast<size_t>(i) * m.cols + j] += bil * av[static_cast<size_t>(l) * m.cols + j];
        }
      }
    }
    const methods::lowrank::Svd svd = methods::lowrank::DenseSvd(product, m.rows, m.cols);
    const uint32_t rm = std::max<uint32_t>(1, static_cast<uint32_t>(svd.s.size()));
    DenseTensor ea{spec.tensors[m.a].name, {rm, m.cols}, std::vector<float>(static_cast<size_t>(rm) * m.cols, 0.0f)};
    DenseTensor eb{spec.tensors[m.b].name, {m.rows, rm}, std::vector<float>(static_cast<size_t>(m.rows) * rm, 0.0f)};
    for (size_t l = 0; l < svd.s.size(); ++l) {  // A' = V^T, B' = U diag(s)
      for (uint32_t j = 0; j < m.cols; ++j) ea.values[l * m.cols + j] = static_cast<float>(svd.v[l * m.cols + j]);
      for (uint32_t i = 0; i < m.rows; ++i) {
        eb.values[static_cast<size_t>(i) * rm + l] = static_cast<float>(svd.u[l * m.rows + i] * svd.s[l]);
      }
    }
    rank_pattern[m.name] = rm;
    alpha_pattern[m.name] = spec.alpha * static_cast<double>(rm) / spec.rank;
    merged.emplace(m.a, std::pair{std::move(ea), std::move(eb)});
  }
  std::map<size_t, const DenseTensor*> replaced;  // spec index -> what goes out instead
  for (const methods::LoraModule& m : layout.modules()) {
    if (const auto it = merged.find(m.a); it != merged.end()) {
      replaced[m.a] = &it->second.first;
      replaced[m.b] = &it->second.second;
    }
  }

  std::vector<std::pair<std::string, const DenseTensor*>> tensors;
  std::set<std::string> modules_to_save;
  std::string order;
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    const auto& t = spec.tensors[i];
    if (t.role == TensorRole::kLoraResidual) continue;  // in its module's factors (or zero)
    const auto it = replaced.find(i);
    tensors.emplace_back(PeftName(t), it != replaced.end() ? it->second : &a.state.tensors[i]);
    if (t.role == TensorRole::kDense) modules_to_save.insert(t.name.substr(0, t.name.rfind('.')));
    order += (order.empty() ? "" : ",") + t.name;
  }
  auto metadata = a.metadata;
  metadata["format"] = "pt";
  metadata["fedlora.model"] = spec.model;
  metadata["fedlora.seed"] = std::to_string(spec.seed);
  metadata["fedlora.order"] = order;
  const std::string weights = EncodeSafetensors(tensors, metadata);
  nlohmann::ordered_json config = {
      {"peft_type", "LORA"},
      {"task_type", !IsLanguageModel(spec.model) ? nlohmann::ordered_json(nullptr)
                    : modules_to_save.count("score") ? nlohmann::ordered_json("SEQ_CLS")  // a classifier's head
                                                     : nlohmann::ordered_json("CAUSAL_LM")},
      {"base_model_name_or_path",
       a.base_model.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(a.base_model)},
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
  if (!rank_pattern.empty()) {
    config["rank_pattern"] = rank_pattern;
    config["alpha_pattern"] = alpha_pattern;
  }
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
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (config.contains(key) && config[key].is_object() && !config[key].empty()) {
      return Unimplemented(fmt::format("'{}': per-module ranks or alphas ({}) are not imported: a fedlora adapter has "
                                       "one rank (an export of flora's exact residual has them)",
                                       (root / kConfig).string(), key));
    }
  }
  if (config.value("fan_in_fan_out", false)) {
    return Unimplemented("fan_in_fan_out adapters (transposed, GPT-2 style Conv1D) are not supported");
  }
  ASSIGN_OR_RETURN(const std::string bytes, ReadFile((root / kWeights).string()));
  auto file = DecodeSafetensors(bytes);
  if (!file.ok()) return file.status().WithContext((root / kWeights).string());

  PeftAdapter out;
  out.metadata = file->metadata;
  if (config.contains("base_model_name_or_path") && config["base_model_name_or_path"].is_string()) {
    out.base_model = config["base_model_name_or_path"].get<std::string>();
  }
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
    // A language model's adapter from PEFT: fedlora's model order (layer 10 after layer 9).
    if (std::all_of(order.begin(), order.end(), [](const std::string& n) { return LanguageModelSlot(n).has_value(); })) {
      std::sort(order.begin(), order.end(),
                [](const std::string& x, const std::string& y) { return *LanguageModelSlot(x) < *LanguageModelSlot(y); });
    }
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

}  // namespace fedlora::storage
