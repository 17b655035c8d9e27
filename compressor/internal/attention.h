// Attention scoring shared by H2O and SnapKV: how much attention the turn's scoring queries pay to
// each of its tokens, per kv head.
//
// Scoring queries. With probes (P > 0) they are the probes: query head q's probe j stands at token
// probe_offsets[j], or T - P + j when the view has no offsets. Without probes (P = 0) the proxy
// stands in: the keys of the last W = min(T, 16) tokens of the same kv head, used as queries by
// every query head of its group (post-rotary keys are the closest thing to the segment's own
// queries a tier can see), proxy position j at token T - W + j. Either way the window W is the
// number of scoring positions (ScoringWindow).
//
// Weights. Causal softmax in float32: the query at token i sees tokens 0 .. i, logits are
// q.k / sqrt(D). The whole layer is one ComputeBackend::AttentionMass batch (an item per kv head),
// so the softmax, its finite-logit rule and its tolerances are compute.h's.
//
//   std::vector<float> mass = AccumulatedAttention(layer);  // [H, T]
//
// Pure and thread-safe.
#ifndef NEXUSKV_COMPRESSOR_INTERNAL_ATTENTION_H_
#define NEXUSKV_COMPRESSOR_INTERNAL_ATTENTION_H_

#include <vector>

#include "absl/status/statusor.h"
#include "compressor/compressor.h"
#include "compressor/compute/compute.h"

namespace nexuskv::compressor::internal {

// Scoring positions a layer without probes gets from its own keys.
inline constexpr int kProxyQueries = 16;

// W: P when the layer has probes, else min(T, kProxyQueries).
int ScoringWindow(const LayerView& layer);

// out[h*T + i] = sum over the g = Hq/H query heads of kv head h's group and over the W scoring
// positions of the softmax weight on token i (0 for tokens a position cannot see). With the proxy
// every query head of the group contributes the same row, so the proxy's sum is counted g times.
// Each (query head, position) row sums to 1, so sum_i out[h*T + i] == g*W up to rounding.
// `layer` must have passed CheckLayer. Errors are the backend's (a device out of memory, say).
absl::StatusOr<std::vector<float>> AccumulatedAttention(const LayerView& layer,
                                                        const ComputeBackend& compute);

// The same on CpuCompute(), which cannot fail on a checked layer.
std::vector<float> AccumulatedAttention(const LayerView& layer);

}  // namespace nexuskv::compressor::internal

#endif  // NEXUSKV_COMPRESSOR_INTERNAL_ATTENTION_H_
