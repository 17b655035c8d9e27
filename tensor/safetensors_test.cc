#include "tensor/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace nexuskv {
namespace {

using ::testing::HasSubstr;

// A file from a raw JSON header and data buffer, laid out as the format says.
std::string RawFile(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return out + header + data;
}

void ExpectInvalid(const std::string& contents, const std::string& message) {
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(contents);
  ASSERT_FALSE(file.ok()) << "parsed: " << message;
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  EXPECT_THAT(file.status().message(), HasSubstr(message));
}

class SafetensorsTest : public ::testing::Test {
 protected:
  SafetensorsTest() : a_(2 * 3 * 2, 'a'), b_(4 * 8, 'b') {
    a_[0] = 1;
    b_[31] = 2;
  }
  std::string a_;  // F16 [2, 3]
  std::string b_;  // I64 [4]
};

TEST_F(SafetensorsTest, RoundTrip) {
  SafetensorsWriter writer;
  ASSERT_TRUE(writer.AddTensor("x.a", "F16", {2, 3}, a_).ok());
  ASSERT_TRUE(writer.AddTensor("x.b", "I64", {4}, b_).ok());
  ASSERT_TRUE(writer.AddTensor("empty", "F32", {0, 5}, "").ok());
  writer.AddMetadata("model_id", "m");
  writer.AddMetadata("next_position", "19");
  const std::string bytes = writer.Serialize();
  EXPECT_EQ(bytes.size(), writer.SerializedSize());
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  EXPECT_EQ(header_size % 8, 0u) << "header is padded to 8 bytes";

  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->tensors().size(), 3u);
  const SafetensorsTensor* a = file->Find("x.a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, "F16");
  EXPECT_EQ(a->shape, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(a->data, a_);
  EXPECT_EQ(file->Find("x.b")->data, b_);
  EXPECT_TRUE(file->Find("empty")->data.empty());
  EXPECT_EQ(file->Find("nope"), nullptr);
  EXPECT_EQ(file->metadata().at("model_id"), "m");
  EXPECT_EQ(file->metadata().at("next_position"), "19");

  // Views stay valid when the file is moved.
  SafetensorsFile moved = *std::move(file);
  EXPECT_EQ(moved.Find("x.a")->data, a_);
}

TEST_F(SafetensorsTest, WriteFileAndReadBack) {
  const std::string path = ::testing::TempDir() + "safetensors_test.safetensors";
  SafetensorsWriter writer;
  ASSERT_TRUE(writer.AddTensor("t", "BF16", {2, 3}, a_).ok());
  ASSERT_TRUE(writer.WriteFile(path).ok());
  absl::StatusOr<SafetensorsFile> file = ReadSafetensorsFile(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->Find("t")->data, a_);
  std::remove(path.c_str());
  EXPECT_EQ(ReadSafetensorsFile(path).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SafetensorsTest, ParsesFilesFromOtherWriters) {
  // Unpadded header, keys in any order, data offsets not in name order.
  const std::string header =
      R"({"z":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},)"
      R"("__metadata__":{"format":"pt"},"a":{"dtype":"I64","shape":[4],"data_offsets":[12,44]}})";
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(RawFile(header, a_ + b_));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->tensors()[0].name, "z");  // In data order.
  EXPECT_EQ(file->Find("a")->data, b_);
}

TEST_F(SafetensorsTest, TruncatedFileIsInvalid) {
  SafetensorsWriter writer;
  ASSERT_TRUE(writer.AddTensor("x.a", "F16", {2, 3}, a_).ok());
  const std::string bytes = writer.Serialize();
  ExpectInvalid(bytes.substr(0, 5), "too short");
  ExpectInvalid(bytes.substr(0, 20), "does not fit");
  ExpectInvalid(bytes.substr(0, bytes.size() - 1), "past the 11-byte data buffer");
  ExpectInvalid(bytes + "x", "trailing bytes");
  ExpectInvalid(RawFile("", ""), "does not start with '{'");
}

TEST_F(SafetensorsTest, BadOffsetsAreInvalid) {
  ExpectInvalid(RawFile(R"({"t":{"dtype":"F16","shape":[2,3],"data_offsets":[12,0]}})", a_),
                "end before begin");
  ExpectInvalid(RawFile(R"({"t":{"dtype":"F16","shape":[2,3],"data_offsets":[2,14]}})", a_ + "xx"),
                "begin at 2");
  ExpectInvalid(RawFile(R"({"t":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},)"
                        R"("u":{"dtype":"F16","shape":[2],"data_offsets":[10,14]}})",
                        a_ + "xx"),
                "overlaps");
  ExpectInvalid(RawFile(R"({"t":{"dtype":"F16","shape":[2,3],"data_offsets":[0]}})", a_),
                "data_offsets must be an array [begin, end]");
  ExpectInvalid(RawFile(R"({"t":{"dtype":"F16","shape":[2,3],"data_offsets":[0,-12]}})", a_),
                "non-negative integer");
}

TEST_F(SafetensorsTest, WrongDtypeIsInvalid) {
  ExpectInvalid(RawFile(R"({"t":{"dtype":"F17","shape":[2,3],"data_offsets":[0,12]}})", a_),
                "unknown dtype \"F17\"");
  ExpectInvalid(RawFile(R"({"t":{"dtype":16,"shape":[2,3],"data_offsets":[0,12]}})", a_),
                "missing string dtype");
  SafetensorsWriter writer;
  EXPECT_EQ(writer.AddTensor("t", "float16", {2, 3}, a_).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SafetensorsTest, SizeMismatchIsInvalid) {
  // F32 [2, 3] needs 24 bytes, the range holds 12.
  ExpectInvalid(RawFile(R"({"t":{"dtype":"F32","shape":[2,3],"data_offsets":[0,12]}})", a_),
                "span 12 bytes but shape [2, 3] of F32 needs 24");
  ExpectInvalid(RawFile(R"({"t":{"dtype":"F32","shape":[2,-3],"data_offsets":[0,12]}})", a_),
                "shape dimension must be a non-negative integer");
  ExpectInvalid(RawFile(R"({"t":{"dtype":"U8","shape":[4294967296,4294967296,16],)"
                        R"("data_offsets":[0,12]}})",
                        a_),
                "overflows");
  SafetensorsWriter writer;
  EXPECT_EQ(writer.AddTensor("t", "F16", {2, 4}, a_).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SafetensorsTest, BadNamesAndHeadersAreInvalid) {
  const std::string t = R"("t":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]})";
  ExpectInvalid(RawFile("{" + t + "," + t + "}", a_), "repeats the key \"t\"");
  ExpectInvalid(RawFile(R"({"":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]}})", a_),
                "empty tensor name");
  ExpectInvalid(RawFile(R"({"t":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12],"x":1}})", a_),
                "unknown field \"x\"");
  ExpectInvalid(RawFile("{" + t + R"(,"__metadata__":{"n":3}})", a_), "must be a string");
  ExpectInvalid(RawFile("{" + t, a_), "not valid JSON");
  SafetensorsWriter writer;
  ASSERT_TRUE(writer.AddTensor("t", "F16", {2, 3}, a_).ok());
  EXPECT_EQ(writer.AddTensor("t", "F16", {2, 3}, a_).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(writer.AddTensor("__metadata__", "F16", {2, 3}, a_).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace nexuskv
