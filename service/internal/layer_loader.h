// Reads one stored layer of one segment and decodes it to float32 for the compressor.
#ifndef NEXUSKV_SERVICE_INTERNAL_LAYER_LOADER_H_
#define NEXUSKV_SERVICE_INTERNAL_LAYER_LOADER_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "compressor/compressor.h"
#include "nexuskv/v1/kv_memory.pb.h"
#include "store/store.h"

namespace nexuskv::service {

// A layer in float32 that owns its buffers; view() borrows them.
struct DecodedLayer {
  std::vector<float> keys;              // [H, T, D]
  std::vector<float> values;            // [H, T, D]
  std::vector<float> probes;            // [Hq, P, D]; empty unless asked for.
  std::vector<uint32_t> nexus_offsets;  // the segment's pass-through Nexus tokens
  std::vector<uint32_t> probe_offsets;  // the tokens of its probes; empty: the last P
  // Borrows the vectors above; moving a DecodedLayer keeps their heap buffers, so it stays valid.
  compressor::LayerView view;
};

// The shape of a segment's layer with no tensors (a turn whose raw KV was dropped), for methods
// that serve from their fit alone.
DecodedLayer ShapeOnlyLayer(const nexuskv::v1::ModelSpec& model,
                            const store::SegmentRecord& record);

// The token scores of `layer` of a segment that has them ([H, T] float32).
absl::StatusOr<std::vector<float>> LoadTokenScores(store::Store& store,
                                                   const store::SessionKey& key,
                                                   const store::SegmentRecord& record,
                                                   uint32_t layer);

// Reads keys and values (and probe queries when with_probes) of
// `layer` of the segment `record`, checksums verified by the store, and decodes them. DataLoss /
// NotFound from the store pass through.
absl::StatusOr<DecodedLayer> LoadDecodedLayer(store::Store& store, const store::SessionKey& key,
                                              const nexuskv::v1::ModelSpec& model,
                                              const store::SegmentRecord& record, uint32_t layer,
                                              bool with_probes);

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_INTERNAL_LAYER_LOADER_H_
