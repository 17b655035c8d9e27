// StreamingLLM through the registry: sinks, recent window and its session-wide Allocate.
#include "compressor/compressor.h"
#include "compressor/internal/methods.h"
#include "compressor/internal/test_layer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nexuskv::compressor {
namespace {

using ::testing::ElementsAre;
using testing::StatusIs;
using testing::TestLayer;

const Compressor& Streaming() { return *CompressorRegistry::Default().Find("STREAMING_LLM"); }

std::vector<int64_t> Allocate(std::vector<TurnShape> turns, int64_t budget) {
  return Streaming().Allocate(turns, budget);
}

TEST(StreamingLlmTest, OrderIsSinksThenMostRecent) {
  EXPECT_THAT(internal::StreamingLlmOrder(7, true), ElementsAre(0, 1, 2, 3, 6, 5, 4));
  EXPECT_THAT(internal::StreamingLlmOrder(3, true), ElementsAre(0, 1, 2));
  EXPECT_THAT(internal::StreamingLlmOrder(4, false), ElementsAre(3, 2, 1, 0));
}

TEST(StreamingLlmTest, SessionStartKeepsSinksAndTheLastTokens) {
  TestLayer layer = TestLayer::Random(2, 2, 20, 3, 0, 1);
  layer.session_start = true;
  layer.first_position = 0;
  const absl::StatusOr<std::string> fit = Streaming().Fit(layer.view());
  ASSERT_TRUE(fit.ok());
  EXPECT_EQ(*fit, "");
  const absl::StatusOr<LayerEntries> kept = Streaming().Materialize(layer.view(), "", 7);
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_THAT(kept->positions, ElementsAre(0, 1, 2, 3, 17, 18, 19, 0, 1, 2, 3, 17, 18, 19));
  // Head 1's row 4 is token 17.
  EXPECT_EQ(kept->keys[(7 + 4) * 3 + 2], layer.keys[(20 + 17) * 3 + 2]);
  EXPECT_EQ(kept->values[(7 + 4) * 3], layer.values[(20 + 17) * 3]);
  EXPECT_TRUE(kept->bias.empty());
  const absl::StatusOr<LayerEntries> two = Streaming().Materialize(layer.view(), "", 2);
  ASSERT_TRUE(two.ok());
  EXPECT_THAT(two->positions, ElementsAre(0, 1, 0, 1));
}

TEST(StreamingLlmTest, LaterTurnsKeepTheirLastTokens) {
  TestLayer layer = TestLayer::Random(1, 1, 10, 2, 0, 2);
  layer.first_position = 40;
  const absl::StatusOr<LayerEntries> kept = Streaming().Materialize(layer.view(), "", 3);
  ASSERT_TRUE(kept.ok());
  EXPECT_THAT(kept->positions, ElementsAre(47, 48, 49));
  EXPECT_THAT(Streaming().Materialize(layer.view(), "", 11),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Streaming().Materialize(layer.view(), "fit", 3),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(StreamingLlmTest, AllocateGivesSinksThenFillsFromTheLastTurnBackwards) {
  const std::vector<TurnShape> turns = {{10, true}, {8, false}, {6, false}};
  EXPECT_THAT(Allocate(turns, 0), ElementsAre(0, 0, 0));
  EXPECT_THAT(Allocate(turns, 3), ElementsAre(3, 0, 0));
  EXPECT_THAT(Allocate(turns, 7), ElementsAre(4, 0, 3));
  EXPECT_THAT(Allocate(turns, 12), ElementsAre(4, 2, 6));
  EXPECT_THAT(Allocate(turns, 18), ElementsAre(4, 8, 6));
  EXPECT_THAT(Allocate(turns, 20), ElementsAre(6, 8, 6));
  EXPECT_THAT(Allocate(turns, 100), ElementsAre(10, 8, 6));
  EXPECT_THAT(Allocate(turns, -1), ElementsAre(0, 0, 0));
  // Without a session-start turn (a range starting later): a pure recent window.
  EXPECT_THAT(Allocate({{10, false}, {8, false}, {6, false}}, 12), ElementsAre(0, 6, 6));
  // A session-start turn shorter than the sinks.
  EXPECT_THAT(Allocate({{2, true}, {8, false}}, 5), ElementsAre(2, 3));
  EXPECT_THAT(Allocate({}, 5), ElementsAre());
}

}  // namespace
}  // namespace nexuskv::compressor
