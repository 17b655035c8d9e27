#include "compressor/internal/sonic_math.h"

#include <cblas.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>

#include "compressor/internal/attention.h"

namespace nexuskv::compressor::internal {
namespace {

// c[rows, cols] = alpha * a[rows, k] b[cols, k]^T (both row-major).
void GemmNt(int rows, int cols, int k, float alpha, const float* a, const float* b, float* c) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, k, alpha, a, k, b, k, 0.0f, c,
              cols);
}

// c[rows, cols] = a[rows, k] b[k, cols] (both row-major).
void GemmNn(int rows, int cols, int k, const float* a, const float* b, float* c) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, k, 1.0f, a, k, b, cols, 0.0f,
              c, cols);
}

int BlockRows(size_t width, int rows) {
  const size_t per = std::max<size_t>(width, 1);
  return static_cast<int>(
      std::clamp<size_t>(kSonicBlockFloats / per, 1, static_cast<size_t>(std::max(rows, 1))));
}

// Turns row[0..n) (finite logits) into softmax weights in place; returns log sum exp.
float SoftmaxInPlace(float* row, size_t n) {
  float max_logit = -FLT_MAX;
#pragma omp simd reduction(max : max_logit)
  for (size_t i = 0; i < n; ++i) {
    const float x = FiniteLogit(row[i]);
    row[i] = x;
    max_logit = x > max_logit ? x : max_logit;
  }
#pragma omp simd
  for (size_t i = 0; i < n; ++i) row[i] = ExpNonPositive(row[i] - max_logit);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (size_t i = 0; i < n; ++i) sum += row[i];
  // sum >= 1 (the max contributes exp(0)), so the log and the division are safe.
  const float inv = 1.0f / sum;
#pragma omp simd
  for (size_t i = 0; i < n; ++i) row[i] *= inv;
  return max_logit + std::log(sum);
}

}  // namespace

float FiniteLogit(float x) {
  x = x > FLT_MAX ? FLT_MAX : x;
  x = x < -FLT_MAX ? -FLT_MAX : x;
  return x == x ? x : -FLT_MAX;
}

SegmentTargets ComputeTargets(const float* keys, const float* values, int num_tokens, int head_dim,
                              Rows rows) {
  const size_t t = static_cast<size_t>(num_tokens);
  const size_t d = static_cast<size_t>(head_dim);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  SegmentTargets out;
  out.log_mass.resize(static_cast<size_t>(rows.count));
  out.outputs.resize(static_cast<size_t>(rows.count) * d);
  out.attention.assign(t, 0.0f);
  const int block = BlockRows(t, rows.count);
  std::vector<float> logits(static_cast<size_t>(block) * t);
  for (int first = 0; first < rows.count; first += block) {
    const int count = std::min(block, rows.count - first);
    GemmNt(count, num_tokens, head_dim, scale, rows.data + first * d, keys, logits.data());
    for (int r = 0; r < count; ++r) {
      float* row = logits.data() + r * t;
      out.log_mass[first + r] = SoftmaxInPlace(row, t);
      float* acc = out.attention.data();
#pragma omp simd
      for (size_t i = 0; i < t; ++i) acc[i] += row[i];
    }
    GemmNn(count, head_dim, num_tokens, logits.data(), values, out.outputs.data() + first * d);
  }
  return out;
}

