// The Thrust backend's row operations: weighted k-means, the fold solve, top-k selection, gathers,
// merged-run sums and dtype conversion (see compute.h for each one's contract).
#include <math.h>
#include <thrust/binary_search.h>
#include <thrust/execution_policy.h>
#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/sequence.h>
#include <thrust/sort.h>
#include <thrust/transform.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/status_macros.h"
#include "compressor/compute/contract.h"
#include "cuda/internal/dtype_bits.h"
#include "cuda/internal/thrust_backend.h"

namespace nexuskv::cuda::internal {

namespace {

NEXUSKV_HD inline double ClampDouble(double x) {
  return x > double{FLT_MAX} ? double{FLT_MAX} : (x < -double{FLT_MAX} ? -double{FLT_MAX} : x);
}

// ---- WeightedKMeans ----

// Per item: where its points (gathered members), weights, centroids and assignment start.
struct KMeansMeta {
  int64_t point = 0;     // into points [sum n, D] (floats)
  int64_t member = 0;    // into weights / assignment (members)
  int64_t centroid = 0;  // into centroids (floats) and half_norm (centroids)
  int32_t n = 0, m = 0, d = 0;
  int64_t first_centroid = 0;  // global centroid id of the item's centroid 0
};

struct HalfNorm {
  const KMeansMeta* meta;
  const int64_t* centroid_starts;  // [items + 1] in centroids
  int items;
  const float* cent;
  float* half_norm;
  NEXUSKV_HD void operator()(int64_t j) const {
    const int k = FindItem(centroid_starts, items, j);
    const KMeansMeta& t = meta[k];
    const float* c = cent + t.centroid + (j - centroid_starts[k]) * t.d;
    float sq = 0.0f;
    for (int i = 0; i < t.d; ++i) sq += c[i] * c[i];
    half_norm[j] = 0.5f * sq;
  }
};

struct Assign {
  const KMeansMeta* meta;
  const int64_t* member_starts;
  const int64_t* centroid_starts;
  int items;
  const float* points;
  const float* cent;
  const float* half_norm;
  uint32_t* assign;
  int64_t* key;  // global centroid id of each member's assignment (for the update's sort)
  NEXUSKV_HD void operator()(int64_t i) const {
    const int k = FindItem(member_starts, items, i);
    const KMeansMeta& t = meta[k];
    const float* p = points + t.point + (i - member_starts[k]) * t.d;
    uint32_t best = 0;
    float best_score = -INFINITY;
    for (int j = 0; j < t.m; ++j) {
      const float* c = cent + t.centroid + static_cast<int64_t>(j) * t.d;
      float dot = 0.0f;
      for (int x = 0; x < t.d; ++x) dot += p[x] * c[x];
      const float score = Finite(dot - half_norm[centroid_starts[k] + j]);
      if (score > best_score) {
        best_score = score;
        best = static_cast<uint32_t>(j);
      }
    }
    assign[i] = best;
    key[i] = t.first_centroid + best;
  }
};

// Moves centroid (j, x) to the weighted mean of its members, read in member order from the
// stable sort of members by centroid.
struct Update {
  const KMeansMeta* meta;
  const int64_t* centroid_starts;  // [items + 1] in centroids
  int items;
  const int64_t* sorted_members;  // member indices, grouped by centroid, member order kept
  const int64_t* group_start;     // [centroids + 1]: each centroid's run in sorted_members
  const int64_t* member_starts;
  const float* points;
  const float* weights;
  float* cent;
  NEXUSKV_HD void operator()(int64_t flat) const {
    // flat indexes (global centroid, coordinate); every item's centroids have its own D, so the
    // coordinate space is packed like the centroid floats.
    const int64_t* starts = centroid_starts;
    int lo = 0, hi = items;
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      if (meta[mid].centroid <= flat)
        lo = mid;
      else
        hi = mid;
    }
    const KMeansMeta& t = meta[lo];
    const int64_t local = flat - t.centroid;
    const int64_t j = starts[lo] + local / t.d;
    const int x = static_cast<int>(local % t.d);
    double sum = 0.0, mass = 0.0;
    for (int64_t s = group_start[j]; s < group_start[j + 1]; ++s) {
      const int64_t i = sorted_members[s];
      const double w = weights[i];
      mass += w;
      sum += w * points[t.point + (i - member_starts[lo]) * t.d + x];
    }
    if (mass > 0.0) cent[flat] = static_cast<float>(sum / mass);
  }
};

// ---- FoldVectors ----

struct FoldMeta {
  int64_t row = 0;   // into rows (floats)
  int64_t gram = 0;  // into gram (doubles, D * D)
  int64_t out = 0;   // into rhs (doubles) and out (floats), D each
  int32_t r = 0, d = 0;
  double scale = 1.0, ridge = 0.0;
};

// gram[(i, j)] = sum_r q_ri q_rj and rhs[i] = sum_r q_ri, q = scale * FiniteLogit(x), in double.
struct Gram {
  const FoldMeta* meta;
  const int64_t* gram_starts;  // [items + 1] in gram entries
  int items;
  const float* rows;
  double* gram;
  double* rhs;
  NEXUSKV_HD void operator()(int64_t e) const {
    const int k = FindItem(gram_starts, items, e);
    const FoldMeta& t = meta[k];
    const int64_t local = e - gram_starts[k];
    const int i = static_cast<int>(local / t.d), j = static_cast<int>(local % t.d);
    double g = 0.0, b = 0.0;
    for (int r = 0; r < t.r; ++r) {
      const float* row = rows + t.row + static_cast<int64_t>(r) * t.d;
      const double qi = t.scale * static_cast<double>(Finite(row[i]));
      g += qi * (t.scale * static_cast<double>(Finite(row[j])));
      b += qi;
    }
    gram[e] = g;
    if (j == 0) rhs[t.out + i] = b;
  }
};

// One item's solve, in place: Cholesky of gram + ridge * trace / D * I, then two triangular solves.
struct Solve {
  const FoldMeta* meta;
  double* gram;
  double* rhs;
  float* out;
  NEXUSKV_HD void operator()(int64_t k) const {
    const FoldMeta& t = meta[k];
    const int d = t.d;
    double* a = gram + t.gram;
    double* b = rhs + t.out;
    float* u = out + t.out;
    for (int i = 0; i < d; ++i) u[i] = 0.0f;
    double trace = 0.0;
    for (int i = 0; i < d; ++i) trace += a[i * d + i];
    if (!(trace > 0.0) || !isfinite(trace)) return;
    const double add = t.ridge * trace / d;
    for (int i = 0; i < d; ++i) a[i * d + i] += add;
    // Lower Cholesky factor L in the lower triangle of a.
    for (int j = 0; j < d; ++j) {
      double diag = a[j * d + j];
      for (int p = 0; p < j; ++p) diag -= a[j * d + p] * a[j * d + p];
      if (!(diag > 0.0)) return;  // not positive definite: u stays 0
      const double l = sqrt(diag);
      a[j * d + j] = l;
      for (int i = j + 1; i < d; ++i) {
        double s = a[i * d + j];
        for (int p = 0; p < j; ++p) s -= a[i * d + p] * a[j * d + p];
        a[i * d + j] = s / l;
      }
    }
    for (int i = 0; i < d; ++i) {  // L y = b
      double s = b[i];
      for (int p = 0; p < i; ++p) s -= a[i * d + p] * b[p];
      b[i] = s / a[i * d + i];
    }
    for (int i = d - 1; i >= 0; --i) {  // L^T u = y
      double s = b[i];
      for (int p = i + 1; p < d; ++p) s -= a[p * d + i] * b[p];
      b[i] = s / a[i * d + i];
    }
    for (int i = 0; i < d; ++i) u[i] = isfinite(b[i]) ? static_cast<float>(b[i]) : 0.0f;
  }
};

// ---- TopK ----

// A key that sorts a row's scores best first with ties to the lower offset under a stable sort:
// the row in the high 32 bits, the score's order inverted in the low 32 (NaN as -infinity,
// -0.0 as +0.0, so that equal scores tie).
struct RankKey {
  const float* scores;
  const int64_t* row_starts;
  int rows;
  uint64_t* key;
  uint32_t* offset;
  NEXUSKV_HD void operator()(int64_t i) const {
    const int r = FindItem(row_starts, rows, i);
    float s = scores[i];
    if (s != s) s = -INFINITY;
    if (s == 0.0f) s = 0.0f;
    const uint32_t bits = FloatBits(s);
    const uint32_t ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);  // ascending
    key[i] = (static_cast<uint64_t>(r) << 32) | static_cast<uint32_t>(~ordered);
    offset[i] = static_cast<uint32_t>(i - row_starts[r]);
  }
};

