#include "aggregator/replay.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "aggregator/commit.h"
#include "aggregator/engine_config.h"
#include "aggregator/rollback.h"
#include "aggregator/server_state.h"

namespace fedlora::aggregator {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

class Replayer {
 public:
  Replayer(storage::UpdateLog& log, storage::AdapterStore* original, storage::AdapterStore& out,
           const ReplayOptions& options)
      : log_(log), original_(original), out_(out), options_(options), bases_(out, options.adapter_id) {}

  Result<ReplayReport> Run() {
    const std::string& id = options_.adapter_id;
    if (!options_.settings) return InvalidArgument("replay needs a settings function");
    ASSIGN_OR_RETURN(std::optional<storage::Cursor> existing, out_.GetCursor(id));
    if (existing) {
      return FailedPrecondition(fmt::format(
          "the output store already holds adapter '{}' (up to version {}): replay into an empty directory", id,
          existing->version));
    }
    RETURN_IF_ERROR(LoadOriginal());
    RETURN_IF_ERROR(CommitVersionZero());
    ASSIGN_OR_RETURN(ResumedEngine resumed, ResumeEngine(out_, options_now_, id, Lookup()));
    engine_ = std::move(resumed.engine);

    const uint64_t head = log_.LastSeq(id);
    const uint64_t last_seq = options_.until_seq > 0 ? std::min(options_.until_seq, head) : head;
    bool done = false;
    while (!done) {
      // A rollback the original made once it had consumed the log this far happens here too.
      if (RollbackDue(last_seq)) {
        ASSIGN_OR_RETURN(done, ApplyRollback(last_seq));
        continue;
      }
      if (engine_->next_seq() > last_seq) break;
      ASSIGN_OR_RETURN(std::vector<storage::LogRecord> records,
                       log_.Read(id, engine_->next_seq(), 256, size_t{64} << 20));
      if (records.empty()) break;
      for (const storage::LogRecord& r : records) {
        if (r.seq > last_seq) {
          done = true;
          break;
        }
        if (RollbackDue(last_seq)) break;
        ASSIGN_OR_RETURN(done, Consume(r, last_seq));
        if (done) break;
      }
    }
    if (engine_->next_seq() <= last_seq && !report_.final) {
      return DataLoss(fmt::format("the log of '{}' ends at record {} but reports {} records",
                                  id, engine_->next_seq() - 1, last_seq));
    }
    if (options_.evaluate && !report_.last_eval) {
      // The last version was not evaluated when it was committed: evaluate it for the report.
      const auto t = Clock::now();
      ASSIGN_OR_RETURN(EvalOutcome e, options_.evaluate(engine_->spec(), engine_->state()));
      report_.eval_seconds += SecondsSince(t);
      report_.last_eval = std::move(e);
    }
    report_.seconds = SecondsSince(start_) - report_.eval_seconds;
    return std::move(report_);
  }

 private:
  Engine::BaseLookup Lookup() {
    return [this](uint64_t v) { return bases_.Get(v); };
  }

  // The original's recorded settings for `version` as flags; its last version's past its end.
  Result<std::string> Recorded(uint64_t version) const {
    if (original_records_.empty()) return std::string();
    return RecordedConfig(original_records_[std::min<size_t>(version, original_records_.size() - 1)]);
  }

  Status LoadOriginal() {
    if (original_ == nullptr) return Status::Ok();
    const std::string& id = options_.adapter_id;
    ASSIGN_OR_RETURN(std::optional<storage::Cursor> cursor, original_->GetCursor(id));
    if (!cursor) return NotFound(fmt::format("the original store has no adapter '{}'", id));
    for (uint64_t v = 0; v <= cursor->version; ++v) {
      ASSIGN_OR_RETURN(codec::VersionInfo info, storage::ReadVersionInfo(*original_, id, v));
      if (info.rollback_to) rollbacks_.push_back(v);
      original_records_.push_back(std::move(info));
    }
    ASSIGN_OR_RETURN(codec::DecodedGlobal latest, storage::ReadVersion(*original_, id, cursor->version));
    original_final_ = latest.info.final;
    report_.original_last = original_records_.back();
    ASSIGN_OR_RETURN(std::optional<std::string> state, original_->GetServerState(id));
    if (state) {
      ASSIGN_OR_RETURN(ServerState decoded, DecodeServerState(codec::AsBytes(*state), latest.spec));
      original_seed_ = decoded.noise_seed;
    }
    return Status::Ok();
  }

