#include "compressor/merge.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <numeric>

#include "compressor/compressor.h"

namespace nexuskv::compressor {

std::vector<uint32_t> RankByTokenScores(std::span<const float> scores, bool session_start) {
  auto priority = [&](uint32_t i) {
    return session_start && i < static_cast<uint32_t>(kSinkTokens) ? FLT_MAX : scores[i];
  };
  std::vector<uint32_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(),
                   [&](uint32_t a, uint32_t b) { return priority(a) > priority(b); });
  return order;
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
