// Spending a GetCache budget by the worker's token scores (SegmentHeader.has_token_scores).
//
// Every (layer, kv head, token) of the compressed turns is ranked by its score, one ranking for
// all of them, and the budget's entries go to the highest; the session's first kSinkTokens tokens
// always count as kept. An answer has the same number of entries N in every head of a layer, so
// a biased answer pads each head up to the fullest one with entries of bias -inf, and an answer
// without bias gives every head of a layer the layer's mean count (EvenOverHeads).
// docs/sonic.md ("the signal study") measures both against a fixed count per (layer, head).
// A biased answer may also spend a share of the budget on merged entries (PlanMergeRuns), each
// standing for a run of evicted tokens.
//
//   HeadCounts kept = SpendByTokenScores(scores, heads, tokens, budget, /*sink_turn=*/0);
//   // kept[u][l][h]: tokens of compressed turn u kept by head h of layer l.
//   auto runs = PlanMergeRuns(scores, heads, tokens, kept, /*entries=*/2, kMergeRunLength, 0);
//   // runs[l][h]: up to 2 runs of the best evicted tokens, each served as one merged entry.
//
// Pure function; thread-safe.
#ifndef NEXUSKV_SERVICE_SCORE_BUDGET_H_
#define NEXUSKV_SERVICE_SCORE_BUDGET_H_

#include <cstdint>
#include <span>
#include <vector>

#include "compressor/compressor.h"

namespace nexuskv::service {

using compressor::kSinkTokens;

// kept[u][l][h]: tokens of compressed turn u that kv head h of layer l keeps.
using HeadCounts = std::vector<std::vector<std::vector<int64_t>>>;

// scores[u][l]: [heads, tokens[u]] float32 scores of compressed turn u in layer l (every turn has
// the same number of layers). budget: entries per kv head per layer to spend over all the turns
// (sum over turns, as Compressor::Allocate gets it). sink_turn: the index u of the session's
// first turn, or -1 when it is not among them. Returns how many tokens each (turn, layer, head)
// keeps: budget * heads * layers in all (everything when that covers every token).
HeadCounts SpendByTokenScores(const std::vector<std::vector<std::vector<float>>>& scores,
                              int64_t heads, std::span<const int64_t> tokens, int64_t budget,
                              int sink_turn);

// A token of a compressed turn: u indexes the turns as in SpendByTokenScores, i is the offset.
struct TokenRef {
  int u = 0;
  int64_t i = 0;
  friend bool operator==(const TokenRef&, const TokenRef&) = default;
};
// The tokens one merged entry stands for (compressor/merge.h), in history order.
using MergeRun = std::vector<TokenRef>;

// runs[l][h]: the runs of kv head h of layer l. With kept = SpendByTokenScores(...) (the same
// scores, tokens and sink_turn), each head evicts the tokens past its count in
// compressor::RankByTokenScores order; of those, over all the turns, the entries * run_length of
// highest score (ties to the earlier token) are cut, in history order, into runs of run_length
// (the last may be shorter): at most `entries` runs per head, fewer when few tokens were evicted.
std::vector<std::vector<std::vector<MergeRun>>> PlanMergeRuns(
    const std::vector<std::vector<std::vector<float>>>& scores, int64_t heads,
    std::span<const int64_t> tokens, const HeadCounts& kept, int64_t entries, int run_length,
    int sink_turn);

// The same count in every head of a layer (an answer with no bias cannot pad a head): n[u][l] =
// the mean over heads of kept[u][l][h], rounded down.
std::vector<std::vector<int64_t>> EvenOverHeads(const HeadCounts& kept);

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_SCORE_BUDGET_H_
