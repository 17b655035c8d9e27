// FitScheduler: computes and stores per-turn compression fits on its own workers, never on the
// threads that serve RPCs.
//
// An append first reserves room in the background queue for the fits its turn needs (Reserve:
// waiting a bounded time while the queue is full, then RESOURCE_EXHAUSTED, so a refused append
// stores nothing), stores the turn, then queues one job per method that has a fit (Submit). A
// bounded pool of workers runs them (each job: decode every layer, Compressor::Fit, Store::PutFit
// in one batch, with the method's SummarizeFit as the fit's summary), then calls on_stored. A job
// submitted without a reservation is dropped and logged when the queue is full, not lost: a
// GetCache that needs the fit calls Await(), which queues it again ahead of the background jobs.
//
//   absl::StatusOr<FitReservation> room = fits.Reserve(jobs, bytes, absl::Seconds(2));
//   if (!room.ok()) return room.status();  // RESOURCE_EXHAUSTED, with RetryAfterOf(status)
//   /* store the turn */  fits.Submit(job, *room);
//   absl::Status fit = fits.Await(job, absl::Milliseconds(500));
//   if (absl::IsDeadlineExceeded(fit)) { /* serve the fallback, say so in the answer's notes */ }
//
// The background queue is bounded twice, both counting queued jobs plus reserved room: in jobs
// (max_queued) and in the raw KV bytes the jobs will read (FitQueueOptions::max_queued_bytes;
// each job counts its record's raw_bytes). The queue holds records, not tensors: the byte bound
// caps the backlog of KV to decode and fit (what a device backend stages per batch), and an empty
// queue takes any one append however large, so no turn is refused for its size alone.
//
// Deferred fits: an append that finds the queue full may instead store its turn at once and hand
// its jobs to Defer(), which keeps them in a second list the workers take from only while the
// background queue is empty (FitQueueOptions::max_deferred jobs; beyond it the oldest deferred job
// is dropped and logged, and a GetCache that needs its fit still gets it by Await). The list holds
// records, not tensors, and is bounded in jobs only: under sustained overload the tier keeps every
// turn and sheds compression, which a GetCache makes up on demand or serves by its fallback.
//
// Batches: a worker takes up to FitQueueOptions::max_batch queued jobs of one method at once (the
// oldest job's method, in queue order), across sessions, and reports them (on_batch). The
// compressor still fits them one turn after another; when an awaited fit is queued the worker
// gives the jobs of its batch it has not started back to the head of the queue, so a GetCache
// waits behind no more background fits than it did before batches (the ones running).
//
// The rule: a fit is computed only on a worker. Await() waits, with a deadline, for the worker's
// run (joining one in flight, queued or running, or queuing the job in the pool's urgent lane); it
// never computes on the calling thread, so a GetCache holds its RPC thread but no CPU while it
// waits. When the wait runs out the fit still goes on and is stored (a later GetCache finds it);
// the caller then serves its documented fallback for that turn and says so in the answer's notes (a
// turn whose raw KV is kept can be served by STREAMING_LLM, which needs no fit, as a turn whose fit
// failed is), or, with nothing to fall back to, returns the DEADLINE_EXCEEDED.
//
// Priority: with worker_nice > 0 the workers run that many nice levels below the threads that
// serve RPCs (per thread; see ThreadPool), so background fits take the CPU the RPCs leave idle
// instead of starving them. A fit a GetCache awaits runs on those workers too, at their priority:
// under load it finishes later than it would at nice 0, which is what the wait's deadline bounds.
// It starts before every queued background job but does not preempt the ones running. A niced
// worker only computes: Store::PutFit (which holds the session's lock through a synced write) and
// on_stored run on one writer thread at normal priority, so that appends do not wait on a session
// lock held by a thread the scheduler keeps off the CPU (priority inversion). The worker's reads
// take only RocksDB's short internal locks.
//
// Thread-safe. Shutdown() stops the workers; queued jobs are dropped, their awaiters and the
// appends waiting for room get UNAVAILABLE.
#ifndef NEXUSKV_SERVICE_FIT_SCHEDULER_H_
#define NEXUSKV_SERVICE_FIT_SCHEDULER_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "compressor/compressor.h"
#include "nexuskv/v1/kv_memory.pb.h"
#include "service/internal/thread_pool.h"
#include "store/store.h"

