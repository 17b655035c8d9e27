#include "service/server_metrics.h"

#include <stdlib.h>

#include <filesystem>
#include <memory>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "metrics/registry.h"

namespace nexuskv::service {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Pair;

TEST(ServerMetricsTest, LabelsOnlyTheMethodsThisServerServes) {
  EXPECT_THAT(ServerMetrics::LabelsOf("/nexuskv.v1.KvMemory/AppendSegment"),
              Pair("nexuskv.v1.KvMemory", "AppendSegment"));
  EXPECT_THAT(ServerMetrics::LabelsOf("/nexuskv.v1.KvMemory/DeleteSession"),
              Pair("nexuskv.v1.KvMemory", "DeleteSession"));
  EXPECT_THAT(ServerMetrics::LabelsOf("/grpc.health.v1.Health/Check"),
              Pair("grpc.health.v1.Health", "Check"));
  for (const char* unknown : {"/nexuskv.v1.KvMemory/NoSuchMethod", "/x.Y/Z", "", "/", "junk"}) {
    EXPECT_THAT(ServerMetrics::LabelsOf(unknown), Pair("other", "other")) << unknown;
  }
}

TEST(ServerMetricsTest, RpcsAreCountedByMethodAndCodeName) {
  metrics::Registry registry;
  absl::StatusOr<std::unique_ptr<ServerMetrics>> m = ServerMetrics::Create(&registry);
  ASSERT_TRUE(m.ok()) << m.status();
  (*m)->ObserveRpc("nexuskv.v1.KvMemory", "GetSession", 5, absl::Milliseconds(2));
  (*m)->ObserveRpc("nexuskv.v1.KvMemory", "GetSession", 5, absl::Milliseconds(30));
  (*m)->ObserveRpc("nexuskv.v1.KvMemory", "GetSession", 0, absl::Milliseconds(1));
  (*m)->AddAppendBytes(1000);
  (*m)->AddGetCacheBytes(24);
  const std::string text = registry.Exposition();
  EXPECT_THAT(text, HasSubstr("nexuskv_rpcs_total{service=\"nexuskv.v1.KvMemory\",method="
                              "\"GetSession\",code=\"NOT_FOUND\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("nexuskv_rpcs_total{service=\"nexuskv.v1.KvMemory\",method="
                              "\"GetSession\",code=\"OK\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("nexuskv_rpc_duration_seconds_bucket{service=\"nexuskv.v1.KvMemory\""
                              ",method=\"GetSession\",le=\"0.0025\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("nexuskv_rpc_duration_seconds_count{service=\"nexuskv.v1.KvMemory\""
                              ",method=\"GetSession\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("nexuskv_append_received_bytes_total 1000\n"));
  EXPECT_THAT(text, HasSubstr("nexuskv_get_cache_sent_bytes_total 24\n"));
  EXPECT_THAT(text, HasSubstr("nexuskv_device_info{device=\"cpu\"} 1\n"));
  // A second set of the same metrics in one registry is refused.
  EXPECT_EQ(ServerMetrics::Create(&registry).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST(ServerMetricsTest, ScrapeTimeGaugesReadTheStoreAndTheQueue) {
  std::string dir = std::filesystem::temp_directory_path() / "nexuskv_metrics.XXXXXX";
  ASSERT_NE(mkdtemp(dir.data()), nullptr);
  {
    absl::StatusOr<std::unique_ptr<store::Store>> store =
        store::Store::Open({.path = dir, .sync_writes = false});
    ASSERT_TRUE(store.ok()) << store.status();
    metrics::Registry registry;
    absl::StatusOr<std::unique_ptr<ServerMetrics>> m = ServerMetrics::Create(&registry);
    ASSERT_TRUE(m.ok()) << m.status();
    size_t queued = 3;
    uint64_t queued_bytes = 5 << 20;
    size_t deferred = 7;
    bool writable = true;
    ASSERT_TRUE((*m)->WatchStore(store->get()).ok());
    ASSERT_TRUE((*m)->WatchFitQueue([&] { return queued; }, [&] { return queued_bytes; },
                                    [&] { return deferred; })
                    .ok());
    ASSERT_TRUE((*m)->WatchHealth([&] { return writable; }).ok());
    std::string text = registry.Exposition();
    EXPECT_THAT(text, HasSubstr("nexuskv_fit_queue_depth 3\n"));
    EXPECT_THAT(text, HasSubstr("nexuskv_fit_queue_bytes 5242880\n"));
    EXPECT_THAT(text, HasSubstr("nexuskv_fit_deferred_depth 7\n"));
    EXPECT_THAT(text, HasSubstr("nexuskv_store_writable 1\n"));
    EXPECT_THAT(text, HasSubstr("# TYPE nexuskv_rocksdb_live_sst_bytes gauge\n"
                                "nexuskv_rocksdb_live_sst_bytes 0\n"));
    EXPECT_THAT(text, HasSubstr("nexuskv_rocksdb_live_blob_bytes 0\n"));
    EXPECT_THAT(text, HasSubstr("nexuskv_rocksdb_pending_compaction_bytes 0\n"));
    EXPECT_THAT(text, Not(HasSubstr("nexuskv_tenant_sessions{")));  // No tenant yet.
    queued = 0;
    queued_bytes = 0;
    writable = false;
    text = registry.Exposition();
    EXPECT_THAT(text, HasSubstr("nexuskv_fit_queue_depth 0\n"));
    EXPECT_THAT(text, HasSubstr("nexuskv_fit_queue_bytes 0\n"));
    EXPECT_THAT(text, HasSubstr("nexuskv_store_writable 0\n"));
  }
  std::filesystem::remove_all(dir);
}

TEST(ServerMetricsTest, TheFitQueueObserverCountsBatchesTimeQueuedAndBackpressure) {
  metrics::Registry registry;
  absl::StatusOr<std::unique_ptr<ServerMetrics>> m = ServerMetrics::Create(&registry);
  ASSERT_TRUE(m.ok()) << m.status();
  std::string text = registry.Exposition();
  EXPECT_THAT(text, HasSubstr("nexuskv_fit_queue_backpressure_total{result=\"refused\"} 0\n"));
  const FitQueueObserver observer = (*m)->QueueObserver();
  const absl::Duration queued[] = {absl::Milliseconds(5), absl::Seconds(3), absl::Seconds(7)};
  observer.on_batch(queued, absl::Milliseconds(40));
  observer.on_backpressure(true);
  observer.on_backpressure(false);
  observer.on_backpressure(false);
  observer.on_defer(false);
  observer.on_defer(true);
  text = registry.Exposition();
  EXPECT_THAT(text, HasSubstr("nexuskv_fit_batch_jobs_count 1\n"));
  EXPECT_THAT(text, HasSubstr("nexuskv_fit_batch_jobs_sum 3\n"));
  EXPECT_THAT(text, HasSubstr("nexuskv_fit_batch_jobs_bucket{le=\"2\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("nexuskv_fit_batch_jobs_bucket{le=\"4\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("nexuskv_fit_batch_duration_seconds_count 1\n"));
  EXPECT_THAT(text, HasSubstr("nexuskv_fit_queued_seconds_count 3\n"));
  EXPECT_THAT(text, HasSubstr("nexuskv_fit_queued_seconds_bucket{le=\"5\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("nexuskv_fit_queue_backpressure_total{result=\"admitted\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("nexuskv_fit_queue_backpressure_total{result=\"refused\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("nexuskv_fit_deferred_total{event=\"deferred\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("nexuskv_fit_deferred_total{event=\"dropped\"} 1\n"));
}

}  // namespace
}  // namespace nexuskv::service
