// The input checks of compute.h's operations (see contract.h). Moved here from the CPU backend so
// that every backend refuses a bad batch with the same message.
#include "compressor/compute/contract.h"

#include <cmath>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace nexuskv::compressor {

namespace {

absl::Status CheckMatrix(std::string_view op, size_t item, std::string_view field,
                         const ConstMatrix& m) {
  if (m.rows < 0 || m.cols < 0 ||
      m.data.size() != static_cast<size_t>(m.rows) * static_cast<size_t>(m.cols)) {
    return BadItem(op, item,
                   absl::StrCat(std::string(field), " is [", m.rows, ", ", m.cols, "] but holds ",
                                m.data.size(), " floats"));
  }
  return absl::OkStatus();
}

absl::Status CheckSize(std::string_view op, std::string_view field, size_t got, size_t want) {
  if (got == want) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(std::string(op), ": ", std::string(field),
                                                 " holds ", got, ", the batch needs ", want));
}

absl::Status CheckCausal(std::string_view op, size_t item, std::span<const int32_t> causal,
                         int rows, int cols) {
  if (causal.empty()) return absl::OkStatus();
  if (causal.size() != static_cast<size_t>(rows)) {
    return BadItem(op, item,
                   absl::StrCat("causal has ", causal.size(), " entries for ", rows, " rows"));
  }
  for (size_t r = 0; r < causal.size(); ++r) {
    if (causal[r] < 0 || causal[r] >= cols) {
      return BadItem(op, item,
                     absl::StrCat("causal[", r, "] = ", causal[r], " is outside [0, ", cols, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status BadItem(std::string_view op, size_t item, std::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat(std::string(op), ": item ", item, ": ", std::string(why)));
}

absl::Status CheckSoftmax(std::span<const float> logits, int rows, int cols,
                          std::span<const int32_t> causal, std::span<const float> log_sum_exp) {
  constexpr std::string_view kOp = "Softmax";
  if (rows < 0 || cols < 0) return BadItem(kOp, 0, "negative shape");
  NEXUSKV_RETURN_IF_ERROR(CheckSize(kOp, "logits", logits.size(),
                                    static_cast<size_t>(rows) * static_cast<size_t>(cols)));
  if (!log_sum_exp.empty()) {
    NEXUSKV_RETURN_IF_ERROR(CheckSize(kOp, "log_sum_exp", log_sum_exp.size(), rows));
  }
  return CheckCausal(kOp, 0, causal, rows, cols);
}

absl::Status CheckAttentionMass(std::span<const AttentionMassItem> items,
                                std::span<const float> mass) {
  constexpr std::string_view kOp = "AttentionMass";
  size_t total = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    const AttentionMassItem& item = items[k];
    NEXUSKV_RETURN_IF_ERROR(CheckMatrix(kOp, k, "queries", item.queries));
    NEXUSKV_RETURN_IF_ERROR(CheckMatrix(kOp, k, "keys", item.keys));
    if (item.keys.rows < 1) return BadItem(kOp, k, "keys has no rows");
    if (item.queries.cols != item.keys.cols) return BadItem(kOp, k, "queries and keys differ in D");
    NEXUSKV_RETURN_IF_ERROR(CheckCausal(kOp, k, item.causal, item.queries.rows, item.keys.rows));
    total += static_cast<size_t>(item.keys.rows);
  }
  return CheckSize(kOp, "mass", mass.size(), total);
}

absl::Status CheckAttend(std::span<const AttendItem> items, const AttendOutputs& out) {
  constexpr std::string_view kOp = "Attend";
  size_t rows_total = 0, outputs_total = 0, keys_total = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    const AttendItem& item = items[k];
    NEXUSKV_RETURN_IF_ERROR(CheckMatrix(kOp, k, "queries", item.queries));
    NEXUSKV_RETURN_IF_ERROR(CheckMatrix(kOp, k, "keys", item.keys));
    NEXUSKV_RETURN_IF_ERROR(CheckMatrix(kOp, k, "values", item.values));
    if (item.queries.cols != item.keys.cols) return BadItem(kOp, k, "queries and keys differ in D");
    if (item.values.rows != item.keys.rows) return BadItem(kOp, k, "keys and values differ in M");
    if (!item.key_bias.empty() && item.key_bias.size() != static_cast<size_t>(item.keys.rows)) {
      return BadItem(kOp, k, "key_bias is neither empty nor [M]");
    }
    rows_total += static_cast<size_t>(item.queries.rows);
    outputs_total += static_cast<size_t>(item.queries.rows) * item.values.cols;
    keys_total += static_cast<size_t>(item.keys.rows);
  }
  NEXUSKV_RETURN_IF_ERROR(CheckSize(kOp, "log_mass", out.log_mass.size(), rows_total));
  NEXUSKV_RETURN_IF_ERROR(CheckSize(kOp, "outputs", out.outputs.size(), outputs_total));
  if (out.key_mass.empty()) return absl::OkStatus();
  return CheckSize(kOp, "key_mass", out.key_mass.size(), keys_total);
}

absl::Status CheckColumnLogSumExp(std::span<const ColumnLogSumExpItem> items,
                                  std::span<const double> out) {
  constexpr std::string_view kOp = "ColumnLogSumExp";
  size_t total = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    const ColumnLogSumExpItem& item = items[k];
    NEXUSKV_RETURN_IF_ERROR(CheckMatrix(kOp, k, "queries", item.queries));
    NEXUSKV_RETURN_IF_ERROR(CheckMatrix(kOp, k, "columns", item.columns));
    if (item.queries.cols != item.columns.cols) {
      return BadItem(kOp, k, "queries and columns differ in D");
    }
    if (item.row_shift.size() != static_cast<size_t>(item.queries.rows)) {
      return BadItem(kOp, k, "row_shift is not [R]");
    }
    total += static_cast<size_t>(item.columns.rows);
  }
  return CheckSize(kOp, "out", out.size(), total);
}

absl::Status CheckWeightedKMeans(std::span<const KMeansItem> items, int iterations,
                                 std::span<const float> centroids,
                                 std::span<const uint32_t> assignment) {
  constexpr std::string_view kOp = "WeightedKMeans";
  if (iterations < 0) return BadItem(kOp, 0, "iterations < 0");
  size_t centroid_total = 0, member_total = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    const KMeansItem& item = items[k];
    NEXUSKV_RETURN_IF_ERROR(CheckMatrix(kOp, k, "points", item.points));
    const size_t n = item.members.size();
    const size_t m = item.seeds.size();
    if (n == 0 || m == 0 || m > n || item.weights.size() != n) {
      return BadItem(kOp, k,
                     absl::StrCat("needs 1 <= m <= n and one weight per member; m = ", m,
                                  ", n = ", n, ", weights ", item.weights.size()));
    }
    for (uint32_t p : item.members) {
      if (p >= static_cast<uint32_t>(item.points.rows)) {
        return BadItem(kOp, k, "member out of range");
      }
    }
    for (uint32_t s : item.seeds) {
      if (s >= n) return BadItem(kOp, k, "seed out of range");
    }
    centroid_total += m * static_cast<size_t>(item.points.cols);
    member_total += n;
  }
  NEXUSKV_RETURN_IF_ERROR(CheckSize(kOp, "centroids", centroids.size(), centroid_total));
  return CheckSize(kOp, "assignment", assignment.size(), member_total);
}