// The first k[r] of each row's sorted run, keyed by (row, offset) for the final ascending sort.
struct TakeBest {
  const int64_t* out_starts;  // [rows + 1]
  const int64_t* row_starts;
  int rows;
  const uint32_t* sorted_offset;
  uint64_t* pick;
  NEXUSKV_HD void operator()(int64_t o) const {
    const int r = FindItem(out_starts, rows, o);
    const uint32_t offset = sorted_offset[row_starts[r] + (o - out_starts[r])];
    pick[o] = (static_cast<uint64_t>(r) << 32) | offset;
  }
};

struct LowBits {
  NEXUSKV_HD uint32_t operator()(uint64_t x) const { return static_cast<uint32_t>(x); }
};

// ---- Gather and MergeRuns ----

struct GatherMeta {
  int64_t source = 0;  // into the packed sources (floats)
  int64_t rows = 0;    // into the packed row lists
  int32_t w = 0;
};

struct GatherCopy {
  const GatherMeta* meta;
  const int64_t* out_starts;
  int items;
  const float* source;
  const uint32_t* rows;
  float* out;
  NEXUSKV_HD void operator()(int64_t o) const {
    const int k = FindItem(out_starts, items, o);
    const GatherMeta& t = meta[k];
    const int64_t local = o - out_starts[k];
    const int64_t i = local / t.w, c = local % t.w;
    out[o] = source[t.source + static_cast<int64_t>(rows[t.rows + i]) * t.w + c];
  }
};

