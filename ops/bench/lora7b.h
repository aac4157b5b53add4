// The LoRA shapes of a 7B model (LoRA on the four attention projections of every layer) and the
// updates each method's clients upload at them, for the aggregation benchmarks
// (ops/bench/aggregation.cc: one fold; ops/bench/pipeline.cc: through broker and aggregator).
#pragma once

#include <fmt/format.h>

#include <cmath>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "aggregator/engine.h"
#include "aggregator/methods/registry.h"
#include "schema/codec.h"

namespace fedlora::bench {

inline AdapterSpec Spec(uint32_t layers, uint32_t dim, uint32_t rank) {
  AdapterSpec spec;
  spec.model = "7b-shapes";
  spec.rank = rank;
  spec.alpha = 2.0f * static_cast<float>(rank);
  for (uint32_t l = 0; l < layers; ++l) {
    for (const char* p : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      const std::string m = fmt::format("layers.{}.self_attn.{}", l, p);
      spec.target_modules.push_back(m);
      spec.tensors.push_back({m + ".lora_A", {rank, dim}, TensorRole::kLoraA});
      spec.tensors.push_back({m + ".lora_B", {dim, rank}, TensorRole::kLoraB});
    }
  }
  return spec;
}

inline AdapterState Initial(const AdapterSpec& spec, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 0.01f);
  AdapterState s;
  for (const auto& t : spec.tensors) {
    DenseTensor d{t.name, t.shape, std::vector<float>(t.numel())};
    if (t.role == TensorRole::kLoraA) {
      for (float& v : d.values) v = normal(rng);
    }
    s.tensors.push_back(std::move(d));
  }
  return s;
}

// What a client of the engine's method trains and uploads at its current version: the method's
// client half plans a round (probe gradients, where a method scores ranks, are ones).
inline methods::TrainPlan Plan(const AdapterSpec& spec, const aggregator::Engine& engine, const methods::Method& method) {
  auto layout = methods::LoraLayout::Of(spec);
  if (!layout.ok()) throw std::runtime_error(layout.status().ToString());
  const MethodState state = engine.method_state();
  methods::PersonalState personal;
  methods::ClientRound round{spec, *layout, engine.state(), state, {}, spec.rank, &personal, {}};
  round.probe = [](const AdapterState& start, uint32_t) -> Result<AdapterState> {
    AdapterState g = start;
    for (auto& t : g.tensors) std::fill(t.values.begin(), t.values.end(), 1.0f);
    return g;
  };
  auto plan = method.Client()->Plan(round);
  if (!plan.ok()) throw std::runtime_error(plan.status().ToString());
  plan->start = {};
  return std::move(*plan);
}

// Cheap pseudo-random fill (xorshift), values in about [-scale, scale]: generating 10^8 normal
// deviates would dominate the benchmark's set-up.
inline void Fill(std::vector<float>& v, uint64_t seed, float scale) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (float& f : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    f = scale * (static_cast<float>(static_cast<int32_t>(x >> 32)) / 2147483648.0f);
  }
}

// What a client of the method uploads: the tensors its plan uploads (both factors: fedavg,
// hetlora; B: ffa, as-lora while it trains B; A: fedsa), dense, as the rank slices the plan
// keeps (lora-a2, sa-fedlora), or every (1/density)-th element when the method uploads a sparse
// fraction (flasc).
inline codec::Bytes MethodUpdate(const AdapterSpec& spec, const methods::TrainPlan& plan, float upload_density, int k,
                          uint64_t base) {
  auto layout = methods::LoraLayout::Of(spec);
  if (!layout.ok()) throw std::runtime_error(layout.status().ToString());
  std::vector<codec::EncodedTensor> tensors;
  uint64_t seed = static_cast<uint64_t>(k) * 1000 + 1;
  const uint32_t stride = upload_density < 1 ? static_cast<uint32_t>(std::lround(1.0 / upload_density)) : 1;
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    const auto& t = spec.tensors[i];
    if (!plan.uploads[i]) continue;
    codec::EncodedTensor e{t.name, t.shape, wire::Encoding::Dense, {}, {}};
    const int m = layout->module_of(i);
    const auto* ranks = m >= 0 ? &plan.ranks[static_cast<size_t>(m)] : nullptr;
    if (ranks != nullptr && ranks->size() < spec.rank) {
      if (ranks->empty()) continue;
      e.encoding = wire::Encoding::RankSlice;
      e.indices = *ranks;
      e.values.resize(t.numel() / spec.rank * ranks->size());
    } else if (stride > 1) {
      e.encoding = wire::Encoding::Sparse;
      for (uint32_t j = 0; j < t.numel(); j += stride) e.indices.push_back(j);
      e.values.resize(e.indices.size());
    } else {
      e.values.resize(t.numel());
    }
    Fill(e.values, seed++, 1e-3f);
    tensors.push_back(std::move(e));
  }
  codec::UpdateHeader h{fmt::format("c{}-{}", k, base), fmt::format("c{}", k), "bench", base, 100, 20, 0.5f, {}, 100, {}};
  return codec::BuildUpdate(h, tensors);
}

// The engine settings of a method by name; as-lora trains B throughout (warm-up longer than the
// run), so every step folds one factor per module. flora is measured as its rank-r
// re-factorisation (--flora-merge truncate): its exact residual is a dense d x k matrix per
// module, which at these shapes is the size of the base weights.
inline Result<aggregator::EngineOptions> Options(const std::string& name) {
  aggregator::EngineOptions o;
  ASSIGN_OR_RETURN(o.method, methods::MethodChoice::Named(name));
  RETURN_IF_ERROR(methods::SetParams(o.method.params(), {{"as-warmup", "1000"}, {"flora-merge", "truncate"}}));
  return o;
}

// Bytes of tensor values (and indices) an update carries.
inline size_t TensorBytes(const wire::Update& u) {
  size_t n = 0;
  for (const auto* t : *u.tensors()) {
    n += codec::DenseValues(*t).size() * sizeof(float) + codec::Indices(*t).size() * sizeof(uint32_t);
  }
  return n;
}

}  // namespace fedlora::bench
