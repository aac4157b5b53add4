// `fedlora dashboard` (the web dashboard of any store, live or finished) and `fedlora rollback`
// (a new version holding an earlier version's tensors: through a running aggregator's --http
// endpoint, or straight into the store when no aggregator holds it).
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "aggregator/commit.h"
#include "aggregator/dashboard.h"
#include "aggregator/rollback.h"
#include "ops/commands.h"
#include "ops/flags.h"
#include "ops/live.h"
#include "storage/reader.h"

namespace fedlora::ops {

void RegisterDashboard(CLI::App& app) {
  struct Flags {
    StoreLayout store;
    std::string adapter = "default";
    std::string http = "127.0.0.1:8080";
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand(
      "dashboard",
      "Serve the web dashboard of a stored run (live or finished): accuracy by version and over time, the staleness "
      "histogram, throughput, each client's contributions and the privacy spent. Open the printed address in a "
      "browser; the page refreshes every 3 s. `fedlora run --http` and `fedlora aggregator --http` serve the same "
      "page next to /metrics");
  cmd->add_option("--store", f->store.dir, "Store directory")->capture_default_str();
  cmd->add_option("--adapter", f->adapter, "Adapter id")->capture_default_str();
  cmd->add_option("--http", f->http, "Address to serve on (HOST:PORT; port 0 picks a free one)")->capture_default_str();
  cmd->callback([f] {
    SetupLogging(false);
    auto source = std::make_shared<aggregator::DashboardSource>(f->store, f->adapter);
    if (auto first = source->Summary(); !first.ok()) Fail("dashboard", first.status());
    auto server = http::Server::Start(f->http, aggregator::DashboardHandler(source, [] {
                                        prometheus::Writer w;
                                        WriteProcessMetrics(w);
                                        return w.text();
                                      }));
    if (!server.ok()) Fail("dashboard", server.status());
    fmt::print("dashboard of '{}' in {}: http://{}/ (Ctrl-C to stop)\n", f->adapter, f->store.dir,
               (*server)->address());
    std::fflush(stdout);
    Status s = RunUntilSignalled([](std::stop_token stop) {
      while (!stop.stop_requested()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      return Status::Ok();
    });
    if (!s.ok()) Fail("dashboard", s);
  });
}

namespace {

struct RollbackOutcome {
  uint64_t version = 0;
  uint64_t to = 0;
  std::string content_hash;
};

// Straight into the store: only when no aggregator holds it.
Result<RollbackOutcome> RollbackStore(const StoreLayout& layout, const std::string& adapter,
                                      const std::string& to_text) {
  auto stored = storage::StoredAdapter::Open(layout, adapter, /*writable=*/true);
  if (!stored.ok()) {
    if (stored.status().message().find("lock") != std::string::npos) {
      return FailedPrecondition(fmt::format(
          "{}: an aggregator holds the store; roll the live adapter back through it instead: fedlora rollback --to "
          "{} --aggregator HOST:PORT (its --http address)",
          layout.adapters(), to_text));
    }
    return stored.status();
  }
  ASSIGN_OR_RETURN(uint64_t to, storage::ResolveVersion(layout, adapter, to_text));
  const uint64_t current = stored->cursor().version;
  if (to > current) {
    return NotFound(fmt::format("adapter '{}' has versions 0 to {}; there is no version {} to roll back to", adapter,
                                current, to));
  }
  if (to == current) {
    return InvalidArgument(fmt::format("'{}' is at version {} already: roll back to an earlier version", adapter, to));
  }
  ASSIGN_OR_RETURN(codec::VersionInfo latest, stored->Record(current));
  auto options = RecordedEngineOptions(latest);
  if (options.status().code() == Code::kNotFound) {
    return FailedPrecondition(fmt::format("version {} recorded no settings (a store older than the record): roll back "
                                          "through a running aggregator instead",
                                          current));
  }
  if (!options.ok()) return options.status();
  aggregator::VersionCache bases(stored->store(), adapter);
  ASSIGN_OR_RETURN(aggregator::PreparedRollback prepared,
                   aggregator::PrepareRollback(stored->store(), *options, adapter, to,
                                               [&bases](uint64_t v) { return bases.Get(v); }));
  prepared.info.commit_unix_ms = aggregator::NowUnixMs();
  RETURN_IF_ERROR(aggregator::CommitVersion(stored->store(), *options, prepared.engine.get(), prepared.info,
                                            prepared.engine->spec(), prepared.engine->state(), false)
                      .status());
  return RollbackOutcome{prepared.info.version, to, prepared.info.content_hash};
}

Result<RollbackOutcome> RollbackLive(const std::string& address, const std::string& to_text) {
  ASSIGN_OR_RETURN(http::Response r, http::Fetch(address, "POST", "/api/rollback?to=" + http::UrlEncode(to_text)));
  const auto body = nlohmann::json::parse(r.body, nullptr, false);
  if (body.is_discarded()) return Unavailable(fmt::format("{} answered {} with no JSON body", address, r.status));
  if (r.status != 200) {
    const std::string message = body.value("error", r.body);
    switch (r.status) {
      case 400: return InvalidArgument(message);
      case 403: return PermissionDenied(message);
      case 404: return NotFound(message);
      case 409: return FailedPrecondition(message);
      default: return Unavailable(message);
    }
  }
  return RollbackOutcome{body.at("version").get<uint64_t>(), body.at("rollback_to").get<uint64_t>(),
                         body.at("content_hash").get<std::string>()};
}

}  // namespace

void RegisterRollback(CLI::App& app) {
  struct Flags {
    StoreLayout store;
    std::string adapter = "default";
    std::string to;
    std::string aggregator;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand(
      "rollback",
      "Roll an adapter back to an earlier version: the next version holds that version's tensors (history is never "
      "rewritten). Updates trained from the rolled-back versions are dropped when they arrive; the privacy ledger "
      "carries forward; Adam's moments restart from zero. A live adapter is rolled back through its aggregator "
      "(--aggregator, the address of its --http); a store no aggregator holds, directly");
  cmd->add_option("--to", f->to, "The version to restore: a number or a tag")->required();
  cmd->add_option("--aggregator", f->aggregator, "A running aggregator's --http address (HOST:PORT)");
  cmd->add_option("--store", f->store.dir, "Store directory (without --aggregator)")->capture_default_str();
  cmd->add_option("--adapter", f->adapter, "Adapter id")->capture_default_str();
  cmd->add_flag("--json", f->json, "Print the result as JSON");
  cmd->callback([f] {
    SetupLogging(false);
    auto done = f->aggregator.empty() ? RollbackStore(f->store, f->adapter, f->to)
                                      : RollbackLive(f->aggregator, f->to);
    if (!done.ok()) {
      const Code c = done.status().code();
      Fail("rollback", done.status(), c == Code::kInvalidArgument || c == Code::kNotFound ? 2 : 1);
    }
    if (f->json) {
      fmt::print("{}\n", nlohmann::json{{"adapter", f->adapter},
                                        {"version", done->version},
                                        {"rollback_to", done->to},
                                        {"content_hash", done->content_hash}}
                             .dump());
      return;
    }
    fmt::print("rollback: version {} of '{}' restores version {} (content hash {})\n", done->version, f->adapter,
               done->to, done->content_hash);
    fmt::print("  updates trained from versions {} to {} will be dropped; Adam's moments restart from zero\n",
               done->to + 1, done->version - 1);
  });
}

}  // namespace fedlora::ops
