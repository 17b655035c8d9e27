// ThreadPool: a fixed set of worker threads draining two bounded FIFOs of tasks, an urgent lane
// ahead of the background one.
//
// The gRPC callback API runs reactions on gRPC's own threads, which must not block; nexuskv moves
// blocking work (RocksDB writes with fsync, cache assembly, compression fits) onto pools like this.
//
//   ThreadPool pool("fit", /*num_threads=*/2, /*max_queued=*/256, /*worker_nice=*/10);
//   if (!pool.TrySchedule([] { ... })) { /* queue full: do it later */ }
//   if (!pool.TryScheduleFirst([] { ... })) { /* a request waits on it: shut down or flooded */ }
//   pool.Shutdown();  // runs what is queued, then joins
//
// Lanes: a free worker always takes the oldest urgent task (TryScheduleFirst) before any
// background one (TrySchedule, Schedule); each lane is FIFO and holds at most max_queued tasks of
// its own, so a full background queue never refuses urgent work (at most 2 * max_queued queued in
// all). A running task is never preempted: an urgent task waits for the first worker to finish.
//
// worker_nice > 0 lowers the workers' CPU priority below the rest of the process (background work
// that must not starve the RPC threads). On Linux the nice value is a per-thread attribute
// (setpriority(2), BUGS), so each worker sets its own with setpriority(PRIO_PROCESS, gettid(), n)
// when it starts and other threads keep theirs. Threads a worker creates inherit its value. Each
// worker then names itself after the pool (its first 15 characters), as top -H and /proc show.
//
// Thread-safe. The destructor calls Shutdown().
#ifndef NEXUSKV_SERVICE_INTERNAL_THREAD_POOL_H_
#define NEXUSKV_SERVICE_INTERNAL_THREAD_POOL_H_

#include <cstddef>
#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace nexuskv::service {

class ThreadPool {
 public:
  // worker_nice: 0 leaves the workers at the process's priority; 1..19 raises their nice value
  // by that much (lower priority). Out of range values are the caller's bug; a worker that cannot
  // set its priority logs a warning and runs at the process's priority.
  ThreadPool(std::string name, int num_threads, size_t max_queued, int worker_nice = 0);
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool();

  // Queues task in the background lane; false (task dropped) when that lane holds max_queued
  // tasks or the pool is shut down.
  bool TrySchedule(std::function<void()> task);

  // Queues task in the background lane, waiting for room; false (task dropped) when the pool is
  // shut down.
  bool Schedule(std::function<void()> task);

  // Queues task in the urgent lane: it starts before every background task queued (in the order
  // urgent tasks came). False (task dropped) when the urgent lane itself holds max_queued tasks or
  // the pool is shut down; never because the background lane is full.
  bool TryScheduleFirst(std::function<void()> task);

  // Stops accepting tasks, runs the queued ones (urgent lane first), joins the workers. Idempotent.
  void Shutdown();

  // Stops accepting tasks, drops the queued ones of both lanes (never started; each is destroyed
  // here, so what it owns is released), joins the workers once their current task ends.
  void ShutdownNow();

  // Tasks queued and not yet started, both lanes.
  size_t queued() const;

  // Urgent tasks queued and not yet started (part of queued()).
  size_t queued_first() const;

 private:
  void WorkerLoop();

  const std::string name_;
  const size_t max_queued_;
  const int worker_nice_;
  mutable absl::Mutex mu_;
  std::deque<std::function<void()>> urgent_ ABSL_GUARDED_BY(mu_);  // Drained before queue_.
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_INTERNAL_THREAD_POOL_H_
