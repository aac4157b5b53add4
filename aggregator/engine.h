// Engine is the deterministic heart of an aggregator: it consumes update-log records strictly
// in sequence order and decides, by the server rule, when a new global version exists and
// what it contains. It does no I/O, so the live aggregator and `fedlora replay` drive the same
// code and replay reproduces every version bit for bit.
//
// Server rules (docs/methods.md has the equations):
//  - FedAsync: every accepted update makes a version:
//      x <- (1 - a_t) x + a_t (x_base + delta),  a_t = alpha * s(tau)
//    (only the tensors the update carries are mixed).
//  - FedBuff: buffer K accepted updates, then step the server optimizer (server_optimizer.h)
//    by g = sum_k s(tau_k) (n_k / sum_j n_j) delta_k; with SGD, x <- x + eta * g
//  - Sync (the barrier baseline, classic FedAvg rounds): only updates trained from the current
//    version count, one per client; after `round_size` of them the server optimizer steps by
//      g = sum_k (n_k / sum_j n_j) delta_k
// The method (methods/method.h) decides what workers train and what "delta" means: the engine
// calls its server half to refuse updates that would break its exactness, to weigh them (hetlora:
// the norm of the client's product), to restrict what moves (ffa, fedsa, lora-a2, as-lora), and
// to fold what it folds itself (flora: LoRA pairs in product space). Everything else is folded
// element-wise over exactly the elements an update carries (dense tensors, sparse entries, rank
// slices). n_k is the client's shard size (Update.shard_size; the examples of the local run for
// updates that predate it).
// Client-level DP (privacy.h, FedBuff and Sync): weights become s(tau) (sample counts are
// private); each client's summed contributions to one step are clipped to C; N(0, (zC)^2) is
// added to every coordinate the method may move at this version (from the seeded generator, so
// replay is bit-exact); the sum is divided by the fixed K (or round size). Record-level DP
// reports of every logged update are composed into the per-worker ledger.
// tau = version - base_version. Updates from a future version, past max_staleness, stale in a
// synchronous round, a repeat client within a round, or not matching the spec or method are
// dropped, and each drop is recorded in the next version's lineage.
//
// Thread safety: one thread at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "aggregator/methods/method.h"
#include "aggregator/privacy.h"
#include "aggregator/server_optimizer.h"
#include "aggregator/server_state.h"
#include "aggregator/staleness.h"
#include "schema/adapter.h"
#include "schema/codec.h"
#include "schema/status.h"

namespace fedlora::aggregator {

struct EngineOptions {
  wire::Mode mode = wire::Mode::FedBuff;
  methods::MethodChoice method;    // default: FedAvg-LoRA
  // FedBuff K: accepted updates per version. Measured on the default task (6 non-IID workers):
  // K = 3 let each version follow whichever 3 clients it averaged (accuracy swung by 15
  // points, mean staleness 4.5); K = 6 is stable with mean staleness 1.
  uint32_t buffer_size = 6;
  // FedAsync mixing weight alpha: 0.9, the spec's and FedAsync's (Xie et al. 2019). fedlora used
  // 0.6 before 2026-12; settings recorded then name it and replay with it.
  double fedasync_alpha = 0.9;
  double server_lr = 1.0;          // eta: server step size of FedBuff and Sync (adam: ~1e-3)
  ServerOptimizerOptions server_optimizer;  // sgd, adam or adamw (not fedasync, not flora)
  StalenessOptions staleness;
  uint32_t round_size = 6;         // Sync: distinct clients per round
  // Clients of a lower rank r_k train at LoRA scale alpha / r_k (PEFT's convention) instead of
  // the global's alpha / r; either way their updates arrive in the global's units. Measured on
  // the default task with ranks 2/4/8 (docs/methods.md), alpha / r learns better: the default.
  bool own_rank_scale = false;
  ClientDpOptions client_dp;       // off unless noise_multiplier > 0
  double dp_delta = 1e-5;          // delta of every epsilon in the privacy ledger
};

// Validates option ranges. Errors: kInvalidArgument naming the option.
Status ValidateEngineOptions(const EngineOptions& options);

// What workers must know at `version` of an adapter that no engine holds (version 0, an import
// or a branch): the method's state at that version with no history behind it.
// Errors: kInvalidArgument (options or spec).
Result<MethodState> MethodStateOf(const EngineOptions& options, const AdapterSpec& spec, uint64_t version);

class Engine {
 public:
  // The global state of an older version, for FedAsync's x_base (read from the store).
  using BaseLookup = std::function<Result<std::shared_ptr<const AdapterState>>(uint64_t version)>;

  // `state` is the committed global at `version`, which consumed the log up to `consumed_seq`;
  // `server_state` what was committed with it (empty at version 0). Errors: kInvalidArgument
  // (options, spec), kFailedPrecondition (moments of another optimizer, state of another
  // version, another noise seed), kDataLoss.
  static Result<std::unique_ptr<Engine>> Create(const EngineOptions& options, std::string adapter_id,
                                                AdapterSpec spec, AdapterState state,
                                                uint64_t version, uint64_t consumed_seq,
                                                BaseLookup base_lookup,
                                                ServerState server_state = {});
  virtual ~Engine() = default;

  // Consumes record `seq`, which must be next_seq(). When the server rule completes a version,
  // the engine adopts it as its current state and returns its lineage (commit_unix_ms and
  // evaluation fields are left for the caller). `base_version` overrides the version the update
  // says it was trained from (a what-if replay maps it onto its own timeline). Errors:
  // kFailedPrecondition (out-of-order seq), errors of the base lookup. An invalid update is not
  // an error: it is dropped.
  virtual Result<std::optional<codec::VersionInfo>> Consume(uint64_t seq, const wire::Update& update,
                                                            std::optional<uint64_t> base_version) = 0;
  Result<std::optional<codec::VersionInfo>> Consume(uint64_t seq, const wire::Update& update) {
    return Consume(seq, update, std::nullopt);
  }

  virtual const AdapterSpec& spec() const = 0;
  virtual const AdapterState& state() const = 0;
  virtual uint64_t version() const = 0;
  virtual uint64_t next_seq() const = 0;
  // What workers must know to train from the current version (carried in the global).
  virtual MethodState method_state() const = 0;
  // The server optimizer's moments at version() (empty for sgd).
  virtual const ServerOptimizerState& server_state() const = 0;
  // Everything to commit with version() besides the global and its record (ledger included).
  virtual ServerState saved_state() const = 0;
  // The privacy ledger after version() (nullopt: no DP so far).
  virtual std::optional<codec::PrivacyLedger> ledger() const = 0;
  // Whether one more noised server step fits the client-level DP budget (true without one).
  virtual bool CanAffordStep() const = 0;
  virtual double client_epsilon() const = 0;
  // Accepted updates waiting in the FedBuff buffer or the current synchronous round.
  virtual size_t buffered() const = 0;
};

}  // namespace fedlora::aggregator
