// Conversion of rocksdb::Status to absl::Status, done once at the store's boundary.
//
//   NEXUSKV_RETURN_IF_ERROR(FromRocksStatus(db->Write(opts, &batch), "append turn 3 of \"s1\""));
//
// Codes follow what the caller should do next: Corruption -> DataLoss, no space ->
// ResourceExhausted, Busy / TryAgain -> Unavailable (retry the call), a held database lock ->
// FailedPrecondition, anything else -> Internal. Thread-safe.
#ifndef NEXUSKV_STORE_INTERNAL_ROCKSDB_STATUS_H_
#define NEXUSKV_STORE_INTERNAL_ROCKSDB_STATUS_H_

#include <string_view>

#include "absl/status/status.h"
#include "rocksdb/status.h"

namespace nexuskv::store::internal {

// OK for an OK status; otherwise an absl::Status whose message starts with `context` (what the
// store was doing), then RocksDB's own text, then what a person can do about it.
absl::Status FromRocksStatus(const rocksdb::Status& status, std::string_view context);

}  // namespace nexuskv::store::internal

#endif  // NEXUSKV_STORE_INTERNAL_ROCKSDB_STATUS_H_
