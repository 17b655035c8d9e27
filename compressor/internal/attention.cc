#include "compressor/internal/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>

namespace nexuskv::compressor::internal {
namespace {

constexpr size_t kLogitBlockFloats = size_t{1} << 22;

// Adds weight * softmax(row[0 .. visible)) to acc[0 .. visible). Overwrites `row`.
void AccumulateSoftmax(float* row, size_t visible, float weight, float* acc) {
  // Clamp overflowed logits to +-FLT_MAX and NaN (inf - inf in the dot product) to -FLT_MAX.
  float max_logit = -FLT_MAX;
#pragma omp simd reduction(max : max_logit)
  for (size_t i = 0; i < visible; ++i) {
    float x = row[i];
    x = x > FLT_MAX ? FLT_MAX : x;
    x = x < -FLT_MAX ? -FLT_MAX : x;
    x = x == x ? x : -FLT_MAX;
    row[i] = x;
    max_logit = x > max_logit ? x : max_logit;
  }
  // x - max_logit is <= 0 and may round to -inf, whose exp is 0; the max itself gives exp(0) = 1,
  // so the sum is >= 1.
#pragma omp simd
  for (size_t i = 0; i < visible; ++i) row[i] = ExpNonPositive(row[i] - max_logit);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (size_t i = 0; i < visible; ++i) sum += row[i];
  const float scale = weight / sum;
#pragma omp simd
  for (size_t i = 0; i < visible; ++i) acc[i] += row[i] * scale;
}

}  // namespace

int ScoringWindow(const LayerView& layer) {
  return layer.num_probes > 0 ? layer.num_probes : std::min(layer.num_tokens, kProxyQueries);
}

std::vector<float> AccumulatedAttention(const LayerView& layer) {
  const size_t h_count = static_cast<size_t>(layer.num_kv_heads);
  const size_t group = static_cast<size_t>(layer.num_query_heads / layer.num_kv_heads);
  const size_t t = static_cast<size_t>(layer.num_tokens);
  const size_t d = static_cast<size_t>(layer.head_dim);
  const size_t window = static_cast<size_t>(ScoringWindow(layer));
  const bool proxy = layer.num_probes == 0;
  // With probes the group's query heads are contiguous in [Hq, P, D]: one GEMM of g*P rows.
  const size_t rows = proxy ? window : group * window;
  const float row_weight = proxy ? static_cast<float>(group) : 1.0f;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));

  // Logits are computed a block of rows at a time so that long turns stay within ~16 MiB.
  const size_t block_rows = std::clamp<size_t>(kLogitBlockFloats / t, 1, rows);
  std::vector<float> out(h_count * t, 0.0f);
  std::vector<float> logits(block_rows * t);
  for (size_t h = 0; h < h_count; ++h) {
    const float* keys = layer.keys.data() + h * t * d;
    const float* queries =
        proxy ? keys + (t - window) * d : layer.probes.data() + h * group * window * d;
    float* acc = out.data() + h * t;
    for (size_t first = 0; first < rows; first += block_rows) {
      const size_t count = std::min(block_rows, rows - first);
      // logits[r, i] = scale * queries[first + r] . keys[i]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(count),
                  static_cast<blasint>(t), static_cast<blasint>(d), scale, queries + first * d,
                  static_cast<blasint>(d), keys, static_cast<blasint>(d), 0.0f, logits.data(),
                  static_cast<blasint>(t));
      for (size_t r = 0; r < count; ++r) {
        const size_t j = (first + r) % window;
        const size_t token = !proxy && !layer.probe_offsets.empty()
                                 ? static_cast<size_t>(layer.probe_offsets[j])
                                 : t - window + j;
        AccumulateSoftmax(logits.data() + r * t, token + 1, row_weight, acc);
      }
    }
  }
  return out;
}

}  // namespace nexuskv::compressor::internal
