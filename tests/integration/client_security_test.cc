// The C++ client's security options against the real nexuskv-server: ClientOptions::bearer_token
// against a server with a tokens file, and TlsCredentialsFromFiles against TLS and mutual TLS
// (certificates made by openssl, see pki.h).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "clients/cpp/client.h"
#include "service/auth.h"
#include "tests/integration/client_test_util.h"
#include "tests/integration/pki.h"
#include "tests/integration/server_process.h"

namespace nexuskv::testing {
namespace {

namespace v1 = ::nexuskv::v1;

class ClientSecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "nexuskv-client-security-XXXXXX";
    ASSERT_NE(::mkdtemp(dir_.data()), nullptr);
  }
  void TearDown() override {
    if (HasFailure() && server_) std::cerr << "server log:\n" << server_->LogTail() << "\n";
    server_.reset();
    std::filesystem::remove_all(dir_);
  }

  void StartServer(ServerProcessOptions options) {
    options.extra_flags.push_back("--sync_writes=false");
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  // Writes a tokens file: tenant-a holds token-a, tenant-b holds token-b.
  std::string WriteTokensFile() {
    const std::string path = dir_ + "/tokens";
    std::ofstream(path) << "tenant-a sha256:" << service::TenantDirectory::HashToken("token-a")
                        << "\ntenant-b sha256:" << service::TenantDirectory::HashToken("token-b")
                        << "\n";
    return path;
  }

  std::unique_ptr<client::Client> Connect(client::ClientOptions options) {
    options.target = server_->address();
    options.timeout = absl::Seconds(20);
    absl::StatusOr<std::unique_ptr<client::Client>> client = client::Client::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  std::unique_ptr<client::Client> ConnectWithToken(const std::string& token) {
    client::ClientOptions options;
    options.bearer_token = token;
    return Connect(options);
  }

  std::unique_ptr<client::Client> ConnectWithTls(const client::TlsFiles& files,
                                                 const std::string& token = "") {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
        client::TlsCredentialsFromFiles(files);
    EXPECT_TRUE(credentials.ok()) << credentials.status();
    if (!credentials.ok()) return nullptr;
    client::ClientOptions options;
    options.credentials = *credentials;
    options.bearer_token = token;
    return Connect(options);
  }

  std::string dir_;
  std::unique_ptr<ServerProcess> server_;
};

TEST_F(ClientSecurityTest, BearerTokenIsSentOnEveryCall) {
  ASSERT_NO_FATAL_FAILURE(
      StartServer({.extra_flags = {"--auth_tokens_file=" + WriteTokensFile()}}));
  std::unique_ptr<client::Client> a = ConnectWithToken("token-a");
  ASSERT_NE(a, nullptr);

  // Every RPC goes through with the right token (a call without it would be UNAUTHENTICATED).
  OwnedTurn turn = MakeTurn("chat", 0, 3, 1, 0);
  absl::StatusOr<v1::AppendSegmentResponse> ack = a->AppendTurn(turn.turn);
  ASSERT_TRUE(ack.ok()) << ack.status();
  absl::StatusOr<client::Cache> cache = GetFull(*a, "chat");
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_EQ(cache->header.entries_per_layer(0), 3u);
  ASSERT_TRUE(a->GetSession("chat").ok());
  absl::StatusOr<std::vector<v1::SessionInfo>> listed = a->ListAllSessions();
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->size(), 1u);

  // The token picks the tenant: tenant-b sees nothing of tenant-a's.
  std::unique_ptr<client::Client> b = ConnectWithToken("token-b");
  ASSERT_NE(b, nullptr);
  absl::StatusOr<std::vector<v1::SessionInfo>> b_listed = b->ListAllSessions();
  ASSERT_TRUE(b_listed.ok()) << b_listed.status();
  EXPECT_TRUE(b_listed->empty());
  EXPECT_EQ(b->GetSession("chat").status().code(), absl::StatusCode::kNotFound);

  // A wrong token, or none, is UNAUTHENTICATED on every RPC, and changes nothing.
  for (const std::string token : {"token-c", ""}) {
    std::unique_ptr<client::Client> wrong = ConnectWithToken(token);
    ASSERT_NE(wrong, nullptr);
    OwnedTurn next = MakeTurn("chat", 1, 2, 1, 3);
    EXPECT_EQ(wrong->AppendTurn(next.turn).status().code(), absl::StatusCode::kUnauthenticated)
        << "token '" << token << "'";
    EXPECT_EQ(GetFull(*wrong, "chat").status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(wrong->GetSession("chat").status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(wrong->ListAllSessions().status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(wrong->DeleteSession("chat").status().code(), absl::StatusCode::kUnauthenticated);
  }

  absl::StatusOr<v1::DeleteSessionResponse> deleted = a->DeleteSession("chat");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->deleted_turns(), 1u);
}

TEST_F(ClientSecurityTest, TlsConvenienceConnectsWithAClientCertificate) {
  absl::StatusOr<Pki> pki = Pki::Make(dir_);
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

  std::unique_ptr<client::Client> client =
      ConnectWithTls({.root_ca_file = pki->path("ca.pem"),
                      .cert_chain_file = pki->path("client.pem"),
                      .private_key_file = pki->path("client.key")});
  ASSERT_NE(client, nullptr);
  OwnedTurn turn = MakeTurn("tls", 0, 3, 1, 0);
  ASSERT_TRUE(client->AppendTurn(turn.turn).ok());
  absl::StatusOr<client::Cache> cache = GetFull(*client, "tls");
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_EQ(cache->layers[0].keys(), turn.storage[0]);

  // The server refuses a client without a certificate, or with one from another CA, and a
  // plaintext client; the client does not accept a server its CA did not sign.
  for (const client::TlsFiles& refused : {client::TlsFiles{.root_ca_file = pki->path("ca.pem")},
                                          client::TlsFiles{.root_ca_file = pki->path("ca.pem"),
                                          .cert_chain_file = pki->path("rogue-client.pem"),
                                          .private_key_file = pki->path("rogue-client.key")},
                                          client::TlsFiles{.root_ca_file = pki->path("rogue.pem"),
                                          .cert_chain_file = pki->path("client.pem"),
                                          .private_key_file = pki->path("client.key")}}) {
    std::unique_ptr<client::Client> other = ConnectWithTls(refused);
    ASSERT_NE(other, nullptr);
    EXPECT_EQ(other->GetSession("tls").status().code(), absl::StatusCode::kUnavailable)
        << refused.root_ca_file << " " << refused.cert_chain_file;
  }
  std::unique_ptr<client::Client> plaintext = Connect({});
  ASSERT_NE(plaintext, nullptr);
  EXPECT_EQ(plaintext->GetSession("tls").status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(ClientSecurityTest, TlsAndBearerTokenTogether) {
  absl::StatusOr<Pki> pki = Pki::Make(dir_);
  ASSERT_TRUE(pki.ok()) << pki.status();
  grpc::SslCredentialsOptions harness;
  harness.pem_root_certs = pki->pem("ca.pem");
  ASSERT_NO_FATAL_FAILURE(StartServer({.extra_flags = {"--tls_cert_file=" + pki->path("server.pem"),
                                                       "--tls_key_file=" + pki->path("server.key"),
                                                       "--auth_tokens_file=" + WriteTokensFile()},
                                       .credentials = grpc::SslCredentials(harness)}));
  const client::TlsFiles files{.root_ca_file = pki->path("ca.pem")};
  std::unique_ptr<client::Client> a = ConnectWithTls(files, "token-a");
  ASSERT_NE(a, nullptr);
  OwnedTurn turn = MakeTurn("both", 0, 2, 1, 0);
  ASSERT_TRUE(a->AppendTurn(turn.turn).ok());
  absl::StatusOr<std::vector<v1::SessionInfo>> listed = a->ListAllSessions();
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->size(), 1u);
  std::unique_ptr<client::Client> anonymous = ConnectWithTls(files);
  ASSERT_NE(anonymous, nullptr);
  EXPECT_EQ(anonymous->ListAllSessions().status().code(), absl::StatusCode::kUnauthenticated);
}

}  // namespace
}  // namespace nexuskv::testing
