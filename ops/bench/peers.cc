// The peer relays of the ingest benchmark (peers.h): a server child process per measurement and
// minimal MQTT 3.1.1 and RESP2 clients over POSIX sockets, written here because the build may
// use no MQTT or Redis client library. Each client implements only what the measurement sends
// and expects; anything else the server says is an error, never silently skipped.
#include "ops/bench/peers.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string_view>
#include <thread>
#include <vector>

namespace fedlora::bench {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

[[noreturn]] void Fail(const std::string& what) { throw std::runtime_error(what); }

std::string ErrnoText(std::string_view what) { return fmt::format("{}: {}", what, std::strerror(errno)); }

// ---------------------------------------------------------------------------------------------
// TCP connection

// One client connection to 127.0.0.1. Both protocols frame messages inside the byte stream, so
// reads go through a buffer that is refilled only when a parse runs past its end; large
// payloads bypass it and land directly in the caller's memory.
class Conn {
 public:
  explicit Conn(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) Fail(ErrnoText("socket"));
    // Acknowledgements are a few bytes each: without NODELAY, Nagle holding one back until the
    // peer's delayed ACK would add tens of milliseconds to every round trip.
    const int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
      const std::string err = ErrnoText(fmt::format("connect 127.0.0.1:{}", port));
      ::close(fd_);
      Fail(err);
    }
  }
  ~Conn() { ::close(fd_); }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  // Sends the parts as one message (one sendmsg where the kernel takes it all), so a header
  // and its payload never go out as separate segments and the payload is never copied.
  void Send(std::initializer_list<std::string_view> parts) {
    std::vector<iovec> iov;
    for (std::string_view p : parts) {
      if (!p.empty()) iov.push_back({const_cast<char*>(p.data()), p.size()});
    }
    size_t first = 0;
    while (first < iov.size()) {
      msghdr msg{};
      msg.msg_iov = iov.data() + first;
      msg.msg_iovlen = std::min<size_t>(iov.size() - first, IOV_MAX);
      const ssize_t n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        Fail(ErrnoText("send"));
      }
      size_t left = static_cast<size_t>(n);
      while (first < iov.size() && left >= iov[first].iov_len) left -= iov[first++].iov_len;
      if (left > 0) {
        iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
        iov[first].iov_len -= left;
      }
    }
  }

  // True when a byte is buffered or arrives within timeout_ms, so a reader can look at its
  // stop flag between messages instead of blocking in recv forever.
  bool Readable(int timeout_ms) {
    if (begin_ < end_) return true;
    pollfd p{fd_, POLLIN, 0};
    const int r = ::poll(&p, 1, timeout_ms);
    if (r < 0 && errno != EINTR) Fail(ErrnoText("poll"));
    return r > 0;
  }

  uint8_t ReadByte() {
    if (begin_ == end_) Fill();
    return static_cast<uint8_t>(buf_[begin_++]);
  }

  void Read(char* out, size_t n) {
    const size_t buffered = std::min(n, end_ - begin_);
    std::memcpy(out, buf_.data() + begin_, buffered);
    begin_ += buffered;
    for (size_t got = buffered; got < n;) got += Recv(out + got, n - got);
  }

  // A line up to CRLF, without it (RESP's framing of everything but bulk payloads).
  std::string ReadLine() {
    std::string line;
    for (;;) {
      if (begin_ == end_) Fill();
      const char* start = buf_.data() + begin_;
      const char* nl = static_cast<const char*>(std::memchr(start, '\n', end_ - begin_));
      if (nl == nullptr) {
        line.append(start, end_ - begin_);
        begin_ = end_;
        continue;
      }
      line.append(start, nl);
      begin_ += static_cast<size_t>(nl - start) + 1;
      if (line.empty() || line.back() != '\r') Fail("protocol: line not terminated by CRLF");
      line.pop_back();
      return line;
    }
  }

 private:
  size_t Recv(char* out, size_t n) {
    for (;;) {
      const ssize_t r = ::recv(fd_, out, n, 0);
      if (r > 0) return static_cast<size_t>(r);
      if (r == 0) Fail("server closed the connection");
      if (errno != EINTR) Fail(ErrnoText("recv"));
    }
  }
  void Fill() {
    begin_ = 0;
    end_ = Recv(buf_.data(), buf_.size());
  }

  int fd_ = -1;
  std::vector<char> buf_ = std::vector<char>(256 << 10);
  size_t begin_ = 0, end_ = 0;
};