struct MergeMeta {
  int64_t matrix = 0;  // into the packed keys and values (floats)
  int64_t member = 0;  // into the packed members and weights
  int32_t n = 0, d = 0;
};

struct MergeColumn {
  const MergeMeta* meta;
  const int64_t* out_starts;  // [items + 1] in output floats
  int items;
  const float* keys;
  const float* values;
  const uint32_t* members;
  const double* weights;
  float* out_keys;
  float* out_values;
  NEXUSKV_HD void operator()(int64_t o) const {
    const int k = FindItem(out_starts, items, o);
    const MergeMeta& t = meta[k];
    const int64_t c = o - out_starts[k];
    double key_sum = 0.0, value_sum = 0.0, weight = 0.0;
    for (int i = 0; i < t.n; ++i) {
      const double w = weights[t.member + i];
      const int64_t at = t.matrix + static_cast<int64_t>(members[t.member + i]) * t.d + c;
      key_sum += w * keys[at];
      value_sum += w * values[at];
      weight += w;
    }
    out_keys[o] = static_cast<float>(ClampDouble(key_sum / weight));
    out_values[o] = static_cast<float>(ClampDouble(value_sum / weight));
  }
};

// ---- dtype conversion ----

struct Decode {
  const uint8_t* src;
  DType dtype;
  float* dst;
  NEXUSKV_HD void operator()(int64_t i) const {
    if (dtype == DType::kFloat32) {
      uint32_t u = 0;
      for (int b = 0; b < 4; ++b) u |= static_cast<uint32_t>(src[4 * i + b]) << (8 * b);
      dst[i] = BitsFloat(u);
      return;
    }
    const uint16_t h = static_cast<uint16_t>(src[2 * i] | (src[2 * i + 1] << 8));
    dst[i] = dtype == DType::kFloat16 ? HalfToFloat(h) : BFloat16ToFloat(h);
  }
};

