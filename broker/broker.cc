#include "broker/broker.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>
#include <vector>
#include <sys/resource.h>
#include <zmq.hpp>

#include "schema/validate.h"
#include "schema/codec.h"
#include "schema/hash.h"
#include "broker/connection_guard.h"
#include "broker/log.h"
#include "broker/rate_limit.h"
#include "schema/transport/heartbeat.h"
#include "schema/transport/transport.h"
#include "storage/update_log.h"

namespace fedlora::broker {
namespace {

struct AdapterEntry {
  bool has_global = false;
  AdapterSpec spec;
  uint64_t version = 0;
  std::string content_hash;
  bool final = false;
  std::shared_ptr<const std::string> global;  // GlobalAdapter envelope, served on Fetch
  // Dispatch to the owning aggregator.
  std::string owner;          // ROUTER identity; empty when no aggregator subscribed
  uint64_t next_to_send = 1;  // next log sequence number to deliver
  uint64_t send_limit = 1;    // exclusive bound granted by the last Credit
  uint64_t consumed = 0;      // the aggregator has consumed the log up to here (its last Credit)
  // The latest records as the worker sent them, consecutive seqs: dispatch sends these
  // messages themselves (ZeroMQ shares the buffer) instead of reading the bytes back from the
  // log, so a record that reaches a caught-up aggregator is never copied out of RocksDB.
  std::deque<std::pair<uint64_t, zmq::message_t>> recent;
  // The last seq the I/O thread has seen answered (or that was logged before it started):
  // dispatch stops here, so a record the log writer has just written is not read back from the
  // log in the moment before its answer puts it into `recent`.
  uint64_t dispatchable = 0;
  // A Deliver could not be sent (the owner is gone, or its queue is full): nothing more is read
  // for it until the owner is heard from again (a Credit, or its heartbeat within a second), so a
  // vanished aggregator's records are not read back from the log on every turn of the loop.
  bool send_blocked = false;
};

// What /metrics shows of one adapter (a snapshot taken by the serving loop).
struct AdapterSnapshot {
  std::string adapter;
  uint64_t head = 0;
  uint64_t consumed = 0;
  uint64_t version = 0;
  bool subscribed = false;
};

using Clock = std::chrono::steady_clock;

// An update admitted to the ingest queue; its frames stay alive until it is durable.
struct PendingUpdate {
  zmq::message_t identity;
  zmq::message_t payload;  // a verified Update envelope
  Digest128 digest;        // HashBytes(payload), computed before it is queued
  const wire::Update& update() const { return *wire::GetEnvelope(payload.data())->body_as_Update(); }
};

// The log writer's answer for one update, sent back by the I/O thread.
struct WrittenUpdate {
  zmq::message_t identity;
  zmq::message_t payload;  // kept for dispatch (AdapterEntry::recent)
  std::string adapter_id;
  std::string update_id;
  size_t bytes = 0;
  Result<storage::AppendOutcome> outcome;
};

// Per-client token bucket.
// ZAP (RFC 27) handler: authenticates every CURVE connection against the allowlist, by socket
// domain ("workers", "aggregators", or "subscribers", which admits either role). Runs on its
// own thread so that handshakes never wait for the broker's loop.
class ZapHandler {
 public:
  ZapHandler(zmq::context_t& ctx, security::Allowlist allow, std::string secret, BrokerStats& stats)
      : socket_(ctx, zmq::socket_type::rep), allow_(std::move(allow)), secret_(std::move(secret)), stats_(stats) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.bind("inproc://zeromq.zap.01");
    thread_ = std::jthread([this](std::stop_token stop) { Serve(stop); });
  }

 private:
  void Serve(std::stop_token stop) {
    std::vector<zmq::message_t> frames;
    std::vector<zmq::pollitem_t> items = {{socket_.handle(), 0, ZMQ_POLLIN, 0}};
    while (!stop.stop_requested()) {
      try {
        zmq::poll(items, std::chrono::milliseconds(100));
        if (!transport::TryRecvMultipart(socket_, frames)) continue;
        Answer(frames);
      } catch (const zmq::error_t& e) {
        if (e.num() == ETERM) return;
        Log()->error("zap handler: {}", e.what());
      }
    }
  }

