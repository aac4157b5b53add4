#include "schema/transport/transport.h"

namespace fedlora::transport {
namespace {

void FreeDetached(void*, void* hint) { delete static_cast<codec::Bytes*>(hint); }
void FreeString(void*, void* hint) { delete static_cast<std::string*>(hint); }
void FreeShared(void*, void* hint) { delete static_cast<std::shared_ptr<const std::string>*>(hint); }

}  // namespace

zmq::message_t Frame(codec::Bytes&& bytes) {
  auto* owned = new codec::Bytes(std::move(bytes));
  return zmq::message_t(owned->data(), owned->size(), &FreeDetached, owned);
}

zmq::message_t Frame(std::string&& bytes) {
  if (bytes.size() < 64) return zmq::message_t(bytes.data(), bytes.size());  // copy is cheaper
  auto* owned = new std::string(std::move(bytes));
  return zmq::message_t(owned->data(), owned->size(), &FreeString, owned);
}

zmq::message_t Frame(const std::shared_ptr<const std::string>& bytes) {
  auto* hold = new std::shared_ptr<const std::string>(bytes);
  return zmq::message_t(const_cast<char*>((*hold)->data()), (*hold)->size(), &FreeShared, hold);
}

bool TryRecvMultipart(zmq::socket_t& socket, std::vector<zmq::message_t>& frames, std::string* user_id,
                      int* source_fd) {
  frames.clear();
  if (user_id) user_id->clear();
  if (source_fd) *source_fd = -1;
  while (true) {
    zmq::message_t m;
    auto r = socket.recv(m, frames.empty() ? zmq::recv_flags::dontwait : zmq::recv_flags::none);
    if (!r) return false;  // nothing queued (only possible for the first frame)
    const bool more = m.more();
    if (user_id && !more) {
      const char* id = zmq_msg_gets(m.handle(), "User-Id");
      if (id) *user_id = id;
    }
    if (source_fd && !more) *source_fd = zmq_msg_get(m.handle(), ZMQ_SRCFD);
    if (reinterpret_cast<uintptr_t>(m.data()) % kFrameAlignment != 0) {
      // ZeroMQ hands out small frames straight from its receive buffer, at any offset.
      // FlatBuffers reads its scalars in place, so a frame must start 8-byte aligned; a fresh
      // message is (it is allocated, or held inline at an aligned offset). Large frames have
      // their own allocation and are never copied here.
      m = zmq::message_t(m.data(), m.size());
    }
    frames.push_back(std::move(m));
    if (!more) return true;
  }
}

bool SendMultipart(zmq::socket_t& socket, std::vector<zmq::message_t>& frames) {
  for (size_t i = 0; i < frames.size(); ++i) {
    auto flags = zmq::send_flags::dontwait;
    if (i + 1 < frames.size()) flags = flags | zmq::send_flags::sndmore;
    try {
      if (!socket.send(frames[i], flags)) return false;
    } catch (const zmq::error_t& e) {
      // EHOSTUNREACH: a ROUTER with ROUTER_MANDATORY and a peer that went away.
      if (e.num() == EHOSTUNREACH) return false;
      throw;
    }
  }
  return true;
}

void Configure(zmq::socket_t& socket, int hwm) {
  socket.set(zmq::sockopt::linger, 200);
  socket.set(zmq::sockopt::sndhwm, hwm);
  socket.set(zmq::sockopt::rcvhwm, hwm);
}

std::string LastEndpoint(zmq::socket_t& socket) { return socket.get(zmq::sockopt::last_endpoint); }

}  // namespace fedlora::transport
