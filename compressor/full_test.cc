#include "absl/status/status.h"
#include "compressor/compressor.h"
#include "compressor/internal/test_layer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nexuskv::compressor {
namespace {

using testing::StatusIs;
using testing::TestLayer;

const Compressor& Full() { return *CompressorRegistry::Default().Find("FULL"); }

TEST(FullTest, ReturnsEveryTokenUnchanged) {
  TestLayer layer = TestLayer::Random(2, 4, 9, 3, 2, 1);
  layer.first_position = 100;
  const absl::StatusOr<std::string> fit = Full().Fit(layer.view());
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_EQ(*fit, "");
  const absl::StatusOr<LayerEntries> all = Full().Materialize(layer.view(), *fit, 9);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->num_kv_heads, 2);
  EXPECT_EQ(all->head_dim, 3);
  EXPECT_EQ(all->num_entries, 9);
  EXPECT_EQ(all->keys, layer.keys);
  EXPECT_EQ(all->values, layer.values);
  EXPECT_TRUE(all->bias.empty());
  std::vector<int64_t> positions;
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 9; ++i) positions.push_back(100 + i);
  }
  EXPECT_EQ(all->positions, positions);
}

TEST(FullTest, RefusesAnyOtherCountAndAnyFit) {
  const TestLayer layer = TestLayer::Random(1, 1, 5, 2, 0, 2);
  EXPECT_THAT(Full().Materialize(layer.view(), "", 4),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Full().Materialize(layer.view(), "", 6),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Full().Materialize(layer.view(), "x", 5),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(FullTest, RefusesInconsistentViews) {
  TestLayer layer = TestLayer::Random(2, 4, 5, 2, 1, 3);
  layer.values.pop_back();
  EXPECT_THAT(Full().Fit(layer.view()), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Full().Materialize(layer.view(), "", 5),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace nexuskv::compressor
