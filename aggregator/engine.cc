#include "aggregator/engine.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <set>

#include "aggregator/methods/pair_change.h"
#include "schema/hash.h"
#include "schema/validate.h"

namespace fedlora::aggregator {
namespace {

methods::EngineSetup SetupOf(const EngineOptions& o) {
  return {o.mode, o.client_dp.noise_multiplier > 0, o.server_optimizer.kind != ServerOptimizerKind::kSgd,
          o.server_lr};
}

}  // namespace

Status ValidateEngineOptions(const EngineOptions& o) {
  RETURN_IF_ERROR(o.method.params().Validate());
  if (o.mode == wire::Mode::FedBuff && o.buffer_size == 0) return InvalidArgument("buffer size K must be at least 1");
  if (o.mode == wire::Mode::Sync && o.round_size == 0) return InvalidArgument("round size must be at least 1");
  if (!(o.fedasync_alpha > 0 && o.fedasync_alpha <= 1)) return InvalidArgument("FedAsync alpha must be in (0, 1]");
  if (!(o.server_lr > 0) || !std::isfinite(o.server_lr)) return InvalidArgument("server learning rate must be positive");
  if (StalenessA(o.staleness) < 0 || o.staleness.b < 0) return InvalidArgument("staleness parameters must be non-negative");
  RETURN_IF_ERROR(ValidateServerOptimizer(o.server_optimizer));
  RETURN_IF_ERROR(ValidateClientDp(o.client_dp, o.dp_delta));
  if (o.client_dp.noise_multiplier > 0 && o.mode == wire::Mode::FedAsync) {
    return InvalidArgument("client-level DP noises one server step of many clients: use fedbuff or sync, not fedasync");
  }
  if (o.server_optimizer.kind != ServerOptimizerKind::kSgd && o.mode == wire::Mode::FedAsync) {
    return InvalidArgument("a server optimizer steps FedBuff and sync; fedasync mixes each update in (use sgd)");
  }
  return o.method.method().Supports(SetupOf(o), o.method.params());
}

Result<MethodState> MethodStateOf(const EngineOptions& options, const AdapterSpec& spec, uint64_t version) {
  ASSIGN_OR_RETURN(methods::LoraLayout layout, methods::LoraLayout::Of(spec));
  ASSIGN_OR_RETURN(std::unique_ptr<methods::ServerHalf> server,
                   options.method.method().Server(options.method.params(), spec, layout, SetupOf(options), 0, {}));
  MethodState state = server->StateAt(version);
  state.own_rank_scale = options.own_rank_scale;
  return state;
}

namespace {

// acc += w * d over n elements: the fold of a dense tensor, the aggregator's hot loop. The
// update's values live in the received message and never alias the accumulator (restrict),
// and whole blocks of a constant length let GCC vectorise at -O2 (it will not there for a
// loop that needs a scalar remainder); the remainder runs after.
void Axpy(float* __restrict acc, const float* __restrict d, size_t n, float w) {
  constexpr size_t kBlock = 16;
  size_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    for (size_t j = 0; j < kBlock; ++j) acc[i + j] += w * d[i + j];
  }
  for (; i < n; ++i) acc[i] += w * d[i];
}

using methods::ForEachCarried;

class EngineImpl final : public Engine {
 public:
  EngineImpl(EngineOptions options, std::string adapter_id, AdapterSpec spec, AdapterState state,
             uint64_t version, uint64_t consumed_seq, BaseLookup base_lookup, methods::LoraLayout layout,
             std::unique_ptr<methods::ServerHalf> method, ServerOptimizer optimizer, PrivacyLedger ledger,
             std::optional<uint64_t> noise_seed, std::vector<RolledBack> rolled_back)
      : options_(std::move(options)),
        adapter_id_(std::move(adapter_id)),
        spec_(std::move(spec)),
        state_(std::move(state)),
        version_(version),
        next_seq_(consumed_seq + 1),
        base_lookup_(std::move(base_lookup)),
        layout_(std::move(layout)),
        method_(std::move(method)),
        optimizer_(std::move(optimizer)),
        ledger_(std::move(ledger)),
        noise_seed_(noise_seed),
        rolled_back_(std::move(rolled_back)) {}

