// TLS, mutual TLS and tenant isolation against the real server: certificates are made here with
// the openssl CLI, tokens go in a real tokens file, and every call crosses a real socket.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "nexuskv/v1/kv_memory.grpc.pb.h"
#include "service/auth.h"
#include "tests/integration/pki.h"
#include "tests/integration/server_process.h"

namespace nexuskv::testing {
namespace {

namespace v1 = ::nexuskv::v1;
using ::testing::HasSubstr;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/nexuskv-security-" + std::to_string(::getpid());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    if (HasFailure() && server_) std::cerr << server_->LogTail() << "\n";
    std::filesystem::remove_all(dir_);
  }

  std::string dir_;
  std::unique_ptr<ServerProcess> server_;
};

v1::AppendSegmentRequest Header(const std::string& session) {
  v1::AppendSegmentRequest r;
  v1::SegmentHeader* h = r.mutable_header();
  h->set_session_id(session);
  h->set_num_tokens(2);
  h->set_role(v1::ROLE_USER);
  v1::ModelSpec* m = h->mutable_model();
  m->set_model_id("m");
  m->set_num_layers(1);
  m->set_num_kv_heads(1);
  m->set_num_query_heads(1);
  m->set_head_dim(2);
  m->set_dtype(v1::DTYPE_FLOAT32);
  return r;
}

v1::AppendSegmentRequest Layer(float value) {
  v1::AppendSegmentRequest r;
  std::vector<float> v(4, value);
  r.mutable_layer()->set_keys(std::string(reinterpret_cast<char*>(v.data()), 16));
  r.mutable_layer()->set_values(std::string(reinterpret_cast<char*>(v.data()), 16));
  return r;
}

void WithToken(grpc::ClientContext& context, const std::string& token) {
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
}

grpc::Status Append(v1::KvMemory::Stub& stub, const std::string& token, const std::string& session,
                    float value) {
  grpc::ClientContext context;
  WithToken(context, token);
  v1::AppendSegmentResponse response;
  auto writer = stub.AppendSegment(&context, &response);
  writer->Write(Header(session));
  writer->Write(Layer(value));
  writer->WritesDone();
  return writer->Finish();
}

TEST_F(SecurityTest, MutualTlsRefusesClientsWithoutAValidCertificate) {
  auto pki = Pki::Make(dir_);
  ASSERT_TRUE(pki.ok()) << pki.status();
  grpc::SslCredentialsOptions good;
  good.pem_root_certs = pki->pem("ca.pem");
  good.pem_private_key = pki->pem("client.key");
  good.pem_cert_chain = pki->pem("client.pem");
  auto server =
      ServerProcess::Start({.extra_flags = {"--tls_cert_file=" + pki->path("server.pem"),
                                            "--tls_key_file=" + pki->path("server.key"),
                                            "--tls_client_ca_file=" + pki->path("ca.pem")},
                            .credentials = grpc::SslCredentials(good)});
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = std::move(*server);

  auto call = [&](std::shared_ptr<grpc::ChannelCredentials> creds) {
    auto stub = v1::KvMemory::NewStub(grpc::CreateChannel(server_->address(), creds));
    return Append(*stub, "", "tls-session", 1.0f);
  };
  EXPECT_TRUE(call(grpc::SslCredentials(good)).ok());

  grpc::SslCredentialsOptions no_cert;
  no_cert.pem_root_certs = pki->pem("ca.pem");
  EXPECT_EQ(call(grpc::SslCredentials(no_cert)).error_code(), grpc::UNAVAILABLE);

  grpc::SslCredentialsOptions rogue = good;
  rogue.pem_private_key = pki->pem("rogue-client.key");
  rogue.pem_cert_chain = pki->pem("rogue-client.pem");
  EXPECT_EQ(call(grpc::SslCredentials(rogue)).error_code(), grpc::UNAVAILABLE);

  EXPECT_EQ(call(grpc::InsecureChannelCredentials()).error_code(), grpc::UNAVAILABLE);
  EXPECT_THAT(ReadAll(server_->log_path()), HasSubstr("tls=mutual"));
}

