#include "worker/loadgen.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <thread>
#include <zmq.hpp>

#include "schema/codec.h"
#include "schema/transport/transport.h"
#include "worker/publish_protocol.h"

namespace fedlora::worker {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// The backoff after an unanswered request starts here and doubles up to max(--timeout-ms,
// 500 ms).
constexpr milliseconds kFirstBackoff{200};
// A thread looks at its stop token at least this often.
constexpr milliseconds kStopCheck{100};
// High-water mark of every client socket (BrokerClientOptions::hwm).
constexpr int kClientHwm = 100;

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = [] {
    auto l = spdlog::get("loadgen");
    return l ? l : spdlog::default_logger()->clone("loadgen");
  }();
  return logger;
}

struct Totals {
  std::atomic<uint64_t> acked{0};
  std::atomic<uint64_t> duplicates{0};
  std::atomic<uint64_t> rejected{0};
  std::atomic<uint64_t> bytes{0};
  std::atomic<uint64_t> retry_later{0};  // "retry later" errors (saturated ingest, rate limit) waited out
  std::atomic<uint64_t> timeouts{0};     // requests given up (no reply in time, or unsendable): fresh socket
  std::atomic<bool> final{false};
  std::mutex mu;                    // guards latencies and the acked file
  std::vector<double> latencies_ms;
  std::ofstream acked_file;
};

// One client: learns the spec, then publishes until its quota, a final adapter, or until its
// thread stops driving it. It never blocks: its thread calls OnTime() when wake() has come and
// OnReadable() when its socket has input, and polls the socket only while awaiting() a reply.
// The protocol is BrokerClient's, the same machine (worker/publish_protocol.h): a
// request unanswered within --timeout-ms is given up, the socket replaced by a fresh one (so a
// late reply to the abandoned attempt is never taken for a later one) and, after a backoff, sent
// again; an update always with the same update id, which the broker's log turns into one record
// however often it arrives. "Retry later" errors are waited out (the broker's delay plus up to
// 50% jitter) before the same update is sent again.
class Publisher {
 public:
  Publisher(const LoadOptions& f, uint32_t index, zmq::context_t& ctx, Totals& totals, Clock::time_point now)
      : f_(f),
        ctx_(ctx),
        totals_(totals),
        client_id_(fmt::format("{}-{}", f.prefix, index)),
        pirate_({milliseconds(f.timeout_ms), kFirstBackoff, milliseconds(std::max<uint32_t>(f.timeout_ms, 500))}, now),
        rng_(f.seed * 1000003u + index),
        normal_(0.0f, f.scale) {
    Connect();
  }

  bool done() const { return phase_ == Phase::kDone; }
  bool awaiting() const { return pirate_.awaiting(); }
  Clock::time_point wake() const { return pirate_.wake(); }
  void* handle() { return socket_->handle(); }
  // Ok unless the client ended on an error (an undecodable global).
  const Status& status() const { return status_; }

  // Sends what is due, or gives up on a reply that did not come in time.
  void OnTime(Clock::time_point now) {
    if (done()) return;
    switch (pirate_.At(now)) {
      case LazyPirate::Due::kNothing:
        return;
      case LazyPirate::Due::kSend:
        Send(now);
        return;
      case LazyPirate::Due::kGiveUp:
        Log()->warn("client={} no reply to {} from broker={} within {} ms; reconnecting", client_id_,
                    phase_ == Phase::kPublish ? "update=" + update_id_ : std::string("fetch"), f_.broker,
                    pirate_.timing().timeout.count());
        Reconnect();
        NoReply(now);
        return;
    }
  }

  // Reads queued replies up to the first one to the request in flight; the rest stay queued
  // for the next request, which is where a blocking client would read them too.
  void OnReadable(Clock::time_point now) {
    std::vector<zmq::message_t> frames;
    while (pirate_.awaiting() && transport::TryRecvMultipart(*socket_, frames)) {
      if (frames.size() != 1) continue;
      auto env = codec::VerifyEnvelope(transport::View(frames[0]));
      if (!env.ok()) continue;
      if (phase_ == Phase::kPublish) {
        if (auto reply = ClassifyPublishReply(**env, update_id_)) OnPublishReply(*reply, now);
      } else if (AnswersFetch(**env)) {
        OnFetchReply(**env, now);
      }
    }
  }

