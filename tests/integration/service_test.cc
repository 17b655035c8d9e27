// KvMemory end to end: the real nexuskv-server process, its real RocksDB, the C++ client and raw
// gRPC stubs for the malformed streams a well-behaved client would never send.
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nexuskv/v1/kv_memory.grpc.pb.h"
#include "tensor/dtype.h"
#include "tests/integration/bf16_turns.h"
#include "tests/integration/server_process.h"

namespace nexuskv::testing {
namespace {

namespace v1 = ::nexuskv::v1;
using ::testing::HasSubstr;

constexpr char kSession[] = "chat.e2e-1";
constexpr uint32_t kTokens[] = {12, 30, 9, 20};  // Four turns, positions follow each other.
constexpr uint32_t kProbes = 4;

v1::ModelSpec Spec() { return Bf16Spec("e2e-model"); }

// The stored bytes of one turn: per layer keys, values, probes.
struct TurnData {
  v1::SegmentHeader header;
  std::vector<v1::LayerChunk> layers;
};

TurnData MakeTurn(const std::string& session, uint32_t turn, uint32_t tokens, uint64_t first,
                  uint32_t seed = 0, const v1::ModelSpec& spec = Spec()) {
  TurnData t;
  t.header.set_session_id(session);
  t.header.set_turn(turn);
  t.header.set_num_tokens(tokens);
  t.header.set_first_position(first);
  t.header.set_role(turn % 2 == 0 ? v1::ROLE_USER : v1::ROLE_ASSISTANT);
  *t.header.mutable_model() = spec;
  t.header.set_num_probe_queries(std::min(kProbes, tokens));
  const size_t kv = size_t{spec.num_kv_heads()} * tokens * spec.head_dim();
  const size_t q = size_t{spec.num_query_heads()} * t.header.num_probe_queries() * spec.head_dim();
  for (uint32_t l = 0; l < spec.num_layers(); ++l) {
    v1::LayerChunk& c = t.layers.emplace_back();
    c.set_layer(l);
    c.set_keys(RandomBf16(kv, seed + turn * 100 + l * 3));
    c.set_values(RandomBf16(kv, seed + turn * 100 + l * 3 + 1));
    c.set_probe_queries(RandomBf16(q, seed + turn * 100 + l * 3 + 2));
  }
  return t;
}

std::vector<TurnData> Conversation(const std::string& session) {
  std::vector<TurnData> turns;
  uint64_t position = 0;
  for (uint32_t t = 0; t < std::size(kTokens); ++t) {
    turns.push_back(MakeTurn(session, t, kTokens[t], position));
    position += kTokens[t];
  }
  return turns;
}

// Sends messages as one AppendSegment stream with the raw stub; returns the call's status.
grpc::Status RawAppend(v1::KvMemory::Stub& stub,
                       const std::vector<v1::AppendSegmentRequest>& messages,
                       v1::AppendSegmentResponse* response = nullptr) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::AppendSegmentResponse ignored;
  auto writer = stub.AppendSegment(&context, response ? response : &ignored);
  for (const auto& m : messages) {
    if (!writer->Write(m)) break;  // The server refused mid-stream; Finish says why.
  }
  writer->WritesDone();
  return writer->Finish();
}

std::vector<v1::AppendSegmentRequest> Messages(const TurnData& t) {
  std::vector<v1::AppendSegmentRequest> out(1);
  *out[0].mutable_header() = t.header;
  for (const auto& l : t.layers) *out.emplace_back().mutable_layer() = l;
  return out;
}

class ServiceTest : public ::testing::Test {
 protected:
  void StartServer(std::vector<std::string> flags = {"--sync_writes=false", "--log_level=debug"}) {
    auto server = ServerProcess::Start({.extra_flags = std::move(flags)});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    auto client = server_->Connect();
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::move(*client);
    stub_ = v1::KvMemory::NewStub(
        grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  }

  void SetUp() override { StartServer(); }

  void TearDown() override {
    if (HasFailure() && server_) std::cerr << "server log:\n" << server_->LogTail() << "\n";
  }

  void AppendAll(const std::vector<TurnData>& turns) {
    for (const TurnData& t : turns) {
      v1::AppendSegmentResponse ack;
      grpc::Status status = RawAppend(*stub_, Messages(t), &ack);
      ASSERT_TRUE(status.ok()) << status.error_message();
      EXPECT_EQ(ack.turn(), t.header.turn());
      EXPECT_FALSE(ack.already_stored());
    }
  }

  // The FULL answer's keys of `layer`: per head, every turn's rows in turn order.
  static std::string ExpectedFull(const std::vector<TurnData>& turns, uint32_t layer, bool values) {
    const size_t row = Spec().head_dim() * 2;
    std::string out;
    for (uint32_t h = 0; h < Spec().num_kv_heads(); ++h) {
      for (const TurnData& t : turns) {
        const std::string& bytes = values ? t.layers[layer].values() : t.layers[layer].keys();
        const size_t n = t.header.num_tokens();
        out += bytes.substr(h * n * row, n * row);
      }
    }
    return out;
  }

  void ExpectFullIsExact(const std::vector<TurnData>& turns) {
    v1::GetCacheRequest request;
    request.set_session_id(kSession);
    request.set_method(v1::FULL);
    auto cache = client_->GetCache(request);
    ASSERT_TRUE(cache.ok()) << cache.status();
    EXPECT_EQ(cache->header.next_position(), 71u);
    EXPECT_EQ(cache->header.original_tokens(), 71u);
    ASSERT_EQ(cache->layers.size(), 3u);
    for (uint32_t l = 0; l < 3; ++l) {
      EXPECT_EQ(cache->header.entries_per_layer(l), 71u);
      EXPECT_EQ(cache->layers[l].keys(), ExpectedFull(turns, l, false)) << "layer " << l;
      EXPECT_EQ(cache->layers[l].values(), ExpectedFull(turns, l, true)) << "layer " << l;
    }
  }

  uint32_t NumTurns(const std::string& session) {
    auto info = client_->GetSession(session);
    return info.ok() ? info->num_turns() : 0;
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<client::Client> client_;
  std::unique_ptr<v1::KvMemory::Stub> stub_;
};

TEST_F(ServiceTest, FullReturnsExactBytesAndSurvivesRestart) {
  const std::vector<TurnData> turns = Conversation(kSession);
  AppendAll(turns);
  ExpectFullIsExact(turns);

  ASSERT_TRUE(server_->Restart().ok());
  ExpectFullIsExact(turns);
  auto info = client_->GetSession(kSession);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->num_turns(), 4u);
  EXPECT_EQ(info->total_tokens(), 71u);
  EXPECT_GT(info->compressed_bytes(), 0u);  // Background fits ran and were stored.

  // A crash (no clean shutdown) loses nothing acknowledged either.
  ASSERT_TRUE(server_->Kill().ok());
  ASSERT_TRUE(server_->Restart().ok());
  ExpectFullIsExact(turns);
}

TEST_F(ServiceTest, BaselinesFitTheBudget) {
  AppendAll(Conversation(kSession));
  for (v1::Method method : {v1::H2O, v1::STREAMING_LLM, v1::SNAPKV}) {
    for (double ratio : {0.5, 0.2}) {
      v1::GetCacheRequest request;
      request.set_session_id(kSession);
      request.set_method(method);
      request.mutable_budget()->set_keep_ratio(ratio);
      request.set_keep_recent_turns(1);
      auto cache = client_->GetCache(request);
      ASSERT_TRUE(cache.ok()) << v1::Method_Name(method) << " " << ratio << ": " << cache.status();
      // Turns 0..2 (51 tokens) compressed, turn 3 (20 tokens) raw.
      const uint32_t expected = static_cast<uint32_t>(51 * ratio + 1e-9) + 20;
      uint32_t kept = 0;
      for (const auto& a : cache->header.turns()) kept += a.kept_entries();
      EXPECT_EQ(kept, expected);
      EXPECT_TRUE(cache->header.turns(3).raw());
      EXPECT_FALSE(cache->header.has_bias());
      for (uint32_t l = 0; l < 3; ++l) {
        EXPECT_EQ(cache->header.entries_per_layer(l), expected);
        EXPECT_EQ(cache->layers[l].keys().size(), 2u * expected * 16 * 2);
        EXPECT_EQ(cache->layers[l].values().size(), 2u * expected * 16 * 2);
        EXPECT_EQ(cache->layers[l].positions().size(), 2u * expected * 8);
      }
      // The raw turn's positions are its own, in order, at the end of every head.
      std::vector<int64_t> positions(2 * expected);
      std::memcpy(positions.data(), cache->layers[0].positions().data(), positions.size() * 8);
      EXPECT_EQ(positions[expected - 1], 70);
      EXPECT_EQ(positions[expected - 20], 51);
    }
  }
  // max_tokens counts the raw turn; max_bytes converts per entry (3 layers * 2 heads * 2*16*2 B).
  v1::GetCacheRequest request;
  request.set_session_id(kSession);
  request.set_method(v1::H2O);
  request.set_keep_recent_turns(1);
  request.mutable_budget()->set_max_tokens(30);
  auto cache = client_->GetCache(request);
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_EQ(cache->header.entries_per_layer(0), 30u);
  request.mutable_budget()->set_max_bytes(384 * 25 + 100);
  cache = client_->GetCache(request);
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_EQ(cache->header.entries_per_layer(0), 25u);
  EXPECT_LE(cache->header.cache_bytes(), 384u * 25 + 100);
}

TEST_F(ServiceTest, RetryIsANoOpAndDeleteRemovesEverything) {
  const std::vector<TurnData> turns = Conversation(kSession);
  AppendAll(turns);
  v1::AppendSegmentResponse ack;
  ASSERT_TRUE(RawAppend(*stub_, Messages(turns[1]), &ack).ok());
  EXPECT_TRUE(ack.already_stored());
  EXPECT_EQ(ack.num_turns(), 4u);

  auto deleted = client_->DeleteSession(kSession);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->deleted_turns(), 4u);
  EXPECT_EQ(client_->GetSession(kSession).status().code(), absl::StatusCode::kNotFound);
  auto all = client_->ListAllSessions();
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(all->empty());
  ASSERT_TRUE(server_->Restart().ok());
  EXPECT_EQ(client_->GetSession(kSession).status().code(), absl::StatusCode::kNotFound);
}

// Every bad input gets its contract code and an actionable message, the server keeps serving, and
// nothing of the refused request is stored.
TEST_F(ServiceTest, RefusesBadInputAndChangesNothing) {
  const std::vector<TurnData> turns = Conversation(kSession);
  AppendAll({turns[0], turns[1]});

  struct Case {
    std::string name;
    std::vector<v1::AppendSegmentRequest> messages;
    grpc::StatusCode code;
    std::string text;
  };
  std::vector<Case> cases;
  auto next = [&] { return Messages(turns[2]); };
  {
    auto m = next();
    m[1].mutable_layer()->mutable_keys()->resize(10);
    cases.push_back({"wrong byte length", m, grpc::INVALID_ARGUMENT, "layer 0 keys has 10 bytes"});
  }
  {
    auto m = next();
    m[0].mutable_header()->mutable_model()->set_dtype(static_cast<v1::DType>(9));
    cases.push_back({"unknown dtype", m, grpc::INVALID_ARGUMENT, "model.dtype is 9"});
  }
  {
    auto m = next();
    m[0].mutable_header()->mutable_model()->set_head_dim(0);
    cases.push_back({"zero dim", m, grpc::INVALID_ARGUMENT, "model.head_dim is 0"});
  }
  {
    auto m = next();
    m[0].mutable_header()->mutable_model()->set_num_kv_heads(100000);
    cases.push_back({"huge dim", m, grpc::INVALID_ARGUMENT, "model.num_kv_heads is 100000"});
  }
  {
    v1::ModelSpec other = Spec();
    other.set_num_kv_heads(3);
    other.set_num_query_heads(6);
    cases.push_back({"spec mismatch", Messages(MakeTurn(kSession, 2, 9, 42, 0, other)),
                     grpc::FAILED_PRECONDITION, "num_kv_heads"});
  }
  {
    auto m = next();
    m.erase(m.begin());
    cases.push_back({"missing header", m, grpc::INVALID_ARGUMENT, "before the SegmentHeader"});
  }
  {
    auto m = next();
    m[2].mutable_layer()->set_layer(7);
    cases.push_back({"layer out of range", m, grpc::INVALID_ARGUMENT, "layer 7 is out of range"});
  }
  {
    auto m = next();
    m[2] = m[1];
    cases.push_back({"layer twice", m, grpc::INVALID_ARGUMENT, "layer 0 was sent twice"});
  }
  {
    auto m = next();
    m.pop_back();
    cases.push_back({"missing layers", m, grpc::INVALID_ARGUMENT, "missing layer(s) 2"});
  }
  {
    auto m = next();
    const std::string nan = EncodeFromFloat(std::vector<float>{NAN}, DType::kBFloat16);
    m[3].mutable_layer()->mutable_values()->replace(20, 2, nan);
    cases.push_back({"non-finite", m, grpc::INVALID_ARGUMENT, "NaN or infinite"});
  }
  cases.push_back({"turn out of order", Messages(MakeTurn(kSession, 3, 20, 51)),
                   grpc::FAILED_PRECONDITION, "expects turn 2"});
  cases.push_back({"conflicting re-send", Messages(MakeTurn(kSession, 1, 30, 12, /*seed=*/5)),
                   grpc::ALREADY_EXISTS, "different content"});
  for (const char* id : {"", "bad id!", "x/y"}) {
    auto m = next();
    m[0].mutable_header()->set_session_id(id);
    cases.push_back(
        {std::string("session id '") + id + "'", m, grpc::INVALID_ARGUMENT, "session_id"});
  }
  {
    auto m = next();
    m[0].mutable_header()->set_session_id(std::string(200, 'a'));
    cases.push_back({"over-long session id", m, grpc::INVALID_ARGUMENT, "session_id"});
  }

  for (const Case& c : cases) {
    grpc::Status status = RawAppend(*stub_, c.messages);
    EXPECT_EQ(status.error_code(), c.code) << c.name << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(c.text)) << c.name;
    EXPECT_EQ(NumTurns(kSession), 2u) << c.name << " changed the stored session";
  }
  // The well-formed turn still goes in after all that.
  AppendAll({turns[2]});
  EXPECT_EQ(NumTurns(kSession), 3u);

