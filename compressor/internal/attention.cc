#include "compressor/internal/attention.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "common/status_macros.h"

namespace nexuskv::compressor::internal {

int ScoringWindow(const LayerView& layer) {
  return layer.num_probes > 0 ? layer.num_probes : std::min(layer.num_tokens, kProxyQueries);
}

absl::StatusOr<std::vector<float>> AccumulatedAttention(const LayerView& layer,
                                                        const ComputeBackend& compute) {
  const size_t h_count = static_cast<size_t>(layer.num_kv_heads);
  const size_t group = static_cast<size_t>(layer.num_query_heads / layer.num_kv_heads);
  const int t = layer.num_tokens;
  const int d = layer.head_dim;
  const size_t window = static_cast<size_t>(ScoringWindow(layer));
  const bool proxy = layer.num_probes == 0;
  // With probes the group's query heads are contiguous in [Hq, P, D]: one item of g*P rows. The
  // proxy's rows are the same for every query head of the group: W rows counted g times.
  const size_t rows = proxy ? window : group * window;
  const float row_weight = proxy ? static_cast<float>(group) : 1.0f;
  // Row r is scoring position j = r % W, at token probe_offsets[j] (or T - W + j): it sees the
  // tokens up to and including its own.
  std::vector<int32_t> causal(rows);
  for (size_t r = 0; r < rows; ++r) {
    const size_t j = r % window;
    causal[r] = !proxy && !layer.probe_offsets.empty()
                    ? static_cast<int32_t>(layer.probe_offsets[j])
                    : static_cast<int32_t>(static_cast<size_t>(t) - window + j);
  }
  const size_t span = static_cast<size_t>(t) * d;
  std::vector<AttentionMassItem> items(h_count);
  for (size_t h = 0; h < h_count; ++h) {
    const std::span<const float> keys = layer.keys.subspan(h * span, span);
    const std::span<const float> queries =
        proxy ? keys.subspan((static_cast<size_t>(t) - window) * d, window * d)
              : layer.probes.subspan(h * rows * d, rows * d);
    items[h] = {.queries = {queries, static_cast<int>(rows), d},
                .keys = {keys, t, d},
                .scale = 1.0f / std::sqrt(static_cast<float>(d)),
                .row_weight = row_weight,
                .causal = causal};
  }
  std::vector<float> out(h_count * static_cast<size_t>(t));
  NEXUSKV_RETURN_IF_ERROR(compute.AttentionMass(items, out));
  return out;
}

std::vector<float> AccumulatedAttention(const LayerView& layer) {
  absl::StatusOr<std::vector<float>> out = AccumulatedAttention(layer, CpuCompute());
  DieUnlessOk(out.status());
  return *std::move(out);
}

}  // namespace nexuskv::compressor::internal
