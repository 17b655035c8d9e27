#include "compressor/scored/lookahead.h"

#include <cmath>
#include <cstddef>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "tensor/dtype.h"

namespace nexuskv::compressor::scored {

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
  size_t total = 0;
  size_t heads = 0;
  for (size_t u = 0; u < turns.size(); ++u) {
    const size_t t = static_cast<size_t>(turns[u].num_tokens);
    const size_t floats = kv[u].keys.size() / DTypeSize(kv[u].dtype);
    if (u == 0) heads = t > 0 ? floats / (t * d) : 0;
    if (t == 0 || heads == 0 || kv[u].keys.size() != heads * t * d * DTypeSize(kv[u].dtype) ||
        turns[u].lookahead.size() <= static_cast<size_t>(layer)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "lookahead: turn ", u, " of ", t, " tokens has ", floats, " key values (want ", heads,
          " x ", t, " x ", d, ") and ", turns[u].lookahead.size(), " lookahead layers"));
    }
    total += t;
  }
  if (hq % heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("lookahead: ", num_query_heads, " query heads for ", heads, " kv heads"));
  }
  const size_t rows = probes.size() / (hq * d) * (hq / heads);  // a group's rows, contiguous
  // Each kv head's keys over the whole range, [H][N, D], decoded from the stored [H, T, D] bytes
  // of every turn straight into place.
  std::vector<float> range(heads * total * d);
  for (size_t h = 0, at = 0; h < heads; ++h) {
    for (size_t u = 0; u < turns.size(); ++u) {
      const size_t span = static_cast<size_t>(turns[u].num_tokens) * d;
      const size_t bytes = span * DTypeSize(kv[u].dtype);
      NEXUSKV_RETURN_IF_ERROR(DecodeToFloat(kv[u].keys.substr(h * bytes, bytes), kv[u].dtype,
                                            std::span<float>(range).subspan(at, span)));
      at += span;
    }
  }
  std::vector<AttentionMassItem> items(heads);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for (size_t h = 0; h < heads; ++h) {
    items[h] = {
        .queries = {probes.subspan(h * rows * d, rows * d), static_cast<int>(rows), head_dim},
        .keys = {std::span<const float>(range).subspan(h * total * d, total * d),
                 static_cast<int>(total), head_dim},
        .scale = scale};
  }
  std::vector<float> mass(heads * total);
  NEXUSKV_RETURN_IF_ERROR(compute.AttentionMass(items, mass));
  for (size_t u = 0, first = 0; u < turns.size(); ++u) {
    const size_t t = static_cast<size_t>(turns[u].num_tokens);
    std::vector<float>& out = turns[u].lookahead[layer];
    out.resize(heads * t);
    for (size_t h = 0; h < heads; ++h) {
      std::copy_n(mass.begin() + h * total + first, t, out.begin() + h * t);
    }
    first += t;
  }
  return absl::OkStatus();
}

}  // namespace nexuskv::compressor::scored