// A port the kernel just handed out. Another process may take it before the server binds it;
// StartServer then retries with a fresh one.
uint16_t FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) Fail(ErrnoText("socket"));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
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

// ---------------------------------------------------------------------------------------------
// Server process

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
    // Everything the child touches is prepared before fork: between fork and exec only
    // async-signal-safe calls are allowed, and the benchmark process has other threads.
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const int log_fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log_fd < 0) Fail(ErrnoText("open " + log_path_));
    const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      // If the benchmark dies (a crash, Ctrl-C), the server goes with it instead of lingering
      // on its port with its data directory held open.
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(1);
      ::dup2(null_fd, 0);
      ::dup2(log_fd, 1);
      ::dup2(log_fd, 2);
      ::close_range(3, ~0u, 0);  // the benchmark's own files and sockets are not the server's
      ::execv(args[0], args.data());
      const char msg[] = "exec failed\n";
      (void)!::write(2, msg, sizeof(msg) - 1);
      ::_exit(127);
    }
    const int fork_errno = errno;
    ::close(log_fd);
    if (null_fd >= 0) ::close(null_fd);
    if (pid_ < 0) {
      errno = fork_errno;
      Fail(ErrnoText("fork " + name_));
    }
  }
  ~Server() { Stop(); }
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Waits until the port accepts connections. False when the server exited first (its log
  // says why), a timeout throws.
  bool WaitAccepting(uint16_t port, std::chrono::seconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      try {
        Conn probe(port);
        return true;
      } catch (const std::runtime_error&) {
        std::this_thread::sleep_for(milliseconds(20));
      }
    }
    Fail(fmt::format("{} did not accept connections on 127.0.0.1:{} within {} s; log {}:\n{}", name_, port,
                     timeout.count(), log_path_, LogTail()));
  }

  // SIGTERM and wait; SIGKILL if it is not gone after 30 s (mosquitto writes its whole
  // in-memory database at shutdown, which takes a while when a lot is queued).
  void Stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    const auto deadline = Clock::now() + std::chrono::seconds(30);
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (Clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
    pid_ = -1;
  }

  std::string LogTail() const {
    std::ifstream in(log_path_);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return text.size() > 2000 ? "..." + text.substr(text.size() - 2000) : text;
  }

 private:
  std::string name_;
  std::string log_path_;
  pid_t pid_ = -1;
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

  std::sort(all.begin(), all.end());
  RelayFigure f;
  f.acknowledged = acknowledged;
  f.delivered = delivered;
  f.updates_per_s = acknowledged / dt;
  f.mb_per_s = acknowledged * bytes / dt / 1e6;
  if (!all.empty()) {
    f.p50_ms = all[all.size() / 2];
    f.p99_ms = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  }
  return f;
}

// ---------------------------------------------------------------------------------------------
// MQTT 3.1.1 (OASIS standard, sections 2 and 3): only CONNECT, PUBLISH at QoS 1, SUBSCRIBE and
// the acknowledgements of each.

