// KvMemoryService: the gRPC face of KvMemoryCore (callback API, one reactor per streaming RPC).
//
// It moves messages and maps absl::Status codes one to one onto grpc::Status; every decision is in
// KvMemoryCore. Blocking work (RocksDB, cache assembly) runs on `executor`, never on gRPC's
// threads; when the executor's queue is full a call fails fast with UNAVAILABLE (retry later).
// Thread-safe.
#ifndef NEXUSKV_SERVICE_GRPC_SERVICE_H_
#define NEXUSKV_SERVICE_GRPC_SERVICE_H_

#include <atomic>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "nexuskv/v1/kv_memory.grpc.pb.h"
#include "service/auth.h"
#include "service/internal/thread_pool.h"
#include "service/kv_memory_core.h"

namespace nexuskv::service {

// absl::Status -> grpc::Status, code and message kept.
grpc::Status ToGrpcStatus(const absl::Status& status);

class KvMemoryService final : public nexuskv::v1::KvMemory::CallbackService {
 public:
  // `core`, `executor` and `tenants` must outlive the service (and the grpc::Server it is
  // registered with). `tenants` null: no authentication, every caller is tenant "default".
  KvMemoryService(KvMemoryCore* core, ThreadPool* executor, Limits limits,
                  const TenantDirectory* tenants = nullptr);

  grpc::ServerReadReactor<nexuskv::v1::AppendSegmentRequest>* AppendSegment(
      grpc::CallbackServerContext* context,
      nexuskv::v1::AppendSegmentResponse* response) override;
  grpc::ServerWriteReactor<nexuskv::v1::GetCacheResponse>* GetCache(
      grpc::CallbackServerContext* context, const nexuskv::v1::GetCacheRequest* request) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* context,
                                       const nexuskv::v1::GetSessionRequest* request,
                                       nexuskv::v1::SessionInfo* response) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* context,
                                         const nexuskv::v1::ListSessionsRequest* request,
                                         nexuskv::v1::ListSessionsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteSession(grpc::CallbackServerContext* context,
                                          const nexuskv::v1::DeleteSessionRequest* request,
                                          nexuskv::v1::DeleteSessionResponse* response) override;

  // Lameduck: from now on new calls fail fast with UNAVAILABLE (clients retry elsewhere); calls
  // already running continue.
  void BeginDrain() { draining_.store(true); }

  // Waits until no call is running or `timeout` passes; true when idle.
  bool WaitUntilIdle(absl::Duration timeout) const;

  // The tenant a call acts for: from its "authorization: Bearer <token>" metadata when the server
  // has a TenantDirectory (UNAUTHENTICATED otherwise), else "default".
  absl::StatusOr<std::string> TenantOf(grpc::CallbackServerContext* context) const;

 private:
  class AppendReactor;
  class GetCacheReactor;

  // Counts a call in, or returns why it must be refused (draining; too many calls). Leave() only
  // after an OK Enter().
  grpc::Status Enter();
  void Leave() { in_flight_.fetch_sub(1); }

  // Runs fn on the executor and finishes the unary call with its status.
  grpc::ServerUnaryReactor* RunUnary(grpc::CallbackServerContext* context,
                                     std::function<absl::Status(const std::string& tenant)> fn);

  KvMemoryCore* const core_;
  ThreadPool* const executor_;
  const Limits limits_;
  const TenantDirectory* const tenants_;
  std::atomic<bool> draining_{false};
  std::atomic<int> in_flight_{0};
};

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_GRPC_SERVICE_H_
