#include "compressor/scored/answer_bytes.h"

#include <algorithm>

#include "common/status_macros.h"

namespace nexuskv::compressor::scored {

void AppendAnswerEncoded(std::span<const float> values, DType dtype, std::string* out) {
  if (dtype != DType::kFloat16) {
    AppendEncoded(values, dtype, out);
    return;
  }
  // Saturate through a bounded buffer so that long spans need no copy of their own size.
  constexpr size_t kChunk = 1024;
  float clamped[kChunk];
  for (size_t start = 0; start < values.size(); start += kChunk) {
    const size_t n = std::min(kChunk, values.size() - start);
    for (size_t i = 0; i < n; ++i) clamped[i] = std::clamp(values[start + i], -65504.0f, 65504.0f);
    AppendEncoded(std::span<const float>(clamped, n), dtype, out);
  }
}

absl::Status GatherAnswerRow(std::string_view stored, DType stored_dtype, DType dtype,
                             std::span<float> scratch, std::string* out) {
  // float32 decodes and encodes by memcpy (no saturation: only float16 saturates), so its bytes
  // always pass through; a 16-bit row only when it is all finite.
  if (stored_dtype == dtype && stored.size() == scratch.size() * DTypeSize(dtype) &&
      (dtype == DType::kFloat32 || !FirstNonFinite(stored, dtype).has_value())) {
    out->append(stored);
    return absl::OkStatus();
  }
  NEXUSKV_RETURN_IF_ERROR(DecodeToFloat(stored, stored_dtype, scratch));
  AppendAnswerEncoded(scratch, dtype, out);
  return absl::OkStatus();
}

}  // namespace nexuskv::compressor::scored
