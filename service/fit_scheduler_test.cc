// FitScheduler: background fits run on workers at --fit_nice below the caller; a fit a caller
// awaits runs on those workers too, ahead of the background ones, never on the caller's thread;
// awaiters share one run and a wait that runs out leaves nothing behind. The background queue is
// bounded in jobs and raw bytes; a full one defers an append's fits (its turn stored, the fits run
// once the queue is empty) or holds the append back (wait, then RESOURCE_EXHAUSTED with nothing
// stored); it hands workers batches of one method.
#include "service/fit_scheduler.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <memory>
#include <span>
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

// A method whose every Fit (one per layer) takes a permit the test grants, blocking until it has
// one, so a test can hold a worker inside a chosen job; nothing blocks once it is opened for good.
class SteppedFit final : public compressor::Compressor {
 public:
  explicit SteppedFit(std::string name, compressor::Capabilities caps = {.fits = true})
      : name_(std::move(name)), caps_(caps) {}
  compressor::Capabilities capabilities() const override { return caps_; }
  std::string_view name() const override { return name_; }
  absl::StatusOr<std::string> Fit(const compressor::LayerView& layer) const override {
    absl::MutexLock lock(&mu_);
    ++entered_;
    const auto permitted = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return permits_ != 0; };
    mu_.Await(absl::Condition(&permitted));
    if (permits_ > 0) --permits_;
    return std::to_string(layer.first_position);
  }
  absl::StatusOr<compressor::LayerEntries> Materialize(const compressor::LayerView&,
                                                       std::string_view, int) const override {
    return absl::UnimplementedError("only fits");
  }

  // Lets `fits` more Fit calls through.
  void Allow(int fits) {
    absl::MutexLock lock(&mu_);
    if (permits_ >= 0) permits_ += fits;
  }
  void OpenForGood() {
    absl::MutexLock lock(&mu_);
    permits_ = -1;
  }
  // Returns once `n` Fit calls have started in all.
  void WaitEntered(int n) const {
    absl::MutexLock lock(&mu_);
    const auto reached = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return entered_ >= n; };
    mu_.Await(absl::Condition(&reached));
  }

 private:
  const std::string name_;
  const compressor::Capabilities caps_;
  mutable absl::Mutex mu_;
  mutable int permits_ ABSL_GUARDED_BY(mu_) = 0;  // -1: open for good.
  mutable int entered_ ABSL_GUARDED_BY(mu_) = 0;
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
    stepped_.OpenForGood();
    other_.OpenForGood();
    if (core_method_ != nullptr) core_method_->OpenForGood();
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

  // Appends turns 0..turns-1 of session "s" (no background fits); records_ holds their records.
  void AppendTurns(int turns) {
    Start(/*fit_nice=*/0, /*precompute=*/false);
    for (int t = 0; t < turns; ++t) Append(t, 16, 16 * t);
    auto records = store_->ListSegments(key_);
    ASSERT_TRUE(records.ok()) << records.status();
    ASSERT_EQ(records->size(), static_cast<size_t>(turns));
    records_ = std::move(*records);
  }
  // A scheduler of the stepped methods whose observer records batches and back-pressure.
  void MakeScheduler(int num_threads, size_t max_queued, FitQueueOptions queue) {
    queue.observer.on_batch = [this](std::span<const absl::Duration> queued, absl::Duration) {
      absl::MutexLock lock(&mu_);
      batches_.push_back(queued.size());
    };
    queue.observer.on_backpressure = [this](bool admitted) {
      absl::MutexLock lock(&mu_);
      backpressure_.push_back(admitted);
    };
    queue.observer.on_defer = [this](bool dropped_oldest) {
      absl::MutexLock lock(&mu_);
      deferrals_.push_back(dropped_oldest);
    };
    scheduler_ = std::make_unique<FitScheduler>(
        store_.get(), num_threads, max_queued, nullptr,
        [this](const FitJob& job, absl::Duration, const absl::Status& status) {
          EXPECT_TRUE(status.ok()) << status;
          absl::MutexLock lock(&mu_);
          computed_.push_back(job.record.turn());
          methods_.emplace_back(job.method->name());
        },
        /*worker_nice=*/0, std::move(queue));
  }
  FitJob Stepped(uint32_t turn, const SteppedFit* method = nullptr) {
    return FitJob{key_, testing::TinySpec(), records_[turn], method ? method : &stepped_};
  }
  // The jobs each batch ran, once `n` batches are reported (after their last job's on_done).
  std::vector<size_t> Batches(size_t n) {
    absl::MutexLock lock(&mu_);
    const auto reached = [this, n]()
                             ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return batches_.size() >= n; };
    mu_.Await(absl::Condition(&reached));
    return batches_;
  }
  std::vector<bool> Backpressure() {
    absl::MutexLock lock(&mu_);
    return backpressure_;
  }
  std::vector<bool> Deferrals() {
    absl::MutexLock lock(&mu_);
    return deferrals_;
  }
  std::vector<std::string> Methods() {
    absl::MutexLock lock(&mu_);
    return methods_;
  }
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
  std::vector<std::string> methods_ ABSL_GUARDED_BY(mu_);  // Of computed_, in its order.
  std::vector<size_t> batches_ ABSL_GUARDED_BY(mu_);       // Jobs run per batch.
  std::vector<bool> backpressure_ ABSL_GUARDED_BY(mu_);    // Reserve waits: admitted or not.
  std::vector<bool> deferrals_ ABSL_GUARDED_BY(mu_);       // Defer calls: dropped the oldest?
  SteppedFit stepped_{"STEP"};
  SteppedFit other_{"OTHER"};
  SteppedFit* core_method_ = nullptr;  // Owned by registry_, for the core's tests.
  std::unique_ptr<compressor::CompressorRegistry> registry_;
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

