#include "compressor/compute/fallback_compute.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace nexuskv::compressor {

FallbackCompute::FallbackCompute(std::unique_ptr<ComputeBackend> device,
                                 const ComputeBackend& fallback, FallbackCallback on_fallback)
    : device_(std::move(device)), fallback_(fallback), on_fallback_(std::move(on_fallback)) {}

template <typename Op>
absl::Status FallbackCompute::Run(std::string_view name, Op op) const {
  absl::Status status = op(*device_);
  if (status.ok() || absl::IsInvalidArgument(status)) return status;
  fallbacks_.fetch_add(1, std::memory_order_relaxed);
  if (on_fallback_) on_fallback_(name, status);
  return op(fallback_);
}

absl::Status FallbackCompute::Softmax(std::span<float> logits, int rows, int cols,
                                      std::span<const int32_t> causal,
                                      std::span<float> log_sum_exp) const {
  // The device works in place: the fallback must start from the caller's logits, not from what a
  // failed device call left there.
  std::vector<float> input(logits.begin(), logits.end());
  return Run("Softmax", [&](const ComputeBackend& b) {
    std::copy(input.begin(), input.end(), logits.begin());
    return b.Softmax(logits, rows, cols, causal, log_sum_exp);
  });
}

absl::Status FallbackCompute::AttentionMass(std::span<const AttentionMassItem> items,
                                            std::span<float> mass) const {
  return Run("AttentionMass",
             [&](const ComputeBackend& b) { return b.AttentionMass(items, mass); });
}

absl::Status FallbackCompute::Attend(std::span<const AttendItem> items,
                                     const AttendOutputs& out) const {
  return Run("Attend", [&](const ComputeBackend& b) { return b.Attend(items, out); });
}

absl::Status FallbackCompute::ColumnLogSumExp(std::span<const ColumnLogSumExpItem> items,
                                              std::span<double> out) const {
  return Run("ColumnLogSumExp",
             [&](const ComputeBackend& b) { return b.ColumnLogSumExp(items, out); });
}

absl::Status FallbackCompute::WeightedKMeans(std::span<const KMeansItem> items, int iterations,
                                             std::span<float> centroids,
                                             std::span<uint32_t> assignment) const {
  return Run("WeightedKMeans", [&](const ComputeBackend& b) {
    return b.WeightedKMeans(items, iterations, centroids, assignment);
  });
}

absl::Status FallbackCompute::FoldVectors(std::span<const FoldItem> items,
                                          std::span<float> out) const {
  return Run("FoldVectors", [&](const ComputeBackend& b) { return b.FoldVectors(items, out); });
}

absl::Status FallbackCompute::TopK(std::span<const float> scores,
                                   std::span<const int64_t> row_starts, std::span<const int64_t> k,
                                   std::span<uint32_t> selected) const {
  return Run("TopK",
             [&](const ComputeBackend& b) { return b.TopK(scores, row_starts, k, selected); });
}

absl::Status FallbackCompute::Gather(std::span<const GatherItem> items,
                                     std::span<float> out) const {
  return Run("Gather", [&](const ComputeBackend& b) { return b.Gather(items, out); });
}

absl::Status FallbackCompute::MergeRuns(std::span<const MergeRunItem> items, std::span<float> keys,
                                        std::span<float> values, std::span<float> bias) const {
  return Run("MergeRuns",
             [&](const ComputeBackend& b) { return b.MergeRuns(items, keys, values, bias); });
}

absl::Status FallbackCompute::DecodeToFloat(std::span<const std::byte> src, DType dtype,
                                            std::span<float> dst) const {
  return Run("DecodeToFloat",
             [&](const ComputeBackend& b) { return b.DecodeToFloat(src, dtype, dst); });
}

absl::Status FallbackCompute::EncodeFromFloat(std::span<const float> src, DType dtype,
                                              std::span<std::byte> dst) const {
  return Run("EncodeFromFloat",
             [&](const ComputeBackend& b) { return b.EncodeFromFloat(src, dtype, dst); });
}

}  // namespace nexuskv::compressor
