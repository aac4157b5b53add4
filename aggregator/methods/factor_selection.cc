#include "aggregator/methods/factor_selection.h"

#include <fmt/format.h>

#include <cmath>

namespace fedlora::methods {

Result<FactorSelector> FactorSelector::Create(const FactorSelectionOptions& options, std::vector<std::string> modules,
                                              std::vector<size_t> a_sizes, std::vector<size_t> b_sizes,
                                              std::vector<codec::FactorScore> stored) {
  if (stored.empty()) {
    std::vector<codec::FactorScore> fresh(modules.size());
    for (size_t m = 0; m < modules.size(); ++m) {
      fresh[m].module = modules[m];
      fresh[m].active = kFactorB;
      fresh[m].fisher[kFactorB].assign(b_sizes[m], 0.0f);
      fresh[m].fisher[kFactorA].assign(a_sizes[m], 0.0f);
    }
    return FactorSelector(options, std::move(fresh));
  }
  if (stored.size() != modules.size()) {
    return DataLoss(fmt::format("stored AS-LoRA state has {} modules, the adapter {}", stored.size(), modules.size()));
  }
  for (size_t m = 0; m < modules.size(); ++m) {
    const auto& s = stored[m];
    if (s.module != modules[m] || s.fisher[kFactorB].size() != b_sizes[m] || s.fisher[kFactorA].size() != a_sizes[m] ||
        s.active > 1) {
      return DataLoss(fmt::format("stored AS-LoRA state of module {} does not match '{}'", m, modules[m]));
    }
  }
  return FactorSelector(options, std::move(stored));
}

void FactorSelector::Observe(size_t m, int factor, std::span<const float> g, double noise_variance) {
  codec::FactorScore& s = state_[m];
  auto& fisher = s.fisher[factor];
  const bool first = !s.seen[factor];
  const double b = options_.beta;
  double norm_sq = 0, curvature = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    const double gi = g[i];
    const double g2 = gi * gi;
    const double f = first ? g2 : b * fisher[i] + (1.0 - b) * g2;
    fisher[i] = static_cast<float>(f);
    norm_sq += g2;
    curvature += f * g2;
  }
  norm_sq = std::max(0.0, norm_sq - static_cast<double>(g.size()) * noise_variance);
  const double eta = options_.eta;
  const double raw = eta * norm_sq - 0.5 * eta * eta * curvature;
  s.score[factor] = first ? raw : b * s.score[factor] + (1.0 - b) * raw;
  s.seen[factor] = true;
}

void FactorSelector::ObserveScore(size_t m, int factor, double raw) {
  codec::FactorScore& s = state_[m];
  const double b = options_.beta;
  s.score[factor] = s.seen[factor] ? b * s.score[factor] + (1.0 - b) * raw : raw;
  s.seen[factor] = true;
}

void FactorSelector::Choose(uint64_t version) {
  for (auto& s : state_) {
    if (version < options_.warmup) {
      s.active = kFactorB;
    } else if (!s.seen[kFactorA]) {
      s.active = kFactorA;
    } else if (!s.seen[kFactorB]) {
      s.active = kFactorB;
    } else {
      const int current = s.active;
      const int other = 1 - current;
      if (s.score[other] > s.score[current] + options_.margin * std::abs(s.score[current])) {
        s.active = static_cast<uint8_t>(other);
      }
    }
  }
}

std::vector<uint8_t> FactorSelector::ActiveVector() const {
  std::vector<uint8_t> out;
  out.reserve(state_.size());
  for (const auto& s : state_) out.push_back(s.active);
  return out;
}

}  // namespace fedlora::methods
