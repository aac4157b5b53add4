// A hostile ZeroMQ peer for tests: a plain TCP socket that speaks just enough ZMTP 3.0 (the NULL
// greeting and a READY as a DEALER) to send frames as it likes: frames that all say "more", or a
// frame header followed by less than it declares. libzmq's own sockets cannot do either (they
// send nothing of a message before its last frame is given).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace fedlora::testing {

class RawPeer {
 public:
  // `endpoint`: "tcp://127.0.0.1:PORT". `handshake`: send the greeting and READY.
  explicit RawPeer(std::string_view endpoint, bool handshake = true) {
    const auto colon = endpoint.rfind(':');
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(std::stoi(std::string(endpoint.substr(colon + 1)))));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd_ < 0 || ::connect(fd_, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
      Close();
      return;
    }
    const timeval timeout{0, 200000};  // a write that cannot go on for 0.2 s returns
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    if (!handshake) return;
    std::string greeting(64, '\0');
    greeting[0] = '\xff';
    greeting[9] = '\x7f';
    greeting[10] = 3;  // ZMTP 3.0
    std::memcpy(&greeting[12], "NULL", 4);
    std::string ready = "\x05READY";
    const std::string key = "Socket-Type", value = "DEALER";
    ready += static_cast<char>(key.size());
    ready += key;
    const uint32_t length = htonl(static_cast<uint32_t>(value.size()));
    ready.append(reinterpret_cast<const char*>(&length), 4);
    ready += value;
    std::string command = "\x04";
    command += static_cast<char>(ready.size());
    Write(greeting + command + ready);
    // libzmq treats anything before its own READY has gone out as part of the handshake (and a
    // message frame there as a protocol error): wait for its greeting and READY, as a client does.
    std::string reply;
    if (!Read(reply, 66)) return;
    (void)Read(reply, static_cast<size_t>(static_cast<unsigned char>(reply[65])));
  }
  RawPeer(const RawPeer&) = delete;
  RawPeer& operator=(const RawPeer&) = delete;
  ~RawPeer() { Close(); }

  bool connected() const { return fd_ >= 0; }
  uint64_t sent() const { return sent_; }

  // A frame header declaring `size` bytes (long form), with or without the MORE flag.
  bool Header(uint64_t size, bool more) {
    std::string header(1, static_cast<char>(0x02 | (more ? 0x01 : 0x00)));
    const uint64_t big_endian = __builtin_bswap64(size);
    header.append(reinterpret_cast<const char*>(&big_endian), 8);
    return Write(header);
  }
  // `size` bytes of frame body.
  bool Body(uint64_t size) {
    const std::string chunk(64 << 10, 'h');
    while (size > 0) {
      const uint64_t n = size < chunk.size() ? size : chunk.size();
      if (!Write(std::string_view(chunk).substr(0, n))) return false;
      size -= n;
    }
    return true;
  }
  // True once the other side has closed the connection within `wait_ms` (what it sent before,
  // such as libzmq's greeting, is read and dropped).
  bool ClosedByPeer(int wait_ms) {
    if (fd_ < 0) return true;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
    do {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(std::clamp<int64_t>(left.count(), 0, 20))) <= 0) continue;
      while (true) {
        char buffer[512];
        const ssize_t n = ::recv(fd_, buffer, sizeof(buffer), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return true;
        if (n < 0) break;
      }
    } while (std::chrono::steady_clock::now() < deadline);
    return false;
  }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  // Reads exactly `n` more bytes onto `out` (5 s at most).
  bool Read(std::string& out, size_t n) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (n > 0 && fd_ >= 0 && std::chrono::steady_clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      char buffer[512];
      const ssize_t got = ::recv(fd_, buffer, n < sizeof(buffer) ? n : sizeof(buffer), 0);
      if (got <= 0) return false;
      out.append(buffer, static_cast<size_t>(got));
      n -= static_cast<size_t>(got);
    }
    return n == 0;
  }
  // Writes every byte; false once the connection is closed, or has taken nothing for 10 s. A
  // write is never left half done (the next frame would start inside this one's body).
  bool Write(std::string_view bytes) {
    auto last_progress = std::chrono::steady_clock::now();
    while (!bytes.empty() && fd_ >= 0) {
      const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n > 0) {
        sent_ += static_cast<uint64_t>(n);
        bytes.remove_prefix(static_cast<size_t>(n));
        last_progress = std::chrono::steady_clock::now();
      } else if ((errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) &&
                 std::chrono::steady_clock::now() - last_progress < std::chrono::seconds(10)) {
        continue;
      } else {
        return false;
      }
    }
    return fd_ >= 0;
  }

  int fd_ = -1;
  uint64_t sent_ = 0;
};

}  // namespace fedlora::testing
