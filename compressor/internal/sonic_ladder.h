// The stored form of a SONIC fit: one layer's ladder of Nexus-token sets, and the per-turn summary
// the planner reads. Both are versioned little-endian binary formats, laid out below (docs/sonic.md,
// "Storage", has the sizes); a fit is never served by code that does not know its version.
//
// Ladder (one per layer), "NS" version 1:
//   header, 32 bytes:
//     0  'N' 'S'         magic
//     2  u8  version     1
//     3  u8  dtype       keys/values element type, as the wire enum: 1 float32, 2 float16,
//                        3 bfloat16
//     4  u32 H, 8 u32 T, 12 u32 D
//     16 u32 K           number of rungs (>= 1)
//     20 u32 nexus       pass-through tokens of the turn (LayerView::nexus_offsets)
//     24 u32 probe_rows  query rows the fit used per kv head (0: none at all)
//     28 u32 flags       bit 0: the rows were the proxy (no probe queries); bit 1: the
//                        assignments are u32
//   rung sizes           K x u32, strictly descending, each in [1, T]
//   rung errors          K x H x 2 float32: mean relative output error and mean |log-mass error|
//                        on the fitting rows (see SonicRungError)
//   fold                 H x D float32: the bias-free direction u of each kv head
//   token mass           H x T float32: a_i, the attention token i receives summed over the rows
//   then for each rung k (table order), for each kv head h, m = size[k] entries:
//     offsets  m x u32   token offset each entry stands at, ascending
//     bias     m x float32
//     keys     m x D     dtype
//     values   m x D     dtype
//     assign   T x (u16 when every rung has <= 65535 entries, else u32): the entry each token
//              was merged into; all ones (0xFFFF / 0xFFFFFFFF) when none (kept exactly or
//              dropped). With the token mass it lets Materialize top a rung up with raw tokens.
//
// Summary (one per turn, all layers), "NY" version 1:
//   'N' 'Y', u8 version 1, u8 0, u32 T, u32 K, then K x (u32 size, float32 output error,
//   float32 log-mass error), errors averaged over layers and kv heads.
//
// All functions are pure and thread-safe.
#ifndef NEXUSKV_COMPRESSOR_INTERNAL_SONIC_LADDER_H_
#define NEXUSKV_COMPRESSOR_INTERNAL_SONIC_LADDER_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "compressor/compressor.h"
#include "tensor/dtype.h"

namespace nexuskv::compressor::internal {

inline constexpr uint8_t kSonicLadderVersion = 1;
inline constexpr uint8_t kSonicSummaryVersion = 1;
inline constexpr size_t kSonicHeaderBytes = 32;
inline constexpr uint32_t kSonicFlagProxy = 1;
inline constexpr uint32_t kSonicFlagWideAssignment = 2;

// How well one rung of one kv head reproduces the segment on the fitting rows.
struct SonicRungError {
  float output_error = 0.0f;    // mean over rows of |o~ - o| / |o|
  float log_mass_error = 0.0f;  // mean over rows of |log Z~ - log Z|
};

// assignment[] of a token that no fitted entry stands for (kept exactly, or not kept at all).
inline constexpr uint32_t kNotMerged = 0xFFFFFFFF;

// One rung of one kv head, float32 in memory.
struct NexusSet {
  std::vector<uint32_t> offsets;     // [m], ascending
  std::vector<float> bias;           // [m]
  std::vector<float> keys;           // [m, D]
  std::vector<float> values;         // [m, D]
  std::vector<uint32_t> assignment;  // [T] the entry each token was merged into, or kNotMerged
};

// A whole layer's ladder, as Fit builds it before encoding.
struct SonicLadder {
  int num_kv_heads = 0;
  int num_tokens = 0;
  int head_dim = 0;
  DType dtype = DType::kFloat32;  // storage type of keys and values
  uint32_t num_nexus = 0;
  uint32_t probe_rows = 0;
  bool proxy = false;
  std::vector<int> rungs;                   // [K], strictly descending
  std::vector<SonicRungError> errors;       // [K, H]
  std::vector<float> fold;                  // [H, D]
  std::vector<float> token_mass;            // [H, T]
  std::vector<std::vector<NexusSet>> sets;  // [K][H]
};

// Encodes a ladder whose vectors have the sizes documented above (the caller's promise).
std::string EncodeSonicLadder(const SonicLadder& ladder);

// The parsed header of an encoded ladder, with byte offsets into it; no tensor is copied.
struct SonicLadderIndex {
  int num_kv_heads = 0;
  int num_tokens = 0;
  int head_dim = 0;
  DType dtype = DType::kFloat32;
  uint32_t num_nexus = 0;
  uint32_t probe_rows = 0;
  bool proxy = false;
  std::vector<int> rungs;
  std::vector<SonicRungError> errors;  // [K, H]
  std::vector<size_t> rung_offset;     // [K] byte offset of rung k's first head
  int assignment_width = 2;            // bytes per assignment entry
};

// Checks the magic, version, dtype, rung table (strictly descending sizes in [1, T]) and the exact
// length. InvalidArgument naming the first problem otherwise.
absl::StatusOr<SonicLadderIndex> IndexSonicLadder(std::string_view fit);

// Rung k of every kv head, decoded to float32. `fit` must be the string `index` was built from.
std::vector<NexusSet> DecodeSonicRung(std::string_view fit, const SonicLadderIndex& index, int k);

// The fold vectors [H, D] of an indexed ladder.
std::vector<float> DecodeSonicFold(std::string_view fit, const SonicLadderIndex& index);

// The token masses [H, T] of an indexed ladder.
std::vector<float> DecodeSonicTokenMass(std::string_view fit, const SonicLadderIndex& index);

// Per-turn summary: rung sizes with their errors averaged over layers and heads.
struct SonicSummary {
  int num_tokens = 0;
  std::vector<int> rungs;              // descending
  std::vector<SonicRungError> errors;  // [K]
};

std::string EncodeSonicSummary(const SonicSummary& summary);
// InvalidArgument when the bytes are not a version-1 summary.
absl::StatusOr<SonicSummary> DecodeSonicSummary(std::string_view bytes);

// The stored size of the ladder's keys and values per layer in entries per kv head: the sum of the
// rung sizes (the goal is at most 2x the largest rung).
int64_t SonicStoredEntries(std::span<const int> rungs);

}  // namespace nexuskv::compressor::internal

#endif  // NEXUSKV_COMPRESSOR_INTERNAL_SONIC_LADDER_H_
