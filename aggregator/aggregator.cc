#include "aggregator/aggregator.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <zmq.hpp>

#include <deque>
#include <future>
#include <mutex>
#include <thread>

#include "aggregator/commit.h"
#include "aggregator/metrics.h"
#include "aggregator/rollback.h"
#include "schema/hash.h"
#include "schema/transport/heartbeat.h"
#include "schema/transport/transport.h"
#include "storage/adapter_store.h"

namespace fedlora::aggregator {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = [] {
    auto l = spdlog::get("aggregator");
    return l ? l : spdlog::default_logger()->clone("aggregator");
  }();
  return logger;
}

class AggregatorImpl final : public Aggregator {
 public:
  AggregatorImpl(AggregatorOptions options, std::unique_ptr<storage::AdapterStore> store)
      : options_(std::move(options)),
        store_(std::move(store)),
        bases_(*store_, options_.adapter_id),
        socket_(ctx_, zmq::socket_type::dealer),
        metrics_(options_.adapter_id) {}

  Status Init() {
    ASSIGN_OR_RETURN(auto cursor, store_->GetCursor(options_.adapter_id));
    if (!cursor) {
      if (!options_.initial) {
        return FailedPrecondition(fmt::format(
            "store '{}' has no adapter '{}' and no initial adapter was given", options_.store_path,
            options_.adapter_id));
      }
      RETURN_IF_ERROR(CommitVersionZero());
      ASSIGN_OR_RETURN(cursor, store_->GetCursor(options_.adapter_id));
    }
    auto resumed = ResumeEngine(*store_, options_.engine, options_.adapter_id,
                                [this](uint64_t v) { return bases_.Get(v); });
    if (!resumed.ok()) {
      return resumed.status().WithContext(fmt::format("adapter '{}' in '{}'", options_.adapter_id, options_.store_path));
    }
    final_ = resumed->final;
    engine_ = std::move(resumed->engine);
    log_id_ = cursor->log_id;
    if (!cursor->consumed_hash.empty()) consumed_hash_ = {cursor->consumed_seq, cursor->consumed_hash};
    version_ = engine_->version();
    if (!final_ && !engine_->CanAffordStep()) {
      return FailedPrecondition(fmt::format(
          "adapter '{}' in '{}' has spent its client-level privacy budget: epsilon {:.4g} of {:.4g} (delta {:g}) "
          "leaves no room for another noised step at noise multiplier {:g}; raise the budget or the noise, or start "
          "a new store",
          options_.adapter_id, options_.store_path, engine_->client_epsilon(), options_.engine.client_dp.budget,
          options_.engine.dp_delta, options_.engine.client_dp.noise_multiplier));
    }
    Log()->info("adapter={} resumes at version={} consumed_seq={} of log {} mode={} final={}", options_.adapter_id,
                cursor->version, cursor->consumed_seq, log_id_.empty() ? "(not yet known)" : log_id_,
                codec::ModeName(options_.engine.mode), final_);
    return Status::Ok();
  }

  uint64_t Version() const override { return version_.load(); }

  Result<RollbackDone> Rollback(uint64_t to, std::chrono::milliseconds timeout) override {
    std::future<Result<RollbackDone>> done;
    {
      std::lock_guard lock(requests_mu_);
      if (!running_) return Unavailable("the aggregator is not running");
      requests_.push_back({to, {}});
      done = requests_.back().promise.get_future();
    }
    if (done.wait_for(timeout) != std::future_status::ready) {
      return Unavailable(fmt::format("the aggregator did not get to the rollback within {} ms", timeout.count()));
    }
    return done.get();
  }

  void WriteMetrics(prometheus::Writer& w) const override { metrics_.Write(w); }
  bool Finished() const override { return finished_.load(); }

