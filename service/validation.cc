#include "service/validation.h"

#include <cmath>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "store/key_codec.h"

namespace nexuskv::service {
namespace {

namespace v1 = ::nexuskv::v1;

absl::Status CheckRange(absl::string_view field, uint64_t value, uint64_t lo, uint64_t hi) {
  if (value < lo || value > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " is ", value, "; it must be in [", lo, ", ", hi, "]"));
  }
  return absl::OkStatus();
}

// OK when `offsets` are strictly ascending token offsets below num_tokens.
absl::Status CheckOffsets(const char* field,
                          const google::protobuf::RepeatedField<uint32_t>& offsets,
                          uint32_t num_tokens) {
  for (int i = 0; i < offsets.size(); ++i) {
    if (offsets[i] >= num_tokens || (i > 0 && offsets[i] <= offsets[i - 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("header.", field, " must be strictly ascending offsets below num_tokens (",
                       num_tokens, "); entry ", i, " is ", offsets[i]));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckTensor(absl::string_view what, uint32_t layer, const std::string& bytes,
                         uint64_t expected, absl::string_view shape, DType dtype) {
  if (bytes.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " ", what, " has ",
                                                   bytes.size(), " bytes; shape ", shape, " in ",
                                                   DTypeName(dtype), " needs exactly ", expected));
  }
  if (auto bad = FirstNonFinite(bytes, dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " ", what, " element ", *bad,
                                                   " is NaN or infinite; tensors must be finite"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateModelSpec(const v1::ModelSpec& spec) {
  const std::string& id = spec.model_id();
  if (id.empty() || id.size() > kMaxModelIdLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model.model_id has ", id.size(), " characters; it must have 1..", kMaxModelIdLength));
  }
  for (char c : id) {
    if (!absl::ascii_isprint(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError("model.model_id must be printable ASCII");
    }
  }
  NEXUSKV_RETURN_IF_ERROR(CheckRange("model.num_layers", spec.num_layers(), 1, kMaxLayers));
  NEXUSKV_RETURN_IF_ERROR(CheckRange("model.num_kv_heads", spec.num_kv_heads(), 1, kMaxKvHeads));
  NEXUSKV_RETURN_IF_ERROR(
      CheckRange("model.num_query_heads", spec.num_query_heads(), 1, kMaxQueryHeads));
  NEXUSKV_RETURN_IF_ERROR(CheckRange("model.head_dim", spec.head_dim(), 1, kMaxHeadDim));
  if (spec.num_query_heads() % spec.num_kv_heads() != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.num_query_heads (", spec.num_query_heads(),
                     ") must be a multiple of model.num_kv_heads (", spec.num_kv_heads(), ")"));
  }
  return ToTensorDType(spec.dtype(), "model.dtype").status();
}

absl::Status ValidateSegmentHeader(const v1::SegmentHeader& header, const Limits& limits) {
  NEXUSKV_RETURN_IF_ERROR(store::ValidateId("session_id", header.session_id()));
  if (!v1::Role_IsValid(header.role())) {
    return absl::InvalidArgumentError(absl::StrCat("role ", static_cast<int>(header.role()),
                                                   " is unknown; use ROLE_SYSTEM, ROLE_USER, "
                                                   "ROLE_ASSISTANT or ROLE_TOOL"));
  }
  if (!header.has_model()) {
    return absl::InvalidArgumentError(
        "header.model is missing; every segment carries its ModelSpec");
  }
  NEXUSKV_RETURN_IF_ERROR(ValidateModelSpec(header.model()));
  if (header.num_tokens() == 0) {
    return absl::InvalidArgumentError("num_tokens is 0; a segment holds at least one token");
  }
  if (header.num_tokens() > limits.max_tokens_per_turn) {
    return absl::ResourceExhaustedError(
        absl::StrCat("num_tokens ", header.num_tokens(), " is over this server's limit of ",
                     limits.max_tokens_per_turn,
                     " tokens per turn (--max_tokens_per_turn); split "
                     "the turn or raise the limit"));
  }
  const uint32_t max_probes = std::min(header.num_tokens(), kMaxProbeQueries);
  NEXUSKV_RETURN_IF_ERROR(
      CheckRange("num_probe_queries", header.num_probe_queries(), 0, max_probes));
  NEXUSKV_RETURN_IF_ERROR(
      CheckOffsets("nexus_offsets", header.nexus_offsets(), header.num_tokens()));
  if (header.probe_offsets_size() != 0 &&
      header.probe_offsets_size() != static_cast<int>(header.num_probe_queries())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "header.probe_offsets has ", header.probe_offsets_size(), " entries for num_probe_queries ",
        header.num_probe_queries(), "; send one offset per probe, or none for the last tokens"));
  }
  NEXUSKV_RETURN_IF_ERROR(
      CheckOffsets("probe_offsets", header.probe_offsets(), header.num_tokens()));
  if (header.first_position() > (1ull << 62)) {
    return absl::InvalidArgumentError("first_position is beyond 2^62");
  }
  const v1::ModelSpec& m = header.model();
  const DType dtype = *ToTensorDType(m.dtype(), "model.dtype");
  NEXUSKV_ASSIGN_OR_RETURN(uint64_t kv, TensorBytes({2, m.num_layers(), m.num_kv_heads(),
                                                     header.num_tokens(), m.head_dim()},
                                                    dtype, "segment keys and values"));
  NEXUSKV_ASSIGN_OR_RETURN(uint64_t probes, TensorBytes({m.num_layers(), m.num_query_heads(),
                                                         header.num_probe_queries(), m.head_dim()},
                                                        dtype, "segment probe queries"));
  const uint64_t scores = header.has_token_scores() ? uint64_t{sizeof(float)} * m.num_layers() *
                                                          m.num_kv_heads() * header.num_tokens()
                                                    : 0;
  if (kv + probes + scores > limits.max_segment_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "segment would hold ", kv + probes + scores, " bytes, over this server's limit of ",
        limits.max_segment_bytes, " (--max_segment_bytes); send fewer tokens per turn"));
  }
  return absl::OkStatus();
}

absl::Status ValidateLayerChunk(const v1::LayerChunk& chunk, const v1::SegmentHeader& header) {
  const v1::ModelSpec& m = header.model();
  if (chunk.layer() >= m.num_layers()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", chunk.layer(), " is out of range; the model has ", m.num_layers(),
                     " layers (0..", m.num_layers() - 1, ")"));
  }
  const DType dtype = *ToTensorDType(m.dtype(), "model.dtype");
  const uint64_t es = DTypeSize(dtype);
  const uint64_t kv = es * m.num_kv_heads() * header.num_tokens() * m.head_dim();
  const std::string kv_shape =
      absl::StrCat("[", m.num_kv_heads(), ", ", header.num_tokens(), ", ", m.head_dim(), "]");
  NEXUSKV_RETURN_IF_ERROR(CheckTensor("keys", chunk.layer(), chunk.keys(), kv, kv_shape, dtype));
  NEXUSKV_RETURN_IF_ERROR(
      CheckTensor("values", chunk.layer(), chunk.values(), kv, kv_shape, dtype));
  const uint64_t probes = es * m.num_query_heads() * header.num_probe_queries() * m.head_dim();
  NEXUSKV_RETURN_IF_ERROR(
      CheckTensor("probe_queries", chunk.layer(), chunk.probe_queries(), probes,
                  absl::StrCat("[", m.num_query_heads(), ", ", header.num_probe_queries(), ", ",
                               m.head_dim(), "]"),
                  dtype));
  if (!header.has_token_scores()) {
    if (!chunk.token_scores().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", chunk.layer(),
                       " carries token_scores but the header's has_token_scores is "
                       "false; set it, or send no scores"));
    }
    return absl::OkStatus();
  }
  const uint64_t scores = sizeof(float) * m.num_kv_heads() * header.num_tokens();
  NEXUSKV_RETURN_IF_ERROR(CheckTensor(
      "token_scores", chunk.layer(), chunk.token_scores(), scores,
      absl::StrCat("[", m.num_kv_heads(), ", ", header.num_tokens(), "]"), DType::kFloat32));
  const std::string& bytes = chunk.token_scores();
  for (size_t i = 0; i < bytes.size() / sizeof(float); ++i) {
    float score;
    std::memcpy(&score, bytes.data() + i * sizeof(float), sizeof(float));
    if (score < 0.0f) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", chunk.layer(),
                                                     " token_scores element ", i, " is ", score,
                                                     "; scores must be >= 0"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateGetCacheRequest(const v1::GetCacheRequest& request) {
  NEXUSKV_RETURN_IF_ERROR(store::ValidateId("session_id", request.session_id()));
  if (!v1::Method_IsValid(request.method())) {
    return absl::InvalidArgumentError(
        absl::StrCat("method ", static_cast<int>(request.method()),
                     " is unknown; use FULL, SONIC, H2O, STREAMING_LLM or SNAPKV"));
  }
  if (request.output_dtype() != v1::DTYPE_UNSPECIFIED) {
    NEXUSKV_RETURN_IF_ERROR(ToTensorDType(request.output_dtype(), "output_dtype").status());
  }
  if (!v1::BiasMode_IsValid(request.bias_mode())) {
    return absl::InvalidArgumentError(
        "bias_mode is unknown; use BIAS_MODE_UNSPECIFIED or "
        "BIAS_MODE_NONE");
  }
  if (request.has_last_turn() && request.last_turn() < request.first_turn()) {
    return absl::InvalidArgumentError(absl::StrCat("last_turn ", request.last_turn(),
                                                   " is before first_turn ", request.first_turn()));
  }
  if (request.method() == v1::FULL) return absl::OkStatus();
  const v1::Budget& budget = request.budget();
  switch (budget.limit_case()) {
    case v1::Budget::kKeepRatio:
      if (!(budget.keep_ratio() > 0.0 && budget.keep_ratio() <= 1.0)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "budget.keep_ratio is ", budget.keep_ratio(),
            "; it must be in (0, 1] (kept tokens / original tokens: 0.2 is 80% compression)"));
      }
      return absl::OkStatus();
    case v1::Budget::kMaxTokens:
      if (budget.max_tokens() == 0) {
        return absl::InvalidArgumentError("budget.max_tokens is 0; it must be at least 1");
      }
      return absl::OkStatus();
    case v1::Budget::kMaxBytes:
      if (budget.max_bytes() == 0) {
        return absl::InvalidArgumentError("budget.max_bytes is 0; it must be at least 1");
      }
      return absl::OkStatus();
    case v1::Budget::LIMIT_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError(
      "budget is not set; set budget.keep_ratio, budget.max_tokens or budget.max_bytes "
      "(or ask for method FULL)");
}

}  // namespace nexuskv::service
