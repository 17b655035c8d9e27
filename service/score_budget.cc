#include "service/score_budget.h"

#include <algorithm>
#include <cfloat>
#include <functional>

namespace nexuskv::service {

std::vector<std::vector<int64_t>> SpendByTokenScores(
    const std::vector<std::vector<std::vector<float>>>& scores, int64_t heads,
    std::span<const int64_t> tokens, int64_t budget, int sink_turn) {
  const size_t turns = scores.size();
  const size_t layers = turns == 0 ? 0 : scores[0].size();
  std::vector<std::vector<int64_t>> out(turns, std::vector<int64_t>(layers, 0));
  if (turns == 0 || layers == 0 || heads <= 0 || budget <= 0) return out;

  // The sinks outrank every score.
  auto score = [&](size_t u, size_t l, int64_t h, int64_t i) {
    if (static_cast<int>(u) == sink_turn && i < kSinkTokens) return FLT_MAX;
    return scores[u][l][h * tokens[u] + i];
  };
  std::vector<float> all;
  for (size_t u = 0; u < turns; ++u) {
    for (size_t l = 0; l < layers; ++l) {
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t i = 0; i < tokens[u]; ++i) all.push_back(score(u, l, h, i));
      }
    }
  }
  const int64_t want = budget * heads * static_cast<int64_t>(layers);
  if (want >= static_cast<int64_t>(all.size())) {
    for (size_t u = 0; u < turns; ++u) std::fill(out[u].begin(), out[u].end(), tokens[u]);
    return out;
  }
  // The want-th largest score; everything above it is kept, ties at it in scan order.
  std::nth_element(all.begin(), all.begin() + (want - 1), all.end(), std::greater<float>());
  const float threshold = all[want - 1];
  int64_t above = 0;
  for (float s : all) above += s > threshold;
  int64_t ties = want - above;
  for (size_t u = 0; u < turns; ++u) {
    for (size_t l = 0; l < layers; ++l) {
      int64_t kept = 0;
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t i = 0; i < tokens[u]; ++i) {
          const float s = score(u, l, h, i);
          if (s > threshold || (s == threshold && ties-- > 0)) ++kept;
        }
      }
      out[u][l] = std::min(tokens[u], kept / heads);
    }
  }
  return out;
}

}  // namespace nexuskv::service
