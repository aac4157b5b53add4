#include "aggregator/metrics.h"

#include <gtest/gtest.h>

namespace fedlora::aggregator {
namespace {

codec::VersionInfo Version(uint64_t v, std::vector<uint32_t> staleness, std::vector<std::string> drops) {
  codec::VersionInfo info;
  info.version = v;
  info.consumed_seq = 10 * v;
  info.commit_unix_ms = 1700000000000 + v * 1000;
  for (size_t i = 0; i < staleness.size(); ++i) {
    codec::LineageItem a;
    a.client_id = i % 2 ? "w1" : "w0";
    a.staleness = staleness[i];
    info.applied.push_back(a);
  }
  for (auto& r : drops) {
    codec::DropItem d;
    d.reason = r;
    info.dropped.push_back(d);
  }
  return info;
}

TEST(AggregatorMetricsTest, CountsHistogramsAndGauges) {
  AggregatorMetrics m("default");
  codec::VersionInfo first = Version(1, {0, 1, 3}, {"max-staleness", "invalid: tensor 'x' has 3 values"});
  m.OnCommit(first, 2, 3);
  codec::VersionInfo second = Version(2, {100}, {"invalid: other"});
  second.test_accuracy = 0.75f;
  second.rollback_to = 0;
  second.privacy = codec::PrivacyLedger{};
  second.privacy->client = codec::ClientPrivacy{};
  second.privacy->client->epsilon = 1.5;
  m.OnCommit(second, 0, 3);
  prometheus::Writer w;
  m.Write(w);
  const std::string& t = w.text();
  auto has = [&](const std::string& line) { return t.find(line + "\n") != std::string::npos; };
  EXPECT_TRUE(has("fedlora_aggregator_version{adapter=\"default\"} 2")) << t;
  EXPECT_TRUE(has("fedlora_aggregator_consumed_seq{adapter=\"default\"} 20"));
  EXPECT_TRUE(has("fedlora_aggregator_versions_total{adapter=\"default\"} 2"));
  EXPECT_TRUE(has("fedlora_aggregator_rollbacks_total{adapter=\"default\"} 1"));
  EXPECT_TRUE(has("fedlora_aggregator_updates_folded_total{adapter=\"default\"} 4"));
  EXPECT_TRUE(has("fedlora_aggregator_updates_dropped_total{adapter=\"default\",reason=\"invalid\"} 2"));
  EXPECT_TRUE(has("fedlora_aggregator_updates_dropped_total{adapter=\"default\",reason=\"max-staleness\"} 1"));
  EXPECT_TRUE(has("fedlora_aggregator_client_updates_folded_total{adapter=\"default\",client=\"w0\"} 3"));
  EXPECT_TRUE(has("fedlora_aggregator_client_updates_folded_total{adapter=\"default\",client=\"w1\"} 1"));
  // Cumulative buckets: 0 -> 1, 1 -> 2, 2 -> 2, 4 -> 3, ..., 64 -> 3, +Inf -> 4.
  EXPECT_TRUE(has("fedlora_aggregator_update_staleness_bucket{adapter=\"default\",le=\"0\"} 1"));
  EXPECT_TRUE(has("fedlora_aggregator_update_staleness_bucket{adapter=\"default\",le=\"1\"} 2"));
  EXPECT_TRUE(has("fedlora_aggregator_update_staleness_bucket{adapter=\"default\",le=\"2\"} 2"));
  EXPECT_TRUE(has("fedlora_aggregator_update_staleness_bucket{adapter=\"default\",le=\"4\"} 3"));
  EXPECT_TRUE(has("fedlora_aggregator_update_staleness_bucket{adapter=\"default\",le=\"64\"} 3"));
  EXPECT_TRUE(has("fedlora_aggregator_update_staleness_bucket{adapter=\"default\",le=\"+Inf\"} 4"));
  EXPECT_TRUE(has("fedlora_aggregator_update_staleness_sum{adapter=\"default\"} 104"));
  EXPECT_TRUE(has("fedlora_aggregator_update_staleness_count{adapter=\"default\"} 4"));
  EXPECT_TRUE(has("fedlora_aggregator_buffered_updates{adapter=\"default\"} 0"));
  EXPECT_TRUE(has("fedlora_aggregator_buffer_size{adapter=\"default\"} 3"));
  EXPECT_TRUE(has("fedlora_aggregator_test_accuracy{adapter=\"default\"} 0.75"));
  EXPECT_TRUE(has("fedlora_aggregator_test_accuracy_version{adapter=\"default\"} 2"));
  EXPECT_TRUE(has("fedlora_aggregator_client_epsilon{adapter=\"default\"} 1.5"));
  EXPECT_TRUE(has("fedlora_aggregator_last_commit_timestamp_seconds{adapter=\"default\"} 1700000002"));
  EXPECT_TRUE(has("# TYPE fedlora_aggregator_update_staleness histogram"));
}

TEST(AggregatorMetricsTest, NoAccuracyYetIsNaN) {
  AggregatorMetrics m("a");
  m.OnCommit(Version(1, {0}, {}), 0, 1);
  prometheus::Writer w;
  m.Write(w);
  EXPECT_NE(w.text().find("fedlora_aggregator_test_accuracy{adapter=\"a\"} NaN\n"), std::string::npos) << w.text();
  EXPECT_EQ(AggregatorMetrics::ReasonLabel("invalid: 'x'"), "invalid");
  EXPECT_EQ(AggregatorMetrics::ReasonLabel("rolled-back-base"), "rolled-back-base");
}

}  // namespace
}  // namespace fedlora::aggregator
