// SONIC end to end: the real nexuskv-server (default method SONIC) with --raw_retention=drop and
// keep, its real RocksDB and the C++ client. Answers carry a finite bias and fit the budget, the
// raw KV of older turns leaves the disk once their ladders are stored, and only SONIC can still
// serve those turns, across a restart.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nexuskv/v1/kv_memory.pb.h"
#include "tensor/dtype.h"
#include "tests/integration/bf16_turns.h"
#include "tests/integration/server_process.h"

namespace nexuskv::testing {
namespace {

namespace v1 = ::nexuskv::v1;
using ::testing::HasSubstr;

constexpr char kSession[] = "sonic.e2e";
constexpr uint32_t kTokens[] = {12, 30, 9, 20};  // 71 tokens; the last turn is served raw

v1::ModelSpec Spec() { return Bf16Spec("sonic-e2e"); }

class SonicServiceTest : public ::testing::Test {
 protected:
  void Start(const std::string& retention) {
    auto server = ServerProcess::Start(
        {.extra_flags = {"--sync_writes=false", "--raw_retention=" + retention}});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    Connect();
  }
  void Connect() {
    auto client = server_->Connect();
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::move(*client);
  }
  void TearDown() override {
    if (HasFailure() && server_) std::cerr << "server log:\n" << server_->LogTail() << "\n";
  }

  void AppendAll() {
    uint64_t position = 0;
    for (uint32_t t = 0; t < std::size(kTokens); ++t) {
      const size_t kv = size_t{2} * kTokens[t] * 16;
      std::vector<std::string> bytes;  // keys, values, probes per layer; outlive AppendTurn
      for (uint32_t l = 0; l < 3; ++l) {
        bytes.push_back(RandomBf16(kv, t * 100 + l * 3));
        bytes.push_back(RandomBf16(kv, t * 100 + l * 3 + 1));
        bytes.push_back(RandomBf16(size_t{6} * 4 * 16, t * 100 + l * 3 + 2));
      }
      client::TurnTensors turn{.session_id = kSession,
                               .turn = t,
                               .first_position = position,
                               .role = t % 2 == 0 ? v1::ROLE_USER : v1::ROLE_ASSISTANT,
                               .model = Spec()};
      for (uint32_t l = 0; l < 3; ++l) {
        turn.layers.push_back({bytes[3 * l], bytes[3 * l + 1], bytes[3 * l + 2]});
      }
      auto ack = client_->AppendTurn(turn);
      ASSERT_TRUE(ack.ok()) << ack.status();
      position += kTokens[t];
    }
  }

  static v1::GetCacheRequest Request(v1::Method method, double keep) {
    v1::GetCacheRequest r;
    r.set_session_id(kSession);
    r.set_method(method);
    r.mutable_budget()->set_keep_ratio(keep);
    r.set_keep_recent_turns(1);
    return r;
  }

  // A SONIC answer at `keep`: within the budget (spent exactly while raw KV is stored), finite.
  void ExpectSonicAnswer(double keep, bool budget_spent) {
    auto cache = client_->GetCache(Request(v1::METHOD_UNSPECIFIED, keep));
    ASSERT_TRUE(cache.ok()) << cache.status();
    const v1::CacheHeader& h = cache->header;
    EXPECT_EQ(h.method(), v1::SONIC);
    EXPECT_TRUE(h.has_bias());
    EXPECT_EQ(h.next_position(), 71u);
    const uint32_t budget = static_cast<uint32_t>(51 * keep + 1e-9);
    const uint32_t n = h.entries_per_layer(0);
    EXPECT_LE(n, budget + 20);
    if (budget_spent) EXPECT_EQ(n, budget + 20);
    EXPECT_TRUE(h.turns(3).raw());
    for (const v1::CacheLayer& layer : cache->layers) {
      ASSERT_EQ(layer.bias().size(), size_t{2} * n * 4);
      std::vector<float> values(size_t{2} * n * 16), bias(size_t{2} * n);
      ASSERT_TRUE(DecodeToFloat(layer.keys(), DType::kBFloat16, values).ok());
      for (float x : values) ASSERT_TRUE(std::isfinite(x));
      ASSERT_TRUE(DecodeToFloat(layer.values(), DType::kBFloat16, values).ok());
      for (float x : values) ASSERT_TRUE(std::isfinite(x));
      ASSERT_TRUE(DecodeToFloat(layer.bias(), DType::kFloat32, bias).ok());
      for (float b : bias) ASSERT_TRUE(std::isfinite(b));
    }
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<client::Client> client_;
};

TEST_F(SonicServiceTest, DropPolicyServesFromTheLadderAndRefusesRawAccess) {
  Start("drop");
  AppendAll();
  ExpectSonicAnswer(0.5, /*budget_spent=*/false);
  auto info = client_->GetSession(kSession);
  ASSERT_TRUE(info.ok()) << info.status();
  for (int t = 0; t < 3; ++t) EXPECT_TRUE(info->turns(t).raw_dropped()) << "turn " << t;
  EXPECT_FALSE(info->turns(3).raw_dropped());
  EXPECT_EQ(info->stored_raw_bytes(), info->turns(3).raw_bytes());
  EXPECT_EQ(info->stored_bytes(), info->stored_raw_bytes() + info->compressed_bytes());
  std::cout << "drop: raw " << info->raw_bytes() << " B appended, " << info->stored_bytes()
            << " B stored (" << info->stored_raw_bytes() << " raw + " << info->compressed_bytes()
            << " fits)\n";

  v1::GetCacheRequest full;
  full.set_session_id(kSession);
  full.set_method(v1::FULL);
  auto refused = client_->GetCache(full);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("raw_retention"));
  EXPECT_EQ(client_->GetCache(Request(v1::H2O, 0.5)).status().code(),
            absl::StatusCode::kFailedPrecondition);

  v1::GetCacheRequest free = Request(v1::SONIC, 0.2);
  free.set_bias_mode(v1::BIAS_MODE_NONE);
  auto bias_free = client_->GetCache(free);
  ASSERT_TRUE(bias_free.ok()) << bias_free.status();
  EXPECT_FALSE(bias_free->header.has_bias());
  for (const auto& layer : bias_free->layers) EXPECT_TRUE(layer.bias().empty());

  ASSERT_TRUE(server_->Restart().ok());
  Connect();
  ExpectSonicAnswer(0.2, /*budget_spent=*/false);
}

TEST_F(SonicServiceTest, KeepPolicyKeepsRawAndSpendsTheBudgetExactly) {
  Start("keep");
  AppendAll();
  ExpectSonicAnswer(0.5, /*budget_spent=*/true);
  ExpectSonicAnswer(0.2, /*budget_spent=*/true);
  auto info = client_->GetSession(kSession);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->stored_raw_bytes(), info->raw_bytes());
  EXPECT_EQ(info->stored_bytes(), info->raw_bytes() + info->compressed_bytes());
  std::cout << "keep: raw " << info->raw_bytes() << " B appended, " << info->stored_bytes()
            << " B stored\n";
  EXPECT_TRUE(client_->GetCache(Request(v1::H2O, 0.5)).ok());
}

}  // namespace
}  // namespace nexuskv::testing
