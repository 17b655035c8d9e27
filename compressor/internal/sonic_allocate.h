// SONIC's budget allocation across turns: every turn lands on a size its stored fit can serve
// (0, a rung of its ladder, or all T tokens raw when its raw KV is stored), so no answer ever
// needs a size the fit cannot serve and the remainder goes to other turns.
//
// The choice minimizes sum_t weight_t * error_t(option_t) within the budget, where error = output
// error + log-mass error of the rung (from the turn's fit summary; 0 raw; 2 for 0 entries: output
// and mass both lost) and weight_t = T_t * (1 + 2^-age_t), age 0 for the most recent turn: longer
// turns hold more attention mass, and recent turns are attended more. It is solved exactly (a
// multiple-choice knapsack, turns x budget cells) up to 2^24 cells, ties to fewer entries; beyond
// that, greedily: the upgrade with the largest weighted error reduction per entry that still fits,
// until none does, ties to the later turn.
// A turn without a usable summary gets the rung sizes Fit would make (SonicRungSizes) with the
// error model 1 - m/T.
//
// Pure and thread-safe.
#ifndef NEXUSKV_COMPRESSOR_INTERNAL_SONIC_ALLOCATE_H_
#define NEXUSKV_COMPRESSOR_INTERNAL_SONIC_ALLOCATE_H_

#include <cstdint>
#include <span>
#include <vector>

#include "compressor/compressor.h"

namespace nexuskv::compressor::internal {

// One servable size of a turn and its error.
struct LadderOption {
  int64_t entries = 0;
  double error = 0.0;
};

// The options of one turn, ascending in entries, starting with {0, 2.0}: every servable size of
// its ladder, then raw.
std::vector<LadderOption> TurnOptions(const TurnShape& turn);

// result[i] is one of TurnOptions(turns[i]).entries; the sum never exceeds max(budget, 0).
std::vector<int64_t> AllocateOnLadders(std::span<const TurnShape> turns, int64_t budget);

// SONIC's allocation (what Allocate does): recency first, with a summary of every turn.
//   1. Summaries: with k = min(1, budget / T_all), every turn gets
//      max(1, round(summary_share * k * budget * T_i / T_all)) entries (the session's first turn
//      at least kSinkTokens, its attention sinks), capped at T_i: summaries take
//      summary_share * k of the budget, less as the budget shrinks. A turn without raw KV gets
//      its largest rung of at most that (else its smallest). None when summary_share <= 0. If
//      the summaries alone exceed the budget: AllocateOnLadders.
//   2. The rest goes to the turns with raw KV, newest first, each up to T_i (then served raw)
//      before an older one gets more; the one left partial is served as its largest rung
//      <= n_i topped up with raw tokens (ranked by the lookahead queries when the service passes
//      them: LayerView::lookahead).
//   3. What is still left lifts turns without raw KV to larger rungs, newest first.
// The sum never exceeds max(budget, 0).
std::vector<int64_t> AllocateSonic(std::span<const TurnShape> turns, int64_t budget,
                                   double summary_share);

}  // namespace nexuskv::compressor::internal

#endif  // NEXUSKV_COMPRESSOR_INTERNAL_SONIC_ALLOCATE_H_
