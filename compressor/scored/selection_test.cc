// Scored selection: one ranking over every (layer, kv head, token), the sinks always kept, heads
// padded or even, merged entries for the best evicted tokens.
#include "compressor/scored/selection.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tensor/dtype.h"

namespace nexuskv::compressor::scored {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr float kInf = std::numeric_limits<float>::infinity();

// Turns of `tokens[u]` tokens, `layers` layers, `heads` heads, every score `base`.
std::vector<ScoredTurn> Turns(const std::vector<int64_t>& tokens, int layers, int heads, float base,
                              bool session_start = false) {
  std::vector<ScoredTurn> out;
  int64_t position = 0;
  for (size_t u = 0; u < tokens.size(); ++u) {
    out.push_back({.num_tokens = tokens[u],
                   .first_position = position,
                   .session_start = session_start && u == 0,
                   .scores = std::vector<std::vector<float>>(
                       layers, std::vector<float>(heads * tokens[u], base))});
    position += tokens[u];
  }
  return out;
}

// Raw KV of one layer where token (u, h, i) has key 100 u + 10 h + i and value minus that (D = 1).
struct Kv {
  std::vector<std::vector<float>> keys, values;
  std::vector<std::string> key_bytes, value_bytes;  // as stored, float32
  std::vector<TurnKv> spans;
  void Encode() {
    key_bytes.clear();
    value_bytes.clear();
    spans.clear();
    for (size_t u = 0; u < keys.size(); ++u) {
      key_bytes.push_back(EncodeFromFloat(keys[u], DType::kFloat32));
      value_bytes.push_back(EncodeFromFloat(values[u], DType::kFloat32));
    }
    for (size_t u = 0; u < keys.size(); ++u) {
      spans.push_back({key_bytes[u], value_bytes[u], DType::kFloat32});
    }
  }
};
Kv Identity(const std::vector<int64_t>& tokens, int heads) {
  Kv kv;
  for (size_t u = 0; u < tokens.size(); ++u) {
    std::vector<float>& k = kv.keys.emplace_back();
    std::vector<float>& v = kv.values.emplace_back();
    for (int h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < tokens[u]; ++i) {
        k.push_back(100.0f * u + 10.0f * h + i);
        v.push_back(-k.back());
      }
    }
  }
  kv.Encode();
  return kv;
}

std::vector<int64_t> Positions(const LayerEntries& e, int h) {
  return {e.positions.begin() + h * e.num_entries, e.positions.begin() + (h + 1) * e.num_entries};
}

TEST(SelectionTest, TheBudgetGoesWhereTheScoresAreWhateverLayerOrTurn) {
  const std::vector<int64_t> tokens = {10, 10};
  std::vector<ScoredTurn> turns = Turns(tokens, 2, 2, 0.0f);
  // Layer 1 of turn 1 holds every high score (6 per head).
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 6; ++i) turns[1].scores[1][h * 10 + i] = 1.0f + i;
  }
  // 3 per head per layer over 2 layers = 12 per head: all 12 high ones.
  absl::StatusOr<Selection> s = Selection::Make(turns, 2, 2, {.budget = 3});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->entries(0, 0), 0);
  EXPECT_EQ(s->entries(0, 1), 0);
  EXPECT_EQ(s->entries(1, 0), 0);
  EXPECT_EQ(s->entries(1, 1), 6);
  EXPECT_EQ(s->mean_entries(1), 3);
  EXPECT_FALSE(s->ReadsLayer(1, 0));
  EXPECT_TRUE(s->ReadsLayer(1, 1));
}

TEST(SelectionTest, TheSessionsFirstTokensAreAlwaysKept) {
  const std::vector<int64_t> tokens = {8, 8};
  std::vector<ScoredTurn> turns = Turns(tokens, 1, 2, 0.0f, /*session_start=*/true);
  for (float& x : turns[1].scores[0]) x = 5.0f;
  // 8 per head in all: the 4 sinks of turn 0, then 4 of the 8 high ones (the earliest).
  absl::StatusOr<Selection> s = Selection::Make(turns, 1, 2, {.budget = 8});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->entries(0, 0), kSinkTokens);
  EXPECT_EQ(s->entries(1, 0), 4);
  const Kv kv = Identity(tokens, 2);
  absl::StatusOr<std::vector<LayerEntries>> built = s->BuildLayer(0, kv.spans, 1);
  ASSERT_TRUE(built.ok()) << built.status();
  EXPECT_THAT(Positions((*built)[0], 1), ElementsAre(0, 1, 2, 3));
  EXPECT_THAT(Positions((*built)[1], 0), ElementsAre(8, 9, 10, 11));
  EXPECT_TRUE((*built)[0].bias.empty()) << "no bias asked for";
}

