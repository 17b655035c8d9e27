#include "compressor/scored/lookahead.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "tensor/dtype.h"

namespace nexuskv::compressor::scored {
namespace {

// Every kv head's keys over the whole range, [H][N, D] float32, decoded from each turn's stored
// [H, T, D] bytes straight into place; N the range's tokens.
struct RangeKeys {
  size_t heads = 0;
  size_t total = 0;
  std::vector<float> keys;

  std::span<const float> Head(size_t h, size_t d) const {
    return std::span<const float>(keys).subspan(h * total * d, total * d);
  }
};

absl::StatusOr<RangeKeys> DecodeRange(const char* what, int layer, std::span<const TurnKv> kv,
                                      size_t d, const std::vector<ScoredTurn>& turns,
                                      bool needs_scores) {
  RangeKeys range;
  for (size_t u = 0; u < turns.size(); ++u) {
    const size_t t = static_cast<size_t>(turns[u].num_tokens);
    const size_t floats = kv[u].keys.size() / DTypeSize(kv[u].dtype);
    if (u == 0) range.heads = t > 0 ? floats / (t * d) : 0;
    const size_t layers = needs_scores ? turns[u].scores.size() : turns[u].lookahead.size();
    if (t == 0 || range.heads == 0 ||
        kv[u].keys.size() != range.heads * t * d * DTypeSize(kv[u].dtype) ||
        layers <= static_cast<size_t>(layer)) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": turn ", u, " of ", t, " tokens has ", floats, " key values (want ", range.heads,
          " x ", t, " x ", d, ") and ", layers, needs_scores ? " score" : " lookahead", " layers"));
    }
    range.total += t;
  }
  range.keys.resize(range.heads * range.total * d);
  for (size_t h = 0, at = 0; h < range.heads; ++h) {
    for (size_t u = 0; u < turns.size(); ++u) {
      const size_t span = static_cast<size_t>(turns[u].num_tokens) * d;
      const size_t bytes = span * DTypeSize(kv[u].dtype);
      NEXUSKV_RETURN_IF_ERROR(DecodeToFloat(kv[u].keys.substr(h * bytes, bytes), kv[u].dtype,
                                            std::span<float>(range.keys).subspan(at, span)));
      at += span;
    }
  }
  return range;
}

// Splits per-head range values [H][N] back into the turns' [H * T_u] of `layer`.
void SplitIntoTurns(const std::vector<float>& values, const RangeKeys& range, int layer,
                    std::vector<std::vector<float>> ScoredTurn::*field,
                    std::vector<ScoredTurn>& turns) {
  for (size_t u = 0, first = 0; u < turns.size(); ++u) {
    const size_t t = static_cast<size_t>(turns[u].num_tokens);
    std::vector<float>& out = (turns[u].*field)[layer];
    out.resize(range.heads * t);
    for (size_t h = 0; h < range.heads; ++h) {
      std::copy_n(values.begin() + h * range.total + first, t, out.begin() + h * t);
    }
    first += t;
  }
}

}  // namespace

absl::Status AddLookaheadLayer(int layer, std::span<const float> probes, int num_query_heads,
                               std::span<const TurnKv> kv, int head_dim,
                               const ComputeBackend& compute, std::vector<ScoredTurn>& turns) {
  const size_t d = static_cast<size_t>(head_dim);
  const size_t hq = static_cast<size_t>(num_query_heads);
  if (head_dim < 1 || num_query_heads < 1 || layer < 0 || kv.size() != turns.size() ||
      turns.empty() || probes.empty() || probes.size() % (hq * d) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("lookahead: layer ", layer, ", ", probes.size(), " probe floats for ",
                     num_query_heads, " query heads of dimension ", head_dim, ", keys of ",
                     kv.size(), " turns for ", turns.size()));
  }
  NEXUSKV_ASSIGN_OR_RETURN(const RangeKeys range,
                           DecodeRange("lookahead", layer, kv, d, turns, /*needs_scores=*/false));
  if (hq % range.heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("lookahead: ", num_query_heads,
                                                   " query heads for ", range.heads, " kv heads"));
  }
  const size_t rows = probes.size() / (hq * d) * (hq / range.heads);  // a group's, contiguous
  std::vector<AttentionMassItem> items(range.heads);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for (size_t h = 0; h < range.heads; ++h) {
    items[h] = {
        .queries = {probes.subspan(h * rows * d, rows * d), static_cast<int>(rows), head_dim},
        .keys = {range.Head(h, d), static_cast<int>(range.total), head_dim},
        .scale = scale};
  }
  std::vector<float> mass(range.heads * range.total);
  NEXUSKV_RETURN_IF_ERROR(compute.AttentionMass(items, mass));
  SplitIntoTurns(mass, range, layer, &ScoredTurn::lookahead, turns);
  return absl::OkStatus();
}

