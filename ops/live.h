// The HTTP endpoint of a running federation (`--http HOST:PORT` on `fedlora run`, `broker` and
// `aggregator`): /metrics in Prometheus text for whichever roles run in this process, and, where
// the adapter store is known, the dashboard (/ and /api/dashboard) and the aggregator's rollback
// control (POST /api/rollback?to=VERSION|TAG, from loopback peers only: it changes the live
// adapter).
// Thread safety: requests are served on the server's threads, concurrently; the roles' metrics
// are locked, the dashboard source has its own lock and rollbacks queue to the aggregator.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "ops/flags.h"
#include "ops/observe/http.h"
#include "ops/observe/prometheus.h"

namespace fedlora::broker {
class Broker;
}
namespace fedlora::aggregator {
class Aggregator;
}

namespace fedlora::ops {

struct LiveRoles {
  const broker::Broker* broker = nullptr;
  aggregator::Aggregator* aggregator = nullptr;
  std::optional<StoreLayout> store;  // enables the dashboard (and tags in rollback requests)
  std::string adapter = "default";
};

// Errors: http::Server::Start's.
Result<std::unique_ptr<http::Server>> ServeLive(const std::string& address, LiveRoles roles);

// Process-wide gauges every /metrics carries: resident memory and start time.
void WriteProcessMetrics(prometheus::Writer& w);

}  // namespace fedlora::ops