 private:
  enum class Phase {
    kLearn,    // fetching until the broker has a global: the spec, and the version to train "from"
    kPublish,  // sending update n_ until acknowledged or refused for good
    kRefresh,  // one fetch after each update, for a newer version
    kDone,
  };

  void Connect() {
    socket_.emplace(ctx_, zmq::socket_type::dealer);
    transport::Configure(*socket_, kClientHwm);
    security::ApplyClient(*socket_, f_.keys);
    socket_->connect(f_.broker);
  }
  void Reconnect() {
    totals_.timeouts++;
    socket_.reset();
    Connect();
  }

  // Sends the phase's request. An update is copied into its frame: it stays ours to send again.
  void Send(Clock::time_point now) {
    std::vector<zmq::message_t> frames;
    if (phase_ == Phase::kPublish) {
      frames.emplace_back(update_.data(), update_.size());
    } else {
      frames.push_back(transport::Frame(
          codec::BuildFetch(f_.adapter, phase_ == Phase::kLearn ? -1 : static_cast<int64_t>(version_))));
    }
    if (!transport::SendMultipart(*socket_, frames)) {
      Reconnect();
      NoReply(now);
      return;
    }
    pirate_.Sent(now);
  }

  // The request in flight went unanswered (the socket has been replaced).
  void NoReply(Clock::time_point now) {
    if (phase_ == Phase::kRefresh) {
      pirate_.GaveUp(now, /*back_off=*/false);
      Next(now);  // the next refresh repairs a lost one
    } else {
      pirate_.GaveUp(now);
    }
  }

  void OnFetchReply(const wire::Envelope& e, Clock::time_point now) {
    if (e.body_type() == wire::Body::GlobalAdapter) {
      if (Status s = Learn(*e.body_as_GlobalAdapter()); !s.ok()) {
        pirate_.Answered(now);
        status_ = std::move(s);
        phase_ = Phase::kDone;
        return;
      }
    }
    if (phase_ == Phase::kRefresh || e.body_type() == wire::Body::GlobalAdapter) {
      pirate_.Answered(now);
      Next(now);
      return;
    }
    // Still no global: an Error says why (the adapter is unknown until its aggregator starts).
    if (e.body_type() == wire::Body::Error) {
      Log()->info("client={} waiting for adapter={}: {}", client_id_, f_.adapter,
                  codec::StatusFromError(*e.body_as_Error()).message());
    }
    pirate_.BackOff(now);
  }

  // Takes the spec, version and finality of a global newer than the one known.
  Status Learn(const wire::GlobalAdapter& g) {
    ASSIGN_OR_RETURN(auto decoded, codec::DecodeGlobal(g));
    if (decoded.info.adapter_id != f_.adapter) {
      return InvalidArgument(fmt::format("broker sent adapter '{}' for '{}'", decoded.info.adapter_id, f_.adapter));
    }
    if (phase_ == Phase::kRefresh && decoded.info.version <= version_) return Status::Ok();
    spec_ = std::move(decoded.spec);
    version_ = decoded.info.version;
    final_ = decoded.info.final;
    return Status::Ok();
  }

  void OnPublishReply(const PublishReply& reply, Clock::time_point now) {
    switch (reply.kind) {
      case PublishReply::Kind::kAcked:
        Acknowledged(reply, now);
        Refresh(now);
        return;
      case PublishReply::Kind::kFinal:
        Log()->info("client={} update={} not accepted: {}", client_id_, update_id_, reply.status.message());
        pirate_.Answered(now);
        totals_.final = true;
        phase_ = Phase::kDone;
        return;
      case PublishReply::Kind::kRejected:
        Log()->error("client={} update={} rejected: {}", client_id_, update_id_, reply.status.ToString());
        totals_.rejected++;
        Refresh(now);
        return;
      case PublishReply::Kind::kRetryLater:
        totals_.retry_later++;
        pirate_.RetryAfter(now, reply.retry_after, RetryJitter());
        return;
    }
  }

