// FakeKvMemory: an in-memory nexuskv.v1.KvMemory for testing clients without the real server.
//
// It keeps turns in memory, enforces the append rules that clients rely on (header first, turns in
// order, identical retries are no-ops, one spec per session, exact byte lengths), serves FULL
// caches in the session dtype (every other method, and dtype conversion, is UNIMPLEMENTED), and
// pages ListSessions. Hooks let a test make it misbehave on purpose.
//
//   FakeKvMemoryServer server;                        // listens on a free loopback port
//   server.service().cache_stream_hook = [](auto* messages) { messages->erase(messages->begin());
//   }; auto client = Client::Connect({.target = server.address()});
//
// Thread-safe: the gRPC sync server calls it from several threads. Set hooks before the first call.
#ifndef NEXUSKV_CLIENTS_CPP_TESTING_FAKE_KV_MEMORY_H_
#define NEXUSKV_CLIENTS_CPP_TESTING_FAKE_KV_MEMORY_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "nexuskv/v1/kv_memory.grpc.pb.h"

namespace nexuskv::client::testing {

class FakeKvMemory final : public nexuskv::v1::KvMemory::Service {
 public:
  // Edits a GetCache answer (header then layers) before it is sent.
  std::function<void(std::vector<nexuskv::v1::GetCacheResponse>*)> cache_stream_hook;
  // Edits a ListSessions page before it is sent.
  std::function<void(nexuskv::v1::ListSessionsResponse*)> list_hook;
  // Page size when the request says 0.
  uint32_t default_page_size = 100;

  // Deadline of the most recent call as the server saw it (nullopt before any call).
  std::optional<std::chrono::system_clock::time_point> last_deadline() const;
  // Number of LayerChunks received by the most recent AppendSegment stream.
  int last_append_chunks() const;

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
  struct StoredTurn {
    nexuskv::v1::SegmentHeader header;
    std::vector<nexuskv::v1::LayerChunk> layers;  // In layer order.
    uint64_t raw_bytes = 0;
  };
  struct Session {
    std::vector<StoredTurn> turns;
    int64_t create_ms = 0;
    int64_t update_ms = 0;
  };

  void Record(const grpc::ServerContext& context) ABSL_LOCKS_EXCLUDED(mu_);
  static nexuskv::v1::SessionInfo Describe(const std::string& id, const Session& session,
                                           bool with_turns);

  mutable absl::Mutex mu_;
  std::map<std::string, Session> sessions_ ABSL_GUARDED_BY(mu_);
  std::optional<std::chrono::system_clock::time_point> last_deadline_ ABSL_GUARDED_BY(mu_);
  int last_append_chunks_ ABSL_GUARDED_BY(mu_) = 0;
};

// Runs a FakeKvMemory on 127.0.0.1 at a port chosen by the OS, until destroyed.
class FakeKvMemoryServer {
 public:
  FakeKvMemoryServer();
  ~FakeKvMemoryServer();
  FakeKvMemoryServer(const FakeKvMemoryServer&) = delete;
  FakeKvMemoryServer& operator=(const FakeKvMemoryServer&) = delete;

  // "127.0.0.1:PORT".
  const std::string& address() const { return address_; }
  FakeKvMemory& service() { return service_; }

 private:
  FakeKvMemory service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

}  // namespace nexuskv::client::testing

#endif  // NEXUSKV_CLIENTS_CPP_TESTING_FAKE_KV_MEMORY_H_