absl::Status AddProbeScoresLayer(int layer, std::span<const ProbeRows> probes, int num_query_heads,
                                 std::span<const TurnKv> kv, int head_dim,
                                 const ComputeBackend& compute, std::vector<ScoredTurn>& turns) {
  const size_t d = static_cast<size_t>(head_dim);
  const size_t hq = static_cast<size_t>(num_query_heads);
  if (head_dim < 1 || num_query_heads < 1 || layer < 0 || kv.size() != turns.size() ||
      turns.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "probe scores: layer ", layer, ", ", num_query_heads, " query heads of dimension ",
        head_dim, ", keys of ", kv.size(), " turns for ", turns.size()));
  }
  NEXUSKV_ASSIGN_OR_RETURN(const RangeKeys range,
                           DecodeRange("probe scores", layer, kv, d, turns, /*needs_scores=*/true));
  if (hq % range.heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("probe scores: ", num_query_heads,
                                                   " query heads for ", range.heads, " kv heads"));
  }
  const size_t group = hq / range.heads;
  // The range's absolute positions, ascending: a probe at position p sees the tokens at <= p.
  std::vector<int64_t> positions;
  positions.reserve(range.total);
  for (const ScoredTurn& t : turns) {
    for (int64_t i = 0; i < t.num_tokens; ++i) positions.push_back(t.first_position + i);
  }
  // Each kv head's rows: every probe of every set that sees a token, for each query head of the
  // group; the same rows (and limits) for every kv head.
  std::vector<int32_t> causal;
  std::vector<std::pair<size_t, size_t>> picked;  // (probe set, probe) of each row of a group head
  for (size_t s = 0; s < probes.size(); ++s) {
    const size_t p = probes[s].positions.size();
    if (p == 0 || probes[s].queries.size() != hq * p * d) {
      return absl::InvalidArgumentError(
          absl::StrCat("probe scores: probe set ", s, " has ", probes[s].queries.size(),
                       " floats for ", p, " positions (want ", hq, " x ", p, " x ", d, ")"));
    }
    for (size_t j = 0; j < p; ++j) {
      const auto seen =
          std::upper_bound(positions.begin(), positions.end(), probes[s].positions[j]) -
          positions.begin();
      if (seen == 0) continue;
      picked.emplace_back(s, j);
      causal.push_back(static_cast<int32_t>(seen - 1));
    }
  }
  std::vector<float> scores(range.heads * range.total, 0.0f);
  if (!picked.empty()) {
    const size_t rows = picked.size() * group;
    std::vector<float> queries(range.heads * rows * d);
    std::vector<int32_t> limits(rows);
    for (size_t g = 0; g < group; ++g) {
      std::copy(causal.begin(), causal.end(), limits.begin() + g * picked.size());
    }
    for (size_t h = 0; h < range.heads; ++h) {
      for (size_t g = 0; g < group; ++g) {
        const size_t q = h * group + g;  // query head
        for (size_t r = 0; r < picked.size(); ++r) {
          const auto [s, j] = picked[r];
          const size_t p = probes[s].positions.size();
          std::copy_n(probes[s].queries.begin() + (q * p + j) * d, d,
                      queries.begin() + ((h * group + g) * picked.size() + r) * d);
        }
      }
    }
    std::vector<AttentionMassItem> items(range.heads);
    const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    for (size_t h = 0; h < range.heads; ++h) {
      items[h] = {.queries = {std::span<const float>(queries).subspan(h * rows * d, rows * d),
                              static_cast<int>(rows), head_dim},
                  .keys = {range.Head(h, d), static_cast<int>(range.total), head_dim},
                  .scale = scale,
                  .causal = limits};
    }
    NEXUSKV_RETURN_IF_ERROR(compute.AttentionMass(items, scores));
    // The mean over the rows that see each token: a token is not ranked up for being early.
    std::vector<float> seen_by(range.total, 0.0f);
    for (const int32_t c : causal) seen_by[c] += static_cast<float>(group);
    for (size_t i = range.total - 1; i > 0; --i) seen_by[i - 1] += seen_by[i];
    for (size_t h = 0; h < range.heads; ++h) {
      for (size_t i = 0; i < range.total; ++i) {
        float& v = scores[h * range.total + i];
        v = seen_by[i] > 0.0f ? v / seen_by[i] : 0.0f;
      }
    }
  }
  SplitIntoTurns(scores, range, layer, &ScoredTurn::scores, turns);
  return absl::OkStatus();
}

}  // namespace nexuskv::compressor::scored
