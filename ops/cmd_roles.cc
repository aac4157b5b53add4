// `fedlora broker`, `fedlora aggregator`, `fedlora worker`: one role per process, for running
// the federation across processes or machines.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "broker/broker.h"
#include "ops/commands.h"
#include "ops/flags.h"
#include "ops/live.h"
#include "schema/transport/security.h"
#include "worker/federation/roles.h"

namespace fedlora::ops {

void RegisterKeygen(CLI::App& app) {
  struct Flags {
    std::string out;
    std::string name;
    std::string secret;
  };
  auto flags = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand(
      "keygen", "Make a CURVE key pair: OUT.key (secret, mode 0600) and OUT.pub (public). The broker takes its "
                "own with --curve-secret; clients take theirs with --key and the broker's .pub with --broker-key; "
                "client public keys go in the broker's --allow file. Or, with --secret FILE, an aggregator secret "
                "for a broker without CURVE (broker and aggregator --aggregator-secret FILE)");
  auto* out = cmd->add_option("--out", flags->out, "Path prefix of the two files (e.g. keys/worker-0)");
  cmd->add_option("--name", flags->name, "The identity the key stands for (default: the file name of --out)");
  auto* secret = cmd->add_option("--secret", flags->secret,
                                 "Write a fresh aggregator secret to this file (mode 0600) instead of a key pair");
  out->excludes(secret);
  cmd->callback([flags] {
    SetupLogging(false);
    if (!flags->secret.empty()) {
      if (Status s = security::WriteSecretFile(flags->secret); !s.ok()) Fail("keygen", s, 2);
      fmt::print("keygen: wrote an aggregator secret to {} (give it to the broker and its aggregators with "
                 "--aggregator-secret)\n",
                 flags->secret);
      return;
    }
    if (flags->out.empty()) Fail("keygen", InvalidArgument("give --out PREFIX (a key pair) or --secret FILE"), 2);
    const std::string name =
        flags->name.empty() ? std::filesystem::path(flags->out).filename().string() : flags->name;
    auto keys = security::Generate();
    if (!keys.ok()) Fail("keygen", keys.status());
    if (Status s = security::WriteKeyFiles(flags->out, name, *keys); !s.ok()) Fail("keygen", s, 2);
    fmt::print("keygen: wrote {0}.key (secret) and {0}.pub\n", flags->out);
    fmt::print("keygen: public key {}\n", keys->public_key);
    fmt::print("keygen: allowlist line for a worker: worker {} {}\n", name, keys->public_key);
  });
}

void RegisterAggregator(CLI::App& app) {
  struct Flags {
    StoreLayout store;
    TaskOptions task;
    EngineFlags engine;
    aggregator::AggregatorOptions options;
    size_t eval_samples = 2000;
    bool no_sync = false;
    ClientKeyFlags keys;
    std::string aggregator_secret;
    std::string http;
  };
  auto flags = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand("aggregator", "Run an aggregator: fold logged updates into new global versions "
                                               "and commit them with their lineage");
  cmd->add_option("--store", flags->store.dir, "Store directory (<store>/adapters, <store>/base)")->capture_default_str();
  cmd->add_option("--broker", flags->options.broker, "The broker's aggregator endpoint")->capture_default_str();
  cmd->add_option("--adapter", flags->options.adapter_id, "Adapter (fine-tuning job) to own")->capture_default_str();
  cmd->add_option("--max-versions", flags->options.max_versions, "Commit this many versions, mark the last final, "
                                                                 "and stop (0: run until interrupted)")
      ->capture_default_str();
  cmd->add_option("--eval-every", flags->options.eval_every, "Evaluate the global every N versions (0: never)")
      ->capture_default_str();
  cmd->add_option("--eval-samples", flags->eval_samples,
                  "Test examples per evaluation (0: all; image: 10,000; evaluation blocks aggregation while it runs)")
      ->capture_default_str();
  cmd->add_option("--base", flags->task.base,
                  "lm: the checkpoint directory the workers fine-tune (version 0's spec and the evaluation use it)");
  cmd->add_option("--window", flags->options.window, "Log records in flight from the broker")->capture_default_str();
  cmd->add_flag("--no-sync", flags->no_sync, "Do not fsync commits (unsafe: for tests only)");
  AddClientKeyFlags(cmd, flags->keys);
  cmd->add_option("--aggregator-secret", flags->aggregator_secret,
                  "The broker's aggregator secret file (its --aggregator-secret), when it has no CURVE. Default: "
                  "<store>/aggregator.secret, which a broker on the same --store asks for")
      ->check(CLI::ExistingFile);
  AddHttpFlag(cmd, flags->http, "/metrics, the dashboard and POST /api/rollback (from this machine only)");
  AddTaskFlags(cmd, flags->task);
  AddLanguageTaskFlags(cmd, flags->task);
  AddEngineFlags(cmd, flags->engine);
  cmd->callback([flags] {
    SetupLogging(true);
    if (Status s = ResolveEngineFlags(flags->engine); !s.ok()) Fail("aggregator", s, 2);
    auto keys = security::LoadClientKeys(flags->keys.broker_key, flags->keys.key);
    if (!keys.ok()) Fail("aggregator", keys.status(), 2);
    flags->options.keys = std::move(*keys);
    if (!flags->aggregator_secret.empty()) {
      auto secret = security::ReadSecretFile(flags->aggregator_secret);
      if (!secret.ok()) Fail("aggregator", secret.status(), 2);
      flags->options.secret = std::move(*secret);
    } else if (!flags->options.keys.enabled()) {
      // The secret a broker on the same store asks for (it or this process makes it).
      std::error_code ec;
      std::filesystem::create_directories(flags->store.dir, ec);
      auto secret = security::EnsureSecretFile(flags->store.aggregator_secret());
      if (!secret.ok()) Fail("aggregator", secret.status(), 2);
      flags->options.secret = std::move(*secret);
    }
    SetTorchThreads(1);
    auto& o = flags->options;
    o.sync = !flags->no_sync;
    o.engine = flags->engine.engine;
    o.on_commit = [](const codec::VersionInfo& v) {
      std::string acc = v.test_accuracy >= 0 ? fmt::format(" acc={:.4f} loss={:.4f}", v.test_accuracy, v.test_loss) : "";
      fmt::print("aggregator: version={} updates={} dropped={} staleness_mean={:.2f} max={}{}\n", v.version,
                 v.applied.size(), v.dropped.size(), v.mean_staleness, v.max_staleness, acc);
      std::fflush(stdout);
    };
    const std::string adapter_id = o.adapter_id, broker_endpoint = o.broker;  // o is moved next
    auto agg = federation::MakeAggregatorRole({.store = flags->store,
                                               .task = flags->task,
                                               .options = std::move(o),
                                               .eval_samples = flags->eval_samples});
    if (!agg.ok()) Fail("aggregator", agg.status(), agg.status().code() == Code::kInvalidArgument ? 2 : 1);
    fmt::print("aggregator: adapter={} at version={} broker={}\n", adapter_id, (*agg)->Version(), broker_endpoint);
    std::unique_ptr<http::Server> http;
    if (!flags->http.empty()) {
      LiveRoles roles;
      roles.aggregator = agg->get();
      roles.store = flags->store;
      roles.adapter = adapter_id;
      auto served = ServeLive(flags->http, std::move(roles));
      if (!served.ok()) Fail("aggregator", served.status(), 2);
      http = std::move(*served);
      fmt::print("aggregator: dashboard at http://{}/ and metrics at http://{}/metrics\n", http->address(),
                 http->address());
    }
    std::fflush(stdout);
    Status s = RunUntilSignalled([&](std::stop_token stop) { return (*agg)->Run(stop); });
    if (!s.ok()) Fail("aggregator", s);
    fmt::print("aggregator: stopped at version={}{}\n", (*agg)->Version(), (*agg)->Finished() ? " (final)" : "");
  });
}

void RegisterWorker(CLI::App& app) {
  struct Flags {
    StoreLayout store;
    TaskOptions task;
    worker::WorkerOptions options;
    int index = 0;
    std::string base;
    std::string ack_log;
    ClientKeyFlags keys;
  };
  auto flags = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand("worker", "Run a training worker on its shard of the data: train, publish "
                                           "updates until acknowledged, pull new globals");
  cmd->add_option("--client-id", flags->options.client_id, "This client's id (defaults to worker-<index>)");
  cmd->add_option("--index", flags->index, "Which shard of the partition this worker trains on (0-based)")
      ->required();
  cmd->add_option("--store", flags->store.dir, "Store directory holding base/<arch>.pt")->capture_default_str();
  cmd->add_option("--base", flags->base,
                  "image: the frozen base model file (default: <store>/base/<arch>.pt); lm: the checkpoint directory");
  cmd->add_option("--broker", flags->options.broker, "The broker's worker endpoint")->capture_default_str();
  cmd->add_option("--announce", flags->options.announce, "The broker's announcement endpoint")->capture_default_str();
  cmd->add_option("--adapter", flags->options.adapter_id, "Adapter to train")->capture_default_str();
  cmd->add_option("--speed", flags->options.training.speed_factor, "Slowdown factor (>= 1) emulating a slow device")
      ->check(CLI::Range(1.0, 1000.0))
      ->capture_default_str();
  cmd->add_option("--max-updates", flags->options.max_updates, "Leave after this many acknowledged updates "
                                                                "(0: until the adapter is final)")
      ->capture_default_str();
  cmd->add_option("--seed", flags->options.seed, "Seed of local batch sampling")->capture_default_str();
  cmd->add_option("--ack-log", flags->ack_log, "Append one JSON line per acknowledged update to this file");
  cmd->add_option("--client-rank", flags->options.heterogeneity.rank,
                  "LoRA rank this client trains, at most the adapter's (0: the adapter's)")
      ->capture_default_str();
  cmd->add_option("--client-upload-density", flags->options.heterogeneity.upload_density,
                  "flasc: this client's upload density (0: the adapter's)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--client-rank-budget", flags->options.heterogeneity.rank_budget,
                  "lora-a2: this client's ranks per module (0: the adapter's)")
      ->capture_default_str();
  AddClientKeyFlags(cmd, flags->keys);
  AddTaskFlags(cmd, flags->task);
  AddLanguageTaskFlags(cmd, flags->task);
  AddTrainingFlags(cmd, flags->options.training);
  cmd->callback([flags] {
    SetupLogging(true);
    SetTorchThreads(1);
    worker::TuneAllocatorForTraining();
    auto& o = flags->options;
    auto keys = security::LoadClientKeys(flags->keys.broker_key, flags->keys.key);
    if (!keys.ok()) Fail("worker", keys.status(), 2);
    o.keys = std::move(*keys);
    if (o.client_id == "worker-0" && flags->index != 0) o.client_id = fmt::format("worker-{}", flags->index);
    std::shared_ptr<std::ofstream> acks;
    if (!flags->ack_log.empty()) {
      acks = std::make_shared<std::ofstream>(flags->ack_log, std::ios::app);
      if (!*acks) Fail("worker", Unavailable("cannot open --ack-log " + flags->ack_log));
    }
    const std::string client = o.client_id;
    o.on_event = [acks, client](const worker::WorkerEvent& e) {
      if (e.kind == worker::WorkerEvent::Kind::kPublished) {
        fmt::print("worker {}: update={} base_version={} seq={}{} loss={:.4f}\n", client, e.update_id, e.version,
                   e.seq, e.duplicate ? " (duplicate)" : "", e.train_loss);
        if (acks) {
          *acks << fmt::format(R"({{"client_id":"{}","update_id":"{}","seq":{},"base_version":{},"duplicate":{}}})",
                               client, e.update_id, e.seq, e.version, e.duplicate ? "true" : "false")
                << std::endl;  // flushed: the file must hold every ack even after kill -9
        }
      } else if (e.kind == worker::WorkerEvent::Kind::kRejected) {
        fmt::print("worker {}: update={} rejected: {}\n", client, e.update_id, e.status.ToString());
      }
      std::fflush(stdout);
    };
    const double speed = o.training.speed_factor;
    auto made = federation::MakeWorkerRole(
        {.store = flags->store, .task = flags->task, .options = std::move(o), .index = flags->index, .base = flags->base});
    if (!made.ok()) Fail("worker", made.status(), made.status().code() == Code::kInvalidArgument ? 2 : 1);
    auto& w = made->worker;
    fmt::print("worker {}: shard of {} examples, speed x{}\n", client, made->shard_size, speed);
    std::fflush(stdout);
    Status s = RunUntilSignalled([&](std::stop_token stop) { return w->Run(stop); });
    if (!s.ok()) Fail("worker", s);
    fmt::print("worker {}: leaving after {} acknowledged updates\n", client, w->Stats().updates_acked.load());
  });
}

}  // namespace fedlora::ops
