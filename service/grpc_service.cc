#include "service/grpc_service.h"

#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"

namespace nexuskv::service {
namespace {

namespace v1 = ::nexuskv::v1;

const grpc::Status kDraining(grpc::StatusCode::UNAVAILABLE,
                             "server shutting down; retry on another replica or after restart");
const grpc::Status kBusy(grpc::StatusCode::UNAVAILABLE,
                         "server busy: its request queue is full; retry with backoff");

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::StatusOr<std::string> KvMemoryService::TenantOf(
    grpc::CallbackServerContext* context) const {
  if (tenants_ == nullptr) return std::string("default");
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  const std::string_view header =
      it == metadata.end() ? std::string_view() : std::string_view(it->second.data(), it->second.size());
  absl::StatusOr<std::string> tenant = tenants_->TenantForAuthorization(header);
  if (!tenant.ok()) {
    Log(LogLevel::kWarning, "unauthenticated",
        {{"peer", context->peer()}, {"reason", tenant.status().message()}});
  }
  return tenant;
}

grpc::Status KvMemoryService::Enter() {
  const int running = in_flight_.fetch_add(1);
  if (draining_.load()) {
    in_flight_.fetch_sub(1);
    return kDraining;
  }
  if (running >= static_cast<int>(limits_.max_concurrent_calls)) {
    in_flight_.fetch_sub(1);
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("server at its limit of ", limits_.max_concurrent_calls,
                                     " concurrent calls (--max_concurrent_streams); retry with "
                                     "backoff"));
  }
  return grpc::Status::OK;
}

bool KvMemoryService::WaitUntilIdle(absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  while (in_flight_.load() > 0) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

KvMemoryService::KvMemoryService(KvMemoryCore* core, ThreadPool* executor, Limits limits,
                                 const TenantDirectory* tenants)
    : core_(core), executor_(executor), limits_(limits), tenants_(tenants) {}

// Receives the stream into a SegmentAssembler (validating each message as it arrives), then
// commits on the executor once the client half-closes.
class KvMemoryService::AppendReactor final
    : public grpc::ServerReadReactor<v1::AppendSegmentRequest> {
 public:
  AppendReactor(KvMemoryService* service, grpc::CallbackServerContext* context,
                v1::AppendSegmentResponse* response)
      : service_(service), context_(context), response_(response),
        assembler_(service->limits_), admission_(service->Enter()) {
    if (!admission_.ok()) {
      Finish(admission_);
      return;
    }
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (ok) {
      const absl::Status status = assembler_.Add(std::move(request_));
      if (!status.ok()) {
        Refuse(status, assembler_.header());
        return;
      }
      request_.Clear();
      StartRead(&request_);
      return;
    }
    // The client half-closed (or went away): commit what it sent, if it is whole.
    if (context_->IsCancelled()) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the append"));
      return;
    }
    if (!service_->executor_->TrySchedule([this] { Commit(); })) Finish(kBusy);
  }

  void OnDone() override {
    if (admission_.ok()) service_->Leave();
    delete this;
  }

 private:
  // Logs and finishes with `status`. `header` is what the stream declared (empty before it).
  void Refuse(const absl::Status& status, const v1::SegmentHeader& header) {
    Log(LogLevel::kInfo, "append_refused",
        {{"session", header.session_id()}, {"turn", header.turn()},
         {"code", absl::StatusCodeToString(status.code())}, {"reason", status.message()}});
    Finish(ToGrpcStatus(status));
  }

  void Commit() {
    absl::StatusOr<std::string> tenant = service_->TenantOf(context_);
    if (!tenant.ok()) return Finish(ToGrpcStatus(tenant.status()));
    const v1::SegmentHeader header = assembler_.header();  // The assembler is moved from below.
    absl::StatusOr<AssembledSegment> segment = std::move(assembler_).Finish();
    if (!segment.ok()) return Refuse(segment.status(), header);
    absl::StatusOr<v1::AppendSegmentResponse> ack =
        service_->core_->Append(*tenant, std::move(*segment));
    if (!ack.ok()) {
      // gRFC A6's pushback trailer: a client with a retry policy waits this long before retrying.
      if (const std::optional<absl::Duration> after = RetryAfterOf(ack.status())) {
        context_->AddTrailingMetadata("grpc-retry-pushback-ms",
                                      absl::StrCat(absl::ToInt64Milliseconds(*after)));
      }
      return Refuse(ack.status(), header);
    }
    *response_ = std::move(*ack);
    Finish(grpc::Status::OK);
  }

  KvMemoryService* const service_;
  grpc::CallbackServerContext* const context_;
  v1::AppendSegmentResponse* const response_;
  SegmentAssembler assembler_;
  const grpc::Status admission_;
  v1::AppendSegmentRequest request_;
};

// Plans the answer on the executor, writes the header, then builds and writes one layer at a
// time: only one layer of the answer is in memory.
class KvMemoryService::GetCacheReactor final
    : public grpc::ServerWriteReactor<v1::GetCacheResponse> {
 public:
  GetCacheReactor(KvMemoryService* service, grpc::CallbackServerContext* context,
                  const v1::GetCacheRequest* request)
      : service_(service), context_(context), request_(*request), admission_(service->Enter()) {
    if (!admission_.ok()) {
      Finish(admission_);
      return;
    }
    if (!service_->executor_->TrySchedule([this] { Plan(); })) Finish(kBusy);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped reading the cache"));
      return;
    }
    if (next_layer_ == assembly_->num_layers()) {
      Finish(grpc::Status::OK);
      return;
    }
    if (!service_->executor_->TrySchedule([this] { WriteNextLayer(); })) Finish(kBusy);
  }

