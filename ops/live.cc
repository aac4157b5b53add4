#include "ops/live.h"

#include <unistd.h>

#include <fmt/format.h>

#include <chrono>
#include <fstream>

#include <nlohmann/json.hpp>

#include "aggregator/aggregator.h"
#include "aggregator/dashboard.h"
#include "broker/broker.h"
#include "storage/reader.h"

namespace fedlora::ops {
namespace {

const double kStartUnixSeconds =
    std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();

http::Response Json(int status, const nlohmann::json& body) { return {status, "application/json", body.dump() + "\n"}; }

}  // namespace

void WriteProcessMetrics(prometheus::Writer& w) {
  long pages = 0, resident = 0;
  std::ifstream statm("/proc/self/statm");
  if (statm >> pages >> resident) {
    w.Gauge("fedlora_process_resident_memory_bytes", "Resident set size of this process",
            static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)));
  }
  w.Gauge("fedlora_process_start_time_seconds", "Unix time this process started", kStartUnixSeconds);
}

Result<std::unique_ptr<http::Server>> ServeLive(const std::string& address, LiveRoles roles) {
  auto metrics = [roles] {
    prometheus::Writer w;
    if (roles.broker != nullptr) roles.broker->WriteMetrics(w);
    if (roles.aggregator != nullptr) roles.aggregator->WriteMetrics(w);
    WriteProcessMetrics(w);
    return w.text();
  };
  // POST /api/rollback?to=V: the aggregator commits the rollback between two log records.
  auto rollback = [roles](const http::Request& req) -> std::optional<http::Response> {
    if (req.path != "/api/rollback") return std::nullopt;
    if (roles.aggregator == nullptr) return Json(404, {{"error", "no aggregator runs in this process"}});
    if (req.method != "POST") return Json(405, {{"error", "rollback is a POST"}});
    if (!req.from_loopback) {
      return Json(403, {{"error", "rollback is accepted from this machine only (a loopback address)"}});
    }
    auto to_text = req.params.find("to");
    if (to_text == req.params.end() || to_text->second.empty()) {
      return Json(400, {{"error", "give the version to roll back to: /api/rollback?to=VERSION (or a tag)"}});
    }
    Result<uint64_t> to = InvalidArgument("no store to resolve a tag in");
    if (roles.store) {
      to = storage::ResolveVersion(*roles.store, roles.adapter, to_text->second);
    } else {
      char* end = nullptr;
      const unsigned long long v = std::strtoull(to_text->second.c_str(), &end, 10);
      if (*end == '\0') to = static_cast<uint64_t>(v);
    }
    if (!to.ok()) return http::ErrorResponse(to.status());
    // Less than the 30 s `fedlora rollback` waits for the answer.
    auto done = roles.aggregator->Rollback(*to, std::chrono::seconds(20));
    if (!done.ok()) return http::ErrorResponse(done.status());
    return Json(200, {{"adapter", roles.adapter},
                      {"version", done->version},
                      {"rollback_to", *to},
                      {"content_hash", done->content_hash},
                      {"consumed_seq", done->consumed_seq}});
  };
  if (roles.store) {
    auto source = std::make_shared<aggregator::DashboardSource>(*roles.store, roles.adapter);
    return http::Server::Start(address, aggregator::DashboardHandler(std::move(source), metrics, rollback));
  }
  return http::Server::Start(address, [metrics, rollback](const http::Request& req) -> http::Response {
    if (auto r = rollback(req)) return std::move(*r);
    if (req.path == "/metrics") return {200, std::string(prometheus::kContentType), metrics()};
    return {404, "text/plain; charset=utf-8", fmt::format("no such page: {} (this process serves /metrics)\n", req.path)};
  });
}

}  // namespace fedlora::ops