namespace mqtt {

// Control packet types, the high nibble of a packet's first byte.
constexpr uint8_t kConnect = 1, kConnack = 2, kPublish = 3, kPuback = 4, kSubscribe = 8, kSuback = 9,
                  kDisconnect = 14;
constexpr std::string_view kTopic = "fedlora/bench/updates";
// Long enough that no run needs PINGREQ (the server only drops a client that has sent nothing
// for 1.5 keep-alives), yet not 0, "no keep-alive", which a broker set up with max_keepalive
// may refuse to a 3.1.1 client that cannot be told a shorter one.
constexpr uint16_t kKeepAliveS = 600;

std::string U16(uint16_t v) { return {static_cast<char>(v >> 8), static_cast<char>(v & 0xff)}; }

// A UTF-8 string field: its length as two bytes, then the bytes.
std::string Str(std::string_view s) { return U16(static_cast<uint16_t>(s.size())) + std::string(s); }

// Fixed header: the type and flags byte, then the remaining length in 7-bit groups, least
// significant first, the high bit saying another follows (at most 4 bytes, < 256 MiB).
std::string FixedHeader(uint8_t type, uint8_t flags, size_t remaining) {
  if (remaining > 268'435'455) Fail("MQTT packet larger than the protocol allows");
  std::string h(1, static_cast<char>(type << 4 | flags));
  do {
    uint8_t digit = remaining % 128;
    remaining /= 128;
    if (remaining > 0) digit |= 0x80;
    h.push_back(static_cast<char>(digit));
  } while (remaining > 0);
  return h;
}

struct Packet {
  uint8_t type = 0, flags = 0;
  std::string body;  // variable header and payload
};

Packet Read(Conn& c) {
  Packet p;
  const uint8_t first = c.ReadByte();
  p.type = first >> 4;
  p.flags = first & 0x0f;
  size_t remaining = 0;
  for (int i = 0;; ++i) {
    if (i == 4) Fail("MQTT: malformed remaining length");
    const uint8_t digit = c.ReadByte();
    remaining |= static_cast<size_t>(digit & 0x7f) << (7 * i);
    if ((digit & 0x80) == 0) break;
  }
  p.body.resize(remaining);
  c.Read(p.body.data(), remaining);
  return p;
}

uint16_t ReadU16(std::string_view s, size_t at) {
  if (at + 2 > s.size()) Fail("MQTT: packet too short");
  return static_cast<uint16_t>(static_cast<uint8_t>(s[at]) << 8 | static_cast<uint8_t>(s[at + 1]));
}

// An MQTT client session: CONNECT on construction (clean_session false keeps the session, and
// with it the QoS 1 messages queued for it, across disconnects and in mosquitto's persistence),
// DISCONNECT on destruction.
class Session {
 public:
  Session(uint16_t port, const std::string& client_id, bool clean_session) : conn_(port) {
    const std::string variable = Str("MQTT") + '\x04' /* protocol level 3.1.1 */ +
                                 static_cast<char>(clean_session ? 0x02 : 0x00) + U16(kKeepAliveS);
    const std::string payload = Str(client_id);
    conn_.Send({FixedHeader(kConnect, 0, variable.size() + payload.size()), variable, payload});
    const Packet ack = Read(conn_);
    if (ack.type != kConnack || ack.body.size() != 2) Fail("MQTT: expected CONNACK");
    if (ack.body[1] != 0) Fail(fmt::format("MQTT: CONNECT of {} refused, return code {}", client_id, int(ack.body[1])));
  }
  ~Session() {
    try {
      conn_.Send({FixedHeader(kDisconnect, 0, 0)});
    } catch (const std::runtime_error&) {
      // the server is gone already; nothing to tell it
    }
  }

  // Packet identifiers of QoS 1 packets: any non-zero 16-bit value not in use; with one packet
  // in flight per session, counting round is enough.
  uint16_t NextId() {
    if (++id_ == 0) id_ = 1;
    return id_;
  }

  Conn& conn() { return conn_; }

 private:
  Conn conn_;
  uint16_t id_ = 0;
};

class MqttPublisher : public Publisher {
 public:
  MqttPublisher(uint16_t port, int index) : session_(port, fmt::format("fedlora-bench-pub-{}", index), true) {}

