// Merged entries: one run's weights and weighted means.
#include "compressor/scored/merged_run.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace nexuskv::compressor::scored {
namespace {

TEST(MergedRunTest, ScoreWeightedMeansAndTheLogOfTheCount) {
  const std::vector<double> w = MergeWeights(std::vector<float>{3.0f, 1.0f, -2.0f});
  EXPECT_EQ(w, (std::vector<double>{3.0, 1.0, 0.0})) << "a score below 0 weighs nothing";
  MergedRun run(2);
  run.Add(std::vector<float>{1.0f, 0.0f}, std::vector<float>{2.0f, 4.0f}, w[0]);
  run.Add(std::vector<float>{0.0f, 1.0f}, std::vector<float>{6.0f, 0.0f}, w[1]);
  run.Add(std::vector<float>{9.0f, 9.0f}, std::vector<float>{9.0f, 9.0f}, w[2]);
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
  const std::vector<double> even = MergeWeights(std::vector<float>{0.0f, NAN});
  EXPECT_EQ(even, (std::vector<double>{1.0, 1.0}));
  EXPECT_EQ(MergeWeights(std::vector<float>{3e38f, 3e38f}), (std::vector<double>{3e38f, 3e38f}))
      << "finite in double";
  MergedRun zero(1);
  zero.Add(std::vector<float>{1.0f}, std::vector<float>{-1.0f}, even[0]);
  zero.Add(std::vector<float>{3.0f}, std::vector<float>{-3.0f}, even[1]);
  std::vector<float> key(1), value(1);
  float bias = 0.0f;
  zero.Finish(key, value, &bias);
  EXPECT_FLOAT_EQ(key[0], 2.0f);
  EXPECT_FLOAT_EQ(value[0], -2.0f);
  EXPECT_FLOAT_EQ(bias, std::log(2.0f));

  MergedRun huge(1);
  huge.Add(std::vector<float>{3e38f}, std::vector<float>{-3e38f}, 3e38);
  huge.Add(std::vector<float>{3e38f}, std::vector<float>{-3e38f}, 3e38);
  huge.Finish(key, value, &bias);
  EXPECT_TRUE(std::isfinite(key[0]) && std::isfinite(value[0]));
  EXPECT_FLOAT_EQ(key[0], 3e38f);
}

}  // namespace
}  // namespace nexuskv::compressor::scored
