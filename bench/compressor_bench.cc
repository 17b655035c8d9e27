// Fit + Materialize throughput of the selection methods on real layer shapes, next to a plain
// memcpy of the same bytes.
//
// Bytes are the layer's raw KV as float16 (keys + values, 2 * H * T * D * 2 bytes): what a worker
// ships per layer, so MB/s reads as "turns of this model the CPU compressor keeps up with".
// Counters: memcpy_MB/s is a memcpy of those bytes timed in the same run, and memcpy_ratio is this
// benchmark's throughput divided by it (1.0 = as fast as copying the input once).
//
//   build/bin/compressor_bench --benchmark_filter=H2O
//
// Wall time is measured (OpenBLAS may use several threads); set OPENBLAS_NUM_THREADS to pin it.
#include <benchmark/benchmark.h>

#include <chrono>
#include <string>
#include <vector>

#include "bench/bench_layer.h"
#include "compressor/compressor.h"

namespace nexuskv::compressor {
namespace {

using Shape = BenchShape;
using Clock = std::chrono::steady_clock;

constexpr double kKeepRatio = 0.5;

void ReportThroughput(benchmark::State& state, int64_t bytes, double seconds_per_iteration) {
  state.SetBytesProcessed(state.iterations() * bytes);
  const double memcpy_seconds = MemcpySeconds(bytes);
  state.counters["memcpy_MB/s"] = bytes / memcpy_seconds / 1e6;
  state.counters["memcpy_ratio"] = memcpy_seconds / seconds_per_iteration;
}

void BM_FitMaterialize(benchmark::State& state, const char* method, Shape shape) {
  const Compressor* compressor = CompressorRegistry::Default().Find(method);
  const BenchLayer layer = MakeBenchLayer(shape, KeyLayout::kGaussian);
  const int n = static_cast<int>(shape.num_tokens * kKeepRatio);
  const auto start = Clock::now();
  for (auto _ : state) {
    absl::StatusOr<std::string> fit = compressor->Fit(layer.view);
    absl::StatusOr<LayerEntries> kept = compressor->Materialize(layer.view, *fit, n);
    if (!kept.ok()) {
      state.SkipWithError(std::string(kept.status().message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(kept->keys.data());
  }
  const std::chrono::duration<double> elapsed = Clock::now() - start;
  ReportThroughput(state, Float16KvBytes(shape), elapsed.count() / state.iterations());
}

void BM_Materialize(benchmark::State& state, const char* method, Shape shape) {
  const Compressor* compressor = CompressorRegistry::Default().Find(method);
  const BenchLayer layer = MakeBenchLayer(shape, KeyLayout::kGaussian);
  const int n = static_cast<int>(shape.num_tokens * kKeepRatio);
  const std::string fit = compressor->Fit(layer.view).value();
  const auto start = Clock::now();
  for (auto _ : state) {
    absl::StatusOr<LayerEntries> kept = compressor->Materialize(layer.view, fit, n);
    if (!kept.ok()) {
      state.SkipWithError(std::string(kept.status().message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(kept->keys.data());
  }
  const std::chrono::duration<double> elapsed = Clock::now() - start;
  ReportThroughput(state, Float16KvBytes(shape), elapsed.count() / state.iterations());
}

void BM_Memcpy(benchmark::State& state, Shape shape) {
  const int64_t bytes = Float16KvBytes(shape);
  std::vector<char> src(bytes, 1), dst(bytes);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * bytes);
}

void RegisterAll() {
  for (const Shape& shape : kBenchShapes) {
    const std::string suffix = std::string("/") + shape.name;
    benchmark::RegisterBenchmark(("Memcpy" + suffix).c_str(), BM_Memcpy, shape)->UseRealTime();
    for (const char* method : {"H2O", "SNAPKV"}) {
      benchmark::RegisterBenchmark((std::string("FitMaterialize/") + method + suffix).c_str(),
                                   BM_FitMaterialize, method, shape)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark((std::string("Materialize/") + method + suffix).c_str(),
                                   BM_Materialize, method, shape)
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    }
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
