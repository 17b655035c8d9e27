// The dense math behind SONIC's fit, batched over kv heads and rungs: the distillation targets of
// a segment over its query rows, and the error of a Nexus set against them. Both are one
// ComputeBackend::Attend call per batch (compressor/compute/compute.h), so every GEMM, softmax and
// log-sum-exp follows that header's rules: logits scale * q.k with scale = 1/sqrt(D), clamped by
// FiniteLogit, max-stabilized softmax, at most kLogitBlockFloats logits in memory per item.
//
// Rows ("queries") are unscaled: the kernels apply 1/sqrt(D).
//
//   SegmentTargets t = ComputeTargets(keys, values, T, D, Rows{rows.data(), R});
//
// Pure and thread-safe.
#ifndef NEXUSKV_COMPRESSOR_INTERNAL_SONIC_MATH_H_
#define NEXUSKV_COMPRESSOR_INTERNAL_SONIC_MATH_H_

#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "compressor/compute/compute.h"
#include "compressor/internal/sonic_ladder.h"

namespace nexuskv::compressor::internal {

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

// One kv head's segment and rows, borrowed: keys and values [T, D], T >= 1.
struct TargetsInput {
  const float* keys = nullptr;
  const float* values = nullptr;
  int num_tokens = 0;
  int head_dim = 0;
  Rows rows;
};

// Targets of every input, in one backend batch. Errors are the backend's.
absl::StatusOr<std::vector<SegmentTargets>> ComputeTargets(std::span<const TargetsInput> inputs,
                                                           const ComputeBackend& compute);

// Targets of one segment (keys, values [T, D]) for `rows`, on CpuCompute().
SegmentTargets ComputeTargets(const float* keys, const float* values, int num_tokens, int head_dim,
                              Rows rows);

// A Nexus set to measure on the rows its targets were computed on (all borrowed).
struct SetEvaluation {
  Rows rows;
  int head_dim = 0;
  const NexusSet* set = nullptr;
  const SegmentTargets* targets = nullptr;
};

// Per evaluation, in one backend batch: the mean relative output error and the mean |log-mass
// error| of the set on its rows (zero rows or an empty set: both 0).
absl::StatusOr<std::vector<SonicRungError>> EvaluateNexusSets(
    std::span<const SetEvaluation> evaluations, const ComputeBackend& compute);

}  // namespace nexuskv::compressor::internal

#endif  // NEXUSKV_COMPRESSOR_INTERNAL_SONIC_MATH_H_
