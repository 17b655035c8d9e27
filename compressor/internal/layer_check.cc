#include "compressor/internal/layer_check.h"

#include <cstddef>

#include "absl/strings/str_cat.h"

namespace nexuskv::compressor::internal {
namespace {

// `a*b*c` floats, computed in 128 bits so that no int product can wrap.
absl::Status CheckSize(const char* what, size_t actual, const char* dims, int64_t a, int64_t b,
                       int64_t c) {
  const unsigned __int128 expected = static_cast<unsigned __int128>(a) *
                                     static_cast<unsigned __int128>(b) *
                                     static_cast<unsigned __int128>(c);
  if (expected == actual) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("LayerView: ", what, " holds ", actual,
                                                 " floats, expected ", dims, " = ", a, "*", b, "*",
                                                 c, " = ", static_cast<uint64_t>(expected)));
}

}  // namespace

absl::Status CheckLayerShape(const LayerView& layer) {
  const int h = layer.num_kv_heads;
  const int hq = layer.num_query_heads;
  if (h < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("LayerView: num_kv_heads must be >= 1, got ", h));
  }
  if (hq < 1 || hq % h != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("LayerView: num_query_heads must be a positive multiple of num_kv_heads (", h,
                     "), got ", hq));
  }
  if (layer.num_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("LayerView: num_tokens must be >= 1, got ", layer.num_tokens));
  }
  if (layer.head_dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("LayerView: head_dim must be >= 1, got ", layer.head_dim));
  }
  if (layer.num_probes < 0 || layer.num_probes > layer.num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("LayerView: num_probes must be in [0, ",
                                                   layer.num_tokens, "], got ", layer.num_probes));
  }
  if (layer.first_position < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("LayerView: first_position must be >= 0, got ", layer.first_position));
  }
  return absl::OkStatus();
}

absl::Status CheckLayer(const LayerView& layer) {
  if (auto s = CheckLayerShape(layer); !s.ok()) return s;
  const int h = layer.num_kv_heads;
  const int hq = layer.num_query_heads;
  const int64_t t = layer.num_tokens;
  const int64_t d = layer.head_dim;
  if (auto s = CheckSize("keys", layer.keys.size(), "H*T*D", h, t, d); !s.ok()) return s;
  if (auto s = CheckSize("values", layer.values.size(), "H*T*D", h, t, d); !s.ok()) return s;
  if (auto s = CheckSize("probes", layer.probes.size(), "Hq*P*D", hq, layer.num_probes, d);
      !s.ok()) {
    return s;
  }
  const std::span<const uint32_t> offsets = layer.probe_offsets;
  if (!offsets.empty() && offsets.size() != static_cast<size_t>(layer.num_probes)) {
    return absl::InvalidArgumentError(absl::StrCat("LayerView: ", offsets.size(),
                                                   " probe_offsets for ", layer.num_probes,
                                                   " probes; want one per probe or none"));
  }
  for (size_t i = 0; i < offsets.size(); ++i) {
    if (offsets[i] >= static_cast<uint64_t>(t) || (i > 0 && offsets[i] <= offsets[i - 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("LayerView: probe_offsets must be strictly ascending offsets in [0, ", t,
                       "); entry ", i, " is ", offsets[i]));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckEntryCount(const LayerView& layer, int n) {
  if (n < 0 || n > layer.num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "entries per kv head must be in [0, ", layer.num_tokens, "] (the turn's tokens), got ", n));
  }
  return absl::OkStatus();
}

}  // namespace nexuskv::compressor::internal
