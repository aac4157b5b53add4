#include "aggregator/http_api.h"

#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>

#include "aggregator/aggregator.h"
#include "aggregator/dashboard.h"
#include "storage/reader.h"

namespace fedlora::aggregator {
namespace {

http::Response Json(int status, const nlohmann::json& body) { return {status, "application/json", body.dump() + "\n"}; }

}  // namespace

http::Handler ApiHandler(HttpApi api) {
  auto metrics = [collect = api.metrics] {
    prometheus::Writer w;
    if (collect) collect(w);
    prometheus::WriteProcessMetrics(w);
    return w.text();
  };
  // POST /api/rollback?to=V: the aggregator commits the rollback between two log records.
  auto rollback = [api](const http::Request& req) -> std::optional<http::Response> {
    if (req.path != "/api/rollback") return std::nullopt;
    if (api.aggregator == nullptr) return Json(404, {{"error", "no aggregator runs in this process"}});
    if (req.method != "POST") return Json(405, {{"error", "rollback is a POST"}});
    if (!req.from_loopback) {
      return Json(403, {{"error", "rollback is accepted from this machine only (a loopback address)"}});
    }
    auto to_text = req.params.find("to");
    if (to_text == req.params.end() || to_text->second.empty()) {
      return Json(400, {{"error", "give the version to roll back to: /api/rollback?to=VERSION (or a tag)"}});
    }
    Result<uint64_t> to = InvalidArgument("no store to resolve a tag in");
    if (api.store) {
      to = storage::ResolveVersion(*api.store, api.adapter, to_text->second);
    } else {
      char* end = nullptr;
      const unsigned long long v = std::strtoull(to_text->second.c_str(), &end, 10);
      if (*end == '\0') to = static_cast<uint64_t>(v);
    }
    if (!to.ok()) return http::ErrorResponse(to.status());
    // Less than the 30 s `fedlora rollback` waits for the answer.
    auto done = api.aggregator->Rollback(*to, std::chrono::seconds(20));
    if (!done.ok()) return http::ErrorResponse(done.status());
    return Json(200, {{"adapter", api.adapter},
                      {"version", done->version},
                      {"rollback_to", *to},
                      {"content_hash", done->content_hash},
                      {"consumed_seq", done->consumed_seq}});
  };
  if (api.store) {
    auto source = std::make_shared<DashboardSource>(*api.store, api.adapter);
    return DashboardHandler(std::move(source), metrics, rollback);
  }
  return [metrics, rollback](const http::Request& req) -> http::Response {
    if (auto r = rollback(req)) return std::move(*r);
    if (req.path == "/metrics") return {200, std::string(prometheus::kContentType), metrics()};
    return {404, "text/plain; charset=utf-8", fmt::format("no such page: {} (this process serves /metrics)\n", req.path)};
  };
}

}  // namespace fedlora::aggregator
