// Shape checks shared by every method: a LayerView and a budget are checked once, at the top of
// Fit and Materialize, so that the math below can index without further checks.
#ifndef NEXUSKV_COMPRESSOR_INTERNAL_LAYER_CHECK_H_
#define NEXUSKV_COMPRESSOR_INTERNAL_LAYER_CHECK_H_

#include "absl/status/status.h"
#include "compressor/compressor.h"

namespace nexuskv::compressor::internal {

// OK when H >= 1, Hq >= 1, Hq % H == 0, T >= 1, D >= 1, 0 <= P <= T, first_position >= 0, and the
// spans hold exactly H*T*D keys, H*T*D values and Hq*P*D probe floats, and probe_offsets is empty
// or P strictly ascending offsets below T. InvalidArgument naming the first violated rule otherwise.
absl::Status CheckLayer(const LayerView& layer);

// The shape rules of CheckLayer only (dims and first_position), not the span sizes: for views
// that carry no tensors (a turn served from its stored fit alone).
absl::Status CheckLayerShape(const LayerView& layer);

// OK when 0 <= n <= T; InvalidArgument otherwise. Assumes CheckLayer passed.
absl::Status CheckEntryCount(const LayerView& layer, int n);

}  // namespace nexuskv::compressor::internal

#endif  // NEXUSKV_COMPRESSOR_INTERNAL_LAYER_CHECK_H_
