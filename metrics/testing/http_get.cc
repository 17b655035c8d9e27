#include "metrics/testing/http_get.h"

#include <strings.h>

#include "absl/strings/str_cat.h"
#include "civetweb.h"

namespace nexuskv::metrics::testing {

absl::StatusOr<HttpResponse> HttpGet(const std::string& host, int port, const std::string& path,
                                     const std::string& method, int timeout_ms) {
  mg_init_library(0);
  char error[256] = "";
  mg_connection* connection = mg_connect_client(host.c_str(), port, 0, error, sizeof(error));
  if (connection == nullptr) {
    return absl::UnavailableError(absl::StrCat("connect to ", host, ":", port, ": ", error));
  }
  // As Prometheus and curl ask: HTTP/1.1.
  mg_printf(connection,
            "%s %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            method.c_str(), path.c_str(), host.c_str(), port);
  if (mg_get_response(connection, error, sizeof(error), timeout_ms) < 0) {
    mg_close_connection(connection);
    return absl::UnavailableError(
        absl::StrCat("no response from ", host, ":", port, path, ": ", error));
  }
  HttpResponse response;
  const mg_response_info* info = mg_get_response_info(connection);
  response.status = info->status_code;
  for (int i = 0; i < info->num_headers; ++i) {
    if (strcasecmp(info->http_headers[i].name, "Content-Type") == 0) {
      response.content_type = info->http_headers[i].value;
    }
  }
  char buffer[16384];
  for (int n; (n = mg_read(connection, buffer, sizeof(buffer))) > 0;)
    response.body.append(buffer, n);
  mg_close_connection(connection);
  return response;
}

}  // namespace nexuskv::metrics::testing