  // The settings of `version`, with the original's client-level DP noise seed unless the
  // caller's settings name one.
  Result<EngineOptions> SettingsFor(uint64_t version) {
    ASSIGN_OR_RETURN(std::string recorded, Recorded(version));
    ASSIGN_OR_RETURN(EngineOptions o, options_.settings(version, recorded));
    if (o.client_dp.noise_multiplier > 0 && !o.client_dp.seed && original_seed_) o.client_dp.seed = original_seed_;
    return o;
  }

  Status CommitVersionZero() {
    const std::string& id = options_.adapter_id;
    ASSIGN_OR_RETURN(options_now_, SettingsFor(1));
    AdapterSpec spec;
    AdapterState state;
    codec::VersionInfo info;
    if (original_ != nullptr) {
      ASSIGN_OR_RETURN(codec::DecodedGlobal zero, storage::ReadVersion(*original_, id, 0));
      spec = std::move(zero.spec);
      state = std::move(zero.state);
      info = original_records_.front();  // the same state: its evaluation holds too
    } else if (options_.initial) {
      spec = options_.initial->spec;
      state = options_.initial->state;
      RETURN_IF_ERROR(CheckStateMatchesSpec(spec, state).WithContext("initial adapter"));
    } else {
      return FailedPrecondition("replay without an original store needs the initial adapter (version 0)");
    }
    FillVersionZero(info, id, options_now_, state);
    info.commit_unix_ms = NowUnixMs();
    ASSIGN_OR_RETURN(auto global, CommitVersion(out_, options_now_, nullptr, info, spec, state, false));
    Compare(info);
    consumed_.push_back(info.consumed_seq);
    report_.last = info;
    return Status::Ok();
  }

  // The version of this replay an update counts as trained from. The worker trained from the
  // original's version b, i.e. from the state after log position consumed(b); here that state
  // is the latest replayed version that had consumed no more of the log. With the original's
  // settings that is b itself; in a what-if it keeps staleness meaningful (version numbers of
  // the two timelines do not correspond).
  std::optional<uint64_t> Rebase(const wire::Update& update) const {
    const uint64_t b = update.base_version();
    if (b >= original_records_.size()) return std::nullopt;
    return Corresponding(b);
  }

  // Every version so far equals the original's: the two timelines are one, version for version
  // (versions after a rollback share its log position, so positions alone cannot tell them apart).
  bool Faithful() const { return !report_.first_difference && report_.compared == consumed_.size(); }

  // The version of this replay that corresponds to the original's version `b`: b itself while
  // the replay is faithful, otherwise the latest version that had consumed no more of the log.
  uint64_t Corresponding(uint64_t b) const {
    if (Faithful() && b < consumed_.size()) return b;
    const uint64_t position = original_records_[b].consumed_seq;
    const auto it = std::upper_bound(consumed_.begin(), consumed_.end(), position);
    return static_cast<uint64_t>(it - consumed_.begin()) - 1;
  }

  // The next of the original's rollbacks is due once the log is consumed up to its position.
  bool RollbackDue(uint64_t last_seq) const {
    if (next_rollback_ >= rollbacks_.size()) return false;
    const uint64_t position = original_records_[rollbacks_[next_rollback_]].consumed_seq;
    return position <= last_seq && position < engine_->next_seq();
  }

  // Commits the original's next rollback here; returns whether the replay is over.
  Result<bool> ApplyRollback(uint64_t last_seq) {
    const codec::VersionInfo& original = original_records_[rollbacks_[next_rollback_++]];
    const uint64_t to = Corresponding(*original.rollback_to);
    ASSIGN_OR_RETURN(EngineOptions options, SettingsFor(report_.last.version + 1));
    ASSIGN_OR_RETURN(PreparedRollback prepared, PrepareRollback(out_, options, options_.adapter_id, to, Lookup()));
    engine_ = std::move(prepared.engine);
    options_now_ = std::move(options);
    codec::VersionInfo& info = prepared.info;
    info.commit_unix_ms = NowUnixMs();
    ASSIGN_OR_RETURN(auto global, CommitVersion(out_, options_now_, engine_.get(), info, engine_->spec(),
                                                engine_->state(), false));
    consumed_.push_back(info.consumed_seq);
    report_.versions++;
    report_.rollbacks++;
    report_.last_eval.reset();
    Compare(info);
    if (options_.on_version) options_.on_version({info.version, info.consumed_seq, last_seq, SecondsSince(start_)});
    const bool final = options_.max_versions > 0 && info.version >= options_.max_versions;
    report_.last = std::move(info);
    return final;
  }

