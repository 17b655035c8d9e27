// Scored selection: one ranking over the whole range, the sinks always kept, counts set by each
// (turn, layer)'s fullest head and filled by every head, or even; merged entries for the best
// evicted tokens; the budget held.
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

TEST(SelectionTest, EveryHeadFillsTheCountItsFullestHeadWants) {
  const std::vector<int64_t> tokens = {10, 10};
  std::vector<ScoredTurn> turns = Turns(tokens, 1, 2, 0.0f);
  for (int i = 0; i < 8; ++i) turns[1].scores[0][10 + i] = 1.0f + i;  // turn 1, head 1: 8 tokens
  turns[0].scores[0][3] = 0.5f;                                       // turn 0, head 0: one
  // Budget 4 per head: slots are worth the fullest head's score at each rank, 8 7 6 5 ... in turn
  // 1 and 0.5 0 ... in turn 0, so turn 1 holds 4 entries per head and turn 0 none. Head 1 keeps
  // its 4 best; head 0, which ties everywhere there, fills the same 4 slots with its first tokens.
  absl::StatusOr<Selection> s =
      Selection::Make(turns, 1, 2, {.budget = 4, .fill_heads = true, .bias = true});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->entries(0, 0), 0);
  EXPECT_EQ(s->entries(1, 0), 4);
  EXPECT_EQ(s->mean_entries(1), 4);
  const Kv kv = Identity(tokens, 2);
  const std::vector<LayerEntries> built = *s->BuildLayer(0, kv.spans, 1);
  EXPECT_EQ(built[0].num_entries, 0);
  const LayerEntries& e = built[1];
  EXPECT_THAT(Positions(e, 0), ElementsAre(10, 11, 12, 13));
  EXPECT_THAT(Positions(e, 1), ElementsAre(14, 15, 16, 17));
  EXPECT_THAT(e.bias, ElementsAre(0, 0, 0, 0, 0, 0, 0, 0)) << "no padding";
  EXPECT_EQ(e.keys[4 + 3], 117.0f);
  EXPECT_EQ(e.values[4 + 3], -117.0f);

  // Even: every head keeps the mean count of a per-token ranking (turn 1: 4 for head 1, 0 for
  // head 0, and turn 0's one token; means rounded down), each its own best.
  absl::StatusOr<Selection> even = Selection::Make(turns, 1, 2, {.budget = 4, .bias = true});
  ASSERT_TRUE(even.ok());
  EXPECT_EQ(even->entries(0, 0), 0);
  EXPECT_EQ(even->entries(1, 0), 4);
}

