// RunServer: wires store, compressors, core and gRPC into a running nexuskv server.
//
//   ServerOptions options;
//   options.listen = "0.0.0.0:50051";
//   return RunServer(options).ok() ? 0 : 1;
//
// Health is SERVING while the store can write and NOT_SERVING while it cannot (re-checked every
// health_check_period). RunServer blocks until SIGTERM or SIGINT (SIGHUP reloads the tokens
// file), then shuts down gracefully: health turns NOT_SERVING,
// in-flight RPCs get options.shutdown_grace to finish (then are cancelled), background fits stop,
// RocksDB is closed. Call it from main() before starting any other thread (it blocks the two
// signals for the whole process and waits for them on the calling thread).
#ifndef NEXUSKV_SERVICE_SERVER_H_
#define NEXUSKV_SERVICE_SERVER_H_

#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "compressor/compute/compute.h"
#include "service/kv_memory_core.h"
#include "store/store.h"

namespace nexuskv::service {

struct ServerOptions {
  std::string listen = "localhost:50051";  // host:port; port 0 picks a free one (logged).
  store::Options store;                    // store.path is the data directory.
  CoreOptions core;
  int rpc_threads = 8;      // Executor threads for blocking RPC work.
  int blas_threads = 1;     // compressor::SetCpuBlasThreads; 0: OpenBLAS's default.
  size_t rpc_queue = 4096;  // Queued RPC work beyond which calls fail with UNAVAILABLE.
  absl::Duration shutdown_grace = absl::Seconds(20);

  // TLS: both set -> the server speaks TLS only (PEM files). tls_client_ca_file set as well ->
  // mutual TLS: clients must present a certificate signed by that CA or the handshake fails.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  // Bearer tokens -> tenants (see auth.h). Empty: no authentication, every caller is tenant
  // "default" (the embedded quick start; logged as insecure). SIGHUP reloads the file.
  std::string auth_tokens_file;
  // How often expired sessions are deleted (see SegmentHeader.ttl_seconds); 0 turns the sweep off.
  absl::Duration retention_sweep = absl::Seconds(60);
  // "HOST:PORT" on which to serve Prometheus metrics at /metrics over plain HTTP (see
  // docs/metrics.md); port 0 picks a free one (logged). Empty: no metrics.
  std::string metrics_listen;
  // How often the health service re-checks that the store can write (Store::CheckWritable):
  // NOT_SERVING while it cannot, SERVING again once it can (see health_watcher.h). Must be > 0.
  absl::Duration health_check_period = absl::Seconds(5);
  // The backend the compressors compute on (--device: SelectCompute, service/compute_device.h),
  // borrowed: it must outlive RunServer. Null: CpuCompute().
  const compressor::ComputeBackend* compute = nullptr;
};

// Errors: the store's Open errors; UNAVAILABLE when the address (or the metrics address) cannot
// be bound; INVALID_ARGUMENT for a malformed metrics address, or (with NOT_FOUND) for unusable TLS
// or token files (half a TLS configuration is refused, never silently downgraded to plaintext).
absl::Status RunServer(const ServerOptions& options);

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_SERVER_H_
