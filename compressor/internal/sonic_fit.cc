#include "compressor/internal/sonic_fit.h"

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <numeric>

namespace nexuskv::compressor::internal {
namespace {

// Indices of `scores` at `members`, by descending score, ties to the lower index.
std::vector<uint32_t> ByAttention(std::span<const uint32_t> members, std::span<const float> a) {
  std::vector<uint32_t> order(members.begin(), members.end());
  std::stable_sort(order.begin(), order.end(), [&](uint32_t x, uint32_t y) { return a[x] > a[y]; });
  return order;
}

// One entry of a set before it is sorted by offset.
struct Entry {
  uint32_t offset;
  float bias;
  const float* key = nullptr;  // raw entries point into the segment; fitted ones own theirs
  const float* value = nullptr;
  std::vector<float> own_key, own_value;
  std::vector<uint32_t> members;  // tokens merged into a fitted entry (empty for raw ones)
};

// The head-wide state every rung reuses.
struct Segment {
  const HeadInput& in;
  SegmentTargets targets;
  std::vector<float> weights;           // [T] k-means weights a_i + eps
  std::vector<uint32_t> nexus_by_mass;  // pass-through tokens, most attended first, then pinned
  std::vector<uint32_t> candidates;     // the other tokens, ascending
};

// Clusters candidates [begin, end) (indices into seg.candidates) into m entries appended to *out.
void FitChunk(const Segment& seg, std::span<const uint32_t> members, int m,
              const SonicParams& params, std::vector<Entry>* out) {
  const size_t d = static_cast<size_t>(seg.in.head_dim);
  const int n = static_cast<int>(members.size());
  std::vector<float> points(static_cast<size_t>(n) * d);
  std::vector<float> weights(static_cast<size_t>(n));
  std::vector<float> attention(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    std::copy_n(seg.in.keys + members[i] * d, d, points.data() + i * d);
    weights[i] = seg.weights[members[i]];
    attention[i] = seg.targets.attention[members[i]];
  }
  // Seeds: the m most attended members (local indices); without rows, evenly spread members.
  const bool rowless = seg.in.rows.count == 0;
  std::vector<uint32_t> seeds;
  if (rowless) {
    for (int j = 0; j < m; ++j) seeds.push_back(static_cast<uint32_t>((2 * j + 1) * n / (2 * m)));
  } else {
    std::vector<uint32_t> local(static_cast<size_t>(n));
    std::iota(local.begin(), local.end(), 0u);
    seeds = ByAttention(local, attention);
    seeds.resize(static_cast<size_t>(m));
  }

  std::vector<float> centroids;
  std::vector<uint32_t> assignment;
  WeightedKMeans(points.data(), n, seg.in.head_dim, weights, seeds, params.kmeans_iterations,
                 &centroids, &assignment);

  const size_t mm = static_cast<size_t>(m);
  std::vector<double> mass(mm, 0.0), weight(mm, 0.0), value_sum(mm * d, 0.0);
  std::vector<int> heaviest(mm, -1);
  std::vector<std::vector<uint32_t>> member_lists(mm);
  for (int i = 0; i < n; ++i) {
    const uint32_t j = assignment[i];
    member_lists[j].push_back(members[i]);
    mass[j] += rowless ? 1.0 : attention[i];
    weight[j] += weights[i];
    const float* v = seg.in.values + members[i] * d;
    for (size_t c = 0; c < d; ++c) value_sum[j * d + c] += double{weights[i]} * v[c];
    if (heaviest[j] < 0 || attention[i] > attention[heaviest[j]]) heaviest[j] = i;
  }
  // Without rows there is no mass to match: an entry weighs as many tokens as its cluster holds.
  const std::vector<double> unit = rowless ? std::vector<double>(mm, 0.0)
                                           : ColumnLogMass(seg.in.rows, centroids.data(), m,
                                                           seg.in.head_dim, seg.targets.log_mass);
  for (size_t j = 0; j < mm; ++j) {
    Entry e;
    e.members = std::move(member_lists[j]);
    const int rep = heaviest[j] >= 0 ? heaviest[j] : static_cast<int>(seeds[j]);
    e.offset = members[rep];
    double b = mass[j] > 0.0 ? std::log(mass[j]) - unit[j] : double{kSonicMinBias};
    if (!(b == b)) b = kSonicMinBias;
    e.bias = static_cast<float>(std::clamp<double>(b, kSonicMinBias, kSonicMaxBias));
    e.own_key.assign(centroids.begin() + j * d, centroids.begin() + (j + 1) * d);
    e.own_value.resize(d);
    if (weight[j] > 0.0) {
      for (size_t c = 0; c < d; ++c) {
        e.own_value[c] = static_cast<float>(value_sum[j * d + c] / weight[j]);
      }
    } else {
      std::copy_n(seg.in.values + members[seeds[j]] * d, d, e.own_value.data());
    }
    out->push_back(std::move(e));
  }
}

NexusSet FitRung(const Segment& seg, int m, const SonicParams& params) {
  const size_t d = static_cast<size_t>(seg.in.head_dim);
  std::vector<Entry> entries;
  entries.reserve(static_cast<size_t>(m));
  const int keep_nexus = std::min<int>(m, static_cast<int>(seg.nexus_by_mass.size()));
  for (int i = 0; i < keep_nexus; ++i) {
    const uint32_t t = seg.nexus_by_mass[i];
    entries.push_back(
        {.offset = t, .bias = 0.0f, .key = seg.in.keys + t * d, .value = seg.in.values + t * d});
  }
  const int fit_m = m - keep_nexus;
  const size_t n = seg.candidates.size();
  if (fit_m > 0 && static_cast<size_t>(fit_m) >= n) {
    // Room for every remaining token: keep them exactly.
    for (uint32_t t : seg.candidates) {
      entries.push_back(
          {.offset = t, .bias = 0.0f, .key = seg.in.keys + t * d, .value = seg.in.values + t * d});
    }
  } else if (fit_m > 0) {
    // Contiguous chunks of at most max_cluster_tokens (never more chunks than entries), each with
    // a share of fit_m proportional to its size (largest remainder; every chunk gets >= 1).
    const size_t limit = static_cast<size_t>(std::max(params.max_cluster_tokens, 1));
    const size_t chunks = std::min<size_t>((n + limit - 1) / limit, static_cast<size_t>(fit_m));
    std::vector<size_t> bounds(chunks + 1);
    for (size_t c = 0; c <= chunks; ++c) bounds[c] = n * c / chunks;
    std::vector<int> share(chunks, 1);
    int given = static_cast<int>(chunks);
    std::vector<std::pair<double, size_t>> remainder;
    for (size_t c = 0; c < chunks; ++c) {
      const double quota = static_cast<double>(fit_m - static_cast<int>(chunks)) *
                           static_cast<double>(bounds[c + 1] - bounds[c]) / static_cast<double>(n);
      const int whole = static_cast<int>(quota);
      share[c] += whole;
      given += whole;
      remainder.push_back({quota - whole, c});
    }
    std::stable_sort(remainder.begin(), remainder.end(),
                     [](const auto& x, const auto& y) { return x.first > y.first; });
    for (size_t i = 0; given < fit_m; ++i, ++given) ++share[remainder[i % chunks].second];
    for (size_t c = 0; c < chunks; ++c) {
      const int room = static_cast<int>(bounds[c + 1] - bounds[c]);
      FitChunk(seg, std::span<const uint32_t>(seg.candidates).subspan(bounds[c], bounds[c + 1] - bounds[c]),
               std::min(share[c], room), params, &entries);
    }
  }
  std::stable_sort(entries.begin(), entries.end(),
                   [](const Entry& x, const Entry& y) { return x.offset < y.offset; });
  NexusSet set;
  set.assignment.assign(static_cast<size_t>(seg.in.num_tokens), kNotMerged);
  for (const Entry& e : entries) {
    for (uint32_t t : e.members) set.assignment[t] = static_cast<uint32_t>(set.offsets.size());
    set.offsets.push_back(e.offset);
    set.bias.push_back(e.bias);
    const float* key = e.key != nullptr ? e.key : e.own_key.data();
    const float* value = e.value != nullptr ? e.value : e.own_value.data();
    set.keys.insert(set.keys.end(), key, key + d);
    set.values.insert(set.values.end(), value, value + d);
  }
  return set;
}

std::vector<float> FoldVector(Rows rows, int head_dim, double ridge) {
  const Eigen::Index d = head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  Eigen::MatrixXd gram = Eigen::MatrixXd::Zero(d, d);
  Eigen::VectorXd rhs = Eigen::VectorXd::Zero(d);
  for (int r = 0; r < rows.count; ++r) {
    Eigen::VectorXd q(d);
    for (Eigen::Index c = 0; c < d; ++c) {
      q[c] = scale * static_cast<double>(FiniteLogit(rows.data[r * d + c]));
    }
    gram.selfadjointView<Eigen::Lower>().rankUpdate(q);
    rhs += q;
  }
  gram.triangularView<Eigen::Upper>() = gram.transpose();
  const double trace = gram.trace();
  std::vector<float> fold(static_cast<size_t>(d), 0.0f);
  if (!(trace > 0.0) || !std::isfinite(trace)) return fold;
  gram.diagonal().array() += ridge * trace / static_cast<double>(d);
  const Eigen::VectorXd u = gram.llt().solve(rhs);
  for (Eigen::Index c = 0; c < d; ++c) {
    fold[c] = std::isfinite(u[c]) ? static_cast<float>(u[c]) : 0.0f;
  }
  return fold;
}

}  // namespace

std::vector<int> SonicRungSizes(int num_tokens, int top_divisor) {
  std::vector<int> sizes;
  for (int m = num_tokens / std::max(top_divisor, 1); m >= 1; m /= 2) sizes.push_back(m);
  if (sizes.empty()) sizes.push_back(1);
  return sizes;
}

HeadFit FitHead(const HeadInput& head, std::span<const int> rung_sizes, const SonicParams& params) {
  Segment seg{
      .in = head,
      .targets = ComputeTargets(head.keys, head.values, head.num_tokens, head.head_dim, head.rows)};
  const std::vector<float>& a = seg.targets.attention;
  const double mean = std::accumulate(a.begin(), a.end(), 0.0) / std::max(head.num_tokens, 1);
  const float eps = static_cast<float>(std::max(1e-6 * mean, 1e-30));
  seg.weights.resize(a.size());
  for (size_t i = 0; i < a.size(); ++i) seg.weights[i] = a[i] + eps;
  // 0: a candidate; 1: a Nexus offset; 2: pinned (and not a Nexus offset).
  std::vector<uint8_t> kind(static_cast<size_t>(head.num_tokens), 0);
  for (uint32_t t : head.pinned) kind[t] = 2;
  for (uint32_t t : head.nexus_offsets) kind[t] = 1;
  std::vector<uint32_t> nexus, pinned;
  for (uint32_t t = 0; t < static_cast<uint32_t>(head.num_tokens); ++t) {
    (kind[t] == 1 ? nexus : kind[t] == 2 ? pinned : seg.candidates).push_back(t);
  }
  seg.nexus_by_mass = ByAttention(nexus, a);
  for (uint32_t t : ByAttention(pinned, a)) seg.nexus_by_mass.push_back(t);

  HeadFit fit;
  for (int m : rung_sizes) {
    fit.rungs.push_back(FitRung(seg, m, params));
    if (head.rows.count > 0) {
      fit.errors.push_back(
          EvaluateNexusSet(head.rows, head.head_dim, fit.rungs.back(), seg.targets));
    } else {
      // Nothing to measure against: the share of tokens merged away stands in for the error.
      const float merged = 1.0f - static_cast<float>(m) / static_cast<float>(head.num_tokens);
      fit.errors.push_back({merged, 0.0f});
    }
  }
  fit.fold = FoldVector(head.rows, head.head_dim, params.fold_ridge);
  fit.token_mass = std::move(seg.targets.attention);
  return fit;
}

}  // namespace nexuskv::compressor::internal
