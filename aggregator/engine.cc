#include "aggregator/engine.h"

#include <fmt/format.h>

#include <limits>

#include <array>
#include <cmath>
#include <map>
#include <algorithm>
#include <set>

#include "aggregator/factor_selection.h"
#include "aggregator/lowrank.h"
#include "schema/hash.h"
#include "schema/validate.h"

namespace fedlora::aggregator {

Status ValidateEngineOptions(const EngineOptions& o) {
  RETURN_IF_ERROR(ValidateMethodConfig(o.method));
  if (o.mode == wire::Mode::FedBuff && o.buffer_size == 0) return InvalidArgument("buffer size K must be at least 1");
  if (o.mode == wire::Mode::Sync && o.round_size == 0) return InvalidArgument("round size must be at least 1");
  if (!(o.fedasync_alpha > 0 && o.fedasync_alpha <= 1)) return InvalidArgument("FedAsync alpha must be in (0, 1]");
  if (!(o.server_lr > 0) || !std::isfinite(o.server_lr)) return InvalidArgument("server learning rate must be positive");
  if (o.staleness.a < 0 || o.staleness.b < 0) return InvalidArgument("staleness parameters must be non-negative");
  RETURN_IF_ERROR(ValidateServerOptimizer(o.server_optimizer));
  RETURN_IF_ERROR(ValidateClientDp(o.client_dp, o.dp_delta));
  if (o.client_dp.noise_multiplier > 0) {
    if (o.mode == wire::Mode::FedAsync) {
      return InvalidArgument("client-level DP noises one server step of many clients: use fedbuff or sync, not fedasync");
    }
    if (o.method.method == Method::kFlora || o.method.method == Method::kHetLora) {
      return InvalidArgument(fmt::format("client-level DP is not supported with '{}': its aggregation weights or "
                                         "product-space step have no fixed per-client sensitivity",
                                         MethodName(o.method.method)));
    }
  }
  if (o.method.method == Method::kAsLora && o.mode == wire::Mode::FedAsync) {
    return InvalidArgument("as-lora scores aggregated server steps: use fedbuff or sync, not fedasync");
  }
  if (o.server_optimizer.kind != ServerOptimizerKind::kSgd) {
    if (o.mode == wire::Mode::FedAsync) {
      return InvalidArgument("a server optimizer steps FedBuff and sync; fedasync mixes each update in (use sgd)");
    }
    if (o.method.method == Method::kFlora) {
      return InvalidArgument("flora re-factorises in product space; it has no per-element server step (use sgd)");
    }
  }
  return Status::Ok();
}

namespace {

// Calls f(flat_index, value) for every element a tensor of an update carries, in increasing
// flat order per rank (the tensor was validated against `spec`).
template <typename F>
void ForEachCarried(const wire::Tensor& t, const TensorSpec& spec, F&& f) {
  const auto values = codec::DenseValues(t);
  switch (t.encoding()) {
    case wire::Encoding::Dense:
      for (size_t i = 0; i < values.size(); ++i) f(i, values[i]);
      return;
    case wire::Encoding::Sparse: {
      const auto indices = codec::Indices(t);
      for (size_t j = 0; j < indices.size(); ++j) f(indices[j], values[j]);
      return;
    }
    case wire::Encoding::RankSlice: {
      const auto ranks = codec::Ranks(t);
      const size_t nr = ranks.size();
      if (spec.role == TensorRole::kLoraA) {  // r x k: whole rows
        const size_t k = spec.shape[1];
        for (size_t j = 0; j < nr; ++j) {
          for (size_t c = 0; c < k; ++c) f(ranks[j] * k + c, values[j * k + c]);
        }
      } else {  // d x r: columns, sent as a d x |ranks| matrix
        const size_t d = spec.shape[0];
        const size_t r = spec.shape[1];
        for (size_t row = 0; row < d; ++row) {
          for (size_t j = 0; j < nr; ++j) f(row * r + ranks[j], values[row * nr + j]);
        }
      }
      return;
    }
    default:
      return;  // rejected by validation
  }
}

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

// The ranks a LoRA factor of an update covers: its rank list, or every rank when dense.
std::vector<uint32_t> CarriedRanks(const wire::Tensor& t, uint32_t rank) {
  if (t.encoding() == wire::Encoding::RankSlice) {
    const auto r = codec::Ranks(t);
    return {r.begin(), r.end()};
  }
  std::vector<uint32_t> all(rank);
  for (uint32_t i = 0; i < rank; ++i) all[i] = i;
  return all;
}

// A LoRA pair of the spec.
struct Module {
  std::string name;
  int a = -1;  // spec index of "<name>.lora_A" (r x k)
  int b = -1;  // spec index of "<name>.lora_B" (d x r)
};

// Factors B[:, ranks] and A[ranks, :] of a module in `state`, plus `delta` of an update when given.
lowrank::Factors Slice(const AdapterState& state, const Module& m, const AdapterSpec& spec,
                       const std::vector<uint32_t>& ranks) {
  const auto& as = spec.tensors[m.a];
  const auto& bs = spec.tensors[m.b];
  const uint32_t r = as.shape[0];
  lowrank::Factors f;
  f.rows = bs.shape[0];
  f.cols = as.shape[1];
  f.rank = static_cast<uint32_t>(ranks.size());
  f.b.resize(static_cast<size_t>(f.rows) * f.rank);
  f.a.resize(static_cast<size_t>(f.rank) * f.cols);
  const auto& a = state.tensors[m.a].values;
  const auto& b = state.tensors[m.b].values;
  for (uint32_t j = 0; j < f.rank; ++j) {
    for (uint32_t c = 0; c < f.cols; ++c) f.a[static_cast<size_t>(j) * f.cols + c] = a[static_cast<size_t>(ranks[j]) * f.cols + c];
    for (uint32_t row = 0; row < f.rows; ++row) f.b[static_cast<size_t>(row) * f.rank + j] = b[static_cast<size_t>(row) * r + ranks[j]];
  }
  return f;
}

// Adds an update's carried values of a factor (over `ranks`) to a sliced factor pair.
void AddDelta(lowrank::Factors& f, const wire::Tensor& t, const TensorSpec& spec, bool is_a,
              const std::vector<uint32_t>& ranks) {
  const uint32_t r = is_a ? spec.shape[0] : spec.shape[1];
  std::vector<int> position(r, -1);
  for (size_t j = 0; j < ranks.size(); ++j) position[ranks[j]] = static_cast<int>(j);
  ForEachCarried(t, spec, [&](size_t flat, float v) {
    if (is_a) {
      const size_t rank = flat / f.cols;
      f.a[static_cast<size_t>(position[rank]) * f.cols + flat % f.cols] += v;
    } else {
      const size_t rank = flat % r;
      f.b[(flat / r) * f.rank + static_cast<size_t>(position[rank])] += v;
    }
  });
}

// ||B A||_F from the r x r Gram matrices: sum_ij (B^T B)_ij (A A^T)_ij.
double ProductNorm(const lowrank::Factors& f) {
  const uint32_t r = f.rank;
  double sum = 0;
  for (uint32_t i = 0; i < r; ++i) {
    for (uint32_t j = 0; j < r; ++j) {
      double bb = 0, aa = 0;
      for (uint32_t row = 0; row < f.rows; ++row) bb += f.b[static_cast<size_t>(row) * r + i] * f.b[static_cast<size_t>(row) * r + j];
      for (uint32_t c = 0; c < f.cols; ++c) aa += f.a[static_cast<size_t>(i) * f.cols + c] * f.a[static_cast<size_t>(j) * f.cols + c];
      sum += bb * aa;
    }
  }
  return std::sqrt(std::max(0.0, sum));
}

class EngineImpl final : public Engine {
 public:
  EngineImpl(EngineOptions options, std::string adapter_id, AdapterSpec spec, AdapterState state,
             uint64_t version, uint64_t consumed_seq, BaseLookup base_lookup, std::vector<Module> modules,
             ServerOptimizer optimizer, PrivacyLedger ledger, std::optional<uint64_t> noise_seed,
             std::optional<FactorSelector> selector, std::vector<size_t> a_order,
             std::vector<RolledBack> rolled_back)
      : options_(std::move(options)),
        adapter_id_(std::move(adapter_id)),
        spec_(std::move(spec)),
        state_(std::move(state)),
        version_(version),
        next_seq_(consumed_seq + 1),
        base_lookup_(std::move(base_lookup)),
        modules_(std::move(modules)),
        optimizer_(std::move(optimizer)),
        ledger_(std::move(ledger)),
        noise_seed_(noise_seed),
        selector_(std::move(selector)),
        a_order_(std::move(a_order)),
        rolled_back_(std::move(rolled_back)) {
    for (size_t i = 0; i < spec_.tensors.size(); ++i) index_[spec_.tensors[i].name] = i;
    position_.assign(modules_.size(), 0);
    for (size_t p = 0; p < a_order_.size(); ++p) position_[a_order_[p]] = p;
    module_of_.assign(spec_.tensors.size(), -1);
    for (size_t m = 0; m < modules_.size(); ++m) {
      module_of_[modules_[m].a] = static_cast<int>(m);
      module_of_[modules_[m].b] = static_cast<int>(m);
    }
  }

