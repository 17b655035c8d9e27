// Spending a GetCache budget by the worker's token scores (SegmentHeader.has_token_scores).
//
// Every (layer, kv head, token) of the compressed turns is ranked by its score, one ranking for
// all of them, and the budget's entries go to the highest. Each layer then gets, per turn, its
// share of them: the count divided by the number of kv heads, since an answer has the same
// number of entries in every head of a layer. The session's first kSinkTokens tokens always
// count as kept. docs/sonic.md ("the signal study") measures why: one ranking over layers beats
// a fixed count per layer 2-6x on the real model.
//
//   std::vector<std::vector<int64_t>> n = SpendByTokenScores(scores, heads, tokens, budget, 0);
//   // n[u][l]: entries per kv head of compressed turn u in layer l.
//
// Pure function; thread-safe.
#ifndef NEXUSKV_SERVICE_SCORE_BUDGET_H_
#define NEXUSKV_SERVICE_SCORE_BUDGET_H_

#include <cstdint>
#include <span>
#include <vector>

namespace nexuskv::service {

inline constexpr int64_t kSinkTokens = 4;

// scores[u][l]: [heads, tokens[u]] float32 scores of compressed turn u in layer l (every turn has
// the same number of layers). budget: entries per kv head per layer to spend over all the turns
// (sum over turns, as Compressor::Allocate gets it). sink_turn: the index u of the session's
// first turn, or -1 when it is not among them. Returns n[u][l] in [0, tokens[u]], with
// sum over u and l of n[u][l] <= budget * layers.
std::vector<std::vector<int64_t>> SpendByTokenScores(
    const std::vector<std::vector<std::vector<float>>>& scores, int64_t heads,
    std::span<const int64_t> tokens, int64_t budget, int sink_turn);

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_SCORE_BUDGET_H_
