#include "service/server.h"

#include <pthread.h>
#include <signal.h>

#include <fstream>
#include <memory>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "compressor/compressor.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "metrics/http_exporter.h"
#include "metrics/registry.h"
#include "service/auth.h"
#include "service/grpc_service.h"
#include "service/health_watcher.h"
#include "service/internal/thread_pool.h"
#include "service/server_metrics.h"

namespace nexuskv::service {
namespace {

sigset_t HandledSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  return set;
}

absl::StatusOr<std::string> ReadFile(const std::string& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", std::string(what), " ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Plaintext, TLS or mutual TLS, from the options.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const ServerOptions& o) {
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "TLS needs both --tls_cert_file and --tls_key_file; set both or neither");
  }
  if (o.tls_cert_file.empty()) {
    if (!o.tls_client_ca_file.empty()) {
      return absl::InvalidArgumentError(
          "--tls_client_ca_file (mutual TLS) needs --tls_cert_file and --tls_key_file too");
    }
    return grpc::InsecureServerCredentials();
  }
  grpc::SslServerCredentialsOptions ssl(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  NEXUSKV_ASSIGN_OR_RETURN(std::string cert, ReadFile(o.tls_cert_file, "TLS certificate"));
  NEXUSKV_ASSIGN_OR_RETURN(std::string key, ReadFile(o.tls_key_file, "TLS private key"));
  ssl.pem_key_cert_pairs.push_back({key, cert});
  if (!o.tls_client_ca_file.empty()) {
    NEXUSKV_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadFile(o.tls_client_ca_file, "client CA"));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

// Builds and starts the gRPC server with health checking and reflection; `metrics` (may be null)
// adds its interceptor. `port` receives the bound port.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    const ServerOptions& options, std::shared_ptr<grpc::ServerCredentials> credentials,
    KvMemoryService* service, ServerMetrics* metrics, int* port) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, credentials, port);
  const int max_message =
      static_cast<int>(std::min<uint64_t>(options.core.limits.max_message_bytes, INT32_MAX));
  builder.SetMaxReceiveMessageSize(max_message);
  builder.SetMaxSendMessageSize(max_message);
  builder.RegisterService(service);
  if (metrics != nullptr) {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
    creators.push_back(metrics->NewInterceptorFactory());
    builder.experimental().SetInterceptorCreators(std::move(creators));
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || *port == 0) {
    return absl::UnavailableError(absl::StrCat("could not listen on ", options.listen,
                                               "; is the address valid and the port free?"));
  }
  return server;
}

// Adds the scrape-time gauges (store, fit queue, health) and serves /metrics on
// options.metrics_listen. Everything the gauges read must outlive the returned exporter.
absl::StatusOr<std::unique_ptr<metrics::HttpExporter>> StartMetricsExporter(
    const ServerOptions& options, const metrics::Registry* registry, ServerMetrics& metrics,
    store::Store* store, const KvMemoryCore* core, const HealthWatcher* health) {
  NEXUSKV_RETURN_IF_ERROR(metrics.WatchStore(store));
  NEXUSKV_RETURN_IF_ERROR(metrics.WatchFitQueue([core] { return core->queued_fits(); },
                                                [core] { return core->queued_fit_bytes(); },
                                                [core] { return core->deferred_fits(); }));
  NEXUSKV_RETURN_IF_ERROR(
      metrics.WatchHealth([health] { return health->serving().value_or(false); }));
  NEXUSKV_ASSIGN_OR_RETURN(std::unique_ptr<metrics::HttpExporter> exporter,
                           metrics::HttpExporter::Start(options.metrics_listen, registry));
  Log(LogLevel::kInfo, "metrics_serving",
      {{"listen", options.metrics_listen}, {"port", exporter->port()}, {"path", "/metrics"}});
  return exporter;
}

void LogStarted(const ServerOptions& options, int port, bool auth,
                const compressor::CompressorRegistry& methods,
                const compressor::ComputeBackend& compute) {
  Log(LogLevel::kInfo, "server_started",
      {{"listen", options.listen},
       {"port", port},
       {"data_dir", options.store.path},
       {"sync_writes", options.store.sync_writes},
       {"methods", absl::StrJoin(methods.names(), ",", AppendView)},
       {"compute", compute.name()},
       {"tls", options.tls_cert_file.empty()        ? "off"
               : options.tls_client_ca_file.empty() ? "on"
                                                    : "mutual"},
       {"auth", auth ? "bearer-tokens" : "off"},
       {"metrics", options.metrics_listen.empty() ? "off" : options.metrics_listen}});
  if (!auth || options.tls_cert_file.empty()) {
    Log(LogLevel::kWarning, "insecure_mode",
        {{"detail", absl::StrCat(options.tls_cert_file.empty() ? "no TLS (plaintext); " : "",
                                 auth ? ""
                                      : "no authentication (every caller is tenant "
                                        "'default'); ",
                                 "bind to localhost or a private network only")}});
  }
}

// Deletes expired sessions, and purges what deletes deferred, every options.retention_sweep until
// `stop` (no thread when 0).
std::thread StartRetentionSweeper(const ServerOptions& options, store::Store* store,
                                  absl::Notification* stop) {
  if (options.retention_sweep <= absl::ZeroDuration()) return std::thread();
  return std::thread([&options, store, stop] {
    while (!stop->WaitForNotificationWithTimeout(options.retention_sweep)) {
      absl::StatusOr<uint32_t> deleted = store->DeleteExpired(absl::ToUnixMillis(absl::Now()));
      if (!deleted.ok() || *deleted > 0) {
        Log(deleted.ok() ? LogLevel::kInfo : LogLevel::kError, "retention_sweep",
            {{"deleted", deleted.ok() ? *deleted : 0}, {"status", deleted.status().ToString()}});
      }
      // Deletes within --purge_interval_s of a purge left their bytes for this one.
      if (const absl::Status purged = store->FlushPurges(); !purged.ok()) {
        Log(LogLevel::kError, "purge_failed", {{"status", purged.ToString()}});
      }
    }
  });
}

