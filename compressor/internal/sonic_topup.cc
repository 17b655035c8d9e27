#include "compressor/internal/sonic_topup.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "compressor/internal/sonic_fit.h"
#include "compressor/internal/sonic_math.h"

namespace nexuskv::compressor::internal {
namespace {

// Share of its mass a cluster keeps when tokens are topped up out of it, while possible.
constexpr double kMinClusterShare = 0.25;

// A head's token mass as TopUp weighs it: all 1 when the fit had no rows.
struct TokenMass {
  std::span<const float> mass;  // [T]
  bool rowless = false;
  double operator()(size_t i) const { return rowless ? 1.0 : double{mass[i]}; }
};

// Per entry of a rung, the tokens merged into it: how many, and their total mass.
struct RungClusters {
  std::vector<int> members;
  std::vector<double> mass;
};

// Counts and weighs the tokens each entry of the rung merged.
RungClusters MeasureClusters(const NexusSet& rung, const TokenMass& token_mass) {
  const size_t t = token_mass.mass.size();
  const size_t m = rung.offsets.size();
  RungClusters clusters{std::vector<int>(m, 0), std::vector<double>(m, 0.0)};
  for (size_t i = 0; i < t; ++i) {
    if (rung.assignment[i] == kNotMerged) continue;
    ++clusters.members[rung.assignment[i]];
    clusters.mass[rung.assignment[i]] += token_mass(i);
  }
  return clusters;
}

// The tokens a top-up may add, most attended first (stable order among ties): those merged
// with others into one entry, and unmerged ones that no entry already keeps exactly.
std::vector<uint32_t> RankedCandidates(const NexusSet& rung, const RungClusters& clusters,
                                       std::span<const float> priority) {
  const size_t t = priority.size();
  const size_t m = rung.offsets.size();
  std::vector<bool> is_entry(t, false);
  for (size_t j = 0; j < m; ++j) {
    if (clusters.members[j] == 0 && rung.offsets[j] < t) is_entry[rung.offsets[j]] = true;
  }
  std::vector<uint32_t> candidates;
  for (size_t i = 0; i < t; ++i) {
    const uint32_t j = rung.assignment[i];
    if ((j != kNotMerged && clusters.members[j] >= 2) || (j == kNotMerged && !is_entry[i])) {
      candidates.push_back(static_cast<uint32_t>(i));
    }
  }
  std::stable_sort(candidates.begin(), candidates.end(),
                   [&](uint32_t x, uint32_t y) { return priority[x] > priority[y]; });
  return candidates;
}

// The first `extra` of the ranked candidates under the cluster-share rule, in offset order.
// Take the most attended first, but leave every cluster at least kMinClusterShare of its
// mass while other candidates remain: a cluster entry weighted down to almost nothing is
// exact with a bias but not once its bias is folded into its key (bias-free answers).
std::vector<uint32_t> ChooseUnderClusterShare(const NexusSet& rung, const RungClusters& clusters,
                                              const TokenMass& token_mass,
                                              const std::vector<uint32_t>& candidates, int extra) {
  std::vector<uint32_t> chosen;
  std::vector<bool> taken(candidates.size(), false);
  std::vector<double> remaining = clusters.mass;
  for (int pass = 0; pass < 2 && chosen.size() < static_cast<size_t>(extra); ++pass) {
    for (size_t c = 0; c < candidates.size() && chosen.size() < static_cast<size_t>(extra); ++c) {
      if (taken[c]) continue;
      const uint32_t i = candidates[c];
      const uint32_t j = rung.assignment[i];
      if (pass == 0 && j != kNotMerged &&
          remaining[j] - token_mass(i) < kMinClusterShare * clusters.mass[j]) {
        continue;
      }
      if (j != kNotMerged) remaining[j] -= token_mass(i);
      taken[c] = true;
      chosen.push_back(i);
    }
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

// The rung with the clusters that lost `chosen` tokens corrected: mass (hence bias) and weighted
// mean value of what is left, recomputed from the raw values (subtracting from the stored,
// rounded mean would amplify its rounding once most of a cluster's weight is gone).
NexusSet TakeOutOfClusters(const NexusSet& rung, const RungClusters& clusters,
                           const TokenMass& token_mass, const std::vector<uint32_t>& chosen,
                           const float* values, size_t d) {
  const size_t t = token_mass.mass.size();
  const size_t m = rung.offsets.size();
  double mean = 0.0;
  for (size_t i = 0; i < t; ++i) mean += token_mass(i);
  const double eps = std::max(1e-6 * mean / static_cast<double>(t), 1e-30);
  NexusSet out = rung;
  std::vector<bool> out_of_cluster(t, false);
  std::vector<bool> touched(m, false);
  for (uint32_t i : chosen) {
    out_of_cluster[i] = true;
    if (rung.assignment[i] != kNotMerged) touched[rung.assignment[i]] = true;
  }
  std::vector<double> left_mass(m, 0.0), left_weight(m, 0.0), left_values(m * d, 0.0);
  for (size_t i = 0; i < t; ++i) {
    const uint32_t j = rung.assignment[i];
    if (j == kNotMerged || !touched[j] || out_of_cluster[i]) continue;
    const double w = token_mass(i) + eps;
    left_mass[j] += token_mass(i);
    left_weight[j] += w;
    for (size_t c = 0; c < d; ++c) left_values[j * d + c] += w * values[i * d + c];
  }
  for (size_t j = 0; j < m; ++j) {
    if (!touched[j]) continue;
    const double ratio = left_mass[j] / clusters.mass[j];
    out.bias[j] = ratio > 0.0 && left_weight[j] > 0.0
                      ? std::max(static_cast<float>(out.bias[j] + std::log(ratio)), kSonicMinBias)
                      : kSonicMinBias;
    if (left_weight[j] > 0.0) {
      for (size_t c = 0; c < d; ++c) {
        out.values[j * d + c] = static_cast<float>(left_values[j * d + c] / left_weight[j]);
      }
    }
  }
  return out;
}

// The rung's entries and the `chosen` raw tokens (bias 0, keys and values copied), merged in
// offset order.
NexusSet MergeRawTokens(const NexusSet& rung, const std::vector<uint32_t>& chosen,
                        const float* keys, const float* values, size_t d) {
  const size_t m = rung.offsets.size();
  NexusSet merged;
  const size_t total = m + chosen.size();
  merged.offsets.reserve(total);
  merged.bias.reserve(total);
  merged.keys.reserve(total * d);
  merged.values.reserve(total * d);
  size_t a = 0, b = 0;
  while (a < m || b < chosen.size()) {
    const bool take_rung = b == chosen.size() || (a < m && rung.offsets[a] <= chosen[b]);
    if (take_rung) {
      merged.offsets.push_back(rung.offsets[a]);
      merged.bias.push_back(rung.bias[a]);
      merged.keys.insert(merged.keys.end(), rung.keys.begin() + a * d,
                         rung.keys.begin() + (a + 1) * d);
      merged.values.insert(merged.values.end(), rung.values.begin() + a * d,
                           rung.values.begin() + (a + 1) * d);
      ++a;
    } else {
      const uint32_t i = chosen[b++];
      merged.offsets.push_back(i);
      merged.bias.push_back(0.0f);
      merged.keys.insert(merged.keys.end(), keys + i * d, keys + (i + 1) * d);
      merged.values.insert(merged.values.end(), values + i * d, values + (i + 1) * d);
    }
  }
  return merged;
}

}  // namespace

NexusSet TopUpRung(const NexusSet& rung, const float* keys, const float* values,
                   std::span<const float> mass, std::span<const float> priority, bool rowless,
                   int extra, int head_dim) {
  const size_t d = static_cast<size_t>(head_dim);
  const TokenMass token_mass{mass, rowless};
  const RungClusters clusters = MeasureClusters(rung, token_mass);
  const std::vector<uint32_t> chosen = ChooseUnderClusterShare(
      rung, clusters, token_mass, RankedCandidates(rung, clusters, priority), extra);
  const NexusSet corrected = TakeOutOfClusters(rung, clusters, token_mass, chosen, values, d);
  return MergeRawTokens(corrected, chosen, keys, values, d);
}

}  // namespace nexuskv::compressor::internal
