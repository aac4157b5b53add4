#include "aggregator/engine.h"

#include <fmt/format.h>

#include <cmath>
#include <map>
#include <set>

#include "schema/validate.h"
#include "schema/hash.h"

namespace fedlora::aggregator {

Status ValidateEngineOptions(const EngineOptions& o) {
  if (o.method != "fedavg") {
    return InvalidArgument(fmt::format("unknown method '{}' (available: fedavg)", o.method));
  }
  if (o.mode == wire::Mode::FedBuff && o.buffer_size == 0) return InvalidArgument("buffer size K must be at least 1");
  if (o.mode == wire::Mode::Sync && o.round_size == 0) return InvalidArgument("round size must be at least 1");
  if (!(o.fedasync_alpha > 0 && o.fedasync_alpha <= 1)) return InvalidArgument("FedAsync alpha must be in (0, 1]");
  if (!(o.server_lr > 0) || !std::isfinite(o.server_lr)) return InvalidArgument("server learning rate must be positive");
  if (o.staleness.a < 0 || o.staleness.b < 0) return InvalidArgument("staleness parameters must be non-negative");
  return Status::Ok();
}

namespace {

class EngineImpl final : public Engine {
 public:
  EngineImpl(EngineOptions options, std::string adapter_id, AdapterSpec spec, AdapterState state,
             uint64_t version, uint64_t consumed_seq, BaseLookup base_lookup)
      : options_(std::move(options)),
        adapter_id_(std::move(adapter_id)),
        spec_(std::move(spec)),
        state_(std::move(state)),
        version_(version),
        next_seq_(consumed_seq + 1),
        base_lookup_(std::move(base_lookup)) {
    for (size_t i = 0; i < spec_.tensors.size(); ++i) index_[spec_.tensors[i].name] = i;
  }

  const AdapterSpec& spec() const override { return spec_; }
  const AdapterState& state() const override { return state_; }
  uint64_t version() const override { return version_; }
  uint64_t next_seq() const override { return next_seq_; }
  size_t buffered() const override { return buffer_.size(); }

