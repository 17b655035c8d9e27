// The shared ranking fit: encoding, refusal of foreign or corrupt fits, and the gather.
#include "compressor/internal/ranking.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "compressor/internal/test_layer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nexuskv::compressor::internal {
namespace {

using ::testing::ElementsAre;
using testing::StatusIs;
using testing::TestLayer;

constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;

std::vector<uint32_t> RandomOrder(int h, int t, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint32_t> order(static_cast<size_t>(h) * t);
  for (int head = 0; head < h; ++head) {
    auto first = order.begin() + static_cast<size_t>(head) * t;
    std::iota(first, first + t, 0u);
    std::shuffle(first, first + t, rng);
  }
  return order;
}

TEST(RankingTest, RoundTripsWithShortIndices) {
  const std::vector<uint32_t> order = RandomOrder(3, 50, 1);
  const std::string fit = EncodeRanking(RankingTag::kH2O, 3, 50, order);
  EXPECT_EQ(fit.size(), kRankingHeaderBytes + 3 * 50 * 2);
  const absl::StatusOr<std::vector<uint32_t>> decoded = DecodeRanking(RankingTag::kH2O, fit, 3, 50);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, order);
}

TEST(RankingTest, UsesWideIndicesAbove65535Tokens) {
  EXPECT_EQ(EncodeRanking(RankingTag::kH2O, 1, 65535, RandomOrder(1, 65535, 2)).size(),
            kRankingHeaderBytes + 65535 * 2);
  const std::vector<uint32_t> order = RandomOrder(1, 70000, 3);
  const std::string fit = EncodeRanking(RankingTag::kSnapKV, 1, 70000, order);
  EXPECT_EQ(fit.size(), kRankingHeaderBytes + 70000 * 4);
  const absl::StatusOr<std::vector<uint32_t>> decoded =
      DecodeRanking(RankingTag::kSnapKV, fit, 1, 70000);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, order);
}

TEST(RankingTest, RefusesFitsOfTheWrongShapeOrMethod) {
  const std::string fit = EncodeRanking(RankingTag::kH2O, 2, 10, RandomOrder(2, 10, 4));
  EXPECT_THAT(DecodeRanking(RankingTag::kH2O, fit, 3, 10), StatusIs(kInvalid));
  EXPECT_THAT(DecodeRanking(RankingTag::kH2O, fit, 2, 11), StatusIs(kInvalid));
  EXPECT_THAT(DecodeRanking(RankingTag::kH2O, fit, 1, 20), StatusIs(kInvalid));
  EXPECT_THAT(DecodeRanking(RankingTag::kSnapKV, fit, 2, 10), StatusIs(kInvalid));
  EXPECT_THAT(DecodeRanking(RankingTag::kH2O, fit.substr(0, fit.size() - 1), 2, 10),
              StatusIs(kInvalid));
  EXPECT_THAT(DecodeRanking(RankingTag::kH2O, fit + "xx", 2, 10), StatusIs(kInvalid));
  EXPECT_THAT(DecodeRanking(RankingTag::kH2O, "", 2, 10), StatusIs(kInvalid));
  std::string bad_magic = fit;
  bad_magic[0] = 'X';
  EXPECT_THAT(DecodeRanking(RankingTag::kH2O, bad_magic, 2, 10), StatusIs(kInvalid));
  std::string bad_width = fit;
  bad_width[3] = 4;
  EXPECT_THAT(DecodeRanking(RankingTag::kH2O, bad_width, 2, 10), StatusIs(kInvalid));
}

TEST(RankingTest, RefusesRowsThatAreNotPermutations) {
  std::vector<uint32_t> duplicate = RandomOrder(2, 10, 5);
  duplicate[15] = duplicate[12];  // Head 1 lists a token twice.
  EXPECT_THAT(
      DecodeRanking(RankingTag::kH2O, EncodeRanking(RankingTag::kH2O, 2, 10, duplicate), 2, 10),
      StatusIs(kInvalid));
  std::vector<uint32_t> out_of_range = RandomOrder(2, 10, 6);
  out_of_range[3] = 10;
  EXPECT_THAT(
      DecodeRanking(RankingTag::kH2O, EncodeRanking(RankingTag::kH2O, 2, 10, out_of_range), 2, 10),
      StatusIs(kInvalid));
}

TEST(RankingTest, MaterializeGathersExactlyTheFirstNOfEachHead) {
  TestLayer layer = TestLayer::Random(3, 6, 40, 5, 4, 7);
  layer.first_position = 1000;
  const std::vector<uint32_t> order = RandomOrder(3, 40, 8);
  const std::string fit = EncodeRanking(RankingTag::kH2O, 3, 40, order);
  for (int n : {0, 1, 7, 39, 40}) {
    const absl::StatusOr<LayerEntries> got =
        MaterializeRanking(RankingTag::kH2O, layer.view(), fit, n);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->num_entries, n);
    EXPECT_TRUE(got->bias.empty());
    // Naive gather: for each head, its first n ranked tokens in ascending order.
    std::vector<float> keys, values;
    std::vector<int64_t> positions;
    for (int h = 0; h < 3; ++h) {
      std::vector<uint32_t> kept(order.begin() + h * 40, order.begin() + h * 40 + n);
      std::sort(kept.begin(), kept.end());
      for (uint32_t i : kept) {
        for (int c = 0; c < 5; ++c) {
          keys.push_back(layer.keys[(h * 40 + i) * 5 + c]);
          values.push_back(layer.values[(h * 40 + i) * 5 + c]);
        }
        positions.push_back(1000 + i);
      }
    }
    EXPECT_EQ(got->keys, keys) << "n=" << n;
    EXPECT_EQ(got->values, values) << "n=" << n;
    EXPECT_EQ(got->positions, positions) << "n=" << n;
  }
}

TEST(RankingTest, MaterializeRefusesBadCountsAndForeignFits) {
  const TestLayer layer = TestLayer::Random(2, 2, 10, 4, 0, 9);
  const std::string fit = EncodeRanking(RankingTag::kH2O, 2, 10, RandomOrder(2, 10, 10));
  EXPECT_THAT(MaterializeRanking(RankingTag::kH2O, layer.view(), fit, -1), StatusIs(kInvalid));
  EXPECT_THAT(MaterializeRanking(RankingTag::kH2O, layer.view(), fit, 11), StatusIs(kInvalid));
  const TestLayer longer = TestLayer::Random(2, 2, 12, 4, 0, 11);
  EXPECT_THAT(MaterializeRanking(RankingTag::kH2O, longer.view(), fit, 3), StatusIs(kInvalid));
  EXPECT_THAT(MaterializeRanking(RankingTag::kSnapKV, layer.view(), fit, 3), StatusIs(kInvalid));
}

TEST(RankingTest, AppendByScoreBreaksTiesByIndexAndPutsNanLast) {
  std::vector<uint32_t> out = {99};
  const float nan = std::nanf("");
  AppendByScore(std::vector<float>{1.0f, 3.0f, nan, 3.0f, 0.5f, 1.0f}, 10, &out);
  EXPECT_THAT(out, ElementsAre(99, 11, 13, 10, 15, 14, 12));
}

}  // namespace
}  // namespace nexuskv::compressor::internal
