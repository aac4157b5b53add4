#include "ops/observe/http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <poll.h>

#include <atomic>
#include <cmath>
#include <fstream>
#include <future>
#include <limits>
#include <stdexcept>
#include <thread>
#include <vector>

#include "ops/observe/prometheus.h"

namespace fedlora::http {
namespace {

std::unique_ptr<Server> Echo(std::atomic<int>* calls = nullptr) {
  auto server = Server::Start("127.0.0.1:0", [calls](const Request& req) -> Response {
    if (calls) (*calls)++;
    if (req.path == "/throw") throw std::runtime_error("boom");
    if (req.path == "/missing") return {404, "text/plain", "nope"};
    std::string out = req.method + " " + req.path;
    for (const auto& [k, v] : req.params) out += " " + k + "=" + v;
    out += " body=" + req.body;
    out += req.from_loopback ? " loopback" : " remote";
    return {200, "text/plain", out};
  });
  EXPECT_TRUE(server.ok()) << server.status().ToString();
  return std::move(*server);
}

// A raw connection to the server, to send what Fetch would not.
int Connect(const std::string& address) {
  const size_t colon = address.rfind(':');
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
  inet_pton(AF_INET, address.substr(0, colon).c_str(), &sa.sin_addr);
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  return fd;
}

std::string ReadAll(int fd) {
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(n));
  return out;
}

TEST(HttpTest, ServesQueriesBodiesAndStatuses) {
  auto server = Echo();
  auto r = Fetch(server->address(), "GET", "/api/x?to=v%2012&flag&name=a+b");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->content_type, "text/plain");
  EXPECT_EQ(r->body, "GET /api/x flag= name=a b to=v 12 body= loopback");
  r = Fetch(server->address(), "POST", "/p", "payload");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->body, "POST /p body=payload loopback");
  r = Fetch(server->address(), "GET", "/missing");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(r->body, "nope");
  r = Fetch(server->address(), "GET", "/throw");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 500);
  EXPECT_NE(r->body.find("boom"), std::string::npos);
}

// curl -X POST sends neither Content-Length nor a body; the request has no body and is
// answered at once (cpp-httplib alone waited for the peer to close, then answered 400).
TEST(HttpTest, APostWithoutContentLengthHasAnEmptyBody) {
  auto server = Echo();
  const int fd = Connect(server->address());
  const std::string request = "POST /api/rollback?to=3 HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(fd, request.data(), request.size(), 0), static_cast<ssize_t>(request.size()));
  pollfd p{fd, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 2000), 1) << "no answer within 2 s";
  const std::string answer = ReadAll(fd);
  ::close(fd);
  EXPECT_EQ(answer.rfind("HTTP/1.1 200", 0), 0u) << answer;
  EXPECT_NE(answer.find("POST /api/rollback to=3 body= loopback"), std::string::npos) << answer;
}

TEST(HttpTest, AnIdleConnectionDoesNotHoldOthersUp) {
  std::atomic<int> calls{0};
  auto server = Echo(&calls);
  const int idle = Connect(server->address());  // connects and sends nothing (as browsers preconnect)
  const int partial = Connect(server->address());
  const std::string half = "GET /slow HTTP/1.1\r\nHost: x\r\n";
  ASSERT_EQ(::send(partial, half.data(), half.size(), 0), static_cast<ssize_t>(half.size()));
  auto r = Fetch(server->address(), "GET", "/quick", "", std::chrono::milliseconds(2000));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body, "GET /quick body= loopback");
  // The partial request completes later and is answered.
  ASSERT_EQ(::send(partial, "\r\n", 2, 0), 2);
  const std::string reply = ReadAll(partial);
  EXPECT_TRUE(reply.starts_with("HTTP/1.1 200 OK\r\n")) << reply;
  EXPECT_NE(reply.find("GET /slow"), std::string::npos);
  EXPECT_EQ(calls.load(), 2);
  ::close(idle);
  ::close(partial);
}