  void Answer(std::vector<zmq::message_t>& f) {
    auto text = [&](size_t i) { return i < f.size() ? f[i].to_string() : std::string(); };
    // version, request id, domain, address, routing id, mechanism, credentials...
    std::string status = "400", reason = "not allowed", user;
    const std::string domain = text(2), address = text(3), mechanism = text(5);
    if (f.size() >= 7 && mechanism == "CURVE" && f[6].size() == 32) {
      auto it = allow_.find(f[6].to_string());
      if (it != allow_.end()) {
        const bool role_ok = domain == "subscribers" ||
                             (domain == "workers" && it->second.role == security::Role::kWorker) ||
                             (domain == "aggregators" && it->second.role == security::Role::kAggregator);
        if (role_ok) {
          status = "200";
          reason = "OK";
          user = it->second.name;
        } else {
          reason = fmt::format("'{}' is listed as {}", it->second.name, security::RoleName(it->second.role));
        }
      } else {
        reason = "key not in the allowlist";
      }
    } else if (mechanism == "PLAIN" && domain == "aggregators" && !secret_.empty() && f.size() >= 8) {
      // Without CURVE: the aggregator secret (username, password).
      if (security::SecretsEqual(f[7].to_string_view(), secret_)) {
        status = "200";
        reason = "OK";
        user = text(6);
      } else {
        reason = "wrong aggregator secret";
      }
    } else {
      reason = fmt::format("mechanism {} is not accepted", mechanism);
    }
    if (status != "200") {
      stats_.auth_denied++;
      char z85[41] = {0};
      if (f.size() >= 7 && f[6].size() == 32) zmq_z85_encode(z85, static_cast<const uint8_t*>(f[6].data()), 32);
      Log()->warn("refused connection domain={} address={} key={} reason=\"{}\"", domain, address, z85, reason);
    }
    std::vector<zmq::message_t> reply;
    reply.emplace_back(std::string_view("1.0"));
    reply.push_back(std::move(f[1]));
    reply.emplace_back(std::string_view(status));
    reply.emplace_back(std::string_view(reason));
    reply.emplace_back(std::string_view(user));
    reply.emplace_back();
    for (size_t i = 0; i < reply.size(); ++i) {
      socket_.send(reply[i], i + 1 < reply.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }

  zmq::socket_t socket_;
  security::Allowlist allow_;
  std::string secret_;  // the aggregator secret (PLAIN on the backend), when there is no CURVE
  BrokerStats& stats_;
  std::jthread thread_;
};

class BrokerImpl final : public Broker {
 public:
  BrokerImpl(BrokerOptions options, std::unique_ptr<storage::UpdateLog> log)
      : options_(std::move(options)),
        log_(std::move(log)),
        frontend_(ctx_, zmq::socket_type::router),
        backend_(ctx_, zmq::socket_type::router),
        announce_(ctx_, zmq::socket_type::pub),
        wake_rx_(ctx_, zmq::socket_type::pair),
        wake_tx_(ctx_, zmq::socket_type::pair),
        incarnation_(std::random_device{}() * 0x100000000ull + std::random_device{}()) {}

  Status Bind() {
    if (!options_.curve && !options_.insecure) {
      for (const auto* ep : {&options_.frontend, &options_.backend, &options_.announce}) {
        if (!security::IsLoopback(*ep)) {
          return InvalidArgument(fmt::format(
              "'{}' is reachable from other machines, and this broker has no CURVE keys: give it --curve-secret "
              "and --allow (docs/security.md), or pass --insecure to accept plaintext on purpose",
              *ep));
        }
      }
    }
    try {
      if (options_.curve) {
        if (!zmq_has("curve")) return Unimplemented("this libzmq was built without CURVE support");
        // The handler must be bound before the first handshake, and enforced: without a
        // handler libzmq would admit every key.
        zap_.emplace(ctx_, options_.curve->allow, std::string(), stats_);
        security::ApplyServer(frontend_, options_.curve->server, "workers");
        security::ApplyServer(backend_, options_.curve->server, "aggregators");
        security::ApplyServer(announce_, options_.curve->server, "subscribers");
        // Where libzmq has the (draft) option, also refuse handshakes if the handler were gone.
        constexpr int kZapEnforceDomain = 93;  // ZMQ_ZAP_ENFORCE_DOMAIN
        const int on = 1;
        for (auto* s : {&frontend_, &backend_, &announce_}) {
          (void)zmq_setsockopt(s->handle(), kZapEnforceDomain, &on, sizeof(on));
        }
      }
      if (!options_.curve && !options_.aggregator_secret.empty()) {
        // Only peers presenting the aggregator secret reach the backend: checked by the ZAP
        // handler at the handshake, so a refused peer cannot send a single message.
        zap_.emplace(ctx_, security::Allowlist{}, options_.aggregator_secret, stats_);
        security::ApplySecretServer(backend_, "aggregators");
        constexpr int kZapEnforceDomain = 93;  // ZMQ_ZAP_ENFORCE_DOMAIN (draft; where present)
        const int on = 1;
        (void)zmq_setsockopt(backend_.handle(), kZapEnforceDomain, &on, sizeof(on));
      }
      for (auto* s : {&frontend_, &backend_}) {
        transport::Configure(*s, options_.hwm);
        s->set(zmq::sockopt::router_mandatory, 1);
        // Workers connect in storms: all at once at start, and again after a broker restart or
        // a stall that times their requests out. ZeroMQ's default accept backlog of 100 drops
        // the connections beyond it; the kernel retries their SYN only after 1 s, by when a
        // client's request timeout may have replaced the socket, which connects into the next
        // storm: with 1,000 publishers that never settled. The kernel caps this at
        // net.core.somaxconn (4096 on current Linux).
        s->set(zmq::sockopt::backlog, 4096);
        // Hard ceiling, enforced by ZeroMQ before it allocates: twice the limit, so that a message
        // somewhat over the limit still reaches us and gets a clear error instead of a silently
        // dropped connection.
        s->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(2 * options_.max_message_bytes));
      }
      transport::Configure(announce_, options_.hwm);
      // Subscribers send only subscriptions: a few bytes each.
      announce_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(64 << 10));
      WatchConnections();
      const std::string wake = fmt::format("inproc://broker-wake-{}", static_cast<const void*>(this));
      wake_rx_.bind(wake);
      wake_tx_.connect(wake);
      frontend_.bind(options_.frontend);
      backend_.bind(options_.backend);
      announce_.bind(options_.announce);
      endpoints_ = {transport::LastEndpoint(frontend_), transport::LastEndpoint(backend_),
                    transport::LastEndpoint(announce_)};
    } catch (const zmq::error_t& e) {
      return Unavailable(fmt::format("bind broker sockets ({}, {}, {}): {}", options_.frontend,
                                     options_.backend, options_.announce, e.what()));
    }
    return LoadGlobals();
  }

  // The connection cap and the bounds on unread bytes (broker/connection_guard.h).
  void WatchConnections() {
    GuardLimits limits;
    limits.max_connections = options_.max_connections;
    if (limits.max_connections == 0) {
      rlimit files{};
      const uint64_t open_files = getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur != RLIM_INFINITY
                                      ? files.rlim_cur
                                      : std::numeric_limits<uint32_t>::max();
      limits.max_connections = open_files > kReservedFiles + 16 ? open_files - kReservedFiles : 16;
    }
    const uint64_t per_connection = 2 * static_cast<uint64_t>(options_.max_message_bytes) + (1u << 20);
    limits.max_total_unread_bytes = std::max<uint64_t>(options_.max_unread_bytes, per_connection);
    guard_.emplace(ctx_, limits, stats_.connections);
    const Framing framing = options_.curve ? Framing::kCurve : Framing::kPlain;
    frontend_watch_ = guard_->Watch(frontend_, "worker", framing, per_connection);
    backend_watch_ = guard_->Watch(backend_, "aggregator", framing, per_connection);
    guard_->Watch(announce_, "announce", framing, 1u << 20);
    Log()->info("at most {} connections; unread bytes at most {} per connection and {} in all",
                limits.max_connections, per_connection, limits.max_total_unread_bytes);
  }

  const BrokerEndpoints& Endpoints() const override { return endpoints_; }
  const BrokerStats& Stats() const override { return stats_; }

