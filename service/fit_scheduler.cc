#include "service/fit_scheduler.h"

#include <algorithm>
#include <charconv>
#include <utility>
#include <vector>

#include "absl/strings/cord.h"
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

namespace {

// Rounded up, in the unit of the flag (--fit_queue_mb) unless under one.
std::string Size(uint64_t bytes) {
  if (bytes < (1ull << 20)) return absl::StrCat((bytes + 1023) >> 10, " KiB");
  return absl::StrCat((bytes + (1ull << 20) - 1) >> 20, " MiB");
}

}  // namespace

absl::Status WithRetryAfter(absl::Status status, absl::Duration after) {
  status.SetPayload(kRetryAfterPayload, absl::Cord(absl::StrCat(absl::ToInt64Milliseconds(after))));
  return status;
}

std::optional<absl::Duration> RetryAfterOf(const absl::Status& status) {
  const auto payload = status.GetPayload(kRetryAfterPayload);  // absl::optional here
  if (!payload) return std::nullopt;
  const std::string text(*payload);
  int64_t ms = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), ms);
  if (error != std::errc() || end != text.data() + text.size() || ms < 0) return std::nullopt;
  return absl::Milliseconds(ms);
}

FitReservation& FitReservation::operator=(FitReservation&& other) noexcept {
  if (this != &other) {
    Release();
    scheduler_ = std::exchange(other.scheduler_, nullptr);
    jobs_ = std::exchange(other.jobs_, 0);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void FitReservation::Release() {
  if (scheduler_ != nullptr && (jobs_ > 0 || bytes_ > 0)) scheduler_->Release(jobs_, bytes_);
  scheduler_ = nullptr;
  jobs_ = 0;
  bytes_ = 0;
}

FitScheduler::FitScheduler(store::Store* store, int num_threads, size_t max_queued,
                           StoredCallback on_stored, DoneCallback on_done, int worker_nice,
                           FitQueueOptions queue)
    : store_(store),
      on_stored_(std::move(on_stored)),
      on_done_(std::move(on_done)),
      max_queued_(max_queued),
      max_queued_bytes_(queue.max_queued_bytes),
      max_batch_(std::max<size_t>(queue.max_batch, 1)),
      max_deferred_(queue.max_deferred),
      observer_(std::move(queue.observer)),
      num_threads_(num_threads),
      worker_nice_(worker_nice),
      writer_("fit-write", worker_nice > 0 ? 1 : 0, max_queued),
      // The background lane holds only drain tasks (at most num_threads); the urgent lane holds
      // the jobs Await queues, max_queued of them.
      pool_("fit", num_threads, std::max<size_t>(max_queued, std::max(num_threads, 0)),
            worker_nice) {}

FitScheduler::~FitScheduler() { Shutdown(); }

void FitScheduler::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    shut_down_ = true;  // No Await claims a job from here on; Reserve waiters wake and give up.
    queue_.clear();     // Background jobs have no awaiters (an awaited job is in the pool).
    deferred_.clear();
    queued_bytes_ = 0;
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

bool FitScheduler::HasRoom(size_t jobs, uint64_t bytes) const {
  const size_t held = queue_.size() + reserved_jobs_;
  if (held == 0) return true;  // An empty queue takes any one append, however large.
  if (held + jobs > max_queued_) return false;
  return max_queued_bytes_ == 0 || queued_bytes_ + reserved_bytes_ + bytes <= max_queued_bytes_;
}

std::optional<FitReservation> FitScheduler::TryReserve(size_t jobs, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  if (shut_down_ || !HasRoom(jobs, bytes)) return std::nullopt;
  reserved_jobs_ += jobs;
  reserved_bytes_ += bytes;
  FitReservation reservation;
  reservation.scheduler_ = this;
  reservation.jobs_ = jobs;
  reservation.bytes_ = bytes;
  return reservation;
}

absl::StatusOr<FitReservation> FitScheduler::Reserve(size_t jobs, uint64_t bytes,
                                                     absl::Duration wait) {
  FitReservation reservation;
  std::string full;
  bool waited = false;
  bool granted = false;
  {
    absl::MutexLock lock(&mu_);
    const auto room = [this, jobs, bytes]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return shut_down_ || HasRoom(jobs, bytes);
    };
    if (!room()) {
      waited = true;
      ++waiting_;
      mu_.AwaitWithTimeout(absl::Condition(&room), wait);
      --waiting_;
    }
    if (shut_down_) return absl::UnavailableError("the fit scheduler is shut down");
    if (HasRoom(jobs, bytes)) {
      reserved_jobs_ += jobs;
      reserved_bytes_ += bytes;
      reservation.scheduler_ = this;
      reservation.jobs_ = jobs;
      reservation.bytes_ = bytes;
      granted = true;
    } else {
      full = absl::StrCat(queue_.size() + reserved_jobs_, " of ", max_queued_,
                          " fits queued (--fit_queue)");
      if (max_queued_bytes_ > 0) {
        absl::StrAppend(&full, ", ", Size(queued_bytes_ + reserved_bytes_), " of ",
                        Size(max_queued_bytes_), " of raw KV to fit (--fit_queue_mb)");
      }
    }
  }
  if (waited && observer_.on_backpressure) observer_.on_backpressure(granted);
  if (granted) return reservation;
  const absl::Duration retry = std::max(wait, absl::Seconds(1));
  return WithRetryAfter(
      absl::ResourceExhaustedError(
          absl::StrCat("the compression queue is full: ", full, "; this turn's ", jobs, " fits (",
                       Size(bytes), ") found no room within ", absl::ToInt64Milliseconds(wait),
                       " ms (--fit_backpressure_ms); retry in ", absl::ToInt64Milliseconds(retry),
                       " ms or later, with backoff")),
      retry);
}

void FitScheduler::Release(size_t jobs, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  reserved_jobs_ -= std::min(jobs, reserved_jobs_);
  reserved_bytes_ -= std::min(bytes, reserved_bytes_);
}

void FitScheduler::Submit(FitJob job, FitReservation& reservation) {
  if (reservation.scheduler_ != this || reservation.jobs_ == 0) return Submit(std::move(job));
  const uint64_t bytes = job.record.raw_bytes();
  absl::MutexLock lock(&mu_);
  // The job takes the room held for it; a job larger than what is left of the bytes held is
  // queued all the same (the room was granted for the append as a whole).
  const uint64_t held = std::min(bytes, reservation.bytes_);
  reservation.jobs_ -= 1;
  reservation.bytes_ -= held;
  reserved_jobs_ -= std::min<size_t>(1, reserved_jobs_);
  reserved_bytes_ -= std::min(held, reserved_bytes_);
  if (shut_down_) return;
  Enqueue(Queued{std::move(job), bytes, absl::Now()});
}

void FitScheduler::Submit(FitJob job) {
  absl::MutexLock lock(&mu_);
  const uint64_t bytes = job.record.raw_bytes();
  if (shut_down_ || !HasRoom(1, bytes)) {
    Log(LogLevel::kWarning, "fit_queue_full",
        {{"session", job.key.session_id},
         {"turn", job.record.turn()},
         {"method", job.method->name()},
         {"action", "computed when a GetCache awaits it"}});
    return;
  }
  Enqueue(Queued{std::move(job), bytes, absl::Now()});
}

void FitScheduler::Defer(FitJob job) {
  bool dropped_oldest = false;
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    const uint64_t bytes = job.record.raw_bytes();
    deferred_.push_back(Queued{std::move(job), bytes, absl::Now()});
    if (deferred_.size() > max_deferred_) {  // With max_deferred_ 0, the job just deferred.
      const FitJob& oldest = deferred_.front().job;
      Log(LogLevel::kWarning, "fit_deferred_dropped",
          {{"session", oldest.key.session_id},
           {"turn", oldest.record.turn()},
           {"method", oldest.method->name()},
           {"action", "computed when a GetCache awaits it"}});
      deferred_.pop_front();
      dropped_oldest = true;
    }
    if (!deferred_.empty()) StartDrain();
  }
  if (observer_.on_defer) observer_.on_defer(dropped_oldest);
}

