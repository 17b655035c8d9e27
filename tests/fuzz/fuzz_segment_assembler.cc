// Fuzz target: request validation and segment assembly (service/validation.h,
// service/segment_assembler.h), the code every AppendSegment stream and GetCache request meets
// before it may touch the store.
//
// The input becomes limits, one GetCacheRequest and a sequence of AppendSegmentRequest messages:
// some parsed from raw protobuf bytes (anything a client can put on the wire), most built from
// fuzzed fields near the valid region (small dims, byte lengths right or off by a little, finite
// or non-finite values) so that deep checks are reached.
//
// Oracle: nothing crashes; every refusal is INVALID_ARGUMENT or RESOURCE_EXHAUSTED; and a segment
// that Finish() accepts is whole and valid: a valid header within the limits, every layer present
// with exactly the byte lengths of its shape, every value finite.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "nexuskv/v1/kv_memory.pb.h"
#include "service/limits.h"
#include "service/segment_assembler.h"
#include "service/validation.h"
#include "tensor/dtype.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

namespace v1 = ::nexuskv::v1;
using nexuskv::service::Limits;

void CheckRefusal(const absl::Status& status, const char* what) {
  FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument ||
                 status.code() == absl::StatusCode::kResourceExhausted,
             "%s refused with %s", what, status.ToString().c_str());
}

uint32_t SmallOrAny(FuzzedDataProvider& in, uint32_t lo, uint32_t hi) {
  return in.ConsumeIntegralInRange(0, 15) == 0 ? in.ConsumeIntegral<uint32_t>()
                                               : in.ConsumeIntegralInRange(lo, hi);
}

std::string MakeId(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange(0, 3)) {
    case 0:
      return in.ConsumeRandomLengthString(140);  // Anything, mostly invalid.
    case 1:
      return std::string(in.ConsumeIntegralInRange(127, 130), 's');
    default:
      return "chat-" + std::to_string(in.ConsumeIntegral<uint16_t>());
  }
}

v1::SegmentHeader MakeHeader(FuzzedDataProvider& in) {
  v1::SegmentHeader h;
  h.set_session_id(MakeId(in));
  h.set_turn(in.ConsumeIntegral<uint32_t>());
  h.set_num_tokens(SmallOrAny(in, 0, 12));
  h.set_first_position(in.ConsumeBool() ? in.ConsumeIntegral<uint64_t>() : 0);
  h.set_role(static_cast<v1::Role>(in.ConsumeIntegralInRange(-1, 6)));
  h.set_num_probe_queries(SmallOrAny(in, 0, 6));
  if (in.ConsumeIntegralInRange(0, 15) != 0) {
    v1::ModelSpec& m = *h.mutable_model();
    m.set_model_id(in.ConsumeBool() ? "fuzz-model" : in.ConsumeRandomLengthString(300));
    m.set_num_layers(SmallOrAny(in, 0, 4));
    m.set_num_kv_heads(SmallOrAny(in, 0, 3));
    m.set_num_query_heads(in.ConsumeBool() ? m.num_kv_heads() * in.ConsumeIntegralInRange(0, 3)
                                           : SmallOrAny(in, 0, 9));
    m.set_head_dim(SmallOrAny(in, 0, 8));
    m.set_dtype(static_cast<v1::DType>(in.ConsumeIntegralInRange(-1, 4)));
  }
  return h;
}

// Tensor bytes for `elements` elements of `es` bytes: usually the right length, finite (zeros
// with a few fuzzed elements), sometimes raw input bytes or a few bytes off.
std::string MakeTensor(FuzzedDataProvider& in, uint64_t elements, size_t es) {
  uint64_t size = std::min<uint64_t>(elements * es, 1 << 16);
  switch (in.ConsumeIntegralInRange(0, 7)) {
    case 0:
      size += in.ConsumeIntegralInRange(1, 5);
      break;
    case 1:
      size -= std::min<uint64_t>(size, in.ConsumeIntegralInRange(1, 5));
      break;
    case 2:
      return in.ConsumeBytesAsString(size);  // May hold NaN/Inf patterns, may be short.
    default:
      break;
  }
  std::string bytes(size, '\0');
  for (int i = in.ConsumeIntegralInRange(0, 3); i > 0 && size > 0; --i) {
    bytes[in.ConsumeIntegralInRange<uint64_t>(0, size - 1)] = in.ConsumeIntegral<char>();
  }
  return bytes;
}

