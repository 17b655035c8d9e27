// SegmentAssembler: turns the messages of one AppendSegment stream into a validated segment.
//
// The stream is a SegmentHeader followed by one LayerChunk per layer, in any order. Each message is
// validated as it arrives (so a bad stream is refused before the rest is received) and its tensor
// bytes are moved, not copied, into the segment.
//
//   SegmentAssembler assembler(limits);
//   for (auto& message : stream) NEXUSKV_RETURN_IF_ERROR(assembler.Add(std::move(message)));
//   NEXUSKV_ASSIGN_OR_RETURN(AssembledSegment segment, std::move(assembler).Finish());
//
// Errors are INVALID_ARGUMENT (stream shape, sizes, values) or RESOURCE_EXHAUSTED (limits), with
// messages naming the field. Not thread-safe: one assembler per stream.
#ifndef NEXUSKV_SERVICE_SEGMENT_ASSEMBLER_H_
#define NEXUSKV_SERVICE_SEGMENT_ASSEMBLER_H_

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nexuskv/v1/kv_memory.pb.h"
#include "service/limits.h"
#include "store/store.h"

namespace nexuskv::service {

struct AssembledSegment {
  nexuskv::v1::SegmentHeader header;
  std::vector<store::LayerTensors> layers;  // Indexed by layer, all present.
};

class SegmentAssembler {
 public:
  explicit SegmentAssembler(const Limits& limits) : limits_(limits) {}
  SegmentAssembler(const SegmentAssembler&) = delete;
  SegmentAssembler& operator=(const SegmentAssembler&) = delete;

  // Accepts the next message of the stream. After an error the assembler must not be used again.
  absl::Status Add(nexuskv::v1::AppendSegmentRequest&& request);

  // The whole segment once the client has closed the stream; INVALID_ARGUMENT when the header or
  // any layer is missing.
  absl::StatusOr<AssembledSegment> Finish() &&;

  bool has_header() const { return has_header_; }
  const nexuskv::v1::SegmentHeader& header() const { return segment_.header; }

 private:
  const Limits limits_;
  bool has_header_ = false;
  std::vector<bool> received_;
  uint32_t num_received_ = 0;
  AssembledSegment segment_;
};

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_SEGMENT_ASSEMBLER_H_
