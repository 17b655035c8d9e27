// FitScheduler: computes and stores per-turn compression fits off the request path.
//
// After a turn is acknowledged, AppendSegment submits one job per method that has a fit; a bounded
// pool of workers runs them (each job: decode every layer, Compressor::Fit, Store::PutFit in one
// batch, with the method's SummarizeFit as the fit's summary), then calls the on_stored callback.
// When the queue is full a job is dropped and logged, not lost: GetCache calls Ensure(), which
// waits for a job already running for that (session, turn, method) or runs it inline.
//
// Priority: with worker_nice > 0 the workers run that many nice levels below the threads that
// serve RPCs (per thread; see ThreadPool), so background fits take the CPU the RPCs leave idle
// instead of starving them. A fit run inline by Ensure() runs on the caller's thread at its
// priority. A GetCache that waits in Ensure() for a job a worker is running waits at the worker's
// priority: under load that fit finishes later than it would at nice 0. A niced worker only
// computes: Store::PutFit (which holds the session's lock through a synced write) and on_stored
// run on one writer thread at normal priority, so that appends do not wait on a session lock held
// by a thread the scheduler keeps off the CPU (priority inversion). The worker's reads take only
// RocksDB's short internal locks.
//
// Thread-safe. Shutdown() stops the workers; queued jobs are dropped (Ensure recomputes on demand).
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
  const compressor::Compressor* method = nullptr;  // Registry-owned; has_fit() is true.
};

class FitScheduler {
 public:
  // Called after a job's fit is stored (on the thread that stored it: the writer thread for
  // background fits when worker_nice > 0; not for fits found stored).
  using StoredCallback = std::function<void(const FitJob&)>;
  // Called after each fit this scheduler computed (stored or failed; not for fits found stored),
  // with the time it took, on the thread that computed it. For metrics.
  using DoneCallback =
      std::function<void(const FitJob&, absl::Duration elapsed, const absl::Status& status)>;

  // `store` must outlive the scheduler. worker_nice: 0 (workers at the process's priority) to 19;
  // the caller validates it (main.cc refuses other values of --fit_nice).
  FitScheduler(store::Store* store, int num_threads, size_t max_queued,
               StoredCallback on_stored = nullptr, DoneCallback on_done = nullptr,
               int worker_nice = 0);
  FitScheduler(const FitScheduler&) = delete;
  FitScheduler& operator=(const FitScheduler&) = delete;
  ~FitScheduler();

  // Queues the job for a background worker; drops it (logged) when the queue is full.
  void Submit(FitJob job);

  // Returns once the job's fit is stored: immediately when it already is, after waiting when a
  // worker is running it, or after running it on the calling thread. Errors of the fit or the
  // store pass through.
  absl::Status Ensure(const FitJob& job);

  // The error of the job's last run on this process when it failed (neither a success nor a
  // NotFound for a deleted session since); nullopt otherwise. Whether a fit is stored is the
  // store's to say (Store::GetFit).
  std::optional<absl::Status> LastFailure(const store::SessionKey& key, uint32_t turn,
                                          std::string_view method) const;

  // Forgets the failures of a deleted session.
  void ForgetSession(const store::SessionKey& key);

  // Stops the workers after their current job. Idempotent.
  void Shutdown();

  // Jobs queued for the workers and not yet started.
  size_t queued() const { return pool_.queued(); }

 private:
  using JobId = std::tuple<std::string, std::string, uint32_t, std::string>;
  struct InFlight;

  static JobId IdOf(const FitJob& job);
  // Runs the job unless it is stored already or in flight (then waits for that run).
  absl::Status RunOnce(const FitJob& job, bool on_worker);
  absl::Status Compute(const FitJob& job, bool on_worker);
  absl::Status Store(const FitJob& job, const std::vector<std::string>& per_layer,
                     const std::string& summary);

  store::Store* const store_;
  const StoredCallback on_stored_;
  const DoneCallback on_done_;
  mutable absl::Mutex mu_;
  std::map<JobId, std::shared_ptr<InFlight>> in_flight_ ABSL_GUARDED_BY(mu_);
  std::map<JobId, absl::Status> failed_ ABSL_GUARDED_BY(mu_);
  const int worker_nice_;
  ThreadPool writer_;  // Normal priority; one thread when worker_nice_ > 0, none otherwise.
  ThreadPool pool_;    // The workers; shut down before writer_, which they may wait on.
};

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_FIT_SCHEDULER_H_
