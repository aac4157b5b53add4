#include "ops/dashboard.h"

#include <fmt/format.h>

#include <algorithm>

#include "aggregator/metrics.h"
#include "storage/reader.h"
#include "ops/observe/prometheus.h"

namespace fedlora::ops {

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
    for (const auto& d : info.dropped) dropped_[aggregator::AggregatorMetrics::ReasonLabel(d.reason)]++;
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
    if (req.path == "/" || req.path == "/index.html") return {200, "text/html; charset=utf-8", DashboardPage()};
    if (req.path == "/api/dashboard") {
      auto summary = source->Summary();
      if (!summary.ok()) return http::ErrorResponse(summary.status());
      return {200, "application/json", summary->dump()};
    }
    if (req.path == "/metrics" && metrics) return {200, std::string(prometheus::kContentType), metrics()};
    return {404, "text/plain; charset=utf-8",
            fmt::format("no such page: {} (try /, /api/dashboard{})\n", req.path, metrics ? " or /metrics" : "")};
  };
}

const std::string& DashboardPage() {
  static const std::string page = R"PAGE(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>fedlora dashboard</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 16px 24px; color: #222; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  #status { color: #666; margin: 0 0 16px; }
  .grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 16px; }
  figure { margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: 8px 10px; }
  figcaption { font-weight: 600; margin-bottom: 4px; }
  svg { width: 100%; height: 240px; display: block; }
  svg text { font-size: 11px; fill: #555; }
  .axis { stroke: #aaa; stroke-width: 1; }
  .line { fill: none; stroke: #2f6fb0; stroke-width: 1.5; }
  .dot { fill: #2f6fb0; }
  .bar { fill: #5a9bd4; }
  .rollback { stroke: #c0392b; stroke-dasharray: 4 3; }
  .empty { font-size: 13px; fill: #999; }
</style>
</head>
<body>
<h1>fedlora · <span id="adapter">…</span></h1>
<p id="status">loading…</p>
<div class="grid">
  <figure><figcaption>Test accuracy by version (dashed: rollbacks)</figcaption><svg id="acc-version"></svg></figure>
  <figure><figcaption>Test accuracy over time</figcaption><svg id="acc-time"></svg></figure>
  <figure><figcaption>Staleness of folded updates</figcaption><svg id="staleness"></svg></figure>
  <figure><figcaption>Throughput: updates folded per second</figcaption><svg id="throughput"></svg></figure>
  <figure><figcaption>Updates folded, by client</figcaption><svg id="clients"></svg></figure>
  <figure><figcaption>Privacy spent (epsilon) by version</figcaption><svg id="epsilon"></svg></figure>
</div>
<script>
"use strict";
const NS = "http://www.w3.org/2000/svg";
const W = 440, H = 240, L = 48, R = 12, T = 10, B = 34;

function node(name, attrs, parent, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  parent.appendChild(e);
  return e;
}

function fmt(x) {
  if (Number.isInteger(x) || Math.abs(x) >= 1000) return x.toFixed(0);
  if (Math.abs(x) >= 10) return x.toFixed(1);
  return x.toFixed(Math.abs(x) >= 1 ? 2 : 3);
}

// Empties the plot, draws its axes and labels, and returns the data-to-pixel scales.
function frame(svg, xmin, xmax, ymin, ymax, xlabel, ylabel, categorical) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  if (xmax === xmin) xmax = xmin + 1;
  if (ymax === ymin) ymax = ymin + 1;
  const sx = x => L + (x - xmin) / (xmax - xmin) * (W - L - R);
  const sy = y => H - B - (y - ymin) / (ymax - ymin) * (H - T - B);
  node("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis"}, svg);
  node("line", {x1: L, y1: T, x2: L, y2: H - B, class: "axis"}, svg);
  if (!categorical) {
    node("text", {x: L, y: H - B + 14, "text-anchor": "start"}, svg, fmt(xmin));
    node("text", {x: W - R, y: H - B + 14, "text-anchor": "end"}, svg, fmt(xmax));
  }
  node("text", {x: L - 4, y: H - B, "text-anchor": "end"}, svg, fmt(ymin));
  node("text", {x: L - 4, y: T + 8, "text-anchor": "end"}, svg, fmt(ymax));
  node("text", {x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle"}, svg, xlabel);
  node("text", {x: 12, y: (T + H - B) / 2, "text-anchor": "middle",
                transform: `rotate(-90 12 ${(T + H - B) / 2})`}, svg, ylabel);
  return {sx, sy};
}

function empty(svg, message) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  node("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty"}, svg, message);
  svg.dataset.points = 0;
}

// points: [[x, y], ...]; opts.marks: x positions drawn as dashed vertical lines (rollbacks);
// opts.zero: the y axis starts at 0; opts.none: what to say without points.
function linePlot(svg, points, xlabel, ylabel, opts = {}) {
  if (points.length === 0) return empty(svg, opts.none || "no data yet");
  const xs = points.map(p => p[0]), ys = points.map(p => p[1]);
  const ymin = opts.zero ? 0 : Math.min(...ys);
  const {sx, sy} = frame(svg, Math.min(...xs), Math.max(...xs), ymin, Math.max(...ys), xlabel, ylabel);
  const marks = opts.marks;
  for (const m of marks || []) node("line", {x1: sx(m), y1: T, x2: sx(m), y2: H - B, class: "rollback"}, svg);
  node("path", {class: "line", d: points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("")}, svg);
  if (points.length <= 400) {
    for (const p of points) node("circle", {class: "dot", cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: 2.2}, svg);
  }
  svg.dataset.points = points.length;
}

// labels and values side by side; one bar each.
function barPlot(svg, labels, values, xlabel, ylabel) {
  if (labels.length === 0) return empty(svg, "no data yet");
  const {sy} = frame(svg, 0, labels.length, 0, Math.max(...values), xlabel, ylabel, true);
  const slot = (W - L - R) / labels.length;
  labels.forEach((label, i) => {
    const x = L + i * slot + slot * 0.1, y = sy(values[i]);
    node("rect", {class: "bar", x: x.toFixed(1), y: y.toFixed(1), width: (slot * 0.8).toFixed(1),
                  height: (H - B - y).toFixed(1)}, svg);
    if (labels.length <= 24) {
      node("text", {x: (x + slot * 0.4).toFixed(1), y: H - B + 14, "text-anchor": "middle"}, svg, label);
    }
  });
  svg.dataset.points = labels.length;
}

function render(d) {
  document.getElementById("adapter").textContent = d.adapter;
  const vs = d.versions;
  const t0 = vs.length ? vs[0].t : 0;
  const evaluated = vs.filter(v => v.acc !== null);
  const marks = vs.filter(v => v.rollback_to !== null).map(v => v.v);
  linePlot(document.getElementById("acc-version"), evaluated.map(v => [v.v, v.acc]), "version", "accuracy",
           {marks, none: "no evaluated version yet"});
  linePlot(document.getElementById("acc-time"), evaluated.map(v => [(v.t - t0) / 1000, v.acc]), "seconds since version 0",
           "accuracy", {none: "no evaluated version yet"});
  const taus = Object.keys(d.staleness).map(Number).sort((a, b) => a - b);
  barPlot(document.getElementById("staleness"), taus.map(String), taus.map(t => d.staleness[t]), "staleness (versions)",
          "updates");
  // Throughput: updates folded per second in about 15 windows over the run.
  const span = vs.length > 1 ? (vs[vs.length - 1].t - t0) / 1000 : 0;
  const width = Math.max(2, span / 15);
  const windows = new Map();
  for (const v of vs.slice(1)) {
    const k = Math.floor((v.t - t0) / 1000 / width);
    windows.set(k, (windows.get(k) || 0) + v.folded);
  }
  const bins = Math.floor(span / width) + 1;
  const rate = [];
  if (vs.length > 1) for (let k = 0; k < bins; ++k) rate.push([(k + 0.5) * width, (windows.get(k) || 0) / width]);
  linePlot(document.getElementById("throughput"), rate, "seconds since version 0", "updates/s", {zero: true});
  const clients = Object.keys(d.clients).sort();
  barPlot(document.getElementById("clients"), clients.map(c => c.replace(/^worker-/, "w")), clients.map(c => d.clients[c]),
          "client", "updates folded");
  linePlot(document.getElementById("epsilon"), vs.filter(v => v.eps !== null).map(v => [v.v, v.eps]), "version",
           "epsilon", {zero: true, none: "no differential privacy in this run"});
  const last = vs[vs.length - 1];
  const folded = vs.reduce((n, v) => n + v.folded, 0);
  const dropped = Object.entries(d.dropped).map(([r, n]) => `${n} ${r}`).join(", ");
  document.getElementById("status").textContent =
      `version ${last ? last.v : "-"} · ${folded} updates folded` + (dropped ? ` · dropped: ${dropped}` : "") +
      (evaluated.length ? ` · accuracy ${evaluated[evaluated.length - 1].acc.toFixed(4)}` : "") +
      ` · updated ${new Date().toLocaleTimeString()}`;
}

async function refresh() {
  try {
    const r = await fetch("/api/dashboard", {cache: "no-store"});
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    render(body);
  } catch (e) {
    document.getElementById("status").textContent = `cannot read the run: ${e.message}`;
  }
}
refresh();
setInterval(refresh, 3000);
</script>
</body>
</html>
)PAGE";
  return page;
}

}  // namespace fedlora::ops
