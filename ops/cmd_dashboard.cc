// `fedlora dashboard` (the web dashboard of any store, live or finished) and `fedlora rollback`
// (a new version holding an earlier version's tensors: through a running aggregator's --http
// endpoint, or straight into the store when no aggregator holds it).
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "aggregator/dashboard.h"
#include "aggregator/rollback.h"
#include "ops/commands.h"
#include "ops/flags.h"
#include "ops/live.h"

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
                                        prometheus::WriteProcessMetrics(w);
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
    auto done = f->aggregator.empty() ? aggregator::RollbackStoredAdapter(f->store, f->adapter, f->to)
                                      : aggregator::RollbackThroughAggregator(f->aggregator, f->to);
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
