#include "service/health_watcher.h"

#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "store/store.h"

namespace nexuskv::service {
namespace {

using ::testing::ElementsAre;

// A real RocksDB in a fresh temporary directory.
class HealthWatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = std::filesystem::temp_directory_path() / "nexuskv_health.XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<store::Store> Open(uint64_t min_free_disk_bytes) {
    absl::StatusOr<std::unique_ptr<store::Store>> store = store::Store::Open(
        {.path = dir_, .sync_writes = false, .min_free_disk_bytes = min_free_disk_bytes});
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }

  std::string dir_;
};

TEST_F(HealthWatcherTest, ServingWhileTheStoreCanWrite) {
  std::unique_ptr<store::Store> store = Open(/*min_free_disk_bytes=*/1 << 20);
  ASSERT_NE(store, nullptr);
  std::vector<bool> published;
  HealthWatcher watcher([&] { return store->CheckWritable(); },
                        [&](bool serving) { published.push_back(serving); }, absl::Seconds(1));
  EXPECT_EQ(watcher.serving(), std::nullopt);
  EXPECT_TRUE(watcher.CheckNow().ok());
  EXPECT_TRUE(watcher.CheckNow().ok());
  EXPECT_THAT(published, ElementsAre(true));  // Published once, not at every check.
  EXPECT_EQ(watcher.serving(), true);
}

TEST_F(HealthWatcherTest, NotServingWhenTheDiskReserveIsHit) {
  std::unique_ptr<store::Store> store = Open(/*min_free_disk_bytes=*/uint64_t{1} << 62);
  ASSERT_NE(store, nullptr);
  std::vector<bool> published;
  HealthWatcher watcher([&] { return store->CheckWritable(); },
                        [&](bool serving) { published.push_back(serving); }, absl::Seconds(1));
  EXPECT_EQ(watcher.CheckNow().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(published, ElementsAre(false));
  EXPECT_EQ(watcher.serving(), false);
}

TEST(HealthWatcherTransitionsTest, PublishesEachChangeAndNothingAfterStop) {
  std::vector<absl::Status> answers = {absl::OkStatus(), absl::OkStatus(),
                                       absl::UnavailableError("stopped"),
                                       absl::ResourceExhaustedError("full"), absl::OkStatus()};
  size_t next = 0;
  std::vector<bool> published;
  HealthWatcher watcher([&] { return answers[next++]; },
                        [&](bool serving) { published.push_back(serving); }, absl::Seconds(1));
  for (size_t i = 0; i < answers.size(); ++i) EXPECT_EQ(watcher.CheckNow(), answers[i]);
  EXPECT_THAT(published, ElementsAre(true, false, true));

  watcher.Stop();
  EXPECT_EQ(watcher.CheckNow().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(next, answers.size());  // Not even checked.
  EXPECT_THAT(published, ElementsAre(true, false, true));
}

TEST(HealthWatcherTransitionsTest, StartChecksAtOnceAndStopJoins) {
  int checks = 0;
  std::vector<bool> published;
  HealthWatcher watcher(
      [&] {
        ++checks;
        return absl::OkStatus();
      },
      [&](bool serving) { published.push_back(serving); }, absl::Hours(1));
  watcher.Start();  // The first check runs before Start returns.
  EXPECT_THAT(published, ElementsAre(true));
  watcher.Stop();  // Returns although the next period is an hour away.
  EXPECT_EQ(checks, 1);
}

}  // namespace
}  // namespace nexuskv::service
