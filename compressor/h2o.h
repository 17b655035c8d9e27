// H2O: heavy hitters plus recent tokens (Zhang et al. 2023). Fit ranks each kv head's tokens by
// alternating the most recent token not yet taken with the heaviest hitter not yet taken (most
// recent first), so any budget holds about half of each. Heavy = attention accumulated over the
// scoring queries (compressor.h), summed over the query-head group.
//
//   std::unique_ptr<Compressor> method = NewH2OCompressor();  // or
//   CompressorRegistry::Default().Find("H2O")
#ifndef NEXUSKV_COMPRESSOR_H2O_H_
#define NEXUSKV_COMPRESSOR_H2O_H_

#include <memory>

#include "compressor/compressor.h"
#include "compressor/compute/compute.h"

namespace nexuskv::compressor {

// Scores on `compute` (borrowed: it must outlive the method); a device failure fails the fit with
// Internal (compressor/internal/backend_error.h).
std::unique_ptr<Compressor> NewH2OCompressor(const ComputeBackend& compute = CpuCompute());

}  // namespace nexuskv::compressor

#endif  // NEXUSKV_COMPRESSOR_H2O_H_
