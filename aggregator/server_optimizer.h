// The server step of FedBuff and the synchronous baseline: how the weighted mean delta g of
// one buffer (the negative pseudo-gradient) moves the global x.
//   sgd:    x <- x + lr g
//   adam:   m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
//           x <- x + lr m^ / (sqrt(v^) + eps),  m^ = m / (1 - b1^t),  v^ = v / (1 - b2^t)
//   adamw:  adam, with decoupled weight decay x <- x - lr wd x first.
// Adam here is lazy: a step touches only the elements some update of the buffer carried
// (a FLASC sparse entry, a rank slice, a dense tensor). A factor a method keeps frozen
// (LoRA-A2's other phase, FedSA-LoRA's B) therefore stays exactly where it is, where dense
// Adam would keep moving it by momentum. The bias-correction step t counts per tensor the
// server steps that touched it.
//
// The moments are part of the aggregation's state: the aggregator commits them with every
// version in the same atomic write (storage::VersionCommit::server_state), so a restart
// resumes the exact trajectory and a replay of the log rebuilds it bit for bit.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "schema/adapter.h"
#include "schema/codec.h"
#include "schema/status.h"

namespace fedlora::aggregator {

enum class ServerOptimizerKind { kSgd, kAdam, kAdamW };

std::string_view ServerOptimizerName(ServerOptimizerKind kind);  // "sgd", "adam", "adamw"
// Errors: kInvalidArgument naming the choices.
Result<ServerOptimizerKind> ParseServerOptimizer(std::string_view name);
// The step size a kind is meant to run with when none is given: 1 (sgd), 1e-3 (adam, adamw).
double DefaultServerLr(ServerOptimizerKind kind);

struct ServerOptimizerOptions {
  ServerOptimizerKind kind = ServerOptimizerKind::kSgd;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;  // adamw only
};

// Errors: kInvalidArgument naming the option.
Status ValidateServerOptimizer(const ServerOptimizerOptions& options);

// Adam's moments after a version, one entry per spec tensor. Empty for sgd (stateless).
struct ServerOptimizerState {
  std::string optimizer;                  // ServerOptimizerName of the kind that wrote it
  uint64_t version = 0;                   // the global version these moments belong to
  std::vector<uint64_t> steps;            // per tensor: server steps that touched it
  std::vector<std::vector<float>> m, v;   // per tensor, the tensor's shape flattened
  bool empty() const { return steps.empty(); }
};

class ServerOptimizer {
 public:
  // `state` is what was committed with `version` (empty: fresh moments, allowed only for sgd,
  // or for adam/adamw at version 0). Errors: kFailedPrecondition (state of another kind or
  // version, or missing where it must exist), kDataLoss (sizes not matching the spec).
  static Result<ServerOptimizer> Create(const ServerOptimizerOptions& options, double lr,
                                        const AdapterSpec& spec, ServerOptimizerState state,
                                        uint64_t version);

  // Moves tensor `t` of the global by the mean delta g = scale * sum over the elements marked
  // in `carried` (every element when `carried` is null; ignored by sgd, which moves every
  // element by lr g and g is zero where nothing was carried). Returns the squared L2 norm of
  // the change.
  double Apply(size_t t, std::vector<float>& x, const std::vector<float>& sum, double scale,
               const std::vector<uint8_t>* carried);
  // Marks the moments as those of `version`; call once per server step, after Apply.
  void Finish(uint64_t version) { state_.version = version; }

  bool stateful() const { return options_.kind != ServerOptimizerKind::kSgd; }
  const ServerOptimizerState& state() const { return state_; }
  const ServerOptimizerOptions& options() const { return options_; }

 private:
  ServerOptimizer(const ServerOptimizerOptions& options, double lr, ServerOptimizerState state)
      : options_(options), lr_(lr), state_(std::move(state)) {}

  ServerOptimizerOptions options_;
  double lr_;
  ServerOptimizerState state_;
};

}  // namespace fedlora::aggregator
