// AccumulatedAttention against a naive double-precision reference, its numerical guards, and its
// use of the compute seam (one batch per layer).
#include "compressor/internal/attention.h"

#include <cmath>
#include <limits>
#include <numeric>

#include "compressor/internal/test_layer.h"
#include "gtest/gtest.h"

namespace nexuskv::compressor::internal {
namespace {

using testing::TestLayer;

// out[h*T + i] in double, straight from the definition in attention.h.
std::vector<double> NaiveAccumulated(const TestLayer& layer,
                                     const std::vector<uint32_t>& offsets = {}) {
  const int h_count = layer.num_kv_heads, t = layer.num_tokens, d = layer.head_dim;
  const int g = layer.num_query_heads / h_count;
  const bool proxy = layer.num_probes == 0;
  const int w = proxy ? std::min(t, kProxyQueries) : layer.num_probes;
  std::vector<double> out(static_cast<size_t>(h_count) * t, 0.0);
  for (int h = 0; h < h_count; ++h) {
    for (int q = h * g; q < (h + 1) * g; ++q) {
      for (int j = 0; j < w; ++j) {
        const float* query = proxy ? &layer.keys[(static_cast<size_t>(h) * t + t - w + j) * d]
                                   : &layer.probes[(static_cast<size_t>(q) * w + j) * d];
        const int visible = (offsets.empty() ? t - w + j : static_cast<int>(offsets[j])) + 1;
        std::vector<double> logit(visible);
        for (int i = 0; i < visible; ++i) {
          double dot = 0;
          for (int c = 0; c < d; ++c) dot += double{query[c]} * layer.keys[(h * t + i) * d + c];
          logit[i] = dot / std::sqrt(static_cast<double>(d));
        }
        const double max = *std::max_element(logit.begin(), logit.end());
        double sum = 0;
        for (double& x : logit) sum += (x = std::exp(x - max));
        for (int i = 0; i < visible; ++i) out[h * t + i] += logit[i] / sum;
      }
    }
  }
  return out;
}

void ExpectMatchesNaive(const TestLayer& layer) {
  const std::vector<float> got = AccumulatedAttention(layer.view());
  const std::vector<double> want = NaiveAccumulated(layer);
  ASSERT_EQ(got.size(), want.size());
  for (size_t k = 0; k < got.size(); ++k) {
    EXPECT_NEAR(got[k], want[k], 1e-5 + 1e-4 * want[k])
        << "index " << k << " shape H=" << layer.num_kv_heads << " Hq=" << layer.num_query_heads
        << " T=" << layer.num_tokens << " D=" << layer.head_dim << " P=" << layer.num_probes;
  }
}

TEST(AttentionTest, MatchesNaiveWithProbesAndGqa) {
  ExpectMatchesNaive(TestLayer::Random(2, 6, 37, 8, 5, 1));
  ExpectMatchesNaive(TestLayer::Random(1, 1, 12, 16, 12, 2));  // Every token is a probe.
  ExpectMatchesNaive(TestLayer::Random(3, 3, 1, 4, 1, 3));     // T = 1.
}

TEST(AttentionTest, MatchesNaiveWithProxyQueries) {
  ExpectMatchesNaive(TestLayer::Random(2, 4, 40, 8, 0, 4));  // W = 16.
  ExpectMatchesNaive(TestLayer::Random(2, 8, 5, 8, 0, 5));   // W = T = 5.
  EXPECT_EQ(ScoringWindow(TestLayer::Random(1, 1, 40, 2, 0, 6).view()), 16);
  EXPECT_EQ(ScoringWindow(TestLayer::Random(1, 1, 5, 2, 0, 6).view()), 5);
  EXPECT_EQ(ScoringWindow(TestLayer::Random(1, 1, 40, 2, 3, 6).view()), 3);
}

TEST(AttentionTest, EachRowCarriesUnitMassAndTheMaskHidesTheFuture) {
  const TestLayer layer = TestLayer::Random(2, 6, 20, 4, 20, 7);
  const std::vector<float> got = AccumulatedAttention(layer.view());
  for (int h = 0; h < 2; ++h) {
    const double sum = std::accumulate(got.begin() + h * 20, got.begin() + (h + 1) * 20, 0.0);
    EXPECT_NEAR(sum, 3 * 20, 1e-3);
    // With P = T, probe j sees tokens 0..j only: token 0 gets all of probe 0's mass, and token
    // 19 is seen by the last probe only.
    EXPECT_GE(got[h * 20], 3.0f - 1e-5f);
    EXPECT_LE(got[h * 20 + 19], 3.0f + 1e-5f);
  }
}

TEST(AttentionTest, ProbeOffsetsPlaceEachProbesCausalMask) {
  const TestLayer layer = TestLayer::Random(2, 6, 30, 8, 4, 9);
  const std::vector<uint32_t> offsets = {0, 9, 17, 29};
  compressor::LayerView view = layer.view();
  view.probe_offsets = offsets;
  const std::vector<float> got = AccumulatedAttention(view);
  const std::vector<double> want = NaiveAccumulated(layer, offsets);
  ASSERT_EQ(got.size(), want.size());
  for (size_t k = 0; k < got.size(); ++k) EXPECT_NEAR(got[k], want[k], 1e-5 + 1e-4 * want[k]);
  // The probe at token 0 sees token 0 only: the group's 3 query heads give it 3 units at least.
  for (int h = 0; h < 2; ++h) EXPECT_GE(got[h * 30], 3.0f - 1e-5f);
  // The same probes taken as the last 4 tokens score differently.
  EXPECT_NE(AccumulatedAttention(layer.view()), got);
}

TEST(AttentionTest, HugeLogitsStayFinite) {
  for (float scale : {1e4f, 1e19f}) {
    TestLayer layer = TestLayer::Random(2, 4, 30, 8, 6, 8);
    for (float& k : layer.keys) k *= scale;
    for (float& q : layer.probes) q *= scale;
    const std::vector<float> got = AccumulatedAttention(layer.view());
    double sum = 0;
    for (float x : got) {
      ASSERT_TRUE(std::isfinite(x)) << "scale " << scale;
      sum += x;
    }
    EXPECT_NEAR(sum, 2 * 2 * 6, 1e-3) << "scale " << scale;
  }
}

TEST(AttentionTest, DuplicateKeysShareMassEvenly) {
  TestLayer layer = TestLayer::Random(1, 2, 6, 4, 2, 9);
  for (int i = 1; i < 6; ++i) std::copy(layer.key(0, 0), layer.key(0, 0) + 4, layer.key(0, i));
  const std::vector<float> got = AccumulatedAttention(layer.view());
  // Probe 0 sees 5 tokens, probe 1 sees 6; two query heads each.
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(got[i], 2 * (1.0 / 5 + 1.0 / 6), 1e-6);
  EXPECT_NEAR(got[5], 2 * (1.0 / 6), 1e-6);
}

TEST(AttentionTest, LongTurnsAreScoredInBlocksOfRows) {
  // 64 rows of 70000 logits exceed the 2^22-float block, so the GEMM runs in several blocks.
  ExpectMatchesNaive(TestLayer::Random(1, 2, 70000, 4, 32, 10));
}

// Forwards to CpuCompute, counting AttentionMass calls and items; fails them when told to.
class RecordingBackend final : public ComputeBackend {
 public:
  mutable int calls = 0;
  mutable size_t items = 0;
  bool fail = false;

