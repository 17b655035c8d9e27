#include "compressor/streaming_llm.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "compressor/internal/layer_check.h"
#include "compressor/internal/methods.h"
#include "compressor/internal/ranking.h"

namespace nexuskv::compressor::internal {
namespace {

// Attention sinks plus a recent window (Xiao et al. 2023). The order depends on positions only,
// so there is nothing to fit: Materialize computes it.
class StreamingLlmCompressor final : public Compressor {
 public:
  std::string_view name() const override { return "STREAMING_LLM"; }
  Capabilities capabilities() const override { return {.fallback = true}; }

  absl::StatusOr<std::string> Fit(const LayerView& layer) const override {
    NEXUSKV_RETURN_IF_ERROR(CheckLayer(layer));
    return std::string();
  }

  absl::StatusOr<LayerEntries> Materialize(const LayerView& layer, std::string_view fit,
                                           int n) const override {
    NEXUSKV_RETURN_IF_ERROR(CheckLayer(layer));
    NEXUSKV_RETURN_IF_ERROR(CheckEntryCount(layer, n));
    if (!fit.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("STREAMING_LLM takes no fit, got ", fit.size(), " bytes"));
    }
    std::vector<uint32_t> order = StreamingLlmOrder(layer.num_tokens, layer.session_start);
    order.resize(static_cast<size_t>(n));
    std::sort(order.begin(), order.end());
    std::vector<uint32_t> kept;
    kept.reserve(static_cast<size_t>(layer.num_kv_heads) * order.size());
    for (int h = 0; h < layer.num_kv_heads; ++h)
      kept.insert(kept.end(), order.begin(), order.end());
    return GatherEntries(layer, n, kept);
  }

  // One global sink + window over the session: the session-start turn's sinks first, then the
  // rest of the budget from the most recent turn backwards.
  std::vector<int64_t> Allocate(std::span<const TurnShape> turns, int64_t budget) const override {
    std::vector<int64_t> result(turns.size(), 0);
    int64_t remaining = std::max<int64_t>(budget, 0);
    for (size_t i = 0; i < turns.size(); ++i) {
      if (!turns[i].session_start) continue;
      const int64_t sinks = std::min({static_cast<int64_t>(kSinkTokens),
                                      std::max<int64_t>(turns[i].num_tokens, 0), remaining});
      result[i] = sinks;
      remaining -= sinks;
    }
    for (size_t i = turns.size(); i-- > 0 && remaining > 0;) {
      const int64_t room = std::max<int64_t>(turns[i].num_tokens, 0) - result[i];
      const int64_t take = std::min(room, remaining);
      result[i] += take;
      remaining -= take;
    }
    return result;
  }
};

}  // namespace

std::vector<uint32_t> StreamingLlmOrder(int num_tokens, bool session_start) {
  const uint32_t t = static_cast<uint32_t>(num_tokens);
  const uint32_t sinks = session_start ? std::min<uint32_t>(t, kSinkTokens) : 0;
  std::vector<uint32_t> order;
  order.reserve(t);
  for (uint32_t i = 0; i < sinks; ++i) order.push_back(i);
  for (uint32_t i = t; i-- > sinks;) order.push_back(i);
  return order;
}

}  // namespace nexuskv::compressor::internal

namespace nexuskv::compressor {

std::unique_ptr<Compressor> NewStreamingLlmCompressor() {
  return std::make_unique<internal::StreamingLlmCompressor>();
}

}  // namespace nexuskv::compressor
