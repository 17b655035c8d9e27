// Element types of KV tensors and conversion between their wire bytes and float32.
//
// Every tensor on the wire and on disk is little-endian, row-major, in one of three dtypes. The
// compressor computes in float32; this library converts in both directions (round to nearest
// even, NaN preserved) using Eigen's half and bfloat16 types.
//
//   std::vector<float> k(n);
//   NEXUSKV_RETURN_IF_ERROR(DecodeToFloat(bytes, DType::kFloat16, k));
//   std::string out = EncodeFromFloat(k, DType::kBFloat16);
//
// All functions are pure and thread-safe.
#ifndef NEXUSKV_TENSOR_DTYPE_H_
#define NEXUSKV_TENSOR_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace nexuskv {

enum class DType { kFloat32, kFloat16, kBFloat16 };

// Bytes per element: 4, 2, 2.
size_t DTypeSize(DType dtype);

// "float32", "float16", "bfloat16".
const char* DTypeName(DType dtype);

// Parses a DTypeName (also accepts "fp32", "f32", "fp16", "f16", "half", "bf16"); nullopt otherwise.
std::optional<DType> ParseDType(std::string_view name);

// Product of dims times DTypeSize(dtype). InvalidArgument naming `what` when the product does not
// fit in 63 bits.
absl::StatusOr<uint64_t> TensorBytes(std::initializer_list<uint64_t> dims, DType dtype,
                                     std::string_view what);

// Converts bytes (bytes.size() == out.size() * DTypeSize(dtype)) into out. InvalidArgument when the
// size does not match.
absl::Status DecodeToFloat(std::string_view bytes, DType dtype, std::span<float> out);

// Appends values converted to dtype to *out.
void AppendEncoded(std::span<const float> values, DType dtype, std::string* out);

// Returns values converted to dtype.
std::string EncodeFromFloat(std::span<const float> values, DType dtype);

// Index of the first NaN or infinity in bytes (interpreted as dtype), or nullopt when all finite.
// A trailing partial element is ignored.
std::optional<size_t> FirstNonFinite(std::string_view bytes, DType dtype);

}  // namespace nexuskv

#endif  // NEXUSKV_TENSOR_DTYPE_H_
