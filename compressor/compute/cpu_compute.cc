// CpuCompute: the reference implementation of compute.h, on OpenBLAS sgemm and the row kernels
// of internal/cpu_kernels.h. Items run one after another; each is blocked to at most
// kLogitBlockFloats logits, as the per-head kernels it replaced were, so results are the same bits.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "compressor/compute/compute.h"
#include "compressor/compute/contract.h"
#include "compressor/compute/internal/cpu_backend.h"
#include "compressor/compute/internal/cpu_kernels.h"

namespace nexuskv::compressor::internal::cpu {

void GemmNt(int rows, int cols, int k, float alpha, const float* a, const float* b, float* c) {
  if (rows == 0 || cols == 0) return;
  if (k == 0) {
    std::fill_n(c, static_cast<size_t>(rows) * cols, 0.0f);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, k, alpha, a, k, b, k, 0.0f, c,
              cols);
}

void GemmNn(int rows, int cols, int k, const float* a, const float* b, float* c) {
  if (rows == 0 || cols == 0) return;
  if (k == 0) {
    std::fill_n(c, static_cast<size_t>(rows) * cols, 0.0f);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, k, 1.0f, a, k, b, cols, 0.0f,
              c, cols);
}

int BlockRows(size_t width, int rows) {
  return static_cast<int>(std::clamp<size_t>(kLogitBlockFloats / std::max<size_t>(width, 1), 1,
                                             static_cast<size_t>(std::max(rows, 1))));
}

absl::Status CpuBackend::Softmax(std::span<float> logits, int rows, int cols,
                                 std::span<const int32_t> causal,
                                 std::span<float> log_sum_exp) const {
  NEXUSKV_RETURN_IF_ERROR(CheckSoftmax(logits, rows, cols, causal, log_sum_exp));
  const size_t width = static_cast<size_t>(cols);
  for (size_t r = 0; r < static_cast<size_t>(rows); ++r) {
    float* row = logits.data() + r * width;
    const size_t visible = causal.empty() ? width : static_cast<size_t>(causal[r]) + 1;
    const float lse = SoftmaxRow(row, visible, 1.0f);
    std::fill(row + visible, row + width, 0.0f);
    if (!log_sum_exp.empty()) log_sum_exp[r] = lse;
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::AttentionMass(std::span<const AttentionMassItem> items,
                                       std::span<float> mass) const {
  NEXUSKV_RETURN_IF_ERROR(CheckAttentionMass(items, mass));

  std::vector<float> logits;
  size_t offset = 0;
  for (const AttentionMassItem& item : items) {
    const size_t t = static_cast<size_t>(item.keys.rows);
    const int d = item.keys.cols;
    const int rows = item.queries.rows;
    float* acc = mass.data() + offset;
    offset += t;
    std::fill_n(acc, t, 0.0f);
    if (rows == 0) continue;
    const int block = BlockRows(t, rows);
    logits.resize(static_cast<size_t>(block) * t);
    for (int first = 0; first < rows; first += block) {
      const int count = std::min(block, rows - first);
      GemmNt(count, static_cast<int>(t), d, item.scale,
             item.queries.data.data() + static_cast<size_t>(first) * d, item.keys.data.data(),
             logits.data());
      for (int r = 0; r < count; ++r) {
        float* row = logits.data() + static_cast<size_t>(r) * t;
        const size_t visible =
            item.causal.empty() ? t : static_cast<size_t>(item.causal[first + r]) + 1;
        SoftmaxRow(row, visible, item.row_weight);
#pragma omp simd
        for (size_t i = 0; i < visible; ++i) acc[i] += row[i];
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Attend(std::span<const AttendItem> items, const AttendOutputs& out) const {
  NEXUSKV_RETURN_IF_ERROR(CheckAttend(items, out));

  std::vector<float> logits;
  size_t row_offset = 0, output_offset = 0, key_offset = 0;
  for (const AttendItem& item : items) {
    const int rows = item.queries.rows;
    const int m = item.keys.rows;
    const size_t width = static_cast<size_t>(m);
    const int dv = item.values.cols;
    float* log_mass = out.log_mass.data() + row_offset;
    float* outputs = out.outputs.data() + output_offset;
    float* acc = out.key_mass.empty() ? nullptr : out.key_mass.data() + key_offset;
    row_offset += static_cast<size_t>(rows);
    output_offset += static_cast<size_t>(rows) * dv;
    key_offset += width;
    if (acc != nullptr) std::fill_n(acc, width, 0.0f);
    const int block = BlockRows(width, rows);
    logits.resize(static_cast<size_t>(block) * width);
    for (int first = 0; first < rows; first += block) {
      const int count = std::min(block, rows - first);
      GemmNt(count, m, item.keys.cols, item.scale,
             item.queries.data.data() + static_cast<size_t>(first) * item.queries.cols,
             item.keys.data.data(), logits.data());
      for (int r = 0; r < count; ++r) {
        float* row = logits.data() + static_cast<size_t>(r) * width;
        if (!item.key_bias.empty()) {
          for (size_t j = 0; j < width; ++j) row[j] = FiniteLogit(row[j]) + item.key_bias[j];
        }
        log_mass[first + r] = SoftmaxRow(row, width, 1.0f);
        if (acc != nullptr) {
#pragma omp simd
          for (size_t i = 0; i < width; ++i) acc[i] += row[i];
        }
      }
      GemmNn(count, dv, m, logits.data(), item.values.data.data(),
             outputs + static_cast<size_t>(first) * dv);
    }
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::ColumnLogSumExp(std::span<const ColumnLogSumExpItem> items,
                                         std::span<double> out) const {
  NEXUSKV_RETURN_IF_ERROR(CheckColumnLogSumExp(items, out));

  std::vector<float> logits;
  std::vector<double> max, sum;
  size_t offset = 0;
  for (const ColumnLogSumExpItem& item : items) {
    const int m = item.columns.rows;
    const size_t width = static_cast<size_t>(m);
    const int rows = item.queries.rows;
    max.assign(width, -std::numeric_limits<double>::infinity());
    sum.assign(width, 0.0);
    const int block = BlockRows(width, rows);
    logits.resize(static_cast<size_t>(block) * width);
    for (int first = 0; first < rows; first += block) {
      const int count = std::min(block, rows - first);
      GemmNt(count, m, item.queries.cols, item.scale,
             item.queries.data.data() + static_cast<size_t>(first) * item.queries.cols,
             item.columns.data.data(), logits.data());
      for (int r = 0; r < count; ++r) {
        const double shift = item.row_shift[first + r];
        const float* row = logits.data() + static_cast<size_t>(r) * width;
        for (size_t j = 0; j < width; ++j) {
          const double x = static_cast<double>(FiniteLogit(row[j])) - shift;
          if (x > max[j]) {
            sum[j] = sum[j] * std::exp(max[j] - x) + 1.0;
            max[j] = x;
          } else {
            sum[j] += std::exp(x - max[j]);
          }
        }
      }
    }
    for (size_t j = 0; j < width; ++j) out[offset + j] = max[j] + std::log(sum[j]);
    offset += width;
  }
  return absl::OkStatus();
}

}  // namespace nexuskv::compressor::internal::cpu

namespace nexuskv::compressor {

const ComputeBackend& CpuCompute() {
  static const internal::cpu::CpuBackend* const backend = new internal::cpu::CpuBackend();
  return *backend;
}

void SetCpuBlasThreads(int threads) {
  if (threads >= 1) openblas_set_num_threads(threads);
}

void DieUnlessOk(const absl::Status& status) {
  if (status.ok()) return;
  std::fprintf(stderr, "nexuskv compute: %s\n", status.ToString().c_str());
  std::abort();
}

}  // namespace nexuskv::compressor
