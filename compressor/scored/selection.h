// Scored selection: a GetCache budget spent by the worker's token scores, and the entries it keeps.
//
// A worker that sends token scores with its turns (SegmentHeader.has_token_scores) says how much
// later text reads each (layer, kv head, token). When every compressed turn of an answer has them
// and its raw KV, SONIC answers by selection instead of from its fitted ladder
// (compressor/sonic.h):
//   1. One ranking of every (layer, kv head, token) score of those turns (O(n) selection) spends
//      the budget; the session's first kSinkTokens tokens (its attention sinks) outrank every
//      score. Ties at the threshold go to the earlier (turn, layer, head, token).
//   2. A biased answer (`fill_heads`) holds, in each (turn, layer), the count its fullest head
//      wants: slots are ranked by the fullest head's priority at each rank, so the budget pays for
//      the memory every head holds (what an engine holding one count per layer and turn holds),
//      and every head fills those slots with its own best tokens instead of padding. A share of
//      its budget (`merge_share`) goes to merged entries: each stands for a run of up to
//      `run_length` of the best evicted tokens of one head (over all the turns, history order) with
//      their score-weighted mean key and value and bias log(run length), held by the turn of the
//      run's last token at that token's position. Runs end in different turns for different
//      heads, so a head with fewer runs in a turn than another is padded there with entries no
//      query attends to (key and value 0, bias -inf, position -1, first in the turn), and that
//      padding is paid from the slots too (a second selection gives up what the first overran).
//   3. Otherwise every kv head of a layer keeps the layer's mean count, each its own best tokens.
// With lookahead weights (ScoredTurn::lookahead) and a `lookahead_share`, each (layer, kv head)
// first pins the share of the budget that the newest probes read most: the tokens a question
// asks about, which a score from each turn's own repeat may rank low. Pinned tokens outrank
// every score, as the sinks do.
// Either way the entries held per kv head, summed over turns and averaged over layers, are at most
// the budget: selection moves memory between layers (a layer whose heads attend widely gets more),
// never beyond the total.
// Selection is planned once (Make) from the scores; building a layer reads only the raw KV.
//
//   NEXUSKV_ASSIGN_OR_RETURN(Selection selection,
//                            Selection::Make(std::move(turns), layers, heads, options));
//   for (int l = 0; l < layers; ++l) {
//     // kv[u]: turn u's stored keys and values of layer l (empty where !selection.ReadsLayer(u,
//     l)). NEXUSKV_ASSIGN_OR_RETURN(std::vector<LayerEntries> entries, selection.BuildLayer(l,
//     kv));
//   }
// An answer uses BuildAnswerLayer instead: the same entries already in the answer's dtype, kept
// tokens copied from their stored bytes (compressor/scored/answer_bytes.h), not decoded and
// encoded again.
//
// Immutable after Make; thread-safe.
#ifndef NEXUSKV_COMPRESSOR_SCORED_SELECTION_H_
#define NEXUSKV_COMPRESSOR_SCORED_SELECTION_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "compressor/compressor.h"

namespace nexuskv::compressor::scored {

// Most tokens one merged entry stands for. Longer runs of the best evicted tokens mix in ones
// that score low, which measured worse at keep 0.2 (docs/experiments/).
inline constexpr int kMergeRunLength = 16;

// One compressed turn as selection sees it.
struct ScoredTurn {
  int64_t num_tokens = 0;      // T >= 1
  int64_t first_position = 0;  // Absolute position of token 0.
  bool session_start = false;  // Turn 0: its first kSinkTokens tokens are the session's sinks.
  // [layers][H * T] the worker's scores, finite (the service validates them on append).
  std::vector<std::vector<float>> scores;
  // Empty, or [layers][H * T]: how much the lookahead queries (the newest probes of the range)
  // read each token, finite and >= 0 (LookaheadWeights, compressor/scored/lookahead.h). Every
  // turn has it or none does.
  std::vector<std::vector<float>> lookahead;
};

struct SelectionOptions {
  // Entries per kv head and layer to spend over all the turns together (the sum over turns, as
  // Compressor::Allocate gets it). At least the total: every token is kept.
  int64_t budget = 0;
  // Counts set by each (turn, layer)'s fullest head and filled by every head, and merged entries
  // (a biased answer). False: every head keeps the mean count of a per-token ranking.
  bool fill_heads = false;
  // Whether LayerEntries::bias is set (0 for kept tokens); required by fill_heads.
  bool bias = false;
  // Share of a fill_heads budget that goes to merged entries; 0 turns them off.
  double merge_share = 0.0;
  int run_length = kMergeRunLength;
  // Share of the budget, per (layer, kv head), kept first by the turns' lookahead weights: those
  // tokens are pinned like the sinks, ahead of every score. 0 (or no lookahead) turns it off.
  double lookahead_share = 0.0;
};

// One turn's raw KV of one layer as stored: [H, T, D] each, encoded in `dtype`. Borrowed. Only
// the rows an answer holds are decoded.
struct TurnKv {
  std::string_view keys;
  std::string_view values;
  DType dtype = DType::kFloat32;
};

// A turn's entries of one layer as an answer carries them: LayerEntries with keys and values
// encoded in the answer's dtype (AppendAnswerEncoded of BuildLayer's floats, byte for byte).
struct AnswerEntries {
  int num_entries = 0;             // n per kv head
  std::string keys;                // [H, n, D] in the answer's dtype
  std::string values;              // [H, n, D]
  std::vector<float> bias;         // [H, n]; empty unless SelectionOptions::bias
  std::vector<int64_t> positions;  // [H, n]
};

class Selection {
 public:
  // Ranks the turns' scores and decides every count, mask and merged run. InvalidArgument when a
  // turn's scores do not have `num_layers` layers of H * T values, or options are inconsistent.
  static absl::StatusOr<Selection> Make(std::vector<ScoredTurn> turns, int num_layers,
                                        int num_kv_heads, const SelectionOptions& options);

