// SONIC's fit and serving contract: exact entry counts, the mass each rung carries, pass-through
// Nexus tokens, raw and off-rung requests, bias-free answers and the summary.
#include "compressor/sonic.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "compressor/compressor.h"
#include "compressor/internal/sonic_fit.h"
#include "compressor/internal/sonic_ladder.h"
#include "compressor/internal/sonic_math.h"
#include "compressor/internal/test_layer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nexuskv::compressor {
namespace {

using internal::IndexSonicLadder;
using internal::SonicRungSizes;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::StatusIs;
using testing::TestLayer;

const Compressor& Sonic() { return *CompressorRegistry::Default().Find("SONIC"); }

// SONIC storing float32 ladders as float32, for tests that compare entries bit for bit.
const Compressor& ExactSonic() {
  static const Compressor* const sonic = NewSonicCompressor({.compact_float32 = false}).release();
  return *sonic;
}

LayerView ShapeOnly(const TestLayer& layer) {
  LayerView v = layer.view();
  v.keys = {};
  v.values = {};
  v.probes = {};
  v.num_probes = 0;
  return v;
}

TEST(SonicRungSizesTest, HalvingDownToOneAndAtMostTwiceTheLargest) {
  EXPECT_THAT(SonicRungSizes(1), ElementsAre(1));
  EXPECT_THAT(SonicRungSizes(3), ElementsAre(1));
  EXPECT_THAT(SonicRungSizes(9), ElementsAre(2, 1));
  EXPECT_THAT(SonicRungSizes(64), ElementsAre(16, 8, 4, 2, 1));
  EXPECT_THAT(SonicRungSizes(9, 2), ElementsAre(4, 2, 1));
  for (int divisor : {2, 4}) {
    for (int t = 1; t < 5000; ++t) {
      const std::vector<int> sizes = SonicRungSizes(t, divisor);
      const int sum = std::accumulate(sizes.begin(), sizes.end(), 0);
      EXPECT_LE(sum, 2 * sizes.front()) << "T=" << t;
      EXPECT_LE(sizes.front(), std::max(t / divisor, 1));
    }
  }
}

TEST(SonicTest, EveryRungServesExactlyItsSizeWithBiasAndAscendingPositions) {
  TestLayer layer = TestLayer::Random(2, 6, 40, 16, 8, 11);
  layer.first_position = 100;
  absl::StatusOr<std::string> fit = Sonic().Fit(layer.view());
  ASSERT_TRUE(fit.ok()) << fit.status();
  for (int n : SonicRungSizes(40)) {
    absl::StatusOr<LayerEntries> e = Sonic().Materialize(ShapeOnly(layer), *fit, n);
    ASSERT_TRUE(e.ok()) << e.status();
    EXPECT_EQ(e->num_entries, n);
    EXPECT_EQ(e->keys.size(), size_t{2} * n * 16);
    EXPECT_EQ(e->values.size(), size_t{2} * n * 16);
    ASSERT_EQ(e->bias.size(), size_t{2} * n);
    ASSERT_EQ(e->positions.size(), size_t{2} * n);
    for (int h = 0; h < 2; ++h) {
      for (int j = 0; j < n; ++j) {
        const int64_t p = e->positions[h * n + j];
        EXPECT_GE(p, 100);
        EXPECT_LT(p, 140);
        if (j > 0) EXPECT_LE(e->positions[h * n + j - 1], p);
      }
    }
    for (float b : e->bias) EXPECT_TRUE(std::isfinite(b));
  }
}

TEST(SonicTest, EachRungCarriesTheSegmentsWholeMassOverItsRows) {
  // Moment matching: every entry carries its cluster's mass, so summed over the fitting rows the
  // rung's mass equals the segment's: sum_r Z~(q_r) / Z(q_r) == R.
  TestLayer layer = TestLayer::Random(1, 3, 64, 16, 16, 5);
  absl::StatusOr<std::string> fit = ExactSonic().Fit(layer.view());
  ASSERT_TRUE(fit.ok()) << fit.status();
  const int rows = 3 * 16;
  const internal::SegmentTargets targets = internal::ComputeTargets(
      layer.keys.data(), layer.values.data(), 64, 16, {layer.probes.data(), rows});
  for (int n : SonicRungSizes(64)) {
    absl::StatusOr<LayerEntries> e = ExactSonic().Materialize(layer.view(), *fit, n);
    ASSERT_TRUE(e.ok()) << e.status();
    double ratio_sum = 0.0;
    for (int r = 0; r < rows; ++r) {
      double z = 0.0;
      for (int j = 0; j < n; ++j) {
        double s = 0.0;
        for (int c = 0; c < 16; ++c) s += layer.probes[r * 16 + c] * e->keys[j * 16 + c];
        z += std::exp(s / 4.0 + e->bias[j] - targets.log_mass[r]);
      }
      ratio_sum += z;
    }
    EXPECT_NEAR(ratio_sum / rows, 1.0, 2e-3) << "n=" << n;
  }
}

TEST(SonicTest, SmallerRungsErrMoreAndTheErrorIsStored) {
  TestLayer layer = TestLayer::Random(2, 4, 128, 16, 16, 9);
  absl::StatusOr<std::string> fit = Sonic().Fit(layer.view());
  ASSERT_TRUE(fit.ok());
  absl::StatusOr<internal::SonicLadderIndex> index = IndexSonicLadder(*fit);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_THAT(index->rungs, ElementsAre(32, 16, 8, 4, 2, 1));
  EXPECT_EQ(index->probe_rows, 2u * 16);
  EXPECT_FALSE(index->proxy);
  for (int h = 0; h < 2; ++h) {
    EXPECT_LT(index->errors[0 * 2 + h].output_error, index->errors[5 * 2 + h].output_error);
  }
}

TEST(SonicTest, RawTurnAndTopUpsNeedTheTensors) {
  TestLayer layer = TestLayer::Random(1, 2, 20, 8, 4, 3);
  absl::StatusOr<std::string> fit = Sonic().Fit(layer.view());
  ASSERT_TRUE(fit.ok());
  absl::StatusOr<LayerEntries> raw = Sonic().Materialize(layer.view(), *fit, 20);
  ASSERT_TRUE(raw.ok()) << raw.status();
  EXPECT_EQ(raw->keys, layer.keys);
  EXPECT_EQ(raw->values, layer.values);
  EXPECT_THAT(raw->bias, ::testing::Each(0.0f));
  EXPECT_THAT(Sonic().Materialize(ShapeOnly(layer), *fit, 20),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  // 7 lies between rung 5 and raw 20: rung 5 topped up with 2 raw tokens, only with the raw KV.
  absl::StatusOr<LayerEntries> topped = Sonic().Materialize(layer.view(), *fit, 7);
  ASSERT_TRUE(topped.ok()) << topped.status();
  EXPECT_EQ(topped->num_entries, 7);
  absl::StatusOr<LayerEntries> off = Sonic().Materialize(ShapeOnly(layer), *fit, 7);
  EXPECT_THAT(off, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(off.status().message(), HasSubstr("{5, 2, 1}"));
  absl::StatusOr<LayerEntries> none = Sonic().Materialize(ShapeOnly(layer), *fit, 0);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->num_entries, 0);
  EXPECT_THAT(Sonic().Materialize(ShapeOnly(layer), *fit, 21),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(SonicTest, TopUpsKeepTheMassAndAddTheMostAttendedTokensExactly) {
  TestLayer layer = TestLayer::Random(1, 3, 64, 16, 16, 5);
  absl::StatusOr<std::string> fit = ExactSonic().Fit(layer.view());
  ASSERT_TRUE(fit.ok());
  const int rows = 3 * 16;
  const internal::SegmentTargets targets = internal::ComputeTargets(
      layer.keys.data(), layer.values.data(), 64, 16, {layer.probes.data(), rows});
  for (int n : {17, 20, 31, 40, 63}) {
    absl::StatusOr<LayerEntries> e = ExactSonic().Materialize(layer.view(), *fit, n);
    ASSERT_TRUE(e.ok()) << e.status();
    ASSERT_EQ(e->num_entries, n);
    double ratio_sum = 0.0;
    for (int r = 0; r < rows; ++r) {
      for (int j = 0; j < n; ++j) {
        double s = 0.0;
        for (int c = 0; c < 16; ++c) s += layer.probes[r * 16 + c] * e->keys[j * 16 + c];
        ratio_sum += std::exp(s / 4.0 + e->bias[j] - targets.log_mass[r]);
      }
    }
    EXPECT_NEAR(ratio_sum / rows, 1.0, 2e-3) << "n=" << n;
    // The most attended token is among the entries, exactly and unweighted.
    const int top =
        static_cast<int>(std::max_element(targets.attention.begin(), targets.attention.end()) -
                         targets.attention.begin());
    bool found = false;
    for (int j = 0; j < n; ++j) {
      found |= e->positions[j] == top && e->bias[j] == 0.0f &&
               std::equal(e->keys.begin() + j * 16, e->keys.begin() + (j + 1) * 16,
                          layer.keys.begin() + top * 16);
    }
    EXPECT_TRUE(found) << "n=" << n;
  }
}

TEST(SonicTest, LookaheadQueriesChooseTheTopUpsAndTheMassStaysExact) {
  TestLayer layer = TestLayer::Random(1, 3, 64, 16, 16, 7);
  absl::StatusOr<std::string> fit = ExactSonic().Fit(layer.view());
  ASSERT_TRUE(fit.ok());
  // One lookahead row per query head, each pointing at token 37's key: the top-up (one token
  // above rung 16) must be token 37, whatever the fit's own probes attended.
  std::vector<float> lookahead(3 * 16);
  for (int q = 0; q < 3; ++q) {
    for (int c = 0; c < 16; ++c) lookahead[q * 16 + c] = 8.0f * layer.key(0, 37)[c];
  }
  LayerView view = layer.view();
  view.lookahead = lookahead;
  view.num_lookahead = 1;
  absl::StatusOr<LayerEntries> e = ExactSonic().Materialize(view, *fit, 17);
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_EQ(e->num_entries, 17);
  bool found = false;
  for (int j = 0; j < 17; ++j) {
    found |= e->positions[j] == 37 && e->bias[j] == 0.0f &&
             std::equal(e->keys.begin() + j * 16, e->keys.begin() + (j + 1) * 16,
                        layer.keys.begin() + 37 * 16);
  }
  EXPECT_TRUE(found);
  // The entries still carry the turn's whole mass over the fit's rows.
  const int rows = 3 * 16;
  const internal::SegmentTargets targets = internal::ComputeTargets(
      layer.keys.data(), layer.values.data(), 64, 16, {layer.probes.data(), rows});
  double ratio_sum = 0.0;
  for (int r = 0; r < rows; ++r) {
    for (int j = 0; j < 17; ++j) {
      double s = 0.0;
      for (int c = 0; c < 16; ++c) s += layer.probes[r * 16 + c] * e->keys[j * 16 + c];
      ratio_sum += std::exp(s / 4.0 + e->bias[j] - targets.log_mass[r]);
    }
  }
  EXPECT_NEAR(ratio_sum / rows, 1.0, 2e-3);
  // A lookahead of the wrong size is ignored (the fit's own mass ranks), never an error.
  view.num_lookahead = 2;
  EXPECT_TRUE(ExactSonic().Materialize(view, *fit, 17).ok());
}

TEST(SonicTest, RefusesAnotherLayersOrMethodsFit) {
  TestLayer layer = TestLayer::Random(1, 2, 20, 8, 4, 3);
  TestLayer other = TestLayer::Random(1, 2, 24, 8, 4, 3);
  absl::StatusOr<std::string> fit = Sonic().Fit(other.view());
  ASSERT_TRUE(fit.ok());
  EXPECT_THAT(Sonic().Materialize(layer.view(), *fit, 5),
              StatusIs(absl::StatusCode::kInvalidArgument));
  absl::StatusOr<std::string> h2o = CompressorRegistry::Default().Find("H2O")->Fit(layer.view());
  ASSERT_TRUE(h2o.ok());
  EXPECT_THAT(Sonic().Materialize(layer.view(), *h2o, 5),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(SonicTest, BiasFreeFoldsTheBiasIntoTheKeys) {
  TestLayer layer = TestLayer::Random(2, 4, 32, 8, 8, 21);
  absl::StatusOr<std::string> fit = Sonic().Fit(layer.view());
  ASSERT_TRUE(fit.ok());
  absl::StatusOr<LayerEntries> with = Sonic().Materialize(ShapeOnly(layer), *fit, 8);
  absl::StatusOr<LayerEntries> free = Sonic().MaterializeBiasFree(ShapeOnly(layer), *fit, 8);
  ASSERT_TRUE(with.ok() && free.ok());
  EXPECT_TRUE(free->bias.empty());
  EXPECT_EQ(free->values, with->values);
  EXPECT_EQ(free->positions, with->positions);
  absl::StatusOr<internal::SonicLadderIndex> index = IndexSonicLadder(*fit);
  const std::vector<float> fold = internal::DecodeSonicFold(*fit, *index);
  for (int h = 0; h < 2; ++h) {
    for (int j = 0; j < 8; ++j) {
      for (int c = 0; c < 8; ++c) {
        const size_t at = (static_cast<size_t>(h) * 8 + j) * 8 + c;
        EXPECT_NEAR(free->keys[at], with->keys[at] + with->bias[h * 8 + j] * fold[h * 8 + c],
                    1e-4f);
      }
    }
  }
}

TEST(SonicTest, NexusTokensArePassedThroughFirst) {
  TestLayer layer = TestLayer::Random(1, 2, 32, 8, 8, 4);
  const std::vector<uint32_t> nexus = {3, 17, 30};
  LayerView view = layer.view();
  view.nexus_offsets = nexus;
  absl::StatusOr<std::string> fit = ExactSonic().Fit(view);
  ASSERT_TRUE(fit.ok()) << fit.status();
  for (int n : SonicRungSizes(32)) {
    absl::StatusOr<LayerEntries> e = ExactSonic().Materialize(ShapeOnly(layer), *fit, n);
    ASSERT_TRUE(e.ok());
    int kept = 0;
    for (int j = 0; j < n; ++j) {
      const int64_t p = e->positions[j];
      if (std::find(nexus.begin(), nexus.end(), p) == nexus.end()) continue;
      // A pass-through entry is the token itself, unweighted.
      if (e->bias[j] != 0.0f) continue;
      if (!std::equal(e->keys.begin() + j * 8, e->keys.begin() + (j + 1) * 8,
                      layer.keys.begin() + p * 8)) {
        continue;
      }
      ++kept;
    }
    EXPECT_GE(kept, std::min<int>(n, 3)) << "n=" << n;
  }
  const std::vector<uint32_t> bad = {5, 5};
  view.nexus_offsets = bad;
  EXPECT_THAT(Sonic().Fit(view), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(SonicTest, WithoutProbesTheProxyIsRecorded) {
  TestLayer layer = TestLayer::Random(2, 4, 50, 8, 0, 8);
  absl::StatusOr<std::string> fit = Sonic().Fit(layer.view());
  ASSERT_TRUE(fit.ok()) << fit.status();
  absl::StatusOr<internal::SonicLadderIndex> index = IndexSonicLadder(*fit);
  ASSERT_TRUE(index.ok());
  EXPECT_TRUE(index->proxy);
  EXPECT_EQ(index->probe_rows, 32u);
  EXPECT_TRUE(Sonic().Materialize(ShapeOnly(layer), *fit, 12).ok());
}

TEST(SonicTest, SummaryAveragesRungErrorsOverLayers) {
  TestLayer a = TestLayer::Random(2, 4, 40, 8, 8, 1);
  TestLayer b = TestLayer::Random(2, 4, 40, 8, 8, 2);
  std::vector<std::string> fits = {*Sonic().Fit(a.view()), *Sonic().Fit(b.view())};
  absl::StatusOr<internal::SonicSummary> summary =
      internal::DecodeSonicSummary(Sonic().SummarizeFit(fits));
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->num_tokens, 40);
  EXPECT_THAT(summary->rungs, ElementsAre(10, 5, 2, 1));
  auto ia = IndexSonicLadder(fits[0]), ib = IndexSonicLadder(fits[1]);
  const float want = (ia->errors[0].output_error + ia->errors[1].output_error +
                      ib->errors[0].output_error + ib->errors[1].output_error) /
                     4.0f;
  EXPECT_NEAR(summary->errors[0].output_error, want, 1e-6f);
  EXPECT_EQ(Sonic().SummarizeFit({}), "");
}

TEST(SonicTest, Float32SessionsAreStoredAsFloat16WhenTheyFit) {
  TestLayer layer = TestLayer::Random(1, 1, 16, 8, 4, 2);
  absl::StatusOr<std::string> compact = Sonic().Fit(layer.view());
  ASSERT_TRUE(compact.ok());
  EXPECT_EQ(IndexSonicLadder(*compact)->dtype, DType::kFloat16);
  layer.values[0] = 1e6f;  // beyond float16: the ladder stays float32
  absl::StatusOr<std::string> wide = Sonic().Fit(layer.view());
  ASSERT_TRUE(wide.ok());
  EXPECT_EQ(IndexSonicLadder(*wide)->dtype, DType::kFloat32);
  std::unique_ptr<Compressor> exact = NewSonicCompressor({.compact_float32 = false});
  layer.values[0] = 0.5f;
  EXPECT_EQ(IndexSonicLadder(*exact->Fit(layer.view()))->dtype, DType::kFloat32);
  LayerView bf16 = layer.view();
  bf16.dtype = DType::kBFloat16;
  EXPECT_EQ(IndexSonicLadder(*Sonic().Fit(bf16))->dtype, DType::kBFloat16);
}

}  // namespace
}  // namespace nexuskv::compressor
