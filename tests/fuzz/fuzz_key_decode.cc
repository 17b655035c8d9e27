// Fuzz target: the store's key decoders (store/key_codec.h) on arbitrary bytes.
//
// Oracle: a decoder never crashes; it refuses with INVALID_ARGUMENT, or it returns parts that are
// valid ids and re-encode to exactly the input (so a decoded key names one session, turn and
// layer). Then the encoder's promise that bytewise key order is (tenant, session, turn, layer)
// order, on two tuples built from the input.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <tuple>

#include "store/key_codec.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using namespace nexuskv::store;  // NOLINT: a fuzz target's own file.

void CheckDecoders(std::string_view key) {
  if (auto k = DecodeSessionsKey(key); k.ok()) {
    FUZZ_CHECK(ValidateId("tenant", k->tenant).ok() && ValidateId("session", k->session_id).ok(),
               "decoded ids are invalid");
    const std::string again = k->turn ? EncodeSegmentRecordKey(k->tenant, k->session_id, *k->turn)
                                      : EncodeSessionKey(k->tenant, k->session_id);
    FUZZ_CHECK(again == key, "sessions key does not re-encode to itself");
    FUZZ_CHECK(std::string(key) >= SessionKeyBegin(k->tenant, k->session_id) &&
                   std::string(key) < SessionKeyEnd(k->tenant, k->session_id),
               "sessions key outside its session's range");
    FUZZ_CHECK(
        std::string(key) >= TenantKeyBegin(k->tenant) && std::string(key) < TenantKeyEnd(k->tenant),
        "sessions key outside its tenant's range");
  } else {
    FUZZ_CHECK(k.status().code() == absl::StatusCode::kInvalidArgument, "code %d",
               static_cast<int>(k.status().code()));
  }
  if (auto k = DecodeTensorKey(key); k.ok()) {
    FUZZ_CHECK(ValidateId("tenant", k->tenant).ok() && ValidateId("session", k->session_id).ok(),
               "decoded ids are invalid");
    FUZZ_CHECK(EncodeTensorKey(k->tenant, k->session_id, k->turn, k->layer, k->kind) == key,
               "tensor key does not re-encode to itself");
    FUZZ_CHECK(TensorKindName(k->kind) != "unknown", "unknown kind decoded");
    FUZZ_CHECK(std::string(key) < SessionKeyEnd(k->tenant, k->session_id),
               "tensor key outside its session's range");
  } else {
    FUZZ_CHECK(k.status().code() == absl::StatusCode::kInvalidArgument, "code %d",
               static_cast<int>(k.status().code()));
  }
  if (auto k = DecodeFitKey(key); k.ok()) {
    FUZZ_CHECK(ValidateId("tenant", k->tenant).ok() && ValidateId("session", k->session_id).ok() &&
                   ValidateId("method", k->method).ok(),
               "decoded ids are invalid");
    FUZZ_CHECK(EncodeFitKey(k->tenant, k->session_id, k->turn, k->method, k->layer) == key,
               "fit key does not re-encode to itself");
    const std::string prefix = EncodeFitPrefix(k->tenant, k->session_id, k->turn, k->method);
    FUZZ_CHECK(key.starts_with(prefix) && std::string(key) < IdPrefixEnd(prefix),
               "fit key outside its fit's range");
  } else {
    FUZZ_CHECK(k.status().code() == absl::StatusCode::kInvalidArgument, "code %d",
               static_cast<int>(k.status().code()));
  }
}

// A valid id (1..128 id characters) from the input.
std::string MakeId(FuzzedDataProvider& in) {
  static constexpr char kChars[] =
      "-.0123456789:ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";
  const size_t n = in.ConsumeIntegralInRange<size_t>(1, kMaxIdLength);
  std::string id;
  for (size_t i = 0; i < n && (i == 0 || in.remaining_bytes() > 0); ++i) {
    id.push_back(kChars[in.ConsumeIntegralInRange<size_t>(0, sizeof(kChars) - 2)]);
  }
  return id;
}

void CheckOrder(FuzzedDataProvider& in) {
  struct Tuple {
    std::string tenant, session;
    uint32_t turn, layer;
  };
  auto make = [&in] {
    Tuple t{MakeId(in), MakeId(in), in.ConsumeIntegral<uint32_t>(), in.ConsumeIntegral<uint32_t>()};
    return t;
  };
  const Tuple a = make();
  const Tuple b = make();
  FUZZ_CHECK(ValidateId("tenant", a.tenant).ok() && ValidateId("tenant", b.tenant).ok(),
             "MakeId made an invalid id");
  const auto ta = std::tie(a.tenant, a.session, a.turn, a.layer);
  const auto tb = std::tie(b.tenant, b.session, b.turn, b.layer);
  const std::string ka = EncodeTensorKey(a.tenant, a.session, a.turn, a.layer, TensorKind::kKeys);
  const std::string kb = EncodeTensorKey(b.tenant, b.session, b.turn, b.layer, TensorKind::kKeys);
  FUZZ_CHECK((ta < tb) == (ka < kb) && (ta == tb) == (ka == kb),
             "tensor key order differs from (tenant, session, turn, layer) order");
  const auto sa = std::tie(a.tenant, a.session, a.turn);
  const auto sb = std::tie(b.tenant, b.session, b.turn);
  const std::string ra = EncodeSegmentRecordKey(a.tenant, a.session, a.turn);
  const std::string rb = EncodeSegmentRecordKey(b.tenant, b.session, b.turn);
  FUZZ_CHECK((sa < sb) == (ra < rb), "segment record key order differs from tuple order");
  auto decoded = DecodeTensorKey(ka);
  FUZZ_CHECK(decoded.ok() && decoded->tenant == a.tenant && decoded->session_id == a.session &&
                 decoded->turn == a.turn && decoded->layer == a.layer,
             "an encoded tensor key does not decode to its parts");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view key(reinterpret_cast<const char*>(data), size);
  CheckDecoders(key);
  FuzzedDataProvider in(data, size);
  CheckOrder(in);
  return 0;
}
