// Helpers the language-model tests share. Include only from tests/lm (it pulls in LibTorch).
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <memory>
#include <random>
#include <string>

#include "worker/lm/checkpoint.h"
#include "worker/lm/llama.h"

namespace fedlora::worker::lm {

// The model of checkpoint directory `dir`, or null with the test failed and the reason given.
inline std::unique_ptr<LlamaModel> LoadTestModel(const std::string& dir, const LlamaOptions& options = {}) {
  auto checkpoint = Checkpoint::Open(dir);
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status().ToString();
  if (!checkpoint.ok()) return nullptr;
  auto model = LlamaModel::Create(*checkpoint, options);
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  return model.ok() ? std::move(*model) : nullptr;
}

// Sets every adapter tensor of `model` (B included, so the adapter changes the output) to
// seeded uniform values in [-0.3, 0.3] and returns them.
inline AdapterState RandomizeAdapter(LlamaModel& model, uint64_t seed) {
  AdapterState state = model.ExportAdapter();
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-0.3f, 0.3f);
  for (auto& t : state.tensors) {
    for (float& v : t.values) v = dist(rng);
  }
  const Status loaded = model.LoadAdapter(state);
  EXPECT_TRUE(loaded.ok()) << loaded.ToString();
  return state;
}

inline double MaxDiff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace fedlora::worker::lm
