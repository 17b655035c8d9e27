// The pure ranking rules behind the selection methods (exposed here so that tests can check them
// on hand-made scores). The methods themselves: compressor/full.h, streaming_llm.h, h2o.h,
// snapkv.h, sonic.h.
#ifndef NEXUSKV_COMPRESSOR_INTERNAL_METHODS_H_
#define NEXUSKV_COMPRESSOR_INTERNAL_METHODS_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "compressor/compressor.h"
#include "compressor/sonic.h"

namespace nexuskv::compressor::internal {

// SnapKV's 1-D average pooling kernel (kvpress SnapKVPress default).
inline constexpr int kSnapKvPoolKernel = 5;


// StreamingLLM's order for a turn of T tokens: with `session_start` its first min(T, kSinkTokens)
// tokens, then the rest from the most recent back; otherwise all tokens, most recent first.
std::vector<uint32_t> StreamingLlmOrder(int num_tokens, bool session_start);

// H2O's order for one kv head from its accumulated attention ([T]): alternately the most recent
// token not yet taken and the highest-scoring token not yet taken (ties to the lower index),
// starting with the most recent.
std::vector<uint32_t> H2OOrder(std::span<const float> scores);

// SnapKV's pooling: out[i] = sum of scores[i-2 .. i+2] / 5, out-of-range terms counting as 0
// (avg_pool1d with kernel 5, padding 2, stride 1, padding counted).
std::vector<float> AveragePool(std::span<const float> scores);

// SnapKV's order for one kv head: alternately the most recent of the last `window` tokens not yet
// taken and the best of the prefix [0, T - window) by pooled score (ties to the lower index),
// starting with the window; when one side is exhausted the other continues. The first `sinks`
// tokens (kSinkTokens in the session's first turn, else 0) come before all of them.
// `prefix_scores` has T - window entries, already pooled.
std::vector<uint32_t> SnapKvOrder(std::span<const float> prefix_scores, int window, int sinks = 0);

}  // namespace nexuskv::compressor::internal

#endif  // NEXUSKV_COMPRESSOR_INTERNAL_METHODS_H_
