// A small HTTP/1.1 server and client for the operational endpoints (/metrics for Prometheus,
// the dashboard, the aggregator's rollback control) and the command line that calls them.
// Not a general web server: every response closes its connection, a request head is at most
// 16 KiB and a body at most 64 KiB, and one thread serves every connection (a slow or idle
// client cannot hold the others up: connections are multiplexed with poll and dropped after
// 5 s without a complete request).
// Thread safety: a Server's handler runs on the server's own thread; Fetch is reentrant.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "schema/status.h"

namespace fedlora::http {

struct Request {
  std::string method;                         // "GET", "POST"
  std::string path;                           // "/metrics" (without the query)
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
  // Listens on "HOST:PORT" (IPv4 dotted quad or "localhost"; port 0 picks a free one) and serves
  // on a thread of its own until destroyed. A handler that throws answers 500.
  // Errors: kInvalidArgument (unparsable address), kUnavailable (the port is taken).
  static Result<std::unique_ptr<Server>> Start(const std::string& address, Handler handler);
  virtual ~Server() = default;
  // "127.0.0.1:PORT", the port resolved.
  virtual const std::string& address() const = 0;
};

// One request to "HOST:PORT" (an optional "http://" prefix is accepted); `target` is the path
// with its query. Errors: kInvalidArgument (bad address), kUnavailable (cannot connect, timed
// out, or the reply is not HTTP).
Result<Response> Fetch(const std::string& address, const std::string& method, const std::string& target,
                       const std::string& body = "",
                       std::chrono::milliseconds timeout = std::chrono::milliseconds(30000));

// %-encodes a query value.
std::string UrlEncode(std::string_view text);

}  // namespace fedlora::http
