// Store::Stats (sizes and per-tenant usage for monitoring) and Store::CheckWritable.
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "store/store_test_util.h"

namespace nexuskv::store::testing {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kTurnBytes = 3 * (2 * (2 * 4 * 8 * 2) + 4 * 2 * 8 * 2);  // AppendTurns' turns.

class StoreStatsTest : public StoreTest {};

TEST_F(StoreStatsTest, TenantsCountSessionsAndBytesWithoutScanning) {
  AppendTurns({"a", "s1"}, 2);
  AppendTurns({"a", "s2"}, 1);
  AppendTurns({"b", "s1"}, 1);
  ASSERT_TRUE(store_->PutFit({"a", "s1"}, 0, "h2o", {"x", "y", "z"}).ok());
  StoreStats stats = store_->Stats();
  ASSERT_EQ(stats.tenants.size(), 2u);
  EXPECT_EQ(stats.tenants["a"].sessions, 2u);
  const uint64_t fit_bytes = store_->GetSession({"a", "s1"})->compressed_bytes();
  EXPECT_GT(fit_bytes, 0u);
  EXPECT_EQ(stats.tenants["a"].bytes, 3 * kTurnBytes + fit_bytes);
  EXPECT_EQ(stats.tenants["b"].sessions, 1u);
  EXPECT_EQ(stats.tenants["b"].bytes, kTurnBytes);

  ASSERT_TRUE(store_->DeleteSession({"b", "s1"}).ok());
  stats = store_->Stats();
  EXPECT_EQ(stats.tenants["b"].sessions, 0u);  // Kept, at zero.
  EXPECT_EQ(stats.tenants["b"].bytes, 0u);
}

TEST_F(StoreStatsTest, FileSizesGrowOnceMemtablesAreFlushed) {
  AppendTurns({"a", "s1"}, 3);
  Reopen();  // Recovering the WAL flushes the memtables into SST and blob files.
  const StoreStats stats = store_->Stats();
  EXPECT_GT(stats.live_sst_bytes, 0u);
  // The tensors are at least min_blob_size (64 bytes here), so they live in blob files.
  EXPECT_GE(stats.live_blob_bytes, 3 * kTurnBytes);
  EXPECT_EQ(stats.tenants.at("a").bytes, 3 * kTurnBytes);  // Rebuilt from the records.
}

TEST_F(StoreStatsTest, WritableUntilTheDiskReserveIsHit) {
  EXPECT_TRUE(store_->CheckWritable().ok()) << store_->CheckWritable();
  AppendTurns({"a", "s1"}, 1);

  options_.min_free_disk_bytes = uint64_t{1} << 62;  // More than any disk: the reserve is hit.
  Reopen();
  const absl::Status writable = store_->CheckWritable();
  EXPECT_EQ(writable.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(writable.message(), HasSubstr("min_free_disk_bytes"));
  // It says what appends meet: they are refused the same way, and reads still work.
  EXPECT_EQ(Append({"a", "s1"}, MakeSegment(1, 4, 4, 2, 9)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(store_->GetSession({"a", "s1"}).ok());
}

}  // namespace
}  // namespace nexuskv::store::testing
