// SNAPKV: observation-window scores, pooled (Li et al. 2024), as kvpress's SnapKVPress computes
// them. Fit ranks each kv head's scoring window (last W tokens, most recent first), then the tokens
// before it by their attention from the window's queries, averaged over the query-head group,
// summed over the window, average-pooled (kernel 5); the session's first turn keeps its first
// kSinkTokens tokens before both.
//
//   std::unique_ptr<Compressor> method = NewSnapKvCompressor();  // or
//   CompressorRegistry::Default().Find("SNAPKV")
#ifndef NEXUSKV_COMPRESSOR_SNAPKV_H_
#define NEXUSKV_COMPRESSOR_SNAPKV_H_

#include <memory>

#include "compressor/compressor.h"
#include "compressor/compute/compute.h"

namespace nexuskv::compressor {

// Scores on `compute` (borrowed: it must outlive the method); a device failure fails the fit with
// Internal (compressor/internal/backend_error.h).
std::unique_ptr<Compressor> NewSnapKvCompressor(const ComputeBackend& compute = CpuCompute());

}  // namespace nexuskv::compressor

#endif  // NEXUSKV_COMPRESSOR_SNAPKV_H_
