// H2O through the registry: heavy hitters, recency, nesting, GQA and the proxy.
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
using testing::PlantHeavyHitter;
using testing::StatusIs;
using testing::TestLayer;

constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;

const Compressor& H2O() { return *CompressorRegistry::Default().Find("H2O"); }

LayerEntries FitAndKeep(const Compressor& method, const TestLayer& layer, int n) {
  const absl::StatusOr<std::string> fit = method.Fit(layer.view());
  EXPECT_TRUE(fit.ok()) << fit.status();
  absl::StatusOr<LayerEntries> kept = method.Materialize(layer.view(), fit.value_or(""), n);
  EXPECT_TRUE(kept.ok()) << kept.status();
  return kept.ok() ? *std::move(kept) : LayerEntries{};
}

TEST(H2OTest, OrderAlternatesRecentAndHeavy) {
  EXPECT_THAT(internal::H2OOrder(std::vector<float>{5, 1, 9, 0, 3}), ElementsAre(4, 2, 3, 0, 1));
  // The heaviest hitter is also the most recent: the next heavy one is taken instead.
  EXPECT_THAT(internal::H2OOrder(std::vector<float>{1, 2, 2, 7}), ElementsAre(3, 1, 2, 0));
  EXPECT_THAT(internal::H2OOrder(std::vector<float>{0}), ElementsAre(0));
}

TEST(H2OTest, KeepsAPlantedHeavyHitterAtSmallBudgets) {
  TestLayer layer = TestLayer::Random(2, 4, 64, 16, 8, 1);
  layer.first_position = 500;
  PlantHeavyHitter(layer, 0, 10, {0, 1});
  for (int n : {2, 3, 6}) {
    const LayerEntries kept = FitAndKeep(H2O(), layer, n);
    EXPECT_THAT(HeadPositions(kept, 0), Contains(510)) << "n=" << n;
    EXPECT_THAT(HeadPositions(kept, 0), Contains(563)) << "n=" << n;  // Most recent.
  }
  // Head 1 has no planted token: at n = 2 it keeps its last token and one other.
  EXPECT_THAT(HeadPositions(FitAndKeep(H2O(), layer, 2), 1), Contains(563));
}

TEST(H2OTest, KeepsATokenOnlyOneQueryHeadOfTheGroupSees) {
  TestLayer layer = TestLayer::Random(2, 8, 64, 16, 8, 2);  // g = 4.
  PlantHeavyHitter(layer, 1, 20, {5});                      // Query head 5 is in kv head 1's group.
  EXPECT_THAT(HeadPositions(FitAndKeep(H2O(), layer, 2), 1), Contains(20));
}

TEST(H2OTest, ProxyFindsAHeavyHitterWithoutProbes) {
  TestLayer layer = TestLayer::Random(1, 3, 64, 16, 0, 3);
  // The proxy queries are the last 16 keys: make them share a direction that token 7 matches.
  for (int i = 48; i < 64; ++i) layer.key(0, i)[0] += 3.0f;
  // Logit about 16 * 3 / 4 = 12, above each proxy query's attention to itself (about 6).
  for (int c = 0; c < 16; ++c) layer.key(0, 7)[c] = (c == 0 ? 16.0f : 0.0f);
  EXPECT_THAT(HeadPositions(FitAndKeep(H2O(), layer, 2), 0), Contains(7));
}

TEST(H2OTest, BudgetsAreNested) {
  const TestLayer layer = TestLayer::Random(3, 9, 50, 8, 6, 4);
  const absl::StatusOr<std::string> fit = H2O().Fit(layer.view());
  ASSERT_TRUE(fit.ok()) << fit.status();
  std::vector<std::set<int64_t>> previous(3);
  for (int n = 0; n <= 50; ++n) {
    const absl::StatusOr<LayerEntries> kept = H2O().Materialize(layer.view(), *fit, n);
    ASSERT_TRUE(kept.ok()) << kept.status();
    for (int h = 0; h < 3; ++h) {
      const std::set<int64_t> now = HeadPositions(*kept, h);
      ASSERT_EQ(now.size(), static_cast<size_t>(n));
      EXPECT_TRUE(std::includes(now.begin(), now.end(), previous[h].begin(), previous[h].end()))
          << "head " << h << " n=" << n;
      EXPECT_TRUE(
          std::is_sorted(kept->positions.begin() + h * n, kept->positions.begin() + (h + 1) * n));
      previous[h] = now;
    }
  }
}

