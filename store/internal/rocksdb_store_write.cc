// RocksDbStore: the calls that change a session (AppendSegment, PutFit, DeleteSession). Each
// validates its input, takes the session's stripe mutex, checks the rules against the stored
// records and writes one WriteBatch, or nothing when it refuses.
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "store/internal/absl_compat.h"
#include "store/internal/purge_pacing.h"
#include "store/internal/rocksdb_status.h"
#include "store/internal/rocksdb_store.h"
#include "store/internal/segment_rules.h"

namespace nexuskv::store::internal {
namespace {

int64_t NowUnixMillis() { return absl::ToUnixMillis(absl::Now()); }

std::string Quoted(std::string_view id) { return absl::StrCat("\"", Sv(id), "\""); }

// "1 turn", "3 turns".
std::string Turns(uint64_t n) { return absl::StrCat(n, n == 1 ? " turn" : " turns"); }

// Adds key -> payload || checksum trailer without concatenating the (possibly large) payload.
absl::Status PutChecksummed(rocksdb::WriteBatch& batch, rocksdb::ColumnFamilyHandle* cf,
                            const std::string& key, std::string_view payload) {
  const std::string trailer = EncodeChecksumTrailer(payload);
  const rocksdb::Slice key_part(key);
  const rocksdb::Slice value_parts[2] = {rocksdb::Slice(payload.data(), payload.size()),
                                         rocksdb::Slice(trailer)};
  return FromRocksStatus(
      batch.Put(cf, rocksdb::SliceParts(&key_part, 1), rocksdb::SliceParts(value_parts, 2)),
      "stage a value");
}

absl::Status PutRecord(rocksdb::WriteBatch& batch, rocksdb::ColumnFamilyHandle* cf,
                       const std::string& key, const google::protobuf::Message& record) {
  return FromRocksStatus(batch.Put(cf, key, record.SerializeAsString()), "stage a record");
}

// At least the bytes an append's WriteBatch grows to, so that it is allocated once: growing it
// put by put re-copied everything staged so far at each doubling (about one more copy of every
// payload byte, counted in docs/performance.md).
size_t AppendBatchBytes(const std::vector<LayerTensors>& layers, const SegmentRecord& record,
                        const SessionRecord& session) {
  // Per put: a tag, a column family id, two length varints and a key of two ids (at most 128
  // characters each) plus fixed fields; 512 bytes is more than enough for all of them.
  constexpr size_t kPerPut = 512;
  size_t bytes = 64 + record.ByteSizeLong() + session.ByteSizeLong() + 2 * kPerPut;
  for (const LayerTensors& t : layers) {
    for (const std::string* tensor : {&t.keys, &t.values, &t.probe_queries, &t.token_scores}) {
      bytes += tensor->size() + kChecksumBytes + kPerPut;
    }
  }
  return bytes;
}

}  // namespace

absl::StatusOr<AppendOutcome> RocksDbStore::AppendSegment(const SessionKey& key,
                                                          const nexuskv::v1::ModelSpec& model,
                                                          SegmentRecord record,
                                                          const std::vector<LayerTensors>& layers) {
  NEXUSKV_RETURN_IF_ERROR(ValidateSessionKey(key));
  if (layers.size() != model.num_layers()) {
    return absl::InvalidArgumentError(absl::StrCat("segment has ", layers.size(),
                                                   " layers but the model spec says num_layers ",
                                                   model.num_layers(), "; send every layer"));
  }
  // Hash outside the lock: it reads every byte of the segment.
  const std::vector<uint64_t> digests = ComputeLayerDigests(layers);
  record.mutable_layer_digests()->Assign(digests.begin(), digests.end());
  record.set_raw_bytes(RawBytes(layers));
  absl::Mutex& mu = SessionMutex(key);
  absl::MutexLock lock(&mu);
  return AppendLocked(mu, key, model, record, layers);
}

absl::StatusOr<AppendOutcome> RocksDbStore::AppendLocked(absl::Mutex& mu, const SessionKey& key,
                                                         const nexuskv::v1::ModelSpec& model,
                                                         const SegmentRecord& record,
                                                         const std::vector<LayerTensors>& layers) {
  mu.AssertHeld();
  const std::string session = Quoted(key.session_id);
  const uint32_t turn = record.turn();
  NEXUSKV_ASSIGN_OR_RETURN(std::optional<SessionRecord> stored, ReadSessionRecord(key));
  SessionRecord updated;
  if (stored) {
    const std::string spec_diff = DescribeSpecDifference(model, stored->model());
    if (!spec_diff.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model spec differs from the session's: ", spec_diff, " (this segment vs session ",
          session, "); a session holds one model: start a new session for this one"));
    }
    if (turn < stored->num_turns()) {
      NEXUSKV_ASSIGN_OR_RETURN(std::optional<SegmentRecord> stored_turn,
                               ReadSegmentRecord(key, turn));
      if (!stored_turn) {
        return absl::DataLossError(
            absl::StrCat("session ", session, " has ", Turns(stored->num_turns()),
                         " but no record of turn ", turn, "; delete the session"));
      }
      const std::string diff = DescribeSegmentDifference(record, *stored_turn);
      if (!diff.empty()) {
        return absl::AlreadyExistsError(absl::StrCat(
            "turn ", turn, " of session ", session, " is already stored with different content (",
            diff, "); start a new session or delete this one"));
      }
      return AppendOutcome{.already_stored = true, .session = *std::move(stored)};
    }
    updated = *std::move(stored);
  } else {
    updated.set_session_id(key.session_id);
    *updated.mutable_model() = model;
    updated.set_create_time_unix_ms(NowUnixMillis());
  }
  if (turn != updated.num_turns()) {
    return absl::FailedPreconditionError(
        absl::StrCat("session ", session, " expects turn ", updated.num_turns(), " next (it has ",
                     Turns(updated.num_turns()), "); got turn ", turn));
  }
  if (turn > 0 && record.first_position() != updated.next_position()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "turn ", turn, " of session ", session, " must start at position ", updated.next_position(),
        ", where turn ", turn - 1, " ends; got first_position ", record.first_position()));
  }
  updated.set_num_turns(turn + 1);
  updated.set_total_tokens(updated.total_tokens() + record.num_tokens());
  updated.set_next_position(record.first_position() + record.num_tokens());
  updated.set_raw_bytes(updated.raw_bytes() + record.raw_bytes());
  updated.set_update_time_unix_ms(NowUnixMillis());
  const uint32_t ttl = record.ttl_seconds() > 0 ? record.ttl_seconds()
                       : !stored                ? options_.default_session_ttl_seconds
                                                : 0;
  if (ttl > 0) updated.set_expire_time_unix_ms(updated.update_time_unix_ms() + int64_t{ttl} * 1000);
  if (options_.max_turns_per_session > 0 && updated.num_turns() > options_.max_turns_per_session) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "session ", session, " has ", Turns(turn), ", its quota (--max_turns_per_session=",
        options_.max_turns_per_session, "); start a new session or delete old ones"));
  }
  if (options_.max_bytes_per_session > 0 && updated.raw_bytes() > options_.max_bytes_per_session) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "turn ", turn, " would bring session ", session, " to ", updated.raw_bytes(),
        " bytes, over its quota (--max_bytes_per_session=", options_.max_bytes_per_session,
        "); start a new session or delete old ones"));
  }
  NEXUSKV_RETURN_IF_ERROR(ReserveTenantUsage(key.tenant, !stored, record.raw_bytes()));

  rocksdb::WriteBatch batch(AppendBatchBytes(layers, record, updated));
  for (uint32_t layer = 0; layer < layers.size(); ++layer) {
    const LayerTensors& tensors = layers[layer];
    const auto put = [&](TensorKind kind, std::string_view bytes) {
      return PutChecksummed(batch, segments_,
                            EncodeTensorKey(key.tenant, key.session_id, turn, layer, kind), bytes);
    };
    NEXUSKV_RETURN_IF_ERROR(put(TensorKind::kKeys, tensors.keys));
    NEXUSKV_RETURN_IF_ERROR(put(TensorKind::kValues, tensors.values));
    // Stored even when empty (P = 0) so that it reads back as "" rather than NotFound.
    NEXUSKV_RETURN_IF_ERROR(put(TensorKind::kProbeQueries, tensors.probe_queries));
    if (record.has_token_scores()) {
      NEXUSKV_RETURN_IF_ERROR(put(TensorKind::kTokenScores, tensors.token_scores));
    }
  }
  NEXUSKV_RETURN_IF_ERROR(PutRecord(
      batch, sessions_, EncodeSegmentRecordKey(key.tenant, key.session_id, turn), record));
  NEXUSKV_RETURN_IF_ERROR(
      PutRecord(batch, sessions_, EncodeSessionKey(key.tenant, key.session_id), updated));
  if (absl::Status written =
          Write(batch, absl::StrCat("append turn ", turn, " of session ", session));
      !written.ok()) {
    AdjustTenantUsage(key.tenant, stored ? 0 : -1, -static_cast<int64_t>(record.raw_bytes()));
    return written;
  }
  return AppendOutcome{.already_stored = false, .session = std::move(updated)};
}

