// The worker half of every federation method (docs/methods.md): from the global adapter and
// the method state it carries, decide what the local model starts from, what trains, which
// ranks are kept, and what is uploaded in which encoding. The server half is
// aggregator/engine.cc.
//
// Include only from worker/ and ops/: pulls in LibTorch through worker/train.h.
// Thread safety: one call at a time per model.
#pragma once

#include <map>
#include <stop_token>
#include <string>
#include <vector>

#include "schema/adapter.h"
#include "schema/codec.h"
#include "schema/method.h"
#include "worker/train.h"

namespace fedlora::worker {

// What a client keeps between versions: FedSA-LoRA's personal B factors (by tensor name).
struct PersonalState {
  std::map<std::string, std::vector<float>> tensors;
};

struct LocalRound {
  std::vector<codec::EncodedTensor> upload;  // what the update carries
  LocalTrainResult trained;
  uint64_t values_uploaded = 0;              // carried values (sparse/rank slices: only those)
  std::vector<uint32_t> kept_ranks;          // LoRA-A2 / SA-FedLoRA: ranks kept per module (for logs)
  uint32_t dp_steps = 0;                     // DP-SGD: applications of the mechanism (probes included)
};

// Prepares `model` from `global` under `method`, trains it on data[shard], and returns the
// upload. `personal` is read and updated for fedsa (may be null otherwise).
// Errors: kInvalidArgument (client rank above the adapter's, the model does not match).
Result<LocalRound> RunLocalRound(Model& model, const AdapterSpec& spec, const AdapterState& global,
                                 const MethodState& method, const ClientSettings& client,
                                 PersonalState* personal, const Dataset& data,
                                 const std::vector<size_t>& shard, const LocalTrainOptions& train,
                                 std::stop_token stop = {});

// The k entries of largest magnitude over every tensor together (ties: lower tensor, then lower
// index first), as sparse tensors in spec order; tensors without a kept entry are left out.
// k = floor(density * total elements), at least 1. Exposed for tests.
std::vector<codec::EncodedTensor> TopKSparse(const AdapterState& delta, double density);

// LoRA-A2's cheap score of rank i: ||dB[:, i]|| * ||A[i, :]|| (B-phase), which equals the
// Frobenius norm of the rank's outer product dB[:, i] A[i, :]. b is d x r, a is r x k, row-major.
double RankScore(const std::vector<float>& b, const std::vector<float>& a, uint32_t d, uint32_t r,
                 uint32_t k, uint32_t i);

}  // namespace fedlora::worker