  void WriteMetrics(prometheus::Writer& w) const override {
    const auto counter = [&w](std::string_view name, std::string_view help, const std::atomic<uint64_t>& v) {
      w.Counter(name, help, static_cast<double>(v.load()));
    };
    counter("fedlora_broker_updates_logged_total", "Updates made durable in the log", stats_.updates_logged);
    counter("fedlora_broker_updates_duplicate_total", "Re-sent updates answered from the log (already durable)",
            stats_.updates_duplicate);
    counter("fedlora_broker_messages_rejected_total", "Messages answered with an Error", stats_.messages_rejected);
    counter("fedlora_broker_bytes_logged_total", "Bytes of updates made durable", stats_.bytes_logged);
    counter("fedlora_broker_group_commits_total", "Synced log writes (each holds one or more updates)",
            stats_.group_commits);
    w.Counter("fedlora_broker_commit_wait_seconds_total",
              "Time the log writer waited for just-acknowledged senders to fill the next group commit",
              static_cast<double>(stats_.commit_wait_us.load()) / 1e6);
    counter("fedlora_broker_records_delivered_total", "Log records sent to aggregators", stats_.records_delivered);
    counter("fedlora_broker_records_read_back_total",
            "Records delivered by reading them back from the log (older than those held in memory)",
            stats_.records_read_back);
    counter("fedlora_broker_retry_later_total", "Updates refused because the ingest queue was full",
            stats_.retry_later);
    counter("fedlora_broker_rate_limited_total", "Updates refused by the per-client rate limit", stats_.rate_limited);
    counter("fedlora_broker_auth_denied_total", "Connections refused by the CURVE allowlist", stats_.auth_denied);
    counter("fedlora_broker_aggregators_expired_total", "Aggregator subscriptions dropped for silence",
            stats_.aggregators_expired);
    counter("fedlora_broker_subscriptions_refused_total",
            "Credits refused because another aggregator holds the adapter's lease", stats_.subscriptions_refused);
    counter("fedlora_broker_positions_refused_total",
            "Credits refused because the log position they claim is not in this log (lost or truncated log)",
            stats_.positions_refused);
    w.Gauge("fedlora_broker_connections", "Connections open now (all sockets)",
            static_cast<double>(stats_.connections.open.load()));
    counter("fedlora_broker_connections_refused_total", "Connections closed as soon as accepted: past --max-connections",
            stats_.connections.refused);
    counter("fedlora_broker_connections_closed_unread_total",
            "Connections closed for holding more unread bytes than allowed (an endless or stalled message)",
            stats_.connections.closed_unread);
    w.Gauge("fedlora_broker_unread_bytes", "Bytes connections have sent that the broker has not read yet",
            static_cast<double>(stats_.connections.unread_bytes.load()));
    w.Gauge("fedlora_broker_ingest_queue_bytes", "Admitted updates not yet durable",
            static_cast<double>(stats_.ingest_queue_bytes.load()));
    w.Gauge("fedlora_broker_ingest_queue_peak_bytes", "The most the ingest queue ever held",
            static_cast<double>(stats_.ingest_queue_peak.load()));
    std::lock_guard lock(snapshot_mu_);
    const auto per_adapter = [&](std::string_view name, std::string_view help, auto value) {
      w.Family(name, "gauge", help);
      for (const auto& a : snapshot_) w.Sample(name, static_cast<double>(value(a)), {{"adapter", a.adapter}});
    };
    per_adapter("fedlora_broker_log_head_seq", "Sequence number of the adapter's last logged update",
                [](const AdapterSnapshot& a) { return a.head; });
    per_adapter("fedlora_broker_log_lag_records", "Records logged that the adapter's aggregator has not consumed yet",
                [](const AdapterSnapshot& a) { return a.head > a.consumed ? a.head - a.consumed : 0; });
    per_adapter("fedlora_broker_aggregator_connected", "1 while an aggregator is subscribed to the adapter",
                [](const AdapterSnapshot& a) { return a.subscribed ? 1 : 0; });
    per_adapter("fedlora_broker_global_version", "Latest global version the broker serves",
                [](const AdapterSnapshot& a) { return a.version; });
  }

  Status Run(std::stop_token stop) override {
    Log()->info("serving frontend={} backend={} announce={} log={} (id {}) curve={}", endpoints_.frontend,
                endpoints_.backend, endpoints_.announce, options_.log_path, log_->Id(), options_.curve ? "on" : "off");
    std::jthread writer([this](std::stop_token s) { WriteLoop(s); });
    std::vector<zmq::pollitem_t> items = {{frontend_.handle(), 0, ZMQ_POLLIN, 0},
                                          {backend_.handle(), 0, ZMQ_POLLIN, 0},
                                          {wake_rx_.handle(), 0, ZMQ_POLLIN, 0}};
    for (const auto& item : guard_->PollItems()) items.push_back(item);
    const auto timeout =
        std::min({options_.poll_interval, options_.heartbeat_interval, GuardLimits{}.interval});
    Status failure;
    while (!stop.stop_requested() && failure.ok()) {
      try {
        zmq::poll(items, timeout);
        if (items[2].revents & ZMQ_POLLIN) AnswerWritten();
        if (items[1].revents & ZMQ_POLLIN) DrainBackend();
        if (items[0].revents & ZMQ_POLLIN) DrainFrontend();
        guard_->Check(Clock::now());
        ExpireSilentAggregators();
        failure = Dispatch();
        TakeSnapshot();
      } catch (const zmq::error_t& e) {
        if (e.num() == ETERM) break;
        // A socket-level failure is not the sender's fault and not fatal: log it and go on.
        Log()->error("zeromq error={}", e.what());
      }
    }
    // Whatever was admitted is still written and answered, so a clean stop loses no reply.
    writer.request_stop();
    queue_cv_.notify_all();
    writer.join();
    AnswerWritten();
    Log()->info("stopped logged={} rejected={} duplicates={} retry_later={}", stats_.updates_logged.load(),
                stats_.messages_rejected.load(), stats_.updates_duplicate.load(), stats_.retry_later.load());
    return failure;
  }

 private:
  Status LoadGlobals() {
    for (const auto& adapter : log_->AdaptersWithGlobal()) {
      auto bytes = log_->GetGlobal(adapter);
      if (!bytes.ok() || !bytes->has_value()) continue;
      auto stored = std::make_shared<const std::string>(std::move(**bytes));
      auto env = codec::VerifyEnvelope(codec::AsBytes(*stored), codec::kMaxBufferBytes);
      if (!env.ok() || (*env)->body_type() != wire::Body::GlobalAdapter) {
        Log()->warn("ignoring unreadable stored global adapter={}", adapter);
        continue;
      }
      RememberGlobal(*(*env)->body_as_GlobalAdapter(), stored);
    }
    return Status::Ok();
  }

