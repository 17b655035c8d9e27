// RocksDbStore: the Store implementation (see store/store.h for the contract). Reached only
// through Store::Open.
//
// Layout: column families "default" (unused), "sessions" (SessionRecord and SegmentRecord
// protos, in the LSM), "segments" (tensors) and "nexus" (fits); the last two use integrated
// BlobDB (values of at least Options::min_blob_size bytes live in blob files, garbage-collected
// on compaction). Keys and value checksums: store/key_codec.h.
//
// Concurrency: RocksDB serializes nothing for us across the read-modify-write of a session
// record, so every call that changes a session (AppendSegment, PutFit, DropRawTensors,
// DeleteSession) holds the session's stripe mutex: one of kSessionStripes mutexes chosen by a hash
// of (tenant, session).
// Calls on different sessions mostly proceed in parallel; readers take no lock and see RocksDB's
// atomic batches.
#ifndef NEXUSKV_STORE_INTERNAL_ROCKSDB_STORE_H_
#define NEXUSKV_STORE_INTERNAL_ROCKSDB_STORE_H_

#include <array>
#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "rocksdb/db.h"
#include "rocksdb/listener.h"
#include "rocksdb/write_batch.h"
#include "store/store.h"

namespace nexuskv::store::internal {

// Remembers the background error that stopped RocksDB's writes (severity hard or worse) until
// RocksDB reports a successful recovery. Thread-safe (RocksDB calls it from its own threads).
class BackgroundErrorListener final : public rocksdb::EventListener {
 public:
  void OnBackgroundError(rocksdb::BackgroundErrorReason reason, rocksdb::Status* error) override;
  void OnErrorRecoveryEnd(const rocksdb::BackgroundErrorRecoveryInfo& info) override;
  // The stopping error, or empty when writes are not stopped.
  std::string error() const;

 private:
  mutable absl::Mutex mu_;
  std::string error_ ABSL_GUARDED_BY(mu_);
};

// OK when both parts of `key` are valid ids (ValidateId); InvalidArgument naming the bad part.
absl::Status ValidateSessionKey(const SessionKey& key);

class RocksDbStore final : public Store {
 public:
  static constexpr size_t kSessionStripes = 64;

  // See Store::Open.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const Options& options);

  // Releases the column family handles and closes the database.
  ~RocksDbStore() override;

  absl::StatusOr<AppendOutcome> AppendSegment(const SessionKey& key,
                                              const nexuskv::v1::ModelSpec& model,
                                              SegmentRecord record,
                                              const std::vector<LayerTensors>& layers) override;
  absl::StatusOr<SessionRecord> GetSession(const SessionKey& key) override;
  absl::StatusOr<std::vector<SegmentRecord>> ListSegments(const SessionKey& key) override;
  absl::StatusOr<SessionPage> ListSessions(std::string_view tenant, std::string_view prefix,
                                           std::string_view page_token,
                                           uint32_t page_size) override;
  absl::StatusOr<std::string> ReadTensor(const SessionKey& key, uint32_t turn, uint32_t layer,
                                         TensorKind kind) override;
  absl::StatusOr<StoredTensor> PinTensor(const SessionKey& key, uint32_t turn, uint32_t layer,
                                         TensorKind kind) override;
  using Store::PutFit;
  absl::Status PutFit(const SessionKey& key, uint32_t turn, std::string_view method,
                      const std::vector<std::string>& per_layer, std::string_view summary) override;
  absl::StatusOr<bool> DropRawTensors(const SessionKey& key, uint32_t turn,
                                      std::string_view required_fit) override;
  absl::StatusOr<std::vector<SessionKey>> ListSessionKeys() override;
  absl::StatusOr<std::optional<std::string>> GetFit(const SessionKey& key, uint32_t turn,
                                                    std::string_view method,
                                                    uint32_t layer) override;
  absl::StatusOr<DeleteOutcome> DeleteSession(const SessionKey& key) override;
  absl::StatusOr<uint32_t> DeleteExpired(int64_t now_unix_ms) override;
  absl::Status FlushPurges() override;
  StoreStats Stats() override;  // rocksdb_store_stats.cc
  absl::Status CheckWritable() override;

 private:
  // Takes ownership of db and of the four handles (default, sessions, segments, nexus).
  // `errors` is the listener registered with db.
  RocksDbStore(const Options& options, rocksdb::DB* db,
               std::vector<rocksdb::ColumnFamilyHandle*> handles,
               std::shared_ptr<BackgroundErrorListener> errors);

  absl::Mutex& SessionMutex(const SessionKey& key);