  // GetCache: missing session, budgets out of range.
  v1::GetCacheRequest request;
  request.set_session_id("no-such-session");
  request.set_method(v1::FULL);
  EXPECT_EQ(client_->GetCache(request).status().code(), absl::StatusCode::kNotFound);
  request.set_session_id(kSession);
  request.set_method(v1::H2O);
  for (double ratio : {0.0, -1.0, 1.01}) {
    request.mutable_budget()->set_keep_ratio(ratio);
    auto status = client_->GetCache(request).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << ratio;
    EXPECT_THAT(status.message(), HasSubstr("keep_ratio")) << ratio;
  }
}

TEST(ServiceLimitsTest, RefusesMessagesOverTheSizeLimit) {
  auto server =
      ServerProcess::Start({.extra_flags = {"--sync_writes=false", "--max_message_bytes=65536"}});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::KvMemory::NewStub(
      grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
  // One layer chunk of 2 heads * 1024 tokens * 16 dims * 2 bytes * 2 tensors = 128 KiB.
  const TurnData big = MakeTurn("big", 0, 1024, 0);
  grpc::Status status = RawAppend(*stub, Messages(big));
  EXPECT_EQ(status.error_code(), grpc::RESOURCE_EXHAUSTED) << status.error_message();
  // Nothing stored, and the server still answers.
  auto client = (*server)->Connect();
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->GetSession("big").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(RawAppend(*stub, Messages(MakeTurn("small", 0, 8, 0))).ok());
}

}  // namespace
}  // namespace nexuskv::testing

