#include "aggregator/methods/adapter_stats.h"

#include <cmath>
#include <map>

#include "aggregator/methods/lowrank.h"

namespace fedlora::methods {
namespace {


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

}  // namespace fedlora::methods