void FitScheduler::Enqueue(Queued item) {
  queued_bytes_ += item.bytes;
  queue_.push_back(std::move(item));
  StartDrain();
}

void FitScheduler::StartDrain() {
  if (drainers_ >= num_threads_) return;  // Each running drain queues itself again.
  ++drainers_;
  // The pool's lock is taken under mu_ (never the other way round: its tasks run unlocked).
  if (!pool_.TrySchedule([this] { Drain(); })) --drainers_;
}

void FitScheduler::TakeBatch(std::deque<Queued>& from, std::vector<Queued>& batch) {
  if (from.empty()) return;
  // The oldest job's method, then the next jobs of that method in queue order.
  const compressor::Compressor* method = from.front().job.method;
  for (auto it = from.begin(); it != from.end() && batch.size() < max_batch_;) {
    if (it->job.method != method) {
      ++it;
      continue;
    }
    batch.push_back(std::move(*it));
    it = from.erase(it);
  }
}

void FitScheduler::Drain() {
  std::vector<Queued> batch;
  bool from_queue = true;  // Taken from queue_ (whose bytes are counted), else from deferred_.
  {
    absl::MutexLock lock(&mu_);
    TakeBatch(queue_, batch);
    for (const Queued& item : batch) queued_bytes_ -= std::min(item.bytes, queued_bytes_);
    if (batch.empty()) {
      from_queue = false;
      TakeBatch(deferred_, batch);
    }
  }
  const absl::Time start = absl::Now();
  std::vector<absl::Duration> waited;
  waited.reserve(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    if (i > 0 && pool_.queued_first() > 0) {
      // An awaited fit is queued: it goes first, the jobs not started go back to the head.
      absl::MutexLock lock(&mu_);
      if (shut_down_) break;
      for (size_t j = batch.size(); j > i; --j) {
        if (from_queue) {
          queued_bytes_ += batch[j - 1].bytes;
          queue_.push_front(std::move(batch[j - 1]));
        } else {
          deferred_.push_front(std::move(batch[j - 1]));
        }
      }
      break;
    }
    {
      absl::MutexLock lock(&mu_);
      if (shut_down_) break;
    }
    waited.push_back(start - batch[i].since);
    RunBackground(batch[i].job);
  }
  if (!waited.empty() && observer_.on_batch) observer_.on_batch(waited, absl::Now() - start);
  {
    absl::MutexLock lock(&mu_);
    if ((queue_.empty() && deferred_.empty()) || shut_down_) {
      --drainers_;
      return;
    }
    // Queued again rather than looping here, so that the urgent lane goes between batches.
    if (!pool_.TrySchedule([this] { Drain(); })) --drainers_;
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
    const size_t all = queued();
    return absl::DeadlineExceededError(
        absl::StrCat("the ", std::string(job.method->name()), " fit of turn ", job.record.turn(),
                     " was not stored within ", absl::FormatDuration(wait),
                     "; it goes on and is stored later (fits queued: ", urgent, " awaited, ",
                     all > urgent ? all - urgent : 0, " background)"));
  }
  return flight->status;
}

size_t FitScheduler::queued() const {
  size_t background;
  {
    absl::MutexLock lock(&mu_);
    background = queue_.size();
  }
  return background + pool_.queued_first();
}

uint64_t FitScheduler::queued_bytes() const {
  absl::MutexLock lock(&mu_);
  return queued_bytes_;
}

size_t FitScheduler::waiting_for_room() const {
  absl::MutexLock lock(&mu_);
  return waiting_;
}

size_t FitScheduler::deferred() const {
  absl::MutexLock lock(&mu_);
  return deferred_.size();
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
