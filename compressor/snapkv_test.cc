// SnapKV through the registry: window and pooled prefix scores alternating, nesting, GQA and the
// proxy.
#include <algorithm>
#include <cmath>

#include "compressor/compressor.h"
#include "compressor/internal/methods.h"
#include "compressor/internal/test_layer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nexuskv::compressor {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using testing::HeadPositions;
using ::testing::IsSupersetOf;
using testing::PlantHeavyHitter;
using ::testing::Pointwise;
using testing::StatusIs;
using testing::TestLayer;

const Compressor& SnapKv() { return *CompressorRegistry::Default().Find("SNAPKV"); }

LayerEntries FitAndKeep(const TestLayer& layer, int n) {
  const absl::StatusOr<std::string> fit = SnapKv().Fit(layer.view());
  EXPECT_TRUE(fit.ok()) << fit.status();
  absl::StatusOr<LayerEntries> kept = SnapKv().Materialize(layer.view(), fit.value_or(""), n);
  EXPECT_TRUE(kept.ok()) << kept.status();
  return kept.ok() ? *std::move(kept) : LayerEntries{};
}

std::set<int64_t> Range(int64_t first, int64_t last) {
  std::set<int64_t> out;
  for (int64_t i = first; i <= last; ++i) out.insert(i);
  return out;
}

TEST(SnapKvTest, AveragePoolMatchesAvgPool1dWithCountedPadding) {
  EXPECT_THAT(internal::AveragePool(std::vector<float>{0, 0, 5, 0, 0, 0, 0}),
              Pointwise(::testing::FloatEq(), std::vector<float>{1, 1, 1, 1, 1, 0, 0}));
  EXPECT_THAT(internal::AveragePool(std::vector<float>{5, 0, 0, 10}),
              Pointwise(::testing::FloatEq(), std::vector<float>{1, 3, 3, 2}));
  EXPECT_TRUE(internal::AveragePool(std::vector<float>{}).empty());
}

TEST(SnapKvTest, OrderAlternatesWindowAndPooledPrefix) {
  EXPECT_THAT(internal::SnapKvOrder(std::vector<float>{1, 3, 3, 0}, 2),
              ElementsAre(5, 1, 4, 2, 0, 3));
  EXPECT_THAT(internal::SnapKvOrder(std::vector<float>{}, 3), ElementsAre(2, 1, 0));
  EXPECT_THAT(internal::SnapKvOrder(std::vector<float>{0, 2, 1}, 1), ElementsAre(3, 1, 2, 0));
  // The session's first turn: its sinks first, even when the whole turn is window.
  EXPECT_THAT(internal::SnapKvOrder(std::vector<float>{}, 6, 4), ElementsAre(0, 1, 2, 3, 5, 4));
  EXPECT_THAT(internal::SnapKvOrder(std::vector<float>{1, 3, 3, 0, 5, 0}, 2, 2),
              ElementsAre(0, 1, 7, 4, 6, 2, 3, 5));
}

TEST(SnapKvTest, KeepsTheRecentWindowAndAPlantedTokenWithItsNeighbours) {
  TestLayer layer = TestLayer::Random(2, 4, 64, 16, 8, 1);
  layer.first_position = 1000;
  PlantHeavyHitter(layer, 0, 20, {0, 1});
  // The newest token, then a token of the planted neighbourhood (pooling gives all five about
  // the same score).
  const std::set<int64_t> two = HeadPositions(FitAndKeep(layer, 2), 0);
  EXPECT_THAT(two, Contains(1063));
  EXPECT_EQ(std::count_if(two.begin(), two.end(), [](int64_t p) { return p >= 1018 && p <= 1022; }),
            1);
  // Ten: the five newest window tokens and the whole neighbourhood pooling spread the score over.
  std::set<int64_t> want = Range(1059, 1063);
  want.merge(Range(1018, 1022));
  EXPECT_EQ(HeadPositions(FitAndKeep(layer, 10), 0), want);
  // Beyond twice the window: the whole window.
  EXPECT_THAT(HeadPositions(FitAndKeep(layer, 16), 0), IsSupersetOf(Range(1056, 1063)));
}

