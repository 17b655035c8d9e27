// Lookahead weights for scored selection (SelectionOptions::lookahead_share): how much the newest
// probe queries of a GetCache range read each compressed token, per layer and kv head.
//
// A worker's token scores come from a repeat of each turn as it ends, so they rank what a turn's
// own text needs; the question that resumes the conversation (the newest turn, usually kept raw)
// may ask about a token nobody repeated. Its probes rank the history for that: for one layer,
// every query head of a kv head's group and every probe row attend over all the range's
// compressed tokens at once (one softmax over the turns concatenated, no causal mask: the probes
// come after them), and each token gets its attention mass summed over those rows
// (ComputeBackend::AttentionMass, one item per kv head).
//
//   for (ScoredTurn& t : turns) t.lookahead.resize(layers);
//   for (int l = 0; l < layers; ++l) {
//     // probes: [Hq, P, D] float32; kv[u].keys: turn u's stored keys of layer l, [H, T_u, D]
//     NEXUSKV_RETURN_IF_ERROR(AddLookaheadLayer(l, probes, hq, kv, d, compute, turns));
//   }
//
// Pure and thread-safe.
#ifndef NEXUSKV_COMPRESSOR_SCORED_LOOKAHEAD_H_
#define NEXUSKV_COMPRESSOR_SCORED_LOOKAHEAD_H_

#include <span>
#include <vector>

#include "absl/status/status.h"
#include "compressor/compute/compute.h"
#include "compressor/scored/selection.h"

namespace nexuskv::compressor::scored {

// Sets turns[u].lookahead[layer] ([H * T_u]) for every turn from `probes` ([Hq, P, D], P >= 1)
// and kv[u].keys (turn u's stored keys, [H, T_u, D] in kv[u].dtype, decoded once into the range;
// values unused; H = turns' kv heads, Hq a multiple of H). Every
// turns[u].lookahead must already have more than `layer` layers. InvalidArgument on any shape
// that disagrees; the backend's errors pass through.
absl::Status AddLookaheadLayer(int layer, std::span<const float> probes, int num_query_heads,
                               std::span<const TurnKv> kv, int head_dim,
                               const ComputeBackend& compute, std::vector<ScoredTurn>& turns);

}  // namespace nexuskv::compressor::scored

#endif  // NEXUSKV_COMPRESSOR_SCORED_LOOKAHEAD_H_
