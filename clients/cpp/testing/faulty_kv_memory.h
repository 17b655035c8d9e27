// FaultyKvMemory: a nexuskv.v1.KvMemory server that breaks the protocol on purpose, to test the
// client's defences against a broken server. It is a fault injector, not a server: it stores
// nothing and knows no session.
//
// Behaviour against the real server (what comes back, which error, paging, deletes) is tested
// against the real nexuskv-server in tests/integration/client_test.cc. This class exists only for
// what a correct server never sends: a GetCache stream without a header or with layers out of
// order or of the wrong size, a page token that repeats. Each method answers verbatim what the test
// scripted:
//   GetCache       streams set_cache_answer()'s messages in order, then returns OK.
//   ListSessions   returns set_list_answer()'s page, for every call.
//   AppendSegment, GetSession, DeleteSession   UNIMPLEMENTED (AppendSegment reads its stream
//                  first).
// Every call, whatever its method, is counted and its deadline and x-nexuskv-session metadata
// recorded.
//
//   FaultyKvMemoryServer server;  // listens on a free loopback port
//   server.service().set_cache_answer({/* a header then layers, with one thing wrong */});
//   auto client = Client::Connect({.target = server.address()});
//   EXPECT_EQ((*client)->GetCache(request).status().code(), absl::StatusCode::kInternal);
//
// Thread-safe: the gRPC sync server calls it from several threads.
#ifndef NEXUSKV_CLIENTS_CPP_TESTING_FAULTY_KV_MEMORY_H_
#define NEXUSKV_CLIENTS_CPP_TESTING_FAULTY_KV_MEMORY_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "nexuskv/v1/kv_memory.grpc.pb.h"

namespace nexuskv::client::testing {

class FaultyKvMemory final : public nexuskv::v1::KvMemory::Service {
 public:
  using Deadline = std::chrono::system_clock::time_point;

  // What GetCache streams from now on (empty before the first call: an empty stream).
  void set_cache_answer(std::vector<nexuskv::v1::GetCacheResponse> messages)
      ABSL_LOCKS_EXCLUDED(mu_);
  // What ListSessions answers from now on (an empty page before the first call).
  void set_list_answer(nexuskv::v1::ListSessionsResponse page) ABSL_LOCKS_EXCLUDED(mu_);

  // Calls received so far, any method.
  int calls() const ABSL_LOCKS_EXCLUDED(mu_);
  // The deadline of the latest call of each method, keyed by method name ("GetCache"...). A call
  // without a deadline shows as Deadline::max().
  std::map<std::string, Deadline> deadlines() const ABSL_LOCKS_EXCLUDED(mu_);
  // The values of the "x-nexuskv-session" metadata of the latest call of each method, keyed by
  // method name (empty for a call without it).
  std::map<std::string, std::vector<std::string>> session_headers() const
      ABSL_LOCKS_EXCLUDED(mu_);

  grpc::Status AppendSegment(grpc::ServerContext* context,
                             grpc::ServerReader<nexuskv::v1::AppendSegmentRequest>* reader,
                             nexuskv::v1::AppendSegmentResponse* response) override;
  grpc::Status GetCache(grpc::ServerContext* context, const nexuskv::v1::GetCacheRequest* request,
                        grpc::ServerWriter<nexuskv::v1::GetCacheResponse>* writer) override;
  grpc::Status GetSession(grpc::ServerContext* context,
                          const nexuskv::v1::GetSessionRequest* request,
                          nexuskv::v1::SessionInfo* response) override;
  grpc::Status ListSessions(grpc::ServerContext* context,
                            const nexuskv::v1::ListSessionsRequest* request,
                            nexuskv::v1::ListSessionsResponse* response) override;
  grpc::Status DeleteSession(grpc::ServerContext* context,
                             const nexuskv::v1::DeleteSessionRequest* request,
                             nexuskv::v1::DeleteSessionResponse* response) override;

 private:
  void Record(const char* method, const grpc::ServerContext& context) ABSL_LOCKS_EXCLUDED(mu_);

  mutable absl::Mutex mu_;
  std::vector<nexuskv::v1::GetCacheResponse> cache_answer_ ABSL_GUARDED_BY(mu_);
  nexuskv::v1::ListSessionsResponse list_answer_ ABSL_GUARDED_BY(mu_);
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, Deadline> deadlines_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::vector<std::string>> session_headers_ ABSL_GUARDED_BY(mu_);
};

// Runs a FaultyKvMemory on 127.0.0.1 at a port chosen by the OS, plaintext, until destroyed.
class FaultyKvMemoryServer {
 public:
  FaultyKvMemoryServer();
  ~FaultyKvMemoryServer();
  FaultyKvMemoryServer(const FaultyKvMemoryServer&) = delete;
  FaultyKvMemoryServer& operator=(const FaultyKvMemoryServer&) = delete;

  // "127.0.0.1:PORT".
  const std::string& address() const { return address_; }
  FaultyKvMemory& service() { return service_; }

 private:
  FaultyKvMemory service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

}  // namespace nexuskv::client::testing

#endif  // NEXUSKV_CLIENTS_CPP_TESTING_FAULTY_KV_MEMORY_H_