struct Encode {
  const float* src;
  DType dtype;
  uint8_t* dst;
  NEXUSKV_HD void operator()(int64_t i) const {
    if (dtype == DType::kFloat32) {
      const uint32_t u = FloatBits(src[i]);
      for (int b = 0; b < 4; ++b) dst[4 * i + b] = static_cast<uint8_t>(u >> (8 * b));
      return;
    }
    const uint16_t h = dtype == DType::kFloat16 ? FloatToHalf(src[i]) : FloatToBFloat16(src[i]);
    dst[2 * i] = static_cast<uint8_t>(h);
    dst[2 * i + 1] = static_cast<uint8_t>(h >> 8);
  }
};

}  // namespace

absl::Status ThrustBackend::WeightedKMeans(std::span<const compressor::KMeansItem> items,
                                           int iterations, std::span<float> centroids,
                                           std::span<uint32_t> assignment) const {
  constexpr std::string_view kOp = "WeightedKMeans";
  NEXUSKV_RETURN_IF_ERROR(
      compressor::CheckWeightedKMeans(items, iterations, centroids, assignment));
  if (items.empty()) return absl::OkStatus();
  // Host side: each item's members gathered into one packed point list, its seeds into the
  // centroids (the points themselves are the caller's; only members travel).
  std::vector<KMeansMeta> meta(items.size());
  std::vector<int64_t> member_sizes, centroid_sizes;
  int64_t point_floats = 0, centroid_floats = 0, members = 0, total_centroids = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    const compressor::KMeansItem& item = items[k];
    KMeansMeta& t = meta[k];
    t.n = static_cast<int32_t>(item.members.size());
    t.m = static_cast<int32_t>(item.seeds.size());
    t.d = item.points.cols;
    t.point = point_floats;
    t.member = members;
    t.centroid = centroid_floats;
    t.first_centroid = total_centroids;
    point_floats += static_cast<int64_t>(t.n) * t.d;
    centroid_floats += static_cast<int64_t>(t.m) * t.d;
    members += t.n;
    total_centroids += t.m;
    member_sizes.push_back(t.n);
    centroid_sizes.push_back(t.m);
  }
  const uint64_t bytes = static_cast<uint64_t>(point_floats + 2 * centroid_floats) * 4 +
                         static_cast<uint64_t>(members) * (4 + 4 + 8 + 8 + 8) +
                         static_cast<uint64_t>(total_centroids) * (4 + 8);
  NEXUSKV_RETURN_IF_ERROR(CheckFits(kOp, bytes));
  return Guard(kOp, [&]() -> absl::Status {
    std::vector<float> points(static_cast<size_t>(point_floats)), weights(members);
    std::vector<float> cent(static_cast<size_t>(centroid_floats));
    for (size_t k = 0; k < items.size(); ++k) {
      const compressor::KMeansItem& item = items[k];
      const KMeansMeta& t = meta[k];
      for (int i = 0; i < t.n; ++i) {
        std::copy_n(item.points.data.data() + static_cast<int64_t>(item.members[i]) * t.d, t.d,
                    points.begin() + t.point + static_cast<int64_t>(i) * t.d);
        weights[t.member + i] = item.weights[i];
      }
      for (int j = 0; j < t.m; ++j) {
        std::copy_n(points.begin() + t.point + static_cast<int64_t>(item.seeds[j]) * t.d, t.d,
                    cent.begin() + t.centroid + static_cast<int64_t>(j) * t.d);
      }
    }
    const DeviceVector<KMeansMeta> d_meta = ToDevice(meta);
    const DeviceVector<int64_t> member_starts = ToDevice(Starts(member_sizes));
    const DeviceVector<int64_t> centroid_starts = ToDevice(Starts(centroid_sizes));
    const DeviceVector<float> d_points = ToDevice(points), d_weights = ToDevice(weights);
    DeviceVector<float> d_cent = ToDevice(cent), half_norm(total_centroids);
    DeviceVector<uint32_t> d_assign(members);
    DeviceVector<int64_t> key(members), sorted(members), group_start(total_centroids + 1);
    const int n_items = static_cast<int>(items.size());
    for (int it = 0;; ++it) {
      ForEach(total_centroids,
              HalfNorm{Raw(d_meta), Raw(centroid_starts), n_items, Raw(d_cent), Raw(half_norm)});
      ForEach(members, Assign{Raw(d_meta), Raw(member_starts), Raw(centroid_starts), n_items,
                              Raw(d_points), Raw(d_cent), Raw(half_norm), Raw(d_assign), Raw(key)});
      if (it == iterations) break;
      // Members grouped by centroid, member order kept within a group.
      thrust::sequence(thrust::device, sorted.begin(), sorted.end());
      thrust::stable_sort_by_key(thrust::device, key.begin(), key.end(), sorted.begin());
      using Index = thrust::counting_iterator<int64_t>;
      thrust::lower_bound(thrust::device, key.begin(), key.end(), Index(0),
                          Index(total_centroids + 1), group_start.begin());
      ForEach(centroid_floats,
              Update{Raw(d_meta), Raw(centroid_starts), n_items, Raw(sorted), Raw(group_start),
                     Raw(member_starts), Raw(d_points), Raw(d_weights), Raw(d_cent)});
    }
    CopyOut(d_cent, centroids);
    CopyOut(d_assign, assignment);
    return absl::OkStatus();
  });
}

