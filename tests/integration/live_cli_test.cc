// The live side of a run, end to end with real processes: `fedlora run --http` serves
// Prometheus /metrics for its broker and aggregator and the dashboard; `fedlora rollback`
// rolls the live adapter back through that endpoint, and a stopped store directly; the stored
// history, rollbacks included, replays bit for bit; headless Chromium (Debian's chromium)
// renders the dashboard of the stored run and every plot holds the run's data. Progress lines
// stay off when output is not a terminal.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "ops/observe/http.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/process.h"

namespace fedlora {
namespace {

using nlohmann::json;
using testing::Json;
using testing::Process;
using testing::Quote;
using testing::RunCapture;
using testing::WaitUntil;

constexpr const char* kBinary = FEDLORA_BINARY;

std::string Bin() { return std::string(kBinary); }

// The first value of a metric sample line "name{labels} value" (labels matched as a substring).
std::optional<double> Metric(const std::string& text, const std::string& name, const std::string& labels = "") {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.starts_with(name) || line.starts_with("#")) continue;
    const std::string rest = line.substr(name.size());
    if (!(rest.starts_with(" ") || rest.starts_with("{"))) continue;
    if (!labels.empty() && rest.find(labels) == std::string::npos) continue;
    return std::stod(rest.substr(rest.rfind(' ') + 1));
  }
  return std::nullopt;
}

// The address `fedlora run --http` or `fedlora dashboard` printed.
std::string WaitForAddress(const Process& p) {
  const std::regex re(R"(http://(127\.0\.0\.1:\d+)/)");
  std::string address;
  WaitUntil([&] {
    std::smatch m;
    const std::string out = p.Output();
    if (std::regex_search(out, m, re)) address = m[1];
    return !address.empty();
  }, std::chrono::seconds(60));
  EXPECT_FALSE(address.empty()) << p.Output();
  return address;
}

class LiveCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    int rc = -1;
    const std::string out = RunCapture(Bin() + " pretrain --arch mlp --epochs 2 --store " + Quote(dir_->path("run")) +
                                           " 2>&1",
                                       &rc);
    ASSERT_EQ(rc, 0) << out;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static testing::TempDir* dir_;
};
testing::TempDir* LiveCli::dir_ = nullptr;

