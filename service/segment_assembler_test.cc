#include "service/segment_assembler.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/test_util.h"

namespace nexuskv::service {
namespace {

namespace v1 = ::nexuskv::v1;
using ::testing::HasSubstr;

TEST(SegmentAssemblerTest, AssemblesLayersInAnyOrder) {
  auto messages = testing::SegmentMessages("s1", 0, 4, 0);
  const std::string layer1_keys = messages[2].layer().keys();
  SegmentAssembler assembler(Limits{});
  ASSERT_TRUE(assembler.Add(std::move(messages[0])).ok());
  ASSERT_TRUE(assembler.Add(std::move(messages[2])).ok());
  ASSERT_TRUE(assembler.Add(std::move(messages[1])).ok());
  absl::StatusOr<AssembledSegment> segment = std::move(assembler).Finish();
  ASSERT_TRUE(segment.ok()) << segment.status();
  ASSERT_EQ(segment->layers.size(), 2u);
  EXPECT_EQ(segment->layers[1].keys, layer1_keys);
  EXPECT_EQ(segment->header.session_id(), "s1");
}

TEST(SegmentAssemblerTest, RefusesLayerBeforeHeader) {
  auto messages = testing::SegmentMessages("s1", 0, 4, 0);
  SegmentAssembler assembler(Limits{});
  const absl::Status status = assembler.Add(std::move(messages[1]));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("before the SegmentHeader"));
}

TEST(SegmentAssemblerTest, RefusesSecondHeaderAndDuplicateLayer) {
  auto messages = testing::SegmentMessages("s1", 0, 4, 0);
  SegmentAssembler assembler(Limits{});
  v1::AppendSegmentRequest header = messages[0];
  v1::AppendSegmentRequest layer = messages[1];
  ASSERT_TRUE(assembler.Add(std::move(messages[0])).ok());
  EXPECT_THAT(assembler.Add(std::move(header)).message(), HasSubstr("second SegmentHeader"));
  ASSERT_TRUE(assembler.Add(std::move(messages[1])).ok());
  const absl::Status twice = assembler.Add(std::move(layer));
  EXPECT_EQ(twice.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(twice.message(), HasSubstr("layer 0 was sent twice"));
}

TEST(SegmentAssemblerTest, RefusesMissingLayersAndMissingHeader) {
  auto messages = testing::SegmentMessages("s1", 0, 4, 0);
  SegmentAssembler partial(Limits{});
  ASSERT_TRUE(partial.Add(std::move(messages[0])).ok());
  ASSERT_TRUE(partial.Add(std::move(messages[2])).ok());
  const absl::Status missing = std::move(partial).Finish().status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(missing.message(), HasSubstr("after 1 of 2 layers; missing layer(s) 0"));

  SegmentAssembler empty(Limits{});
  EXPECT_THAT(std::move(empty).Finish().status().message(), HasSubstr("without a SegmentHeader"));

  SegmentAssembler blank(Limits{});
  EXPECT_EQ(blank.Add(v1::AppendSegmentRequest()).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace nexuskv::service