TEST_F(FitSchedulerTest, TheQueueIsBoundedInRawBytesBesideJobs) {
  AppendTurns(5);
  const uint64_t turn_bytes = records_[0].raw_bytes();
  ASSERT_GT(turn_bytes, 0u);
  MakeScheduler(/*num_threads=*/1, /*max_queued=*/100, {.max_queued_bytes = 2 * turn_bytes});
  {
    // An empty queue takes one append larger than the whole bound; what it holds counts.
    std::optional<FitReservation> big = scheduler_->TryReserve(3, 3 * turn_bytes);
    ASSERT_TRUE(big.has_value());
    EXPECT_EQ(big->jobs(), 3u);
    EXPECT_FALSE(scheduler_->TryReserve(1, turn_bytes).has_value());
  }  // Released unused.
  EXPECT_TRUE(scheduler_->TryReserve(1, turn_bytes).has_value());

  EXPECT_TRUE(absl::IsDeadlineExceeded(scheduler_->Await(Stepped(4), absl::ZeroDuration())));
  stepped_.WaitEntered(1);  // The one worker holds turn 4.
  scheduler_->Submit(Stepped(0));
  scheduler_->Submit(Stepped(1));
  scheduler_->Submit(Stepped(2));  // Over the byte bound, under the job bound: dropped.
  EXPECT_EQ(scheduler_->queued(), 2u);
  EXPECT_EQ(scheduler_->queued_bytes(), 2 * turn_bytes);
  EXPECT_FALSE(scheduler_->TryReserve(1, 1).has_value());
  stepped_.OpenForGood();
  WaitComputed(3);
  EXPECT_EQ(Computed(), (std::vector<uint32_t>{4, 0, 1}));
  EXPECT_FALSE(store_->HasFit(key_, 2, "STEP").value_or(true));
  EXPECT_EQ(scheduler_->queued_bytes(), 0u);
}

TEST_F(FitSchedulerTest, AReserveWaitsForRoomThenHoldsItForItsJobs) {
  AppendTurns(3);
  const uint64_t turn_bytes = records_[0].raw_bytes();
  MakeScheduler(/*num_threads=*/1, /*max_queued=*/1, {});
  EXPECT_TRUE(absl::IsDeadlineExceeded(scheduler_->Await(Stepped(2), absl::ZeroDuration())));
  stepped_.WaitEntered(1);
  scheduler_->Submit(Stepped(0));  // The queue's one job.
  ASSERT_FALSE(scheduler_->TryReserve(1, turn_bytes).has_value());
  absl::StatusOr<FitReservation> room;
  std::thread append([&] { room = scheduler_->Reserve(1, turn_bytes, absl::InfiniteDuration()); });
  while (scheduler_->waiting_for_room() == 0) absl::SleepFor(absl::Milliseconds(1));
  stepped_.OpenForGood();  // The worker takes turn 0 from the queue: room for one.
  append.join();
  ASSERT_TRUE(room.ok()) << room.status();
  EXPECT_EQ(room->jobs(), 1u);
  scheduler_->Submit(Stepped(1), *room);
  EXPECT_EQ(room->jobs(), 0u);
  WaitComputed(3);
  EXPECT_TRUE(store_->HasFit(key_, 1, "STEP").value_or(false));
  EXPECT_EQ(Backpressure(), std::vector<bool>{true});
}

