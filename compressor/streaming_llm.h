// STREAMING_LLM: attention sinks plus a recent window (Xiao et al. 2023). No fit (a non-empty one
// is refused). Keeps the turn's most recent tokens; the session-start turn keeps its first
// kSinkTokens tokens (attention sinks) before anything else. Its Allocate gives the session-start
// turn its sinks, then fills the budget from the most recent turn backwards: one global sink +
// recent window over the session. The registry's fallback (Capabilities::fallback) for a turn
// whose own method's fit failed or is late.
//
//   std::unique_ptr<Compressor> method = NewStreamingLlmCompressor();  // or
//   CompressorRegistry::Default().Find("STREAMING_LLM")
#ifndef NEXUSKV_COMPRESSOR_STREAMING_LLM_H_
#define NEXUSKV_COMPRESSOR_STREAMING_LLM_H_

#include <memory>

#include "compressor/compressor.h"

namespace nexuskv::compressor {

std::unique_ptr<Compressor> NewStreamingLlmCompressor();

}  // namespace nexuskv::compressor

#endif  // NEXUSKV_COMPRESSOR_STREAMING_LLM_H_