  void RememberGlobal(const wire::GlobalAdapter& g, std::shared_ptr<const std::string> bytes) {
    auto& e = Entry(g.adapter_id()->str());
    e.has_global = true;
    e.spec = codec::SpecFromWire(g.spec());
    e.version = g.version();
    e.content_hash = g.content_hash() ? g.content_hash()->str() : "";
    e.final = g.final();
    e.global = std::move(bytes);
  }

  void Reply(zmq::socket_t& socket, const zmq::message_t& identity, codec::Bytes&& body) {
    std::vector<zmq::message_t> frames;
    frames.emplace_back(identity.data(), identity.size());
    frames.push_back(transport::Frame(std::move(body)));
    if (!transport::SendMultipart(socket, frames)) {
      Log()->debug("reply dropped: peer gone or queue full");
    }
  }

  void Reject(zmq::socket_t& socket, const zmq::message_t& identity, const Status& status,
              std::string_view update_id = {}, uint32_t retry_after_ms = 0) {
    stats_.messages_rejected++;
    // "Retry later" (saturated ingest, rate limit) is flow control, counted in the metrics; a
    // line for each would flood the log exactly when the broker is busiest.
    Log()->log(status.code() == Code::kResourceExhausted ? spdlog::level::debug : spdlog::level::warn,
               "reject code={} update={} reason=\"{}\"", CodeName(status.code()), update_id, status.message());
    Reply(socket, identity, codec::BuildError(status, update_id, retry_after_ms));
  }

  // --- workers --------------------------------------------------------------------------

  // Reads what the frontend has queued (bounded, so the backend is never starved): fetches are
  // answered at once; valid updates join the ingest queue for the log writer.
  void DrainFrontend() {
    std::vector<zmq::message_t> frames;
    std::string user;  // the CURVE name of the sender ("" without CURVE)
    int fd = -1;
    for (size_t n = 0; n < options_.max_batch && transport::TryRecvMultipart(frontend_, frames, &user, &fd); ++n) {
      guard_->Read(frontend_watch_, fd, frames);
      if (frames.size() != 2) {
        if (!frames.empty()) {
          Reject(frontend_, frames[0],
                 InvalidArgument(fmt::format("expected one frame per message, got {}", frames.size() - 1)));
        }
        continue;
      }
      auto env = codec::VerifyEnvelope(transport::View(frames[1]), options_.max_message_bytes);
      if (!env.ok()) {
        Reject(frontend_, frames[0], env.status());
        continue;
      }
      const wire::Envelope* e = *env;
      switch (e->body_type()) {
        case wire::Body::Update:
          Admit(frames, user);
          break;
        case wire::Body::Fetch:
          HandleFetch(frames[0], *e->body_as_Fetch());
          break;
        case wire::Body::Hello:
          Reply(frontend_, frames[0], codec::BuildHello(wire::Role::Broker, "broker"));
          break;
        case wire::Body::Heartbeat:
          Reply(frontend_, frames[0], codec::BuildHeartbeat(incarnation_));
          break;
        default:
          Reject(frontend_, frames[0],
                 InvalidArgument(fmt::format("a {} message is not accepted on the worker socket",
                                             codec::BodyName(e->body_type()))));
      }
    }
  }

  // `user`: the name the sender's connection authenticated as (CURVE), or "".
  void Admit(std::vector<zmq::message_t>& frames, const std::string& user) {
    const auto& u = *wire::GetEnvelope(frames[1].data())->body_as_Update();
    const std::string_view id = u.update_id()->string_view();
    // Saturated: answer "retry later" before validating or hashing anything. Under overload
    // this loop then gets through its sockets sooner, and every update it reads and cannot take
    // is released at once (the publishers wait out the delay holding their update themselves).
    if (size_t queued = Saturated(frames[1].size()); queued > 0) {
      RetryLater(frames[0], id, queued);
      return;
    }
    Status s = CheckUpdate(u);
    if (!s.ok()) {
      Reject(frontend_, frames[0], s, id, s.code() == Code::kNotFound ? 1000 : 0);
      return;
    }
    std::string_view who = u.client_id()->string_view();
    if (options_.curve) {
      if (user != who) {
        Reject(frontend_, frames[0],
               PermissionDenied(fmt::format("this connection is authenticated as '{}' and cannot publish as '{}'",
                                            user, who)),
               id);
        return;
      }
    }
    if (uint32_t wait_ms = Throttle(who); wait_ms > 0) {
      stats_.rate_limited++;
      Reject(frontend_, frames[0],
             ResourceExhausted(fmt::format("client '{}' is over its rate limit of {:g} updates/s", who,
                                           options_.max_updates_per_s)),
             id, wait_ms);
      return;
    }
    const size_t size = frames[1].size();
    // Hashed here, not by the log writer: this thread hashes while the writer waits on its
    // fsync, so the hash is not on the path from one commit to the next.
    const Digest128 digest = HashBytes(transport::View(frames[1]));
    uint64_t saturated_at = 0;  // the queue's size when it had no room, or 0
    {
      std::lock_guard lock(queue_mu_);
      // An empty queue always admits, so one update never waits on a limit below its own size.
      if (queued_bytes_ > 0 && queued_bytes_ + size > options_.ingest_queue_bytes) {
        saturated_at = queued_bytes_;
      } else {
        queued_bytes_ += size;
        stats_.ingest_queue_bytes = queued_bytes_;
        if (queued_bytes_ > stats_.ingest_queue_peak) stats_.ingest_queue_peak = queued_bytes_;
        queue_.push_back({std::move(frames[0]), std::move(frames[1]), digest});
      }
    }
    if (saturated_at == 0) {
      queue_cv_.notify_one();
      return;
    }
    RetryLater(frames[0], id, saturated_at);
  }

  // The queue's size if an update of `size` bytes would not fit now, else 0.
  size_t Saturated(size_t size) {
    std::lock_guard lock(queue_mu_);
    return queued_bytes_ > 0 && queued_bytes_ + size > options_.ingest_queue_bytes ? queued_bytes_ : 0;
  }

