// Merged entries: the order a scored answer keeps tokens in, and one run's weighted means.
#include "compressor/merge.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "compressor/compressor.h"
#include "gtest/gtest.h"

namespace nexuskv::compressor {
namespace {

TEST(RankByTokenScoresTest, SinksFirstThenHighestScoreTiesToTheLowerOffset) {
  const std::vector<float> scores = {0.0f, 0.1f, 0.0f, 0.0f, 0.5f, 0.2f, 0.5f, 0.9f};
  EXPECT_EQ(RankByTokenScores(scores, /*session_start=*/true),
            (std::vector<uint32_t>{0, 1, 2, 3, 7, 4, 6, 5}));
  EXPECT_EQ(RankByTokenScores(scores, /*session_start=*/false),
            (std::vector<uint32_t>{7, 4, 6, 5, 1, 0, 2, 3}));
  EXPECT_TRUE(RankByTokenScores({}, true).empty());
}

TEST(EvictedByTokenScoresTest, IsWhatRankByTokenScoresLeavesOutInOffsetOrder) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> level(0, 5);  // many ties
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<float> scores(37);
    for (float& s : scores) s = 0.1f * level(rng);
    const bool sinks = trial % 2 == 0;
    const std::vector<uint32_t> order = RankByTokenScores(scores, sinks);
    for (int64_t n : {0, 1, 4, 20, 36, 37, 40}) {
      std::vector<uint32_t> expected(order.begin() + std::min<int64_t>(n, 37), order.end());
      std::sort(expected.begin(), expected.end());
      EXPECT_EQ(EvictedByTokenScores(scores, sinks, n), expected)
          << "trial " << trial << " n " << n;
    }
  }
}

TEST(MergedRunTest, ScoreWeightedMeansAndTheLogOfTheCount) {
  MergedRun run(2);
  run.Add(std::vector<float>{1.0f, 0.0f}, std::vector<float>{2.0f, 4.0f}, 3.0f);
  run.Add(std::vector<float>{0.0f, 1.0f}, std::vector<float>{6.0f, 0.0f}, 1.0f);
  run.Add(std::vector<float>{9.0f, 9.0f}, std::vector<float>{9.0f, 9.0f}, 0.0f);  // no weight
  EXPECT_EQ(run.count(), 3);
  std::vector<float> key(2), value(2);
  float bias = 0.0f;
  run.Finish(key, value, &bias);
  EXPECT_FLOAT_EQ(key[0], 0.75f);
  EXPECT_FLOAT_EQ(key[1], 0.25f);
  EXPECT_FLOAT_EQ(value[0], 3.0f);
  EXPECT_FLOAT_EQ(value[1], 3.0f);
  EXPECT_FLOAT_EQ(bias, std::log(3.0f)) << "the entry carries the mass of 3 tokens";
}

TEST(MergedRunTest, RunsWithoutWeightAreEvenMeansAndNothingOverflows) {
  MergedRun zero(1);
  zero.Add(std::vector<float>{1.0f}, std::vector<float>{-1.0f}, 0.0f);
  zero.Add(std::vector<float>{3.0f}, std::vector<float>{-3.0f}, NAN);
  std::vector<float> key(1), value(1);
  float bias = 0.0f;
  zero.Finish(key, value, &bias);
  EXPECT_FLOAT_EQ(key[0], 2.0f);
  EXPECT_FLOAT_EQ(value[0], -2.0f);
  EXPECT_FLOAT_EQ(bias, std::log(2.0f));

  MergedRun huge(1);
  huge.Add(std::vector<float>{3e38f}, std::vector<float>{-3e38f}, 3e38f);
  huge.Add(std::vector<float>{3e38f}, std::vector<float>{-3e38f}, 3e38f);
  huge.Finish(key, value, &bias);
  EXPECT_TRUE(std::isfinite(key[0]) && std::isfinite(value[0]));
  EXPECT_FLOAT_EQ(key[0], 3e38f);
}

}  // namespace
}  // namespace nexuskv::compressor
