// What one peer, or all of them, can make the broker hold: a cap on connections and a bound on
// the bytes each has sent that the broker has not read yet (docs/reliability.md has the formula).
//
// libzmq 4.3 bounds each frame (ZMQ_MAXMSGSIZE) but not a message: it keeps every frame of a
// multi-frame message until the last one arrives and shows none of it before, so a peer that
// never sends the last frame grows the process for as long as it sends. Nothing in libzmq's API
// shows an incomplete message. The kernel does show how many bytes a TCP connection has carried
// (TCP_INFO) and how many of those still wait in its receive queue (SIOCINQ); libzmq names the
// connection each message came from (ZMQ_SRCFD) and reports each accepted and closed connection
// to a monitor. The guard subtracts the bytes of the messages the broker has read from that
// connection, with their ZMTP framing, from the bytes libzmq has taken from it: what is left is
// the connection's handshake and whatever libzmq holds for it unread. A connection over its
// bound is shut down (the peer sees it closed; a ZeroMQ client reconnects by itself); so is a
// connection past the cap, as soon as it is accepted.
//
// Thread safety: none; every call from the thread that owns the watched sockets.
#pragma once

#include <zmq.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace fedlora::broker {

struct ConnectionStats;  // broker.h

// How a socket's mechanism frames a message frame on the wire: NULL and PLAIN send it with a
// ZMTP frame header; CURVE sends it as an encrypted MESSAGE command.
enum class Framing { kPlain, kCurve };

// Wire bytes of one message frame of `size` bytes, header included.
uint64_t WireBytes(Framing framing, uint64_t size);

struct GuardLimits {
  size_t max_connections = 1024;          // on all watched sockets together
  uint64_t max_total_unread_bytes = 1u << 30;  // all connections together
  // How often the bytes are measured: this, or 50 us per connection if that is longer.
  std::chrono::milliseconds interval{20};
};

class ConnectionGuard {
 public:
  ConnectionGuard(zmq::context_t& ctx, GuardLimits limits, ConnectionStats& stats);
  ConnectionGuard(const ConnectionGuard&) = delete;
  ConnectionGuard& operator=(const ConnectionGuard&) = delete;

  // Watches the TCP connections of `socket` (before it binds): each may hold at most
  // `max_unread_bytes` unread. Returns the handle for Read(). `name` goes into log lines.
  int Watch(zmq::socket_t& socket, std::string name, Framing framing, uint64_t max_unread_bytes);
  // The monitors' sockets, to poll beside the watched ones (their events queue without bound
  // until Check takes them).
  std::vector<zmq::pollitem_t> PollItems();
  // A message the broker has read from the socket `handle` watches: `frames[0]` is the routing
  // id the ROUTER put in front (not sent by the peer); `fd` is ZMQ_SRCFD of its frames.
  void Read(int handle, int fd, const std::vector<zmq::message_t>& frames);
  // Takes in accepted and closed connections (shutting down those past the cap) and, once per
  // interval, measures every connection and shuts down those over a bound.
  void Check(std::chrono::steady_clock::time_point now);

 private:
  struct Watched {
    zmq::socket_t monitor;
    std::string name;
    Framing framing;
    uint64_t max_unread;
  };
  struct Connection {
    int handle = -1;
    uint64_t read = 0;       // wire bytes of the messages read from it
    bool accepted = false;   // its ACCEPTED event has been seen
    bool closing = false;    // shut down by the guard; gone at its DISCONNECTED event
  };
  void TakeEvents(int handle);
  void Close(int fd, Connection& c, const char* why, uint64_t unread);
  size_t Open() const;

  zmq::context_t& ctx_;
  GuardLimits limits_;
  ConnectionStats& stats_;
  std::vector<Watched> watched_;
  std::map<int, Connection> connections_;  // by file descriptor
  std::chrono::steady_clock::time_point next_measure_{};
  std::chrono::steady_clock::time_point last_warning_{};
  uint64_t unwarned_ = 0;  // shut-downs not yet reported in a log line
};

}  // namespace fedlora::broker