  void RetryLater(const zmq::message_t& identity, std::string_view update_id, size_t queued) {
    stats_.retry_later++;
    const auto retry = static_cast<uint32_t>(std::clamp<int64_t>(2 * last_commit_us_.load() / 1000 + 10, 20, 2000));
    Reject(frontend_, identity,
           ResourceExhausted(fmt::format("ingest is saturated: {:.1f} MiB wait for the log (limit {:.1f} MiB); "
                                         "retry later",
                                         queued / 1048576.0, options_.ingest_queue_bytes / 1048576.0)),
           update_id, retry);
  }

  // 0 when `client` may publish now; otherwise the milliseconds until its next token.
  uint32_t Throttle(std::string_view client) { return rate_limiter_.Take(client, Clock::now()); }

  Status CheckUpdate(const wire::Update& u) {
    RETURN_IF_ERROR(ValidateId("adapter_id", u.adapter_id()->string_view(), 128));
    auto it = adapters_.find(u.adapter_id()->str());
    if (it == adapters_.end() || !it->second.has_global) {
      return NotFound(fmt::format("unknown adapter '{}'", u.adapter_id()->string_view()));
    }
    if (it->second.final) {
      return FailedPrecondition(fmt::format("adapter '{}' is final (version {}): training has ended",
                                            u.adapter_id()->string_view(), it->second.version));
    }
    ValidationLimits limits;
    limits.max_update_norm = options_.max_update_norm;
    return ValidateUpdate(u, it->second.spec, it->second.version, limits);
  }

  // The log writer thread: takes what the queue holds (up to one batch), appends it with one
  // synced write, and hands the outcomes to the I/O thread. Exits once stop is requested and
  // the queue is empty.
  //
  // Before it takes a batch, the writer may wait a little for the senders it has just
  // acknowledged. A publisher that waits for its ack sends its next update one round trip
  // after it, so without the wait the next fsync would start with only the updates that
  // arrived during the previous one: the publishers split into two groups taking turns, each
  // fsync carrying about half of them (measured: 4.4 updates per commit from 8 publishers of
  // 64 KiB). So the writer waits until the queue holds as many updates as it has just
  // acknowledged plus those already waiting, but never longer than a quarter of the last commit
  // (nor options_.commit_wait): at most a quarter more latency for updates nobody follows up,
  // fuller batches for those who do (6-8 per commit from the same 8 publishers). On 2 cores,
  // where the senders share the CPU with the broker, the throughput gain was within the noise
  // (docs/benchmarks.md); with cores to spare the round trip shrinks and the gain grows.
  void WriteLoop(std::stop_token stop) {
    size_t acknowledged = 0;  // updates in the batch just written
    while (true) {
      std::vector<PendingUpdate> batch;
      size_t bytes = 0;
      {
        std::unique_lock lock(queue_mu_);
        queue_cv_.wait(lock, stop, [&] { return !queue_.empty(); });
        if (queue_.empty()) return;
        const size_t want = std::min(options_.max_batch, queue_.size() + acknowledged);
        const auto wait = std::min<Clock::duration>(options_.commit_wait,
                                                    std::chrono::microseconds(last_commit_us_.load() / 4));
        // A wait shorter than a sender's round trip (ack out, next update in: 0.1-0.3 ms on
        // loopback here) catches nobody and only delays the commit: at 4 KiB updates, where a
        // commit takes ~0.4 ms, waiting cost a fifth of the throughput.
        constexpr auto kShortestUsefulWait = std::chrono::microseconds(250);
        if (queue_.size() < want && wait >= kShortestUsefulWait) {
          const auto deadline = Clock::now() + wait;
          queue_cv_.wait_until(lock, stop, deadline, [&] {
            return queue_.size() >= want || queued_bytes_ >= options_.max_batch_bytes;
          });
          stats_.commit_wait_us += std::chrono::duration_cast<std::chrono::microseconds>(
                                       wait - std::max<Clock::duration>(Clock::duration::zero(), deadline - Clock::now()))
                                       .count();
        }
        while (!queue_.empty() && batch.size() < options_.max_batch &&
               (batch.empty() || bytes + queue_.front().payload.size() <= options_.max_batch_bytes)) {
          bytes += queue_.front().payload.size();
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
      }
      std::vector<storage::LogAppend> items;
      items.reserve(batch.size());
      for (const auto& p : batch) {
        const auto& u = p.update();
        items.push_back({u.adapter_id()->string_view(), u.client_id()->string_view(), u.update_id()->string_view(),
                         transport::View(p.payload), p.digest});
      }
      const auto started = Clock::now();
      auto results = log_->AppendBatch(items);
      last_commit_us_ = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started).count();
      acknowledged = batch.size();
      stats_.group_commits++;
      std::vector<WrittenUpdate> written;
      written.reserve(batch.size());
      for (size_t i = 0; i < batch.size(); ++i) {
        const size_t size = batch[i].payload.size();
        written.push_back({std::move(batch[i].identity), std::move(batch[i].payload), std::string(items[i].adapter_id),
                           std::string(items[i].update_id), size, std::move(results[i])});
      }
      {
        std::lock_guard lock(queue_mu_);
        queued_bytes_ -= bytes;
        stats_.ingest_queue_bytes = queued_bytes_;
        for (auto& w : written) written_.push_back(std::move(w));
      }
      zmq::message_t ping;
      (void)wake_tx_.send(ping, zmq::send_flags::dontwait);  // a full pipe already means "wake up"
    }
  }

  // The adapter's entry, made on first use. Until the I/O thread has answered a record of its
  // own, what the log held is what may be dispatched (no update of an adapter is admitted
  // before its entry exists, so none can be in the writer's hands when this runs).
  AdapterEntry& Entry(const std::string& adapter) {
    auto [it, fresh] = adapters_.try_emplace(adapter);
    if (fresh) it->second.dispatchable = log_->LastSeq(adapter);
    return it->second;
  }

  // Remembers a durable record for dispatch; the oldest are forgotten beyond
  // options_.recent_bytes (dispatch then reads them from the log, as after a restart).
  void KeepRecent(const std::string& adapter, uint64_t seq, zmq::message_t&& payload) {
    AdapterEntry& entry = Entry(adapter);
    entry.dispatchable = std::max(entry.dispatchable, seq);
    auto& recent = entry.recent;
    if (!recent.empty() && recent.back().first + 1 != seq) Forget(recent, recent.size());  // not consecutive
    recent_bytes_ += payload.size();
    recent.emplace_back(seq, std::move(payload));
    // Over the bound, this adapter's oldest records go first, then other adapters'.
    while (recent_bytes_ > options_.recent_bytes && recent.size() > 1) Forget(recent, 1);
    for (auto& [name, e] : adapters_) {
      while (recent_bytes_ > options_.recent_bytes && &e.recent != &recent && !e.recent.empty()) Forget(e.recent, 1);
    }
    if (recent_bytes_ > options_.recent_bytes) Forget(recent, 1);  // one record larger than the bound
  }

