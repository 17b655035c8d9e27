// HealthWatcher: keeps the grpc.health.v1 serving status in step with whether the store can
// write (Store::CheckWritable): NOT_SERVING while appends would be refused (disk reserve hit,
// read-only filesystem, RocksDB stopped by a background error), SERVING again once they would
// not. Reads keep working either way; the status tells a load balancer or a Kubernetes readiness
// probe to stop sending new sessions here.
//
//   HealthWatcher watcher([&] { return store->CheckWritable(); },
//                         [&](bool serving) { health->SetServingStatus(serving); },
//                         absl::Seconds(5));
//   watcher.Start();   // checks now, then every period, on its own thread
//   ...
//   watcher.Stop();    // before the server turns NOT_SERVING for shutdown
//
// `publish` is called on the first check and then only when the answer changes; each change is
// logged with the check's status. Thread-safe.
#ifndef NEXUSKV_SERVICE_HEALTH_WATCHER_H_
#define NEXUSKV_SERVICE_HEALTH_WATCHER_H_

#include <functional>
#include <optional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace nexuskv::service {

class HealthWatcher {
 public:
  using Check = std::function<absl::Status()>;
  using Publish = std::function<void(bool serving)>;

  // `period` > 0 for Start(). Nothing runs until Start() or CheckNow().
  HealthWatcher(Check check, Publish publish, absl::Duration period);
  HealthWatcher(const HealthWatcher&) = delete;
  HealthWatcher& operator=(const HealthWatcher&) = delete;
  ~HealthWatcher();  // Stop()

  // Starts the thread: a check now, then one every period until Stop(). Call once.
  void Start();

  // Runs one check and publishes its answer if it changed; returns the check's status. Nothing is
  // published after Stop().
  absl::Status CheckNow();

  // Stops the thread; from then on nothing is published (so shutdown's NOT_SERVING sticks).
  // Idempotent.
  void Stop();

  // The last published answer; nullopt before the first check.
  std::optional<bool> serving() const;

 private:
  const Check check_;
  const Publish publish_;
  const absl::Duration period_;
  absl::Notification stop_;
  std::thread thread_;
  mutable absl::Mutex mu_;  // Serializes checks, so answers are published in order.
  std::optional<bool> serving_ ABSL_GUARDED_BY(mu_);
};

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_HEALTH_WATCHER_H_