  std::string_view name() const override { return "recording"; }
  absl::Status AttentionMass(std::span<const AttentionMassItem> batch,
                             std::span<float> mass) const override {
    ++calls;
    items += batch.size();
    if (fail) return absl::ResourceExhaustedError("device memory");
    return CpuCompute().AttentionMass(batch, mass);
  }
  absl::Status Softmax(std::span<float> l, int r, int c, std::span<const int32_t> causal,
                       std::span<float> lse) const override {
    return CpuCompute().Softmax(l, r, c, causal, lse);
  }
  absl::Status Attend(std::span<const AttendItem> i, const AttendOutputs& o) const override {
    return CpuCompute().Attend(i, o);
  }
  absl::Status ColumnLogSumExp(std::span<const ColumnLogSumExpItem> i,
                               std::span<double> o) const override {
    return CpuCompute().ColumnLogSumExp(i, o);
  }
  absl::Status WeightedKMeans(std::span<const KMeansItem> i, int it, std::span<float> c,
                              std::span<uint32_t> a) const override {
    return CpuCompute().WeightedKMeans(i, it, c, a);
  }
  absl::Status FoldVectors(std::span<const FoldItem> i, std::span<float> o) const override {
    return CpuCompute().FoldVectors(i, o);
  }
  absl::Status TopK(std::span<const float> s, std::span<const int64_t> r,
                    std::span<const int64_t> k, std::span<uint32_t> o) const override {
    return CpuCompute().TopK(s, r, k, o);
  }
  absl::Status Gather(std::span<const GatherItem> i, std::span<float> o) const override {
    return CpuCompute().Gather(i, o);
  }
  absl::Status MergeRuns(std::span<const MergeRunItem> i, std::span<float> k, std::span<float> v,
                         std::span<float> b) const override {
    return CpuCompute().MergeRuns(i, k, v, b);
  }
  absl::Status DecodeToFloat(std::span<const std::byte> s, DType t,
                             std::span<float> d) const override {
    return CpuCompute().DecodeToFloat(s, t, d);
  }
  absl::Status EncodeFromFloat(std::span<const float> s, DType t,
                               std::span<std::byte> d) const override {
    return CpuCompute().EncodeFromFloat(s, t, d);
  }
};

TEST(AttentionTest, ScoresTheWholeLayerInOneBatchAndPassesBackendErrors) {
  const TestLayer layer = TestLayer::Random(3, 6, 25, 8, 4, 12);
  RecordingBackend backend;
  absl::StatusOr<std::vector<float>> got = AccumulatedAttention(layer.view(), backend);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(backend.calls, 1);
  EXPECT_EQ(backend.items, 3u);  // one item per kv head
  EXPECT_EQ(*got, AccumulatedAttention(layer.view()));
  backend.fail = true;
  EXPECT_THAT(AccumulatedAttention(layer.view(), backend),
              testing::StatusIs(absl::StatusCode::kResourceExhausted));
}

}  // namespace
}  // namespace nexuskv::compressor::internal
