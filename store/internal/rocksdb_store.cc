// RocksDbStore: opening, reads and listings. The mutating calls are in rocksdb_store_write.cc.
#include "store/internal/rocksdb_store.h"

#include <sys/statvfs.h>

#include <algorithm>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "rocksdb/cache.h"
#include "rocksdb/options.h"
#include "rocksdb/table.h"
#include "store/internal/absl_compat.h"
#include "store/internal/rocksdb_status.h"

namespace nexuskv::store::internal {
namespace {

constexpr uint32_t kMaxPageSize = 1000;

// Column families in the order Open() passes them, which is the order of handles_.
constexpr const char* kColumnFamilies[] = {"default", "sessions", "segments", "nexus"};
enum CfIndex { kDefaultCf = 0, kSessionsCf = 1, kSegmentsCf = 2, kNexusCf = 3 };

std::vector<rocksdb::ColumnFamilyDescriptor> ColumnFamilyDescriptors(const Options& options) {
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  rocksdb::ColumnFamilyOptions records;
  records.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  rocksdb::ColumnFamilyOptions blobs = records;
  blobs.enable_blob_files = true;
  blobs.min_blob_size = options.min_blob_size;
  blobs.enable_blob_garbage_collection = true;
  return {{kColumnFamilies[kDefaultCf], records},
          {kColumnFamilies[kSessionsCf], records},
          {kColumnFamilies[kSegmentsCf], blobs},
          {kColumnFamilies[kNexusCf], blobs}};
}

}  // namespace

absl::Status ValidateSessionKey(const SessionKey& key) {
  NEXUSKV_RETURN_IF_ERROR(ValidateId("tenant", key.tenant));
  return ValidateId("session_id", key.session_id);
}

absl::StatusOr<std::unique_ptr<Store>> RocksDbStore::Open(const Options& options) {
  if (options.path.empty()) {
    return absl::InvalidArgumentError("store path is empty; set Options.path to a directory");
  }
  std::error_code error;
  std::filesystem::create_directories(options.path, error);
  if (error) {
    return absl::InvalidArgumentError(absl::StrCat("cannot create the store directory \"",
                                                   options.path, "\": ", error.message(),
                                                   "; choose a writable directory"));
  }
  if (!std::filesystem::is_directory(options.path, error)) {
    return absl::InvalidArgumentError(
        absl::StrCat("store path \"", options.path, "\" is not a directory; choose a directory"));
  }

  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  auto background_errors = std::make_shared<BackgroundErrorListener>();
  db_options.listeners.push_back(background_errors);
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  NEXUSKV_RETURN_IF_ERROR(FromRocksStatus(
      rocksdb::DB::Open(db_options, options.path, ColumnFamilyDescriptors(options), &handles, &db),
      absl::StrCat("open the store at \"", options.path, "\"")));
  std::unique_ptr<RocksDbStore> store(
      new RocksDbStore(options, db, std::move(handles), std::move(background_errors)));
  NEXUSKV_RETURN_IF_ERROR(store->LoadTenantUsage());
  Log(LogLevel::kInfo, "store_opened", {{"path", options.path}, {"sync", options.sync_writes}});
  return std::unique_ptr<Store>(std::move(store));
}

absl::Status RocksDbStore::LoadTenantUsage() {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), sessions_));
  absl::MutexLock lock(&usage_mu_);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    auto key = DecodeSessionsKey(std::string_view(it->key().data(), it->key().size()));
    if (!key.ok() || key->turn.has_value()) continue;  // Segment records, or not ours.
    SessionRecord record;
    if (!record.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) continue;
    TenantUsage& usage = usage_[key->tenant];
    usage.sessions += 1;
    usage.bytes += record.raw_bytes() - std::min(record.dropped_raw_bytes(), record.raw_bytes()) +
                   record.compressed_bytes();
  }
  return FromRocksStatus(it->status(), "count what each tenant stores");
}

