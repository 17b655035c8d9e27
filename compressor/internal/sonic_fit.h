// SONIC's fit for one kv head: a ladder of Nexus-token sets distilled from the segment's keys,
// values and query rows (docs/sonic.md explains each step and the measurements behind it).
//
// For each rung of m entries:
//   1. Pass-through: the turn's Nexus offsets (LayerView::nexus_offsets) come first, raw, bias 0
//      (at most m of them, the most attended first), then the pinned tokens (the session's sinks).
//   2. Keys: the other tokens are clustered by weighted k-means on K (weights = accumulated
//      attention of the rows), seeded with the most attended tokens; the key of an entry is its
//      cluster's weighted centroid. Turns longer than max_cluster_tokens are clustered in
//      contiguous chunks so that the cost stays O(T * max_cluster_tokens * D).
//   3. Bias: w_j = exp(b_j) is the non-negative weighted-least-squares fit of the cluster's mass,
//      w_j * sum_r e^{q_r.c_j - log Z_r} = sum_{i in cluster} sum_r e^{q_r.k_i - log Z_r}, i.e. the
//      entry carries exactly its cluster's share of the segment's mass over the rows; b is
//      clamped to [kSonicMinBias, kSonicMaxBias] (an empty cluster gets the floor).
//   4. Values: the attention-weighted mean of the cluster's values, the least-squares fit of its
//      output over the rows.
//   5. Error: relative output error and log-mass error of the whole set on the rows.
// Plus, once per head, the fold vector u = (Q^T Q + lambda I)^-1 Q^T 1 (Q the scaled rows), so that
// k + b u stands in for (k, b) when an engine takes no bias: q.(k + b u) ~ q.k + b.
//
// The dense work goes through the compute seam (compressor/compute/compute.h) in batches: one
// Attend for the targets of every head, then for every chunk of every rung of every head one TopK
// (the k-means seeds), one WeightedKMeans and one ColumnLogSumExp, one Attend for the errors of
// every rung, and one FoldVectors for the fold of every head. Only the bookkeeping between the
// batches (the chunk plan, each cluster's bias and weighted mean value, sorting a set by offset)
// runs on the host.
//
//   NEXUSKV_ASSIGN_OR_RETURN(std::vector<HeadFit> fits,
//                            FitHeads(heads, SonicRungSizes(T), SonicParams{}, CpuCompute()));
//
// Pure and thread-safe.
#ifndef NEXUSKV_COMPRESSOR_INTERNAL_SONIC_FIT_H_
#define NEXUSKV_COMPRESSOR_INTERNAL_SONIC_FIT_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "compressor/compute/compute.h"
#include "compressor/internal/sonic_ladder.h"
#include "compressor/internal/sonic_math.h"
#include "compressor/sonic.h"

namespace nexuskv::compressor::internal {

using ::nexuskv::compressor::SonicParams;

// Bias range: w = exp(b) in [e^-80, e^80], finite in float32 with room for q.k on top.
inline constexpr float kSonicMinBias = -80.0f;
inline constexpr float kSonicMaxBias = 80.0f;

// floor(T/d), then halving down to 1 (d = top_divisor, SonicParams::top_rung_divisor); {1} when
// T < d. Each rung is at least twice the next, so their sum is at most 2 x the largest rung (the
// stored-size goal).
std::vector<int> SonicRungSizes(int num_tokens, int top_divisor = SonicParams().top_rung_divisor);

// One kv head's segment, borrowed.
struct HeadInput {
  int num_tokens = 0;
  int head_dim = 0;
  const float* keys = nullptr;              // [T, D]
  const float* values = nullptr;            // [T, D]
  Rows rows;                                // [R, D] unscaled query rows (probes or proxy), R >= 1
  std::span<const uint32_t> nexus_offsets;  // ascending, < T
  // Tokens also kept exactly (the session's sinks), after the Nexus offsets: ascending, < T, may
  // overlap nexus_offsets.
  std::span<const uint32_t> pinned;
};

struct HeadFit {
  std::vector<NexusSet> rungs;         // one per requested size, same order
  std::vector<SonicRungError> errors;  // one per rung
  std::vector<float> fold;             // [D]
  std::vector<float> token_mass;       // [T] a_i: attention on token i summed over the rows
};

// Fits every size in `rung_sizes` (each in [1, T] for every head) for each head, with one backend
// batch per step for all of them. Errors are the backend's.
absl::StatusOr<std::vector<HeadFit>> FitHeads(std::span<const HeadInput> heads,
                                              std::span<const int> rung_sizes,
                                              const SonicParams& params,
                                              const ComputeBackend& compute);

}  // namespace nexuskv::compressor::internal

#endif  // NEXUSKV_COMPRESSOR_INTERNAL_SONIC_FIT_H_
