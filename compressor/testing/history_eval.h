// Test and tool support: real-KV dialogues (tests/data/README.md format) and the quality measure
// of issue 4 -- the relative attention-output error, on held-out queries, over the whole
// concatenated history of compressed turns.
//
//   NEXUSKV_ASSIGN_OR_RETURN(RealDialogue d, LoadRealDialogue("tests/data/x.safetensors"));
//   HistoryError e = EvaluateHistory(d, *registry.Find("SONIC"), {.keep_ratio = 0.2});
//
// Protocol of EvaluateHistory, for every prefix 0..t of the dialogue (t >= min_history_turns - 1)
// and every layer: each turn of the prefix is fitted on its own probes (as the server does at
// append time), the method's Allocate splits floor(keep_ratio * tokens) entries per kv head across
// them (the last keep_recent_turns kept raw, as GetCache does), each turn is materialized (with
// turn t's probes as lookahead queries for methods that want them, as GetCache passes them), and
// turn t's held-out queries (the queries of the NEXT turn, never fitted on) attend over the
// concatenation. Error = |o_compressed - o_full| / |o_full| per (query head, query), averaged
// over queries, heads, layers and prefixes.
//
// All functions are pure and thread-safe.
#ifndef NEXUSKV_COMPRESSOR_TESTING_HISTORY_EVAL_H_
#define NEXUSKV_COMPRESSOR_TESTING_HISTORY_EVAL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "compressor/compressor.h"

namespace nexuskv::compressor::testing {

struct RealTurn {
  int num_tokens = 0;
  int num_probes = 0;
  int num_heldout = 0;
  int64_t first_position = 0;
  // Per layer, float32.
  std::vector<std::vector<float>> keys;     // [H, T, D]
  std::vector<std::vector<float>> values;   // [H, T, D]
  std::vector<std::vector<float>> probes;   // [Hq, P, D]
  std::vector<std::vector<float>> heldout;  // [Hq, Q, D]
  std::vector<uint32_t> probe_offsets;      // P offsets in the turn; empty: its last P tokens
};

struct RealDialogue {
  std::string path;
  int num_layers = 0;
  int num_kv_heads = 0;
  int num_query_heads = 0;
  int head_dim = 0;
  std::vector<RealTurn> turns;
};

// Reads a file in the tests/data format (any float dtype). NotFound when it does not exist,
// InvalidArgument when it is not in that format.
absl::StatusOr<RealDialogue> LoadRealDialogue(const std::string& path);

struct HistoryOptions {
  double keep_ratio = 0.5;
  int keep_recent_turns = 0;
  int min_history_turns = 2;  // prefixes shorter than this are skipped
  bool bias_free = false;     // MaterializeBiasFree instead of Materialize
  bool drop_probes = false;   // fit as if the turns came without probe queries (the proxy)
  int max_layers = 0;         // 0: every layer; else the first max_layers evenly spread layers
};

struct HistoryError {
  double mean_relative_error = 0.0;
  int64_t samples = 0;      // (prefix, layer, query head, query) terms averaged
  double kept_ratio = 0.0;  // compressed entries / compressed tokens, averaged over prefixes
};

// See the file comment. Errors of Fit / Materialize pass through.
absl::StatusOr<HistoryError> EvaluateHistory(const RealDialogue& dialogue, const Compressor& method,
                                             const HistoryOptions& options);

}  // namespace nexuskv::compressor::testing

#endif  // NEXUSKV_COMPRESSOR_TESTING_HISTORY_EVAL_H_
