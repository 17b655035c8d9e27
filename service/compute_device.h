// SelectCompute: the compute backend the server's compressors run on, from --device and
// --gpu_memory_mb.
//
//   --device=cpu   CpuCompute(), the reference.
//   --device=cuda  the GPU backend (cuda/thrust_compute.h) on CUDA device 0, each operation bounded
//                  to gpu_memory_bytes of device memory; FailedPrecondition when there is no usable
//                  GPU or the build has no CUDA backend, the message saying which and what to run
//                  instead: the server must then refuse to start.
//   --device=auto  the GPU when one is usable, else the CPU; never an error. The description says
//                  which and why (the GPU's name, or why none could be used).
// Answers are the same either way within compute.h's tolerances (selections identical where scores
// are not tied).
//
//   NEXUSKV_ASSIGN_OR_RETURN(SelectedCompute compute, SelectCompute("auto", uint64_t{4} << 30));
//   Log(LogLevel::kInfo, "compute_device", {{"backend", compute.name()},
//                                           {"detail", compute.description()}});
//   auto registry = compressor::CompressorRegistry::Builtin(compute.backend());
//
// The CUDA backend is linked only in a build that found nvcc (NEXUSKV_HAVE_CUDA); without it
// "cuda" fails and "auto" picks the CPU, both saying so.
#ifndef NEXUSKV_SERVICE_COMPUTE_DEVICE_H_
#define NEXUSKV_SERVICE_COMPUTE_DEVICE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "compressor/compute/compute.h"

namespace nexuskv::service {

// The backend SelectCompute chose; owns a device backend. Movable; backend() stays valid across
// moves (it lives on the heap, or is the CPU singleton).
class SelectedCompute {
 public:
  SelectedCompute(std::unique_ptr<compressor::ComputeBackend> owned,
                  const compressor::ComputeBackend* backend, std::string description)
      : owned_(std::move(owned)), backend_(backend), description_(std::move(description)) {}

  const compressor::ComputeBackend& backend() const { return *backend_; }
  // The backend's name(): "cpu" or "cuda".
  std::string_view name() const { return backend_->name(); }
  // One line for the startup log: the backend, the device, and why it was chosen, e.g.
  // "cpu (--device=auto: no usable CUDA device: ...; the CPU computes)".
  const std::string& description() const { return description_; }

 private:
  std::unique_ptr<compressor::ComputeBackend> owned_;
  const compressor::ComputeBackend* backend_;
  std::string description_;
};

// See the file comment. InvalidArgument for a device other than auto, cpu and cuda, or for
// gpu_memory_bytes 0 with cuda or auto; FailedPrecondition for cuda without a usable GPU.
absl::StatusOr<SelectedCompute> SelectCompute(std::string_view device, uint64_t gpu_memory_bytes);

// Whether this build links a CUDA backend (nvcc was found at configure time).
bool BuildHasCudaBackend();

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_COMPUTE_DEVICE_H_
