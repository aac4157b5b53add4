#include "schema/http.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <exception>
#include <list>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

namespace fedlora::http {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kMaxHead = 16 * 1024;
constexpr size_t kMaxBody = 64 * 1024;
constexpr auto kIdleTimeout = std::chrono::seconds(5);

// A file descriptor closed on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

Result<sockaddr_in> ParseAddress(std::string_view address) {
  if (address.starts_with("http://")) address.remove_prefix(7);
  while (address.ends_with('/')) address.remove_suffix(1);
  const size_t colon = address.rfind(':');
  if (colon == std::string_view::npos || colon + 1 == address.size()) {
    return InvalidArgument(fmt::format("'{}' is not HOST:PORT", address));
  }
  std::string host(address.substr(0, colon));
  const std::string port_text(address.substr(colon + 1));
  if (host == "localhost") host = "127.0.0.1";
  if (host.empty() || host == "*") host = "0.0.0.0";
  char* end = nullptr;
  const unsigned long port = std::strtoul(port_text.c_str(), &end, 10);
  if (*end != '\0' || port > 65535) return InvalidArgument(fmt::format("'{}' is not a port number", port_text));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &sa.sin_addr) != 1) {
    return InvalidArgument(fmt::format("'{}' is not an IPv4 address (or localhost)", host));
  }
  return sa;
}

std::string_view Reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return status < 500 ? "Client Error" : "Server Error";
  }
}