namespace nexuskv::service {

struct FitJob {
  store::SessionKey key;
  nexuskv::v1::ModelSpec model;
  store::SegmentRecord record;
  const compressor::Compressor* method = nullptr;  // Registry-owned; a method that has a fit.
};

// The key of the absl::Status payload by which a RESOURCE_EXHAUSTED says when to retry (decimal
// milliseconds); the gRPC edge sends it as the grpc-retry-pushback-ms trailer (gRFC A6).
inline constexpr char kRetryAfterPayload[] = "type.nexuskv.dev/retry_after_ms";
// `status` with the retry hint attached; RetryAfterOf reads it back (nullopt when absent or bad).
absl::Status WithRetryAfter(absl::Status status, absl::Duration after);
std::optional<absl::Duration> RetryAfterOf(const absl::Status& status);

// Told about the background queue, for metrics. Each may be empty; each runs on the thread named,
// without the scheduler's lock held.
struct FitQueueObserver {
  // On a worker, after a batch: how long each job it ran waited in the queue, and the time the
  // batch took (its jobs run, stored or skipped).
  std::function<void(std::span<const absl::Duration> queued, absl::Duration elapsed)> on_batch;
  // On the appending thread, when Reserve found the queue full: whether room came within the
  // wait (true) or the append was refused (false).
  std::function<void(bool admitted)> on_backpressure;
  // On the appending thread, after Defer: whether it dropped the oldest deferred job to make room.
  std::function<void(bool dropped_oldest)> on_defer;
};

struct FitQueueOptions {
  // Raw KV bytes the queued and reserved jobs may add up to (0: no bound); see above.
  uint64_t max_queued_bytes = 0;
  // Most jobs a worker takes from the background queue at once (at least 1).
  size_t max_batch = 1;
  // Jobs the deferred list holds at most (0: Defer drops every job, as Submit does on a full
  // queue).
  size_t max_deferred = 0;
  FitQueueObserver observer;
};

class FitScheduler;

// Room in the background queue for the fits of one append, held from before its turn is stored
// until Submit queues them or the reservation is destroyed (which frees what was not used).
// Move-only; must not outlive its scheduler. An empty reservation holds nothing.
class FitReservation {
 public:
  FitReservation() = default;
  FitReservation(FitReservation&& other) noexcept { *this = std::move(other); }
  FitReservation& operator=(FitReservation&& other) noexcept;
  FitReservation(const FitReservation&) = delete;
  FitReservation& operator=(const FitReservation&) = delete;
  ~FitReservation() { Release(); }

  size_t jobs() const { return jobs_; }
  uint64_t bytes() const { return bytes_; }

 private:
  friend class FitScheduler;
  void Release();

  FitScheduler* scheduler_ = nullptr;
  size_t jobs_ = 0;
  uint64_t bytes_ = 0;
};

class FitScheduler {
 public:
  // Called after a job's fit is stored, on the thread that stored it: the writer thread when
  // worker_nice > 0, else the worker. Not for fits found stored.
  using StoredCallback = std::function<void(const FitJob&)>;
  // Called after each fit this scheduler computed (stored or failed; not for fits found stored),
  // with the time it took, on the worker that computed it, before its awaiters are told. For
  // metrics.
  using DoneCallback =
      std::function<void(const FitJob&, absl::Duration elapsed, const absl::Status& status)>;

  // `store` must outlive the scheduler. num_threads: the workers; with none, Await answers
  // UNAVAILABLE for any fit not stored. max_queued: the bound of the background queue, and
  // separately of the urgent one (ThreadPool). worker_nice: 0 (workers at the process's priority)
  // to 19; the caller validates it (main.cc refuses other values of --fit_nice). queue: the byte
  // bound, batch size and observer of the background queue.
  FitScheduler(store::Store* store, int num_threads, size_t max_queued,
               StoredCallback on_stored = nullptr, DoneCallback on_done = nullptr,
               int worker_nice = 0, FitQueueOptions queue = {});
  FitScheduler(const FitScheduler&) = delete;
  FitScheduler& operator=(const FitScheduler&) = delete;
  ~FitScheduler();

  // Room for `jobs` jobs reading `bytes` raw KV bytes in all, at once; nullopt when the queue
  // (queued jobs plus reservations) has none, or after Shutdown.
  std::optional<FitReservation> TryReserve(size_t jobs, uint64_t bytes);

  // The same, waiting at most `wait` for the workers to take jobs from the queue. Told to the
  // observer (on_backpressure). RESOURCE_EXHAUSTED when the queue is still full: the message says
  // how full (jobs and bytes, naming --fit_queue and --fit_queue_mb) and how long it waited, and
  // carries a retry hint (WithRetryAfter: the wait, at least one second). UNAVAILABLE after
  // Shutdown.
  absl::StatusOr<FitReservation> Reserve(size_t jobs, uint64_t bytes, absl::Duration wait);

  // Queues the job for a background worker under one job of `reservation` (never refused, the
  // room was held for it); an empty reservation queues it as Submit(job) does. A worker skips it
  // when its fit is stored, or in flight for an awaiter, by the time it starts.
  void Submit(FitJob job, FitReservation& reservation);

  // Queues the job without a reservation; drops it (logged) when the queue is full.
  void Submit(FitJob job);

  // Keeps the job for the workers to run once the background queue is empty (see "Deferred fits"
  // above); never waits. Told to the observer (on_defer).
  void Defer(FitJob job);

