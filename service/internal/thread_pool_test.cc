// ThreadPool: tasks run on the workers, and worker_nice lowers the workers' priority only.
#include "service/internal/thread_pool.h"

#include <pthread.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>

#include "absl/synchronization/notification.h"
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

}  // namespace
}  // namespace nexuskv::service