// Waits for SIGTERM or SIGINT (returned), reloading the tokens on each SIGHUP.
int WaitForShutdownSignal(const sigset_t& signals, TenantDirectory* tenants) {
  int signal = 0;
  while (true) {
    sigwait(&signals, &signal);
    if (signal != SIGHUP) return signal;
    const absl::Status reloaded = tenants ? tenants->Reload() : absl::OkStatus();
    Log(reloaded.ok() ? LogLevel::kInfo : LogLevel::kError, "tokens_reloaded",
        {{"status", reloaded.ToString()}});
  }
}

// Lameduck first: health NOT_SERVING, new calls refused with UNAVAILABLE, running calls get
// `grace`. Then shuts down at once: waiting inside grpc::Server::Shutdown would also wait for idle
// client connections to acknowledge GOAWAY, which can take seconds.
void DrainAndStop(grpc::Server& server, KvMemoryService& service, absl::Duration grace) {
  server.GetHealthCheckService()->SetServingStatus(false);
  service.BeginDrain();
  const bool idle = service.WaitUntilIdle(grace);
  Log(idle ? LogLevel::kInfo : LogLevel::kWarning, "rpcs_drained",
      {{"cancelled_remaining", !idle}});
  server.Shutdown(std::chrono::system_clock::now());
  server.Wait();
}

}  // namespace

absl::Status RunServer(const ServerOptions& options) {
  // Threads started from here on inherit the mask, so only sigwait below sees the signals.
  const sigset_t signals = HandledSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  NEXUSKV_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                           Credentials(options));
  if (!options.metrics_listen.empty()) {  // Refuse a malformed address before opening anything.
    NEXUSKV_RETURN_IF_ERROR(metrics::CivetwebListeningPort(options.metrics_listen).status());
  }
  std::unique_ptr<TenantDirectory> tenants;
  if (!options.auth_tokens_file.empty()) {
    NEXUSKV_ASSIGN_OR_RETURN(tenants, TenantDirectory::Load(options.auth_tokens_file));
  }
  NEXUSKV_ASSIGN_OR_RETURN(std::unique_ptr<store::Store> store, store::Store::Open(options.store));
  compressor::SetCpuBlasThreads(options.blas_threads);
  // The compressors compute on the --device backend.
  const compressor::ComputeBackend& compute =
      options.compute != nullptr ? *options.compute : compressor::CpuCompute();
  const std::unique_ptr<compressor::CompressorRegistry> methods =
      compressor::CompressorRegistry::Builtin(compute);
  metrics::Registry registry;
  std::unique_ptr<ServerMetrics> metrics;
  CoreOptions core_options = options.core;
  core_options.compute = &compute;
  if (!options.metrics_listen.empty()) {
    NEXUSKV_ASSIGN_OR_RETURN(metrics, ServerMetrics::Create(&registry, compute.name()));
    core_options.on_fit_done = metrics->FitObserver();
    core_options.on_fit_queue = metrics->QueueObserver();
  }
  KvMemoryCore core(store.get(), methods.get(), core_options);
  ThreadPool executor("rpc", options.rpc_threads, options.rpc_queue);
  KvMemoryService service(&core, &executor, options.core.limits, tenants.get());
  grpc::HealthCheckServiceInterface* health_service = nullptr;  // Set once the server runs.
  HealthWatcher health(
      [&store] { return store->CheckWritable(); },
      [&health_service](bool serving) { health_service->SetServingStatus(serving); },
      options.health_check_period);
  std::unique_ptr<metrics::HttpExporter> exporter;  // Destroyed before what its gauges read.
  if (metrics != nullptr) {
    NEXUSKV_ASSIGN_OR_RETURN(
        exporter, StartMetricsExporter(options, &registry, *metrics, store.get(), &core, &health));
  }
  int port = 0;
  NEXUSKV_ASSIGN_OR_RETURN(std::unique_ptr<grpc::Server> server,
                           StartGrpcServer(options, credentials, &service, metrics.get(), &port));
  health_service = server->GetHealthCheckService();
  health.Start();  // SERVING when the store can write.
  LogStarted(options, port, tenants != nullptr, *methods, compute);
  absl::Notification stop_sweeping;
  std::thread sweeper = StartRetentionSweeper(options, store.get(), &stop_sweeping);

  const int signal = WaitForShutdownSignal(signals, tenants.get());
  Log(LogLevel::kInfo, "shutdown_started",
      {{"signal", signal == SIGTERM ? "SIGTERM" : "SIGINT"},
       {"grace_s", absl::ToDoubleSeconds(options.shutdown_grace)}});
  health.Stop();  // So that nothing turns health back to SERVING.
  DrainAndStop(*server, service, options.shutdown_grace);
  exporter.reset();
  stop_sweeping.Notify();
  if (sweeper.joinable()) sweeper.join();
  executor.Shutdown();
  core.Shutdown();
  store.reset();  // Closes RocksDB after every writer has stopped.
  Log(LogLevel::kInfo, "server_stopped", {});
  return absl::OkStatus();
}

}  // namespace nexuskv::service
