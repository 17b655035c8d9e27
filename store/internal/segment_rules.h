// Pure helpers behind AppendSegment's turn rules: per-layer digests of a segment's tensors and
// human-readable descriptions of how a spec or a segment differs from what is stored.
//
//   std::vector<uint64_t> digests = ComputeLayerDigests(layers);
//   std::string diff = DescribeSpecDifference(incoming_spec, session.model());
//   if (!diff.empty()) return absl::FailedPreconditionError(diff);
//
// All functions are pure and thread-safe.
#ifndef NEXUSKV_STORE_INTERNAL_SEGMENT_RULES_H_
#define NEXUSKV_STORE_INTERNAL_SEGMENT_RULES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "nexuskv/v1/kv_memory.pb.h"
#include "store/records.pb.h"
#include "store/store.h"

namespace nexuskv::store::internal {

// XXH3-64 of keys || values || probe_queries || token_scores of each layer, in layer order.
// Streams the tensors through one hash state: no concatenated copy is made.
std::vector<uint64_t> ComputeLayerDigests(const std::vector<LayerTensors>& layers);

// Bytes of keys + values + probe queries + token scores of all layers.
uint64_t RawBytes(const std::vector<LayerTensors>& layers);

// Empty when the specs are equal (every field, MessageDifferencer::Equals). Otherwise the
// differing fields as "name <incoming> vs <stored>", comma separated, e.g.
// "num_kv_heads 8 vs 4".
std::string DescribeSpecDifference(const nexuskv::v1::ModelSpec& incoming,
                                   const nexuskv::v1::ModelSpec& stored);

// Empty when `incoming` is an identical re-send of `stored`: same num_tokens, first_position,
// role, num_probe_queries, raw_bytes, nexus_offsets, probe_offsets, has_token_scores and
// layer_digests. Otherwise what differs,
// incoming first, e.g. "num_tokens 12 vs 10" or "the tensor bytes of layer 3".
std::string DescribeSegmentDifference(const SegmentRecord& incoming, const SegmentRecord& stored);

}  // namespace nexuskv::store::internal

#endif  // NEXUSKV_STORE_INTERNAL_SEGMENT_RULES_H_
