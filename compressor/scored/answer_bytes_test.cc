// The answer's byte gather: a kept stored row copied as bytes gives exactly the bytes of decoding
// it to float32 and encoding it for the answer, for every float16 and bfloat16 pattern (NaNs,
// infinities, denormals, signed zeros) and across dtypes; and a scored layer built as answer
// bytes equals the float layer encoded, on real float16 KV with those patterns in it.
#include "compressor/scored/answer_bytes.h"

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "compressor/scored/selection.h"
#include "gtest/gtest.h"
#include "tensor/dtype.h"

namespace nexuskv::compressor::scored {
namespace {

constexpr DType kDTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};

std::string Bytes16(const std::vector<uint16_t>& bits) {
  std::string out(bits.size() * 2, '\0');
  std::memcpy(out.data(), bits.data(), out.size());
  return out;
}

// What the answer held before the gather: decode to float32, then AppendAnswerEncoded.
std::string RoundTrip(std::string_view stored, DType from, DType to) {
  std::vector<float> f(stored.size() / DTypeSize(from));
  EXPECT_TRUE(DecodeToFloat(stored, from, f).ok());
  std::string out;
  AppendAnswerEncoded(f, to, &out);
  return out;
}

std::string Gather(std::string_view stored, DType from, DType to) {
  std::vector<float> scratch(stored.size() / DTypeSize(from));
  std::string out = "prefix";
  EXPECT_TRUE(GatherAnswerRow(stored, from, to, scratch, &out).ok());
  return out.substr(6);
}

TEST(AnswerBytesTest, EverySixteenBitPatternGathersAsItsRoundTrip) {
  for (const DType from : {DType::kFloat16, DType::kBFloat16}) {
    // Rows of 64 consecutive patterns: 0x7c00.. (float16 inf and NaNs) and 0x0001.. (denormals)
    // land in rows of their own and among finite neighbours.
    for (uint32_t first = 0; first < 65536; first += 64) {
      std::vector<uint16_t> bits(64);
      for (uint32_t i = 0; i < 64; ++i) bits[i] = static_cast<uint16_t>(first + i);
      const std::string row = Bytes16(bits);
      for (const DType to : kDTypes) {
        ASSERT_EQ(Gather(row, from, to), RoundTrip(row, from, to))
            << DTypeName(from) << " -> " << DTypeName(to) << ", row from 0x" << std::hex << first;
      }
      // One pattern alone in a row of finite values.
      for (uint32_t i = 0; i < 64; ++i) {
        const std::string one = Bytes16({0x3c00, bits[i], 0x0001});
        ASSERT_EQ(Gather(one, from, from), RoundTrip(one, from, from))
            << DTypeName(from) << " 0x" << std::hex << bits[i];
      }
    }
  }
}

TEST(AnswerBytesTest, FiniteSixteenBitRowsAreCopiedAsTheyAre) {
  // The identity the gather relies on: finite float16 (denormals too) and bfloat16 round-trip.
  for (const DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    const uint16_t exponent = dtype == DType::kFloat16 ? 0x7c00 : 0x7f80;
    for (uint32_t p = 0; p < 65536; ++p) {
      if ((p & exponent) == exponent) continue;
      const std::string row = Bytes16({static_cast<uint16_t>(p)});
      ASSERT_EQ(RoundTrip(row, dtype, dtype), row) << DTypeName(dtype) << " 0x" << std::hex << p;
    }
  }
}

TEST(AnswerBytesTest, Float32PatternsGatherAsTheirRoundTrip) {
  std::mt19937 rng(7);
  std::vector<uint32_t> bits = {0x00000000, 0x80000000, 0x00000001, 0x807fffff, 0x7f800000,
                                0xff800000, 0x7fc00000, 0x7f800001, 0xffffffff, 0x477fe000,
                                0x477ff000, 0x477fffff, 0xc77fe100, 0x33800000, 0x387fc000};
  for (int i = 0; i < 4096; ++i) bits.push_back(rng());
  std::string row(bits.size() * 4, '\0');
  std::memcpy(row.data(), bits.data(), row.size());
  for (const DType to : kDTypes) {
    EXPECT_EQ(Gather(row, DType::kFloat32, to), RoundTrip(row, DType::kFloat32, to))
        << DTypeName(to);
  }
  EXPECT_EQ(Gather(row, DType::kFloat32, DType::kFloat32), row);
}

TEST(AnswerBytesTest, Float16SaturatesAndKeepsNaN) {
  std::string out;
  AppendAnswerEncoded(std::vector<float>{1e9f, -1e9f, std::numeric_limits<float>::infinity(),
                                         std::numeric_limits<float>::quiet_NaN(), 1.0f},
                      DType::kFloat16, &out);
  std::vector<uint16_t> bits(5);
  std::memcpy(bits.data(), out.data(), 10);
  EXPECT_EQ(bits[0], 0x7bff);
  EXPECT_EQ(bits[1], 0xfbff);
  EXPECT_EQ(bits[2], 0x7bff);
  EXPECT_EQ(bits[3] & 0x7c00, 0x7c00);
  EXPECT_NE(bits[3] & 0x03ff, 0);
  EXPECT_EQ(bits[4], 0x3c00);
}

TEST(AnswerBytesTest, RefusesARowOfTheWrongSize) {
  std::vector<float> scratch(4);
  std::string out;
  EXPECT_FALSE(
      GatherAnswerRow(std::string(6, '\0'), DType::kFloat16, DType::kFloat16, scratch, &out).ok());
}

// A scored layer two ways: BuildLayer's floats encoded for the answer, and BuildAnswerLayer.
struct Case {
  bool fill_heads;
  double merge_share;
  DType stored;
  DType answer;
};

TEST(AnswerBytesTest, AnswerLayerEqualsTheEncodedFloatLayerOnRealBytes) {
  const int layers = 3, heads = 2, d = 8;
  const std::vector<int64_t> tokens = {40, 24, 33};
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> score(0.0f, 1.0f);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (const Case c : {Case{true, 0.25, DType::kFloat16, DType::kFloat16},
                       Case{true, 0.0, DType::kFloat16, DType::kFloat16},
                       Case{false, 0.0, DType::kFloat16, DType::kFloat16},
                       Case{true, 0.25, DType::kFloat16, DType::kFloat32},
                       Case{true, 0.25, DType::kFloat16, DType::kBFloat16},
                       Case{true, 0.25, DType::kBFloat16, DType::kBFloat16},
                       Case{true, 0.25, DType::kFloat32, DType::kFloat32},
                       Case{true, 0.25, DType::kFloat32, DType::kFloat16},
                       Case{false, 0.0, DType::kFloat32, DType::kFloat16}}) {
    std::vector<ScoredTurn> turns;
    int64_t position = 0;
    for (size_t u = 0; u < tokens.size(); ++u) {
      ScoredTurn& t = turns.emplace_back();
      t.num_tokens = tokens[u];
      t.first_position = position;
      t.session_start = u == 0;
      position += tokens[u];
      for (int l = 0; l < layers; ++l) {
        std::vector<float>& s = t.scores.emplace_back();
        for (int64_t i = 0; i < heads * tokens[u]; ++i) s.push_back(score(rng));
      }
    }
    int64_t total = 0;
    for (int64_t t : tokens) total += t;
    SelectionOptions options{.budget = total / 4,
                             .fill_heads = c.fill_heads,
                             .bias = c.fill_heads,
                             .merge_share = c.merge_share};
    absl::StatusOr<Selection> selection = Selection::Make(turns, layers, heads, options);
    ASSERT_TRUE(selection.ok()) << selection.status();
    for (int l = 0; l < layers; ++l) {
      // Real encoded KV, with NaNs, infinities, denormals, signed zeros and out-of-float16-range
      // values among them (the store never holds non-finite values, the gather handles them).
      std::vector<std::string> keys, values;
      std::vector<TurnKv> kv;
      for (size_t u = 0; u < tokens.size(); ++u) {
        for (std::string* bytes : {&keys.emplace_back(), &values.emplace_back()}) {
          std::vector<float> f(heads * tokens[u] * d);
          for (float& x : f) x = normal(rng);
          const float special[] = {std::numeric_limits<float>::quiet_NaN(),
                                   -std::numeric_limits<float>::infinity(),
                                   std::numeric_limits<float>::infinity(),
                                   6e-8f,
                                   -3e-5f,
                                   -0.0f,
                                   1e6f,
                                   1e-40f};
          for (size_t k = 0; k < f.size(); k += 37) f[k] = special[(k / 37) % 8];
          *bytes = EncodeFromFloat(f, c.stored);
          if (c.stored == DType::kFloat16) {
            // A float16 NaN with a payload the float32 round trip does not keep.
            const uint16_t nan = 0x7c01;
            std::memcpy(bytes->data() + 2 * 5, &nan, 2);
          }
        }
      }
      for (size_t u = 0; u < tokens.size(); ++u) kv.push_back({keys[u], values[u], c.stored});
      absl::StatusOr<std::vector<LayerEntries>> floats = selection->BuildLayer(l, kv, d);
      absl::StatusOr<std::vector<AnswerEntries>> answer =
          selection->BuildAnswerLayer(l, kv, d, c.answer);
      ASSERT_TRUE(floats.ok()) << floats.status();
      ASSERT_TRUE(answer.ok()) << answer.status();
      ASSERT_EQ(answer->size(), floats->size());
      for (size_t u = 0; u < floats->size(); ++u) {
        const LayerEntries& f = (*floats)[u];
        const AnswerEntries& a = (*answer)[u];
        SCOPED_TRACE(::testing::Message()
                     << "case " << DTypeName(c.stored) << " -> " << DTypeName(c.answer) << " pad "
                     << c.fill_heads << " merge " << c.merge_share << ", layer " << l << ", turn "
                     << u);
        std::string want_keys, want_values;
        AppendAnswerEncoded(f.keys, c.answer, &want_keys);
        AppendAnswerEncoded(f.values, c.answer, &want_values);
        EXPECT_EQ(a.num_entries, f.num_entries);
        EXPECT_EQ(a.keys, want_keys);
        EXPECT_EQ(a.values, want_values);
        EXPECT_EQ(a.positions, f.positions);
        ASSERT_EQ(a.bias.size(), f.bias.size());
        EXPECT_EQ(0, std::memcmp(a.bias.data(), f.bias.data(), a.bias.size() * sizeof(float)));
      }
    }
  }
}

TEST(AnswerBytesTest, AnswerLayerRefusesWhatBuildLayerRefuses) {
  std::vector<ScoredTurn> turns(1);
  turns[0].num_tokens = 4;
  turns[0].scores = {std::vector<float>(4, 1.0f)};
  absl::StatusOr<Selection> selection = Selection::Make(turns, 1, 1, {.budget = 2});
  ASSERT_TRUE(selection.ok());
  const std::string short_bytes(6, '\0');
  const std::vector<TurnKv> kv = {{short_bytes, short_bytes, DType::kFloat16}};
  EXPECT_FALSE(selection->BuildAnswerLayer(0, kv, 2, DType::kFloat16).ok());
  EXPECT_FALSE(selection->BuildAnswerLayer(1, kv, 2, DType::kFloat16).ok());
}

}  // namespace
}  // namespace nexuskv::compressor::scored
