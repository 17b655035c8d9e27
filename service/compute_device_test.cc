// SelectCompute as the server links it, on this machine: cpu always works; auto picks the GPU when
// one is usable and otherwise the CPU, saying why; cuda without a usable GPU (or in a build
// without the CUDA backend) is FailedPrecondition with a message a person can act on. CI machines
// have no GPU; on a GPU machine the same tests check the other branch.
#include "service/compute_device.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nexuskv::service {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr uint64_t kFourGiB = uint64_t{4} << 30;

TEST(ComputeDeviceTest, CpuIsTheReference) {
  absl::StatusOr<SelectedCompute> cpu = SelectCompute("cpu", kFourGiB);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_EQ(&cpu->backend(), &compressor::CpuCompute());
  EXPECT_EQ(cpu->name(), "cpu");
  EXPECT_EQ(cpu->description(), "cpu (--device=cpu)");
  // The GPU bound means nothing to the CPU.
  EXPECT_TRUE(SelectCompute("cpu", 0).ok());
}

TEST(ComputeDeviceTest, AutoUsesTheGpuWhenThereIsOneAndSaysWhyNot) {
  absl::StatusOr<SelectedCompute> chosen = SelectCompute("auto", kFourGiB);
  ASSERT_TRUE(chosen.ok()) << chosen.status();  // auto never fails
  absl::StatusOr<SelectedCompute> cuda = SelectCompute("cuda", kFourGiB);
  if (chosen->name() == "cpu") {
    EXPECT_EQ(&chosen->backend(), &compressor::CpuCompute());
    // The reason is the one --device=cuda gives.
    ASSERT_FALSE(cuda.ok());
    const std::string refused(cuda.status().message());
    const std::string prefix = "--device=cuda but ";
    ASSERT_THAT(refused, StartsWith(prefix));
    const std::string why =
        refused.substr(prefix.size(), refused.find("; start with") - prefix.size());
    EXPECT_EQ(chosen->description(), "cpu (--device=auto: " + why + "; the CPU computes)");
    if (!BuildHasCudaBackend()) {
      // Why: nvcc was not found, or the build was configured with NEXUSKV_CUDA=OFF (the
      // sanitizer trees).
      EXPECT_THAT(chosen->description(), HasSubstr("this build has no CUDA backend ("));
    }
  } else {
    // A machine with a GPU: auto and cuda agree.
    EXPECT_EQ(chosen->name(), "cuda");
    EXPECT_THAT(chosen->description(), HasSubstr("(--device=auto: a usable GPU was found; "));
    ASSERT_TRUE(cuda.ok()) << cuda.status();
    EXPECT_EQ(cuda->name(), "cuda");
  }
}

TEST(ComputeDeviceTest, CudaWithoutAGpuRefusesToStartSayingWhatToDo) {
  absl::StatusOr<SelectedCompute> cuda = SelectCompute("cuda", kFourGiB);
  if (cuda.ok()) GTEST_SKIP() << "this machine has a usable GPU: " << cuda->description();
  EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition) << cuda.status();
  EXPECT_THAT(std::string(cuda.status().message()), StartsWith("--device=cuda but "));
  EXPECT_THAT(std::string(cuda.status().message()),
              HasSubstr("; start with --device=cpu, or --device=auto to use a GPU only when one "
                        "is present"));
  if (!BuildHasCudaBackend()) {
    EXPECT_THAT(std::string(cuda.status().message()),
                StartsWith("--device=cuda but this build has no CUDA backend ("));
  }
}

TEST(ComputeDeviceTest, RefusesUnknownDevicesAndAZeroGpuBound) {
  for (const char* device : {"gpu", "CUDA", "", "cuda:0"}) {
    absl::StatusOr<SelectedCompute> bad = SelectCompute(device, kFourGiB);
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << device;
    EXPECT_THAT(std::string(bad.status().message()),
                HasSubstr("--device must be auto, cpu or cuda, got \""))
        << device;
  }
  for (const char* device : {"cuda", "auto"}) {
    absl::StatusOr<SelectedCompute> zero = SelectCompute(device, 0);
    EXPECT_EQ(zero.status().code(), absl::StatusCode::kInvalidArgument) << device;
    EXPECT_THAT(std::string(zero.status().message()),
                HasSubstr("positive GPU memory bound (--gpu_memory_mb)"));
  }
}

TEST(ComputeDeviceTest, TheBackendOutlivesAMove) {
  absl::StatusOr<SelectedCompute> chosen = SelectCompute("auto", kFourGiB);
  ASSERT_TRUE(chosen.ok());
  const compressor::ComputeBackend* backend = &chosen->backend();
  SelectedCompute moved = *std::move(chosen);
  EXPECT_EQ(&moved.backend(), backend);
  std::vector<float> logits = {1.0f, 2.0f};
  EXPECT_TRUE(moved.backend().Softmax(logits, 1, 2, {}, {}).ok());
}

}  // namespace
}  // namespace nexuskv::service
