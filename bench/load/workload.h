// The workload the load tools send: SmolLM2-135M-like turns cut from shared random pools, and a
// GetCache reader that checks an answer's shape without keeping it. Shared by nexuskv_load
// (load_gen.cc) and nexuskv_resume_latency (resume_latency.cc).
//
//   std::mt19937_64 rng(seed);
//   client::TurnTensors turn = MakeTurn(rng, "s1", 0, 0, 256, /*token_scores=*/true);
//   NEXUSKV_RETURN_IF_ERROR(client.AppendTurn(turn).status());
//   CacheRead answer = ReadCache(*stub, request, absl::Seconds(60));
//
// The pools are built once (WarmPools(), or the first MakeTurn) and never freed, so a turn's views
// stay valid for the life of the process. Everything here is thread-safe; an rng is not.
#ifndef NEXUSKV_BENCH_LOAD_WORKLOAD_H_
#define NEXUSKV_BENCH_LOAD_WORKLOAD_H_

#include <sys/types.h>

#include <cstdint>
#include <random>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "clients/cpp/client.h"
#include "nexuskv/v1/kv_memory.grpc.pb.h"

namespace nexuskv::load {

// SmolLM2-135M: 30 layers, 3 kv heads, 9 query heads, head_dim 64, float16; 8 probe queries.
inline constexpr uint32_t kLayers = 30, kKvHeads = 3, kQueryHeads = 9, kHeadDim = 64, kProbes = 8;

v1::ModelSpec Spec();

// Builds the pools (16 MiB of float16 values, 4 MiB of float32 scores) before a clock starts.
void WarmPools();

// Turn `turn` of `session`, `tokens` tokens from `first_position`, role alternating user /
// assistant. Keys, values and probe queries are random float16 slices; with `token_scores`,
// every layer also carries [H, T] float32 scores drawn from an exponential distribution (most
// tokens read little, a few a lot, as bench/scored_selection_bench.cc draws them), as the eval
// and the demo send the worker's attention mass.
client::TurnTensors MakeTurn(std::mt19937_64& rng, const std::string& session, uint32_t turn,
                             uint64_t first_position, uint32_t tokens, bool token_scores);

// Tensor bytes of such a turn (keys, values, probes, scores) over all layers.
uint64_t TurnBytes(uint32_t tokens, bool token_scores);

// One GetCache answer, read to the end and dropped.
struct CacheRead {
  // OK, the call's error, or DataLoss when the answer has the wrong number of layers or a layer's
  // keys or bias do not match the header's entries_per_layer.
  absl::Status status;
  v1::CacheHeader header;
  uint64_t bytes = 0;  // keys + values + bias + positions of every layer received.
};
CacheRead ReadCache(v1::KvMemory::Stub& stub, const v1::GetCacheRequest& request,
                    absl::Duration timeout);

// kB value of a field of /proc/<pid>/status (VmHWM, VmRSS); 0 when unreadable.
uint64_t ProcStatusKb(pid_t pid, const std::string& field);

}  // namespace nexuskv::load

#endif  // NEXUSKV_BENCH_LOAD_WORKLOAD_H_
