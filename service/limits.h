// Limits: the sizes nexuskv accepts, all set from server flags (defaults below).
//
// Structural maxima (dims that no real model reaches) are refused with INVALID_ARGUMENT; sizes that
// are plausible but over this server's configured capacity with RESOURCE_EXHAUSTED naming the
// limit and its flag.
#ifndef NEXUSKV_SERVICE_LIMITS_H_
#define NEXUSKV_SERVICE_LIMITS_H_

#include <cstdint>

namespace nexuskv::service {

// Structural maxima: beyond these a request is malformed, whatever the server's capacity.
inline constexpr uint32_t kMaxLayers = 1024;
inline constexpr uint32_t kMaxKvHeads = 1024;
inline constexpr uint32_t kMaxQueryHeads = 8192;
inline constexpr uint32_t kMaxHeadDim = 1024;
inline constexpr uint32_t kMaxProbeQueries = 4096;
inline constexpr uint32_t kMaxModelIdLength = 256;

struct Limits {
  // --max_message_bytes: largest single gRPC message (one LayerChunk), enforced by gRPC itself.
  uint64_t max_message_bytes = 64ull << 20;
  // --max_tokens_per_turn: T of one segment.
  uint32_t max_tokens_per_turn = 65536;
  // --max_segment_bytes: keys + values + probes of all layers of one segment, as declared by its
  // header (checked before any tensor is received).
  uint64_t max_segment_bytes = 2ull << 30;
  // --max_concurrent_streams: KvMemory calls running at once (streams and unary); beyond it new
  // calls fail fast with RESOURCE_EXHAUSTED.
  uint32_t max_concurrent_calls = 256;
};

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_LIMITS_H_
