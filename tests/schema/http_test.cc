#include "schema/http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "schema/prometheus.h"

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
  const std::string huge = "GET / HTTP/1.1\r\nX: " + std::string(20000, 'a');
  ::send(fd, huge.data(), huge.size(), 0);
  EXPECT_TRUE(ReadAll(fd).starts_with("HTTP/1.1 431 ")) << "a 20 KB head is refused";
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
  // Issue 21: any "HTTP/1.x" was served; only 1.0 and 1.1 are.
  for (const std::string version : {"HTTP/1.7", "HTTP/2.0", "HTTP/1.1x"}) {
    fd = Connect(server->address());
    const std::string request = "GET / " + version + "\r\n\r\n";
    ::send(fd, request.data(), request.size(), 0);
    EXPECT_TRUE(ReadAll(fd).starts_with("HTTP/1.1 505 ")) << version;
    ::close(fd);
  }
  fd = Connect(server->address());
  const std::string old_client = "GET / HTTP/1.0\r\n\r\n";
  ::send(fd, old_client.data(), old_client.size(), 0);
  EXPECT_TRUE(ReadAll(fd).starts_with("HTTP/1.1 200 ")) << "an HTTP/1.0 request was refused";
  ::close(fd);
}

TEST(HttpTest, AddressErrors) {
  auto server = Echo();
  auto taken = Server::Start(server->address(), [](const Request&) { return Response{}; });
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.status().code(), Code::kUnavailable);
  for (const char* bad : {"localhost", "127.0.0.1:http", "not-a-host:80", "127.0.0.1:70000"}) {
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
