// Registry: counters, gauges and histograms with labels, rendered in the Prometheus text
// exposition format (version 0.0.4) for a /metrics endpoint (see http_exporter.h).
//
//   metrics::Registry registry;
//   NEXUSKV_ASSIGN_OR_RETURN(metrics::CounterFamily * rpcs,
//                            registry.AddCounter("app_rpcs_total", "RPCs served.", {"code"}));
//   rpcs->With({"OK"}).Increment();
//   std::string text = registry.Exposition();
//   // # HELP app_rpcs_total RPCs served.
//   // # TYPE app_rpcs_total counter
//   // app_rpcs_total{code="OK"} 1
//
// Families are rendered in the order they were added, their series sorted by label values. A
// family added with AddGaugeCallback is computed at scrape time by its callback (for values that
// another component already tracks, such as RocksDB properties), never stored.
//
// Thread-safe: updates, With() and Exposition() may run concurrently from any thread. Values are
// atomics; With() takes a family mutex, so callers on hot paths may keep the returned reference
// (it stays valid for the registry's lifetime).
#ifndef NEXUSKV_METRICS_REGISTRY_H_
#define NEXUSKV_METRICS_REGISTRY_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace nexuskv::metrics {

// A value that only goes up (events, bytes). Starts at 0.
class Counter {
 public:
  // `amount` must be >= 0; negative amounts are ignored (a counter never goes down).
  void Increment(double amount = 1.0);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// A value that goes up and down (queue depth, bytes held). Starts at 0.
class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double amount) { value_.fetch_add(amount, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Observations counted into fixed buckets (upper bounds, inclusive), plus their sum and count.
class Histogram {
 public:
  explicit Histogram(const std::vector<double>* bounds);
  void Observe(double value);

  struct Snapshot {
    std::vector<uint64_t> cumulative;  // One per bound, then +Inf (== count).
    double sum = 0.0;
  };
  Snapshot Read() const;

 private:
  const std::vector<double>* const bounds_;          // Owned by the family; strictly increasing.
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // bounds_->size() + 1 (the last: +Inf).
  std::atomic<double> sum_{0.0};
};

// The series of one metric, one per combination of label values.
template <typename Series>
class Family {
 public:
  // The series with these label values, created at 0 on first use. `values` must hold exactly
  // one value per label name of the family: any other count is a programming error and aborts
  // the process with a message naming the family.
  Series& With(const std::vector<std::string>& values);

 private:
  friend class Registry;
  Family(std::string name, size_t num_labels, std::vector<double> bounds = {})
      : name_(std::move(name)), num_labels_(num_labels), bounds_(std::move(bounds)) {}

  const std::string name_;
  const size_t num_labels_;
  const std::vector<double> bounds_;  // Histograms only.
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<Series>> series_ ABSL_GUARDED_BY(mu_);
};

using CounterFamily = Family<Counter>;
using GaugeFamily = Family<Gauge>;
using HistogramFamily = Family<Histogram>;

// One series of a gauge computed at scrape time.
struct GaugeSample {
  std::vector<std::string> label_values;  // One per label name of the family.
  double value = 0.0;
};

class Registry {
 public:
  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Each Add* returns the new family, owned by the registry. InvalidArgument for a metric name
  // outside [a-zA-Z_:][a-zA-Z0-9_:]*, a label name outside [a-zA-Z_][a-zA-Z0-9_]* (or starting
  // with "__", or "le" on a histogram), a repeated label name, or bucket bounds that are empty,
  // not finite or not strictly increasing; AlreadyExists for a name already added.
  absl::StatusOr<CounterFamily*> AddCounter(std::string_view name, std::string_view help,
                                            std::vector<std::string> label_names);
  absl::StatusOr<GaugeFamily*> AddGauge(std::string_view name, std::string_view help,
                                        std::vector<std::string> label_names);
  absl::StatusOr<HistogramFamily*> AddHistogram(std::string_view name, std::string_view help,
                                                std::vector<std::string> label_names,
                                                std::vector<double> bounds);
  // A gauge family whose series `collect` returns at each scrape (called from the scraping
  // thread, so it must be thread-safe and cheap). Samples whose label value count does not match
  // the family are dropped. Errors as above.
  absl::Status AddGaugeCallback(std::string_view name, std::string_view help,
                                std::vector<std::string> label_names,
                                std::function<std::vector<GaugeSample>()> collect);

  // Every family in the text exposition format 0.0.4, each line ending in "\n". A family with no
  // series yet prints its HELP and TYPE lines only.
  std::string Exposition() const;

 private:
  struct Entry;
  absl::Status Admit(std::string_view name, const std::vector<std::string>& label_names,
                     bool histogram) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Entry>> entries_ ABSL_GUARDED_BY(mu_);
};

// The content type of Registry::Exposition() for an HTTP response.
inline constexpr std::string_view kExpositionContentType =
    "text/plain; version=0.0.4; charset=utf-8";

}  // namespace nexuskv::metrics

#endif  // NEXUSKV_METRICS_REGISTRY_H_