  void Publish(std::string_view payload) override {
    const uint16_t id = session_.NextId();
    const std::string variable = Str(kTopic) + U16(id);
    // Flags 0b0010: QoS 1, not a duplicate, not retained.
    session_.conn().Send({FixedHeader(kPublish, 0x2, variable.size() + payload.size()), variable, payload});
    const Packet ack = Read(session_.conn());
    if (ack.type != kPuback || ack.body.size() != 2) Fail(fmt::format("MQTT: expected PUBACK, got type {}", ack.type));
    if (ReadU16(ack.body, 0) != id) Fail("MQTT: PUBACK for a packet id not in flight");
  }

 private:
  Session session_;
};

class MqttConsumer : public Consumer {
 public:
  MqttConsumer(uint16_t port, size_t bytes) : session_(port, "fedlora-bench-consumer", false), bytes_(bytes) {
    const uint16_t id = session_.NextId();
    const std::string variable = U16(id);
    const std::string payload = Str(kTopic) + '\x01';  // requested QoS 1
    // SUBSCRIBE's fixed header flags are 0b0010 by the standard.
    session_.conn().Send({FixedHeader(kSubscribe, 0x2, variable.size() + payload.size()), variable, payload});
    const Packet ack = Read(session_.conn());
    if (ack.type != kSuback || ack.body.size() != 3 || ReadU16(ack.body, 0) != id) Fail("MQTT: expected SUBACK");
    if (ack.body[2] != 0x01) Fail(fmt::format("MQTT: subscription not granted at QoS 1 (code {})", int(ack.body[2])));
  }

  uint64_t Receive(int timeout_ms) override {
    uint64_t n = 0;
    Conn& c = session_.conn();
    for (int wait = timeout_ms; n < 256 && c.Readable(wait); wait = 0) {
      const Packet p = Read(c);
      if (p.type != kPublish) Fail(fmt::format("MQTT: consumer expected PUBLISH, got type {}", p.type));
      const int qos = (p.flags >> 1) & 0x3;
      size_t at = 2 + ReadU16(p.body, 0);  // past the topic
      if (qos == 1) {
        // Acknowledge so the server can release it: the QoS 1 flow is complete only then.
        const uint16_t id = ReadU16(p.body, at);
        at += 2;
        c.Send({FixedHeader(kPuback, 0, 2), U16(id)});
      } else if (qos != 0) {
        Fail(fmt::format("MQTT: message at QoS {} on a QoS 1 subscription", qos));
      }
      if (at > p.body.size() || p.body.size() - at != bytes_) {
        Fail(fmt::format("MQTT: consumer got a payload of {} bytes, published {}", p.body.size() - at, bytes_));
      }
      ++n;
    }
    return n;
  }

 private:
  Session session_;
  size_t bytes_;
};

}  // namespace mqtt

// ---------------------------------------------------------------------------------------------
// RESP2 (the Redis serialization protocol): commands go out as arrays of bulk strings, replies
// come back as one of five types.

namespace resp {

constexpr std::string_view kStream = "fedlora:bench:updates";

struct Reply {
  char type = 0;  // '+' simple string, '-' error, ':' integer, '$' bulk string, '*' array
  bool null = false;
  std::string str;
  std::vector<Reply> items;
};

Reply Read(Conn& c) {
  const std::string line = c.ReadLine();
  if (line.empty()) Fail("RESP: empty reply line");
  Reply r;
  r.type = line[0];
  const std::string_view rest = std::string_view(line).substr(1);
  switch (r.type) {
    case '+':
    case '-':
    case ':':
      r.str = rest;
      return r;
    case '$':
    case '*': {
      long long n = 0;
      const auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), n);
      if (ec != std::errc() || end != rest.data() + rest.size()) Fail("RESP: bad length '" + line + "'");
      if (n < 0) {
        r.null = true;
        return r;
      }
      if (r.type == '*') {
        for (long long i = 0; i < n; ++i) r.items.push_back(Read(c));
        return r;
      }
      r.str.resize(static_cast<size_t>(n) + 2);
      c.Read(r.str.data(), r.str.size());
      if (r.str.substr(r.str.size() - 2) != "\r\n") Fail("RESP: bulk string not terminated by CRLF");
      r.str.resize(static_cast<size_t>(n));
      return r;
    }
    default:
      Fail(fmt::format("RESP: unknown reply type '{}'", r.type));
  }
}

