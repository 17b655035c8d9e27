#include "tensor/dtype.h"

#include <cstring>
#include <limits>

#include <Eigen/Core>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace nexuskv {
namespace {

static_assert(sizeof(Eigen::half) == 2 && sizeof(Eigen::bfloat16) == 2);
static_assert(std::endian::native == std::endian::little,
              "nexuskv's wire format is little-endian; big-endian hosts need byte swaps here");

template <typename T>
T Load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace

size_t DTypeSize(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
  }
  return "unknown";
}

std::optional<DType> ParseDType(std::string_view name) {
  const std::string n = absl::AsciiStrToLower(std::string(name));
  if (n == "float32" || n == "fp32" || n == "f32") return DType::kFloat32;
  if (n == "float16" || n == "fp16" || n == "f16" || n == "half") return DType::kFloat16;
  if (n == "bfloat16" || n == "bf16") return DType::kBFloat16;
  return std::nullopt;
}

absl::StatusOr<uint64_t> TensorBytes(std::initializer_list<uint64_t> dims, DType dtype,
                                     std::string_view what) {
  unsigned __int128 total = DTypeSize(dtype);
  for (uint64_t d : dims) {
    total *= d;
    if (total > static_cast<unsigned __int128>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(absl::StrCat(std::string(what), ": tensor size overflows 63 bits"));
    }
  }
  return static_cast<uint64_t>(total);
}

absl::Status DecodeToFloat(std::string_view bytes, DType dtype, std::span<float> out) {
  const size_t es = DTypeSize(dtype);
  if (bytes.size() != out.size() * es) {
    return absl::InvalidArgumentError(absl::StrCat("expected ", out.size() * es, " bytes of ",
                                                   DTypeName(dtype), ", got ", bytes.size()));
  }
  const char* p = bytes.data();
  switch (dtype) {
    case DType::kFloat32:
      if (!out.empty()) std::memcpy(out.data(), p, bytes.size());
      break;
    case DType::kFloat16:
      for (size_t i = 0; i < out.size(); ++i) {
        out[i] = static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(Load<uint16_t>(p + 2 * i)));
      }
      break;
    case DType::kBFloat16:
      for (size_t i = 0; i < out.size(); ++i) {
        out[i] = static_cast<float>(
            Eigen::numext::bit_cast<Eigen::bfloat16>(Load<uint16_t>(p + 2 * i)));
      }
      break;
  }
  return absl::OkStatus();
}

void AppendEncoded(std::span<const float> values, DType dtype, std::string* out) {
  const size_t start = out->size();
  out->resize(start + values.size() * DTypeSize(dtype));
  char* p = out->data() + start;
  switch (dtype) {
    case DType::kFloat32:
      if (!values.empty()) std::memcpy(p, values.data(), values.size() * 4);
      break;
    case DType::kFloat16:
      for (size_t i = 0; i < values.size(); ++i) {
        const uint16_t bits = Eigen::numext::bit_cast<uint16_t>(Eigen::half(values[i]));
        std::memcpy(p + 2 * i, &bits, 2);
      }
      break;
    case DType::kBFloat16:
      for (size_t i = 0; i < values.size(); ++i) {
        const uint16_t bits = Eigen::numext::bit_cast<uint16_t>(Eigen::bfloat16(values[i]));
        std::memcpy(p + 2 * i, &bits, 2);
      }
      break;
  }
}

std::string EncodeFromFloat(std::span<const float> values, DType dtype) {
  std::string out;
  AppendEncoded(values, dtype, &out);
  return out;
}

std::optional<size_t> FirstNonFinite(std::string_view bytes, DType dtype) {
  const char* p = bytes.data();
  switch (dtype) {
    case DType::kFloat32:
      // Exponent bits all ones means Inf or NaN.
      for (size_t i = 0; i < bytes.size() / 4; ++i) {
        if ((Load<uint32_t>(p + 4 * i) & 0x7f800000u) == 0x7f800000u) return i;
      }
      break;
    case DType::kFloat16:
      for (size_t i = 0; i < bytes.size() / 2; ++i) {
        if ((Load<uint16_t>(p + 2 * i) & 0x7c00u) == 0x7c00u) return i;
      }
      break;
    case DType::kBFloat16:
      for (size_t i = 0; i < bytes.size() / 2; ++i) {
        if ((Load<uint16_t>(p + 2 * i) & 0x7f80u) == 0x7f80u) return i;
      }
      break;
  }
  return std::nullopt;
}

}  // namespace nexuskv