  void Acknowledged(const PublishReply& ack, Clock::time_point now) {
    totals_.acked++;
    if (ack.duplicate) totals_.duplicates++;
    totals_.bytes += update_.size();
    std::lock_guard lock(totals_.mu);
    totals_.latencies_ms.push_back(std::chrono::duration<double, std::milli>(now - sent_at_).count());
    if (totals_.acked_file.is_open()) {
      totals_.acked_file << nlohmann::json({{"client_id", client_id_},
                                            {"update_id", update_id_},
                                            {"seq", ack.seq},
                                            {"duplicate", ack.duplicate}})
                                .dump()
                         << '\n';
      totals_.acked_file.flush();
    }
  }

  // After an update is answered for good: the pause, then one fetch of a newer global.
  void Refresh(Clock::time_point now) {
    ++n_;
    phase_ = Phase::kRefresh;
    pirate_.Answered(now, milliseconds(f_.interval_ms));
  }

  // Builds and sends the next update, or ends at the quota or a final adapter.
  void Next(Clock::time_point now) {
    if ((f_.updates > 0 && n_ >= f_.updates) || totals_.final) {
      phase_ = Phase::kDone;
      return;
    }
    if (final_) {
      totals_.final = true;
      phase_ = Phase::kDone;
      return;
    }
    AdapterState delta;
    for (const auto& t : spec_.tensors) {
      DenseTensor d{t.name, t.shape, std::vector<float>(t.numel())};
      for (float& v : d.values) v = normal_(rng_);
      delta.tensors.push_back(std::move(d));
    }
    codec::UpdateHeader h;
    h.update_id = update_id_ = fmt::format("{}-{}", client_id_, n_);
    h.client_id = client_id_;
    h.adapter_id = f_.adapter;
    h.base_version = version_;
    h.num_samples = 32;
    h.local_steps = 1;
    update_ = codec::BuildUpdate(h, delta);
    phase_ = Phase::kPublish;
    sent_at_ = std::max(now, Clock::now());  // latency runs from the first send
    pirate_.Answered(sent_at_);
    Send(sent_at_);
  }

  const LoadOptions& f_;
  zmq::context_t& ctx_;
  Totals& totals_;
  const std::string client_id_;
  LazyPirate pirate_;  // the request in flight, its deadline, or when the next is due
  std::mt19937_64 rng_;
  std::normal_distribution<float> normal_;
  std::optional<zmq::socket_t> socket_;

  Phase phase_ = Phase::kLearn;
  Status status_;
  // The latest global known: its spec, version and finality (its tensors are not kept).
  AdapterSpec spec_;
  uint64_t version_ = 0;
  bool final_ = false;
  // The update being published: the n_-th of this client.
  uint64_t n_ = 0;
  std::string update_id_;
  codec::Bytes update_;
  Clock::time_point sent_at_;
};

// Drives clients [first, last) on this thread until each is done or `stop`; their end states
// go to `results`.
void RunShard(const LoadOptions& f, uint32_t first, uint32_t last, zmq::context_t& ctx, Totals& totals,
              std::vector<Status>& results, std::stop_token stop) {
  std::deque<Publisher> clients;  // not moved once built: each owns a socket
  for (uint32_t i = first; i < last; ++i) clients.emplace_back(f, i, ctx, totals, Clock::now());
  std::vector<zmq::pollitem_t> items;
  std::vector<Publisher*> polled;  // the client of each poll item
  while (!stop.stop_requested()) {
    auto now = Clock::now();
    auto until = now + kStopCheck;
    bool live = false;
    items.clear();
    polled.clear();
    for (Publisher& c : clients) {
      c.OnTime(now);
      if (c.done()) continue;
      live = true;
      until = std::min(until, c.wake());
      if (c.awaiting()) {
        items.push_back({c.handle(), 0, ZMQ_POLLIN, 0});
        polled.push_back(&c);
      }
    }
    if (!live) break;
    try {
      // Rounded up, so a timer less than a millisecond away is not spun on.
      zmq::poll(items, std::chrono::ceil<milliseconds>(std::max(until - now, Clock::duration::zero())));
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) throw;  // a stop signal may land on this thread
      continue;
    }
    now = Clock::now();
    for (size_t i = 0; i < items.size(); ++i) {
      if (items[i].revents & ZMQ_POLLIN) polled[i]->OnReadable(now);
    }
  }
  for (uint32_t i = first; i < last; ++i) results[i] = clients[i - first].status();
}

