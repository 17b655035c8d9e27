// Test helpers for service tests: deterministic segments of a small model.
#ifndef NEXUSKV_SERVICE_TEST_UTIL_H_
#define NEXUSKV_SERVICE_TEST_UTIL_H_

#include <random>
#include <string>
#include <vector>

#include "nexuskv/v1/kv_memory.pb.h"
#include "tensor/dtype.h"

namespace nexuskv::service::testing {

inline nexuskv::v1::ModelSpec TinySpec(nexuskv::v1::DType dtype = nexuskv::v1::DTYPE_FLOAT16) {
  nexuskv::v1::ModelSpec spec;
  spec.set_model_id("tiny-test");
  spec.set_num_layers(2);
  spec.set_num_kv_heads(2);
  spec.set_num_query_heads(4);
  spec.set_head_dim(8);
  spec.set_dtype(dtype);
  return spec;
}

inline DType TensorDTypeOf(nexuskv::v1::DType dtype) {
  return dtype == nexuskv::v1::DTYPE_FLOAT32   ? DType::kFloat32
         : dtype == nexuskv::v1::DTYPE_BFLOAT16 ? DType::kBFloat16
                                                : DType::kFloat16;
}

inline std::string RandomTensor(size_t elements, nexuskv::v1::DType dtype, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> values(elements);
  for (float& v : values) v = normal(rng);
  return EncodeFromFloat(values, TensorDTypeOf(dtype));
}

// The messages of one AppendSegment stream: header, then every layer.
inline std::vector<nexuskv::v1::AppendSegmentRequest> SegmentMessages(
    const std::string& session, uint32_t turn, uint32_t tokens, uint64_t first_position,
    uint32_t probes = 2, const nexuskv::v1::ModelSpec& spec = TinySpec(), uint32_t seed = 1) {
  std::vector<nexuskv::v1::AppendSegmentRequest> out(1);
  nexuskv::v1::SegmentHeader* h = out[0].mutable_header();
  h->set_session_id(session);
  h->set_turn(turn);
  h->set_num_tokens(tokens);
  h->set_first_position(first_position);
  h->set_role(turn % 2 == 0 ? nexuskv::v1::ROLE_USER : nexuskv::v1::ROLE_ASSISTANT);
  *h->mutable_model() = spec;
  h->set_num_probe_queries(probes);
  const size_t kv = size_t{spec.num_kv_heads()} * tokens * spec.head_dim();
  const size_t q = size_t{spec.num_query_heads()} * probes * spec.head_dim();
  for (uint32_t l = 0; l < spec.num_layers(); ++l) {
    nexuskv::v1::LayerChunk* c = out.emplace_back().mutable_layer();
    c->set_layer(l);
    c->set_keys(RandomTensor(kv, spec.dtype(), seed * 1000 + turn * 10 + l));
    c->set_values(RandomTensor(kv, spec.dtype(), seed * 2000 + turn * 10 + l));
    c->set_probe_queries(RandomTensor(q, spec.dtype(), seed * 3000 + turn * 10 + l));
  }
  return out;
}

}  // namespace nexuskv::service::testing

#endif  // NEXUSKV_SERVICE_TEST_UTIL_H_
