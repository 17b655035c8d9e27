// SelectCompute with a usable device, on the GPU backend's host twin (nexuskv_cuda_host, Thrust's
// OpenMP system; never linked into the server): auto and cuda pick it, the registry built on it
// fits through it, and the fits agree with CpuCompute()'s within compute.h's tolerances (the
// rankings of H2O and SNAPKV exactly, the scores here not being tied); a batch over --gpu_memory_mb
// is computed by the CPU behind the device (FallbackCompute). The same code path as the server on a
// GPU machine, minus the GPU.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "compressor/compressor.h"
#include "compressor/compute/fallback_compute.h"
#include "compressor/internal/test_layer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/compute_device.h"

namespace nexuskv::service {
namespace {

using compressor::CompressorRegistry;
using compressor::LayerEntries;
using compressor::testing::TestLayer;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr uint64_t kFourGiB = uint64_t{4} << 30;

TEST(ComputeDeviceTwinTest, AutoAndCudaPickAUsableDevice) {
  ASSERT_TRUE(BuildHasCudaBackend());
  absl::StatusOr<SelectedCompute> chosen = SelectCompute("auto", kFourGiB);
  ASSERT_TRUE(chosen.ok()) << chosen.status();
  EXPECT_EQ(chosen->name(), "cuda-host");
  EXPECT_THAT(chosen->description(), StartsWith("cuda-host on the host twin"));
  EXPECT_THAT(chosen->description(),
              HasSubstr("(--device=auto: a usable GPU was found; at most 4096 MiB of GPU memory "
                        "per batch, --gpu_memory_mb)"));
  absl::StatusOr<SelectedCompute> cuda = SelectCompute("cuda", uint64_t{512} << 20);
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  EXPECT_EQ(cuda->name(), "cuda-host");
  EXPECT_THAT(cuda->description(), HasSubstr("(--device=cuda; at most 512 MiB of GPU memory"));
}

// Every rung of a SONIC fit, as Materialize serves it.
std::vector<LayerEntries> Rungs(const compressor::Compressor& sonic, const TestLayer& layer,
                                const std::string& fit) {
  std::vector<LayerEntries> out;
  for (int n = layer.num_tokens / 4; n >= 1; n /= 2) {
    absl::StatusOr<LayerEntries> e = sonic.Materialize(layer.view(), fit, n);
    EXPECT_TRUE(e.ok()) << e.status();
    if (e.ok()) out.push_back(*std::move(e));
  }
  return out;
}

void ExpectNear(const std::vector<float>& got, const std::vector<float>& want, float tolerance,
                const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], tolerance * std::max(1.0f, std::abs(want[i])))
        << what << " [" << i << "]";
  }
}

TEST(ComputeDeviceTwinTest, TheRegistryFitsThroughTheDeviceAsTheCpuDoes) {
  absl::StatusOr<SelectedCompute> device = SelectCompute("cuda", kFourGiB);
  ASSERT_TRUE(device.ok()) << device.status();
  const std::unique_ptr<CompressorRegistry> registry =
      CompressorRegistry::Builtin(device->backend());
  const CompressorRegistry& cpu = CompressorRegistry::Default();
  for (const TestLayer& layer : {TestLayer::Random(2, 4, 48, 16, 8, 21),
                                 TestLayer::Random(1, 3, 40, 32, 0, 22)}) {  // probes, proxy
    for (const char* name : {"H2O", "SNAPKV"}) {
      absl::StatusOr<std::string> got = registry->Find(name)->Fit(layer.view());
      absl::StatusOr<std::string> want = cpu.Find(name)->Fit(layer.view());
      ASSERT_TRUE(got.ok()) << name << ": " << got.status();
      ASSERT_TRUE(want.ok()) << want.status();
      EXPECT_EQ(*got, *want) << name << ": the rankings differ";
    }
    absl::StatusOr<std::string> got = registry->Find("SONIC")->Fit(layer.view());
    absl::StatusOr<std::string> want = cpu.Find("SONIC")->Fit(layer.view());
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(want.ok()) << want.status();
    const std::vector<LayerEntries> got_rungs = Rungs(*cpu.Find("SONIC"), layer, *got);
    const std::vector<LayerEntries> want_rungs = Rungs(*cpu.Find("SONIC"), layer, *want);
    ASSERT_EQ(got_rungs.size(), want_rungs.size());
    for (size_t k = 0; k < got_rungs.size(); ++k) {
      const std::string rung = "rung " + std::to_string(want_rungs[k].num_entries);
      EXPECT_EQ(got_rungs[k].positions, want_rungs[k].positions) << rung;
      // Stored as float16 (compact_float32): 2e-3 relative (two float16 steps) covers its rounding
      // of values that differ by float32 summation order.
      ExpectNear(got_rungs[k].keys, want_rungs[k].keys, 2e-3f, rung + " keys");
      ExpectNear(got_rungs[k].values, want_rungs[k].values, 2e-3f, rung + " values");
      ExpectNear(got_rungs[k].bias, want_rungs[k].bias, 2e-3f, rung + " bias");
    }
  }
}

TEST(ComputeDeviceTwinTest, ABatchOverTheGpuBoundIsComputedOnTheCpu) {
  absl::StatusOr<SelectedCompute> small = SelectCompute("cuda", 4096);  // 4 KiB
  ASSERT_TRUE(small.ok()) << small.status();
  const auto* guarded = dynamic_cast<const compressor::FallbackCompute*>(&small->backend());
  ASSERT_NE(guarded, nullptr) << "the GPU backend is served with the CPU behind it";
  EXPECT_EQ(guarded->name(), "cuda-host");
  const std::unique_ptr<CompressorRegistry> registry =
      CompressorRegistry::Builtin(small->backend());
  const TestLayer layer = TestLayer::Random(2, 4, 64, 16, 8, 3);
  // The device refuses the fit's big batches (ResourceExhausted naming --gpu_memory_mb); the CPU
  // computes them and the fit succeeds.
  absl::StatusOr<std::string> fit = registry->Find("SONIC")->Fit(layer.view());
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_GT(guarded->fallbacks(), 0u);
  absl::StatusOr<std::string> h2o = registry->Find("H2O")->Fit(layer.view());
  ASSERT_TRUE(h2o.ok()) << h2o.status();
  EXPECT_EQ(*h2o, *CompressorRegistry::Default().Find("H2O")->Fit(layer.view()));
}

}  // namespace
}  // namespace nexuskv::service
