#include "service/kv_memory_core.h"

#include <filesystem>
#include <memory>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/test_util.h"

namespace nexuskv::service {
namespace {

namespace v1 = ::nexuskv::v1;
using ::testing::HasSubstr;

class KvMemoryCoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("core_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    auto store = store::Store::Open({.path = dir_.string(), .sync_writes = false});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    core_ = std::make_unique<KvMemoryCore>(store_.get(), &compressor::CompressorRegistry::Default(),
                                           CoreOptions{});
  }
  void TearDown() override {
    core_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  absl::StatusOr<v1::AppendSegmentResponse> Append(const std::string& session, uint32_t turn,
                                                   uint32_t tokens, uint64_t first_position,
                                                   uint32_t seed = 1) {
    SegmentAssembler assembler(Limits{});
    for (auto& m : testing::SegmentMessages(session, turn, tokens, first_position, 2,
                                            testing::TinySpec(), seed)) {
      if (absl::Status s = assembler.Add(std::move(m)); !s.ok()) return s;
    }
    auto segment = std::move(assembler).Finish();
    if (!segment.ok()) return segment.status();
    return core_->Append("default", std::move(*segment));
  }

  // Appends turns of 6, 10 and 4 tokens.
  void AppendThreeTurns(const std::string& session) {
    ASSERT_TRUE(Append(session, 0, 6, 0).ok());
    ASSERT_TRUE(Append(session, 1, 10, 6).ok());
    ASSERT_TRUE(Append(session, 2, 4, 16).ok());
  }

  std::filesystem::path dir_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<KvMemoryCore> core_;
};

TEST_F(KvMemoryCoreTest, AppendsAndDescribesASession) {
  AppendThreeTurns("chat-1");
  absl::StatusOr<v1::SessionInfo> info = core_->GetSession("default", "chat-1");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->num_turns(), 3u);
  EXPECT_EQ(info->total_tokens(), 20u);
  EXPECT_EQ(info->next_position(), 20u);
  ASSERT_EQ(info->turns_size(), 3);
  EXPECT_EQ(info->turns(1).num_tokens(), 10u);
  EXPECT_EQ(info->turns(1).first_position(), 6u);
}

