// `fedlora broker`. Also the whole of `fedlora-broker` (ops/broker_main.cc), the broker without
// LibTorch in its process: `fedlora broker` hands over to it when it is installed beside
// `fedlora`, which saves the ~160 MiB that loading LibTorch costs every process.
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "broker/broker.h"
#include "ops/commands.h"
#include "ops/flags.h"
#include "ops/live.h"
#include "schema/transport/security.h"

namespace fedlora::ops {

void RegisterBroker(CLI::App& app) {
  struct Flags {
    StoreLayout store;
    broker::BrokerOptions options;
    bool no_sync = false;
    bool verbose = true;
    std::string curve_secret;
    std::string allow;
    std::string aggregator_secret;
    double ingest_queue_mib = 128;
    double max_unread_mib = 1024;
    int heartbeat_ms = 1000;
    std::string http;
  };
  auto flags = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand("broker", "Run the broker: ingest updates into the durable log, dispatch them "
                                           "to aggregators, announce and serve global versions");
  cmd->add_option("--store", flags->store.dir, "Store directory (the log goes to <store>/log)")->capture_default_str();
  cmd->add_option("--frontend", flags->options.frontend, "Worker endpoint (ROUTER)")->capture_default_str();
  cmd->add_option("--backend", flags->options.backend, "Aggregator endpoint (ROUTER)")->capture_default_str();
  cmd->add_option("--announce", flags->options.announce, "Announcement endpoint (PUB)")->capture_default_str();
  cmd->add_option("--max-message-bytes", flags->options.max_message_bytes, "Reject larger messages")
      ->capture_default_str();
  cmd->add_flag("--no-sync", flags->no_sync, "Do not fsync the log (unsafe: for benchmarks only)");
  cmd->add_option("--ingest-queue-mib", flags->ingest_queue_mib,
                  "Most MiB of updates admitted but not yet durable; beyond it publishers get RESOURCE_EXHAUSTED "
                  "with a retry delay (the memory bound of ingest)")
      ->check(CLI::Range(0.001, 65536.0))
      ->capture_default_str();
  cmd->add_option("--max-connections", flags->options.max_connections,
                  "Most connections on the three sockets together; past it a new one is closed at once (0: the "
                  "open-file limit less 512, kept for the log)")
      ->capture_default_str();
  cmd->add_option("--max-unread-mib", flags->max_unread_mib,
                  "Most MiB that all connections together may have sent and the broker not read yet (incomplete "
                  "messages); past it the connections holding most are closed. One connection may hold at most "
                  "2 x --max-message-bytes + 1 MiB")
      ->check(CLI::Range(1.0, 1048576.0))
      ->capture_default_str();
  cmd->add_option("--max-updates-per-s", flags->options.max_updates_per_s,
                  "Per-client rate limit in updates/s, with a burst of one second's worth (0: none)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--max-update-norm", flags->options.max_update_norm,
                  "Refuse updates whose L2 norm is larger (0: no bound)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--heartbeat-ms", flags->heartbeat_ms,
                  "Heartbeat interval; an aggregator silent for 3 intervals loses its subscription")
      ->check(CLI::Range(10, 600000))
      ->capture_default_str();
  cmd->add_option("--curve-secret", flags->curve_secret,
                  "Turn on CURVE: this broker's secret key file (`fedlora keygen`); needs --allow")
      ->check(CLI::ExistingFile);
  cmd->add_option("--allow", flags->allow,
                  "Allowlist of client keys, one `worker|aggregator NAME PUBLIC-KEY` per line (with --curve-secret)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--aggregator-secret", flags->aggregator_secret,
                  "Without CURVE: admit on the aggregator socket only peers presenting the secret in this file "
                  "(`fedlora keygen --secret FILE`; give the aggregator the same file). Default: <store>/aggregator.secret, "
                  "made if missing, which an aggregator given the same --store reads by itself")
      ->check(CLI::ExistingFile);
  cmd->add_flag("--accept-lost-log-tail", flags->options.accept_lost_log_tail,
                "Start on a log that has lost acknowledged updates from its end (refused otherwise, saying how many), "
                "going on from what it holds");
  cmd->add_flag("--insecure", flags->options.insecure,
                "Allow plaintext on endpoints other machines can reach (by default only loopback may be plaintext)");
  AddHttpFlag(cmd, flags->http, "Prometheus /metrics");
  cmd->callback([flags] {
    SetupLogging(flags->verbose);
    flags->options.log_path = flags->store.log();
    flags->options.sync = !flags->no_sync;
    flags->options.ingest_queue_bytes = static_cast<size_t>(flags->ingest_queue_mib * 1048576.0);
    flags->options.max_unread_bytes = static_cast<size_t>(flags->max_unread_mib * 1048576.0);
    flags->options.heartbeat_interval = std::chrono::milliseconds(flags->heartbeat_ms);
    if (flags->curve_secret.empty() != flags->allow.empty()) {
      Fail("broker", InvalidArgument("--curve-secret and --allow go together: the key makes the broker a CURVE "
                                     "server, the allowlist says which client keys it admits"), 2);
    }
    if (!flags->curve_secret.empty()) {
      auto server = security::ReadKeyPair(flags->curve_secret);
      if (!server.ok()) Fail("broker", server.status(), 2);
      auto allow = security::ReadAllowlist(flags->allow);
      if (!allow.ok()) Fail("broker", allow.status(), 2);
      fmt::print("broker: CURVE on; public key {}; {} allowed keys\n", server->public_key, allow->size());
      flags->options.curve = broker::BrokerOptions::Curve{std::move(*server), std::move(*allow)};
    }
    if (!flags->aggregator_secret.empty()) {
      if (flags->options.curve) {
        Fail("broker", InvalidArgument("--aggregator-secret is for a broker without CURVE: with --curve-secret, the "
                                       "allowlist's aggregator keys say who may subscribe"), 2);
      }
      auto secret = security::ReadSecretFile(flags->aggregator_secret);
      if (!secret.ok()) Fail("broker", secret.status(), 2);
      flags->options.aggregator_secret = std::move(*secret);
      fmt::print("broker: aggregators must present the secret in {}\n", flags->aggregator_secret);
    } else if (!flags->options.curve) {
      // Never an open aggregator socket: a process that reached it could take an adapter no live
      // aggregator holds. The store's own secret, readable by this user only.
      const std::string path = flags->store.aggregator_secret();
      std::error_code ec;
      std::filesystem::create_directories(flags->store.dir, ec);
      auto secret = security::EnsureSecretFile(path);
      if (!secret.ok()) Fail("broker", secret.status(), 2);
      flags->options.aggregator_secret = std::move(*secret);
      fmt::print("broker: aggregators must present the secret in {} (an aggregator with --store {} reads it; "
                 "elsewhere give it a copy with --aggregator-secret)\n",
                 path, flags->store.dir);
    }
    auto broker = broker::Broker::Create(flags->options);
    if (!broker.ok()) Fail("broker", broker.status());
    const auto& ep = (*broker)->Endpoints();
    fmt::print("broker: frontend={} backend={} announce={} log={}\n", ep.frontend, ep.backend, ep.announce,
               flags->options.log_path);
    std::unique_ptr<http::Server> http;
    if (!flags->http.empty()) {
      LiveRoles roles;
      roles.broker = broker->get();
      auto served = ServeLive(flags->http, std::move(roles));
      if (!served.ok()) Fail("broker", served.status(), 2);
      http = std::move(*served);
      fmt::print("broker: metrics at http://{}/metrics\n", http->address());
    }
    std::fflush(stdout);
    Status s = RunUntilSignalled([&](std::stop_token stop) { return (*broker)->Run(stop); });
    if (!s.ok()) Fail("broker", s);
    const auto& st = (*broker)->Stats();
    fmt::print("broker: stopped; updates logged={} duplicates={} rejected={} (retry-later {}, rate-limited {}); "
               "connections refused: {} by authentication, {} past --max-connections; {} closed for unread bytes\n",
               st.updates_logged.load(), st.updates_duplicate.load(), st.messages_rejected.load(),
               st.retry_later.load(), st.rate_limited.load(), st.auth_denied.load(), st.connections.refused.load(),
               st.connections.closed_unread.load());
  });
}

}  // namespace fedlora::ops
