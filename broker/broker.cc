#include "broker/broker.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <map>
#include <vector>
#include <zmq.hpp>

#include "schema/validate.h"
#include "schema/codec.h"
#include "schema/transport.h"
#include "storage/update_log.h"

namespace fedlora::broker {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = [] {
    auto l = spdlog::get("broker");
    return l ? l : spdlog::default_logger()->clone("broker");
  }();
  return logger;
}

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
};

// An update waiting for the group commit; its frames stay alive until acknowledged.
struct PendingUpdate {
  zmq::message_t identity;
  zmq::message_t payload;
  const wire::Update* update = nullptr;
};

class BrokerImpl final : public Broker {
 public:
  BrokerImpl(BrokerOptions options, std::unique_ptr<storage::UpdateLog> log)
      : options_(std::move(options)),
        log_(std::move(log)),
        frontend_(ctx_, zmq::socket_type::router),
        backend_(ctx_, zmq::socket_type::router),
        announce_(ctx_, zmq::socket_type::pub) {}

  Status Bind() {
    try {
      for (auto* s : {&frontend_, &backend_}) {
        transport::Configure(*s, options_.hwm);
        s->set(zmq::sockopt::router_mandatory, 1);
        // Hard ceiling, enforced by ZeroMQ before it allocates: twice the limit, so that a message
        // somewhat over the limit still reaches us and gets a clear error instead of a silently
        // dropped connection.
        s->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(2 * options_.max_message_bytes));
      }
      transport::Configure(announce_, options_.hwm);
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

  const BrokerEndpoints& Endpoints() const override { return endpoints_; }
  const BrokerStats& Stats() const override { return stats_; }

  Status Run(std::stop_token stop) override {
    Log()->info("serving frontend={} backend={} announce={} log={}", endpoints_.frontend,
                endpoints_.backend, endpoints_.announce, options_.log_path);
    std::vector<zmq::pollitem_t> items = {{frontend_.handle(), 0, ZMQ_POLLIN, 0},
                                          {backend_.handle(), 0, ZMQ_POLLIN, 0}};
    while (!stop.stop_requested()) {
      try {
        zmq::poll(items, options_.poll_interval);
        if (items[1].revents & ZMQ_POLLIN) DrainBackend();
        if (items[0].revents & ZMQ_POLLIN) DrainFrontend();
        RETURN_IF_ERROR(Dispatch());
      } catch (const zmq::error_t& e) {
        if (e.num() == ETERM) break;
        // A socket-level failure is not the sender's fault and not fatal: log it and go on.
        Log()->error("zeromq error={}", e.what());
      }
    }
    Log()->info("stopped logged={} rejected={} duplicates={}", stats_.updates_logged.load(),
                stats_.messages_rejected.load(), stats_.updates_duplicate.load());
    return Status::Ok();
  }

 private:
  Status LoadGlobals() {
    for (const auto& adapter : log_->AdaptersWithGlobal()) {
      auto bytes = log_->GetGlobal(adapter);
      if (!bytes.ok() || !bytes->has_value()) continue;
      auto stored = std::make_shared<const std::string>(std::move(**bytes));
      auto env = codec::VerifyEnvelope(codec::AsBytes(*stored));
      if (!env.ok() || (*env)->body_type() != wire::Body::GlobalAdapter) {
        Log()->warn("ignoring unreadable stored global adapter={}", adapter);
        continue;
      }
      RememberGlobal(*(*env)->body_as_GlobalAdapter(), stored);
    }
    return Status::Ok();
  }

  void RememberGlobal(const wire::GlobalAdapter& g, std::shared_ptr<const std::string> bytes) {
    auto& e = adapters_[g.adapter_id()->str()];
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
    Log()->warn("reject code={} update={} reason=\"{}\"", CodeName(status.code()), update_id,
                status.message());
    Reply(socket, identity, codec::BuildError(status, update_id, retry_after_ms));
  }

  // --- workers --------------------------------------------------------------------------

  void DrainFrontend() {
    std::vector<PendingUpdate> pending;
    size_t pending_bytes = 0;
    std::vector<zmq::message_t> frames;
    while (pending.size() < options_.max_batch && pending_bytes < options_.max_batch_bytes &&
           transport::TryRecvMultipart(frontend_, frames)) {
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
        case wire::Body::Update: {
          const auto* u = e->body_as_Update();
          Status s = CheckUpdate(*u);
          if (!s.ok()) {
            const uint32_t retry = s.code() == Code::kNotFound ? 1000 : 0;
            Reject(frontend_, frames[0], s, u->update_id()->string_view(), retry);
            continue;
          }
          pending_bytes += frames[1].size();
          pending.push_back({std::move(frames[0]), std::move(frames[1]), nullptr});
          // Re-derive the view: a moved message may hold its bytes inline.
          pending.back().update = wire::GetEnvelope(pending.back().payload.data())->body_as_Update();
          break;
        }
        case wire::Body::Fetch:
          HandleFetch(frames[0], *e->body_as_Fetch());
          break;
        case wire::Body::Hello:
          Reply(frontend_, frames[0], codec::BuildHello(wire::Role::Broker, "broker"));
          break;
        default:
          Reject(frontend_, frames[0],
                 InvalidArgument(fmt::format("a {} message is not accepted on the worker socket",
                                             codec::BodyName(e->body_type()))));
      }
    }
    if (!pending.empty()) CommitBatch(pending);
  }

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
    return ValidateUpdate(u, it->second.spec, it->second.version);
  }

  void CommitBatch(std::vector<PendingUpdate>& pending) {
    std::vector<storage::LogAppend> items;
    items.reserve(pending.size());
    for (const auto& p : pending) {
      items.push_back({p.update->adapter_id()->string_view(), p.update->client_id()->string_view(),
                       p.update->update_id()->string_view(), transport::View(p.payload)});
    }
    auto results = log_->AppendBatch(items);
    stats_.group_commits++;
    for (size_t i = 0; i < pending.size(); ++i) {
      const auto update_id = pending[i].update->update_id()->string_view();
      if (!results[i].ok()) {
        const Status& s = results[i].status();
        const bool transient = s.code() == Code::kUnavailable || s.code() == Code::kResourceExhausted;
        Reject(frontend_, pending[i].identity, s, update_id, transient ? 500 : 0);
        continue;
      }
      if (results[i]->duplicate) {
        stats_.updates_duplicate++;
      } else {
        stats_.updates_logged++;
        stats_.bytes_logged += pending[i].payload.size();
      }
      Reply(frontend_, pending[i].identity,
            codec::BuildAck(update_id, results[i]->seq, results[i]->duplicate));
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
    while (transport::TryRecvMultipart(backend_, frames)) {
      if (frames.size() != 2) continue;
      auto env = codec::VerifyEnvelope(transport::View(frames[1]), options_.max_message_bytes);
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
          HandleGlobal(frames[1], *e->body_as_GlobalAdapter());
          break;
        case wire::Body::Hello:
          Log()->info("aggregator connected name={}", e->body_as_Hello()->client_id()
                                                          ? e->body_as_Hello()->client_id()->str()
                                                          : "");
          break;
        default:
          Reply(backend_, frames[0],
                codec::BuildError(InvalidArgument(fmt::format(
                    "a {} message is not accepted on the aggregator socket", codec::BodyName(e->body_type())))));
      }
    }
  }

  void HandleCredit(const zmq::message_t& identity, const wire::Credit& c) {
    const std::string adapter = c.adapter_id()->str();
    if (!ValidateId("adapter_id", adapter, 128).ok()) return;
    auto& e = adapters_[adapter];
    std::string who(static_cast<const char*>(identity.data()), identity.size());
    if (c.resubscribe() || e.owner != who) {
      if (!e.owner.empty() && e.owner != who) Log()->info("adapter={} changes aggregator", adapter);
      e.owner = std::move(who);
      e.next_to_send = std::max<uint64_t>(1, c.next_seq());
    } else {
      e.next_to_send = std::max(e.next_to_send, c.next_seq());
    }
    e.send_limit = c.next_seq() + c.window();
  }

  void HandleGlobal(zmq::message_t& payload, const wire::GlobalAdapter& g) {
    const std::string adapter = g.adapter_id()->str();
    if (!ValidateId("adapter_id", adapter, 128).ok()) return;
    auto it = adapters_.find(adapter);
    if (it != adapters_.end() && it->second.has_global && g.version() <= it->second.version &&
        g.final() == it->second.final) {
      return;  // a re-send after reconnect
    }
    auto bytes = std::make_shared<const std::string>(static_cast<const char*>(payload.data()), payload.size());
    Status s = log_->PutGlobal(adapter, codec::AsBytes(*bytes));
    if (!s.ok()) Log()->error("store global adapter={} error=\"{}\"", adapter, s.ToString());
    RememberGlobal(g, bytes);
    const auto& e = adapters_[adapter];
    std::vector<zmq::message_t> frames;
    frames.emplace_back(adapter.data(), adapter.size());
    frames.push_back(transport::Frame(codec::BuildAnnounce(adapter, e.version, e.content_hash, e.final)));
    transport::SendMultipart(announce_, frames);
  }

  Status Dispatch() {
    for (auto& [adapter, e] : adapters_) {
      if (e.owner.empty()) continue;
      const uint64_t head = log_->LastSeq(adapter);
      while (e.next_to_send <= head && e.next_to_send < e.send_limit) {
        ASSIGN_OR_RETURN(auto records, log_->Read(adapter, e.next_to_send, e.send_limit - e.next_to_send,
                                                  options_.deliver_max_bytes));
        if (records.empty()) break;
        std::vector<uint64_t> seqs;
        for (const auto& r : records) seqs.push_back(r.seq);
        std::vector<zmq::message_t> frames;
        frames.emplace_back(e.owner.data(), e.owner.size());
        frames.push_back(transport::Frame(codec::BuildDeliver(adapter, seqs, head)));
        for (auto& r : records) frames.push_back(transport::Frame(std::move(r.bytes)));
        if (!transport::SendMultipart(backend_, frames)) {
          // The aggregator is gone or saturated; its next Credit resumes delivery.
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
  zmq::socket_t frontend_;
  zmq::socket_t backend_;
  zmq::socket_t announce_;
  BrokerEndpoints endpoints_;
  BrokerStats stats_;
  std::map<std::string, AdapterEntry> adapters_;
};

}  // namespace

Result<std::unique_ptr<Broker>> Broker::Create(const BrokerOptions& options) {
  storage::UpdateLogOptions log_options;
  log_options.path = options.log_path;
  log_options.sync = options.sync;
  ASSIGN_OR_RETURN(auto log, storage::UpdateLog::Open(log_options));
  auto broker = std::make_unique<BrokerImpl>(options, std::move(log));
  RETURN_IF_ERROR(broker->Bind());
  return std::unique_ptr<Broker>(std::move(broker));
}

}  // namespace fedlora::broker
