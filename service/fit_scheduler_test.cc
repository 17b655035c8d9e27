// FitScheduler: background fits run on workers at --fit_nice below the caller; a fit a caller
// awaits runs on those workers too, ahead of the background ones, never on the caller's thread;
// awaiters share one run and a wait that runs out leaves nothing behind.
#include "service/fit_scheduler.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
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

// A method whose Fit notes the thread it ran on and, while its gate is closed, blocks until the
// test opens it: a test double of the fit's work, not of the store it is read from and written to.
class GatedFit final : public compressor::Compressor {
 public:
  compressor::Capabilities capabilities() const override { return {.fits = true}; }
  std::string_view name() const override { return "GATED"; }
  absl::StatusOr<std::string> Fit(const compressor::LayerView& layer) const override {
    {
      absl::MutexLock lock(&mu_);
      threads_.push_back(std::this_thread::get_id());
      if (!entered_.HasBeenNotified()) entered_.Notify();
    }
    if (gated_) open_.WaitForNotification();
    return std::to_string(layer.first_position);
  }
  absl::StatusOr<compressor::LayerEntries> Materialize(const compressor::LayerView&,
                                                       std::string_view, int) const override {
    return absl::UnimplementedError("GATED only fits");
  }

  // Until Open(), every Fit blocks.
  void Close() { gated_ = true; }
  void Open() {
    if (!open_.HasBeenNotified()) open_.Notify();
  }
  // Returns once a Fit has started.
  void WaitEntered() const { entered_.WaitForNotification(); }
  // The threads every Fit ran on, one per layer fitted.
  std::vector<std::thread::id> threads() const {
    absl::MutexLock lock(&mu_);
    return threads_;
  }

 private:
  bool gated_ = false;  // Set while no Fit runs.
  mutable absl::Notification open_;
  mutable absl::Notification entered_;
  mutable absl::Mutex mu_;
  mutable std::vector<std::thread::id> threads_ ABSL_GUARDED_BY(mu_);
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
    gated_.Open();  // A test that failed half way may have left a worker blocked in Fit.
    scheduler_.reset();
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

  // Appends turns 0..turns-1 of session "s" (no background fits) and makes `num_threads` workers
  // for GATED fits; Job(t) is turn t's.
  void StartGated(int turns, int num_threads, size_t max_queued) {
    Start(/*fit_nice=*/0, /*precompute=*/false);
    for (int t = 0; t < turns; ++t) Append(t, 16, 16 * t);
    auto records = store_->ListSegments(key_);
    ASSERT_TRUE(records.ok()) << records.status();
    ASSERT_EQ(records->size(), static_cast<size_t>(turns));
    records_ = std::move(*records);
    scheduler_ = std::make_unique<FitScheduler>(
        store_.get(), num_threads, max_queued, nullptr,
        [this](const FitJob& job, absl::Duration, const absl::Status& status) {
          EXPECT_TRUE(status.ok()) << status;
          absl::MutexLock lock(&mu_);
          computed_.push_back(job.record.turn());
        });
  }
  FitJob Job(uint32_t turn) { return FitJob{key_, testing::TinySpec(), records_[turn], &gated_}; }
  // The turns whose fit the scheduler computed, in the order they finished.
  std::vector<uint32_t> Computed() {
    absl::MutexLock lock(&mu_);
    return computed_;
  }
  void WaitComputed(size_t n) {
    const auto reached = [this, n]()
                             ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return computed_.size() >= n; };
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&reached));
  }
  bool Stored(uint32_t turn) {
    absl::StatusOr<bool> stored = store_->HasFit(key_, turn, "GATED");
    EXPECT_TRUE(stored.ok()) << stored.status();
    return stored.ok() && *stored;
  }

  std::filesystem::path dir_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<KvMemoryCore> core_;
  absl::Mutex mu_;
  std::vector<FitRun> runs_ ABSL_GUARDED_BY(mu_);
  absl::Notification first_;

  const store::SessionKey key_{"default", "s"};
  std::vector<store::SegmentRecord> records_;
  GatedFit gated_;
  std::vector<uint32_t> computed_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<FitScheduler> scheduler_;  // Last: its workers stop before the rest goes.
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

