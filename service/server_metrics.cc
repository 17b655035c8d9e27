#include "service/server_metrics.h"

#include <atomic>
#include <set>
#include <span>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/support/interceptor.h"
#include "nexuskv/v1/kv_memory.grpc.pb.h"

namespace nexuskv::service {
namespace {

namespace v1 = ::nexuskv::v1;
using grpc::experimental::InterceptionHookPoints;

// Seconds; RPCs range from a GetSession (sub-millisecond) to a GetCache of a long session.
const std::vector<double> kRpcBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                         0.25,   0.5,   1,      2.5,   5,    10,    30,   60};
// Seconds; a fit is one turn, all layers: milliseconds for small models, seconds for long turns.
const std::vector<double> kFitBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                         1,     2.5,  5,     10,   30,  60,   120};

// Jobs a worker took from the fit queue in one batch (--fit_batch bounds it).
const std::vector<double> kBatchBuckets = {1, 2, 4, 8, 16, 32, 64};
// Seconds a background fit waited in the queue: none when the workers keep up, minutes behind.
const std::vector<double> kQueuedBuckets = {0.001, 0.01, 0.1, 0.5, 1,   2.5, 5,
                                            10,    30,   60,  120, 300, 600};

// Every "/service/method" path this server serves.
const std::set<std::string>& KnownPaths() {
  static const auto* paths = [] {
    auto* known = new std::set<std::string>{
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    };
    const google::protobuf::ServiceDescriptor* kv_memory =
        v1::AppendSegmentRequest::descriptor()->file()->FindServiceByName("KvMemory");
    for (int i = 0; kv_memory != nullptr && i < kv_memory->method_count(); ++i) {
      known->insert(absl::StrCat("/", kv_memory->full_name(), "/", kv_memory->method(i)->name()));
    }
    return known;
  }();
  return *paths;
}

// One per call: counts its request and response bytes and, when its status is sent, the call.
class RpcMetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  RpcMetricsInterceptor(ServerMetrics* metrics, std::string_view path)
      : metrics_(metrics), start_(absl::Now()) {
    std::tie(service_, method_) = ServerMetrics::LabelsOf(path);
    const bool kv_memory = service_ == v1::KvMemory::service_full_name();
    append_ = kv_memory && method_ == "AppendSegment";
    get_cache_ = kv_memory && method_ == "GetCache";
  }

  // A call that ends without sending a status (the client went away first) counts as CANCELLED.
  ~RpcMetricsInterceptor() override {
    if (!recorded_.exchange(true)) Record(grpc::StatusCode::CANCELLED);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (append_ && methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE)) {
      // Null when the read failed (the stream ended).
      if (const void* message = methods->GetRecvMessage(); message != nullptr) {
        metrics_->AddAppendBytes(
            static_cast<const v1::AppendSegmentRequest*>(message)->ByteSizeLong());
      }
    }
    if (get_cache_ &&
        methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE)) {
      if (const void* message = methods->GetSendMessage(); message != nullptr) {
        metrics_->AddGetCacheBytes(
            static_cast<const v1::GetCacheResponse*>(message)->ByteSizeLong());
      } else if (grpc::ByteBuffer* serialized = methods->GetSerializedSendMessage()) {
        metrics_->AddGetCacheBytes(serialized->Length());
      }
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS) &&
        !recorded_.exchange(true)) {
      Record(methods->GetSendStatus().error_code());
    }
    methods->Proceed();
  }

 private:
  void Record(grpc::StatusCode code) {
    metrics_->ObserveRpc(service_, method_, code, absl::Now() - start_);
  }

  ServerMetrics* const metrics_;
  const absl::Time start_;
  std::string service_;
  std::string method_;
  bool append_ = false;
  bool get_cache_ = false;
  std::atomic<bool> recorded_{false};
};

class RpcMetricsFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RpcMetricsFactory(ServerMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new RpcMetricsInterceptor(metrics_, info->method() ? info->method() : "");
  }

 private:
  ServerMetrics* const metrics_;
};

// gRPC's names of its status codes, as grpc-go and the gRPC docs spell them.
std::string CodeName(int code) {
  static constexpr const char* kNames[] = {"OK",
                                           "CANCELLED",
                                           "UNKNOWN",
                                           "INVALID_ARGUMENT",
                                           "DEADLINE_EXCEEDED",
                                           "NOT_FOUND",
                                           "ALREADY_EXISTS",
                                           "PERMISSION_DENIED",
                                           "RESOURCE_EXHAUSTED",
                                           "FAILED_PRECONDITION",
                                           "ABORTED",
                                           "OUT_OF_RANGE",
                                           "UNIMPLEMENTED",
                                           "INTERNAL",
                                           "UNAVAILABLE",
                                           "DATA_LOSS",
                                           "UNAUTHENTICATED"};
  if (code >= 0 && code < static_cast<int>(std::size(kNames))) return kNames[code];
  return absl::StrCat(code);
}

}  // namespace