absl::Status RocksDbStore::ReserveTenantUsage(const std::string& tenant, bool new_session,
                                              uint64_t bytes) {
  absl::MutexLock lock(&usage_mu_);
  TenantUsage& usage = usage_[tenant];
  if (new_session && options_.max_sessions_per_tenant > 0 &&
      usage.sessions + 1 > options_.max_sessions_per_tenant) {
    return absl::ResourceExhaustedError(absl::StrCat("tenant \"", tenant, "\" has ", usage.sessions,
                                                     " sessions, its quota "
                                                     "(--max_sessions_per_tenant=",
                                                     options_.max_sessions_per_tenant,
                                                     "); delete sessions it no longer needs"));
  }
  if (options_.max_bytes_per_tenant > 0 && usage.bytes + bytes > options_.max_bytes_per_tenant) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tenant \"", tenant, "\" stores ", usage.bytes, " bytes; ", bytes,
        " more would pass its quota (--max_bytes_per_tenant=", options_.max_bytes_per_tenant,
        "); delete sessions it no longer needs"));
  }
  usage.sessions += new_session ? 1 : 0;
  usage.bytes += bytes;
  return absl::OkStatus();
}

void RocksDbStore::AdjustTenantUsage(const std::string& tenant, int64_t sessions, int64_t bytes) {
  absl::MutexLock lock(&usage_mu_);
  TenantUsage& usage = usage_[tenant];
  usage.sessions = static_cast<uint64_t>(std::max<int64_t>(0, int64_t(usage.sessions) + sessions));
  usage.bytes = static_cast<uint64_t>(std::max<int64_t>(0, int64_t(usage.bytes) + bytes));
}

RocksDbStore::RocksDbStore(const Options& options, rocksdb::DB* db,
                           std::vector<rocksdb::ColumnFamilyHandle*> handles,
                           std::shared_ptr<BackgroundErrorListener> errors)
    : options_(options),
      db_(db),
      handles_(std::move(handles)),
      sessions_(handles_[kSessionsCf]),
      segments_(handles_[kSegmentsCf]),
      nexus_(handles_[kNexusCf]),
      background_errors_(std::move(errors)) {}

RocksDbStore::~RocksDbStore() {
  // A clean close runs the purges deletes deferred; after a crash their bytes go with later
  // compactions (the sessions themselves are deleted either way).
  if (const absl::Status purged = FlushPurges(); !purged.ok()) {
    Log(LogLevel::kError, "purge_failed", {{"path", options_.path}, {"status", purged.ToString()}});
  }
  for (rocksdb::ColumnFamilyHandle* handle : handles_) db_->DestroyColumnFamilyHandle(handle);
  const rocksdb::Status status = db_->Close();
  if (!status.ok()) {
    Log(LogLevel::kError, "store_close_failed",
        {{"path", options_.path}, {"error", status.ToString()}});
  }
}

absl::Mutex& RocksDbStore::SessionMutex(const SessionKey& key) {
  return session_mu_[PayloadChecksum(EncodeSessionKey(key.tenant, key.session_id)) %
                     kSessionStripes];
}

uint64_t RocksDbStore::FreeDiskBytes() const {
  struct statvfs fs;
  if (::statvfs(options_.path.c_str(), &fs) != 0) return UINT64_MAX;  // Unknown: let RocksDB try.
  return uint64_t{fs.f_bavail} * fs.f_frsize;
}

absl::Status RocksDbStore::CheckFreeSpace(uint64_t incoming, bool use_reserve,
                                          std::string_view context, bool quiet) {
  const uint64_t free_bytes = FreeDiskBytes();
  // Unflushed memtables reach the disk at the next flush (their blobs too): count them as owed.
  uint64_t owed = 0;
  for (rocksdb::ColumnFamilyHandle* cf : handles_) {
    uint64_t bytes = 0;
    if (db_->GetIntProperty(cf, "rocksdb.cur-size-all-mem-tables", &bytes)) owed += bytes;
  }
  // The batch is written twice: to the WAL now, to a table or blob file at its flush.
  // Deletes may use the reserve (that is what it is for); they still need room for their own
  // WAL record and its flush, or RocksDB fails mid-write.
  constexpr uint64_t kDeleteHeadroom = 1 << 20;
  const uint64_t needed =
      2 * incoming + owed + (use_reserve ? kDeleteHeadroom : options_.min_free_disk_bytes);
  if (free_bytes >= needed) return absl::OkStatus();
  if (!quiet) {
    Log(LogLevel::kWarning, "disk_low",
        {{"path", options_.path}, {"free", free_bytes}, {"needed", needed}});
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "cannot ", Sv(context), ": the data disk is full (", free_bytes,
      " bytes free; this write needs ", needed, ": its bytes twice, unflushed memtables, and ",
      use_reserve
          ? std::string("1 MiB of headroom")
          : absl::StrCat("the --min_free_disk_bytes reserve of ", options_.min_free_disk_bytes),
      "); delete sessions or add disk. Reads still work"));
}

