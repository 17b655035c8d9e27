// Client unit tests: what is decided locally (option and shape checks, status conversion) and the
// client's defences against a broken server, driven by the FaultyKvMemory fault injector.
// Behaviour against a correct server is tested against the real nexuskv-server in
// tests/integration/client_test.cc.
#include "clients/cpp/client.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "clients/cpp/testing/faulty_kv_memory.h"

namespace nexuskv::client {
namespace {

using ::nexuskv::client::testing::FaultyKvMemoryServer;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

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

// A correct FULL answer for Spec(): header, then layers 0 and 1 of 3 entries per head (keys and
// values [2, 3, 4] float16 = 48 bytes, positions [2, 3] int64 = 48 bytes, no bias).
std::vector<v1::GetCacheResponse> ValidFullAnswer() {
  std::vector<v1::GetCacheResponse> messages(3);
  v1::CacheHeader& header = *messages[0].mutable_header();
  header.set_session_id("s");
  *header.mutable_model() = Spec();
  header.set_method(v1::FULL);
  for (uint32_t l = 0; l < 2; ++l) {
    header.add_entries_per_layer(3);
    v1::CacheLayer& layer = *messages[1 + l].mutable_layer();
    layer.set_layer(l);
    layer.set_keys(std::string(48, static_cast<char>(l)));
    layer.set_values(std::string(48, static_cast<char>(l + 1)));
    layer.set_positions(std::string(48, '\0'));
  }
  return messages;
}

class FaultyServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ClientOptions options;
    options.target = server_.address();
    options.timeout = absl::Seconds(7);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  absl::StatusOr<Cache> GetFull() {
    v1::GetCacheRequest request;
    request.set_session_id("s");
    request.set_method(v1::FULL);
    return client_->GetCache(request);
  }

  FaultyKvMemoryServer server_;
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
  options.max_message_bytes = 1 << 20;
  for (const char* token : {"two words", "tab\there", "new\nline", "caf\xc3\xa9"}) {
    options.bearer_token = token;
    EXPECT_EQ(Client::Connect(options).status().code(), absl::StatusCode::kInvalidArgument)
        << token;
  }
  options.bearer_token = "abc.DEF-123_~+/=";
  EXPECT_TRUE(Client::Connect(options).ok());
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

class TlsCredentialsFromFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "nexuskv-tls-files-XXXXXX";
    ASSERT_NE(::mkdtemp(dir_.data()), nullptr);
    std::ofstream(dir_ + "/a.pem")
        << "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    std::ofstream(dir_ + "/not.pem") << "hello\n";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(TlsCredentialsFromFilesTest, ChecksTheFilesBeforeAnyHandshake) {
  const std::string pem = dir_ + "/a.pem";
  EXPECT_TRUE(TlsCredentialsFromFiles({}).ok()) << "default roots, no client certificate";
  EXPECT_TRUE(TlsCredentialsFromFiles({.root_ca_file = pem}).ok());
  EXPECT_TRUE(TlsCredentialsFromFiles(
                  {.root_ca_file = pem, .cert_chain_file = pem, .private_key_file = pem})
                  .ok());

  const absl::Status half = TlsCredentialsFromFiles({.cert_chain_file = pem}).status();
  EXPECT_EQ(half.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(half.message(), HasSubstr("private key"));
  EXPECT_EQ(TlsCredentialsFromFiles({.private_key_file = pem}).status().code(),
            absl::StatusCode::kInvalidArgument);

  const absl::Status missing = TlsCredentialsFromFiles({.root_ca_file = dir_ + "/no.pem"}).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("root CA file " + dir_ + "/no.pem"));
  EXPECT_EQ(TlsCredentialsFromFiles({.cert_chain_file = pem, .private_key_file = dir_ + "/no.key"})
                .status()
                .code(),
            absl::StatusCode::kNotFound);

