// Quotas: every refusal is ResourceExhausted naming the quota, and writes nothing.
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "store/store_test_util.h"

namespace nexuskv::store::testing {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kTurnBytes = 3 * (2 * (2 * 4 * 8 * 2) + 4 * 2 * 8 * 2);  // AppendTurns' turns.

class StoreQuotaTest : public StoreTest {};

TEST_F(StoreQuotaTest, TurnsPerSession) {
  options_.max_turns_per_session = 2;
  Reopen();
  const SessionKey key{"t", "s"};
  AppendTurns(key, 2);
  const absl::Status third = Append(key, MakeSegment(2, 8, 4, 2, 77)).status();
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.message(), HasSubstr("--max_turns_per_session=2"));
  EXPECT_EQ(store_->GetSession(key)->num_turns(), 2u);
}

TEST_F(StoreQuotaTest, BytesPerSession) {
  options_.max_bytes_per_session = 2 * kTurnBytes + 10;
  Reopen();
  const SessionKey key{"t", "s"};
  AppendTurns(key, 2);
  const absl::Status third = Append(key, MakeSegment(2, 8, 4, 2, 77)).status();
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.message(), HasSubstr("--max_bytes_per_session"));
  EXPECT_EQ(store_->GetSession(key)->raw_bytes(), 2 * kTurnBytes);
  EXPECT_EQ(store_->ReadTensor(key, 2, 0, TensorKind::kKeys).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(StoreQuotaTest, SessionsPerTenantSurviveReopenAndFreeOnDelete) {
  options_.max_sessions_per_tenant = 2;
  Reopen();
  AppendTurns({"a", "s1"}, 1);
  AppendTurns({"a", "s2"}, 1);
  AppendTurns({"b", "s1"}, 1);  // Another tenant has its own quota.
  Reopen();                     // Usage is rebuilt from the stored records.
  const absl::Status third = Append({"a", "s3"}, MakeSegment(0, 0, 4, 2, 5)).status();
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.message(), HasSubstr("--max_sessions_per_tenant=2"));
  EXPECT_EQ(store_->GetSession({"a", "s3"}).status().code(), absl::StatusCode::kNotFound);
  // More turns in an existing session are not a new session.
  EXPECT_TRUE(Append({"a", "s1"}, MakeSegment(1, 4, 4, 2, 6)).ok());
  ASSERT_TRUE(store_->DeleteSession({"a", "s2"}).ok());
  EXPECT_TRUE(Append({"a", "s3"}, MakeSegment(0, 0, 4, 2, 5)).ok());
}

TEST_F(StoreQuotaTest, BytesPerTenantCountFits) {
  options_.max_bytes_per_tenant = 3 * kTurnBytes;
  Reopen();
  AppendTurns({"a", "s1"}, 2);
  ASSERT_TRUE(store_->PutFit({"a", "s1"}, 0, "H2O", {std::string(kTurnBytes / 3, 'x'),
                                                   std::string(kTurnBytes / 3, 'x'),
                                                   std::string(kTurnBytes / 3, 'x')})
                  .ok());
  const absl::Status over = Append({"a", "s2"}, MakeSegment(0, 0, 4, 2, 5)).status();
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(over.message(), HasSubstr("--max_bytes_per_tenant"));
  EXPECT_TRUE(Append({"b", "s2"}, MakeSegment(0, 0, 4, 2, 5)).ok());
}

}  // namespace
}  // namespace nexuskv::store::testing
