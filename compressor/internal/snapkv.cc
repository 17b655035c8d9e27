#include <algorithm>

#include "common/status_macros.h"
#include "compressor/internal/attention.h"
#include "compressor/internal/layer_check.h"
#include "compressor/internal/methods.h"
#include "compressor/internal/ranking.h"

namespace nexuskv::compressor::internal {
namespace {

// Observation-window scores, pooled (Li et al. 2024), as kvpress's SnapKVPress computes them: the
// window is always kept first, then the prefix by pooled attention.
class SnapKvCompressor final : public Compressor {
 public:
  std::string_view name() const override { return "SNAPKV"; }
  bool has_fit() const override { return true; }

  absl::StatusOr<std::string> Fit(const LayerView& layer) const override {
    NEXUSKV_RETURN_IF_ERROR(CheckLayer(layer));
    const size_t t = static_cast<size_t>(layer.num_tokens);
    const int window = ScoringWindow(layer);
    const size_t prefix = t - static_cast<size_t>(window);
    const float group_mean =
        static_cast<float>(layer.num_kv_heads) / static_cast<float>(layer.num_query_heads);
    std::vector<float> mass = AccumulatedAttention(layer);
    std::vector<uint32_t> order;
    order.reserve(mass.size());
    for (size_t h = 0; h < static_cast<size_t>(layer.num_kv_heads); ++h) {
      std::span<float> head(mass.data() + h * t, prefix);
      for (float& s : head) s *= group_mean;
      const std::vector<uint32_t> head_order = SnapKvOrder(AveragePool(head), window);
      order.insert(order.end(), head_order.begin(), head_order.end());
    }
    return EncodeRanking(RankingTag::kSnapKV, layer.num_kv_heads, layer.num_tokens, order);
  }

  absl::StatusOr<LayerEntries> Materialize(const LayerView& layer, std::string_view fit,
                                           int n) const override {
    return MaterializeRanking(RankingTag::kSnapKV, layer, fit, n);
  }
};

}  // namespace

std::vector<float> AveragePool(std::span<const float> scores) {
  constexpr int kHalf = kSnapKvPoolKernel / 2;
  const int size = static_cast<int>(scores.size());
  std::vector<float> out(scores.size(), 0.0f);
  for (int i = 0; i < size; ++i) {
    float sum = 0.0f;
    for (int j = std::max(0, i - kHalf); j <= std::min(size - 1, i + kHalf); ++j) sum += scores[j];
    out[i] = sum / static_cast<float>(kSnapKvPoolKernel);
  }
  return out;
}

std::vector<uint32_t> SnapKvOrder(std::span<const float> prefix_scores, int window) {
  const uint32_t prefix = static_cast<uint32_t>(prefix_scores.size());
  std::vector<uint32_t> order;
  order.reserve(prefix + static_cast<uint32_t>(window));
  for (uint32_t i = prefix + static_cast<uint32_t>(window); i-- > prefix;) order.push_back(i);
  AppendByScore(prefix_scores, 0, &order);
  return order;
}

std::unique_ptr<Compressor> NewSnapKvCompressor() { return std::make_unique<SnapKvCompressor>(); }

}  // namespace nexuskv::compressor::internal
