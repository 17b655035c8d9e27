// Deterministic turns for the fault tests: the bytes of turn `turn` of a session are a pure
// function of (seed, session id, turn), so a test can forget them and still check what the server
// returns against its own checksum of what it sent.
//
//   const TurnBytes turn = MakeTurnBytes(SmallSpec(), seed, "c0-s1", /*turn=*/3, /*first=*/120,
//   17); NEXUSKV_ASSIGN_OR_RETURN(auto ack, client->AppendTurn(turn.View(SmallSpec()))); TurnDigest
//   digest = Digest(turn);   // keep this, drop the bytes
//   ... later: compare CacheLayer slices with SliceDigest(...) == digest.keys[layer] ...
//
// Header-only; pure functions, thread-safe.
#ifndef NEXUSKV_TESTS_CRASH_TURNS_H_
#define NEXUSKV_TESTS_CRASH_TURNS_H_

#include <xxhash.h>

#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "clients/cpp/client.h"
#include "nexuskv/v1/kv_memory.pb.h"
#include "tensor/dtype.h"

namespace nexuskv::testing {

namespace v1 = ::nexuskv::v1;

// A small model (L=4, H=2, Hq=4, D=32, float16): about 1 KiB of keys+values per token, so
// hundreds of fsynced appends fit in a crash round.
inline v1::ModelSpec SmallSpec() {
  v1::ModelSpec spec;
  spec.set_model_id("crash-model");
  spec.set_num_layers(4);
  spec.set_num_kv_heads(2);
  spec.set_num_query_heads(4);
  spec.set_head_dim(32);
  spec.set_dtype(v1::DTYPE_FLOAT16);
  return spec;
}

// One turn's tensors, owned, per layer.
struct TurnBytes {
  std::string session_id;
  uint32_t turn = 0;
  uint64_t first_position = 0;
  uint32_t num_tokens = 0;
  std::vector<std::string> keys, values, probes;  // [L] each

  // Views for Client::AppendTurn; valid while *this lives.
  client::TurnTensors View(const v1::ModelSpec& spec) const {
    client::TurnTensors t;
    t.session_id = session_id;
    t.turn = turn;
    t.first_position = first_position;
    t.role = turn % 2 == 0 ? v1::ROLE_USER : v1::ROLE_ASSISTANT;
    t.model = spec;
    for (size_t l = 0; l < keys.size(); ++l) t.layers.push_back({keys[l], values[l], probes[l]});
    return t;
  }
};

inline size_t ElementBytes(const v1::ModelSpec& spec) {
  return spec.dtype() == v1::DTYPE_FLOAT32 ? 4 : 2;
}

inline uint64_t Hash(std::string_view bytes, uint64_t seed = 0) {
  return XXH3_64bits_withSeed(bytes.data(), bytes.size(), seed);
}

// Finite values only (the server refuses NaN/Inf), encoded in the spec's dtype.
inline TurnBytes MakeTurnBytes(const v1::ModelSpec& spec, uint64_t seed,
                               const std::string& session_id, uint32_t turn,
                               uint64_t first_position, uint32_t num_tokens) {
  TurnBytes t{.session_id = session_id,
              .turn = turn,
              .first_position = first_position,
              .num_tokens = num_tokens};
  const DType dtype = spec.dtype() == v1::DTYPE_FLOAT32   ? DType::kFloat32
                      : spec.dtype() == v1::DTYPE_FLOAT16 ? DType::kFloat16
                                                          : DType::kBFloat16;
  std::mt19937_64 rng(Hash(session_id, seed) ^ (uint64_t{turn} * 0x9E3779B97F4A7C15ull));
  std::uniform_real_distribution<float> uniform(-4.0f, 4.0f);
  const uint32_t probes = std::min<uint32_t>(4, num_tokens);
  auto random = [&](size_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = uniform(rng);
    return EncodeFromFloat(v, dtype);
  };
  const size_t kv = size_t{spec.num_kv_heads()} * num_tokens * spec.head_dim();
  const size_t q = size_t{spec.num_query_heads()} * probes * spec.head_dim();
  for (uint32_t l = 0; l < spec.num_layers(); ++l) {
    t.keys.push_back(random(kv));
    t.values.push_back(random(kv));
    t.probes.push_back(random(q));
  }
  return t;
}

// What a test keeps of a turn it sent: per layer and kv head, the hash of that head's rows of
// keys and of values (the unit in which a FULL GetCache answer can be sliced back into turns).
struct TurnDigest {
  uint32_t num_tokens = 0;
  uint64_t first_position = 0;
  std::vector<uint64_t> keys, values;  // [L * H], index l * H + h
};

inline TurnDigest Digest(const v1::ModelSpec& spec, const TurnBytes& t) {
  TurnDigest d{.num_tokens = t.num_tokens, .first_position = t.first_position};
  const size_t head = size_t{t.num_tokens} * spec.head_dim() * ElementBytes(spec);  // one head
  for (uint32_t l = 0; l < spec.num_layers(); ++l) {
    for (uint32_t h = 0; h < spec.num_kv_heads(); ++h) {
      d.keys.push_back(Hash(std::string_view(t.keys[l]).substr(h * head, head)));
      d.values.push_back(Hash(std::string_view(t.values[l]).substr(h * head, head)));
    }
  }
  return d;
}

// Checks a FULL GetCache answer of turns [0, turns.size()) (default dtype) against the digests of
// what was sent. Returns "" when every byte matches, else what differs first.
inline std::string CompareFull(const v1::ModelSpec& spec, const client::Cache& cache,
                               const std::vector<TurnDigest>& turns) {
  uint64_t total = 0;
  for (const TurnDigest& t : turns) total += t.num_tokens;
  const size_t row = size_t{spec.head_dim()} * ElementBytes(spec);
  if (cache.layers.size() != spec.num_layers()) return "wrong number of layers";
  if (cache.header.turns_size() != static_cast<int>(turns.size())) {
    return "header lists " + std::to_string(cache.header.turns_size()) + " turns, expected " +
           std::to_string(turns.size());
  }
  for (uint32_t l = 0; l < spec.num_layers(); ++l) {
    const std::string& keys = cache.layers[l].keys();
    const std::string& values = cache.layers[l].values();
    if (keys.size() != spec.num_kv_heads() * total * row || values.size() != keys.size()) {
      return "layer " + std::to_string(l) + " has " + std::to_string(keys.size()) +
             " key bytes, expected " + std::to_string(spec.num_kv_heads() * total * row);
    }
    size_t offset = 0;  // FULL: per head, every turn's rows in turn order.
    for (uint32_t h = 0; h < spec.num_kv_heads(); ++h) {
      for (size_t t = 0; t < turns.size(); ++t) {
        const size_t n = turns[t].num_tokens * row;
        const size_t i = l * spec.num_kv_heads() + h;
        if (Hash(std::string_view(keys).substr(offset, n)) != turns[t].keys[i] ||
            Hash(std::string_view(values).substr(offset, n)) != turns[t].values[i]) {
          return "turn " + std::to_string(t) + " layer " + std::to_string(l) + " head " +
                 std::to_string(h) + " differs from what was sent";
        }
        offset += n;
      }
    }
  }
  return "";
}

}  // namespace nexuskv::testing

#endif  // NEXUSKV_TESTS_CRASH_TURNS_H_