TEST(SelectionTest, MergedEntriesStandForTheBestEvictedTokensOfEveryTurnInHistoryOrder) {
  const std::vector<int64_t> tokens = {6, 6};
  std::vector<ScoredTurn> turns = Turns(tokens, 1, 2, 1.0f);  // head 1: every score ties
  turns[0].scores[0] = {9, 1, 8, 5, 0, 4, 1, 1, 1, 1, 1, 1};
  turns[1].scores[0] = {3, 7, 2, 6, 0, 0, 1, 1, 1, 1, 1, 1};
  // Budget 4: 3 merged entries (share 0.75) and 1 slot. A first pass keeps token 0 of turn 0 in
  // both heads, but its runs end in different turns for the two heads (turn 0 holds 1 + 2 entries
  // for head 1, turn 1 two for head 0): 5 held, one over. The second pass gives the slot up: every
  // token is evicted, and each head's 6 best in history order make 3 runs of 2 (head 0: 9 8 | 5 4
  // of turn 0 | 7 6 of turn 1; head 1, all tied: its first 6, all in turn 0). Held: 3 + 1.
  absl::StatusOr<Selection> s = Selection::Make(
      turns, 1, 2,
      {.budget = 4, .fill_heads = true, .bias = true, .merge_share = 0.75, .run_length = 2});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->entries(0, 0), 3);
  EXPECT_EQ(s->entries(1, 0), 1);
  EXPECT_EQ(s->Held(), 4);
  const Kv kv = Identity(tokens, 2);
  const std::vector<LayerEntries> built = *s->BuildLayer(0, kv.spans, 1);
  const LayerEntries& t0 = built[0];
  EXPECT_THAT(Positions(t0, 0), ElementsAre(-1, 2, 5));  // padding first
  EXPECT_THAT(Positions(t0, 1), ElementsAre(1, 3, 5));
  EXPECT_EQ(t0.bias[0], -kInf);
  EXPECT_EQ(t0.keys[0], 0.0f);
  EXPECT_FLOAT_EQ(t0.keys[1], (9 * 0.0f + 8 * 2.0f) / 17);
  EXPECT_FLOAT_EQ(t0.keys[2], (5 * 3.0f + 4 * 5.0f) / 9);
  EXPECT_FLOAT_EQ(t0.values[2], -t0.keys[2]);
  EXPECT_THAT(std::vector<float>(t0.keys.begin() + 3, t0.keys.end()),
              ElementsAre(10.5f, 12.5f, 14.5f));
  for (int k = 1; k < 6; ++k) EXPECT_FLOAT_EQ(t0.bias[k], std::log(2.0f));
  const LayerEntries& t1 = built[1];
  EXPECT_THAT(Positions(t1, 0), ElementsAre(9));
  EXPECT_FLOAT_EQ(t1.keys[0], (7 * 101.0f + 6 * 103.0f) / 13);
  EXPECT_THAT(Positions(t1, 1), ElementsAre(-1));
  EXPECT_EQ(t1.bias[1], -kInf);
}

