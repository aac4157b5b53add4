#include "worker/lm/checkpoint.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace fedlora::worker::lm {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// At most this many problems are listed in one error.
constexpr size_t kMaxListed = 12;

struct ArchitectureDefaults {
  std::string_view name;
  int64_t max_positions;
};
constexpr ArchitectureDefaults kArchitectureDefaults[] = {
    {"LlamaForCausalLM", 2048},
    {"MistralForCausalLM", 4096 * 32},
    {"Qwen2ForCausalLM", 32768},
};
static_assert(std::size(kArchitectureDefaults) == kArchitectures.size());

// A positive integer field; `fallback` when absent or null (nullopt: required).
Result<int64_t> PositiveInt(const json& j, const char* key, std::optional<int64_t> fallback, std::string_view origin) {
  if (!j.contains(key) || j[key].is_null()) {
    if (fallback) return *fallback;
    return InvalidArgument(fmt::format("{}: '{}' is missing", origin, key));
  }
  if (!j[key].is_number_integer() || j[key].get<int64_t>() <= 0) {
    return InvalidArgument(fmt::format("{}: '{}' must be a positive integer, found {}", origin, key, j[key].dump()));
  }
  return j[key].get<int64_t>();
}

Result<double> PositiveNumber(const json& j, const char* key, double fallback, std::string_view origin) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number() || !(j[key].get<double>() > 0)) {
    return InvalidArgument(fmt::format("{}: '{}' must be a positive number, found {}", origin, key, j[key].dump()));
  }
  return j[key].get<double>();
}

Result<bool> Flag(const json& j, const char* key, bool fallback, std::string_view origin) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) return InvalidArgument(fmt::format("{}: '{}' must be true or false, found {}", origin, key, j[key].dump()));
  return j[key].get<bool>();
}