TEST(H2OTest, HandlesTinyAndExtremeInputs) {
  for (int p : {0, 1}) {
    const LayerEntries one = FitAndKeep(H2O(), TestLayer::Random(2, 2, 1, 4, p, 5), 1);
    EXPECT_EQ(one.positions, (std::vector<int64_t>{0, 0}));
  }
  TestLayer huge = TestLayer::Random(2, 4, 40, 8, 4, 6);
  for (float& k : huge.keys) k *= 1e4f;
  const LayerEntries kept = FitAndKeep(H2O(), huge, 10);
  EXPECT_EQ(kept.num_entries, 10);
  for (float x : kept.keys) EXPECT_TRUE(std::isfinite(x));
  TestLayer same = TestLayer::Random(1, 1, 8, 4, 2, 7);
  std::fill(same.keys.begin(), same.keys.end(), 0.0f);
  // Exactly equal logits: tokens 0..6 tie (probe 0 cannot see token 7), and the tie goes to the
  // lower index after the most recent token.
  EXPECT_THAT(HeadPositions(FitAndKeep(H2O(), same, 2), 0), ElementsAre(0, 7));
}

TEST(H2OTest, ServesTurnsLongerThan65535Tokens) {
  TestLayer layer = TestLayer::Random(1, 1, 70000, 4, 2, 9);
  PlantHeavyHitter(layer, 0, 12345, {0});
  const LayerEntries kept = FitAndKeep(H2O(), layer, 2);
  EXPECT_THAT(HeadPositions(kept, 0), ElementsAre(12345, 69999));
}

TEST(H2OTest, RefusesBadViewsCountsAndForeignFits) {
  TestLayer layer = TestLayer::Random(2, 4, 10, 4, 2, 8);
  const absl::StatusOr<std::string> fit = H2O().Fit(layer.view());
  ASSERT_TRUE(fit.ok());
  EXPECT_THAT(H2O().Materialize(layer.view(), *fit, 11), StatusIs(kInvalid));
  EXPECT_THAT(H2O().Materialize(layer.view(), *fit, -1), StatusIs(kInvalid));
  EXPECT_THAT(H2O().Materialize(layer.view(), "", 3), StatusIs(kInvalid));
  const absl::StatusOr<std::string> snap =
      CompressorRegistry::Default().Find("SNAPKV")->Fit(layer.view());
  ASSERT_TRUE(snap.ok());
  EXPECT_THAT(H2O().Materialize(layer.view(), *snap, 3), StatusIs(kInvalid));

  TestLayer bad = layer;
  bad.num_query_heads = 3;  // Not a multiple of H.
  EXPECT_THAT(H2O().Fit(bad.view()), StatusIs(kInvalid));
  bad = layer;
  bad.num_probes = 11;  // More probes than tokens.
  EXPECT_THAT(H2O().Fit(bad.view()), StatusIs(kInvalid));
  bad = layer;
  bad.probes.resize(bad.probes.size() - 4);
  EXPECT_THAT(H2O().Fit(bad.view()), StatusIs(kInvalid));
  for (const std::vector<uint32_t>& offsets :
       std::vector<std::vector<uint32_t>>{{3}, {4, 4}, {9, 2}, {5, 10}}) {
    LayerView view = layer.view();  // 2 probes, 10 tokens
    view.probe_offsets = offsets;
    EXPECT_THAT(H2O().Fit(view), StatusIs(kInvalid)) << offsets.size() << " offsets";
  }
  bad = layer;
  bad.num_tokens = 0;
  bad.keys.clear();
  bad.values.clear();
  bad.num_probes = 0;
  bad.probes.clear();
  EXPECT_THAT(H2O().Fit(bad.view()), StatusIs(kInvalid));
  bad = layer;
  bad.num_kv_heads = 0;
  EXPECT_THAT(H2O().Fit(bad.view()), StatusIs(kInvalid));
  bad = layer;
  bad.keys.push_back(0.0f);
  EXPECT_THAT(H2O().Fit(bad.view()), StatusIs(kInvalid));
  bad = layer;
  bad.first_position = -1;
  EXPECT_THAT(H2O().Fit(bad.view()), StatusIs(kInvalid));
}

}  // namespace
}  // namespace nexuskv::compressor
