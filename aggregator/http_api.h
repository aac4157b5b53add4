// The HTTP endpoint of a running federation (`--http HOST:PORT` on `fedlora run`, `broker` and
// `aggregator`): GET /metrics in Prometheus text for whichever roles run in the process; where
// the adapter store is known, the dashboard (/, /api/dashboard, /api/dashboard/figures); where
// an aggregator runs, its rollback control (POST /api/rollback?to=VERSION|TAG, from loopback
// peers only: it changes the live adapter). docs/protocol.md lists the answers.
// Thread safety: requests are served on the server's threads, concurrently; `metrics` must be
// callable from any thread (the roles' metrics are locked), rollbacks queue to the aggregator.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "ops/observe/http.h"
#include "ops/observe/prometheus.h"
#include "storage/layout.h"

namespace fedlora::aggregator {

class Aggregator;

struct HttpApi {
  std::function<void(prometheus::Writer&)> metrics;  // every role's families (the process gauges are added)
  Aggregator* aggregator = nullptr;                  // enables POST /api/rollback
  std::optional<storage::StoreLayout> store;         // enables the dashboard (and tags in rollback requests)
  std::string adapter = "default";
};

http::Handler ApiHandler(HttpApi api);

}  // namespace fedlora::aggregator
