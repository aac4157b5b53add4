// `--http HOST:PORT` on `fedlora run`, `broker` and `aggregator`: the roles of this process
// served by aggregator/http_api.h (metrics, dashboard, rollback).
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

}  // namespace fedlora::ops
