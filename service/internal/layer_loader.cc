#include "service/internal/layer_loader.h"

#include "common/status_macros.h"
#include "service/validation.h"
#include "tensor/dtype.h"

namespace nexuskv::service {

absl::StatusOr<DecodedLayer> LoadDecodedLayer(store::Store& store, const store::SessionKey& key,
                                              const nexuskv::v1::ModelSpec& model,
                                              const store::SegmentRecord& record, uint32_t layer,
                                              bool with_probes) {
  NEXUSKV_ASSIGN_OR_RETURN(const DType dtype, ToTensorDType(model.dtype(), "model.dtype"));
  const size_t kv = size_t{model.num_kv_heads()} * record.num_tokens() * model.head_dim();
  DecodedLayer out;
  out.keys.resize(kv);
  out.values.resize(kv);
  {
    NEXUSKV_ASSIGN_OR_RETURN(std::string bytes,
                             store.ReadTensor(key, record.turn(), layer, store::TensorKind::kKeys));
    NEXUSKV_RETURN_IF_ERROR(DecodeToFloat(bytes, dtype, out.keys));
  }
  {
    NEXUSKV_ASSIGN_OR_RETURN(
        std::string bytes, store.ReadTensor(key, record.turn(), layer, store::TensorKind::kValues));
    NEXUSKV_RETURN_IF_ERROR(DecodeToFloat(bytes, dtype, out.values));
  }
  if (with_probes && record.num_probe_queries() > 0) {
    out.probes.resize(size_t{model.num_query_heads()} * record.num_probe_queries() *
                      model.head_dim());
    NEXUSKV_ASSIGN_OR_RETURN(std::string bytes, store.ReadTensor(key, record.turn(), layer,
                                                                 store::TensorKind::kProbeQueries));
    NEXUSKV_RETURN_IF_ERROR(DecodeToFloat(bytes, dtype, out.probes));
  }
  out.nexus_offsets.assign(record.nexus_offsets().begin(), record.nexus_offsets().end());
  if (!out.probes.empty()) {
    out.probe_offsets.assign(record.probe_offsets().begin(), record.probe_offsets().end());
  }
  compressor::LayerView& v = out.view;
  v.dtype = dtype;
  v.probe_offsets = out.probe_offsets;
  v.nexus_offsets = out.nexus_offsets;
  v.num_kv_heads = static_cast<int>(model.num_kv_heads());
  v.num_query_heads = static_cast<int>(model.num_query_heads());
  v.num_tokens = static_cast<int>(record.num_tokens());
  v.head_dim = static_cast<int>(model.head_dim());
  v.num_probes = out.probes.empty() ? 0 : static_cast<int>(record.num_probe_queries());
  v.first_position = static_cast<int64_t>(record.first_position());
  v.session_start = record.turn() == 0;
  v.keys = out.keys;
  v.values = out.values;
  v.probes = out.probes;
  return out;
}

absl::StatusOr<std::vector<float>> LoadTokenScores(store::Store& store,
                                                   const store::SessionKey& key,
                                                   const store::SegmentRecord& record,
                                                   uint32_t layer) {
  NEXUSKV_ASSIGN_OR_RETURN(std::string bytes, store.ReadTensor(key, record.turn(), layer,
                                                               store::TensorKind::kTokenScores));
  std::vector<float> out(bytes.size() / sizeof(float));
  NEXUSKV_RETURN_IF_ERROR(DecodeToFloat(bytes, DType::kFloat32, out));
  return out;
}

DecodedLayer ShapeOnlyLayer(const nexuskv::v1::ModelSpec& model,
                            const store::SegmentRecord& record) {
  DecodedLayer out;
  out.nexus_offsets.assign(record.nexus_offsets().begin(), record.nexus_offsets().end());
  compressor::LayerView& v = out.view;
  v.num_kv_heads = static_cast<int>(model.num_kv_heads());
  v.num_query_heads = static_cast<int>(model.num_query_heads());
  v.num_tokens = static_cast<int>(record.num_tokens());
  v.head_dim = static_cast<int>(model.head_dim());
  v.first_position = static_cast<int64_t>(record.first_position());
  v.session_start = record.turn() == 0;
  v.nexus_offsets = out.nexus_offsets;
  return out;
}

}  // namespace nexuskv::service
