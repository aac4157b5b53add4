#include "worker/client.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <optional>
#include <random>
#include <zmq.hpp>

#include "schema/codec.h"
#include "schema/validate.h"
#include "worker/broker_client.h"
#include "worker/local_round.h"
#include "worker/model.h"
#include "aggregator/accountant.h"
#include "worker/train.h"

namespace fedlora::worker {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = [] {
    auto l = spdlog::get("worker");
    return l ? l : spdlog::default_logger()->clone("worker");
  }();
  return logger;
}

std::string SessionTag() {
  std::random_device rd;
  return fmt::format("{:08x}", rd());
}

uint64_t Mix(uint64_t a, uint64_t b) {
  uint64_t x = a ^ (b + 0x9e3779b97f4a7c15ULL + (a << 6) + (a >> 2));
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ULL;
  return x ^ (x >> 29);
}

uint64_t HashString(std::string_view s) {
  uint64_t h = 1469598103934665603ULL;
  for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ULL;
  return h;
}

WorkerEvent Event(WorkerEvent::Kind kind, uint64_t version) {
  WorkerEvent e;
  e.kind = kind;
  e.version = version;
  return e;
}


class WorkerImpl final : public Worker {
 public:
  WorkerImpl(WorkerOptions options, std::shared_ptr<const Dataset> data, std::vector<size_t> shard)
      : options_(std::move(options)), data_(std::move(data)), shard_(std::move(shard)), session_(SessionTag()) {
    if (options_.training.dp.enabled()) {
      sample_rate_ = DpSampleRate(options_.training.batch_size, shard_.size());
    }
  }

  const WorkerStats& Stats() const override { return stats_; }
  std::pair<double, double> DpParameters() const override {
    return {options_.training.dp.noise_multiplier, sample_rate_};
  }
  std::map<std::string, std::vector<float>> PersonalFactors() const override { return personal_.tensors; }

  Status Run(std::stop_token stop) override {
    Connect();
    std::optional<codec::DecodedGlobal> global;
    uint64_t counter = 0;
    int64_t last_trained_base = -1;
    while (!stop.stop_requested()) {
      if (!global) {
        ASSIGN_OR_RETURN(global, Fetched(client_->FetchUntilAvailable(stop)));
        if (!global) break;  // stopped
        RETURN_IF_ERROR(PrepareModel(*global));
      }
      if (global->info.final) {
        Emit(Event(WorkerEvent::Kind::kFinal, global->info.version));
        Log()->info("client={} adapter={} is final at version={}; leaving", options_.client_id,
                    options_.adapter_id, global->info.version);
        break;
      }
      if (options_.max_updates > 0 && stats_.updates_acked >= options_.max_updates) break;
      if (global->info.mode == wire::Mode::Sync &&
          static_cast<int64_t>(global->info.version) == last_trained_base) {
        // Barrier baseline: one contribution per version; wait for the next one.
        ASSIGN_OR_RETURN(auto newer,
                         Fetched(client_->WaitForNewer(stop, global->info.version, std::chrono::seconds(1))));
        if (newer) {
          global = std::move(newer);
          RETURN_IF_ERROR(model_->LoadAdapter(global->state));
        }
        continue;
      }

      const RecordDp& dp = options_.training.dp;
      if (dp.enabled() && dp.epsilon > 0) {
        // Would this run (its probe batches included) still fit the budget?
        privacy::RdpAccountant next = accountant_;
        RETURN_IF_ERROR(next.Compose(sample_rate_, dp.noise_multiplier,
                                     options_.training.steps + global->info.method.probe_batches));
        ASSIGN_OR_RETURN(const privacy::EpsilonAt after, next.Epsilon(dp.delta));
        if (after.epsilon > dp.epsilon) {
          stats_.budget_spent = true;
          Emit(Event(WorkerEvent::Kind::kBudgetSpent, global->info.version));
          Log()->warn("client={} privacy budget spent: epsilon {:.4g} of {:.4g} (delta {:g}) after {} DP-SGD steps; "
                      "another local run would reach {:.4g}, so this worker stops training",
                      options_.client_id, stats_.epsilon.load(), dp.epsilon, dp.delta, stats_.dp_steps.load(),
                      after.epsilon);
          break;
        }
      }
      LocalTrainOptions train;
      train.steps = options_.training.steps;
      train.batch_size = options_.training.batch_size;
      train.lr = options_.training.lr;
      train.speed_factor = options_.training.speed_factor;
      train.seed = Mix(Mix(options_.seed, HashString(options_.client_id)), counter);
      if (dp.enabled()) {
        train.dp.noise_multiplier = dp.noise_multiplier;
        train.dp.clip = dp.clip;  // seed 0: sampling and noise from the OS, never the public seed
      }
      ASSIGN_OR_RETURN(LocalRound round,
                       RunLocalRound(*model_, global->spec, global->state, global->info.method,
                                     options_.heterogeneity, personal_, *data_, shard_, train, stop));
      if (round.trained.stopped) break;
      last_trained_base = static_cast<int64_t>(global->info.version);
      if (round.upload.empty()) {
        // Nothing this method uploads was kept (no rank selected): publish nothing this time.
        ++counter;
      } else {
        ASSIGN_OR_RETURN(bool keep_going, Publish(stop, round, global->info.version, counter++));
        if (!keep_going) break;
      }

      ASSIGN_OR_RETURN(auto newer, Fetched(client_->Fetch(stop, static_cast<int64_t>(global->info.version))));
      if (newer) {
        global = std::move(newer);
        stats_.latest_version = global->info.version;
      }
    }
    return Status::Ok();
  }

