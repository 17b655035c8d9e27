// SONIC: Nexus tokens learned by attention distillation, with dynamic budgets (the method of
// "Segmented Optimized Nexus for Information Compression in Key-Value Caching", arXiv 2601.21927,
// adapted to a tier that cannot fine-tune the model). docs/sonic.md is the full explanation.
//
// Per (layer, kv head, turn), Fit builds a ladder of Nexus-token sets of m = floor(T/4),
// floor(T/8), ..., 1 entries (SonicParams::top_rung_divisor; T < 4: one rung of 1). Each entry is
// a key, a value and a log-weight bias b, and attention over a set is softmax(q.k / sqrt(D) + b).
// An entry stands for a cluster of the turn's tokens: its key is the cluster's attention-weighted
// centroid, its bias makes it carry exactly the cluster's attention mass over the probe queries,
// its value is the cluster's attention-weighted mean value. The rows fitted are the probe queries
// of every query head of the kv head's GQA group; without probes, the proxy: the turn's last
// `proxy_rows` keys of that kv head.
//
//   const Compressor* sonic = CompressorRegistry::Default().Find("SONIC");
//   NEXUSKV_ASSIGN_OR_RETURN(std::string fit, sonic->Fit(layer));          // whole ladder
//   NEXUSKV_ASSIGN_OR_RETURN(LayerEntries set, sonic->Materialize(layer, fit, 64));
//
// Serving contract (SONIC's Compressor overrides):
//   Materialize(layer, fit, n)  exactly n entries per kv head, bias set, never more:
//                                 n = 0               nothing;
//                                 n = a rung          that rung, from the fit alone: `layer` may
//                                                     carry the shape fields only (empty spans), as
//                                                     for a turn whose raw KV was dropped;
//                                 rung < n < T        the largest rung below n topped up with
//                                                     n - rung merged tokens, raw, ranked by the
//                                                     lookahead queries (LayerView::lookahead;
//                                                     else the fit's own token mass), each taken
//                                                     out of its cluster (mass and value
//                                                     corrected): needs the layer's tensors;
//                                 n = T               every token raw, bias 0: needs the tensors.
//                               Without the tensors, a size that needs them is FailedPrecondition.
//   MaterializeBiasFree         the same entries with each bias folded into its key (k + b u, u
//                               the head's fold vector, q.u ~ 1 over the probes) and no bias: the
//                               bias-free mode costs no extra storage.
//   Allocate                    a summary of every turn (a share of the budget that shrinks with
//                               it), then raw tokens newest turn first; the ladder knapsack when
//                               the summaries alone do not fit (internal/sonic_allocate.h).
//   SummarizeFit                rung sizes and their errors averaged over layers and heads: what
//                               Allocate reads (TurnShape::fit_summary).
// Stored size per kv head: keys and values for sum(rungs) <= 2 floor(T/4) entries (at most 2x the
// largest rung, about half the turn), plus 8 bytes per entry (offset, bias), T token masses and
// one assignment per token per rung (2 bytes), and the fold vector. Float32 sessions are stored as
// float16 when every value fits (compact_float32).
#ifndef NEXUSKV_COMPRESSOR_SONIC_H_
#define NEXUSKV_COMPRESSOR_SONIC_H_

#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "compressor/compressor.h"
#include "compressor/compute/compute.h"

namespace nexuskv::compressor {

struct SonicParams {
  // The largest rung holds floor(T / top_rung_divisor) entries; smaller ones halve down to 1. With
  // the raw KV stored, sizes above it are served by topping it up with raw tokens, which on real
  // KV costs 1.8% of held-out error at keep 0.5 against a T/2 rung and halves the ladder
  // (docs/sonic.md, "The fit").
  int top_rung_divisor = 4;
  // Summaries of every turn take summary_share * k of a GetCache budget, k = budget / tokens
  // (at keep_ratio 0.5: 25%; at 0.2: 10%); the rest goes to the newest turns, raw
  // (docs/sonic.md, "Spending a budget").
  double summary_share = 0.5;
  // Keep the session's first kSinkTokens tokens (its attention sinks) exactly in every rung of
  // the first turn, as pass-through Nexus tokens are.
  bool pin_sinks = true;
  // Lloyd iterations after seeding (measured on real KV: 1, 3 and 8 differ by < 1%).
  int kmeans_iterations = 3;
  // Rows per kv head used for fitting; more are subsampled evenly (bounds memory and time).
  int max_query_rows = 1024;
  // Without probe queries: this many of the turn's last keys stand in for its queries.
  int proxy_rows = 32;
  // Candidates clustered together at most (longer turns are cut into contiguous chunks).
  int max_cluster_tokens = 4096;
  // Ridge of the fold solve, relative to trace(Q^T Q) / D.
  double fold_ridge = 0.1;
  // Store the ladder of a float32 session as float16 when every stored value fits.
  bool compact_float32 = true;
};

// SONIC with the given parameters (the registry's "SONIC" uses the defaults), fitting and scoring
// its lookahead on `compute` (borrowed: it must outlive the method). A device failure fails the
// fit or the answer with Internal (compressor/internal/backend_error.h).
std::unique_ptr<Compressor> NewSonicCompressor(const SonicParams& params = SonicParams(),
                                               const ComputeBackend& compute = CpuCompute());

}  // namespace nexuskv::compressor

#endif  // NEXUSKV_COMPRESSOR_SONIC_H_
