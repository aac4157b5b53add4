// `fedlora loadgen`: many lightweight publishers of pre-made updates (no model, no training)
// against a running broker, for load, fault and scale tests. Each client fetches the current
// global to learn the adapter's spec and version, then publishes small random dense deltas
// trained "from" the latest version it knows, each until acknowledged (same update id on every
// retry, with the Lazy Pirate reconnects of worker/broker_client.h). With --ack-log every
// acknowledgement is appended to a file as it arrives, which is what a fault test checks the
// log against.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "ops/commands.h"
#include "ops/flags.h"
#include "ops/progress.h"
#include "worker/broker_client.h"

namespace fedlora::ops {
namespace {

using Clock = std::chrono::steady_clock;

struct LoadgenFlags {
  std::string broker = "tcp://127.0.0.1:5555";
  std::string adapter = "default";
  std::string prefix = "load";
  uint32_t clients = 4;
  uint64_t updates = 100;  // per client; 0: until --duration or a signal
  double duration_s = 0;
  uint32_t interval_ms = 0;
  uint32_t timeout_ms = 1000;
  float scale = 1e-3f;
  uint64_t seed = 1;
  std::string acked;
  bool json = false;
  ClientKeyFlags keys;
  security::ClientKeys loaded_keys;
};

struct Totals {
  std::atomic<uint64_t> acked{0};
  std::atomic<uint64_t> duplicates{0};
  std::atomic<uint64_t> rejected{0};
  std::atomic<uint64_t> bytes{0};
  std::atomic<uint64_t> retry_later{0};  // "retry later" errors (saturated ingest, rate limit) waited out
  std::atomic<bool> final{false};
  std::mutex mu;                    // guards latencies and the acked file
  std::vector<double> latencies_ms;
  std::ofstream acked_file;
};

// One client: learns the spec, then publishes until its quota, stop, or a final adapter.
Status RunClient(const LoadgenFlags& f, uint32_t index, zmq::context_t& ctx, Totals& totals, std::stop_token stop) {
  worker::BrokerClientOptions o;
  o.broker = f.broker;
  o.announce = "";
  o.adapter_id = f.adapter;
  o.client_id = fmt::format("{}-{}", f.prefix, index);
  o.request_timeout = std::chrono::milliseconds(f.timeout_ms);
  o.max_backoff = std::chrono::milliseconds(std::max<uint32_t>(f.timeout_ms, 500));
  o.keys = f.loaded_keys;
  worker::BrokerClient client(ctx, o);
  // Counted when the client ends, however it ends.
  struct CountRetries {
    worker::BrokerClient& c;
    Totals& t;
    ~CountRetries() { t.retry_later += c.retry_laters(); }
  } count_retries{client, totals};
  ASSIGN_OR_RETURN(auto global, client.FetchUntilAvailable(stop));
  if (!global) return Status::Ok();
  std::mt19937_64 rng(f.seed * 1000003u + index);
  std::normal_distribution<float> normal(0.0f, f.scale);
  for (uint64_t n = 0; (f.updates == 0 || n < f.updates) && !stop.stop_requested() && !totals.final; ++n) {
    if (global->info.final) {
      totals.final = true;
      break;
    }
    AdapterState delta;
    for (const auto& t : global->spec.tensors) {
      DenseTensor d{t.name, t.shape, std::vector<float>(t.numel())};
      for (float& v : d.values) v = normal(rng);
      delta.tensors.push_back(std::move(d));
    }
    codec::UpdateHeader h;
    h.update_id = fmt::format("{}-{}", o.client_id, n);
    h.client_id = o.client_id;
    h.adapter_id = f.adapter;
    h.base_version = global->info.version;
    h.num_samples = 32;
    h.local_steps = 1;
    const codec::Bytes update = codec::BuildUpdate(h, delta);
    const auto t0 = Clock::now();
    const worker::PublishOutcome out = client.PublishUntilAcked(stop, h.update_id, update);
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    switch (out.kind) {
      case worker::PublishOutcome::Kind::kAcked: {
        totals.acked++;
        if (out.duplicate) totals.duplicates++;
        totals.bytes += update.size();
        std::lock_guard lock(totals.mu);
        totals.latencies_ms.push_back(ms);
        if (totals.acked_file.is_open()) {
          totals.acked_file << nlohmann::json({{"client_id", o.client_id},
                                               {"update_id", h.update_id},
                                               {"seq", out.seq},
                                               {"duplicate", out.duplicate}})
                                   .dump()
                            << '\n';
          totals.acked_file.flush();
        }
        break;
      }
      case worker::PublishOutcome::Kind::kRejected:
        totals.rejected++;
        break;
      case worker::PublishOutcome::Kind::kFinal:
        totals.final = true;
        break;
      case worker::PublishOutcome::Kind::kStopped:
        break;
    }
    if (f.interval_ms > 0) worker::WaitFor(stop, std::chrono::milliseconds(f.interval_ms));
    ASSIGN_OR_RETURN(auto newer, client.Fetch(stop, static_cast<int64_t>(global->info.version)));
    if (newer) global = std::move(newer);
  }
  return Status::Ok();
}

// Nearest-rank percentile, p in (0, 1].
double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto rank = static_cast<size_t>(std::ceil(p * static_cast<double>(v.size())));
  return v[std::clamp<size_t>(rank, 1, v.size()) - 1];
}

void RunLoadgen(const LoadgenFlags& f) {
  Totals totals;
  if (!f.acked.empty()) {
    totals.acked_file.open(f.acked, std::ios::app);
    if (!totals.acked_file) Fail("loadgen", Unavailable(fmt::format("cannot open --ack-log '{}'", f.acked)), 2);
  }
  zmq::context_t ctx;
  const auto start = Clock::now();
  std::vector<Status> results(f.clients);
  StatusLine status;
  Status overall = RunUntilSignalled([&](std::stop_token stop) {
    std::stop_source inner;
    std::stop_callback forward(stop, [&] { inner.request_stop(); });
    {
      std::vector<std::jthread> threads;
      for (uint32_t i = 0; i < f.clients; ++i) {
        threads.emplace_back([&, i] { results[i] = RunClient(f, i, ctx, totals, inner.get_token()); });
      }
      const uint64_t target = f.updates * f.clients;
      while (true) {
        const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
        const uint64_t done = totals.acked + totals.rejected;
        if ((f.updates > 0 && done >= target) || totals.final || inner.stop_requested()) break;
        if (f.duration_s > 0 && elapsed >= f.duration_s) {
          inner.request_stop();
          break;
        }
        status.Update(fmt::format("loadgen: {} acknowledged ({:.0f}/s), {} rejected, {} clients", totals.acked.load(),
                                  elapsed > 0 ? static_cast<double>(totals.acked) / elapsed : 0.0,
                                  totals.rejected.load(), f.clients));
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }  // joins every client
    return Status::Ok();
  });
  status.Clear();
  if (!overall.ok()) Fail("loadgen", overall);
  for (const Status& s : results) {
    if (!s.ok()) Fail("loadgen", s);
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> lat;
  {
    std::lock_guard lock(totals.mu);
    lat = totals.latencies_ms;
  }
  const double rate = seconds > 0 ? static_cast<double>(totals.acked) / seconds : 0;
  if (f.json) {
    nlohmann::json j = {{"clients", f.clients},        {"acked", totals.acked.load()},
                        {"duplicates", totals.duplicates.load()}, {"rejected", totals.rejected.load()},
                        {"bytes", totals.bytes.load()},  {"seconds", seconds},
                        {"updates_per_s", rate},         {"retry_later", totals.retry_later.load()},
                        {"latency_ms_p50", Percentile(lat, 0.5)},
                        {"latency_ms_p99", Percentile(lat, 0.99)}, {"final", totals.final.load()}};
    fmt::print("{}\n", j.dump(2));
  } else {
    fmt::print("loadgen: {} updates acknowledged ({} duplicates, {} rejected, {} retry-later waits) from {} clients in "
               "{:.1f} s: {:.1f} updates/s, {}/s; ack latency p50 {:.1f} ms, p99 {:.1f} ms{}\n",
               totals.acked.load(), totals.duplicates.load(), totals.rejected.load(), totals.retry_later.load(),
               f.clients, seconds, rate,
               HumanBytes(seconds > 0 ? static_cast<double>(totals.bytes) / seconds : 0), Percentile(lat, 0.5),
               Percentile(lat, 0.99), totals.final ? " (the adapter became final)" : "");
  }
}

}  // namespace

void RegisterLoadgen(CLI::App& app) {
  auto f = std::make_shared<LoadgenFlags>();
  auto* cmd = app.add_subcommand(
      "loadgen",
      "Publish pre-made random updates from many lightweight clients (no model, no training) to a running broker, "
      "each until acknowledged: for load, fault and scale tests. Dense deltas of the adapter's spec; methods that "
      "refuse some factors (ffa, fedsa, lora-a2, as-lora) will drop them");
  cmd->add_option("--broker", f->broker, "The broker's worker endpoint")->capture_default_str();
  cmd->add_option("--adapter", f->adapter, "Adapter id")->capture_default_str();
  cmd->add_option("--clients", f->clients, "Concurrent publishers (one thread each)")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  cmd->add_option("--updates", f->updates, "Updates per client (0: until --duration or Ctrl-C)")->capture_default_str();
  cmd->add_option("--duration", f->duration_s, "Stop after this many seconds (0: no limit)")->capture_default_str();
  cmd->add_option("--interval-ms", f->interval_ms, "Pause of each client between its updates")->capture_default_str();
  cmd->add_option("--timeout-ms", f->timeout_ms, "Resend an unanswered update after this long (on a fresh socket)")
      ->check(CLI::Range(10, 600000))
      ->capture_default_str();
  cmd->add_option("--scale", f->scale, "Standard deviation of the random delta values")->capture_default_str();
  cmd->add_option("--client-prefix", f->prefix, "Client ids are <prefix>-<index>; update ids <client>-<n>")
      ->capture_default_str();
  cmd->add_option("--seed", f->seed, "Seed of the random deltas")->capture_default_str();
  cmd->add_option("--ack-log", f->acked,
                  "Append one JSON line {client_id, update_id, seq, duplicate} per acknowledgement, as it arrives");
  cmd->add_flag("--json", f->json, "Print the summary as JSON");
  AddClientKeyFlags(cmd, f->keys);
  cmd->callback([f] {
    SetupLogging(false);
    auto keys = security::LoadClientKeys(f->keys.broker_key, f->keys.key);
    if (!keys.ok()) Fail("loadgen", keys.status(), 2);
    f->loaded_keys = std::move(*keys);
    RunLoadgen(*f);
  });
}

}  // namespace fedlora::ops