// Each client holds a socket (a mailbox descriptor and a TCP connection) and, for up to the
// socket's linger after a reconnect, its predecessor too. ZeroMQ allows 1,023 sockets per
// context by default and a shell often 1,024 open files per process: raise both to what
// --clients needs before the first socket is opened.
void ProvideSockets(zmq::context_t& ctx, uint32_t clients) {
  const int sockets = static_cast<int>(2 * clients + 64);
  ctx.set(zmq::ctxopt::max_sockets, std::min(sockets, ctx.get(zmq::ctxopt::socket_limit)));
  const rlim_t files = 4 * static_cast<rlim_t>(clients) + 256;
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < files) {
    const rlim_t raised = limit.rlim_max == RLIM_INFINITY ? files : std::min(files, limit.rlim_max);
    limit.rlim_cur = raised;
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0 || raised < files) {
      Log()->warn("{} clients may need {} open files; the limit is {} (raise it with ulimit -n)", clients, files,
                  raised);
    }
  }
}

}  // namespace

Result<LoadReport> GenerateLoad(const LoadOptions& f, std::stop_token stop,
                                const std::function<void(const LoadProgress&)>& progress) {
  Totals totals;
  if (!f.ack_log.empty()) {
    totals.acked_file.open(f.ack_log, std::ios::app);
    if (!totals.acked_file) return Unavailable(fmt::format("cannot open the ack log '{}'", f.ack_log));
  }
  const uint32_t threads =
      std::min(f.clients, f.threads > 0 ? f.threads : std::max(1u, std::thread::hardware_concurrency()));
  zmq::context_t ctx;
  ProvideSockets(ctx, f.clients);
  const auto start = Clock::now();
  std::vector<Status> results(f.clients);
  {
    std::stop_source inner;
    std::stop_callback forward(stop, [&] { inner.request_stop(); });
    std::atomic<uint32_t> running{threads};
    std::vector<std::jthread> shards;
    for (uint32_t s = 0; s < threads; ++s) {
      const uint32_t first = static_cast<uint32_t>(uint64_t{f.clients} * s / threads);
      const uint32_t last = static_cast<uint32_t>(uint64_t{f.clients} * (s + 1) / threads);
      shards.emplace_back([&, first, last] {
        RunShard(f, first, last, ctx, totals, results, inner.get_token());
        running--;
      });
    }
    const uint64_t target = f.updates * f.clients;
    while (true) {
      const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
      const uint64_t done = totals.acked + totals.rejected;
      if ((f.updates > 0 && done >= target) || totals.final || running == 0 || inner.stop_requested()) break;
      if (f.duration_s > 0 && elapsed >= f.duration_s) {
        inner.request_stop();
        break;
      }
      if (progress) progress({elapsed, totals.acked.load(), totals.rejected.load(), f.clients, threads});
      std::this_thread::sleep_for(milliseconds(50));
    }
    inner.request_stop();
  }  // joins every thread
  for (const Status& s : results) RETURN_IF_ERROR(s);
  LoadReport r;
  r.clients = f.clients;
  r.threads = threads;
  r.acked = totals.acked;
  r.duplicates = totals.duplicates;
  r.rejected = totals.rejected;
  r.bytes = totals.bytes;
  r.retry_later = totals.retry_later;
  r.timeouts = totals.timeouts;
  r.final = totals.final;
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::lock_guard lock(totals.mu);
  r.latencies_ms = totals.latencies_ms;
  return r;
}

}  // namespace fedlora::worker
