// SONIC on adversarial input: duplicate keys, zero values, T < m, T = 1, huge logits, float16 and
// bfloat16 sessions. Finite input must give finite entries, with and without probes, biased or
// bias-free, at every rung.
#include <cmath>
#include <string>
#include <vector>

#include "compressor/compressor.h"
#include "compressor/internal/sonic_fit.h"
#include "compressor/internal/test_layer.h"
#include "gtest/gtest.h"
#include "tensor/dtype.h"

namespace nexuskv::compressor {
namespace {

using internal::SonicRungSizes;
using testing::TestLayer;

const Compressor& Sonic() { return *CompressorRegistry::Default().Find("SONIC"); }

bool AllFinite(const std::vector<float>& v) {
  for (float x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

// Fits the layer and serves every rung both ways; every number must be finite.
void ExpectFiniteLadder(const LayerView& view, const char* what) {
  SCOPED_TRACE(what);
  absl::StatusOr<std::string> fit = Sonic().Fit(view);
  ASSERT_TRUE(fit.ok()) << fit.status();
  for (int n : SonicRungSizes(view.num_tokens)) {
    for (bool bias_free : {false, true}) {
      absl::StatusOr<LayerEntries> e = bias_free ? Sonic().MaterializeBiasFree(view, *fit, n)
                                                 : Sonic().Materialize(view, *fit, n);
      ASSERT_TRUE(e.ok()) << e.status();
      EXPECT_EQ(e->num_entries, n);
      EXPECT_TRUE(AllFinite(e->keys)) << "n=" << n << " bias_free=" << bias_free;
      EXPECT_TRUE(AllFinite(e->values)) << "n=" << n << " bias_free=" << bias_free;
      EXPECT_TRUE(AllFinite(e->bias)) << "n=" << n;
    }
  }
  std::vector<std::string> per_layer = {*fit};
  EXPECT_FALSE(Sonic().SummarizeFit(per_layer).empty());
}

TEST(SonicRobustnessTest, DuplicateKeys) {
  TestLayer layer = TestLayer::Random(2, 4, 33, 8, 6, 1);
  for (int h = 0; h < 2; ++h) {
    for (int i = 1; i < 33; ++i) std::copy_n(layer.key(h, 0), 8, layer.key(h, i));
  }
  ExpectFiniteLadder(layer.view(), "every key equal");
  // All entries of a rung are then the same key; the first carries the mass, the others the floor.
  absl::StatusOr<std::string> fit = Sonic().Fit(layer.view());
  absl::StatusOr<LayerEntries> e = Sonic().Materialize(layer.view(), *fit, 4);
  ASSERT_TRUE(e.ok());
  int carriers = 0;
  for (int j = 0; j < 4; ++j) carriers += e->bias[j] > internal::kSonicMinBias;
  EXPECT_EQ(carriers, 1);
}

TEST(SonicRobustnessTest, ZeroValuesAndZeroKeys) {
  TestLayer layer = TestLayer::Random(1, 2, 20, 8, 4, 2);
  std::fill(layer.values.begin(), layer.values.end(), 0.0f);
  ExpectFiniteLadder(layer.view(), "zero values");
  std::fill(layer.keys.begin(), layer.keys.end(), 0.0f);
  std::fill(layer.probes.begin(), layer.probes.end(), 0.0f);
  ExpectFiniteLadder(layer.view(), "everything zero");
}

TEST(SonicRobustnessTest, TinyTurns) {
  for (int t : {1, 2, 3}) {
    TestLayer layer = TestLayer::Random(2, 2, t, 4, t, 3);
    ExpectFiniteLadder(layer.view(), "T <= 3 with probes");
    TestLayer proxy = TestLayer::Random(2, 2, t, 4, 0, 3);
    ExpectFiniteLadder(proxy.view(), "T <= 3 without probes");
  }
  // T = 1: the only rung is the token itself, unweighted.
  TestLayer one = TestLayer::Random(1, 1, 1, 4, 1, 4);
  std::unique_ptr<Compressor> exact = NewSonicCompressor({.compact_float32 = false});
  absl::StatusOr<std::string> fit = exact->Fit(one.view());
  absl::StatusOr<LayerEntries> e = exact->Materialize(one.view(), *fit, 1);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->keys, one.keys);
  EXPECT_EQ(e->values, one.values);
  EXPECT_NEAR(e->bias[0], 0.0f, 1e-5f);
}

TEST(SonicRobustnessTest, HugeLogits) {
  for (float scale : {1e4f, 1e8f, 1e18f}) {
    TestLayer layer = TestLayer::Random(2, 4, 40, 16, 8, 5);
    for (float& k : layer.keys) k *= scale;
    ExpectFiniteLadder(layer.view(), "keys x scale");
    for (float& q : layer.probes) q *= scale;
    ExpectFiniteLadder(layer.view(), "keys and probes x scale");
  }
  TestLayer layer = TestLayer::Random(1, 1, 16, 8, 0, 6);
  for (float& k : layer.keys) k *= 1e18f;
  ExpectFiniteLadder(layer.view(), "proxy with huge keys");
}

TEST(SonicRobustnessTest, HalfPrecisionSessions) {
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    TestLayer layer = TestLayer::Random(2, 4, 48, 16, 8, 7);
    // Round-trip the inputs through the session dtype, as the service decodes them.
    for (auto* v : {&layer.keys, &layer.values, &layer.probes}) {
      const std::string bytes = EncodeFromFloat(*v, dtype);
      ASSERT_TRUE(DecodeToFloat(bytes, dtype, *v).ok());
    }
    // Large but representable values (float16 max is 65504).
    for (float& x : layer.values) x *= 1000.0f;
    if (dtype == DType::kFloat16) {
      for (float& x : layer.values) x = std::clamp(x, -65504.0f, 65504.0f);
    }
    LayerView view = layer.view();
    view.dtype = dtype;
    ExpectFiniteLadder(view, DTypeName(dtype));
    absl::StatusOr<std::string> fit = Sonic().Fit(view);
    absl::StatusOr<LayerEntries> e = Sonic().Materialize(view, *fit, 24);
    ASSERT_TRUE(e.ok());
    // Values are convex combinations: they stay within the session dtype's range.
    for (float x : e->values) EXPECT_LE(std::abs(x), 65504.0f * 1.0001f);
  }
}

}  // namespace
}  // namespace nexuskv::compressor