TEST(HttpTest, RefusesOversizedAndMalformedRequests) {
  auto server = Echo();
  int fd = Connect(server->address());
  const std::string huge = "GET / HTTP/1.1\r\nX: " + std::string(20000, 'a') + "\r\n\r\n";
  ::send(fd, huge.data(), huge.size(), 0);
  EXPECT_TRUE(ReadAll(fd).starts_with("HTTP/1.1 400 ")) << "a 20 KB header line is refused";
  ::close(fd);
  fd = Connect(server->address());
  const std::string long_target = "GET /" + std::string(9000, 'a') + " HTTP/1.1\r\n\r\n";
  ::send(fd, long_target.data(), long_target.size(), 0);
  EXPECT_TRUE(ReadAll(fd).starts_with("HTTP/1.1 414 "));
  ::close(fd);
  fd = Connect(server->address());
  const std::string big_body = "POST / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n";
  ::send(fd, big_body.data(), big_body.size(), 0);
  EXPECT_TRUE(ReadAll(fd).starts_with("HTTP/1.1 413 "));
  ::close(fd);
  fd = Connect(server->address());
  const std::string junk = "hello there\r\n\r\n";
  ::send(fd, junk.data(), junk.size(), 0);
  EXPECT_TRUE(ReadAll(fd).starts_with("HTTP/1.1 400 "));
  ::close(fd);
  // Only HTTP/1.0 and 1.1 are served (cpp-httplib answers other versions 400, not 505).
  for (const std::string version : {"HTTP/1.7", "HTTP/2.0", "HTTP/1.1x"}) {
    fd = Connect(server->address());
    const std::string request = "GET / " + version + "\r\n\r\n";
    ::send(fd, request.data(), request.size(), 0);
    EXPECT_TRUE(ReadAll(fd).starts_with("HTTP/1.1 400 ")) << version;
    ::close(fd);
  }
  fd = Connect(server->address());
  const std::string old_client = "GET / HTTP/1.0\r\n\r\n";
  ::send(fd, old_client.data(), old_client.size(), 0);
  EXPECT_TRUE(ReadAll(fd).starts_with("HTTP/1.1 200 ")) << "an HTTP/1.0 request was refused";
  ::close(fd);
}

// cpp-httplib alone keeps every header line it is sent (one peer grew a process by 450 MB in a
// minute); the server bounds the whole request to kMaxHead + kMaxBody bytes.
TEST(HttpTest, AHeadOfManyShortLinesIsCutOffAtTheRequestBound) {
  std::atomic<int> calls{0};
  auto server = Echo(&calls);
  const int fd = Connect(server->address());
  std::string request = "GET /flood HTTP/1.1\r\n";
  while (request.size() < 2 * (kMaxHead + kMaxBody)) request += "X-Pad: " + std::string(100, 'p') + "\r\n";
  request += "\r\n";
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  EXPECT_TRUE(ReadAll(fd).starts_with("HTTP/1.1 400 "));
  EXPECT_EQ(calls.load(), 0) << "the handler saw a request over the bound";
  ::close(fd);
  // A head just under the bound is served.
  const int ok = Connect(server->address());
  request = "GET /fits HTTP/1.1\r\n";
  while (request.size() < kMaxHead) request += "X-Pad: " + std::string(100, 'p') + "\r\n";
  request += "\r\n";
  ::send(ok, request.data(), request.size(), MSG_NOSIGNAL);
  EXPECT_TRUE(ReadAll(ok).starts_with("HTTP/1.1 200 "));
  ::close(ok);
}

// cpp-httplib's read timeout is per read, so a peer sending a byte now and then was never dropped;
// the whole request must arrive within kIdleTimeout of the connection.
TEST(HttpTest, APeerTricklingItsRequestIsDroppedAfterTheIdleTimeout) {
  std::atomic<int> calls{0};
  auto server = Echo(&calls);
  const int fd = Connect(server->address());
  const std::string line = "GET /trickle HTTP/1.1\r\n";
  ASSERT_EQ(::send(fd, line.data(), line.size(), 0), static_cast<ssize_t>(line.size()));
  const auto start = std::chrono::steady_clock::now();
  std::string reply;
  // One header line every 200 ms, for up to three times the timeout, until the server answers.
  while (std::chrono::steady_clock::now() - start < 3 * kIdleTimeout) {
    const std::string header = "X-Slow: 1\r\n";
    if (::send(fd, header.data(), header.size(), MSG_NOSIGNAL) < 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 200) == 1) break;
  }
  reply = ReadAll(fd);
  EXPECT_TRUE(reply.starts_with("HTTP/1.1 400 ")) << reply;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2 * kIdleTimeout) << "the trickling peer was kept";
  EXPECT_EQ(calls.load(), 0);
  ::close(fd);
}

