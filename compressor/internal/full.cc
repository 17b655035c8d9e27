#include "compressor/full.h"

#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "compressor/internal/layer_check.h"
#include "compressor/internal/methods.h"
#include "compressor/internal/ranking.h"

namespace nexuskv::compressor::internal {
namespace {

// No compression: every token of every head, in order.
class FullCompressor final : public Compressor {
 public:
  std::string_view name() const override { return "FULL"; }
  Capabilities capabilities() const override { return {}; }

  absl::StatusOr<std::string> Fit(const LayerView& layer) const override {
    NEXUSKV_RETURN_IF_ERROR(CheckLayer(layer));
    return std::string();
  }

  absl::StatusOr<LayerEntries> Materialize(const LayerView& layer, std::string_view fit,
                                           int n) const override {
    NEXUSKV_RETURN_IF_ERROR(CheckLayer(layer));
    if (n != layer.num_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "FULL keeps every token: entries per kv head must be ", layer.num_tokens, ", got ", n));
    }
    if (!fit.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("FULL takes no fit, got ", fit.size(), " bytes"));
    }
    const size_t t = static_cast<size_t>(layer.num_tokens);
    std::vector<uint32_t> kept(static_cast<size_t>(layer.num_kv_heads) * t);
    for (size_t h = 0; h < static_cast<size_t>(layer.num_kv_heads); ++h) {
      std::iota(kept.begin() + h * t, kept.begin() + (h + 1) * t, 0u);
    }
    return GatherEntries(layer, n, kept);
  }
};

}  // namespace

}  // namespace nexuskv::compressor::internal

namespace nexuskv::compressor {

std::unique_ptr<Compressor> NewFullCompressor() {
  return std::make_unique<internal::FullCompressor>();
}

}  // namespace nexuskv::compressor
