#include "worker/broker_client.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <mutex>
#include <vector>

#include "schema/transport/transport.h"

namespace fedlora::worker {
namespace {

using Clock = std::chrono::steady_clock;

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = [] {
    auto l = spdlog::get("worker");
    return l ? l : spdlog::default_logger()->clone("worker");
  }();
  return logger;
}

}  // namespace

void WaitFor(std::stop_token stop, std::chrono::milliseconds d) {
  std::mutex m;
  std::condition_variable_any cv;
  std::unique_lock lock(m);
  cv.wait_for(lock, stop, d, [] { return false; });
}

void WaitUntil(std::stop_token stop, std::chrono::steady_clock::time_point t) {
  const auto now = Clock::now();
  if (t > now) WaitFor(stop, std::chrono::ceil<std::chrono::milliseconds>(t - now));
}

BrokerClient::BrokerClient(zmq::context_t& ctx, BrokerClientOptions options) : ctx_(ctx), options_(std::move(options)) {
  Connect();
}

void BrokerClient::Connect() {
  socket_.emplace(ctx_, zmq::socket_type::dealer);
  transport::Configure(*socket_, options_.hwm);
  security::ApplyClient(*socket_, options_.keys);
  socket_->connect(options_.broker);
  if (!sub_ && !options_.announce.empty()) {
    sub_.emplace(ctx_, zmq::socket_type::sub);
    transport::Configure(*sub_, options_.hwm);
    security::ApplyClient(*sub_, options_.keys);
    sub_->set(zmq::sockopt::subscribe, options_.adapter_id);
    sub_->connect(options_.announce);
  }
}

void BrokerClient::Reconnect() {
  retries_++;
  socket_.reset();
  Connect();
}

PirateTiming BrokerClient::Timing() const {
  return {options_.request_timeout, std::chrono::milliseconds(200), options_.max_backoff};
}

