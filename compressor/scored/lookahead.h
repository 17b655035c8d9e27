// What stored probe queries read over a GetCache range's compressed tokens, per layer and kv
// head: the lookahead weights of scored selection (SelectionOptions::lookahead_share), and token
// scores for a worker that sends none (AddProbeScoresLayer, at the end).
//
// Lookahead weights: how much the newest probe queries of the range read each compressed token.
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

#include <cstdint>
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

// One turn's stored probe queries: [Hq, P, D] float32 and each probe's absolute position [P].
struct ProbeRows {
  std::span<const float> queries;
  std::span<const int64_t> positions;
};

// Token scores from probes, for a range whose turns came without the worker's: sets
// turns[u].scores[layer] ([H * T_u]) for every turn. Every probe of every set (the range's turns,
// raw ones too), in every query head of a kv head's group, attends causally over the range's
// compressed tokens at positions up to its own (turns[u].first_position + i; one softmax over
// the turns concatenated), and a token's score is the mean weight over the rows that see it, so
// early tokens are not ranked up for being seen by more rows; a token no probe sees scores 0.
// A probe that sees no token is skipped. Every turns[u].scores must already have more than
// `layer` layers; kv as for AddLookaheadLayer. InvalidArgument on any shape that disagrees.
absl::Status AddProbeScoresLayer(int layer, std::span<const ProbeRows> probes, int num_query_heads,
                                 std::span<const TurnKv> kv, int head_dim,
                                 const ComputeBackend& compute, std::vector<ScoredTurn>& turns);

}  // namespace nexuskv::compressor::scored

#endif  // NEXUSKV_COMPRESSOR_SCORED_LOOKAHEAD_H_