TEST(SnapKvTest, KeepsATokenOnlyOneQueryHeadOfTheGroupSees) {
  TestLayer layer = TestLayer::Random(2, 8, 64, 16, 8, 2);  // g = 4.
  PlantHeavyHitter(layer, 1, 30, {5});
  EXPECT_THAT(HeadPositions(FitAndKeep(layer, 8 + 5), 1), Contains(30));
}

TEST(SnapKvTest, ProxyWindowIsTheLastSixteenTokens) {
  TestLayer layer = TestLayer::Random(1, 3, 64, 16, 0, 3);
  for (int i = 48; i < 64; ++i) layer.key(0, i)[0] += 3.0f;
  for (int c = 0; c < 16; ++c) layer.key(0, 7)[c] = (c == 0 ? 16.0f : 0.0f);
  // Window tokens come from the last sixteen, newest first; the planted key's neighbourhood
  // leads the prefix.
  const std::set<int64_t> ten = HeadPositions(FitAndKeep(layer, 10), 0);
  EXPECT_THAT(ten, IsSupersetOf(Range(59, 63)));
  EXPECT_THAT(ten, Contains(7));
  EXPECT_THAT(HeadPositions(FitAndKeep(layer, 32), 0), IsSupersetOf(Range(48, 63)));
  // Shorter than the proxy window: everything is window, most recent first.
  EXPECT_EQ(HeadPositions(FitAndKeep(TestLayer::Random(1, 1, 5, 4, 0, 4), 2), 0), Range(3, 4));
}

TEST(SnapKvTest, AllProbesMeansAllWindow) {
  EXPECT_EQ(HeadPositions(FitAndKeep(TestLayer::Random(2, 2, 10, 4, 10, 5), 3), 1), Range(7, 9));
  EXPECT_EQ(HeadPositions(FitAndKeep(TestLayer::Random(1, 1, 1, 4, 1, 6), 1), 0), Range(0, 0));
}

TEST(SnapKvTest, BudgetsAreNested) {
  const TestLayer layer = TestLayer::Random(3, 6, 45, 8, 5, 7);
  const absl::StatusOr<std::string> fit = SnapKv().Fit(layer.view());
  ASSERT_TRUE(fit.ok()) << fit.status();
  std::vector<std::set<int64_t>> previous(3);
  for (int n = 0; n <= 45; ++n) {
    const absl::StatusOr<LayerEntries> kept = SnapKv().Materialize(layer.view(), *fit, n);
    ASSERT_TRUE(kept.ok()) << kept.status();
    for (int h = 0; h < 3; ++h) {
      const std::set<int64_t> now = HeadPositions(*kept, h);
      ASSERT_EQ(now.size(), static_cast<size_t>(n));
      EXPECT_TRUE(std::includes(now.begin(), now.end(), previous[h].begin(), previous[h].end()))
          << "head " << h << " n=" << n;
      previous[h] = now;
    }
  }
}

TEST(SnapKvTest, HugeAndDuplicateKeysStayFinite) {
  TestLayer layer = TestLayer::Random(2, 4, 40, 8, 4, 8);
  for (float& k : layer.keys) k *= 1e4f;
  for (int i = 1; i < 10; ++i) std::copy(layer.key(1, 0), layer.key(1, 0) + 8, layer.key(1, i));
  const LayerEntries kept = FitAndKeep(layer, 12);
  ASSERT_EQ(kept.num_entries, 12);
  for (float x : kept.keys) EXPECT_TRUE(std::isfinite(x));
  for (float x : kept.values) EXPECT_TRUE(std::isfinite(x));
}

TEST(SnapKvTest, RefusesAForeignFit) {
  const TestLayer layer = TestLayer::Random(2, 4, 10, 4, 2, 9);
  const absl::StatusOr<std::string> h2o =
      CompressorRegistry::Default().Find("H2O")->Fit(layer.view());
  ASSERT_TRUE(h2o.ok());
  EXPECT_THAT(SnapKv().Materialize(layer.view(), *h2o, 3),
              StatusIs(absl::StatusCode::kInvalidArgument));
  const TestLayer other = TestLayer::Random(3, 6, 10, 4, 2, 9);
  const absl::StatusOr<std::string> fit = SnapKv().Fit(other.view());
  ASSERT_TRUE(fit.ok());
  EXPECT_THAT(SnapKv().Materialize(layer.view(), *fit, 3),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace nexuskv::compressor