absl::Status ThrustBackend::FoldVectors(std::span<const compressor::FoldItem> items,
                                        std::span<float> out) const {
  constexpr std::string_view kOp = "FoldVectors";
  NEXUSKV_RETURN_IF_ERROR(compressor::CheckFoldVectors(items, out));
  if (items.empty()) return absl::OkStatus();
  std::vector<FoldMeta> meta(items.size());
  std::vector<int64_t> gram_sizes;
  int64_t rows = 0, gram = 0, outs = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    FoldMeta& t = meta[k];
    t.r = items[k].rows.rows;
    t.d = items[k].rows.cols;
    t.scale = items[k].scale;
    t.ridge = items[k].ridge;
    t.row = rows;
    t.gram = gram;
    t.out = outs;
    rows += static_cast<int64_t>(t.r) * t.d;
    gram += static_cast<int64_t>(t.d) * t.d;
    outs += t.d;
    gram_sizes.push_back(static_cast<int64_t>(t.d) * t.d);
  }
  NEXUSKV_RETURN_IF_ERROR(CheckFits(kOp, static_cast<uint64_t>(rows) * 4 +
                                             static_cast<uint64_t>(gram + outs) * 8 +
                                             static_cast<uint64_t>(outs) * 4));
  return Guard(kOp, [&]() -> absl::Status {
    const Packed<float> packed =
        Pack<float>(items, [](const compressor::FoldItem& item) { return item.rows.data; });
    const DeviceVector<FoldMeta> d_meta = ToDevice(meta);
    const DeviceVector<int64_t> gram_starts = ToDevice(Starts(gram_sizes));
    DeviceVector<double> d_gram(gram), rhs(outs);
    DeviceVector<float> d_out(outs);
    ForEach(gram, Gram{Raw(d_meta), Raw(gram_starts), static_cast<int>(items.size()),
                       Raw(packed.data), Raw(d_gram), Raw(rhs)});
    ForEach(static_cast<int64_t>(items.size()),
            Solve{Raw(d_meta), Raw(d_gram), Raw(rhs), Raw(d_out)});
    CopyOut(d_out, out);
    return absl::OkStatus();
  });
}

