// SonicCompressor: Fit builds the ladder of every kv head of a layer (sonic_fit.h) and encodes it
// (sonic_ladder.h); Materialize decodes one rung. See compressor/sonic.h for the contract.
#include "compressor/sonic.h"

#include <Eigen/Core>
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "compressor/internal/backend_error.h"
#include "compressor/internal/layer_check.h"
#include "compressor/internal/methods.h"
#include "compressor/internal/ranking.h"
#include "compressor/internal/sonic_allocate.h"
#include "compressor/internal/sonic_fit.h"
#include "compressor/internal/sonic_ladder.h"
#include "compressor/internal/sonic_math.h"
#include "compressor/internal/sonic_topup.h"

namespace nexuskv::compressor::internal {
namespace {

constexpr float kFloat16Max = 65504.0f;
// Largest |bias| folded into a key for bias-free answers (a weight of e^6 ~ 400 tokens).
constexpr float kMaxFoldedBias = 6.0f;

absl::Status CheckNexusOffsets(const LayerView& layer) {
  uint32_t previous = 0;
  for (size_t i = 0; i < layer.nexus_offsets.size(); ++i) {
    const uint32_t t = layer.nexus_offsets[i];
    if (t >= static_cast<uint32_t>(layer.num_tokens) || (i > 0 && t <= previous)) {
      return absl::InvalidArgumentError(
          absl::StrCat("LayerView: nexus_offsets must be strictly ascending offsets in [0, ",
                       layer.num_tokens, "); entry ", i, " is ", t));
    }
    previous = t;
  }
  return absl::OkStatus();
}

// A serving view may carry the shape only (empty spans); then only the shape rules apply.
absl::Status CheckShape(const LayerView& layer) {
  if (layer.keys.empty() && layer.values.empty() && layer.probes.empty()) {
    return CheckLayerShape(layer);
  }
  return CheckLayer(layer);
}

// Rows of kv head h: its group's probes (subsampled evenly to at most max_rows), or the proxy.
std::vector<float> HeadRows(const LayerView& layer, int h, const SonicParams& params) {
  const size_t d = static_cast<size_t>(layer.head_dim);
  const size_t t = static_cast<size_t>(layer.num_tokens);
  std::vector<float> rows;
  if (layer.num_probes == 0) {
    const float* keys = layer.keys.data() + h * t * d;
    const size_t count = std::min<size_t>(t, static_cast<size_t>(std::max(params.proxy_rows, 0)));
    rows.assign(keys + (t - count) * d, keys + t * d);
    return rows;
  }
  const size_t group = static_cast<size_t>(layer.num_query_heads / layer.num_kv_heads);
  const size_t total = group * static_cast<size_t>(layer.num_probes);
  const size_t count =
      std::min<size_t>(total, static_cast<size_t>(std::max(params.max_query_rows, 1)));
  const float* first = layer.probes.data() + h * total * d;
  rows.resize(count * d);
  for (size_t r = 0; r < count; ++r) {
    const size_t src = count == total ? r : r * total / count;
    std::copy_n(first + src * d, d, rows.data() + r * d);
  }
  return rows;
}

bool FitsFloat16(const SonicLadder& ladder) {
  for (const auto& rung : ladder.sets) {
    for (const NexusSet& set : rung) {
      for (const auto* v : {&set.keys, &set.values}) {
        for (float x : *v) {
          if (!(std::abs(x) <= kFloat16Max)) return false;
        }
      }
    }
  }
  return true;
}

// Per kv head and token ([H, T]), the attention of the layer's lookahead queries within the turn:
// for every query head of the kv head's group and every lookahead row, softmax over the turn's
// tokens, summed: one AttentionMass batch with an item per kv head, on `compute`. Empty when the
// view carries no lookahead (or its size disagrees). Errors are the backend's.
absl::StatusOr<std::vector<float>> LookaheadAttention(const LayerView& layer,
                                                      const ComputeBackend& compute) {
  const int t = layer.num_tokens;
  const int d = layer.head_dim;
  const size_t rows = static_cast<size_t>(std::max(layer.num_lookahead, 0));
  const size_t hq = static_cast<size_t>(layer.num_query_heads);
  if (rows == 0 || layer.keys.empty() || layer.lookahead.size() != hq * rows * d) {
    return std::vector<float>();
  }
  // The group's rows are contiguous in [Hq, L, D]: one item of group * L rows per kv head.
  const size_t h_count = static_cast<size_t>(layer.num_kv_heads);
  const size_t group_rows = hq / h_count * rows;
  const size_t span = static_cast<size_t>(t) * d;
  std::vector<AttentionMassItem> items(h_count);
  for (size_t h = 0; h < h_count; ++h) {
    items[h] = {.queries = {layer.lookahead.subspan(h * group_rows * d, group_rows * d),
                            static_cast<int>(group_rows), d},
                .keys = {layer.keys.subspan(h * span, span), t, d},
                .scale = 1.0f / std::sqrt(static_cast<float>(d))};
  }
  std::vector<float> out(h_count * static_cast<size_t>(t));
  NEXUSKV_RETURN_IF_ERROR(compute.AttentionMass(items, out));
  return out;
}

class SonicCompressor final : public Compressor {
 public:
  SonicCompressor(const SonicParams& params, const ComputeBackend& compute)
      : params_(params), compute_(compute) {}

