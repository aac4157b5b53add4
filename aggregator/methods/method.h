// A federation method (docs/methods.md) is one module: its hyperparameters with their defaults
// and help (MethodParams), its server half (how the aggregator checks, weighs and folds an
// update, and what state the global carries for workers) and its client half (what a worker
// starts from, trains, freezes and uploads), side by side in one .cc file and registered by
// name in registry.cc. The engine (aggregator/engine.h) keeps the modes (FedAsync, FedBuff,
// sync), staleness, client-level DP and commits, and calls the server half; the worker's local
// round (worker/local_round.h) keeps the training loop and calls the client half. Neither knows
// which method it runs.
//
// Both halves are plain C++ without LibTorch: the client half plans a round on AdapterStates
// (the worker turns the plan into frozen tensors, gradient masks and a proximal term) and
// encodes the trained delta, so the aggregator, the worker and the tools link one library.
//
// Thread safety: a Method and its params are immutable after registration; each half is used
// by one thread at a time.
#pragma once

#include <array>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "aggregator/methods/lora_layout.h"
#include "schema/adapter.h"
#include "schema/codec.h"
#include "schema/status.h"
#include "schema/method.h"

namespace fedlora::methods {

// --- Hyperparameters -------------------------------------------------------------------------

// Walks the hyperparameters of a method: the command line binds them, EngineConfigFlags prints
// them into every version's recorded settings, replay parses them back.
class ParamVisitor {
 public:
  virtual ~ParamVisitor() = default;
  virtual void Float(std::string_view flag, float& value, std::string_view help) = 0;
  virtual void Double(std::string_view flag, double& value, std::string_view help) = 0;
  virtual void Uint(std::string_view flag, uint32_t& value, std::string_view help) = 0;
  // One of `choices`.
  virtual void Choice(std::string_view flag, std::string& value, std::vector<std::string> choices,
                      std::string_view help) = 0;
};

class MethodParams {
 public:
  virtual ~MethodParams() = default;
  virtual std::unique_ptr<MethodParams> Clone() const = 0;
  // Every hyperparameter, with its flag (without "--"), in a fixed order.
  virtual void Visit(ParamVisitor& visitor) = 0;
  // Errors: kInvalidArgument naming the option.
  virtual Status Validate() const { return Status::Ok(); }
};

// A method without hyperparameters.
class NoParams final : public MethodParams {
 public:
  std::unique_ptr<MethodParams> Clone() const override { return std::make_unique<NoParams>(); }
  void Visit(ParamVisitor&) override {}
};

// Sets the hyperparameters named in `values` (flag -> text) and leaves the others; flags the
// method does not have are ignored (the recorded settings of older versions name the
// hyperparameters of every method). Errors: kInvalidArgument (a value that does not parse or
// is not one of the choices).
Status SetParams(MethodParams& params, const std::map<std::string, std::string, std::less<>>& values);
// "--flag value ..." of every hyperparameter (shortest text that reads back bit for bit).
std::string ParamFlags(const MethodParams& params);

// --- Server half -----------------------------------------------------------------------------

// The engine's settings a method may refuse or depend on.
struct EngineSetup {
  wire::Mode mode = wire::Mode::FedBuff;
  bool client_dp = false;          // client-level DP noises every server step
  bool stateful_optimizer = false; // adam / adamw (not sgd)
  double server_lr = 1.0;
};

// What the server half keeps across versions besides the global, committed with every version
// (aggregator/server_state.h) so that a restart or a replay resumes it exactly.
struct MethodMemory {
  uint64_t version = 0;                     // the global version it belongs to
  std::vector<codec::FactorScore> factors;  // as-lora: per LoRA module, Fisher proxies included
};

// The sums of one FedBuff / Sync step, as the engine folded them (DP: clipped and noised).
struct StepSums {
  const std::vector<std::vector<float>>& acc;  // per spec tensor: sum_k w_k delta_k
  // Per LoRA module (layout order): the summed weight of the updates that carried its B, its A.
  const std::vector<std::array<double, 2>>& carried_weight;
  double mean = 0;      // g = mean * acc
  double scale = 0;     // eta * mean: the step on the summed weights (product-space methods)
  double noise_sd = 0;  // client-level DP: the standard deviation added to each coordinate of acc
};

class ServerHalf {
 public:
  virtual ~ServerHalf() = default;

  // What workers must know to train from `version` (carried in the global).
  virtual MethodState StateAt(uint64_t version) const = 0;
  // Whether the method may move spec tensor `t` at `version`: a function of the settings and
  // the version only (never of which updates arrived), so client-level DP noises a public set.
  virtual bool Moves(size_t /*t*/, uint64_t /*version*/) const { return true; }
  // Whether folds are limited to Moves() even without client-level DP.
  virtual bool RestrictsFolds() const { return false; }
  // Refuses an update that would break the method's exactness (it is dropped with the reason).
  // The update has passed ValidateUpdate against the spec.
  virtual Status Check(const wire::Update& /*update*/) const { return Status::Ok(); }

