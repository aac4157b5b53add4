#include "aggregator/metrics.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace fedlora::aggregator {

std::string AggregatorMetrics::ReasonLabel(std::string_view reason) {
  return std::string(reason.substr(0, std::min(reason.find(':'), size_t{64})));
}

void AggregatorMetrics::OnCommit(const codec::VersionInfo& info, size_t buffered, uint32_t buffer_size) {
  std::lock_guard lock(mu_);
  versions_++;
  version_ = info.version;
  consumed_seq_ = info.consumed_seq;
  if (info.rollback_to) rollbacks_++;
  folded_ += info.applied.size();
  for (const auto& a : info.applied) {
    by_client_[a.client_id]++;
    const auto* bound = std::lower_bound(kStalenessBounds.begin(), kStalenessBounds.end(), a.staleness);
    staleness_buckets_[static_cast<size_t>(bound - kStalenessBounds.begin())]++;
    staleness_sum_ += a.staleness;
  }
  for (const auto& d : info.dropped) dropped_[ReasonLabel(d.reason)]++;
  buffered_ = buffered;
  buffer_size_ = buffer_size;
  if (info.test_accuracy >= 0) {
    accuracy_ = info.test_accuracy;
    accuracy_version_ = info.version;
  }
  if (info.privacy) {
    if (info.privacy->client) client_epsilon_ = info.privacy->client->epsilon;
    for (const auto& w : info.privacy->workers) worker_epsilon_max_ = std::max(worker_epsilon_max_, w.epsilon);
  }
  last_commit_unix_s_ = static_cast<double>(info.commit_unix_ms) / 1000.0;
}

void AggregatorMetrics::SetBuffered(size_t buffered) {
  std::lock_guard lock(mu_);
  buffered_ = buffered;
}

void AggregatorMetrics::Write(prometheus::Writer& w) const {
  std::lock_guard lock(mu_);
  const std::string_view a = adapter_id_;
  w.Family("fedlora_aggregator_version", "gauge", "Latest committed global version");
  w.Sample("fedlora_aggregator_version", static_cast<double>(version_), {{"adapter", a}});
  w.Family("fedlora_aggregator_consumed_seq", "gauge", "Update-log position the latest version has consumed");
  w.Sample("fedlora_aggregator_consumed_seq", static_cast<double>(consumed_seq_), {{"adapter", a}});
  w.Family("fedlora_aggregator_versions_total", "counter", "Versions committed by this process");
  w.Sample("fedlora_aggregator_versions_total", static_cast<double>(versions_), {{"adapter", a}});
  w.Family("fedlora_aggregator_rollbacks_total", "counter", "Rollback versions committed by this process");
  w.Sample("fedlora_aggregator_rollbacks_total", static_cast<double>(rollbacks_), {{"adapter", a}});
  w.Family("fedlora_aggregator_updates_folded_total", "counter", "Updates folded into a version");
  w.Sample("fedlora_aggregator_updates_folded_total", static_cast<double>(folded_), {{"adapter", a}});
  w.Family("fedlora_aggregator_updates_dropped_total", "counter", "Updates dropped, by reason");
  for (const auto& [reason, n] : dropped_) {
    w.Sample("fedlora_aggregator_updates_dropped_total", static_cast<double>(n), {{"adapter", a}, {"reason", reason}});
  }
  w.Family("fedlora_aggregator_client_updates_folded_total", "counter", "Updates folded, by client");
  for (const auto& [client, n] : by_client_) {
    w.Sample("fedlora_aggregator_client_updates_folded_total", static_cast<double>(n),
             {{"adapter", a}, {"client", client}});
  }
  w.Family("fedlora_aggregator_update_staleness", "histogram",
           "Staleness (versions committed since the update's base) of folded updates");
  uint64_t cumulative = 0;
  for (size_t i = 0; i < staleness_buckets_.size(); ++i) {
    cumulative += staleness_buckets_[i];
    const std::string le = i < kStalenessBounds.size() ? fmt::format("{}", kStalenessBounds[i]) : "+Inf";
    w.Sample("fedlora_aggregator_update_staleness_bucket", static_cast<double>(cumulative),
             {{"adapter", a}, {"le", le}});
  }
  w.Sample("fedlora_aggregator_update_staleness_sum", staleness_sum_, {{"adapter", a}});
  w.Sample("fedlora_aggregator_update_staleness_count", static_cast<double>(cumulative), {{"adapter", a}});
  w.Family("fedlora_aggregator_buffered_updates", "gauge",
           "Accepted updates waiting for the next version (FedBuff buffer or synchronous round)");
  w.Sample("fedlora_aggregator_buffered_updates", static_cast<double>(buffered_), {{"adapter", a}});
  w.Family("fedlora_aggregator_buffer_size", "gauge", "Updates per version (FedBuff's K, the round size; 1 for FedAsync)");
  w.Sample("fedlora_aggregator_buffer_size", static_cast<double>(buffer_size_), {{"adapter", a}});
  w.Family("fedlora_aggregator_test_accuracy", "gauge", "Test accuracy of the latest evaluated version (NaN: none yet)");
  w.Sample("fedlora_aggregator_test_accuracy", accuracy_ >= 0 ? accuracy_ : std::nan(""), {{"adapter", a}});
  w.Family("fedlora_aggregator_test_accuracy_version", "gauge", "The version test_accuracy belongs to");
  w.Sample("fedlora_aggregator_test_accuracy_version", static_cast<double>(accuracy_version_), {{"adapter", a}});
  w.Family("fedlora_aggregator_client_epsilon", "gauge", "Client-level DP: epsilon spent so far (0: no DP)");
  w.Sample("fedlora_aggregator_client_epsilon", client_epsilon_, {{"adapter", a}});
  w.Family("fedlora_aggregator_worker_epsilon_max", "gauge",
           "Record-level DP: the largest epsilon any worker has spent (0: no DP)");
  w.Sample("fedlora_aggregator_worker_epsilon_max", worker_epsilon_max_, {{"adapter", a}});
  w.Family("fedlora_aggregator_last_commit_timestamp_seconds", "gauge", "Unix time of the latest commit");
  w.Sample("fedlora_aggregator_last_commit_timestamp_seconds", last_commit_unix_s_, {{"adapter", a}});
}

}  // namespace fedlora::aggregator