absl::Status RocksDbStore::PutFit(const SessionKey& key, uint32_t turn, std::string_view method,
                                  const std::vector<std::string>& per_layer,
                                  std::string_view summary) {
  NEXUSKV_RETURN_IF_ERROR(ValidateSessionKey(key));
  NEXUSKV_RETURN_IF_ERROR(ValidateId("method", method));
  absl::Mutex& mu = SessionMutex(key);
  absl::MutexLock lock(&mu);
  return PutFitLocked(mu, key, turn, method, per_layer, summary);
}

absl::Status RocksDbStore::PutFitLocked(absl::Mutex& mu, const SessionKey& key, uint32_t turn,
                                        std::string_view method,
                                        const std::vector<std::string>& per_layer,
                                        std::string_view summary) {
  mu.AssertHeld();
  const std::string session = Quoted(key.session_id);
  NEXUSKV_ASSIGN_OR_RETURN(std::optional<SessionRecord> stored, ReadSessionRecord(key));
  if (!stored) {
    return absl::NotFoundError(absl::StrCat("session ", session, " does not exist"));
  }
  if (turn >= stored->num_turns()) {
    return absl::NotFoundError(absl::StrCat("session ", session, " has no turn ", turn, " (it has ",
                                            Turns(stored->num_turns()), ")"));
  }
  if (per_layer.size() != stored->model().num_layers()) {
    return absl::InvalidArgumentError(
        absl::StrCat("fit has ", per_layer.size(), " layers but session ", session, " has ",
                     stored->model().num_layers(), "; store one fit per layer"));
  }

  // Replace: remove every layer of an earlier fit of this method and un-count its bytes.
  rocksdb::WriteBatch batch;
  uint64_t old_bytes = 0;
  const std::string prefix = EncodeFitPrefix(key.tenant, key.session_id, turn, method);
  const std::string end = IdPrefixEnd(prefix);
  rocksdb::Slice upper(end);
  rocksdb::ReadOptions read_options;
  read_options.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, nexus_));
  for (it->Seek(prefix); it->Valid(); it->Next()) {
    old_bytes += it->value().size() - std::min(it->value().size(), kChecksumBytes);
    NEXUSKV_RETURN_IF_ERROR(FromRocksStatus(batch.Delete(nexus_, it->key()), "stage a delete"));
  }
  const std::string context =
      absl::StrCat("store the ", Sv(method), " fit of turn ", turn, " of session ", session);
  NEXUSKV_RETURN_IF_ERROR(FromRocksStatus(it->status(), context));

  uint64_t new_bytes = 0;
  for (uint32_t layer = 0; layer < per_layer.size(); ++layer) {
    new_bytes += per_layer[layer].size();
    NEXUSKV_RETURN_IF_ERROR(
        PutChecksummed(batch, nexus_, EncodeFitKey(key.tenant, key.session_id, turn, method, layer),
                       per_layer[layer]));
  }
  if (!summary.empty()) {
    new_bytes += summary.size();
    NEXUSKV_RETURN_IF_ERROR(PutChecksummed(
        batch, nexus_, EncodeFitKey(key.tenant, key.session_id, turn, method, kFitSummaryLayer),
        summary));
  }
  stored->set_compressed_bytes(stored->compressed_bytes() -
                               std::min(old_bytes, stored->compressed_bytes()) + new_bytes);
  stored->set_update_time_unix_ms(NowUnixMillis());
  NEXUSKV_RETURN_IF_ERROR(
      PutRecord(batch, sessions_, EncodeSessionKey(key.tenant, key.session_id), *stored));
  NEXUSKV_RETURN_IF_ERROR(Write(batch, context));
  // Fits are the server's own work: counted against the tenant, never refused for its quota.
  AdjustTenantUsage(key.tenant, 0, static_cast<int64_t>(new_bytes) - int64_t(old_bytes));
  return absl::OkStatus();
}

