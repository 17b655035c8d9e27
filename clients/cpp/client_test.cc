#include "clients/cpp/client.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "clients/cpp/testing/fake_kv_memory.h"

namespace nexuskv::client {
namespace {

using ::nexuskv::client::testing::FakeKvMemoryServer;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

v1::ModelSpec Spec(uint32_t layers = 2) {
  v1::ModelSpec spec;
  spec.set_model_id("test-model");
  spec.set_num_layers(layers);
  spec.set_num_kv_heads(2);
  spec.set_num_query_heads(4);
  spec.set_head_dim(4);
  spec.set_dtype(v1::DTYPE_FLOAT16);
  return spec;
}

// A turn whose byte buffers live in `storage`: every byte of layer l, tensor k is a distinct
// pattern so that misplaced rows show up.
struct OwnedTurn {
  std::vector<std::string> storage;
  TurnTensors turn;
};

OwnedTurn MakeTurn(const std::string& session, uint32_t turn, uint32_t tokens, uint32_t probes,
                   uint64_t first_position, uint32_t layers = 2) {
  OwnedTurn t;
  t.turn.session_id = session;
  t.turn.turn = turn;
  t.turn.first_position = first_position;
  t.turn.role = v1::ROLE_USER;
  t.turn.model = Spec(layers);
  const size_t kv = 2 * tokens * 4 * 2;
  const size_t pq = 4 * probes * 4 * 2;
  t.storage.reserve(3 * layers);
  for (uint32_t l = 0; l < layers; ++l) {
    for (size_t size : {kv, kv, pq}) {
      std::string bytes(size, '\0');
      for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>(turn * 31 + l * 7 + i);
      t.storage.push_back(std::move(bytes));
    }
    const size_t base = t.storage.size() - 3;
    t.turn.layers.push_back({t.storage[base], t.storage[base + 1], t.storage[base + 2]});
  }
  return t;
}

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ClientOptions options;
    options.target = server_.address();
    options.timeout = absl::Seconds(7);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  void Append(const std::string& session, uint32_t turn, uint32_t tokens, uint64_t first) {
    OwnedTurn t = MakeTurn(session, turn, tokens, /*probes=*/1, first);
    absl::StatusOr<v1::AppendSegmentResponse> ack = client_->AppendTurn(t.turn);
    ASSERT_TRUE(ack.ok()) << ack.status();
  }

  absl::StatusOr<Cache> GetFull(const std::string& session) {
    v1::GetCacheRequest request;
    request.set_session_id(session);
    request.set_method(v1::FULL);
    return client_->GetCache(request);
  }

