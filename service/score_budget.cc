#include "service/score_budget.h"

#include <algorithm>
#include <cfloat>
#include <functional>
#include <numeric>

#include "compressor/merge.h"

namespace nexuskv::service {

HeadCounts SpendByTokenScores(const std::vector<std::vector<std::vector<float>>>& scores,
                              int64_t heads, std::span<const int64_t> tokens, int64_t budget,
                              int sink_turn) {
  const size_t turns = scores.size();
  const size_t layers = turns == 0 ? 0 : scores[0].size();
  HeadCounts out(turns, std::vector<std::vector<int64_t>>(
                            layers, std::vector<int64_t>(std::max<int64_t>(heads, 0), 0)));
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
    for (size_t u = 0; u < turns; ++u) {
      for (auto& layer : out[u]) std::fill(layer.begin(), layer.end(), tokens[u]);
    }
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
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t i = 0; i < tokens[u]; ++i) {
          const float s = score(u, l, h, i);
          if (s > threshold || (s == threshold && ties-- > 0)) ++out[u][l][h];
        }
      }
    }
  }
  return out;
}

std::vector<std::vector<std::vector<MergeRun>>> PlanMergeRuns(
    const std::vector<std::vector<std::vector<float>>>& scores, int64_t heads,
    std::span<const int64_t> tokens, const HeadCounts& kept, int64_t entries, int run_length,
    int sink_turn) {
  const size_t turns = scores.size();
  const size_t layers = turns == 0 ? 0 : scores[0].size();
  std::vector<std::vector<std::vector<MergeRun>>> out(
      layers, std::vector<std::vector<MergeRun>>(std::max<int64_t>(heads, 0)));
  if (entries <= 0 || run_length <= 0) return out;
  struct Evicted {
    float score;
    TokenRef token;
  };
  for (size_t l = 0; l < layers; ++l) {
    for (int64_t h = 0; h < heads; ++h) {
      std::vector<Evicted> evicted;  // in history order
      for (size_t u = 0; u < turns; ++u) {
        const std::span<const float> head =
            std::span<const float>(scores[u][l]).subspan(h * tokens[u], tokens[u]);
        for (uint32_t i : compressor::EvictedByTokenScores(head, static_cast<int>(u) == sink_turn,
                                                           kept[u][l][h])) {
          evicted.push_back({head[i], {static_cast<int>(u), i}});
        }
      }
      // The `take` best (ties to the earlier token), then back in history order.
      const size_t take = std::min<size_t>(evicted.size(), entries * run_length);
      std::vector<uint32_t> best(evicted.size());
      std::iota(best.begin(), best.end(), 0u);
      if (take > 0 && take < best.size()) {
        std::nth_element(
            best.begin(), best.begin() + (take - 1), best.end(), [&](uint32_t a, uint32_t b) {
              return evicted[a].score != evicted[b].score ? evicted[a].score > evicted[b].score
                                                          : a < b;
            });
      }
      best.resize(take);
      std::sort(best.begin(), best.end());
      for (size_t j = 0; j < take; j += run_length) {
        MergeRun& run = out[l][h].emplace_back();
        for (size_t k = j; k < std::min(take, j + run_length); ++k) {
          run.push_back(evicted[best[k]].token);
        }
      }
    }
  }
  return out;
}

std::vector<std::vector<int64_t>> EvenOverHeads(const HeadCounts& kept) {
  std::vector<std::vector<int64_t>> out;
  for (const auto& turn : kept) {
    std::vector<int64_t>& n = out.emplace_back();
    for (const std::vector<int64_t>& layer : turn) {
      int64_t sum = 0;
      for (int64_t c : layer) sum += c;
      n.push_back(layer.empty() ? 0 : sum / static_cast<int64_t>(layer.size()));
    }
  }
  return out;
}

}  // namespace nexuskv::service
