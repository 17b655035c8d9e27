#include "compressor/compute/fallback_compute.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "compressor/testing/counting_compute.h"

namespace nexuskv::compressor {
namespace {

using testing::CountingCompute;

struct Fixture {
  Fixture() {
    auto owned = std::make_unique<CountingCompute>();
    device = owned.get();
    compute = std::make_unique<FallbackCompute>(
        std::move(owned), CpuCompute(), [this](std::string_view op, const absl::Status& error) {
          seen.push_back(std::string(op) + ": " + std::string(error.message()));
        });
  }
  CountingCompute* device = nullptr;
  std::unique_ptr<FallbackCompute> compute;
  std::vector<std::string> seen;
};

TEST(FallbackComputeTest, AHealthyDeviceComputesAlone) {
  Fixture f;
  const std::vector<float> keys = {1, 0, 0, 1, 1, 1};
  const std::vector<float> queries = {1, 2};
  std::vector<float> mass(3);
  const AttentionMassItem item{{queries, 1, 2}, {keys, 3, 2}, 0.5f, 1.0f, {}};
  ASSERT_TRUE(f.compute->AttentionMass({&item, 1}, mass).ok());
  EXPECT_EQ(f.device->calls("AttentionMass"), 1);
  EXPECT_EQ(f.compute->fallbacks(), 0u);
  EXPECT_TRUE(f.seen.empty());
  EXPECT_EQ(f.compute->name(), "counting");
}

TEST(FallbackComputeTest, ADeviceErrorRunsTheOperationOnTheCpu) {
  Fixture f;
  f.device->set_fail_with(absl::ResourceExhaustedError("the batch needs 9 GiB"));
  const std::vector<float> keys = {1, 0, 0, 1, 1, 1};
  const std::vector<float> queries = {1, 2, -1, 0.5};
  const AttentionMassItem item{{queries, 2, 2}, {keys, 3, 2}, 0.5f, 1.0f, {}};
  std::vector<float> mass(3), want(3);
  ASSERT_TRUE(f.compute->AttentionMass({&item, 1}, mass).ok());
  ASSERT_TRUE(CpuCompute().AttentionMass({&item, 1}, want).ok());
  EXPECT_EQ(mass, want);

  std::vector<float> logits = {3, 1, -2, 0.5, 7, 7}, expected = logits;
  std::vector<float> lse(2), expected_lse(2);
  ASSERT_TRUE(f.compute->Softmax(logits, 2, 3, {}, lse).ok());
  ASSERT_TRUE(CpuCompute().Softmax(expected, 2, 3, {}, expected_lse).ok());
  EXPECT_EQ(logits, expected);
  EXPECT_EQ(lse, expected_lse);

  EXPECT_EQ(f.compute->fallbacks(), 2u);
  ASSERT_EQ(f.seen.size(), 2u);
  EXPECT_EQ(f.seen[0], "AttentionMass: the batch needs 9 GiB");
  EXPECT_EQ(f.seen[1], "Softmax: the batch needs 9 GiB");

  f.device->set_fail_with(absl::InternalError("an illegal memory access was encountered"));
  std::vector<std::byte> encoded(12);
  ASSERT_TRUE(f.compute->EncodeFromFloat(keys, DType::kBFloat16, encoded).ok());
  EXPECT_EQ(f.compute->fallbacks(), 3u);
}

TEST(FallbackComputeTest, InvalidArgumentIsTheCallersAndNotRetried) {
  Fixture f;
  f.device->set_fail_with(absl::InvalidArgumentError("Gather: item 0: row 9 of a 3-row source"));
  std::vector<float> out(2);
  const absl::Status status = f.compute->Gather({}, out);
  EXPECT_TRUE(absl::IsInvalidArgument(status));
  EXPECT_EQ(status.message(), "Gather: item 0: row 9 of a 3-row source");
  EXPECT_EQ(f.compute->fallbacks(), 0u);
  EXPECT_TRUE(f.seen.empty());
}

}  // namespace
}  // namespace nexuskv::compressor
