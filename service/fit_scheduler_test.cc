// FitScheduler through the core: background fits run on workers at --fit_nice below the caller,
// fits a GetCache needs run inline on the caller's thread at its priority.
#include "service/fit_scheduler.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "service/kv_memory_core.h"
#include "service/segment_assembler.h"
#include "service/test_util.h"

namespace nexuskv::service {
namespace {

namespace v1 = ::nexuskv::v1;

int ThreadNice() {
  errno = 0;
  const int nice = getpriority(PRIO_PROCESS, static_cast<id_t>(gettid()));
  EXPECT_EQ(errno, 0);
  return nice;
}

// Where one computed fit ran.
struct FitRun {
  std::string method;
  int nice = 0;
  pid_t tid = 0;
};

class FitSchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("fit_scheduler_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    auto store = store::Store::Open({.path = dir_.string(), .sync_writes = false});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  void TearDown() override {
    core_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  void Start(int fit_nice, bool precompute) {
    CoreOptions options;
    options.fit_threads = 1;
    options.fit_nice = fit_nice;
    options.precompute_fits = precompute;
    options.on_fit_done = [this](const FitJob& job, absl::Duration, const absl::Status& status) {
      EXPECT_TRUE(status.ok()) << status;
      absl::MutexLock lock(&mu_);
      runs_.push_back({std::string(job.method->name()), ThreadNice(), gettid()});
      if (!first_.HasBeenNotified()) first_.Notify();
    };
    core_ = std::make_unique<KvMemoryCore>(store_.get(), &compressor::CompressorRegistry::Default(),
                                           options);
  }

  void Append(uint32_t turn, uint32_t tokens, uint64_t first) {
    SegmentAssembler assembler(Limits{});
    for (auto& m : testing::SegmentMessages("s", turn, tokens, first, 4, testing::TinySpec())) {
      ASSERT_TRUE(assembler.Add(std::move(m)).ok());
    }
    auto segment = std::move(assembler).Finish();
    ASSERT_TRUE(segment.ok()) << segment.status();
    auto ack = core_->Append("default", std::move(*segment));
    ASSERT_TRUE(ack.ok()) << ack.status();
  }

  std::vector<FitRun> Runs() {
    absl::MutexLock lock(&mu_);
    return runs_;
  }

  std::filesystem::path dir_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<KvMemoryCore> core_;
  absl::Mutex mu_;
  std::vector<FitRun> runs_ ABSL_GUARDED_BY(mu_);
  absl::Notification first_;
};

TEST_F(FitSchedulerTest, BackgroundFitsRunAtTheFlagsNiceBelowTheCaller) {
  const int caller = ThreadNice();
  ASSERT_LE(caller, 9);
  Start(/*fit_nice=*/10, /*precompute=*/true);
  Append(0, 16, 0);
  first_.WaitForNotification();
  core_.reset();  // Joins the worker: no fit runs after this.
  const std::vector<FitRun> runs = Runs();
  ASSERT_FALSE(runs.empty());
  for (const FitRun& run : runs) {
    EXPECT_NE(run.tid, gettid()) << run.method;
    EXPECT_EQ(run.nice, caller + 10) << run.method;
  }
  EXPECT_EQ(ThreadNice(), caller);
}

TEST_F(FitSchedulerTest, WithoutTheFlagWorkersKeepTheProcessPriority) {
  const int caller = ThreadNice();
  Start(/*fit_nice=*/0, /*precompute=*/true);
  Append(0, 16, 0);
  first_.WaitForNotification();
  core_.reset();
  for (const FitRun& run : Runs()) EXPECT_EQ(run.nice, caller) << run.method;
}

TEST_F(FitSchedulerTest, AFitGetCacheNeedsRunsInlineAtTheCallersPriority) {
  const int caller = ThreadNice();
  Start(/*fit_nice=*/10, /*precompute=*/false);  // No background fit: GetCache must run it.
  Append(0, 16, 0);
  v1::GetCacheRequest request;
  request.set_session_id("s");
  request.set_method(v1::SONIC);
  request.mutable_budget()->set_keep_ratio(0.5);
  request.set_keep_recent_turns(0);
  auto plan = core_->PlanCache("default", request);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const std::vector<FitRun> runs = Runs();
  ASSERT_FALSE(runs.empty());
  for (const FitRun& run : runs) {
    EXPECT_EQ(run.tid, gettid()) << run.method;
    EXPECT_EQ(run.nice, caller) << run.method;
  }
}

TEST_F(FitSchedulerTest, NicedWorkersComputeAndANormalPriorityThreadStores) {
  const int caller = ThreadNice();
  ASSERT_LE(caller, 9);
  Start(/*fit_nice=*/0, /*precompute=*/false);  // The core only appends here.
  Append(0, 16, 0);
  const store::SessionKey key{"default", "s"};
  auto records = store_->ListSegments(key);
  ASSERT_TRUE(records.ok()) << records.status();
  ASSERT_EQ(records->size(), 1u);
  const compressor::Compressor* sonic = compressor::CompressorRegistry::Default().Find("SONIC");
  ASSERT_NE(sonic, nullptr);

  FitRun computed, stored;
  absl::Notification done;
  FitScheduler scheduler(
      store_.get(), /*num_threads=*/1, /*max_queued=*/4,
      [&](const FitJob& job) {
        stored = {std::string(job.method->name()), ThreadNice(), gettid()};
      },
      [&](const FitJob& job, absl::Duration, const absl::Status& status) {
        EXPECT_TRUE(status.ok()) << status;
        computed = {std::string(job.method->name()), ThreadNice(), gettid()};
        done.Notify();
      },
      /*worker_nice=*/10);
  scheduler.Submit(FitJob{key, testing::TinySpec(), (*records)[0], sonic});
  done.WaitForNotification();  // on_done runs after on_stored, on the worker.
  scheduler.Shutdown();
  EXPECT_EQ(computed.nice, caller + 10);
  EXPECT_EQ(stored.method, "SONIC");
  EXPECT_EQ(stored.nice, caller);
  EXPECT_NE(stored.tid, computed.tid);
  EXPECT_NE(stored.tid, gettid());
  auto fit = store_->GetFit(key, 0, "SONIC", 0);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_TRUE(fit->has_value());
}

}  // namespace
}  // namespace nexuskv::service
