#include "service/auth.h"

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nexuskv::service {
namespace {

using ::testing::HasSubstr;

std::string WriteFile(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(TenantDirectoryTest, HashesLikeSha256sum) {
  // printf %s test | sha256sum
  EXPECT_EQ(TenantDirectory::HashToken("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
}

TEST(TenantDirectoryTest, MapsTokensToTenantsAndRefusesOthers) {
  const std::string path = WriteFile(
      "tokens_ok", absl::StrCat("# comment\n\nacme sha256:", TenantDirectory::HashToken("a-secret"),
                                "\nglobex  sha256:", TenantDirectory::HashToken("g-secret"), "\n"));
  auto directory = TenantDirectory::Load(path);
  ASSERT_TRUE(directory.ok()) << directory.status();
  EXPECT_EQ(*(*directory)->TenantForToken("a-secret"), "acme");
  EXPECT_EQ(*(*directory)->TenantForAuthorization("Bearer g-secret"), "globex");
  EXPECT_EQ((*directory)->TenantForToken("nope").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*directory)->TenantForToken("").status().code(), absl::StatusCode::kUnauthenticated);
  const absl::Status basic = (*directory)->TenantForAuthorization("Basic abc").status();
  EXPECT_EQ(basic.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(basic.message(), HasSubstr("authorization: Bearer"));
}

TEST(TenantDirectoryTest, ReloadSwapsTokensAndKeepsTheOldTableOnError) {
  const std::string path =
      WriteFile("tokens_reload", absl::StrCat("acme sha256:", TenantDirectory::HashToken("one")));
  auto directory = TenantDirectory::Load(path);
  ASSERT_TRUE(directory.ok());
  std::ofstream(path) << absl::StrCat("acme sha256:", TenantDirectory::HashToken("two"));
  ASSERT_TRUE((*directory)->Reload().ok());
  EXPECT_EQ((*directory)->TenantForToken("one").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(*(*directory)->TenantForToken("two"), "acme");

  std::ofstream(path) << "acme not-a-hash\n";
  const absl::Status bad = (*directory)->Reload();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.message(), HasSubstr(":1: expected"));
  EXPECT_EQ(*(*directory)->TenantForToken("two"), "acme");  // Old table still in force.
}

TEST(TenantDirectoryTest, RefusesBadTenantNamesAndMissingFiles) {
  const std::string path = WriteFile(
      "tokens_bad_tenant", absl::StrCat("bad/tenant sha256:", TenantDirectory::HashToken("x")));
  EXPECT_EQ(TenantDirectory::Load(path).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TenantDirectory::Load("/nonexistent/tokens").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace nexuskv::service
