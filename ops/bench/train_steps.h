// The training loop the worker benchmarks time (worker_steps.cc, lm_train.cc): optimizer steps
// run as a worker runs them, in local runs of a few steps, each a worker::TrainLocal call with a
// fresh Adam. Header-only; include from ops/bench only (it pulls in LibTorch).
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "schema/status.h"
#include "worker/data.h"
#include "worker/model.h"
#include "worker/train.h"

namespace fedlora::bench {

inline int64_t Numel(const std::vector<torch::Tensor>& tensors) {
  return std::accumulate(tensors.begin(), tensors.end(), int64_t{0},
                         [](int64_t n, const torch::Tensor& t) { return n + t.numel(); });
}

struct TrainLoop {
  uint32_t steps_per_run = 20;  // a worker's --local-steps
  uint32_t batch_size = 32;
  float lr = 1e-3f;
};

// Runs `steps` optimizer steps on data[indices]; `seed` advances by one per local run. Returns
// the mean loss of the last run. Errors: those of TrainLocal.
inline Result<double> TrainSteps(worker::Model& model, const worker::Dataset& data, const std::vector<size_t>& indices,
                                 const TrainLoop& loop, uint32_t steps, uint64_t& seed) {
  double loss = 0;
  for (uint32_t done = 0; done < steps;) {
    worker::LocalTrainOptions o;
    o.steps = std::min(loop.steps_per_run, steps - done);
    o.batch_size = loop.batch_size;
    o.lr = loop.lr;
    o.seed = seed++;
    ASSIGN_OR_RETURN(const worker::LocalTrainResult r, worker::TrainLocal(model, data, indices, o));
    if (r.steps == 0) break;
    done += r.steps;
    loss = r.mean_loss;
  }
  return loss;
}

}  // namespace fedlora::bench