  Status Run(std::stop_token stop) override {
    stop_ = stop;
    if (final_ || ReachedMax()) {
      Log()->info("adapter={} is already final at version={}: nothing to aggregate", options_.adapter_id,
                  version_.load());
      finished_ = true;
      return Status::Ok();
    }
    try {
      Connect();
    } catch (const zmq::error_t& e) {
      return InvalidArgument(fmt::format("connect to broker '{}': {}", options_.broker, e.what()));
    }
    using Clock = std::chrono::steady_clock;
    const auto interval = options_.heartbeat_interval;
    watch_.emplace(interval, options_.heartbeat_liveness, Clock::now());
    Subscribe();
    SetRunning(true);
    std::vector<zmq::message_t> frames;
    Status failure;
    while (!stop.stop_requested() && !finished_ && failure.ok()) {
      try {
        failure = ServeRollbacks();
        if (!failure.ok()) break;
        std::vector<zmq::pollitem_t> items = {{socket_.handle(), 0, ZMQ_POLLIN, 0}};
        zmq::poll(items, std::min(options_.poll_interval, interval));
        bool delivered = false;
        while (!finished_ && transport::TryRecvMultipart(socket_, frames)) {
          watch_->Heard(Clock::now());
          auto progressed = Handle(frames);
          if (!progressed.ok()) {
            failure = progressed.status();
            break;
          }
          delivered |= *progressed;
        }
        if (!failure.ok()) break;
        const auto now = Clock::now();
        if (resubscribe_at_ && now >= *resubscribe_at_) {
          resubscribe_at_.reset();
          Subscribe();
        } else if (delivered) {
          SendCredit(false);
        } else if (const auto due = watch_->At(now); due == transport::BrokerWatch::Due::kReconnect) {
          // Paranoid Pirate: the broker is gone (or unreachable). A fresh socket drops whatever
          // the old one queued; resubscribing from our cursor resumes exactly where we are.
          Log()->warn("broker={} silent for {} ms; reconnecting (a broker that refuses this aggregator's {} never "
                      "answers it)",
                      options_.broker,
                      std::chrono::duration_cast<std::chrono::milliseconds>(now - watch_->last_heard()).count(),
                      options_.keys.enabled() ? "key" : "secret");
          Connect();
          Subscribe();
          watch_->Reconnected(now);
        } else if (due == transport::BrokerWatch::Due::kHeartbeat) {
          Send(codec::BuildHeartbeat(broker_incarnation_));
        }
      } catch (const zmq::error_t& e) {
        if (e.num() == ETERM) break;
        Log()->error("zeromq error={}", e.what());
      }
    }
    SetRunning(false);
    return failure;
  }

 private:
  void SetRunning(bool running) {
    std::lock_guard lock(requests_mu_);
    running_ = running;
    if (running) return;
    for (auto& r : requests_) r.promise.set_value(Unavailable("the aggregator stopped before the rollback"));
    requests_.clear();
  }

  // Commits the rollbacks asked for since the last look. A store failure is fatal (as for any
  // commit); a bad request is answered and forgotten.
  Status ServeRollbacks() {
    std::deque<RollbackRequest> requests;
    {
      std::lock_guard lock(requests_mu_);
      requests.swap(requests_);
    }
    for (auto& r : requests) {
      auto done = DoRollback(r.to);
      Status fatal = done.ok() || IsRequestError(done.status()) ? Status::Ok() : done.status();
      r.promise.set_value(std::move(done));
      RETURN_IF_ERROR(fatal);
    }
    return Status::Ok();
  }

  static bool IsRequestError(const Status& s) {
    return s.code() == Code::kInvalidArgument || s.code() == Code::kNotFound || s.code() == Code::kFailedPrecondition;
  }

  Result<RollbackDone> DoRollback(uint64_t to) {
    if (finished_ || final_) {
      return FailedPrecondition(fmt::format("adapter '{}' is final at version {}", options_.adapter_id, version_.load()));
    }
    if (to > version_) {
      return NotFound(fmt::format("adapter '{}' has versions 0 to {}; there is no version {} to roll back to",
                                  options_.adapter_id, version_.load(), to));
    }
    if (to == version_) {
      return InvalidArgument(fmt::format("'{}' is at version {} already: roll back to an earlier version",
                                         options_.adapter_id, to));
    }
    ASSIGN_OR_RETURN(PreparedRollback prepared,
                     PrepareRollback(*store_, options_.engine, options_.adapter_id, to,
                                     [this](uint64_t v) { return bases_.Get(v); }));
    const uint64_t abandoned = engine_->buffered();
    engine_ = std::move(prepared.engine);
    RETURN_IF_ERROR(CommitVersion(prepared.info, engine_->spec(), engine_->state(), false));
    Log()->warn("adapter={} rolled back: version={} restores version={}; resuming from log seq={} ({} buffered "
                "updates are consumed again)",
                options_.adapter_id, prepared.info.version, to, engine_->next_seq(), abandoned);
    // The log position moved back: ask the broker to deliver from there, with the new global.
    Subscribe();
    return RollbackDone{prepared.info.version, prepared.info.content_hash, prepared.info.consumed_seq};
  }

  bool ReachedMax() const { return options_.max_versions > 0 && version_ >= options_.max_versions; }