namespace nexuskv::testing {
namespace {

TEST(ServiceLimitsTest, QuotasAreResourceExhaustedNamingTheFlag) {
  auto server = ServerProcess::Start(
      {.extra_flags = {"--sync_writes=false", "--max_turns_per_session=2",
                       "--max_sessions_per_tenant=2"}});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::KvMemory::NewStub(
      grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
  ASSERT_TRUE(RawAppend(*stub, Messages(MakeTurn("q1", 0, 4, 0))).ok());
  ASSERT_TRUE(RawAppend(*stub, Messages(MakeTurn("q1", 1, 4, 4))).ok());
  grpc::Status status = RawAppend(*stub, Messages(MakeTurn("q1", 2, 4, 8)));
  EXPECT_EQ(status.error_code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--max_turns_per_session=2"));
  ASSERT_TRUE(RawAppend(*stub, Messages(MakeTurn("q2", 0, 4, 0))).ok());
  status = RawAppend(*stub, Messages(MakeTurn("q3", 0, 4, 0)));
  EXPECT_EQ(status.error_code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--max_sessions_per_tenant=2"));
}

TEST(ServiceLimitsTest, ConcurrentCallsBeyondTheLimitAreResourceExhausted) {
  auto server = ServerProcess::Start(
      {.extra_flags = {"--sync_writes=false", "--max_concurrent_streams=1"}});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::KvMemory::NewStub(
      grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
  grpc::Status status;

  // One stream held open uses the only call slot: anything else is refused until it ends.
  grpc::ClientContext held;
  v1::AppendSegmentResponse ignored;
  auto writer = stub->AppendSegment(&held, &ignored);
  ASSERT_TRUE(writer->Write(Messages(MakeTurn("q2", 1, 4, 4))[0]));
  absl::SleepFor(absl::Milliseconds(200));  // Let the server admit the held stream.
  grpc::ClientContext list_context;
  v1::ListSessionsResponse page;
  status = stub->ListSessions(&list_context, v1::ListSessionsRequest(), &page);
  EXPECT_EQ(status.error_code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--max_concurrent_streams"));
  writer->WritesDone();
  EXPECT_EQ(writer->Finish().error_code(), grpc::INVALID_ARGUMENT);  // Its layers never came.
  // The slot frees once the server has finished the call, a moment after the client saw it end.
  for (int attempt = 0; attempt < 50; ++attempt) {
    grpc::ClientContext again;
    status = stub->ListSessions(&again, v1::ListSessionsRequest(), &page);
    if (status.ok()) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(status.ok()) << status.error_message();
}

}  // namespace
}  // namespace nexuskv::testing

namespace nexuskv::testing {
namespace {

TEST(ServiceRetentionTest, SessionsPastTheirTtlAreDeleted) {
  auto server = ServerProcess::Start(
      {.extra_flags = {"--sync_writes=false", "--retention_sweep_s=1"}});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::KvMemory::NewStub(
      grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
  auto client = (*server)->Connect();
  ASSERT_TRUE(client.ok());
  auto short_lived = Messages(MakeTurn("short-lived", 0, 4, 0));
  short_lived[0].mutable_header()->set_ttl_seconds(1);
  ASSERT_TRUE(RawAppend(*stub, short_lived).ok());
  ASSERT_TRUE(RawAppend(*stub, Messages(MakeTurn("kept", 0, 4, 0))).ok());
  auto info = (*client)->GetSession("short-lived");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_GT(info->expire_time_unix_ms(), 0);

  absl::Status status;
  for (int attempt = 0; attempt < 60; ++attempt) {  // Expires after 1 s; swept every 1 s.
    status = (*client)->GetSession("short-lived").status();
    if (absl::IsNotFound(status)) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE((*client)->GetSession("kept").ok());
}

}  // namespace
}  // namespace nexuskv::testing