  const AdapterSpec& spec() const override { return spec_; }
  const AdapterState& state() const override { return state_; }
  uint64_t version() const override { return version_; }
  uint64_t next_seq() const override { return next_seq_; }
  size_t buffered() const override { return buffer_.size(); }
  MethodState method_state() const override {
    MethodState s = method_->StateAt(version_);
    s.own_rank_scale = options_.own_rank_scale;
    return s;
  }
  const ServerOptimizerState& server_state() const override { return optimizer_.state(); }
  ServerState saved_state() const override {
    ServerState s;
    s.version = version_;
    s.optimizer = optimizer_.state();
    s.noise_seed = noise_seed_;
    s.factors = method_->memory().factors;
    s.ledger = ledger_.Snapshot();
    s.rolled_back = rolled_back_;
    return s;
  }
  std::optional<codec::PrivacyLedger> ledger() const override { return ledger_.Snapshot(); }
  bool CanAffordStep() const override { return ledger_.CanAffordServerStep(); }
  double client_epsilon() const override { return ledger_.client_epsilon(); }

  Result<std::optional<codec::VersionInfo>> Consume(uint64_t seq, const wire::Update& u,
                                                    std::optional<uint64_t> base_version) override {
    if (seq != next_seq_) {
      return FailedPrecondition(fmt::format("engine expects log record {}, got {}", next_seq_, seq));
    }
    next_seq_ = seq + 1;
    base_ = base_version.value_or(u.base_version());
    // Every logged update was released to the server, applied or not: it counts.
    if (Status s = ledger_.AccountUpdate(u.client_id()->str(), codec::DpReportOf(u)); !s.ok()) {
      return Drop(seq, u, base_ <= version_ ? version_ - base_ : 0, "invalid: " + s.message());
    }
    const uint64_t base = base_;
    if (base > version_) return Drop(seq, u, 0, "future-base");
    const uint64_t tau = version_ - base;
    for (const RolledBack& r : rolled_back_) {
      if (base >= r.first && base <= r.last) return Drop(seq, u, tau, "rolled-back-base");
    }
    if (options_.mode == wire::Mode::Sync && tau > 0) return Drop(seq, u, tau, "stale-round");
    if (tau > options_.staleness.max_staleness) return Drop(seq, u, tau, "max-staleness");
    // The base version was checked above (it may be re-based by a what-if replay).
    if (Status s = ValidateUpdate(u, spec_, std::numeric_limits<uint64_t>::max()); !s.ok()) {
      return Drop(seq, u, tau, "invalid: " + s.message());
    }
    if (Status s = method_->Check(u); !s.ok()) return Drop(seq, u, tau, "invalid: " + s.message());
    if (options_.mode == wire::Mode::Sync && !round_clients_.insert(u.client_id()->str()).second) {
      return Drop(seq, u, tau, "repeat-client-in-round");
    }
    switch (options_.mode) {
      case wire::Mode::FedAsync: return ApplyFedAsync(seq, u, tau);
      case wire::Mode::FedBuff:
      case wire::Mode::Sync: return Buffer(seq, u, tau);
    }
    return Internal("unknown mode");
  }

 private:
  bool dp() const { return options_.client_dp.noise_multiplier > 0; }
  // Only the coordinates the method may move at this version are folded (client-level DP noises
  // exactly those; as-lora keeps the inactive factor exact).
  bool restricted() const { return dp() || method_->RestrictsFolds(); }
  bool Movable(size_t t) const { return method_->Moves(t, version_); }
  // Whether the engine folds tensor t (and whether it may at this version).
  bool Folds(size_t t) const { return method_->FoldsElementwise(t) && (!restricted() || Movable(t)); }