  size_t num_turns() const { return turns_.size(); }

  // Entries per kv head that turn u holds in layer l, padding included.
  int64_t entries(size_t u, int layer) const { return layer_entries_[u][layer]; }

  // entries(u, l) summed over every turn and layer: what the answer makes an engine hold per kv
  // head. At most budget x layers.
  int64_t Held() const;

  // Real entries (kept tokens and merged entries) per kv head of turn u, averaged over heads
  // (rounded down) and layers (rounded to nearest): TurnAllocation.kept_entries.
  int64_t mean_entries(size_t u) const { return mean_entries_[u]; }

  // Whether BuildLayer(layer) reads turn u's raw KV: it holds entries there, or tokens of a merged
  // entry another turn holds.
  bool ReadsLayer(size_t u, int layer) const;

  // The entries of every turn in `layer`: out[u] has entries(u, layer) per kv head, positions
  // ascending within a head after the padding. kv[u] is turn u's raw KV of this layer (it may be
  // empty where !ReadsLayer(u, layer)). InvalidArgument when a span has the wrong size.
  absl::StatusOr<std::vector<LayerEntries>> BuildLayer(int layer, std::span<const TurnKv> kv,
                                                       int head_dim) const;

  // BuildLayer's entries encoded in `dtype` as an answer carries them (AppendAnswerEncoded),
  // byte-identical to encoding BuildLayer's floats; a kept token's rows are copied from kv's
  // bytes (GatherAnswerRow), only merged entries are computed in float32.
  absl::StatusOr<std::vector<AnswerEntries>> BuildAnswerLayer(int layer, std::span<const TurnKv> kv,
                                                              int head_dim, DType dtype) const;

 private:
  // A token of a merged run, with its weight (its score, 0 when below 0).
  struct RunToken {
    uint32_t u;
    uint32_t i;
    float weight;
  };
  struct Run {
    uint32_t owner;  // The turn holding the entry: that of the run's last token.
    std::vector<RunToken> tokens;
  };

  Selection() = default;
  int64_t TokensPerHead() const;
  // Sizes kept_ with nothing kept; keeps everything when the budget holds every token. Whether a
  // choice is left to make.
  bool StartKept(int64_t budget);
  // Head h's priorities of turn u in `layer` (SelectionPriority of each token) into `out`.
  void HeadPriority(size_t u, int layer, int64_t h, std::vector<float>& out) const;
  // Pins each (layer, kv head)'s `count` tokens of highest lookahead weight (not the sinks).
  void PinLookahead(int64_t count);
  void SelectGlobal(int64_t budget);
  void SelectEvenly();
  // Every (turn, layer) slot's value, in scan order (turn, layer, rank): the fullest head's
  // priority at that rank.
  std::vector<float> FilledSlots() const;
  void SelectFilled(const std::vector<float>& slots, int64_t budget);
  void PlanRuns(int64_t entries);
  void Count();
  // A head's entries of turn u in answer order (after its padding): (position, token i), or
  // (position, ~r) for merged run r.
  std::vector<std::pair<int64_t, int64_t>> HeadSlots(size_t u, int layer, int h) const;
  // Merged run `run` of head h, its key and value into [D] each and its bias.
  absl::Status MergeRun(const Run& run, int h, std::span<const TurnKv> kv, std::span<float> key,
                        std::span<float> value, float* bias) const;
  absl::Status CheckLayer(int layer, std::span<const TurnKv> kv, int head_dim) const;
  // Turn u's entries of `layer` (BuildLayer, checked), and one head's of them.
  absl::StatusOr<LayerEntries> BuildTurn(size_t u, int layer, std::span<const TurnKv> kv,
                                         int head_dim) const;
  absl::Status FillHead(size_t u, int layer, int h, std::span<const TurnKv> kv,
                        LayerEntries& e) const;
  absl::StatusOr<AnswerEntries> BuildAnswerTurn(size_t u, int layer, std::span<const TurnKv> kv,
                                                int head_dim, DType dtype) const;
  size_t At(int layer, int head) const { return static_cast<size_t>(layer) * heads_ + head; }

  std::vector<ScoredTurn> turns_;  // Scores released once planned.
  int layers_ = 0;
  int heads_ = 0;
  SelectionOptions options_;
  // kept_[u][l]: [H * T] whether head h keeps token i raw.
  std::vector<std::vector<std::vector<bool>>> kept_;
  // pinned_[u][l]: [H * T] whether the lookahead pinned token i of head h; empty: none pinned.
  std::vector<std::vector<std::vector<bool>>> pinned_;
  std::vector<std::vector<Run>> runs_;               // [L * H], each head's runs in history order.
  std::vector<std::vector<int64_t>> layer_entries_;  // [U][L]
  std::vector<int64_t> mean_entries_;                // [U]
};

// The priority of token i of a head in selection: FLT_MAX for the session's sinks and pinned
// tokens, else its score. The one place the pinned-first rule is written.
float SelectionPriority(std::span<const float> head_scores, bool session_start, int64_t i,
                        bool pinned = false);

}  // namespace nexuskv::compressor::scored

#endif  // NEXUSKV_COMPRESSOR_SCORED_SELECTION_H_