  void Forget(std::deque<std::pair<uint64_t, zmq::message_t>>& recent, size_t n) {
    for (; n > 0 && !recent.empty(); --n) {
      recent_bytes_ -= recent.front().second.size();
      recent.pop_front();
    }
  }

  // Sends the acknowledgements (or errors) of everything the log writer has finished.
  void AnswerWritten() {
    zmq::message_t ping;
    while (wake_rx_.recv(ping, zmq::recv_flags::dontwait)) {
    }
    std::vector<WrittenUpdate> written;
    {
      std::lock_guard lock(queue_mu_);
      written.swap(written_);
    }
    for (auto& w : written) {
      if (!w.outcome.ok()) {
        const Status& s = w.outcome.status();
        const bool transient = s.code() == Code::kUnavailable || s.code() == Code::kResourceExhausted;
        if (s.code() == Code::kResourceExhausted && Clock::now() - last_log_warning_ > std::chrono::seconds(10)) {
          // Once per 10 s: each such refusal is only a debug line (a full disk refuses every update).
          last_log_warning_ = Clock::now();
          Log()->warn("the log refuses writes; publishers are told to retry: {}", s.ToString());
        }
        Reject(frontend_, w.identity, s, w.update_id, transient ? 500 : 0);
        continue;
      }
      if (w.outcome->duplicate) {
        stats_.updates_duplicate++;
      } else {
        stats_.updates_logged++;
        stats_.bytes_logged += w.bytes;
        KeepRecent(w.adapter_id, w.outcome->seq, std::move(w.payload));
      }
      Reply(frontend_, w.identity, codec::BuildAck(w.update_id, w.outcome->seq, w.outcome->duplicate));
    }
  }

  void HandleFetch(const zmq::message_t& identity, const wire::Fetch& f) {
    stats_.fetches++;
    auto it = adapters_.find(f.adapter_id()->str());
    if (it == adapters_.end() || !it->second.has_global) {
      Reply(frontend_, identity,
            codec::BuildError(NotFound(fmt::format("unknown adapter '{}'", f.adapter_id()->string_view())),
                              {}, 1000));
      return;
    }
    const auto& e = it->second;
    if (f.have_version() >= 0 && static_cast<uint64_t>(f.have_version()) >= e.version) {
      Reply(frontend_, identity, codec::BuildAnnounce(it->first, e.version, e.content_hash, e.final));
      return;
    }
    std::vector<zmq::message_t> frames;
    frames.emplace_back(identity.data(), identity.size());
    frames.push_back(transport::Frame(e.global));
    transport::SendMultipart(frontend_, frames);
  }

  // --- aggregators ----------------------------------------------------------------------

  void DrainBackend() {
    std::vector<zmq::message_t> frames;
    int fd = -1;
    while (transport::TryRecvMultipart(backend_, frames, nullptr, &fd)) {
      guard_->Read(backend_watch_, fd, frames);
      if (frames.empty()) continue;
      const std::string who = frames[0].to_string();
      leases_.Heard(who, Clock::now());
      for (auto& [adapter, e] : adapters_) {
        if (e.owner == who) e.send_blocked = false;
      }
      if (frames.size() != 2) continue;
      // A global carries every tensor where an update may carry one factor: twice the limit, as
      // ZeroMQ's frame limit allows on this socket.
      auto env = codec::VerifyEnvelope(transport::View(frames[1]), 2 * options_.max_message_bytes);
      if (!env.ok()) {
        Reply(backend_, frames[0], codec::BuildError(env.status()));
        continue;
      }
      const wire::Envelope* e = *env;
      switch (e->body_type()) {
        case wire::Body::Credit:
          HandleCredit(frames[0], *e->body_as_Credit());
          break;
        case wire::Body::GlobalAdapter:
          HandleGlobal(frames[0], frames[1], *e->body_as_GlobalAdapter());
          break;
        case wire::Body::Hello:
          Log()->info("aggregator connected name={}", e->body_as_Hello()->client_id()
                                                          ? e->body_as_Hello()->client_id()->str()
                                                          : "");
          break;
        case wire::Body::Heartbeat:
          Reply(backend_, frames[0], codec::BuildHeartbeat(incarnation_));
          break;
        default:
          Reply(backend_, frames[0],
                codec::BuildError(InvalidArgument(fmt::format(
                    "a {} message is not accepted on the aggregator socket", codec::BodyName(e->body_type())))));
      }
    }
  }

  void TakeSnapshot() {
    const auto now = Clock::now();
    // Every 250 ms, and at once when an adapter appears.
    if (now - last_snapshot_ < std::chrono::milliseconds(250) && snapshot_adapters_ == adapters_.size()) return;
    last_snapshot_ = now;
    snapshot_adapters_ = adapters_.size();
    std::vector<AdapterSnapshot> snap;
    for (const auto& [adapter, e] : adapters_) {
      snap.push_back({adapter, log_->LastSeq(adapter), e.consumed, e.version, !e.owner.empty()});
    }
    std::lock_guard lock(snapshot_mu_);
    snapshot_ = std::move(snap);
  }

  // An adapter's subscription is a lease: while its holder is heard from (any message,
  // heartbeats included, within interval x liveness), no other peer's Credit takes it and no
  // other peer's global replaces the one workers fetch. A restarted aggregator (or a standby) is
  // told when the lease would lapse and tries again then; a stray or hostile peer gets no
  // records. Returns whether `who`'s `what` was refused (and answered).
  bool RefuseIfLeased(const zmq::message_t& identity, const std::string& adapter, const AdapterEntry& e,
                      const std::string& who, std::string_view what) {
    const auto held = leases_.HeldAgainst(e.owner, who, Clock::now());
    if (!held) return false;
    const auto limit = leases_.lease();
    const auto left = held->count();
    stats_.subscriptions_refused++;
    // The first refusal and every 100th: a peer retrying in a loop must not flood the log.
    Log()->log(stats_.subscriptions_refused.load() % 100 == 1 ? spdlog::level::warn : spdlog::level::debug,
               "adapter={} {} refused: another aggregator holds it and is alive (its lease lapses in {} ms unless "
               "it is heard from; {} refused so far)",
               adapter, what, left, stats_.subscriptions_refused.load());
    Reply(backend_, identity,
          codec::BuildError(Unavailable(fmt::format("adapter '{}' is held by another aggregator, alive; its lease "
                                                    "lapses {} ms after it was last heard from",
                                                    adapter, std::chrono::duration_cast<std::chrono::milliseconds>(limit).count())),
                            {}, static_cast<uint32_t>(left)));
    return true;
  }