absl::Status RocksDbStore::Write(rocksdb::WriteBatch& batch, std::string_view context) {
  // Refuse before RocksDB meets ENOSPC: a write failing inside RocksDB puts the database in an
  // error state (and Debian's build asserts on it), while a refusal here changes nothing. Batches
  // that only delete may use the reserve: they are how space comes back.
  NEXUSKV_RETURN_IF_ERROR(
      CheckFreeSpace(batch.GetDataSize(), /*use_reserve=*/!batch.HasPut(), context));
  rocksdb::WriteOptions write_options;
  write_options.sync = options_.sync_writes;
  return FromRocksStatus(db_->Write(write_options, &batch), context);
}

absl::StatusOr<std::optional<SessionRecord>> RocksDbStore::ReadSessionRecord(
    const SessionKey& key) {
  std::string value;
  const rocksdb::Status status = db_->Get(rocksdb::ReadOptions(), sessions_,
                                          EncodeSessionKey(key.tenant, key.session_id), &value);
  if (status.IsNotFound()) return std::nullopt;
  NEXUSKV_RETURN_IF_ERROR(
      FromRocksStatus(status, absl::StrCat("read session \"", key.session_id, "\"")));
  SessionRecord record;
  if (!record.ParseFromString(value)) {
    return absl::DataLossError(absl::StrCat("the record of session \"", key.session_id,
                                            "\" is unreadable; delete the session"));
  }
  return record;
}

absl::StatusOr<std::optional<SegmentRecord>> RocksDbStore::ReadSegmentRecord(const SessionKey& key,
                                                                             uint32_t turn) {
  std::string value;
  const rocksdb::Status status =
      db_->Get(rocksdb::ReadOptions(), sessions_,
               EncodeSegmentRecordKey(key.tenant, key.session_id, turn), &value);
  if (status.IsNotFound()) return std::nullopt;
  NEXUSKV_RETURN_IF_ERROR(FromRocksStatus(
      status, absl::StrCat("read turn ", turn, " of session \"", key.session_id, "\"")));
  SegmentRecord record;
  if (!record.ParseFromString(value)) {
    return absl::DataLossError(absl::StrCat("the record of turn ", turn, " of session \"",
                                            key.session_id,
                                            "\" is unreadable; delete the session"));
  }
  return record;
}

absl::StatusOr<std::string_view> RocksDbStore::CheckedPayload(const rocksdb::Status& status,
                                                              std::string_view value,
                                                              std::string_view what) {
  absl::Status read = FromRocksStatus(status, absl::StrCat("read ", Sv(what)));
  if (read.ok()) {
    absl::StatusOr<std::string_view> payload = DecodeChecksummedValue(value);
    if (payload.ok()) return payload;
    read = absl::DataLossError(absl::StrCat(Sv(what), " is corrupt (", payload.status().message(),
                                            "); delete the session and append it again"));
  }
  if (read.code() == absl::StatusCode::kDataLoss) {
    Log(LogLevel::kError, "store_corruption",
        {{"path", options_.path},
         {"what", std::string(what)},
         {"error", std::string(read.message())}});
  }
  return read;
}

absl::StatusOr<std::optional<std::string>> RocksDbStore::ReadChecksummed(
    rocksdb::ColumnFamilyHandle* cf, const std::string& key, std::string_view what) {
  std::string value;
  const rocksdb::Status status = db_->Get(rocksdb::ReadOptions(), cf, key, &value);
  if (status.IsNotFound()) return std::nullopt;
  NEXUSKV_ASSIGN_OR_RETURN(const std::string_view payload, CheckedPayload(status, value, what));
  value.resize(payload.size());
  return value;
}

