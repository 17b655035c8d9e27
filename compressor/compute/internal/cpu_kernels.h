// Row kernels of the CPU backend (cpu_compute.cc), exposed for its tests. The loops carry
// `#pragma omp simd`: the including target compiles with -fopenmp-simd -fno-trapping-math so that
// they vectorize (no OpenMP runtime is involved).
//
// Pure and thread-safe.
#ifndef NEXUSKV_COMPRESSOR_COMPUTE_INTERNAL_CPU_KERNELS_H_
#define NEXUSKV_COMPRESSOR_COMPUTE_INTERNAL_CPU_KERNELS_H_

#include <bit>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "compressor/compute/compute.h"

namespace nexuskv::compressor::internal {

// exp(x) for x <= 0 as plain float arithmetic, so that loops calling it vectorize (libm's expf
// does not without -ffast-math). Cephes' expf: x = n ln2 + r with |r| <= ln2/2, a degree-6
// polynomial for exp(r), then 2^n built in the exponent bits; relative error < 3e-7. Below -87
// (where 2^n would leave the normal range) it returns 0, which a softmax weight next to the row's
// max (exp(0) = 1) cannot tell apart from the true value (< 2e-38).
inline float ExpNonPositive(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer.
  constexpr float kMin = -87.0f;
  const float clamped = x < kMin ? kMin : x;
  const float shifted = clamped * kLog2e + kRoundMagic;
  const float n = shifted - kRoundMagic;
  const int32_t exponent = std::bit_cast<int32_t>(shifted) - std::bit_cast<int32_t>(kRoundMagic);
  const float r = clamped - n * kLn2Hi - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float exp_r = p * r * r + r + 1.0f;
  const float two_n = std::bit_cast<float>((exponent + 127) << 23);
  return x < kMin ? 0.0f : exp_r * two_n;
}

// The softmax of the codebase, on one row: row[0, n) becomes weight * softmax(FiniteLogit(row)),
// and the log-sum-exp of the clamped logits is returned (-inf when n == 0). weight == 1 gives the
// plain softmax (weight / sum is then exactly 1 / sum).
inline float SoftmaxRow(float* row, size_t n, float weight) {
  float max_logit = -FLT_MAX;
#pragma omp simd reduction(max : max_logit)
  for (size_t i = 0; i < n; ++i) {
    const float x = FiniteLogit(row[i]);
    row[i] = x;
    max_logit = x > max_logit ? x : max_logit;
  }
  // x - max_logit is <= 0 and may round to -inf, whose exp is 0; the max itself gives exp(0) = 1,
  // so the sum is >= 1 and the division and the log are safe.
#pragma omp simd
  for (size_t i = 0; i < n; ++i) row[i] = ExpNonPositive(row[i] - max_logit);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (size_t i = 0; i < n; ++i) sum += row[i];
  if (n == 0) return -INFINITY;
  const float scale = weight / sum;
#pragma omp simd
  for (size_t i = 0; i < n; ++i) row[i] *= scale;
  return max_logit + std::log(sum);
}

}  // namespace nexuskv::compressor::internal

#endif  // NEXUSKV_COMPRESSOR_COMPUTE_INTERNAL_CPU_KERNELS_H_