  void OnDone() override {
    if (admission_.ok()) service_->Leave();
    delete this;
  }

 private:
  void Plan() {
    absl::StatusOr<std::string> tenant = service_->TenantOf(context_);
    if (!tenant.ok()) return Finish(ToGrpcStatus(tenant.status()));
    absl::StatusOr<std::unique_ptr<CacheAssembly>> plan =
        service_->core_->PlanCache(*tenant, request_);
    if (!plan.ok()) return Finish(ToGrpcStatus(plan.status()));
    assembly_ = std::move(*plan);
    *response_.mutable_header() = assembly_->header();
    StartWrite(&response_);
  }

  void WriteNextLayer() {
    if (context_->IsCancelled()) {
      return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled"));
    }
    absl::StatusOr<v1::CacheLayer> layer = assembly_->BuildLayer(next_layer_++);
    if (!layer.ok()) {
      Log(LogLevel::kWarning, "get_cache_failed",
          {{"session", request_.session_id()}, {"status", layer.status().ToString()}});
      return Finish(ToGrpcStatus(layer.status()));
    }
    response_.mutable_layer()->Swap(&*layer);
    StartWrite(&response_);
  }

  KvMemoryService* const service_;
  grpc::CallbackServerContext* const context_;
  const v1::GetCacheRequest request_;
  const grpc::Status admission_;
  std::unique_ptr<CacheAssembly> assembly_;
  uint32_t next_layer_ = 0;
  v1::GetCacheResponse response_;
};

grpc::ServerReadReactor<v1::AppendSegmentRequest>* KvMemoryService::AppendSegment(
    grpc::CallbackServerContext* context, v1::AppendSegmentResponse* response) {
  return new AppendReactor(this, context, response);
}

grpc::ServerWriteReactor<v1::GetCacheResponse>* KvMemoryService::GetCache(
    grpc::CallbackServerContext* context, const v1::GetCacheRequest* request) {
  return new GetCacheReactor(this, context, request);
}

grpc::ServerUnaryReactor* KvMemoryService::RunUnary(
    grpc::CallbackServerContext* context,
    std::function<absl::Status(const std::string& tenant)> fn) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (grpc::Status admission = Enter(); !admission.ok()) {
    reactor->Finish(admission);
    return reactor;
  }
  const bool scheduled = executor_->TrySchedule([this, context, reactor, fn = std::move(fn)] {
    absl::StatusOr<std::string> tenant = TenantOf(context);
    reactor->Finish(ToGrpcStatus(tenant.ok() ? fn(*tenant) : tenant.status()));
    Leave();
  });
  if (!scheduled) {
    reactor->Finish(kBusy);
    Leave();
  }
  return reactor;
}

grpc::ServerUnaryReactor* KvMemoryService::GetSession(grpc::CallbackServerContext* context,
                                                      const v1::GetSessionRequest* request,
                                                      v1::SessionInfo* response) {
  return RunUnary(context, [this, request, response](const std::string& tenant) {
    absl::StatusOr<v1::SessionInfo> info = core_->GetSession(tenant, request->session_id());
    if (info.ok()) *response = std::move(*info);
    return info.status();
  });
}

grpc::ServerUnaryReactor* KvMemoryService::ListSessions(grpc::CallbackServerContext* context,
                                                        const v1::ListSessionsRequest* request,
                                                        v1::ListSessionsResponse* response) {
  return RunUnary(context, [this, request, response](const std::string& tenant) {
    absl::StatusOr<v1::ListSessionsResponse> page = core_->ListSessions(tenant, *request);
    if (page.ok()) *response = std::move(*page);
    return page.status();
  });
}

grpc::ServerUnaryReactor* KvMemoryService::DeleteSession(grpc::CallbackServerContext* context,
                                                         const v1::DeleteSessionRequest* request,
                                                         v1::DeleteSessionResponse* response) {
  return RunUnary(context, [this, request, response](const std::string& tenant) {
    absl::StatusOr<v1::DeleteSessionResponse> out =
        core_->DeleteSession(tenant, request->session_id());
    if (out.ok()) *response = std::move(*out);
    return out.status();
  });
}

}  // namespace nexuskv::service
