// The `nexuskv` CLI end to end against the real nexuskv-server started by ServerProcess: demo-turn,
// put, ls, show, get, rm, run as a separate process; --token against a server with a tokens file
// and --tls-* against mutual TLS.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "service/auth.h"
#include "tensor/safetensors.h"
#include "tests/integration/pki.h"
#include "tests/integration/server_process.h"
#include "tests/integration/subprocess.h"

namespace nexuskv::testing {
namespace {

using ::nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr const char* kSession = "cli-e2e.session-1";
// Three turns as (tokens, role); positions follow each other from 0.
constexpr uint32_t kTokens[] = {8, 5, 6};
constexpr const char* kRoles[] = {"system", "user", "assistant"};
constexpr uint32_t kTotalTokens = 19;

// proto3 JSON prints 64-bit integers as strings and 32-bit ones as numbers.
uint64_t AsUint(const json& value) {
  if (value.is_string()) return std::stoull(value.get<std::string>());
  return value.get<uint64_t>();
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string dir = ::testing::TempDir() + "nexuskv-cli-test-XXXXXX";
    ASSERT_NE(::mkdtemp(dir.data()), nullptr);
    files_dir_ = dir;
    ASSERT_NO_FATAL_FAILURE(StartServer({}));
  }

  void StartServer(ServerProcessOptions options) {
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    address_ = server_->address();
  }

  void TearDown() override {
    if (server_ != nullptr && HasFailure()) {
      std::cerr << "--- nexuskv-server log ---\n" << server_->LogTail() << "\n";
    }
    std::error_code ignored;
    std::filesystem::remove_all(files_dir_, ignored);
  }

  // Runs `nexuskv --server ADDRESS args...`.
  CommandResult Cli(std::vector<std::string> args) {
    args.insert(args.begin(), {NEXUSKV_CLI_BIN, "--server", address_, "--timeout", "60"});
    absl::StatusOr<CommandResult> result = RunCommand(args, absl::Seconds(120));
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : CommandResult{};
  }

