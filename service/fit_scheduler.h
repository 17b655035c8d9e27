// FitScheduler: computes and stores per-turn compression fits on its own workers, never on the
// threads that serve RPCs.
//
// After a turn is acknowledged, AppendSegment submits one job per method that has a fit; a bounded
// pool of workers runs them (each job: decode every layer, Compressor::Fit, Store::PutFit in one
// batch, with the method's SummarizeFit as the fit's summary), then calls the on_stored callback.
// When the background queue is full a job is dropped and logged, not lost: a GetCache that needs
// the fit calls Await(), which queues it again ahead of the background jobs.
//
//   absl::Status fit = fits.Await(job, absl::Milliseconds(500));
//   if (absl::IsDeadlineExceeded(fit)) { /* serve the fallback, say so in the answer's notes */ }
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
// Thread-safe. Shutdown() stops the workers; queued jobs are dropped, and their awaiters get
// UNAVAILABLE.
#ifndef NEXUSKV_SERVICE_FIT_SCHEDULER_H_
#define NEXUSKV_SERVICE_FIT_SCHEDULER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
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
  // to 19; the caller validates it (main.cc refuses other values of --fit_nice).
  FitScheduler(store::Store* store, int num_threads, size_t max_queued,
               StoredCallback on_stored = nullptr, DoneCallback on_done = nullptr,
               int worker_nice = 0);
  FitScheduler(const FitScheduler&) = delete;
  FitScheduler& operator=(const FitScheduler&) = delete;
  ~FitScheduler();

  // Queues the job for a background worker; drops it (logged) when the queue is full. A worker
  // skips it when its fit is stored, or in flight for an awaiter, by the time it starts.
  void Submit(FitJob job);

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
  size_t queued() const { return pool_.queued(); }

 private:
  using JobId = std::tuple<std::string, std::string, uint32_t, std::string>;
  struct InFlight;

  static JobId IdOf(const FitJob& job);
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
  const int num_threads_;
  const int worker_nice_;
  ThreadPool writer_;  // Normal priority; one thread when worker_nice_ > 0, none otherwise.
  ThreadPool pool_;    // The workers; shut down before writer_, which they may wait on.
};

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_FIT_SCHEDULER_H_
