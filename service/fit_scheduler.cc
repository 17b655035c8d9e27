#include "service/fit_scheduler.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "service/internal/layer_loader.h"

namespace nexuskv::service {

// One run of a job, from the moment it is claimed (queued by Await, or started by a background
// worker) until Finish: the awaiters wait on `done`, then read `status`.
struct FitScheduler::InFlight {
  bool finished = false;  // Guarded by FitScheduler::mu_; set once, by Finish.
  absl::Status status;    // Written before done.Notify(), read after it.
  absl::Notification done;
};

FitScheduler::FitScheduler(store::Store* store, int num_threads, size_t max_queued,
                           StoredCallback on_stored, DoneCallback on_done, int worker_nice)
    : store_(store),
      on_stored_(std::move(on_stored)),
      on_done_(std::move(on_done)),
      num_threads_(num_threads),
      worker_nice_(worker_nice),
      writer_("fit-write", worker_nice > 0 ? 1 : 0, max_queued),
      pool_("fit", num_threads, max_queued, worker_nice) {}

FitScheduler::~FitScheduler() { Shutdown(); }

void FitScheduler::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    shut_down_ = true;  // No Await claims a job from here on.
  }
  pool_.ShutdownNow();  // Drops the queued jobs; waits for the running ones, which finish theirs.
  writer_.Shutdown();   // After the workers: a worker's current job may wait on it.
  // What is left in flight was dropped unrun (or claimed by an Await whose queuing failed, which
  // finishes it too: Finish runs once per flight).
  std::map<JobId, std::shared_ptr<InFlight>> dropped;
  {
    absl::MutexLock lock(&mu_);
    dropped = in_flight_;
  }
  for (const auto& [id, flight] : dropped) {
    Finish(id, flight, absl::UnavailableError("the fit scheduler shut down before the fit ran"));
  }
}

FitScheduler::JobId FitScheduler::IdOf(const FitJob& job) {
  return {job.key.tenant, job.key.session_id, job.record.turn(), std::string(job.method->name())};
}

void FitScheduler::Submit(FitJob job) {
  // A copy: the log below reads the job after a refused task (and its capture) is gone.
  if (!pool_.TrySchedule([this, job] { RunBackground(job); })) {
    Log(LogLevel::kWarning, "fit_queue_full",
        {{"session", job.key.session_id},
         {"turn", job.record.turn()},
         {"method", job.method->name()},
         {"action", "computed when a GetCache awaits it"}});
  }
}

absl::Status FitScheduler::Await(const FitJob& job, absl::Duration wait) {
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return absl::UnavailableError("the fit scheduler is shut down");
  }
  NEXUSKV_ASSIGN_OR_RETURN(const bool stored,
                           store_->HasFit(job.key, job.record.turn(), job.method->name()));
  if (stored) return absl::OkStatus();

  const JobId id = IdOf(job);
  std::shared_ptr<InFlight> flight;
  bool claimed = false;
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return absl::UnavailableError("the fit scheduler is shut down");
    if (num_threads_ <= 0) {
      return absl::UnavailableError(absl::StrCat("the ", std::string(job.method->name()),
                                                 " fit of turn ", job.record.turn(),
                                                 " is not stored and there are no fit workers"));
    }
    std::shared_ptr<InFlight>& slot = in_flight_[id];
    if (slot == nullptr) {
      slot = std::make_shared<InFlight>();
      claimed = true;
    }
    flight = slot;
  }
  if (claimed && !pool_.TryScheduleFirst([this, job, flight] { Run(job, flight); })) {
    Finish(id, flight,
           absl::UnavailableError(absl::StrCat(
               "the ", std::string(job.method->name()), " fit of turn ", job.record.turn(),
               " could not be queued (the fit scheduler is shutting down or ", pool_.queued_first(),
               " awaited fits are queued already)")));
  }
  if (!flight->done.WaitForNotificationWithTimeout(wait)) {  // An infinite wait never times out.
    // Two reads, so the lanes may have moved between them: a count, not an invariant.
    const size_t urgent = pool_.queued_first();
    const size_t all = pool_.queued();
    return absl::DeadlineExceededError(
        absl::StrCat("the ", std::string(job.method->name()), " fit of turn ", job.record.turn(),
                     " was not stored within ", absl::FormatDuration(wait),
                     "; it goes on and is stored later (fits queued: ", urgent, " awaited, ",
                     all > urgent ? all - urgent : 0, " background)"));
  }
  return flight->status;
}

