#include "service/validation.h"

#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/test_util.h"

namespace nexuskv::service {
namespace {

namespace v1 = ::nexuskv::v1;
using ::testing::HasSubstr;

v1::SegmentHeader Header() {
  return testing::SegmentMessages("s1", 0, 5, 0).front().header();
}

void ExpectError(const absl::Status& status, absl::StatusCode code, std::string_view text) {
  EXPECT_EQ(status.code(), code) << status;
  EXPECT_THAT(status.message(), HasSubstr(text));
}

TEST(ValidateSegmentHeaderTest, AcceptsAGoodHeader) {
  EXPECT_TRUE(ValidateSegmentHeader(Header(), Limits{}).ok());
}

// The header is refused before any layer arrives when its offsets cannot describe the turn.
TEST(ValidateSegmentHeaderTest, RefusesOffsetsThatDoNotFitTheTurn) {
  v1::SegmentHeader h = Header();  // 5 tokens, 2 probes
  h.add_probe_offsets(1);
  h.add_probe_offsets(4);
  h.add_nexus_offsets(0);
  EXPECT_TRUE(ValidateSegmentHeader(h, Limits{}).ok());
  h.add_probe_offsets(4);
  ExpectError(ValidateSegmentHeader(h, Limits{}), absl::StatusCode::kInvalidArgument,
              "3 entries for num_probe_queries 2");
  h.clear_probe_offsets();
  h.add_probe_offsets(4);
  h.add_probe_offsets(1);
  ExpectError(ValidateSegmentHeader(h, Limits{}), absl::StatusCode::kInvalidArgument,
              "probe_offsets must be strictly ascending");
  h.clear_probe_offsets();
  h.add_nexus_offsets(5);
  ExpectError(ValidateSegmentHeader(h, Limits{}), absl::StatusCode::kInvalidArgument,
              "nexus_offsets must be strictly ascending offsets below num_tokens (5); entry 1");
}

TEST(ValidateSegmentHeaderTest, RefusesBadIds) {
  for (const char* id : {"", "has space", "slash/no", "new\nline"}) {
    v1::SegmentHeader h = Header();
    h.set_session_id(id);
    EXPECT_EQ(ValidateSegmentHeader(h, Limits{}).code(), absl::StatusCode::kInvalidArgument) << id;
  }
  v1::SegmentHeader h = Header();
  h.set_session_id(std::string(129, 'a'));
  EXPECT_EQ(ValidateSegmentHeader(h, Limits{}).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ValidateSegmentHeaderTest, RefusesBadSpecs) {
  v1::SegmentHeader h = Header();
  h.mutable_model()->set_dtype(v1::DTYPE_UNSPECIFIED);
  ExpectError(ValidateSegmentHeader(h, Limits{}), absl::StatusCode::kInvalidArgument,
              "model.dtype");
  h = Header();
  h.mutable_model()->set_dtype(static_cast<v1::DType>(42));
  ExpectError(ValidateSegmentHeader(h, Limits{}), absl::StatusCode::kInvalidArgument,
              "model.dtype is 42");
  h = Header();
  h.mutable_model()->set_head_dim(0);
  ExpectError(ValidateSegmentHeader(h, Limits{}), absl::StatusCode::kInvalidArgument,
              "model.head_dim is 0");
  h = Header();
  h.mutable_model()->set_num_layers(1u << 30);
  ExpectError(ValidateSegmentHeader(h, Limits{}), absl::StatusCode::kInvalidArgument,
              "model.num_layers");
  h = Header();
  h.mutable_model()->set_num_query_heads(3);
  ExpectError(ValidateSegmentHeader(h, Limits{}), absl::StatusCode::kInvalidArgument,
              "multiple of model.num_kv_heads");
  h = Header();
  h.clear_model();
  ExpectError(ValidateSegmentHeader(h, Limits{}), absl::StatusCode::kInvalidArgument,
              "header.model is missing");
}

TEST(ValidateSegmentHeaderTest, RefusesZeroAndOverLimitSizes) {
  v1::SegmentHeader h = Header();
  h.set_num_tokens(0);
  ExpectError(ValidateSegmentHeader(h, Limits{}), absl::StatusCode::kInvalidArgument,
              "num_tokens is 0");
  h = Header();
  h.set_num_tokens(70000);
  ExpectError(ValidateSegmentHeader(h, Limits{}), absl::StatusCode::kResourceExhausted,
              "--max_tokens_per_turn");
  h = Header();
  Limits small;
  small.max_segment_bytes = 100;
  ExpectError(ValidateSegmentHeader(h, small), absl::StatusCode::kResourceExhausted,
              "--max_segment_bytes");
  h = Header();
  h.set_num_probe_queries(6);
  ExpectError(ValidateSegmentHeader(h, Limits{}), absl::StatusCode::kInvalidArgument,
              "num_probe_queries is 6");
}

TEST(ValidateLayerChunkTest, RefusesWrongLengthsRangeAndNonFinite) {
  auto messages = testing::SegmentMessages("s1", 0, 5, 0);
  const v1::SegmentHeader& h = messages[0].header();
  v1::LayerChunk chunk = messages[1].layer();
  EXPECT_TRUE(ValidateLayerChunk(chunk, h).ok());

  v1::LayerChunk bad = chunk;
  bad.mutable_keys()->pop_back();
  ExpectError(ValidateLayerChunk(bad, h), absl::StatusCode::kInvalidArgument,
              "layer 0 keys has 159 bytes; shape [2, 5, 8] in float16 needs exactly 160");
  bad = chunk;
  bad.set_layer(2);
  ExpectError(ValidateLayerChunk(bad, h), absl::StatusCode::kInvalidArgument,
              "layer 2 is out of range");
  bad = chunk;
  bad.clear_probe_queries();
  ExpectError(ValidateLayerChunk(bad, h), absl::StatusCode::kInvalidArgument, "probe_queries");
  bad = chunk;
  const std::string inf = EncodeFromFloat(
      std::vector<float>{std::numeric_limits<float>::infinity()}, DType::kFloat16);
  bad.mutable_values()->replace(6, 2, inf);
  ExpectError(ValidateLayerChunk(bad, h), absl::StatusCode::kInvalidArgument,
              "values element 3 is NaN or infinite");
}

TEST(ValidateLayerChunkTest, TokenScoresComeExactlyWhenTheHeaderSaysSo) {
  auto messages = testing::SegmentMessages("s1", 0, 5, 0);
  v1::SegmentHeader h = messages[0].header();
  v1::LayerChunk chunk = messages[1].layer();
  const std::vector<float> scores(2 * 5, 0.5f);  // [H, T] float32
  chunk.set_token_scores(EncodeFromFloat(scores, DType::kFloat32));
  ExpectError(ValidateLayerChunk(chunk, h), absl::StatusCode::kInvalidArgument,
              "has_token_scores is false");
  h.set_has_token_scores(true);
  EXPECT_TRUE(ValidateLayerChunk(chunk, h).ok());
  v1::LayerChunk bad = chunk;
  bad.clear_token_scores();
  ExpectError(ValidateLayerChunk(bad, h), absl::StatusCode::kInvalidArgument,
              "layer 0 token_scores has 0 bytes; shape [2, 5] in float32 needs exactly 40");
  bad = chunk;
  std::vector<float> negative = scores;
  negative[7] = -1.0f;
  bad.set_token_scores(EncodeFromFloat(negative, DType::kFloat32));
  ExpectError(ValidateLayerChunk(bad, h), absl::StatusCode::kInvalidArgument,
              "token_scores element 7 is -1; scores must be >= 0");
  std::vector<float> nan = scores;
  nan[2] = std::numeric_limits<float>::quiet_NaN();
  bad.set_token_scores(EncodeFromFloat(nan, DType::kFloat32));
  ExpectError(ValidateLayerChunk(bad, h), absl::StatusCode::kInvalidArgument,
              "token_scores element 2 is NaN or infinite");
}

TEST(ValidateGetCacheRequestTest, BudgetRules) {
  v1::GetCacheRequest r;
  r.set_session_id("s1");
  ExpectError(ValidateGetCacheRequest(r), absl::StatusCode::kInvalidArgument,
              "budget is not set");
  for (double bad : {0.0, -0.5, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    r.mutable_budget()->set_keep_ratio(bad);
    ExpectError(ValidateGetCacheRequest(r), absl::StatusCode::kInvalidArgument,
                "budget.keep_ratio");
  }
  r.mutable_budget()->set_keep_ratio(1.0);
  EXPECT_TRUE(ValidateGetCacheRequest(r).ok());
  r.mutable_budget()->set_max_tokens(0);
  ExpectError(ValidateGetCacheRequest(r), absl::StatusCode::kInvalidArgument, "max_tokens is 0");
  r.clear_budget();
  r.set_method(v1::FULL);
  EXPECT_TRUE(ValidateGetCacheRequest(r).ok());
  r.set_method(static_cast<v1::Method>(99));
  ExpectError(ValidateGetCacheRequest(r), absl::StatusCode::kInvalidArgument, "method 99");
  r.set_method(v1::FULL);
  r.set_first_turn(3);
  r.set_last_turn(1);
  ExpectError(ValidateGetCacheRequest(r), absl::StatusCode::kInvalidArgument,
              "last_turn 1 is before first_turn 3");
}

}  // namespace
}  // namespace nexuskv::service