  // nullopt when absent; DataLoss when stored but unparsable.
  absl::StatusOr<std::optional<SessionRecord>> ReadSessionRecord(const SessionKey& key);
  absl::StatusOr<std::optional<SegmentRecord>> ReadSegmentRecord(const SessionKey& key,
                                                                 uint32_t turn);
  // Reads a checksummed value; nullopt when absent; DataLoss (logged) on a checksum mismatch.
  absl::StatusOr<std::optional<std::string>> ReadChecksummed(rocksdb::ColumnFamilyHandle* cf,
                                                             const std::string& key,
                                                             std::string_view what);
  // The same read into a PinnableSlice (RocksDB's buffer, no copy into a string), without
  // RocksDB's own checksums (the value's verifies every byte): for tensors only.
  absl::StatusOr<std::optional<StoredTensor>> ReadChecksummedPinned(rocksdb::ColumnFamilyHandle* cf,
                                                                    const std::string& key,
                                                                    std::string_view what);
  // The payload of `value` as Get returned it with `status`: the read error, or DataLoss (logged)
  // when the checksum does not match. `status` is not NotFound.
  absl::StatusOr<std::string_view> CheckedPayload(const rocksdb::Status& status,
                                                  std::string_view value, std::string_view what);
  // The tensor's description in errors, and the NotFound for a tensor that is not stored.
  static std::string TensorWhat(const SessionKey& key, uint32_t turn, uint32_t layer,
                                TensorKind kind);
  static absl::Status TensorNotStored(std::string_view what);
  absl::Status Write(rocksdb::WriteBatch& batch, std::string_view context);
  // ResourceExhausted when writing `incoming` bytes would eat into Options::min_free_disk_bytes
  // (or, with use_reserve, leave no headroom at all). Logs a refusal unless `quiet`.
  absl::Status CheckFreeSpace(uint64_t incoming, bool use_reserve, std::string_view context,
                              bool quiet = false);
  uint64_t FreeDiskBytes() const;

  // The bodies of the mutating calls, run with the session's stripe mutex held.
  absl::StatusOr<AppendOutcome> AppendLocked(absl::Mutex& mu, const SessionKey& key,
                                             const nexuskv::v1::ModelSpec& model,
                                             const SegmentRecord& record,
                                             const std::vector<LayerTensors>& layers)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  absl::Status PutFitLocked(absl::Mutex& mu, const SessionKey& key, uint32_t turn,
                            std::string_view method, const std::vector<std::string>& per_layer,
                            std::string_view summary) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  absl::StatusOr<bool> DropRawLocked(absl::Mutex& mu, const SessionKey& key, uint32_t turn,
                                     std::string_view required_fit)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  absl::StatusOr<DeleteOutcome> DeleteLocked(absl::Mutex& mu, const SessionKey& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  // What a tenant holds, kept in memory (rebuilt from the session records at Open) so that
  // tenant quotas are checked without a tenant-wide lock around RocksDB writes.
  struct TenantUsage {
    uint64_t sessions = 0;
    uint64_t bytes = 0;
  };
  // Counts a new session / new bytes for `tenant`, or ResourceExhausted (nothing counted) when a
  // tenant quota would be exceeded. Release undoes it after a failed write.
  absl::Status ReserveTenantUsage(const std::string& tenant, bool new_session, uint64_t bytes);
  void AdjustTenantUsage(const std::string& tenant, int64_t sessions, int64_t bytes);
  absl::Status LoadTenantUsage();
  // Compacts [begin, end) in every column family, forcing blob garbage collection.
  absl::Status Purge(const std::string& begin, const std::string& end);
  // Purge [begin, end) with what is pending now, or add it to the pending range when the next
  // purge may not start yet (Options::purge_interval_seconds, Options::purge_max_share).
  absl::Status PurgeOrDefer(const std::string& begin, const std::string& end);
  // Purge, timed: sets when the next may start (NextPurgeAt) and logs how long it took.
  absl::Status PacedPurge(const std::string& begin, const std::string& end, absl::Time started);

  const Options options_;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // Owned; destroyed before db_ closes.
  rocksdb::ColumnFamilyHandle* const sessions_;
  rocksdb::ColumnFamilyHandle* const segments_;
  rocksdb::ColumnFamilyHandle* const nexus_;
  const std::shared_ptr<BackgroundErrorListener> background_errors_;
  // Serialize the read-modify-write of one session's records (see the file comment). What they
  // guard lives in RocksDB, so it cannot carry ABSL_GUARDED_BY; the *Locked methods require them.
  std::array<absl::Mutex, kSessionStripes> session_mu_;
  absl::Mutex usage_mu_;
  std::map<std::string, TenantUsage> usage_ ABSL_GUARDED_BY(usage_mu_);
  // Deferred purges: the union of the ranges deletes left for later, and when the last ran.
  absl::Mutex purge_mu_;
  std::string pending_begin_ ABSL_GUARDED_BY(purge_mu_);
  std::string pending_end_ ABSL_GUARDED_BY(purge_mu_);  // empty: nothing pending
  absl::Time next_purge_ ABSL_GUARDED_BY(purge_mu_) = absl::InfinitePast();
};

}  // namespace nexuskv::store::internal

#endif  // NEXUSKV_STORE_INTERNAL_ROCKSDB_STORE_H_
