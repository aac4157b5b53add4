#include "worker/federation/embedded.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <mutex>
#include <numeric>
#include <optional>
#include <stop_token>
#include <thread>

#include "schema/transport/security.h"
#include "storage/reader.h"
#include "worker/model.h"

namespace fedlora::federation {
namespace {

using Clock = std::chrono::steady_clock;

// What the aggregator has committed so far, fed by its on_commit callback.
struct CommitTally {
  std::mutex mu;
  uint64_t version = 0;
  double last_accuracy = -1;
  double last_loss = -1;
  uint64_t last_accuracy_version = 0;
  uint64_t folded = 0;
  uint64_t dropped = 0;
  double staleness_sum = 0;
  uint32_t staleness_max = 0;

  void OnCommit(const codec::VersionInfo& v) {
    std::lock_guard lock(mu);
    version = v.version;
    if (v.test_accuracy >= 0) {
      last_accuracy = v.test_accuracy;
      last_loss = v.test_loss;
      last_accuracy_version = v.version;
    }
    folded += v.applied.size();
    dropped += v.dropped.size();
    for (const auto& a : v.applied) staleness_sum += a.staleness;
    staleness_max = std::max(staleness_max, v.max_staleness);
  }
};

void Say(const std::function<void(const std::string&)>& note, const std::string& line) {
  if (note) note(line);
}

// A version's global and record, read through a read-only handle beside the aggregator's
// (latest: the cursor's version).
struct StoredVersion {
  codec::DecodedGlobal global;
  codec::VersionInfo info;
};
Result<StoredVersion> ReadStored(const storage::StoreLayout& store, const std::string& adapter,
                                 std::optional<uint64_t> version) {
  ASSIGN_OR_RETURN(auto stored, storage::StoredAdapter::Open(store, adapter));
  const uint64_t v = version.value_or(stored.cursor().version);
  StoredVersion out;
  ASSIGN_OR_RETURN(out.global, stored.Global(v));
  ASSIGN_OR_RETURN(out.info, stored.Record(v));
  return out;
}

class Embedded final : public EmbeddedFederation {
 public:
  explicit Embedded(EmbeddedOptions options) : options_(std::move(options)) {}