absl::StatusOr<DeleteOutcome> RocksDbStore::DeleteSession(const SessionKey& key) {
  NEXUSKV_RETURN_IF_ERROR(ValidateSessionKey(key));
  absl::Mutex& mu = SessionMutex(key);
  absl::MutexLock lock(&mu);
  return DeleteLocked(mu, key);
}

absl::StatusOr<DeleteOutcome> RocksDbStore::DeleteLocked(absl::Mutex& mu, const SessionKey& key) {
  mu.AssertHeld();
  NEXUSKV_ASSIGN_OR_RETURN(std::optional<SessionRecord> stored, ReadSessionRecord(key));
  if (!stored) {
    return absl::NotFoundError(absl::StrCat("session ", Quoted(key.session_id), " does not exist"));
  }
  const std::string begin = SessionKeyBegin(key.tenant, key.session_id);
  const std::string end = SessionKeyEnd(key.tenant, key.session_id);
  rocksdb::WriteBatch batch;
  for (rocksdb::ColumnFamilyHandle* cf : {sessions_, segments_, nexus_}) {
    NEXUSKV_RETURN_IF_ERROR(
        FromRocksStatus(batch.DeleteRange(cf, begin, end), "stage a range delete"));
  }
  NEXUSKV_RETURN_IF_ERROR(Write(batch, absl::StrCat("delete session ", Quoted(key.session_id))));
  // Raw bytes already dropped (DropRawTensors) are not freed again.
  const uint64_t freed = stored->raw_bytes() -
                         std::min(stored->dropped_raw_bytes(), stored->raw_bytes()) +
                         stored->compressed_bytes();
  AdjustTenantUsage(key.tenant, -1, -static_cast<int64_t>(freed));
  if (options_.purge_on_delete) NEXUSKV_RETURN_IF_ERROR(PurgeOrDefer(begin, end));
  return DeleteOutcome{.deleted_turns = stored->num_turns(), .freed_bytes = freed};
}

