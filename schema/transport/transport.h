// ZeroMQ helpers shared by broker, aggregator and worker: zero-copy frames from buffers we
// own, and multipart receive. Frames built here keep their bytes alive until ZeroMQ has sent
// them (it calls the free function), so no copy is made between our buffers and the socket.
// Thread safety: a socket belongs to one thread; these helpers add no state.
#pragma once

#include <zmq.hpp>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "schema/codec.h"

namespace fedlora::transport {

// Moves the buffer into the frame without copying its bytes.
zmq::message_t Frame(codec::Bytes&& bytes);
zmq::message_t Frame(std::string&& bytes);
// Shares (does not copy) bytes that several sends use, such as a cached global adapter.
zmq::message_t Frame(const std::shared_ptr<const std::string>& bytes);

inline std::span<const std::byte> View(const zmq::message_t& m) {
  return {static_cast<const std::byte*>(m.data()), m.size()};
}

// Every frame TryRecvMultipart returns starts at a multiple of this (FlatBuffers' largest scalar).
inline constexpr size_t kFrameAlignment = 8;

// Receives every frame of one message without blocking; returns false when none is queued.
// A frame that ZeroMQ delivered at a misaligned address is copied (small frames only, see
// transport.cc), so FlatBuffers can read it in place.
// `user_id`, when given, receives the message's "User-Id" property (the name a CURVE
// connection authenticated as, "" without one), read before any copy drops it; `source_fd`
// the descriptor of the connection it came from (ZMQ_SRCFD; -1 for inproc).
bool TryRecvMultipart(zmq::socket_t& socket, std::vector<zmq::message_t>& frames, std::string* user_id = nullptr,
                      int* source_fd = nullptr);

// Sends frames as one multipart message without blocking; returns false if ZeroMQ would
// block (high-water mark reached) or the peer is unknown to a ROUTER socket.
bool SendMultipart(zmq::socket_t& socket, std::vector<zmq::message_t>& frames);

// Shared socket settings: linger bounded so shutdown never hangs, high-water marks set so
// no queue grows without bound.
void Configure(zmq::socket_t& socket, int hwm);

// The concrete endpoint a socket bound to (resolves "tcp://127.0.0.1:*").
std::string LastEndpoint(zmq::socket_t& socket);

}  // namespace fedlora::transport
