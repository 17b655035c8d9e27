#include "clients/cpp/testing/fake_kv_memory.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace nexuskv::client::testing {
namespace {

namespace v1 = ::nexuskv::v1;

grpc::Status Error(grpc::StatusCode code, std::string message) {
  return grpc::Status(code, std::move(message));
}

size_t ElementSize(v1::DType dtype) { return dtype == v1::DTYPE_FLOAT32 ? 4 : 2; }

bool SameSpec(const v1::ModelSpec& a, const v1::ModelSpec& b) {
  return a.SerializeAsString() == b.SerializeAsString();
}

}  // namespace

std::optional<std::chrono::system_clock::time_point> FakeKvMemory::last_deadline() const {
  absl::MutexLock lock(&mu_);
  return last_deadline_;
}

int FakeKvMemory::last_append_chunks() const {
  absl::MutexLock lock(&mu_);
  return last_append_chunks_;
}

void FakeKvMemory::Record(const grpc::ServerContext& context) {
  absl::MutexLock lock(&mu_);
  last_deadline_ = context.deadline();
}

grpc::Status FakeKvMemory::AppendSegment(grpc::ServerContext* context,
                                         grpc::ServerReader<v1::AppendSegmentRequest>* reader,
                                         v1::AppendSegmentResponse* response) {
  Record(*context);
  v1::AppendSegmentRequest request;
  if (!reader->Read(&request) || !request.has_header()) {
    return Error(grpc::INVALID_ARGUMENT, "AppendSegment: the first message must be a header");
  }
  StoredTurn turn;
  turn.header = request.header();
  const v1::SegmentHeader& h = turn.header;
  const v1::ModelSpec& m = h.model();
  if (h.session_id().empty() || m.num_layers() == 0 || m.dtype() == v1::DTYPE_UNSPECIFIED) {
    return Error(grpc::INVALID_ARGUMENT, "AppendSegment: incomplete header");
  }
  const uint64_t kv_bytes =
      uint64_t{m.num_kv_heads()} * h.num_tokens() * m.head_dim() * ElementSize(m.dtype());
  const uint64_t probe_bytes =
      uint64_t{m.num_query_heads()} * h.num_probe_queries() * m.head_dim() * ElementSize(m.dtype());
  turn.layers.resize(m.num_layers());
  int chunks = 0;
  while (reader->Read(&request)) {
    ++chunks;
    if (!request.has_layer()) return Error(grpc::INVALID_ARGUMENT, "AppendSegment: second header");
    v1::LayerChunk& chunk = *request.mutable_layer();
    if (chunk.layer() >= m.num_layers() || !turn.layers[chunk.layer()].keys().empty()) {
      return Error(grpc::INVALID_ARGUMENT,
                   absl::StrCat("AppendSegment: unexpected layer ", chunk.layer()));
    }
    if (chunk.keys().size() != kv_bytes || chunk.values().size() != kv_bytes ||
        chunk.probe_queries().size() != probe_bytes) {
      return Error(grpc::INVALID_ARGUMENT, absl::StrCat("AppendSegment: layer ", chunk.layer(),
                                                        " has the wrong byte length"));
    }
    turn.raw_bytes += 2 * kv_bytes + probe_bytes;
    turn.layers[chunk.layer()] = std::move(chunk);
  }
  {
    absl::MutexLock lock(&mu_);
    last_append_chunks_ = chunks;
  }
  if (chunks != static_cast<int>(m.num_layers())) {
    return Error(grpc::INVALID_ARGUMENT,
                 absl::StrCat("AppendSegment: got ", chunks, " of ", m.num_layers(), " layers"));
  }

  absl::MutexLock lock(&mu_);
  Session& session = sessions_[h.session_id()];
  const int64_t now = absl::ToUnixMillis(absl::Now());
  if (session.turns.empty()) session.create_ms = now;
  response->set_session_id(h.session_id());
  response->set_turn(h.turn());
  if (h.turn() < session.turns.size()) {
    const StoredTurn& stored = session.turns[h.turn()];
    bool same = stored.header.SerializeAsString() == h.SerializeAsString();
    for (size_t l = 0; same && l < stored.layers.size(); ++l) {
      same = stored.layers[l].SerializeAsString() == turn.layers[l].SerializeAsString();
    }
    if (!same) {
      return Error(grpc::ALREADY_EXISTS,
                   absl::StrCat("turn ", h.turn(), " of ", h.session_id(), " differs"));
    }
    response->set_already_stored(true);
  } else if (h.turn() != session.turns.size()) {
    if (session.turns.empty()) sessions_.erase(h.session_id());
    return Error(grpc::FAILED_PRECONDITION, absl::StrCat("expected turn ", session.turns.size()));
  } else if (!session.turns.empty() && !SameSpec(session.turns[0].header.model(), m)) {
    return Error(grpc::FAILED_PRECONDITION, "model spec differs from the session's");
  } else {
    session.turns.push_back(std::move(turn));
    session.update_ms = now;
  }
  const StoredTurn& last = session.turns.back();
  response->set_num_turns(static_cast<uint32_t>(session.turns.size()));
  response->set_next_position(last.header.first_position() + last.header.num_tokens());
  response->set_stored_bytes(session.turns[h.turn()].raw_bytes);
  return grpc::Status::OK;
}

