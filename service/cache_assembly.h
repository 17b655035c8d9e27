// CacheAssembly: one GetCache answer, planned (service/cache_planner.h) and built layer by layer.
//
// The plan fixes everything the CacheHeader says. BuildLayer reads only the one layer it builds
// from the store, so a server streams an answer of any size in the memory of one layer: raw turns
// as stored, scored turns through the plan's selection (compressor/scored/selection.h), the rest
// through their method's Materialize from its stored fit.
//
// Not thread-safe: one caller at a time (the GetCache reactor builds layers one after another).
// BuildLayer may fail with the store's DATA_LOSS / NOT_FOUND (session deleted meanwhile),
// UNAVAILABLE when a scored turn's raw KV was dropped meanwhile, or FAILED_PRECONDITION when a
// turn's raw KV was dropped meanwhile and its method needed it.
#ifndef NEXUSKV_SERVICE_CACHE_ASSEMBLY_H_
#define NEXUSKV_SERVICE_CACHE_ASSEMBLY_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "compressor/compressor.h"
#include "compressor/scored/selection.h"
#include "nexuskv/v1/kv_memory.pb.h"
#include "service/cache_planner.h"
#include "store/store.h"

namespace nexuskv::service {

class CacheAssembly {
 public:
  // `store` must outlive the assembly (and the plan's methods the registry that owns them).
  CacheAssembly(store::Store* store, store::SessionKey key, CachePlan plan);
  CacheAssembly(const CacheAssembly&) = delete;
  CacheAssembly& operator=(const CacheAssembly&) = delete;

  const nexuskv::v1::CacheHeader& header() const { return plan_.header; }
  uint32_t num_layers() const { return plan_.session_model.num_layers(); }

  // The answer's layer `layer` (0 <= layer < num_layers()).
  absl::StatusOr<nexuskv::v1::CacheLayer> BuildLayer(uint32_t layer);

 private:
  struct TurnBlock;
  absl::StatusOr<TurnBlock> RawBlock(const TurnPlan& turn, uint32_t layer);
  absl::StatusOr<TurnBlock> MethodBlock(const TurnPlan& turn, uint32_t layer, int64_t entries,
                                        std::span<const float> lookahead);
  // The layer's entries of every scored turn, by TurnPlan::scored_index, in the output dtype.
  absl::StatusOr<std::vector<compressor::scored::AnswerEntries>> ScoredEntries(uint32_t layer);
  TurnBlock Encode(compressor::LayerEntries entries) const;
  // The layer message: per kv head, each turn's entries in turn order (keys, values, positions,
  // and the bias when the answer has one, 0 for blocks without).
  nexuskv::v1::CacheLayer Interleave(const std::vector<TurnBlock>& blocks, uint32_t layer) const;

  store::Store* const store_;
  const store::SessionKey key_;
  const CachePlan plan_;
  const DType session_dtype_;
};

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_CACHE_ASSEMBLY_H_
