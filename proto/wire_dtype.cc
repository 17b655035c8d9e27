#include "proto/wire_dtype.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace nexuskv {

absl::StatusOr<DType> ToTensorDType(v1::DType dtype, std::string_view field) {
  switch (dtype) {
    case v1::DTYPE_FLOAT32:
      return DType::kFloat32;
    case v1::DTYPE_FLOAT16:
      return DType::kFloat16;
    case v1::DTYPE_BFLOAT16:
      return DType::kBFloat16;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(std::string(field), " is ", static_cast<int>(dtype),
                       "; use DTYPE_FLOAT32, DTYPE_FLOAT16 or DTYPE_BFLOAT16"));
  }
}

v1::DType ToWireDType(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return v1::DTYPE_FLOAT32;
    case DType::kFloat16:
      return v1::DTYPE_FLOAT16;
    case DType::kBFloat16:
      return v1::DTYPE_BFLOAT16;
  }
  return v1::DTYPE_UNSPECIFIED;
}

}  // namespace nexuskv