  std::string_view name() const override { return "SONIC"; }
  Capabilities capabilities() const override {
    return {.fits = true,
            .serves_without_raw = true,
            .bias = true,
            .lookahead = true,
            .prefers_token_scores = true};
  }

  absl::StatusOr<std::string> Fit(const LayerView& layer) const override {
    NEXUSKV_RETURN_IF_ERROR(CheckLayer(layer));
    NEXUSKV_RETURN_IF_ERROR(CheckNexusOffsets(layer));
    const size_t t = static_cast<size_t>(layer.num_tokens);
    const size_t d = static_cast<size_t>(layer.head_dim);
    const size_t h_count = static_cast<size_t>(layer.num_kv_heads);
    SonicLadder ladder;
    ladder.num_kv_heads = layer.num_kv_heads;
    ladder.num_tokens = layer.num_tokens;
    ladder.head_dim = layer.head_dim;
    // The session's attention sinks are kept exactly too, after the pass-through Nexus tokens.
    std::vector<uint32_t> sinks;
    if (layer.session_start && params_.pin_sinks) {
      for (uint32_t i = 0; i < static_cast<uint32_t>(std::min<int>(layer.num_tokens, kSinkTokens));
           ++i) {
        sinks.push_back(i);
      }
    }
    ladder.num_nexus = static_cast<uint32_t>(layer.nexus_offsets.size());
    ladder.proxy = layer.num_probes == 0;
    ladder.rungs = SonicRungSizes(layer.num_tokens, params_.top_rung_divisor);
    // Every kv head in one FitHeads batch; rows[h] backs heads[h].rows until it returns.
    std::vector<std::vector<float>> rows(h_count);
    std::vector<HeadInput> heads(h_count);
    for (size_t h = 0; h < h_count; ++h) {
      rows[h] = HeadRows(layer, static_cast<int>(h), params_);
      heads[h] = {.num_tokens = layer.num_tokens,
                  .head_dim = layer.head_dim,
                  .keys = layer.keys.data() + h * t * d,
                  .values = layer.values.data() + h * t * d,
                  .rows = {rows[h].data(), static_cast<int>(rows[h].size() / d)},
                  .nexus_offsets = layer.nexus_offsets,
                  .pinned = sinks};
      ladder.probe_rows = static_cast<uint32_t>(heads[h].rows.count);
    }
    absl::StatusOr<std::vector<HeadFit>> fitted = FitHeads(heads, ladder.rungs, params_, compute_);
    NEXUSKV_RETURN_IF_ERROR(BackendError(fitted.status(), compute_, "SONIC fit"));
    std::vector<HeadFit>& fits = *fitted;
    const size_t k_count = ladder.rungs.size();
    ladder.sets.assign(k_count, std::vector<NexusSet>(h_count));
    ladder.errors.resize(k_count * h_count);
    for (size_t h = 0; h < h_count; ++h) {
      HeadFit& fit = fits[h];
      for (size_t k = 0; k < k_count; ++k) {
        ladder.sets[k][h] = std::move(fit.rungs[k]);
        ladder.errors[k * h_count + h] = fit.errors[k];
      }
      ladder.fold.insert(ladder.fold.end(), fit.fold.begin(), fit.fold.end());
      ladder.token_mass.insert(ladder.token_mass.end(), fit.token_mass.begin(),
                               fit.token_mass.end());
    }
    ladder.dtype = layer.dtype;
    if (layer.dtype == DType::kFloat32 && params_.compact_float32 && FitsFloat16(ladder)) {
      ladder.dtype = DType::kFloat16;
    }
    return EncodeSonicLadder(ladder);
  }

