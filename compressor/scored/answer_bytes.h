// How a GetCache answer carries entries in its dtype, and the byte gather that skips the float32
// round trip for a stored row the answer keeps as it is.
//
// Kept rows of a scored answer used to be decoded from their stored dtype to float32 and encoded
// back; GatherAnswerRow copies the stored bytes instead and gives the same bytes as that round
// trip (answer_bytes_test checks every float16 and bfloat16 pattern):
//
//   std::string keys;
//   AppendAnswerEncoded(merged_key, DType::kFloat16, &keys);           // a computed entry
//   NEXUSKV_RETURN_IF_ERROR(                                           // a kept stored row
//       GatherAnswerRow(stored_row, DType::kFloat16, DType::kFloat16, scratch, &keys));
//
// Pure functions; thread-safe.
#ifndef NEXUSKV_COMPRESSOR_SCORED_ANSWER_BYTES_H_
#define NEXUSKV_COMPRESSOR_SCORED_ANSWER_BYTES_H_

#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "tensor/dtype.h"

namespace nexuskv::compressor::scored {

// Appends `values` encoded in `dtype` as an answer carries them: float16 saturates at +-65504
// (fitted or merged entries may leave its range; an answer never holds inf), NaN stays NaN; then
// AppendEncoded's rounding. `values` is not changed.
void AppendAnswerEncoded(std::span<const float> values, DType dtype, std::string* out);

// Appends one stored row (`stored` in `stored_dtype`, scratch.size() elements) to *out exactly as
// AppendAnswerEncoded(decoded row, dtype, out) would. With the same dtype that is a byte copy
// (the round trip is the identity on every finite value, denormals included); a row holding a NaN
// or infinity, which the round trip canonicalizes or saturates, and a row changing dtype go
// through float32 in `scratch`. InvalidArgument when the sizes do not match.
absl::Status GatherAnswerRow(std::string_view stored, DType stored_dtype, DType dtype,
                             std::span<float> scratch, std::string* out);

}  // namespace nexuskv::compressor::scored

#endif  // NEXUSKV_COMPRESSOR_SCORED_ANSWER_BYTES_H_
