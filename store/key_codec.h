// Key codec: the order-preserving RocksDB keys and checksummed values of the store.
//
// Ids (tenant, session_id, fit method) are 1..128 characters of [A-Za-z0-9._:-] (ValidateId).
// Because an id never contains NUL (0x00) or 0x01, NUL can terminate it, and every key of a
// session starts with the same `tenant \0 session \0` prefix:
//
//   CF "sessions"  tenant \0 session \0                              -> SessionRecord
//                  tenant \0 session \0 BE32(turn)                   -> SegmentRecord
//   CF "segments"  tenant \0 session \0 BE32(turn) BE32(layer) kind  -> tensor bytes + trailer
//                  (kind is 'k' keys, 'v' values, 'q' probe queries)
//   CF "nexus"     tenant \0 session \0 BE32(turn) method \0 BE32(layer) -> fit bytes + trailer
//
// BE32 is a uint32 in big-endian byte order; the trailer is the 8-byte little-endian XXH3-64
// (XXH3_64bits) of the bytes before it.
//
// Why bytewise key order is (tenant, session, turn) order: NUL sorts below every id character,
// so `a \0` < `a.b \0` < `b \0` exactly as "a" < "a.b" < "b" (a shorter id that is a prefix of a
// longer one sorts first, as std::string does). Within one session the turn is big-endian, whose
// bytewise order is numeric order (turn 255 = 00 00 00 FF < turn 256 = 00 00 01 00), and the
// session record (no turn bytes) sorts before all of its segment records. Hence all keys of one
// session lie in [SessionKeyBegin, SessionKeyEnd) = [`tenant \0 session \0`, `tenant \0 session
// \x01`), and all keys of one tenant in [`tenant \0`, `tenant \x01`).
//
//   NEXUSKV_RETURN_IF_ERROR(ValidateId("session_id", id));
//   std::string key = EncodeTensorKey(tenant, id, /*turn=*/3, /*layer=*/0, TensorKind::kKeys);
//   NEXUSKV_ASSIGN_OR_RETURN(DecodedTensorKey parts, DecodeTensorKey(key));
//
// Encoders expect valid ids (callers run ValidateId first); given invalid ones they still return
// a string but keys may then collide. Decoders accept arbitrary bytes and return InvalidArgument
// for anything an encoder could not have produced from valid ids; they never crash.
// All functions are pure and thread-safe.
#ifndef NEXUSKV_STORE_KEY_CODEC_H_
#define NEXUSKV_STORE_KEY_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace nexuskv::store {

// Which tensor of a layer. The value is the kind byte of a segments key.
enum class TensorKind : char {
  kKeys = 'k',
  kValues = 'v',
  kProbeQueries = 'q',
  kTokenScores = 's',
};

// "keys", "values", "probe_queries" or "token_scores"; "unknown" for any other value.
std::string_view TensorKindName(TensorKind kind);

inline constexpr size_t kMaxIdLength = 128;
// Bytes of the checksum trailer of every segments and nexus value.
inline constexpr size_t kChecksumBytes = 8;

// OK when `id` is 1..kMaxIdLength characters of [A-Za-z0-9._:-]. Otherwise InvalidArgument whose
// message names `what` (e.g. "session_id") and the offending length or character and position.
absl::Status ValidateId(std::string_view what, std::string_view id);

// --- Column family "sessions" ---
// `tenant \0 session \0`: the SessionRecord key, and the first key of the session's range.
std::string EncodeSessionKey(std::string_view tenant, std::string_view session_id);
// `tenant \0 session \0 BE32(turn)`: the SegmentRecord of one turn.
std::string EncodeSegmentRecordKey(std::string_view tenant, std::string_view session_id,
                                   uint32_t turn);

// --- Column family "segments" ---
std::string EncodeTensorKey(std::string_view tenant, std::string_view session_id, uint32_t turn,
                            uint32_t layer, TensorKind kind);

// --- Column family "nexus" ---
std::string EncodeFitKey(std::string_view tenant, std::string_view session_id, uint32_t turn,
                         std::string_view method, uint32_t layer);
// `tenant \0 session \0 BE32(turn) method \0`: every layer of one fit starts with it.
std::string EncodeFitPrefix(std::string_view tenant, std::string_view session_id, uint32_t turn,
                            std::string_view method);

// --- Ranges (any column family) ---
// Exclusive upper bound of every key that starts with `prefix`, where prefix ends in the NUL that
// terminates an id: the same string with that NUL replaced by 0x01. Returns `prefix` unchanged
// when it does not end in NUL.
std::string IdPrefixEnd(std::string_view prefix);
// [SessionKeyBegin, SessionKeyEnd) holds every key of one session, in every column family.
inline std::string SessionKeyBegin(std::string_view tenant, std::string_view session_id) {
  return EncodeSessionKey(tenant, session_id);
}
std::string SessionKeyEnd(std::string_view tenant, std::string_view session_id);
// [TenantKeyBegin, TenantKeyEnd) holds every key of one tenant, in every column family.
std::string TenantKeyBegin(std::string_view tenant);
std::string TenantKeyEnd(std::string_view tenant);

// --- Decoding ---
// A key of the sessions CF: a SessionRecord key (turn empty) or a SegmentRecord key.
struct DecodedSessionsKey {
  std::string tenant;
  std::string session_id;
  std::optional<uint32_t> turn;
};
absl::StatusOr<DecodedSessionsKey> DecodeSessionsKey(std::string_view key);

struct DecodedTensorKey {
  std::string tenant;
  std::string session_id;
  uint32_t turn = 0;
  uint32_t layer = 0;
  TensorKind kind = TensorKind::kKeys;
};
absl::StatusOr<DecodedTensorKey> DecodeTensorKey(std::string_view key);

struct DecodedFitKey {
  std::string tenant;
  std::string session_id;
  uint32_t turn = 0;
  std::string method;
  uint32_t layer = 0;
};
absl::StatusOr<DecodedFitKey> DecodeFitKey(std::string_view key);

// --- Values of the segments and nexus CFs ---
// XXH3-64 of `payload`.
uint64_t PayloadChecksum(std::string_view payload);
// The 8-byte trailer to store after `payload`.
std::string EncodeChecksumTrailer(std::string_view payload);
// `payload` followed by its trailer.
std::string EncodeChecksummedValue(std::string_view payload);
// The payload of a stored value (a view into `stored`) after checking its trailer. DataLoss when
// the value is shorter than the trailer or the checksum does not match.
absl::StatusOr<std::string_view> DecodeChecksummedValue(std::string_view stored);

}  // namespace nexuskv::store

#endif  // NEXUSKV_STORE_KEY_CODEC_H_