Result<std::string> ReadText(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(fmt::format("'{}' does not exist or cannot be read", path.string()));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string ShapeText(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

}  // namespace

Result<LlamaConfig> ParseConfig(std::string_view json_text, std::string_view origin) {
  const json j = json::parse(json_text, nullptr, false);
  if (!j.is_object()) return InvalidArgument(fmt::format("{} is not a JSON object", origin));
  LlamaConfig c;
  if (!j.contains("architectures") || !j["architectures"].is_array() || j["architectures"].size() != 1 ||
      !j["architectures"][0].is_string()) {
    return InvalidArgument(fmt::format("{}: 'architectures' must list one architecture (supported: {}), found {}", origin,
                                       kSupportedArchitectures, j.contains("architectures") ? j["architectures"].dump() : "none"));
  }
  c.architecture = j["architectures"][0].get<std::string>();
  const ArchitectureDefaults* arch = nullptr;
  for (const auto& a : kArchitectureDefaults) {
    if (a.name == c.architecture) arch = &a;
  }
  if (arch == nullptr) {
    return Unimplemented(fmt::format("{}: architecture '{}' is not supported (supported: {})", origin, c.architecture,
                                     kSupportedArchitectures));
  }
  const std::string act = j.value("hidden_act", std::string("silu"));
  if (act != "silu") return Unimplemented(fmt::format("{}: hidden_act '{}' is not supported (SwiGLU needs silu)", origin, act));
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    return Unimplemented(fmt::format("{}: rope_scaling {} is not supported (plain rotary embeddings only)", origin,
                                     j["rope_scaling"].dump()));
  }
  ASSIGN_OR_RETURN(c.vocab_size, PositiveInt(j, "vocab_size", std::nullopt, origin));
  ASSIGN_OR_RETURN(c.hidden_size, PositiveInt(j, "hidden_size", std::nullopt, origin));
  ASSIGN_OR_RETURN(c.intermediate_size, PositiveInt(j, "intermediate_size", std::nullopt, origin));
  ASSIGN_OR_RETURN(c.num_layers, PositiveInt(j, "num_hidden_layers", std::nullopt, origin));
  ASSIGN_OR_RETURN(c.num_heads, PositiveInt(j, "num_attention_heads", std::nullopt, origin));
  ASSIGN_OR_RETURN(c.num_kv_heads, PositiveInt(j, "num_key_value_heads", c.num_heads, origin));
  if (!j.contains("head_dim") || j["head_dim"].is_null()) {
    if (c.hidden_size % c.num_heads != 0) {
      return InvalidArgument(fmt::format("{}: hidden_size {} is not a multiple of num_attention_heads {} (and no head_dim)",
                                         origin, c.hidden_size, c.num_heads));
    }
  }
  ASSIGN_OR_RETURN(c.head_dim, PositiveInt(j, "head_dim", c.hidden_size / c.num_heads, origin));
  if (c.head_dim % 2 != 0) return InvalidArgument(fmt::format("{}: head_dim {} must be even for rotary embeddings", origin, c.head_dim));
  if (c.num_heads % c.num_kv_heads != 0) {
    return InvalidArgument(fmt::format("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", origin,
                                       c.num_heads, c.num_kv_heads));
  }
  ASSIGN_OR_RETURN(c.max_positions, PositiveInt(j, "max_position_embeddings", arch->max_positions, origin));
  ASSIGN_OR_RETURN(c.rms_norm_eps, PositiveNumber(j, "rms_norm_eps", 1e-6, origin));
  ASSIGN_OR_RETURN(c.rope_theta, PositiveNumber(j, "rope_theta", 10000.0, origin));
  ASSIGN_OR_RETURN(c.tie_word_embeddings, Flag(j, "tie_word_embeddings", false, origin));
  if (c.architecture == "Qwen2ForCausalLM") {
    c.qkv_bias = true;
    ASSIGN_OR_RETURN(const bool sliding, Flag(j, "use_sliding_window", false, origin));
    if (sliding) return Unimplemented(fmt::format("{}: Qwen2's use_sliding_window is not supported", origin));
  } else if (c.architecture == "LlamaForCausalLM") {
    ASSIGN_OR_RETURN(const bool bias, Flag(j, "attention_bias", false, origin));
    c.qkv_bias = c.o_bias = bias;
    ASSIGN_OR_RETURN(const bool mlp_bias, Flag(j, "mlp_bias", false, origin));
    if (mlp_bias) return Unimplemented(fmt::format("{}: mlp_bias is not supported", origin));
  } else {  // Mistral
    ASSIGN_OR_RETURN(c.sliding_window, PositiveInt(j, "sliding_window", 0, origin));
  }
  if (j.contains("bos_token_id") && !j["bos_token_id"].is_null()) {
    if (!j["bos_token_id"].is_number_integer()) {
      return InvalidArgument(fmt::format("{}: 'bos_token_id' must be an integer, found {}", origin, j["bos_token_id"].dump()));
    }
    c.bos_token_id = j["bos_token_id"].get<int64_t>();
  }
  if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
    const json& e = j["eos_token_id"];
    for (const json& id : e.is_array() ? e : json::array({e})) {
      if (!id.is_number_integer()) {
        return InvalidArgument(fmt::format("{}: 'eos_token_id' must be an integer or a list of them, found {}", origin, e.dump()));
      }
      c.eos_token_ids.push_back(id.get<int64_t>());
    }
  }
  for (int64_t id : c.eos_token_ids) {
    if (id < 0 || id >= c.vocab_size) return InvalidArgument(fmt::format("{}: eos_token_id {} is outside the vocabulary", origin, id));
  }
  if (c.bos_token_id && (*c.bos_token_id < 0 || *c.bos_token_id >= c.vocab_size)) {
    return InvalidArgument(fmt::format("{}: bos_token_id {} is outside the vocabulary", origin, *c.bos_token_id));
  }
  return c;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedWeights(const LlamaConfig& c) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> w;
  const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  w.push_back({"model.embed_tokens.weight", {c.vocab_size, h}});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    w.push_back({p + "input_layernorm.weight", {h}});
    w.push_back({p + "self_attn.q_proj.weight", {q, h}});
    if (c.qkv_bias) w.push_back({p + "self_attn.q_proj.bias", {q}});
    w.push_back({p + "self_attn.k_proj.weight", {kv, h}});
    if (c.qkv_bias) w.push_back({p + "self_attn.k_proj.bias", {kv}});
    w.push_back({p + "self_attn.v_proj.weight", {kv, h}});
    if (c.qkv_bias) w.push_back({p + "self_attn.v_proj.bias", {kv}});
    w.push_back({p + "self_attn.o_proj.weight", {h, q}});
    if (c.o_bias) w.push_back({p + "self_attn.o_proj.bias", {h}});
    w.push_back({p + "post_attention_layernorm.weight", {h}});
    w.push_back({p + "mlp.gate_proj.weight", {c.intermediate_size, h}});
    w.push_back({p + "mlp.up_proj.weight", {c.intermediate_size, h}});
    w.push_back({p + "mlp.down_proj.weight", {h, c.intermediate_size}});
  }
  w.push_back({"model.norm.weight", {h}});
  if (!c.tie_word_embeddings) w.push_back({"lm_head.weight", {c.vocab_size, h}});
  return w;
}

