#include "compressor/internal/ranking.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "compressor/internal/layer_check.h"

namespace nexuskv::compressor::internal {
namespace {

constexpr char kMagic0 = 'N';
constexpr char kMagic1 = 'R';
constexpr int kMaxShortTokens = 65535;

int IndexWidth(int num_tokens) { return num_tokens <= kMaxShortTokens ? 2 : 4; }

void PutLe(uint32_t value, int width, std::string* out) {
  for (int b = 0; b < width; ++b) out->push_back(static_cast<char>((value >> (8 * b)) & 0xff));
}

uint32_t GetLe(const char* p, int width) {
  uint32_t value = 0;
  for (int b = 0; b < width; ++b) {
    value |= static_cast<uint32_t>(static_cast<unsigned char>(p[b])) << (8 * b);
  }
  return value;
}

absl::Status BadFit(const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("fit is not a ranking for this layer: ", why));
}

// Checks the header and length of `fit` against the expected tag and shape.
absl::Status CheckHeader(RankingTag tag, std::string_view fit, int num_kv_heads, int num_tokens) {
  if (fit.size() < kRankingHeaderBytes || fit[0] != kMagic0 || fit[1] != kMagic1) {
    return BadFit(absl::StrCat("missing ranking header (", fit.size(), " bytes)"));
  }
  const int stored_tag = static_cast<unsigned char>(fit[2]);
  if (stored_tag != static_cast<int>(tag)) {
    return BadFit(
        absl::StrCat("written by method tag ", stored_tag, ", expected ", static_cast<int>(tag)));
  }
  const uint32_t h = GetLe(fit.data() + 4, 4);
  const uint32_t t = GetLe(fit.data() + 8, 4);
  if (h != static_cast<uint32_t>(num_kv_heads) || t != static_cast<uint32_t>(num_tokens)) {
    return BadFit(
        absl::StrCat("shape H=", h, " T=", t, ", layer has H=", num_kv_heads, " T=", num_tokens));
  }
  const int width = static_cast<unsigned char>(fit[3]);
  if (width != IndexWidth(num_tokens)) {
    return BadFit(absl::StrCat("index width ", width, ", expected ", IndexWidth(num_tokens)));
  }
  const uint64_t expected = kRankingHeaderBytes + static_cast<uint64_t>(h) * t * width;
  if (fit.size() != expected) {
    return BadFit(absl::StrCat(fit.size(), " bytes, expected ", expected));
  }
  return absl::OkStatus();
}

}  // namespace

std::string EncodeRanking(RankingTag tag, int num_kv_heads, int num_tokens,
                          std::span<const uint32_t> order) {
  const int width = IndexWidth(num_tokens);
  std::string fit;
  fit.reserve(kRankingHeaderBytes + order.size() * width);
  fit.push_back(kMagic0);
  fit.push_back(kMagic1);
  fit.push_back(static_cast<char>(tag));
  fit.push_back(static_cast<char>(width));
  PutLe(static_cast<uint32_t>(num_kv_heads), 4, &fit);
  PutLe(static_cast<uint32_t>(num_tokens), 4, &fit);
  for (uint32_t index : order) PutLe(index, width, &fit);
  return fit;
}

absl::StatusOr<std::vector<uint32_t>> DecodeRanking(RankingTag tag, std::string_view fit,
                                                    int num_kv_heads, int num_tokens) {
  NEXUSKV_RETURN_IF_ERROR(CheckHeader(tag, fit, num_kv_heads, num_tokens));
  const int width = IndexWidth(num_tokens);
  const size_t t = static_cast<size_t>(num_tokens);
  std::vector<uint32_t> order(static_cast<size_t>(num_kv_heads) * t);
  // seen[i] == h + 1 once head h has listed token i: one pass per head, no clearing.
  std::vector<uint32_t> seen(t, 0);
  const char* p = fit.data() + kRankingHeaderBytes;
  for (int h = 0; h < num_kv_heads; ++h) {
    for (size_t j = 0; j < t; ++j, p += width) {
      const uint32_t index = GetLe(p, width);
      if (index >= t || seen[index] == static_cast<uint32_t>(h) + 1) {
        return BadFit(absl::StrCat("head ", h, " is not a permutation of [0, ", t, ")"));
      }
      seen[index] = static_cast<uint32_t>(h) + 1;
      order[h * t + j] = index;
    }
  }
  return order;
}

absl::StatusOr<LayerEntries> MaterializeRanking(RankingTag tag, const LayerView& layer,
                                                std::string_view fit, int n) {
  NEXUSKV_RETURN_IF_ERROR(CheckLayer(layer));
  NEXUSKV_RETURN_IF_ERROR(CheckEntryCount(layer, n));
  NEXUSKV_ASSIGN_OR_RETURN(std::vector<uint32_t> order,
                           DecodeRanking(tag, fit, layer.num_kv_heads, layer.num_tokens));
  const size_t t = static_cast<size_t>(layer.num_tokens);
  const size_t count = static_cast<size_t>(n);
  std::vector<uint32_t> kept(static_cast<size_t>(layer.num_kv_heads) * count);
  for (int h = 0; h < layer.num_kv_heads; ++h) {
    auto first = order.begin() + h * t;
    auto out = kept.begin() + h * count;
    std::copy(first, first + count, out);
    std::sort(out, out + count);
  }
  return GatherEntries(layer, n, kept);
}

LayerEntries GatherEntries(const LayerView& layer, int n, std::span<const uint32_t> kept) {
  const size_t h_count = static_cast<size_t>(layer.num_kv_heads);
  const size_t t = static_cast<size_t>(layer.num_tokens);
  const size_t d = static_cast<size_t>(layer.head_dim);
  const size_t count = static_cast<size_t>(n);
  LayerEntries entries;
  entries.num_kv_heads = layer.num_kv_heads;
  entries.head_dim = layer.head_dim;
  entries.num_entries = n;
  entries.keys.resize(h_count * count * d);
  entries.values.resize(h_count * count * d);
  entries.positions.resize(h_count * count);
  for (size_t h = 0; h < h_count; ++h) {
    for (size_t j = 0; j < count; ++j) {
      const size_t index = kept[h * count + j];
      const size_t src = (h * t + index) * d;
      const size_t dst = (h * count + j) * d;
      std::memcpy(entries.keys.data() + dst, layer.keys.data() + src, d * sizeof(float));
      std::memcpy(entries.values.data() + dst, layer.values.data() + src, d * sizeof(float));
      entries.positions[h * count + j] = layer.first_position + static_cast<int64_t>(index);
    }
  }
  return entries;
}

void AppendByScore(std::span<const float> scores, uint32_t offset, std::vector<uint32_t>* out) {
  std::vector<uint32_t> local(scores.size());
  std::iota(local.begin(), local.end(), 0u);
  // NaN maps to -inf and ties keep index order (stable sort), so the order is total and fixed.
  auto key = [&](uint32_t i) {
    const float s = scores[i];
    return std::isnan(s) ? -std::numeric_limits<float>::infinity() : s;
  };
  std::stable_sort(local.begin(), local.end(),
                   [&](uint32_t a, uint32_t b) { return key(a) > key(b); });
  for (uint32_t i : local) out->push_back(offset + i);
}

}  // namespace nexuskv::compressor::internal