  // Whether the log position a Credit claims is somewhere this log can continue from; when it
  // is not, the Credit is refused (answered, and logged as an error) rather than served. An
  // aggregator that consumed another log (the log directory was lost or replaced), more of this
  // log than it holds (a truncated write-ahead log, a log restored from an older copy), or a
  // record that is not the one now at that position (records lost, and their sequence numbers
  // given to new updates) would otherwise skip acknowledged updates without a word. The record
  // is compared only when the Credit takes the subscription (`takes`): once per (re)subscribe.
  bool RefuseIfNotInLog(const zmq::message_t& identity, const std::string& adapter, const wire::Credit& c, bool takes) {
    const uint64_t consumed = c.next_seq() > 0 ? c.next_seq() - 1 : 0;
    const std::string theirs = c.log_id() ? c.log_id()->str() : std::string();
    // What a peer claims is quoted at most this long (a log id and a hash are 32 characters).
    const auto quoted = [](std::string_view claim) { return claim.substr(0, 64); };
    const uint64_t head = log_->LastSeq(adapter);
    constexpr std::string_view kRecover =
        "Restore the original log directory and restart the broker, or start the adapter afresh (a new adapter id, or "
        "a new aggregator store); `fedlora replay` rebuilds a store from the log as it is";
    Status refusal;
    if (!theirs.empty() && theirs != log_->Id()) {
      refusal = FailedPrecondition(fmt::format(
          "adapter '{}': this broker's update log (id {}, at '{}') is not the log the aggregator consumed (id {}, up to "
          "seq {}): the log was lost or replaced, and updates it acknowledged may be gone. {}",
          adapter, log_->Id(), options_.log_path, quoted(theirs), consumed, kRecover));
    } else if (consumed > head) {
      refusal = DataLoss(fmt::format(
          "adapter '{}': the aggregator consumed the update log up to seq {}, but the log (id {}, at '{}') ends at seq "
          "{}: {} acknowledged {} missing from it (a truncated write-ahead log, or a log restored from an older copy). "
          "{}",
          adapter, consumed, log_->Id(), options_.log_path, head, consumed - head,
          consumed - head == 1 ? "update is" : "updates are", kRecover));
    } else if (takes && consumed > 0 && c.consumed_hash() && c.consumed_hash()->size() > 0) {
      auto records = log_->Read(adapter, consumed, 1, std::numeric_limits<size_t>::max());
      if (!records.ok()) {
        Log()->error("adapter={} read log record {}: {}", adapter, consumed, records.status().ToString());
        Reply(backend_, identity, codec::BuildError(records.status(), {}, 1000));
        return true;
      }
      const std::string found = records->empty() || records->front().seq != consumed
                                    ? std::string()
                                    : ToHex(HashBytes(codec::AsBytes(records->front().bytes)));
      if (found != c.consumed_hash()->string_view()) {
        refusal = DataLoss(fmt::format(
            "adapter '{}': the record at seq {} of the update log (id {}, at '{}') is not the update the aggregator "
            "consumed there (hash {} in the log, {} consumed): the log lost records and gave their sequence numbers to "
            "newer updates, which the aggregator would skip. {}",
            adapter, consumed, log_->Id(), options_.log_path, found.empty() ? "none" : found,
            quoted(c.consumed_hash()->string_view()), kRecover));
      }
    }
    if (refusal.ok()) return false;
    stats_.positions_refused++;
    Log()->log(stats_.positions_refused.load() % 100 == 1 ? spdlog::level::err : spdlog::level::debug,
               "subscription refused: {}", refusal.message());
    Reply(backend_, identity, codec::BuildError(refusal));
    return true;
  }

  void HandleCredit(const zmq::message_t& identity, const wire::Credit& c) {
    const std::string adapter = c.adapter_id()->str();
    if (!ValidateId("adapter_id", adapter, 128).ok()) return;
    auto& e = Entry(adapter);
    std::string who(static_cast<const char*>(identity.data()), identity.size());
    if (RefuseIfLeased(identity, adapter, e, who, "subscription")) return;
    const bool takes = c.resubscribe() || e.owner != who;
    if (RefuseIfNotInLog(identity, adapter, c, takes)) {
      if (e.owner == who) e.owner.clear();
      return;
    }
    if (takes) {
      if (!e.owner.empty() && e.owner != who) Log()->info("adapter={} changes aggregator", adapter);
      e.owner = std::move(who);
      e.send_blocked = false;
      e.next_to_send = std::max<uint64_t>(1, c.next_seq());
    } else {
      e.next_to_send = std::max(e.next_to_send, c.next_seq());
    }
    e.send_limit = c.next_seq() + c.window();
    e.consumed = c.next_seq() > 0 ? c.next_seq() - 1 : 0;
    while (!e.recent.empty() && e.recent.front().first <= e.consumed) Forget(e.recent, 1);
  }

  void HandleGlobal(const zmq::message_t& identity, zmq::message_t& payload, const wire::GlobalAdapter& g) {
    const std::string adapter = g.adapter_id()->str();
    if (!ValidateId("adapter_id", adapter, 128).ok()) return;
    auto it = adapters_.find(adapter);
    if (it != adapters_.end() &&
        RefuseIfLeased(identity, adapter, it->second,
                       std::string(static_cast<const char*>(identity.data()), identity.size()), "global")) {
      return;
    }
    if (it != adapters_.end() && it->second.has_global && g.version() <= it->second.version &&
        g.final() == it->second.final) {
      return;  // a re-send after reconnect
    }
    auto bytes = std::make_shared<const std::string>(static_cast<const char*>(payload.data()), payload.size());
    Status s = log_->PutGlobal(adapter, codec::AsBytes(*bytes));
    if (!s.ok()) Log()->error("store global adapter={} error=\"{}\"", adapter, s.ToString());
    RememberGlobal(g, bytes);
    const auto& e = Entry(adapter);
    std::vector<zmq::message_t> frames;
    frames.emplace_back(adapter.data(), adapter.size());
    frames.push_back(transport::Frame(codec::BuildAnnounce(adapter, e.version, e.content_hash, e.final)));
    transport::SendMultipart(announce_, frames);
  }