  size_t IndexOf(const wire::Tensor& t) const { return static_cast<size_t>(layout_.tensor(t.name()->string_view())); }

  codec::LineageItem Lineage(uint64_t seq, const wire::Update& u, uint64_t tau, double weight) const {
    return {seq, u.client_id()->str(), u.update_id()->str(), base_,
            static_cast<uint32_t>(tau), static_cast<float>(weight), u.num_samples(), u.train_loss()};
  }

  Result<std::optional<codec::VersionInfo>> Drop(uint64_t seq, const wire::Update& u, uint64_t tau,
                                                 std::string reason) {
    dropped_.push_back({seq, u.client_id()->str(), u.update_id()->str(), base_,
                        static_cast<uint32_t>(std::min<uint64_t>(tau, UINT32_MAX)), std::move(reason)});
    return std::optional<codec::VersionInfo>();
  }

  // The global state the update being consumed was trained from (the current one when tau = 0).
  Result<std::shared_ptr<const AdapterState>> BaseOf(uint64_t tau) {
    if (tau == 0) return std::shared_ptr<const AdapterState>(std::shared_ptr<void>(), &state_);
    ASSIGN_OR_RETURN(auto base, base_lookup_(base_));
    if (Status s = CheckStateMatchesSpec(spec_, *base); !s.ok()) {
      return DataLoss(fmt::format("stored version {} does not match the spec: {}", base_, s.message()));
    }
    return base;
  }

  // n_k: the client's shard size; updates from before it was sent weigh by their run's examples.
  static double DataWeight(const wire::Update& u) {
    return static_cast<double>(u.shard_size() > 0 ? u.shard_size() : u.num_samples());
  }

  Result<std::optional<codec::VersionInfo>> ApplyFedAsync(uint64_t seq, const wire::Update& u, uint64_t tau) {
    const double alpha = options_.fedasync_alpha * StalenessWeight(options_.staleness, tau);
    ASSIGN_OR_RETURN(std::shared_ptr<const AdapterState> base, BaseOf(tau));
    const bool own = method_->FoldsOwnTensors();
    const AdapterState before = own ? state_ : AdapterState{};
    const float a = static_cast<float>(alpha);
    double sq = 0;
    // x <- (1 - a) x + a (x_base + delta) over the elements the update carries; the method
    // mixes what it folds itself.
    for (const auto* t : *u.tensors()) {
      const size_t idx = IndexOf(*t);
      if (!method_->FoldsElementwise(idx)) continue;
      auto& x = state_.tensors[idx].values;
      const auto& xb = base->tensors[idx].values;
      ForEachCarried(*t, spec_.tensors[idx], [&](size_t i, float d) {
        const float next = (1.0f - a) * x[i] + a * (xb[i] + d);
        const float step = next - x[i];
        x[i] = next;
        sq += static_cast<double>(step) * step;
      });
    }
    if (own) method_->Mix(state_, *base, u, alpha);
    std::vector<codec::LineageItem> applied{Lineage(seq, u, tau, alpha)};
    const double norm = own ? methods::StepNorm(before, state_) : std::sqrt(sq);
    return std::optional<codec::VersionInfo>(NewVersion(seq, std::move(applied), norm));
  }

