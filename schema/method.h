// The federation methods (docs/methods.md) as configuration: their names, hyperparameters and
// the state each global version carries for workers. The worker half lives in worker/method.*,
// the server half in aggregator/engine.cc; both read the types here, which are plain values
// without LibTorch.
// Thread safety: plain values and pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "schema/status.h"

namespace fedlora {

enum class Method : uint8_t {
  kFedAvg,    // FedAvg-LoRA: train A and B, average each factor (inexact; the baseline)
  kFfa,       // FFA-LoRA: A frozen at its seeded init; train and upload B only (exact)
  kFlasc,     // FLASC: dense local training, sparse top-k upload, sparse download
  kLoraA2,    // LoRA-A2: alternate the trained factor by phase; upload only the top-scored ranks
  kSaFedLora, // SA-FedLoRA: proximal initiating stage, then an annealed per-module rank budget
  kHetLora,   // HetLoRA: per-client ranks, zero-padded averaging weighted by the product's norm
  kFlora,     // FLoRA stacking: exact product aggregation, truncated-SVD re-factorisation
  kFedSa,     // FedSA-LoRA: upload and average A; B stays on the client
  kAsLora,    // AS-LoRA: per module and version the server picks the factor that trains (exact)
  kFull,      // full fine-tuning: every base parameter trained and uploaded (reference)
};

inline constexpr Method kAllMethods[] = {Method::kFedAvg,    Method::kFfa,     Method::kFlasc,
                                         Method::kLoraA2,    Method::kSaFedLora, Method::kHetLora,
                                         Method::kFlora,     Method::kFedSa,   Method::kAsLora,
                                         Method::kFull};

std::string_view MethodName(Method method);  // "fedavg", "ffa", "flasc", "lora-a2", ...
// Errors: kInvalidArgument listing the known names.
Result<Method> ParseMethod(std::string_view name);
// One-line description for --help and reports.
std::string_view MethodSummary(Method method);

// Hyperparameters of every method, with the defaults used on the default task. Only the ones of
// the chosen method matter. Version numbers are global adapter versions.
struct MethodConfig {
  Method method = Method::kFedAvg;
  // FLASC. Densities decay as d_t = d0 * decay^floor(t / decay_every) (decay_every 0: never).
  float download_density = 1.0f;
  float upload_density = 0.1f;
  float density_decay = 1.0f;
  uint32_t decay_every = 0;
  // LoRA-A2: the trained factor flips every phase_length versions, B first; a client uploads
  // its top rank_budget x num_modules ranks; lr_A = a_lr_ratio x lr_B (the paper: lr_B = 5 lr_A).
  uint32_t phase_length = 10;
  uint32_t a2_rank_budget = 1;
  float a_lr_ratio = 0.2f;
  // SA-FedLoRA: versions [0, initiating_versions) train with the proximal term; the per-module
  // rank budget is max_budget until heating_until, then cools as a cubic to min_budget at
  // cooling_until. max_budget 0: the adapter's rank.
  uint32_t initiating_versions = 10;
  float proximal_mu = 0.01f;
  uint32_t heating_until = 20;
  uint32_t cooling_until = 60;
  uint32_t min_budget = 2;
  uint32_t max_budget = 0;
  // Batches whose summed gradients score the ranks (LoRA-A2, SA-FedLoRA).
  uint32_t probe_batches = 2;
  // AS-LoRA: B trains everywhere for the first as_warmup versions; afterwards each module
  // switches factor only when the other factor's smoothed score beats the active one's by
  // as_margin (relative); scores and Fisher proxies are EMAs with weight as_beta on the past.
  uint32_t as_warmup = 5;
  float as_margin = 0.1f;
  float as_beta = 0.9f;
};

// Errors: kInvalidArgument naming the option.
Status ValidateMethodConfig(const MethodConfig& config);

// What a worker must know at one version, as the global carries it (wire::Method).
struct MethodState {
  Method method = Method::kFedAvg;
  float download_density = 1.0f;
  float upload_density = 1.0f;
  uint8_t phase = 0;          // LoRA-A2: 0 trains B, 1 trains A
  float a_lr_ratio = 1.0f;
  uint32_t rank_budget = 0;   // LoRA-A2 ranks per module; SA-FedLoRA b(t); 0: every rank
  uint32_t probe_batches = 0;
  float proximal_mu = 0.0f;   // > 0 during SA-FedLoRA's initiating stage
  // AS-LoRA: per LoRA module (spec order of the lora_A tensors) 0 = B trains, 1 = A trains.
  // Empty or shorter than the module count: B for the modules it does not cover.
  std::vector<uint8_t> active;
};

// A client's own heterogeneity, on top of what the global's method state says.
struct ClientSettings {
  uint32_t rank = 0;           // LoRA rank this client trains (<= the adapter's); 0: the adapter's
  float upload_density = 0;    // FLASC upload density of this client; 0: the global's
  uint32_t rank_budget = 0;    // LoRA-A2 ranks per module of this client; 0: the global's
};

// The state of `config` at `version` of an adapter of LoRA rank `rank`.
MethodState MethodStateAt(const MethodConfig& config, uint32_t rank, uint64_t version);

// SA-FedLoRA's annealed budget b(t) (exposed for tests).
uint32_t AnnealedBudget(const MethodConfig& config, uint32_t rank, uint64_t version);

}  // namespace fedlora
