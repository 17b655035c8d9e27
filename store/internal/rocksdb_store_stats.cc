// RocksDbStore: monitoring (sizes, per-tenant usage) and whether writes can proceed.
#include <sys/statvfs.h>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "store/internal/rocksdb_store.h"

namespace nexuskv::store::internal {

void BackgroundErrorListener::OnBackgroundError(rocksdb::BackgroundErrorReason /*reason*/,
                                                rocksdb::Status* error) {
  // Soft errors leave writes running; hard and worse stop them until a recovery succeeds.
  if (error->ok() || error->severity() < rocksdb::Status::Severity::kHardError) return;
  absl::MutexLock lock(&mu_);
  error_ = error->ToString();
}

void BackgroundErrorListener::OnErrorRecoveryEnd(const rocksdb::BackgroundErrorRecoveryInfo& info) {
  if (!info.new_bg_error.ok()) return;
  absl::MutexLock lock(&mu_);
  error_.clear();
}

std::string BackgroundErrorListener::error() const {
  absl::MutexLock lock(&mu_);
  return error_;
}

StoreStats RocksDbStore::Stats() {
  StoreStats stats;
  db_->GetAggregatedIntProperty(rocksdb::DB::Properties::kLiveSstFilesSize, &stats.live_sst_bytes);
  db_->GetAggregatedIntProperty(rocksdb::DB::Properties::kLiveBlobFileSize, &stats.live_blob_bytes);
  db_->GetAggregatedIntProperty(rocksdb::DB::Properties::kEstimatePendingCompactionBytes,
                                &stats.pending_compaction_bytes);
  absl::MutexLock lock(&usage_mu_);
  for (const auto& [tenant, usage] : usage_) {
    stats.tenants[tenant] = {.sessions = usage.sessions, .bytes = usage.bytes};
  }
  return stats;
}

absl::Status RocksDbStore::CheckWritable() {
  if (const std::string error = background_errors_->error(); !error.empty()) {
    return absl::UnavailableError(
        absl::StrCat("RocksDB stopped writes after a background error (", error,
                     "); it recovers by itself from retryable errors, otherwise restart the "
                     "server after fixing the cause"));
  }
  struct statvfs fs;
  if (::statvfs(options_.path.c_str(), &fs) == 0 && (fs.f_flag & ST_RDONLY) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the data directory ", options_.path, " is on a read-only filesystem; remount it rw"));
  }
  return CheckFreeSpace(0, /*use_reserve=*/false, "append", /*quiet=*/true);
}

}  // namespace nexuskv::store::internal
