// RocksDbStore::DropRawTensors: the storage side of --raw_retention. Once a turn's SONIC ladder is
// stored, its raw tensors are what the tier can give up to save memory; the turn's record stays
// (marked raw_dropped) so that the session keeps its shape and every fit stays servable.
#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "store/internal/absl_compat.h"
#include "store/internal/rocksdb_status.h"
#include "store/internal/rocksdb_store.h"

namespace nexuskv::store::internal {

absl::StatusOr<bool> RocksDbStore::DropRawTensors(const SessionKey& key, uint32_t turn,
                                                  std::string_view required_fit) {
  NEXUSKV_RETURN_IF_ERROR(ValidateSessionKey(key));
  NEXUSKV_RETURN_IF_ERROR(ValidateId("required_fit", required_fit));
  absl::Mutex& mu = SessionMutex(key);
  bool dropped = false;
  {
    absl::MutexLock lock(&mu);
    NEXUSKV_ASSIGN_OR_RETURN(dropped, DropRawLocked(mu, key, turn, required_fit));
  }
  if (dropped && options_.purge_on_delete) {
    NEXUSKV_RETURN_IF_ERROR(PurgeOrDefer(SessionKeyBegin(key.tenant, key.session_id),
                                         SessionKeyEnd(key.tenant, key.session_id)));
  }
  return dropped;
}

absl::StatusOr<bool> RocksDbStore::DropRawLocked(absl::Mutex& mu, const SessionKey& key,
                                                 uint32_t turn, std::string_view required_fit) {
  mu.AssertHeld();
  const std::string session = absl::StrCat("\"", key.session_id, "\"");
  NEXUSKV_ASSIGN_OR_RETURN(std::optional<SessionRecord> stored, ReadSessionRecord(key));
  if (!stored) return absl::NotFoundError(absl::StrCat("session ", session, " does not exist"));
  NEXUSKV_ASSIGN_OR_RETURN(std::optional<SegmentRecord> record, ReadSegmentRecord(key, turn));
  if (!record) {
    return absl::NotFoundError(absl::StrCat("session ", session, " has no turn ", turn));
  }
  if (record->raw_dropped()) return false;
  NEXUSKV_ASSIGN_OR_RETURN(const bool fitted, HasFit(key, turn, required_fit));
  if (!fitted) {
    return absl::FailedPreconditionError(absl::StrCat("turn ", turn, " of session ", session,
                                                      " has no stored ", Sv(required_fit),
                                                      " fit; its raw KV is kept until one is"));
  }
  rocksdb::WriteBatch batch;
  const std::string context =
      absl::StrCat("drop the raw KV of turn ", turn, " of session ", session);
  for (uint32_t layer = 0; layer < stored->model().num_layers(); ++layer) {
    for (TensorKind kind : {TensorKind::kKeys, TensorKind::kValues, TensorKind::kProbeQueries,
                            TensorKind::kTokenScores}) {
      NEXUSKV_RETURN_IF_ERROR(FromRocksStatus(
          batch.Delete(segments_, EncodeTensorKey(key.tenant, key.session_id, turn, layer, kind)),
          context));
    }
  }
  record->set_raw_dropped(true);
  stored->set_dropped_raw_bytes(stored->dropped_raw_bytes() + record->raw_bytes());
  stored->set_update_time_unix_ms(absl::ToUnixMillis(absl::Now()));
  NEXUSKV_RETURN_IF_ERROR(
      FromRocksStatus(batch.Put(sessions_, EncodeSegmentRecordKey(key.tenant, key.session_id, turn),
                                record->SerializeAsString()),
                      context));
  NEXUSKV_RETURN_IF_ERROR(
      FromRocksStatus(batch.Put(sessions_, EncodeSessionKey(key.tenant, key.session_id),
                                stored->SerializeAsString()),
                      context));
  NEXUSKV_RETURN_IF_ERROR(Write(batch, context));
  AdjustTenantUsage(key.tenant, 0, -static_cast<int64_t>(record->raw_bytes()));
  Log(LogLevel::kInfo, "raw_dropped",
      {{"tenant", key.tenant},
       {"session", key.session_id},
       {"turn", turn},
       {"bytes", record->raw_bytes()}});
  return true;
}

absl::StatusOr<std::vector<SessionKey>> RocksDbStore::ListSessionKeys() {
  std::vector<SessionKey> keys;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), sessions_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    absl::StatusOr<DecodedSessionsKey> key = DecodeSessionsKey(it->key().ToStringView());
    if (!key.ok() || key->turn.has_value()) continue;  // turn records, or not ours
    keys.push_back({key->tenant, key->session_id});
  }
  NEXUSKV_RETURN_IF_ERROR(FromRocksStatus(it->status(), "list every session"));
  return keys;
}

}  // namespace nexuskv::store::internal
