// SONIC's rung-aware allocation: every turn lands on a servable size, the budget is never
// exceeded, raw only where the raw KV is stored, and recent / long / badly fitted turns get more.
#include "compressor/internal/sonic_allocate.h"

#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "compressor/compressor.h"
#include "compressor/internal/sonic_fit.h"
#include "compressor/internal/sonic_ladder.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nexuskv::compressor::internal {
namespace {

using ::testing::ElementsAre;

// A summary whose rung errors are `scale` * (1 - m/T).
std::string Summary(int t, double scale) {
  SonicSummary s;
  s.num_tokens = t;
  s.rungs = SonicRungSizes(t);
  for (int m : s.rungs) {
    const float e = static_cast<float>(scale * (1.0 - static_cast<double>(m) / t));
    s.errors.push_back({e, 0.0f});
  }
  return EncodeSonicSummary(s);
}

std::vector<int64_t> Allocate(const std::vector<TurnShape>& turns, int64_t budget) {
  return CompressorRegistry::Default().Find("SONIC")->Allocate(turns, budget);
}

TEST(SonicAllocateTest, OptionsAreZeroTheRungsAndRawWhenStored) {
  const std::string summary = Summary(20, 1.0);
  std::vector<int64_t> sizes;
  for (const LadderOption& o : TurnOptions({.num_tokens = 20, .fit_summary = summary})) {
    sizes.push_back(o.entries);
  }
  EXPECT_THAT(sizes, ElementsAre(0, 1, 2, 5, 20));
  sizes.clear();
  for (const LadderOption& o :
       TurnOptions({.num_tokens = 20, .raw_available = false, .fit_summary = summary})) {
    sizes.push_back(o.entries);
  }
  EXPECT_THAT(sizes, ElementsAre(0, 1, 2, 5));
  // A summary of another length is ignored: the sizes Fit would make, with the 1 - m/T model.
  const std::vector<LadderOption> fallback = TurnOptions({.num_tokens = 8, .fit_summary = summary});
  ASSERT_EQ(fallback.size(), 4u);  // 0, rungs 1 and 2, raw 8
  EXPECT_EQ(fallback[2].entries, 2);
  EXPECT_DOUBLE_EQ(fallback[2].error, 0.75);
}

TEST(SonicAllocateTest, AmpleBudgetServesEveryTurnRawOrAtItsTopRung) {
  std::vector<TurnShape> turns = {{.num_tokens = 30, .session_start = true},
                                  {.num_tokens = 12, .raw_available = false}};
  EXPECT_THAT(Allocate(turns, 1000), ElementsAre(30, 3));
  EXPECT_THAT(Allocate(turns, 0), ElementsAre(0, 0));
  EXPECT_THAT(Allocate(turns, -3), ElementsAre(0, 0));
  EXPECT_THAT(Allocate({}, 10), ElementsAre());
}

TEST(SonicAllocateTest, TinyBudgetGivesOneEntryToTheNewestTurnsFirst) {
  std::vector<TurnShape> turns(4, TurnShape{.num_tokens = 16});
  // Equal turns: recency decides.
  EXPECT_THAT(Allocate(turns, 1), ElementsAre(0, 0, 0, 1));
  EXPECT_THAT(Allocate(turns, 2), ElementsAre(0, 0, 1, 1));
  EXPECT_THAT(Allocate(turns, 4), ElementsAre(1, 1, 1, 1));
}

TEST(SonicAllocateTest, BadlyFittedTurnsGetMore) {
  const std::string easy = Summary(64, 0.1);
  const std::string hard = Summary(64, 1.0);
  std::vector<TurnShape> turns = {{.num_tokens = 64, .fit_summary = hard},
                                  {.num_tokens = 64, .fit_summary = easy}};
  std::vector<TurnShape> dropped = turns;
  for (TurnShape& t : dropped) t.raw_available = false;
  // The ladder allocation (SONIC's fallback when summaries do not fit) weighs the fit errors.
  const std::vector<int64_t> a = AllocateOnLadders(dropped, 20);
  EXPECT_GT(a[0], a[1]);
}

TEST(SonicAllocateTest, RandomSessionsNeverExceedTheBudgetAndLandOnOptions) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<std::string> summaries;
    std::vector<TurnShape> turns(1 + rng() % 10);
    summaries.reserve(turns.size());
    for (TurnShape& t : turns) {
      t.num_tokens = 1 + rng() % 300;
      t.raw_available = rng() % 3 != 0;
      summaries.push_back(
          rng() % 4 == 0 ? "" : Summary(static_cast<int>(t.num_tokens), 0.1 + (rng() % 10) / 10.0));
      t.fit_summary = summaries.back();
    }
    int64_t total = 0;
    for (const TurnShape& t : turns) total += t.num_tokens;
    const int64_t budget = rng() % (total + 20);
    const std::vector<int64_t> got = Allocate(turns, budget);
    ASSERT_EQ(got.size(), turns.size());
    EXPECT_LE(std::accumulate(got.begin(), got.end(), int64_t{0}), budget) << "trial " << trial;
    for (size_t i = 0; i < turns.size(); ++i) {
      // A rung (or 0, or raw), or with the raw KV stored anything from the smallest rung up.
      const std::vector<LadderOption> o = TurnOptions(turns[i]);
      bool valid = turns[i].raw_available && got[i] >= 1 && got[i] <= turns[i].num_tokens;
      for (const LadderOption& option : o) valid |= option.entries == got[i];
      EXPECT_TRUE(valid) << "trial " << trial << " turn " << i << " got " << got[i];
    }
    // With every raw KV stored and room for one entry per turn, the budget is spent exactly.
    bool all_raw = true;
    for (const TurnShape& t : turns) all_raw &= t.raw_available;
    if (all_raw && budget >= static_cast<int64_t>(turns.size())) {
      EXPECT_EQ(std::accumulate(got.begin(), got.end(), int64_t{0}), std::min(budget, total))
          << "trial " << trial;
    }
  }
}