  Status Prepare(const SetupCallbacks& cb) {
    const TaskOptions& task = options_.task;
    if (options_.fresh) {
      std::filesystem::remove_all(options_.store.log());
      std::filesystem::remove_all(options_.store.adapters());
      Say(cb.note, fmt::format("removed {} and {}", options_.store.log(), options_.store.adapters()));
    }
    ASSIGN_OR_RETURN(setup_.base_path, TaskBase(task, options_.store.dir));
    const std::string& base = setup_.base_path;
    setup_.language_model = IsLanguageTask(task);
    if (!std::filesystem::exists(base)) {
      if (setup_.language_model && !task.base.empty()) return MissingBase(task, base, options_.store.dir);
      Say(cb.note, fmt::format("no base model at {}: pretraining it (fedlora pretrain{})", base,
                               setup_.language_model ? " --task lm" : ""));
      SetTorchThreads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
      const auto t0 = Clock::now();
      RETURN_IF_ERROR(EnsureBase(task, base, 0, cb.pretrain_progress).status());
      Say(cb.note, fmt::format("base model ready in {:.1f} s", std::chrono::duration<double>(Clock::now() - t0).count()));
    }
    if (setup_.language_model) options_.task.base = base;
    setup_.perplexity = setup_.language_model && !IsTextClassification(task);
    // Workers, aggregator and broker share the cores as threads; one intra-op thread each keeps
    // them from oversubscribing the machine.
    SetTorchThreads(1);
    worker::TuneAllocatorForTraining();  // most of this process's work is the workers' training

    if (IsTextClassification(task)) {
      Say(cb.note, fmt::format("reading and tokenizing WordNet's glosses ({})", task.wordnet_dir));
    } else if (setup_.language_model) {
      Say(cb.note, fmt::format("reading and tokenizing the text ({})", fmt::join(task.text, ", ")));
    }
    ASSIGN_OR_RETURN(TaskData data, LoadTaskData(task, cb.reading_progress));
    shards_ = std::move(data.shards);
    train_ = std::move(data.train);
    test_ = std::move(data.test);
    setup_.unit = data.unit;
    setup_.test_examples = test_->size();
    for (const auto& s : shards_) setup_.train_examples += s.size();

    broker::BrokerOptions bo;
    bo.frontend = "tcp://127.0.0.1:*";
    bo.backend = "tcp://127.0.0.1:*";
    bo.announce = "tcp://127.0.0.1:*";
    bo.log_path = options_.store.log();
    // Only this process's aggregator may subscribe: a fresh secret it alone knows.
    bo.aggregator_secret = security::GenerateSecret();
    ASSIGN_OR_RETURN(broker_, broker::Broker::Create(bo));
    const auto endpoints = broker_->Endpoints();

    aggregator::AggregatorOptions ao;
    ao.adapter_id = options_.adapter;
    ao.broker = endpoints.backend;
    ao.secret = bo.aggregator_secret;
    ao.store_path = options_.store.adapters();
    ao.engine = options_.engine;
    ao.max_versions = options_.max_versions;
    ao.eval_every = options_.eval_every;
    ASSIGN_OR_RETURN(ao.initial, MakeInitialAdapter(task, base));
    setup_.base_model = ao.initial->spec.model;
    ASSIGN_OR_RETURN(ao.evaluate, MakeEvaluator(base, test_, options_.eval_samples));
    ao.on_commit = [tally = tally_](const codec::VersionInfo& v) { tally->OnCommit(v); };
    ASSIGN_OR_RETURN(aggregator_, aggregator::Aggregator::Create(std::move(ao)));
    setup_.start_version = aggregator_->Version();

    // Headline figures use the whole test split, whatever the periodic evaluations use.
    ASSIGN_OR_RETURN(full_eval_, MakeEvaluator(base, test_, 0));
    // Version 0 never changes once committed.
    ASSIGN_OR_RETURN(const StoredVersion v0, ReadStored(options_.store, options_.adapter, 0));
    ASSIGN_OR_RETURN(const auto r, full_eval_(v0.global.spec, v0.global.state));
    setup_.base_accuracy = r.accuracy;
    setup_.base_loss = r.loss;
    setup_.base_class_loss = r.class_loss;

    const auto& speeds = options_.speeds;
    for (int i = 0; i < task.num_clients; ++i) {
      worker::WorkerOptions wo;
      wo.client_id = fmt::format("worker-{}", i);
      wo.broker = endpoints.frontend;
      wo.announce = endpoints.announce;
      wo.adapter_id = options_.adapter;
      wo.base_path = base;
      wo.training = options_.training;
      wo.training.speed_factor = speeds[i % speeds.size()];
      const auto& ranks = options_.ranks;
      const auto& densities = options_.upload_densities;
      const auto& budgets = options_.rank_budgets;
      if (!ranks.empty()) wo.heterogeneity.rank = ranks[i % ranks.size()];
      if (!densities.empty()) wo.heterogeneity.upload_density = densities[i % densities.size()];
      if (!budgets.empty()) wo.heterogeneity.rank_budget = budgets[i % budgets.size()];
      wo.seed = static_cast<uint64_t>(i) + 1;
      ASSIGN_OR_RETURN(auto w, worker::Worker::Create(std::move(wo), train_, shards_[i]));
      workers_.push_back(std::move(w));
    }
    return Status::Ok();
  }

  const Setup& setup() const override { return setup_; }
  broker::Broker& broker() override { return *broker_; }
  aggregator::Aggregator& aggregator() override { return *aggregator_; }