TEST_F(FitSchedulerTest, AReserveThatFindsNoRoomIsRefusedWithHowFullAndARetryHint) {
  AppendTurns(3);
  const uint64_t turn_bytes = records_[0].raw_bytes();  // 2,560 bytes
  MakeScheduler(/*num_threads=*/1, /*max_queued=*/1, {.max_queued_bytes = 10 * turn_bytes});
  EXPECT_TRUE(absl::IsDeadlineExceeded(scheduler_->Await(Stepped(2), absl::ZeroDuration())));
  stepped_.WaitEntered(1);
  scheduler_->Submit(Stepped(0));
  const absl::StatusOr<FitReservation> room =
      scheduler_->Reserve(2, 2 * turn_bytes, absl::ZeroDuration());
  ASSERT_TRUE(absl::IsResourceExhausted(room.status())) << room.status();
  EXPECT_EQ(room.status().message(),
            "the compression queue is full: 1 of 1 fits queued (--fit_queue), 3 KiB of 25 KiB of "
            "raw KV to fit (--fit_queue_mb); this turn's 2 fits (5 KiB) found no room within 0 ms "
            "(--fit_backpressure_ms); retry in 1000 ms or later, with backoff");
  EXPECT_EQ(RetryAfterOf(room.status()), absl::Seconds(1));  // At least a second.
  EXPECT_EQ(Backpressure(), std::vector<bool>{false});
  EXPECT_EQ(scheduler_->waiting_for_room(), 0u);
  EXPECT_EQ(RetryAfterOf(absl::ResourceExhaustedError("no hint")), std::nullopt);
  EXPECT_EQ(RetryAfterOf(WithRetryAfter(absl::ResourceExhaustedError("x"), absl::Seconds(3))),
            absl::Seconds(3));
}

TEST_F(FitSchedulerTest, DeferredJobsRunOnlyWhileTheQueueIsEmptyAndTheOldestGoesBeyondTheBound) {
  AppendTurns(5);
  MakeScheduler(/*num_threads=*/1, /*max_queued=*/10, {.max_deferred = 2});
  EXPECT_TRUE(absl::IsDeadlineExceeded(scheduler_->Await(Stepped(4), absl::ZeroDuration())));
  stepped_.WaitEntered(1);  // The one worker holds turn 4.
  scheduler_->Defer(Stepped(0));
  scheduler_->Defer(Stepped(1));
  scheduler_->Defer(Stepped(2));  // Over max_deferred: turn 0, the oldest, is dropped.
  scheduler_->Submit(Stepped(3));
  EXPECT_EQ(scheduler_->deferred(), 2u);
  EXPECT_EQ(scheduler_->queued(), 1u);  // Deferred jobs are not the queue's, nor its bytes.
  EXPECT_EQ(scheduler_->queued_bytes(), records_[3].raw_bytes());
  EXPECT_EQ(Deferrals(), (std::vector<bool>{false, false, true}));
  stepped_.OpenForGood();
  WaitComputed(4);
  // The queued turn 3 first, though deferred later than turns 1 and 2.
  EXPECT_EQ(Computed(), (std::vector<uint32_t>{4, 3, 1, 2}));
  EXPECT_EQ(scheduler_->deferred(), 0u);
  EXPECT_FALSE(store_->HasFit(key_, 0, "STEP").value_or(true));
  // What was dropped is still fitted when awaited.
  EXPECT_TRUE(scheduler_->Await(Stepped(0), absl::InfiniteDuration()).ok());
}

