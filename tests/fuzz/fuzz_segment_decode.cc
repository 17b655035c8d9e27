// Fuzz target: decoding a stored segment value. A value of the segments (or nexus) column family
// is tensor bytes + an XXH3-64 trailer (store/key_codec.h); its payload is a tensor in the
// session dtype (tensor/dtype.h).
//
// Oracle:
//   - DecodeChecksummedValue never crashes; it returns DATA_LOSS or a payload that re-encodes to
//     exactly the stored value; and any payload, once encoded, decodes back to itself.
//   - DecodeToFloat accepts exactly the byte counts that match, and FirstNonFinite agrees with
//     the decoded floats; every non-NaN element re-encodes to its own bytes (the conversion is
//     exact in that direction).
//   - TensorBytes either refuses (INVALID_ARGUMENT) or returns the exact product.
#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "store/key_codec.h"
#include "tensor/dtype.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using nexuskv::DType;

void CheckTensor(std::string_view bytes, DType dtype) {
  const size_t es = nexuskv::DTypeSize(dtype);
  const size_t n = bytes.size() / es;
  std::vector<float> values(n);
  const absl::Status decoded = nexuskv::DecodeToFloat(bytes.substr(0, n * es), dtype, values);
  FUZZ_CHECK(decoded.ok(), "DecodeToFloat refused a whole number of elements");
  if (bytes.size() % es != 0) {
    const absl::Status wrong = nexuskv::DecodeToFloat(bytes, dtype, values);
    FUZZ_CHECK(wrong.code() == absl::StatusCode::kInvalidArgument,
               "DecodeToFloat accepted %zu bytes for %zu elements", bytes.size(), n);
  }
  std::optional<size_t> first;
  for (size_t i = 0; i < n && !first; ++i) {
    if (!std::isfinite(values[i])) first = i;
  }
  const std::optional<size_t> reported = nexuskv::FirstNonFinite(bytes, dtype);
  FUZZ_CHECK(reported == first, "FirstNonFinite says %zd, the decoded floats say %zd",
             reported ? static_cast<ssize_t>(*reported) : -1,
             first ? static_cast<ssize_t>(*first) : -1);
  const std::string again = nexuskv::EncodeFromFloat(values, dtype);
  FUZZ_CHECK(again.size() == n * es, "EncodeFromFloat size");
  for (size_t i = 0; i < n; ++i) {
    if (std::isnan(values[i])) continue;  // NaN payload bits need not survive.
    FUZZ_CHECK(std::memcmp(again.data() + i * es, bytes.data() + i * es, es) == 0,
               "element %zu (%g, %s) does not re-encode to its bytes", i, values[i],
               nexuskv::DTypeName(dtype));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const DType dtype = in.PickValueInArray({DType::kFloat32, DType::kFloat16, DType::kBFloat16});
  const uint64_t dims[3] = {in.ConsumeIntegral<uint64_t>() >> in.ConsumeIntegralInRange(0, 63),
                            in.ConsumeIntegral<uint64_t>() >> in.ConsumeIntegralInRange(0, 63),
                            in.ConsumeIntegral<uint64_t>() >> in.ConsumeIntegralInRange(0, 63)};
  const std::string stored = in.ConsumeRemainingBytesAsString();

  // TensorBytes: refuse or exact.
  auto bytes = nexuskv::TensorBytes({dims[0], dims[1], dims[2]}, dtype, "fuzz");
  // The exact product, or "overflows 63 bits". A zero dim makes it 0, though a refusal is
  // tolerated then too (the product of the dims before the zero may already overflow).
  unsigned __int128 product = nexuskv::DTypeSize(dtype);
  bool overflow = false;
  bool zero = false;
  for (uint64_t d : dims) {
    zero = zero || d == 0;
    overflow = overflow || __builtin_mul_overflow(product, d, &product) || product >> 63 != 0;
  }
  if (zero) product = 0;
  if (bytes.ok()) {
    FUZZ_CHECK((zero || !overflow) && *bytes == static_cast<uint64_t>(product),
               "TensorBytes is wrong");
  } else {
    FUZZ_CHECK(bytes.status().code() == absl::StatusCode::kInvalidArgument && (overflow || zero),
               "TensorBytes refused a product that fits: %s", bytes.status().ToString().c_str());
  }

  // The stored value as it is (almost always a checksum mismatch), and the input as a payload.
  auto payload = nexuskv::store::DecodeChecksummedValue(stored);
  if (payload.ok()) {
    FUZZ_CHECK(nexuskv::store::EncodeChecksummedValue(*payload) == stored,
               "a decoded value does not re-encode to itself");
    CheckTensor(*payload, dtype);
  } else {
    FUZZ_CHECK(payload.status().code() == absl::StatusCode::kDataLoss, "code %d",
               static_cast<int>(payload.status().code()));
  }
  const std::string encoded = nexuskv::store::EncodeChecksummedValue(stored);
  auto round_trip = nexuskv::store::DecodeChecksummedValue(encoded);
  FUZZ_CHECK(round_trip.ok() && *round_trip == stored, "an encoded value does not decode");
  if (!stored.empty()) {
    std::string flipped = encoded;
    flipped[stored.size() / 2] ^= 0x01;  // One flipped bit in the payload is always caught.
    FUZZ_CHECK(!nexuskv::store::DecodeChecksummedValue(flipped).ok(), "a flipped bit went unseen");
  }
  CheckTensor(stored, dtype);
  return 0;
}
