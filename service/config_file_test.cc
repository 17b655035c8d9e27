#include "service/config_file.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nexuskv::service {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

bool IsFlag(std::string_view name) {
  static const std::set<std::string_view> kFlags = {"listen",      "data_dir",      "sync_writes",
                                                    "merge_share", "raw_retention", "config"};
  return kFlags.count(name) > 0;
}

TEST(ConfigFileTest, ScalarsBecomeFlagsInFileOrder) {
  auto args = ConfigFileArguments(
      "# a comment\nlisten: 0.0.0.0:50051\nsync_writes: false\nmerge_share: 0.1\n"
      "raw_retention: \"12h\"\ndata_dir: /var/lib/nexuskv\n",
      "kv.yaml", IsFlag);
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_THAT(*args,
              ElementsAre("--listen=0.0.0.0:50051", "--sync_writes=false", "--merge_share=0.1",
                          "--raw_retention=12h", "--data_dir=/var/lib/nexuskv"));
  auto empty = ConfigFileArguments("# nothing set\n", "kv.yaml", IsFlag);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_THAT(*empty, IsEmpty());
}

TEST(ConfigFileTest, RefusesWhatIsNotAFlagMapping) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"listen: [a, b]\n", "line 1: the value of \"listen\" must be a single value"},
      {"listen: x\nlisten: y\n", "line 2: \"listen\" is given twice"},
      {"sync_writes: true\nno_such_flag: 1\n", "line 2: unknown flag \"no_such_flag\""},
      {"- listen\n", "expected a mapping of flag names to values"},
      {"config: other.yaml\n", "cannot name another one"},
      {"listen: [unclosed\n", "not YAML"},
      {"data_dir:\n  nested: 1\n", "must be a single value"},
  };
  for (const auto& [yaml, message] : cases) {
    auto args = ConfigFileArguments(yaml, "kv.yaml", IsFlag);
    ASSERT_FALSE(args.ok()) << yaml;
    EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument) << yaml;
    EXPECT_THAT(args.status().message(), HasSubstr("config file kv.yaml, line ")) << yaml;
    EXPECT_THAT(args.status().message(), HasSubstr(message)) << yaml;
  }
}

TEST(ConfigFileTest, TheFileComesBeforeTheCommandLineSoTheCommandLineWins) {
  const std::string path =
      ::testing::TempDir() + "/config_file_test_" + std::to_string(::getpid()) + ".yaml";
  std::ofstream(path) << "listen: 0.0.0.0:1\nsync_writes: false\n";
  for (const std::vector<std::string>& form :
       {std::vector<std::string>{"--config=" + path}, std::vector<std::string>{"--config", path}}) {
    std::vector<const char*> argv = {"nexuskv-server", "--listen=localhost:2"};
    for (const std::string& a : form) argv.push_back(a.c_str());
    argv.push_back("--data_dir=/tmp/x");
    auto args = ArgumentsWithConfigFile(static_cast<int>(argv.size()), argv.data(), IsFlag);
    ASSERT_TRUE(args.ok()) << args.status();
    EXPECT_THAT(*args, ElementsAre("nexuskv-server", "--listen=0.0.0.0:1", "--sync_writes=false",
                                   "--listen=localhost:2", "--data_dir=/tmp/x"));
  }
  const char* no_config[] = {"nexuskv-server", "--listen=localhost:2"};
  auto plain = ArgumentsWithConfigFile(2, no_config, IsFlag);
  ASSERT_TRUE(plain.ok());
  EXPECT_THAT(*plain, ElementsAre("nexuskv-server", "--listen=localhost:2"));
  std::filesystem::remove(path);

  const char* missing[] = {"nexuskv-server", "--config=/nonexistent/kv.yaml"};
  EXPECT_EQ(ArgumentsWithConfigFile(2, missing, IsFlag).status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace nexuskv::service