TEST_F(FitSchedulerTest, AFitGetCacheNeedsRunsOnAWorkerAtTheWorkersPriority) {
  const int caller = ThreadNice();
  ASSERT_LE(caller, 9);
  Start(/*fit_nice=*/10, /*precompute=*/false);  // No background fit: GetCache must await it.
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
    EXPECT_NE(run.tid, gettid()) << run.method;
    EXPECT_EQ(run.nice, caller + 10) << run.method;
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

TEST_F(FitSchedulerTest, AwaitOnAStoredFitReturnsAtOnce) {
  StartGated(/*turns=*/1, /*num_threads=*/1, /*max_queued=*/4);
  ASSERT_TRUE(scheduler_->Await(Job(0), absl::InfiniteDuration()).ok());
  ASSERT_TRUE(Stored(0));
  const size_t fitted = gated_.threads().size();
  // With a zero wait only a fit that is stored already answers OK.
  EXPECT_TRUE(scheduler_->Await(Job(0), absl::ZeroDuration()).ok());
  EXPECT_EQ(gated_.threads().size(), fitted);
  EXPECT_EQ(scheduler_->queued(), 0u);
  EXPECT_EQ(Computed(), std::vector<uint32_t>{0});
}

TEST_F(FitSchedulerTest, AwaitComputesOnAWorkerNeverOnTheCaller) {
  StartGated(/*turns=*/2, /*num_threads=*/1, /*max_queued=*/4);
  EXPECT_TRUE(scheduler_->Await(Job(0), absl::InfiniteDuration()).ok());
  EXPECT_TRUE(scheduler_->Await(Job(1), absl::Seconds(600)).ok());
  EXPECT_TRUE(Stored(0));
  EXPECT_TRUE(Stored(1));
  const std::vector<std::thread::id> threads = gated_.threads();
  ASSERT_EQ(threads.size(), 2u * testing::TinySpec().num_layers());
  for (const std::thread::id& thread : threads) EXPECT_NE(thread, std::this_thread::get_id());
}

TEST_F(FitSchedulerTest, AWaitThatRunsOutLeavesTheFitToBeStoredForTheNextAwait) {
  StartGated(/*turns=*/1, /*num_threads=*/1, /*max_queued=*/4);
  gated_.Close();
  // The fit blocks until the gate opens, so this wait runs out whatever its length.
  const absl::Status first = scheduler_->Await(Job(0), absl::Milliseconds(20));
  EXPECT_TRUE(absl::IsDeadlineExceeded(first)) << first;
  EXPECT_THAT(std::string(first.message()), ::testing::HasSubstr("it goes on and is stored later"));
  EXPECT_THAT(std::string(first.message()), ::testing::HasSubstr("fits queued: 0 awaited"));
  EXPECT_FALSE(Stored(0));
  gated_.Open();
  EXPECT_TRUE(scheduler_->Await(Job(0), absl::InfiniteDuration()).ok());
  EXPECT_TRUE(Stored(0));
  EXPECT_EQ(Computed(), std::vector<uint32_t>{0});  // The second Await did not run it again.
}

TEST_F(FitSchedulerTest, AnAwaitedJobOvertakesQueuedBackgroundJobsEvenWhenTheirQueueIsFull) {
  StartGated(/*turns=*/4, /*num_threads=*/1, /*max_queued=*/2);
  gated_.Close();
  scheduler_->Submit(Job(0));
  gated_.WaitEntered();  // The one worker holds turn 0.
  scheduler_->Submit(Job(1));
  scheduler_->Submit(Job(2));
  scheduler_->Submit(Job(3));  // The background queue is full: dropped (and logged).
  ASSERT_EQ(scheduler_->queued(), 2u);
  // A zero wait queues turn 3 ahead of them without waiting for it; a second Await joins that
  // queued job instead of queuing it again.
  const absl::Status queued = scheduler_->Await(Job(3), absl::ZeroDuration());
  EXPECT_TRUE(absl::IsDeadlineExceeded(queued)) << queued;
  EXPECT_THAT(std::string(queued.message()),
              ::testing::HasSubstr("fits queued: 1 awaited, 2 background"));
  EXPECT_TRUE(absl::IsDeadlineExceeded(scheduler_->Await(Job(3), absl::ZeroDuration())));
  EXPECT_EQ(scheduler_->queued(), 3u);
  gated_.Open();
  EXPECT_TRUE(scheduler_->Await(Job(3), absl::InfiniteDuration()).ok());
  WaitComputed(4);
  EXPECT_EQ(Computed(), (std::vector<uint32_t>{0, 3, 1, 2}));
}

TEST_F(FitSchedulerTest, TwoAwaitsOfOneJobShareOneRun) {
  StartGated(/*turns=*/1, /*num_threads=*/1, /*max_queued=*/4);
  gated_.Close();
  absl::Status first, second;
  std::thread first_caller([&] { first = scheduler_->Await(Job(0), absl::InfiniteDuration()); });
  gated_.WaitEntered();  // The worker runs the first caller's job.
  // Another Await of the job joins that run: it queues nothing (a copy would wait in the queue,
  // the only worker being busy).
  EXPECT_TRUE(absl::IsDeadlineExceeded(scheduler_->Await(Job(0), absl::ZeroDuration())));
  EXPECT_EQ(scheduler_->queued(), 0u);
  std::thread second_caller([&] { second = scheduler_->Await(Job(0), absl::InfiniteDuration()); });
  gated_.Open();
  first_caller.join();
  second_caller.join();
  EXPECT_TRUE(first.ok()) << first;
  EXPECT_TRUE(second.ok()) << second;
  EXPECT_EQ(Computed(), std::vector<uint32_t>{0});
  EXPECT_EQ(gated_.threads().size(), size_t{testing::TinySpec().num_layers()});
}

TEST_F(FitSchedulerTest, AwaitAfterShutdownIsUnavailableAtOnce) {
  StartGated(/*turns=*/1, /*num_threads=*/1, /*max_queued=*/4);
  scheduler_->Shutdown();
  // An infinite wait that returns is a prompt answer.
  EXPECT_TRUE(absl::IsUnavailable(scheduler_->Await(Job(0), absl::InfiniteDuration())));
  EXPECT_TRUE(Computed().empty());
  EXPECT_FALSE(Stored(0));
}

TEST_F(FitSchedulerTest, ShutdownWakesTheAwaitersOfTheJobsItDrops) {
  StartGated(/*turns=*/2, /*num_threads=*/1, /*max_queued=*/4);
  gated_.Close();
  absl::Status running, dropped;
  std::thread running_caller(
      [&] { running = scheduler_->Await(Job(0), absl::InfiniteDuration()); });
  gated_.WaitEntered();  // The one worker holds turn 0; turn 1 waits in the queue.
  EXPECT_TRUE(absl::IsDeadlineExceeded(scheduler_->Await(Job(1), absl::ZeroDuration())));
  std::thread dropped_caller(
      [&] { dropped = scheduler_->Await(Job(1), absl::InfiniteDuration()); });
  std::thread shutdown([&] { scheduler_->Shutdown(); });
  // Shutdown drops turn 1 before it waits for the worker: release the worker once it has.
  while (scheduler_->queued() != 0) absl::SleepFor(absl::Milliseconds(1));
  gated_.Open();
  shutdown.join();
  running_caller.join();
  dropped_caller.join();
  EXPECT_TRUE(running.ok()) << running;  // A running job finishes and is stored.
  EXPECT_TRUE(Stored(0));
  EXPECT_TRUE(absl::IsUnavailable(dropped)) << dropped;
  EXPECT_FALSE(Stored(1));
}

}  // namespace
}  // namespace nexuskv::service
