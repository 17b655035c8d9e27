// Test support: a ComputeBackend that forwards every operation to CpuCompute() and counts the
// calls, so a test can check that a method computes on the backend it was given (its results are
// the reference's, bit for bit). `fail_with` set: every operation returns that status instead, as
// a device out of memory would.
//
//   CountingCompute counting;
//   std::unique_ptr<Compressor> h2o = NewH2OCompressor(counting);
//   ... h2o->Fit(layer) ...
//   EXPECT_GT(counting.calls("AttentionMass"), 0);
#ifndef NEXUSKV_COMPRESSOR_TESTING_COUNTING_COMPUTE_H_
#define NEXUSKV_COMPRESSOR_TESTING_COUNTING_COMPUTE_H_

#include <map>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "compressor/compute/compute.h"

namespace nexuskv::compressor::testing {

class CountingCompute final : public ComputeBackend {
 public:
  // Calls of operation `op` ("AttentionMass", "Attend", ...) so far.
  int calls(std::string_view op) const {
    absl::MutexLock lock(&mu_);
    const auto it = calls_.find(std::string(op));
    return it == calls_.end() ? 0 : it->second;
  }
  // Calls of every operation so far.
  int total_calls() const {
    absl::MutexLock lock(&mu_);
    int total = 0;
    for (const auto& [op, n] : calls_) total += n;
    return total;
  }
  // OK: forward to CpuCompute(). Else every operation returns this status.
  void set_fail_with(absl::Status status) {
    absl::MutexLock lock(&mu_);
    fail_with_ = std::move(status);
  }

  std::string_view name() const override { return "counting"; }
  absl::Status Softmax(std::span<float> l, int r, int c, std::span<const int32_t> causal,
                       std::span<float> lse) const override {
    return Count("Softmax", [&] { return CpuCompute().Softmax(l, r, c, causal, lse); });
  }
  absl::Status AttentionMass(std::span<const AttentionMassItem> i,
                             std::span<float> mass) const override {
    return Count("AttentionMass", [&] { return CpuCompute().AttentionMass(i, mass); });
  }
  absl::Status Attend(std::span<const AttendItem> i, const AttendOutputs& o) const override {
    return Count("Attend", [&] { return CpuCompute().Attend(i, o); });
  }
  absl::Status ColumnLogSumExp(std::span<const ColumnLogSumExpItem> i,
                               std::span<double> o) const override {
    return Count("ColumnLogSumExp", [&] { return CpuCompute().ColumnLogSumExp(i, o); });
  }
  absl::Status WeightedKMeans(std::span<const KMeansItem> i, int it, std::span<float> c,
                              std::span<uint32_t> a) const override {
    return Count("WeightedKMeans", [&] { return CpuCompute().WeightedKMeans(i, it, c, a); });
  }
  absl::Status FoldVectors(std::span<const FoldItem> i, std::span<float> o) const override {
    return Count("FoldVectors", [&] { return CpuCompute().FoldVectors(i, o); });
  }
  absl::Status TopK(std::span<const float> s, std::span<const int64_t> r,
                    std::span<const int64_t> k, std::span<uint32_t> o) const override {
    return Count("TopK", [&] { return CpuCompute().TopK(s, r, k, o); });
  }
  absl::Status Gather(std::span<const GatherItem> i, std::span<float> o) const override {
    return Count("Gather", [&] { return CpuCompute().Gather(i, o); });
  }
  absl::Status MergeRuns(std::span<const MergeRunItem> i, std::span<float> k, std::span<float> v,
                         std::span<float> b) const override {
    return Count("MergeRuns", [&] { return CpuCompute().MergeRuns(i, k, v, b); });
  }
  absl::Status DecodeToFloat(std::span<const std::byte> s, DType t,
                             std::span<float> d) const override {
    return Count("DecodeToFloat", [&] { return CpuCompute().DecodeToFloat(s, t, d); });
  }
  absl::Status EncodeFromFloat(std::span<const float> s, DType t,
                               std::span<std::byte> d) const override {
    return Count("EncodeFromFloat", [&] { return CpuCompute().EncodeFromFloat(s, t, d); });
  }

 private:
  template <typename Forward>
  absl::Status Count(const char* op, Forward forward) const {
    absl::Status fail;
    {
      absl::MutexLock lock(&mu_);
      ++calls_[op];
      fail = fail_with_;
    }
    return fail.ok() ? forward() : fail;
  }

  mutable absl::Mutex mu_;
  mutable std::map<std::string, int> calls_ ABSL_GUARDED_BY(mu_);
  absl::Status fail_with_ ABSL_GUARDED_BY(mu_);
};

}  // namespace nexuskv::compressor::testing

#endif  // NEXUSKV_COMPRESSOR_TESTING_COUNTING_COMPUTE_H_
