// The Thrust backend's factory, its device probe and the helpers every operation shares.
#include <cstdio>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cuda/internal/thrust_backend.h"
#include "cuda/thrust_compute.h"

#if NEXUSKV_CUDA_DEVICE_BUILD
#include <cuda_runtime_api.h>
#endif

namespace nexuskv::cuda {

namespace internal {

std::vector<int64_t> Starts(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> starts(sizes.size() + 1, 0);
  for (size_t k = 0; k < sizes.size(); ++k) starts[k + 1] = starts[k] + sizes[k];
  return starts;
}

absl::Status ThrustBackend::CheckFits(std::string_view op, uint64_t bytes) const {
  if (bytes <= options_.memory_limit_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrFormat(
      "%s: the batch needs %.1f MiB of device memory, more than the limit of %.1f MiB "
      "(--gpu_memory_mb); send smaller batches or raise the limit",
      op, bytes / 1048576.0, options_.memory_limit_bytes / 1048576.0));
}

}  // namespace internal

DeviceInfo ProbeDevice(int device) {
  DeviceInfo info;
#if NEXUSKV_CUDA_DEVICE_BUILD
  int count = 0;
  cudaError_t error = cudaGetDeviceCount(&count);
  if (error == cudaErrorNoDevice || error == cudaErrorInsufficientDriver) {
    // What a machine without an NVIDIA GPU or driver reports (the runtime then finds no driver
    // it can run on, or none at all).
    info.description = absl::StrCat(
        "no CUDA GPU found (no NVIDIA driver or device; the CUDA "
        "runtime says: ",
        cudaGetErrorString(error), ")");
    return info;
  }
  if (error != cudaSuccess) {
    info.description = absl::StrCat("no usable CUDA device: ", cudaGetErrorString(error));
    return info;
  }
  if (count == 0) {
    info.description = "no CUDA GPU found (the driver sees none)";
    return info;
  }
  if (device < 0 || device >= count) {
    info.description =
        absl::StrCat("CUDA device ", device, " does not exist (the driver sees ", count, ")");
    return info;
  }
  cudaDeviceProp prop;
  error = cudaGetDeviceProperties(&prop, device);
  if (error != cudaSuccess) {
    info.description = absl::StrCat("CUDA device ", device, ": ", cudaGetErrorString(error));
    return info;
  }
  info.usable = true;
  info.memory_bytes = prop.totalGlobalMem;
  info.description = absl::StrFormat("%s (sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
                                     prop.totalGlobalMem / 1073741824.0);
#else
  (void)device;
  info.usable = true;
  info.description = "the host twin (Thrust's OpenMP system on the CPU)";
#endif
  return info;
}

absl::StatusOr<std::unique_ptr<compressor::ComputeBackend>> MakeThrustCompute(
    const ThrustComputeOptions& options) {
  if (options.memory_limit_bytes == 0) {
    return absl::InvalidArgumentError("the GPU memory limit must be positive");
  }
  const DeviceInfo info = ProbeDevice(options.device);
  if (!info.usable) return absl::FailedPreconditionError(info.description);
#if NEXUSKV_CUDA_DEVICE_BUILD
  const cudaError_t error = cudaSetDevice(options.device);
  if (error != cudaSuccess) {
    return absl::FailedPreconditionError(
        absl::StrCat("cudaSetDevice(", options.device, "): ", cudaGetErrorString(error)));
  }
#endif
  return std::make_unique<internal::ThrustBackend>(options);
}

}  // namespace nexuskv::cuda
