// CachePlanner on hand-made records: no store, no server. Every budget kind, the variants (raw,
// method, scored, fallback), dropped raw KV and the edges (T = 1, every turn raw).
#include "service/cache_planner.h"

#include <numeric>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nexuskv::service {
namespace {

namespace v1 = ::nexuskv::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Variant = TurnPlan::Variant;

const compressor::CompressorRegistry& Registry() {
  return compressor::CompressorRegistry::Default();
}

// A session of 2 layers, 2 kv heads (4 query heads), D = 4, float16, with turns of these sizes.
PlannerInputs Inputs(const v1::GetCacheRequest& request, const std::vector<uint32_t>& tokens,
                     bool scores = false) {
  PlannerInputs in;
  in.request = request;
  v1::ModelSpec& m = *in.session.mutable_model();
  m.set_model_id("m");
  m.set_num_layers(2);
  m.set_num_kv_heads(2);
  m.set_num_query_heads(4);
  m.set_head_dim(4);
  m.set_dtype(v1::DTYPE_FLOAT16);
  in.session.set_num_turns(static_cast<uint32_t>(tokens.size()));
  uint64_t position = 0;
  for (size_t t = 0; t < tokens.size(); ++t) {
    store::SegmentRecord& s = in.segments.emplace_back();
    s.set_turn(static_cast<uint32_t>(t));
    s.set_num_tokens(tokens[t]);
    s.set_first_position(position);
    s.set_has_token_scores(scores);
    position += tokens[t];
  }
  in.session.set_next_position(position);
  const v1::Method method =
      request.method() == v1::METHOD_UNSPECIFIED ? v1::SONIC : request.method();
  in.method = Registry().Find(v1::Method_Name(method));
  in.fallback = Registry().Fallback();
  in.serves_without_raw = Registry().ServesWithoutRaw();
  in.raw_retention = "keep";
  in.merge_share = 0.05;
  return in;
}

v1::GetCacheRequest Request(v1::Method method, double keep, uint32_t keep_recent = 0) {
  v1::GetCacheRequest r;
  r.set_session_id("s");
  r.set_method(method);
  r.mutable_budget()->set_keep_ratio(keep);
  r.set_keep_recent_turns(keep_recent);
  return r;
}

// The compressed turns' scores: token i of head h in layer l of turn u scores (i + h + l) % 5.
std::vector<compressor::scored::ScoredTurn> Scores(const CacheScope& scope) {
  std::vector<compressor::scored::ScoredTurn> out;
  for (uint32_t t = scope.first; t < scope.raw_from; ++t) {
    const store::SegmentRecord& s = scope.inputs.segments[t];
    compressor::scored::ScoredTurn& turn = out.emplace_back();
    turn.num_tokens = s.num_tokens();
    turn.first_position = static_cast<int64_t>(s.first_position());
    turn.session_start = t == 0;
    for (int l = 0; l < 2; ++l) {
      std::vector<float>& layer = turn.scores.emplace_back();
      for (int h = 0; h < 2; ++h) {
        for (uint32_t i = 0; i < s.num_tokens(); ++i) layer.push_back(float((i + h + l) % 5));
      }
    }
  }
  return out;
}

absl::StatusOr<CachePlan> PlanAll(PlannerInputs in, bool with_scores) {
  absl::StatusOr<CacheScope> scope = CachePlanner::Scope(std::move(in));
  if (!scope.ok()) return scope.status();
  LoadedInputs loaded;
  if (scope->scored && with_scores) loaded.scored_turns = Scores(*scope);
  return CachePlanner::Plan(*scope, std::move(loaded));
}

TEST(CachePlannerTest, ATurnRangeOutsideTheSessionIsInvalid) {
  v1::GetCacheRequest r = Request(v1::H2O, 0.5);
  r.set_first_turn(1);
  r.set_last_turn(3);
  absl::StatusOr<CacheScope> scope = CachePlanner::Scope(Inputs(r, {8, 8}));
  EXPECT_EQ(scope.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(scope.status().message(), HasSubstr("turn range 1..3 is outside session \"s\""));
}

TEST(CachePlannerTest, ScoredOnlyWhenEveryCompressedTurnHasScoresAndTheBudgetAllows) {
  const v1::GetCacheRequest keep = Request(v1::SONIC, 0.5, 1);
  absl::StatusOr<CacheScope> scope = CachePlanner::Scope(Inputs(keep, {8, 8, 8}, true));
  ASSERT_TRUE(scope.ok()) << scope.status();
  EXPECT_TRUE(scope->scored);
  EXPECT_TRUE(scope->fit_turns.empty()) << "a scored answer reads no fit";
  EXPECT_EQ(scope->raw_from, 2u);

  PlannerInputs one_without = Inputs(keep, {8, 8, 8}, true);
  one_without.segments[1].set_has_token_scores(false);
  scope = CachePlanner::Scope(std::move(one_without));
  ASSERT_TRUE(scope.ok());
  EXPECT_FALSE(scope->scored);
  EXPECT_THAT(scope->fit_turns, ElementsAre(0, 1));

  v1::GetCacheRequest max_tokens = keep;
  max_tokens.mutable_budget()->set_max_tokens(12);
  EXPECT_FALSE(CachePlanner::Scope(Inputs(max_tokens, {8, 8, 8}, true))->scored)
      << "a ranking over layers does not keep max_tokens in every layer";
  PlannerInputs drops = Inputs(keep, {8, 8, 8}, true);
  drops.raw_retention_drops = true;
  EXPECT_FALSE(CachePlanner::Scope(std::move(drops))->scored);
  EXPECT_FALSE(CachePlanner::Scope(Inputs(Request(v1::H2O, 0.5), {8}, true))->scored)
      << "only a method that prefers token scores spends them";
}

TEST(CachePlannerTest, AScoredPlanHoldsTheBudgetInEveryLayerWithoutBias) {
  v1::GetCacheRequest r = Request(v1::SONIC, 0.5, 1);
  r.set_bias_mode(v1::BIAS_MODE_NONE);
  absl::StatusOr<CachePlan> plan = PlanAll(Inputs(r, {10, 6, 5}, true), true);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_NE(plan->selection, nullptr);
  EXPECT_THAT(plan->turns[0].variant, Variant::kScored);
  EXPECT_THAT(plan->turns[2].variant, Variant::kRaw);
  const v1::CacheHeader& h = plan->header;
  EXPECT_FALSE(h.has_bias());
  for (uint32_t l = 0; l < 2; ++l) {
    EXPECT_EQ(h.entries_per_layer(l), plan->EntriesIn(0, l) + plan->EntriesIn(1, l) + 5);
    EXPECT_LE(h.entries_per_layer(l), 8u + 5u) << "keep 0.5 of 16, and the raw turn";
  }
  const uint64_t entries = h.entries_per_layer(0) + h.entries_per_layer(1);
  EXPECT_EQ(h.cache_bytes(), entries * 2 * (2 * 4 * 2));
}

TEST(CachePlannerTest, ABiasedScoredPlanPadsHeadsAndCountsThePadding) {
  absl::StatusOr<CachePlan> plan = PlanAll(Inputs(Request(v1::SONIC, 0.5), {10, 6}, true), true);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const v1::CacheHeader& h = plan->header;
  EXPECT_TRUE(h.has_bias());
  EXPECT_EQ(h.cache_bytes(),
            (h.entries_per_layer(0) + h.entries_per_layer(1)) * 2 * (2 * 4 * 2 + 4));
  // kept_entries is the mean of the real entries; the layers hold at least that.
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_GE(plan->EntriesIn(i, 0) + plan->EntriesIn(i, 1), 2 * h.turns(i).kept_entries() - 1);
  }
  EXPECT_TRUE(plan->lookahead == std::nullopt) << "scored turns rank by scores, not lookahead";
}

TEST(CachePlannerTest, FullServesEveryTurnRawAndAMissingFitGoesToTheFallback) {
  absl::StatusOr<CachePlan> full = PlanAll(Inputs(Request(v1::FULL, 0.1), {3, 1}), false);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_THAT(full->header.entries_per_layer(), ElementsAre(4, 4));
  EXPECT_EQ(full->turns[1].variant, Variant::kRaw);

  absl::StatusOr<CacheScope> scope =
      CachePlanner::Scope(Inputs(Request(v1::SNAPKV, 0.5), {8, 8, 1}));
  ASSERT_TRUE(scope.ok());
  EXPECT_THAT(scope->fit_turns, ElementsAre(0, 1, 2));
  LoadedInputs loaded;
  loaded.missing_fits[1] = "is not ready (still computing)";
  absl::StatusOr<CachePlan> plan = CachePlanner::Plan(*scope, std::move(loaded));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->turns[0].variant, Variant::kMethod);
  EXPECT_EQ(plan->turns[1].variant, Variant::kFallback);
  EXPECT_EQ(plan->header.turns(1).method(), v1::STREAMING_LLM);
  EXPECT_EQ(plan->header.notes(),
            "turn 1: the SNAPKV fit is not ready (still computing); served by STREAMING_LLM "
            "from its raw KV");
  const int64_t kept = plan->turns[0].entries + plan->turns[1].entries + plan->turns[2].entries;
  EXPECT_EQ(kept, 8) << "keep 0.5 of 17 tokens";
}

