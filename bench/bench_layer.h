// What the CPU benchmarks share: the layer shapes they time (SmolLM2-135M and Llama-3-8B), a
// synthetic layer of such a shape, its raw KV size as float16, and the memcpy reference.
//
//   for (const BenchShape& s : kBenchShapes) {
//     const BenchLayer layer = MakeBenchLayer(s, KeyLayout::kClustered);
//     ... time something on layer.view, report Float16KvBytes(s) / MemcpySeconds(...) beside it
//   }
#ifndef NEXUSKV_BENCH_BENCH_LAYER_H_
#define NEXUSKV_BENCH_BENCH_LAYER_H_

#include <cstdint>
#include <vector>

#include "compressor/compressor.h"

namespace nexuskv::compressor {

struct BenchShape {
  const char* name;
  int num_kv_heads, num_query_heads, head_dim, num_tokens, num_probes;
};

inline constexpr BenchShape kBenchShapes[] = {
    {"SmolLM2-135M", 3, 9, 64, 512, 32},
    {"Llama-3-8B", 8, 32, 128, 2048, 64},
};

// A layer that owns its tensors; view borrows them (dtype float16, as the bytes are counted).
struct BenchLayer {
  std::vector<float> keys, values, probes;
  LayerView view;
};

enum class KeyLayout {
  kGaussian,   // keys N(0, 1)
  kClustered,  // keys around 16 shared directions (scale 3) plus N(0, 1): clusters exist
};

// Values and probes N(0, 1); seeded, so every run times the same layer.
BenchLayer MakeBenchLayer(const BenchShape& s, KeyLayout keys);

// Keys + values as float16: 2 * H * T * D * 2 bytes.
int64_t Float16KvBytes(const BenchShape& s);

// Seconds per memcpy of `bytes`, averaged over at least 50 ms of copies.
double MemcpySeconds(int64_t bytes);

}  // namespace nexuskv::compressor

#endif  // NEXUSKV_BENCH_BENCH_LAYER_H_