TEST_F(FitSchedulerTest, AWorkerTakesQueuedJobsOfOneMethodInBatchesOfAtMostMaxBatch) {
  AppendTurns(5);
  other_.OpenForGood();
  MakeScheduler(/*num_threads=*/1, /*max_queued=*/16, {.max_batch = 2});
  EXPECT_TRUE(absl::IsDeadlineExceeded(scheduler_->Await(Stepped(4), absl::ZeroDuration())));
  stepped_.WaitEntered(1);  // Queued meanwhile, across sessions or not, they wait together.
  scheduler_->Submit(Stepped(0));
  scheduler_->Submit(Stepped(1, &other_));
  scheduler_->Submit(Stepped(2));
  scheduler_->Submit(Stepped(3));
  EXPECT_EQ(scheduler_->queued(), 4u);
  stepped_.OpenForGood();
  WaitComputed(5);
  // The oldest job's method, up to two of it in queue order; then the oldest again.
  EXPECT_EQ(Computed(), (std::vector<uint32_t>{4, 0, 2, 1, 3}));
  EXPECT_EQ(Methods(), (std::vector<std::string>{"STEP", "STEP", "STEP", "OTHER", "STEP"}));
  EXPECT_EQ(Batches(3), (std::vector<size_t>{2, 1, 1}));  // The awaited fit is no batch.
}

TEST_F(FitSchedulerTest, ABatchGivesItsJobsNotStartedBackWhenAFitIsAwaited) {
  AppendTurns(5);
  MakeScheduler(/*num_threads=*/1, /*max_queued=*/16, {.max_batch = 8});
  const int layers = static_cast<int>(testing::TinySpec().num_layers());
  EXPECT_TRUE(absl::IsDeadlineExceeded(scheduler_->Await(Stepped(4), absl::ZeroDuration())));
  stepped_.WaitEntered(1);
  scheduler_->Submit(Stepped(0));
  scheduler_->Submit(Stepped(1));
  scheduler_->Submit(Stepped(2));
  stepped_.Allow(layers);            // Turn 4 finishes; the worker takes the batch {0, 1, 2}.
  stepped_.WaitEntered(layers + 1);  // and holds turn 0.
  EXPECT_EQ(scheduler_->queued(), 0u);
  EXPECT_TRUE(absl::IsDeadlineExceeded(scheduler_->Await(Stepped(3), absl::ZeroDuration())));
  stepped_.Allow(layers);                // Turn 0 finishes; turns 1 and 2 go back for turn 3.
  stepped_.WaitEntered(2 * layers + 1);  // Turn 3 runs.
  EXPECT_EQ(scheduler_->queued(), 2u);
  stepped_.OpenForGood();
  WaitComputed(5);
  EXPECT_EQ(Computed(), (std::vector<uint32_t>{4, 0, 3, 1, 2}));
  EXPECT_EQ(Batches(2), (std::vector<size_t>{1, 2}));
}

// The core on a full queue: a registry of one method that fits (SCORED, which prefers token
// scores) and a queue of one job that never waits.
class AppendBackpressureTest : public FitSchedulerTest {
 protected:
  void StartCore(CoreOptions::WhenFitQueueFull when_full) {
    std::vector<std::unique_ptr<compressor::Compressor>> methods;
    auto method = std::make_unique<SteppedFit>(
        "SCORED", compressor::Capabilities{.fits = true, .prefers_token_scores = true});
    core_method_ = method.get();
    methods.push_back(std::move(method));
    registry_ = std::make_unique<compressor::CompressorRegistry>(std::move(methods));
    CoreOptions options;
    options.fit_threads = 1;
    options.fit_queue = 1;
    options.fit_backpressure = absl::ZeroDuration();
    options.fit_queue_full = when_full;
    options.on_fit_done = [this](const FitJob& job, absl::Duration, const absl::Status& status) {
      EXPECT_TRUE(status.ok()) << status;
      absl::MutexLock lock(&mu_);
      computed_.push_back(job.record.turn());
    };
    options.on_fit_queue.on_backpressure = [this](bool admitted) {
      absl::MutexLock lock(&mu_);
      backpressure_.push_back(admitted);
    };
    core_ = std::make_unique<KvMemoryCore>(store_.get(), registry_.get(), options);
  }

  absl::StatusOr<v1::AppendSegmentResponse> AppendTurn(uint32_t turn, bool scores = false) {
    SegmentAssembler assembler(Limits{});
    auto messages = testing::SegmentMessages("s", turn, 16, 16 * turn, 4, testing::TinySpec());
    if (scores) {
      messages[0].mutable_header()->set_has_token_scores(true);
      for (size_t l = 1; l < messages.size(); ++l) {
        const std::vector<float> s(2 * 16, 1.0f);
        messages[l].mutable_layer()->set_token_scores(EncodeFromFloat(s, DType::kFloat32));
      }
    }
    for (auto& m : messages) {
      if (absl::Status added = assembler.Add(std::move(m)); !added.ok()) return added;
    }
    absl::StatusOr<AssembledSegment> segment = std::move(assembler).Finish();
    if (!segment.ok()) return segment.status();
    return core_->Append("default", std::move(*segment));
  }

