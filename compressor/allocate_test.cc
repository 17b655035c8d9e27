// The registry and the default Allocate (proportional, largest remainder, ties to the later turn).
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "compressor/compressor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nexuskv::compressor {
namespace {

using ::testing::ElementsAre;
using ::testing::IsNull;
using ::testing::NotNull;

std::vector<int64_t> DefaultAllocate(std::vector<int64_t> tokens, int64_t budget) {
  std::vector<TurnShape> turns;
  for (int64_t t : tokens) turns.push_back({t, turns.empty()});
  // H2O does not override Allocate, so it runs the default.
  return CompressorRegistry::Default().Find("H2O")->Allocate(turns, budget);
}

TEST(RegistryTest, DefaultHoldsTheBaselinesThenSonic) {
  const CompressorRegistry& registry = CompressorRegistry::Default();
  EXPECT_THAT(registry.names(), ElementsAre("FULL", "STREAMING_LLM", "H2O", "SNAPKV", "SONIC"));
  for (std::string_view name : registry.names()) {
    const Compressor* method = registry.Find(name);
    ASSERT_THAT(method, NotNull());
    EXPECT_EQ(method->name(), name);
  }
  EXPECT_FALSE(registry.Find("FULL")->capabilities().fits);
  EXPECT_FALSE(registry.Find("STREAMING_LLM")->capabilities().fits);
  EXPECT_TRUE(registry.Find("H2O")->capabilities().fits);
  EXPECT_TRUE(registry.Find("SNAPKV")->capabilities().fits);
  EXPECT_THAT(registry.Find("h2o"), IsNull());
  const Capabilities sonic = registry.Find("SONIC")->capabilities();
  EXPECT_TRUE(sonic.fits && sonic.serves_without_raw && sonic.bias && sonic.lookahead &&
              sonic.prefers_token_scores);
  EXPECT_FALSE(registry.Find("H2O")->capabilities().serves_without_raw);
  // The service names no method: it asks the registry.
  EXPECT_EQ(registry.Fallback(), registry.Find("STREAMING_LLM"));
  EXPECT_EQ(registry.ServesWithoutRaw(), registry.Find("SONIC"));
  EXPECT_EQ(&registry, &CompressorRegistry::Default());
}

TEST(DefaultAllocateTest, ExactProportions) {
  EXPECT_THAT(DefaultAllocate({10, 20, 30}, 30), ElementsAre(5, 10, 15));
}

TEST(DefaultAllocateTest, LargestRemainderGetsTheLeftover) {
  // Quotas 1.67, 3.33, 5.00: floors 1, 3, 5 and the one left goes to the largest remainder (0.67).
  EXPECT_THAT(DefaultAllocate({10, 20, 30}, 10), ElementsAre(2, 3, 5));
  // Quotas 0.6, 1.2, 2.4, 3.6, 4.2 (sum 12): floors 0,1,2,3,4 = 10; remainders .6 .2 .4 .6 .2;
  // the two .6 get one each.
  EXPECT_THAT(DefaultAllocate({2, 4, 8, 12, 14}, 12), ElementsAre(1, 1, 2, 4, 4));
}

TEST(DefaultAllocateTest, TiesGoToTheLaterTurn) {
  EXPECT_THAT(DefaultAllocate({5, 5}, 3), ElementsAre(1, 2));
  EXPECT_THAT(DefaultAllocate({1, 1, 1}, 2), ElementsAre(0, 1, 1));
  EXPECT_THAT(DefaultAllocate({1, 1, 1}, 1), ElementsAre(0, 0, 1));
}

TEST(DefaultAllocateTest, CapsAtEachTurnAndAtTheTotal) {
  EXPECT_THAT(DefaultAllocate({3, 7}, 100), ElementsAre(3, 7));
  EXPECT_THAT(DefaultAllocate({3, 7}, 10), ElementsAre(3, 7));
  EXPECT_THAT(DefaultAllocate({1, 1000}, 999), ElementsAre(1, 998));
}

TEST(DefaultAllocateTest, EmptyZeroAndNegative) {
  EXPECT_THAT(DefaultAllocate({}, 10), ElementsAre());
  EXPECT_THAT(DefaultAllocate({4, 6}, 0), ElementsAre(0, 0));
  EXPECT_THAT(DefaultAllocate({4, 6}, -5), ElementsAre(0, 0));
  EXPECT_THAT(DefaultAllocate({0, 6, 0}, 3), ElementsAre(0, 3, 0));
  EXPECT_THAT(DefaultAllocate({0, 0}, 3), ElementsAre(0, 0));
}

TEST(DefaultAllocateTest, RandomCasesSumCapAndStayWithinOneOfTheQuota) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<int64_t> tokens(1 + rng() % 8);
    for (int64_t& t : tokens) t = rng() % 300;
    const int64_t total = std::accumulate(tokens.begin(), tokens.end(), int64_t{0});
    const int64_t budget = rng() % (total + 50);
    const std::vector<int64_t> got = DefaultAllocate(tokens, budget);
    ASSERT_EQ(got.size(), tokens.size());
    EXPECT_EQ(std::accumulate(got.begin(), got.end(), int64_t{0}), std::min(budget, total))
        << "trial " << trial;
    for (size_t i = 0; i < tokens.size(); ++i) {
      EXPECT_GE(got[i], 0);
      EXPECT_LE(got[i], tokens[i]) << "trial " << trial << " turn " << i;
      if (total > 0) {
        const double quota = static_cast<double>(std::min(budget, total)) * tokens[i] / total;
        EXPECT_LT(std::abs(got[i] - quota), 1.0) << "trial " << trial << " turn " << i;
      }
    }
  }
}

}  // namespace
}  // namespace nexuskv::compressor