  Result<std::optional<codec::VersionInfo>> Buffer(uint64_t seq, const wire::Update& u, uint64_t tau) {
    if (acc_.empty()) {
      acc_.resize(state_.tensors.size());
      for (size_t i = 0; i < acc_.size(); ++i) acc_[i].assign(state_.tensors[i].values.size(), 0.0f);
      carried_weight_.assign(layout_.modules().size(), {0.0, 0.0});
      if (optimizer_.stateful()) {
        carried_.resize(state_.tensors.size());
        for (size_t i = 0; i < carried_.size(); ++i) carried_[i].assign(state_.tensors[i].values.size(), 0);
      }
    }
    const double s = options_.mode == wire::Mode::Sync ? 1.0 : StalenessWeight(options_.staleness, tau);
    std::shared_ptr<const AdapterState> base;
    if (method_->NeedsBase()) {
      ASSIGN_OR_RETURN(base, BaseOf(tau));
    }
    // Under client-level DP every update weighs s(tau): sample counts are private.
    const double n = method_->Weight(u, base ? *base : state_, dp() ? 1.0 : DataWeight(u));
    const float w = static_cast<float>(s * n);
    // DP: each client's contributions are summed apart, to be clipped together at the step.
    std::vector<std::vector<float>>& target = dp() ? ClientSum(u.client_id()->str()) : acc_;
    // Last tensor first: validation has just read the update front to back, so its last
    // tensors are the ones still in cache. Each element's sum is the same in any tensor order.
    for (flatbuffers::uoffset_t k = u.tensors()->size(); k-- > 0;) {
      const auto* t = u.tensors()->Get(k);
      const size_t idx = IndexOf(*t);
      if (!Folds(idx)) continue;
      if (const int m = layout_.module_of(idx); m >= 0) {
        carried_weight_[static_cast<size_t>(m)][spec_.tensors[idx].role == TensorRole::kLoraA ? 1 : 0] += w;
      }
      auto& acc = target[idx];
      if (t->encoding() == wire::Encoding::Dense) {  // validated: as many values as acc
        const auto d = codec::DenseValues(*t);
        Axpy(acc.data(), d.data(), d.size(), w);
        if (optimizer_.stateful()) std::fill(carried_[idx].begin(), carried_[idx].end(), 1);
      } else if (optimizer_.stateful()) {
        auto& carried = carried_[idx];
        ForEachCarried(*t, spec_.tensors[idx], [&](size_t i, float d) {
          acc[i] += w * d;
          carried[i] = 1;
        });
      } else {
        ForEachCarried(*t, spec_.tensors[idx], [&](size_t i, float d) { acc[i] += w * d; });
      }
    }
    method_->Buffer(u, base ? *base : state_, s * n, target);
    sum_n_ += n;
    buffer_.push_back(Lineage(seq, u, tau, s * n));  // weight normalised at flush
    const size_t target_size = options_.mode == wire::Mode::Sync ? options_.round_size : options_.buffer_size;
    if (buffer_.size() < target_size) return std::optional<codec::VersionInfo>();
    return Step(seq, static_cast<double>(target_size));
  }

  // The zeroed per-tensor sums of one client for this step (DP), sized for movable tensors only.
  std::vector<std::vector<float>>& ClientSum(const std::string& client_id) {
    auto [it, fresh] = client_sums_.try_emplace(client_id);
    if (fresh) {
      it->second.resize(state_.tensors.size());
      for (size_t t = 0; t < state_.tensors.size(); ++t) {
        if (Movable(t)) it->second[t].assign(state_.tensors[t].values.size(), 0.0f);
      }
    }
    return it->second;
  }

  // Client-level DP: clips every client's sum to C into acc_, then adds N(0, (zC)^2) to every
  // movable coordinate. Returns each client's clip factor.
  std::map<std::string, double> ClipAndNoise() {
    const double clip = options_.client_dp.clip;
    std::map<std::string, double> factors;
    for (const auto& [client, sums] : client_sums_) {
      double sq = 0;
      for (const auto& v : sums) {
        for (float x : v) sq += static_cast<double>(x) * x;
      }
      const double norm = std::sqrt(sq);
      const double factor = norm > clip ? clip / norm : 1.0;
      factors[client] = factor;
      const float f = static_cast<float>(factor);
      for (size_t t = 0; t < sums.size(); ++t) {
        for (size_t i = 0; i < sums[t].size(); ++i) acc_[t][i] += f * sums[t][i];
      }
    }
    const double std_dev = options_.client_dp.noise_multiplier * clip;
    SeededGaussian noise(*noise_seed_, version_ + 1);
    for (size_t t = 0; t < acc_.size(); ++t) {
      if (!Movable(t)) continue;
      for (float& x : acc_[t]) x += static_cast<float>(std_dev * noise.Next());
      if (optimizer_.stateful()) std::fill(carried_[t].begin(), carried_[t].end(), 1);
    }
    return factors;
  }

