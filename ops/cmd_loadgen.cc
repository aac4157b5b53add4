// `fedlora loadgen`: many lightweight publishers of pre-made updates (no model, no training)
// against a running broker, for load, fault and scale tests (worker/loadgen.h); this file
// parses the flags and prints the summary.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "ops/commands.h"
#include "ops/flags.h"
#include "ops/observe/percentile.h"
#include "ops/progress.h"
#include "worker/loadgen.h"

namespace fedlora::ops {
namespace {

using observe::Percentile;

struct LoadgenFlags {
  worker::LoadOptions options;
  bool json = false;
  ClientKeyFlags keys;
};

void RunLoadgen(const LoadgenFlags& f) {
  StatusLine status;
  Result<worker::LoadReport> report = Unavailable("not run");
  Status overall = RunUntilSignalled([&](std::stop_token stop) {
    report = worker::GenerateLoad(f.options, stop, [&status](const worker::LoadProgress& p) {
      status.Update(fmt::format("loadgen: {} acknowledged ({:.0f}/s), {} rejected, {} clients on {} threads", p.acked,
                                p.elapsed_s > 0 ? static_cast<double>(p.acked) / p.elapsed_s : 0.0, p.rejected,
                                p.clients, p.threads));
    });
    return Status::Ok();
  });
  status.Clear();
  if (!overall.ok()) Fail("loadgen", overall);
  if (!report.ok()) Fail("loadgen", report.status(), report.status().code() == Code::kUnavailable ? 2 : 1);
  const worker::LoadReport& r = *report;
  const double rate = r.seconds > 0 ? static_cast<double>(r.acked) / r.seconds : 0;
  if (f.json) {
    nlohmann::json j = {{"clients", r.clients},       {"threads", r.threads},
                        {"acked", r.acked},           {"duplicates", r.duplicates},
                        {"rejected", r.rejected},     {"bytes", r.bytes},
                        {"seconds", r.seconds},       {"updates_per_s", rate},
                        {"retry_later", r.retry_later}, {"timeouts", r.timeouts},
                        {"latency_ms_p50", Percentile(r.latencies_ms, 0.5)},
                        {"latency_ms_p99", Percentile(r.latencies_ms, 0.99)}, {"final", r.final}};
    fmt::print("{}\n", j.dump(2));
  } else {
    fmt::print("loadgen: {} updates acknowledged ({} duplicates, {} rejected, {} retry-later waits, {} timeouts) from "
               "{} clients in {:.1f} s: {:.1f} updates/s, {}/s; ack latency p50 {:.1f} ms, p99 {:.1f} ms{}\n",
               r.acked, r.duplicates, r.rejected, r.retry_later, r.timeouts, r.clients, r.seconds, rate,
               HumanBytes(r.seconds > 0 ? static_cast<double>(r.bytes) / r.seconds : 0),
               Percentile(r.latencies_ms, 0.5), Percentile(r.latencies_ms, 0.99),
               r.final ? " (the adapter became final)" : "");
  }
}

}  // namespace

void RegisterLoadgen(CLI::App& app) {
  auto f = std::make_shared<LoadgenFlags>();
  worker::LoadOptions& o = f->options;
  auto* cmd = app.add_subcommand(
      "loadgen",
      "Publish pre-made random updates from many lightweight clients (no model, no training) to a running broker, "
      "each until acknowledged: for load, fault and scale tests. Dense deltas of the adapter's spec; methods that "
      "refuse some factors (ffa, fedsa, lora-a2, as-lora) will drop them");
  cmd->add_option("--broker", o.broker, "The broker's worker endpoint")->capture_default_str();
  cmd->add_option("--adapter", o.adapter, "Adapter id")->capture_default_str();
  cmd->add_option("--clients", o.clients, "Concurrent publishers, each with its own connection")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  cmd->add_option("--threads", o.threads,
                  "Threads that drive the clients, each an equal share (0: as many as the hardware runs at once, at "
                  "most one per client)")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  cmd->add_option("--updates", o.updates, "Updates per client (0: until --duration or Ctrl-C)")->capture_default_str();
  cmd->add_option("--duration", o.duration_s, "Stop after this many seconds (0: no limit)")->capture_default_str();
  cmd->add_option("--interval-ms", o.interval_ms, "Pause of each client between its updates")->capture_default_str();
  cmd->add_option("--timeout-ms", o.timeout_ms, "Resend an unanswered update after this long (on a fresh socket)")
      ->check(CLI::Range(10, 600000))
      ->capture_default_str();
  cmd->add_option("--scale", o.scale, "Standard deviation of the random delta values")->capture_default_str();
  cmd->add_option("--client-prefix", o.prefix, "Client ids are <prefix>-<index>; update ids <client>-<n>")
      ->capture_default_str();
  cmd->add_option("--seed", o.seed, "Seed of the random deltas")->capture_default_str();
  cmd->add_option("--ack-log", o.ack_log,
                  "Append one JSON line {client_id, update_id, seq, duplicate} per acknowledgement, as it arrives");
  cmd->add_flag("--json", f->json, "Print the summary as JSON");
  AddClientKeyFlags(cmd, f->keys);
  cmd->callback([f] {
    SetupLogging(false);
    auto keys = security::LoadClientKeys(f->keys.broker_key, f->keys.key);
    if (!keys.ok()) Fail("loadgen", keys.status(), 2);
    f->options.keys = std::move(*keys);
    RunLoadgen(*f);
  });
}

}  // namespace fedlora::ops
