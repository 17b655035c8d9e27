#include "service/internal/thread_pool.h"

#include <pthread.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "common/log.h"

namespace nexuskv::service {

ThreadPool::ThreadPool(std::string name, int num_threads, size_t max_queued, int worker_nice)
    : name_(std::move(name)), max_queued_(max_queued), worker_nice_(worker_nice) {
  workers_.reserve(num_threads);
  for (int i = 0; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() { Shutdown(); }

bool ThreadPool::TrySchedule(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  if (shutting_down_ || queue_.size() >= max_queued_) return false;
  queue_.push_back(std::move(task));
  return true;
}

bool ThreadPool::TryScheduleFirst(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  if (shutting_down_ || urgent_.size() >= max_queued_) return false;
  urgent_.push_back(std::move(task));
  return true;
}

bool ThreadPool::Schedule(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](ThreadPool* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) {
        return p->shutting_down_ || p->queue_.size() < p->max_queued_;
      },
      this));
  if (shutting_down_) return false;
  queue_.push_back(std::move(task));
  return true;
}

void ThreadPool::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_ && workers_.empty()) return;
    shutting_down_ = true;
  }
  for (std::thread& worker : workers_) {
    if (worker.joinable()) worker.join();
  }
  workers_.clear();
}

void ThreadPool::ShutdownNow() {
  std::deque<std::function<void()>> dropped_urgent, dropped;
  {
    // One critical section: no task can be queued between the drop and the refusal.
    absl::MutexLock lock(&mu_);
    shutting_down_ = true;
    dropped_urgent.swap(urgent_);
    dropped.swap(queue_);
  }
  // Destroyed outside mu_: a task's captures may run code that takes other locks.
  dropped_urgent.clear();
  dropped.clear();
  Shutdown();
}

size_t ThreadPool::queued() const {
  absl::MutexLock lock(&mu_);
  return urgent_.size() + queue_.size();
}

size_t ThreadPool::queued_first() const {
  absl::MutexLock lock(&mu_);
  return urgent_.size();
}

void ThreadPool::WorkerLoop() {
  if (worker_nice_ != 0) {
    // Relative to the nice value this thread inherited, so a niced process stays ordered.
    errno = 0;
    const int inherited = getpriority(PRIO_PROCESS, static_cast<id_t>(gettid()));
    const int target = (errno == 0 ? inherited : 0) + worker_nice_;
    if (setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), target) != 0) {
      Log(LogLevel::kWarning, "thread_nice_failed",
          {{"pool", name_}, {"nice", target}, {"error", std::strerror(errno)}});
    }
  }
  // Named after the priority is set: a thread called name_ already runs at it (top -H, /proc).
  pthread_setname_np(pthread_self(), name_.substr(0, 15).c_str());
  while (true) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](ThreadPool* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) {
            return p->shutting_down_ || !p->urgent_.empty() || !p->queue_.empty();
          },
          this));
      std::deque<std::function<void()>>& lane = urgent_.empty() ? queue_ : urgent_;
      if (lane.empty()) return;  // Shutting down and drained.
      task = std::move(lane.front());
      lane.pop_front();
    }
    task();
  }
}

}  // namespace nexuskv::service
