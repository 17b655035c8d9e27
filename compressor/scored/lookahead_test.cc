// Lookahead weights: the newest probes' attention mass over the whole compressed range, per kv
// head, split back into the turns.
#include "compressor/scored/lookahead.h"

#include <cmath>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tensor/dtype.h"

namespace nexuskv::compressor::scored {
namespace {

using ::testing::HasSubstr;

ScoredTurn Turn(int64_t tokens) { return {.num_tokens = tokens, .lookahead = {{}, {}}}; }

// Keys as a store holds them (float16: every value below is exact in it), one TurnKv per turn.
struct Stored {
  explicit Stored(const std::vector<std::vector<float>>& keys) {
    for (const std::vector<float>& k : keys) bytes.push_back(EncodeFromFloat(k, DType::kFloat16));
    for (const std::string& b : bytes) kv.push_back({.keys = b, .dtype = DType::kFloat16});
  }
  std::vector<std::string> bytes;
  std::vector<TurnKv> kv;
};

TEST(LookaheadTest, IsTheGroupsAttentionMassOverEveryTurnAtOnce) {
  // 2 kv heads, 4 query heads (groups of 2), D = 2, one probe row per query head; turns of 2 and
  // 3 tokens.
  std::vector<ScoredTurn> turns = {Turn(2), Turn(3)};
  const std::vector<std::vector<float>> keys = {{1, 0, 0, 1, /*head 1*/ 2, 0, 0, 0},
                                                {0, 0, 1, 1, -1, 0, /*head 1*/ 0, 2, 1, 1, 0, 0}};
  const std::vector<float> probes = {1, 0, 0, 1, /*group 1*/ 3, 0, 0, 3};
  const Stored stored(keys);
  ASSERT_TRUE(AddLookaheadLayer(1, probes, 4, stored.kv, 2, CpuCompute(), turns).ok());
  const float scale = 1.0f / std::sqrt(2.0f);
  for (int h = 0; h < 2; ++h) {
    // The head's keys over the range, in turn order.
    std::vector<std::vector<float>> range;
    for (int u = 0; u < 2; ++u) {
      const int t = static_cast<int>(turns[u].num_tokens);
      for (int i = 0; i < t; ++i) {
        range.push_back({keys[u][(h * t + i) * 2], keys[u][(h * t + i) * 2 + 1]});
      }
    }
    std::vector<double> want(5, 0.0);
    for (int r = 0; r < 2; ++r) {  // the group's two rows
      const float* q = &probes[(h * 2 + r) * 2];
      std::vector<double> e(5);
      double sum = 0.0;
      for (int j = 0; j < 5; ++j) {
        sum += e[j] = std::exp(scale * (q[0] * range[j][0] + q[1] * range[j][1]));
      }
      for (int j = 0; j < 5; ++j) want[j] += e[j] / sum;
    }
    for (int j = 0; j < 5; ++j) {
      const int u = j < 2 ? 0 : 1;
      const int i = u == 0 ? j : j - 2;
      const int t = static_cast<int>(turns[u].num_tokens);
      EXPECT_NEAR(turns[u].lookahead[1][h * t + i], want[j], 1e-5)
          << "head " << h << " token " << j;
    }
  }
  EXPECT_TRUE(turns[0].lookahead[0].empty()) << "only the layer asked for";
}

TEST(LookaheadTest, RefusesShapesThatDisagree) {
  std::vector<ScoredTurn> turns = {Turn(2)};
  const Stored keys({std::vector<float>(8, 0.0f)});  // H 2, T 2, D 2
  const std::vector<float> probes(8, 1.0f);
  EXPECT_TRUE(AddLookaheadLayer(0, probes, 4, keys.kv, 2, CpuCompute(), turns).ok());
  absl::Status bad = AddLookaheadLayer(2, probes, 4, keys.kv, 2, CpuCompute(), turns);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.message(), HasSubstr("lookahead layers"));
  EXPECT_FALSE(
      AddLookaheadLayer(0, std::vector<float>(7, 1.0f), 4, keys.kv, 2, CpuCompute(), turns).ok());
  EXPECT_FALSE(AddLookaheadLayer(0, probes, 3, keys.kv, 2, CpuCompute(), turns).ok())
      << "3 query heads for 2 kv heads";
  const Stored short_keys({std::vector<float>(6, 0.0f)});
  EXPECT_FALSE(AddLookaheadLayer(0, probes, 4, short_keys.kv, 2, CpuCompute(), turns).ok());
}

}  // namespace
}  // namespace nexuskv::compressor::scored