  const absl::Status not_pem =
      TlsCredentialsFromFiles({.root_ca_file = dir_ + "/not.pem"}).status();
  EXPECT_EQ(not_pem.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(not_pem.message(), HasSubstr("no PEM block"));
}

TEST_F(FaultyServerTest, BadShapesAreRefusedBeforeSending) {
  std::vector<std::string> bytes = {std::string(48, 'k'), std::string(48, 'v'),
                                    std::string(32, 'q')};
  TurnTensors good;
  good.session_id = "s";
  good.role = v1::ROLE_USER;
  good.model = Spec();
  good.layers = {{bytes[0], bytes[1], bytes[2]}, {bytes[0], bytes[1], bytes[2]}};
  TurnTensors wrong_layers = good;
  wrong_layers.layers.pop_back();
  TurnTensors odd_bytes = good;
  odd_bytes.layers[0].keys.remove_suffix(1);
  TurnTensors values_differ = good;
  values_differ.layers[1].values.remove_suffix(8);
  TurnTensors layers_disagree = good;
  layers_disagree.layers[1].keys.remove_suffix(16);  // One fp16 row per head less.
  layers_disagree.layers[1].values.remove_suffix(16);
  TurnTensors bad_probes = good;
  bad_probes.layers[0].probe_queries.remove_suffix(2);
  TurnTensors no_dtype = good;
  no_dtype.model.set_dtype(v1::DTYPE_UNSPECIFIED);
  TurnTensors no_heads = good;
  no_heads.model.set_num_kv_heads(0);
  for (const TurnTensors* turn : {&wrong_layers, &odd_bytes, &values_differ, &layers_disagree,
                                  &bad_probes, &no_dtype, &no_heads}) {
    EXPECT_EQ(client_->AppendTurn(*turn).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(server_.service().calls(), 0) << "a refused turn reached the server";
  // The same turn, well formed, does reach it (and the injector refuses it).
  EXPECT_EQ(client_->AppendTurn(good).status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(server_.service().calls(), 1);
}

TEST_F(FaultyServerTest, EveryCallCarriesTheDeadline) {
  const auto before = std::chrono::system_clock::now();
  server_.service().set_cache_answer(ValidFullAnswer());
  std::vector<std::string> bytes = {std::string(16, 'k'), std::string(16, 'v')};
  TurnTensors turn;
  turn.session_id = "s";
  turn.model = Spec(1);
  turn.layers = {{bytes[0], bytes[1], {}}};
  client_->AppendTurn(turn).IgnoreError();
  ASSERT_TRUE(GetFull().ok());
  client_->GetSession("s").IgnoreError();
  ASSERT_TRUE(client_->ListAllSessions().ok());
  client_->DeleteSession("s").IgnoreError();
  const std::map<std::string, std::chrono::system_clock::time_point> deadlines =
      server_.service().deadlines();
  std::vector<std::string> methods;
  for (const auto& [method, deadline] : deadlines) {
    methods.push_back(method);
    EXPECT_GT(deadline, before + std::chrono::seconds(6)) << method;
    EXPECT_LT(deadline, before + std::chrono::seconds(8)) << method;
  }
  EXPECT_THAT(methods, UnorderedElementsAre("AppendSegment", "GetCache", "GetSession",
                                            "ListSessions", "DeleteSession"));
}

// The gateway routes on this header (docs/scaling.md); tests/cluster checks the same through nginx
// and the real server, for the CLI built on this client.
TEST_F(FaultyServerTest, EveryPerSessionCallCarriesTheSessionHeader) {
  server_.service().set_cache_answer(ValidFullAnswer());
  std::vector<std::string> bytes = {std::string(16, 'k'), std::string(16, 'v')};
  TurnTensors turn;
  turn.session_id = "chat-7";
  turn.model = Spec(1);
  turn.layers = {{bytes[0], bytes[1], {}}};
  client_->AppendTurn(turn).IgnoreError();
  v1::GetCacheRequest request;
  request.set_session_id("chat-8");
  request.set_method(v1::FULL);
  client_->GetCache(request).IgnoreError();
  client_->GetSession("chat-9").IgnoreError();
  ASSERT_TRUE(client_->ListAllSessions().ok());
  client_->DeleteSession("chat-10").IgnoreError();
  using Headers = std::vector<std::string>;
  const std::map<std::string, Headers> headers = server_.service().session_headers();
  ASSERT_EQ(headers.size(), 5u);
  EXPECT_EQ(headers.at("AppendSegment"), Headers{"chat-7"});
  EXPECT_EQ(headers.at("GetCache"), Headers{"chat-8"});
  EXPECT_EQ(headers.at("GetSession"), Headers{"chat-9"});
  EXPECT_EQ(headers.at("DeleteSession"), Headers{"chat-10"});
  EXPECT_EQ(headers.at("ListSessions"), Headers{}) << "ListSessions belongs to no session";
}

TEST_F(FaultyServerTest, SessionHeaderPrefixIsPrepended) {
  ClientOptions options = client_->options();
  options.session_header_prefix = "tenant-a/";
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  (*client)->GetSession("chat-1").IgnoreError();
  EXPECT_EQ(server_.service().session_headers().at("GetSession"),
            std::vector<std::string>{"tenant-a/chat-1"});
  options.session_header_prefix = "tenant\nb/";  // a newline cannot go into a header
  EXPECT_EQ(Client::Connect(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(FaultyServerTest, RepeatedPageTokenIsInternal) {
  v1::ListSessionsResponse page;
  page.add_sessions()->set_session_id("s");
  page.set_next_page_token("again");
  server_.service().set_list_answer(page);
  const absl::Status s = client_->ListAllSessions().status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("repeated page token \"again\""));
  EXPECT_EQ(server_.service().calls(), 2) << "the second page repeats the first's token";
}

TEST_F(FaultyServerTest, UnbrokenAnswerIsAccepted) {
  // The baseline every CacheStreamTest case breaks in one way: it must pass as it is.
  server_.service().set_cache_answer(ValidFullAnswer());
  absl::StatusOr<Cache> cache = GetFull();
  ASSERT_TRUE(cache.ok()) << cache.status();
  ASSERT_EQ(cache->layers.size(), 2u);
  EXPECT_EQ(cache->layers[1].keys(), std::string(48, '\1'));
}

// Each case breaks ValidFullAnswer() (header, layer 0, layer 1) in one way.
struct StreamFault {
  std::string name;
  std::function<void(std::vector<v1::GetCacheResponse>*)> edit;
  absl::StatusCode code;
  std::string message;
};

void PrintTo(const StreamFault& fault, std::ostream* os) { *os << fault.name; }

class CacheStreamTest : public FaultyServerTest,
                        public ::testing::WithParamInterface<StreamFault> {};

TEST_P(CacheStreamTest, BrokenAnswerIsReported) {
  std::vector<v1::GetCacheResponse> answer = ValidFullAnswer();
  GetParam().edit(&answer);
  server_.service().set_cache_answer(answer);
  const absl::Status s = GetFull().status();
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
        StreamFault{"NoOutputDtype",
                    [](auto* m) {
                      (*m)[0].mutable_header()->mutable_model()->set_dtype(v1::DTYPE_UNSPECIFIED);
                    },
                    absl::StatusCode::kInternal, "no valid output dtype"},
        StreamFault{"KeysTruncated",
                    [](auto* m) { (*m)[2].mutable_layer()->mutable_keys()->pop_back(); },
                    absl::StatusCode::kDataLoss, "layer 1 keys has 47 bytes, expected 48"},
        StreamFault{"ValuesTooLong",
                    [](auto* m) { (*m)[1].mutable_layer()->mutable_values()->append(8, '\0'); },
                    absl::StatusCode::kDataLoss, "layer 0 values has 56 bytes, expected 48"},
        StreamFault{"UnannouncedBias",
                    [](auto* m) { (*m)[1].mutable_layer()->set_bias(std::string(24, '\0')); },
                    absl::StatusCode::kDataLoss, "layer 0 bias has 24 bytes, expected 0"},
        StreamFault{"AnnouncedBiasMissing",
                    [](auto* m) { (*m)[0].mutable_header()->set_has_bias(true); },
                    absl::StatusCode::kDataLoss, "layer 0 bias has 0 bytes, expected 24"},
        StreamFault{"PositionsMissing", [](auto* m) { (*m)[1].mutable_layer()->clear_positions(); },
                    absl::StatusCode::kDataLoss, "positions has 0 bytes, expected 48"}),
    [](const ::testing::TestParamInfo<StreamFault>& info) { return info.param.name; });

}  // namespace
}  // namespace nexuskv::client