// The dashboard's summary of thousands of versions took 0.2 s on the single thread of the old
// server, and /metrics waited behind it: requests are served concurrently.
TEST(HttpTest, ASlowHandlerDoesNotHoldUpOtherRequests) {
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> slow_started{0};
  auto server = Server::Start("127.0.0.1:0", [&](const Request& req) -> Response {
    if (req.path == "/slow") {
      ++slow_started;
      released.wait();
      return {200, "text/plain", "slow"};
    }
    return {200, "text/plain", "metrics"};
  });
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  const std::string address = (*server)->address();
  std::vector<std::thread> slow;
  for (size_t i = 0; i + 1 < kServerThreads; ++i) {
    slow.emplace_back([address] { EXPECT_TRUE(Fetch(address, "GET", "/slow").ok()); });
  }
  while (slow_started.load() < static_cast<int>(kServerThreads) - 1) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  // Every slow request is inside the handler; the last thread answers at once.
  auto r = Fetch(address, "GET", "/metrics", "", std::chrono::milliseconds(3000));
  release.set_value();
  for (auto& t : slow) t.join();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body, "metrics");
}

TEST(HttpTest, ServesIpv6LoopbackOrSaysItCannotListen) {
  auto server = Server::Start("[::1]:0", [](const Request& req) -> Response {
    return {200, "text/plain", req.from_loopback ? "loopback" : "remote"};
  });
  // A kernel without IPv6 (some containers) has no ::1 to listen on: a clear error, not a crash.
  if (std::ifstream("/proc/net/if_inet6").peek() == std::ifstream::traits_type::eof()) {
    EXPECT_EQ(server.status().code(), Code::kUnavailable) << server.status().ToString();
    return;
  }
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  EXPECT_TRUE((*server)->address().starts_with("[::1]:")) << (*server)->address();
  auto r = Fetch((*server)->address(), "GET", "/");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body, "loopback");
}

TEST(HttpTest, AddressErrors) {
  auto server = Echo();
  auto taken = Server::Start(server->address(), [](const Request&) { return Response{}; });
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.status().code(), Code::kUnavailable);
  for (const char* bad : {"localhost", "127.0.0.1:http", "not-a-host:80", "127.0.0.1:70000", "[::1", "[nope]:80",
                          "127.0.0.1:-1"}) {
    auto s = Server::Start(bad, [](const Request&) { return Response{}; });
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.status().code(), Code::kInvalidArgument) << bad;
  }
  // Nobody listens on the server's port once it is gone.
  const std::string address = server->address();
  server.reset();
  auto r = Fetch(address, "GET", "/", "", std::chrono::milliseconds(1000));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kUnavailable);
}

TEST(HttpTest, ErrorResponseMapsCodesAndEscapesJson) {
  auto r = ErrorResponse(InvalidArgument("bad \"to\"\n"));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body, "{\"error\": \"bad \\\"to\\\"\\u000a\"}\n");
  EXPECT_EQ(ErrorResponse(NotFound("x")).status, 404);
  EXPECT_EQ(ErrorResponse(FailedPrecondition("x")).status, 409);
  EXPECT_EQ(ErrorResponse(PermissionDenied("x")).status, 403);
  EXPECT_EQ(ErrorResponse(Unavailable("x")).status, 503);
  EXPECT_EQ(ErrorResponse(DataLoss("x")).status, 500);
  EXPECT_EQ(UrlEncode("v 1/a&b"), "v%201%2Fa%26b");
}

TEST(PrometheusTest, WritesTheTextFormat) {
  prometheus::Writer w;
  w.Counter("x_total", "Things\nseen", 3);
  w.Family("y", "gauge", "Y");
  w.Sample("y", 0.25, {{"a", "q\"u\\o\nte"}, {"b", "2"}});
  w.Sample("y", std::nan(""), {{"a", "n"}});
  w.Sample("y", -std::numeric_limits<double>::infinity());
  EXPECT_EQ(w.text(),
            "# HELP x_total Things seen\n# TYPE x_total counter\nx_total 3\n"
            "# HELP y Y\n# TYPE y gauge\ny{a=\"q\\\"u\\\\o\\nte\",b=\"2\"} 0.25\ny{a=\"n\"} NaN\ny -Inf\n");
}

}  // namespace
}  // namespace fedlora::http
