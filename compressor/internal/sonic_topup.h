// TopUpRung: a rung of a SONIC ladder topped up with raw tokens, each taken out of its cluster
// (compressor/sonic.h, "rung < n < T"). Pure function; thread-safe.
#ifndef NEXUSKV_COMPRESSOR_INTERNAL_SONIC_TOPUP_H_
#define NEXUSKV_COMPRESSOR_INTERNAL_SONIC_TOPUP_H_

#include <span>

#include "compressor/internal/sonic_ladder.h"

namespace nexuskv::compressor::internal {

// Adds `extra` raw tokens (bias 0) to one head's rung: the tokens ranked first by `priority`
// (the lookahead queries' attention when the service passed them, else the fit's own token
// mass) that an entry of the rung merged with others (or that no entry stands for), each taken
// out of its cluster:
// the cluster's mass, hence its bias, and its weighted mean value lose the token's share. The
// rung's mass over the rows is unchanged. `mass` is the head's token mass (all 1 when the fit
// had no rows). Caller guarantees extra <= T - m.
NexusSet TopUpRung(const NexusSet& rung, const float* keys, const float* values,
                   std::span<const float> mass, std::span<const float> priority, bool rowless,
                   int extra, int head_dim);

}  // namespace nexuskv::compressor::internal

#endif  // NEXUSKV_COMPRESSOR_INTERNAL_SONIC_TOPUP_H_
