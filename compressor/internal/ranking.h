// The fit shared by every selection method: per kv head, a ranking of the turn's token indices,
// most important first. Any budget n is served from one fit by keeping the first n indices of each
// head's ranking, so the entries kept at n are always a subset of those kept at n + 1.
//
// Encoding (little-endian), 12 header bytes then the indices:
//   'N' 'R'   magic
//   tag       uint8, the method that wrote it (RankingTag), so a fit is never served by another
//   width     uint8, bytes per index: 2 when T <= 65535, else 4
//   H, T      uint32 each
//   order     H*T indices of `width` bytes; row h is a permutation of [0, T).
//
//   std::vector<uint32_t> order = ...;  // [H, T]
//   std::string fit = EncodeRanking(RankingTag::kH2O, H, T, order);
//   NEXUSKV_ASSIGN_OR_RETURN(LayerEntries kept, MaterializeRanking(RankingTag::kH2O, layer, fit,
//   n));
//
// All functions are pure and thread-safe.
#ifndef NEXUSKV_COMPRESSOR_INTERNAL_RANKING_H_
#define NEXUSKV_COMPRESSOR_INTERNAL_RANKING_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "compressor/compressor.h"

namespace nexuskv::compressor::internal {

// Which method wrote a ranking. Values are stored: never renumber.
enum class RankingTag : uint8_t { kH2O = 1, kSnapKV = 2 };

inline constexpr size_t kRankingHeaderBytes = 12;

// Encodes `order` ([H, T], each row a permutation of [0, T), the caller's promise) as a fit.
std::string EncodeRanking(RankingTag tag, int num_kv_heads, int num_tokens,
                          std::span<const uint32_t> order);

// Decodes a whole fit into [H, T] indices. InvalidArgument when the bytes are not a ranking written
// with `tag` for exactly this H and T, or a row is not a permutation of [0, T).
absl::StatusOr<std::vector<uint32_t>> DecodeRanking(RankingTag tag, std::string_view fit,
                                                    int num_kv_heads, int num_tokens);

// The first n tokens of each head's ranking, gathered in ascending token order, bias empty.
// InvalidArgument when the layer's shape is inconsistent, n is outside [0, T], or DecodeRanking
// would refuse the fit for this layer's H and T.
absl::StatusOr<LayerEntries> MaterializeRanking(RankingTag tag, const LayerView& layer,
                                                std::string_view fit, int n);

// The rows of `kept` ([H, n] token indices, ascending within each head, each < T) gathered from a
// checked layer: keys, values and positions (first_position + index); bias empty.
LayerEntries GatherEntries(const LayerView& layer, int n, std::span<const uint32_t> kept);

// Appends offset + i for every i in [0, scores.size()) ordered by descending score, NaN counting as
// -infinity; ties go to the lower index first.
void AppendByScore(std::span<const float> scores, uint32_t offset, std::vector<uint32_t>* out);

}  // namespace nexuskv::compressor::internal

#endif  // NEXUSKV_COMPRESSOR_INTERNAL_RANKING_H_