absl::Status RocksDbStore::PurgeOrDefer(const std::string& begin, const std::string& end) {
  std::string from, to;
  absl::Time now;
  {
    absl::MutexLock lock(&purge_mu_);
    if (pending_end_.empty() || begin < pending_begin_) pending_begin_ = begin;
    if (pending_end_.empty() || end > pending_end_) pending_end_ = end;
    now = absl::Now();
    if (now < next_purge_) return absl::OkStatus();
    // Until this purge ends and paces the next, the interval alone holds later deletes back.
    next_purge_ = now + absl::Seconds(options_.purge_interval_seconds);
    from = std::exchange(pending_begin_, std::string());
    to = std::exchange(pending_end_, std::string());
  }
  return PacedPurge(from, to, now);
}

absl::Status RocksDbStore::PacedPurge(const std::string& begin, const std::string& end,
                                      absl::Time started) {
  absl::Status status = Purge(begin, end);
  const absl::Duration took = absl::Now() - started;
  absl::Time next;
  {
    absl::MutexLock lock(&purge_mu_);
    next = NextPurgeAt(started, took, absl::Seconds(options_.purge_interval_seconds),
                       options_.purge_max_share);
    next_purge_ = std::max(next_purge_, next);
  }
  Log(LogLevel::kInfo, "purge",
      {{"took_ms", absl::ToInt64Milliseconds(took)},
       {"next_in_s", std::max(0.0, absl::ToDoubleSeconds(next - absl::Now()))},
       {"ok", status.ok()}});
  return status;
}

