// Planning a GetCache by token scores: SpendByTokenScores (service/score_budget.h) ranks every
// (layer, kv head, token) of a session's compressed turns at once, and PlanMergeRuns picks the
// evicted tokens that merged entries stand for. Its time per GetCache, next to
// a full std::sort of the same scores (the naive reference), for a SmolLM2-135M session (30
// layers, 3 kv heads) and a Llama-3-8B session (32 layers, 8 kv heads) of 20 turns of T tokens.
//
//   build/bin/score_budget_bench      # docs/sonic.md, "Token scores"
//
// Counters: scores (how many are ranked), sort_ms (std::sort of a copy of them, same run).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <random>
#include <vector>

#include "service/score_budget.h"

namespace nexuskv::service {
namespace {

struct Session {
  std::vector<std::vector<std::vector<float>>> scores;  // [turn][layer] [H, T]
  std::vector<int64_t> tokens;
};

Session MakeSession(int layers, int heads, int turns, int tokens) {
  std::mt19937 rng(7);
  std::exponential_distribution<float> score(50.0f);  // most tokens read little, a few a lot
  Session s;
  for (int u = 0; u < turns; ++u) {
    s.tokens.push_back(tokens);
    auto& turn = s.scores.emplace_back(layers, std::vector<float>(size_t(heads) * tokens));
    for (auto& layer : turn) {
      for (float& x : layer) x = score(rng);
    }
  }
  return s;
}

void BM_SpendByTokenScores(benchmark::State& state, int layers, int heads) {
  const int tokens = static_cast<int>(state.range(0));
  const Session s = MakeSession(layers, heads, 20, tokens);
  const int64_t budget = 20 * tokens / 5;  // keep 0.2
  for (auto _ : state) {
    HeadCounts kept = SpendByTokenScores(s.scores, heads, s.tokens, budget, 0);
    benchmark::DoNotOptimize(kept);
  }
  std::vector<float> all;
  for (const auto& turn : s.scores) {
    for (const auto& layer : turn) all.insert(all.end(), layer.begin(), layer.end());
  }
  const auto start = std::chrono::steady_clock::now();
  std::sort(all.begin(), all.end(), std::greater<float>());
  const double sort_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  benchmark::DoNotOptimize(all.data());
  state.counters["scores"] = static_cast<double>(all.size());
  state.counters["sort_ms"] = sort_s * 1e3;
}

// PlanMergeRuns after SpendByTokenScores has kept 95% of the budget: which evicted tokens the
// other 5% merge (compressor/merge.h). Counter spend_ms: SpendByTokenScores of the same session
// and budget, same run, the planning step it adds to.
void BM_PlanMergeRuns(benchmark::State& state, int layers, int heads) {
  const int tokens = static_cast<int>(state.range(0));
  const Session s = MakeSession(layers, heads, 20, tokens);
  const int64_t budget = 20 * tokens / 5;  // keep 0.2
  const int64_t merged = budget / 20;
  const auto start = std::chrono::steady_clock::now();
  const HeadCounts kept = SpendByTokenScores(s.scores, heads, s.tokens, budget - merged, 0);
  const double spend_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (auto _ : state) {
    auto runs = PlanMergeRuns(s.scores, heads, s.tokens, kept, merged, 16, 0);
    benchmark::DoNotOptimize(runs);
  }
  state.counters["spend_ms"] = spend_s * 1e3;
}

BENCHMARK_CAPTURE(BM_SpendByTokenScores, smollm2, 30, 3)
    ->Arg(128)
    ->Arg(1024)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_SpendByTokenScores, llama3_8b, 32, 8)
    ->Arg(128)
    ->Arg(1024)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_PlanMergeRuns, smollm2, 30, 3)
    ->Arg(128)
    ->Arg(1024)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_PlanMergeRuns, llama3_8b, 32, 8)
    ->Arg(128)
    ->Arg(1024)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace nexuskv::service

BENCHMARK_MAIN();
