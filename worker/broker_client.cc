#include "worker/broker_client.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <mutex>
#include <random>
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

std::string_view IdOf(const flatbuffers::String* s) { return s ? s->string_view() : std::string_view(); }

}  // namespace

void WaitFor(std::stop_token stop, std::chrono::milliseconds d) {
  std::mutex m;
  std::condition_variable_any cv;
  std::unique_lock lock(m);
  cv.wait_for(lock, stop, d, [] { return false; });
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

// Sends `body` and waits for the first reply frame that `matches`. nullopt on timeout (the
// socket is then replaced).
template <typename Matches>
std::optional<zmq::message_t> BrokerClient::Request(std::stop_token stop, const codec::Bytes& body,
                                                    const Matches& matches) {
  std::vector<zmq::message_t> frames;
  frames.emplace_back(body.data(), body.size());
  if (!transport::SendMultipart(*socket_, frames)) {
    Reconnect();
    return std::nullopt;
  }
  const auto deadline = Clock::now() + options_.request_timeout;
  while (!stop.stop_requested() && Clock::now() < deadline) {
    std::vector<zmq::pollitem_t> items = {{socket_->handle(), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, std::chrono::milliseconds(100));
    while (transport::TryRecvMultipart(*socket_, frames)) {
      if (frames.size() != 1) continue;
      auto env = codec::VerifyEnvelope(transport::View(frames[0]));
      if (env.ok() && matches(**env)) return std::move(frames[0]);
    }
  }
  if (!stop.stop_requested()) {
    Log()->warn("client={} no reply from broker={} within {} ms; reconnecting", options_.client_id, options_.broker,
                options_.request_timeout.count());
    Reconnect();
  }
  return std::nullopt;
}

Result<std::optional<codec::DecodedGlobal>> BrokerClient::Fetch(std::stop_token stop, int64_t have,
                                                               Status* not_found) {
  auto reply = Request(stop, codec::BuildFetch(options_.adapter_id, have), [](const wire::Envelope& e) {
    return e.body_type() == wire::Body::GlobalAdapter || e.body_type() == wire::Body::Announce ||
           (e.body_type() == wire::Body::Error && IdOf(e.body_as_Error()->update_id()).empty());
  });
  if (!reply) return std::optional<codec::DecodedGlobal>();
  const auto* env = wire::GetEnvelope(reply->data());
  if (env->body_type() == wire::Body::Error) {
    if (not_found) *not_found = codec::StatusFromError(*env->body_as_Error());
    return std::optional<codec::DecodedGlobal>();
  }
  if (env->body_type() == wire::Body::Announce) return std::optional<codec::DecodedGlobal>();
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
  auto backoff = std::chrono::milliseconds(200);
  while (!stop.stop_requested()) {
    Status not_found;
    ASSIGN_OR_RETURN(auto g, Fetch(stop, -1, &not_found));
    if (g) return g;
    if (!not_found.ok()) {
      Log()->info("client={} waiting for adapter={}: {}", options_.client_id, options_.adapter_id,
                  not_found.message());
    }
    WaitFor(stop, backoff);
    backoff = std::min(backoff * 2, options_.max_backoff);
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
  auto backoff = std::chrono::milliseconds(200);
  while (!stop.stop_requested()) {
    auto reply = Request(stop, update, [id](const wire::Envelope& e) {
      if (e.body_type() == wire::Body::Ack) return IdOf(e.body_as_Ack()->update_id()) == id;
      if (e.body_type() == wire::Body::Error) return IdOf(e.body_as_Error()->update_id()) == id;
      return false;
    });
    if (reply) {
      const auto* env = wire::GetEnvelope(reply->data());
      PublishOutcome out;
      if (env->body_type() == wire::Body::Ack) {
        out.kind = PublishOutcome::Kind::kAcked;
        out.seq = env->body_as_Ack()->seq();
        out.duplicate = env->body_as_Ack()->duplicate();
        return out;
      }
      const auto* err = env->body_as_Error();
      out.status = codec::StatusFromError(*err);
      if (out.status.code() == Code::kFailedPrecondition) {
        Log()->info("client={} update={} not accepted: {}", options_.client_id, id, out.status.message());
        out.kind = PublishOutcome::Kind::kFinal;
        return out;
      }
      if (err->retry_after_ms() == 0) {
        Log()->error("client={} update={} rejected: {}", options_.client_id, id, out.status.ToString());
        out.kind = PublishOutcome::Kind::kRejected;
        return out;
      }
      // The broker said when. Up to 50% jitter keeps clients refused together from returning
      // together; no doubling on top.
      retry_laters_++;
      thread_local std::mt19937 rng(std::random_device{}());
      const double jitter = std::uniform_real_distribution<double>(1.0, 1.5)(rng);
      WaitFor(stop, std::chrono::milliseconds(static_cast<int64_t>(err->retry_after_ms() * jitter)));
      continue;
    }
    WaitFor(stop, backoff);
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
  return {};
}

}  // namespace fedlora::worker
