#include "aggregator/methods/lora_layout.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <numeric>

namespace fedlora::methods {
namespace {

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

Result<LoraLayout> LoraLayout::Of(const AdapterSpec& spec) {
  LoraLayout layout;
  layout.rank_ = spec.rank;
  layout.module_of_.assign(spec.tensors.size(), -1);
  std::map<std::string, std::pair<int, int>, std::less<>> by_name;  // stem -> (A, B)
  std::map<std::string, int, std::less<>> residuals;                 // stem -> residual
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    const auto& t = spec.tensors[i];
    layout.index_.emplace(t.name, i);
    if (t.role == TensorRole::kDense) continue;
    if (t.role == TensorRole::kLoraResidual) {
      constexpr std::string_view kSuffix = ".lora_residual";
      if (!EndsWith(t.name, kSuffix) || t.shape.size() != 2) {
        return InvalidArgument(fmt::format("residual tensor '{}' must be 2-D and end in {}", t.name, kSuffix));
      }
      residuals.emplace(t.name.substr(0, t.name.size() - kSuffix.size()), static_cast<int>(i));
      continue;
    }
    if (t.role != TensorRole::kLoraA && t.role != TensorRole::kLoraB) {
      return InvalidArgument(fmt::format("tensor '{}' has unknown role {}", t.name, static_cast<int>(t.role)));
    }
    const std::string_view suffix = t.role == TensorRole::kLoraA ? ".lora_A" : ".lora_B";
    if (!EndsWith(t.name, suffix) || t.shape.size() != 2) {
      return InvalidArgument(fmt::format("LoRA tensor '{}' must be 2-D and end in {}", t.name, suffix));
    }
    const uint32_t r = t.role == TensorRole::kLoraA ? t.shape[0] : t.shape[1];
    if (r != spec.rank) {
      return InvalidArgument(fmt::format("LoRA tensor '{}' has rank {}, the adapter's is {}", t.name, r, spec.rank));
    }
    auto& pair = by_name.try_emplace(t.name.substr(0, t.name.size() - suffix.size()), -1, -1).first->second;
    (t.role == TensorRole::kLoraA ? pair.first : pair.second) = static_cast<int>(i);
  }
  for (const auto& [stem, pair] : by_name) {
    if (pair.first < 0 || pair.second < 0) {
      return InvalidArgument(fmt::format("LoRA module '{}' lacks one of its factors", stem));
    }
    LoraModule m;
    m.name = stem;
    m.a = static_cast<size_t>(pair.first);
    m.b = static_cast<size_t>(pair.second);
    m.rows = spec.tensors[m.b].shape[0];
    m.cols = spec.tensors[m.a].shape[1];
    if (const auto it = residuals.find(stem); it != residuals.end()) {
      const auto& shape = spec.tensors[static_cast<size_t>(it->second)].shape;
      if (shape != std::vector<uint32_t>{m.rows, m.cols}) {
        return InvalidArgument(fmt::format("residual of LoRA module '{}' has shape [{}], the module's product is [{},{}]",
                                           stem, fmt::join(shape, ","), m.rows, m.cols));
      }
      m.residual = it->second;
      residuals.erase(it);
    }
    layout.modules_.push_back(std::move(m));
  }
  if (!residuals.empty()) {
    return InvalidArgument(fmt::format("residual '{}.lora_residual' has no LoRA module", residuals.begin()->first));
  }
  if (std::any_of(layout.modules_.begin(), layout.modules_.end(),
                  [&](const LoraModule& m) { return (m.residual >= 0) != (layout.modules_[0].residual >= 0); })) {
    return InvalidArgument("only some LoRA modules carry a residual: all or none must");
  }
  std::sort(layout.modules_.begin(), layout.modules_.end(),
            [](const LoraModule& x, const LoraModule& y) { return x.a < y.a; });
  layout.by_name_.resize(layout.modules_.size());
  std::iota(layout.by_name_.begin(), layout.by_name_.end(), size_t{0});
  std::sort(layout.by_name_.begin(), layout.by_name_.end(),
            [&](size_t x, size_t y) { return layout.modules_[x].name < layout.modules_[y].name; });
  for (size_t m = 0; m < layout.modules_.size(); ++m) {
    layout.module_of_[layout.modules_[m].a] = static_cast<int>(m);
    layout.module_of_[layout.modules_[m].b] = static_cast<int>(m);
    if (layout.modules_[m].residual >= 0) layout.module_of_[static_cast<size_t>(layout.modules_[m].residual)] = static_cast<int>(m);
  }
  return layout;
}

int LoraLayout::tensor(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? -1 : static_cast<int>(it->second);
}

std::vector<uint32_t> CarriedRanks(const wire::Tensor& t, uint32_t rank) {
  if (t.encoding() == wire::Encoding::RankSlice) {
    const auto r = codec::Ranks(t);
    return {r.begin(), r.end()};
  }
  std::vector<uint32_t> all(rank);
  std::iota(all.begin(), all.end(), 0u);
  return all;
}

std::vector<CarriedPair> CarriedPairs(const wire::Update& update, const LoraLayout& layout) {
  std::vector<CarriedPair> pairs;
  std::vector<int> slot(layout.modules().size(), -1);
  for (const auto* t : *update.tensors()) {
    const int idx = layout.tensor(t->name()->string_view());
    if (idx < 0 || layout.module_of(static_cast<size_t>(idx)) < 0) continue;
    const size_t m = static_cast<size_t>(layout.module_of(static_cast<size_t>(idx)));
    if (slot[m] < 0) {
      slot[m] = static_cast<int>(pairs.size());
      pairs.push_back({m, nullptr, nullptr});
    }
    auto& p = pairs[static_cast<size_t>(slot[m])];
    (layout.modules()[m].a == static_cast<size_t>(idx) ? p.a : p.b) = t;
  }
  std::sort(pairs.begin(), pairs.end(), [](const CarriedPair& x, const CarriedPair& y) { return x.module < y.module; });
  return pairs;
}

}  // namespace fedlora::methods