  // Whether Weight, Buffer or Mix read the state the update was trained from.
  virtual bool NeedsBase() const { return false; }
  // An update's weight before staleness, given its data weight n_k (1 under client-level DP);
  // hetlora weighs by the norm of the client's product instead.
  virtual double Weight(const wire::Update& /*update*/, const AdapterState& /*base*/, double data_weight) const {
    return data_weight;
  }
  // Whether the method folds some tensors itself (in Step and Mix) rather than the engine element
  // by element (flora folds every LoRA pair in product space), and which.
  virtual bool FoldsOwnTensors() const { return false; }
  virtual bool FoldsElementwise(size_t /*t*/) const { return true; }
  // FedBuff / Sync: an accepted update of weight w, after the engine's element-wise fold into
  // `acc` (which the method may add to, e.g. hetlora's zero-padded ranks).
  virtual void Buffer(const wire::Update& /*update*/, const AdapterState& /*base*/, double /*w*/,
                      std::vector<std::vector<float>>& /*acc*/) {}
  // FedBuff / Sync: the step's method part, after the engine's optimizer step of the
  // element-wise tensors.
  virtual void Step(AdapterState& /*state*/, const StepSums& /*sums*/) {}
  // FedAsync: x <- (1 - alpha) x + alpha (x_base + delta) for what FoldsElementwise() leaves.
  virtual void Mix(AdapterState& /*state*/, const AdapterState& /*base*/, const wire::Update& /*update*/,
                   double /*alpha*/) {}
  // A version was made: decide what trains from `version` on; record it in `info`.
  virtual void Finish(uint64_t /*version*/, codec::VersionInfo& /*info*/) {}
  virtual MethodMemory memory() const { return {}; }
};

// A server half that folds element-wise with no state of its own: fedavg, full, and the base
// of the methods that only restrict what moves.
class PlainServer : public ServerHalf {
 public:
  PlainServer(std::string_view name, AdapterSpec spec, LoraLayout layout)
      : name_(name), spec_(std::move(spec)), layout_(std::move(layout)) {}
  MethodState StateAt(uint64_t /*version*/) const override {
    MethodState s;
    s.method = std::string(name_);
    return s;
  }

 protected:
  // The role of an update tensor's spec tensor (validated: the name exists).
  TensorRole RoleOf(const wire::Tensor& t) const {
    return spec_.tensors[static_cast<size_t>(layout_.tensor(t.name()->string_view()))].role;
  }
  bool Carries(const wire::Update& u, TensorRole role) const {
    for (const auto* t : *u.tensors()) {
      if (RoleOf(*t) == role) return true;
    }
    return false;
  }

