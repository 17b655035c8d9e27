// How a method reports a failure of its compute backend (compressor/compute/compute.h).
//
// A device backend can fail where the CPU reference cannot: ResourceExhausted when a batch needs
// more device memory than its bound (--gpu_memory_mb), Internal when the driver or a launch fails.
// To the method's caller that is the server's own failure, never the caller's quota, so a method
// returns it as Internal, naming the work, the backend and the backend's code and words. The
// service serves a turn whose fit failed that way by its fallback (STREAMING_LLM from the raw KV),
// as it does any failed fit, and a failed answer reaches the client as INTERNAL with the reason.
// InvalidArgument (a batch whose shapes break an operation's contract: a bug in the method, the
// same on every backend) passes through unchanged, as does any error of CpuCompute().
//
//   NEXUSKV_RETURN_IF_ERROR(BackendError(compute.AttentionMass(items, mass), compute, "H2O
//   scoring"));
#ifndef NEXUSKV_COMPRESSOR_INTERNAL_BACKEND_ERROR_H_
#define NEXUSKV_COMPRESSOR_INTERNAL_BACKEND_ERROR_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "compressor/compute/compute.h"

namespace nexuskv::compressor::internal {

inline absl::Status BackendError(absl::Status status, const ComputeBackend& compute,
                                 std::string_view work) {
  if (status.ok() || absl::IsInvalidArgument(status) || &compute == &CpuCompute()) return status;
  return absl::InternalError(absl::StrCat(
      std::string(work), " failed on the ", std::string(compute.name()),
      " compute backend: ", absl::StatusCodeToString(status.code()), ": ", status.message()));
}

}  // namespace nexuskv::compressor::internal

#endif  // NEXUSKV_COMPRESSOR_INTERNAL_BACKEND_ERROR_H_
