#include "service/auth.h"

#include <openssl/sha.h>

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"
#include "store/key_codec.h"

namespace nexuskv::service {

std::string TenantDirectory::HashToken(std::string_view token) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), digest);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
}

absl::StatusOr<TenantDirectory::Table> TenantDirectory::Parse(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read the tokens file ", path));
  }
  Table table;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty() || absl::StartsWith(text, "#")) continue;
    std::vector<absl::string_view> fields = absl::StrSplit(text, ' ', absl::SkipWhitespace());
    absl::string_view hash = fields.size() == 2 ? fields[1] : absl::string_view();
    const bool prefixed = absl::ConsumePrefix(&hash, "sha256:");
    const bool hex = hash.size() == 64 && std::all_of(hash.begin(), hash.end(), [](char c) {
                       return absl::ascii_isxdigit(static_cast<unsigned char>(c));
                     });
    if (!prefixed || !hex) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ":", number, ": expected 'TENANT sha256:<64 hex digits>' (hash a token with "
          "`printf %s \"$TOKEN\" | sha256sum`)"));
    }
    const std::string tenant(fields[0]);
    NEXUSKV_RETURN_IF_ERROR(store::ValidateId("tenant", tenant));
    table[absl::AsciiStrToLower(hash)] = tenant;
  }
  return table;
}

absl::StatusOr<std::unique_ptr<TenantDirectory>> TenantDirectory::Load(std::string path) {
  std::unique_ptr<TenantDirectory> directory(new TenantDirectory(std::move(path)));
  NEXUSKV_RETURN_IF_ERROR(directory->Reload());
  return directory;
}

absl::Status TenantDirectory::Reload() {
  NEXUSKV_ASSIGN_OR_RETURN(Table table, Parse(path_));
  auto fresh = std::make_shared<const Table>(std::move(table));
  absl::MutexLock lock(&mu_);
  table_ = std::move(fresh);
  return absl::OkStatus();
}

absl::StatusOr<std::string> TenantDirectory::TenantForToken(std::string_view token) const {
  std::shared_ptr<const Table> table;
  {
    absl::MutexLock lock(&mu_);
    table = table_;
  }
  auto it = table->find(HashToken(token));
  if (token.empty() || it == table->end()) {
    return absl::UnauthenticatedError("unknown bearer token; ask the operator for a valid one");
  }
  return it->second;
}

absl::StatusOr<std::string> TenantDirectory::TenantForAuthorization(
    std::string_view header) const {
  absl::string_view value(header.data(), header.size());
  if (!absl::ConsumePrefix(&value, "Bearer ") && !absl::ConsumePrefix(&value, "bearer ")) {
    return absl::UnauthenticatedError(
        "missing bearer token: send the metadata 'authorization: Bearer <token>'");
  }
  return TenantForToken(std::string_view(value.data(), value.size()));
}

}  // namespace nexuskv::service