TEST(CachePlannerTest, DroppedRawKvIsServedOnlyByTheMethodThatNeedsNone) {
  PlannerInputs in = Inputs(Request(v1::H2O, 0.5, 1), {8, 8});
  in.segments[0].set_raw_dropped(true);
  in.raw_retention = "drop";
  absl::StatusOr<CacheScope> scope = CachePlanner::Scope(std::move(in));
  EXPECT_EQ(scope.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(scope.status().message(),
              HasSubstr("the raw KV of turn 0 of session \"s\" was dropped (server "
                        "--raw_retention=drop) and H2O selects from the raw KV; ask for method "
                        "SONIC"));
  PlannerInputs sonic = Inputs(Request(v1::SONIC, 0.5, 2), {8, 8});
  sonic.segments[0].set_raw_dropped(true);
  scope = CachePlanner::Scope(std::move(sonic));
  EXPECT_EQ(scope.status().code(), absl::StatusCode::kFailedPrecondition)
      << "keep_recent_turns 2 asks for the dropped turn raw";
  EXPECT_THAT(scope.status().message(), HasSubstr("or lower keep_recent_turns"));
}

TEST(CachePlannerTest, EveryBudgetKindAndTheSmallestThatHoldsOneEntry) {
  v1::GetCacheRequest tokens = Request(v1::STREAMING_LLM, 0.5);
  tokens.mutable_budget()->set_max_tokens(5);
  absl::StatusOr<CachePlan> plan = PlanAll(Inputs(tokens, {1, 7}), false);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->header.entries_per_layer(), ElementsAre(5, 5));

  v1::GetCacheRequest bytes = Request(v1::STREAMING_LLM, 0.5);
  const uint64_t per_entry = 2 * 2 * (2 * 4 * 2);  // layers x heads x (keys + values, float16)
  bytes.mutable_budget()->set_max_bytes(3 * per_entry + 1);
  plan = PlanAll(Inputs(bytes, {1, 7}), false);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->header.entries_per_layer(), ElementsAre(3, 3));
  EXPECT_LE(plan->header.cache_bytes(), bytes.budget().max_bytes());

  bytes.mutable_budget()->set_max_bytes(per_entry - 1);
  plan = PlanAll(Inputs(bytes, {1, 7}), false);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plan.status().message(), HasSubstr("the smallest max_bytes is 64"));

  plan = PlanAll(Inputs(Request(v1::H2O, 0.01), {1, 7}), false);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plan.status().message(),
              HasSubstr("the smallest keep_ratio that keeps one is 0.125"));

  // Every turn raw: no budget is spent, whatever it says.
  plan = PlanAll(Inputs(Request(v1::H2O, 0.01, 5), {1, 7}), false);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->header.entries_per_layer(), ElementsAre(8, 8));
  EXPECT_EQ(plan->selection, nullptr);
}

TEST(CachePlannerTest, AMethodServingFromItsFitGivesAWholeTurnBackRaw) {
  // SONIC without fit summaries allocates a keep of 1.0 as every turn whole: served raw.
  absl::StatusOr<CachePlan> plan = PlanAll(Inputs(Request(v1::SONIC, 1.0), {6, 1}), false);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->turns[0].variant, Variant::kRaw);
  EXPECT_EQ(plan->header.turns(0).method(), v1::FULL);
  EXPECT_THAT(plan->header.entries_per_layer(), ElementsAre(7, 7));
}

}  // namespace
}  // namespace nexuskv::service
