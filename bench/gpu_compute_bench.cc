// The GPU backend of the compute seam (cuda/thrust_compute.h) beside the CPU reference
// (CpuCompute()), in the same run, on Llama-3-8B shapes (32 layers, 8 kv heads, 32 query heads,
// head_dim 128, bfloat16 storage), with the memory-bound copy of the same bytes beside each figure.
// docs/gpu.md explains every figure.
//
// One source, two binaries (bench/CMakeLists.txt):
//   gpu_compute_bench       links nexuskv_cuda (nvcc): the backend is the GPU ("cuda"). Anchors:
//                           d2d (cudaMemcpy device to device), h2d (pageable host to device, as
//                           the backend's own copies are), h2d_pinned (the PCIe bound), memcpy.
//   gpu_compute_bench_host  links nexuskv_cuda_host: the backend is the host twin ("cuda-host",
//                           the device code on OpenMP threads; a correctness twin, not a
//                           performance claim). Anchor: memcpy.
//
// Benchmarks (every one runs on "cpu" and on the linked backend):
//   LadderFit/<backend>/layers:N   one 2048-token turn's SONIC ladder fit, N layers of it: per
//       layer, the layer's bfloat16 keys, values and probes decoded by the backend's
//       DecodeToFloat (one call), then FitHeads with the layer's 8 kv heads in one batch (as
//       SonicCompressor::Fit builds it). Ends with the fits in host memory (the ladder's encoding
//       to bytes is not timed). Bytes = the raw KV of the N layers, keys + values in bfloat16
//       (8 MiB a layer). N = 1 everywhere (a CPU layer takes about a second); the GPU build also
//       times all 32 layers.
//   ScoredGetCache/<backend>/layers:32   a scored GetCache of a 20 x 1024-token session at keep
//       0.2: one TopK over all (layer, kv head, token) scores of the session (5.2 M scores, the
//       kept entries of every head at once), then per batch of kLayersPerCall layers one Gather of
//       the kept key and value rows, one MergeRuns for the merged entries (5% of each head's
//       budget, runs of up to 16 evicted tokens) and one EncodeFromFloat of the answer to
//       bfloat16. The host bookkeeping between the calls (rows per turn, the runs) is timed too.
//       Bytes = the history covered: the session's keys + values in bfloat16 (2.7 GB).
//
// Where the data starts: every operation of the seam takes host memory and returns host memory
// (compute.h); the Thrust backend copies each call's inputs to the device and its outputs back.
// So every backend figure here is from host memory to host memory; none is "kernels alone".
//
// Counters: GB/s (the bytes above over the wall time; also bytes_per_second), MB (the bytes per
// iteration); anchors as rates of a copy measured once per process in this run on a
// min(bytes, 256 MiB) buffer: memcpy_GB/s, and in the CUDA build d2d_GB/s, h2d_GB/s,
// h2d_pinned_GB/s, with x_d2d / x_h2d = the benchmark's time over the time that copy takes for the
// same bytes. ScoredGetCache adds topk_ms, gather_ms, merge_ms, encode_ms (per GetCache),
// needed_MB (the kept rows and the rows the merged runs read, keys + values in bfloat16: what the
// answer must move), x_h2d_needed (time over the h2d copy of needed_MB) and sent_GB (the inputs
// handed to the backend's calls, all of which the Thrust backend copies to the device).
//
//   build/bin/gpu_compute_bench_host --benchmark_min_time=0.01   # the twin beside the CPU here
//   build-gpu/bin/gpu_compute_bench --benchmark_min_time=0.2     # on a GPU (tests/gpu/run.sh)
//
// The data is synthetic and seeded (bench/bench_layer.h): time does not depend on the values.
// To bound host memory, every layer of a benchmark reads the same synthetic layer (the backend
// still decodes, copies and computes each layer separately).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench/bench_layer.h"
#include "compressor/compute/compute.h"
#include "compressor/internal/sonic_fit.h"
#include "compressor/scored/merged_run.h"
#include "cuda/thrust_compute.h"
#include "tensor/dtype.h"

