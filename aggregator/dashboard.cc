#include "aggregator/dashboard.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <ctime>

#include "aggregator/metrics.h"
#include "storage/reader.h"
#include "ops/observe/plot.h"
#include "ops/observe/prometheus.h"

namespace fedlora::aggregator {

Result<nlohmann::json> DashboardSource::Summary() {
  std::lock_guard lock(mu_);
  ASSIGN_OR_RETURN(storage::StoredAdapter stored, storage::StoredAdapter::Open(store_, adapter_));
  const uint64_t latest = stored.cursor().version;
  if (latest + 1 < versions_.size()) {  // the store was replaced (a --fresh run): start over
    versions_ = nlohmann::json::array();
    staleness_.clear();
    clients_.clear();
    dropped_.clear();
  }
  for (uint64_t v = versions_.size(); v <= latest; ++v) {
    ASSIGN_OR_RETURN(codec::VersionInfo info, stored.Record(v));
    nlohmann::json row = {{"v", info.version},
                          {"t", info.commit_unix_ms},
                          {"folded", info.applied.size()},
                          {"dropped", info.dropped.size()},
                          {"staleness", info.mean_staleness},
                          {"acc", nullptr},
                          {"eps", nullptr},
                          {"rollback_to", nullptr}};
    if (info.test_accuracy >= 0) row["acc"] = info.test_accuracy;
    if (info.privacy) {
      double eps = info.privacy->client ? info.privacy->client->epsilon : 0.0;
      for (const auto& w : info.privacy->workers) eps = std::max(eps, w.epsilon);
      row["eps"] = eps;
    }
    if (info.rollback_to) row["rollback_to"] = *info.rollback_to;
    for (const auto& a : info.applied) {
      staleness_[a.staleness]++;
      clients_[a.client_id]++;
    }
    for (const auto& d : info.dropped) dropped_[AggregatorMetrics::ReasonLabel(d.reason)]++;
    versions_.push_back(std::move(row));
  }
  nlohmann::json staleness = nlohmann::json::object();
  for (const auto& [tau, n] : staleness_) staleness[std::to_string(tau)] = n;
  return nlohmann::json{{"adapter", adapter_},
                        {"versions", versions_},
                        {"staleness", staleness},
                        {"clients", clients_},
                        {"dropped", dropped_}};
}

namespace {

namespace plot = observe::plot;

double Number(const nlohmann::json& v) { return v.is_number() ? v.get<double>() : 0.0; }

plot::Figure Chart(const char* id, const char* x_label, const char* y_label) {
  plot::Figure f;
  f.id = id;
  f.width = 440;
  f.height = 240;
  f.x.label = x_label;
  f.y.label = y_label;
  return f;
}

plot::Series Points(std::vector<std::pair<double, double>> points) {
  plot::Series s;
  s.points = std::move(points);
  s.color = "#2f6fb0";
  return s;
}

std::string Figure(const char* caption, const std::string& svg) {
  return fmt::format("<figure><figcaption>{}</figcaption>{}</figure>\n", caption, svg);
}

}  // namespace

std::string DashboardFigures(const nlohmann::json& summary) {
  const nlohmann::json& vs = summary["versions"];
  const double t0 = vs.empty() ? 0.0 : Number(vs[0]["t"]);
  std::vector<std::pair<double, double>> by_version, by_time, epsilon;
  std::vector<double> rollbacks;
  for (const auto& v : vs) {
    const double version = Number(v["v"]);
    if (v["acc"].is_number()) {
      by_version.emplace_back(version, v["acc"].get<double>());
      by_time.emplace_back((Number(v["t"]) - t0) / 1000, v["acc"].get<double>());
    }
    if (v["eps"].is_number()) epsilon.emplace_back(version, v["eps"].get<double>());
    if (!v["rollback_to"].is_null()) rollbacks.push_back(version);
  }
  std::string html;

  plot::Figure f = Chart("acc-version", "version", "accuracy");
  f.series.push_back(Points(by_version));
  f.x_marks = rollbacks;
  f.empty_message = "no evaluated version yet";
  html += Figure("Test accuracy by version (dashed: rollbacks)", plot::LineChart(f));

  f = Chart("acc-time", "seconds since version 0", "accuracy");
  f.series.push_back(Points(by_time));
  f.empty_message = "no evaluated version yet";
  html += Figure("Test accuracy over time", plot::LineChart(f));

  std::vector<std::pair<uint64_t, double>> taus;
  for (const auto& [tau, n] : summary["staleness"].items()) taus.emplace_back(std::stoull(tau), Number(n));
  std::sort(taus.begin(), taus.end());
  std::vector<std::string> labels;
  std::vector<double> counts;
  for (const auto& [tau, n] : taus) {
    labels.push_back(std::to_string(tau));
    counts.push_back(n);
  }
  html += Figure("Staleness of folded updates",
                 plot::BarChart(Chart("staleness", "staleness (versions)", "updates"), labels, counts));

  // Throughput: updates folded per second in about 15 windows over the run.
  std::vector<std::pair<double, double>> rate;
  if (vs.size() > 1) {
    const double span = (Number(vs.back()["t"]) - t0) / 1000;
    const double width = std::max(2.0, span / 15);
    std::vector<double> windows(static_cast<size_t>(std::floor(span / width)) + 1, 0.0);
    for (size_t i = 1; i < vs.size(); ++i) {
      const auto k = static_cast<size_t>(std::floor((Number(vs[i]["t"]) - t0) / 1000 / width));
      if (k < windows.size()) windows[k] += Number(vs[i]["folded"]);
    }
    for (size_t k = 0; k < windows.size(); ++k) rate.emplace_back((static_cast<double>(k) + 0.5) * width, windows[k] / width);
  }
  f = Chart("throughput", "seconds since version 0", "updates/s");
  f.y.from_zero = true;
  f.series.push_back(Points(rate));
  html += Figure("Throughput: updates folded per second", plot::LineChart(f));

  labels.clear();
  counts.clear();
  for (const auto& [client, n] : summary["clients"].items()) {  // nlohmann's objects iterate in key order
    labels.push_back(client.rfind("worker-", 0) == 0 ? "w" + client.substr(7) : client);
    counts.push_back(Number(n));
  }
  html += Figure("Updates folded, by client",
                 plot::BarChart(Chart("clients", "client", "updates folded"), labels, counts));

  f = Chart("epsilon", "version", "epsilon");
  f.y.from_zero = true;
  f.series.push_back(Points(epsilon));
  f.empty_message = "no differential privacy in this run";
  html += Figure("Privacy spent (epsilon) by version", plot::LineChart(f));
  return html;
}

std::string DashboardStatus(const nlohmann::json& summary) {
  const nlohmann::json& vs = summary["versions"];
  uint64_t folded = 0;
  const nlohmann::json* evaluated = nullptr;
  for (const auto& v : vs) {
    folded += static_cast<uint64_t>(Number(v["folded"]));
    if (v["acc"].is_number()) evaluated = &v;
  }
  std::string dropped;
  for (const auto& [reason, n] : summary["dropped"].items()) {
    dropped += fmt::format("{}{} {}", dropped.empty() ? "" : ", ", static_cast<uint64_t>(Number(n)), reason);
  }
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm utc{};
  gmtime_r(&now, &utc);
  return fmt::format("version {} · {} updates folded{}{} · updated {:02}:{:02}:{:02} UTC",
                     vs.empty() ? std::string("-") : std::to_string(static_cast<uint64_t>(Number(vs.back()["v"]))),
                     folded, dropped.empty() ? "" : " · dropped: " + dropped,
                     evaluated ? fmt::format(" · accuracy {:.4f}", (*evaluated)["acc"].get<double>()) : "",
                     utc.tm_hour, utc.tm_min, utc.tm_sec);
}

std::string DashboardPage(const Result<nlohmann::json>& summary) {
  const std::string adapter = summary.ok() ? (*summary)["adapter"].get<std::string>() : "…";
  const std::string status =
      summary.ok() ? DashboardStatus(*summary) : "cannot read the run: " + summary.status().ToString();
  const std::string figures = summary.ok() ? DashboardFigures(*summary) : "";
  return fmt::format(R"PAGE(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>fedlora dashboard</title>
<style>
  body {{ font: 14px system-ui, sans-serif; margin: 16px 24px; color: #222; }}
  h1 {{ font-size: 20px; margin: 0 0 4px; }}
  #status {{ color: #666; margin: 0 0 16px; }}
  .grid {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 16px; }}
  figure {{ margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: 8px 10px; }}
  figcaption {{ font-weight: 600; margin-bottom: 4px; }}
  svg {{ width: 100%; height: auto; display: block; }}
</style>
</head>
<body>
<h1>fedlora · <span id="adapter">{}</span></h1>
<p id="status">{}</p>
<div class="grid" id="figures">
{}</div>
<script>
"use strict";
// The charts are drawn on the server; every 3 s the page swaps in fresh ones.
async function refresh() {{
  try {{
    const r = await fetch("/api/dashboard/figures", {{cache: "no-store"}});
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    document.getElementById("adapter").textContent = body.adapter;
    document.getElementById("figures").innerHTML = body.figures;
    document.getElementById("status").textContent = body.status;
  }} catch (e) {{
    document.getElementById("status").textContent = `cannot read the run: ${{e.message}}`;
  }}
}}
setInterval(refresh, 3000);
</script>
</body>
</html>
)PAGE",
                     plot::Escape(adapter), plot::Escape(status), figures);
}

http::Handler DashboardHandler(std::shared_ptr<DashboardSource> source, std::function<std::string()> metrics,
                               std::function<std::optional<http::Response>(const http::Request&)> extra) {
  return [source = std::move(source), metrics = std::move(metrics),
          extra = std::move(extra)](const http::Request& req) -> http::Response {
    if (extra) {
      if (auto r = extra(req)) return std::move(*r);
    }
    if (req.method != "GET" && req.method != "HEAD") {
      return {405, "text/plain; charset=utf-8", fmt::format("{} is not served at {}\n", req.method, req.path)};
    }
    if (req.path == "/" || req.path == "/index.html") {
      return {200, "text/html; charset=utf-8", DashboardPage(source->Summary())};
    }
    if (req.path == "/api/dashboard" || req.path == "/api/dashboard/figures") {
      auto summary = source->Summary();
      if (!summary.ok()) return http::ErrorResponse(summary.status());
      if (req.path == "/api/dashboard") return {200, "application/json", summary->dump()};
      const nlohmann::json figures = {{"adapter", (*summary)["adapter"]},
                                      {"status", DashboardStatus(*summary)},
                                      {"figures", DashboardFigures(*summary)}};
      return {200, "application/json", figures.dump()};
    }
    if (req.path == "/metrics" && metrics) return {200, std::string(prometheus::kContentType), metrics()};
    return {404, "text/plain; charset=utf-8",
            fmt::format("no such page: {} (try /, /api/dashboard{})\n", req.path, metrics ? " or /metrics" : "")};
  };
}

}  // namespace fedlora::aggregator