v1::LayerChunk MakeLayer(FuzzedDataProvider& in, const v1::SegmentHeader& h) {
  const v1::ModelSpec& m = h.model();
  const size_t es = m.dtype() == v1::DTYPE_FLOAT32 ? 4 : 2;
  const uint64_t kv = uint64_t{m.num_kv_heads()} * h.num_tokens() * m.head_dim();
  const uint64_t q = uint64_t{m.num_query_heads()} * h.num_probe_queries() * m.head_dim();
  v1::LayerChunk c;
  c.set_layer(in.ConsumeIntegralInRange(0, 9) == 0
                  ? in.ConsumeIntegral<uint32_t>()
                  : in.ConsumeIntegralInRange<uint32_t>(0, std::max(1u, m.num_layers()) - 1));
  c.set_keys(MakeTensor(in, kv, es));
  c.set_values(MakeTensor(in, kv, es));
  c.set_probe_queries(MakeTensor(in, q, es));
  return c;
}

void CheckSegment(const nexuskv::service::AssembledSegment& s, const Limits& limits) {
  const v1::SegmentHeader& h = s.header;
  FUZZ_CHECK(nexuskv::service::ValidateSegmentHeader(h, limits).ok(),
             "an accepted segment has an invalid header");
  const v1::ModelSpec& m = h.model();
  FUZZ_CHECK(m.dtype() == v1::DTYPE_FLOAT32 || m.dtype() == v1::DTYPE_FLOAT16 ||
                 m.dtype() == v1::DTYPE_BFLOAT16,
             "accepted dtype %d", static_cast<int>(m.dtype()));
  const std::optional<nexuskv::DType> dtype =
      m.dtype() == v1::DTYPE_FLOAT32   ? nexuskv::DType::kFloat32
      : m.dtype() == v1::DTYPE_FLOAT16 ? nexuskv::DType::kFloat16
                                       : nexuskv::DType::kBFloat16;
  const uint64_t es = nexuskv::DTypeSize(*dtype);
  const uint64_t kv = es * m.num_kv_heads() * h.num_tokens() * m.head_dim();
  const uint64_t q = es * m.num_query_heads() * h.num_probe_queries() * m.head_dim();
  FUZZ_CHECK(s.layers.size() == m.num_layers(), "%zu layers for num_layers %u", s.layers.size(),
             m.num_layers());
  uint64_t total = 0;
  for (const auto& layer : s.layers) {
    FUZZ_CHECK(
        layer.keys.size() == kv && layer.values.size() == kv && layer.probe_queries.size() == q,
        "accepted layer has the wrong byte lengths");
    FUZZ_CHECK(!nexuskv::FirstNonFinite(layer.keys, *dtype) &&
                   !nexuskv::FirstNonFinite(layer.values, *dtype) &&
                   !nexuskv::FirstNonFinite(layer.probe_queries, *dtype),
               "accepted layer holds NaN or Inf");
    total += 2 * kv + q;
  }
  FUZZ_CHECK(total <= limits.max_segment_bytes, "accepted segment is over max_segment_bytes");
  FUZZ_CHECK(h.num_tokens() <= limits.max_tokens_per_turn, "accepted segment is over max tokens");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  Limits limits;
  limits.max_tokens_per_turn = in.ConsumeIntegralInRange<uint32_t>(1, 1 << 20);
  limits.max_segment_bytes = in.ConsumeIntegralInRange<uint64_t>(1, uint64_t{1} << 40);

  // GetCache request validation, on whatever bytes parse as a GetCacheRequest.
  {
    v1::GetCacheRequest request;
    if (request.ParseFromString(in.ConsumeRandomLengthString(128))) {
      const absl::Status status = nexuskv::service::ValidateGetCacheRequest(request);
      if (!status.ok()) CheckRefusal(status, "ValidateGetCacheRequest");
    }
  }

  nexuskv::service::SegmentAssembler assembler(limits);
  v1::SegmentHeader shape;  // The last header built here: shapes the layers that follow.
  const int messages = in.ConsumeIntegralInRange(0, 10);
  for (int i = 0; i < messages; ++i) {
    v1::AppendSegmentRequest request;
    switch (in.ConsumeIntegralInRange(0, 9)) {
      case 0:  // Raw wire bytes; an unparsable message never reaches the assembler.
        if (!request.ParseFromString(in.ConsumeRandomLengthString(512))) continue;
        break;
      case 1:  // Neither header nor layer.
        break;
      case 2:
      case 3:
        shape = MakeHeader(in);
        *request.mutable_header() = shape;
        break;
      default:
        *request.mutable_layer() = MakeLayer(in, shape);
        break;
    }
    const absl::Status status = assembler.Add(std::move(request));
    if (!status.ok()) {
      CheckRefusal(status, "SegmentAssembler::Add");
      return 0;  // An assembler is not used after an error.
    }
  }
  auto segment = std::move(assembler).Finish();
  if (segment.ok()) {
    CheckSegment(*segment, limits);
  } else {
    CheckRefusal(segment.status(), "SegmentAssembler::Finish");
  }
  return 0;
}
