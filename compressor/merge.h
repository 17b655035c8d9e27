// Merged entries: one cache entry that stands for a run of tokens a scored answer evicted.
//
// A budget spent by the worker's token scores (Compressor::spends_token_scores) keeps each head's
// highest scored tokens raw, in RankByTokenScores order, and drops the rest. The service spends a
// small share of a biased answer on entries that each merge a run of the best scored of the rest
// (a Nexus token without a fit): the run's score-weighted mean key and value, with bias log(run
// length), so that the entry carries the attention mass of the whole run. docs/sonic.md ("Merged
// runs") measures it.
//
//   std::vector<uint32_t> order = RankByTokenScores(head_scores, session_start);
//   // a head keeping n tokens keeps order[0, n); the rest are evicted:
//   std::vector<uint32_t> evicted = EvictedByTokenScores(head_scores, session_start, n);
//   MergedRun run(head_dim);
//   for (each token of the run) run.Add(key, value, score);
//   run.Finish(key_out, value_out, &bias_out);
//
// Pure functions and a value type; thread-compatible.
#ifndef NEXUSKV_COMPRESSOR_MERGE_H_
#define NEXUSKV_COMPRESSOR_MERGE_H_

#include <cstdint>
#include <span>
#include <vector>

namespace nexuskv::compressor {

// Most tokens one merged entry stands for. Longer runs of the best evicted tokens mix in ones
// that score low, which measured worse at keep 0.2 (docs/sonic.md).
inline constexpr int kMergeRunLength = 16;

// The order in which a scored answer keeps one head's tokens: with session_start the first
// kSinkTokens (the session's attention sinks), then the highest score first, ties to the lower
// offset. `scores` is the head's [T] token scores.
std::vector<uint32_t> RankByTokenScores(std::span<const float> scores, bool session_start);

// The offsets, ascending, of the tokens a head evicts when it keeps `n` of them: all but the first
// n of RankByTokenScores(scores, session_start), found without sorting them (O(T)). Scores must
// be finite.
std::vector<uint32_t> EvictedByTokenScores(std::span<const float> scores, bool session_start,
                                           int64_t n);

// The running sums of one merged entry.
class MergedRun {
 public:
  explicit MergedRun(int head_dim);

  // One token of the run: its key and value [head_dim] and its token score (weights below 0, or
  // not a number, count as 0).
  void Add(std::span<const float> key, std::span<const float> value, float score);

  int count() const { return count_; }
  int head_dim() const { return static_cast<int>(key_.size()); }

  // key and value [head_dim]: the means weighted by score (evenly when every score is 0); bias:
  // log(count). Requires count() >= 1.
  void Finish(std::span<float> key, std::span<float> value, float* bias) const;

 private:
  std::vector<double> key_;
  std::vector<double> value_;
  double weight_ = 0.0;
  std::vector<double> even_key_;  // unweighted sums, for runs whose every score is 0
  std::vector<double> even_value_;
  int count_ = 0;
};

}  // namespace nexuskv::compressor

#endif  // NEXUSKV_COMPRESSOR_MERGE_H_
