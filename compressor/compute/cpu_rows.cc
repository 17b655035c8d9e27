// The CPU backend's row operations: weighted k-means, the fold solve (Eigen), top-k selection,
// gathers, merged-run sums and dtype conversion (see compute.h for each one's contract).
#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "compressor/compute/contract.h"
#include "compressor/compute/internal/cpu_backend.h"

namespace nexuskv::compressor::internal::cpu {

namespace {

// One k-means problem while it runs: its gathered points [n, D] and centroids [m, D], and the
// scratch of its steps (reused from item to item).
struct KMeansState {
  int n = 0;
  size_t m = 0, d = 0;
  int block = 0;
  float* cent = nullptr;
  uint32_t* assign = nullptr;
  std::vector<float> points, dots, half_norm;
  std::vector<double> sums, mass;
};

// Gathers the item's members into s->points, seeds s->cent and sizes the scratch.
void StartKMeans(const KMeansItem& item, KMeansState* s) {
  const size_t d = s->d;
  const int n = s->n;
  s->points.resize(static_cast<size_t>(n) * d);
  for (int i = 0; i < n; ++i) {
    std::copy_n(item.points.data.data() + item.members[i] * d, d, s->points.data() + i * d);
  }
  for (size_t j = 0; j < s->m; ++j) {
    std::copy_n(s->points.data() + item.seeds[j] * d, d, s->cent + j * d);
  }
  std::fill_n(s->assign, n, 0u);
  s->block = BlockRows(s->m, n);
  s->dots.resize(static_cast<size_t>(s->block) * s->m);
  s->half_norm.resize(s->m);
  s->sums.resize(s->m * d);
  s->mass.resize(s->m);
}

// Assigns every point to its nearest centroid, ties to the lower index.
void AssignPoints(KMeansState* s) {
  const size_t m = s->m, d = s->d;
  for (size_t j = 0; j < m; ++j) {
    const float* c = s->cent + j * d;
    float sq = 0.0f;
    for (size_t c_i = 0; c_i < d; ++c_i) sq += c[c_i] * c[c_i];
    s->half_norm[j] = 0.5f * sq;
  }
  // argmin |p - c|^2 == argmax p.c - |c|^2 / 2.
  for (int first = 0; first < s->n; first += s->block) {
    const int count = std::min(s->block, s->n - first);
    GemmNt(count, static_cast<int>(m), static_cast<int>(d), 1.0f, s->points.data() + first * d,
           s->cent, s->dots.data());
    for (int i = 0; i < count; ++i) {
      const float* row = s->dots.data() + static_cast<size_t>(i) * m;
      uint32_t best = 0;
      float best_score = -std::numeric_limits<float>::infinity();
      for (size_t j = 0; j < m; ++j) {
        const float score = FiniteLogit(row[j] - s->half_norm[j]);
        if (score > best_score) {
          best_score = score;
          best = static_cast<uint32_t>(j);
        }
      }
      s->assign[first + i] = best;
    }
  }
}

// Moves every centroid with weight to its members' weighted mean; an empty one stays put.
void UpdateCentroids(std::span<const float> weights, KMeansState* s) {
  const size_t m = s->m, d = s->d;
  std::fill(s->sums.begin(), s->sums.end(), 0.0);
  std::fill(s->mass.begin(), s->mass.end(), 0.0);
  for (int i = 0; i < s->n; ++i) {
    const uint32_t j = s->assign[i];
    const double w = weights[i];
    s->mass[j] += w;
    const float* p = s->points.data() + static_cast<size_t>(i) * d;
    double* sum = s->sums.data() + j * d;
    for (size_t c = 0; c < d; ++c) sum[c] += w * p[c];
  }
  for (size_t j = 0; j < m; ++j) {
    if (!(s->mass[j] > 0.0)) continue;
    float* c = s->cent + j * d;
    for (size_t c_i = 0; c_i < d; ++c_i) {
      c[c_i] = static_cast<float>(s->sums[j * d + c_i] / s->mass[j]);
    }
  }
}

}  // namespace

absl::Status CpuBackend::WeightedKMeans(std::span<const KMeansItem> items, int iterations,
                                        std::span<float> centroids,
                                        std::span<uint32_t> assignment) const {
  NEXUSKV_RETURN_IF_ERROR(CheckWeightedKMeans(items, iterations, centroids, assignment));
  KMeansState s;
  size_t centroid_offset = 0, member_offset = 0;
  for (const KMeansItem& item : items) {
    s.d = static_cast<size_t>(item.points.cols);
    s.n = static_cast<int>(item.members.size());
    s.m = item.seeds.size();
    s.cent = centroids.data() + centroid_offset;
    s.assign = assignment.data() + member_offset;
    centroid_offset += s.m * s.d;
    member_offset += static_cast<size_t>(s.n);
    StartKMeans(item, &s);
    // Lloyd: assign, then (unless that was the last assignment) move the centroids.
    for (int it = 0;; ++it) {
      AssignPoints(&s);
      if (it == iterations) break;
      UpdateCentroids(item.weights, &s);
    }
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::FoldVectors(std::span<const FoldItem> items, std::span<float> out) const {
  NEXUSKV_RETURN_IF_ERROR(CheckFoldVectors(items, out));
  size_t offset = 0;
  for (const FoldItem& item : items) {
    const Eigen::Index d = item.rows.cols;
    Eigen::MatrixXd gram = Eigen::MatrixXd::Zero(d, d);
    Eigen::VectorXd rhs = Eigen::VectorXd::Zero(d);
    Eigen::VectorXd q(d);
    for (int r = 0; r < item.rows.rows; ++r) {
      for (Eigen::Index c = 0; c < d; ++c) {
        q[c] = item.scale * static_cast<double>(FiniteLogit(item.rows.data[r * d + c]));
      }
      gram.selfadjointView<Eigen::Lower>().rankUpdate(q);
      rhs += q;
    }
    gram.triangularView<Eigen::Upper>() = gram.transpose();
    const double trace = gram.trace();
    float* fold = out.data() + offset;
    offset += static_cast<size_t>(d);
    std::fill_n(fold, d, 0.0f);
    if (!(trace > 0.0) || !std::isfinite(trace)) continue;
    gram.diagonal().array() += item.ridge * trace / static_cast<double>(d);
    const Eigen::VectorXd u = gram.llt().solve(rhs);
    for (Eigen::Index c = 0; c < d; ++c) {
      fold[c] = std::isfinite(u[c]) ? static_cast<float>(u[c]) : 0.0f;
    }
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::TopK(std::span<const float> scores, std::span<const int64_t> row_starts,
                              std::span<const int64_t> k, std::span<uint32_t> selected) const {
  NEXUSKV_RETURN_IF_ERROR(CheckTopK(scores, row_starts, k, selected));

  std::vector<uint32_t> order;
  std::vector<float> key;
  size_t offset = 0;
  for (size_t r = 0; r < k.size(); ++r) {
    const size_t want = static_cast<size_t>(k[r]);
    const std::span<const float> row = scores.subspan(
        static_cast<size_t>(row_starts[r]), static_cast<size_t>(row_starts[r + 1] - row_starts[r]));
    uint32_t* out = selected.data() + offset;
    offset += want;
    if (want == row.size()) {
      std::iota(out, out + want, 0u);
      continue;
    }
    if (want == 0) continue;
    key.resize(row.size());
    for (size_t i = 0; i < row.size(); ++i) {
      key[i] = row[i] == row[i] ? row[i] : -std::numeric_limits<float>::infinity();
    }
    order.resize(row.size());
    std::iota(order.begin(), order.end(), 0u);
    // A strict total order (score descending, then offset ascending): the k first are unique.
    const auto before = [&key](uint32_t a, uint32_t b) {
      return key[a] > key[b] || (key[a] == key[b] && a < b);
    };
    std::nth_element(order.begin(), order.begin() + static_cast<ptrdiff_t>(want), order.end(),
                     before);
    std::copy_n(order.begin(), want, out);
    std::sort(out, out + want);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Gather(std::span<const GatherItem> items, std::span<float> out) const {
  NEXUSKV_RETURN_IF_ERROR(CheckGather(items, out));
  float* dst = out.data();
  for (const GatherItem& item : items) {
    const size_t w = static_cast<size_t>(item.source.cols);
    for (uint32_t row : item.rows) {
      std::copy_n(item.source.data.data() + row * w, w, dst);
      dst += w;
    }
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::MergeRuns(std::span<const MergeRunItem> items, std::span<float> keys,
                                   std::span<float> values, std::span<float> bias) const {
  NEXUSKV_RETURN_IF_ERROR(CheckMergeRuns(items, keys, values, bias));

  std::vector<double> key_sum, value_sum;
  size_t offset = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    const MergeRunItem& item = items[k];
    const size_t d = static_cast<size_t>(item.keys.cols);
    key_sum.assign(d, 0.0);
    value_sum.assign(d, 0.0);
    double weight = 0.0;
    for (size_t i = 0; i < item.members.size(); ++i) {
      const double w = item.weights[i];
      const float* key = item.keys.data.data() + item.members[i] * d;
      const float* value = item.values.data.data() + item.members[i] * d;
      for (size_t c = 0; c < d; ++c) {
        key_sum[c] += w * key[c];
        value_sum[c] += w * value[c];
      }
      weight += w;
    }
    for (size_t c = 0; c < d; ++c) {
      keys[offset + c] =
          static_cast<float>(std::clamp(key_sum[c] / weight, -double{FLT_MAX}, double{FLT_MAX}));
      values[offset + c] =
          static_cast<float>(std::clamp(value_sum[c] / weight, -double{FLT_MAX}, double{FLT_MAX}));
    }
    bias[k] = static_cast<float>(std::log(static_cast<double>(item.members.size())));
    offset += d;
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::DecodeToFloat(std::span<const std::byte> src, DType dtype,
                                       std::span<float> dst) const {
  NEXUSKV_RETURN_IF_ERROR(CheckDecodeToFloat(src, dtype, dst));
  return ::nexuskv::DecodeToFloat(
      std::string_view(reinterpret_cast<const char*>(src.data()), src.size()), dtype, dst);
}

absl::Status CpuBackend::EncodeFromFloat(std::span<const float> src, DType dtype,
                                         std::span<std::byte> dst) const {
  NEXUSKV_RETURN_IF_ERROR(CheckEncodeFromFloat(src, dtype, dst));
  const std::string bytes = ::nexuskv::EncodeFromFloat(src, dtype);
  std::memcpy(dst.data(), bytes.data(), bytes.size());
  return absl::OkStatus();
}

}  // namespace nexuskv::compressor::internal::cpu
