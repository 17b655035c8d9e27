// Compressor: fits one turn's KV into fewer entries per kv head. The dense work (H2O and SNAPKV
// scoring, SONIC's fit and lookahead) runs on a compute backend (compressor/compute/compute.h):
// CpuCompute(), the reference, unless the registry was built on another (Builtin).
//
// Each method is a Compressor registered by name ("FULL", "STREAMING_LLM", "H2O", "SNAPKV",
// "SONIC"). Work is split in two so that one stored result serves every budget:
//   Fit(layer)                -> opaque bytes, computed once per (turn, layer) off the request path
//                                and stored (for selection methods, a ranking of the tokens).
//   Materialize(layer, fit, n) -> the n entries per kv head that the method keeps at that budget.
// Allocate() splits a session-wide budget across turns first.
//
//   const Compressor* h2o = CompressorRegistry::Default().Find("H2O");
//   NEXUSKV_ASSIGN_OR_RETURN(std::string fit, h2o->Fit(layer));
//   NEXUSKV_ASSIGN_OR_RETURN(LayerEntries kept, h2o->Materialize(layer, fit, 32));
//
// All math is float32; callers decode float16/bfloat16 first (tensor/dtype.h). Compressors are
// stateless and thread-safe; the registry is immutable after construction. A device backend's
// failure (out of its memory bound, a driver error) fails that Fit or Materialize with Internal,
// the message naming the backend and its error (compressor/internal/backend_error.h).
//
// The built-in methods, each in its own header with what it keeps (positions are
// first_position + token index): compressor/full.h (FULL), streaming_llm.h (STREAMING_LLM), h2o.h
// (H2O), snapkv.h (SNAPKV), sonic.h (the SONIC ladder; its scored answers are
// compressor/scored/selection.h, chosen by the planner through Capabilities).
// Scoring queries: the probes when P > 0 (causal: probe j is token probe_offsets[j], or T-P+j
// without offsets, and sees tokens <= it);
// when P = 0, the proxy: the keys of the last W = min(T, 16) tokens of the same kv head, used by
// every query head of its group, with the same causal rule. Selection methods store one ranking
// per kv head (most important first), so the entries kept at n are a subset of those at n + 1 and
// every budget is served from one fit; they add no bias. Ties in scores go to the lower index.
// Every Fit and Materialize first checks the view (H, Hq, T, D >= 1, Hq % H == 0, 0 <= P <= T,
// first_position >= 0, span sizes H*T*D, H*T*D and Hq*P*D) and returns InvalidArgument otherwise.
#ifndef NEXUSKV_COMPRESSOR_COMPRESSOR_H_
#define NEXUSKV_COMPRESSOR_COMPRESSOR_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "compressor/compute/compute.h"
#include "tensor/dtype.h"

namespace nexuskv::compressor {

// Attention sinks: the session's first kSinkTokens tokens, which every method that evicts keeps
// (and the service's budgets spent by token scores rank first).
inline constexpr int kSinkTokens = 4;

// One layer of one segment, in float32. Borrowed: the caller keeps the buffers alive.
struct LayerView {
  int num_kv_heads = 0;        // H
  int num_query_heads = 0;     // Hq, a multiple of H; query head h belongs to kv head h / (Hq / H).
  int num_tokens = 0;          // T >= 1
  int head_dim = 0;            // D
  int num_probes = 0;          // P, 0..T: queries of P of the segment's tokens (probe_offsets).
  int64_t first_position = 0;  // Absolute position of token 0.
  bool session_start = false;  // Turn 0: its first tokens are the session's attention sinks.
  std::span<const float> keys;    // [H, T, D], post-rotary.
  std::span<const float> values;  // [H, T, D]
  std::span<const float> probes;  // [Hq, P, D]; empty when P = 0.
  // The tokens the probes belong to: P strictly ascending offsets in [0, T). Empty: the last P
  // tokens (probe j is token T - P + j).
  std::span<const uint32_t> probe_offsets;
  // Offsets in [0, T), strictly ascending, of tokens that already are Nexus tokens (written by a
  // SONIC-trained model). SONIC keeps them, first, in every rung; other methods ignore them.
  std::span<const uint32_t> nexus_offsets;
  // The session's element type. SONIC stores its ladder in it (float32 sessions: see sonic.h).
  DType dtype = DType::kFloat32;
  // Serving only (Materialize): queries of a later turn, [Hq, L, D] unscaled, standing in for the
  // queries that will read the answer (the service passes the newest probes of the GetCache
  // range). Methods whose Capabilities::lookahead is set rank the tokens they keep raw by them;
  // empty: none.
  std::span<const float> lookahead;
  int num_lookahead = 0;  // L
};

// The entries a method keeps for one layer of one segment: n per kv head.
struct LayerEntries {
  int num_kv_heads = 0;
  int head_dim = 0;
  int num_entries = 0;             // n, per kv head.
  std::vector<float> keys;         // [H, n, D]
  std::vector<float> values;       // [H, n, D]
  std::vector<float> bias;         // [H, n] log-weights; empty when the method adds none.
  std::vector<int64_t> positions;  // [H, n], ascending within each head.
};

// What Allocate knows of a turn.
struct TurnShape {
  int64_t num_tokens = 0;
  bool session_start = false;
  // False once the turn's raw KV was dropped (server --raw_retention): only methods whose
  // Materialize does not read the layer can serve it, and never raw.
  bool raw_available = true;
  // SummarizeFit of the turn's stored fit; empty for methods that write no summary. Borrowed.
  std::string_view fit_summary;
};

// What a method does and needs, for the planner that serves it.
struct Capabilities {
  // Fit does work worth storing (and Materialize reads it). FULL and STREAMING_LLM need none.
  bool fits = false;
  // Materialize can serve from the fit alone, given a view with the shape fields and empty spans
  // (a turn whose raw KV was dropped); it never keeps all T tokens itself (Allocate giving a turn
  // T means "serve it raw"). Such a method's stored fit makes a turn's raw KV expendable.
  bool serves_without_raw = false;
  // Materialize sets LayerEntries::bias; the answer then carries a bias.
  bool bias = false;
  // Materialize ranks the tokens it keeps raw by LayerView::lookahead.
  bool lookahead = false;
  // Answers by scored selection (compressor/scored/selection.h) when every compressed turn has
  // the worker's token scores and its raw KV; its fit is then not read.
  bool prefers_token_scores = false;
  // Serves a turn whose own method's fit failed: needs no fit, only the raw KV.
  bool fallback = false;
};

class Compressor {
 public:
  virtual ~Compressor() = default;

