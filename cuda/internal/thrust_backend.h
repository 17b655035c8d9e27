// The Thrust backend's class and the helpers its source files share: thrust_attention.cu holds
// the softmax and attention operations, thrust_rows.cu the row operations (k-means, the fold
// solve, top-k, gather, merged runs, dtype conversion), thrust_compute.cu the factory and probe.
//
// Shape of every operation: check the batch (contract.h), total its device bytes against the
// limit (DeviceBytes), pack each item's host spans into one device buffer with per-item offsets
// (Pack), run one Thrust algorithm per step over the whole batch with a functor that finds its
// item by FindItem, copy the outputs back. Functors read raw device pointers (Raw).
#ifndef NEXUSKV_CUDA_INTERNAL_THRUST_BACKEND_H_
#define NEXUSKV_CUDA_INTERNAL_THRUST_BACKEND_H_

#include <thrust/copy.h>
#include <thrust/device_vector.h>
#include <thrust/execution_policy.h>
#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>

#include <cfloat>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "compressor/compute/compute.h"
#include "cuda/internal/system.h"
#include "cuda/thrust_compute.h"

namespace nexuskv::cuda::internal {

template <typename T>
using DeviceVector = thrust::device_vector<T>;

class ThrustBackend final : public compressor::ComputeBackend {
 public:
  explicit ThrustBackend(const ThrustComputeOptions& options) : options_(options) {}

  std::string_view name() const override {
    return NEXUSKV_CUDA_DEVICE_BUILD ? "cuda" : "cuda-host";
  }
  absl::Status Softmax(std::span<float> logits, int rows, int cols, std::span<const int32_t> causal,
                       std::span<float> log_sum_exp) const override;
  absl::Status AttentionMass(std::span<const compressor::AttentionMassItem> items,
                             std::span<float> mass) const override;
  absl::Status Attend(std::span<const compressor::AttendItem> items,
                      const compressor::AttendOutputs& out) const override;
  absl::Status ColumnLogSumExp(std::span<const compressor::ColumnLogSumExpItem> items,
                               std::span<double> out) const override;
  absl::Status WeightedKMeans(std::span<const compressor::KMeansItem> items, int iterations,
                              std::span<float> centroids,
                              std::span<uint32_t> assignment) const override;
  absl::Status FoldVectors(std::span<const compressor::FoldItem> items,
                           std::span<float> out) const override;
  absl::Status TopK(std::span<const float> scores, std::span<const int64_t> row_starts,
                    std::span<const int64_t> k, std::span<uint32_t> selected) const override;
  absl::Status Gather(std::span<const compressor::GatherItem> items,
                      std::span<float> out) const override;
  absl::Status MergeRuns(std::span<const compressor::MergeRunItem> items, std::span<float> keys,
                         std::span<float> values, std::span<float> bias) const override;
  absl::Status DecodeToFloat(std::span<const std::byte> src, DType dtype,
                             std::span<float> dst) const override;
  absl::Status EncodeFromFloat(std::span<const float> src, DType dtype,
                               std::span<std::byte> dst) const override;

  // ResourceExhausted unless `bytes` of device memory fit the limit.
  absl::Status CheckFits(std::string_view op, uint64_t bytes) const;

 private:
  ThrustComputeOptions options_;
};

// Runs `body` (returning absl::Status), turning what Thrust or the CUDA runtime throws into a
// Status: std::bad_alloc (a device allocation refused) is ResourceExhausted, anything else
// Internal, each naming the operation.
template <typename Body>
absl::Status Guard(std::string_view op, Body&& body) {
  try {
    return body();
  } catch (const std::bad_alloc& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat(std::string(op), ": the device refused an allocation (", e.what(), ")"));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(std::string(op), ": ", e.what()));
  }
}

template <typename T>
T* Raw(DeviceVector<T>& v) {
  return thrust::raw_pointer_cast(v.data());
}
template <typename T>
const T* Raw(const DeviceVector<T>& v) {
  return thrust::raw_pointer_cast(v.data());
}

// Runs f(i) for i in [0, n) on the device: one launch over a batch's whole index space.
template <typename F>
void ForEach(int64_t n, F f) {
  using Index = thrust::counting_iterator<int64_t>;
  if (n > 0) thrust::for_each(thrust::device, Index(0), Index(n), f);
}

// compute.h's finite-logit rule (FiniteLogit) for device code, which cannot call the host inline.
NEXUSKV_HD inline float Finite(float x) {
  x = x > FLT_MAX ? FLT_MAX : x;
  x = x < -FLT_MAX ? -FLT_MAX : x;
  return x == x ? x : -FLT_MAX;
}

// The item k of a packed batch that element `index` belongs to: starts[k] <= index <
// starts[k + 1], with starts[0] == 0 and `items` + 1 entries (empty items share a start; the last
// of them is found). Binary search.
NEXUSKV_HD inline int FindItem(const int64_t* starts, int items, int64_t index) {
  int lo = 0, hi = items;  // answer in [lo, hi)
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (starts[mid] <= index) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Exclusive prefix sums of `sizes` with the total appended: [0, s0, s0 + s1, ..., total].
std::vector<int64_t> Starts(const std::vector<int64_t>& sizes);

// One device buffer holding a host span per item, back to back (item k at host_starts[k]).
template <typename T>
struct Packed {
  DeviceVector<T> data;
  std::vector<int64_t> host_starts;
  DeviceVector<int64_t> starts;
};

// A device copy of host memory. An empty range gives an empty vector without calling Thrust's copy,
// which dereferences the first element of a range even when it is empty (UBSan: a null
// reference).
template <typename T>
DeviceVector<T> ToDevice(std::span<const T> host) {
  if (host.empty()) return DeviceVector<T>();
  return DeviceVector<T>(host.data(), host.data() + host.size());
}
template <typename T>
DeviceVector<T> ToDevice(const std::vector<T>& host) {
  return ToDevice(std::span<const T>(host));
}

// Packs get(item) (a std::span<const T>) of every item with one host-to-device copy.
template <typename T, typename Item, typename Get>
Packed<T> Pack(std::span<const Item> items, Get get) {
  std::vector<int64_t> sizes;
  sizes.reserve(items.size());
  for (const Item& item : items) sizes.push_back(static_cast<int64_t>(get(item).size()));
  Packed<T> packed;
  packed.host_starts = Starts(sizes);
  std::vector<T> staging(static_cast<size_t>(packed.host_starts.back()));
  for (size_t k = 0; k < items.size(); ++k) {
    const std::span<const T> part = get(items[k]);
    std::copy(part.begin(), part.end(), staging.begin() + packed.host_starts[k]);
  }
  packed.data = ToDevice(staging);
  packed.starts = ToDevice(packed.host_starts);
  return packed;
}

// Copies a device vector into a host span of the same size.
template <typename T>
void CopyOut(const DeviceVector<T>& from, std::span<T> to) {
  if (from.empty()) return;
  thrust::copy(from.begin(), from.end(), to.data());
}

}  // namespace nexuskv::cuda::internal

#endif  // NEXUSKV_CUDA_INTERNAL_THRUST_BACKEND_H_
