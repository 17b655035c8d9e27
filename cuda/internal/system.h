// What the cuda/ sources compile against, in both of their builds:
//   - nexuskv_cuda (nvcc): Thrust's CUDA system; the functors run on the GPU.
//   - nexuskv_cuda_host (g++ -fopenmp, THRUST_DEVICE_SYSTEM=THRUST_DEVICE_SYSTEM_OMP): the same
//     sources, the "device" being the host's OpenMP threads. This is the host twin CI runs.
// Code is written once on Thrust algorithms and NEXUSKV_HD functors; nothing here may depend on
// which build it is except through the names below.
#ifndef NEXUSKV_CUDA_INTERNAL_SYSTEM_H_
#define NEXUSKV_CUDA_INTERNAL_SYSTEM_H_

#include <thrust/detail/config.h>

#include <cstring>

#if THRUST_DEVICE_SYSTEM == THRUST_DEVICE_SYSTEM_CUDA
#define NEXUSKV_HD __host__ __device__
#define NEXUSKV_CUDA_DEVICE_BUILD 1
#else
#define NEXUSKV_HD
#define NEXUSKV_CUDA_DEVICE_BUILD 0
#endif

#endif  // NEXUSKV_CUDA_INTERNAL_SYSTEM_H_
