#include "service/compute_device.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "compressor/compute/fallback_compute.h"

// Set by service/CMakeLists.txt when the CUDA backend is linked (nexuskv_cuda, or the host twin
// in a test).
#ifndef NEXUSKV_COMPUTE_DEVICE_CUDA
#define NEXUSKV_COMPUTE_DEVICE_CUDA 0
#endif
#if NEXUSKV_COMPUTE_DEVICE_CUDA
#include "cuda/thrust_compute.h"
#endif

#ifndef NEXUSKV_NO_CUDA_REASON
#define NEXUSKV_NO_CUDA_REASON "nvcc was not found at configure time"
#endif

namespace nexuskv::service {
namespace {

constexpr int kDevice = 0;  // The CUDA device ordinal the server computes on.

SelectedCompute Cpu(std::string why) {
  return SelectedCompute(nullptr, &compressor::CpuCompute(), absl::StrCat("cpu (", why, ")"));
}

std::string MiB(uint64_t bytes) { return absl::StrFormat("%.0f MiB", bytes / 1048576.0); }

#if NEXUSKV_COMPUTE_DEVICE_CUDA
// Logs the 1st, 10th, 100th, ... operation the GPU failed and the CPU computed instead.
void LogFallback(std::string_view op, const absl::Status& error) {
  static std::atomic<uint64_t> count{0};
  const uint64_t n = count.fetch_add(1, std::memory_order_relaxed) + 1;
  uint64_t power = 1;
  while (power < n) power *= 10;
  if (power != n) return;
  Log(LogLevel::kWarning, "compute_fallback",
      {{"op", op},
       {"fallbacks", n},
       {"error", error.ToString()},
       {"detail",
        "the GPU failed this operation; the CPU computed it (logged at 1, 10, 100, ...)"}});
}

// The GPU backend, or why it cannot be used (ProbeDevice's description, or the factory's error).
absl::StatusOr<SelectedCompute> Gpu(std::string_view device, uint64_t gpu_memory_bytes) {
  const cuda::DeviceInfo info = cuda::ProbeDevice(kDevice);
  if (!info.usable) return absl::FailedPreconditionError(info.description);
  absl::StatusOr<std::unique_ptr<compressor::ComputeBackend>> gpu =
      cuda::MakeThrustCompute({.memory_limit_bytes = gpu_memory_bytes, .device = kDevice});
  if (!gpu.ok()) return gpu.status();
  // The CPU stands behind the GPU: an operation the device fails (a batch over the bound, memory
  // it refused, a lost device) runs again on the CPU, so no fit or answer fails for it.
  auto guarded = std::make_unique<compressor::FallbackCompute>(
      *std::move(gpu), compressor::CpuCompute(), LogFallback);
  const compressor::ComputeBackend* backend = guarded.get();
  return SelectedCompute(
      std::move(guarded), backend,
      absl::StrCat(std::string(backend->name()), " on ", info.description, " (--device=",
                   std::string(device), device == "auto" ? ": a usable GPU was found" : "",
                   "; at most ", MiB(gpu_memory_bytes), " of GPU memory per batch, --gpu_memory_mb",
                   info.memory_bytes != 0 && gpu_memory_bytes > info.memory_bytes
                       ? absl::StrCat(", more than the device's ", MiB(info.memory_bytes))
                       : "",
                   ")"));
}
#else
absl::StatusOr<SelectedCompute> Gpu(std::string_view, uint64_t) {
  return absl::FailedPreconditionError(
      absl::StrCat("this build has no CUDA backend (", NEXUSKV_NO_CUDA_REASON, ")"));
}
#endif

}  // namespace

bool BuildHasCudaBackend() { return NEXUSKV_COMPUTE_DEVICE_CUDA != 0; }

absl::StatusOr<SelectedCompute> SelectCompute(std::string_view device, uint64_t gpu_memory_bytes) {
  if (device == "cpu") return Cpu("--device=cpu");
  if (device != "cuda" && device != "auto") {
    return absl::InvalidArgumentError(
        absl::StrCat("--device must be auto, cpu or cuda, got \"", std::string(device), "\""));
  }
  if (gpu_memory_bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--device=", std::string(device), " needs a positive GPU memory bound (--gpu_memory_mb)"));
  }
  absl::StatusOr<SelectedCompute> gpu = Gpu(device, gpu_memory_bytes);
  if (gpu.ok()) return gpu;
  if (device == "auto") {
    return Cpu(absl::StrCat("--device=auto: ", gpu.status().message(), "; the CPU computes"));
  }
  return absl::Status(
      absl::IsInvalidArgument(gpu.status()) ? absl::StatusCode::kInvalidArgument
                                            : absl::StatusCode::kFailedPrecondition,
      absl::StrCat("--device=cuda but ", gpu.status().message(),
                   "; start with --device=cpu, or --device=auto to use a GPU only when one is "
                   "present"));
}

}  // namespace nexuskv::service
