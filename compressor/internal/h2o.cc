#include "compressor/h2o.h"

#include "common/status_macros.h"
#include "compressor/internal/attention.h"
#include "compressor/internal/backend_error.h"
#include "compressor/internal/layer_check.h"
#include "compressor/internal/methods.h"
#include "compressor/internal/ranking.h"

namespace nexuskv::compressor::internal {
namespace {

// Heavy hitters plus recent tokens (Zhang et al. 2023), half and half at every budget.
class H2OCompressor final : public Compressor {
 public:
  explicit H2OCompressor(const ComputeBackend& compute) : compute_(compute) {}

  std::string_view name() const override { return "H2O"; }
  Capabilities capabilities() const override { return {.fits = true}; }

  absl::StatusOr<std::string> Fit(const LayerView& layer) const override {
    NEXUSKV_RETURN_IF_ERROR(CheckLayer(layer));
    const size_t t = static_cast<size_t>(layer.num_tokens);
    absl::StatusOr<std::vector<float>> scored = AccumulatedAttention(layer, compute_);
    NEXUSKV_RETURN_IF_ERROR(BackendError(scored.status(), compute_, "H2O scoring"));
    const std::vector<float>& mass = *scored;
    std::vector<uint32_t> order;
    order.reserve(mass.size());
    for (size_t h = 0; h < static_cast<size_t>(layer.num_kv_heads); ++h) {
      const std::vector<uint32_t> head = H2OOrder(std::span<const float>(mass).subspan(h * t, t));
      order.insert(order.end(), head.begin(), head.end());
    }
    return EncodeRanking(RankingTag::kH2O, layer.num_kv_heads, layer.num_tokens, order);
  }

  absl::StatusOr<LayerEntries> Materialize(const LayerView& layer, std::string_view fit,
                                           int n) const override {
    return MaterializeRanking(RankingTag::kH2O, layer, fit, n);
  }

 private:
  const ComputeBackend& compute_;
};

}  // namespace

std::vector<uint32_t> H2OOrder(std::span<const float> scores) {
  const size_t t = scores.size();
  std::vector<uint32_t> by_score;
  by_score.reserve(t);
  AppendByScore(scores, 0, &by_score);
  std::vector<bool> taken(t, false);
  std::vector<uint32_t> order;
  order.reserve(t);
  size_t recent = t;  // Next candidate is recent - 1.
  size_t heavy = 0;   // Next candidate is by_score[heavy].
  bool recent_turn = true;
  while (order.size() < t) {
    uint32_t pick;
    if (recent_turn) {
      while (taken[recent - 1]) --recent;
      pick = static_cast<uint32_t>(--recent);
    } else {
      while (taken[by_score[heavy]]) ++heavy;
      pick = by_score[heavy++];
    }
    taken[pick] = true;
    order.push_back(pick);
    recent_turn = !recent_turn;
  }
  return order;
}

}  // namespace nexuskv::compressor::internal

namespace nexuskv::compressor {

std::unique_ptr<Compressor> NewH2OCompressor(const ComputeBackend& compute) {
  return std::make_unique<internal::H2OCompressor>(compute);
}

}  // namespace nexuskv::compressor
