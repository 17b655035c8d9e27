#include "clients/cpp/testing/faulty_kv_memory.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace nexuskv::client::testing {
namespace {

namespace v1 = ::nexuskv::v1;

grpc::Status NotScripted(const char* method) {
  return grpc::Status(grpc::UNIMPLEMENTED,
                      absl::StrCat("FaultyKvMemory scripts no answer for ", method));
}

}  // namespace

void FaultyKvMemory::set_cache_answer(std::vector<v1::GetCacheResponse> messages) {
  absl::MutexLock lock(&mu_);
  cache_answer_ = std::move(messages);
}

void FaultyKvMemory::set_list_answer(v1::ListSessionsResponse page) {
  absl::MutexLock lock(&mu_);
  list_answer_ = std::move(page);
}

int FaultyKvMemory::calls() const {
  absl::MutexLock lock(&mu_);
  return calls_;
}

std::map<std::string, FaultyKvMemory::Deadline> FaultyKvMemory::deadlines() const {
  absl::MutexLock lock(&mu_);
  return deadlines_;
}

std::map<std::string, std::vector<std::string>> FaultyKvMemory::session_headers() const {
  absl::MutexLock lock(&mu_);
  return session_headers_;
}

void FaultyKvMemory::Record(const char* method, const grpc::ServerContext& context) {
  std::vector<std::string> session_header;
  const auto [begin, end] = context.client_metadata().equal_range("x-nexuskv-session");
  for (auto it = begin; it != end; ++it) {
    session_header.emplace_back(it->second.data(), it->second.size());
  }
  absl::MutexLock lock(&mu_);
  ++calls_;
  deadlines_[method] = context.deadline();
  session_headers_[method] = std::move(session_header);
}

grpc::Status FaultyKvMemory::AppendSegment(grpc::ServerContext* context,
                                           grpc::ServerReader<v1::AppendSegmentRequest>* reader,
                                           v1::AppendSegmentResponse* /*response*/) {
  Record("AppendSegment", *context);
  v1::AppendSegmentRequest ignored;
  while (reader->Read(&ignored)) {
  }
  return NotScripted("AppendSegment");
}

grpc::Status FaultyKvMemory::GetCache(grpc::ServerContext* context,
                                      const v1::GetCacheRequest* /*request*/,
                                      grpc::ServerWriter<v1::GetCacheResponse>* writer) {
  Record("GetCache", *context);
  std::vector<v1::GetCacheResponse> messages;
  {
    absl::MutexLock lock(&mu_);
    messages = cache_answer_;
  }
  for (const v1::GetCacheResponse& message : messages) {
    if (!writer->Write(message)) break;  // The client gave up (it cancels on a protocol error).
  }
  return grpc::Status::OK;
}

grpc::Status FaultyKvMemory::GetSession(grpc::ServerContext* context,
                                        const v1::GetSessionRequest* /*request*/,
                                        v1::SessionInfo* /*response*/) {
  Record("GetSession", *context);
  return NotScripted("GetSession");
}

grpc::Status FaultyKvMemory::ListSessions(grpc::ServerContext* context,
                                          const v1::ListSessionsRequest* /*request*/,
                                          v1::ListSessionsResponse* response) {
  Record("ListSessions", *context);
  absl::MutexLock lock(&mu_);
  *response = list_answer_;
  return grpc::Status::OK;
}

grpc::Status FaultyKvMemory::DeleteSession(grpc::ServerContext* context,
                                           const v1::DeleteSessionRequest* /*request*/,
                                           v1::DeleteSessionResponse* /*response*/) {
  Record("DeleteSession", *context);
  return NotScripted("DeleteSession");
}

FaultyKvMemoryServer::FaultyKvMemoryServer() {
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service_);
  server_ = builder.BuildAndStart();
  address_ = absl::StrCat("127.0.0.1:", port);
}

FaultyKvMemoryServer::~FaultyKvMemoryServer() {
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

}  // namespace nexuskv::client::testing