TEST(SelectionTest, EachHeadKeepsItsOwnCountPaddedToTheFullestHead) {
  const std::vector<int64_t> tokens = {10};
  std::vector<ScoredTurn> turns = Turns(tokens, 1, 2, 0.0f);
  for (int i = 0; i < 8; ++i) turns[0].scores[0][10 + i] = 1.0f + i;  // head 1 reads 8 tokens
  absl::StatusOr<Selection> padded =
      Selection::Make(turns, 1, 2, {.budget = 4, .pad_heads = true, .bias = true});
  ASSERT_TRUE(padded.ok()) << padded.status();
  EXPECT_EQ(padded->entries(0, 0), 8);
  EXPECT_EQ(padded->mean_entries(0), 4);
  const Kv kv = Identity(tokens, 2);
  std::vector<LayerEntries> built = *padded->BuildLayer(0, kv.spans, 1);
  const LayerEntries& e = built[0];
  EXPECT_THAT(Positions(e, 0), ElementsAre(-1, -1, -1, -1, -1, -1, -1, -1));
  EXPECT_THAT(Positions(e, 1), ElementsAre(0, 1, 2, 3, 4, 5, 6, 7));
  EXPECT_EQ(e.bias[0], -kInf);
  EXPECT_EQ(e.bias[8], 0.0f);
  EXPECT_EQ(e.keys[0], 0.0f);
  EXPECT_EQ(e.keys[8 + 3], 13.0f);
  EXPECT_EQ(e.values[8 + 3], -13.0f);

  // Even: every head keeps the layer's mean (4), each its own best; head 0 ties everywhere and
  // keeps its first 4.
  absl::StatusOr<Selection> even = Selection::Make(turns, 1, 2, {.budget = 4, .bias = true});
  ASSERT_TRUE(even.ok());
  EXPECT_EQ(even->entries(0, 0), 4);
  built = *even->BuildLayer(0, kv.spans, 1);
  EXPECT_THAT(Positions(built[0], 0), ElementsAre(0, 1, 2, 3));
  EXPECT_THAT(Positions(built[0], 1), ElementsAre(4, 5, 6, 7));
  EXPECT_THAT(built[0].bias, ElementsAre(0, 0, 0, 0, 0, 0, 0, 0));
}

TEST(SelectionTest, MergedEntriesStandForTheBestEvictedTokensOfEveryTurnInHistoryOrder) {
  const std::vector<int64_t> tokens = {6, 6};
  std::vector<ScoredTurn> turns = Turns(tokens, 1, 2, 1.0f);  // head 1: every score ties
  turns[0].scores[0] = {9, 1, 8, 5, 0, 4, 1, 1, 1, 1, 1, 1};
  turns[1].scores[0] = {3, 7, 2, 6, 0, 0, 1, 1, 1, 1, 1, 1};
  // Budget 4: 3 merged entries (share 0.75), 1 per head spent by score: head 0 keeps tokens 0 and
  // 2 of turn 0 (9 and 8), head 1 none. Head 0 evicts 1, 3, 4, 5 of turn 0 and all of turn 1; the
  // 6 best of them (7, 6, 5, 4, 3, 2) in history order, in runs of 2, one run per turn boundary.
  absl::StatusOr<Selection> s = Selection::Make(
      turns, 1, 2,
      {.budget = 4, .pad_heads = true, .bias = true, .merge_share = 0.75, .run_length = 2});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->entries(0, 0), 3);  // head 0: 2 kept + 1 run; head 1: 3 runs
  EXPECT_EQ(s->entries(1, 0), 2);  // head 0: 2 runs; head 1: padding
  const Kv kv = Identity(tokens, 2);
  const std::vector<LayerEntries> built = *s->BuildLayer(0, kv.spans, 1);
  const LayerEntries& t0 = built[0];
  EXPECT_THAT(Positions(t0, 0), ElementsAre(0, 2, 5));
  EXPECT_THAT(t0.keys, ElementsAre(0.0f, 2.0f, (5 * 3.0f + 4 * 5.0f) / 9,  // head 0
                                   10.5f, 12.5f, 14.5f));                  // head 1: even means
  EXPECT_THAT(t0.values[2], -t0.keys[2]);
  EXPECT_FLOAT_EQ(t0.bias[2], std::log(2.0f));
  EXPECT_EQ(t0.bias[0], 0.0f);
  EXPECT_THAT(Positions(t0, 1), ElementsAre(1, 3, 5));
  const LayerEntries& t1 = built[1];
  EXPECT_THAT(Positions(t1, 0), ElementsAre(7, 9));
  EXPECT_FLOAT_EQ(t1.keys[0], (3 * 100.0f + 7 * 101.0f) / 10);
  EXPECT_FLOAT_EQ(t1.keys[1], (2 * 102.0f + 6 * 103.0f) / 8);
  EXPECT_THAT(Positions(t1, 1), ElementsAre(-1, -1));
  EXPECT_EQ(t1.bias[2], -kInf);
}

