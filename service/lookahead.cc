#include "service/lookahead.h"

#include "common/status_macros.h"
#include "service/validation.h"
#include "tensor/dtype.h"

namespace nexuskv::service {

std::optional<size_t> NewestProbeTurn(const std::vector<store::SegmentRecord>& records) {
  for (size_t i = records.size(); i-- > 0;) {
    if (records[i].num_probe_queries() > 0 && !records[i].raw_dropped()) return i;
  }
  return std::nullopt;
}

absl::StatusOr<std::vector<float>> LoadProbes(store::Store& store, const store::SessionKey& key,
                                              const nexuskv::v1::ModelSpec& model,
                                              const store::SegmentRecord& record, uint32_t layer) {
  NEXUSKV_ASSIGN_OR_RETURN(const DType dtype, ToTensorDType(model.dtype(), "model.dtype"));
  NEXUSKV_ASSIGN_OR_RETURN(
      std::string bytes,
      store.ReadTensor(key, record.turn(), layer, store::TensorKind::kProbeQueries));
  std::vector<float> probes(size_t{model.num_query_heads()} * record.num_probe_queries() *
                            model.head_dim());
  NEXUSKV_RETURN_IF_ERROR(DecodeToFloat(bytes, dtype, probes));
  return probes;
}

}  // namespace nexuskv::service
