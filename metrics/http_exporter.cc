#include "metrics/http_exporter.h"

#include <cstring>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "civetweb.h"

namespace nexuskv::metrics {
namespace {

bool IsIpv4(std::string_view host) {
  int dots = 0;
  int digits = 0;
  for (char c : host) {
    if (c == '.') {
      if (digits == 0 || digits > 3) return false;
      ++dots;
      digits = 0;
    } else if (c >= '0' && c <= '9') {
      ++digits;
    } else {
      return false;
    }
  }
  return dots == 3 && digits > 0 && digits <= 3;
}

// Writes a whole response and asks the client to close (civetweb's keep-alive is off).
void Respond(mg_connection* connection, int status, std::string_view reason, std::string_view type,
             std::string_view body, bool head) {
  const std::string headers = absl::StrCat(
      "HTTP/1.1 ", status, " ", std::string(reason), "\r\nContent-Type: ", std::string(type),
      "\r\nContent-Length: ", body.size(), "\r\nCache-Control: no-store\r\nConnection: close\r\n",
      status == 405 ? "Allow: GET, HEAD\r\n" : "", "\r\n");
  mg_write(connection, headers.data(), headers.size());
  if (!head) mg_write(connection, body.data(), body.size());
}

}  // namespace

absl::StatusOr<std::string> CivetwebListeningPort(std::string_view listen) {
  const size_t colon = listen.rfind(':');
  const auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address \"", std::string(listen), "\": ", std::string(why),
                     "; use HOST:PORT with HOST an IPv4 address, localhost or [IPv6], e.g. "
                     "127.0.0.1:9464"));
  };
  if (colon == std::string_view::npos) return bad("no port");
  const std::string_view host = listen.substr(0, colon);
  uint32_t port = 0;
  if (!absl::SimpleAtoi(std::string(listen.substr(colon + 1)), &port) || port > 65535) {
    return bad("the port is not a number in 0..65535");
  }
  if (host.empty() || host == "*" || host == "0.0.0.0") return absl::StrCat(port);
  if (host == "localhost") return absl::StrCat("127.0.0.1:", port);
  if (IsIpv4(host)) return absl::StrCat(std::string(host), ":", port);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']' &&
      host.find_first_not_of("0123456789abcdefABCDEF:.", 1) == host.size() - 1) {
    return absl::StrCat(std::string(host), ":", port);
  }
  return bad("the host is not an IP address");
}

absl::StatusOr<std::unique_ptr<HttpExporter>> HttpExporter::Start(std::string_view listen,
                                                                  const Registry* registry) {
  absl::StatusOr<std::string> ports = CivetwebListeningPort(listen);
  if (!ports.ok()) return ports.status();
  mg_init_library(0);
  const char* options[] = {"listening_ports",    ports->c_str(), "num_threads", "2",
                           "request_timeout_ms", "10000",        nullptr};
  auto exporter = std::unique_ptr<HttpExporter>(new HttpExporter(registry));
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  // Every request is answered in civetweb's first callback, before it interprets the URI as a
  // file path: that path formats with printf on civetweb's 100 KiB worker stacks, which a process
  // linking OpenBLAS (libquadmath hooks printf onto glibc's stack-hungry positional path) and
  // carrying more static TLS (the CUDA runtime's) overflows; and civetweb 1.15's own 404 page
  // crashes without a document root. The handler writes with mg_write only (no printf).
  callbacks.begin_request = &HttpExporter::BeginRequest;
  char error_text[256] = "";
  mg_error_data error{nullptr, error_text, sizeof(error_text)};
  mg_init_data init{&callbacks, exporter.get(), options};
  exporter->context_ = mg_start2(&init, &error);
  if (exporter->context_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", std::string(listen),
                                               ": ", error_text[0] ? error_text : "civetweb failed",
                                               "; is the address local and the port free?"));
  }
  mg_server_port bound[4];
  const int count = mg_get_server_ports(exporter->context_, 4, bound);
  if (count > 0) exporter->port_ = bound[0].port;
  return exporter;
}

HttpExporter::~HttpExporter() {
  if (context_ != nullptr) mg_stop(context_);
}

int HttpExporter::BeginRequest(::mg_connection* connection) {
  return HandleRequest(connection, mg_get_user_data(mg_get_context(connection)));
}

int HttpExporter::HandleRequest(::mg_connection* connection, void* self) {
  const mg_request_info* request = mg_get_request_info(connection);
  const bool head = std::strcmp(request->request_method, "HEAD") == 0;
  const bool get = std::strcmp(request->request_method, "GET") == 0;
  const char* path = request->local_uri != nullptr ? request->local_uri : "";
  if (std::strcmp(path, "/metrics") != 0) {
    Respond(connection, 404, "Not Found", "text/plain", "only /metrics is served here\n", head);
    return 404;
  }
  if (!get && !head) {
    Respond(connection, 405, "Method Not Allowed", "text/plain", "only GET and HEAD\n", false);
    return 405;
  }
  Respond(connection, 200, "OK", kExpositionContentType,
          static_cast<HttpExporter*>(self)->registry_->Exposition(), head);
  return 200;  // Handled: civetweb sends nothing more and logs this status.
}

}  // namespace nexuskv::metrics