absl::StatusOr<std::optional<StoredTensor>> RocksDbStore::ReadChecksummedPinned(
    rocksdb::ColumnFamilyHandle* cf, const std::string& key, std::string_view what) {
  // A blob value is read into a buffer RocksDB hands over to the slice (no copy); a value in the
  // memtable or an SST block is copied into or pinned by it, as Get into a string would.
  // Tensor reads (the bulk of every GetCache) skip RocksDB's own checksums: the value carries its
  // XXH3-64 (CheckedPayload), which covers every payload byte, so a corrupt blob is still
  // DATA_LOSS. RocksDB's CRC32c of each blob record on top of it cost FULL GetCache 44% of its
  // server CPU (docs/performance.md, "One checksum per tensor read").
  rocksdb::ReadOptions options;
  options.verify_checksums = false;
  auto value = std::make_shared<rocksdb::PinnableSlice>();
  const rocksdb::Status status = db_->Get(options, cf, key, value.get());
  if (status.IsNotFound()) return std::nullopt;
  NEXUSKV_ASSIGN_OR_RETURN(const std::string_view payload,
                           CheckedPayload(status, value->ToStringView(), what));
  return StoredTensor(payload, std::move(value));
}

absl::StatusOr<SessionRecord> RocksDbStore::GetSession(const SessionKey& key) {
  NEXUSKV_RETURN_IF_ERROR(ValidateSessionKey(key));
  NEXUSKV_ASSIGN_OR_RETURN(std::optional<SessionRecord> session, ReadSessionRecord(key));
  if (!session) {
    return absl::NotFoundError(absl::StrCat("session \"", key.session_id, "\" does not exist"));
  }
  return *std::move(session);
}

absl::StatusOr<std::vector<SegmentRecord>> RocksDbStore::ListSegments(const SessionKey& key) {
  NEXUSKV_RETURN_IF_ERROR(ValidateSessionKey(key));
  // One iterator is one consistent view: the session record sorts first, then its turns.
  const std::string begin = SessionKeyBegin(key.tenant, key.session_id);
  const std::string end = SessionKeyEnd(key.tenant, key.session_id);
  rocksdb::Slice upper(end);
  rocksdb::ReadOptions read_options;
  read_options.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, sessions_));
  it->Seek(begin);
  const std::string context = absl::StrCat("list the turns of session \"", key.session_id, "\"");
  if (!it->Valid() || it->key() != rocksdb::Slice(begin)) {
    NEXUSKV_RETURN_IF_ERROR(FromRocksStatus(it->status(), context));
    return absl::NotFoundError(absl::StrCat("session \"", key.session_id, "\" does not exist"));
  }
  std::vector<SegmentRecord> segments;
  for (it->Next(); it->Valid(); it->Next()) {
    SegmentRecord record;
    absl::StatusOr<DecodedSessionsKey> decoded = DecodeSessionsKey(it->key().ToStringView());
    if (!decoded.ok() || !decoded->turn ||
        !record.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError(absl::StrCat(context,
                                              ": a turn record is unreadable; delete "
                                              "the session"));
    }
    segments.push_back(std::move(record));
  }
  NEXUSKV_RETURN_IF_ERROR(FromRocksStatus(it->status(), context));
  return segments;
}