absl::Status ThrustBackend::TopK(std::span<const float> scores, std::span<const int64_t> row_starts,
                                 std::span<const int64_t> k, std::span<uint32_t> selected) const {
  constexpr std::string_view kOp = "TopK";
  NEXUSKV_RETURN_IF_ERROR(compressor::CheckTopK(scores, row_starts, k, selected));
  const int64_t n = static_cast<int64_t>(scores.size());
  const int64_t picked = static_cast<int64_t>(selected.size());
  if (picked == 0) return absl::OkStatus();
  NEXUSKV_RETURN_IF_ERROR(CheckFits(kOp, static_cast<uint64_t>(n) * (4 + 8 + 4) +
                                             static_cast<uint64_t>(picked) * (8 + 4) +
                                             static_cast<uint64_t>(row_starts.size()) * 16));
  return Guard(kOp, [&]() -> absl::Status {
    const int rows = static_cast<int>(k.size());
    std::vector<int64_t> out_starts(k.size() + 1, 0);
    for (size_t r = 0; r < k.size(); ++r) out_starts[r + 1] = out_starts[r] + k[r];
    const DeviceVector<float> d_scores = ToDevice(scores);
    const DeviceVector<int64_t> d_row_starts = ToDevice(row_starts);
    const DeviceVector<int64_t> d_out_starts = ToDevice(out_starts);
    DeviceVector<uint64_t> key(n), pick(picked);
    DeviceVector<uint32_t> offset(n), result(picked);
    ForEach(n, RankKey{Raw(d_scores), Raw(d_row_starts), rows, Raw(key), Raw(offset)});
    thrust::stable_sort_by_key(thrust::device, key.begin(), key.end(), offset.begin());
    ForEach(picked, TakeBest{Raw(d_out_starts), Raw(d_row_starts), rows, Raw(offset), Raw(pick)});
    thrust::sort(thrust::device, pick.begin(), pick.end());
    thrust::transform(thrust::device, pick.begin(), pick.end(), result.begin(), LowBits{});
    CopyOut(result, selected);
    return absl::OkStatus();
  });
}

absl::Status ThrustBackend::Gather(std::span<const compressor::GatherItem> items,
                                   std::span<float> out) const {
  constexpr std::string_view kOp = "Gather";
  NEXUSKV_RETURN_IF_ERROR(compressor::CheckGather(items, out));
  if (out.empty()) return absl::OkStatus();
  std::vector<GatherMeta> meta(items.size());
  std::vector<int64_t> out_sizes;
  uint64_t bytes = out.size() * 4;
  int64_t source = 0, row_list = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    meta[k] = {source, row_list, items[k].source.cols};
    source += static_cast<int64_t>(items[k].source.data.size());
    row_list += static_cast<int64_t>(items[k].rows.size());
    out_sizes.push_back(static_cast<int64_t>(items[k].rows.size()) * items[k].source.cols);
  }
  bytes += static_cast<uint64_t>(source) * 4 + static_cast<uint64_t>(row_list) * 4;
  NEXUSKV_RETURN_IF_ERROR(CheckFits(kOp, bytes));
  return Guard(kOp, [&]() -> absl::Status {
    const Packed<float> sources =
        Pack<float>(items, [](const compressor::GatherItem& item) { return item.source.data; });
    const Packed<uint32_t> rows =
        Pack<uint32_t>(items, [](const compressor::GatherItem& item) { return item.rows; });
    const DeviceVector<GatherMeta> d_meta = ToDevice(meta);
    const DeviceVector<int64_t> out_starts = ToDevice(Starts(out_sizes));
    DeviceVector<float> d_out(out.size());
    ForEach(static_cast<int64_t>(out.size()),
            GatherCopy{Raw(d_meta), Raw(out_starts), static_cast<int>(items.size()),
                       Raw(sources.data), Raw(rows.data), Raw(d_out)});
    CopyOut(d_out, out);
    return absl::OkStatus();
  });
}

