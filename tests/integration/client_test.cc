// The C++ client (clients/cpp/client.h) against the real nexuskv-server and RocksDB: what comes
// back, retries and conflicts, errors, paging and deletes. Each test starts its own server.
// Defences against a broken server are unit-tested in clients/cpp/client_test.cc.
#include "clients/cpp/client.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "tests/integration/client_test_util.h"
#include "tests/integration/server_process.h"

namespace nexuskv::testing {
namespace {

namespace v1 = ::nexuskv::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start({.extra_flags = {"--sync_writes=false"}});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    client_ = ConnectTo(client::ClientOptions{});
    ASSERT_NE(client_, nullptr);
    stub_ = v1::KvMemory::NewStub(
        grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    if (HasFailure() && server_) std::cerr << "server log:\n" << server_->LogTail() << "\n";
  }

  // A client made by Client::Connect itself (not the harness's), to this server.
  std::unique_ptr<client::Client> ConnectTo(client::ClientOptions options) {
    options.target = server_->address();
    options.timeout = absl::Seconds(30);
    absl::StatusOr<std::unique_ptr<client::Client>> client = client::Client::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  void Append(const std::string& session, uint32_t turn, uint32_t tokens, uint64_t first) {
    OwnedTurn t = MakeTurn(session, turn, tokens, /*probes=*/1, first);
    absl::StatusOr<v1::AppendSegmentResponse> ack = client_->AppendTurn(t.turn);
    ASSERT_TRUE(ack.ok()) << ack.status();
  }

  // The server's own status for GetSession, straight from gRPC, to compare the client's with.
  grpc::Status RawGetSession(const std::string& session) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::GetSessionRequest request;
    request.set_session_id(session);
    v1::SessionInfo info;
    return stub_->GetSession(&context, request, &info);
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<client::Client> client_;
  std::unique_ptr<v1::KvMemory::Stub> stub_;
};

TEST_F(ClientTest, AppendedTurnsComeBackInFullCache) {
  OwnedTurn t0 = MakeTurn("s1", 0, /*tokens=*/3, /*probes=*/2, /*first_position=*/0);
  absl::StatusOr<v1::AppendSegmentResponse> ack = client_->AppendTurn(t0.turn);
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->session_id(), "s1");
  EXPECT_EQ(ack->num_turns(), 1u);
  EXPECT_EQ(ack->next_position(), 3u);
  EXPECT_EQ(ack->stored_bytes(), 2 * (2 * 48 + 64));  // Two layers of keys, values and probes.
  EXPECT_FALSE(ack->already_stored());
  OwnedTurn t1 = MakeTurn("s1", 1, /*tokens=*/2, /*probes=*/1, /*first_position=*/3);
  ASSERT_TRUE(client_->AppendTurn(t1.turn).ok());

  absl::StatusOr<client::Cache> cache = GetFull(*client_, "s1");
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_EQ(cache->header.method(), v1::FULL);
  EXPECT_EQ(cache->header.next_position(), 5u);
  EXPECT_THAT(cache->header.entries_per_layer(), ElementsAre(5, 5));
  ASSERT_EQ(cache->layers.size(), 2u);
  // Each head holds turn 0's 3 rows then turn 1's 2 rows (8 bytes per fp16 row of D=4).
  for (uint32_t l = 0; l < 2; ++l) {
    std::string expected;
    for (uint32_t head = 0; head < 2; ++head) {
      expected += t0.storage[3 * l].substr(head * 24, 24);
      expected += t1.storage[3 * l].substr(head * 16, 16);
    }
    EXPECT_EQ(cache->layers[l].keys(), expected) << "layer " << l;
  }
  std::vector<int64_t> positions(10);
  ASSERT_EQ(cache->layers[1].positions().size(), 80u);
  std::memcpy(positions.data(), cache->layers[1].positions().data(), 80);
  EXPECT_THAT(positions, ElementsAre(0, 1, 2, 3, 4, 0, 1, 2, 3, 4));
}

TEST_F(ClientTest, FloatTurnIsEncodedToTheSpecDtype) {
  std::vector<float> kv(2 * 3 * 4);
  for (size_t i = 0; i < kv.size(); ++i) kv[i] = 0.25f * static_cast<float>(i) - 2.0f;
  client::FloatTurnTensors turn;
  turn.session_id = "f";
  turn.role = v1::ROLE_SYSTEM;
  turn.model = Spec(1);
  turn.layers = {{kv, kv, {}}};
  absl::StatusOr<v1::AppendSegmentResponse> ack = client_->AppendTurn(turn);
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->stored_bytes(), 2 * kv.size() * 2) << "stored as float16";
  absl::StatusOr<client::Cache> cache = GetFull(*client_, "f");
  ASSERT_TRUE(cache.ok()) << cache.status();
  std::vector<float> decoded(kv.size());
  ASSERT_TRUE(DecodeToFloat(cache->layers[0].values(), DType::kFloat16, decoded).ok());
  EXPECT_EQ(decoded, kv);  // Quarter steps are exact in float16.
}