  FakeKvMemoryServer server_;
  std::unique_ptr<Client> client_;
};

TEST(ClientConnectTest, RejectsBadOptions) {
  ClientOptions options;
  options.target = "";
  EXPECT_EQ(Client::Connect(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.target = "localhost:1";
  options.timeout = absl::ZeroDuration();
  EXPECT_EQ(Client::Connect(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.timeout = absl::Seconds(1);
  options.max_message_bytes = 0;
  EXPECT_EQ(Client::Connect(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ClientConnectTest, UnreachableServerIsUnavailable) {
  ClientOptions options;
  options.target = "127.0.0.1:1";  // Nobody listens on port 1.
  options.timeout = absl::Seconds(5);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->ListAllSessions().status().code(), absl::StatusCode::kUnavailable);
}

TEST(FromGrpcStatusTest, KeepsEveryCodeAndTheMessage) {
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
  for (int code = 1; code <= 16; ++code) {
    const absl::Status s =
        FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(code), "why it failed"));
    EXPECT_EQ(static_cast<int>(s.code()), code);
    EXPECT_EQ(s.message(), "why it failed");
  }
}

TEST_F(ClientTest, AppendedTurnsComeBackInFullCache) {
  OwnedTurn t0 = MakeTurn("s1", 0, /*tokens=*/3, /*probes=*/2, /*first_position=*/0);
  absl::StatusOr<v1::AppendSegmentResponse> ack = client_->AppendTurn(t0.turn);
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->num_turns(), 1u);
  EXPECT_EQ(ack->next_position(), 3u);
  EXPECT_EQ(ack->stored_bytes(), 2 * (2 * 48 + 64));
  EXPECT_FALSE(ack->already_stored());
  EXPECT_EQ(server_.service().last_append_chunks(), 2);
  OwnedTurn t1 = MakeTurn("s1", 1, /*tokens=*/2, /*probes=*/0, /*first_position=*/3);
  ASSERT_TRUE(client_->AppendTurn(t1.turn).ok());

  absl::StatusOr<Cache> cache = GetFull("s1");
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_THAT(cache->header.entries_per_layer(), ElementsAre(5, 5));
  ASSERT_EQ(cache->layers.size(), 2u);
  // Head 0 of layer 1: turn 0's 3 rows then turn 1's 2 rows (8 bytes per fp16 row of D=4).
  const std::string& keys = cache->layers[1].keys();
  EXPECT_EQ(keys.substr(0, 24), t0.storage[3].substr(0, 24));
  EXPECT_EQ(keys.substr(24, 16), t1.storage[3].substr(0, 16));
}

TEST_F(ClientTest, FloatTurnIsEncodedToTheSpecDtype) {
  std::vector<float> kv(2 * 3 * 4);
  for (size_t i = 0; i < kv.size(); ++i) kv[i] = 0.25f * static_cast<float>(i) - 2.0f;
  FloatTurnTensors turn;
  turn.session_id = "f";
  turn.role = v1::ROLE_SYSTEM;
  turn.model = Spec(1);
  turn.layers = {{kv, kv, {}}};
  absl::StatusOr<v1::AppendSegmentResponse> ack = client_->AppendTurn(turn);
  ASSERT_TRUE(ack.ok()) << ack.status();
  absl::StatusOr<Cache> cache = GetFull("f");
  ASSERT_TRUE(cache.ok()) << cache.status();
  std::vector<float> decoded(kv.size());
  ASSERT_TRUE(DecodeToFloat(cache->layers[0].values(), DType::kFloat16, decoded).ok());
  EXPECT_EQ(decoded, kv);  // Quarter steps are exact in float16.
}

TEST_F(ClientTest, BadShapesAreRefusedBeforeSending) {
  OwnedTurn t = MakeTurn("s", 0, 3, 1, 0);
  TurnTensors wrong_layers = t.turn;
  wrong_layers.layers.pop_back();
  TurnTensors odd_bytes = t.turn;
  odd_bytes.layers[0].keys.remove_suffix(1);
  TurnTensors values_differ = t.turn;
  values_differ.layers[1].values.remove_suffix(8);
  TurnTensors layers_disagree = t.turn;
  layers_disagree.layers[1].keys.remove_suffix(16);  // One fp16 row per head less.
  layers_disagree.layers[1].values.remove_suffix(16);
  TurnTensors bad_probes = t.turn;
  bad_probes.layers[0].probe_queries.remove_suffix(2);
  TurnTensors no_dtype = t.turn;
  no_dtype.model.set_dtype(v1::DTYPE_UNSPECIFIED);
  for (const TurnTensors* turn :
       {&wrong_layers, &odd_bytes, &values_differ, &layers_disagree, &bad_probes, &no_dtype}) {
    EXPECT_EQ(client_->AppendTurn(*turn).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_FALSE(server_.service().last_deadline().has_value())
      << "a refused turn reached the server";
}

TEST_F(ClientTest, RetryIsAlreadyStoredAndConflictKeepsServerCode) {
  OwnedTurn t = MakeTurn("s", 0, 3, 1, 0);
  ASSERT_TRUE(client_->AppendTurn(t.turn).ok());
  absl::StatusOr<v1::AppendSegmentResponse> again = client_->AppendTurn(t.turn);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->already_stored());
  t.storage[0][0] ^= 1;
  const absl::Status conflict = client_->AppendTurn(t.turn).status();
  EXPECT_EQ(conflict.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(conflict.message(), "turn 0 of s differs");
}

TEST_F(ClientTest, LayerOverMessageLimitIsResourceExhausted) {
  ClientOptions options;
  options.target = server_.address();
  options.max_message_bytes = 100;
  std::unique_ptr<Client> small = *Client::Connect(options);
  OwnedTurn t = MakeTurn("big", 0, 8, 0, 0);  // 128 bytes of keys per layer.
  const absl::Status s = small->AppendTurn(t.turn).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("max_message_bytes=100"));
  EXPECT_EQ(client_->GetSession("big").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ClientTest, ErrorsKeepCodeAndMessage) {
  const absl::Status s = client_->GetSession("missing").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "session \"missing\" not found");
}

TEST_F(ClientTest, EveryCallCarriesTheDeadline) {
  const auto before = std::chrono::system_clock::now();
  ASSERT_TRUE(client_->ListSessions({}).ok());
  const std::optional<std::chrono::system_clock::time_point> deadline =
      server_.service().last_deadline();
  ASSERT_TRUE(deadline.has_value());
  EXPECT_GT(*deadline, before + std::chrono::seconds(6));
  EXPECT_LT(*deadline, before + std::chrono::seconds(8));
}

TEST_F(ClientTest, SessionsAreListedAcrossPagesAndDeleted) {
  server_.service().default_page_size = 2;
  for (const char* id : {"a1", "a2", "b1", "a3", "a4"}) Append(id, 0, 2, 0);
  absl::StatusOr<std::vector<v1::SessionInfo>> all = client_->ListAllSessions();
  ASSERT_TRUE(all.ok()) << all.status();
  std::vector<std::string> ids;
  for (const v1::SessionInfo& s : *all) ids.push_back(s.session_id());
  EXPECT_THAT(ids, ElementsAre("a1", "a2", "a3", "a4", "b1"));
  absl::StatusOr<std::vector<v1::SessionInfo>> a = client_->ListAllSessions("a");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->size(), 4u);

  absl::StatusOr<v1::DeleteSessionResponse> deleted = client_->DeleteSession("a2");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->deleted_turns(), 1u);
  EXPECT_EQ(client_->GetSession("a2").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->DeleteSession("a2").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ClientTest, RepeatedPageTokenIsInternal) {
  Append("s", 0, 2, 0);
  server_.service().list_hook = [](v1::ListSessionsResponse* page) {
    page->set_next_page_token("again");
  };
  const absl::Status s = client_->ListAllSessions().status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("repeated page token"));
}

// Each case breaks a valid FULL answer (header, layer 0, layer 1) in one way.
struct StreamFault {
  std::string name;
  std::function<void(std::vector<v1::GetCacheResponse>*)> edit;
  absl::StatusCode code;
  std::string message;
};

void PrintTo(const StreamFault& fault, std::ostream* os) { *os << fault.name; }

class CacheStreamTest : public ClientTest, public ::testing::WithParamInterface<StreamFault> {};

TEST_P(CacheStreamTest, MisbehavingServerIsReported) {
  Append("s", 0, 3, 0);
  server_.service().cache_stream_hook = GetParam().edit;
  const absl::Status s = GetFull("s").status();
  EXPECT_EQ(s.code(), GetParam().code) << s;
  EXPECT_THAT(s.message(), HasSubstr(GetParam().message));
}

INSTANTIATE_TEST_SUITE_P(
    Faults, CacheStreamTest,
    ::testing::Values(
        StreamFault{"NoHeader", [](auto* m) { m->erase(m->begin()); }, absl::StatusCode::kInternal,
                    "before the CacheHeader"},
        StreamFault{"NothingAtAll", [](auto* m) { m->clear(); }, absl::StatusCode::kInternal,
                    "without a CacheHeader"},
        StreamFault{"TwoHeaders", [](auto* m) { m->insert(m->begin() + 1, (*m)[0]); },
                    absl::StatusCode::kInternal, "second CacheHeader"},
        StreamFault{"LayersSwapped", [](auto* m) { std::swap((*m)[1], (*m)[2]); },
                    absl::StatusCode::kInternal, "expected layer 0, server sent layer 1"},
        StreamFault{"LastLayerMissing", [](auto* m) { m->pop_back(); }, absl::StatusCode::kInternal,
                    "ended after 1 of 2 layers"},
        StreamFault{"ExtraLayer", [](auto* m) { m->push_back(m->back()); },
                    absl::StatusCode::kInternal, "more than num_layers=2"},
        StreamFault{"EmptyMessage", [](auto* m) { m->emplace_back(); }, absl::StatusCode::kInternal,
                    "empty GetCacheResponse"},
        StreamFault{"EntriesCountWrong",
                    [](auto* m) { (*m)[0].mutable_header()->add_entries_per_layer(1); },
                    absl::StatusCode::kInternal, "3 entries_per_layer for num_layers=2"},
        StreamFault{"KeysTruncated",
                    [](auto* m) { (*m)[2].mutable_layer()->mutable_keys()->pop_back(); },
                    absl::StatusCode::kDataLoss, "layer 1 keys has 47 bytes, expected 48"},
        StreamFault{"UnannouncedBias",
                    [](auto* m) { (*m)[1].mutable_layer()->set_bias(std::string(24, '\0')); },
                    absl::StatusCode::kDataLoss, "layer 0 bias has 24 bytes, expected 0"},
        StreamFault{"PositionsMissing", [](auto* m) { (*m)[1].mutable_layer()->clear_positions(); },
                    absl::StatusCode::kDataLoss, "positions has 0 bytes, expected 48"}),
    [](const ::testing::TestParamInfo<StreamFault>& info) { return info.param.name; });

}  // namespace
}  // namespace nexuskv::client
