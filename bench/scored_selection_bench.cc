// Planning a scored GetCache (compressor/scored/selection.h): Selection::Make ranks every (layer,
// kv head, token) score of a session's compressed turns at once, decides each head's count and
// the merged runs (5% of the budget, as the server's merge_share), and keeps the masks. Its time
// per GetCache, next to a full std::sort of the same scores (the naive reference, same run), for a
// SmolLM2-135M session (30 layers, 3 kv heads) and a Llama-3-8B session (32 layers, 8 kv heads)
// of 20 turns of T tokens, at keep 0.2.
//
//   build/bin/scored_selection_bench   # docs/experiments/sonic-scored.md
//
// Counters: scores (how many are ranked), sort_ms (std::sort of a copy of them, same run).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <random>
#include <vector>

#include "compressor/scored/selection.h"

namespace nexuskv::compressor::scored {
namespace {

std::vector<ScoredTurn> MakeSession(int layers, int heads, int turns, int tokens) {
  std::mt19937 rng(7);
  std::exponential_distribution<float> score(50.0f);  // most tokens read little, a few a lot
  std::vector<ScoredTurn> s;
  for (int u = 0; u < turns; ++u) {
    ScoredTurn& turn = s.emplace_back();
    turn.num_tokens = tokens;
    turn.first_position = int64_t{u} * tokens;
    turn.session_start = u == 0;
    turn.scores.assign(layers, std::vector<float>(size_t(heads) * tokens));
    for (auto& layer : turn.scores) {
      for (float& x : layer) x = score(rng);
    }
  }
  return s;
}

void BM_Select(benchmark::State& state, int layers, int heads) {
  const int tokens = static_cast<int>(state.range(0));
  const std::vector<ScoredTurn> s = MakeSession(layers, heads, 20, tokens);
  const SelectionOptions options{
      .budget = 20 * tokens / 5, .fill_heads = true, .bias = true, .merge_share = 0.05};
  for (auto _ : state) {
    state.PauseTiming();
    std::vector<ScoredTurn> copy = s;  // Make takes the scores
    state.ResumeTiming();
    absl::StatusOr<Selection> selection = Selection::Make(std::move(copy), layers, heads, options);
    benchmark::DoNotOptimize(selection);
  }
  std::vector<float> all;
  for (const ScoredTurn& turn : s) {
    for (const auto& layer : turn.scores) all.insert(all.end(), layer.begin(), layer.end());
  }
  const auto start = std::chrono::steady_clock::now();
  std::sort(all.begin(), all.end(), std::greater<float>());
  const double sort_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  benchmark::DoNotOptimize(all.data());
  state.counters["scores"] = static_cast<double>(all.size());
  state.counters["sort_ms"] = sort_s * 1e3;
}

BENCHMARK_CAPTURE(BM_Select, smollm2, 30, 3)->Arg(128)->Arg(1024)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Select, llama3_8b, 32, 8)->Arg(128)->Arg(1024)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace nexuskv::compressor::scored

BENCHMARK_MAIN();