  Result<RunSummary> Run(const std::function<bool()>& interrupted, const std::function<void(const LiveFigures&)>& on_tick,
                         const std::function<void(const std::string&)>& note) override {
    if (ran_) return FailedPrecondition("this federation has run already");
    ran_ = true;
    RunSummary out;
    out.stop_reason = "duration reached";
    Status first_error;
    {
      // Every part runs on its own thread; the first error stops them all.
      std::mutex err_mu;
      auto run_part = [&](auto* part, std::string what) {
        return std::jthread([&err_mu, &first_error, part, what](std::stop_token stop) {
          Status s = part->Run(stop);
          if (!s.ok()) {
            std::lock_guard lock(err_mu);
            if (first_error.ok()) first_error = s.WithContext(what);
          }
        });
      };
      const auto start = Clock::now();
      std::jthread broker_thread = run_part(broker_.get(), "broker");
      std::jthread aggregator_thread = run_part(aggregator_.get(), "aggregator");
      std::vector<std::jthread> worker_threads;
      for (size_t i = 0; i < workers_.size(); ++i) {
        worker_threads.push_back(run_part(workers_[i].get(), fmt::format("worker-{}", i)));
      }
      const auto deadline = start + std::chrono::duration<double>(options_.duration_s);
      auto last_tick = start;
      while (true) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        const auto now = Clock::now();
        if (interrupted && interrupted()) {
          out.stop_reason = "interrupted";
          break;
        }
        if (aggregator_->Finished()) {
          out.stop_reason = "final version committed";
          break;
        }
        if (std::all_of(workers_.begin(), workers_.end(), [](const auto& w) { return w->Stats().budget_spent.load(); })) {
          out.stop_reason = "every worker's privacy budget is spent";
          break;
        }
        {
          std::lock_guard lock(err_mu);
          if (!first_error.ok()) {
            out.stop_reason = "error";
            break;
          }
        }
        if (now >= deadline) break;
        if (on_tick && now - last_tick >= std::chrono::milliseconds(500)) {
          last_tick = now;
          on_tick(Live(std::chrono::duration<double>(now - start).count()));
        }
      }
      for (auto& t : worker_threads) t.request_stop();
      worker_threads.clear();  // joins
      aggregator_thread.request_stop();
      aggregator_thread.join();
      broker_thread.request_stop();
      broker_thread.join();
      out.federated_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    }
    RETURN_IF_ERROR(first_error);

    const auto& bs = broker_->Stats();
    out.updates_logged = bs.updates_logged.load();
    out.updates_duplicate = bs.updates_duplicate.load();
    out.messages_rejected = bs.messages_rejected.load();
    for (const auto& w : workers_) out.bytes_uploaded += w->Stats().bytes_uploaded.load();
    {
      std::lock_guard lock(tally_->mu);
      out.folded = tally_->folded;
      out.dropped = tally_->dropped;
      out.mean_staleness = tally_->folded ? tally_->staleness_sum / tally_->folded : 0.0;
      out.max_staleness = tally_->staleness_max;
    }

    ASSIGN_OR_RETURN(StoredVersion latest, ReadStored(options_.store, options_.adapter, std::nullopt));
    out.last = latest.info;
    out.versions_committed = latest.info.version - setup_.start_version;
    Say(note, fmt::format("evaluating version {} on the whole test set...", latest.info.version));
    ASSIGN_OR_RETURN(const auto final_r, full_eval_(latest.global.spec, latest.global.state));
    out.final_accuracy = final_r.accuracy;
    out.final_loss = final_r.loss;

    // Each client's figure on its own label mix, with the model it would use: the global, or
    // under fedsa the global with the client's personal B factors.
    out.personalised = options_.engine.method.method().personal();
    if (out.personalised) Say(note, "evaluating each client's personal model (global A, its own B) on the test set...");
    for (size_t i = 0; i < workers_.size(); ++i) {
      std::vector<double> per_class = final_r.class_accuracy, per_class_loss = final_r.class_loss;
      const auto factors = workers_[i]->PersonalFactors();
      if (!factors.empty()) {
        AdapterState mine = latest.global.state;
        for (auto& t : mine.tensors) {
          auto it = factors.find(t.name);
          if (it != factors.end() && it->second.size() == t.values.size()) t.values = it->second;
        }
        ASSIGN_OR_RETURN(const auto r, full_eval_(latest.global.spec, mine));
        per_class = r.class_accuracy;
        per_class_loss = r.class_loss;
      }
      out.client_accuracies.push_back(MixAccuracy(*train_, shards_[i], per_class));
      if (setup_.perplexity) out.client_perplexities.push_back(std::exp(MixAccuracy(*train_, shards_[i], per_class_loss)));
    }

