// Retention: sessions expire by TTL, and a delete removes the bytes from the data files.
#include <filesystem>
#include <fstream>
#include <iterator>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "store/store_test_util.h"

namespace nexuskv::store::testing {
namespace {

class StoreRetentionTest : public StoreTest {
 protected:
  // Whether any file under the data directory contains `needle`.
  bool DataFilesContain(const std::string& needle) {
    for (const auto& entry : std::filesystem::recursive_directory_iterator(dir_)) {
      if (!entry.is_regular_file()) continue;
      std::ifstream in(entry.path(), std::ios::binary);
      const std::string bytes((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
      if (bytes.find(needle) != std::string::npos) return true;
    }
    return false;
  }

  // Appends turn 0 of `session` (4 tokens, seed `seed`) with `secret` at the start of its keys.
  void AppendSecret(const std::string& session, const std::string& secret, uint32_t seed) {
    TestSegment segment = MakeSegment(0, 0, 4, 2, seed);
    segment.layers[0].keys.replace(0, secret.size(), secret);
    ASSERT_TRUE(Append({"t", session}, segment).ok());
  }
};

TEST_F(StoreRetentionTest, SessionsExpireAfterTheirTtlAndAppendsExtendIt) {
  const int64_t now = absl::ToUnixMillis(absl::Now());
  TestSegment first = MakeSegment(0, 0, 4, 2, 1);
  first.record.set_ttl_seconds(60);
  ASSERT_TRUE(Append({"t", "short"}, first).ok());
  AppendTurns({"t", "forever"}, 1);
  const int64_t expiry = store_->GetSession({"t", "short"})->expire_time_unix_ms();
  EXPECT_GE(expiry, now + 60'000);
  EXPECT_EQ(store_->GetSession({"t", "forever"})->expire_time_unix_ms(), 0);

  EXPECT_EQ(*store_->DeleteExpired(now + 30'000), 0u);
  // A later turn asking for nothing keeps the expiry; asking for a TTL restarts it.
  TestSegment second = MakeSegment(1, 4, 4, 2, 2);
  ASSERT_TRUE(Append({"t", "short"}, second).ok());
  EXPECT_EQ(store_->GetSession({"t", "short"})->expire_time_unix_ms(), expiry);

  EXPECT_EQ(*store_->DeleteExpired(expiry), 1u);
  EXPECT_EQ(store_->GetSession({"t", "short"}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store_->GetSession({"t", "forever"}).ok());
}

TEST_F(StoreRetentionTest, DefaultTtlAppliesToNewSessions) {
  options_.default_session_ttl_seconds = 10;
  Reopen();
  AppendTurns({"t", "s"}, 1);
  EXPECT_GT(store_->GetSession({"t", "s"})->expire_time_unix_ms(), 0);
}

TEST_F(StoreRetentionTest, DeleteRemovesTheBytesFromTheDataFiles) {
  const std::string secret = "nexuskv-retention-secret-0123456789abcdef-0123456789abcdef";
  auto with_secret = [&](uint32_t turn, uint64_t position, uint32_t seed) {
    TestSegment segment = MakeSegment(turn, position, 4, 2, seed);
    segment.layers[0].keys.replace(0, secret.size(), secret);
    return segment;
  };
  for (const std::string session : {"doomed", "kept"}) {
    ASSERT_TRUE(Append({"t", session}, with_secret(0, 0, 1)).ok());
    ASSERT_TRUE(Append({"t", session}, with_secret(1, 4, 2)).ok());
  }
  Reopen();  // Flushes: the secret is now in blob files and SSTs, not only in the WAL.
  ASSERT_TRUE(DataFilesContain(secret));

  ASSERT_TRUE(store_->DeleteSession({"t", "kept"}).ok());
  ASSERT_TRUE(store_->DeleteSession({"t", "doomed"}).ok());
  Reopen();
  EXPECT_FALSE(DataFilesContain(secret));
}

TEST_F(StoreRetentionTest, PurgesWithinTheIntervalWaitForTheNextOne) {
  options_.purge_interval_seconds = 3600;
  Reopen();
  const std::string secret = "nexuskv-deferred-purge-secret-0123456789abcdef-0123456789abcdef";
  for (const std::string session : {"first", "second"}) AppendSecret(session, secret, 7);
  Reopen();
  ASSERT_TRUE(store_->DeleteSession({"t", "first"}).ok());   // the first purge runs at once
  ASSERT_TRUE(store_->DeleteSession({"t", "second"}).ok());  // within the hour: deferred
  EXPECT_TRUE(DataFilesContain(secret)) << "the second session's purge waits";
  EXPECT_EQ(store_->GetSession({"t", "second"}).status().code(), absl::StatusCode::kNotFound)
      << "but the session is deleted at once";
  ASSERT_TRUE(store_->FlushPurges().ok());
  ASSERT_TRUE(store_->FlushPurges().ok()) << "nothing pending: nothing to do";
  Reopen();
  EXPECT_FALSE(DataFilesContain(secret));

  // A clean close runs what is pending.
  for (const std::string session : {"third", "fourth"}) AppendSecret(session, secret, 9);
  Reopen();
  ASSERT_TRUE(store_->DeleteSession({"t", "third"}).ok());
  ASSERT_TRUE(store_->DeleteSession({"t", "fourth"}).ok());
  Reopen();
  EXPECT_FALSE(DataFilesContain(secret));
}

TEST_F(StoreRetentionTest, APurgeThatTookLongHoldsTheNextBackBeyondTheInterval) {
  options_.purge_interval_seconds = 0;  // By the interval alone every delete would purge.
  options_.purge_max_share = 1e-6;      // A purge of 1 ms asks for 1,000 s before the next.
  Reopen();
  const std::string secret = "nexuskv-paced-purge-secret-0123456789abcdef-0123456789abcdef";
  for (const std::string session : {"first", "second"}) AppendSecret(session, secret, 11);
  Reopen();
  ASSERT_TRUE(store_->DeleteSession({"t", "first"}).ok());   // purges at once
  ASSERT_TRUE(store_->DeleteSession({"t", "second"}).ok());  // paced: deferred
  EXPECT_TRUE(DataFilesContain(secret)) << "the second purge waits for the first's share";
  ASSERT_TRUE(store_->FlushPurges().ok());
  Reopen();
  EXPECT_FALSE(DataFilesContain(secret));
}

}  // namespace
}  // namespace nexuskv::store::testing