// Sends a command; the last argument goes out from the caller's memory, so a payload is never
// copied into the request.
void Command(Conn& c, std::initializer_list<std::string_view> args) {
  std::string head = fmt::format("*{}\r\n", args.size());
  const std::string_view last = *(args.end() - 1);
  for (auto it = args.begin(); it + 1 != args.end(); ++it) {
    fmt::format_to(std::back_inserter(head), "${}\r\n{}\r\n", it->size(), *it);
  }
  fmt::format_to(std::back_inserter(head), "${}\r\n", last.size());
  c.Send({head, last, "\r\n"});
}

Reply Call(Conn& c, std::initializer_list<std::string_view> args) {
  Command(c, args);
  Reply r = Read(c);
  if (r.type == '-') Fail(fmt::format("redis: {} failed: {}", *args.begin(), r.str));
  return r;
}

class StreamPublisher : public Publisher {
 public:
  StreamPublisher(uint16_t port, size_t cap) : conn_(port), cap_(std::to_string(cap)) {}

  void Publish(std::string_view payload) override {
    // MAXLEN ~ trims whole stream nodes, the cheap form; the stream stays within about cap
    // entries however long the run.
    const Reply r = Call(conn_, {"XADD", kStream, "MAXLEN", "~", cap_, "*", "u", payload});
    if (r.type != '$' || r.null) Fail("redis: XADD did not return an entry id");
  }

 private:
  Conn conn_;
  std::string cap_;
};

class StreamConsumer : public Consumer {
 public:
  StreamConsumer(uint16_t port, size_t bytes, size_t count)
      : conn_(port), bytes_(bytes), count_(std::to_string(count)) {}

  uint64_t Receive(int timeout_ms) override {
    const Reply r = Call(conn_, {"XREAD", "COUNT", count_, "BLOCK", std::to_string(std::max(timeout_ms, 1)),
                                 "STREAMS", kStream, last_id_});
    if (r.null) return 0;  // timed out
    // [[stream, [[id, [field, value]], ...]]]
    if (r.type != '*' || r.items.size() != 1 || r.items[0].items.size() != 2) Fail("redis: unexpected XREAD reply");
    uint64_t n = 0;
    for (const Reply& entry : r.items[0].items[1].items) {
      if (entry.items.size() != 2 || entry.items[1].items.size() != 2) Fail("redis: unexpected stream entry");
      const size_t got = entry.items[1].items[1].str.size();
      if (got != bytes_) Fail(fmt::format("redis: consumer got a payload of {} bytes, published {}", got, bytes_));
      last_id_ = entry.items[0].str;
      ++n;
    }
    return n;
  }

 private:
  Conn conn_;
  size_t bytes_;
  std::string count_;
  std::string last_id_ = "0-0";  // a fresh stream: from its first entry
};

}  // namespace resp

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
    mqtt::MqttConsumer consumer(port, bytes);
    f = Measure(bytes, publishers, seconds, consumer,
                [&](int p) { return std::make_unique<mqtt::MqttPublisher>(port, p); });
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
    Conn probe(port);
    const resp::Reply pong = resp::Call(probe, {"PING"});
    if (pong.str != "PONG") Fail("redis: PING answered " + pong.str);
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
    resp::StreamConsumer consumer(port, bytes, std::max<size_t>(1, kReadBytes / std::max<size_t>(bytes, 1)));
    f = Measure(bytes, publishers, seconds, consumer,
                [&](int) { return std::make_unique<resp::StreamPublisher>(port, cap); });
  }
  server->Stop();
  return f;
}

}  // namespace fedlora::bench
