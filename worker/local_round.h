// One local round of a worker: the training loop around a method's client half
// (aggregator/methods/method.h). The method plans the round on plain values (what the local
// model starts from, what trains, which ranks, the learning-rate scale, the proximal term);
// this loop loads the plan into the model, freezes and masks what the plan says, trains, and
// hands the delta to the method, which decides what goes up. It knows no method by name.
//
// Include only from worker/ and ops/: pulls in LibTorch through worker/train.h.
// Thread safety: one call at a time per model.
#pragma once

#include <stop_token>
#include <vector>

#include "aggregator/methods/method.h"
#include "schema/adapter.h"
#include "schema/codec.h"
#include "worker/train.h"

namespace fedlora::worker {

using methods::ClientSettings;
using methods::PersonalState;

struct LocalRound {
  std::vector<codec::EncodedTensor> upload;  // what the update carries
  LocalTrainResult trained;
  uint64_t values_uploaded = 0;              // carried values (sparse/rank slices: only those)
  std::vector<uint32_t> kept_ranks;          // ranks kept per LoRA module (for logs)
  uint32_t dp_steps = 0;                     // DP-SGD: applications of the mechanism (probes included)
  std::vector<float> factor_scores;          // sent with the update (as-lora's gradient scores)
};

// Prepares `model` from `global` under the method named by `state`, trains it on data[shard],
// and returns the upload. `personal` is what this client keeps between rounds (fedsa's B).
// Errors: kInvalidArgument (unknown method, client rank above the adapter's, the model does not
// match the spec).
Result<LocalRound> RunLocalRound(Model& model, const AdapterSpec& spec, const AdapterState& global,
                                 const MethodState& state, const ClientSettings& client, PersonalState& personal,
                                 const Dataset& data, const std::vector<size_t>& shard,
                                 const LocalTrainOptions& train, std::stop_token stop = {});

}  // namespace fedlora::worker
