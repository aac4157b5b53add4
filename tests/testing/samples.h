// Small adapters and updates for tests and the fuzz target (no GoogleTest here, so the fuzz
// build can use them).
#pragma once

#include <algorithm>
#include <string>

#include "schema/adapter.h"
#include "schema/codec.h"

namespace fedlora::testing {

// A two-module adapter: "m.lora_A" (2x3), "m.lora_B" (4x2), "head.weight" (2x4), "head.bias" (2).
inline AdapterSpec SmallSpec() {
  AdapterSpec spec;
  spec.model = "test";
  spec.rank = 2;
  spec.alpha = 4;
  spec.seed = 9;
  spec.target_modules = {"m"};
  spec.tensors = {{"m.lora_A", {2, 3}, TensorRole::kLoraA},
                  {"m.lora_B", {4, 2}, TensorRole::kLoraB},
                  {"head.weight", {2, 4}, TensorRole::kDense},
                  {"head.bias", {2}, TensorRole::kDense}};
  return spec;
}

// A state for `spec` whose element i of tensor t is base + 0.01 * (t * 100 + i).
inline AdapterState FilledState(const AdapterSpec& spec, float base) {
  AdapterState s;
  for (size_t t = 0; t < spec.tensors.size(); ++t) {
    DenseTensor d{spec.tensors[t].name, spec.tensors[t].shape, {}};
    d.values.resize(spec.tensors[t].numel());
    for (size_t i = 0; i < d.values.size(); ++i) d.values[i] = base + 0.01f * static_cast<float>(t * 100 + i);
    s.tensors.push_back(std::move(d));
  }
  return s;
}

inline AdapterState ConstantState(const AdapterSpec& spec, float value) {
  AdapterState s = FilledState(spec, 0);
  for (auto& t : s.tensors) std::fill(t.values.begin(), t.values.end(), value);
  return s;
}

inline codec::Bytes MakeUpdate(const std::string& id, const std::string& client, uint64_t base_version,
                               const AdapterState& delta, uint64_t samples = 10,
                               const std::string& adapter = "default", uint64_t shard_size = 0) {
  codec::UpdateHeader h;
  h.update_id = id;
  h.client_id = client;
  h.adapter_id = adapter;
  h.base_version = base_version;
  h.num_samples = samples;
  h.local_steps = 5;
  h.train_loss = 0.5f;
  h.shard_size = shard_size;
  return codec::BuildUpdate(h, delta);
}

inline const wire::Update& AsUpdate(const codec::Bytes& bytes) {
  return *wire::GetEnvelope(bytes.data())->body_as_Update();
}

}  // namespace fedlora::testing