  // Runs the CLI, expects exit 0 and returns stdout parsed as JSON.
  json CliJson(std::vector<std::string> args) {
    args.push_back("--json");
    const CommandResult r = Cli(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    const json parsed = json::parse(r.out, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(parsed.is_discarded()) << "not JSON: " << r.out;
    return parsed;
  }

  std::string TurnPath(int turn) const { return absl::StrCat(files_dir_, "/turn", turn, ".st"); }

  // Writes turns 0..2 with demo-turn and appends them with put.
  void PutThreeTurns() {
    uint64_t position = 0;
    for (int t = 0; t < 3; ++t) {
      const CommandResult demo = Cli({"demo-turn",
                                      "--out",
                                      TurnPath(t),
                                      "--layers",
                                      "2",
                                      "--kv-heads",
                                      "2",
                                      "--query-heads",
                                      "4",
                                      "--head-dim",
                                      "16",
                                      "--tokens",
                                      absl::StrCat(kTokens[t]),
                                      "--probes",
                                      "4",
                                      "--dtype",
                                      "float16",
                                      "--seed",
                                      absl::StrCat(100 + t),
                                      "--first-position",
                                      absl::StrCat(position),
                                      "--role",
                                      kRoles[t]});
      ASSERT_EQ(demo.exit_code, 0) << demo.err;
      const CommandResult put =
          Cli({"put", kSession, "--turn", absl::StrCat(t), "--file", TurnPath(t)});
      ASSERT_EQ(put.exit_code, 0) << put.err;
      EXPECT_THAT(put.out, HasSubstr(absl::StrCat("stored turn ", t, " of ", kSession)));
      EXPECT_THAT(put.out, HasSubstr("compression runs in the background"));
      position += kTokens[t];
    }
  }

  std::unique_ptr<ServerProcess> server_;
  std::string address_;
  std::string files_dir_;
};

TEST_F(CliTest, PutListShowGetRemove) {
  ASSERT_NO_FATAL_FAILURE(PutThreeTurns());

  // ls: one row for the session with 3 turns and all tokens.
  const CommandResult ls = Cli({"ls"});
  ASSERT_EQ(ls.exit_code, 0) << ls.err;
  bool found = false;
  for (absl::string_view line : absl::StrSplit(ls.out, '\n')) {
    const std::vector<std::string> cells = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (cells.empty() || cells[0] != kSession) continue;
    found = true;
    ASSERT_GE(cells.size(), 3u) << line;
    EXPECT_EQ(cells[1], "3") << line;
    EXPECT_EQ(cells[2], absl::StrCat(kTotalTokens)) << line;
  }
  EXPECT_TRUE(found) << ls.out;
  const json listed = CliJson({"ls", "--prefix", "cli-e2e."});
  ASSERT_EQ(listed["sessions"].size(), 1u) << listed.dump();
  EXPECT_EQ(listed["sessions"][0]["session_id"], kSession);
  EXPECT_EQ(AsUint(listed["sessions"][0]["num_turns"]), 3u);
  EXPECT_EQ(AsUint(listed["sessions"][0]["total_tokens"]), kTotalTokens);
  EXPECT_EQ(CliJson({"ls", "--prefix", "nothing-like-it"})["sessions"].size(), 0u);

  // show: the summary and one row per turn, in the JSON too.
  const CommandResult show = Cli({"show", kSession});
  ASSERT_EQ(show.exit_code, 0) << show.err;
  EXPECT_THAT(show.out, HasSubstr("demo-model (L=2 H=2 Hq=4 D=16 float16)"));
  EXPECT_THAT(show.out, HasSubstr("assistant"));
  const json info = CliJson({"show", kSession});
  ASSERT_EQ(info["turns"].size(), 3u) << info.dump();
  for (int t = 0; t < 3; ++t) {
    EXPECT_EQ(AsUint(info["turns"][t]["num_tokens"]), kTokens[t]);
    EXPECT_EQ(AsUint(info["turns"][t]["num_probe_queries"]), 4u);
  }
  EXPECT_EQ(info["turns"][2]["role"], "ROLE_ASSISTANT");
  EXPECT_EQ(AsUint(info["next_position"]), kTotalTokens);
  // Each turn's fit per method that fits; a SONIC answer stores what it reads.
  ASSERT_EQ(Cli({"get", kSession, "--keep-ratio", "0.5"}).exit_code, 0);
  const json fitted = CliJson({"show", kSession});
  for (int t = 0; t < 3; ++t) {
    const json& fits = fitted["turns"][t]["fits"];
    ASSERT_EQ(fits.size(), 3u) << fits.dump();
    EXPECT_EQ(fits[0]["method"], "SONIC");
    EXPECT_EQ(fits[0]["state"], "FIT_STORED") << fits.dump();
    EXPECT_EQ(fits[1]["method"], "H2O");
    EXPECT_EQ(fits[2]["method"], "SNAPKV");
  }
  EXPECT_THAT(Cli({"show", kSession}).out, HasSubstr("sonic:stored"));

  // get --method full: every token comes back, and the file holds exactly the appended bytes.
  const std::string cache_path = files_dir_ + "/cache.safetensors";
  const json header = CliJson({"get", kSession, "--method", "full", "--out", cache_path});
  ASSERT_EQ(header["entries_per_layer"].size(), 2u) << header.dump();
  for (const json& n : header["entries_per_layer"]) EXPECT_EQ(AsUint(n), kTotalTokens);
  EXPECT_EQ(AsUint(header["original_tokens"]), kTotalTokens);
  EXPECT_EQ(AsUint(header["next_position"]), kTotalTokens);
  EXPECT_EQ(header["method"], "FULL");
  EXPECT_FALSE(header.contains("layers")) << "JSON output must not carry tensors";

  absl::StatusOr<SafetensorsFile> cache = ReadSafetensorsFile(cache_path);
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_EQ(cache->metadata().at("next_position"), absl::StrCat(kTotalTokens));
  EXPECT_EQ(cache->metadata().at("method"), "FULL");
  const SafetensorsTensor* keys = cache->Find("layers.1.keys");
  const SafetensorsTensor* positions = cache->Find("layers.1.positions");
  ASSERT_NE(keys, nullptr);
  ASSERT_NE(positions, nullptr);
  EXPECT_EQ(keys->dtype, "F16");
  EXPECT_EQ(keys->shape, (std::vector<uint64_t>{2, kTotalTokens, 16}));
  EXPECT_EQ(positions->dtype, "I64");
  std::string expected_head0;
  for (int t = 0; t < 3; ++t) {
    absl::StatusOr<SafetensorsFile> turn = ReadSafetensorsFile(TurnPath(t));
    ASSERT_TRUE(turn.ok()) << turn.status();
    expected_head0 += turn->Find("layers.1.keys")->data.substr(0, kTokens[t] * 16 * 2);
  }
  EXPECT_TRUE(keys->data.substr(0, expected_head0.size()) == expected_head0)
      << "layer 1 head 0 keys differ from the appended turns";
  int64_t last_position = 0;
  std::memcpy(&last_position, positions->data.data() + (kTotalTokens - 1) * 8, 8);
  EXPECT_EQ(last_position, kTotalTokens - 1);

  const CommandResult human = Cli({"get", kSession, "--method", "full"});
  ASSERT_EQ(human.exit_code, 0) << human.err;
  EXPECT_THAT(human.out, HasSubstr(absl::StrCat(kTotalTokens, " (every layer)")));

  // Retrying a stored turn is a no-op.
  const CommandResult again = Cli({"put", kSession, "--turn", "1", "--file", TurnPath(1)});
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_THAT(again.out, HasSubstr("already stored"));

  // rm, then the session is gone.
  const CommandResult rm = Cli({"rm", kSession});
  ASSERT_EQ(rm.exit_code, 0) << rm.err;
  EXPECT_THAT(rm.out, HasSubstr("deleted session cli-e2e.session-1: 3 turns"));
  EXPECT_EQ(CliJson({"ls"})["sessions"].size(), 0u);
  const CommandResult gone = Cli({"show", kSession});
  EXPECT_EQ(gone.exit_code, 1);
  EXPECT_THAT(gone.err, StartsWith("error: NOT_FOUND: "));
}

TEST_F(CliTest, UsageAndFileErrorsHaveTheirExitCodes) {
  EXPECT_EQ(Cli({"get", kSession}).exit_code, 2) << "a budget is required unless --method full";
  EXPECT_EQ(Cli({"get", kSession, "--keep-ratio", "0.5", "--max-tokens", "3"}).exit_code, 2);
  EXPECT_EQ(Cli({"ls", "--no-such-flag", "1"}).exit_code, 2);
  EXPECT_EQ(Cli({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(Cli({"put", kSession, "--file", TurnPath(0)}).exit_code, 2) << "--turn is required";

  const CommandResult missing = Cli({"put", kSession, "--turn", "0", "--file", TurnPath(9)});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.err, StartsWith("error: NOT_FOUND: cannot open "));

  // A turn that skips turn 0 is refused by the server and nothing is stored.
  ASSERT_EQ(Cli({"demo-turn", "--out", TurnPath(0), "--seed", "1"}).exit_code, 0);
  const CommandResult out_of_order = Cli({"put", kSession, "--turn", "1", "--file", TurnPath(0)});
  EXPECT_EQ(out_of_order.exit_code, 1);
  EXPECT_THAT(out_of_order.err, StartsWith("error: FAILED_PRECONDITION: "));
  EXPECT_EQ(CliJson({"ls"})["sessions"].size(), 0u);
  EXPECT_THAT(out_of_order.err, HasSubstr("(it has 0 turns)"));
}

// A budget that cannot hold one entry per layer is the server's INVALID_ARGUMENT, naming the
// smallest that can; that one is served.
TEST_F(CliTest, BudgetsTooSmallForOneEntryPerLayerAreRefused) {
  ASSERT_NO_FATAL_FAILURE(PutThreeTurns());
  // 2 layers x 2 kv heads x (2 x 16 x 2 bytes + 4 bytes of bias).
  const CommandResult tiny = Cli({"get", kSession, "--max-bytes", "10"});
  EXPECT_EQ(tiny.exit_code, 1);
  EXPECT_THAT(tiny.err, StartsWith("error: INVALID_ARGUMENT: budget.max_bytes 10 cannot hold one "
                                   "entry per layer"));
  EXPECT_THAT(tiny.err, HasSubstr("the smallest max_bytes is 272"));
  const json smallest = CliJson({"get", kSession, "--max-bytes", "272"});
  EXPECT_EQ(AsUint(smallest["entries_per_layer"][0]), 1u) << smallest.dump();
  const CommandResult ratio = Cli({"get", kSession, "--keep-ratio", "0.0001", "--method", "h2o"});
  EXPECT_EQ(ratio.exit_code, 1);
  EXPECT_THAT(ratio.err, HasSubstr("the smallest keep_ratio that keeps one is"));
}

TEST_F(CliTest, EachCommandHasItsOwnHelp) {
  const CommandResult overview = Cli({"--help"});
  EXPECT_EQ(overview.exit_code, 0);
  EXPECT_THAT(overview.out, HasSubstr("Commands:"));
  for (const std::string command : {"ls", "show", "rm", "get", "put", "demo-turn"}) {
    for (const std::vector<std::string>& args :
         {std::vector<std::string>{command, "--help"}, std::vector<std::string>{"help", command}}) {
      const CommandResult help = Cli(args);
      EXPECT_EQ(help.exit_code, 0) << help.err;
      EXPECT_THAT(help.out, StartsWith("Usage: nexuskv " + command)) << help.out;
      EXPECT_THAT(help.out, Not(HasSubstr("Commands:")));
      EXPECT_THAT(help.out, HasSubstr("--server HOST:PORT"));
    }
    EXPECT_THAT(overview.out, HasSubstr("  " + command));
  }
  EXPECT_THAT(Cli({"get", "--help"}).out, HasSubstr("--keep-recent-turns N"));
  EXPECT_EQ(Cli({"help", "frobnicate"}).exit_code, 2);
}

// The security flags, each against a server configured for them (started by the test itself).
class CliSecurityTest : public CliTest {
 protected:
  void SetUp() override {
    std::string dir = ::testing::TempDir() + "nexuskv-cli-security-XXXXXX";
    ASSERT_NE(::mkdtemp(dir.data()), nullptr);
    files_dir_ = dir;
  }
};

TEST_F(CliSecurityTest, TokenFlagAndEnvironmentVariable) {
  const std::string tokens = files_dir_ + "/tokens";
  std::ofstream(tokens) << "tenant-a sha256:" << service::TenantDirectory::HashToken("token-a")
                        << "\n";
  ASSERT_NO_FATAL_FAILURE(StartServer({.extra_flags = {"--auth_tokens_file=" + tokens}}));
  ASSERT_EQ(Cli({"demo-turn", "--out", TurnPath(0), "--seed", "1"}).exit_code, 0);

  const CommandResult put =
      Cli({"--token", "token-a", "put", kSession, "--turn", "0", "--file", TurnPath(0)});
  ASSERT_EQ(put.exit_code, 0) << put.err;
  EXPECT_THAT(put.out, HasSubstr(absl::StrCat("stored turn 0 of ", kSession)));
  const json listed = CliJson({"ls", "--token=token-a"});
  ASSERT_EQ(listed["sessions"].size(), 1u) << listed.dump();
  EXPECT_EQ(listed["sessions"][0]["session_id"], kSession);

  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"ls"}, std::vector<std::string>{"ls", "--token", "token-b"},
        std::vector<std::string>{"show", kSession, "--token", "token-b"}}) {
    const CommandResult refused = Cli(args);
    EXPECT_EQ(refused.exit_code, 1) << absl::StrJoin(args, " ");
    EXPECT_THAT(refused.err, StartsWith("error: UNAUTHENTICATED: ")) << absl::StrJoin(args, " ");
  }
  EXPECT_EQ(Cli({"ls", "--token="}).exit_code, 2) << "an empty --token is a usage error";

  // $NEXUSKV_TOKEN stands in for --token; --token wins over it.
  ASSERT_EQ(::setenv("NEXUSKV_TOKEN", "token-a", 1), 0);
  const CommandResult from_env = Cli({"show", kSession});
  const CommandResult flag_wins = Cli({"show", kSession, "--token", "token-b"});
  ::unsetenv("NEXUSKV_TOKEN");
  EXPECT_EQ(from_env.exit_code, 0) << from_env.err;
  EXPECT_EQ(flag_wins.exit_code, 1);
  EXPECT_THAT(flag_wins.err, StartsWith("error: UNAUTHENTICATED: "));
}

TEST_F(CliSecurityTest, TlsFlagsWithAClientCertificate) {
  absl::StatusOr<Pki> pki = Pki::Make(files_dir_);
  ASSERT_TRUE(pki.ok()) << pki.status();
  grpc::SslCredentialsOptions harness;  // For the harness's own health checks.
  harness.pem_root_certs = pki->pem("ca.pem");
  harness.pem_cert_chain = pki->pem("client.pem");
  harness.pem_private_key = pki->pem("client.key");
  ASSERT_NO_FATAL_FAILURE(
      StartServer({.extra_flags = {"--tls_cert_file=" + pki->path("server.pem"),
                                   "--tls_key_file=" + pki->path("server.key"),
                                   "--tls_client_ca_file=" + pki->path("ca.pem")},
                   .credentials = grpc::SslCredentials(harness)}));
  const std::vector<std::string> tls = {"--tls-ca",   pki->path("ca.pem"),
                                        "--tls-cert", pki->path("client.pem"),
                                        "--tls-key",  pki->path("client.key")};
  auto with_tls = [&](std::vector<std::string> args) {
    args.insert(args.end(), tls.begin(), tls.end());
    return args;
  };

  ASSERT_EQ(Cli({"demo-turn", "--out", TurnPath(0), "--seed", "1"}).exit_code, 0);
  const CommandResult put = Cli(with_tls({"put", kSession, "--turn", "0", "--file", TurnPath(0)}));
  ASSERT_EQ(put.exit_code, 0) << put.err;
  EXPECT_EQ(CliJson(with_tls({"ls"}))["sessions"].size(), 1u);

  const CommandResult plaintext = Cli({"ls"});
  EXPECT_EQ(plaintext.exit_code, 1);
  EXPECT_THAT(plaintext.err, StartsWith("error: UNAVAILABLE: "));
  const CommandResult no_cert = Cli({"ls", "--tls-ca", pki->path("ca.pem")});
  EXPECT_EQ(no_cert.exit_code, 1);
  EXPECT_THAT(no_cert.err, StartsWith("error: UNAVAILABLE: "));
  EXPECT_EQ(Cli({"ls", "--tls-cert", pki->path("client.pem")}).exit_code, 2)
      << "--tls-cert without --tls-key is a usage error";
  const CommandResult missing = Cli({"ls", "--tls-ca", files_dir_ + "/nope.pem"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.err, StartsWith("error: NOT_FOUND: cannot read the root CA file "));
}

}  // namespace
}  // namespace nexuskv::testing
