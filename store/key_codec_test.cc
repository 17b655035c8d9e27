#include "store/key_codec.h"

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nexuskv::store {
namespace {

using ::testing::HasSubstr;

TEST(ValidateIdTest, AcceptsEveryAllowedCharacter) {
  EXPECT_TRUE(ValidateId("session_id", "aZ09._:-").ok());
  EXPECT_TRUE(ValidateId("session_id", std::string(kMaxIdLength, 'x')).ok());
}

TEST(ValidateIdTest, RefusesEmptyAndTooLong) {
  absl::Status empty = ValidateId("session_id", "");
  EXPECT_EQ(empty.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(empty.message()), HasSubstr("session_id is empty"));
  absl::Status too_long = ValidateId("tenant", std::string(kMaxIdLength + 1, 'x'));
  EXPECT_EQ(too_long.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(too_long.message()), HasSubstr("tenant is 129 characters long"));
}

TEST(ValidateIdTest, NamesTheBadCharacterAndPosition) {
  absl::Status slash = ValidateId("session_id", "ab/c");
  EXPECT_EQ(slash.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(slash.message()), HasSubstr("'/' at position 2"));
  absl::Status nul = ValidateId("session_id", std::string("a\0b", 3));
  EXPECT_EQ(nul.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(nul.message()), HasSubstr("byte 0x00 at position 1"));
  EXPECT_EQ(ValidateId("session_id", "caf\xc3\xa9").code(), absl::StatusCode::kInvalidArgument);
}

TEST(KeyOrderTest, TurnsSortNumerically) {
  std::vector<uint32_t> turns = {0, 1, 2, 255, 256, 65535, 65536, 0xffffffffu};
  for (size_t i = 1; i < turns.size(); ++i) {
    EXPECT_LT(EncodeSegmentRecordKey("t", "s", turns[i - 1]),
              EncodeSegmentRecordKey("t", "s", turns[i]))
        << turns[i - 1] << " vs " << turns[i];
    EXPECT_LT(EncodeTensorKey("t", "s", turns[i - 1], 7, TensorKind::kValues),
              EncodeTensorKey("t", "s", turns[i], 0, TensorKind::kKeys));
    EXPECT_LT(EncodeFitKey("t", "s", turns[i - 1], "sonic", 9),
              EncodeFitKey("t", "s", turns[i], "h2o", 0));
  }
}

TEST(KeyOrderTest, SessionsSortAsStringsWithPrefixesFirst) {
  const std::vector<std::string> ids = {"a", "a.b", "a0", "aa", "b", "b-", "b:c"};
  ASSERT_TRUE(std::is_sorted(ids.begin(), ids.end()));
  for (size_t i = 1; i < ids.size(); ++i) {
    // The last turn of a session sorts before anything of the next session.
    EXPECT_LT(EncodeSegmentRecordKey("t", ids[i - 1], 0xffffffffu), EncodeSessionKey("t", ids[i]))
        << ids[i - 1] << " vs " << ids[i];
    EXPECT_LT(EncodeTensorKey("t", ids[i - 1], 0xffffffffu, 0xffffffffu, TensorKind::kValues),
              EncodeTensorKey("t", ids[i], 0, 0, TensorKind::kKeys));
    EXPECT_LE(SessionKeyEnd("t", ids[i - 1]), SessionKeyBegin("t", ids[i]));
  }
}

TEST(KeyOrderTest, TenantsSortFirst) {
  EXPECT_LT(EncodeSegmentRecordKey("a", "zzz", 9), EncodeSessionKey("a.b", "a"));
  EXPECT_LT(EncodeSessionKey("a.b", "zzz"), EncodeSessionKey("b", "a"));
  EXPECT_LT(TenantKeyEnd("a"), TenantKeyBegin("a.b"));
}

TEST(KeyOrderTest, SessionRangeHoldsExactlyItsKeys) {
  const std::string begin = SessionKeyBegin("t", "s1");
  const std::string end = SessionKeyEnd("t", "s1");
  for (const std::string& inside :
       {EncodeSessionKey("t", "s1"), EncodeSegmentRecordKey("t", "s1", 0xffffffffu),
        EncodeTensorKey("t", "s1", 0xffffffffu, 0xffffffffu, TensorKind::kProbeQueries),
        EncodeFitKey("t", "s1", 0xffffffffu, "zzz", 0xffffffffu)}) {
    EXPECT_LE(begin, inside);
    EXPECT_LT(inside, end);
  }
  for (const std::string& outside :
       {EncodeSessionKey("t", "s"), EncodeSessionKey("t", "s1-"), EncodeSessionKey("t", "s10"),
        EncodeSessionKey("t", "s2"), EncodeSessionKey("t.x", "s1")}) {
    EXPECT_TRUE(outside < begin || outside >= end) << outside;
  }
}

TEST(KeyDecodeTest, RoundTrips) {
  absl::StatusOr<DecodedSessionsKey> session = DecodeSessionsKey(EncodeSessionKey("ten", "s:1"));
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(session->tenant, "ten");
  EXPECT_EQ(session->session_id, "s:1");
  EXPECT_FALSE(session->turn.has_value());

  // 0x00 and 0x01 bytes inside the turn must not confuse the decoder.
  absl::StatusOr<DecodedSessionsKey> segment =
      DecodeSessionsKey(EncodeSegmentRecordKey("ten", "s", 0x00010001u));
  ASSERT_TRUE(segment.ok()) << segment.status();
  EXPECT_EQ(segment->turn, 0x00010001u);

  absl::StatusOr<DecodedTensorKey> tensor =
      DecodeTensorKey(EncodeTensorKey("ten", "s", 256, 3, TensorKind::kProbeQueries));
  ASSERT_TRUE(tensor.ok()) << tensor.status();
  EXPECT_EQ(tensor->tenant, "ten");
  EXPECT_EQ(tensor->session_id, "s");
  EXPECT_EQ(tensor->turn, 256u);
  EXPECT_EQ(tensor->layer, 3u);
  EXPECT_EQ(tensor->kind, TensorKind::kProbeQueries);

  absl::StatusOr<DecodedFitKey> fit = DecodeFitKey(EncodeFitKey("ten", "s", 0, "sonic", 0));
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_EQ(fit->turn, 0u);
  EXPECT_EQ(fit->method, "sonic");
  EXPECT_EQ(fit->layer, 0u);
}

TEST(KeyDecodeTest, RefusesMalformedKeys) {
  const std::string tensor = EncodeTensorKey("t", "s", 1, 2, TensorKind::kKeys);
  std::string bad_kind = tensor;
  bad_kind.back() = 'x';
  const std::vector<std::string> bad_tensor_keys = {
      "",
      std::string(1, '\0'),
      "t",
      std::string("t\0", 2),
      std::string("\0s\0", 3),
      tensor.substr(0, tensor.size() - 1),
      tensor + "k",
      bad_kind,
      EncodeTensorKey("t/", "s", 1, 2, TensorKind::kKeys)};
  for (const std::string& key : bad_tensor_keys) {
    EXPECT_EQ(DecodeTensorKey(key).status().code(), absl::StatusCode::kInvalidArgument)
        << absl::CHexEscape(key);
  }
  EXPECT_EQ(DecodeSessionsKey(EncodeSessionKey("t", "s") + "abc").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeSessionsKey(EncodeSessionKey("t", "s") + std::string(129, 'x')).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeFitKey(EncodeSegmentRecordKey("t", "s", 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeFitKey(EncodeFitKey("t", "s", 1, "m", 2) + "x").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeFitKey(EncodeFitPrefix("t", "s", 1, "") + "abcd").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A small stand-in for the fuzzer: random bytes and mutated valid keys never crash a decoder, and
// whatever decodes re-encodes to the same bytes.
TEST(KeyDecodeTest, GarbageNeverCrashesAndDecodedKeysReencode) {
  std::mt19937 rng(20260101);
  const std::vector<std::string> seeds = {
      EncodeSessionKey("t", "s"), EncodeSegmentRecordKey("ten", "sess", 258),
      EncodeTensorKey("t", "s", 1, 2, TensorKind::kValues), EncodeFitKey("t", "s", 3, "sonic", 4)};
  int decoded_ok = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string key;
    if (i % 2 == 0) {
      key.resize(rng() % 40);
      for (char& c : key) c = static_cast<char>(rng() % 4 == 0 ? rng() % 3 : rng());
    } else {
      key = seeds[rng() % seeds.size()];
      const int edits = 1 + rng() % 3;
      for (int e = 0; e < edits && !key.empty(); ++e) {
        const size_t pos = rng() % key.size();
        switch (rng() % 3) {
          case 0:
            key[pos] = static_cast<char>(rng());
            break;
          case 1:
            key.erase(pos, 1);
            break;
          default:
            key.insert(pos, 1, static_cast<char>(rng() % 2));
            break;
        }
      }
    }
    if (absl::StatusOr<DecodedSessionsKey> s = DecodeSessionsKey(key); s.ok()) {
      ++decoded_ok;
      EXPECT_EQ(s->turn ? EncodeSegmentRecordKey(s->tenant, s->session_id, *s->turn)
                        : EncodeSessionKey(s->tenant, s->session_id),
                key);
    } else {
      EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    }
    if (absl::StatusOr<DecodedTensorKey> t = DecodeTensorKey(key); t.ok()) {
      ++decoded_ok;
      EXPECT_EQ(EncodeTensorKey(t->tenant, t->session_id, t->turn, t->layer, t->kind), key);
    }
    if (absl::StatusOr<DecodedFitKey> f = DecodeFitKey(key); f.ok()) {
      ++decoded_ok;
      EXPECT_EQ(EncodeFitKey(f->tenant, f->session_id, f->turn, f->method, f->layer), key);
    }
  }
  EXPECT_GT(decoded_ok, 0);  // The mutations leave some keys valid, so re-encoding is exercised.
}

TEST(ChecksumTest, RoundTripsAndDetectsEveryFlippedByte) {
  const std::string payload = "some tensor bytes \x00\x01\x02";
  const std::string stored = EncodeChecksummedValue(payload);
  ASSERT_EQ(stored.size(), payload.size() + kChecksumBytes);
  EXPECT_EQ(stored, payload + EncodeChecksumTrailer(payload));
  absl::StatusOr<std::string_view> decoded = DecodeChecksummedValue(stored);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, payload);
  for (size_t i = 0; i < stored.size(); ++i) {
    std::string corrupt = stored;
    corrupt[i] ^= 0x10;
    EXPECT_EQ(DecodeChecksummedValue(corrupt).status().code(), absl::StatusCode::kDataLoss) << i;
  }
}

TEST(ChecksumTest, EmptyPayloadAndShortValues) {
  absl::StatusOr<std::string_view> empty = DecodeChecksummedValue(EncodeChecksummedValue(""));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(*empty, "");
  EXPECT_EQ(DecodeChecksummedValue("").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeChecksummedValue("1234567").status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace nexuskv::store
