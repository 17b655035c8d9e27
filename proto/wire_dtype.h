// Conversion between the contract's DType (nexuskv.v1.DType) and the tensor library's DType.
// Shared by the server and the clients so both read the wire the same way. Thread-safe.
#ifndef NEXUSKV_PROTO_WIRE_DTYPE_H_
#define NEXUSKV_PROTO_WIRE_DTYPE_H_

#include <string_view>

#include "absl/status/statusor.h"
#include "nexuskv/v1/kv_memory.pb.h"
#include "tensor/dtype.h"

namespace nexuskv {

// The tensor dtype of a wire dtype. InvalidArgument naming `field` for DTYPE_UNSPECIFIED or an
// unknown value.
absl::StatusOr<DType> ToTensorDType(nexuskv::v1::DType dtype, std::string_view field = "dtype");

// The wire dtype of a tensor dtype.
nexuskv::v1::DType ToWireDType(DType dtype);

}  // namespace nexuskv

#endif  // NEXUSKV_PROTO_WIRE_DTYPE_H_
