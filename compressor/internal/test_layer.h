// Test-only helpers: an owning layer with random contents, and a matcher on status codes.
#ifndef NEXUSKV_COMPRESSOR_INTERNAL_TEST_LAYER_H_
#define NEXUSKV_COMPRESSOR_INTERNAL_TEST_LAYER_H_

#include <algorithm>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "compressor/compressor.h"
#include "gmock/gmock.h"

namespace nexuskv::compressor::testing {

// Owns the buffers a LayerView borrows; view() is rebuilt on every call so copies stay valid.
struct TestLayer {
  int num_kv_heads = 0;
  int num_query_heads = 0;
  int num_tokens = 0;
  int head_dim = 0;
  int num_probes = 0;
  int64_t first_position = 0;
  bool session_start = false;
  std::vector<float> keys;
  std::vector<float> values;
  std::vector<float> probes;

  // Keys, values and probes drawn from N(0, 1) with `seed`.
  static TestLayer Random(int h, int hq, int t, int d, int p, uint32_t seed) {
    TestLayer layer;
    layer.num_kv_heads = h;
    layer.num_query_heads = hq;
    layer.num_tokens = t;
    layer.head_dim = d;
    layer.num_probes = p;
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    layer.keys.resize(static_cast<size_t>(h) * t * d);
    layer.values.resize(layer.keys.size());
    layer.probes.resize(static_cast<size_t>(hq) * p * d);
    for (float& x : layer.keys) x = normal(rng);
    for (float& x : layer.values) x = normal(rng);
    for (float& x : layer.probes) x = normal(rng);
    return layer;
  }

  LayerView view() const {
    LayerView v;
    v.num_kv_heads = num_kv_heads;
    v.num_query_heads = num_query_heads;
    v.num_tokens = num_tokens;
    v.head_dim = head_dim;
    v.num_probes = num_probes;
    v.first_position = first_position;
    v.session_start = session_start;
    v.keys = keys;
    v.values = values;
    v.probes = probes;
    return v;
  }

  float* key(int h, int i) {
    return keys.data() + (static_cast<size_t>(h) * num_tokens + i) * head_dim;
  }
  float* probe(int q, int j) {
    return probes.data() + (static_cast<size_t>(q) * num_probes + j) * head_dim;
  }
};

// Plants a heavy hitter that only `query_heads` see: their probes become 4*e0, kv head h's key of
// `token` becomes 8*e0, and every other probe loses its e0 component, so that for the other query
// heads the planted key scores 0 like an average key (a large key alone must not make it heavy).
inline void PlantHeavyHitter(TestLayer& layer, int h, int token,
                             const std::vector<int>& query_heads) {
  const int d = layer.head_dim;
  for (int q = 0; q < layer.num_query_heads; ++q) {
    const bool planted = std::find(query_heads.begin(), query_heads.end(), q) != query_heads.end();
    for (int j = 0; j < layer.num_probes; ++j) {
      float* probe = layer.probe(q, j);
      if (planted) {
        for (int c = 0; c < d; ++c) probe[c] = (c == 0 ? 4.0f : 0.0f);
      } else {
        probe[0] = 0.0f;
      }
    }
  }
  // With D = 16 the logit is 4 * 8 / 4 = 8, against about N(0, 1) for random keys.
  for (int c = 0; c < d; ++c) layer.key(h, token)[c] = (c == 0 ? 8.0f : 0.0f);
}

// Positions kept for kv head h.
inline std::set<int64_t> HeadPositions(const LayerEntries& entries, int h) {
  const auto first = entries.positions.begin() + static_cast<size_t>(h) * entries.num_entries;
  return std::set<int64_t>(first, first + entries.num_entries);
}

inline absl::Status StatusOf(const absl::Status& status) { return status; }
template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

MATCHER_P(StatusIs, code, "has status code " + ::testing::PrintToString(code)) {
  const absl::Status status = StatusOf(arg);
  *result_listener << "status is " << status;
  return status.code() == code;
}

}  // namespace nexuskv::compressor::testing

#endif  // NEXUSKV_COMPRESSOR_INTERNAL_TEST_LAYER_H_