Result<LlamaConfig> ReadConfig(const std::string& dir) {
  const fs::path root(dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return NotFound(fmt::format("checkpoint directory '{}' does not exist", dir));
  ASSIGN_OR_RETURN(const std::string config_text, ReadText(root / "config.json"));
  return ParseConfig(config_text, (root / "config.json").string());
}

Result<std::shared_ptr<const Checkpoint>> Checkpoint::Open(const std::string& dir) {
  const fs::path root(dir);
  std::error_code ec;
  auto out = std::make_shared<Checkpoint>();
  out->dir_ = dir;
  ASSIGN_OR_RETURN(out->config_, ReadConfig(dir));

  // Which files hold the weights, and (sharded) which file each weight is in.
  std::vector<std::string> files;
  std::map<std::string, std::string, std::less<>> weight_map;
  const fs::path index = root / "model.safetensors.index.json";
  if (fs::exists(index, ec)) {
    ASSIGN_OR_RETURN(const std::string text, ReadText(index));
    const json j = json::parse(text, nullptr, false);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      return DataLoss(fmt::format("'{}' has no weight_map object", index.string()));
    }
    std::set<std::string> seen;
    for (const auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string() || file.get<std::string>().find('/') != std::string::npos) {
        return DataLoss(fmt::format("'{}': weight '{}' maps to {}, not a file name in the directory", index.string(), name,
                                    file.dump()));
      }
      weight_map[name] = file.get<std::string>();
      if (seen.insert(file.get<std::string>()).second) files.push_back(file.get<std::string>());
    }
  } else if (fs::exists(root / "model.safetensors", ec)) {
    files.push_back("model.safetensors");
  } else {
    const bool bin = fs::exists(root / "pytorch_model.bin", ec) || fs::exists(root / "pytorch_model.bin.index.json", ec);
    return NotFound(fmt::format("'{}' has no model.safetensors or model.safetensors.index.json{}", dir,
                                bin ? " (pytorch_model.bin is a pickle, which fedlora does not read: save the "
                                      "checkpoint with safe_serialization=True)"
                                    : ""));
  }

  std::map<std::string, WeightView, std::less<>> found;
  for (const std::string& name : files) {
    const std::string path = (root / name).string();
    ASSIGN_OR_RETURN(safetensors::MappedFile file, safetensors::MappedFile::Open(path));
    auto header = safetensors::ParseHeader(file.bytes());
    if (!header.ok()) return header.status().WithContext(path);
    for (const safetensors::Entry& e : header->tensors) {
      WeightView v;
      v.name = e.name;
      v.dtype = e.dtype;
      for (uint64_t d : e.shape) v.shape.push_back(static_cast<int64_t>(d));
      v.data = file.bytes().data() + header->data_start + e.begin;
      v.numel = e.numel();
      if (!weight_map.empty()) {
        const auto it = weight_map.find(e.name);
        if (it == weight_map.end() || it->second != name) {
          return DataLoss(fmt::format("'{}' holds '{}', which the index {}", path, e.name,
                                      it == weight_map.end() ? "does not list" : "places in " + it->second));
        }
      }
      if (!found.emplace(e.name, std::move(v)).second) {
        return DataLoss(fmt::format("weight '{}' appears in more than one file ('{}' is the second)", e.name, path));
      }
    }
    out->file_bytes_ += file.bytes().size();
    out->files_.push_back(std::move(file));
  }
  for (const auto& [name, file] : weight_map) {
    if (!found.count(name)) return DataLoss(fmt::format("the index places '{}' in '{}', which does not hold it", name, file));
  }

  // Every expected weight, with its shape and a float dtype; nothing else.
  std::vector<std::string> problems;
  for (auto& [name, shape] : ExpectedWeights(out->config_)) {
    const auto it = found.find(name);
    if (it == found.end()) {
      problems.push_back(fmt::format("missing {} {}", name, ShapeText(shape)));
      continue;
    }
    const WeightView& v = it->second;
    if (v.shape != shape) {
      problems.push_back(fmt::format("{} is {}, the config needs {}", name, ShapeText(v.shape), ShapeText(shape)));
    } else if (v.dtype != safetensors::Dtype::kF32 && v.dtype != safetensors::Dtype::kF16 &&
               v.dtype != safetensors::Dtype::kBF16) {
      problems.push_back(fmt::format("{} is {} (F32, F16 and BF16 are read)", name, safetensors::DtypeName(v.dtype)));
    } else {
      out->weights_.push_back(v);
    }
    found.erase(it);
  }
  for (const auto& [name, v] : found) {
    // Older checkpoints keep rotary tables and, tied, a copy of the embeddings: harmless.
    if (name.ends_with(".rotary_emb.inv_freq")) continue;
    if (name == "lm_head.weight" && out->config_.tie_word_embeddings) continue;
    problems.push_back(fmt::format("unexpected {} {}", name, ShapeText(v.shape)));
  }
  if (!problems.empty()) {
    const size_t n = problems.size();
    if (n > kMaxListed) {
      problems.resize(kMaxListed);
      problems.push_back(fmt::format("and {} more", n - kMaxListed));
    }
    return FailedPrecondition(fmt::format("checkpoint '{}' ({}, {} layers) does not match its config: {}", dir,
                                          out->config_.architecture, out->config_.num_layers, fmt::join(problems, "; ")));
  }
  return std::shared_ptr<const Checkpoint>(std::move(out));
}

