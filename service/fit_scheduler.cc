#include "service/fit_scheduler.h"

#include <utility>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "service/internal/layer_loader.h"

namespace nexuskv::service {

struct FitScheduler::InFlight {
  absl::Notification done;
  absl::Status status;
};

FitScheduler::FitScheduler(store::Store* store, int num_threads, size_t max_queued,
                           StoredCallback on_stored, DoneCallback on_done, int worker_nice)
    : store_(store),
      on_stored_(std::move(on_stored)),
      on_done_(std::move(on_done)),
      worker_nice_(worker_nice),
      writer_("fit-write", worker_nice > 0 ? 1 : 0, max_queued),
      pool_("fit", num_threads, max_queued, worker_nice) {}

FitScheduler::~FitScheduler() { Shutdown(); }

void FitScheduler::Shutdown() {
  pool_.ShutdownNow();  // Dropped jobs run again on demand.
  writer_.Shutdown();   // After the workers: a worker's current job may wait on it.
}

FitScheduler::JobId FitScheduler::IdOf(const FitJob& job) {
  return {job.key.tenant, job.key.session_id, job.record.turn(), std::string(job.method->name())};
}

void FitScheduler::Submit(FitJob job) {
  const bool queued = pool_.TrySchedule([this, job = std::move(job)] {
    const absl::Status status = RunOnce(job, /*on_worker=*/true);
    // A session deleted while its fit was queued is not an error worth more than a debug line.
    const LogLevel level =
        status.ok() || absl::IsNotFound(status) ? LogLevel::kDebug : LogLevel::kWarning;
    Log(level, "fit_done",
        {{"session", job.key.session_id},
         {"turn", job.record.turn()},
         {"method", job.method->name()},
         {"status", status.ToString()}});
  });
  if (!queued) {
    Log(LogLevel::kWarning, "fit_queue_full",
        {{"session", job.key.session_id},
         {"turn", job.record.turn()},
         {"method", job.method->name()},
         {"action", "computed on the next GetCache"}});
  }
}

absl::Status FitScheduler::Ensure(const FitJob& job) { return RunOnce(job, /*on_worker=*/false); }

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

absl::Status FitScheduler::RunOnce(const FitJob& job, bool on_worker) {
  const JobId id = IdOf(job);
  std::shared_ptr<InFlight> mine;
  std::shared_ptr<InFlight> theirs;
  {
    absl::MutexLock lock(&mu_);
    auto it = in_flight_.find(id);
    if (it != in_flight_.end()) {
      theirs = it->second;
    } else {
      mine = std::make_shared<InFlight>();
      in_flight_.emplace(id, mine);
    }
  }
  if (theirs) {
    theirs->done.WaitForNotification();
    return theirs->status;
  }
  absl::Status status;
  const absl::StatusOr<bool> stored =
      store_->HasFit(job.key, job.record.turn(), job.method->name());
  if (!stored.ok()) {
    status = stored.status();
  } else if (!*stored) {
    const absl::Time start = absl::Now();
    status = Compute(job, on_worker);
    if (on_done_) on_done_(job, absl::Now() - start, status);
  }
  mine->status = status;
  {
    absl::MutexLock lock(&mu_);
    in_flight_.erase(id);
    if (status.ok() || absl::IsNotFound(status)) {
      failed_.erase(id);
    } else {
      failed_.insert_or_assign(id, status);
    }
  }
  mine->done.Notify();
  return status;
}

absl::Status FitScheduler::Compute(const FitJob& job, bool on_worker) {
  const absl::Time start = absl::Now();
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
  absl::Status stored;
  if (on_worker && worker_nice_ > 0) {
    absl::Notification done;
    if (!writer_.Schedule([&] {
          stored = Store(job, per_layer, summary);
          done.Notify();
        })) {
      return absl::UnavailableError("the fit scheduler is shutting down");
    }
    done.WaitForNotification();
  } else {
    stored = Store(job, per_layer, summary);
  }
  NEXUSKV_RETURN_IF_ERROR(stored);
  Log(LogLevel::kDebug, "fit_stored",
      {{"session", job.key.session_id},
       {"turn", job.record.turn()},
       {"method", job.method->name()},
       {"ms", absl::ToDoubleMilliseconds(absl::Now() - start)}});
  return absl::OkStatus();
}

absl::Status FitScheduler::Store(const FitJob& job, const std::vector<std::string>& per_layer,
                                 const std::string& summary) {
  NEXUSKV_RETURN_IF_ERROR(
      store_->PutFit(job.key, job.record.turn(), job.method->name(), per_layer, summary));
  if (on_stored_) on_stored_(job);
  return absl::OkStatus();
}

}  // namespace nexuskv::service
