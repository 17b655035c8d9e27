#include "tensor/dtype.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nexuskv {
namespace {

TEST(DTypeTest, RoundTripsExactlyRepresentableValues) {
  const std::vector<float> values = {0.0f, -0.0f, 1.0f, -2.5f, 0.125f, 1024.0f, -65504.0f};
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    if (dtype == DType::kBFloat16) continue;  // -65504 is not exact in bfloat16.
    const std::string bytes = EncodeFromFloat(values, dtype);
    ASSERT_EQ(bytes.size(), values.size() * DTypeSize(dtype));
    std::vector<float> back(values.size());
    ASSERT_TRUE(DecodeToFloat(bytes, dtype, back).ok());
    EXPECT_EQ(back, values) << DTypeName(dtype);
  }
}

TEST(DTypeTest, KnownBitPatterns) {
  EXPECT_EQ(EncodeFromFloat(std::vector<float>{1.0f}, DType::kFloat16), std::string("\x00\x3c", 2));
  EXPECT_EQ(EncodeFromFloat(std::vector<float>{1.0f}, DType::kBFloat16),
            std::string("\x80\x3f", 2));
  // bfloat16 rounds to nearest even: 1 + 2^-8 is a tie between 1 and 1 + 2^-7.
  std::vector<float> back(1);
  ASSERT_TRUE(DecodeToFloat(EncodeFromFloat(std::vector<float>{1.0f + 1.0f / 256}, DType::kBFloat16),
                            DType::kBFloat16, back)
                  .ok());
  EXPECT_EQ(back[0], 1.0f);
}

TEST(DTypeTest, DecodeRejectsWrongLength) {
  std::vector<float> out(3);
  const absl::Status status = DecodeToFloat(std::string(5, '\0'), DType::kFloat16, out);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), testing::HasSubstr("expected 6 bytes"));
}

TEST(DTypeTest, FindsNonFinite) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    EXPECT_EQ(FirstNonFinite(EncodeFromFloat(std::vector<float>{1, 2, 3}, dtype), dtype),
              std::nullopt);
    EXPECT_EQ(FirstNonFinite(EncodeFromFloat(std::vector<float>{1, inf, 3}, dtype), dtype), 1u);
    EXPECT_EQ(FirstNonFinite(EncodeFromFloat(std::vector<float>{1, 2, nan}, dtype), dtype), 2u);
  }
  // 1e6 overflows float16 to infinity on encode: callers must check after encoding.
  EXPECT_EQ(FirstNonFinite(EncodeFromFloat(std::vector<float>{1e6f}, DType::kFloat16),
                           DType::kFloat16),
            0u);
}

TEST(DTypeTest, TensorBytesDetectsOverflow) {
  EXPECT_EQ(*TensorBytes({3, 5, 7}, DType::kFloat16, "keys"), 210u);
  const auto huge = TensorBytes({1u << 30, 1u << 30, 1u << 30}, DType::kFloat32, "keys");
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DTypeTest, ParsesNames) {
  EXPECT_EQ(ParseDType("bf16"), DType::kBFloat16);
  EXPECT_EQ(ParseDType("Float16"), DType::kFloat16);
  EXPECT_EQ(ParseDType("float32"), DType::kFloat32);
  EXPECT_EQ(ParseDType("int8"), std::nullopt);
}

}  // namespace
}  // namespace nexuskv
