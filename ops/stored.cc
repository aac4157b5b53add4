#include "ops/stored.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "aggregator/methods/lowrank.h"
#include "schema/validate.h"

namespace fedlora::ops {

Result<StoredAdapter> StoredAdapter::Open(const StoreLayout& layout, const std::string& adapter, bool writable) {
  if (!std::filesystem::exists(layout.adapters())) {
    return NotFound(fmt::format("no adapter store at '{}' (is --store right?)", layout.adapters()));
  }
  storage::AdapterStoreOptions so;
  so.path = layout.adapters();
  so.read_only = !writable;
  StoredAdapter out;
  ASSIGN_OR_RETURN(out.store_, storage::AdapterStore::Open(so));
  ASSIGN_OR_RETURN(auto cursor, out.store_->GetCursor(adapter));
  if (!cursor) {
    ASSIGN_OR_RETURN(auto adapters, out.store_->Adapters());
    std::string known;
    for (const auto& a : adapters) known += (known.empty() ? "" : ", ") + a;
    return NotFound(fmt::format("store '{}' has no adapter '{}' (it has: {})", layout.dir, adapter,
                                known.empty() ? "none" : known));
  }
  out.adapter_ = adapter;
  out.cursor_ = *cursor;
  return out;
}

Result<codec::VersionInfo> StoredAdapter::Record(uint64_t version) {
  if (version > cursor_.version) {
    return NotFound(fmt::format("adapter '{}' has versions 0..{}, not {}", adapter_, cursor_.version, version));
  }
  return storage::ReadVersionInfo(*store_, adapter_, version);
}

Result<codec::DecodedGlobal> StoredAdapter::Global(uint64_t version) {
  if (version > cursor_.version) {
    return NotFound(fmt::format("adapter '{}' has versions 0..{}, not {}", adapter_, cursor_.version, version));
  }
  return storage::ReadVersion(*store_, adapter_, version);
}

namespace {

std::string TagsPath(const StoreLayout& store) { return store.dir + "/tags.json"; }

Result<nlohmann::json> ReadTagsFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return nlohmann::json::object();
  auto j = nlohmann::json::parse(in, nullptr, false);
  if (!j.is_object()) return DataLoss(fmt::format("'{}' is not a JSON object", path));
  return j;
}

}  // namespace

Result<std::map<std::string, uint64_t>> ReadTags(const StoreLayout& store, const std::string& adapter) {
  ASSIGN_OR_RETURN(auto j, ReadTagsFile(TagsPath(store)));
  std::map<std::string, uint64_t> out;
  if (j.contains(adapter) && j[adapter].is_object()) {
    for (const auto& [name, v] : j[adapter].items()) {
      if (v.is_number_unsigned()) out[name] = v.get<uint64_t>();
    }
  }
  return out;
}