  // Returns once the job's fit is stored: at once when it already is; otherwise it waits, at most
  // `wait`, for a worker to compute it (joining a run already in flight, or queuing the job ahead
  // of the background ones). Never computes on the calling thread.
  //
  // DEADLINE_EXCEEDED when the wait ran out (the fit goes on and is stored later; the message says
  // so, with how many jobs were queued), UNAVAILABLE after Shutdown or when it cannot be queued
  // (the urgent queue is full, or there are no workers), else the fit's or the store's own error
  // (shared by every awaiter of that run). A zero wait starts the fit without waiting for it.
  absl::Status Await(const FitJob& job, absl::Duration wait);

  // The error of the job's last run on this process when it failed (neither a success nor a
  // NotFound for a deleted session since); nullopt otherwise. Whether a fit is stored is the
  // store's to say (Store::GetFit).
  std::optional<absl::Status> LastFailure(const store::SessionKey& key, uint32_t turn,
                                          std::string_view method) const;

  // Forgets the failures of a deleted session.
  void ForgetSession(const store::SessionKey& key);

  // Stops the workers after their current job; drops the queued jobs and wakes their awaiters
  // (UNAVAILABLE). Idempotent.
  void Shutdown();

  // Jobs queued for the workers and not yet started, both the background ones and those queued
  // by Await.
  size_t queued() const;

  // Raw KV bytes the queued background jobs will read (the byte bound counts these plus the
  // reserved room).
  uint64_t queued_bytes() const;

  // Reserve calls waiting for room now.
  size_t waiting_for_room() const;

  // Deferred jobs not yet started.
  size_t deferred() const;

 private:
  using JobId = std::tuple<std::string, std::string, uint32_t, std::string>;
  struct InFlight;
  struct Queued {
    FitJob job;
    uint64_t bytes = 0;
    absl::Time since;  // When Submit queued it.
  };
  friend class FitReservation;

  static JobId IdOf(const FitJob& job);
  // Whether `jobs` more jobs of `bytes` fit beside the queued and reserved ones.
  bool HasRoom(size_t jobs, uint64_t bytes) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees room a reservation held and did not use.
  void Release(size_t jobs, uint64_t bytes);
  // Queues `item` (mu_ held by the caller) and starts a drain when fewer than num_threads_ run.
  void Enqueue(Queued item) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Starts a drain when fewer than num_threads_ run.
  void StartDrain() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves up to max_batch_ jobs of the first job's method out of `from` into `batch`.
  void TakeBatch(std::deque<Queued>& from, std::vector<Queued>& batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // On a worker: takes a batch from the background queue, runs it, then queues itself again while
  // jobs are left (so awaited fits, in the pool's urgent lane, go between batches).
  void Drain();
  // On a worker, for a Submit()ted job: runs it unless it is in flight already.
  void RunBackground(const FitJob& job);
  // On a worker: computes and stores the job's fit unless it is stored, records the outcome in
  // failed_, and finishes `flight` with it.
  void Run(const FitJob& job, const std::shared_ptr<InFlight>& flight);
  // Gives every awaiter of `flight` the status and forgets the flight; no-op once it finished.
  void Finish(const JobId& id, const std::shared_ptr<InFlight>& flight, const absl::Status& status);
  absl::Status Compute(const FitJob& job);
  absl::Status Store(const FitJob& job, const std::vector<std::string>& per_layer,
                     const std::string& summary);

  store::Store* const store_;
  const StoredCallback on_stored_;
  const DoneCallback on_done_;
  mutable absl::Mutex mu_;
  // Jobs queued by Await or running on a worker, until their run finishes: one run per job, which
  // every awaiter shares.
  std::map<JobId, std::shared_ptr<InFlight>> in_flight_ ABSL_GUARDED_BY(mu_);
  std::map<JobId, absl::Status> failed_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  // The background queue, oldest first, and what it and the reservations hold.
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  size_t reserved_jobs_ ABSL_GUARDED_BY(mu_) = 0;
  size_t waiting_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t reserved_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Deferred jobs, oldest first; taken only while queue_ is empty.
  std::deque<Queued> deferred_ ABSL_GUARDED_BY(mu_);
  // Drain tasks queued on the pool or running: at most num_threads_.
  int drainers_ ABSL_GUARDED_BY(mu_) = 0;
  const size_t max_queued_;
  const uint64_t max_queued_bytes_;
  const size_t max_batch_;
  const size_t max_deferred_;
  const FitQueueObserver observer_;
  const int num_threads_;
  const int worker_nice_;
  ThreadPool writer_;  // Normal priority; one thread when worker_nice_ > 0, none otherwise.
  ThreadPool pool_;    // The workers; shut down before writer_, which they may wait on.
};

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_FIT_SCHEDULER_H_