grpc::Status FakeKvMemory::GetCache(grpc::ServerContext* context,
                                    const v1::GetCacheRequest* request,
                                    grpc::ServerWriter<v1::GetCacheResponse>* writer) {
  Record(*context);
  std::vector<v1::GetCacheResponse> messages;
  {
    absl::MutexLock lock(&mu_);
    const auto it = sessions_.find(request->session_id());
    if (it == sessions_.end()) {
      return Error(grpc::NOT_FOUND,
                   absl::StrCat("session \"", request->session_id(), "\" not found"));
    }
    const std::vector<StoredTurn>& turns = it->second.turns;
    const v1::ModelSpec& m = turns[0].header.model();
    if (request->method() != v1::FULL) {
      return Error(grpc::UNIMPLEMENTED, "the fake serves only method FULL");
    }
    if (request->output_dtype() != v1::DTYPE_UNSPECIFIED && request->output_dtype() != m.dtype()) {
      return Error(grpc::UNIMPLEMENTED, "the fake serves only the session dtype");
    }
    const uint32_t last =
        request->has_last_turn() ? request->last_turn() : static_cast<uint32_t>(turns.size() - 1);
    if (request->first_turn() > last || last >= turns.size()) {
      return Error(grpc::INVALID_ARGUMENT, "turn range out of bounds");
    }
    v1::CacheHeader& header = *messages.emplace_back().mutable_header();
    header.set_session_id(request->session_id());
    *header.mutable_model() = m;
    header.set_method(v1::FULL);
    uint64_t n = 0;
    for (uint32_t t = request->first_turn(); t <= last; ++t) {
      const v1::SegmentHeader& h = turns[t].header;
      n += h.num_tokens();
      v1::TurnAllocation& a = *header.add_turns();
      a.set_turn(t);
      a.set_role(h.role());
      a.set_original_tokens(h.num_tokens());
      a.set_kept_entries(h.num_tokens());
      a.set_raw(true);
      a.set_method(v1::FULL);
    }
    const v1::SegmentHeader& end = turns.back().header;
    header.set_original_tokens(n);
    header.set_next_position(end.first_position() + end.num_tokens());
    const uint64_t row = uint64_t{m.head_dim()} * ElementSize(m.dtype());
    header.set_cache_bytes(2 * n * row * m.num_kv_heads() * m.num_layers());
    for (uint32_t l = 0; l < m.num_layers(); ++l) {
      header.add_entries_per_layer(static_cast<uint32_t>(n));
      v1::CacheLayer& layer = *messages.emplace_back().mutable_layer();
      layer.set_layer(l);
      for (uint32_t head = 0; head < m.num_kv_heads(); ++head) {
        for (uint32_t t = request->first_turn(); t <= last; ++t) {
          const StoredTurn& turn = turns[t];
          const uint64_t bytes = turn.header.num_tokens() * row;
          layer.mutable_keys()->append(turn.layers[l].keys().substr(head * bytes, bytes));
          layer.mutable_values()->append(turn.layers[l].values().substr(head * bytes, bytes));
          for (uint32_t i = 0; i < turn.header.num_tokens(); ++i) {
            const int64_t position = static_cast<int64_t>(turn.header.first_position() + i);
            layer.mutable_positions()->append(reinterpret_cast<const char*>(&position), 8);
          }
        }
      }
    }
  }
  if (cache_stream_hook) cache_stream_hook(&messages);
  for (const v1::GetCacheResponse& message : messages) {
    if (!writer->Write(message)) break;
  }
  return grpc::Status::OK;
}