absl::Status CheckFoldVectors(std::span<const FoldItem> items, std::span<const float> out) {
  constexpr std::string_view kOp = "FoldVectors";
  size_t total = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    NEXUSKV_RETURN_IF_ERROR(CheckMatrix(kOp, k, "rows", items[k].rows));
    if (!(items[k].ridge >= 0.0)) return BadItem(kOp, k, "ridge is negative or NaN");
    total += static_cast<size_t>(items[k].rows.cols);
  }
  return CheckSize(kOp, "out", out.size(), total);
}

absl::Status CheckTopK(std::span<const float> scores, std::span<const int64_t> row_starts,
                       std::span<const int64_t> k, std::span<const uint32_t> selected) {
  constexpr std::string_view kOp = "TopK";
  if (row_starts.size() != k.size() + 1 || row_starts.front() != 0 ||
      row_starts.back() != static_cast<int64_t>(scores.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("TopK: row_starts must hold rows + 1 = ", k.size() + 1,
                     " offsets from 0 to scores.size() = ", scores.size()));
  }
  size_t total = 0;
  for (size_t r = 0; r < k.size(); ++r) {
    const int64_t length = row_starts[r + 1] - row_starts[r];
    if (length < 0 || length > int64_t{std::numeric_limits<uint32_t>::max()} || k[r] < 0 ||
        k[r] > length) {
      return BadItem(kOp, r, absl::StrCat("row of ", length, " scores cannot give k = ", k[r]));
    }
    total += static_cast<size_t>(k[r]);
  }
  return CheckSize(kOp, "selected", selected.size(), total);
}

