// SpendByTokenScores: one ranking over every (layer, kv head, token), the sinks always kept;
// PlanMergeRuns: the evicted tokens that merged entries stand for.
#include "service/score_budget.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nexuskv::service {
namespace {

using ::testing::ElementsAre;

// scores[u][l] for 2 heads: every token scored `base`, except those listed as (u, l, h, i) = s.
struct Scored {
  size_t u, l;
  int h, i;
  float s;
};
std::vector<std::vector<std::vector<float>>> Scores(const std::vector<int64_t>& tokens,
                                                    size_t layers, float base,
                                                    const std::vector<Scored>& high) {
  std::vector<std::vector<std::vector<float>>> out;
  for (int64_t t : tokens) out.emplace_back(layers, std::vector<float>(2 * t, base));
  for (const Scored& x : high) out[x.u][x.l][x.h * tokens[x.u] + x.i] = x.s;
  return out;
}

TEST(SpendByTokenScoresTest, TheBudgetGoesWhereTheScoresAreWhateverLayerOrTurn) {
  const std::vector<int64_t> tokens = {10, 10};
  // Layer 1 of turn 1 holds every high score (6 per head); the rest score 0.
  std::vector<Scored> high;
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 6; ++i) high.push_back({1, 1, h, i, 1.0f + i});
  }
  // budget 3 per head per layer over 2 layers = 12 per head: all 12 high (layer 1 of turn 1).
  const auto n = EvenOverHeads(SpendByTokenScores(Scores(tokens, 2, 0.0f, high), 2, tokens, 3, -1));
  EXPECT_THAT(n[0], ElementsAre(0, 0));
  EXPECT_THAT(n[1], ElementsAre(0, 6));
}

TEST(SpendByTokenScoresTest, TheSessionsFirstTokensAreAlwaysKept) {
  const std::vector<int64_t> tokens = {8, 8};
  std::vector<Scored> high;
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 8; ++i) high.push_back({1, 0, h, i, 5.0f});
  }
  // 8 per head in all (budget 8 over 1 layer): the 4 sinks of turn 0, then 4 of the 8 high ones.
  const auto n = EvenOverHeads(SpendByTokenScores(Scores(tokens, 1, 0.0f, high), 2, tokens, 8, 0));
  EXPECT_THAT(n[0], ElementsAre(kSinkTokens));
  EXPECT_THAT(n[1], ElementsAre(4));
}

TEST(SpendByTokenScoresTest, StaysWithinTheBudgetAndServesWholeTurnsWhenItCovers) {
  const std::vector<int64_t> tokens = {7, 5, 9};
  std::vector<Scored> high = {{0, 0, 0, 3, 2.0f}, {2, 1, 1, 8, 3.0f}, {1, 2, 0, 0, 1.0f}};
  for (int64_t budget : {1, 4, 9, 20}) {
    const auto n =
        EvenOverHeads(SpendByTokenScores(Scores(tokens, 3, 0.5f, high), 2, tokens, budget, 0));
    int64_t total = 0;
    for (size_t u = 0; u < n.size(); ++u) {
      for (int64_t x : n[u]) {
        EXPECT_GE(x, 0);
        EXPECT_LE(x, tokens[u]);
        total += x;
      }
    }
    EXPECT_LE(total, budget * 3) << "budget " << budget;
  }
  const auto whole =
      EvenOverHeads(SpendByTokenScores(Scores(tokens, 3, 0.5f, high), 2, tokens, 21, 0));
  EXPECT_THAT(whole[2], ElementsAre(9, 9, 9));
  EXPECT_TRUE(SpendByTokenScores({}, 2, {}, 5, -1).empty());
}

TEST(SpendByTokenScoresTest, EachHeadKeepsItsOwnCount) {
  const std::vector<int64_t> tokens = {10};
  std::vector<Scored> high;
  for (int i = 0; i < 8; ++i) high.push_back({0, 0, 1, i, 1.0f});  // head 1 reads 8 tokens
  const HeadCounts kept = SpendByTokenScores(Scores(tokens, 1, 0.0f, high), 2, tokens, 4, -1);
  EXPECT_THAT(kept[0][0], ElementsAre(0, 8));
  EXPECT_THAT(EvenOverHeads(kept)[0], ElementsAre(4));
}

}  // namespace
}  // namespace nexuskv::service

namespace nexuskv::service {
namespace {

TEST(PlanMergeRunsTest, TheBestEvictedTokensOfEveryTurnInHistoryOrderCutIntoRuns) {
  const std::vector<int64_t> tokens = {6, 6};
  // One layer. Head 0 keeps its 2 best tokens of turn 0 and 1 of turn 1; head 1 keeps none.
  std::vector<std::vector<std::vector<float>>> scores = {
      {{9, 1, 8, 5, 0, 4, /* head 1 */ 1, 1, 1, 1, 1, 1}},
      {{3, 7, 2, 6, 0, 0, /* head 1 */ 1, 1, 1, 1, 1, 1}}};
  const HeadCounts kept = {{{2, 0}}, {{1, 0}}};
  // Head 0 evicts 1, 3, 4, 5 of turn 0 (scores 1, 5, 0, 4) and 0, 2, 3, 4, 5 of turn 1 (3, 2, 6,
  // 0, 0); the 6 best of them (6, 5, 4, 3, 2, 1) in history order, in runs of 2: one run reaches
  // across the turn boundary.
  auto runs = PlanMergeRuns(scores, 2, tokens, kept, /*entries=*/3, /*run_length=*/2, -1);
  ASSERT_EQ(runs.size(), 1u);
  ASSERT_EQ(runs[0].size(), 2u);
  using R = MergeRun;
  EXPECT_THAT(runs[0][0], ElementsAre(R{{0, 1}, {0, 3}}, R{{0, 5}, {1, 0}}, R{{1, 2}, {1, 3}}));
  // Head 1 keeps nothing, and every score ties: the earliest 6 tokens, across the turn boundary.
  EXPECT_THAT(runs[0][1], ElementsAre(R{{0, 0}, {0, 1}}, R{{0, 2}, {0, 3}}, R{{0, 4}, {0, 5}}));
  // The sinks of turn 0 rank first, so they are the ones kept, and a head that evicts fewer
  // tokens than the runs would hold gets fewer, shorter runs.
  const HeadCounts most = {{{5, 6}}, {{6, 6}}};
  runs = PlanMergeRuns(scores, 2, tokens, most, 3, 2, /*sink_turn=*/0);
  EXPECT_THAT(runs[0][0], ElementsAre(R{{0, 4}}));
  EXPECT_TRUE(runs[0][1].empty());
  EXPECT_TRUE(PlanMergeRuns(scores, 2, tokens, kept, 0, 2, -1)[0][0].empty());
}

}  // namespace
}  // namespace nexuskv::service
