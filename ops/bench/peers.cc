// The peer relays of the ingest benchmark (peers.h): a server child process per measurement,
// driven through each project's own client library as Debian ships it, libmosquitto (MQTT
// 3.1.1) and hiredis (RESP2). Anything a client or server reports that the measurement does not
// expect is an error, never silently skipped.
#include "ops/bench/peers.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <hiredis/hiredis.h>
#include <mosquitto.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string_view>
#include <thread>
#include <vector>

#include "ops/observe/percentile.h"
#include "ops/process/child.h"

namespace fedlora::bench {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

[[noreturn]] void Fail(const std::string& what) { throw std::runtime_error(what); }

std::string ErrnoText(std::string_view what) { return fmt::format("{}: {}", what, std::strerror(errno)); }

// ---------------------------------------------------------------------------------------------
// Server process

sockaddr_in Loopback(uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

// A port the kernel just handed out. Another process may take it before the server binds it;
// StartServer then retries with a fresh one.
uint16_t FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) Fail(ErrnoText("socket"));
  sockaddr_in addr = Loopback(0);
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string err = ErrnoText("bind 127.0.0.1:0");
    ::close(fd);
    Fail(err);
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

// Whether 127.0.0.1:port accepts a TCP connection; nothing is sent on it.
bool Accepts(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) Fail(ErrnoText("socket"));
  const sockaddr_in addr = Loopback(port);
  const bool ok = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

std::string FindBinary(const std::string& name, const std::string& package) {
  std::vector<std::string> dirs = {"/usr/sbin", "/usr/bin"};  // Debian installs them there
  if (const char* path = std::getenv("PATH")) {
    for (std::string_view rest = path; !rest.empty();) {
      const size_t colon = rest.find(':');
      dirs.emplace_back(rest.substr(0, colon));
      rest = colon == std::string_view::npos ? std::string_view() : rest.substr(colon + 1);
    }
  }
  for (const std::string& dir : dirs) {
    const std::string candidate = dir + "/" + name;
    if (!dir.empty() && ::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  Fail(fmt::format("{} not found in /usr/sbin, /usr/bin or $PATH: install the Debian package `{}` "
                   "(apt-get install {})",
                   name, package, package));
}

// A server started as a child process, its stdout and stderr in a log file, stopped with
// SIGTERM when this goes out of scope (so a failed measurement never leaves one running).
class Server {
 public:
  Server(std::string name, const std::vector<std::string>& argv, std::string log_path)
      : name_(std::move(name)), log_path_(std::move(log_path)) {
    process::ChildOptions o;
    o.args = argv;
    o.output_path = log_path_;
    o.truncate_output = true;
    // If the benchmark dies (a crash, Ctrl-C), the server goes with it instead of lingering on
    // its port with its data directory held open.
    o.die_with_parent = true;
    auto child = process::Child::Start(std::move(o));
    if (!child.ok()) Fail(fmt::format("start {}: {}", name_, child.status().message()));
    child_ = std::move(*child);
  }
  ~Server() { Stop(); }
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Waits until the port accepts connections. False when the server exited first (its log
  // says why), a timeout throws.
  bool WaitAccepting(uint16_t port, std::chrono::seconds timeout) {
    for (const auto deadline = Clock::now() + timeout; Clock::now() < deadline;) {
      if (!child_->running()) return false;
      if (Accepts(port)) return true;
      std::this_thread::sleep_for(milliseconds(20));
    }
    Fail(fmt::format("{} did not accept connections on 127.0.0.1:{} within {} s; log {}:\n{}", name_, port,
                     timeout.count(), log_path_, LogTail()));
  }

  // SIGTERM and wait; SIGKILL if it is not gone after 30 s (mosquitto writes its whole
  // in-memory database at shutdown, which takes a while when a lot is queued).
  void Stop() {
    if (child_->running()) child_->Stop(std::chrono::seconds(30));
  }

  std::string LogTail() const {
    std::ifstream in(log_path_);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return text.size() > 2000 ? "..." + text.substr(text.size() - 2000) : text;
  }

 private:
  std::string name_;
  std::string log_path_;
  std::unique_ptr<process::Child> child_;
};

// Starts the server that `argv_for(port)` describes on a free port, retrying with another port
// when it exits before accepting (most likely someone else took the port in between).
std::unique_ptr<Server> StartServer(const std::string& name, const std::string& log_path,
                                    const std::function<std::vector<std::string>(uint16_t)>& argv_for,
                                    uint16_t* port) {
  std::string last_log;
  for (int attempt = 0; attempt < 3; ++attempt) {
    *port = FreePort();
    auto server = std::make_unique<Server>(name, argv_for(*port), log_path);
    if (server->WaitAccepting(*port, std::chrono::seconds(15))) return server;
    last_log = server->LogTail();
  }
  Fail(fmt::format("{} exited before accepting connections (3 attempts); log {}:\n{}", name, log_path, last_log));
}

// ---------------------------------------------------------------------------------------------
// Closed-loop measurement, the same shape as BrokerIngest in ingest.cc

class Publisher {
 public:
  virtual ~Publisher() = default;
  // Sends one payload; returns once the server has acknowledged it.
  virtual void Publish(std::string_view payload) = 0;
};

class Consumer {
 public:
  virtual ~Consumer() = default;
  // Waits up to timeout_ms for messages; returns how many arrived (each checked to carry a
  // payload of the published size). Returns after a bounded batch even while messages keep
  // coming, so the caller's count stays current.
  virtual uint64_t Receive(int timeout_ms) = 0;
};

// Runs the publishers for `seconds` and the consumer until it has received every acknowledged
// message (or makes no progress for a few seconds: a relay that dropped some never gets
// there, and the figure then shows delivered < acknowledged).
RelayFigure Measure(size_t bytes, int publishers, double seconds, Consumer& consumer,
                    const std::function<std::unique_ptr<Publisher>(int)>& connect) {
  std::vector<std::unique_ptr<Publisher>> pubs;
  for (int p = 0; p < publishers; ++p) pubs.push_back(connect(p));
  const std::string payload(bytes, 'u');

  std::mutex error_mu;
  std::exception_ptr error;
  std::atomic<bool> go{false}, stop{false}, stop_consumer{false};
  auto record_error = [&] {
    std::lock_guard lock(error_mu);
    if (!error) error = std::current_exception();
    stop = true;
  };

  std::atomic<uint64_t> delivered{0};
  std::thread consumer_thread([&] {
    try {
      while (!stop_consumer) delivered += consumer.Receive(100);
    } catch (...) {
      record_error();
    }
  });

  std::vector<std::vector<double>> latencies(publishers);
  std::vector<std::thread> threads;
  for (int p = 0; p < publishers; ++p) {
    threads.emplace_back([&, p] {
      try {
        while (!go) std::this_thread::yield();
        while (!stop) {
          const auto t0 = Clock::now();
          pubs[p]->Publish(payload);
          latencies[p].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        }
      } catch (...) {
        record_error();
      }
    });
  }
  go = true;
  const auto start = Clock::now();
  while (!stop && Clock::now() - start < std::chrono::duration<double>(seconds)) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  stop = true;
  for (auto& t : threads) t.join();
  const double dt = std::chrono::duration<double>(Clock::now() - start).count();

  uint64_t acknowledged = 0;
  std::vector<double> all;
  for (const auto& l : latencies) {
    acknowledged += l.size();
    all.insert(all.end(), l.begin(), l.end());
  }
  uint64_t seen = delivered;
  auto last_progress = Clock::now();
  while (seen < acknowledged && Clock::now() - last_progress < std::chrono::seconds(3)) {
    std::this_thread::sleep_for(milliseconds(10));
    if (delivered != seen) {
      seen = delivered;
      last_progress = Clock::now();
    }
    std::lock_guard lock(error_mu);
    if (error) break;
  }
  stop_consumer = true;
  consumer_thread.join();
  pubs.clear();  // disconnect before the caller stops the server
  if (error) std::rethrow_exception(error);

  RelayFigure f;
  f.acknowledged = acknowledged;
  f.delivered = delivered;
  f.updates_per_s = acknowledged / dt;
  f.mb_per_s = acknowledged * bytes / dt / 1e6;
  f.p50_ms = observe::Percentile(all, 0.50);
  f.p99_ms = observe::Percentile(all, 0.99);
  return f;
}

// ---------------------------------------------------------------------------------------------
// MQTT through libmosquitto

constexpr const char* kTopic = "fedlora/bench/updates";

void CheckMosq(int rc, std::string_view what) {
  if (rc != MOSQ_ERR_SUCCESS) Fail(fmt::format("MQTT: {}: {}", what, mosquitto_strerror(rc)));
}

// One MQTT client in either role: a publisher (clean session, PUBLISH at QoS 1 and wait for
// its PUBACK) or, after Subscribe(), the consumer. It is driven with mosquitto_loop from the
// thread that uses it, not by a loop thread of its own, so a publisher's round trip has no
// hand-off between threads in it, as when it waited on the socket itself. The callbacks only
// record what arrived: an exception must not unwind through the C library, so Loop() raises
// what they saw.
class MqttClient final : public Publisher, public Consumer {
 public:
  // clean_session false keeps the session, and with it the QoS 1 messages queued for it,
  // across disconnects and in mosquitto's persistence. `bytes`: the payload size a consumer
  // expects.
  MqttClient(uint16_t port, const std::string& id, bool clean_session, size_t bytes) : bytes_(bytes) {
    static const int init = mosquitto_lib_init();  // once per process (a static is thread-safe)
    CheckMosq(init, "mosquitto_lib_init");
    mosq_.reset(mosquitto_new(id.c_str(), clean_session, this));
    if (!mosq_) Fail(ErrnoText("MQTT: mosquitto_new"));
    CheckMosq(mosquitto_int_option(mosq_.get(), MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311), "protocol 3.1.1");
    // Acknowledgements are a few bytes each: without NODELAY, Nagle holding one back until the
    // peer's delayed ACK would add tens of milliseconds to every round trip.
    CheckMosq(mosquitto_int_option(mosq_.get(), MOSQ_OPT_TCP_NODELAY, 1), "TCP_NODELAY");
    mosquitto_connect_callback_set(mosq_.get(), [](mosquitto*, void* self, int rc) { Self(self)->connack_ = rc; });
    mosquitto_publish_callback_set(mosq_.get(), [](mosquitto*, void* self, int mid) { Self(self)->acked_mid_ = mid; });
    mosquitto_subscribe_callback_set(mosq_.get(), [](mosquitto*, void* self, int, int n, const int* granted) {
      Self(self)->granted_qos_ = n == 1 ? granted[0] : 0x80;
    });
    // libmosquitto answers each QoS 1 message with its PUBACK itself, next to this call, so the
    // server can release it: the QoS 1 flow is complete.
    mosquitto_message_callback_set(mosq_.get(), [](mosquitto*, void* self, const mosquitto_message* m) {
      MqttClient* c = Self(self);
      if (static_cast<size_t>(m->payloadlen) == c->bytes_) {
        ++c->received_;
      } else if (c->bad_payload_ < 0) {
        c->bad_payload_ = m->payloadlen;
      }
    });
    // The keep-alive is kept by mosquitto_loop itself (PINGREQ when a client has sent nothing
    // that long).
    CheckMosq(mosquitto_connect(mosq_.get(), "127.0.0.1", port, 60), fmt::format("connect 127.0.0.1:{}", port));
    LoopUntil([&] { return connack_ >= 0; }, "CONNACK");
    if (connack_ != 0) Fail(fmt::format("MQTT: CONNECT of {} refused: {}", id, mosquitto_connack_string(connack_)));
  }
  ~MqttClient() override { mosquitto_disconnect(mosq_.get()); }  // sends DISCONNECT; mosq_ is destroyed after

  void Subscribe() {
    CheckMosq(mosquitto_subscribe(mosq_.get(), nullptr, kTopic, 1), "SUBSCRIBE");
    LoopUntil([&] { return granted_qos_ >= 0; }, "SUBACK");
    if (granted_qos_ != 1) Fail(fmt::format("MQTT: subscription not granted at QoS 1 (code {})", granted_qos_));
  }

  void Publish(std::string_view payload) override {
    int mid = 0;
    CheckMosq(mosquitto_publish(mosq_.get(), &mid, kTopic, static_cast<int>(payload.size()), payload.data(), 1, false),
              "PUBLISH");
    while (acked_mid_ != mid) Loop(1000);  // on_publish fires on the PUBACK for QoS 1
  }

  // mosquitto_loop reads a single packet per call when the client has nothing queued (QoS 1
  // messages never are): read on while messages keep coming, up to a bounded batch.
  uint64_t Receive(int timeout_ms) override {
    const uint64_t before = received_;
    Loop(timeout_ms);
    for (uint64_t last = before; received_ != last && received_ - before < 256;) {
      last = received_;
      Loop(0);
    }
    return received_ - before;
  }

 private:
  static MqttClient* Self(void* p) { return static_cast<MqttClient*>(p); }

  void Loop(int timeout_ms) {
    CheckMosq(mosquitto_loop(mosq_.get(), timeout_ms, 1), "network loop");
    if (bad_payload_ >= 0) {
      Fail(fmt::format("MQTT: consumer got a payload of {} bytes, published {}", bad_payload_, bytes_));
    }
  }

  void LoopUntil(const std::function<bool()>& done, std::string_view what) {
    for (const auto deadline = Clock::now() + std::chrono::seconds(15); !done();) {
      if (Clock::now() > deadline) Fail(fmt::format("MQTT: no {} within 15 s", what));
      Loop(100);
    }
  }

  std::unique_ptr<mosquitto, decltype(&mosquitto_destroy)> mosq_{nullptr, &mosquitto_destroy};
  size_t bytes_;
  int connack_ = -1, granted_qos_ = -1, acked_mid_ = 0;
  uint64_t received_ = 0;
  int bad_payload_ = -1;
};

// ---------------------------------------------------------------------------------------------
// Redis Streams through hiredis (blocking calls; hiredis sets TCP_NODELAY on its connections)

constexpr const char* kStream = "fedlora:bench:updates";

using Reply = std::unique_ptr<redisReply, decltype(&freeReplyObject)>;

class Redis {
 public:
  explicit Redis(uint16_t port) : ctx_(redisConnect("127.0.0.1", port), &redisFree) {
    if (!ctx_) Fail("redis: cannot allocate a connection");
    if (ctx_->err) Fail(fmt::format("redis: connect 127.0.0.1:{}: {}", port, ctx_->errstr));
  }

  // One command in redisCommand's format (%s a C string; %b a pointer and a size, binary safe,
  // for payloads). An error reply throws, naming the command.
  template <typename... Args>
  Reply Call(const char* format, Args... args) {
    Reply r(static_cast<redisReply*>(redisCommand(ctx_.get(), format, args...)), &freeReplyObject);
    const std::string_view command = std::string_view(format).substr(0, std::string_view(format).find(' '));
    if (!r) Fail(fmt::format("redis: {}: {}", command, ctx_->errstr));
    if (r->type == REDIS_REPLY_ERROR) {
      Fail(fmt::format("redis: {} failed: {}", command, std::string_view(r->str, r->len)));
    }
    return r;
  }

 private:
  std::unique_ptr<redisContext, decltype(&redisFree)> ctx_;
};

class StreamPublisher : public Publisher {
 public:
  StreamPublisher(uint16_t port, size_t cap) : redis_(port), cap_(std::to_string(cap)) {}

  void Publish(std::string_view payload) override {
    // MAXLEN ~ trims whole stream nodes, the cheap form; the stream stays within about cap
    // entries however long the run.
    const Reply r = redis_.Call("XADD %s MAXLEN ~ %s * u %b", kStream, cap_.c_str(), payload.data(), payload.size());
    if (r->type != REDIS_REPLY_STRING) Fail("redis: XADD did not return an entry id");
  }

 private:
  Redis redis_;
  std::string cap_;
};

class StreamConsumer : public Consumer {
 public:
  StreamConsumer(uint16_t port, size_t bytes, size_t count)
      : redis_(port), bytes_(bytes), count_(std::to_string(count)) {}

  uint64_t Receive(int timeout_ms) override {
    // BLOCK 0 would wait forever.
    const Reply r = redis_.Call("XREAD COUNT %s BLOCK %d STREAMS %s %s", count_.c_str(), std::max(timeout_ms, 1),
                                kStream, last_id_.c_str());
    if (r->type == REDIS_REPLY_NIL) return 0;  // timed out
    // [[stream, [[id, [field, value]], ...]]]
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 1 || r->element[0]->elements != 2) {
      Fail("redis: unexpected XREAD reply");
    }
    const redisReply* entries = r->element[0]->element[1];
    if (entries->type != REDIS_REPLY_ARRAY) Fail("redis: unexpected XREAD reply");
    for (size_t i = 0; i < entries->elements; ++i) {
      const redisReply* entry = entries->element[i];
      if (entry->elements != 2 || entry->element[1]->elements != 2) Fail("redis: unexpected stream entry");
      const size_t got = entry->element[1]->element[1]->len;
      if (got != bytes_) Fail(fmt::format("redis: consumer got a payload of {} bytes, published {}", got, bytes_));
      last_id_.assign(entry->element[0]->str, entry->element[0]->len);
    }
    return entries->elements;
  }

 private:
  Redis redis_;
  size_t bytes_;
  std::string count_;
  std::string last_id_ = "0-0";  // a fresh stream: from its first entry
};

}  // namespace

// ---------------------------------------------------------------------------------------------

RelayFigure MosquittoRelay(const std::string& scratch_dir, size_t bytes, int publishers, double seconds) {
  const std::string binary = FindBinary("mosquitto", "mosquitto");
  const std::string data_dir = scratch_dir + "/mosquitto";
  std::filesystem::create_directories(data_dir);
  const std::string conf_path = scratch_dir + "/mosquitto.conf";
  auto argv_for = [&](uint16_t port) {
    std::ofstream conf(conf_path, std::ios::trunc);
    conf << fmt::format("listener {} 127.0.0.1\n", port)
         << "allow_anonymous true\n"
         // Run as root, mosquitto drops to the `mosquitto` user, which could not write our
         // scratch directory; `root` keeps the identity it was started with.
         << (::geteuid() == 0 ? "user root\n" : "")
         << "persistence true\n"
         << fmt::format("persistence_location {}/\n", data_dir)
         // The strictest persistence mosquitto has: with autosave_on_changes, autosave_interval
         // counts changes instead of seconds, so at 1 the whole in-memory database is saved at
         // the end of every main-loop pass that saw a counted change. What that gives, read in
         // the 2.0 source and checked against 2.0.11 with its debug log and strace:
         //  - The PUBACK is written while the pass handles the PUBLISH; a snapshot, if any,
         //    comes at the end of that pass. An acknowledged message is on disk only once a
         //    later snapshot has been written, fsynced and renamed into place (the directory is
         //    not fsynced), so a crash in that window loses it; our broker acknowledges only
         //    after the synced group commit that contains the update.
         //  - Counted changes are subscriptions, persistent-session connects, retained
         //    messages, a message queued behind a persistent subscriber's in-flight window, and
         //    that subscriber's PUBACKs. A message that goes straight into flight counts for
         //    nothing; with max_inflight_messages 0 (unlimited) no publish ever triggers a
         //    snapshot, which is why the window below stays at its default.
         //  - Only messages a persistent (clean session off) subscriber has not acknowledged
         //    are in the snapshot at all, and every snapshot rewrites all of them (one fsync of
         //    the whole file). mosquitto reads one packet per connection per pass, so the
         //    single consumer's PUBACKs are taken at 1/publishers the rate of the PUBLISHes: its
         //    backlog, and with it every snapshot, grows through the run, and the figure falls
         //    with the run's length (at 4 KiB, 8 publishers: about 1000 upd/s over 1 s, 360
         //    over 8 s; a 1 s time-based autosave reaches about 28000).
         << "autosave_on_changes true\n"
         << "autosave_interval 1\n"
         << "max_inflight_messages 20\n"
         // One consumer takes what 8 publishers send and falls behind (above); the default
         // queue (1000 messages, then silently dropped) would drop some, so the queue is
         // bounded by bytes only. A drop shows as delivered < acknowledged.
         << "max_queued_messages 0\n"
         << "max_queued_bytes 1073741824\n"
         << "message_size_limit 0\n"  // 0: anything MQTT can carry (256 MiB)
         << "set_tcp_nodelay true\n"  // as our clients; mosquitto defaults to Nagle
         << "log_dest stdout\n"
         << "log_type error\nlog_type warning\nlog_type notice\n";
    if (!conf) Fail("cannot write " + conf_path);
    return std::vector<std::string>{binary, "-c", conf_path};
  };
  uint16_t port = 0;
  auto server = StartServer("mosquitto", scratch_dir + "/mosquitto.log", argv_for, &port);
  RelayFigure f;
  {
    MqttClient consumer(port, "fedlora-bench-consumer", /*clean_session=*/false, bytes);
    consumer.Subscribe();
    f = Measure(bytes, publishers, seconds, consumer, [&](int p) {
      return std::make_unique<MqttClient>(port, fmt::format("fedlora-bench-pub-{}", p), /*clean_session=*/true, bytes);
    });
  }
  server->Stop();
  return f;
}

RelayFigure RedisStreamsRelay(const std::string& scratch_dir, size_t bytes, int publishers, double seconds) {
  const std::string binary = FindBinary("redis-server", "redis-server");
  const std::string data_dir = scratch_dir + "/redis";
  std::filesystem::create_directories(data_dir);
  // appendfsync always: each event-loop pass appends the commands it ran to the AOF, calls
  // fdatasync, and only then writes the replies (seen in strace on 7.0.15: AOF write,
  // fdatasync, the XADD replies), so an XADD reply means the entry is on disk, group-committed
  // per pass like our synced group commit. --save "" turns RDB snapshots off; the AOF alone
  // carries durability (it is still rewritten in the background as it grows).
  auto argv_for = [&](uint16_t port) {
    return std::vector<std::string>{binary, "--port", std::to_string(port), "--bind", "127.0.0.1",
                                    "--dir", data_dir, "--appendonly", "yes", "--appendfsync", "always",
                                    "--save", "", "--daemonize", "no", "--protected-mode", "no"};
  };
  uint16_t port = 0;
  auto server = StartServer("redis-server", scratch_dir + "/redis.log", argv_for, &port);
  {
    const Reply pong = Redis(port).Call("PING");
    if (pong->type != REDIS_REPLY_STATUS || std::string_view(pong->str, pong->len) != "PONG") {
      Fail("redis: PING not answered with PONG");
    }
  }
  // XADD ... MAXLEN ~ cap keeps the stream at about 2 GiB of entries (at least 16), so
  // Redis's memory stays bounded however long the run. Entries the consumer has not read by
  // then would be trimmed and never delivered, and it does fall behind at large payloads:
  // Redis writes a client only about 128 KiB per pass while each of 8 publishers adds a whole
  // payload per pass. With 256 MiB, delivered ended below acknowledged from 64 KiB up; 2 GiB
  // covers the benchmark's runs of a few seconds, so every acknowledged byte is relayed, as
  // through the broker. XREAD asks for at most 16 MiB per call so no reply grows past that.
  constexpr size_t kStreamBytes = 2048u << 20, kReadBytes = 16u << 20;
  const size_t cap = std::max<size_t>(16, kStreamBytes / std::max<size_t>(bytes, 1));
  RelayFigure f;
  {
    StreamConsumer consumer(port, bytes, std::max<size_t>(1, kReadBytes / std::max<size_t>(bytes, 1)));
    f = Measure(bytes, publishers, seconds, consumer,
                [&](int) { return std::make_unique<StreamPublisher>(port, cap); });
  }
  server->Stop();
  return f;
}

}  // namespace fedlora::bench
