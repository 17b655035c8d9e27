// HttpExporter: serves a Registry's exposition at GET /metrics over HTTP (civetweb), for a
// Prometheus server to scrape.
//
//   NEXUSKV_ASSIGN_OR_RETURN(std::unique_ptr<HttpExporter> exporter,
//                            HttpExporter::Start("127.0.0.1:9464", &registry));
//   // curl http://127.0.0.1:9464/metrics
//
// Only /metrics is served (GET or HEAD); any other path answers 404, other methods 405. The
// exporter runs its own two civetweb worker threads; a scrape calls Registry::Exposition() on one
// of them. Plain HTTP, no authentication: bind it to loopback or a private network.
//
// Thread-safe; destroying the exporter stops the HTTP server (waiting for a scrape in progress).
#ifndef NEXUSKV_METRICS_HTTP_EXPORTER_H_
#define NEXUSKV_METRICS_HTTP_EXPORTER_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "metrics/registry.h"

struct mg_connection;
struct mg_context;

namespace nexuskv::metrics {

class HttpExporter {
 public:
  // Starts serving on `listen`: "HOST:PORT" where HOST is an IPv4 address, "localhost", "[IPv6]",
  // or empty / "0.0.0.0" / "*" for every interface, and PORT is 0..65535 (0 picks a free port;
  // see port()). `registry` must outlive the exporter. InvalidArgument for an address of another
  // shape (the message says which); Unavailable when the port cannot be bound.
  static absl::StatusOr<std::unique_ptr<HttpExporter>> Start(std::string_view listen,
                                                             const Registry* registry);

  HttpExporter(const HttpExporter&) = delete;
  HttpExporter& operator=(const HttpExporter&) = delete;
  ~HttpExporter();

  // The port actually bound.
  int port() const { return port_; }

 private:
  explicit HttpExporter(const Registry* registry) : registry_(registry) {}
  // civetweb's begin_request callback: answers every request (see Start) and returns its status.
  static int BeginRequest(::mg_connection* connection);
  static int HandleRequest(::mg_connection* connection, void* self);

  const Registry* const registry_;
  mg_context* context_ = nullptr;
  int port_ = 0;
};

// The civetweb listening_ports value for a "HOST:PORT" address, e.g. "127.0.0.1:9464" or
// "[::1]:0"; errors as HttpExporter::Start. Exposed for tests.
absl::StatusOr<std::string> CivetwebListeningPort(std::string_view listen);

}  // namespace nexuskv::metrics

#endif  // NEXUSKV_METRICS_HTTP_EXPORTER_H_