TEST(SelectionTest, ARunReachingBackReadsTheEarlierTurnThatHoldsNothing) {
  const std::vector<int64_t> tokens = {4, 4};
  std::vector<ScoredTurn> turns = Turns(tokens, 1, 1, 0.0f);
  turns[1].scores[0] = {5, 6, 7, 8};
  // 1 merged entry of run 8 over the 7 evicted tokens ... its last token is in turn 1.
  absl::StatusOr<Selection> s = Selection::Make(
      turns, 1, 1,
      {.budget = 2, .pad_heads = true, .bias = true, .merge_share = 0.5, .run_length = 8});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->entries(0, 0), 0);
  EXPECT_TRUE(s->ReadsLayer(0, 0)) << "turn 0's tokens are in turn 1's merged entry";
  const Kv kv = Identity(tokens, 1);
  const std::vector<LayerEntries> built = *s->BuildLayer(0, kv.spans, 1);
  EXPECT_EQ(built[0].num_entries, 0);
  // Turn 1 keeps token 3 (score 8) and merges the other 7 (weights: 0 for turn 0, 5, 6, 7).
  EXPECT_THAT(Positions(built[1], 0), ElementsAre(6, 7));
  EXPECT_FLOAT_EQ(built[1].keys[0], (5 * 100.0f + 6 * 101.0f + 7 * 102.0f) / 18);
  EXPECT_FLOAT_EQ(built[1].bias[0], std::log(7.0f));
}

// The kept set against a full sort of every (priority, scan order) on random scores with ties.
TEST(SelectionTest, KeepsExactlyWhatAFullSortKeeps) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> level(0, 6);
  const std::vector<int64_t> tokens = {9, 3, 12};
  const int layers = 3, heads = 2;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<ScoredTurn> turns = Turns(tokens, layers, heads, 0.0f, trial % 2 == 0);
    std::vector<std::tuple<float, int, size_t, int, int, int64_t>> all;  // (-p, scan, u, l, h, i)
    int scan = 0;
    for (size_t u = 0; u < tokens.size(); ++u) {
      for (int l = 0; l < layers; ++l) {
        for (int h = 0; h < heads; ++h) {
          for (int64_t i = 0; i < tokens[u]; ++i) {
            float& x = turns[u].scores[l][h * tokens[u] + i];
            x = 0.5f * level(rng);
            const bool sink = turns[u].session_start && i < kSinkTokens;
            all.push_back({sink ? -3e38f : -x, scan++, u, l, h, i});
          }
        }
      }
    }
    std::sort(all.begin(), all.end());
    for (int64_t budget : {1, 5, 11, 23, 24}) {
      absl::StatusOr<Selection> s = Selection::Make(
          turns, layers, heads, {.budget = budget, .pad_heads = true, .bias = true});
      ASSERT_TRUE(s.ok()) << s.status();
      std::vector<std::tuple<size_t, int, int, int64_t>> want, got;
      const size_t take = std::min<size_t>(all.size(), budget * heads * layers);
      for (size_t j = 0; j < take; ++j) {
        const auto& [p, order, u, l, h, i] = all[j];
        want.push_back({u, l, h, turns[u].first_position + i});
      }
      for (int l = 0; l < layers; ++l) {
        const Kv kv = Identity(tokens, heads);
        const std::vector<LayerEntries> built = *s->BuildLayer(l, kv.spans, 1);
        for (size_t u = 0; u < tokens.size(); ++u) {
          for (int h = 0; h < heads; ++h) {
            for (int64_t position : Positions(built[u], h)) {
              if (position >= 0) got.push_back({u, l, h, position});
            }
          }
        }
      }
      std::sort(want.begin(), want.end());
      std::sort(got.begin(), got.end());
      EXPECT_EQ(got, want) << "trial " << trial << " budget " << budget;
    }
  }
}

TEST(SelectionTest, RefusesScoresOfTheWrongShapeAndLayersOfTheWrongSize) {
  std::vector<ScoredTurn> turns = Turns({4}, 2, 2, 1.0f);
  turns[0].scores[1].pop_back();
  absl::StatusOr<Selection> bad = Selection::Make(turns, 2, 2, {.budget = 2});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("turn 0 of 4 tokens"));
  EXPECT_FALSE(Selection::Make(Turns({4}, 2, 2, 1.0f), 2, 2, {.budget = 2, .pad_heads = true}).ok())
      << "padding needs a bias";
  absl::StatusOr<Selection> s = Selection::Make(Turns({4}, 2, 2, 1.0f), 2, 2, {.budget = 2});
  ASSERT_TRUE(s.ok());
  Kv kv = Identity({4}, 2);
  kv.keys[0].pop_back();
  kv.Encode();
  EXPECT_EQ(s->BuildLayer(0, kv.spans, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s->BuildLayer(2, kv.spans, 1).status().code(), absl::StatusCode::kInvalidArgument);
  // Nothing to spend, or everything.
  EXPECT_EQ(Selection::Make(Turns({4}, 1, 1, 1.0f), 1, 1, {.budget = 0})->entries(0, 0), 0);
  EXPECT_EQ(Selection::Make(Turns({4}, 1, 1, 1.0f), 1, 1, {.budget = 99})->entries(0, 0), 4);
  EXPECT_EQ(Selection::Make({}, 1, 1, {.budget = 3})->num_turns(), 0u);
}

}  // namespace
}  // namespace nexuskv::compressor::scored