TEST_F(KvMemoryCoreTest, RetryIsANoOpAndConflictsAreRefused) {
  ASSERT_TRUE(Append("s", 0, 6, 0).ok());
  absl::StatusOr<v1::AppendSegmentResponse> again = Append("s", 0, 6, 0);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->already_stored());
  EXPECT_EQ(Append("s", 0, 6, 0, /*seed=*/7).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(Append("s", 2, 6, 6).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(KvMemoryCoreTest, FullReturnsTheExactBytesPerHeadInTurnOrder) {
  AppendThreeTurns("s");
  v1::GetCacheRequest request;
  request.set_session_id("s");
  request.set_method(v1::FULL);
  auto plan = core_->PlanCache("default", request);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ((*plan)->header().entries_per_layer(0), 20u);
  EXPECT_EQ((*plan)->header().next_position(), 20u);
  auto layer = (*plan)->BuildLayer(1);
  ASSERT_TRUE(layer.ok()) << layer.status();

  // Expected: for each head, turn 0's rows, then turn 1's, then turn 2's.
  const size_t row = 8 * 2;  // D * sizeof(float16)
  std::string expected;
  const uint32_t tokens[] = {6, 10, 4};
  std::vector<std::string> keys;
  for (uint32_t t = 0; t < 3; ++t) {
    keys.push_back(testing::SegmentMessages("s", t, tokens[t], 0)[2].layer().keys());
  }
  for (int h = 0; h < 2; ++h) {
    for (uint32_t t = 0; t < 3; ++t)
      expected += keys[t].substr(h * tokens[t] * row, tokens[t] * row);
  }
  EXPECT_EQ(layer->keys(), expected);
  EXPECT_EQ(layer->positions().size(), 2u * 20 * sizeof(int64_t));
  EXPECT_TRUE(layer->bias().empty());
}

TEST_F(KvMemoryCoreTest, BaselinesFitTheBudgetAndKeepRecentTurnsRaw) {
  AppendThreeTurns("s");
  for (v1::Method method : {v1::H2O, v1::SNAPKV, v1::STREAMING_LLM}) {
    v1::GetCacheRequest request;
    request.set_session_id("s");
    request.set_method(method);
    request.mutable_budget()->set_keep_ratio(0.5);
    request.set_keep_recent_turns(1);
    auto plan = core_->PlanCache("default", request);
    ASSERT_TRUE(plan.ok()) << v1::Method_Name(method) << ": " << plan.status();
    const v1::CacheHeader& header = (*plan)->header();
    // Turns 0 and 1 (16 tokens) at 0.5 keep 8 entries; turn 2 (4 tokens) is raw.
    EXPECT_EQ(header.entries_per_layer(0), 12u) << v1::Method_Name(method);
    EXPECT_TRUE(header.turns(2).raw());
    EXPECT_EQ(header.turns(2).kept_entries(), 4u);
    EXPECT_EQ(header.turns(0).kept_entries() + header.turns(1).kept_entries(), 8u);
    auto layer = (*plan)->BuildLayer(0);
    ASSERT_TRUE(layer.ok()) << layer.status();
    EXPECT_EQ(layer->keys().size(), 2u * 12 * 8 * 2);
    EXPECT_EQ(layer->values().size(), 2u * 12 * 8 * 2);
  }
}

TEST_F(KvMemoryCoreTest, ConvertsTheOutputDtype) {
  AppendThreeTurns("s");
  v1::GetCacheRequest request;
  request.set_session_id("s");
  request.set_method(v1::H2O);
  request.mutable_budget()->set_max_tokens(10);
  request.set_output_dtype(v1::DTYPE_FLOAT32);
  auto plan = core_->PlanCache("default", request);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ((*plan)->header().model().dtype(), v1::DTYPE_FLOAT32);
  EXPECT_EQ((*plan)->header().entries_per_layer(0), 10u);
  auto layer = (*plan)->BuildLayer(0);
  ASSERT_TRUE(layer.ok());
  EXPECT_EQ(layer->keys().size(), 2u * 10 * 8 * 4);
}

TEST_F(KvMemoryCoreTest, RefusesWhatCannotBeServed) {
  AppendThreeTurns("s");
  v1::GetCacheRequest request;
  request.set_session_id("missing");
  request.set_method(v1::FULL);
  EXPECT_EQ(core_->PlanCache("default", request).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(core_->PlanCache("other-tenant", request).status().code(), absl::StatusCode::kNotFound);

  request.set_session_id("s");
  request.set_last_turn(3);
  auto range = core_->PlanCache("default", request).status();
  EXPECT_EQ(range.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(range.message(), HasSubstr("has turns 0..2"));

  request.clear_last_turn();
  request.set_method(v1::H2O);
  request.mutable_budget()->set_max_tokens(3);
  request.set_keep_recent_turns(1);
  auto small = core_->PlanCache("default", request).status();
  EXPECT_EQ(small.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(small.message(),
              HasSubstr("cannot hold the 4 tokens of the turns kept raw; the smallest max_tokens "
                        "is 4, or lower keep_recent_turns"));

  compressor::CompressorRegistry full_only([] {
    std::vector<std::unique_ptr<compressor::Compressor>> v;
    return v;
  }());
  KvMemoryCore bare(store_.get(), &full_only, CoreOptions{});
  request.set_method(v1::SONIC);
  request.mutable_budget()->set_keep_ratio(0.5);
  auto missing = bare.PlanCache("default", request).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(missing.message(), HasSubstr("method SONIC is not available"));
}

// A budget that cannot hold one entry per layer is refused, naming the smallest that can; that
// smallest budget is served. TinySpec: 2 layers, 2 kv heads, head_dim 8, float16, 20 tokens.
TEST_F(KvMemoryCoreTest, BudgetsBelowOneEntryPerLayerAreRefusedWithTheSmallestThatWorks) {
  AppendThreeTurns("s");
  v1::GetCacheRequest request;
  request.set_session_id("s");
  const auto refused = [&](v1::Method method, const std::string& message) {
    request.set_method(method);
    const absl::Status status = core_->PlanCache("default", request).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(status.message(), HasSubstr(message));
  };
  const auto entries_per_layer = [&](v1::Method method) -> int64_t {
    request.set_method(method);
    auto plan = core_->PlanCache("default", request);
    if (!plan.ok()) {
      ADD_FAILURE() << plan.status();
      return -1;
    }
    return (*plan)->header().entries_per_layer(0);
  };
  // 2 layers x 2 heads x (2 x 8 x 2 bytes), and 4 more bytes per head for SONIC's bias.
  request.mutable_budget()->set_max_bytes(10);
  refused(v1::H2O, "budget.max_bytes 10 cannot hold one entry per layer");
  refused(v1::H2O, "the smallest max_bytes is 128");
  refused(v1::SONIC, "the smallest max_bytes is 144");
  request.mutable_budget()->set_max_bytes(128);
  EXPECT_EQ(entries_per_layer(v1::H2O), 1);
  request.mutable_budget()->set_max_bytes(143);
  refused(v1::SONIC, "with bias");

  request.mutable_budget()->set_keep_ratio(0.01);
  refused(v1::STREAMING_LLM, "keeps no entry of the 20 tokens to compress");
  refused(v1::SONIC, "the smallest keep_ratio that keeps one is 0.05");
  request.mutable_budget()->set_keep_ratio(0.05);
  EXPECT_EQ(entries_per_layer(v1::STREAMING_LLM), 1);
  request.set_keep_recent_turns(1);  // The raw turn alone holds 4 entries.
  request.mutable_budget()->set_keep_ratio(0.01);
  EXPECT_EQ(entries_per_layer(v1::STREAMING_LLM), 4);
}

// Probes may come from anywhere in the turn when their offsets say where; offsets that do not
// describe the probes are refused and store nothing.
TEST_F(KvMemoryCoreTest, ProbeOffsetsAreCheckedAndServed) {
  auto append = [&](uint32_t turn, uint32_t first, std::vector<uint32_t> offsets) {
    SegmentAssembler assembler(Limits{});
    auto messages = testing::SegmentMessages("s", turn, 10, first, 3, testing::TinySpec());
    for (uint32_t o : offsets) messages[0].mutable_header()->add_probe_offsets(o);
    for (auto& m : messages) {
      if (absl::Status st = assembler.Add(std::move(m)); !st.ok()) return st;
    }
    auto segment = std::move(assembler).Finish();
    if (!segment.ok()) return segment.status();
    return core_->Append("default", std::move(*segment)).status();
  };
  for (const auto& [offsets, message] : std::vector<std::pair<std::vector<uint32_t>, std::string>>{
           {{0, 5}, "2 entries for num_probe_queries 3"},
           {{0, 5, 5}, "strictly ascending"},
           {{0, 5, 10}, "below num_tokens (10); entry 2 is 10"}}) {
    absl::Status refused = append(0, 0, offsets);
    EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
    EXPECT_THAT(refused.message(), HasSubstr(message));
  }
  EXPECT_EQ(core_->GetSession("default", "s").status().code(), absl::StatusCode::kNotFound);

  ASSERT_TRUE(append(0, 0, {0, 4, 9}).ok());
  ASSERT_TRUE(append(1, 10, {}).ok());  // the last 3 tokens
  // A retry with other offsets is a different payload.
  EXPECT_EQ(append(0, 0, {1, 4, 9}).code(), absl::StatusCode::kAlreadyExists);
  for (v1::Method method : {v1::H2O, v1::SNAPKV, v1::SONIC}) {
    v1::GetCacheRequest request;
    request.set_session_id("s");
    request.set_method(method);
    request.mutable_budget()->set_keep_ratio(0.5);
    auto plan = core_->PlanCache("default", request);
    ASSERT_TRUE(plan.ok()) << plan.status();
    for (uint32_t l = 0; l < (*plan)->num_layers(); ++l) {
      EXPECT_TRUE((*plan)->BuildLayer(l).ok()) << v1::Method_Name(method) << " layer " << l;
    }
  }
}

TEST_F(KvMemoryCoreTest, DeleteRemovesTheSession) {
  AppendThreeTurns("s");
  auto deleted = core_->DeleteSession("default", "s");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->deleted_turns(), 3u);
  EXPECT_EQ(core_->GetSession("default", "s").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(core_->DeleteSession("default", "s").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(KvMemoryCoreTest, ListsSessionsInPages) {
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(Append("s" + std::to_string(i), 0, 3, 0).ok());
  v1::ListSessionsRequest request;
  request.set_page_size(2);
  std::vector<std::string> ids;
  do {
    auto page = core_->ListSessions("default", request);
    ASSERT_TRUE(page.ok()) << page.status();
    for (const auto& s : page->sessions()) ids.push_back(s.session_id());
    request.set_page_token(page->next_page_token());
  } while (!request.page_token().empty());
  EXPECT_THAT(ids, ::testing::ElementsAre("s0", "s1", "s2", "s3", "s4"));
  request.set_page_size(5000);
  request.clear_page_token();
  EXPECT_EQ(core_->ListSessions("default", request).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace nexuskv::service