TEST_F(ClientTest, RetryIsAlreadyStoredAndConflictKeepsServerCode) {
  OwnedTurn t = MakeTurn("s", 0, 3, 1, 0);
  ASSERT_TRUE(client_->AppendTurn(t.turn).ok());
  absl::StatusOr<v1::AppendSegmentResponse> again = client_->AppendTurn(t.turn);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->already_stored());
  EXPECT_EQ(again->num_turns(), 1u);

  t.storage[0][0] ^= 1;  // Same turn number, different bytes.
  const absl::Status conflict = client_->AppendTurn(t.turn).status();
  EXPECT_EQ(conflict.code(), absl::StatusCode::kAlreadyExists) << conflict;
  EXPECT_THAT(conflict.message(), HasSubstr("turn 0"));

  OwnedTurn skip = MakeTurn("s", 2, 3, 1, 3);  // Turn 1 was never sent.
  EXPECT_EQ(client_->AppendTurn(skip.turn).status().code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<v1::SessionInfo> info = client_->GetSession("s");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->num_turns(), 1u) << "a refused turn stored something";
}

TEST_F(ClientTest, ProbeOffsetsTravelWithTheTurn) {
  OwnedTurn t = MakeTurn("s", 0, 6, 2, 0);
  t.turn.probe_offsets = {0, 6};  // 6 is not a token of a 6-token turn.
  const absl::Status refused = client_->AppendTurn(t.turn).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_THAT(refused.message(), HasSubstr("probe_offsets"));
  t.turn.probe_offsets = {0, 3};
  ASSERT_TRUE(client_->AppendTurn(t.turn).ok());
  t.turn.probe_offsets = {1, 3};  // The same bytes with other offsets are another turn.
  EXPECT_EQ(client_->AppendTurn(t.turn).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(ClientTest, TokenScoresTravelWithTheTurn) {
  OwnedTurn t = MakeTurn("scored", 0, 6, 2, 0);
  std::vector<std::vector<float>> scores(2, std::vector<float>(2 * 6, 0.5f));
  t.turn.layers[0].token_scores = scores[0];  // layer 1 has none
  const absl::Status partial = client_->AppendTurn(t.turn).status();
  EXPECT_EQ(partial.code(), absl::StatusCode::kInvalidArgument) << partial;
  EXPECT_THAT(partial.message(), HasSubstr("token_scores"));
  t.turn.layers[1].token_scores = scores[1];
  ASSERT_TRUE(client_->AppendTurn(t.turn).ok());
  scores[1][3] = 0.9f;  // other scores: another turn
  EXPECT_EQ(client_->AppendTurn(t.turn).status().code(), absl::StatusCode::kAlreadyExists);
  v1::GetCacheRequest request;
  request.set_session_id("scored");
  request.set_method(v1::SONIC);
  request.mutable_budget()->set_keep_ratio(0.5);
  absl::StatusOr<client::Cache> cache = client_->GetCache(request);
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_EQ(cache->layers.size(), 2u);
}

TEST_F(ClientTest, ErrorsKeepCodeAndMessage) {
  const grpc::Status raw = RawGetSession("missing");
  ASSERT_EQ(raw.error_code(), grpc::NOT_FOUND);
  ASSERT_FALSE(raw.error_message().empty());
  const absl::Status s = client_->GetSession("missing").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), raw.error_message());
  EXPECT_THAT(s.message(), HasSubstr("missing"));

  v1::GetCacheRequest bad;  // No session id: refused by the server's validation.
  bad.set_method(v1::FULL);
  const absl::Status invalid = client_->GetCache(bad).status();
  EXPECT_EQ(invalid.code(), absl::StatusCode::kInvalidArgument) << invalid;
  EXPECT_FALSE(invalid.message().empty());
}

TEST_F(ClientTest, LayerOverMessageLimitIsResourceExhausted) {
  client::ClientOptions options;
  options.max_message_bytes = 100;
  std::unique_ptr<client::Client> small = ConnectTo(options);
  ASSERT_NE(small, nullptr);
  OwnedTurn t = MakeTurn("big", 0, 8, 0, 0);  // 128 bytes of keys per layer.
  const absl::Status s = small->AppendTurn(t.turn).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("max_message_bytes=100"));
  // The cancelled stream left nothing behind on the server.
  EXPECT_EQ(client_->GetSession("big").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ClientTest, SessionsAreListedAcrossPagesAndDeleted) {
  for (const char* id : {"a1", "a2", "b1", "a3", "a4"}) Append(id, 0, 2, 0);
  absl::StatusOr<std::vector<v1::SessionInfo>> all = client_->ListAllSessions("", /*page_size=*/2);
  ASSERT_TRUE(all.ok()) << all.status();
  std::vector<std::string> ids;
  for (const v1::SessionInfo& s : *all) ids.push_back(s.session_id());
  EXPECT_THAT(ids, ElementsAre("a1", "a2", "a3", "a4", "b1"));
  EXPECT_EQ((*all)[0].num_turns(), 1u);
  EXPECT_EQ((*all)[0].total_tokens(), 2u);
  absl::StatusOr<std::vector<v1::SessionInfo>> a = client_->ListAllSessions("a", 3);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->size(), 4u);
  absl::StatusOr<std::vector<v1::SessionInfo>> one_call = client_->ListAllSessions();
  ASSERT_TRUE(one_call.ok()) << one_call.status();
  EXPECT_EQ(one_call->size(), 5u);

  absl::StatusOr<v1::DeleteSessionResponse> deleted = client_->DeleteSession("a2");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->deleted_turns(), 1u);
  EXPECT_EQ(client_->GetSession("a2").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->DeleteSession("a2").status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<std::vector<v1::SessionInfo>> rest = client_->ListAllSessions("a", 2);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(rest->size(), 3u);
}

}  // namespace
}  // namespace nexuskv::testing