  // One server step of FedBuff / Sync over the buffer; `k` is its target size.
  Result<std::optional<codec::VersionInfo>> Step(uint64_t seq, double k) {
    std::map<std::string, double> clip_factors;
    double mean = 0;  // g = mean * acc_
    if (dp()) {
      clip_factors = ClipAndNoise();
      mean = 1.0 / k;
      ledger_.AccountServerStep();
    } else if (sum_n_ > 0) {  // 0 only when every HetLoRA product was zero: nothing to move
      mean = 1.0 / sum_n_;
    }
    const double scale = options_.server_lr * mean;  // the product-space step; lineage weights
    const bool own = method_->FoldsOwnTensors();
    const AdapterState before = own ? state_ : AdapterState{};
    double sq = 0;
    if (mean > 0) {
      for (size_t t = 0; t < acc_.size(); ++t) {
        if (!method_->FoldsElementwise(t)) continue;
        sq += optimizer_.Apply(t, state_.tensors[t].values, acc_[t], mean,
                               optimizer_.stateful() ? &carried_[t] : nullptr);
      }
    }
    const double noise_sd = dp() ? options_.client_dp.noise_multiplier * options_.client_dp.clip : 0.0;
    method_->Step(state_, methods::StepSums{acc_, carried_weight_, mean, scale, noise_sd});
    if (own) {  // squared and rooted again, as versions before the method modules computed it
      sq = methods::StepNorm(before, state_);
      sq *= sq;
    }
    const double norm = std::sqrt(sq);
    std::vector<codec::LineageItem> applied = std::move(buffer_);
    // Lineage weight: the update's share of the step (SGD: eta p_k; Adam: p_k in its mean g).
    const double share = optimizer_.stateful() ? mean : scale;
    for (auto& item : applied) {
      const auto it = clip_factors.find(item.client_id);
      const double clipped = it == clip_factors.end() ? 1.0 : it->second;
      item.weight = static_cast<float>(item.weight * share * clipped);
    }
    buffer_.clear();
    acc_.clear();
    carried_.clear();
    client_sums_.clear();
    carried_weight_.clear();
    sum_n_ = 0;
    round_clients_.clear();
    return std::optional<codec::VersionInfo>(NewVersion(seq, std::move(applied), norm));
  }

  codec::VersionInfo NewVersion(uint64_t seq, std::vector<codec::LineageItem> applied, double norm) {
    codec::VersionInfo info;
    info.adapter_id = adapter_id_;
    info.parent_version = version_;
    info.version = ++version_;
    info.mode = options_.mode;
    info.method = std::string(options_.method.name());
    info.server_optimizer = std::string(ServerOptimizerName(options_.server_optimizer.kind));
    info.consumed_seq = seq;
    double sum_tau = 0;
    for (const auto& a : applied) {
      sum_tau += a.staleness;
      info.max_staleness = std::max(info.max_staleness, a.staleness);
    }
    info.mean_staleness = applied.empty() ? 0.0f : static_cast<float>(sum_tau / applied.size());
    info.applied = std::move(applied);
    info.dropped = std::move(dropped_);
    dropped_.clear();
    info.update_norm = static_cast<float>(norm);
    optimizer_.Finish(version_);
    method_->Finish(version_, info);
    info.privacy = ledger_.Snapshot();
    const Digest128 digest = HashAdapter(state_);
    info.content_hash = ToHex(digest);
    return info;
  }

