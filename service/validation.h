// Request validation: every check that decides whether a request may touch the store.
//
// Pure functions of the request (and of the session's stored spec where named); nothing here does
// I/O. Each error is the gRPC code from the contract (as absl::Status) with a message that says
// which field is wrong and what would be accepted:
//   INVALID_ARGUMENT    bad shape, dtype, byte length, non-finite value, id or budget;
//   RESOURCE_EXHAUSTED  a configured size limit (Limits), named with its flag.
// Thread-safe.
#ifndef NEXUSKV_SERVICE_VALIDATION_H_
#define NEXUSKV_SERVICE_VALIDATION_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nexuskv/v1/kv_memory.pb.h"
#include "proto/wire_dtype.h"
#include "service/limits.h"
#include "tensor/dtype.h"

namespace nexuskv::service {

// Model spec fields within their structural ranges, Hq a multiple of H, dtype known.
absl::Status ValidateModelSpec(const nexuskv::v1::ModelSpec& spec);

// Header of an AppendSegment stream: session id, role, spec, T, P, nexus_offsets and
// probe_offsets (strictly ascending, below T; one probe offset per probe or none), and the declared
// segment size against limits.
absl::Status ValidateSegmentHeader(const nexuskv::v1::SegmentHeader& header, const Limits& limits);

// One layer chunk against its (already validated) header: layer index in range, exact byte lengths
// for the declared shapes, finite values.
absl::Status ValidateLayerChunk(const nexuskv::v1::LayerChunk& chunk,
                                const nexuskv::v1::SegmentHeader& header);

// A GetCache request's own fields (id, method, budget range, dtype, bias mode). Checks that need the
// session (turn range, budget against raw turns) happen when the cache is planned.
absl::Status ValidateGetCacheRequest(const nexuskv::v1::GetCacheRequest& request);

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_VALIDATION_H_
