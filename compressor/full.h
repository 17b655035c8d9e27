// FULL: no compression. No fit (a non-empty one is refused); Materialize requires n == T and
// returns every token of every head, in order. The reference every other answer is compared with.
//
//   std::unique_ptr<Compressor> method = NewFullCompressor();  // or
//   CompressorRegistry::Default().Find("FULL")
#ifndef NEXUSKV_COMPRESSOR_FULL_H_
#define NEXUSKV_COMPRESSOR_FULL_H_

#include <memory>

#include "compressor/compressor.h"

namespace nexuskv::compressor {

std::unique_ptr<Compressor> NewFullCompressor();

}  // namespace nexuskv::compressor

#endif  // NEXUSKV_COMPRESSOR_FULL_H_
