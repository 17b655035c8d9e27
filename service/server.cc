#include "service/server.h"

#include <pthread.h>
#include <signal.h>

#include <fstream>
#include <memory>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "compressor/compressor.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "service/auth.h"
#include "service/grpc_service.h"
#include "service/internal/thread_pool.h"

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

}  // namespace

absl::Status RunServer(const ServerOptions& options) {
  // Threads started from here on inherit the mask, so only sigwait below sees the signals.
  const sigset_t signals = HandledSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  NEXUSKV_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                           Credentials(options));
  std::unique_ptr<TenantDirectory> tenants;
  if (!options.auth_tokens_file.empty()) {
    NEXUSKV_ASSIGN_OR_RETURN(tenants, TenantDirectory::Load(options.auth_tokens_file));
  }
  NEXUSKV_ASSIGN_OR_RETURN(std::unique_ptr<store::Store> store, store::Store::Open(options.store));
  const compressor::CompressorRegistry& registry = compressor::CompressorRegistry::Default();
  KvMemoryCore core(store.get(), &registry, options.core);
  ThreadPool executor("rpc", options.rpc_threads, options.rpc_queue);
  KvMemoryService service(&core, &executor, options.core.limits, tenants.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, credentials, &port);
  const int max_message = static_cast<int>(
      std::min<uint64_t>(options.core.limits.max_message_bytes, INT32_MAX));
  builder.SetMaxReceiveMessageSize(max_message);
  builder.SetMaxSendMessageSize(max_message);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("could not listen on ", options.listen,
                                               "; is the address valid and the port free?"));
  }
  server->GetHealthCheckService()->SetServingStatus(true);
  Log(LogLevel::kInfo, "server_started",
      {{"listen", options.listen}, {"port", port}, {"data_dir", options.store.path},
       {"sync_writes", options.store.sync_writes},
       {"methods", absl::StrJoin(registry.names(), ",", AppendView)},
       {"tls", options.tls_cert_file.empty() ? "off"
               : options.tls_client_ca_file.empty() ? "on" : "mutual"},
       {"auth", tenants ? "bearer-tokens" : "off"}});
  if (!tenants || options.tls_cert_file.empty()) {
    Log(LogLevel::kWarning, "insecure_mode",
        {{"detail", absl::StrCat(options.tls_cert_file.empty() ? "no TLS (plaintext); " : "",
                                 tenants ? "" : "no authentication (every caller is tenant "
                                                "'default'); ",
                                 "bind to localhost or a private network only")}});
  }

  // Retention: delete expired sessions every options.retention_sweep until shutdown.
  absl::Notification stop_sweeping;
  std::thread sweeper;
  if (options.retention_sweep > absl::ZeroDuration()) {
    sweeper = std::thread([&] {
      while (!stop_sweeping.WaitForNotificationWithTimeout(options.retention_sweep)) {
        absl::StatusOr<uint32_t> deleted = store->DeleteExpired(absl::ToUnixMillis(absl::Now()));
        if (!deleted.ok() || *deleted > 0) {
          Log(deleted.ok() ? LogLevel::kInfo : LogLevel::kError, "retention_sweep",
              {{"deleted", deleted.ok() ? *deleted : 0}, {"status", deleted.status().ToString()}});
        }
      }
    });
  }

  int signal = 0;
  while (true) {
    sigwait(&signals, &signal);
    if (signal != SIGHUP) break;
    const absl::Status reloaded = tenants ? tenants->Reload() : absl::OkStatus();
    Log(reloaded.ok() ? LogLevel::kInfo : LogLevel::kError, "tokens_reloaded",
        {{"status", reloaded.ToString()}});
  }
  Log(LogLevel::kInfo, "shutdown_started",
      {{"signal", signal == SIGTERM ? "SIGTERM" : "SIGINT"},
       {"grace_s", absl::ToDoubleSeconds(options.shutdown_grace)}});
  // Lameduck first: health NOT_SERVING, new calls refused with UNAVAILABLE, running calls get
  // the grace period. Then shut down at once: waiting inside grpc::Server::Shutdown would also
  // wait for idle client connections to acknowledge GOAWAY, which can take seconds.
  server->GetHealthCheckService()->SetServingStatus(false);
  service.BeginDrain();
  const bool idle = service.WaitUntilIdle(options.shutdown_grace);
  Log(idle ? LogLevel::kInfo : LogLevel::kWarning, "rpcs_drained",
      {{"cancelled_remaining", !idle}});
  server->Shutdown(std::chrono::system_clock::now());
  server->Wait();
  stop_sweeping.Notify();
  if (sweeper.joinable()) sweeper.join();
  executor.Shutdown();
  core.Shutdown();
  store.reset();  // Closes RocksDB after every writer has stopped.
  Log(LogLevel::kInfo, "server_stopped", {});
  return absl::OkStatus();
}

}  // namespace nexuskv::service
