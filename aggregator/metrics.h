// What an aggregator exposes on /metrics (Prometheus text): versions, updates folded and dropped
// (by reason), a staleness histogram, buffer fill, the last test accuracy and the privacy spent.
// Filled from each committed version's record, so a restarted aggregator starts its counters
// from zero (Prometheus' rate() handles the reset) while the gauges come back with the first
// commit.
// Thread safety: all members may be called from any thread.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "schema/codec.h"
#include "ops/observe/prometheus.h"

namespace fedlora::aggregator {

class AggregatorMetrics {
 public:
  // Staleness histogram upper bounds (the last bucket is +Inf).
  static constexpr std::array<uint32_t, 8> kStalenessBounds = {0, 1, 2, 4, 8, 16, 32, 64};

  explicit AggregatorMetrics(std::string adapter_id) : adapter_id_(std::move(adapter_id)) {}

  // A version was committed durably; `buffered` updates wait for the next one.
  void OnCommit(const codec::VersionInfo& info, size_t buffered, uint32_t buffer_size);
  // The buffer changed without a commit.
  void SetBuffered(size_t buffered);

  void Write(prometheus::Writer& w) const;

  // The drop reason as a label: the part before the first ':' ("invalid: ..." -> "invalid"),
  // so that a label never carries an update's own text.
  static std::string ReasonLabel(std::string_view reason);

 private:
  const std::string adapter_id_;
  mutable std::mutex mu_;
  uint64_t versions_ = 0;      // committed by this process
  uint64_t version_ = 0;       // latest
  uint64_t consumed_seq_ = 0;
  uint64_t folded_ = 0;
  uint64_t rollbacks_ = 0;
  std::map<std::string, uint64_t> dropped_;  // by reason label
  std::map<std::string, uint64_t> by_client_;
  std::array<uint64_t, kStalenessBounds.size() + 1> staleness_buckets_{};  // not cumulative
  double staleness_sum_ = 0;
  uint64_t buffered_ = 0;
  uint32_t buffer_size_ = 0;
  double accuracy_ = -1;
  uint64_t accuracy_version_ = 0;
  double client_epsilon_ = 0;
  double worker_epsilon_max_ = 0;
  double last_commit_unix_s_ = 0;
};

}  // namespace fedlora::aggregator