std::pair<std::string, std::string> ServerMetrics::LabelsOf(std::string_view path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string_view::npos || slash == 0 || KnownPaths().count(std::string(path)) == 0) {
    return {"other", "other"};
  }
  return {std::string(path.substr(1, slash - 1)), std::string(path.substr(slash + 1))};
}

absl::StatusOr<std::unique_ptr<ServerMetrics>> ServerMetrics::Create(metrics::Registry* registry,
                                                                     std::string_view device) {
  std::unique_ptr<ServerMetrics> metrics(new ServerMetrics(registry));
  NEXUSKV_RETURN_IF_ERROR(metrics->Register(device));
  return metrics;
}

absl::Status ServerMetrics::Register(std::string_view device) {
  NEXUSKV_ASSIGN_OR_RETURN(
      rpcs_, registry_->AddCounter("nexuskv_rpcs_total",
                                   "RPCs finished, by gRPC service, method and status code.",
                                   {"service", "method", "code"}));
  NEXUSKV_ASSIGN_OR_RETURN(
      rpc_seconds_,
      registry_->AddHistogram("nexuskv_rpc_duration_seconds",
                              "Time from the start of an RPC to its status, by service and method.",
                              {"service", "method"}, kRpcBuckets));
  NEXUSKV_ASSIGN_OR_RETURN(
      metrics::CounterFamily * in,
      registry_->AddCounter("nexuskv_append_received_bytes_total",
                            "Bytes of AppendSegment request messages received (serialized).", {}));
  NEXUSKV_ASSIGN_OR_RETURN(
      metrics::CounterFamily * out,
      registry_->AddCounter("nexuskv_get_cache_sent_bytes_total",
                            "Bytes of GetCache response messages sent (serialized).", {}));
  append_bytes_ = &in->With({});
  get_cache_bytes_ = &out->With({});
  NEXUSKV_ASSIGN_OR_RETURN(
      fit_seconds_,
      registry_->AddHistogram("nexuskv_fit_duration_seconds",
                              "Time to compute and store one turn's fit, by method and result.",
                              {"method", "result"}, kFitBuckets));
  NEXUSKV_ASSIGN_OR_RETURN(
      metrics::HistogramFamily * batch_jobs,
      registry_->AddHistogram("nexuskv_fit_batch_jobs",
                              "Background fits a worker took from the fit queue in one batch "
                              "(one method, across sessions) and ran.",
                              {}, kBatchBuckets));
  fit_batch_jobs_ = &batch_jobs->With({});
  NEXUSKV_ASSIGN_OR_RETURN(
      metrics::HistogramFamily * batch_seconds,
      registry_->AddHistogram("nexuskv_fit_batch_duration_seconds",
                              "Time a worker spent on one batch of background fits, all its jobs.",
                              {}, kFitBuckets));
  fit_batch_seconds_ = &batch_seconds->With({});
  NEXUSKV_ASSIGN_OR_RETURN(
      metrics::HistogramFamily * queued_seconds,
      registry_->AddHistogram("nexuskv_fit_queued_seconds",
                              "Time a background fit waited in the fit queue before its batch "
                              "started.",
                              {}, kQueuedBuckets));
  fit_queued_seconds_ = &queued_seconds->With({});
  NEXUSKV_ASSIGN_OR_RETURN(
      backpressure_,
      registry_->AddCounter("nexuskv_fit_queue_backpressure_total",
                            "Appends that found the fit queue full, by outcome: admitted once "
                            "room came within --fit_backpressure_ms, or refused with "
                            "RESOURCE_EXHAUSTED (nothing stored).",
                            {"result"}));
  backpressure_->With({"admitted"});  // Both series from the start, at zero.
  backpressure_->With({"refused"});
  NEXUSKV_ASSIGN_OR_RETURN(
      deferred_, registry_->AddCounter("nexuskv_fit_deferred_total",
                                       "Fits deferred by appends that found the fit queue full "
                                       "(--fit_queue_full=defer), and deferred fits dropped beyond "
                                       "--fit_deferred (a GetCache fits those on demand).",
                                       {"event"}));
  deferred_->With({"deferred"});
  deferred_->With({"dropped"});
  NEXUSKV_ASSIGN_OR_RETURN(
      metrics::GaugeFamily * device_info,
      registry_->AddGauge("nexuskv_device_info",
                          "The compute device the compressors run on (value always 1).",
                          {"device"}));
  device_info->With({std::string(device)}).Set(1);
  return absl::OkStatus();
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
ServerMetrics::NewInterceptorFactory() {
  return std::make_unique<RpcMetricsFactory>(this);
}

void ServerMetrics::ObserveRpc(const std::string& service, const std::string& method, int code,
                               absl::Duration elapsed) {
  rpcs_->With({service, method, CodeName(code)}).Increment();
  rpc_seconds_->With({service, method}).Observe(absl::ToDoubleSeconds(elapsed));
}

FitScheduler::DoneCallback ServerMetrics::FitObserver() {
  return [this](const FitJob& job, absl::Duration elapsed, const absl::Status& status) {
    // A session deleted while its fit ran is not a failed fit.
    if (absl::IsNotFound(status)) return;
    fit_seconds_->With({std::string(job.method->name()), status.ok() ? "ok" : "error"})
        .Observe(absl::ToDoubleSeconds(elapsed));
  };
}

FitQueueObserver ServerMetrics::QueueObserver() {
  return FitQueueObserver{
      .on_batch =
          [this](std::span<const absl::Duration> queued, absl::Duration elapsed) {
            fit_batch_jobs_->Observe(static_cast<double>(queued.size()));
            fit_batch_seconds_->Observe(absl::ToDoubleSeconds(elapsed));
            for (const absl::Duration d : queued) {
              fit_queued_seconds_->Observe(absl::ToDoubleSeconds(d));
            }
          },
      .on_backpressure =
          [this](bool admitted) {
            backpressure_->With({admitted ? "admitted" : "refused"}).Increment();
          },
      .on_defer =
          [this](bool dropped_oldest) {
            deferred_->With({"deferred"}).Increment();
            if (dropped_oldest) deferred_->With({"dropped"}).Increment();
          },
  };
}

absl::Status ServerMetrics::WatchFitQueue(std::function<size_t()> queued,
                                          std::function<uint64_t()> bytes,
                                          std::function<size_t()> deferred) {
  NEXUSKV_RETURN_IF_ERROR(registry_->AddGaugeCallback(
      "nexuskv_fit_queue_depth", "Background fits queued and not yet started.", {},
      [queued = std::move(queued)] {
        return std::vector<metrics::GaugeSample>{{{}, static_cast<double>(queued())}};
      }));
  NEXUSKV_RETURN_IF_ERROR(registry_->AddGaugeCallback(
      "nexuskv_fit_queue_bytes",
      "Raw KV bytes the queued background fits will read (--fit_queue_mb bounds it).", {},
      [bytes = std::move(bytes)] {
        return std::vector<metrics::GaugeSample>{{{}, static_cast<double>(bytes())}};
      }));
  return registry_->AddGaugeCallback(
      "nexuskv_fit_deferred_depth",
      "Deferred fits not yet started; the workers take them while the fit queue is empty "
      "(--fit_deferred bounds it).",
      {}, [deferred = std::move(deferred)] {
        return std::vector<metrics::GaugeSample>{{{}, static_cast<double>(deferred())}};
      });
}

absl::Status ServerMetrics::WatchHealth(std::function<bool()> serving) {
  return registry_->AddGaugeCallback(
      "nexuskv_store_writable",
      "1 while the store can write (health SERVING), 0 while appends are refused (NOT_SERVING).",
      {}, [serving = std::move(serving)] {
        return std::vector<metrics::GaugeSample>{{{}, serving() ? 1.0 : 0.0}};
      });
}

absl::Status ServerMetrics::WatchStore(store::Store* store) {
  using Pick = uint64_t store::StoreStats::*;
  const std::pair<const char*, Pick> sizes[] = {
      {"live_sst", &store::StoreStats::live_sst_bytes},
      {"live_blob", &store::StoreStats::live_blob_bytes},
      {"pending_compaction", &store::StoreStats::pending_compaction_bytes}};
  const char* const helps[] = {
      "Bytes of RocksDB's live SST files (records and small values), all column families.",
      "Bytes of RocksDB's live blob files (tensors and fits), all column families.",
      "RocksDB's estimate of the bytes compaction still has to rewrite."};
  for (size_t i = 0; i < std::size(sizes); ++i) {
    NEXUSKV_RETURN_IF_ERROR(registry_->AddGaugeCallback(
        absl::StrCat("nexuskv_rocksdb_", sizes[i].first, "_bytes"), helps[i], {},
        [store, pick = sizes[i].second] {
          const uint64_t value = store->Stats().*pick;
          return std::vector<metrics::GaugeSample>{{{}, static_cast<double>(value)}};
        }));
  }
  const auto per_tenant = [store](bool bytes) {
    std::vector<metrics::GaugeSample> samples;
    for (const auto& [tenant, usage] : store->Stats().tenants) {
      samples.push_back({{tenant}, static_cast<double>(bytes ? usage.bytes : usage.sessions)});
    }
    return samples;
  };
  NEXUSKV_RETURN_IF_ERROR(registry_->AddGaugeCallback("nexuskv_tenant_sessions",
                                                      "Sessions each tenant holds.", {"tenant"},
                                                      [per_tenant] { return per_tenant(false); }));
  return registry_->AddGaugeCallback(
      "nexuskv_tenant_stored_bytes",
      "Bytes each tenant holds, as its quota counts them: raw tensors not dropped, plus fits.",
      {"tenant"}, [per_tenant] { return per_tenant(true); });
}

}  // namespace nexuskv::service
