// The stored SONIC formats: ladder and summary round trips, and refusal of anything else.
#include "compressor/internal/sonic_ladder.h"

#include <string>
#include <vector>

#include "compressor/internal/test_layer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nexuskv::compressor::internal {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::StatusIs;

SonicLadder TwoRungLadder(DType dtype) {
  SonicLadder l;
  l.num_kv_heads = 2;
  l.num_tokens = 5;
  l.head_dim = 2;
  l.dtype = dtype;
  l.num_nexus = 1;
  l.probe_rows = 7;
  l.rungs = {2, 1};
  l.errors = {{0.1f, 0.2f}, {0.3f, 0.4f}, {0.5f, 0.6f}, {0.7f, 0.8f}};
  l.fold = {1, 2, 3, 4};
  l.token_mass = {0.5f, 1, 2, 0, 0.25f, 1, 1, 1, 1, 1};
  l.sets.resize(2);
  for (int k = 0; k < 2; ++k) {
    for (int h = 0; h < 2; ++h) {
      NexusSet s;
      const int m = l.rungs[k];
      for (int j = 0; j < m; ++j) {
        s.offsets.push_back(static_cast<uint32_t>(j * 2 + h));
        s.bias.push_back(-0.5f * j + h);
        s.keys.insert(s.keys.end(), {1.0f * k + j, -2.0f * h});
        s.values.insert(s.values.end(), {0.25f * j, 8.0f + h});
      }
      s.assignment = {0, 1, kNotMerged, static_cast<uint32_t>(m - 1), 0};
      l.sets[k].push_back(std::move(s));
    }
  }
  return l;
}

TEST(SonicLadderTest, RoundTripsEveryRungAndTheFold) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    const SonicLadder ladder = TwoRungLadder(dtype);
    const std::string fit = EncodeSonicLadder(ladder);
    absl::StatusOr<SonicLadderIndex> index = IndexSonicLadder(fit);
    ASSERT_TRUE(index.ok()) << index.status();
    EXPECT_EQ(index->dtype, dtype);
    EXPECT_THAT(index->rungs, ElementsAre(2, 1));
    EXPECT_EQ(index->num_nexus, 1u);
    EXPECT_EQ(index->probe_rows, 7u);
    EXPECT_FLOAT_EQ(index->errors[3].log_mass_error, 0.8f);
    EXPECT_THAT(DecodeSonicFold(fit, *index), ElementsAre(1, 2, 3, 4));
    EXPECT_EQ(DecodeSonicTokenMass(fit, *index), ladder.token_mass);
    EXPECT_EQ(index->assignment_width, 2);
    for (int k = 0; k < 2; ++k) {
      const std::vector<NexusSet> sets = DecodeSonicRung(fit, *index, k);
      for (int h = 0; h < 2; ++h) {
        // Every value above is exact in float16 and bfloat16.
        EXPECT_EQ(sets[h].offsets, ladder.sets[k][h].offsets);
        EXPECT_EQ(sets[h].bias, ladder.sets[k][h].bias);
        EXPECT_EQ(sets[h].keys, ladder.sets[k][h].keys);
        EXPECT_EQ(sets[h].values, ladder.sets[k][h].values);
        EXPECT_EQ(sets[h].assignment, ladder.sets[k][h].assignment);
      }
    }
  }
}

TEST(SonicLadderTest, RefusesCorruptOrForeignBytes) {
  const std::string fit = EncodeSonicLadder(TwoRungLadder(DType::kFloat16));
  EXPECT_THAT(IndexSonicLadder(""), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(IndexSonicLadder(fit.substr(0, fit.size() - 1)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(IndexSonicLadder(fit + "x"), StatusIs(absl::StatusCode::kInvalidArgument));
  std::string version = fit;
  version[2] = 2;
  EXPECT_THAT(IndexSonicLadder(version).status().message(), HasSubstr("version 2"));
  std::string dtype = fit;
  dtype[3] = 9;
  EXPECT_THAT(IndexSonicLadder(dtype), StatusIs(absl::StatusCode::kInvalidArgument));
  std::string order = fit;
  order[kSonicHeaderBytes] = 1;  // rung 0 of size 1, then rung 1 of size 1: not descending
  EXPECT_THAT(IndexSonicLadder(order).status().message(), HasSubstr("strictly descending"));
  std::string ranking = fit;
  ranking[1] = 'R';
  EXPECT_THAT(IndexSonicLadder(ranking), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(SonicLadderTest, SummaryRoundTripsAndRefusesGarbage) {
  SonicSummary s{.num_tokens = 40, .rungs = {20, 10}, .errors = {{0.1f, 0.2f}, {0.3f, 0.4f}}};
  absl::StatusOr<SonicSummary> back = DecodeSonicSummary(EncodeSonicSummary(s));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->num_tokens, 40);
  EXPECT_THAT(back->rungs, ElementsAre(20, 10));
  EXPECT_FLOAT_EQ(back->errors[1].log_mass_error, 0.4f);
  EXPECT_THAT(DecodeSonicSummary("NY"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(DecodeSonicSummary(EncodeSonicSummary(s) + "z"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(SonicStoredEntries(s.rungs), 30);
}

}  // namespace
}  // namespace nexuskv::compressor::internal