  Result<std::optional<codec::VersionInfo>> Consume(uint64_t seq, const wire::Update& u) override {
    if (seq != next_seq_) {
      return FailedPrecondition(fmt::format("engine expects log record {}, got {}", next_seq_, seq));
    }
    next_seq_ = seq + 1;
    const uint64_t base = u.base_version();
    if (base > version_) return Drop(seq, u, 0, "future-base");
    const uint64_t tau = version_ - base;
    if (options_.mode == wire::Mode::Sync && tau > 0) return Drop(seq, u, tau, "stale-round");
    if (tau > options_.staleness.max_staleness) return Drop(seq, u, tau, "max-staleness");
    if (Status s = ValidateUpdate(u, spec_, version_); !s.ok()) {
      return Drop(seq, u, tau, "invalid: " + s.message());
    }
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
  codec::LineageItem Lineage(uint64_t seq, const wire::Update& u, uint64_t tau, double weight) const {
    return {seq, u.client_id()->str(), u.update_id()->str(), u.base_version(),
            static_cast<uint32_t>(tau), static_cast<float>(weight), u.num_samples(), u.train_loss()};
  }

  Result<std::optional<codec::VersionInfo>> Drop(uint64_t seq, const wire::Update& u, uint64_t tau,
                                                 std::string reason) {
    dropped_.push_back({seq, u.client_id()->str(), u.update_id()->str(), u.base_version(),
                        static_cast<uint32_t>(std::min<uint64_t>(tau, UINT32_MAX)), std::move(reason)});
    return std::optional<codec::VersionInfo>();
  }

  Result<std::optional<codec::VersionInfo>> ApplyFedAsync(uint64_t seq, const wire::Update& u, uint64_t tau) {
    const double alpha = options_.fedasync_alpha * StalenessWeight(options_.staleness, tau);
    std::shared_ptr<const AdapterState> base;
    if (tau > 0) {
      ASSIGN_OR_RETURN(base, base_lookup_(u.base_version()));
      if (Status s = CheckStateMatchesSpec(spec_, *base); !s.ok()) {
        return DataLoss(fmt::format("stored version {} does not match the spec: {}", u.base_version(), s.message()));
      }
    }
    const float a = static_cast<float>(alpha);
    double sq = 0;
    for (const auto* t : *u.tensors()) {
      const size_t idx = index_.at(t->name()->str());
      auto& x = state_.tensors[idx].values;
      const auto delta = codec::DenseValues(*t);
      if (!base) {
        for (size_t i = 0; i < x.size(); ++i) {
          const float step = a * delta[i];
          x[i] += step;
          sq += static_cast<double>(step) * step;
        }
      } else {
        const auto& xb = base->tensors[idx].values;
        for (size_t i = 0; i < x.size(); ++i) {
          const float next = (1.0f - a) * x[i] + a * (xb[i] + delta[i]);
          const float step = next - x[i];
          x[i] = next;
          sq += static_cast<double>(step) * step;
        }
      }
    }
    std::vector<codec::LineageItem> applied{Lineage(seq, u, tau, alpha)};
    return std::optional<codec::VersionInfo>(NewVersion(seq, std::move(applied), std::sqrt(sq)));
  }

  Result<std::optional<codec::VersionInfo>> Buffer(uint64_t seq, const wire::Update& u, uint64_t tau) {
    if (acc_.empty()) {
      acc_.resize(state_.tensors.size());
      for (size_t i = 0; i < acc_.size(); ++i) acc_[i].assign(state_.tensors[i].values.size(), 0.0f);
    }
    const double s = options_.mode == wire::Mode::Sync ? 1.0 : StalenessWeight(options_.staleness, tau);
    const double n = static_cast<double>(u.num_samples());
    const float w = static_cast<float>(s * n);
    for (const auto* t : *u.tensors()) {
      auto& acc = acc_[index_.at(t->name()->str())];
      const auto delta = codec::DenseValues(*t);
      for (size_t i = 0; i < acc.size(); ++i) acc[i] += w * delta[i];
    }
    sum_n_ += n;
    buffer_.push_back(Lineage(seq, u, tau, s * n));  // weight normalised at flush
    const size_t target = options_.mode == wire::Mode::Sync ? options_.round_size : options_.buffer_size;
    if (buffer_.size() < target) return std::optional<codec::VersionInfo>();

    const double scale = options_.server_lr / sum_n_;
    const float fscale = static_cast<float>(scale);
    double sq = 0;
    for (size_t t = 0; t < acc_.size(); ++t) {
      auto& x = state_.tensors[t].values;
      for (size_t i = 0; i < x.size(); ++i) {
        const float step = fscale * acc_[t][i];
        x[i] += step;
        sq += static_cast<double>(step) * step;
      }
    }
    std::vector<codec::LineageItem> applied = std::move(buffer_);
    for (auto& item : applied) item.weight = static_cast<float>(item.weight * scale);
    buffer_.clear();
    acc_.clear();
    sum_n_ = 0;
    round_clients_.clear();
    return std::optional<codec::VersionInfo>(NewVersion(seq, std::move(applied), std::sqrt(sq)));
  }

  codec::VersionInfo NewVersion(uint64_t seq, std::vector<codec::LineageItem> applied, double norm) {
    codec::VersionInfo info;
    info.adapter_id = adapter_id_;
    info.parent_version = version_;
    info.version = ++version_;
    info.mode = options_.mode;
    info.method = options_.method;
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
  std::map<std::string, size_t, std::less<>> index_;
  // FedBuff / Sync buffer.
  std::vector<std::vector<float>> acc_;
  double sum_n_ = 0;
  std::vector<codec::LineageItem> buffer_;
  std::set<std::string> round_clients_;
  std::vector<codec::DropItem> dropped_;
};

}  // namespace

Result<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options, std::string adapter_id,
                                               AdapterSpec spec, AdapterState state, uint64_t version,
                                               uint64_t consumed_seq, BaseLookup base_lookup) {
  RETURN_IF_ERROR(ValidateEngineOptions(options));
  RETURN_IF_ERROR(CheckStateMatchesSpec(spec, state).WithContext("initial global"));
  return std::unique_ptr<Engine>(new EngineImpl(options, std::move(adapter_id), std::move(spec),
                                                std::move(state), version, consumed_seq,
                                                std::move(base_lookup)));
}

}  // namespace fedlora::aggregator