  EngineOptions options_;
  std::string adapter_id_;
  AdapterSpec spec_;
  AdapterState state_;
  uint64_t version_;
  uint64_t next_seq_;
  BaseLookup base_lookup_;
  methods::LoraLayout layout_;
  std::unique_ptr<methods::ServerHalf> method_;
  // FedBuff / Sync buffer.
  std::vector<std::vector<float>> acc_;
  std::vector<std::vector<uint8_t>> carried_;  // stateful optimizer: elements some update carried
  std::map<std::string, std::vector<std::vector<float>>> client_sums_;  // client-level DP, per client
  std::vector<std::array<double, 2>> carried_weight_;  // per LoRA module: weight that carried B, A
  double sum_n_ = 0;
  std::vector<codec::LineageItem> buffer_;
  std::set<std::string> round_clients_;
  std::vector<codec::DropItem> dropped_;
  ServerOptimizer optimizer_;
  PrivacyLedger ledger_;
  std::optional<uint64_t> noise_seed_;
  uint64_t base_ = 0;  // the version the update being consumed counts as trained from
  std::vector<RolledBack> rolled_back_;  // versions undone by rollbacks (aggregator/rollback.h)
};

}  // namespace

Result<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options, std::string adapter_id,
                                               AdapterSpec spec, AdapterState state, uint64_t version,
                                               uint64_t consumed_seq, BaseLookup base_lookup,
                                               ServerState server_state) {
  RETURN_IF_ERROR(ValidateEngineOptions(options));
  RETURN_IF_ERROR(CheckStateMatchesSpec(spec, state).WithContext("initial global"));
  ASSIGN_OR_RETURN(methods::LoraLayout layout, methods::LoraLayout::Of(spec));
  const methods::Method& method = options.method.method();
  if (method.full_model() && !layout.empty()) {
    return InvalidArgument(fmt::format("method '{}' needs a full-model adapter (no LoRA factors); this adapter has LoRA",
                                       method.name()));
  }
  if (!method.full_model() && layout.empty()) {
    return InvalidArgument(fmt::format("method '{}' needs LoRA factors; this adapter has none", method.name()));
  }
  if (layout.has_residuals() != method.KeepsResiduals(options.method.params())) {
    return InvalidArgument(layout.has_residuals()
                               ? fmt::format("this adapter's LoRA modules carry residuals, which method '{}' with "
                                             "these settings does not keep (flora with --flora-merge exact does)",
                                             method.name())
                               : fmt::format("method '{}' with these settings keeps a residual per LoRA module; this "
                                             "adapter has none (made for another method or setting; flora runs without one under "
                                             "--flora-merge truncate)",
                                             method.name()));
  }
  ASSIGN_OR_RETURN(ServerOptimizer optimizer,
                   ServerOptimizer::Create(options.server_optimizer, options.server_lr, spec,
                                           std::move(server_state.optimizer), version));
  ASSIGN_OR_RETURN(PrivacyLedger ledger, PrivacyLedger::Create(options.dp_delta, options.client_dp, server_state.ledger));
  std::optional<uint64_t> seed = server_state.noise_seed;
  if (options.client_dp.noise_multiplier > 0) {
    if (options.client_dp.seed) {
      if (seed && *seed != *options.client_dp.seed) {
        return FailedPrecondition("the store's client-level DP noise seed differs from the one given: omit the seed "
                                  "to use the stored one, or start a new store");
      }
      seed = options.client_dp.seed;
    } else if (!seed) {
      seed = RandomSeed();
    }
  }
  methods::MethodMemory memory{server_state.version, std::move(server_state.factors)};
  ASSIGN_OR_RETURN(std::unique_ptr<methods::ServerHalf> server,
                   method.Server(options.method.params(), spec, layout, SetupOf(options), version, std::move(memory)));
  return std::unique_ptr<Engine>(new EngineImpl(options, std::move(adapter_id), std::move(spec), std::move(state),
                                                version, consumed_seq, std::move(base_lookup), std::move(layout),
                                                std::move(server), std::move(optimizer), std::move(ledger), seed,
                                                std::move(server_state.rolled_back)));
}

}  // namespace fedlora::aggregator