// One attempt of the request `pirate` tracks: sends `body` and waits until its deadline for the
// first reply frame that `matches`. nullopt when none came: the socket has then been replaced
// and the pirate backs off.
template <typename Matches>
std::optional<zmq::message_t> BrokerClient::Attempt(std::stop_token stop, LazyPirate& pirate, const codec::Bytes& body,
                                                    const Matches& matches) {
  std::vector<zmq::message_t> frames;
  frames.emplace_back(body.data(), body.size());
  if (!transport::SendMultipart(*socket_, frames)) {
    Reconnect();
    pirate.GaveUp(Clock::now());
    return std::nullopt;
  }
  pirate.Sent(Clock::now());
  while (!stop.stop_requested()) {
    const auto now = Clock::now();
    if (pirate.At(now) == LazyPirate::Due::kGiveUp) {
      Log()->warn("client={} no reply from broker={} within {} ms; reconnecting", options_.client_id,
                  options_.broker, options_.request_timeout.count());
      Reconnect();
      pirate.GaveUp(now);
      return std::nullopt;
    }
    std::vector<zmq::pollitem_t> items = {{socket_->handle(), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, std::min(std::chrono::milliseconds(100),
                              std::chrono::ceil<std::chrono::milliseconds>(pirate.wake() - now)));
    while (transport::TryRecvMultipart(*socket_, frames)) {
      if (frames.size() != 1) continue;
      // The broker's replies: a global is as large as the adapter, whatever the update limit.
      auto env = codec::VerifyEnvelope(transport::View(frames[0]), codec::kMaxBufferBytes);
      if (env.ok() && matches(**env)) return std::move(frames[0]);
    }
  }
  return std::nullopt;
}

Result<std::optional<codec::DecodedGlobal>> BrokerClient::Fetch(std::stop_token stop, int64_t have,
                                                               Status* not_found) {
  LazyPirate pirate(Timing(), Clock::now());
  return FetchOnce(stop, pirate, have, not_found);
}

Result<std::optional<codec::DecodedGlobal>> BrokerClient::FetchOnce(std::stop_token stop, LazyPirate& pirate,
                                                                   int64_t have, Status* not_found) {
  auto reply = Attempt(stop, pirate, codec::BuildFetch(options_.adapter_id, have), AnswersFetch);
  if (!reply) return std::optional<codec::DecodedGlobal>();
  const auto* env = wire::GetEnvelope(reply->data());
  if (env->body_type() == wire::Body::Error) {
    if (not_found) *not_found = codec::StatusFromError(*env->body_as_Error());
    pirate.BackOff(Clock::now());
    return std::optional<codec::DecodedGlobal>();
  }
  if (env->body_type() == wire::Body::Announce) {
    pirate.BackOff(Clock::now());
    return std::optional<codec::DecodedGlobal>();
  }
  pirate.Answered(Clock::now());
  ASSIGN_OR_RETURN(auto decoded, codec::DecodeGlobal(*env->body_as_GlobalAdapter()));
  if (decoded.info.adapter_id != options_.adapter_id) {
    return InvalidArgument(
        fmt::format("broker sent adapter '{}' for '{}'", decoded.info.adapter_id, options_.adapter_id));
  }
  if (have >= 0 && decoded.info.version <= static_cast<uint64_t>(have)) {
    return std::optional<codec::DecodedGlobal>();
  }
  return std::optional<codec::DecodedGlobal>(std::move(decoded));
}

Result<std::optional<codec::DecodedGlobal>> BrokerClient::FetchUntilAvailable(std::stop_token stop) {
  LazyPirate pirate(Timing(), Clock::now());
  while (!stop.stop_requested()) {
    WaitUntil(stop, pirate.wake());
    if (stop.stop_requested()) break;
    Status not_found;
    ASSIGN_OR_RETURN(auto g, FetchOnce(stop, pirate, -1, &not_found));
    if (g) return g;
    if (!not_found.ok()) {
      Log()->info("client={} waiting for adapter={}: {}", options_.client_id, options_.adapter_id,
                  not_found.message());
    }
  }
  return std::optional<codec::DecodedGlobal>();
}

Result<std::optional<codec::DecodedGlobal>> BrokerClient::WaitForNewer(std::stop_token stop, uint64_t have,
                                                                      std::chrono::milliseconds wait) {
  const auto until = Clock::now() + wait;
  std::vector<zmq::message_t> frames;
  while (sub_ && !stop.stop_requested() && Clock::now() < until) {
    std::vector<zmq::pollitem_t> items = {{sub_->handle(), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, std::chrono::milliseconds(100));
    bool announced = false;
    while (transport::TryRecvMultipart(*sub_, frames)) {
      if (frames.size() != 2) continue;
      auto env = codec::VerifyEnvelope(transport::View(frames[1]));
      if (env.ok() && (*env)->body_type() == wire::Body::Announce &&
          (*env)->body_as_Announce()->adapter_id()->string_view() == options_.adapter_id &&
          (*env)->body_as_Announce()->version() > have) {
        announced = true;
      }
    }
    if (announced) break;
  }
  return Fetch(stop, static_cast<int64_t>(have));
}

PublishOutcome BrokerClient::PublishUntilAcked(std::stop_token stop, std::string_view id, const codec::Bytes& update) {
  LazyPirate pirate(Timing(), Clock::now());
  while (!stop.stop_requested()) {
    WaitUntil(stop, pirate.wake());
    if (stop.stop_requested()) break;
    auto reply = Attempt(stop, pirate, update,
                         [id](const wire::Envelope& e) { return ClassifyPublishReply(e, id).has_value(); });
    if (!reply) continue;
    const PublishReply r = *ClassifyPublishReply(*wire::GetEnvelope(reply->data()), id);
    PublishOutcome out;
    out.seq = r.seq;
    out.duplicate = r.duplicate;
    out.status = r.status;
    switch (r.kind) {
      case PublishReply::Kind::kAcked:
        out.kind = PublishOutcome::Kind::kAcked;
        return out;
      case PublishReply::Kind::kFinal:
        Log()->info("client={} update={} not accepted: {}", options_.client_id, id, r.status.message());
        out.kind = PublishOutcome::Kind::kFinal;
        return out;
      case PublishReply::Kind::kRejected:
        Log()->error("client={} update={} rejected: {}", options_.client_id, id, r.status.ToString());
        out.kind = PublishOutcome::Kind::kRejected;
        return out;
      case PublishReply::Kind::kRetryLater:
        retry_laters_++;
        pirate.RetryAfter(Clock::now(), r.retry_after, RetryJitter());
        break;
    }
  }
  return {};
}

}  // namespace fedlora::worker