v1::SessionInfo FakeKvMemory::Describe(const std::string& id, const Session& session,
                                       bool with_turns) {
  v1::SessionInfo info;
  info.set_session_id(id);
  *info.mutable_model() = session.turns[0].header.model();
  info.set_num_turns(static_cast<uint32_t>(session.turns.size()));
  for (const StoredTurn& t : session.turns) {
    info.set_total_tokens(info.total_tokens() + t.header.num_tokens());
    info.set_raw_bytes(info.raw_bytes() + t.raw_bytes);
    if (!with_turns) continue;
    v1::TurnInfo& turn = *info.add_turns();
    turn.set_turn(t.header.turn());
    turn.set_role(t.header.role());
    turn.set_num_tokens(t.header.num_tokens());
    turn.set_first_position(t.header.first_position());
    turn.set_num_probe_queries(t.header.num_probe_queries());
    turn.set_raw_bytes(t.raw_bytes);
  }
  const v1::SegmentHeader& last = session.turns.back().header;
  info.set_next_position(last.first_position() + last.num_tokens());
  info.set_create_time_unix_ms(session.create_ms);
  info.set_update_time_unix_ms(session.update_ms);
  return info;
}

grpc::Status FakeKvMemory::GetSession(grpc::ServerContext* context,
                                      const v1::GetSessionRequest* request,
                                      v1::SessionInfo* response) {
  Record(*context);
  absl::MutexLock lock(&mu_);
  const auto it = sessions_.find(request->session_id());
  if (it == sessions_.end()) {
    return Error(grpc::NOT_FOUND,
                 absl::StrCat("session \"", request->session_id(), "\" not found"));
  }
  *response = Describe(it->first, it->second, /*with_turns=*/true);
  return grpc::Status::OK;
}

grpc::Status FakeKvMemory::ListSessions(grpc::ServerContext* context,
                                        const v1::ListSessionsRequest* request,
                                        v1::ListSessionsResponse* response) {
  Record(*context);
  const uint32_t page_size = request->page_size() == 0 ? default_page_size : request->page_size();
  {
    absl::MutexLock lock(&mu_);
    // The page token is the last session id of the previous page.
    auto it = request->page_token().empty() ? sessions_.begin()
                                            : sessions_.upper_bound(request->page_token());
    for (; it != sessions_.end(); ++it) {
      if (!it->first.starts_with(request->prefix())) continue;
      if (response->sessions_size() == static_cast<int>(page_size)) {
        response->set_next_page_token(response->sessions().rbegin()->session_id());
        break;
      }
      *response->add_sessions() = Describe(it->first, it->second, /*with_turns=*/false);
    }
  }
  if (list_hook) list_hook(response);
  return grpc::Status::OK;
}

grpc::Status FakeKvMemory::DeleteSession(grpc::ServerContext* context,
                                         const v1::DeleteSessionRequest* request,
                                         v1::DeleteSessionResponse* response) {
  Record(*context);
  absl::MutexLock lock(&mu_);
  const auto it = sessions_.find(request->session_id());
  if (it == sessions_.end()) {
    return Error(grpc::NOT_FOUND,
                 absl::StrCat("session \"", request->session_id(), "\" not found"));
  }
  response->set_deleted_turns(static_cast<uint32_t>(it->second.turns.size()));
  for (const StoredTurn& t : it->second.turns) {
    response->set_freed_bytes(response->freed_bytes() + t.raw_bytes);
  }
  sessions_.erase(it);
  return grpc::Status::OK;
}

FakeKvMemoryServer::FakeKvMemoryServer() {
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service_);
  builder.SetMaxReceiveMessageSize(64 << 20);
  server_ = builder.BuildAndStart();
  address_ = absl::StrCat("127.0.0.1:", port);
}

FakeKvMemoryServer::~FakeKvMemoryServer() {
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

}  // namespace nexuskv::client::testing
