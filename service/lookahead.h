// Lookahead queries: the newest probe queries of a GetCache range stand in for the queries that
// will read the answer (the next reply continues right after them). Methods that want them
// (Compressor::wants_lookahead, SONIC) get them per layer in Materialize (LayerView::lookahead)
// and rank the tokens they keep raw by them.
//
//   std::optional<size_t> newest = NewestProbeTurn(records);
//   NEXUSKV_ASSIGN_OR_RETURN(std::vector<float> queries,
//                            LoadProbes(*store, key, model, records[*newest], layer));
//
// Thread-safe (reads only).
#ifndef NEXUSKV_SERVICE_LOOKAHEAD_H_
#define NEXUSKV_SERVICE_LOOKAHEAD_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "nexuskv/v1/kv_memory.pb.h"
#include "store/store.h"

namespace nexuskv::service {

// The index in `records` of the newest turn whose probe queries are stored (appended with probes,
// raw KV not dropped); nullopt when there is none.
std::optional<size_t> NewestProbeTurn(const std::vector<store::SegmentRecord>& records);

// The probe queries of `record` for `layer`, as float32 [Hq, P, D].
absl::StatusOr<std::vector<float>> LoadProbes(store::Store& store, const store::SessionKey& key,
                                              const nexuskv::v1::ModelSpec& model,
                                              const store::SegmentRecord& record, uint32_t layer);

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_LOOKAHEAD_H_