TEST_F(LiveCli, MetricsDashboardLiveRollbackAndReplay) {
  const std::string store = dir_->path("run");
  Process run({kBinary, "run", "--arch", "mlp", "--workers", "3", "--speeds", "1,2,3", "--local-steps", "4",
               "--buffer-size", "2", "--server-optimizer", "adam", "--eval-every", "2", "--eval-samples", "300",
               "--duration", "120", "--store", store, "--http", "127.0.0.1:0"},
              dir_->path("run.out"));
  const std::string address = WaitForAddress(run);
  ASSERT_FALSE(address.empty());

  // /metrics: the broker's and the aggregator's families, moving as the run goes.
  std::string metrics;
  ASSERT_TRUE(WaitUntil([&] {
    auto r = http::Fetch(address, "GET", "/metrics");
    if (!r.ok() || r->status != 200) return false;
    metrics = r->body;
    return Metric(metrics, "fedlora_aggregator_version").value_or(0) >= 5;
  }, std::chrono::seconds(90))) << metrics << run.Output();
  EXPECT_GT(*Metric(metrics, "fedlora_broker_updates_logged_total"), 0);
  EXPECT_GT(*Metric(metrics, "fedlora_broker_bytes_logged_total"), 0);
  ASSERT_TRUE(Metric(metrics, "fedlora_broker_log_lag_records", "adapter=\"default\"").has_value()) << metrics;
  EXPECT_GE(*Metric(metrics, "fedlora_aggregator_updates_folded_total"), 10);  // 5 versions of K = 2
  const double folded = *Metric(metrics, "fedlora_aggregator_updates_folded_total");
  EXPECT_EQ(*Metric(metrics, "fedlora_aggregator_update_staleness_count"), folded);
  EXPECT_EQ(*Metric(metrics, "fedlora_aggregator_update_staleness_bucket", "le=\"+Inf\""), folded);
  EXPECT_EQ(*Metric(metrics, "fedlora_aggregator_buffer_size"), 2);
  EXPECT_GT(*Metric(metrics, "fedlora_process_resident_memory_bytes"), 1e6);
  EXPECT_NE(metrics.find("# TYPE fedlora_aggregator_update_staleness histogram"), std::string::npos);

  // A live rollback to version 1, through the run's endpoint. GET is refused; a bad target too.
  auto get = http::Fetch(address, "GET", "/api/rollback?to=1");
  ASSERT_TRUE(get.ok());
  EXPECT_EQ(get->status, 405);
  int rc = -1;
  std::string text = RunCapture(Bin() + " rollback --to 999999 --aggregator " + address + " 2>&1", &rc);
  EXPECT_EQ(rc, 2) << text;
  EXPECT_NE(text.find("no version 999999"), std::string::npos) << text;
  // The store itself is held by the running aggregator: the command says to go through it.
  text = RunCapture(Bin() + " rollback --to 1 --store " + Quote(store) + " 2>&1", &rc);
  EXPECT_EQ(rc, 1) << text;
  EXPECT_NE(text.find("an aggregator holds the store"), std::string::npos) << text;
  const json done = Json(Bin() + " rollback --json --to 1 --aggregator " + address);
  const uint64_t rollback_version = done["version"].get<uint64_t>();
  EXPECT_GE(rollback_version, 6u);
  // Training goes on from the restored version.
  ASSERT_TRUE(WaitUntil([&] {
    auto r = http::Fetch(address, "GET", "/metrics");
    return r.ok() && Metric(r->body, "fedlora_aggregator_version").value_or(0) >= rollback_version + 3;
  }, std::chrono::seconds(90))) << run.Output();
  auto after = http::Fetch(address, "GET", "/metrics");
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(*Metric(after->body, "fedlora_aggregator_rollbacks_total"), 1);
  run.Signal(SIGINT);
  const auto status = run.Wait(std::chrono::seconds(60));
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(WEXITSTATUS(*status), 0) << run.Output();
  // Off a terminal the run prints no progress lines, only its header and summary.
  EXPECT_EQ(run.Output().find('\r'), std::string::npos);
  EXPECT_EQ(run.Output().find("s] version"), std::string::npos) << run.Output();

  // The record: a version of its own holding version 1's tensors, nothing rewritten.
  const json history = Json(Bin() + " history --json --store " + Quote(store));
  ASSERT_GT(history.size(), rollback_version + 1);
  const json& rb = history[rollback_version];
  EXPECT_EQ(rb["rollback_to"], 1u);
  EXPECT_EQ(rb["content_hash"], history[1]["content_hash"]);
  EXPECT_EQ(rb["content_hash"], done["content_hash"]);
  EXPECT_EQ(rb["parent_version"], rollback_version - 1);
  EXPECT_EQ(rb["updates"], 0u);
  EXPECT_EQ(rb["consumed_seq"], history[rollback_version - 1]["consumed_seq"]);
  for (size_t v = 0; v < history.size(); ++v) {
    if (v != rollback_version) {
      EXPECT_TRUE(history[v]["rollback_to"].is_null()) << v;
    }
  }
  // Nothing trained from a rolled-back version (2 .. rollback_version - 1) is folded after it;
  // such updates still in flight are dropped with their reason.
  for (size_t v = rollback_version + 1; v < history.size(); ++v) {
    for (const auto& a : history[v]["applied"]) {
      const uint64_t base = a["base_version"].get<uint64_t>();
      EXPECT_TRUE(base <= 1 || base >= rollback_version) << "version " << v << " folded an update from " << base;
    }
    for (const auto& d : history[v]["dropped_updates"]) {
      const uint64_t base = d["base_version"].get<uint64_t>();
      if (base > 1 && base < rollback_version) {
        EXPECT_EQ(d["reason"], "rolled-back-base");
      }
    }
  }

  // A stopped store is rolled back directly; one to the current version is refused.
  const uint64_t last = history.size() - 1;
  text = RunCapture(Bin() + " rollback --to " + std::to_string(last) + " --store " + Quote(store) + " 2>&1", &rc);
  EXPECT_EQ(rc, 2) << text;
  const json offline = Json(Bin() + " rollback --json --to " + std::to_string(rollback_version + 1) + " --store " +
                            Quote(store));
  EXPECT_EQ(offline["version"], last + 1);
  const json history2 = Json(Bin() + " history --json --store " + Quote(store));
  ASSERT_EQ(history2.size(), last + 2);
  EXPECT_EQ(history2[last + 1]["content_hash"], history2[rollback_version + 1]["content_hash"]);

  // Both rollbacks replay bit for bit from the log and the recorded history.
  const json report = Json(Bin() + " replay --json --no-eval --log " + Quote(store) + " --out " +
                           Quote(dir_->path("replayed")));
  EXPECT_EQ(report["compared"], last + 2);
  EXPECT_EQ(report["identical"], last + 2) << report.dump();
  EXPECT_EQ(report["rollbacks"], 2u);
  EXPECT_TRUE(report["first_difference"].is_null());

  // The dashboard of the stored run in headless Chromium: every plot holds the run's data.
  Process dashboard({kBinary, "dashboard", "--store", store, "--http", "127.0.0.1:0"}, dir_->path("dash.out"));
  const std::string dash = WaitForAddress(dashboard);
  ASSERT_FALSE(dash.empty());
  const std::string dom = RunCapture(
      "chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --virtual-time-budget=10000 "
      "--dump-dom http://" + dash + "/ 2>/dev/null", &rc);
  ASSERT_EQ(rc, 0) << "chromium (Debian's package; ops/test installs it) failed:\n" << dom;
  auto points = [&](const std::string& id) -> long {
    std::smatch m;
    const std::regex re("<svg id=\"" + id + "\"[^>]*data-points=\"(\\d+)\"");
    return std::regex_search(dom, m, re) ? std::stol(m[1]) : -1;
  };
  size_t evaluated = 0;
  std::set<uint64_t> staleness;
  std::set<std::string> clients;
  for (const auto& v : history2) {
    if (!v["test_accuracy"].is_null()) evaluated++;
  }
  const json summary = json::parse(http::Fetch(dash, "GET", "/api/dashboard")->body);
  EXPECT_EQ(summary["versions"].size(), history2.size());
  EXPECT_EQ(points("acc-version"), static_cast<long>(evaluated)) << dom;
  EXPECT_EQ(points("acc-time"), static_cast<long>(evaluated));
  EXPECT_EQ(points("staleness"), static_cast<long>(summary["staleness"].size()));
  EXPECT_GT(points("staleness"), 0);
  EXPECT_EQ(points("clients"), 3);
  EXPECT_GT(points("throughput"), 0);
  EXPECT_EQ(points("epsilon"), 0) << "no DP in this run";
  EXPECT_NE(dom.find("version " + std::to_string(last + 1) + " ·"), std::string::npos) << "the status line";
  dashboard.Signal(SIGINT);
  EXPECT_TRUE(dashboard.Wait(std::chrono::seconds(10)).has_value());
}

}  // namespace
}  // namespace fedlora
