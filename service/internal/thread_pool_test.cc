// ThreadPool: tasks run on the workers, urgent ones first, and worker_nice lowers the workers'
// priority only.
#include "service/internal/thread_pool.h"

#include <pthread.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace nexuskv::service {
namespace {

// The calling thread's nice value (Linux: per thread).
int ThreadNice() {
  errno = 0;
  const int nice = getpriority(PRIO_PROCESS, static_cast<id_t>(gettid()));
  EXPECT_EQ(errno, 0);
  return nice;
}

// The nice value and thread id one task sees on a pool built with worker_nice.
struct Seen {
  int nice = 0;
  pid_t tid = 0;
  std::string thread_name;
};
Seen RunOnPool(int worker_nice) {
  ThreadPool pool("test-pool-named-long", /*num_threads=*/2, /*max_queued=*/4, worker_nice);
  Seen seen;
  absl::Notification done;
  EXPECT_TRUE(pool.Schedule([&] {
    char name[16] = {};
    pthread_getname_np(pthread_self(), name, sizeof(name));
    seen = {ThreadNice(), gettid(), name};
    done.Notify();
  }));
  done.WaitForNotification();
  pool.Shutdown();
  return seen;
}

TEST(ThreadPoolTest, WorkersRunNiceLevelsBelowTheCallerAndTheCallerKeepsItsPriority) {
  const int before = ThreadNice();
  ASSERT_LE(before, 9) << "the test process itself runs at nice " << before;
  const Seen seen = RunOnPool(/*worker_nice=*/10);
  EXPECT_NE(seen.tid, gettid());
  EXPECT_EQ(seen.thread_name, "test-pool-named");  // The pool's name, cut to 15 characters.
  EXPECT_EQ(seen.nice, before + 10);
  // Per thread, not per process: the creating thread and a new thread of the process keep theirs.
  EXPECT_EQ(ThreadNice(), before);
  EXPECT_EQ(RunOnPool(/*worker_nice=*/0).nice, before);
}

TEST(ThreadPoolTest, NiceIsCappedAt19) {
  EXPECT_EQ(RunOnPool(/*worker_nice=*/19).nice, std::min(ThreadNice() + 19, 19));
}

TEST(ThreadPoolTest, TrySchedulePastTheQueueBoundDropsAndShutdownRunsWhatIsQueued) {
  ThreadPool pool("test", /*num_threads=*/1, /*max_queued=*/1);
  absl::Notification started, release;
  int ran = 0;
  ASSERT_TRUE(pool.Schedule([&] {
    started.Notify();
    release.WaitForNotification();
    ++ran;
  }));
  started.WaitForNotification();  // The worker holds the first task; the queue is empty.
  EXPECT_TRUE(pool.TrySchedule([&] { ++ran; }));
  EXPECT_FALSE(pool.TrySchedule([&] { ++ran; }));  // Queue full.
  EXPECT_EQ(pool.queued(), 1u);
  release.Notify();
  pool.Shutdown();
  EXPECT_EQ(ran, 2);
  EXPECT_FALSE(pool.TrySchedule([&] { ++ran; }));  // Shut down.
}

// One worker held by a first task until release: what is queued meanwhile stays queued.
class HeldPool {
 public:
  explicit HeldPool(size_t max_queued) : pool_("test", /*num_threads=*/1, max_queued) {
    EXPECT_TRUE(pool_.Schedule([this] {
      started_.Notify();
      release_.WaitForNotification();
    }));
    started_.WaitForNotification();
  }
  ~HeldPool() {
    if (!release_.HasBeenNotified()) release_.Notify();
  }
  ThreadPool& pool() { return pool_; }
  void Release() { release_.Notify(); }

 private:
  absl::Notification started_, release_;
  ThreadPool pool_;  // Last: joined before the notifications it waits on are destroyed.
};

TEST(ThreadPoolTest, UrgentTasksRunBeforeQueuedBackgroundOnesEvenWhenTheQueueIsFull) {
  absl::Mutex mu;
  std::vector<std::string> order;
  auto record = [&](std::string name) {
    return [&, name] {
      absl::MutexLock lock(&mu);
      order.push_back(name);
    };
  };
  HeldPool held(/*max_queued=*/2);
  ThreadPool& pool = held.pool();
  ASSERT_TRUE(pool.TrySchedule(record("background 1")));
  ASSERT_TRUE(pool.TrySchedule(record("background 2")));
  ASSERT_FALSE(pool.TrySchedule(record("background 3")));  // The background lane is full.
  EXPECT_TRUE(pool.TryScheduleFirst(record("urgent 1")));  // Accepted all the same.
  EXPECT_TRUE(pool.TryScheduleFirst(record("urgent 2")));
  EXPECT_EQ(pool.queued(), 4u);
  EXPECT_EQ(pool.queued_first(), 2u);
  held.Release();
  pool.Shutdown();  // Runs both lanes, urgent first.
  EXPECT_EQ(order,
            (std::vector<std::string>{"urgent 1", "urgent 2", "background 1", "background 2"}));
}

TEST(ThreadPoolTest, TheUrgentLaneHasItsOwnBoundAndRefusesAfterShutdown) {
  HeldPool held(/*max_queued=*/1);
  ThreadPool& pool = held.pool();
  EXPECT_TRUE(pool.TryScheduleFirst([] {}));
  EXPECT_FALSE(pool.TryScheduleFirst([] {}));  // The urgent lane holds max_queued.
  EXPECT_TRUE(pool.TrySchedule([] {}));        // The background lane is counted apart.
  EXPECT_EQ(pool.queued_first(), 1u);
  EXPECT_EQ(pool.queued(), 2u);
  held.Release();
  pool.Shutdown();
  EXPECT_FALSE(pool.TryScheduleFirst([] {}));
}

TEST(ThreadPoolTest, ShutdownNowDropsBothLanesAndReleasesWhatTheirTasksOwn) {
  HeldPool held(/*max_queued=*/2);
  ThreadPool& pool = held.pool();
  int ran = 0;
  auto owned = std::make_shared<int>(0);
  ASSERT_TRUE(pool.TrySchedule([&ran, owned] { ++ran; }));
  ASSERT_TRUE(pool.TryScheduleFirst([&ran, owned] { ++ran; }));
  EXPECT_EQ(owned.use_count(), 3);
  // ShutdownNow drops the queued tasks before it joins the held worker, so release that worker
  // from another thread once the queue is seen empty.
  std::thread shutdown([&] { pool.ShutdownNow(); });
  while (pool.queued() != 0) absl::SleepFor(absl::Milliseconds(1));
  held.Release();
  shutdown.join();
  EXPECT_EQ(ran, 0);
  EXPECT_EQ(owned.use_count(), 1);
  EXPECT_FALSE(pool.TrySchedule([] {}));
  EXPECT_FALSE(pool.TryScheduleFirst([] {}));
}

}  // namespace
}  // namespace nexuskv::service
