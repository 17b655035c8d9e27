// --device and --gpu_memory_mb against the real server: --device=cuda on a machine without a
// usable GPU (every CI machine) exits at startup with a nonzero status and the reason; auto starts
// on what SelectCompute picks here and logs it; out-of-range values refuse to start. The expected
// outcome on this machine comes from SelectCompute itself (the library the server links), so the
// test also holds where a GPU is present.
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/compute_device.h"
#include "tests/integration/server_process.h"

namespace nexuskv::testing {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<std::unique_ptr<ServerProcess>> StartWith(std::vector<std::string> flags) {
  ServerProcessOptions options;
  options.extra_flags = std::move(flags);
  return ServerProcess::Start(options);
}

TEST(DeviceFlagTest, CudaWithoutAGpuExitsAtStartupSayingWhy) {
  const absl::StatusOr<service::SelectedCompute> here =
      service::SelectCompute("cuda", uint64_t{4096} << 20);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = StartWith({"--device=cuda"});
  if (here.ok()) {  // A GPU machine: the server computes on it.
    ASSERT_TRUE(server.ok()) << server.status();
    EXPECT_THAT((*server)->LogTail(), HasSubstr("compute=cuda"));
    return;
  }
  ASSERT_FALSE(server.ok()) << "--device=cuda started without a usable GPU";
  const std::string message(server.status().message());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kFailedPrecondition) << message;
  EXPECT_THAT(message, HasSubstr("server exited during startup (exit 1)"));
  EXPECT_THAT(message, HasSubstr("event=compute_unavailable"));
  EXPECT_THAT(message, HasSubstr(std::string(here.status().message())));
  EXPECT_THAT(message, HasSubstr("--device=cuda but "));
  EXPECT_THAT(message, HasSubstr("start with --device=cpu, or --device=auto"));
}

TEST(DeviceFlagTest, AutoStartsOnWhatItFindsAndLogsIt) {
  const absl::StatusOr<service::SelectedCompute> here =
      service::SelectCompute("auto", uint64_t{4096} << 20);
  ASSERT_TRUE(here.ok()) << here.status();
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = StartWith({});  // auto is the default
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string log = (*server)->LogTail();
  EXPECT_THAT(log, HasSubstr("event=compute_device backend=" + std::string(here->name())));
  EXPECT_THAT(log, HasSubstr(here->description()));
  EXPECT_THAT(log, HasSubstr("compute=" + std::string(here->name())));
  EXPECT_TRUE((*server)->Stop().ok()) << (*server)->last_exit();
}

TEST(DeviceFlagTest, CpuStartsOnTheCpu) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = StartWith({"--device=cpu"});
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_THAT((*server)->LogTail(), HasSubstr("detail=\"cpu (--device=cpu)\""));
  EXPECT_THAT((*server)->LogTail(), HasSubstr("compute=cpu"));
}

TEST(DeviceFlagTest, OutOfRangeValuesRefuseToStart) {
  for (const auto& [flag, says] : std::vector<std::pair<std::string, std::string>>{
           {"--device=gpu", "--device must be auto, cpu or cuda, got \\\"gpu\\\""},
           {"--gpu_memory_mb=0", "--gpu_memory_mb must be in [1, 2^43], got 0"}}) {
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = StartWith({flag});
    ASSERT_FALSE(server.ok()) << flag;
    EXPECT_EQ(server.status().code(), absl::StatusCode::kFailedPrecondition) << server.status();
    EXPECT_THAT(std::string(server.status().message()), HasSubstr("event=bad_flag")) << flag;
    EXPECT_THAT(std::string(server.status().message()), HasSubstr(says)) << flag;
  }
}

}  // namespace
}  // namespace nexuskv::testing