TEST(SelectionTest, ARunReachingBackReadsTheEarlierTurnThatHoldsNothing) {
  const std::vector<int64_t> tokens = {4, 4};
  std::vector<ScoredTurn> turns = Turns(tokens, 1, 1, 0.0f);
  turns[1].scores[0] = {5, 6, 7, 8};
  // 1 merged entry of run 8 over the 7 evicted tokens ... its last token is in turn 1.
  absl::StatusOr<Selection> s = Selection::Make(
      turns, 1, 1,
      {.budget = 2, .fill_heads = true, .bias = true, .merge_share = 0.5, .run_length = 8});
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

// The kept set against a reference built by sorting: every (turn, layer) slot ranked by its
// fullest head's priority at that rank (ties in scan order), the top budget * layers slots giving
// each (turn, layer) its count, every head keeping its best that many (ties to the earlier
// token); on random scores with ties. The entries held stay within the budget.
TEST(SelectionTest, KeepsExactlyWhatASortOfTheSlotsKeeps) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> level(0, 6);
  const std::vector<int64_t> tokens = {9, 3, 12};
  const int layers = 3, heads = 2;
  const auto priority = [](const ScoredTurn& t, int l, int h, int64_t i) {
    return t.session_start && i < kSinkTokens ? 3e38f : t.scores[l][h * t.num_tokens + i];
  };
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<ScoredTurn> turns = Turns(tokens, layers, heads, 0.0f, trial % 2 == 0);
    for (ScoredTurn& t : turns) {
      for (auto& layer : t.scores) {
        for (float& x : layer) x = 0.5f * level(rng);
      }
    }
    std::vector<std::tuple<float, int, size_t, int>> slots;  // (-value, scan, u, l)
    int scan = 0;
    for (size_t u = 0; u < tokens.size(); ++u) {
      for (int l = 0; l < layers; ++l) {
        std::vector<float> fullest(tokens[u], -kInf);
        for (int h = 0; h < heads; ++h) {
          std::vector<float> p;
          for (int64_t i = 0; i < tokens[u]; ++i) p.push_back(priority(turns[u], l, h, i));
          std::sort(p.begin(), p.end(), std::greater<float>());
          for (int64_t e = 0; e < tokens[u]; ++e) fullest[e] = std::max(fullest[e], p[e]);
        }
        for (float v : fullest) slots.push_back({-v, scan++, u, l});
      }
    }
    std::sort(slots.begin(), slots.end());
    for (int64_t budget : {1, 5, 11, 23, 24}) {
      absl::StatusOr<Selection> s = Selection::Make(
          turns, layers, heads, {.budget = budget, .fill_heads = true, .bias = true});
      ASSERT_TRUE(s.ok()) << s.status();
      std::vector<std::vector<int64_t>> count(tokens.size(), std::vector<int64_t>(layers, 0));
      const size_t take = std::min<size_t>(slots.size(), budget * layers);
      for (size_t j = 0; j < take; ++j) ++count[std::get<2>(slots[j])][std::get<3>(slots[j])];
      std::vector<std::tuple<size_t, int, int, int64_t>> want, got;
      int64_t held = 0;
      for (size_t u = 0; u < tokens.size(); ++u) {
        for (int l = 0; l < layers; ++l) {
          held += s->entries(u, l);
          for (int h = 0; h < heads; ++h) {
            std::vector<std::pair<float, int64_t>> order;  // (-priority, token)
            for (int64_t i = 0; i < tokens[u]; ++i)
              order.push_back({-priority(turns[u], l, h, i), i});
            std::sort(order.begin(), order.end());
            for (int64_t j = 0; j < count[u][l]; ++j) {
              want.push_back({u, l, h, turns[u].first_position + order[j].second});
            }
          }
        }
      }
      EXPECT_LE(held, budget * layers) << "trial " << trial << " budget " << budget;
      for (int l = 0; l < layers; ++l) {
        const Kv kv = Identity(tokens, heads);
        const std::vector<LayerEntries> built = *s->BuildLayer(l, kv.spans, 1);
        for (size_t u = 0; u < tokens.size(); ++u) {
          for (int h = 0; h < heads; ++h) {
            for (int64_t position : Positions(built[u], h)) {
              EXPECT_GE(position, 0) << "a filled selection pads nothing";
              got.push_back({u, l, h, position});
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

// Merged entries and their padding included, a biased selection holds at most the budget (entries
// per kv head, summed over turns, averaged over layers).
TEST(SelectionTest, ABiasedSelectionHoldsTheBudget) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> score(0.0f, 1.0f);
  const std::vector<int64_t> tokens = {40, 7, 25, 31};
  const int layers = 4, heads = 3;
  for (int trial = 0; trial < 10; ++trial) {
    std::vector<ScoredTurn> turns = Turns(tokens, layers, heads, 0.0f, true);
    for (ScoredTurn& t : turns) {
      for (auto& layer : t.scores) {
        for (float& x : layer) x = std::pow(score(rng), 1.0f + 4.0f * (trial % 3));
      }
    }
    for (int64_t budget : {3, 10, 20, 51, 102, 103}) {
      absl::StatusOr<Selection> s =
          Selection::Make(turns, layers, heads,
                          {.budget = budget, .fill_heads = true, .bias = true, .merge_share = 0.1});
      ASSERT_TRUE(s.ok()) << s.status();
      int64_t held = 0, built = 0;
      for (size_t u = 0; u < tokens.size(); ++u) {
        for (int l = 0; l < layers; ++l) held += s->entries(u, l);
      }
      EXPECT_EQ(held, s->Held());
      EXPECT_LE(held, std::min<int64_t>(budget, 103) * layers) << "budget " << budget;
      for (int l = 0; l < layers; ++l) {
        const Kv kv = Identity(tokens, heads);
        const absl::StatusOr<std::vector<LayerEntries>> entries = s->BuildLayer(l, kv.spans, 1);
        ASSERT_TRUE(entries.ok()) << entries.status();
        for (const LayerEntries& e : *entries) built += e.num_entries;
      }
      EXPECT_EQ(built, held) << "what the layers carry, padding included";
    }
  }
}

TEST(SelectionTest, TheLookaheadPinsItsShareOfTheBudgetAheadOfEveryScore) {
  const std::vector<int64_t> tokens = {10, 10};
  std::vector<ScoredTurn> turns = Turns(tokens, 1, 2, 0.0f, /*session_start=*/true);
  // The scores want turn 1's first tokens; the lookahead reads token 6 of turn 0 in head 0 and
  // token 9 of turn 1 in head 1, and the sinks most of all (they are kept anyway, not pinned).
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 10; ++i) turns[1].scores[0][h * 10 + i] = 10.0f - i;
  }
  for (ScoredTurn& t : turns) t.lookahead = {std::vector<float>(20, 0.0f)};
  for (int i = 0; i < kSinkTokens; ++i) turns[0].lookahead[0][i] = 9.0f;
  turns[0].lookahead[0][6] = 1.0f;
  turns[1].lookahead[0][10 + 9] = 1.0f;
  // Budget 10 per head, 10% pinned: one token per head before any score. (An even selection,
  // bias-free, may lose a pin to the mean count of its (turn, layer), as it may a high score.)
  absl::StatusOr<Selection> s = Selection::Make(
      turns, 1, 2, {.budget = 10, .fill_heads = true, .bias = true, .lookahead_share = 0.1});
  ASSERT_TRUE(s.ok()) << s.status();
  const Kv kv = Identity(tokens, 2);
  const std::vector<LayerEntries> built = *s->BuildLayer(0, kv.spans, 1);
  for (int h = 0; h < 2; ++h) {
    std::vector<int64_t> held = Positions(built[0], h);
    const std::vector<int64_t> later = Positions(built[1], h);
    held.insert(held.end(), later.begin(), later.end());
    EXPECT_THAT(held, ::testing::IsSupersetOf({0, 1, 2, 3})) << "sinks";
    EXPECT_THAT(held, ::testing::Contains(h == 0 ? 6 : 19)) << "pinned, head " << h;
    EXPECT_THAT(held, ::testing::Contains(10)) << "the best score, head " << h;
  }
  EXPECT_LE(s->Held(), 10) << "pins come out of the budget";
  // Without the share the scores alone decide: token 6 (score 0) is not kept.
  absl::StatusOr<Selection> plain =
      Selection::Make(turns, 1, 2, {.budget = 10, .fill_heads = true, .bias = true});
  ASSERT_TRUE(plain.ok());
  EXPECT_THAT(Positions((*plain->BuildLayer(0, kv.spans, 1))[0], 0),
              ::testing::Not(::testing::Contains(6)));
}

TEST(SelectionTest, RefusesLookaheadOfTheWrongShapeOrShare) {
  std::vector<ScoredTurn> turns = Turns({4, 4}, 1, 2, 1.0f);
  turns[0].lookahead = {std::vector<float>(8, 1.0f)};  // turn 1 has none
  absl::StatusOr<Selection> bad = Selection::Make(turns, 1, 2, {.budget = 2});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("lookahead"));
  turns[1].lookahead = {std::vector<float>(7, 1.0f)};
  EXPECT_FALSE(Selection::Make(turns, 1, 2, {.budget = 2}).ok());
  turns[1].lookahead = {std::vector<float>(8, 1.0f)};
  EXPECT_TRUE(Selection::Make(turns, 1, 2, {.budget = 2, .lookahead_share = 0.5}).ok());
  EXPECT_FALSE(Selection::Make(turns, 1, 2, {.budget = 2, .lookahead_share = 1.5}).ok());
}

TEST(SelectionTest, RefusesScoresOfTheWrongShapeAndLayersOfTheWrongSize) {
  std::vector<ScoredTurn> turns = Turns({4}, 2, 2, 1.0f);
  turns[0].scores[1].pop_back();
  absl::StatusOr<Selection> bad = Selection::Make(turns, 2, 2, {.budget = 2});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("turn 0 of 4 tokens"));
  EXPECT_FALSE(
      Selection::Make(Turns({4}, 2, 2, 1.0f), 2, 2, {.budget = 2, .fill_heads = true}).ok())
      << "merged entries need a bias";
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
