#include "bench/bench_layer.h"

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstring>
#include <random>

namespace nexuskv::compressor {

BenchLayer MakeBenchLayer(const BenchShape& s, KeyLayout layout) {
  BenchLayer layer;
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t d = static_cast<size_t>(s.head_dim);
  const size_t kv = static_cast<size_t>(s.num_kv_heads) * s.num_tokens * d;
  layer.keys.resize(kv);
  if (layout == KeyLayout::kClustered) {
    std::vector<float> centers(16 * d);
    for (float& x : centers) x = 3.0f * normal(rng);
    for (size_t row = 0; row < kv / d; ++row) {
      const float* c = centers.data() + (rng() % 16) * d;
      for (size_t i = 0; i < d; ++i) layer.keys[row * d + i] = c[i] + normal(rng);
    }
  } else {
    for (float& x : layer.keys) x = normal(rng);
  }
  layer.values.resize(kv);
  layer.probes.resize(static_cast<size_t>(s.num_query_heads) * s.num_probes * d);
  for (auto* buffer : {&layer.values, &layer.probes}) {
    for (float& x : *buffer) x = normal(rng);
  }
  LayerView& v = layer.view;
  v.num_kv_heads = s.num_kv_heads;
  v.num_query_heads = s.num_query_heads;
  v.num_tokens = s.num_tokens;
  v.head_dim = s.head_dim;
  v.num_probes = s.num_probes;
  v.dtype = DType::kFloat16;
  v.keys = layer.keys;
  v.values = layer.values;
  v.probes = layer.probes;
  return layer;
}

int64_t Float16KvBytes(const BenchShape& s) {
  return int64_t{2} * s.num_kv_heads * s.num_tokens * s.head_dim * 2;
}

double MemcpySeconds(int64_t bytes) {
  using Clock = std::chrono::steady_clock;
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

}  // namespace nexuskv::compressor
