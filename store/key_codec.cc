#include "store/key_codec.h"

#include <xxhash.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "store/internal/absl_compat.h"

namespace nexuskv::store {
namespace {

using internal::Sv;

constexpr char kTerminator = '\0';
constexpr char kTerminatorEnd = '\x01';

bool IsIdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == ':' || c == '-';
}

void AppendBigEndian32(uint32_t v, std::string* out) {
  const char bytes[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16),
                         static_cast<char>(v >> 8), static_cast<char>(v)};
  out->append(bytes, 4);
}

uint32_t ReadBigEndian32(std::string_view in) {
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

void AppendLittleEndian64(uint64_t v, std::string* out) {
  char bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(v >> (8 * i));
  out->append(bytes, 8);
}

uint64_t ReadLittleEndian64(std::string_view in) {
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

absl::Status BadKey(std::string_view what, std::string_view key, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("not a ", Sv(what), " key (", why,
                                                 "): ", absl::CHexEscape(Sv(key.substr(0, 300)))));
}

// Consumes one NUL-terminated id from the front of *rest into *id.
absl::Status TakeId(std::string_view what, std::string_view* rest, std::string* id) {
  const size_t end = rest->find(kTerminator);
  if (end == std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(what), " is not NUL-terminated"));
  }
  const std::string_view candidate = rest->substr(0, end);
  absl::Status status = ValidateId(what, candidate);
  if (!status.ok()) return status;
  id->assign(candidate);
  rest->remove_prefix(end + 1);
  return absl::OkStatus();
}

absl::Status TakeSessionPrefix(std::string_view* rest, std::string* tenant, std::string* session) {
  absl::Status status = TakeId("tenant", rest, tenant);
  if (status.ok()) status = TakeId("session_id", rest, session);
  return status;
}

}  // namespace

std::string_view TensorKindName(TensorKind kind) {
  switch (kind) {
    case TensorKind::kKeys:
      return "keys";
    case TensorKind::kValues:
      return "values";
    case TensorKind::kProbeQueries:
      return "probe_queries";
    case TensorKind::kTokenScores:
      return "token_scores";
  }
  return "unknown";
}

absl::Status ValidateId(std::string_view what, std::string_view id) {
  if (id.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(what), " is empty; use 1..", kMaxIdLength,
                                                   " characters of [A-Za-z0-9._:-]"));
  }
  if (id.size() > kMaxIdLength) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(what), " is ", id.size(),
                                                   " characters long; the limit is ", kMaxIdLength,
                                                   " characters of [A-Za-z0-9._:-]"));
  }
  for (size_t i = 0; i < id.size(); ++i) {
    if (!IsIdChar(id[i])) {
      const unsigned char c = static_cast<unsigned char>(id[i]);
      const std::string shown = (c >= 0x20 && c < 0x7f)
                                    ? absl::StrCat("'", std::string(1, id[i]), "'")
                                    : absl::StrFormat("byte 0x%02x", c);
      return absl::InvalidArgumentError(
          absl::StrCat(Sv(what), " has ", shown, " at position ", i,
                       "; only letters, digits and . _ : - are allowed"));
    }
  }
  return absl::OkStatus();
}

std::string EncodeSessionKey(std::string_view tenant, std::string_view session_id) {
  std::string key;
  key.reserve(tenant.size() + session_id.size() + 2);
  key.append(tenant);
  key.push_back(kTerminator);
  key.append(session_id);
  key.push_back(kTerminator);
  return key;
}

std::string EncodeSegmentRecordKey(std::string_view tenant, std::string_view session_id,
                                   uint32_t turn) {
  std::string key = EncodeSessionKey(tenant, session_id);
  AppendBigEndian32(turn, &key);
  return key;
}

std::string EncodeTensorKey(std::string_view tenant, std::string_view session_id, uint32_t turn,
                            uint32_t layer, TensorKind kind) {
  std::string key = EncodeSegmentRecordKey(tenant, session_id, turn);
  AppendBigEndian32(layer, &key);
  key.push_back(static_cast<char>(kind));
  return key;
}

std::string EncodeFitPrefix(std::string_view tenant, std::string_view session_id, uint32_t turn,
                            std::string_view method) {
  std::string key = EncodeSegmentRecordKey(tenant, session_id, turn);
  key.append(method);
  key.push_back(kTerminator);
  return key;
}