  Status CommitVersionZero() {
    RETURN_IF_ERROR(CheckStateMatchesSpec(options_.initial->spec, options_.initial->state)
                        .WithContext("initial adapter"));
    codec::VersionInfo info;
    FillVersionZero(info, options_.adapter_id, options_.engine, options_.initial->state);
    return CommitVersion(info, options_.initial->spec, options_.initial->state, false);
  }

  Status CommitVersion(codec::VersionInfo& info, const AdapterSpec& spec, const AdapterState& state, bool final) {
    info.commit_unix_ms = NowUnixMs();
    const bool due = options_.eval_every > 0 && info.version % options_.eval_every == 0;
    if (options_.evaluate && (due || final)) {
      auto eval = EvaluateKeepingAlive(spec, state);
      if (eval.ok()) {
        info.test_accuracy = static_cast<float>(eval->accuracy);
        info.test_loss = static_cast<float>(eval->loss);
        info.eval_samples = static_cast<uint32_t>(eval->samples);
      } else {
        Log()->error("evaluation of version={} failed: {}", info.version, eval.status().ToString());
      }
    }
    info.adapter_id = options_.adapter_id;
    // The cursor records which log this position is in and the record it ends at (Credit).
    const std::string_view hash =
        consumed_hash_ && consumed_hash_->first == info.consumed_seq ? std::string_view(consumed_hash_->second) : "";
    auto commit = [&] {
      return aggregator::CommitVersion(*store_, options_.engine, engine_.get(), info, spec, state, final, log_id_, hash);
    };
    auto committed = commit();
    // A full disk (the store refuses writes short of its free-space reserve) is waited out: the
    // version is committed once space returns, heartbeating meanwhile; nothing is consumed.
    for (int waited = 0; !committed.ok() && committed.status().code() == Code::kResourceExhausted &&
                         !stop_.stop_requested() && connected_;
         ++waited) {
      if (waited % 60 == 0) {
        Log()->warn("commit of version={} waits for disk space: {}", info.version, committed.status().message());
      }
      SleepKeepingAlive(std::chrono::seconds(1));
      committed = commit();
    }
    ASSIGN_OR_RETURN(latest_global_, std::move(committed));
    version_ = info.version;
    metrics_.OnCommit(info, engine_ ? engine_->buffered() : 0, BufferSize());
    if (options_.on_commit) options_.on_commit(info);
    return Status::Ok();
  }


  // Evaluates on a helper thread while this one keeps heartbeating: an evaluation of a large
  // test set can take longer than the broker's liveness limit (3 intervals), after which the
  // broker would drop the subscription and its lease. What arrives meanwhile waits in the
  // socket and is handled after the commit.
  Result<EvalOutcome> EvaluateKeepingAlive(const AdapterSpec& spec, const AdapterState& state) {
    auto pending = std::async(std::launch::async, [&] { return options_.evaluate(spec, state); });
    while (pending.wait_for(HeartbeatTick()) != std::future_status::ready) HeartbeatIfDue();
    return pending.get();
  }

  // Waits `how_long` (or until stopped) without leaving the broker's liveness limit.
  void SleepKeepingAlive(std::chrono::milliseconds how_long) {
    const auto until = std::chrono::steady_clock::now() + how_long;
    while (std::chrono::steady_clock::now() < until && !stop_.stop_requested()) {
      std::this_thread::sleep_for(HeartbeatTick());
      HeartbeatIfDue();
    }
  }

  std::chrono::milliseconds HeartbeatTick() const {
    return std::min<std::chrono::milliseconds>(options_.heartbeat_interval, std::chrono::milliseconds(100));
  }

  // A heartbeat if an interval has passed since the last message; none before the loop starts
  // (version 0 is committed at Init, before there is a socket).
  void HeartbeatIfDue() {
    if (!connected_ || !watch_ || !watch_->HeartbeatDue(std::chrono::steady_clock::now())) return;
    try {
      Send(codec::BuildHeartbeat(broker_incarnation_));
    } catch (const zmq::error_t& e) {
      Log()->warn("heartbeat failed: {}", e.what());
    }
  }

  // A fresh DEALER to the broker (the previous one, if any, is closed with what it queued).
  void Connect() {
    socket_ = zmq::socket_t(ctx_, zmq::socket_type::dealer);
    transport::Configure(socket_, options_.hwm);
    security::ApplyClient(socket_, options_.keys);
    if (!options_.keys.enabled()) security::ApplySecretClient(socket_, options_.secret);
    socket_.connect(options_.broker);
    connected_ = true;
  }

  void Send(codec::Bytes&& body) {
    std::vector<zmq::message_t> frames;
    frames.push_back(transport::Frame(std::move(body)));
    if (!transport::SendMultipart(socket_, frames)) Log()->warn("broker queue full; message dropped");
    if (watch_) watch_->Sent(std::chrono::steady_clock::now());
  }

