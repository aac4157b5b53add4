// The HTTP endpoint of the roles in a process (aggregator/http_api.h) and the dashboard it
// serves (aggregator/dashboard.h), called as handlers: what each path answers, and charts drawn
// from the stored versions.
#include "aggregator/http_api.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <regex>

#include "aggregator/commit.h"
#include "aggregator/engine.h"
#include "schema/hash.h"
#include "storage/adapter_store.h"
#include "tests/testing/fixtures.h"

namespace fedlora::aggregator {
namespace {

using testing::FilledState;
using testing::SmallSpec;

// Versions 0..2 of "default": version 2 evaluated and folding two updates of two clients.
void CommitVersions(const std::string& path) {
  storage::AdapterStoreOptions so;
  so.path = path;
  so.sync = false;
  auto store = storage::AdapterStore::Open(so);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  const EngineOptions o;
  for (uint64_t v = 0; v <= 2; ++v) {
    codec::VersionInfo info;
    info.adapter_id = "default";
    info.version = v;
    info.parent_version = v == 0 ? 0 : v - 1;
    info.consumed_seq = 2 * v;
    info.commit_unix_ms = 1000 * (v + 1);
    const AdapterState state = FilledState(SmallSpec(), 0.1f * static_cast<float>(v));
    info.content_hash = ToHex(HashAdapter(state));
    if (v == 2) {
      info.test_accuracy = 0.75f;
      for (const char* client : {"worker-0", "worker-1"}) {
        codec::LineageItem item;
        item.client_id = client;
        item.update_id = std::string(client) + "-1";
        item.staleness = 1;
        info.applied.push_back(item);
      }
    }
    auto g = CommitVersion(**store, o, nullptr, info, SmallSpec(), state, false);
    ASSERT_TRUE(g.ok()) << g.status().ToString();
  }
}

long Points(const std::string& html, const std::string& id) {
  std::smatch m;
  return std::regex_search(html, m, std::regex("<svg id=\"" + id + "\"[^>]*data-points=\"(\\d+)\"")) ? std::stol(m[1])
                                                                                                     : -1;
}

http::Request Get(const std::string& path) {
  http::Request r;
  r.method = "GET";
  r.path = path;
  r.from_loopback = true;
  return r;
}

TEST(HttpApiTest, MetricsOnlyWithoutAStoreOrAnAggregator) {
  HttpApi api;
  api.metrics = [](prometheus::Writer& w) { w.Gauge("fedlora_test_gauge", "A gauge", 3); };
  auto handler = ApiHandler(api);
  const http::Response metrics = handler(Get("/metrics"));
  EXPECT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("fedlora_test_gauge 3"), std::string::npos) << metrics.body;
  EXPECT_NE(metrics.body.find("fedlora_process_resident_memory_bytes"), std::string::npos);
  EXPECT_EQ(handler(Get("/")).status, 404) << "no dashboard without a store";
  http::Request rollback = Get("/api/rollback");
  rollback.method = "POST";
  rollback.params["to"] = "1";
  const http::Response refused = handler(rollback);
  EXPECT_EQ(refused.status, 404);
  EXPECT_NE(refused.body.find("no aggregator runs in this process"), std::string::npos) << refused.body;
}

TEST(HttpApiTest, TheDashboardIsDrawnFromTheStoredVersions) {
  testing::TempDir dir;
  storage::StoreLayout store{dir.path()};
  CommitVersions(store.adapters());
  HttpApi api;
  api.store = store;
  auto handler = ApiHandler(api);

  const http::Response page = handler(Get("/"));
  ASSERT_EQ(page.status, 200);
  EXPECT_EQ(page.content_type, "text/html; charset=utf-8");
  EXPECT_EQ(Points(page.body, "acc-version"), 1) << "one evaluated version";
  EXPECT_EQ(Points(page.body, "acc-time"), 1);
  EXPECT_EQ(Points(page.body, "staleness"), 1) << "one staleness value: 1";
  EXPECT_EQ(Points(page.body, "clients"), 2);
  EXPECT_EQ(Points(page.body, "epsilon"), 0);
  EXPECT_GT(Points(page.body, "throughput"), 0);
  EXPECT_NE(page.body.find("version 2 · 2 updates folded · accuracy 0.7500"), std::string::npos);

  const auto summary = nlohmann::json::parse(handler(Get("/api/dashboard")).body);
  EXPECT_EQ(summary["versions"].size(), 3u);
  EXPECT_EQ(summary["clients"]["worker-1"], 1);
  const auto figures = nlohmann::json::parse(handler(Get("/api/dashboard/figures")).body);
  EXPECT_EQ(figures["adapter"], "default");
  EXPECT_EQ(Points(figures["figures"].get<std::string>(), "clients"), 2);

  HttpApi other = api;
  other.adapter = "no-such-adapter";
  const http::Response missing = ApiHandler(other)(Get("/api/dashboard"));
  EXPECT_EQ(missing.status, 404) << missing.body;
  const http::Response missing_page = ApiHandler(other)(Get("/"));
  EXPECT_EQ(missing_page.status, 200);
  EXPECT_NE(missing_page.body.find("cannot read the run"), std::string::npos);
}

}  // namespace
}  // namespace fedlora::aggregator
