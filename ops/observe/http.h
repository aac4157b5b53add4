// The HTTP endpoint of the operational pages (/metrics for Prometheus, the dashboard, the
// aggregator's rollback control) and the client the command line calls them with, on Debian's
// cpp-httplib. Not a general web server: one request per connection, which the response closes;
// the request line and each header line at most 8 KiB (cpp-httplib's limits), the whole request
// at most kMaxHead + kMaxBody bytes (a declared body over kMaxBody is answered 413) and complete
// within kIdleTimeout of a server thread taking the connection up, or it is answered 400 and
// closed. Requests are served
// by a pool of kServerThreads threads, so a slow page (the dashboard's summary of thousands of
// versions) holds up only its own thread, not /metrics; more than kServerThreads slow or idle
// peers delay the others by at most kIdleTimeout.
// Thread safety: a Server's handler runs on any of its threads, concurrently; Fetch is reentrant.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "schema/status.h"

namespace fedlora::http {

inline constexpr size_t kServerThreads = 8;
inline constexpr size_t kMaxHead = 16 * 1024;  // request line and headers
inline constexpr size_t kMaxBody = 64 * 1024;
inline constexpr std::chrono::seconds kIdleTimeout{5};

struct Request {
  std::string method;                         // "GET", "POST"
  std::string path;                           // "/metrics" (without the query, %-decoded)
  std::map<std::string, std::string> params;  // the query's name=value pairs, %-decoded
  std::string body;
  bool from_loopback = false;                 // the peer is 127.0.0.0/8 or ::1
};

struct Response {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

// A JSON error body {"error": the status message} with the HTTP status a Status code maps to (400, 403, 404,
// 409, 503 or 500).
Response ErrorResponse(const Status& status);

using Handler = std::function<Response(const Request&)>;

class Server {
 public:
  // Listens on "HOST:PORT" (an IPv4 address, "localhost", or an IPv6 address in brackets such as
  // "[::1]:9100"; port 0 picks a free one) and serves until destroyed. A handler that throws
  // answers 500. Errors: kInvalidArgument (unparsable address), kUnavailable (cannot listen: the
  // port is taken).
  static Result<std::unique_ptr<Server>> Start(const std::string& address, Handler handler);
  virtual ~Server() = default;
  // "HOST:PORT" with the port resolved ("127.0.0.1:9100", "[::1]:9100").
  virtual const std::string& address() const = 0;
};

// One request to "HOST:PORT" (an optional "http://" prefix is accepted); `target` is the path
// with its query, sent as given. `timeout` bounds connecting and each wait for the peer.
// Errors: kInvalidArgument (bad address), kUnavailable (cannot connect, timed out, or the reply
// is not HTTP).
Result<Response> Fetch(const std::string& address, const std::string& method, const std::string& target,
                       const std::string& body = "",
                       std::chrono::milliseconds timeout = std::chrono::milliseconds(30000));

// %-encodes a query value.
std::string UrlEncode(std::string_view text);

}  // namespace fedlora::http
