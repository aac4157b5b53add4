// What a worker must know of the federation method at one global version, as the global
// carries it (wire::Method in fedlora.fbs): plain values, so workers keep no state between
// versions. Each method (aggregator/methods/) fills the fields it uses; the others keep their
// defaults.
// Thread safety: plain values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fedlora {

struct MethodState {
  std::string method = "fedavg";  // the method's registered name (aggregator/methods/registry.h)
  float download_density = 1.0f;  // flasc
  float upload_density = 1.0f;    // flasc
  float density_scale = 1.0f;     // flasc: decay^floor(t / decay_every), applied to clients' own densities
  uint8_t phase = 0;              // lora-a2: 0 trains B, 1 trains A
  float a_lr_ratio = 1.0f;        // lora-a2
  uint32_t rank_budget = 0;       // lora-a2 ranks per module; sa-fedlora b(t); 0: every rank
  uint32_t probe_batches = 0;     // lora-a2, sa-fedlora
  float proximal_mu = 0.0f;       // > 0 during sa-fedlora's initiating stage
  float prune_lambda = 0.0f;      // hetlora: rank self-pruning penalty weight (0: off)
  float prune_gamma = 0.0f;       // hetlora: fraction of its ranks a pruning client keeps
  // Any method: a client of rank r_k < r trains at scale alpha / r_k (PEFT's convention for a
  // rank-r_k adapter) rather than the global's alpha / r.
  bool own_rank_scale = false;
  // as-lora: per LoRA module (spec order of the lora_A tensors) 0 = B trains, 1 = A trains.
  // Empty or shorter than the module count: B for the modules it does not cover.
  std::vector<uint8_t> active;
};

}  // namespace fedlora
