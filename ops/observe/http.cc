#include "ops/observe/http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <exception>
#include <thread>
#include <utility>

namespace fedlora::http {
namespace {

struct HostPort {
  std::string host;  // as the socket calls take it: "127.0.0.1", "::1", "0.0.0.0"
  int port = 0;
  bool v6 = false;
};

Result<HostPort> ParseAddress(std::string_view address) {
  if (address.starts_with("http://")) address.remove_prefix(7);
  while (address.ends_with('/')) address.remove_suffix(1);
  const size_t colon = address.rfind(':');
  if (colon == std::string_view::npos || colon + 1 == address.size()) {
    return InvalidArgument(fmt::format("'{}' is not HOST:PORT", address));
  }
  HostPort hp;
  hp.host = std::string(address.substr(0, colon));
  const std::string port_text(address.substr(colon + 1));
  char* end = nullptr;
  errno = 0;
  const unsigned long port = std::strtoul(port_text.c_str(), &end, 10);
  if (*end != '\0' || errno != 0 || port > 65535 || !std::isdigit(static_cast<unsigned char>(port_text[0]))) {
    return InvalidArgument(fmt::format("'{}' is not a port number", port_text));
  }
  hp.port = static_cast<int>(port);
  if (hp.host.size() >= 2 && hp.host.front() == '[' && hp.host.back() == ']') {
    hp.host = hp.host.substr(1, hp.host.size() - 2);
    in6_addr a6{};
    if (inet_pton(AF_INET6, hp.host.c_str(), &a6) != 1) {
      return InvalidArgument(fmt::format("'{}' is not an IPv6 address", hp.host));
    }
    hp.v6 = true;
    return hp;
  }
  if (hp.host == "localhost") hp.host = "127.0.0.1";
  if (hp.host.empty() || hp.host == "*") hp.host = "0.0.0.0";
  in_addr a4{};
  if (inet_pton(AF_INET, hp.host.c_str(), &a4) != 1) {
    return InvalidArgument(fmt::format("'{}' is not an IPv4 address, localhost or [an IPv6 address]", hp.host));
  }
  return hp;
}

std::string Format(const HostPort& hp) {
  return hp.v6 ? fmt::format("[{}]:{}", hp.host, hp.port) : fmt::format("{}:{}", hp.host, hp.port);
}

// cpp-httplib reports the peer as text: "127.0.0.1", "::1", or an IPv4-mapped "::ffff:127.0.0.1".
bool IsLoopback(std::string_view peer) {
  if (peer.starts_with("::ffff:")) peer.remove_prefix(7);
  in_addr a4{};
  if (inet_pton(AF_INET, std::string(peer).c_str(), &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  in6_addr a6{};
  return inet_pton(AF_INET6, std::string(peer).c_str(), &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

// The text of an error cpp-httplib answers by itself (a malformed request, a body over the limit).
std::string ErrorText(int status) {
  switch (status) {
    case 400: return "bad request: not an HTTP/1.0 or HTTP/1.1 request this server can read\n";
    case 413: return fmt::format("request body too large (at most {} bytes)\n", kMaxBody);
    case 414: return "request target too long (at most 8192 bytes)\n";
    default: return fmt::format("HTTP {}\n", status);
  }
}

using Clock = std::chrono::steady_clock;

std::string PeerText(const sockaddr_storage& sa) {
  char text[INET6_ADDRSTRLEN] = {};
  if (sa.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(sa).sin_addr, text, sizeof(text));
  } else if (sa.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(sa).sin6_addr, text, sizeof(text));
  }
  return text;
}

int PortOf(const sockaddr_storage& sa) {
  if (sa.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(sa).sin_port);
  if (sa.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(sa).sin6_port);
  return 0;
}

// One accepted connection as cpp-httplib reads and writes it, with the bounds cpp-httplib 0.11
// lacks: it stores any number of header lines (one peer streaming headers grew the process by
// 450 MB in a minute) and its read timeout is per read, so a peer trickling bytes is never
// dropped. Here the whole request (head and body) must arrive within kIdleTimeout of a server
// thread taking the connection up (a connection waiting for a free thread is not charged) and in
// at most kMaxHead + kMaxBody bytes; past either, reads fail and cpp-httplib answers 400
// (or 413 for a declared body over kMaxBody) and closes.
class BoundedStream final : public httplib::Stream {
 public:
  explicit BoundedStream(int fd) : fd_(fd), read_deadline_(Clock::now() + kIdleTimeout) {}

  bool is_readable() const override { return Wait(POLLIN, read_deadline_); }
  bool is_writable() const override { return Wait(POLLOUT, Clock::now() + kIdleTimeout); }
  ssize_t read(char* ptr, size_t size) override {
    if (read_ >= kMaxRead || !is_readable()) return -1;
    const ssize_t n = ::recv(fd_, ptr, std::min(size, kMaxRead - read_), 0);
    if (n > 0) read_ += static_cast<size_t>(n);
    return n;
  }
  ssize_t write(const char* ptr, size_t size) override {
    if (!is_writable()) return -1;
    return ::send(fd_, ptr, size, MSG_NOSIGNAL);
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override { Name(::getpeername, ip, port); }
  void get_local_ip_and_port(std::string& ip, int& port) const override { Name(::getsockname, ip, port); }
  socket_t socket() const override { return fd_; }

 private:
  static constexpr size_t kMaxRead = kMaxHead + kMaxBody;

  bool Wait(short events, Clock::time_point deadline) const {
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      pollfd p{fd_, events, 0};
      const int r = ::poll(&p, 1, static_cast<int>(left));
      if (r > 0) return (p.revents & (events | POLLHUP)) != 0;
      if (r == 0 || errno != EINTR) return false;
    }
  }
  void Name(int (*call)(int, sockaddr*, socklen_t*), std::string& ip, int& port) const {
    sockaddr_storage sa{};
    socklen_t len = sizeof(sa);
    if (call(fd_, reinterpret_cast<sockaddr*>(&sa), &len) != 0) return;
    ip = PeerText(sa);
    port = PortOf(sa);
  }

  const int fd_;
  const Clock::time_point read_deadline_;
  size_t read_ = 0;
};

// cpp-httplib's server with one bounded request per connection (BoundedStream) and a listening
// socket without SO_REUSEPORT (cpp-httplib sets it by default, which lets a second process
// listen on the same port and take half the requests).
class BoundedServer final : public httplib::Server {
 public:
  BoundedServer() {
    set_socket_options([](socket_t fd) {
      const int one = 1;
      ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    });
  }
  // cpp-httplib listens with a backlog of 5: a burst of connections (a dashboard page and a
  // scrape, a few `fedlora rollback`s) lost SYNs and waited a second for the retry. Linux takes a
  // second listen() on a bound socket as a new backlog.
  void WidenBacklog() { ::listen(svr_sock_, 128); }

 private:
  bool process_and_close_socket(socket_t fd) override {
    bool ok = false;
    {
      BoundedStream stream(fd);
      bool closed = false;
      ok = process_request(stream, /*close_connection=*/true, closed, nullptr);
    }
    ::shutdown(fd, SHUT_RDWR);
    ::close(fd);
    return ok;
  }
};

class ServerImpl final : public Server {
 public:
  ServerImpl(std::unique_ptr<httplib::Server> server, std::string address)
      : server_(std::move(server)), address_(std::move(address)) {
    thread_ = std::thread([this] {
      server_->listen_after_bind();
      loop_ended_ = true;
    });
    // stop() closes the listening socket only once the loop runs; wait for it so that a Server
    // destroyed at once still stops (or for the loop's end, should it end by itself).
    while (!server_->is_running() && !loop_ended_) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~ServerImpl() override {
    server_->stop();
    thread_.join();
  }
  const std::string& address() const override { return address_; }

 private:
  std::unique_ptr<httplib::Server> server_;
  std::string address_;
  std::atomic<bool> loop_ended_{false};
  std::thread thread_;
};

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
  ASSIGN_OR_RETURN(HostPort hp, ParseAddress(address));
  auto server = std::make_unique<BoundedServer>();
  server->new_task_queue = [] { return new httplib::ThreadPool(kServerThreads); };
  server->set_payload_max_length(kMaxBody);
  server->set_default_headers({{"Cache-Control", "no-store"}});
  auto serve = [handler = std::move(handler)](const httplib::Request& in, httplib::Response& out) {
    Request req;
    req.method = in.method;
    req.path = in.path;
    for (const auto& [name, value] : in.params) req.params[name] = value;
    req.body = in.body;
    req.from_loopback = IsLoopback(in.remote_addr);
    Response resp;
    try {
      resp = handler(req);
    } catch (const std::exception& e) {
      resp = {500, "text/plain; charset=utf-8", fmt::format("internal error: {}\n", e.what())};
    }
    out.status = resp.status;
    out.set_content(resp.body, resp.content_type.c_str());
  };
  // Every path and method goes to the one handler ([\s\S] also matches a decoded newline).
  const std::string every = "[\\s\\S]*";
  server->Get(every, serve);  // and HEAD, whose body cpp-httplib leaves out
  server->Post(every, serve);
  server->Put(every, serve);
  server->Patch(every, serve);
  server->Delete(every, serve);
  server->Options(every, serve);
  // A request without Content-Length or Transfer-Encoding has no body (RFC 9112, 6.3), but
  // cpp-httplib 0.11 reads a POST, PUT, PATCH or DELETE like that until the peer closes:
  // `curl -X POST` waited out the request deadline and got 400. Such requests are answered
  // here, before cpp-httplib reads any body.
  server->set_pre_routing_handler([serve](const httplib::Request& in, httplib::Response& out) {
    const bool bodied_method = in.method == "POST" || in.method == "PUT" || in.method == "PATCH" || in.method == "DELETE";
    if (!bodied_method || in.has_header("Content-Length") || in.has_header("Transfer-Encoding")) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    serve(in, out);
    return httplib::Server::HandlerResponse::Handled;
  });
  server->set_error_handler(
      httplib::Server::HandlerWithResponse([](const httplib::Request&, httplib::Response& res) {
        if (res.body.empty()) res.set_content(ErrorText(res.status), "text/plain; charset=utf-8");
        return httplib::Server::HandlerResponse::Handled;
      }));
  errno = 0;
  if (hp.port == 0) {
    const int port = server->bind_to_any_port(hp.host);
    if (port < 0) {
      return Unavailable(fmt::format("cannot listen on {}: {}", address, std::strerror(errno != 0 ? errno : EADDRINUSE)));
    }
    hp.port = port;
  } else if (!server->bind_to_port(hp.host, hp.port)) {
    return Unavailable(fmt::format("cannot listen on {}: {}", address, std::strerror(errno != 0 ? errno : EADDRINUSE)));
  }
  server->WidenBacklog();
  std::string bound = Format(hp);
  return std::unique_ptr<Server>(new ServerImpl(std::move(server), std::move(bound)));
}

Result<Response> Fetch(const std::string& address, const std::string& method, const std::string& target,
                       const std::string& body, std::chrono::milliseconds timeout) {
  ASSIGN_OR_RETURN(HostPort hp, ParseAddress(address));
  httplib::Client client(hp.host, hp.port);
  client.set_connection_timeout(timeout);
  client.set_read_timeout(timeout);
  client.set_write_timeout(timeout);
  client.set_url_encode(false);  // the target is sent as given (UrlEncode its query values)
  client.set_keep_alive(false);
  httplib::Request req;
  req.method = method;
  req.path = target;
  req.body = body;
  auto result = client.send(req);
  if (!result) return Unavailable(fmt::format("{}: {}", Format(hp), httplib::to_string(result.error())));
  Response r;
  r.status = result->status;
  r.content_type = result->get_header_value("Content-Type");
  r.body = std::move(result->body);
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