absl::Status ThrustBackend::MergeRuns(std::span<const compressor::MergeRunItem> items,
                                      std::span<float> keys, std::span<float> values,
                                      std::span<float> bias) const {
  constexpr std::string_view kOp = "MergeRuns";
  NEXUSKV_RETURN_IF_ERROR(compressor::CheckMergeRuns(items, keys, values, bias));
  if (items.empty()) return absl::OkStatus();
  std::vector<MergeMeta> meta(items.size());
  std::vector<int64_t> out_sizes;
  int64_t matrix = 0, member = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    meta[k] = {matrix, member, static_cast<int32_t>(items[k].members.size()), items[k].keys.cols};
    matrix += static_cast<int64_t>(items[k].keys.data.size());
    member += static_cast<int64_t>(items[k].members.size());
    out_sizes.push_back(items[k].keys.cols);
  }
  NEXUSKV_RETURN_IF_ERROR(CheckFits(kOp, static_cast<uint64_t>(matrix) * 8 +
                                             static_cast<uint64_t>(member) * 12 +
                                             (keys.size() * 2 + bias.size()) * 4));
  return Guard(kOp, [&]() -> absl::Status {
    const Packed<float> d_keys =
        Pack<float>(items, [](const compressor::MergeRunItem& item) { return item.keys.data; });
    const Packed<float> d_values =
        Pack<float>(items, [](const compressor::MergeRunItem& item) { return item.values.data; });
    const Packed<uint32_t> d_members =
        Pack<uint32_t>(items, [](const compressor::MergeRunItem& item) { return item.members; });
    const Packed<double> d_weights =
        Pack<double>(items, [](const compressor::MergeRunItem& item) { return item.weights; });
    const DeviceVector<MergeMeta> d_meta = ToDevice(meta);
    const DeviceVector<int64_t> out_starts = ToDevice(Starts(out_sizes));
    DeviceVector<float> out_keys(keys.size()), out_values(values.size());
    ForEach(static_cast<int64_t>(keys.size()),
            MergeColumn{Raw(d_meta), Raw(out_starts), static_cast<int>(items.size()),
                        Raw(d_keys.data), Raw(d_values.data), Raw(d_members.data),
                        Raw(d_weights.data), Raw(out_keys), Raw(out_values)});
    CopyOut(out_keys, keys);
    CopyOut(out_values, values);
    // bias = log(run length) needs no device: it is set here, also for items with D == 0.
    for (size_t k = 0; k < items.size(); ++k) {
      bias[k] = static_cast<float>(std::log(static_cast<double>(items[k].members.size())));
    }
    return absl::OkStatus();
  });
}

absl::Status ThrustBackend::DecodeToFloat(std::span<const std::byte> src, DType dtype,
                                          std::span<float> dst) const {
  constexpr std::string_view kOp = "DecodeToFloat";
  NEXUSKV_RETURN_IF_ERROR(compressor::CheckDecodeToFloat(src, dtype, dst));
  if (dst.empty()) return absl::OkStatus();
  NEXUSKV_RETURN_IF_ERROR(CheckFits(kOp, src.size() + dst.size() * 4));
  return Guard(kOp, [&]() -> absl::Status {
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(src.data());
    const DeviceVector<uint8_t> d_src = ToDevice(std::span<const uint8_t>(bytes, src.size()));
    DeviceVector<float> d_dst(dst.size());
    ForEach(static_cast<int64_t>(dst.size()), Decode{Raw(d_src), dtype, Raw(d_dst)});
    CopyOut(d_dst, dst);
    return absl::OkStatus();
  });
}

absl::Status ThrustBackend::EncodeFromFloat(std::span<const float> src, DType dtype,
                                            std::span<std::byte> dst) const {
  constexpr std::string_view kOp = "EncodeFromFloat";
  NEXUSKV_RETURN_IF_ERROR(compressor::CheckEncodeFromFloat(src, dtype, dst));
  if (src.empty()) return absl::OkStatus();
  NEXUSKV_RETURN_IF_ERROR(CheckFits(kOp, src.size() * 4 + dst.size()));
  return Guard(kOp, [&]() -> absl::Status {
    const DeviceVector<float> d_src = ToDevice(src);
    DeviceVector<uint8_t> d_dst(dst.size());
    ForEach(static_cast<int64_t>(src.size()), Encode{Raw(d_src), dtype, Raw(d_dst)});
    thrust::copy(d_dst.begin(), d_dst.end(), reinterpret_cast<uint8_t*>(dst.data()));
    return absl::OkStatus();
  });
}

}  // namespace nexuskv::cuda::internal