 private:
  // Builds the update of one local round and publishes it until acknowledged. Returns false
  // when the worker should stop.
  Result<bool> Publish(std::stop_token stop, const LocalRound& round, uint64_t base_version, uint64_t counter) {
    codec::UpdateHeader header;
    header.update_id = fmt::format("{}-{}-{}", options_.client_id, session_, counter);
    header.client_id = options_.client_id;
    header.adapter_id = options_.adapter_id;
    header.base_version = base_version;
    header.num_samples = round.trained.samples;
    header.factor_scores = round.factor_scores;
    header.shard_size = shard_.size();  // n_k, the data weight (the run's examples stay in the lineage)
    header.local_steps = round.trained.steps;
    header.train_loss = round.trained.mean_loss;
    const RecordDp& dp = options_.training.dp;
    if (dp.enabled()) {
      header.dp = codec::DpReport{dp.noise_multiplier, sample_rate_, round.dp_steps, static_cast<float>(dp.clip)};
      // Released once it leaves this process, whatever the broker answers.
      RETURN_IF_ERROR(accountant_.Compose(sample_rate_, dp.noise_multiplier, round.dp_steps));
      ASSIGN_OR_RETURN(const privacy::EpsilonAt spent, accountant_.Epsilon(dp.delta));
      stats_.epsilon = spent.epsilon;
      stats_.dp_steps += round.dp_steps;
    }
    codec::Bytes update = codec::BuildUpdate(header, round.upload);
    return PublishUntilAcked(stop, header, update, round.trained.mean_loss);
  }

  void Emit(WorkerEvent e) {
    if (options_.on_event) options_.on_event(e);
  }

  void Connect() {
    BrokerClientOptions o;
    o.broker = options_.broker;
    o.announce = options_.announce;
    o.adapter_id = options_.adapter_id;
    o.client_id = options_.client_id;
    o.request_timeout = options_.request_timeout;
    o.max_backoff = options_.max_backoff;
    o.keys = options_.keys;
    client_.emplace(ctx_, std::move(o));
  }

  Status PrepareModel(const codec::DecodedGlobal& g) {
    const ModelOptions mo = ModelOptions::ForSpec(g.spec);
    ASSIGN_OR_RETURN(model_, Model::Open(mo, options_.base_path));
    RETURN_IF_ERROR(model_->SetPretraining(false));
    if (data_) RETURN_IF_ERROR(model_->CheckData(*data_).WithContext("the worker's data"));
    RETURN_IF_ERROR(CheckStateMatchesSpec(g.spec, model_->ExportAdapter())
                        .WithContext("the local model does not match the adapter spec"));
    RETURN_IF_ERROR(model_->LoadAdapter(g.state));
    stats_.latest_version = g.info.version;
    return Status::Ok();
  }

  // A newer global from the broker is announced to on_event.
  Result<std::optional<codec::DecodedGlobal>> Fetched(Result<std::optional<codec::DecodedGlobal>> g) {
    stats_.retries = client_->retries();
    if (g.ok() && *g) Emit(Event(WorkerEvent::Kind::kFetched, (*g)->info.version));
    return g;
  }