TEST(SonicAllocateTest, SummariesThenRawNewestFirst) {
  std::vector<TurnShape> turns(3);
  for (size_t i = 0; i < 3; ++i) turns[i] = {.num_tokens = 10, .session_start = i == 0};
  // Budget 12 (keep 0.4), summary share 0.25: summaries take 10% of the budget, 1 entry per turn
  // (turn 0: 4, its sinks); the 6 left go to the newest turn.
  EXPECT_THAT(AllocateSonic(turns, 12, 0.25), ElementsAre(4, 1, 7));
  // Enough for the newest turn whole: the rest goes to the one before.
  EXPECT_THAT(AllocateSonic(turns, 18, 0.25), ElementsAre(4, 4, 10));
  // No summaries: recency alone.
  EXPECT_THAT(AllocateSonic(turns, 12, 0.0), ElementsAre(0, 2, 10));
  // Everything fits: every turn whole (raw).
  EXPECT_THAT(AllocateSonic(turns, 30, 0.25), ElementsAre(10, 10, 10));
  EXPECT_THAT(AllocateSonic(turns, 100, 0.25), ElementsAre(10, 10, 10));
  EXPECT_THAT(Allocate(turns, 30), ElementsAre(10, 10, 10)) << "the registry's SONIC";
}

TEST(SonicAllocateTest, TurnsWithoutRawLandOnRungsAndFallBackWhenSummariesDoNotFit) {
  const std::string summary = Summary(64, 1.0);
  std::vector<TurnShape> turns = {
      {.num_tokens = 64, .session_start = true, .raw_available = false, .fit_summary = summary},
      {.num_tokens = 64}};
  // Keep 40/128: summaries take 0.5 * 0.3125 of the budget, 3 entries each (the first turn 4,
  // its sinks: the dropped turn's rung 4); the raw turn gets its 3 plus the 33 left.
  EXPECT_THAT(AllocateSonic(turns, 40, 0.5), ElementsAre(4, 36));
  // The raw turn whole, then the dropped one climbs its ladder: 8 + 80 - 72 -> rung 16.
  EXPECT_THAT(AllocateSonic(turns, 88, 0.5), ElementsAre(16, 64));
  // A budget below the summaries: the ladder allocation decides.
  EXPECT_EQ(AllocateSonic(turns, 1, 0.5), AllocateOnLadders(turns, 1));
}

TEST(SonicAllocateTest, NeverExceedsTheBudgetAndSpendsItWhileRawTurnsHaveRoom) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 300; ++trial) {
    const size_t count = 1 + rng() % 8;
    std::vector<TurnShape> turns(count);
    std::vector<std::string> summaries(count);
    int64_t total = 0;
    for (size_t i = 0; i < count; ++i) {
      const int t = 1 + static_cast<int>(rng() % 200);
      summaries[i] = Summary(t, 1.0);
      turns[i] = {.num_tokens = t,
                  .session_start = i == 0,
                  .raw_available = rng() % 4 != 0,
                  .fit_summary = summaries[i]};
      total += t;
    }
    const int64_t budget = rng() % (total + 20);
    const std::vector<int64_t> got = AllocateSonic(turns, budget, 0.25);
    ASSERT_EQ(got.size(), count);
    const int64_t sum = std::accumulate(got.begin(), got.end(), int64_t{0});
    EXPECT_LE(sum, budget) << "trial " << trial;
    int64_t raw_room = 0;
    for (size_t i = 0; i < count; ++i) {
      EXPECT_GE(got[i], 0);
      EXPECT_LE(got[i], turns[i].num_tokens);
      if (turns[i].raw_available) {
        raw_room += turns[i].num_tokens - got[i];
      } else {
        bool rung = false;
        for (const LadderOption& o : TurnOptions(turns[i])) rung |= o.entries == got[i];
        EXPECT_TRUE(rung) << "trial " << trial << " turn " << i << " got " << got[i];
      }
    }
    if (sum < budget && raw_room > 0) {
      // Only the ladder fallback (summaries over budget) leaves budget while raw turns have room.
      EXPECT_EQ(got, AllocateOnLadders(turns, budget)) << "trial " << trial;
    }
  }
}

}  // namespace
}  // namespace nexuskv::compressor::internal
