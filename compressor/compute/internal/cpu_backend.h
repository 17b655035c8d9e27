// The CPU backend's class (CpuCompute() returns its one instance) and the helpers its two source
// files share: cpu_compute.cc holds the softmax and attention operations, cpu_rows.cc the row
// operations (k-means, the fold solve, top-k, gather, merged runs) and dtype conversion.
#ifndef NEXUSKV_COMPRESSOR_COMPUTE_INTERNAL_CPU_BACKEND_H_
#define NEXUSKV_COMPRESSOR_COMPUTE_INTERNAL_CPU_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "absl/status/status.h"
#include "compressor/compute/compute.h"

namespace nexuskv::compressor::internal::cpu {

class CpuBackend final : public ComputeBackend {
 public:
  std::string_view name() const override { return "cpu"; }
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
};

// c[rows, cols] = alpha * a[rows, k] b[cols, k]^T, all row-major (cblas_sgemm; k == 0 gives 0).
void GemmNt(int rows, int cols, int k, float alpha, const float* a, const float* b, float* c);

// c[rows, cols] = a[rows, k] b[k, cols], all row-major (cblas_sgemm; k == 0 gives 0).
void GemmNn(int rows, int cols, int k, const float* a, const float* b, float* c);

// Rows per block so that a block of `width`-wide logits stays within kLogitBlockFloats.
int BlockRows(size_t width, int rows);

}  // namespace nexuskv::compressor::internal::cpu

#endif  // NEXUSKV_COMPRESSOR_COMPUTE_INTERNAL_CPU_BACKEND_H_