  void Compare(const codec::VersionInfo& info) {
    if (info.version >= original_records_.size()) return;
    report_.compared++;
    if (original_records_[info.version].content_hash == info.content_hash) {
      report_.identical++;
    } else if (!report_.first_difference) {
      report_.first_difference = info.version;
    }
  }

  // Consumes one record; returns whether the replay is over (a final version was committed).
  Result<bool> Consume(const storage::LogRecord& r, uint64_t last_seq) {
    const std::string& id = options_.adapter_id;
    if (r.seq != engine_->next_seq()) {
      return DataLoss(fmt::format("log record {} of '{}' is missing (the log continues at {})", engine_->next_seq(),
                                  id, r.seq));
    }
    auto env = codec::VerifyEnvelope(codec::AsBytes(r.bytes), codec::kMaxBufferBytes);
    if (!env.ok() || (*env)->body_type() != wire::Body::Update) {
      return DataLoss(fmt::format("log record {} of '{}' is not a readable update", r.seq, id));
    }
    const wire::Update& update = *(*env)->body_as_Update();
    ASSIGN_OR_RETURN(std::optional<codec::VersionInfo> made, engine_->Consume(r.seq, update, Rebase(update)));
    report_.records++;
    if (!made) return false;
    codec::VersionInfo& info = *made;
    const uint64_t v = info.version;
    const bool final = (options_.max_versions > 0 && v >= options_.max_versions) || !engine_->CanAffordStep() ||
                       (options_.stop_at_original_final && original_final_ && v + 1 == original_records_.size());
    const bool due = options_.eval_every > 0 && v % options_.eval_every == 0;
    if (options_.evaluate && (due || final)) {
      const auto t = Clock::now();
      ASSIGN_OR_RETURN(EvalOutcome e, options_.evaluate(engine_->spec(), engine_->state()));
      report_.eval_seconds += SecondsSince(t);
      info.test_accuracy = static_cast<float>(e.accuracy);
      info.test_loss = static_cast<float>(e.loss);
      info.eval_samples = static_cast<uint32_t>(e.samples);
      report_.last_eval = std::move(e);
    } else {
      report_.last_eval.reset();
    }
    info.adapter_id = id;
    info.commit_unix_ms = NowUnixMs();
    ASSIGN_OR_RETURN(auto global,
                     CommitVersion(out_, options_now_, engine_.get(), info, engine_->spec(), engine_->state(), final));
    consumed_.push_back(info.consumed_seq);
    report_.versions++;
    report_.applied += info.applied.size();
    report_.dropped += info.dropped.size();
    report_.final = final;
    Compare(info);
    if (options_.on_version) options_.on_version({v, r.seq, last_seq, SecondsSince(start_)});
    report_.last = std::move(info);
    if (final) return true;
    // The next version's settings: when they differ, restart the engine from this version,
    // exactly as the aggregator restarted with new flags.
    ASSIGN_OR_RETURN(EngineOptions next, SettingsFor(v + 1));
    if (EngineConfigFlags(next) != EngineConfigFlags(options_now_)) {
      ASSIGN_OR_RETURN(ResumedEngine resumed, ResumeEngine(out_, next, id, Lookup()));
      engine_ = std::move(resumed.engine);
      options_now_ = std::move(next);
      report_.setting_changes++;
    }
    return false;
  }

  storage::UpdateLog& log_;
  storage::AdapterStore* original_;
  storage::AdapterStore& out_;
  const ReplayOptions& options_;
  VersionCache bases_;
  const Clock::time_point start_ = Clock::now();
  std::vector<codec::VersionInfo> original_records_;
  std::vector<uint64_t> consumed_;  // log position consumed by each replayed version
  std::vector<uint64_t> rollbacks_;  // the original's rollback versions, in order
  size_t next_rollback_ = 0;
  bool original_final_ = false;
  std::optional<uint64_t> original_seed_;
  EngineOptions options_now_;
  std::unique_ptr<Engine> engine_;
  ReplayReport report_;
};

}  // namespace

Result<ReplayReport> Replay(storage::UpdateLog& log, storage::AdapterStore* original, storage::AdapterStore& out,
                            const ReplayOptions& options) {
  Replayer replayer(log, original, out, options);
  return replayer.Run();
}

}  // namespace fedlora::aggregator
