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

namespace nexuskv::compressor {

std::unique_ptr<Compressor> NewH2OCompressor();

}  // namespace nexuskv::compressor

#endif  // NEXUSKV_COMPRESSOR_H2O_H_
