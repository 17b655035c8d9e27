// ServerMetrics: the nexuskv_* metrics of a running server, in a metrics::Registry that
// metrics::HttpExporter serves at /metrics (--metrics_listen). docs/metrics.md lists every metric.
//
//   metrics::Registry registry;
//   NEXUSKV_ASSIGN_OR_RETURN(std::unique_ptr<ServerMetrics> m, ServerMetrics::Create(&registry));
//   builder.experimental().SetInterceptorCreators(...m->NewInterceptorFactory()...);
//   core_options.on_fit_done = m->FitObserver();
//   core_options.on_fit_queue = m->QueueObserver();
//   NEXUSKV_RETURN_IF_ERROR(m->WatchStore(store.get()));
//
// What it counts, and where:
//   - RPCs by method and gRPC code, their latency, and the bytes of AppendSegment requests and
//     GetCache responses: a gRPC server interceptor (no code in the service), so refusals by the
//     service edge (draining, busy, over the call limit, auth) are counted too.
//   - Fit time and outcome: FitScheduler reports each computed fit (FitObserver).
//   - The fit queue's batches (jobs, time queued, time per batch) and the appends its
//     back-pressure held or refused: FitScheduler reports them (QueueObserver).
//   - Fit queue depth (jobs and bytes), RocksDB sizes, sessions and bytes per tenant: read at
//     scrape time from the fit scheduler and Store::Stats (no data scan).
// Method labels are limited to the methods this server serves (others read "other"), so a client
// cannot grow the label set.
//
// Thread-safe. Everything passed in (registry, store, queue function) must outlive both this
// object and the HTTP exporter; the interceptor factory must not outlive this object.
#ifndef NEXUSKV_SERVICE_SERVER_METRICS_H_
#define NEXUSKV_SERVICE_SERVER_METRICS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/support/server_interceptor.h"
#include "metrics/registry.h"
#include "service/fit_scheduler.h"
#include "store/store.h"

namespace nexuskv::service {

class ServerMetrics {
 public:
  // Registers the families in `registry` (which must hold no nexuskv_* metric yet: AlreadyExists
  // otherwise). `device` is the compute device of the compressors ("cpu" until the GPU path lands).
  static absl::StatusOr<std::unique_ptr<ServerMetrics>> Create(metrics::Registry* registry,
                                                               std::string_view device = "cpu");
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  // For grpc::ServerBuilder::experimental().SetInterceptorCreators.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewInterceptorFactory();

  // For FitScheduler (CoreOptions::on_fit_done): records one computed fit.
  FitScheduler::DoneCallback FitObserver();

  // For FitScheduler (CoreOptions::on_fit_queue): records batches, back-pressure and deferrals.
  FitQueueObserver QueueObserver();

  // Scrape-time gauges of the store (Store::Stats) and of the fit queue: jobs queued, the raw KV
  // bytes they will read, and the deferred jobs.
  absl::Status WatchStore(store::Store* store);
  absl::Status WatchFitQueue(std::function<size_t()> queued, std::function<uint64_t()> bytes,
                             std::function<size_t()> deferred);
  // nexuskv_store_writable: 1 while `serving` (the health watcher's answer), else 0.
  absl::Status WatchHealth(std::function<bool()> serving);

  // What the interceptor records. `service` and `method` are label values (see LabelsOf).
  void ObserveRpc(const std::string& service, const std::string& method, int code,
                  absl::Duration elapsed);
  void AddAppendBytes(uint64_t bytes) { append_bytes_->Increment(static_cast<double>(bytes)); }
  void AddGetCacheBytes(uint64_t bytes) { get_cache_bytes_->Increment(static_cast<double>(bytes)); }

  // The {service, method} labels of a gRPC method path ("/pkg.Service/Method"): its parts when
  // this server serves it (KvMemory, health, reflection), else {"other", "other"}.
  static std::pair<std::string, std::string> LabelsOf(std::string_view path);

 private:
  explicit ServerMetrics(metrics::Registry* registry) : registry_(registry) {}
  absl::Status Register(std::string_view device);

  metrics::Registry* const registry_;
  metrics::CounterFamily* rpcs_ = nullptr;
  metrics::HistogramFamily* rpc_seconds_ = nullptr;
  metrics::Counter* append_bytes_ = nullptr;
  metrics::Counter* get_cache_bytes_ = nullptr;
  metrics::HistogramFamily* fit_seconds_ = nullptr;
  metrics::Histogram* fit_batch_jobs_ = nullptr;
  metrics::Histogram* fit_batch_seconds_ = nullptr;
  metrics::Histogram* fit_queued_seconds_ = nullptr;
  metrics::CounterFamily* backpressure_ = nullptr;
  metrics::CounterFamily* deferred_ = nullptr;
};

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_SERVER_METRICS_H_
