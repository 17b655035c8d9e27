// LatencyRecorder: every latency of one kind of call, for exact percentiles at the end of a run.
// Not thread-safe: one per client thread, merged afterwards.
#ifndef NEXUSKV_BENCH_LOAD_LATENCY_H_
#define NEXUSKV_BENCH_LOAD_LATENCY_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/time/time.h"

namespace nexuskv::load {

class LatencyRecorder {
 public:
  void Add(absl::Duration d) {
    ms_.push_back(absl::ToDoubleMilliseconds(d));
    sorted_ = false;
  }
  void Merge(const LatencyRecorder& other) {
    ms_.insert(ms_.end(), other.ms_.begin(), other.ms_.end());
    sorted_ = false;
  }
  uint64_t count() const { return ms_.size(); }

  // Nearest-rank percentile (p in (0, 100]) in milliseconds; 0 when empty.
  double PercentileMs(double p) const {
    if (ms_.empty()) return 0;
    Sort();
    const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * ms_.size()));
    return ms_[std::clamp<size_t>(rank, 1, ms_.size()) - 1];
  }
  double MaxMs() const { return ms_.empty() ? 0 : PercentileMs(100); }

 private:
  void Sort() const {
    if (!sorted_) std::sort(ms_.begin(), ms_.end());
    sorted_ = true;
  }
  mutable std::vector<double> ms_;
  mutable bool sorted_ = true;
};

}  // namespace nexuskv::load

#endif  // NEXUSKV_BENCH_LOAD_LATENCY_H_