absl::Status CheckGather(std::span<const GatherItem> items, std::span<const float> out) {
  constexpr std::string_view kOp = "Gather";
  size_t total = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    NEXUSKV_RETURN_IF_ERROR(CheckMatrix(kOp, k, "source", items[k].source));
    for (uint32_t row : items[k].rows) {
      if (row >= static_cast<uint32_t>(items[k].source.rows)) {
        return BadItem(kOp, k,
                       absl::StrCat("row ", row, " of a ", items[k].source.rows, "-row source"));
      }
    }
    total += items[k].rows.size() * static_cast<size_t>(items[k].source.cols);
  }
  return CheckSize(kOp, "out", out.size(), total);
}

absl::Status CheckMergeRuns(std::span<const MergeRunItem> items, std::span<const float> keys,
                            std::span<const float> values, std::span<const float> bias) {
  constexpr std::string_view kOp = "MergeRuns";
  size_t total = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    const MergeRunItem& item = items[k];
    NEXUSKV_RETURN_IF_ERROR(CheckMatrix(kOp, k, "keys", item.keys));
    NEXUSKV_RETURN_IF_ERROR(CheckMatrix(kOp, k, "values", item.values));
    if (item.keys.rows != item.values.rows || item.keys.cols != item.values.cols) {
      return BadItem(kOp, k, "keys and values differ in shape");
    }
    if (item.members.empty() || item.weights.size() != item.members.size()) {
      return BadItem(kOp, k, "needs n >= 1 members and one weight each");
    }
    double weight = 0.0;
    for (size_t i = 0; i < item.members.size(); ++i) {
      if (item.members[i] >= static_cast<uint32_t>(item.keys.rows)) {
        return BadItem(kOp, k, "member out of range");
      }
      if (!(item.weights[i] >= 0.0)) return BadItem(kOp, k, "a weight is negative or NaN");
      weight += item.weights[i];
    }
    if (!(weight > 0.0) || !std::isfinite(weight)) {
      return BadItem(kOp, k, "weights do not have a finite positive sum");
    }
    total += static_cast<size_t>(item.keys.cols);
  }
  NEXUSKV_RETURN_IF_ERROR(CheckSize(kOp, "keys", keys.size(), total));
  NEXUSKV_RETURN_IF_ERROR(CheckSize(kOp, "values", values.size(), total));
  return CheckSize(kOp, "bias", bias.size(), items.size());
}

absl::Status CheckDecodeToFloat(std::span<const std::byte> src, DType dtype,
                                std::span<const float> dst) {
  const size_t want = dst.size() * DTypeSize(dtype);
  if (src.size() == want) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("DecodeToFloat: expected ", want, " bytes of ",
                                                 DTypeName(dtype), ", got ", src.size()));
}

absl::Status CheckEncodeFromFloat(std::span<const float> src, DType dtype,
                                  std::span<const std::byte> dst) {
  return CheckSize("EncodeFromFloat", "dst", dst.size(), src.size() * DTypeSize(dtype));
}

}  // namespace nexuskv::compressor