  uint32_t StoredTurns() {
    absl::StatusOr<store::SessionRecord> session = store_->GetSession(key_);
    EXPECT_TRUE(session.ok()) << session.status();
    absl::StatusOr<std::vector<store::SegmentRecord>> segments = store_->ListSegments(key_);
    EXPECT_TRUE(segments.ok()) << segments.status();
    EXPECT_EQ(segments.ok() ? segments->size() : 0, session.ok() ? session->num_turns() : 1);
    return session.ok() ? session->num_turns() : 0;
  }
};

TEST_F(AppendBackpressureTest, AnAppendThatFindsTheQueueFullIsStoredAndItsFitRunsLater) {
  StartCore(CoreOptions::WhenFitQueueFull::kDefer);
  ASSERT_TRUE(AppendTurn(0).ok());
  core_method_->WaitEntered(1);     // The worker holds turn 0's fit.
  ASSERT_TRUE(AppendTurn(1).ok());  // Turn 1's fit fills the queue.
  const absl::StatusOr<v1::AppendSegmentResponse> deferred = AppendTurn(2);
  ASSERT_TRUE(deferred.ok()) << deferred.status();
  EXPECT_EQ(deferred->num_turns(), 3u);
  EXPECT_EQ(StoredTurns(), 3u);
  EXPECT_EQ(core_->deferred_fits(), 1u);
  EXPECT_EQ(core_->queued_fits(), 1u);
  EXPECT_TRUE(Backpressure().empty());  // Nothing waited.

  // A turn stored already defers nothing.
  const absl::StatusOr<v1::AppendSegmentResponse> again = AppendTurn(2);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->already_stored());
  EXPECT_EQ(core_->deferred_fits(), 1u);

  core_method_->OpenForGood();
  WaitComputed(3);  // Turn 2's deferred fit runs once the queue is empty.
  EXPECT_EQ(Computed(), (std::vector<uint32_t>{0, 1, 2}));
  EXPECT_TRUE(store_->HasFit(key_, 2, "SCORED").value_or(false));
  EXPECT_EQ(core_->deferred_fits(), 0u);
}

TEST_F(AppendBackpressureTest, AnAppendRefusedForAFullQueueStoresNothingAndCanBeRetried) {
  StartCore(CoreOptions::WhenFitQueueFull::kRefuse);
  ASSERT_TRUE(AppendTurn(0).ok());
  core_method_->WaitEntered(1);     // The worker holds turn 0's fit.
  ASSERT_TRUE(AppendTurn(1).ok());  // Turn 1's fit fills the queue.

  const absl::StatusOr<v1::AppendSegmentResponse> refused = AppendTurn(2);
  ASSERT_TRUE(absl::IsResourceExhausted(refused.status())) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()),
              ::testing::StartsWith("turn 2 of session \"s\" was not stored: the compression "
                                    "queue is full: 1 of 1 fits queued (--fit_queue)"));
  EXPECT_EQ(RetryAfterOf(refused.status()), absl::Seconds(1));
  EXPECT_EQ(StoredTurns(), 2u);
  EXPECT_EQ(Backpressure(), std::vector<bool>{false});

  // A turn stored already queues nothing, so it is never held back.
  const absl::StatusOr<v1::AppendSegmentResponse> again = AppendTurn(1);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->already_stored());

  // Nor is a turn whose fit is on demand (token scores serve it while raw KV is kept).
  const absl::StatusOr<v1::AppendSegmentResponse> scored = AppendTurn(2, /*scores=*/true);
  ASSERT_TRUE(scored.ok()) << scored.status();
  EXPECT_EQ(StoredTurns(), 3u);

  core_method_->OpenForGood();
  WaitComputed(2);  // Turn 1's fit left the queue before it ran.
  const absl::StatusOr<v1::AppendSegmentResponse> retried = AppendTurn(3);
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_EQ(StoredTurns(), 4u);
  EXPECT_EQ(Backpressure(), std::vector<bool>{false});  // Neither waited.
}

}  // namespace
}  // namespace nexuskv::service
