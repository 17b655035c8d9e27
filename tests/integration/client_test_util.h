// Small turns for the client integration tests (client_test.cc, client_security_test.cc).
#ifndef NEXUSKV_TESTS_INTEGRATION_CLIENT_TEST_UTIL_H_
#define NEXUSKV_TESTS_INTEGRATION_CLIENT_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "clients/cpp/client.h"

namespace nexuskv::testing {

// L layers, H=2, Hq=4, D=4, float16.
inline nexuskv::v1::ModelSpec Spec(uint32_t layers = 2) {
  nexuskv::v1::ModelSpec spec;
  spec.set_model_id("test-model");
  spec.set_num_layers(layers);
  spec.set_num_kv_heads(2);
  spec.set_num_query_heads(4);
  spec.set_head_dim(4);
  spec.set_dtype(nexuskv::v1::DTYPE_FLOAT16);
  return spec;
}

// A turn whose byte buffers live in `storage` (keys, values, probes of layer 0, then of layer 1,
// ...). Every byte depends on the turn, layer and offset, so misplaced rows show up; every float16
// is finite (the server refuses NaN and infinities).
struct OwnedTurn {
  std::vector<std::string> storage;
  client::TurnTensors turn;
};

inline OwnedTurn MakeTurn(const std::string& session, uint32_t turn, uint32_t tokens,
                          uint32_t probes, uint64_t first_position, uint32_t layers = 2) {
  OwnedTurn t;
  t.turn.session_id = session;
  t.turn.turn = turn;
  t.turn.first_position = first_position;
  t.turn.role = nexuskv::v1::ROLE_USER;
  t.turn.model = Spec(layers);
  const size_t kv = 2 * tokens * 4 * 2;
  const size_t pq = 4 * probes * 4 * 2;
  t.storage.reserve(3 * layers);
  for (uint32_t l = 0; l < layers; ++l) {
    for (size_t size : {kv, kv, pq}) {
      std::string bytes(size, '\0');
      for (size_t i = 0; i < size; ++i) {
        bytes[i] = static_cast<char>(turn * 31 + l * 7 + t.storage.size() * 3 + i);
        // The high byte of each little-endian float16: an exponent of all ones is NaN or inf.
        if (i % 2 == 1) bytes[i] = static_cast<char>(bytes[i] & ~0x04);
      }
      t.storage.push_back(std::move(bytes));
    }
    const size_t base = t.storage.size() - 3;
    t.turn.layers.push_back({t.storage[base], t.storage[base + 1], t.storage[base + 2]});
  }
  return t;
}

// The FULL cache of a session.
inline absl::StatusOr<client::Cache> GetFull(client::Client& client, const std::string& session) {
  nexuskv::v1::GetCacheRequest request;
  request.set_session_id(session);
  request.set_method(nexuskv::v1::FULL);
  return client.GetCache(request);
}

}  // namespace nexuskv::testing

#endif  // NEXUSKV_TESTS_INTEGRATION_CLIENT_TEST_UTIL_H_
