// The dense kernels behind SONIC, for one kv head: distillation targets over the probe rows,
// column log-masses, weighted k-means of keys, and the error of a Nexus set. Every product is a
// cblas_sgemm over a block of rows (at most kSonicBlockFloats logits in memory), and every softmax
// is max-stabilized per row, so the same structure maps onto batched GEMMs on a GPU.
//
// Rows ("queries") are unscaled: the kernels apply 1/sqrt(D). Logits that overflow float32 are
// clamped to +-FLT_MAX (NaN to -FLT_MAX), as in attention.h, so finite input gives finite output.
//
// Pure and thread-safe.
#ifndef NEXUSKV_COMPRESSOR_INTERNAL_SONIC_MATH_H_
#define NEXUSKV_COMPRESSOR_INTERNAL_SONIC_MATH_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "compressor/internal/sonic_ladder.h"

namespace nexuskv::compressor::internal {

// Logits held in memory at once by the blocked kernels (16 MiB).
inline constexpr size_t kSonicBlockFloats = size_t{1} << 22;

// A [rows, D] row-major float32 matrix, borrowed.
struct Rows {
  const float* data = nullptr;
  int count = 0;
};

// What the segment does for each row q (no causal mask: every row sees all T tokens).
struct SegmentTargets {
  std::vector<float> log_mass;   // [R] log Z(q) = log sum_i exp(q.k_i / sqrt(D))
  std::vector<float> outputs;    // [R, D] o(q) = sum_i softmax_i v_i
  std::vector<float> attention;  // [T] a_i = sum over rows of softmax weight on token i
};

// Targets of the segment (keys, values [T, D]) for `rows`.
SegmentTargets ComputeTargets(const float* keys, const float* values, int num_tokens, int head_dim,
                              Rows rows);

// out[j] = log sum_r exp(q_r.c_j / sqrt(D) - log_mass[r]) for centroids [m, D]: the share of the
// segment's mass, summed over rows, that entry j carries with weight 1 (its "unit mass"). Computed
// with a running max per column, in double.
std::vector<double> ColumnLogMass(Rows rows, const float* centroids, int m, int head_dim,
                                  std::span<const float> log_mass);

// Weighted Lloyd iterations on points [n, D]: centroids [m, D] start as the points at `seeds`
// (m distinct indices), move `iterations` times to the weighted mean of their members, and
// `assignment` [n] ends as each point's nearest centroid (squared Euclidean, ties to the lower
// centroid). A centroid that loses all members stays where it was.
void WeightedKMeans(const float* points, int n, int head_dim, std::span<const float> weights,
                    std::span<const uint32_t> seeds, int iterations, std::vector<float>* centroids,
                    std::vector<uint32_t>* assignment);

// Mean relative output error and mean |log-mass error| of a Nexus set (keys, values, bias) on
// `rows`, against `targets` computed on the same rows. Zero rows: both 0.
SonicRungError EvaluateNexusSet(Rows rows, int head_dim, const NexusSet& set,
                                const SegmentTargets& targets);

// Clamps x to a finite float (NaN to -FLT_MAX): the logit rule of every kernel here.
float FiniteLogit(float x);

}  // namespace nexuskv::compressor::internal

#endif  // NEXUSKV_COMPRESSOR_INTERNAL_SONIC_MATH_H_
