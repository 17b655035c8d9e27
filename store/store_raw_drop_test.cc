// DropRawTensors (--raw_retention) and fit summaries: the raw goes, the record and fits stay, the
// bytes are accounted, and nothing is dropped before a fit can serve the turn.
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "store/store_test_util.h"

namespace nexuskv::store::testing {
namespace {

using ::testing::HasSubstr;

class StoreRawDropTest : public StoreTest {
 protected:
  void AppendTurns(const SessionKey& key, int turns) {
    for (int t = 0; t < turns; ++t) {
      TestSegment s = MakeSegment(static_cast<uint32_t>(t), /*first_position=*/uint64_t(t) * 6,
                                  /*num_tokens=*/6, /*num_probes=*/2, /*seed=*/t + 1);
      ASSERT_TRUE(store_->AppendSegment(key, Spec(), s.record, s.layers).ok());
    }
  }
  std::vector<std::string> Fit(const std::string& what) {
    return std::vector<std::string>(kLayers, what);
  }
};

TEST_F(StoreRawDropTest, DropsTheTensorsKeepsRecordAndFitsAndCountsTheBytes) {
  const SessionKey key{"t", "s"};
  AppendTurns(key, 2);
  const SessionRecord before = *store_->GetSession(key);
  ASSERT_TRUE(store_->PutFit(key, 0, "SONIC", Fit("ladder"), "summary").ok());

  absl::StatusOr<bool> dropped = store_->DropRawTensors(key, 0, "SONIC");
  ASSERT_TRUE(dropped.ok()) << dropped.status();
  EXPECT_TRUE(*dropped);
  for (uint32_t layer = 0; layer < kLayers; ++layer) {
    for (TensorKind kind : {TensorKind::kKeys, TensorKind::kValues, TensorKind::kProbeQueries}) {
      EXPECT_EQ(store_->ReadTensor(key, 0, layer, kind).status().code(),
                absl::StatusCode::kNotFound);
    }
    EXPECT_TRUE(store_->ReadTensor(key, 1, layer, TensorKind::kKeys).ok());
  }
  EXPECT_EQ(**store_->GetFit(key, 0, "SONIC", 2), "ladder");
  EXPECT_EQ(**store_->GetFit(key, 0, "SONIC", Store::kFitSummaryLayer), "summary");
  const std::vector<SegmentRecord> records = *store_->ListSegments(key);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_TRUE(records[0].raw_dropped());
  EXPECT_FALSE(records[1].raw_dropped());
  const SessionRecord after = *store_->GetSession(key);
  EXPECT_EQ(after.dropped_raw_bytes(), records[0].raw_bytes());
  EXPECT_EQ(after.raw_bytes(), before.raw_bytes());
  EXPECT_EQ(after.compressed_bytes(), kLayers * 6 + 7);  // "ladder" per layer + "summary"

  // Again: nothing to do. Survives a restart.
  EXPECT_FALSE(*store_->DropRawTensors(key, 0, "SONIC"));
  Reopen();
  EXPECT_TRUE((*store_->ListSegments(key))[0].raw_dropped());
  EXPECT_EQ(store_->GetSession(key)->dropped_raw_bytes(), records[0].raw_bytes());
  // Deleting frees what is left.
  absl::StatusOr<DeleteOutcome> deleted = store_->DeleteSession(key);
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(deleted->freed_bytes, after.raw_bytes() - after.dropped_raw_bytes() + kLayers * 6 + 7);
}

TEST_F(StoreRawDropTest, RefusesWithoutTheRequiredFitOrTurn) {
  const SessionKey key{"t", "s"};
  AppendTurns(key, 1);
  absl::StatusOr<bool> no_fit = store_->DropRawTensors(key, 0, "SONIC");
  EXPECT_EQ(no_fit.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(no_fit.status().message(), HasSubstr("no stored SONIC fit"));
  EXPECT_TRUE(store_->ReadTensor(key, 0, 0, TensorKind::kKeys).ok());
  ASSERT_TRUE(store_->PutFit(key, 0, "H2O", Fit("rank")).ok());
  EXPECT_EQ(store_->DropRawTensors(key, 0, "SONIC").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->DropRawTensors(key, 3, "SONIC").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->DropRawTensors({"t", "nope"}, 0, "SONIC").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->DropRawTensors(key, 0, "bad id!").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(StoreRawDropTest, ListSessionKeysSeesEveryTenant) {
  AppendTurns({"a", "s1"}, 1);
  AppendTurns({"b", "s0"}, 2);
  AppendTurns({"a", "s2"}, 1);
  absl::StatusOr<std::vector<SessionKey>> keys = store_->ListSessionKeys();
  ASSERT_TRUE(keys.ok()) << keys.status();
  ASSERT_EQ(keys->size(), 3u);
  EXPECT_EQ((*keys)[0].tenant, "a");
  EXPECT_EQ((*keys)[0].session_id, "s1");
  EXPECT_EQ((*keys)[1].session_id, "s2");
  EXPECT_EQ((*keys)[2].tenant, "b");
}

TEST_F(StoreRawDropTest, ReplacingAFitReplacesItsSummary) {
  const SessionKey key{"t", "s"};
  AppendTurns(key, 1);
  ASSERT_TRUE(store_->PutFit(key, 0, "SONIC", Fit("a"), "first").ok());
  ASSERT_TRUE(store_->PutFit(key, 0, "SONIC", Fit("b")).ok());
  EXPECT_FALSE(store_->GetFit(key, 0, "SONIC", Store::kFitSummaryLayer)->has_value());
  EXPECT_EQ(store_->GetSession(key)->compressed_bytes(), kLayers * 1);
}

// HasFit answers from the summary when there is one, and from layer 0 otherwise.
TEST_F(StoreRawDropTest, HasFitSeesFitsWithAndWithoutASummary) {
  const SessionKey key{"t", "s"};
  AppendTurns(key, 2);
  EXPECT_FALSE(*store_->HasFit(key, 0, "SONIC"));
  ASSERT_TRUE(store_->PutFit(key, 0, "SONIC", Fit("ladder"), "summary").ok());
  ASSERT_TRUE(store_->PutFit(key, 1, "H2O", Fit("rank")).ok());
  EXPECT_TRUE(*store_->HasFit(key, 0, "SONIC"));
  EXPECT_TRUE(*store_->HasFit(key, 1, "H2O"));
  EXPECT_FALSE(*store_->HasFit(key, 1, "SONIC"));
  EXPECT_FALSE(*store_->HasFit(key, 0, "H2O"));
  EXPECT_EQ(store_->HasFit({"t", "bad id!"}, 0, "SONIC").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(StoreRawDropTest, AnIdenticalResendOfADroppedTurnIsStillANoOp) {
  const SessionKey key{"t", "s"};
  TestSegment s = MakeSegment(0, 0, 6, 2, 1);
  s.record.add_nexus_offsets(2);
  ASSERT_TRUE(store_->AppendSegment(key, Spec(), s.record, s.layers).ok());
  ASSERT_TRUE(store_->PutFit(key, 0, "SONIC", Fit("x")).ok());
  ASSERT_TRUE(*store_->DropRawTensors(key, 0, "SONIC"));
  absl::StatusOr<AppendOutcome> again = store_->AppendSegment(key, Spec(), s.record, s.layers);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->already_stored);
  // Different Nexus offsets are a different turn.
  s.record.set_nexus_offsets(0, 3);
  EXPECT_EQ(store_->AppendSegment(key, Spec(), s.record, s.layers).status().code(),
            absl::StatusCode::kAlreadyExists);
}

}  // namespace
}  // namespace nexuskv::store::testing
