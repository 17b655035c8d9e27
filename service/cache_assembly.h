// CacheAssembly: one GetCache answer, planned and ready to be built layer by layer.
//
// Planning (KvMemoryCore::PlanCache) fixes everything the CacheHeader says: which turns are raw,
// how many entries each compressed turn keeps, the output dtype. BuildLayer then reads only the
// one layer it builds from the store, so a server streams an answer of any size in the memory of
// one layer.
//
// Not thread-safe: one caller at a time (the GetCache reactor builds layers one after another).
// BuildLayer may fail with the store's DATA_LOSS / NOT_FOUND (session deleted meanwhile), or
// FAILED_PRECONDITION when a turn's raw KV was dropped meanwhile and its plan needed it.
#ifndef NEXUSKV_SERVICE_CACHE_ASSEMBLY_H_
#define NEXUSKV_SERVICE_CACHE_ASSEMBLY_H_

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "compressor/compressor.h"
#include "nexuskv/v1/kv_memory.pb.h"
#include "service/score_budget.h"
#include "store/store.h"
#include "tensor/dtype.h"

namespace nexuskv::service {

// What the plan decided for one turn.
struct TurnPlan {
  store::SegmentRecord record;
  bool raw = false;     // Served uncompressed.
  int64_t entries = 0;  // Entries per kv head (== num_tokens when raw).
  // Entries per kv head in each layer when they differ by layer (a budget spent by token
  // scores); empty: `entries` in every layer.
  std::vector<int64_t> layer_entries;
  // [L][H] raw tokens each kv head keeps when they differ by head (a biased answer spent by
  // token scores pads each head up to layer_entries[l]); empty: all real.
  std::vector<std::vector<int64_t>> head_entries;
  // [L][H] runs of evicted tokens whose merged entries (compressor/merge.h) this turn serves, in
  // addition to head_entries: the turn holds each run's last token, and the entry takes that
  // token's position. TokenRef::u is a turn number here; a run may reach into earlier compressed
  // turns. Empty: none.
  std::vector<std::vector<std::vector<MergeRun>>> merged;
  bool load_layer = true;  // Its raw KV is stored: read it for the method (SONIC top-ups need it).
  // Served from its raw KV by the worker's token scores (head_entries / layer_entries): the raw KV
  // must still be there, and the method's fit is not read (it may not exist yet).
  bool scored = false;
  // Serves this turn instead of the request's method (its fit failed); has no fit. nullptr: the
  // request's method.
  const compressor::Compressor* method = nullptr;
};

class CacheAssembly {
 public:
  // `store` and `method` must outlive the assembly; method is ignored for raw turns. bias_free:
  // compressed turns come from MaterializeBiasFree (BIAS_MODE_NONE). lookahead: the turn whose
  // probe queries compressed turns get as LayerView::lookahead (service/lookahead.h), when the
  // method wants them.
  CacheAssembly(store::Store* store, store::SessionKey key, nexuskv::v1::ModelSpec session_model,
                DType output_dtype, const compressor::Compressor* method, bool bias_free,
                std::vector<TurnPlan> turns, nexuskv::v1::CacheHeader header,
                std::optional<store::SegmentRecord> lookahead = std::nullopt);
  CacheAssembly(const CacheAssembly&) = delete;
  CacheAssembly& operator=(const CacheAssembly&) = delete;

  const nexuskv::v1::CacheHeader& header() const { return header_; }
  uint32_t num_layers() const { return session_model_.num_layers(); }

  // The answer's layer `layer` (0 <= layer < num_layers()).
  absl::StatusOr<nexuskv::v1::CacheLayer> BuildLayer(uint32_t layer);

 private:
  struct TurnBlock;
  class MergeSums;
  absl::StatusOr<TurnBlock> RawBlock(const TurnPlan& turn, uint32_t layer);
  absl::StatusOr<TurnBlock> CompressedBlock(const TurnPlan& turn, uint32_t layer, int64_t entries,
                                            std::span<const float> lookahead, MergeSums& merges);

  store::Store* const store_;
  const store::SessionKey key_;
  const nexuskv::v1::ModelSpec session_model_;
  const DType session_dtype_;
  const DType output_dtype_;
  const compressor::Compressor* const method_;
  const bool bias_free_;
  const std::vector<TurnPlan> turns_;
  const nexuskv::v1::CacheHeader header_;
  const std::optional<store::SegmentRecord> lookahead_;
};

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_CACHE_ASSEMBLY_H_