  absl::StatusOr<LayerEntries> Materialize(const LayerView& layer, std::string_view fit,
                                           int n) const override {
    return Serve(layer, fit, n, /*bias_free=*/false);
  }

  absl::StatusOr<LayerEntries> MaterializeBiasFree(const LayerView& layer, std::string_view fit,
                                                   int n) const override {
    return Serve(layer, fit, n, /*bias_free=*/true);
  }

  std::string SummarizeFit(std::span<const std::string> per_layer) const override {
    SonicSummary summary;
    std::vector<double> output(0), mass(0);
    size_t samples = 0;
    for (const std::string& fit : per_layer) {
      absl::StatusOr<SonicLadderIndex> index = IndexSonicLadder(fit);
      if (!index.ok()) continue;
      if (summary.rungs.empty()) {
        summary.num_tokens = index->num_tokens;
        summary.rungs = index->rungs;
        output.assign(summary.rungs.size(), 0.0);
        mass.assign(summary.rungs.size(), 0.0);
      }
      if (index->rungs != summary.rungs) continue;
      const size_t h = static_cast<size_t>(index->num_kv_heads);
      for (size_t k = 0; k < summary.rungs.size(); ++k) {
        for (size_t i = 0; i < h; ++i) {
          output[k] += index->errors[k * h + i].output_error;
          mass[k] += index->errors[k * h + i].log_mass_error;
        }
      }
      samples += h;
    }
    if (summary.rungs.empty()) return std::string();
    for (size_t k = 0; k < summary.rungs.size(); ++k) {
      summary.errors.push_back(
          {static_cast<float>(output[k] / samples), static_cast<float>(mass[k] / samples)});
    }
    return EncodeSonicSummary(summary);
  }

  std::vector<int64_t> Allocate(std::span<const TurnShape> turns, int64_t budget) const override {
    return AllocateSonic(turns, budget, params_.summary_share);
  }