Status AddTag(const StoreLayout& store, const std::string& adapter, const std::string& name, uint64_t version) {
  RETURN_IF_ERROR(ValidateId("tag name", name, 128));
  if (name.find_first_not_of("0123456789") == std::string::npos) {
    return InvalidArgument(fmt::format("tag '{}' reads as a version number; use a name with a letter in it", name));
  }
  const std::string path = TagsPath(store);
  // One writer at a time; readers see the old or the new file, never half of one.
  const int lock = ::open((path + ".lock").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  if (lock < 0) return Unavailable(fmt::format("cannot create '{}.lock'", path));
  ::flock(lock, LOCK_EX);
  auto release = std::unique_ptr<int, void (*)(int*)>(new int(lock), [](int* fd) {
    ::flock(*fd, LOCK_UN);
    ::close(*fd);
    delete fd;
  });
  ASSIGN_OR_RETURN(auto j, ReadTagsFile(path));
  auto& tags = j[adapter];
  if (!tags.is_object()) tags = nlohmann::json::object();
  if (tags.contains(name)) {
    return AlreadyExists(fmt::format("tag '{}' already names version {} of '{}'; tags never move", name,
                                     tags[name].dump(), adapter));
  }
  tags[name] = version;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << j.dump(2) << "\n";
    if (!out.flush()) return Unavailable(fmt::format("cannot write '{}'", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return Unavailable(fmt::format("cannot replace '{}': {}", path, ec.message()));
  return Status::Ok();
}

Result<uint64_t> ResolveVersion(const StoreLayout& store, const std::string& adapter, const std::string& text) {
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos) {
    try {
      return static_cast<uint64_t>(std::stoull(text));
    } catch (const std::exception&) {
      return InvalidArgument(fmt::format("version '{}' is out of range", text));
    }
  }
  ASSIGN_OR_RETURN(auto tags, ReadTags(store, adapter));
  auto it = tags.find(text);
  if (it != tags.end()) return it->second;
  std::string known;
  for (const auto& [name, v] : tags) known += fmt::format("{}{} (v{})", known.empty() ? "" : ", ", name, v);
  return NotFound(fmt::format("'{}' is neither a version number nor a tag of '{}' (tags: {})", text, adapter,
                              known.empty() ? "none" : known));
}

namespace {

namespace lowrank = methods::lowrank;

double Norm(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

double Zeros(const std::vector<float>& v) {
  if (v.empty()) return 0;
  size_t z = 0;
  for (float x : v) z += x == 0.0f;
  return static_cast<double>(z) / static_cast<double>(v.size());
}

// dW = scale * B A as factors.
lowrank::Factors Product(const DenseTensor& b, const DenseTensor& a, double scale) {
  lowrank::Factors f;
  f.rows = b.shape[0];
  f.rank = b.shape[1];
  f.cols = a.shape[1];
  f.b.assign(b.values.begin(), b.values.end());
  for (double& x : f.b) x *= scale;
  f.a.assign(a.values.begin(), a.values.end());
  return f;
}

double FrobeniusOfSvd(const lowrank::Svd& svd) {
  double s = 0;
  for (double x : svd.s) s += x * x;
  return std::sqrt(s);
}

}  // namespace

AdapterStats Describe(const AdapterSpec& spec, const AdapterState& state, const AdapterState* other) {
  AdapterStats out;
  const double scale = spec.rank > 0 ? spec.alpha / static_cast<double>(spec.rank) : 0;
  // Pair the factors of each module (<module>.lora_A with <module>.lora_B).
  std::map<std::string, std::pair<int, int>> pairs;  // module -> (A index, B index)
  std::vector<std::string> order;
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    const auto& t = spec.tensors[i];
    if (t.role == TensorRole::kDense || t.role == TensorRole::kLoraResidual) {  // a residual: its norm, like a dense tensor
      DenseStats d{t.name, Norm(state.tensors[i].values), Zeros(state.tensors[i].values), std::nullopt};
      if (other) {
        double s = 0;
        for (size_t k = 0; k < t.numel(); ++k) {
          const double x = static_cast<double>(state.tensors[i].values[k]) - other->tensors[i].values[k];
          s += x * x;
        }
        d.change = std::sqrt(s);
      }
      out.dense.push_back(std::move(d));
      continue;
    }
    const std::string module = t.name.substr(0, t.name.rfind('.'));
    auto [it, fresh] = pairs.try_emplace(module, -1, -1);
    if (fresh) order.push_back(module);
    (t.role == TensorRole::kLoraA ? it->second.first : it->second.second) = static_cast<int>(i);
  }
  for (const auto& module : order) {
    const auto [ia, ib] = pairs[module];
    if (ia < 0 || ib < 0) continue;  // a factor without its partner is not a LoRA module
    const auto& a = state.tensors[ia];
    const auto& b = state.tensors[ib];
    ModuleStats m;
    m.module = module;
    m.rows = b.shape[0];
    m.cols = a.shape[1];
    m.rank = a.shape[0];
    const lowrank::Factors dw = Product(b, a, scale);
    const lowrank::Svd svd = lowrank::ProductSvd(dw);
    m.singular_values = svd.s;
    m.norm = FrobeniusOfSvd(svd);
    double sum = 0;
    for (double s : svd.s) sum += s;
    if (sum > 0) {
      double entropy = 0;
      for (double s : svd.s) {
        const double p = s / sum;
        if (p > 0) entropy -= p * std::log(p);
      }
      m.effective_rank = std::exp(entropy);
    }
    m.zeros_a = Zeros(a.values);
    m.zeros_b = Zeros(b.values);
    if (other) {
      // dW - dW' = [B, -B'] [A; A'] exactly, whatever the ranks.
      lowrank::Factors theirs = Product(other->tensors[ib], other->tensors[ia], -scale);
      const std::pair<double, const lowrank::Factors*> terms[] = {{1.0, &dw}, {1.0, &theirs}};
      m.change = FrobeniusOfSvd(lowrank::ProductSvd(lowrank::Stack(terms)));
      const double their_norm = FrobeniusOfSvd(lowrank::ProductSvd(theirs));
      if (m.norm > 0 && their_norm > 0) {
        // ||x - y||^2 = ||x||^2 + ||y||^2 - 2 <x, y>
        const double dot = (m.norm * m.norm + their_norm * their_norm - *m.change * *m.change) / 2;
        m.cosine = dot / (m.norm * their_norm);
      }
    }
    out.modules.push_back(std::move(m));
  }
  return out;
}

}  // namespace fedlora::ops
