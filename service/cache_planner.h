// CachePlanner: what a GetCache answer holds, decided from records alone.
//
// Planning is pure: no store, no gRPC, no threads. It runs in two steps around the loads the
// caller does:
//   1. Scope(request, session, segments, ...) checks the turn range and the dropped raw KV, and
//      says what the answer needs: the worker's token scores of the compressed turns (when they
//      make it a scored selection, compressor/scored/selection.h) or the method's fits of them.
//   2. Plan(scope, loaded) spends the budget (scored selection, or the method's Allocate over the
//      fit summaries) and returns the immutable plan: for each turn one variant (raw, the method,
//      scored, or the fallback for a failed fit) with its entries per layer, and the header.
//
//   NEXUSKV_ASSIGN_OR_RETURN(CacheScope scope, CachePlanner::Scope(inputs));
//   LoadedInputs loaded;  // token scores or fit summaries, as scope.scored says
//   NEXUSKV_ASSIGN_OR_RETURN(CachePlan plan, CachePlanner::Plan(scope, std::move(loaded)));
//
// Errors are the contract's: INVALID_ARGUMENT for a turn range outside the session or a budget
// that cannot hold one entry per layer, FAILED_PRECONDITION when a turn whose raw KV was dropped
// would have to be served raw or by a method that needs it.
#ifndef NEXUSKV_SERVICE_CACHE_PLANNER_H_
#define NEXUSKV_SERVICE_CACHE_PLANNER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "compressor/compressor.h"
#include "compressor/scored/selection.h"
#include "nexuskv/v1/kv_memory.pb.h"
#include "store/store.h"
#include "tensor/dtype.h"

namespace nexuskv::service {

// What the planner is told besides the records.
struct PlannerInputs {
  nexuskv::v1::GetCacheRequest request;  // validated (ValidateGetCacheRequest)
  store::SessionRecord session;
  std::vector<store::SegmentRecord> segments;      // every turn of the session, in order
  const compressor::Compressor* method = nullptr;  // the request's (registry-owned)
  // Serves a turn whose fit failed (CompressorRegistry::Fallback); nullptr: none.
  const compressor::Compressor* fallback = nullptr;
  // The method whose stored fit serves a turn without its raw KV, for error messages.
  const compressor::Compressor* serves_without_raw = nullptr;
  std::string raw_retention;         // the server's --raw_retention, for error messages
  bool raw_retention_drops = false;  // --raw_retention=drop: a fit may drop raw KV mid-answer
  double merge_share = 0.0;          // SelectionOptions::merge_share of biased keep_ratio answers
  double lookahead_share = 0.0;      // SelectionOptions::lookahead_share of scored answers
};

// Step 1's answer.
struct CacheScope {
  PlannerInputs inputs;
  uint32_t first = 0;     // the range's first turn
  uint32_t last = 0;      // its last turn
  uint32_t raw_from = 0;  // turns [raw_from, last] are served raw
  DType output_dtype = DType::kFloat32;
  // Every compressed turn is served by scored selection: load their token scores (all layers).
  bool scored = false;
  // Turns [first, raw_from) whose fit the method needs stored before Plan (empty when scored).
  std::vector<uint32_t> fit_turns;
};

// What the caller loaded for step 2.
struct LoadedInputs {
  // With scope.scored: the compressed turns [first, raw_from), in order, scores of every layer.
  std::vector<compressor::scored::ScoredTurn> scored_turns;
  // Otherwise: by turn, the stored fit's summary (may be empty), and the turns whose fit failed
  // or is not ready, with why ("failed (ERROR)", "is not ready (ERROR)"): the fallback serves them.
  std::map<uint32_t, std::string> summaries;
  std::map<uint32_t, std::string> missing_fits;
  // Records read again after the fits were stored (storing one may drop raw KV); empty: as in
  // the scope.
  std::vector<store::SegmentRecord> segments;
};

// One turn of the answer.
struct TurnPlan {
  enum class Variant { kRaw, kMethod, kScored, kFallback };
  store::SegmentRecord record;
  Variant variant = Variant::kMethod;
  int64_t entries = 0;      // per kv head (kScored: per layer in the selection); T when raw
  size_t scored_index = 0;  // kScored: the turn's index in the selection
};

struct CachePlan {
  nexuskv::v1::CacheHeader header;
  nexuskv::v1::ModelSpec session_model;
  DType output_dtype = DType::kFloat32;
  const compressor::Compressor* method = nullptr;
  const compressor::Compressor* fallback = nullptr;
  bool bias_free = false;  // BIAS_MODE_NONE: compressed turns come from MaterializeBiasFree
  std::vector<TurnPlan> turns;
  std::shared_ptr<const compressor::scored::Selection> selection;  // set when a turn is kScored
  // The turn whose probe queries the method gets as LayerView::lookahead (service/lookahead.h).
  std::optional<store::SegmentRecord> lookahead;

  // Entries per kv head that turn i holds in `layer`.
  int64_t EntriesIn(size_t i, uint32_t layer) const;
};

class CachePlanner {
 public:
  static absl::StatusOr<CacheScope> Scope(PlannerInputs inputs);
  static absl::StatusOr<CachePlan> Plan(const CacheScope& scope, LoadedInputs loaded);
};

// Bytes one entry per kv head of one layer takes in an answer: keys and values in `dtype`, and
// a float32 bias when the answer has one.
uint64_t EntryBytes(const nexuskv::v1::ModelSpec& model, DType dtype, bool has_bias);

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_CACHE_PLANNER_H_
