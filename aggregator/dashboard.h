// The web dashboard of a stored adapter: one HTML page with six charts (accuracy by version and
// over time, the staleness histogram, throughput, each client's contributions, the privacy
// spent), drawn on the server by the one plotter (ops/observe/plot.h) from a summary of the
// stored versions. The page swaps in freshly drawn charts every 3 s from /api/dashboard/figures;
// /api/dashboard gives the summary as JSON. Served by `fedlora dashboard` for any store (live
// or finished) and by `--http` on `fedlora run` and `fedlora aggregator`.
// Version records never change once committed, so each request reads only the versions
// committed since the previous one.
// Thread safety: DashboardSource is internally locked; the handler may run on any thread.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "ops/observe/http.h"
#include "schema/status.h"
#include "storage/layout.h"

namespace fedlora::aggregator {

class DashboardSource {
 public:
  DashboardSource(storage::StoreLayout store, std::string adapter)
      : store_(std::move(store)), adapter_(std::move(adapter)) {}

  // {"adapter", "versions": [{"v", "t" (unix ms), "folded", "dropped", "staleness", "acc", "eps",
  // "rollback_to"}], "staleness": {"<tau>": n}, "clients": {"<id>": n}, "dropped": {"<reason>": n}}.
  // Errors: kNotFound (no such store or adapter), store errors.
  Result<nlohmann::json> Summary();

 private:
  const storage::StoreLayout store_;
  const std::string adapter_;
  std::mutex mu_;
  nlohmann::json versions_ = nlohmann::json::array();
  std::map<uint32_t, uint64_t> staleness_;
  std::map<std::string, uint64_t> clients_;
  std::map<std::string, uint64_t> dropped_;
};

// The six charts of a summary, as HTML <figure> elements; each <svg> has the chart's id
// ("acc-version", "acc-time", "staleness", "throughput", "clients", "epsilon") and data-points.
std::string DashboardFigures(const nlohmann::json& summary);
// "version 12 · 70 updates folded · dropped: 3 stale · accuracy 0.8123 · updated 12:00:03 UTC".
std::string DashboardStatus(const nlohmann::json& summary);
// The whole page for a summary (or, when reading it failed, the reason in its place).
std::string DashboardPage(const Result<nlohmann::json>& summary);

// Serves "/" (the page), "/api/dashboard", "/api/dashboard/figures" and, when `metrics` is set,
// "/metrics"; `extra` (when set) is asked first and answers nullopt for paths it does not serve.
http::Handler DashboardHandler(std::shared_ptr<DashboardSource> source, std::function<std::string()> metrics,
                               std::function<std::optional<http::Response>(const http::Request&)> extra = {});

}  // namespace fedlora::aggregator
