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
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "compressor/compressor.h"

namespace nexuskv::compressor {
namespace {

struct Shape {
  const char* name;
  int num_kv_heads;
  int num_query_heads;
  int head_dim;
  int num_tokens;
  int num_probes;
};

constexpr Shape kShapes[] = {
    {"SmolLM2-135M", 3, 9, 64, 512, 32},
    {"Llama-3-8B", 8, 32, 128, 2048, 64},
};

constexpr double kKeepRatio = 0.5;

struct Layer {
  std::vector<float> keys, values, probes;
  LayerView view;
};

Layer MakeLayer(const Shape& s) {
  Layer layer;
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t kv = static_cast<size_t>(s.num_kv_heads) * s.num_tokens * s.head_dim;
  layer.keys.resize(kv);
  layer.values.resize(kv);
  layer.probes.resize(static_cast<size_t>(s.num_query_heads) * s.num_probes * s.head_dim);
  for (auto* buffer : {&layer.keys, &layer.values, &layer.probes}) {
    for (float& x : *buffer) x = normal(rng);
  }
  layer.view.num_kv_heads = s.num_kv_heads;
  layer.view.num_query_heads = s.num_query_heads;
  layer.view.num_tokens = s.num_tokens;
  layer.view.head_dim = s.head_dim;
  layer.view.num_probes = s.num_probes;
  layer.view.keys = layer.keys;
  layer.view.values = layer.values;
  layer.view.probes = layer.probes;
  return layer;
}

int64_t Float16KvBytes(const Shape& s) {
  return int64_t{2} * s.num_kv_heads * s.num_tokens * s.head_dim * 2;
}

using Clock = std::chrono::steady_clock;

// Seconds per memcpy of `bytes`, averaged over at least 50 ms of copies.
double MemcpySeconds(int64_t bytes) {
  std::vector<char> src(bytes, 1), dst(bytes);
  int64_t copies = 0;
  const auto start = Clock::now();
  std::chrono::duration<double> elapsed{};
  do {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
    ++copies;
    elapsed = Clock::now() - start;
  } while (elapsed.count() < 0.05);
  return elapsed.count() / copies;
}

void ReportThroughput(benchmark::State& state, int64_t bytes, double seconds_per_iteration) {
  state.SetBytesProcessed(state.iterations() * bytes);
  const double memcpy_seconds = MemcpySeconds(bytes);
  state.counters["memcpy_MB/s"] = bytes / memcpy_seconds / 1e6;
  state.counters["memcpy_ratio"] = memcpy_seconds / seconds_per_iteration;
}

void BM_FitMaterialize(benchmark::State& state, const char* method, Shape shape) {
  const Compressor* compressor = CompressorRegistry::Default().Find(method);
  const Layer layer = MakeLayer(shape);
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
  const Layer layer = MakeLayer(shape);
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
  for (const Shape& shape : kShapes) {
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