  const AdapterSpec& spec() const override { return spec_; }
  const AdapterState& state() const override { return state_; }
  uint64_t version() const override { return version_; }
  uint64_t next_seq() const override { return next_seq_; }
  size_t buffered() const override { return buffer_.size(); }
  MethodState method_state() const override {
    MethodState s = MethodStateAt(options_.method, spec_.rank, version_);
    if (selector_) s.active = selector_->ActiveVector();
    return s;
  }
  const ServerOptimizerState& server_state() const override { return optimizer_.state(); }
  ServerState saved_state() const override {
    ServerState s;
    s.version = version_;
    s.optimizer = optimizer_.state();
    s.noise_seed = noise_seed_;
    if (selector_) s.factors = selector_->state();
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
    if (Status s = CheckMethodRules(u); !s.ok()) return Drop(seq, u, tau, "invalid: " + s.message());
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
  Method method() const { return options_.method.method; }
  bool dp() const { return options_.client_dp.noise_multiplier > 0; }
  // Only the coordinates the method may move at this version are folded (client-level DP noises
  // exactly those; as-lora keeps the inactive factor exact).
  bool restricted() const { return dp() || method() == Method::kAsLora; }

  // Whether the method may move tensor t at the current version: a function of the options and
  // the version only (never of which updates arrived), so DP noise covers a public set.
  bool Movable(size_t t) const {
    const TensorRole role = spec_.tensors[t].role;
    if (role == TensorRole::kDense) return true;
    switch (method()) {
      case Method::kFfa: return role == TensorRole::kLoraB;
      case Method::kFedSa: return role == TensorRole::kLoraA;
      case Method::kLoraA2: {
        const uint8_t phase = MethodStateAt(options_.method, spec_.rank, version_).phase;
        return (phase == 0) == (role == TensorRole::kLoraB);
      }
      case Method::kAsLora: {
        const uint8_t active = selector_->active(position_[static_cast<size_t>(module_of_[t])]);
        return (active == kFactorA) == (role == TensorRole::kLoraA);
      }
      default: return true;
    }
  }

  // What each method refuses because it would break the method's exactness.
  Status CheckMethodRules(const wire::Update& u) const {
    bool has_a = false, has_b = false;
    std::map<int, std::pair<const wire::Tensor*, const wire::Tensor*>> pairs;  // module -> (A, B)
    for (const auto* t : *u.tensors()) {
      const size_t idx = index_.at(t->name()->str());
      const TensorRole role = spec_.tensors[idx].role;
      has_a |= role == TensorRole::kLoraA;
      has_b |= role == TensorRole::kLoraB;
      if (module_of_[idx] >= 0) {
        auto& p = pairs[module_of_[idx]];
        (role == TensorRole::kLoraA ? p.first : p.second) = t;
      }
    }
    switch (method()) {
      case Method::kFfa:
        if (has_a) return InvalidArgument("ffa keeps lora_A frozen; the update carries an A factor");
        break;
      case Method::kFedSa:
        if (has_b) return InvalidArgument("fedsa shares lora_A only; the update carries a B factor");
        break;
      case Method::kLoraA2:
        if (has_a && has_b) return InvalidArgument("lora-a2 trains one factor per phase; the update carries both");
        break;
      case Method::kFlora:
        for (const auto& [m, p] : pairs) {
          if (!p.first || !p.second) {
            return InvalidArgument(fmt::format("flora needs both factors of module '{}'", modules_[m].name));
          }
          if (CarriedRanks(*p.first, spec_.rank) != CarriedRanks(*p.second, spec_.rank)) {
            return InvalidArgument(fmt::format("flora: the factors of module '{}' carry different ranks", modules_[m].name));
          }
        }
        break;
      case Method::kAsLora:
        for (const auto& [m, p] : pairs) {
          if (p.first && p.second) {
            return InvalidArgument(fmt::format("as-lora trains one factor per module; the update carries both of '{}'",
                                               modules_[m].name));
          }
        }
        break;
      default:
        break;
    }
    return Status::Ok();
  }

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

  // The factors one module of `u` starts from (base version over the carried ranks) and ends at.
  struct PairChange {
    int module = -1;
    lowrank::Factors start, end;
  };
  std::vector<PairChange> PairChanges(const wire::Update& u, const AdapterState& base) const {
    std::map<int, std::pair<const wire::Tensor*, const wire::Tensor*>> pairs;
    for (const auto* t : *u.tensors()) {
      const size_t idx = index_.at(t->name()->str());
      if (module_of_[idx] < 0) continue;
      auto& p = pairs[module_of_[idx]];
      (spec_.tensors[idx].role == TensorRole::kLoraA ? p.first : p.second) = t;
    }
    std::vector<PairChange> out;
    for (const auto& [m, p] : pairs) {
      const Module& mod = modules_[m];
      const auto ranks = CarriedRanks(p.first ? *p.first : *p.second, spec_.rank);
      PairChange c;
      c.module = m;
      c.start = Slice(base, mod, spec_, ranks);
      c.end = c.start;
      if (p.first) AddDelta(c.end, *p.first, spec_.tensors[mod.a], true, ranks);
      if (p.second) AddDelta(c.end, *p.second, spec_.tensors[mod.b], false, ranks);
      out.push_back(std::move(c));
    }
    return out;
  }

  // HetLoRA's aggregation weight factor: sum over modules of ||B_k A_k||_F of the local factors.
  double HetLoraNorm(const wire::Update& u, const AdapterState& base) const {
    double norm = 0;
    for (const auto& c : PairChanges(u, base)) norm += ProductNorm(c.end);
    return norm;
  }

  // The row norm of the current A factors (RMS), kept by re-factorisation.
  double ARowNorm(const Module& m) const {
    const auto& a = state_.tensors[m.a].values;
    double sq = 0;
    for (float v : a) sq += static_cast<double>(v) * v;
    const double rows = spec_.tensors[m.a].shape[0];
    const double n = std::sqrt(sq / rows);
    return n > 0 ? n : 1.0;
  }

  // Re-factorises module m of the current state as the truncated SVD of sum_i w_i B_i A_i, where
  // the terms include the current factors with weight `keep`.
  void RefactorModule(size_t m, double keep, const std::vector<std::pair<double, const lowrank::Factors*>>& extra) {
    const Module& mod = modules_[m];
    std::vector<uint32_t> all(spec_.rank);
    for (uint32_t i = 0; i < spec_.rank; ++i) all[i] = i;
    const lowrank::Factors current = Slice(state_, mod, spec_, all);
    std::vector<std::pair<double, const lowrank::Factors*>> terms;
    terms.emplace_back(keep, &current);
    terms.insert(terms.end(), extra.begin(), extra.end());
    const lowrank::Factors stacked = lowrank::Stack(terms);
    const lowrank::Factors next = lowrank::Refactor(stacked, spec_.rank, ARowNorm(mod));
    auto& a = state_.tensors[mod.a].values;
    auto& b = state_.tensors[mod.b].values;
    for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(next.a[i]);
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(next.b[i]);
  }

  static double StepNorm(const AdapterState& before, const AdapterState& after) {
    double sq = 0;
    for (size_t t = 0; t < before.tensors.size(); ++t) {
      const auto& x = before.tensors[t].values;
      const auto& y = after.tensors[t].values;
      for (size_t i = 0; i < x.size(); ++i) {
        const double d = static_cast<double>(y[i]) - x[i];
        sq += d * d;
      }
    }
    return std::sqrt(sq);
  }

  Result<std::optional<codec::VersionInfo>> ApplyFedAsync(uint64_t seq, const wire::Update& u, uint64_t tau) {
    const double alpha = options_.fedasync_alpha * StalenessWeight(options_.staleness, tau);
    ASSIGN_OR_RETURN(std::shared_ptr<const AdapterState> base, BaseOf(tau));
    const bool flora = method() == Method::kFlora;
    const AdapterState before = flora ? state_ : AdapterState{};
    const float a = static_cast<float>(alpha);
    double sq = 0;
    // x <- (1 - a) x + a (x_base + delta) over the elements the update carries. Under flora,
    // the LoRA pairs mix in product space instead (below).
    for (const auto* t : *u.tensors()) {
      const size_t idx = index_.at(t->name()->str());
      if (method() == Method::kFlora && module_of_[idx] >= 0) continue;
      auto& x = state_.tensors[idx].values;
      const auto& xb = base->tensors[idx].values;
      ForEachCarried(*t, spec_.tensors[idx], [&](size_t i, float d) {
        const float next = (1.0f - a) * x[i] + a * (xb[i] + d);
        const float step = next - x[i];
        x[i] = next;
        sq += static_cast<double>(step) * step;
      });
    }
    if (flora) {
      // W <- (1 - a) W + a (W_base + B' A' - B A): the client's change applied to its base.
      std::vector<uint32_t> all(spec_.rank);
      for (uint32_t i = 0; i < spec_.rank; ++i) all[i] = i;
      for (const auto& c : PairChanges(u, *base)) {
        const lowrank::Factors base_full = Slice(*base, modules_[c.module], spec_, all);
        RefactorModule(static_cast<size_t>(c.module), 1.0 - alpha,
                       {{alpha, &base_full}, {alpha, &c.end}, {-alpha, &c.start}});
      }
    }
    std::vector<codec::LineageItem> applied{Lineage(seq, u, tau, alpha)};
    const double norm = flora ? StepNorm(before, state_) : std::sqrt(sq);
    return std::optional<codec::VersionInfo>(NewVersion(seq, std::move(applied), norm));
  }

  Result<std::optional<codec::VersionInfo>> Buffer(uint64_t seq, const wire::Update& u, uint64_t tau) {
    if (acc_.empty()) {
      acc_.resize(state_.tensors.size());
      for (size_t i = 0; i < acc_.size(); ++i) acc_[i].assign(state_.tensors[i].values.size(), 0.0f);
      pending_.assign(modules_.size(), {});
      carried_weight_.assign(modules_.size(), {0.0, 0.0});
      if (optimizer_.stateful()) {
        carried_.resize(state_.tensors.size());
        for (size_t i = 0; i < carried_.size(); ++i) carried_[i].assign(state_.tensors[i].values.size(), 0);
      }
    }
    const double s = options_.mode == wire::Mode::Sync ? 1.0 : StalenessWeight(options_.staleness, tau);
    // Under client-level DP every update weighs s(tau): sample counts are private.
    double n = dp() ? 1.0 : static_cast<double>(u.num_samples());
    std::shared_ptr<const AdapterState> base;
    if (method() == Method::kHetLora || method() == Method::kFlora) {
      ASSIGN_OR_RETURN(base, BaseOf(tau));
    }
    if (method() == Method::kHetLora) n *= HetLoraNorm(u, *base);
    const float w = static_cast<float>(s * n);
    // DP: each client's contributions are summed apart, to be clipped together at the step.
    std::vector<std::vector<float>>& target = dp() ? ClientSum(u.client_id()->str()) : acc_;
    // Last tensor first: validation has just read the update front to back, so its last
    // tensors are the ones still in cache. Each element's sum is the same in any tensor order.
    for (flatbuffers::uoffset_t k = u.tensors()->size(); k-- > 0;) {
      const auto* t = u.tensors()->Get(k);
      const size_t idx = index_.at(t->name()->str());
      if (method() == Method::kFlora && module_of_[idx] >= 0) continue;
      if (restricted() && !Movable(idx)) continue;
      if (module_of_[idx] >= 0) {
        carried_weight_[module_of_[idx]][spec_.tensors[idx].role == TensorRole::kLoraA ? kFactorA : kFactorB] += w;
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
    if (method() == Method::kFlora) {
      for (auto& c : PairChanges(u, *base)) {
        pending_[c.module].push_back({s * n, std::move(c)});
      }
    }
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
    const double scale = options_.server_lr * mean;  // flora's product-space step; lineage weights
    const AdapterState before = method() == Method::kFlora ? state_ : AdapterState{};
    double sq = 0;
    if (mean > 0) {
      for (size_t t = 0; t < acc_.size(); ++t) {
        if (method() == Method::kFlora && module_of_[t] >= 0) continue;
        sq += optimizer_.Apply(t, state_.tensors[t].values, acc_[t], mean,
                               optimizer_.stateful() ? &carried_[t] : nullptr);
      }
    }
    if (method() == Method::kFlora && scale > 0) {
      for (size_t m = 0; m < modules_.size(); ++m) {
        if (pending_[m].empty()) continue;
        std::vector<std::pair<double, const lowrank::Factors*>> terms;
        for (const auto& [weight, c] : pending_[m]) {
          terms.emplace_back(scale * weight, &c.end);
          terms.emplace_back(-scale * weight, &c.start);
        }
        RefactorModule(m, 1.0, terms);
      }
      sq = StepNorm(before, state_);
      sq *= sq;
    }
    if (selector_) ObserveFactors();
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
    pending_.clear();
    client_sums_.clear();
    carried_weight_.clear();
    sum_n_ = 0;
    round_clients_.clear();
    return std::optional<codec::VersionInfo>(NewVersion(seq, std::move(applied), std::sqrt(sq)));
  }

  // AS-LoRA: each module's active factor, as aggregated in this step (the sum over the updates
  // that carried it, per unit of their weight), feeds the selector. A module whose active
  // factor no update of the buffer carried (they were all trained before a switch) is not
  // observed this time.
  void ObserveFactors() {
    const double z = options_.client_dp.noise_multiplier * options_.client_dp.clip;
    for (size_t p = 0; p < a_order_.size(); ++p) {
      const size_t m = a_order_[p];
      const int factor = selector_->active(p);
      const double weight = carried_weight_[m][factor];
      if (!(weight > 0)) continue;
      const auto& sum = acc_[factor == kFactorA ? modules_[m].a : modules_[m].b];
      std::vector<float> g(sum.size());
      for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(sum[i] / weight);
      const double noise_sd = dp() ? z / weight : 0.0;
      selector_->Observe(p, factor, g, noise_sd * noise_sd);
    }
  }

  codec::VersionInfo NewVersion(uint64_t seq, std::vector<codec::LineageItem> applied, double norm) {
    codec::VersionInfo info;
    info.adapter_id = adapter_id_;
    info.parent_version = version_;
    info.version = ++version_;
    info.mode = options_.mode;
    info.method = std::string(MethodName(method()));
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
    if (selector_) {
      selector_->Choose(version_);
      for (const auto& f : selector_->state()) {
        codec::FactorScore light = f;  // the record keeps the choice and scores, not the Fisher proxies
        light.fisher[0].clear();
        light.fisher[1].clear();
        info.factors.push_back(std::move(light));
      }
    }
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
  std::vector<Module> modules_;
  std::vector<int> module_of_;  // spec index -> module, -1 for dense tensors
  std::map<std::string, size_t, std::less<>> index_;
  // FedBuff / Sync buffer.
  std::vector<std::vector<float>> acc_;
  std::vector<std::vector<uint8_t>> carried_;  // stateful optimizer: elements some update carried
  std::vector<std::vector<std::pair<double, PairChange>>> pending_;  // flora, per module
  std::map<std::string, std::vector<std::vector<float>>> client_sums_;  // client-level DP, per client
  std::vector<std::array<double, 2>> carried_weight_;  // per module: weight that carried B, A
  double sum_n_ = 0;
  std::vector<codec::LineageItem> buffer_;
  std::set<std::string> round_clients_;
  std::vector<codec::DropItem> dropped_;
  ServerOptimizer optimizer_;
  PrivacyLedger ledger_;
  std::optional<uint64_t> noise_seed_;
  uint64_t base_ = 0;  // the version the update being consumed counts as trained from
  std::optional<FactorSelector> selector_;  // as-lora
  std::vector<size_t> a_order_;             // module indices in the spec order of their A factor
  std::vector<RolledBack> rolled_back_;     // versions undone by rollbacks (aggregator/rollback.h)
  std::vector<size_t> position_;            // module index -> position in a_order_
};

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Pairs each "<m>.lora_A" with its "<m>.lora_B" and checks the shapes agree with the rank.
Result<std::vector<Module>> FindModules(const AdapterSpec& spec) {
  std::map<std::string, Module> by_name;
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    const auto& t = spec.tensors[i];
    if (t.role == TensorRole::kDense) continue;
    const std::string_view suffix = t.role == TensorRole::kLoraA ? ".lora_A" : ".lora_B";
    if (!EndsWith(t.name, suffix) || t.shape.size() != 2) {
      return InvalidArgument(fmt::format("LoRA tensor '{}' must be 2-D and end in {}", t.name, suffix));
    }
    const uint32_t r = t.role == TensorRole::kLoraA ? t.shape[0] : t.shape[1];
    if (r != spec.rank) {
      return InvalidArgument(fmt::format("LoRA tensor '{}' has rank {}, the adapter's is {}", t.name, r, spec.rank));
    }
    Module& m = by_name[t.name.substr(0, t.name.size() - suffix.size())];
    m.name = t.name.substr(0, t.name.size() - suffix.size());
    (t.role == TensorRole::kLoraA ? m.a : m.b) = static_cast<int>(i);
  }
  std::vector<Module> out;
  for (auto& [name, m] : by_name) {
    if (m.a < 0 || m.b < 0) return InvalidArgument(fmt::format("LoRA module '{}' lacks one of its factors", name));
    out.push_back(std::move(m));
  }
  return out;
}

}  // namespace

Result<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options, std::string adapter_id,
                                               AdapterSpec spec, AdapterState state, uint64_t version,
                                               uint64_t consumed_seq, BaseLookup base_lookup,
                                               ServerState server_state) {
  RETURN_IF_ERROR(ValidateEngineOptions(options));
  RETURN_IF_ERROR(CheckStateMatchesSpec(spec, state).WithContext("initial global"));
  ASSIGN_OR_RETURN(std::vector<Module> modules, FindModules(spec));
  const bool full = options.method.method == Method::kFull;
  if (full && !modules.empty()) {
    return InvalidArgument("method 'full' needs a full-model adapter (no LoRA factors); this adapter has LoRA");
  }
  if (!full && modules.empty()) {
    return InvalidArgument(fmt::format("method '{}' needs LoRA factors; this adapter has none",
                                       MethodName(options.method.method)));
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
  // AS-LoRA's modules in the spec order of their A factors (the order of MethodState::active).
  std::vector<size_t> a_order(modules.size());
  for (size_t m = 0; m < modules.size(); ++m) a_order[m] = m;
  std::sort(a_order.begin(), a_order.end(), [&](size_t x, size_t y) { return modules[x].a < modules[y].a; });
  std::optional<FactorSelector> selector;
  if (options.method.method == Method::kAsLora) {
    if (version > 0 && server_state.factors.empty()) {
      return DataLoss(fmt::format("version {} has no stored AS-LoRA state", version));
    }
    if (!server_state.factors.empty() && server_state.version != version) {
      return FailedPrecondition(fmt::format("stored AS-LoRA state is of version {}, the global is at {}",
                                            server_state.version, version));
    }
    std::vector<std::string> names;
    std::vector<size_t> a_sizes, b_sizes;
    for (size_t m : a_order) {
      names.push_back(modules[m].name);
      a_sizes.push_back(spec.tensors[modules[m].a].numel());
      b_sizes.push_back(spec.tensors[modules[m].b].numel());
    }
    const FactorSelectionOptions fo{options.method.as_warmup, options.method.as_margin, options.method.as_beta,
                                    options.server_lr};
    const bool fresh = server_state.factors.empty();
    ASSIGN_OR_RETURN(FactorSelector s, FactorSelector::Create(fo, std::move(names), std::move(a_sizes),
                                                              std::move(b_sizes), std::move(server_state.factors)));
    if (fresh) s.Choose(version);
    selector = std::move(s);
  }
  return std::unique_ptr<Engine>(new EngineImpl(options, std::move(adapter_id), std::move(spec),
                                                std::move(state), version, consumed_seq,
                                                std::move(base_lookup), std::move(modules),
                                                std::move(optimizer), std::move(ledger), seed,
                                                std::move(selector), std::move(a_order),
                                                std::move(server_state.rolled_back)));
}

}  // namespace fedlora::aggregator
