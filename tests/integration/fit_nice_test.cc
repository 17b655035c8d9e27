// --fit_nice against the real server: out-of-range values refuse to start, and the running server's
// fit workers (threads named "fit") sit at the nice the flag says while every other thread keeps
// the process's.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/server_process.h"

namespace nexuskv::testing {
namespace {

using ::testing::HasSubstr;

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

struct ThreadInfo {
  std::string name;
  int nice = 0;
};

// Every thread of `pid`, by thread id: its name (comm) and nice value (field 19 of its stat).
std::map<std::string, ThreadInfo> Threads(pid_t pid) {
  std::map<std::string, ThreadInfo> out;
  const std::filesystem::path tasks = "/proc/" + std::to_string(pid) + "/task";
  for (const auto& entry : std::filesystem::directory_iterator(tasks)) {
    const std::string stat = ReadFile(entry.path() / "stat");
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;  // The thread exited while we looked.
    // After "pid (comm) ": state is field 3, so nice (19) is the 17th of the rest.
    const std::vector<std::string> fields =
        absl::StrSplit(stat.substr(close + 2), ' ', absl::SkipEmpty());
    ThreadInfo info;
    info.name = std::string(absl::StripSuffix(ReadFile(entry.path() / "comm"), "\n"));
    if (fields.size() < 17 || !absl::SimpleAtoi(fields[16], &info.nice)) continue;
    out[entry.path().filename().string()] = info;
  }
  return out;
}

TEST(FitNiceTest, OutOfRangeValuesRefuseToStart) {
  for (const char* flag : {"--fit_nice=20", "--fit_nice=-1"}) {
    ServerProcessOptions options;
    options.extra_flags = {flag};
    auto server = ServerProcess::Start(options);
    ASSERT_FALSE(server.ok()) << flag;
    EXPECT_EQ(server.status().code(), absl::StatusCode::kFailedPrecondition) << server.status();
    EXPECT_THAT(server.status().message(), HasSubstr("--fit_nice must be in [0, 19]")) << flag;
  }
}

TEST(FitNiceTest, FitWorkersRunAtTheFlagsNiceAndNoOtherThreadDoes) {
  ServerProcessOptions options;
  options.extra_flags = {"--fit_nice=7", "--fit_threads=2", "--rpc_threads=3"};
  auto server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  const pid_t pid = (*server)->pid();
  const std::map<std::string, ThreadInfo> process = Threads(pid);
  const int base = process.at(std::to_string(pid)).nice;  // The main thread's.
  // A worker names itself only after setting its nice; wait (no deadline but ctest's) for all.
  std::map<std::string, ThreadInfo> threads;
  int fit = 0, rpc = 0;
  while (fit < 2 || rpc < 3) {
    threads = Threads(pid);
    fit = 0;
    rpc = 0;
    for (const auto& [tid, info] : threads) {
      fit += info.name == "fit";
      rpc += info.name == "rpc";
    }
    if (fit < 2 || rpc < 3) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (const auto& [tid, info] : threads) {
    EXPECT_EQ(info.nice, info.name == "fit" ? std::min(base + 7, 19) : base)
        << "thread " << tid << " (" << info.name << ")";
  }
}

}  // namespace
}  // namespace nexuskv::testing
