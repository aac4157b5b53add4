#include "ops/live.h"

#include "aggregator/aggregator.h"
#include "aggregator/http_api.h"
#include "broker/broker.h"

namespace fedlora::ops {

Result<std::unique_ptr<http::Server>> ServeLive(const std::string& address, LiveRoles roles) {
  aggregator::HttpApi api;
  api.metrics = [broker = roles.broker, aggregator = roles.aggregator](prometheus::Writer& w) {
    if (broker != nullptr) broker->WriteMetrics(w);
    if (aggregator != nullptr) aggregator->WriteMetrics(w);
  };
  api.aggregator = roles.aggregator;
  api.store = roles.store;
  api.adapter = roles.adapter;
  return http::Server::Start(address, aggregator::ApiHandler(std::move(api)));
}

}  // namespace fedlora::ops
