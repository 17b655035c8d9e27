#include "compressor/merge.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <numeric>

#include "compressor/compressor.h"

namespace nexuskv::compressor {

namespace {

// The order of RankByTokenScores as a strict total order: priority, then the lower offset.
auto KeptBefore(std::span<const float> scores, bool session_start) {
  return [scores, session_start](uint32_t a, uint32_t b) {
    auto priority = [&](uint32_t i) {
      return session_start && i < static_cast<uint32_t>(kSinkTokens) ? FLT_MAX : scores[i];
    };
    const float pa = priority(a);
    const float pb = priority(b);
    return pa != pb ? pa > pb : a < b;
  };
}

}  // namespace

std::vector<uint32_t> RankByTokenScores(std::span<const float> scores, bool session_start) {
  std::vector<uint32_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0u);
  std::sort(order.begin(), order.end(), KeptBefore(scores, session_start));
  return order;
}

std::vector<uint32_t> EvictedByTokenScores(std::span<const float> scores, bool session_start,
                                           int64_t n) {
  std::vector<uint32_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0u);
  const int64_t kept = std::clamp<int64_t>(n, 0, static_cast<int64_t>(order.size()));
  if (kept == 0) return order;
  std::nth_element(order.begin(), order.begin() + (kept - 1), order.end(),
                   KeptBefore(scores, session_start));
  std::vector<bool> is_kept(order.size(), false);
  for (int64_t j = 0; j < kept; ++j) is_kept[order[j]] = true;
  std::vector<uint32_t> evicted;
  evicted.reserve(order.size() - kept);
  for (uint32_t i = 0; i < order.size(); ++i) {
    if (!is_kept[i]) evicted.push_back(i);
  }
  return evicted;
}

MergedRun::MergedRun(int head_dim)
    : key_(head_dim, 0.0),
      value_(head_dim, 0.0),
      even_key_(head_dim, 0.0),
      even_value_(head_dim, 0.0) {}

void MergedRun::Add(std::span<const float> key, std::span<const float> value, float score) {
  const double w = score > 0.0f ? double{score} : 0.0;
  for (size_t c = 0; c < key_.size(); ++c) {
    key_[c] += w * key[c];
    value_[c] += w * value[c];
    even_key_[c] += key[c];
    even_value_[c] += value[c];
  }
  weight_ += w;
  ++count_;
}

void MergedRun::Finish(std::span<float> key, std::span<float> value, float* bias) const {
  const bool even = !(weight_ > 0.0) || !std::isfinite(weight_);
  const double total = even ? static_cast<double>(count_) : weight_;
  const std::vector<double>& k = even ? even_key_ : key_;
  const std::vector<double>& v = even ? even_value_ : value_;
  for (size_t c = 0; c < key_.size(); ++c) {
    key[c] = static_cast<float>(std::clamp(k[c] / total, -double{FLT_MAX}, double{FLT_MAX}));
    value[c] = static_cast<float>(std::clamp(v[c] / total, -double{FLT_MAX}, double{FLT_MAX}));
  }
  *bias = static_cast<float>(std::log(static_cast<double>(count_)));
}

}  // namespace nexuskv::compressor