std::optional<absl::Status> FitScheduler::LastFailure(const store::SessionKey& key, uint32_t turn,
                                                      std::string_view method) const {
  absl::MutexLock lock(&mu_);
  const auto it = failed_.find({key.tenant, key.session_id, turn, std::string(method)});
  if (it == failed_.end()) return std::nullopt;
  return it->second;
}

void FitScheduler::ForgetSession(const store::SessionKey& key) {
  absl::MutexLock lock(&mu_);
  auto it = failed_.lower_bound({key.tenant, key.session_id, 0, ""});
  while (it != failed_.end() && std::get<0>(it->first) == key.tenant &&
         std::get<1>(it->first) == key.session_id) {
    it = failed_.erase(it);
  }
}

void FitScheduler::RunBackground(const FitJob& job) {
  const JobId id = IdOf(job);
  auto flight = std::make_shared<InFlight>();
  {
    absl::MutexLock lock(&mu_);
    // In flight already: an awaiter queued it (and its worker runs it), or another worker runs it.
    if (!in_flight_.emplace(id, flight).second) return;
  }
  Run(job, flight);
}

void FitScheduler::Run(const FitJob& job, const std::shared_ptr<InFlight>& flight) {
  const JobId id = IdOf(job);
  absl::Status status;
  const absl::StatusOr<bool> stored =
      store_->HasFit(job.key, job.record.turn(), job.method->name());
  if (!stored.ok()) {
    status = stored.status();
  } else if (!*stored) {
    const absl::Time start = absl::Now();
    status = Compute(job);
    const absl::Duration elapsed = absl::Now() - start;
    if (on_done_) on_done_(job, elapsed, status);
    // A session deleted while its fit was queued is not an error worth more than a debug line.
    const LogLevel level =
        status.ok() || absl::IsNotFound(status) ? LogLevel::kDebug : LogLevel::kWarning;
    Log(level, "fit_done",
        {{"session", job.key.session_id},
         {"turn", job.record.turn()},
         {"method", job.method->name()},
         {"ms", absl::ToDoubleMilliseconds(elapsed)},
         {"status", status.ToString()}});
  }
  {
    absl::MutexLock lock(&mu_);
    if (status.ok() || absl::IsNotFound(status)) {
      failed_.erase(id);
    } else {
      failed_.insert_or_assign(id, status);
    }
  }
  Finish(id, flight, status);
}

void FitScheduler::Finish(const JobId& id, const std::shared_ptr<InFlight>& flight,
                          const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  if (flight->finished) return;
  flight->finished = true;
  const auto it = in_flight_.find(id);
  if (it != in_flight_.end() && it->second == flight) in_flight_.erase(it);
  flight->status = status;
  flight->done.Notify();
}

absl::Status FitScheduler::Compute(const FitJob& job) {
  std::vector<std::string> per_layer;
  per_layer.reserve(job.model.num_layers());
  for (uint32_t layer = 0; layer < job.model.num_layers(); ++layer) {
    NEXUSKV_ASSIGN_OR_RETURN(DecodedLayer decoded,
                             LoadDecodedLayer(*store_, job.key, job.model, job.record, layer,
                                              /*with_probes=*/true));
    NEXUSKV_ASSIGN_OR_RETURN(std::string fit, job.method->Fit(decoded.view));
    per_layer.push_back(std::move(fit));
  }
  const std::string summary = job.method->SummarizeFit(per_layer);
  if (worker_nice_ == 0) return Store(job, per_layer, summary);
  absl::Status stored;
  absl::Notification done;
  if (!writer_.Schedule([&] {
        stored = Store(job, per_layer, summary);
        done.Notify();
      })) {
    return absl::UnavailableError("the fit scheduler is shutting down");
  }
  done.WaitForNotification();
  return stored;
}

absl::Status FitScheduler::Store(const FitJob& job, const std::vector<std::string>& per_layer,
                                 const std::string& summary) {
  NEXUSKV_RETURN_IF_ERROR(
      store_->PutFit(job.key, job.record.turn(), job.method->name(), per_layer, summary));
  if (on_stored_) on_stored_(job);
  return absl::OkStatus();
}

}  // namespace nexuskv::service