  void SendGlobal() {
    if (!latest_global_) {
      auto bytes = store_->GetGlobal(options_.adapter_id, engine_->version());
      if (!bytes.ok()) {
        Log()->error("cannot read current global: {}", bytes.status().ToString());
        return;
      }
      latest_global_ = std::make_shared<const std::string>(std::move(*bytes));
    }
    std::vector<zmq::message_t> frames;
    frames.push_back(transport::Frame(latest_global_));
    transport::SendMultipart(socket_, frames);
    if (watch_) watch_->Sent(std::chrono::steady_clock::now());
  }

  // Every Credit says which log our position is in and, when we hold it, the hash of the record
  // it ends at: the broker refuses to continue a position its log does not hold.
  void SendCredit(bool resubscribe) {
    const uint64_t next = engine_->next_seq();
    const std::string_view hash =
        consumed_hash_ && consumed_hash_->first + 1 == next ? std::string_view(consumed_hash_->second) : "";
    Send(codec::BuildCredit(options_.adapter_id, next, options_.window, resubscribe, log_id_, hash));
  }

  void Subscribe() {
    Send(codec::BuildHello(wire::Role::Aggregator, "aggregator:" + options_.adapter_id));
    SendGlobal();
    SendCredit(true);
  }

  // Returns whether any log record was consumed.
  Result<bool> Handle(std::vector<zmq::message_t>& frames) {
    if (frames.empty()) return false;
    auto env = codec::VerifyEnvelope(transport::View(frames[0]), codec::kMaxBufferBytes);
    if (!env.ok()) {
      Log()->warn("unreadable message from broker: {}", env.status().ToString());
      return false;
    }
    if ((*env)->body_type() == wire::Body::Error) {
      const auto* error = (*env)->body_as_Error();
      const Status status = codec::StatusFromError(*error);
      if (status.code() == Code::kUnavailable && error->retry_after_ms() > 0) {
        // The adapter's lease is held by another connection (our own previous socket, after a
        // reconnect, or a process still alive): subscribe again when the broker says it lapses.
        // Hello, global and Credit each get the answer: one line and one retry for all.
        if (!resubscribe_at_) {
          Log()->warn("subscription refused ({}); subscribing again in {} ms", status.message(), error->retry_after_ms());
        }
        resubscribe_at_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(error->retry_after_ms());
        return false;
      }
      if (status.code() == Code::kFailedPrecondition || status.code() == Code::kDataLoss) {
        // The broker's log cannot continue our position (a lost, replaced or truncated log):
        // going on would skip acknowledged updates. Stop, saying why and how to recover.
        return Status(status.code(), fmt::format("the broker refused this aggregator's log position (version {}, "
                                                 "consumed seq {}): {}",
                                                 engine_->version(), engine_->next_seq() - 1, status.message()));
      }
      Log()->warn("broker error: {}", status.ToString());
      return false;
    }
    if ((*env)->body_type() == wire::Body::Heartbeat) {
      const uint64_t incarnation = (*env)->body_as_Heartbeat()->incarnation();
      if (incarnation != broker_incarnation_) {
        // A restarted broker has forgotten our subscription. The first incarnation we learn
        // may already be a restarted broker's (one that died before answering any heartbeat of
        // ours took our subscription with it), so it is subscribed to as well: a redundant
        // resubscribe only re-sends what is in flight, which is skipped by sequence number.
        if (broker_incarnation_ != 0) {
          Log()->info("broker restarted (new incarnation); resubscribing from seq={}", engine_->next_seq());
        }
        Subscribe();
      }
      broker_incarnation_ = incarnation;
      return false;
    }
    if ((*env)->body_type() != wire::Body::Deliver) return false;
    const auto* d = (*env)->body_as_Deliver();
    if (d->adapter_id()->string_view() != options_.adapter_id || !d->seqs()) return false;
    if (d->log_id() && d->log_id()->size() > 0) {
      const std::string_view delivered_from = d->log_id()->string_view();
      if (log_id_.empty()) {
        log_id_ = delivered_from;
        Log()->info("adapter={} consumes update log {}", options_.adapter_id, log_id_);
      } else if (delivered_from != log_id_) {
        return FailedPrecondition(fmt::format(
            "the broker delivers records of update log {}, but this aggregator's store (version {}, consumed seq {}) "
            "was built from log {}: the log was lost or replaced. Restore the original log directory, or start the "
            "adapter afresh (a new adapter id, or a new store)",
            delivered_from, engine_->version(), engine_->next_seq() - 1, log_id_));
      }
    }
    const auto* seqs = d->seqs();
    if (frames.size() != seqs->size() + 1) {
      Log()->warn("malformed delivery: {} frames for {} records", frames.size() - 1, seqs->size());
      return false;
    }
    bool progressed = false;
    for (size_t i = 0; i < seqs->size() && !finished_; ++i) {
      const uint64_t seq = seqs->Get(i);
      if (seq < engine_->next_seq()) continue;  // already consumed (re-delivery)
      if (seq > engine_->next_seq()) {
        // A gap: the broker resumed from the wrong place. Ask again from our position.
        Subscribe();
        break;
      }
      auto rec = codec::VerifyEnvelope(transport::View(frames[i + 1]), codec::kMaxBufferBytes);
      if (!rec.ok() || (*rec)->body_type() != wire::Body::Update) {
        return DataLoss(fmt::format("log record {} of '{}' is not a readable update", seq, options_.adapter_id));
      }
      ASSIGN_OR_RETURN(auto info, engine_->Consume(seq, *(*rec)->body_as_Update()));
      progressed = true;
      if (info) {
        // Hashed only where a version is committed: the cursor's position (and a later Credit's).
        consumed_hash_ = {seq, ToHex(HashBytes(transport::View(frames[i + 1])))};
        const bool budget_spent = !engine_->CanAffordStep();
        const bool final = (options_.max_versions > 0 && info->version >= options_.max_versions) || budget_spent;
        RETURN_IF_ERROR(CommitVersion(*info, engine_->spec(), engine_->state(), final));
        SendGlobal();
        if (final) {
          finished_ = true;
          if (budget_spent) {
            Log()->warn("adapter={} privacy budget spent: client-level epsilon {:.4g} of {:.4g} (delta {:g}) after {} "
                        "noised steps; version={} is final and no more training is accepted",
                        options_.adapter_id, engine_->client_epsilon(), options_.engine.client_dp.budget,
                        options_.engine.dp_delta, info->privacy && info->privacy->client ? info->privacy->client->steps : 0,
                        info->version);
          } else {
            Log()->info("adapter={} final version={} committed", options_.adapter_id, info->version);
          }
        }
      }
    }
    return progressed;
  }

