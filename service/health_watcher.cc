#include "service/health_watcher.h"

#include <utility>

#include "common/log.h"

namespace nexuskv::service {

HealthWatcher::HealthWatcher(Check check, Publish publish, absl::Duration period)
    : check_(std::move(check)), publish_(std::move(publish)), period_(period) {}

HealthWatcher::~HealthWatcher() { Stop(); }

void HealthWatcher::Start() {
  CheckNow();
  thread_ = std::thread([this] {
    while (!stop_.WaitForNotificationWithTimeout(period_)) CheckNow();
  });
}

absl::Status HealthWatcher::CheckNow() {
  absl::MutexLock lock(&mu_);
  if (stop_.HasBeenNotified()) return absl::CancelledError("the health watcher is stopped");
  const absl::Status status = check_();
  if (serving_ != status.ok()) {
    const bool first = !serving_.has_value();
    serving_ = status.ok();
    publish_(status.ok());
    if (!first || !status.ok()) {
      Log(status.ok() ? LogLevel::kInfo : LogLevel::kWarning, "health_changed",
          {{"serving", status.ok()}, {"status", status.ToString()}});
    }
  }
  return status;
}

void HealthWatcher::Stop() {
  {
    absl::MutexLock lock(&mu_);  // Waits for a check in progress to publish.
    if (!stop_.HasBeenNotified()) stop_.Notify();
  }
  if (thread_.joinable()) thread_.join();
}

std::optional<bool> HealthWatcher::serving() const {
  absl::MutexLock lock(&mu_);
  return serving_;
}

}  // namespace nexuskv::service
