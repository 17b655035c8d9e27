// The methods compute on the backend they are given: H2O and SNAPKV scoring, SONIC's fit and its
// lookahead go through it (a counting backend that forwards to CpuCompute() sees the calls, and
// the results are the reference's bit for bit), and a device failure fails the fit or the answer
// with Internal, naming the backend and its error, never aborting the process.
#include <memory>
#include <string>
#include <vector>

#include "compressor/compressor.h"
#include "compressor/h2o.h"
#include "compressor/internal/test_layer.h"
#include "compressor/snapkv.h"
#include "compressor/sonic.h"
#include "compressor/testing/counting_compute.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nexuskv::compressor {
namespace {

using testing::CountingCompute;
using ::testing::HasSubstr;
using testing::StatusIs;
using testing::TestLayer;

const std::string kDeviceFull =
    "AttentionMass: the batch needs 9000.0 MiB of device memory, more than the limit of 4096.0 MiB";

TEST(BackendTest, TheBuiltinRegistryScoresAndFitsOnItsBackend) {
  const TestLayer layer = TestLayer::Random(2, 4, 48, 16, 8, 11);
  CountingCompute counting;
  const std::unique_ptr<CompressorRegistry> registry = CompressorRegistry::Builtin(counting);
  EXPECT_EQ(registry->names(), CompressorRegistry::Default().names());
  for (const char* name : {"H2O", "SNAPKV", "SONIC"}) {
    const int before = counting.total_calls();
    absl::StatusOr<std::string> fit = registry->Find(name)->Fit(layer.view());
    ASSERT_TRUE(fit.ok()) << name << ": " << fit.status();
    EXPECT_GT(counting.total_calls(), before) << name << " did not compute on its backend";
    // The counting backend forwards to the reference: the same fit, bit for bit.
    absl::StatusOr<std::string> reference =
        CompressorRegistry::Default().Find(name)->Fit(layer.view());
    ASSERT_TRUE(reference.ok()) << reference.status();
    EXPECT_EQ(*fit, *reference) << name;
  }
  // H2O and SNAPKV score with one AttentionMass batch each; SONIC's fit is a handful of batches
  // (targets, seeds, k-means, masses, errors, fold), none of them per head.
  EXPECT_EQ(counting.calls("AttentionMass"), 2);
  EXPECT_EQ(counting.calls("Attend"), 2);
  EXPECT_GT(counting.calls("WeightedKMeans"), 0);
  EXPECT_EQ(counting.calls("FoldVectors"), 1);
  // FULL and STREAMING_LLM compute nothing.
  const int before = counting.total_calls();
  for (const char* name : {"FULL", "STREAMING_LLM"}) {
    ASSERT_TRUE(registry->Find(name)->Fit(layer.view()).ok()) << name;
  }
  EXPECT_EQ(counting.total_calls(), before);
}

TEST(BackendTest, SonicScoresItsLookaheadOnItsBackend) {
  const TestLayer layer = TestLayer::Random(1, 3, 64, 16, 16, 7);
  CountingCompute counting;
  const std::unique_ptr<Compressor> sonic = NewSonicCompressor(SonicParams(), counting);
  absl::StatusOr<std::string> fit = sonic->Fit(layer.view());
  ASSERT_TRUE(fit.ok()) << fit.status();
  std::vector<float> lookahead(3 * 16);
  for (size_t i = 0; i < lookahead.size(); ++i) lookahead[i] = layer.keys[i % 16 + 16 * 37];
  LayerView view = layer.view();
  view.lookahead = lookahead;
  view.num_lookahead = 1;
  const int before = counting.calls("AttentionMass");
  absl::StatusOr<LayerEntries> topped = sonic->Materialize(view, *fit, 17);  // rung 16 + 1 raw
  ASSERT_TRUE(topped.ok()) << topped.status();
  EXPECT_EQ(counting.calls("AttentionMass"), before + 1);
  absl::StatusOr<LayerEntries> reference =
      CompressorRegistry::Default().Find("SONIC")->Materialize(view, *fit, 17);
  ASSERT_TRUE(reference.ok()) << reference.status();
  EXPECT_EQ(topped->positions, reference->positions);
  EXPECT_EQ(topped->keys, reference->keys);
  EXPECT_EQ(topped->bias, reference->bias);

  // The device fails while scoring the lookahead: the answer fails, saying why.
  counting.set_fail_with(absl::ResourceExhaustedError(kDeviceFull));
  absl::StatusOr<LayerEntries> failed = sonic->Materialize(view, *fit, 17);
  EXPECT_THAT(failed, StatusIs(absl::StatusCode::kInternal));
  EXPECT_THAT(failed.status().message(),
              HasSubstr("SONIC lookahead scoring failed on the counting compute backend: "
                        "RESOURCE_EXHAUSTED: " +
                        kDeviceFull));
  // A rung needs no backend: it is still served.
  EXPECT_TRUE(sonic->Materialize(view, *fit, 16).ok());
}

TEST(BackendTest, ADeviceFailureFailsTheFitWithInternalNamingTheBackend) {
  const TestLayer layer = TestLayer::Random(2, 4, 40, 8, 4, 5);
  CountingCompute counting;
  const std::unique_ptr<CompressorRegistry> registry = CompressorRegistry::Builtin(counting);
  counting.set_fail_with(absl::ResourceExhaustedError(kDeviceFull));
  for (const auto& [name, work] : std::vector<std::pair<std::string, std::string>>{
           {"H2O", "H2O scoring"}, {"SNAPKV", "SNAPKV scoring"}, {"SONIC", "SONIC fit"}}) {
    absl::StatusOr<std::string> fit = registry->Find(name)->Fit(layer.view());
    EXPECT_THAT(fit, StatusIs(absl::StatusCode::kInternal)) << name;
    EXPECT_THAT(fit.status().message(),
                HasSubstr(work + " failed on the counting compute backend: RESOURCE_EXHAUSTED: " +
                          kDeviceFull));
  }
  // A driver error too.
  counting.set_fail_with(absl::InternalError("cudaErrorLaunchFailure: unspecified launch failure"));
  absl::StatusOr<std::string> fit = registry->Find("SONIC")->Fit(layer.view());
  EXPECT_THAT(fit, StatusIs(absl::StatusCode::kInternal));
  EXPECT_THAT(fit.status().message(), HasSubstr("INTERNAL: cudaErrorLaunchFailure"));
  // InvalidArgument (a batch that breaks an operation's contract) is the same on every backend:
  // it passes through as it is.
  counting.set_fail_with(absl::InvalidArgumentError("item 0: keys has 3 floats"));
  EXPECT_THAT(registry->Find("H2O")->Fit(layer.view()),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // And the backend recovers: the next fit succeeds.
  counting.set_fail_with(absl::OkStatus());
  EXPECT_TRUE(registry->Find("SONIC")->Fit(layer.view()).ok());
}

TEST(BackendTest, TheMethodFactoriesDefaultToTheCpuReference) {
  const TestLayer layer = TestLayer::Random(1, 2, 30, 8, 4, 2);
  for (const auto& method : {NewH2OCompressor(), NewSnapKvCompressor(), NewSonicCompressor()}) {
    absl::StatusOr<std::string> fit = method->Fit(layer.view());
    ASSERT_TRUE(fit.ok()) << fit.status();
    EXPECT_EQ(*fit, *CompressorRegistry::Default().Find(method->name())->Fit(layer.view()));
  }
}

}  // namespace
}  // namespace nexuskv::compressor
