#include "service/segment_assembler.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "service/validation.h"

namespace nexuskv::service {

namespace v1 = ::nexuskv::v1;

absl::Status SegmentAssembler::Add(v1::AppendSegmentRequest&& request) {
  switch (request.payload_case()) {
    case v1::AppendSegmentRequest::kHeader: {
      if (has_header_) {
        return absl::InvalidArgumentError(
            "a second SegmentHeader arrived; send one header per AppendSegment stream");
      }
      NEXUSKV_RETURN_IF_ERROR(ValidateSegmentHeader(request.header(), limits_));
      segment_.header = std::move(*request.mutable_header());
      has_header_ = true;
      received_.assign(segment_.header.model().num_layers(), false);
      segment_.layers.resize(segment_.header.model().num_layers());
      return absl::OkStatus();
    }
    case v1::AppendSegmentRequest::kLayer: {
      if (!has_header_) {
        return absl::InvalidArgumentError(
            "a LayerChunk arrived before the SegmentHeader; send the header first");
      }
      v1::LayerChunk& chunk = *request.mutable_layer();
      NEXUSKV_RETURN_IF_ERROR(ValidateLayerChunk(chunk, segment_.header));
      if (received_[chunk.layer()]) {
        return absl::InvalidArgumentError(
            absl::StrCat("layer ", chunk.layer(), " was sent twice; send each layer once"));
      }
      received_[chunk.layer()] = true;
      ++num_received_;
      store::LayerTensors& layer = segment_.layers[chunk.layer()];
      layer.keys = std::move(*chunk.mutable_keys());
      layer.values = std::move(*chunk.mutable_values());
      layer.probe_queries = std::move(*chunk.mutable_probe_queries());
      layer.token_scores = std::move(*chunk.mutable_token_scores());
      return absl::OkStatus();
    }
    case v1::AppendSegmentRequest::PAYLOAD_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("an AppendSegmentRequest carried neither a header nor a layer");
}

absl::StatusOr<AssembledSegment> SegmentAssembler::Finish() && {
  if (!has_header_) {
    return absl::InvalidArgumentError(
        "the stream ended without a SegmentHeader; send a header, then one LayerChunk per layer");
  }
  if (num_received_ != received_.size()) {
    std::vector<uint32_t> missing;
    for (uint32_t l = 0; l < received_.size() && missing.size() < 8; ++l) {
      if (!received_[l]) missing.push_back(l);
    }
    return absl::InvalidArgumentError(
        absl::StrCat("the stream ended after ", num_received_, " of ", received_.size(),
                     " layers; missing layer(s) ", absl::StrJoin(missing, ", "),
                     missing.size() == 8 ? ", ..." : "", ". Nothing was stored"));
  }
  return std::move(segment_);
}

}  // namespace nexuskv::service