std::string EncodeFitKey(std::string_view tenant, std::string_view session_id, uint32_t turn,
                         std::string_view method, uint32_t layer) {
  std::string key = EncodeFitPrefix(tenant, session_id, turn, method);
  AppendBigEndian32(layer, &key);
  return key;
}

std::string IdPrefixEnd(std::string_view prefix) {
  std::string end(prefix);
  if (!end.empty() && end.back() == kTerminator) end.back() = kTerminatorEnd;
  return end;
}

std::string SessionKeyEnd(std::string_view tenant, std::string_view session_id) {
  return IdPrefixEnd(EncodeSessionKey(tenant, session_id));
}

std::string TenantKeyBegin(std::string_view tenant) {
  std::string key(tenant);
  key.push_back(kTerminator);
  return key;
}

std::string TenantKeyEnd(std::string_view tenant) { return IdPrefixEnd(TenantKeyBegin(tenant)); }

absl::StatusOr<DecodedSessionsKey> DecodeSessionsKey(std::string_view key) {
  DecodedSessionsKey out;
  std::string_view rest = key;
  if (absl::Status s = TakeSessionPrefix(&rest, &out.tenant, &out.session_id); !s.ok()) {
    return BadKey("sessions", key, s.message());
  }
  if (rest.empty()) return out;
  if (rest.size() != 4) {
    return BadKey("sessions", key, absl::StrCat(rest.size(), " bytes after the session id"));
  }
  out.turn = ReadBigEndian32(rest);
  return out;
}

absl::StatusOr<DecodedTensorKey> DecodeTensorKey(std::string_view key) {
  DecodedTensorKey out;
  std::string_view rest = key;
  if (absl::Status s = TakeSessionPrefix(&rest, &out.tenant, &out.session_id); !s.ok()) {
    return BadKey("segments", key, s.message());
  }
  if (rest.size() != 9) {
    return BadKey("segments", key, absl::StrCat(rest.size(), " bytes after the session id"));
  }
  out.turn = ReadBigEndian32(rest.substr(0, 4));
  out.layer = ReadBigEndian32(rest.substr(4, 4));
  const char kind = rest[8];
  if (kind != 'k' && kind != 'v' && kind != 'q' && kind != 's') {
    return BadKey("segments", key, "unknown tensor kind");
  }
  out.kind = static_cast<TensorKind>(kind);
  return out;
}

absl::StatusOr<DecodedFitKey> DecodeFitKey(std::string_view key) {
  DecodedFitKey out;
  std::string_view rest = key;
  if (absl::Status s = TakeSessionPrefix(&rest, &out.tenant, &out.session_id); !s.ok()) {
    return BadKey("nexus", key, s.message());
  }
  if (rest.size() < 4) return BadKey("nexus", key, "no turn");
  out.turn = ReadBigEndian32(rest.substr(0, 4));
  rest.remove_prefix(4);
  if (absl::Status s = TakeId("method", &rest, &out.method); !s.ok()) {
    return BadKey("nexus", key, s.message());
  }
  if (rest.size() != 4) {
    return BadKey("nexus", key, absl::StrCat(rest.size(), " bytes after the method"));
  }
  out.layer = ReadBigEndian32(rest);
  return out;
}

uint64_t PayloadChecksum(std::string_view payload) {
  return XXH3_64bits(payload.data(), payload.size());
}

std::string EncodeChecksumTrailer(std::string_view payload) {
  std::string trailer;
  AppendLittleEndian64(PayloadChecksum(payload), &trailer);
  return trailer;
}

std::string EncodeChecksummedValue(std::string_view payload) {
  std::string value;
  value.reserve(payload.size() + kChecksumBytes);
  value.append(payload);
  AppendLittleEndian64(PayloadChecksum(payload), &value);
  return value;
}

absl::StatusOr<std::string_view> DecodeChecksummedValue(std::string_view stored) {
  if (stored.size() < kChecksumBytes) {
    return absl::DataLossError(absl::StrCat("stored value is ", stored.size(),
                                            " bytes, shorter than its ", kChecksumBytes,
                                            "-byte checksum"));
  }
  const std::string_view payload = stored.substr(0, stored.size() - kChecksumBytes);
  const uint64_t expected = ReadLittleEndian64(stored.substr(payload.size()));
  const uint64_t actual = PayloadChecksum(payload);
  if (expected != actual) {
    return absl::DataLossError(
        absl::StrFormat("checksum mismatch on a %d-byte value: stored %016x, computed %016x",
                        payload.size(), expected, actual));
  }
  return payload;
}

}  // namespace nexuskv::store
