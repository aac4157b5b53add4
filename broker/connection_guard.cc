#include "broker/connection_guard.h"

#include <fmt/format.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <zmq.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>

#include "broker/broker.h"
#include "broker/log.h"

namespace fedlora::broker {
namespace {

// ZMTP 3: a frame header is a flags byte and a one-byte size up to 255, else an eight-byte size.
uint64_t HeaderBytes(uint64_t body) { return body <= 255 ? 2 : 9; }

}  // namespace

uint64_t WireBytes(Framing framing, uint64_t size) {
  if (framing == Framing::kPlain) return HeaderBytes(size) + size;
  // A CURVE MESSAGE command: "\x07MESSAGE" (8), the short nonce (8), and the box of the flags
  // byte and the frame: 16 bytes of authenticator + 1 + size.
  const uint64_t body = 8 + 8 + 16 + 1 + size;
  return HeaderBytes(body) + body;
}

ConnectionGuard::ConnectionGuard(zmq::context_t& ctx, GuardLimits limits, ConnectionStats& stats)
    : ctx_(ctx), limits_(limits), stats_(stats) {}

int ConnectionGuard::Watch(zmq::socket_t& socket, std::string name, Framing framing, uint64_t max_unread_bytes) {
  const int handle = static_cast<int>(watched_.size());
  const std::string endpoint = fmt::format("inproc://fedlora-guard-{}-{}", static_cast<const void*>(this), handle);
  if (zmq_socket_monitor(socket.handle(), endpoint.c_str(), ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) != 0) {
    throw zmq::error_t();
  }
  zmq::socket_t monitor(ctx_, zmq::socket_type::pair);
  monitor.set(zmq::sockopt::linger, 0);
  // An inproc pipe's bound is the sum of both ends' marks, and none if either is 0: the monitor's
  // own socket keeps 1,000 events and drops later ones, which a storm of connections passes
  // (lost ACCEPTED events would be connections the cap never counts).
  monitor.set(zmq::sockopt::rcvhwm, 0);
  monitor.connect(endpoint);
  watched_.push_back(Watched{std::move(monitor), std::move(name), framing, max_unread_bytes});
  return handle;
}

std::vector<zmq::pollitem_t> ConnectionGuard::PollItems() {
  std::vector<zmq::pollitem_t> items;
  for (auto& w : watched_) items.push_back({w.monitor.handle(), 0, ZMQ_POLLIN, 0});
  return items;
}

void ConnectionGuard::Read(int handle, int fd, const std::vector<zmq::message_t>& frames) {
  if (fd < 0 || handle < 0 || static_cast<size_t>(handle) >= watched_.size()) return;
  auto& c = connections_[fd];
  c.handle = handle;
  for (size_t i = 1; i < frames.size(); ++i) c.read += WireBytes(watched_[handle].framing, frames[i].size());
}

void ConnectionGuard::TakeEvents(int handle) {
  auto& monitor = watched_[handle].monitor;
  while (true) {
    zmq::message_t event;
    if (!monitor.recv(event, zmq::recv_flags::dontwait)) return;
    zmq::message_t address;  // the second frame: the endpoint
    if (event.more()) (void)monitor.recv(address);
    if (event.size() < 6) continue;
    uint16_t kind = 0;
    uint32_t value = 0;
    std::memcpy(&kind, event.data(), 2);
    std::memcpy(&value, static_cast<const char*>(event.data()) + 2, 4);
    const int fd = static_cast<int>(value);
    if (kind == ZMQ_EVENT_ACCEPTED) {
      auto& c = connections_[fd];
      if (c.accepted) {
        // This descriptor's earlier connection closed without its event reaching us.
        if (!c.closing) stats_.open--;
        c = Connection{};
      }
      c.accepted = true;
      c.handle = handle;
      stats_.open++;
      if (stats_.open.load() > limits_.max_connections) {
        stats_.refused++;
        Close(fd, c, "past the connection cap", 0);
      }
    } else if (kind == ZMQ_EVENT_DISCONNECTED) {
      auto it = connections_.find(fd);
      if (it == connections_.end()) continue;
      if (it->second.accepted && !it->second.closing) stats_.open--;
      connections_.erase(it);
    }
  }
}

void ConnectionGuard::Close(int fd, Connection& c, const char* why, uint64_t unread) {
  // libzmq owns the descriptor: a shutdown makes its next read see the end of the stream, so it
  // closes the connection itself, frees what it held for it, and reports DISCONNECTED.
  (void)::shutdown(fd, SHUT_RDWR);
  if (c.accepted && !c.closing) stats_.open--;
  c.closing = true;
  const auto now = std::chrono::steady_clock::now();
  ++unwarned_;
  if (now - last_warning_ >= std::chrono::seconds(1)) {
    const auto& w = watched_[c.handle < 0 ? 0 : c.handle];
    Log()->warn("closed a connection to the {} socket: {} (unread {} bytes, bound {}; {} closed since the last line)",
                w.name, why, unread, w.max_unread, unwarned_);
    unwarned_ = 0;
    last_warning_ = now;
  }
}

void ConnectionGuard::Check(std::chrono::steady_clock::time_point now) {
  for (size_t h = 0; h < watched_.size(); ++h) TakeEvents(static_cast<int>(h));
  if (now < next_measure_) return;
  // A measurement costs about 1.3 us a connection (two system calls): past 400 connections the
  // interval grows with them, so that it never takes more than 2.5% of this thread.
  next_measure_ = now + std::max<std::chrono::microseconds>(limits_.interval,
                                                            std::chrono::microseconds(50) * connections_.size());
  struct Measured {
    uint64_t unread;
    int fd;
  };
  std::vector<Measured> measured;
  measured.reserve(connections_.size());
  uint64_t total = 0;
  for (auto it = connections_.begin(); it != connections_.end();) {
    auto& [fd, c] = *it;
    if (c.closing || c.handle < 0) {
      ++it;
      continue;
    }
    tcp_info info{};
    socklen_t len = sizeof(info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0 ||
        len < offsetof(tcp_info, tcpi_bytes_received) + sizeof(info.tcpi_bytes_received)) {
      if (errno == EBADF || errno == ENOTSOCK) {
        // Closed, and its DISCONNECTED event lost (or not yet read): forget it.
        if (c.accepted) stats_.open--;
        it = connections_.erase(it);
      } else {
        ++it;  // not TCP (ipc): nothing to measure
      }
      continue;
    }
    int queued = 0;  // bytes still in the kernel's receive queue: libzmq has not taken them
    if (ioctl(fd, SIOCINQ, &queued) != 0 || queued < 0) queued = 0;
    const uint64_t taken = info.tcpi_bytes_received - std::min<uint64_t>(info.tcpi_bytes_received, queued);
    const uint64_t unread = taken > c.read ? taken - c.read : 0;
    if (unread > watched_[c.handle].max_unread) {
      stats_.closed_unread++;
      Close(fd, c, "it holds more unread than one message may", unread);
    } else {
      total += unread;
      measured.push_back({unread, fd});
    }
    ++it;
  }
  if (total > limits_.max_total_unread_bytes) {
    // All connections together hold too much: the largest go first.
    std::sort(measured.begin(), measured.end(), [](const Measured& a, const Measured& b) { return a.unread > b.unread; });
    for (const auto& m : measured) {
      if (total <= limits_.max_total_unread_bytes) break;
      stats_.closed_unread++;
      Close(m.fd, connections_[m.fd], "all connections together hold more unread than the broker allows", m.unread);
      total -= m.unread;
    }
  }
  stats_.unread_bytes = total;
}

}  // namespace fedlora::broker