  // An aggregator that has sent nothing (not even a heartbeat) for interval x liveness is
  // presumed dead: its subscriptions are dropped, so nothing more is sent into the void, and
  // whichever aggregator subscribes next (a restarted or a standby process) takes over.
  void ExpireSilentAggregators() {
    const auto now = Clock::now();
    if (now - last_expiry_check_ < options_.heartbeat_interval) return;
    last_expiry_check_ = now;
    const auto limit = leases_.lease();
    for (auto& [adapter, e] : adapters_) {
      if (e.owner.empty() || leases_.Alive(e.owner, now)) continue;
      Log()->warn("adapter={} aggregator silent for more than {} ms: subscription dropped until one resubscribes",
                  adapter, std::chrono::duration_cast<std::chrono::milliseconds>(limit).count());
      stats_.aggregators_expired++;
      e.owner.clear();
    }
    leases_.ForgetSilent(now);
  }

  Status Dispatch() {
    for (auto& [adapter, e] : adapters_) {
      if (e.owner.empty() || e.send_blocked) continue;
      const uint64_t head = e.dispatchable;
      while (e.next_to_send <= head && e.next_to_send < e.send_limit) {
        std::vector<uint64_t> seqs;
        std::vector<zmq::message_t> bodies;
        if (!e.recent.empty() && e.recent.front().first <= e.next_to_send && e.next_to_send <= e.recent.back().first) {
          // The records are still in memory as received: share their buffers.
          size_t bytes = 0;
          for (auto it = e.recent.begin() + static_cast<ptrdiff_t>(e.next_to_send - e.recent.front().first);
               it != e.recent.end() && it->first < e.send_limit; ++it) {
            if (!bodies.empty() && bytes + it->second.size() > options_.deliver_max_bytes) break;
            bytes += it->second.size();
            seqs.push_back(it->first);
            bodies.emplace_back().copy(it->second);
          }
        } else {
          // Up to the first record held in memory, if any.
          const uint64_t end = e.recent.empty() || e.recent.front().first < e.next_to_send
                                   ? e.send_limit
                                   : std::min(e.send_limit, e.recent.front().first);
          ASSIGN_OR_RETURN(auto records,
                           log_->Read(adapter, e.next_to_send, end - e.next_to_send, options_.deliver_max_bytes));
          if (records.empty()) break;
          stats_.records_read_back += records.size();
          for (auto& r : records) {
            seqs.push_back(r.seq);
            bodies.push_back(transport::Frame(std::move(r.bytes)));
          }
        }
        std::vector<zmq::message_t> frames;
        frames.emplace_back(e.owner.data(), e.owner.size());
        frames.push_back(transport::Frame(codec::BuildDeliver(adapter, seqs, head, log_->Id())));
        for (auto& b : bodies) frames.push_back(std::move(b));
        if (!transport::SendMultipart(backend_, frames)) {
          // The aggregator is gone or saturated; its next message resumes delivery.
          e.send_blocked = true;
          break;
        }
        stats_.records_delivered += seqs.size();
        e.next_to_send = seqs.back() + 1;
      }
    }
    return Status::Ok();
  }

  BrokerOptions options_;
  std::unique_ptr<storage::UpdateLog> log_;
  zmq::context_t ctx_;
  BrokerStats stats_;
  mutable std::mutex snapshot_mu_;
  std::vector<AdapterSnapshot> snapshot_;  // guarded by snapshot_mu_
  Clock::time_point last_snapshot_{};
  size_t snapshot_adapters_ = 0;
  std::optional<ZapHandler> zap_;  // before the sockets it authenticates, after the context
  zmq::socket_t frontend_;
  zmq::socket_t backend_;
  zmq::socket_t announce_;
  std::optional<ConnectionGuard> guard_;  // watches the three sockets above
  int frontend_watch_ = -1;
  int backend_watch_ = -1;
  zmq::socket_t wake_rx_;  // I/O thread: the log writer has answers
  zmq::socket_t wake_tx_;  // log writer thread
  const uint64_t incarnation_;
  BrokerEndpoints endpoints_;
  std::map<std::string, AdapterEntry> adapters_;
  RateLimiter rate_limiter_{options_.max_updates_per_s};  // --max-updates-per-s (broker/rate_limit.h)
  // Aggregator identity -> last message; the adapters' leases (schema/transport/heartbeat.h).
  transport::Leases leases_{options_.heartbeat_interval * options_.heartbeat_liveness};
  Clock::time_point last_expiry_check_ = Clock::now();
  Clock::time_point last_log_warning_{};  // of a refused log write
  // Shared with the log writer.
  std::mutex queue_mu_;
  std::condition_variable_any queue_cv_;
  std::deque<PendingUpdate> queue_;
  size_t queued_bytes_ = 0;  // queued or inside the batch being written
  std::vector<WrittenUpdate> written_;
  std::atomic<int64_t> last_commit_us_{0};
  size_t recent_bytes_ = 0;  // held by every AdapterEntry::recent
};

}  // namespace

uint64_t RaiseOpenFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    const rlim_t before = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0) return before;
    Log()->info("open file limit raised from {} to {}", before, limit.rlim_cur);
  }
  return limit.rlim_cur;
}

Result<std::unique_ptr<Broker>> Broker::Create(const BrokerOptions& options) {
  // Every connection holds a descriptor, and the log needs some to switch memtables and
  // flush: Debian's usual soft limit of 1,024 went with 1,100 idle connections.
  RaiseOpenFileLimit();
  storage::UpdateLogOptions log_options;
  log_options.path = options.log_path;
  log_options.sync = options.sync;
  log_options.accept_lost_tail = options.accept_lost_log_tail;
  ASSIGN_OR_RETURN(auto log, storage::UpdateLog::Open(log_options));
  if (!log->AcceptedLoss().ok()) {
    Log()->warn("going on, as asked (--accept-lost-log-tail), from a log that lost updates: {}",
                log->AcceptedLoss().message());
  }
  auto broker = std::make_unique<BrokerImpl>(options, std::move(log));
  RETURN_IF_ERROR(broker->Bind());
  return std::unique_ptr<Broker>(std::move(broker));
}

}  // namespace fedlora::broker
