// The input checks of every operation of compute.h, written once: each backend calls the check of
// an operation before it computes, so that a bad batch gets the same InvalidArgument (naming the
// operation, the item and the field) from the CPU reference and from a device backend, before
// anything is copied or launched.
//
//   absl::Status CpuBackend::Gather(std::span<const GatherItem> items, std::span<float> out) const
//   {
//     NEXUSKV_RETURN_IF_ERROR(CheckGather(items, out));
//     ...
//
// Pure; each returns OkStatus when the batch meets the operation's contract in compute.h.
#ifndef NEXUSKV_COMPRESSOR_COMPUTE_CONTRACT_H_
#define NEXUSKV_COMPRESSOR_COMPUTE_CONTRACT_H_

#include <cstdint>
#include <span>
#include <string_view>

#include "absl/status/status.h"
#include "compressor/compute/compute.h"
#include "tensor/dtype.h"

namespace nexuskv::compressor {

absl::Status CheckSoftmax(std::span<const float> logits, int rows, int cols,
                          std::span<const int32_t> causal, std::span<const float> log_sum_exp);
absl::Status CheckAttentionMass(std::span<const AttentionMassItem> items,
                                std::span<const float> mass);
absl::Status CheckAttend(std::span<const AttendItem> items, const AttendOutputs& out);
absl::Status CheckColumnLogSumExp(std::span<const ColumnLogSumExpItem> items,
                                  std::span<const double> out);
absl::Status CheckWeightedKMeans(std::span<const KMeansItem> items, int iterations,
                                 std::span<const float> centroids,
                                 std::span<const uint32_t> assignment);
absl::Status CheckFoldVectors(std::span<const FoldItem> items, std::span<const float> out);
absl::Status CheckTopK(std::span<const float> scores, std::span<const int64_t> row_starts,
                       std::span<const int64_t> k, std::span<const uint32_t> selected);
absl::Status CheckGather(std::span<const GatherItem> items, std::span<const float> out);
absl::Status CheckMergeRuns(std::span<const MergeRunItem> items, std::span<const float> keys,
                            std::span<const float> values, std::span<const float> bias);
// Decode: src holds dst.size() elements of dtype; encode: dst holds src.size() elements.
absl::Status CheckDecodeToFloat(std::span<const std::byte> src, DType dtype,
                                std::span<const float> dst);
absl::Status CheckEncodeFromFloat(std::span<const float> src, DType dtype,
                                  std::span<const std::byte> dst);

// InvalidArgument "<op>: item <item>: <why>", for checks an operation adds of its own.
absl::Status BadItem(std::string_view op, size_t item, std::string_view why);

}  // namespace nexuskv::compressor

#endif  // NEXUSKV_COMPRESSOR_COMPUTE_CONTRACT_H_
