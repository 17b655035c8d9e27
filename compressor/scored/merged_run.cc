#include "compressor/scored/merged_run.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

namespace nexuskv::compressor::scored {

std::vector<double> MergeWeights(std::span<const float> scores) {
  std::vector<double> weights(scores.size());
  double total = 0.0;
  for (size_t j = 0; j < scores.size(); ++j) {
    weights[j] = scores[j] > 0.0f ? double{scores[j]} : 0.0;
    total += weights[j];
  }
  if (!(total > 0.0) || !std::isfinite(total)) std::fill(weights.begin(), weights.end(), 1.0);
  return weights;
}

MergedRun::MergedRun(int head_dim) : key_(head_dim, 0.0), value_(head_dim, 0.0) {}

void MergedRun::Add(std::span<const float> key, std::span<const float> value, double weight) {
  for (size_t c = 0; c < key_.size(); ++c) {
    key_[c] += weight * key[c];
    value_[c] += weight * value[c];
  }
  weight_ += weight;
  ++count_;
}

void MergedRun::Finish(std::span<float> key, std::span<float> value, float* bias) const {
  for (size_t c = 0; c < key_.size(); ++c) {
    key[c] = static_cast<float>(std::clamp(key_[c] / weight_, -double{FLT_MAX}, double{FLT_MAX}));
    value[c] =
        static_cast<float>(std::clamp(value_[c] / weight_, -double{FLT_MAX}, double{FLT_MAX}));
  }
  *bias = static_cast<float>(std::log(static_cast<double>(count_)));
}

}  // namespace nexuskv::compressor::scored