    // lm-finetune: each source's (category's) held-out perplexity, base and final.
    if (setup_.perplexity && setup_.base_class_loss.size() == final_r.class_loss.size()) {
      std::vector<size_t> held_out(final_r.class_loss.size(), 0);
      for (uint8_t label : test_->labels)
        if (label < held_out.size()) ++held_out[label];
      for (size_t c = 0; c < final_r.class_loss.size(); ++c) {
        if (held_out[c] == 0) continue;
        out.sources.push_back({c < train_->class_names.size() ? train_->class_names[c] : std::to_string(c),
                               std::exp(setup_.base_class_loss[c]), std::exp(final_r.class_loss[c])});
      }
    }
    return out;
  }

 private:
  LiveFigures Live(double elapsed_s) const {
    LiveFigures live;
    live.elapsed_s = elapsed_s;
    for (const auto& w : workers_) live.bytes_uploaded += w->Stats().bytes_uploaded.load();
    std::lock_guard lock(tally_->mu);
    live.version = tally_->version;
    live.last_accuracy = tally_->last_accuracy;
    live.last_loss = tally_->last_loss;
    live.last_accuracy_version = tally_->last_accuracy_version;
    live.folded = tally_->folded;
    live.dropped = tally_->dropped;
    live.mean_staleness = tally_->folded ? tally_->staleness_sum / tally_->folded : 0.0;
    return live;
  }

  EmbeddedOptions options_;
  Setup setup_;
  std::vector<std::vector<size_t>> shards_;
  std::shared_ptr<const worker::Dataset> train_, test_;
  std::shared_ptr<CommitTally> tally_ = std::make_shared<CommitTally>();
  aggregator::Evaluator full_eval_;
  std::unique_ptr<broker::Broker> broker_;
  std::unique_ptr<aggregator::Aggregator> aggregator_;
  std::vector<std::unique_ptr<worker::Worker>> workers_;
  bool ran_ = false;
};

}  // namespace

Status CheckOptions(const EmbeddedOptions& o) {
  if (o.task.num_clients < 1) return InvalidArgument("a federation needs at least one worker");
  if (!(o.duration_s > 0)) return InvalidArgument(fmt::format("the duration {} s is not positive", o.duration_s));
  if (o.speeds.empty()) return InvalidArgument("the list of worker speeds is empty");
  for (double s : o.speeds) {
    if (!(s >= 1.0)) return InvalidArgument(fmt::format("speed factor {} is below 1", s));
  }
  for (uint32_t r : o.ranks) {
    if (r < 1 || r > 256) return InvalidArgument(fmt::format("rank {} is not in 1..256", r));
  }
  for (float d : o.upload_densities) {
    if (!(d > 0 && d <= 1)) return InvalidArgument(fmt::format("upload density {} is not in (0, 1]", d));
  }
  for (uint32_t b : o.rank_budgets) {
    if (b < 1) return InvalidArgument("a rank budget is 0: it must be a positive integer");
  }
  if (o.training.dp.enabled() && o.engine.method.method().full_model()) {
    return InvalidArgument(
        "record-level DP-SGD covers LoRA factors and the head; a full-model method trains every weight (use a LoRA "
        "method)");
  }
  if (o.engine.mode == wire::Mode::Sync && o.engine.round_size > static_cast<uint32_t>(o.task.num_clients)) {
    return InvalidArgument(fmt::format("round size {} is more than the {} workers: no round could close",
                                       o.engine.round_size, o.task.num_clients));
  }
  return Status::Ok();
}

Result<std::unique_ptr<EmbeddedFederation>> EmbeddedFederation::Create(EmbeddedOptions options,
                                                                        const SetupCallbacks& callbacks) {
  RETURN_IF_ERROR(CheckOptions(options));
  const auto& method = options.engine.method.method();
  options.task.full = method.full_model();
  options.task.lora_residual = method.KeepsResiduals(options.engine.method.params());
  if (!options.ranks.empty()) options.task.rank = *std::max_element(options.ranks.begin(), options.ranks.end());
  auto federation = std::make_unique<Embedded>(std::move(options));
  RETURN_IF_ERROR(federation->Prepare(callbacks));
  return std::unique_ptr<EmbeddedFederation>(std::move(federation));
}

}  // namespace fedlora::federation