  // The method's name as in the contract's Method enum, e.g. "H2O".
  virtual std::string_view name() const = 0;

  // What the method does and needs: the one place callers ask (see Capabilities).
  virtual Capabilities capabilities() const = 0;

  // Per-layer fit, computed once per turn. InvalidArgument when the view's shape is inconsistent.
  virtual absl::StatusOr<std::string> Fit(const LayerView& layer) const = 0;

  // The n entries per kv head kept at this budget, from the layer and its stored fit.
  // InvalidArgument when n is outside [0, T], or the fit does not belong to this layer's shape.
  virtual absl::StatusOr<LayerEntries> Materialize(const LayerView& layer, std::string_view fit,
                                                   int n) const = 0;

  // The bias-free answer (BIAS_MODE_NONE): the best the method can do with every bias 0, and
  // `bias` left empty. Methods that add no bias answer exactly as Materialize (the default).
  virtual absl::StatusOr<LayerEntries> MaterializeBiasFree(const LayerView& layer,
                                                           std::string_view fit, int n) const {
    return Materialize(layer, fit, n);
  }

  // A small per-turn summary of a stored fit (one string per layer, as Fit returned them) that
  // Allocate reads from TurnShape::fit_summary. Empty (the default) when the method writes none.
  virtual std::string SummarizeFit(std::span<const std::string> per_layer) const {
    (void)per_layer;
    return std::string();
  }

  // Splits `budget` entries per kv head across turns: result[i] <= turns[i].num_tokens and the
  // sum never exceeds the budget. The default (and every selection method) gives exactly
  // min(budget, total tokens): proportional to turn length, largest remainder first, ties to the
  // later turn. SONIC lands every turn on a rung of its ladder (or raw), so a remainder smaller
  // than any possible upgrade stays unspent.
  virtual std::vector<int64_t> Allocate(std::span<const TurnShape> turns, int64_t budget) const;
};

// Methods by name. Thread-safe for lookups.
class CompressorRegistry {
 public:
  // FULL, STREAMING_LLM, H2O, SNAPKV and SONIC with their default parameters, on CpuCompute().
  static const CompressorRegistry& Default();

  // The same methods computing on `compute` (H2O and SNAPKV scoring, SONIC's fit and lookahead),
  // which must outlive the registry. The server builds its registry so, on the --device backend.
  static std::unique_ptr<CompressorRegistry> Builtin(const ComputeBackend& compute);

  explicit CompressorRegistry(std::vector<std::unique_ptr<Compressor>> compressors);

  // nullptr when no method has that name.
  const Compressor* Find(std::string_view name) const;

  // The first method with Capabilities::fallback / serves_without_raw; nullptr when none has it.
  const Compressor* Fallback() const;
  const Compressor* ServesWithoutRaw() const;

  // Registered names, in registration order.
  std::vector<std::string_view> names() const;

 private:
  std::vector<std::unique_ptr<Compressor>> compressors_;
};

}  // namespace nexuskv::compressor

#endif  // NEXUSKV_COMPRESSOR_COMPRESSOR_H_
