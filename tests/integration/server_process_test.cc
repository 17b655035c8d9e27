// The ServerProcess harness itself, against the real nexuskv-server: what it promises other
// integration tests (health wait, durable data across Kill/Restart, graceful Stop, log capture).
#include "tests/integration/server_process.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>

namespace nexuskv::testing {
namespace {

using ::testing::HasSubstr;

// One float16 turn of a 1-layer model.
absl::StatusOr<v1::AppendSegmentResponse> AppendTurn(client::Client& client, uint32_t turn) {
  const std::vector<float> kv(2 * 4 * 8, 0.5f);
  client::FloatTurnTensors t;
  t.session_id = "harness";
  t.turn = turn;
  t.first_position = 4 * turn;
  t.role = v1::ROLE_USER;
  t.model.set_model_id("harness-model");
  t.model.set_num_layers(1);
  t.model.set_num_kv_heads(2);
  t.model.set_num_query_heads(2);
  t.model.set_head_dim(8);
  t.model.set_dtype(v1::DTYPE_FLOAT16);
  t.layers = {{kv, kv, {}}};
  return client.AppendTurn(t);
}

class ServerProcessTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (server_ != nullptr && HasFailure()) {
      std::cerr << "--- nexuskv-server log ---\n" << server_->LogTail() << "\n";
    }
  }
  std::unique_ptr<ServerProcess> server_;
};

TEST_F(ServerProcessTest, DataSurvivesKillAndRestart) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = *std::move(server);
  EXPECT_TRUE(server_->running());
  EXPECT_TRUE(std::filesystem::is_directory(server_->data_dir()));
  absl::StatusOr<std::unique_ptr<client::Client>> client = server_->Connect(absl::Seconds(20));
  ASSERT_TRUE(client.ok()) << client.status();

  absl::StatusOr<v1::AppendSegmentResponse> ack = AppendTurn(**client, 0);
  ASSERT_TRUE(ack.ok()) << ack.status();
  const std::string address = server_->address();

  // An acknowledged turn is durable: it survives SIGKILL.
  ASSERT_TRUE(server_->Kill().ok());
  EXPECT_FALSE(server_->running());
  EXPECT_EQ(server_->last_exit(), "signal 9 (Killed)");
  ASSERT_TRUE(server_->Restart().ok());
  EXPECT_EQ(server_->address(), address);
  // The client made before the crash reconnects by itself.
  absl::StatusOr<v1::SessionInfo> info = (*client)->GetSession("harness");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->num_turns(), 1u);
  ASSERT_TRUE(AppendTurn(**client, 1).ok());

  // SIGTERM is a graceful shutdown, and the turns are still there afterwards.
  ASSERT_TRUE(server_->Stop().ok()) << server_->last_exit();
  EXPECT_EQ(server_->last_exit(), "exit 0");
  ASSERT_TRUE(server_->Restart().ok());
  info = (*client)->GetSession("harness");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->num_turns(), 2u);
  EXPECT_THAT(server_->LogTail(), HasSubstr("=== ServerProcess: starting "));
}

TEST_F(ServerProcessTest, TempDirIsRemovedAtTheEnd) {
  std::string root;
  {
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    root = std::filesystem::path((*server)->data_dir()).parent_path();
    EXPECT_TRUE(std::filesystem::exists(root));
  }
  if (std::getenv("NEXUSKV_KEEP_TEST_DIRS") == nullptr) {
    EXPECT_FALSE(std::filesystem::exists(root));
  }
}

TEST_F(ServerProcessTest, BadFlagsFailStartWithTheLog) {
  ServerProcessOptions options;
  options.extra_flags = {"--no_such_flag_for_nexuskv=1"};
  options.startup_timeout = absl::Seconds(10);
  const absl::Status status = ServerProcess::Start(options).status();
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(status.message(), HasSubstr("--- server log"));
}

// --config=FILE.yaml sets flags as the command line does; the command line wins over it; a file
// naming an unknown flag stops the server with the file, the line and the name in its log.
TEST_F(ServerProcessTest, ConfigFileSetsFlagsAndTheCommandLineWins) {
  const std::string config =
      ::testing::TempDir() + "/nexuskv-config-" + std::to_string(::getpid()) + ".yaml";
  std::ofstream(config) << "# 4-token turns are over this limit\nmax_tokens_per_turn: 2\n";
  ServerProcessOptions options;
  options.extra_flags = {"--config=" + config};
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = *std::move(server);
  absl::StatusOr<std::unique_ptr<client::Client>> client = server_->Connect(absl::Seconds(20));
  ASSERT_TRUE(client.ok()) << client.status();
  const absl::Status refused = AppendTurn(**client, 0).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_THAT(refused.message(), HasSubstr("--max_tokens_per_turn"));
  ASSERT_TRUE(server_->Stop().ok());

  options.extra_flags = {"--config=" + config, "--max_tokens_per_turn=8"};
  server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = *std::move(server);
  client = server_->Connect(absl::Seconds(20));
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE(AppendTurn(**client, 0).ok());
  ASSERT_TRUE(server_->Stop().ok());
  server_.reset();

  std::ofstream(config) << "sync_writes: true\nmax_tokns_per_turn: 2\n";
  options.extra_flags = {"--config=" + config};
  options.startup_timeout = absl::Seconds(10);
  const absl::Status bad = ServerProcess::Start(options).status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kFailedPrecondition) << bad;
  EXPECT_THAT(bad.message(), HasSubstr(".yaml, line 2: unknown flag"));
  EXPECT_THAT(bad.message(), HasSubstr("max_tokns_per_turn"));
  std::filesystem::remove(config);
}

TEST_F(ServerProcessTest, MissingBinaryIsNotFound) {
  ServerProcessOptions options;
  options.binary = "/nonexistent/nexuskv-server";
  EXPECT_EQ(ServerProcess::Start(options).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace nexuskv::testing
