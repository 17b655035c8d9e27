#include "service/server.h"

#include <pthread.h>
#include <signal.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "compressor/compressor.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "service/grpc_service.h"
#include "service/internal/thread_pool.h"

namespace nexuskv::service {
namespace {

sigset_t ShutdownSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

}  // namespace

absl::Status RunServer(const ServerOptions& options) {
  // Threads started from here on inherit the mask, so only sigwait below sees the signals.
  const sigset_t signals = ShutdownSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  NEXUSKV_ASSIGN_OR_RETURN(std::unique_ptr<store::Store> store, store::Store::Open(options.store));
  const compressor::CompressorRegistry& registry = compressor::CompressorRegistry::Default();
  KvMemoryCore core(store.get(), &registry, options.core);
  ThreadPool executor("rpc", options.rpc_threads, options.rpc_queue);
  KvMemoryService service(&core, &executor, options.core.limits);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &port);
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
       {"methods", absl::StrJoin(registry.names(), ",", AppendView)}});
  Log(LogLevel::kWarning, "insecure_mode",
      {{"detail", "no TLS and no authentication: every caller is tenant 'default'; bind to "
                  "localhost or a private network only"}});

  int signal = 0;
  sigwait(&signals, &signal);
  Log(LogLevel::kInfo, "shutdown_started",
      {{"signal", signal == SIGTERM ? "SIGTERM" : "SIGINT"},
       {"grace_s", absl::ToDoubleSeconds(options.shutdown_grace)}});
  server->GetHealthCheckService()->SetServingStatus(false);
  server->Shutdown(std::chrono::system_clock::now() +
                   absl::ToChronoSeconds(options.shutdown_grace));
  server->Wait();
  Log(LogLevel::kDebug, "rpcs_drained", {});
  executor.Shutdown();
  core.Shutdown();
  store.reset();  // Closes RocksDB after every writer has stopped.
  Log(LogLevel::kInfo, "server_stopped", {});
  return absl::OkStatus();
}

}  // namespace nexuskv::service