#if NEXUSKV_BENCH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace nexuskv::compressor {
namespace {

using Clock = std::chrono::steady_clock;

#if NEXUSKV_BENCH_CUDA
constexpr const char* kBackendName = "cuda";
#else
constexpr const char* kBackendName = "cuda-host";
#endif

// Llama-3-8B.
constexpr int kLayers = 32;
constexpr int kKvHeads = 8;
constexpr int kQueryHeads = 32;
constexpr int kHeadDim = 128;
constexpr int kTurnTokens = 2048;  // (a): one appended turn
constexpr int kProbes = 64;        // probe rows per query head, as bench_layer's Llama shape
// (b): the session, its keep ratio and the merged share of the budget.
constexpr int kSessionTurns = 20;
constexpr int kSessionTurnTokens = 1024;
constexpr double kKeep = 0.2;
constexpr double kMergeShare = 0.05;
constexpr int kRunLength = 16;
// Layers per Gather / MergeRuns / EncodeFromFloat call (each call's inputs stay under 1 GiB).
constexpr int kLayersPerCall = 4;

constexpr int64_t kBf16 = 2;
constexpr int64_t kAnchorCap = int64_t{256} << 20;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// ---- the backends ----

const ComputeBackend* Backend(std::string* error) {
  static const auto* made = new absl::StatusOr<std::unique_ptr<ComputeBackend>>(
      cuda::MakeThrustCompute({.memory_limit_bytes = uint64_t{8} << 30}));
  if (!made->ok()) {
    *error = std::string(made->status().message());
    return nullptr;
  }
  return made->value().get();
}

const ComputeBackend* Pick(bool gpu, benchmark::State& state) {
  if (!gpu) return &CpuCompute();
  std::string error;
  const ComputeBackend* backend = Backend(&error);
  if (backend == nullptr) state.SkipWithError(("no backend: " + error).c_str());
  return backend;
}

// ---- anchors: rates of memory-bound copies, measured once per size in this process ----

struct Anchors {
  double memcpy = 0, d2d = 0, h2d = 0, h2d_pinned = 0;  // bytes per second; 0 when not measured
};

double HostMemcpyRate(int64_t bytes) {
  std::vector<char> src(bytes, 1), dst(bytes);
  std::memcpy(dst.data(), src.data(), bytes);  // first touch
  int64_t copies = 0;
  const auto start = Clock::now();
  double elapsed = 0;
  do {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
    ++copies;
    elapsed = Seconds(start);
  } while (elapsed < 0.1 || copies < 3);
  return static_cast<double>(bytes) * copies / elapsed;
}

#if NEXUSKV_BENCH_CUDA
bool CudaOk(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  std::fprintf(stderr, "gpu_compute_bench: %s: %s\n", what, cudaGetErrorString(e));
  return false;
}

// Rate of cudaMemcpy of `bytes` from `src` to `dst` (kind), averaged over >= 100 ms, after one
// warm-up copy. 0 on a CUDA error (printed).
double CudaCopyRate(void* dst, const void* src, int64_t bytes, cudaMemcpyKind kind) {
  if (!CudaOk(cudaMemcpy(dst, src, bytes, kind), "warm-up copy")) return 0;
  if (!CudaOk(cudaDeviceSynchronize(), "sync")) return 0;
  int64_t copies = 0;
  const auto start = Clock::now();
  double elapsed = 0;
  do {
    if (!CudaOk(cudaMemcpy(dst, src, bytes, kind), "copy")) return 0;
    if (!CudaOk(cudaDeviceSynchronize(), "sync")) return 0;
    ++copies;
    elapsed = Seconds(start);
  } while (elapsed < 0.1 || copies < 3);
  return static_cast<double>(bytes) * copies / elapsed;
}

void MeasureCudaAnchors(int64_t bytes, Anchors* a) {
  void *d_src = nullptr, *d_dst = nullptr, *pinned = nullptr;
  if (CudaOk(cudaMalloc(&d_src, bytes), "cudaMalloc") &&
      CudaOk(cudaMalloc(&d_dst, bytes), "cudaMalloc") &&
      CudaOk(cudaMemset(d_src, 1, bytes), "cudaMemset")) {
    a->d2d = CudaCopyRate(d_dst, d_src, bytes, cudaMemcpyDeviceToDevice);
    std::vector<char> pageable(bytes, 1);
    a->h2d = CudaCopyRate(d_dst, pageable.data(), bytes, cudaMemcpyHostToDevice);
    if (CudaOk(cudaMallocHost(&pinned, bytes), "cudaMallocHost")) {
      std::memset(pinned, 1, bytes);
      a->h2d_pinned = CudaCopyRate(d_dst, pinned, bytes, cudaMemcpyHostToDevice);
    }
  }
  if (pinned != nullptr) cudaFreeHost(pinned);
  if (d_src != nullptr) cudaFree(d_src);
  if (d_dst != nullptr) cudaFree(d_dst);
}
#endif

const Anchors& AnchorsFor(int64_t bytes) {
  static auto* cache = new std::map<int64_t, Anchors>();
  const int64_t size = std::min(bytes, kAnchorCap);
  auto it = cache->find(size);
  if (it != cache->end()) return it->second;
  Anchors a;
  a.memcpy = HostMemcpyRate(size);
#if NEXUSKV_BENCH_CUDA
  std::string error;
  if (Backend(&error) != nullptr) MeasureCudaAnchors(size, &a);
#endif
  return cache->emplace(size, a).first->second;
}

// The anchors' rates and the ratios of `seconds_per_iteration` to each copy of `bytes`.
void ReportAnchors(benchmark::State& state, int64_t bytes, double seconds_per_iteration) {
  const Anchors& a = AnchorsFor(bytes);
  auto rate = [&](const char* name, double r) {
    if (r > 0) state.counters[name] = r / 1e9;
  };
  auto times = [&](const char* name, double r) {
    if (r > 0) state.counters[name] = seconds_per_iteration / (bytes / r);
  };
  rate("memcpy_GB/s", a.memcpy);
  rate("d2d_GB/s", a.d2d);
  rate("h2d_GB/s", a.h2d);
  rate("h2d_pinned_GB/s", a.h2d_pinned);
  times("x_d2d", a.d2d);
  times("x_h2d", a.h2d);
}

void ReportBytes(benchmark::State& state, int64_t bytes, double seconds) {
  state.SetBytesProcessed(state.iterations() * bytes);
  state.counters["GB/s"] = static_cast<double>(bytes) * state.iterations() / seconds / 1e9;
  state.counters["MB"] = bytes / 1e6;
}

// ---- (a) the ladder fit of one 2048-token turn ----

// One layer of the turn as stored: keys [H, T, D], values [H, T, D], probes [Hq, P, D], in
// bfloat16, back to back.
struct TurnLayer {
  std::string bytes;
  int64_t kv_bytes = 0;  // keys + values
  size_t floats = 0;     // all three decoded
};

const TurnLayer& TheTurnLayer() {
  static const TurnLayer* layer = [] {
    const BenchShape shape{"Llama-3-8B", kKvHeads, kQueryHeads, kHeadDim, kTurnTokens, kProbes};
    const BenchLayer source = MakeBenchLayer(shape, KeyLayout::kClustered);
    auto* out = new TurnLayer;
    AppendEncoded(source.keys, DType::kBFloat16, &out->bytes);
    AppendEncoded(source.values, DType::kBFloat16, &out->bytes);
    out->kv_bytes = static_cast<int64_t>(out->bytes.size());
    AppendEncoded(source.probes, DType::kBFloat16, &out->bytes);
    out->floats = out->bytes.size() / kBf16;
    return out;
  }();
  return *layer;
}

// Decodes one layer with `compute` and fits its kv heads in one FitHeads batch, as
// SonicCompressor::Fit does (the probes of a kv head's query group are its rows).
absl::Status FitLayer(const TurnLayer& layer, const ComputeBackend& compute,
                      std::vector<float>& scratch, size_t* entries) {
  const auto* raw = reinterpret_cast<const std::byte*>(layer.bytes.data());
  absl::Status decoded =
      compute.DecodeToFloat({raw, layer.bytes.size()}, DType::kBFloat16, scratch);
  if (!decoded.ok()) return decoded;
  const size_t span = size_t{kTurnTokens} * kHeadDim;
  const float* keys = scratch.data();
  const float* values = keys + kKvHeads * span;
  const float* probes = values + kKvHeads * span;
  const int group_rows = kQueryHeads / kKvHeads * kProbes;  // 256 <= max_query_rows
  std::vector<internal::HeadInput> heads(kKvHeads);
  for (int h = 0; h < kKvHeads; ++h) {
    heads[h] = {.num_tokens = kTurnTokens,
                .head_dim = kHeadDim,
                .keys = keys + h * span,
                .values = values + h * span,
                .rows = {probes + static_cast<size_t>(h) * group_rows * kHeadDim, group_rows}};
  }
  const std::vector<int> rungs = internal::SonicRungSizes(kTurnTokens);
  absl::StatusOr<std::vector<internal::HeadFit>> fits =
      internal::FitHeads(heads, rungs, SonicParams{}, compute);
  if (!fits.ok()) return fits.status();
  for (const internal::HeadFit& fit : *fits) {
    for (const auto& set : fit.rungs) *entries += set.keys.size() / kHeadDim;
  }
  return absl::OkStatus();
}

void BM_LadderFit(benchmark::State& state, bool gpu, int layers) {
  const ComputeBackend* compute = Pick(gpu, state);
  if (compute == nullptr) return;
  const TurnLayer& layer = TheTurnLayer();
  std::vector<float> scratch(layer.floats);
  size_t entries = 0;
  double seconds = 0;
  for (auto _ : state) {
    const auto start = Clock::now();
    for (int l = 0; l < layers; ++l) {
      absl::Status s = FitLayer(layer, *compute, scratch, &entries);
      if (!s.ok()) {
        state.SkipWithError(std::string(s.message()).c_str());
        return;
      }
    }
    seconds += Seconds(start);
    benchmark::DoNotOptimize(entries);
  }
  const int64_t bytes = layer.kv_bytes * layers;
  ReportBytes(state, bytes, seconds);
  ReportAnchors(state, bytes, seconds / state.iterations());
}

// ---- (b) a scored GetCache of a 20 x 1024-token session at keep 0.2 ----

struct Session {
  int64_t turn_span = int64_t{kSessionTurnTokens} * kHeadDim;
  // [L][H][U][T]: every score; a (layer, kv head) is a row of U * T.
  std::vector<float> scores;
  // One layer's keys and values, [H][U][T][D] each, float32 (as the history decodes); every
  // layer reads this one (see the file comment).
  std::vector<float> keys, values;
  int64_t history_bytes = 0;  // every layer's keys + values in bfloat16
};

const Session& TheSession() {
  static const Session* session = [] {
    auto* s = new Session;
    std::mt19937 rng(7);
    std::exponential_distribution<float> score(50.0f);  // most tokens read little, a few a lot
    const size_t per_layer = size_t{kKvHeads} * kSessionTurns * kSessionTurnTokens;
    s->scores.resize(per_layer * kLayers);
    for (float& x : s->scores) x = score(rng);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    s->keys.resize(per_layer * kHeadDim);
    s->values.resize(per_layer * kHeadDim);
    for (float& x : s->keys) x = normal(rng);
    for (float& x : s->values) x = normal(rng);
    s->history_bytes = static_cast<int64_t>(per_layer) * kLayers * kHeadDim * 2 * kBf16;
    return s;
  }();
  return *session;
}

struct GetCacheTimes {
  double topk = 0, gather = 0, merge = 0, encode = 0;
  int64_t needed_rows = 0;  // kept rows + rows merged runs read, per (layer, head), summed
  int64_t sent_bytes = 0;   // inputs handed to the backend's calls
  int64_t answer_bytes = 0;
};

// One GetCache: the ops that answer it, on `compute`. The answer (bfloat16) lands in `answer`.
absl::Status ScoredGetCache(const Session& s, const ComputeBackend& compute, GetCacheTimes* t,
                            std::string* answer) {
  constexpr int64_t kRow = int64_t{kSessionTurns} * kSessionTurnTokens;  // a head's history
  const int64_t budget = static_cast<int64_t>(kRow * kKeep);
  const int64_t merged = static_cast<int64_t>(budget * kMergeShare);
  const int64_t kept = budget - merged;
  const int64_t n = static_cast<int64_t>(s.scores.size());

  // 1. One ranking of every score: the kept entries of every (layer, head) at once.
  auto start = Clock::now();
  const std::vector<int64_t> row_starts = {0, n};
  const std::vector<int64_t> k = {kept * kLayers * kKvHeads};
  std::vector<uint32_t> picked(static_cast<size_t>(k[0]));
  if (absl::Status st = compute.TopK(s.scores, row_starts, k, picked); !st.ok()) return st;
  t->topk += Seconds(start);
  t->sent_bytes += n * 4;

  // Picks ascend: group them by (layer, head, turn), offsets within the turn.
  const int64_t groups = int64_t{kLayers} * kKvHeads * kSessionTurns;
  std::vector<int64_t> group_start(groups + 1, 0);
  std::vector<uint32_t> offsets(picked.size());
  std::vector<uint8_t> is_kept(static_cast<size_t>(n), 0);
  for (size_t i = 0; i < picked.size(); ++i) {
    ++group_start[picked[i] / kSessionTurnTokens + 1];
    offsets[i] = picked[i] % kSessionTurnTokens;
    is_kept[picked[i]] = 1;
  }
  for (int64_t g = 0; g < groups; ++g) group_start[g + 1] += group_start[g];

  // 2. Per batch of layers: Gather, MergeRuns, EncodeFromFloat.
  std::vector<float> out;
  for (int l0 = 0; l0 < kLayers; l0 += kLayersPerCall) {
    const int l1 = std::min(kLayers, l0 + kLayersPerCall);
    start = Clock::now();
    std::vector<GatherItem> items;
    int64_t rows = 0;
    for (const auto* matrix : {&s.keys, &s.values}) {
      for (int l = l0; l < l1; ++l) {
        for (int h = 0; h < kKvHeads; ++h) {
          for (int u = 0; u < kSessionTurns; ++u) {
            const int64_t g = (int64_t{l} * kKvHeads + h) * kSessionTurns + u;
            const int64_t source = (int64_t{h} * kSessionTurns + u) * s.turn_span;
            items.push_back(
                {.source = {std::span<const float>(*matrix).subspan(source, s.turn_span),
                            kSessionTurnTokens, kHeadDim},
                 .rows = std::span<const uint32_t>(offsets).subspan(
                     group_start[g], group_start[g + 1] - group_start[g])});
            rows += group_start[g + 1] - group_start[g];
            t->sent_bytes += s.turn_span * 4 + (group_start[g + 1] - group_start[g]) * 4;
          }
        }
      }
    }
    // The merged runs: per (layer, head), `merged` runs spread evenly over its history, each up
    // to kRunLength evicted tokens of one turn from its start on (a model of the plan's "best
    // evicted tokens in history order": the cost depends on how many rows a run reads).
    struct Run {
      int64_t first;  // into the float layer: row of the first member
      std::vector<uint32_t> members;
      std::vector<double> weights;
    };
    std::vector<Run> runs;
    for (int l = l0; l < l1; ++l) {
      for (int h = 0; h < kKvHeads; ++h) {
        const int64_t row = (int64_t{l} * kKvHeads + h) * kRow;
        for (int64_t j = 0; j < merged; ++j) {
          const int64_t at = j * kRow / merged;
          const int64_t u = at / kSessionTurnTokens;
          Run run;
          std::vector<float> run_scores;
          int64_t first = -1;
          for (int64_t tok = at % kSessionTurnTokens;
               tok < kSessionTurnTokens && static_cast<int>(run.members.size()) < kRunLength;
               ++tok) {
            const int64_t i = row + u * kSessionTurnTokens + tok;
            if (is_kept[i]) continue;
            if (first < 0) first = tok;
            run.members.push_back(static_cast<uint32_t>(tok - first));
            run_scores.push_back(s.scores[i]);
          }
          if (run.members.empty()) continue;
          run.first = (int64_t{h} * kSessionTurns + u) * kSessionTurnTokens + first;
          run.weights = scored::MergeWeights(run_scores);
          runs.push_back(std::move(run));
        }
      }
    }
    std::vector<MergeRunItem> merge_items;
    merge_items.reserve(runs.size());
    for (const Run& run : runs) {
      const int span_rows = static_cast<int>(run.members.back()) + 1;
      const size_t at = static_cast<size_t>(run.first) * kHeadDim;
      const size_t len = static_cast<size_t>(span_rows) * kHeadDim;
      merge_items.push_back(
          {.keys = {std::span<const float>(s.keys).subspan(at, len), span_rows, kHeadDim},
           .values = {std::span<const float>(s.values).subspan(at, len), span_rows, kHeadDim},
           .members = run.members,
           .weights = run.weights});
      t->needed_rows += static_cast<int64_t>(run.members.size());
      t->sent_bytes +=
          2 * static_cast<int64_t>(len) * 4 + static_cast<int64_t>(run.members.size()) * 12;
    }
    t->needed_rows += rows / 2;
    const size_t gathered = static_cast<size_t>(rows) * kHeadDim;
    const size_t m = merge_items.size();
    out.resize(gathered + 2 * m * kHeadDim);
    std::vector<float> bias(m);
    const std::span<float> all(out);
    if (absl::Status st = compute.Gather(items, all.first(gathered)); !st.ok()) return st;
    t->gather += Seconds(start);

    start = Clock::now();
    if (absl::Status st = compute.MergeRuns(merge_items, all.subspan(gathered, m * kHeadDim),
                                            all.subspan(gathered + m * kHeadDim), bias);
        !st.ok()) {
      return st;
    }
    t->merge += Seconds(start);

    start = Clock::now();
    answer->resize(out.size() * kBf16);
    if (absl::Status st = compute.EncodeFromFloat(
            out, DType::kBFloat16, {reinterpret_cast<std::byte*>(answer->data()), answer->size()});
        !st.ok()) {
      return st;
    }
    t->encode += Seconds(start);
    t->sent_bytes += static_cast<int64_t>(out.size()) * 4;
    t->answer_bytes += static_cast<int64_t>(answer->size());
  }
  return absl::OkStatus();
}

void BM_ScoredGetCache(benchmark::State& state, bool gpu) {
  const ComputeBackend* compute = Pick(gpu, state);
  if (compute == nullptr) return;
  const Session& s = TheSession();
  GetCacheTimes t;
  std::string answer;
  double seconds = 0;
  for (auto _ : state) {
    const auto start = Clock::now();
    GetCacheTimes one;
    absl::Status st = ScoredGetCache(s, *compute, &one, &answer);
    if (!st.ok()) {
      state.SkipWithError(std::string(st.message()).c_str());
      return;
    }
    seconds += Seconds(start);
    t = one;
    benchmark::DoNotOptimize(answer.data());
  }
  const double per = seconds / state.iterations();
  ReportBytes(state, s.history_bytes, seconds);
  ReportAnchors(state, s.history_bytes, per);
  // Per-op times of the last GetCache (every iteration does the same work).
  state.counters["topk_ms"] = t.topk * 1e3;
  state.counters["gather_ms"] = t.gather * 1e3;
  state.counters["merge_ms"] = t.merge * 1e3;
  state.counters["encode_ms"] = t.encode * 1e3;
  const int64_t needed = t.needed_rows * kHeadDim * 2 * kBf16;
  state.counters["needed_MB"] = needed / 1e6;
  state.counters["answer_MB"] = t.answer_bytes / 1e6;
  state.counters["sent_GB"] = t.sent_bytes / 1e9;
  const Anchors& a = AnchorsFor(needed);
  if (a.h2d > 0) state.counters["x_h2d_needed"] = per / (needed / a.h2d);
}

void RegisterAll() {
  for (bool on_gpu : {false, true}) {
    const std::string name = on_gpu ? kBackendName : "cpu";
    benchmark::RegisterBenchmark(("LadderFit/" + name + "/layers:1").c_str(), BM_LadderFit, on_gpu,
                                 1)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  for (bool on_gpu : {false, true}) {
    const std::string name = on_gpu ? kBackendName : "cpu";
    benchmark::RegisterBenchmark(("ScoredGetCache/" + name + "/layers:32").c_str(),
                                 BM_ScoredGetCache, on_gpu)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
#if NEXUSKV_BENCH_CUDA
  // Last: the whole turn, on the GPU only (the CPU takes about a second a layer).
  benchmark::RegisterBenchmark((std::string("LadderFit/") + kBackendName + "/layers:32").c_str(),
                               BM_LadderFit, true, kLayers)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
#endif
}

}  // namespace
}  // namespace nexuskv::compressor

int main(int argc, char** argv) {
  nexuskv::compressor::RegisterAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const nexuskv::cuda::DeviceInfo device = nexuskv::cuda::ProbeDevice();
  benchmark::AddCustomContext("backend", nexuskv::compressor::kBackendName);
  benchmark::AddCustomContext("device", device.description);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
