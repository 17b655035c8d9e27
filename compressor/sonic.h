// SONIC: Nexus tokens learned by attention distillation, with dynamic budgets (the method of
// "Segmented Optimized Nexus for Information Compression in Key-Value Caching", arXiv 2601.21927,
// adapted to a tier that cannot fine-tune the model). docs/sonic.md is the full explanation.
//
// Per (layer, kv head, turn), Fit builds a ladder of Nexus-token sets at m = floor(T/2),
// floor(T/4), ..., 1 entries (T = 1: one rung of 1). Each entry is a key, a value and a log-weight
// bias b, and attention over a set is softmax(q.k / sqrt(D) + b). An entry stands for a cluster of
// the turn's tokens: its key is the cluster's attention-weighted centroid, its bias makes it carry
// the cluster's attention mass over the probe queries, its value is the cluster's
// attention-weighted mean value. The rows fitted are the probe queries of every query head of the
// kv head's GQA group; without probes, the proxy: the turn's last `proxy_rows` keys of that kv
// head.
//
//   const Compressor* sonic = CompressorRegistry::Default().Find("SONIC");
//   NEXUSKV_ASSIGN_OR_RETURN(std::string fit, sonic->Fit(layer));          // whole ladder
//   NEXUSKV_ASSIGN_OR_RETURN(LayerEntries set, sonic->Materialize(shape_only, fit, 64));
//
// Serving contract (SONIC's Compressor overrides):
//   Materialize(layer, fit, n)  n = 0 (nothing), a rung size (that rung, bias set), or n = T when
//                               the layer's tensors are given (every token, bias 0). Any other n is
//                               InvalidArgument naming the rungs: an answer never holds more than
//                               n entries, and SONIC's Allocate only ever asks for these. The
//                               tensors are not read for a rung, so `layer` may carry the shape
//                               fields only (empty spans), as for a turn whose raw KV was dropped;
//                               n = T without tensors is FailedPrecondition.
//   MaterializeBiasFree         the same rung with each bias folded into its key (k + b u, u the
//                               head's fold vector) and no bias: the bias-free mode costs no
//                               extra storage.
//   Allocate                    each turn gets 0, a rung, or all T tokens (raw; only when its raw
//   KV
//                               is stored); greedy on fit error per entry, weighted by turn length
//                               and recency (1 + 2^-age), so the remainder goes to other turns.
//   SummarizeFit                rung sizes and their errors averaged over layers and heads: what
//                               Allocate reads (TurnShape::fit_summary).
// Stored size: keys and values for sum(rungs) = T - popcount(T) < T entries per kv head (at most
// 2x the largest rung), plus 8 bytes per entry (offset, bias) and D floats per head (the fold
// vector). Float32 sessions are stored as float16 when every value fits (compact_float32).
#ifndef NEXUSKV_COMPRESSOR_SONIC_H_
#define NEXUSKV_COMPRESSOR_SONIC_H_

#include <memory>

#include "compressor/compressor.h"

namespace nexuskv::compressor {

struct SonicParams {
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

// SONIC with the given parameters (the registry's "SONIC" uses the defaults).
std::unique_ptr<Compressor> NewSonicCompressor(const SonicParams& params = SonicParams());

}  // namespace nexuskv::compressor

#endif  // NEXUSKV_COMPRESSOR_SONIC_H_