  std::string_view name_;
  AdapterSpec spec_;
  LoraLayout layout_;
};

// --- Client half -----------------------------------------------------------------------------

// What a client keeps between versions (fedsa: its personal B factors, by tensor name).
struct PersonalState {
  std::map<std::string, std::vector<float>> tensors;  // fedsa: the client's B factors
  uint32_t rank = 0;          // hetlora: the rank this client pruned itself to (0: its own)
  double tail_norm = -1;      // hetlora: the norm of its top ranks' product after its last round
};

// A client's own heterogeneity, on top of what the global's method state says.
struct ClientSettings {
  uint32_t rank = 0;          // LoRA rank this client trains (<= the adapter's); 0: the adapter's
  float upload_density = 0;   // flasc: this client's upload density at version 0; 0: the global's
  uint32_t rank_budget = 0;   // lora-a2: ranks per module this client uploads; 0: the global's
};

// One local round as the client half sees it.
struct ClientRound {
  const AdapterSpec& spec;
  const LoraLayout& layout;
  const AdapterState& global;
  const MethodState& state;
  ClientSettings client;
  uint32_t rank = 0;                 // the rank this client trains (<= spec.rank)
  PersonalState* personal = nullptr; // never null
  // Sums the gradients of every adapter tensor at the plan's start over `batches` batches
  // (DP-SGD gradients when record-level DP is on: each batch is one more application of the
  // mechanism, which the worker accounts). Set by the worker.
  std::function<Result<AdapterState>(const AdapterState& start, uint32_t batches)> probe;
  double step_size = 0;              // the local learning rate times the round's steps
};

// How the worker trains one round.
struct TrainPlan {
  uint32_t rank = 0;                         // the rank trained (<= ClientRound::rank); 0: that one
  AdapterState start;                        // what the local model starts from
  std::vector<bool> trains;                  // per spec tensor
  std::vector<bool> uploads;                 // per spec tensor
  std::vector<std::vector<uint32_t>> ranks;  // per LoRA module (layout order): ranks that train
  double lr_scale = 1.0;                     // on the local learning rate
  double proximal_mu = 0.0;                  // > 0: loss + (mu/2) ||theta - start||^2 over what trains
  // > 0: loss + tail_lambda sum over modules of ||B[:, tail_from:rank] A[tail_from:rank, :]||_F
  // (hetlora's rank self-pruning penalty on the top ranks).
  double tail_lambda = 0.0;
  uint32_t tail_from = 0;
  std::vector<float> factor_scores;          // sent with the update (as-lora's gradient scores)
};

class ClientHalf {
 public:
  virtual ~ClientHalf() = default;
  // The round's plan. The default trains and uploads everything over the client's ranks.
  virtual Result<TrainPlan> Plan(ClientRound& round) const;
  // What goes up, from the trained delta (local result minus plan.start, in the global's units).
  // The default: each uploaded tensor dense, or as rank slices when the plan kept fewer ranks.
  virtual std::vector<codec::EncodedTensor> Upload(ClientRound& round, const TrainPlan& plan,
                                                   const AdapterState& delta) const;
};

// --- The module ------------------------------------------------------------------------------

class Method {
 public:
  virtual ~Method() = default;
  virtual std::string_view name() const = 0;     // "fedavg", "ffa", ...
  virtual std::string_view summary() const = 0;  // one line for --help and reports
  // Full fine-tuning: the adapter is every base parameter (no LoRA).
  virtual bool full_model() const { return false; }
  // Part of the adapter stays on each client (per-client evaluation applies).
  virtual bool personal() const { return false; }
  // Whether the adapter's LoRA modules carry residuals (TensorRole::kLoraResidual) under these
  // params: the engine refuses an adapter that has them when this says no, and the reverse.
  virtual bool KeepsResiduals(const MethodParams& /*params*/) const { return false; }
  virtual std::unique_ptr<MethodParams> DefaultParams() const { return std::make_unique<NoParams>(); }
  // Errors: kInvalidArgument saying why this method cannot run with these settings.
  virtual Status Supports(const EngineSetup& /*setup*/, const MethodParams& /*params*/) const {
    return Status::Ok();
  }
  // `stored`: what was committed with `version` (empty when fresh). Errors: kDataLoss,
  // kFailedPrecondition (stored state of another version or shape).
  virtual Result<std::unique_ptr<ServerHalf>> Server(const MethodParams& params, const AdapterSpec& spec,
                                                     const LoraLayout& layout, const EngineSetup& setup,
                                                     uint64_t version, MethodMemory stored) const = 0;
  virtual std::unique_ptr<ClientHalf> Client() const { return std::make_unique<ClientHalf>(); }
};

// The usual shape of a method: its server half is built from (name, spec, layout) and, unless
// it has none, its params; its client half from nothing.
template <typename ParamsT, typename ServerT, typename ClientT = ClientHalf>
class BasicMethod : public Method {
 public:
  BasicMethod(std::string_view name, std::string_view summary) : name_(name), summary_(summary) {}
  std::string_view name() const override { return name_; }
  std::string_view summary() const override { return summary_; }
  std::unique_ptr<MethodParams> DefaultParams() const override { return std::make_unique<ParamsT>(); }
  Result<std::unique_ptr<ServerHalf>> Server(const MethodParams& params, const AdapterSpec& spec,
                                             const LoraLayout& layout, const EngineSetup& /*setup*/,
                                             uint64_t /*version*/, MethodMemory /*stored*/) const override {
    if constexpr (std::is_same_v<ParamsT, NoParams>) {
      return std::unique_ptr<ServerHalf>(std::make_unique<ServerT>(name_, spec, layout));
    } else {
      return std::unique_ptr<ServerHalf>(
          std::make_unique<ServerT>(name_, spec, layout, dynamic_cast<const ParamsT&>(params)));
    }
  }
  std::unique_ptr<ClientHalf> Client() const override { return std::make_unique<ClientT>(); }

 private:
  std::string_view name_, summary_;
};

// Why a method whose aggregation weights or product-space step have no fixed per-client
// sensitivity cannot run under client-level DP.
Status NoClientDp(std::string_view method);

// A method and its hyperparameters, as a value (EngineOptions::method).
class MethodChoice {
 public:
  MethodChoice();  // fedavg
  // Errors: kInvalidArgument listing the registered names.
  static Result<MethodChoice> Named(std::string_view name);
  MethodChoice(const MethodChoice& other);
  MethodChoice& operator=(const MethodChoice& other);

  const Method& method() const { return *method_; }
  std::string_view name() const { return method_->name(); }
  const MethodParams& params() const { return *params_; }
  MethodParams& params() { return *params_; }
  // The method's own params type; aborts on another method's type (a programming error).
  template <typename P>
  P& params_as() {
    auto* p = dynamic_cast<P*>(params_.get());
    if (p == nullptr) std::abort();
    return *p;
  }
  template <typename P>
  const P& params_as() const {
    auto* p = dynamic_cast<const P*>(params_.get());
    if (p == nullptr) std::abort();
    return *p;
  }

 private:
  MethodChoice(const Method* method, std::unique_ptr<MethodParams> params)
      : method_(method), params_(std::move(params)) {}
  const Method* method_;
  std::unique_ptr<MethodParams> params_;
};

}  // namespace fedlora::methods
