// The model and random tensors of the bfloat16 end-to-end tests (service_test.cc,
// sonic_service_test.cc): 3 layers, H=2, Hq=6, D=16, bfloat16.
#ifndef NEXUSKV_TESTS_INTEGRATION_BF16_TURNS_H_
#define NEXUSKV_TESTS_INTEGRATION_BF16_TURNS_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "nexuskv/v1/kv_memory.pb.h"
#include "tensor/dtype.h"

namespace nexuskv::testing {

inline nexuskv::v1::ModelSpec Bf16Spec(const std::string& model_id) {
  nexuskv::v1::ModelSpec spec;
  spec.set_model_id(model_id);
  spec.set_num_layers(3);
  spec.set_num_kv_heads(2);
  spec.set_num_query_heads(6);
  spec.set_head_dim(16);
  spec.set_dtype(nexuskv::v1::DTYPE_BFLOAT16);
  return spec;
}

// `elements` standard-normal values as bfloat16 bytes, the same for the same seed.
inline std::string RandomBf16(size_t elements, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> v(elements);
  for (float& x : v) x = normal(rng);
  return EncodeFromFloat(v, DType::kBFloat16);
}

}  // namespace nexuskv::testing

#endif  // NEXUSKV_TESTS_INTEGRATION_BF16_TURNS_H_