const WeightView* Checkpoint::Find(std::string_view name) const {
  for (const auto& w : weights_) {
    if (w.name == name) return &w;
  }
  return nullptr;
}

Result<std::string> MatchAdapter(const AdapterSpec& spec, const std::string& dir) {
  ASSIGN_OR_RETURN(const LlamaConfig config, ReadConfig(dir));
  std::map<std::string, std::vector<int64_t>> weights;
  for (auto& [name, shape] : ExpectedWeights(config)) weights.emplace(name, shape);
  for (const auto& t : spec.tensors) {
    if (t.role != TensorRole::kLoraA && t.role != TensorRole::kLoraB) {
      return InvalidArgument(fmt::format("tensor '{}' is not a LoRA factor: a {} adapter holds only LoRA pairs",
                                         t.name, config.architecture));
    }
    const std::string module = t.name.substr(0, t.name.rfind('.'));
    const auto it = weights.find(module + ".weight");
    if (it == weights.end()) {
      return InvalidArgument(fmt::format("tensor '{}': the {} in '{}' has no module '{}'", t.name, config.architecture,
                                         dir, module));
    }
    const auto out = static_cast<uint32_t>(it->second[0]), in = static_cast<uint32_t>(it->second[1]);
    const std::vector<uint32_t> want =
        t.role == TensorRole::kLoraA ? std::vector<uint32_t>{spec.rank, in} : std::vector<uint32_t>{out, spec.rank};
    if (t.shape != want) {
      return InvalidArgument(fmt::format("tensor '{}' has shape [{}], the checkpoint in '{}' needs [{}]", t.name,
                                         fmt::join(t.shape, ","), dir, fmt::join(want, ",")));
    }
  }
  return config.architecture;
}


}  // namespace fedlora::worker::lm
