// TenantDirectory: maps bearer tokens to tenants, from a file that can be reloaded.
//
// The file holds one tenant per line, the token stored only as its SHA-256:
//
//   # tenant   sha256 of the bearer token (hex)
//   acme       sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//   globex     sha256:60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
//
// (`printf %s "$TOKEN" | sha256sum` prints the hash.) A tenant may have several tokens (several
// lines), which is how tokens are rotated. Tenant names follow the id rules of store/key_codec.h.
//
//   NEXUSKV_ASSIGN_OR_RETURN(auto tenants, TenantDirectory::Load("/etc/nexuskv/tokens"));
//   NEXUSKV_ASSIGN_OR_RETURN(std::string tenant, tenants->TenantForToken(token));
//
// Thread-safe: Reload() swaps the table atomically; lookups never see a half-read file.
#ifndef NEXUSKV_SERVICE_AUTH_H_
#define NEXUSKV_SERVICE_AUTH_H_

#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace nexuskv::service {

class TenantDirectory {
 public:
  // Reads the file. InvalidArgument naming the line for a malformed entry or a bad tenant name;
  // NotFound when the file cannot be read.
  static absl::StatusOr<std::unique_ptr<TenantDirectory>> Load(std::string path);

  TenantDirectory(const TenantDirectory&) = delete;
  TenantDirectory& operator=(const TenantDirectory&) = delete;

  // Re-reads the file. On error the previous table stays in force and the error is returned.
  absl::Status Reload();

  // The tenant of `token` (the raw bearer token). Unauthenticated when no entry matches.
  absl::StatusOr<std::string> TenantForToken(std::string_view token) const;

  // The tenant of an HTTP "authorization" header value ("Bearer <token>"). Unauthenticated when the
  // value is empty, not a bearer token, or unknown.
  absl::StatusOr<std::string> TenantForAuthorization(std::string_view header) const;

  // Lower-case hex SHA-256 of `token`.
  static std::string HashToken(std::string_view token);

 private:
  using Table = std::map<std::string, std::string>;  // sha256 hex -> tenant
  explicit TenantDirectory(std::string path) : path_(std::move(path)) {}
  static absl::StatusOr<Table> Parse(const std::string& path);

  const std::string path_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const Table> table_ ABSL_GUARDED_BY(mu_);
};

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_AUTH_H_