  // Returns false when the worker should stop (adapter final or stop requested).
  Result<bool> PublishUntilAcked(std::stop_token stop, const codec::UpdateHeader& header,
                                 const codec::Bytes& update, float loss) {
    const PublishOutcome out = client_->PublishUntilAcked(stop, header.update_id, update);
    stats_.retries = client_->retries();
    switch (out.kind) {
      case PublishOutcome::Kind::kAcked: {
        stats_.updates_acked++;
        if (!out.duplicate) stats_.bytes_uploaded += update.size();
        WorkerEvent e = Event(WorkerEvent::Kind::kPublished, header.base_version);
        e.update_id = header.update_id;
        e.seq = out.seq;
        e.duplicate = out.duplicate;
        e.bytes = update.size();
        e.train_loss = loss;
        Emit(std::move(e));
        return true;
      }
      case PublishOutcome::Kind::kRejected: {
        WorkerEvent e = Event(WorkerEvent::Kind::kRejected, header.base_version);
        e.update_id = header.update_id;
        e.status = out.status;
        Emit(std::move(e));
        return true;  // permanent: drop this update, train the next
      }
      case PublishOutcome::Kind::kFinal:
      case PublishOutcome::Kind::kStopped:
        return false;
    }
    return false;
  }

  WorkerOptions options_;
  std::shared_ptr<const Dataset> data_;
  std::vector<size_t> shard_;
  std::string session_;
  zmq::context_t ctx_;
  std::optional<BrokerClient> client_;
  std::unique_ptr<Model> model_;
  PersonalState personal_;  // fedsa: this client's B factors
  WorkerStats stats_;
  double sample_rate_ = 0;              // DP-SGD's q
  privacy::RdpAccountant accountant_;   // record-level DP of this worker's published updates
};

}  // namespace

Result<std::unique_ptr<Worker>> Worker::Create(WorkerOptions options, std::shared_ptr<const Dataset> data,
                                               std::vector<size_t> shard) {
  RETURN_IF_ERROR(ValidateId("client id", options.client_id, 96));
  RETURN_IF_ERROR(ValidateId("adapter id", options.adapter_id, 128));
  if (!data) return InvalidArgument("worker has no data");
  if (shard.empty()) return InvalidArgument(fmt::format("client '{}' has an empty data shard", options.client_id));
  for (size_t i : shard) {
    if (i >= data->size()) return InvalidArgument("shard index out of range");
  }
  if (options.training.steps == 0 || options.training.batch_size == 0) {
    return InvalidArgument("local steps and batch size must be positive");
  }
  if (!(options.training.speed_factor >= 1.0)) return InvalidArgument("speed factor must be >= 1");
  if (!(options.training.lr > 0)) return InvalidArgument("learning rate must be positive");
  RecordDp& dp = options.training.dp;
  if (dp.enabled()) {
    if (!(dp.clip > 0) || !std::isfinite(dp.clip)) return InvalidArgument("DP-SGD clip norm must be positive");
    if (!(dp.delta > 0 && dp.delta < 1)) return InvalidArgument("DP delta must be in (0, 1)");
    if (!(dp.noise_multiplier >= 0) || !std::isfinite(dp.noise_multiplier) || !(dp.epsilon >= 0) ||
        !std::isfinite(dp.epsilon)) {
      return InvalidArgument("DP-SGD noise multiplier and epsilon must be finite and non-negative");
    }
    if (dp.noise_multiplier == 0) {
      if (dp.planned_steps == 0) {
        return InvalidArgument("a DP-SGD epsilon without a noise multiplier needs the planned number of DP-SGD steps");
      }
      const double q = DpSampleRate(options.training.batch_size, shard.size());
      auto sigma = privacy::NoiseForEpsilon(q, dp.planned_steps, dp.epsilon, dp.delta);
      if (!sigma.ok()) {
        return InvalidArgument(fmt::format("client '{}': no noise multiplier reaches epsilon {} over {} DP-SGD steps at "
                                           "sampling rate {:.4g}: {}", options.client_id, dp.epsilon, dp.planned_steps,
                                           q, sigma.status().message()));
      }
      dp.noise_multiplier = *sigma;
    }
  }
  const auto& h = options.heterogeneity;
  if (!(h.upload_density >= 0 && h.upload_density <= 1)) {
    return InvalidArgument(fmt::format("upload density {} is outside [0, 1]", h.upload_density));
  }
  return std::unique_ptr<Worker>(new WorkerImpl(std::move(options), std::move(data), std::move(shard)));
}

}  // namespace fedlora::worker