 private:
  absl::StatusOr<LayerEntries> Serve(const LayerView& layer, std::string_view fit, int n,
                                     bool bias_free) const {
    NEXUSKV_RETURN_IF_ERROR(CheckShape(layer));
    NEXUSKV_RETURN_IF_ERROR(CheckEntryCount(layer, n));
    LayerEntries out;
    out.num_kv_heads = layer.num_kv_heads;
    out.head_dim = layer.head_dim;
    if (n == 0) return out;
    const bool has_raw = !layer.keys.empty();
    NEXUSKV_ASSIGN_OR_RETURN(SonicLadderIndex index, IndexSonicLadder(fit));
    if (index.num_kv_heads != layer.num_kv_heads || index.num_tokens != layer.num_tokens ||
        index.head_dim != layer.head_dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("SONIC ladder is for H=", index.num_kv_heads, " T=", index.num_tokens,
                       " D=", index.head_dim, ", layer has H=", layer.num_kv_heads,
                       " T=", layer.num_tokens, " D=", layer.head_dim));
    }
    const int t = layer.num_tokens;
    if (n == t && has_raw) return RawTurn(layer, bias_free);
    // The largest rung that fits, topped up with raw tokens when n lies above it.
    const auto rung =
        std::find_if(index.rungs.begin(), index.rungs.end(), [n](int m) { return m <= n; });
    const int k = static_cast<int>(rung - index.rungs.begin());
    const int extra = n - *rung;
    if (extra > 0 && !has_raw) {
      return absl::FailedPreconditionError(absl::StrCat(
          "SONIC serves ", n, " entries per kv head of this ", t, "-token turn by topping rung ",
          *rung,
          " up with raw tokens, but its raw KV is not available; without it the ladder "
          "serves {",
          absl::StrJoin(index.rungs, ", "), "}"));
    }
    std::vector<NexusSet> sets = DecodeSonicRung(fit, index, k);
    const size_t d = static_cast<size_t>(layer.head_dim);
    if (extra > 0) {
      const std::vector<float> mass = DecodeSonicTokenMass(fit, index);
      const size_t span = static_cast<size_t>(t) * d;
      absl::StatusOr<std::vector<float>> lookahead = LookaheadAttention(layer, compute_);
      NEXUSKV_RETURN_IF_ERROR(
          BackendError(lookahead.status(), compute_, "SONIC lookahead scoring"));
      const std::vector<float>& priority = *lookahead;
      for (size_t h = 0; h < sets.size(); ++h) {
        const std::span<const float> head_mass = std::span<const float>(mass).subspan(h * t, t);
        sets[h] = TopUpRung(
            sets[h], layer.keys.data() + h * span, layer.values.data() + h * span, head_mass,
            priority.empty() ? head_mass : std::span<const float>(priority).subspan(h * t, t),
            index.probe_rows == 0, extra, layer.head_dim);
      }
    }
    const std::vector<float> fold = bias_free ? DecodeSonicFold(fit, index) : std::vector<float>();
    const size_t m = static_cast<size_t>(n);
    out.num_entries = n;
    out.keys.reserve(sets.size() * m * d);
    out.values.reserve(sets.size() * m * d);
    out.positions.reserve(sets.size() * m);
    for (size_t h = 0; h < sets.size(); ++h) {
      NexusSet& set = sets[h];
      if (bias_free) {
        // q.u is ~1 on the probes but not on every query: a large |b| folded in could turn a
        // floor-weight entry into the strongest key. Fold at most kMaxFoldedBias.
        std::vector<float> folded(set.bias.size());
        for (size_t j = 0; j < folded.size(); ++j) {
          folded[j] = std::clamp(set.bias[j], -kMaxFoldedBias, kMaxFoldedBias);
        }
        const float* u = fold.data() + h * d;
        for (size_t j = 0; j < m; ++j) {
          float* key = set.keys.data() + j * d;
          for (size_t c = 0; c < d; ++c) {
            key[c] = std::clamp(key[c] + folded[j] * u[c], -FLT_MAX, FLT_MAX);
          }
        }
      } else {
        out.bias.insert(out.bias.end(), set.bias.begin(), set.bias.end());
      }
      out.keys.insert(out.keys.end(), set.keys.begin(), set.keys.end());
      out.values.insert(out.values.end(), set.values.begin(), set.values.end());
      for (uint32_t offset : set.offsets) {
        out.positions.push_back(layer.first_position + static_cast<int64_t>(offset));
      }
    }
    return out;
  }

  // Every token, bias 0 (or none when bias-free): the top of the ladder when the raw is stored.
  static absl::StatusOr<LayerEntries> RawTurn(const LayerView& layer, bool bias_free) {
    if (layer.keys.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("all ", layer.num_tokens,
                       " tokens of this turn were asked for, but its raw KV is not "
                       "available; SONIC serves its rungs from the stored ladder only"));
    }
    const size_t t = static_cast<size_t>(layer.num_tokens);
    std::vector<uint32_t> kept(static_cast<size_t>(layer.num_kv_heads) * t);
    for (size_t h = 0; h < static_cast<size_t>(layer.num_kv_heads); ++h) {
      std::iota(kept.begin() + h * t, kept.begin() + (h + 1) * t, 0u);
    }
    LayerEntries out = GatherEntries(layer, layer.num_tokens, kept);
    if (!bias_free) out.bias.assign(kept.size(), 0.0f);
    return out;
  }

  const SonicParams params_;
  const ComputeBackend& compute_;
};

}  // namespace

}  // namespace nexuskv::compressor::internal

namespace nexuskv::compressor {

std::unique_ptr<Compressor> NewSonicCompressor(const SonicParams& params,
                                               const ComputeBackend& compute) {
  return std::make_unique<internal::SonicCompressor>(params, compute);
}

}  // namespace nexuskv::compressor
