// FallbackCompute: a device backend with the CPU behind it. Each operation runs on the device;
// when the device fails it (ResourceExhausted: a batch over --gpu_memory_mb or an allocation the
// device refused; Internal, Unavailable or any other device error) the same operation runs again on
// the fallback (CpuCompute(), the reference), so a fit or an answer never fails because a GPU was
// full or lost. InvalidArgument is the caller's bug on every backend and is returned as is.
//
//   auto compute = std::make_unique<FallbackCompute>(
//       *std::move(gpu), CpuCompute(),
//       [](std::string_view op, const absl::Status& error) { /* log, count */ });
//   auto registry = CompressorRegistry::Builtin(*compute);
//
// name() is the device's. Thread-safe: on_fallback may run on any calling thread, concurrently.
#ifndef NEXUSKV_COMPRESSOR_COMPUTE_FALLBACK_COMPUTE_H_
#define NEXUSKV_COMPRESSOR_COMPUTE_FALLBACK_COMPUTE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "compressor/compute/compute.h"

namespace nexuskv::compressor {

class FallbackCompute final : public ComputeBackend {
 public:
  // Called after `op` failed on the device with `error`, before it runs on the fallback.
  using FallbackCallback = std::function<void(std::string_view op, const absl::Status& error)>;

  // `fallback` must outlive this object.
  FallbackCompute(std::unique_ptr<ComputeBackend> device, const ComputeBackend& fallback,
                  FallbackCallback on_fallback = nullptr);

  // Operations the device failed and the fallback ran, since construction.
  uint64_t fallbacks() const { return fallbacks_.load(std::memory_order_relaxed); }
  const ComputeBackend& device() const { return *device_; }

  std::string_view name() const override { return device_->name(); }
  absl::Status Softmax(std::span<float> logits, int rows, int cols, std::span<const int32_t> causal,
                       std::span<float> log_sum_exp) const override;
  absl::Status AttentionMass(std::span<const AttentionMassItem> items,
                             std::span<float> mass) const override;
  absl::Status Attend(std::span<const AttendItem> items, const AttendOutputs& out) const override;
  absl::Status ColumnLogSumExp(std::span<const ColumnLogSumExpItem> items,
                               std::span<double> out) const override;
  absl::Status WeightedKMeans(std::span<const KMeansItem> items, int iterations,
                              std::span<float> centroids,
                              std::span<uint32_t> assignment) const override;
  absl::Status FoldVectors(std::span<const FoldItem> items, std::span<float> out) const override;
  absl::Status TopK(std::span<const float> scores, std::span<const int64_t> row_starts,
                    std::span<const int64_t> k, std::span<uint32_t> selected) const override;
  absl::Status Gather(std::span<const GatherItem> items, std::span<float> out) const override;
  absl::Status MergeRuns(std::span<const MergeRunItem> items, std::span<float> keys,
                         std::span<float> values, std::span<float> bias) const override;
  absl::Status DecodeToFloat(std::span<const std::byte> src, DType dtype,
                             std::span<float> dst) const override;
  absl::Status EncodeFromFloat(std::span<const float> src, DType dtype,
                               std::span<std::byte> dst) const override;

 private:
  // Runs op(device); on a device error, tells on_fallback_ and runs op(fallback).
  template <typename Op>
  absl::Status Run(std::string_view name, Op op) const;

  std::unique_ptr<ComputeBackend> device_;
  const ComputeBackend& fallback_;
  FallbackCallback on_fallback_;
  mutable std::atomic<uint64_t> fallbacks_{0};
};

}  // namespace nexuskv::compressor

#endif  // NEXUSKV_COMPRESSOR_COMPUTE_FALLBACK_COMPUTE_H_