std::string Serialize(const Response& r) {
  return fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n"
      "Connection: close\r\n\r\n{}",
      r.status, Reason(r.status), r.content_type, r.body.size(), r.body);
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string UrlDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size() && HexValue(s[i + 1]) >= 0 && HexValue(s[i + 2]) >= 0) {
      out += static_cast<char>(HexValue(s[i + 1]) * 16 + HexValue(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::map<std::string, std::string> ParseQuery(std::string_view query) {
  std::map<std::string, std::string> params;
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    const size_t eq = pair.find('=');
    if (!pair.empty()) {
      params[UrlDecode(pair.substr(0, eq))] = eq == std::string_view::npos ? "" : UrlDecode(pair.substr(eq + 1));
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return params;
}

// Case-insensitive search for a header's value in a request or response head.
std::optional<std::string> HeaderValue(std::string_view head, std::string_view name) {
  size_t pos = head.find("\r\n");
  while (pos != std::string_view::npos && pos + 2 < head.size()) {
    const size_t start = pos + 2;
    const size_t end = head.find("\r\n", start);
    const std::string_view line = head.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    const size_t colon = line.find(':');
    if (colon == name.size() && std::equal(name.begin(), name.end(), line.begin(), [](char a, char b) {
          return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
        })) {
      std::string_view value = line.substr(colon + 1);
      while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
      while (!value.empty() && value.back() == ' ') value.remove_suffix(1);
      return std::string(value);
    }
    pos = end;
  }
  return std::nullopt;
}

struct Connection {
  Fd fd;
  bool loopback = false;
  std::string in;
  std::string out;
  size_t sent = 0;
  bool responding = false;
  Clock::time_point deadline;
};

class ServerImpl final : public Server {
 public:
  ServerImpl(Fd listener, std::string address, Handler handler, Fd wake_read, Fd wake_write)
      : listener_(std::move(listener)),
        address_(std::move(address)),
        handler_(std::move(handler)),
        wake_read_(std::move(wake_read)),
        wake_write_(std::move(wake_write)) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~ServerImpl() override {
    const char byte = 1;
    [[maybe_unused]] const ssize_t n = ::write(wake_write_.get(), &byte, 1);
    thread_.join();
  }
  const std::string& address() const override { return address_; }

 private:
  void Loop() {
    std::list<Connection> conns;
    while (true) {
      std::vector<pollfd> fds = {{wake_read_.get(), POLLIN, 0}, {listener_.get(), POLLIN, 0}};
      for (const auto& c : conns) fds.push_back({c.fd.get(), static_cast<short>(c.responding ? POLLOUT : POLLIN), 0});
      ::poll(fds.data(), fds.size(), 500);
      if (fds[0].revents != 0) return;
      if (fds[1].revents & POLLIN) Accept(conns);
      const auto now = Clock::now();
      size_t i = 2;
      for (auto it = conns.begin(); it != conns.end(); ++i) {
        const short ev = i < fds.size() && fds[i].fd == it->fd.get() ? fds[i].revents : 0;
        bool keep = true;
        if (ev & (POLLERR | POLLNVAL)) {
          keep = false;
        } else if (it->responding && (ev & (POLLOUT | POLLHUP))) {
          keep = Write(*it);
        } else if (!it->responding && (ev & (POLLIN | POLLHUP))) {
          keep = Read(*it);
        }
        if (keep && now > it->deadline) keep = false;
        it = keep ? std::next(it) : conns.erase(it);
      }
    }
  }

  void Accept(std::list<Connection>& conns) {
    while (true) {
      sockaddr_in peer{};
      socklen_t len = sizeof(peer);
      const int fd = ::accept4(listener_.get(), reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;
      Connection c;
      c.fd = Fd(fd);
      c.loopback = peer.sin_family == AF_INET && (ntohl(peer.sin_addr.s_addr) >> 24) == 127;
      c.deadline = Clock::now() + kIdleTimeout;
      conns.push_back(std::move(c));
    }
  }

  // Returns whether to keep the connection.
  bool Read(Connection& c) {
    char buf[8192];
    while (true) {
      const ssize_t n = ::recv(c.fd.get(), buf, sizeof(buf), 0);
      if (n > 0) {
        c.in.append(buf, static_cast<size_t>(n));
        if (c.in.size() > kMaxHead + kMaxBody) break;
        continue;
      }
      if (n == 0) return false;  // closed before a whole request
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return false;
    }
    const size_t head_end = c.in.find("\r\n\r\n");
    if (head_end == std::string::npos) {
      if (c.in.size() > kMaxHead) Respond(c, {431, "text/plain; charset=utf-8", "request head too large\n"});
      return true;
    }
    size_t body_size = 0;
    const std::string_view head(c.in.data(), head_end);
    if (auto cl = HeaderValue(head, "Content-Length")) {
      char* end = nullptr;
      body_size = std::strtoul(cl->c_str(), &end, 10);
      if (*end != '\0') {
        Respond(c, {400, "text/plain; charset=utf-8", "bad Content-Length\n"});
        return true;
      }
    }
    if (body_size > kMaxBody) {
      Respond(c, {413, "text/plain; charset=utf-8", "request body too large\n"});
      return true;
    }
    if (c.in.size() < head_end + 4 + body_size) return true;
    Request req;
    const std::string_view line = head.substr(0, head.find("\r\n"));
    const size_t sp1 = line.find(' ');
    const size_t sp2 = line.find(' ', sp1 == std::string_view::npos ? 0 : sp1 + 1);
    if (sp1 == std::string_view::npos || sp2 == std::string_view::npos || !line.substr(sp2 + 1).starts_with("HTTP/")) {
      Respond(c, {400, "text/plain; charset=utf-8", "not an HTTP request\n"});
      return true;
    }
    if (const std::string_view version = line.substr(sp2 + 1); version != "HTTP/1.1" && version != "HTTP/1.0") {
      Respond(c, {505, "text/plain; charset=utf-8", "only HTTP/1.0 and HTTP/1.1 are served\n"});
      return true;
    }
    req.method = std::string(line.substr(0, sp1));
    const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    const size_t q = target.find('?');
    req.path = UrlDecode(target.substr(0, q));
    if (q != std::string_view::npos) req.params = ParseQuery(target.substr(q + 1));
    req.body = c.in.substr(head_end + 4, body_size);
    req.from_loopback = c.loopback;
    Response resp;
    try {
      resp = handler_(req);
    } catch (const std::exception& e) {
      resp = {500, "text/plain; charset=utf-8", fmt::format("internal error: {}\n", e.what())};
    }
    if (req.method == "HEAD") resp.body.clear();
    Respond(c, resp);
    return true;
  }

  void Respond(Connection& c, const Response& r) {
    c.out = Serialize(r);
    c.sent = 0;
    c.responding = true;
    c.deadline = Clock::now() + kIdleTimeout;
  }

  bool Write(Connection& c) {
    while (c.sent < c.out.size()) {
      const ssize_t n = ::send(c.fd.get(), c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
      if (n > 0) {
        c.sent += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      return false;
    }
    ::shutdown(c.fd.get(), SHUT_WR);
    return false;
  }

  Fd listener_;
  std::string address_;
  Handler handler_;
  Fd wake_read_, wake_write_;
  std::thread thread_;
};

bool WaitFor(int fd, short events, Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  if (left <= 0) return false;
  pollfd p{fd, events, 0};
  return ::poll(&p, 1, static_cast<int>(left)) == 1;
}

}  // namespace

Response ErrorResponse(const Status& status) {
  int code = 500;
  switch (status.code()) {
    case Code::kInvalidArgument:
    case Code::kOutOfRange: code = 400; break;
    case Code::kPermissionDenied: code = 403; break;
    case Code::kNotFound: code = 404; break;
    case Code::kFailedPrecondition:
    case Code::kAlreadyExists: code = 409; break;
    case Code::kUnavailable:
    case Code::kResourceExhausted: code = 503; break;
    default: break;
  }
  std::string escaped;
  for (const char ch : status.message()) {
    if (ch == '"' || ch == '\\') {
      escaped += '\\';
      escaped += ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      escaped += fmt::format("\\u{:04x}", static_cast<unsigned char>(ch));
    } else {
      escaped += ch;
    }
  }
  return {code, "application/json", fmt::format("{{\"error\": \"{}\"}}\n", escaped)};
}

Result<std::unique_ptr<Server>> Server::Start(const std::string& address, Handler handler) {
  ASSIGN_OR_RETURN(sockaddr_in sa, ParseAddress(address));
  Fd listener(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (listener.get() < 0) return Unavailable(fmt::format("socket: {}", std::strerror(errno)));
  const int one = 1;
  ::setsockopt(listener.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(listener.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) != 0) {
    return Unavailable(fmt::format("cannot listen on {}: {}", address, std::strerror(errno)));
  }
  if (::listen(listener.get(), 64) != 0) return Unavailable(fmt::format("listen {}: {}", address, std::strerror(errno)));
  sockaddr_in bound{};
  socklen_t len = sizeof(bound);
  ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&bound), &len);
  char host[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &bound.sin_addr, host, sizeof(host));
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return Unavailable(fmt::format("pipe: {}", std::strerror(errno)));
  return std::unique_ptr<Server>(new ServerImpl(std::move(listener), fmt::format("{}:{}", host, ntohs(bound.sin_port)),
                                                std::move(handler), Fd(pipe_fds[0]), Fd(pipe_fds[1])));
}

Result<Response> Fetch(const std::string& address, const std::string& method, const std::string& target,
                       const std::string& body, std::chrono::milliseconds timeout) {
  ASSIGN_OR_RETURN(sockaddr_in sa, ParseAddress(address));
  const auto deadline = Clock::now() + timeout;
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return Unavailable(fmt::format("socket: {}", std::strerror(errno)));
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) != 0 && errno != EINPROGRESS) {
    return Unavailable(fmt::format("cannot connect to {}: {}", address, std::strerror(errno)));
  }
  if (!WaitFor(fd.get(), POLLOUT, deadline)) return Unavailable(fmt::format("cannot connect to {}: timed out", address));
  int err = 0;
  socklen_t len = sizeof(err);
  ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) return Unavailable(fmt::format("cannot connect to {}: {}", address, std::strerror(err)));
  const std::string request =
      fmt::format("{} {} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}", method, target,
                  address, body.size(), body);
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = ::send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!WaitFor(fd.get(), POLLOUT, deadline)) return Unavailable(fmt::format("{}: timed out sending", address));
    } else {
      return Unavailable(fmt::format("{}: send: {}", address, std::strerror(errno)));
    }
  }
  std::string reply;
  char buf[16384];
  while (true) {
    const ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
    if (n > 0) {
      reply.append(buf, static_cast<size_t>(n));
    } else if (n == 0) {
      break;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!WaitFor(fd.get(), POLLIN, deadline)) return Unavailable(fmt::format("{}: timed out waiting for the reply", address));
    } else {
      return Unavailable(fmt::format("{}: recv: {}", address, std::strerror(errno)));
    }
  }
  const size_t head_end = reply.find("\r\n\r\n");
  if (!reply.starts_with("HTTP/1.") || head_end == std::string::npos || reply.size() < 12) {
    return Unavailable(fmt::format("{} did not answer in HTTP", address));
  }
  Response r;
  r.status = std::atoi(reply.c_str() + 9);
  const std::string_view head(reply.data(), head_end);
  r.content_type = HeaderValue(head, "Content-Type").value_or("");
  r.body = reply.substr(head_end + 4);
  if (auto cl = HeaderValue(head, "Content-Length"); cl && std::strtoul(cl->c_str(), nullptr, 10) < r.body.size()) {
    r.body.resize(std::strtoul(cl->c_str(), nullptr, 10));
  }
  return r;
}

std::string UrlEncode(std::string_view text) {
  std::string out;
  for (const char ch : text) {
    const auto u = static_cast<unsigned char>(ch);
    if (std::isalnum(u) || ch == '-' || ch == '_' || ch == '.' || ch == '~') {
      out += ch;
    } else {
      out += fmt::format("%{:02X}", u);
    }
  }
  return out;
}

}  // namespace fedlora::http
