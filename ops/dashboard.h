// The web dashboard of a run: one HTML page with four plots (accuracy by version and over time,
// the staleness histogram, throughput, and each client's contributions) drawn in the browser
// from /api/dashboard, a JSON summary of the stored versions. Served by `fedlora dashboard`
// for any store (live or finished) and by `--http` on `fedlora run` and `fedlora aggregator`.
// Version records never change once committed, so each request reads only the versions
// committed since the previous one.
// Thread safety: DashboardSource is internally locked; the handler may run on any thread.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ops/flags.h"
#include "ops/observe/http.h"
#include "schema/status.h"

namespace fedlora::ops {

class DashboardSource {
 public:
  DashboardSource(StoreLayout store, std::string adapter) : store_(std::move(store)), adapter_(std::move(adapter)) {}

  // {"adapter", "versions": [{"v", "t" (unix ms), "folded", "dropped", "staleness", "acc", "eps",
  // "rollback_to"}], "staleness": {"<tau>": n}, "clients": {"<id>": n}, "dropped": {"<reason>": n}}.
  // Errors: kNotFound (no such store or adapter), store errors.
  Result<nlohmann::json> Summary();

 private:
  const StoreLayout store_;
  const std::string adapter_;
  std::mutex mu_;
  nlohmann::json versions_ = nlohmann::json::array();
  std::map<uint32_t, uint64_t> staleness_;
  std::map<std::string, uint64_t> clients_;
  std::map<std::string, uint64_t> dropped_;
};

// The page itself (self-contained: no scripts or styles from elsewhere).
const std::string& DashboardPage();

// Serves "/" (the page), "/api/dashboard" and, when `metrics` is set, "/metrics"; `extra` (when
// set) is asked first and answers nullopt for paths it does not serve.
http::Handler DashboardHandler(std::shared_ptr<DashboardSource> source, std::function<std::string()> metrics,
                               std::function<std::optional<http::Response>(const http::Request&)> extra = {});

}  // namespace fedlora::ops