absl::StatusOr<SessionPage> RocksDbStore::ListSessions(std::string_view tenant,
                                                       std::string_view prefix,
                                                       std::string_view page_token,
                                                       uint32_t page_size) {
  NEXUSKV_RETURN_IF_ERROR(ValidateId("tenant", tenant));
  if (page_size < 1 || page_size > kMaxPageSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size is ", page_size, "; use 1..", kMaxPageSize));
  }
  if (!prefix.empty()) NEXUSKV_RETURN_IF_ERROR(ValidateId("prefix", prefix));
  if (!page_token.empty()) {
    absl::Status token = ValidateId("page_token", page_token);
    if (!token.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          token.message(), "; pass the next_page_token of the previous page unchanged"));
    }
  }
  // Sessions with the prefix are exactly the keys that start with `tenant \0 prefix`.
  std::string start = absl::StrCat(TenantKeyBegin(tenant), Sv(prefix));
  if (!page_token.empty()) start = std::max(start, SessionKeyEnd(tenant, page_token));
  const std::string end = TenantKeyEnd(tenant);
  rocksdb::Slice upper(end);
  rocksdb::ReadOptions read_options;
  read_options.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, sessions_));

  SessionPage page;
  for (it->Seek(start); it->Valid();) {
    absl::StatusOr<DecodedSessionsKey> decoded = DecodeSessionsKey(it->key().ToStringView());
    if (!decoded.ok()) {
      return absl::DataLossError(absl::StrCat("listing sessions of tenant \"", Sv(tenant),
                                              "\": ", decoded.status().message()));
    }
    if (!std::string_view(decoded->session_id).starts_with(prefix)) break;
    if (!decoded->turn) {
      if (page.sessions.size() == page_size) {
        page.next_page_token = page.sessions.back().session_id();
        break;
      }
      SessionRecord record;
      if (!record.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return absl::DataLossError(absl::StrCat("the record of session \"", decoded->session_id,
                                                "\" is unreadable; delete the session"));
      }
      page.sessions.push_back(std::move(record));
    }
    // Skip the session's turn records.
    it->Seek(SessionKeyEnd(tenant, decoded->session_id));
  }
  NEXUSKV_RETURN_IF_ERROR(
      FromRocksStatus(it->status(), absl::StrCat("list sessions of tenant \"", Sv(tenant), "\"")));
  return page;
}

std::string RocksDbStore::TensorWhat(const SessionKey& key, uint32_t turn, uint32_t layer,
                                     TensorKind kind) {
  return absl::StrCat("the ", Sv(TensorKindName(kind)), " of turn ", turn, ", layer ", layer,
                      " of session \"", key.session_id, "\"");
}

absl::Status RocksDbStore::TensorNotStored(std::string_view what) {
  return absl::NotFoundError(
      absl::StrCat(Sv(what),
                   " is not stored; check the session, turn and layer (GetSession lists "
                   "the stored turns)"));
}

absl::StatusOr<std::string> RocksDbStore::ReadTensor(const SessionKey& key, uint32_t turn,
                                                     uint32_t layer, TensorKind kind) {
  NEXUSKV_RETURN_IF_ERROR(ValidateSessionKey(key));
  const std::string what = TensorWhat(key, turn, layer, kind);
  NEXUSKV_ASSIGN_OR_RETURN(
      std::optional<std::string> tensor,
      ReadChecksummed(segments_, EncodeTensorKey(key.tenant, key.session_id, turn, layer, kind),
                      what));
  if (!tensor) return TensorNotStored(what);
  return *std::move(tensor);
}

absl::StatusOr<StoredTensor> RocksDbStore::PinTensor(const SessionKey& key, uint32_t turn,
                                                     uint32_t layer, TensorKind kind) {
  NEXUSKV_RETURN_IF_ERROR(ValidateSessionKey(key));
  const std::string what = TensorWhat(key, turn, layer, kind);
  NEXUSKV_ASSIGN_OR_RETURN(
      std::optional<StoredTensor> tensor,
      ReadChecksummedPinned(segments_,
                            EncodeTensorKey(key.tenant, key.session_id, turn, layer, kind), what));
  if (!tensor) return TensorNotStored(what);
  return *std::move(tensor);
}

absl::StatusOr<std::optional<std::string>> RocksDbStore::GetFit(const SessionKey& key,
                                                                uint32_t turn,
                                                                std::string_view method,
                                                                uint32_t layer) {
  NEXUSKV_RETURN_IF_ERROR(ValidateSessionKey(key));
  NEXUSKV_RETURN_IF_ERROR(ValidateId("method", method));
  return ReadChecksummed(nexus_, EncodeFitKey(key.tenant, key.session_id, turn, method, layer),
                         absl::StrCat("the ", Sv(method), " fit of turn ", turn, ", layer ", layer,
                                      " of session \"", key.session_id, "\""));
}

}  // namespace nexuskv::store::internal
