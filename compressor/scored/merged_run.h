// Merged entries: one cache entry that stands for a run of tokens a scored answer evicted
// (compressor/scored/selection.h). The entry's key and value are the run's means weighted by the
// tokens' scores and its bias is log(run length), so that it carries the attention mass of the
// whole run. docs/experiments/ measures it against pure selection.
//
//   std::vector<double> w = MergeWeights(run_scores);
//   MergedRun run(head_dim);
//   for (size_t j = 0; j < w.size(); ++j) run.Add(key[j], value[j], w[j]);
//   run.Finish(key_out, value_out, &bias_out);
//
// Value type; thread-compatible.
#ifndef NEXUSKV_COMPRESSOR_SCORED_MERGED_RUN_H_
#define NEXUSKV_COMPRESSOR_SCORED_MERGED_RUN_H_

#include <span>
#include <vector>

namespace nexuskv::compressor::scored {

// The weights of a run's tokens from their scores: the score where above 0, else 0; when no token
// has weight (or their sum is not finite), 1 each: the run is then an even mean.
std::vector<double> MergeWeights(std::span<const float> scores);

// The running sums of one merged entry.
class MergedRun {
 public:
  explicit MergedRun(int head_dim);

  // One token of the run: its key and value [head_dim] and its weight (MergeWeights).
  void Add(std::span<const float> key, std::span<const float> value, double weight);

  int count() const { return count_; }
  int head_dim() const { return static_cast<int>(key_.size()); }

  // key and value [head_dim]: the weighted means, clamped to float's range; bias: log(count).
  // Requires count() >= 1 and a positive total weight.
  void Finish(std::span<float> key, std::span<float> value, float* bias) const;

 private:
  std::vector<double> key_;
  std::vector<double> value_;
  double weight_ = 0.0;
  int count_ = 0;
};

}  // namespace nexuskv::compressor::scored

#endif  // NEXUSKV_COMPRESSOR_SCORED_MERGED_RUN_H_
