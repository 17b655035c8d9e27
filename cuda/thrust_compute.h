// The GPU backend of the compute seam (compressor/compute/compute.h): every operation written on
// Thrust algorithms and functors that run on the device, batched over the items of one call (one
// launch per step covers every layer, kv head and turn of the batch).
//
// The same sources are built twice, and a binary links one of the two:
//   nexuskv_cuda       (nvcc, only when CMake found it): runs on a CUDA GPU; name() "cuda".
//   nexuskv_cuda_host  (g++ -fopenmp, Thrust's OpenMP system): the host twin, name() "cuda-host".
//                      It runs the device code's logic on the CPU, so CI tests it on every run
//                      against CpuCompute() (cuda/thrust_compute_test.cc) without a GPU.
//
//   absl::StatusOr<std::unique_ptr<compressor::ComputeBackend>> gpu =
//       cuda::MakeThrustCompute({.memory_limit_bytes = uint64_t{8} << 30});
//   if (!gpu.ok()) { /* no usable device: the message says why; compute on CpuCompute() */ }
//
// Results agree with CpuCompute() within compute.h's tolerances (selections exact where scores
// are not tied); inputs are checked by compressor/compute/contract.h, so a bad batch gets the
// CPU's InvalidArgument. An operation whose batch needs more device memory than
// memory_limit_bytes returns ResourceExhausted naming the operation, the bytes it needs and the
// limit, before it allocates; an allocation or launch the device refuses is ResourceExhausted or
// Internal with the driver's words. Thread-safe; every call copies its inputs to the device and
// its outputs back (the spans stay the caller's host memory, as compute.h says).
#ifndef NEXUSKV_CUDA_THRUST_COMPUTE_H_
#define NEXUSKV_CUDA_THRUST_COMPUTE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "compressor/compute/compute.h"

namespace nexuskv::cuda {

struct ThrustComputeOptions {
  // Device memory one operation may hold at once (its inputs, scratch and outputs).
  uint64_t memory_limit_bytes = uint64_t{4} << 30;
  // The CUDA device ordinal (ignored by the host twin).
  int device = 0;
};

// What the linked build can compute on.
struct DeviceInfo {
  bool usable = false;        // a device MakeThrustCompute can use
  std::string description;    // e.g. "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)", or why none is
  uint64_t memory_bytes = 0;  // the device's global memory; 0 when not usable
};
DeviceInfo ProbeDevice(int device = 0);

// The backend of the linked build (see above). FailedPrecondition when the device is not usable
// (the message carries ProbeDevice's description); InvalidArgument when memory_limit_bytes is 0.
absl::StatusOr<std::unique_ptr<compressor::ComputeBackend>> MakeThrustCompute(
    const ThrustComputeOptions& options);

}  // namespace nexuskv::cuda

#endif  // NEXUSKV_CUDA_THRUST_COMPUTE_H_
