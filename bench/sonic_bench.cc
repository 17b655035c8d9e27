// SONIC on the CPU: Fit (the whole ladder of one layer) and Materialize (one answer) throughput in
// MB/s of raw KV, next to a memcpy of the same bytes, for SmolLM2-135M and Llama-3-8B layer shapes.
//
// Bytes are the layer's raw KV as float16 (keys + values, 2 * H * T * D * 2 bytes), as in
// compressor_bench. Counters: memcpy_MB/s (a memcpy of those bytes, timed in the same run),
// ladder_bytes/raw (the stored fit over the raw float16 KV) and ladder_entries/T (stored entries
// per kv head over the turn's tokens; at most 2x the largest rung T/4, i.e. <= 0.5).
//
//   OPENBLAS_NUM_THREADS=1 build/bin/sonic_bench        # per-core numbers (docs/sonic.md)
//
// The layer is synthetic: keys with a few directions shared by many tokens (so clusters exist),
// values and probes N(0, 1). Time does not depend on the values (fixed Lloyd iterations).
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "bench/bench_layer.h"
#include "compressor/compressor.h"
#include "compressor/internal/sonic_ladder.h"

namespace nexuskv::compressor {
namespace {

using Shape = BenchShape;

double MemcpyMBps(int64_t bytes) { return bytes / MemcpySeconds(bytes) / 1e6; }

const Compressor& Sonic() { return *CompressorRegistry::Default().Find("SONIC"); }

void BM_Fit(benchmark::State& state, Shape shape) {
  const BenchLayer layer = MakeBenchLayer(shape, KeyLayout::kClustered);
  std::string fit;
  for (auto _ : state) {
    absl::StatusOr<std::string> f = Sonic().Fit(layer.view);
    if (!f.ok()) {
      state.SkipWithError(std::string(f.status().message()).c_str());
      return;
    }
    fit = *std::move(f);
    benchmark::DoNotOptimize(fit.data());
  }
  const int64_t bytes = Float16KvBytes(shape);
  state.SetBytesProcessed(state.iterations() * bytes);
  state.counters["memcpy_MB/s"] = MemcpyMBps(bytes);
  state.counters["ladder_bytes/raw"] = static_cast<double>(fit.size()) / bytes;
  const auto index = internal::IndexSonicLadder(fit);
  state.counters["ladder_entries/T"] =
      static_cast<double>(internal::SonicStoredEntries(index->rungs)) / shape.num_tokens;
}

// n = T/4 is the top rung (served from the fit alone, as for a turn whose raw KV was dropped);
// n = 0.4 T tops rung T/4 up with raw tokens, ranked by lookahead queries (the probes) as GetCache
// passes them.
void BM_Materialize(benchmark::State& state, Shape shape, double keep, bool with_raw) {
  const BenchLayer layer = MakeBenchLayer(shape, KeyLayout::kClustered);
  const std::string fit = Sonic().Fit(layer.view).value();
  LayerView view = layer.view;
  if (!with_raw) view.keys = view.values = view.probes = {};
  if (!with_raw) view.num_probes = 0;
  if (with_raw) {
    view.lookahead = view.probes;
    view.num_lookahead = view.num_probes;
  }
  const int n = static_cast<int>(shape.num_tokens * keep);
  for (auto _ : state) {
    absl::StatusOr<LayerEntries> kept = Sonic().Materialize(view, fit, n);
    if (!kept.ok()) {
      state.SkipWithError(std::string(kept.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(kept->keys.data());
  }
  const int64_t bytes = Float16KvBytes(shape);
  state.SetBytesProcessed(state.iterations() * bytes);
  state.counters["memcpy_MB/s"] = MemcpyMBps(bytes);
}

void RegisterAll() {
  for (const Shape& shape : kBenchShapes) {
    const std::string suffix = std::string("/") + shape.name;
    benchmark::RegisterBenchmark(("SonicFit" + suffix).c_str(), BM_Fit, shape)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("SonicMaterialize/rung_T/4" + suffix).c_str(), BM_Materialize,
                                 shape, 0.25, false)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("SonicMaterialize/topup_0.4T" + suffix).c_str(), BM_Materialize,
                                 shape, 0.4, true)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
  }
}

}  // namespace
}  // namespace nexuskv::compressor

int main(int argc, char** argv) {
  nexuskv::compressor::RegisterAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
