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

TEST(SonicAllocateTest, TinyBudgetGivesOneEntryToTheMostValuableTurnsFirst) {
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
  const std::vector<int64_t> a = Allocate(dropped, 20);
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

}  // namespace
}  // namespace nexuskv::compressor::internal