std::vector<double> ColumnLogMass(Rows rows, const float* centroids, int m, int head_dim,
                                  std::span<const float> log_mass) {
  const size_t width = static_cast<size_t>(m);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  std::vector<double> max(width, -std::numeric_limits<double>::infinity());
  std::vector<double> sum(width, 0.0);
  const int block = BlockRows(width, rows.count);
  std::vector<float> logits(static_cast<size_t>(block) * width);
  for (int first = 0; first < rows.count; first += block) {
    const int count = std::min(block, rows.count - first);
    GemmNt(count, m, head_dim, scale, rows.data + static_cast<size_t>(first) * head_dim, centroids,
           logits.data());
    for (int r = 0; r < count; ++r) {
      const double shift = log_mass[first + r];
      const float* row = logits.data() + r * width;
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
  std::vector<double> out(width);
  for (size_t j = 0; j < width; ++j) out[j] = max[j] + std::log(sum[j]);
  return out;
}

void WeightedKMeans(const float* points, int n, int head_dim, std::span<const float> weights,
                    std::span<const uint32_t> seeds, int iterations, std::vector<float>* centroids,
                    std::vector<uint32_t>* assignment) {
  const size_t d = static_cast<size_t>(head_dim);
  const size_t m = seeds.size();
  centroids->resize(m * d);
  for (size_t j = 0; j < m; ++j) {
    std::copy_n(points + seeds[j] * d, d, centroids->data() + j * d);
  }
  assignment->assign(static_cast<size_t>(n), 0);
  const int block = BlockRows(m, n);
  std::vector<float> dots(static_cast<size_t>(block) * m);
  std::vector<float> half_norm(m);
  std::vector<double> sums(m * d);
  std::vector<double> mass(m);
  for (int it = 0;; ++it) {
    for (size_t j = 0; j < m; ++j) {
      const float* c = centroids->data() + j * d;
      float s = 0.0f;
      for (size_t c_i = 0; c_i < d; ++c_i) s += c[c_i] * c[c_i];
      half_norm[j] = 0.5f * s;
    }
    // argmin |p - c|^2 == argmax p.c - |c|^2 / 2.
    for (int first = 0; first < n; first += block) {
      const int count = std::min(block, n - first);
      GemmNt(count, static_cast<int>(m), head_dim, 1.0f, points + first * d, centroids->data(),
             dots.data());
      for (int i = 0; i < count; ++i) {
        const float* row = dots.data() + static_cast<size_t>(i) * m;
        uint32_t best = 0;
        float best_score = -std::numeric_limits<float>::infinity();
        for (size_t j = 0; j < m; ++j) {
          const float score = FiniteLogit(row[j] - half_norm[j]);
          if (score > best_score) {
            best_score = score;
            best = static_cast<uint32_t>(j);
          }
        }
        (*assignment)[first + i] = best;
      }
    }
    if (it == iterations) return;
    std::fill(sums.begin(), sums.end(), 0.0);
    std::fill(mass.begin(), mass.end(), 0.0);
    for (int i = 0; i < n; ++i) {
      const uint32_t j = (*assignment)[i];
      const double w = weights[i];
      mass[j] += w;
      const float* p = points + static_cast<size_t>(i) * d;
      double* s = sums.data() + j * d;
      for (size_t c = 0; c < d; ++c) s[c] += w * p[c];
    }
    for (size_t j = 0; j < m; ++j) {
      if (!(mass[j] > 0.0)) continue;
      float* c = centroids->data() + j * d;
      for (size_t c_i = 0; c_i < d; ++c_i) c[c_i] = static_cast<float>(sums[j * d + c_i] / mass[j]);
    }
  }
}

SonicRungError EvaluateNexusSet(Rows rows, int head_dim, const NexusSet& set,
                                const SegmentTargets& targets) {
  SonicRungError error;
  const size_t m = set.bias.size();
  if (rows.count == 0 || m == 0) return error;
  const size_t d = static_cast<size_t>(head_dim);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const int block = BlockRows(m, rows.count);
  std::vector<float> logits(static_cast<size_t>(block) * m);
  std::vector<float> outputs(static_cast<size_t>(block) * d);
  double output_error = 0.0;
  double mass_error = 0.0;
  for (int first = 0; first < rows.count; first += block) {
    const int count = std::min(block, rows.count - first);
    GemmNt(count, static_cast<int>(m), head_dim, scale, rows.data + first * d, set.keys.data(),
           logits.data());
    for (int r = 0; r < count; ++r) {
      float* row = logits.data() + static_cast<size_t>(r) * m;
      for (size_t j = 0; j < m; ++j) row[j] = FiniteLogit(row[j]) + set.bias[j];
      const float log_mass = SoftmaxInPlace(row, m);
      mass_error += std::abs(static_cast<double>(log_mass) - targets.log_mass[first + r]);
    }
    GemmNn(count, head_dim, static_cast<int>(m), logits.data(), set.values.data(), outputs.data());
    for (int r = 0; r < count; ++r) {
      const float* want = targets.outputs.data() + (first + r) * d;
      const float* got = outputs.data() + r * d;
      double diff = 0.0, norm = 0.0;
      for (size_t c = 0; c < d; ++c) {
        diff += (double{got[c]} - want[c]) * (double{got[c]} - want[c]);
        norm += double{want[c]} * want[c];
      }
      output_error += std::min(std::sqrt(diff) / std::max(std::sqrt(norm), 1e-20), 1e6);
    }
  }
  error.output_error = static_cast<float>(output_error / rows.count);
  error.log_mass_error = static_cast<float>(std::min(mass_error / rows.count, 1e30));
  return error;
}

}  // namespace nexuskv::compressor::internal