absl::Status RocksDbStore::FlushPurges() {
  std::string from, to;
  absl::Time now;
  {
    absl::MutexLock lock(&purge_mu_);
    if (pending_end_.empty()) return absl::OkStatus();
    now = absl::Now();
    // As in PurgeOrDefer: deletes during this purge wait for it to pace the next.
    next_purge_ = std::max(next_purge_, now + absl::Seconds(options_.purge_interval_seconds));
    from = std::exchange(pending_begin_, std::string());
    to = std::exchange(pending_end_, std::string());
  }
  return PacedPurge(from, to, now);
}

absl::Status RocksDbStore::Purge(const std::string& begin, const std::string& end) {
  // Compaction writes new files before it drops old ones: on a nearly full disk it would fail
  // inside RocksDB. The session is deleted either way; its bytes go at a later compaction.
  if (FreeDiskBytes() < options_.min_free_disk_bytes) {
    Log(LogLevel::kWarning, "purge_skipped",
        {{"reason", "disk below --min_free_disk_bytes; bytes are reclaimed by later compactions"}});
    return absl::OkStatus();
  }
  rocksdb::CompactRangeOptions options;
  options.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
  options.blob_garbage_collection_policy = rocksdb::BlobGarbageCollectionPolicy::kForce;
  options.blob_garbage_collection_age_cutoff = 1.0;
  const rocksdb::Slice from(begin);
  const rocksdb::Slice to(end);
  for (rocksdb::ColumnFamilyHandle* cf : {sessions_, segments_, nexus_}) {
    NEXUSKV_RETURN_IF_ERROR(
        FromRocksStatus(db_->CompactRange(options, cf, &from, &to), "purge a deleted session"));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> RocksDbStore::DeleteExpired(int64_t now_unix_ms) {
  // Collect first, delete after: deleting while iterating the same column family would make the
  // iterator walk over range tombstones it just wrote.
  std::vector<SessionKey> expired;
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), sessions_));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      auto key = DecodeSessionsKey(std::string_view(it->key().data(), it->key().size()));
      if (!key.ok() || key->turn.has_value()) continue;
      SessionRecord record;
      if (!record.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())))
        continue;
      if (record.expire_time_unix_ms() > 0 && record.expire_time_unix_ms() <= now_unix_ms) {
        expired.push_back({std::move(key->tenant), std::move(key->session_id)});
      }
    }
    NEXUSKV_RETURN_IF_ERROR(FromRocksStatus(it->status(), "scan for expired sessions"));
  }
  uint32_t deleted = 0;
  for (const SessionKey& key : expired) {
    absl::Mutex& mu = SessionMutex(key);
    absl::MutexLock lock(&mu);
    // Re-check under the lock: an append may have extended the session since the scan.
    NEXUSKV_ASSIGN_OR_RETURN(std::optional<SessionRecord> now, ReadSessionRecord(key));
    if (!now || now->expire_time_unix_ms() == 0 || now->expire_time_unix_ms() > now_unix_ms) {
      continue;
    }
    NEXUSKV_RETURN_IF_ERROR(DeleteLocked(mu, key).status());
    Log(LogLevel::kInfo, "session_expired", {{"tenant", key.tenant}, {"session", key.session_id}});
    ++deleted;
  }
  return deleted;
}

}  // namespace nexuskv::store::internal
