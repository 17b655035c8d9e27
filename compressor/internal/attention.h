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
// q.k / sqrt(D) from cblas_sgemm, each row's max is subtracted before exp, and logits that overflow
// float32 are clamped to +-FLT_MAX (NaN to -FLT_MAX) so that finite input never yields NaN or Inf.
//
//   std::vector<float> mass = AccumulatedAttention(layer);  // [H, T]
//
// Pure and thread-safe (OpenBLAS sgemm is reentrant).
#ifndef NEXUSKV_COMPRESSOR_INTERNAL_ATTENTION_H_
#define NEXUSKV_COMPRESSOR_INTERNAL_ATTENTION_H_

#include <bit>
#include <cstdint>
#include <vector>

#include "compressor/compressor.h"

namespace nexuskv::compressor::internal {

// Scoring positions a layer without probes gets from its own keys.
inline constexpr int kProxyQueries = 16;

// W: P when the layer has probes, else min(T, kProxyQueries).
int ScoringWindow(const LayerView& layer);

// out[h*T + i] = sum over the g = Hq/H query heads of kv head h's group and over the W scoring
// positions of the softmax weight on token i (0 for tokens a position cannot see). With the proxy
// every query head of the group contributes the same row, so the proxy's sum is counted g times.
// Each (query head, position) row sums to 1, so sum_i out[h*T + i] == g*W up to rounding.
// `layer` must have passed CheckLayer.
std::vector<float> AccumulatedAttention(const LayerView& layer);

// exp(x) for x <= 0 as plain float arithmetic, so that loops calling it vectorize (libm's expf
// does not without -ffast-math). Cephes' expf: x = n ln2 + r with |r| <= ln2/2, a degree-6
// polynomial for exp(r), then 2^n built in the exponent bits; relative error < 3e-7. Below -87
// (where 2^n would leave the normal range) it returns 0, which a softmax weight next to the row's
// max (exp(0) = 1) cannot tell apart from the true value (< 2e-38).
inline float ExpNonPositive(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer.
  constexpr float kMin = -87.0f;
  const float clamped = x < kMin ? kMin : x;
  const float shifted = clamped * kLog2e + kRoundMagic;
  const float n = shifted - kRoundMagic;
  const int32_t exponent = std::bit_cast<int32_t>(shifted) - std::bit_cast<int32_t>(kRoundMagic);
  const float r = clamped - n * kLn2Hi - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float exp_r = p * r * r + r + 1.0f;
  const float two_n = std::bit_cast<float>((exponent + 127) << 23);
  return x < kMin ? 0.0f : exp_r * two_n;
}

}  // namespace nexuskv::compressor::internal

#endif  // NEXUSKV_COMPRESSOR_INTERNAL_ATTENTION_H_