  uint32_t BufferSize() const {
    switch (options_.engine.mode) {
      case wire::Mode::FedAsync: return 1;
      case wire::Mode::FedBuff: return options_.engine.buffer_size;
      case wire::Mode::Sync: return options_.engine.round_size;
    }
    return 0;
  }

  struct RollbackRequest {
    uint64_t to = 0;
    std::promise<Result<RollbackDone>> promise;
  };

  AggregatorOptions options_;
  std::unique_ptr<storage::AdapterStore> store_;
  VersionCache bases_;
  zmq::context_t ctx_;
  zmq::socket_t socket_;
  std::unique_ptr<Engine> engine_;
  std::shared_ptr<const std::string> latest_global_;
  uint64_t broker_incarnation_ = 0;  // from the broker's heartbeats; 0 until the first
  std::optional<transport::BrokerWatch> watch_;  // heartbeats and reconnects; set while Run runs
  std::optional<std::chrono::steady_clock::time_point> resubscribe_at_;  // after a refused Credit
  bool connected_ = false;  // Connect() has run: the socket has somewhere to send
  std::string log_id_;  // the update log our cursor is in; empty until the store or a Deliver says
  std::optional<std::pair<uint64_t, std::string>> consumed_hash_;  // seq and hex hash of a consumed record
  std::stop_token stop_;  // Run's
  std::atomic<uint64_t> version_{0};
  std::atomic<bool> finished_{false};
  bool final_ = false;
  AggregatorMetrics metrics_;
  std::mutex requests_mu_;
  std::deque<RollbackRequest> requests_;  // guarded by requests_mu_
  bool running_ = false;                  // guarded by requests_mu_
};

}  // namespace

Result<std::unique_ptr<Aggregator>> Aggregator::Create(AggregatorOptions options) {
  RETURN_IF_ERROR(ValidateEngineOptions(options.engine));
  if (options.window == 0) return InvalidArgument("credit window must be at least 1");
  storage::AdapterStoreOptions so;
  so.path = options.store_path;
  so.sync = options.sync;
  ASSIGN_OR_RETURN(auto store, storage::AdapterStore::Open(so));
  auto agg = std::make_unique<AggregatorImpl>(std::move(options), std::move(store));
  RETURN_IF_ERROR(agg->Init());
  return std::unique_ptr<Aggregator>(std::move(agg));
}

}  // namespace fedlora::aggregator
