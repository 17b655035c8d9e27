#include "store/internal/rocksdb_status.h"

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "store/internal/absl_compat.h"

namespace nexuskv::store::internal {
namespace {

// RocksDB reports a held LOCK file as a plain IOError; these are its texts (env/fs_posix.cc).
bool IsLockHeld(const rocksdb::Status& status, const std::string& text) {
  return status.IsIOError() && (absl::StrContains(text, "While lock file") ||
                                absl::StrContains(text, "lock hold by current process") ||
                                absl::StrContains(text, "/LOCK: "));
}

}  // namespace

absl::Status FromRocksStatus(const rocksdb::Status& status, std::string_view context) {
  if (status.ok()) return absl::OkStatus();
  const std::string text = status.ToString();
  const std::string message = absl::StrCat(Sv(context), ": ", text);
  if (status.IsCorruption()) {
    return absl::DataLossError(
        absl::StrCat(message, "; the database is damaged: restore it from a backup"));
  }
  if (status.IsNoSpace()) {
    return absl::ResourceExhaustedError(
        absl::StrCat(message, "; the disk is full: free space or delete sessions"));
  }
  if (status.IsBusy() || status.IsTryAgain()) {
    return absl::UnavailableError(absl::StrCat(message, "; retry the call"));
  }
  if (IsLockHeld(status, text)) {
    return absl::FailedPreconditionError(
        absl::StrCat(message,
                     "; another process (or another Store in this process) has this database open: "
                     "stop it or use another path"));
  }
  return absl::InternalError(message);
}

}  // namespace nexuskv::store::internal
