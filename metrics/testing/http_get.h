// HttpGet: a blocking HTTP/1.1 request (one per connection) with civetweb's client, for tests that scrape /metrics.
//
//   NEXUSKV_ASSIGN_OR_RETURN(HttpResponse page, HttpGet("127.0.0.1", port, "/metrics"));
//
// Thread-safe (each call opens its own connection).
#ifndef NEXUSKV_METRICS_TESTING_HTTP_GET_H_
#define NEXUSKV_METRICS_TESTING_HTTP_GET_H_

#include <string>

#include "absl/status/statusor.h"

namespace nexuskv::metrics::testing {

struct HttpResponse {
  int status = 0;
  std::string content_type;  // Empty when the response has none.
  std::string body;
};

// Any HTTP status is a response; Unavailable when no connection or no response came within
// `timeout_ms`.
absl::StatusOr<HttpResponse> HttpGet(const std::string& host, int port, const std::string& path,
                                     const std::string& method = "GET", int timeout_ms = 10000);

}  // namespace nexuskv::metrics::testing

#endif  // NEXUSKV_METRICS_TESTING_HTTP_GET_H_
