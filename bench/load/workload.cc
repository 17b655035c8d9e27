#include "bench/load/workload.h"

#include <cstdlib>
#include <fstream>
#include <span>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "tensor/dtype.h"

namespace nexuskv::load {
namespace {

// Random finite float16 values that every client slices its tensors from (no per-call
// generation: the tools should spend their CPU on the RPCs, not on random numbers).
const std::string& TensorPool() {
  static const std::string* pool = [] {
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> v(8 << 20);  // 16 MiB of float16
    for (float& x : v) x = normal(rng);
    return new std::string(EncodeFromFloat(v, DType::kFloat16));
  }();
  return *pool;
}

// Non-negative token scores, as a worker's attention mass per token would be.
const std::vector<float>& ScorePool() {
  static const std::vector<float>* pool = [] {
    std::mt19937 rng(11);
    std::exponential_distribution<float> score(50.0f);
    auto* v = new std::vector<float>(1 << 20);
    for (float& x : *v) x = score(rng);
    return v;
  }();
  return *pool;
}

std::string_view Slice(std::mt19937_64& rng, size_t bytes) {
  const std::string& pool = TensorPool();
  const size_t offset = (rng() % ((pool.size() - bytes) / 2)) * 2;
  return std::string_view(pool).substr(offset, bytes);
}

std::span<const float> Scores(std::mt19937_64& rng, size_t count) {
  const std::vector<float>& pool = ScorePool();
  return std::span<const float>(pool).subspan(rng() % (pool.size() - count), count);
}

}  // namespace

v1::ModelSpec Spec() {
  v1::ModelSpec spec;
  spec.set_model_id("SmolLM2-135M-Instruct");
  spec.set_num_layers(kLayers);
  spec.set_num_kv_heads(kKvHeads);
  spec.set_num_query_heads(kQueryHeads);
  spec.set_head_dim(kHeadDim);
  spec.set_dtype(v1::DTYPE_FLOAT16);
  return spec;
}

void WarmPools() {
  TensorPool();
  ScorePool();
}

client::TurnTensors MakeTurn(std::mt19937_64& rng, const std::string& session, uint32_t turn,
                             uint64_t first_position, uint32_t tokens, bool token_scores) {
  const size_t kv = size_t{kKvHeads} * tokens * kHeadDim * 2;
  const size_t q = size_t{kQueryHeads} * kProbes * kHeadDim * 2;
  client::TurnTensors t;
  t.session_id = session;
  t.turn = turn;
  t.first_position = first_position;
  t.role = turn % 2 == 0 ? v1::ROLE_USER : v1::ROLE_ASSISTANT;
  t.model = Spec();
  for (uint32_t l = 0; l < kLayers; ++l) {
    client::LayerBytes& layer = t.layers.emplace_back();
    layer.keys = Slice(rng, kv);
    layer.values = Slice(rng, kv);
    layer.probe_queries = Slice(rng, q);
    if (token_scores) layer.token_scores = Scores(rng, size_t{kKvHeads} * tokens);
  }
  return t;
}

uint64_t TurnBytes(uint32_t tokens, bool token_scores) {
  const uint64_t kv = uint64_t{kKvHeads} * tokens * kHeadDim * 2;
  const uint64_t q = uint64_t{kQueryHeads} * kProbes * kHeadDim * 2;
  const uint64_t scores = token_scores ? uint64_t{kKvHeads} * tokens * sizeof(float) : 0;
  return kLayers * (2 * kv + q + scores);
}

CacheRead ReadCache(v1::KvMemory::Stub& stub, const v1::GetCacheRequest& request,
                    absl::Duration timeout) {
  CacheRead read;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  auto reader = stub.GetCache(&context, request);
  v1::GetCacheResponse message;
  uint32_t layers = 0;
  absl::Status shape;
  while (reader->Read(&message)) {
    if (message.has_header()) {
      read.header = std::move(*message.mutable_header());
      continue;
    }
    if (!message.has_layer()) continue;
    const v1::CacheLayer& layer = message.layer();
    const v1::CacheHeader& header = read.header;
    const uint64_t n = layer.layer() < static_cast<uint32_t>(header.entries_per_layer_size())
                           ? header.entries_per_layer(layer.layer())
                           : 0;
    if (layer.keys().size() != uint64_t{kKvHeads} * n * kHeadDim * 2 && shape.ok()) {
      shape = absl::DataLossError(absl::StrCat(
          "layer ", layer.layer(), " has ", layer.keys().size(), " key bytes for ", n, " entries"));
    }
    const uint64_t bias_bytes = header.has_bias() ? uint64_t{kKvHeads} * n * 4 : 0;
    if (layer.bias().size() != bias_bytes && shape.ok()) {
      shape = absl::DataLossError(absl::StrCat("layer ", layer.layer(), " has ",
                                               layer.bias().size(), " bias bytes for ", n,
                                               " entries, expected ", bias_bytes));
    }
    read.bytes += layer.keys().size() + layer.values().size() + layer.bias().size() +
                  layer.positions().size();
    ++layers;
  }
  read.status = client::FromGrpcStatus(reader->Finish());
  if (read.status.ok() && layers != kLayers) {
    read.status = absl::DataLossError(absl::StrCat("answer has ", layers, " layers"));
  }
  if (read.status.ok()) read.status = shape;
  return read;
}

uint64_t ProcStatusKb(pid_t pid, const std::string& field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0)
      return std::strtoull(line.c_str() + field.size() + 1, nullptr, 10);
  }
  return 0;
}

}  // namespace nexuskv::load