TEST_F(SecurityTest, TenantsCannotReadListDeleteOrOverwriteEachOther) {
  const std::string tokens = dir_ + "/tokens";
  std::ofstream(tokens) << "# test tenants\n"
                        << "tenant-a sha256:" << service::TenantDirectory::HashToken("token-a")
                        << "\ntenant-b sha256:" << service::TenantDirectory::HashToken("token-b")
                        << "\n";
  auto server = ServerProcess::Start({.extra_flags = {"--auth_tokens_file=" + tokens}});
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = std::move(*server);
  auto stub = v1::KvMemory::NewStub(
      grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));

  ASSERT_TRUE(Append(*stub, "token-a", "shared-name", 1.0f).ok());

  // B cannot see, read, list or delete A's session.
  {
    grpc::ClientContext c;
    WithToken(c, "token-b");
    v1::GetSessionRequest r;
    r.set_session_id("shared-name");
    v1::SessionInfo info;
    EXPECT_EQ(stub->GetSession(&c, r, &info).error_code(), grpc::NOT_FOUND);
  }
  {
    grpc::ClientContext c;
    WithToken(c, "token-b");
    v1::GetCacheRequest r;
    r.set_session_id("shared-name");
    r.set_method(v1::FULL);
    auto reader = stub->GetCache(&c, r);
    v1::GetCacheResponse response;
    while (reader->Read(&response)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::NOT_FOUND);
  }
  {
    grpc::ClientContext c;
    WithToken(c, "token-b");
    v1::ListSessionsResponse page;
    ASSERT_TRUE(stub->ListSessions(&c, v1::ListSessionsRequest(), &page).ok());
    EXPECT_EQ(page.sessions_size(), 0);
  }
  {
    grpc::ClientContext c;
    WithToken(c, "token-b");
    v1::DeleteSessionRequest r;
    r.set_session_id("shared-name");
    v1::DeleteSessionResponse out;
    EXPECT_EQ(stub->DeleteSession(&c, r, &out).error_code(), grpc::NOT_FOUND);
  }
  // B appending turn 0 under the same name writes B's own session; A's stays as it was.
  ASSERT_TRUE(Append(*stub, "token-b", "shared-name", 2.0f).ok());
  {
    grpc::ClientContext c;
    WithToken(c, "token-a");
    v1::GetCacheRequest r;
    r.set_session_id("shared-name");
    r.set_method(v1::FULL);
    auto reader = stub->GetCache(&c, r);
    v1::GetCacheResponse response;
    std::string keys;
    while (reader->Read(&response)) {
      if (response.has_layer()) keys = response.layer().keys();
    }
    ASSERT_TRUE(reader->Finish().ok());
    std::vector<float> ones(4, 1.0f);
    EXPECT_EQ(keys, std::string(reinterpret_cast<char*>(ones.data()), 16));
  }
  // Unknown or missing tokens are UNAUTHENTICATED, on every RPC.
  for (const std::string token : {"wrong-token", ""}) {
    EXPECT_EQ(Append(*stub, token, "s", 1.0f).error_code(), grpc::UNAUTHENTICATED) << token;
    grpc::ClientContext c;
    WithToken(c, token);
    v1::ListSessionsResponse page;
    EXPECT_EQ(stub->ListSessions(&c, v1::ListSessionsRequest(), &page).error_code(),
              grpc::UNAUTHENTICATED);
  }
  // Reload on SIGHUP: token-a is revoked, token-c added.
  std::ofstream(tokens) << "tenant-a sha256:" << service::TenantDirectory::HashToken("token-c")
                        << "\n";
  ASSERT_EQ(::kill(server_->pid(), SIGHUP), 0);
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(Append(*stub, "token-a", "s2", 1.0f).error_code(), grpc::UNAUTHENTICATED);
  grpc::ClientContext c;
  WithToken(c, "token-c");
  v1::ListSessionsResponse page;
  ASSERT_TRUE(stub->ListSessions(&c, v1::ListSessionsRequest(), &page).ok());
  EXPECT_EQ(page.sessions_size(), 1);  // tenant-a's session, now reached with token-c.
}

}  // namespace
}  // namespace nexuskv::testing
