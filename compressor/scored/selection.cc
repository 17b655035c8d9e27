#include "compressor/scored/selection.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "compressor/scored/answer_bytes.h"
#include "compressor/scored/merged_run.h"

namespace nexuskv::compressor::scored {
namespace {

// The `take` entries of `priority` that rank first (highest first, ties to the lower index), as
// a mask. O(n).
std::vector<bool> TopMask(const std::vector<float>& priority, int64_t take) {
  const size_t n = priority.size();
  std::vector<bool> mask(n, take >= static_cast<int64_t>(n));
  if (take <= 0 || take >= static_cast<int64_t>(n)) return mask;
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  std::nth_element(order.begin(), order.begin() + (take - 1), order.end(),
                   [&](uint32_t a, uint32_t b) {
                     return priority[a] != priority[b] ? priority[a] > priority[b] : a < b;
                   });
  for (int64_t j = 0; j < take; ++j) mask[order[j]] = true;
  return mask;
}

// The `want` highest of some values (want in [1, values.size()]), taken in scan order: Take(v) is
// called once per value in the order they were given and says whether v is among them (ties at
// the threshold go to the first ones). O(n).
class Cut {
 public:
  Cut(std::vector<float> values, int64_t want) {
    std::nth_element(values.begin(), values.begin() + (want - 1), values.end(),
                     std::greater<float>());
    threshold_ = values[want - 1];
    ties_ = want;
    for (float v : values) ties_ -= v > threshold_;
  }
  bool Take(float v) { return v > threshold_ || (v == threshold_ && ties_-- > 0); }

 private:
  float threshold_ = 0.0f;
  int64_t ties_ = 0;
};

}  // namespace

float SelectionPriority(std::span<const float> head_scores, bool session_start, int64_t i,
                        bool pinned) {
  return pinned || (session_start && i < kSinkTokens) ? FLT_MAX : head_scores[i];
}

absl::StatusOr<Selection> Selection::Make(std::vector<ScoredTurn> turns, int num_layers,
                                          int num_kv_heads, const SelectionOptions& options) {
  if (num_layers < 1 || num_kv_heads < 1) {
    return absl::InvalidArgumentError(absl::StrCat("scored selection over ", num_layers,
                                                   " layers and ", num_kv_heads, " kv heads"));
  }
  if (options.fill_heads && !options.bias) {
    return absl::InvalidArgumentError("scored selection: merged entries need a bias");
  }
  const bool lookahead = !turns.empty() && !turns[0].lookahead.empty();
  auto shaped = [&](const ScoredTurn& t, const std::vector<std::vector<float>>& per_layer) {
    bool ok = per_layer.size() == static_cast<size_t>(num_layers);
    for (size_t l = 0; ok && l < per_layer.size(); ++l) {
      ok = per_layer[l].size() == static_cast<size_t>(num_kv_heads * t.num_tokens);
    }
    return ok;
  };
  for (size_t u = 0; u < turns.size(); ++u) {
    const ScoredTurn& t = turns[u];
    if (t.num_tokens < 1 || !shaped(t, t.scores)) {
      return absl::InvalidArgumentError(
          absl::StrCat("scored selection: turn ", u, " of ", t.num_tokens, " tokens has ",
                       t.scores.size(), " layers of scores; want ", num_layers, " layers of ",
                       num_kv_heads, " x ", t.num_tokens));
    }
    if (lookahead != !t.lookahead.empty() || (lookahead && !shaped(t, t.lookahead))) {
      return absl::InvalidArgumentError(
          absl::StrCat("scored selection: turn ", u, " has ", t.lookahead.size(),
                       " layers of lookahead weights; want every turn to have none or ", num_layers,
                       " layers of ", num_kv_heads, " x ", t.num_tokens));
    }
  }
  if (!(options.lookahead_share >= 0.0 && options.lookahead_share <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("scored selection: lookahead_share ",
                                                   options.lookahead_share, " is not in [0, 1]"));
  }
  Selection s;
  s.turns_ = std::move(turns);
  s.layers_ = num_layers;
  s.heads_ = num_kv_heads;
  s.options_ = options;
  s.runs_.assign(static_cast<size_t>(num_layers) * num_kv_heads, {});
  const int64_t tokens_per_head = s.TokensPerHead();
  if (lookahead && options.budget < tokens_per_head) {
    s.PinLookahead(std::llround(options.lookahead_share * options.budget));
  }
  // Merged entries only replace tokens the budget cannot hold.
  const int64_t merge_entries =
      options.fill_heads && options.run_length > 0
          ? std::clamp<int64_t>(std::llround(options.merge_share * options.budget), 0,
                                std::max<int64_t>(tokens_per_head - options.budget, 0))
          : 0;
  if (options.fill_heads) {
    // A merged entry is held by the turn of its run's last token, which differs from head to head:
    // the heads of a (turn, layer) with fewer runs there are padded, and the padding is paid from
    // the slots. When a pass overruns the budget, the next gives up as many slots (rarely a third).
    const std::vector<float> slot_values = s.FilledSlots();
    int64_t slots = options.budget - merge_entries;
    for (int pass = 0;; ++pass) {
      s.SelectFilled(slot_values, slots);
      s.PlanRuns(merge_entries);
      s.Count();
      const int64_t over = s.Held() - options.budget * num_layers;
      if (over <= 0 || slots <= 0 || pass == 7) break;
      slots -= (over + num_layers - 1) / num_layers;
    }
  } else {
    s.SelectGlobal(options.budget);
    s.SelectEvenly();
    s.Count();
  }
  for (ScoredTurn& t : s.turns_) t.scores = t.lookahead = {};
  s.pinned_.clear();
  return s;
}

void Selection::PinLookahead(int64_t count) {
  if (count <= 0) return;
  pinned_.clear();
  for (const ScoredTurn& t : turns_) {
    pinned_.emplace_back(layers_, std::vector<bool>(heads_ * t.num_tokens, false));
  }
  std::vector<float> weight;
  std::vector<std::pair<size_t, int64_t>> where;  // (turn, token) of each weight
  for (int l = 0; l < layers_; ++l) {
    for (int64_t h = 0; h < heads_; ++h) {
      weight.clear();
      where.clear();
      for (size_t u = 0; u < turns_.size(); ++u) {
        const int64_t t = turns_[u].num_tokens;
        for (int64_t i = turns_[u].session_start ? kSinkTokens : 0; i < t; ++i) {
          weight.push_back(turns_[u].lookahead[l][h * t + i]);
          where.emplace_back(u, i);
        }
      }
      const std::vector<bool> top = TopMask(weight, count);
      for (size_t j = 0; j < top.size(); ++j) {
        if (!top[j]) continue;
        const auto [u, i] = where[j];
        pinned_[u][l][h * turns_[u].num_tokens + i] = true;
      }
    }
  }
}

int64_t Selection::TokensPerHead() const {
  int64_t tokens = 0;
  for (const ScoredTurn& t : turns_) tokens += t.num_tokens;
  return tokens;
}

bool Selection::StartKept(int64_t budget) {
  kept_.clear();
  for (const ScoredTurn& t : turns_) {
    kept_.emplace_back(layers_, std::vector<bool>(heads_ * t.num_tokens, false));
  }
  if (budget <= 0) return false;
  if (budget >= TokensPerHead()) {
    for (auto& turn : kept_) {
      for (auto& layer : turn) layer.assign(layer.size(), true);
    }
    return false;
  }
  return true;
}

void Selection::HeadPriority(size_t u, int layer, int64_t h, std::vector<float>& out) const {
  const int64_t t = turns_[u].num_tokens;
  const std::span<const float> head =
      std::span<const float>(turns_[u].scores[layer]).subspan(h * t, t);
  out.resize(static_cast<size_t>(t));
  const bool pins = !pinned_.empty();
  for (int64_t i = 0; i < t; ++i) {
    out[i] =
        SelectionPriority(head, turns_[u].session_start, i, pins && pinned_[u][layer][h * t + i]);
  }
}

void Selection::SelectGlobal(int64_t budget) {
  if (!StartKept(budget)) return;
  // The budget's highest priorities; ties at the threshold in scan order.
  auto for_each = [&](auto&& visit) {
    for (size_t u = 0; u < turns_.size(); ++u) {
      const int64_t t = turns_[u].num_tokens;
      for (int l = 0; l < layers_; ++l) {
        const std::vector<float>& scores = turns_[u].scores[l];
        for (int64_t h = 0; h < heads_; ++h) {
          const std::span<const float> head = std::span<const float>(scores).subspan(h * t, t);
          for (int64_t i = 0; i < t; ++i) {
            const bool pinned = !pinned_.empty() && pinned_[u][l][h * t + i];
            visit(u, l, h * t + i, SelectionPriority(head, turns_[u].session_start, i, pinned));
          }
        }
      }
    }
  };
  std::vector<float> all;
  all.reserve(static_cast<size_t>(TokensPerHead()) * heads_ * layers_);
  for_each([&](size_t, int, int64_t, float p) { all.push_back(p); });
  Cut cut(std::move(all), budget * heads_ * layers_);
  for_each([&](size_t u, int l, int64_t j, float p) {
    if (cut.Take(p)) kept_[u][l][j] = true;
  });
}

void Selection::SelectEvenly() {
  for (size_t u = 0; u < turns_.size(); ++u) {
    const int64_t t = turns_[u].num_tokens;
    for (int l = 0; l < layers_; ++l) {
      std::vector<bool>& kept = kept_[u][l];
      const int64_t n = std::count(kept.begin(), kept.end(), true) / heads_;
      std::vector<float> priority;
      for (int64_t h = 0; h < heads_; ++h) {
        HeadPriority(u, l, h, priority);
        const std::vector<bool> top = TopMask(priority, n);
        std::copy(top.begin(), top.end(), kept.begin() + h * t);
      }
    }
  }
}

std::vector<float> Selection::FilledSlots() const {
  // Slot e of (turn u, layer l) is worth the e-th best priority of its fullest head there: holding
  // e + 1 entries per head lets the head that wants most keep its e-th token, and the others keep
  // their own next best in the same memory. Slot values fall with e, so the top budget * layers
  // slots of the whole range (ties in scan order) give each (u, l) a prefix: its count.
  std::vector<float> slots, priority;
  slots.reserve(static_cast<size_t>(TokensPerHead()) * layers_);
  for (size_t u = 0; u < turns_.size(); ++u) {
    const size_t t = static_cast<size_t>(turns_[u].num_tokens);
    for (int l = 0; l < layers_; ++l) {
      const size_t first = slots.size();
      slots.resize(first + t, -std::numeric_limits<float>::infinity());
      for (int64_t h = 0; h < heads_; ++h) {
        HeadPriority(u, l, h, priority);
        std::sort(priority.begin(), priority.end(), std::greater<float>());
        for (size_t e = 0; e < t; ++e) slots[first + e] = std::max(slots[first + e], priority[e]);
      }
    }
  }
  return slots;
}

void Selection::SelectFilled(const std::vector<float>& slots, int64_t budget) {
  if (!StartKept(budget)) return;
  std::vector<float> priority;
  Cut cut(slots, budget * layers_);
  size_t at = 0;
  for (size_t u = 0; u < turns_.size(); ++u) {
    const size_t t = static_cast<size_t>(turns_[u].num_tokens);
    for (int l = 0; l < layers_; ++l) {
      int64_t count = 0;
      for (size_t e = 0; e < t; ++e, ++at) count += cut.Take(slots[at]);
      for (int64_t h = 0; h < heads_; ++h) {
        HeadPriority(u, l, h, priority);
        const std::vector<bool> top = TopMask(priority, count);
        std::copy(top.begin(), top.end(), kept_[u][l].begin() + h * t);
      }
    }
  }
}

void Selection::PlanRuns(int64_t entries) {
  runs_.assign(static_cast<size_t>(layers_) * heads_, {});
  if (entries <= 0) return;
  struct Evicted {
    float score;
    RunToken token;
  };
  const int run_length = options_.run_length;
  for (int l = 0; l < layers_; ++l) {
    for (int h = 0; h < heads_; ++h) {
      std::vector<Evicted> evicted;  // in history order
      for (size_t u = 0; u < turns_.size(); ++u) {
        const int64_t t = turns_[u].num_tokens;
        for (int64_t i = 0; i < t; ++i) {
          if (kept_[u][l][h * t + i]) continue;
          const float score = turns_[u].scores[l][h * t + i];
          evicted.push_back({score, {static_cast<uint32_t>(u), static_cast<uint32_t>(i), 0.0f}});
        }
      }
      // The `take` best (ties to the earlier token), then back in history order.
      std::vector<float> score(evicted.size());
      for (size_t j = 0; j < evicted.size(); ++j) score[j] = evicted[j].score;
      const int64_t take = std::min<int64_t>(evicted.size(), entries * run_length);
      const std::vector<bool> best = TopMask(score, take);
      std::vector<Run>& runs = runs_[At(l, h)];
      std::vector<float> run_scores;
      for (size_t j = 0; j < evicted.size(); ++j) {
        if (!best[j]) continue;
        if (runs.empty() || runs.back().tokens.size() == static_cast<size_t>(run_length)) {
          runs.emplace_back();
        }
        runs.back().tokens.push_back(evicted[j].token);
        runs.back().tokens.back().weight = evicted[j].score;
      }
      for (Run& run : runs) {
        run.owner = run.tokens.back().u;
        run_scores.clear();
        for (const RunToken& token : run.tokens) run_scores.push_back(token.weight);
        const std::vector<double> weights = MergeWeights(run_scores);
        for (size_t k = 0; k < weights.size(); ++k) {
          run.tokens[k].weight = static_cast<float>(weights[k]);
        }
      }
    }
  }
}

void Selection::Count() {
  layer_entries_.assign(turns_.size(), std::vector<int64_t>(layers_, 0));
  mean_entries_.assign(turns_.size(), 0);
  for (size_t u = 0; u < turns_.size(); ++u) {
    const int64_t t = turns_[u].num_tokens;
    int64_t real = 0;  // per kv head (mean over heads, rounded down), summed over layers
    for (int l = 0; l < layers_; ++l) {
      int64_t most = 0;
      int64_t sum = 0;
      for (int h = 0; h < heads_; ++h) {
        const auto first = kept_[u][l].begin() + h * t;
        int64_t served = std::count(first, first + t, true);
        for (const Run& run : runs_[At(l, h)]) served += run.owner == u;
        most = std::max(most, served);
        sum += served;
      }
      layer_entries_[u][l] = most;
      real += sum / heads_;
    }
    mean_entries_[u] = (real + layers_ / 2) / layers_;
  }
}

int64_t Selection::Held() const {
  int64_t held = 0;
  for (const std::vector<int64_t>& turn : layer_entries_) {
    for (int64_t n : turn) held += n;
  }
  return held;
}

bool Selection::ReadsLayer(size_t u, int layer) const {
  if (entries(u, layer) > 0) return true;
  for (int h = 0; h < heads_; ++h) {
    for (const Run& run : runs_[At(layer, h)]) {
      for (const RunToken& token : run.tokens) {
        if (token.u == u) return true;
      }
    }
  }
  return false;
}

absl::Status Selection::CheckLayer(int layer, std::span<const TurnKv> kv, int head_dim) const {
  const size_t d = static_cast<size_t>(head_dim);
  if (layer < 0 || layer >= layers_ || kv.size() != turns_.size() || head_dim < 1) {
    return absl::InvalidArgumentError(absl::StrCat("scored selection: layer ", layer, " of ",
                                                   layers_, " with ", kv.size(), " turns of ",
                                                   turns_.size(), ", head_dim ", head_dim));
  }
  for (size_t u = 0; u < turns_.size(); ++u) {
    const size_t want =
        heads_ * static_cast<size_t>(turns_[u].num_tokens) * d * DTypeSize(kv[u].dtype);
    if (ReadsLayer(u, layer) && (kv[u].keys.size() != want || kv[u].values.size() != want)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "scored selection: turn ", u, " layer ", layer, " has ", kv[u].keys.size(), " key and ",
          kv[u].values.size(), " value bytes; want ", want, " (", DTypeName(kv[u].dtype), ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<LayerEntries>> Selection::BuildLayer(int layer,
                                                                std::span<const TurnKv> kv,
                                                                int head_dim) const {
  NEXUSKV_RETURN_IF_ERROR(CheckLayer(layer, kv, head_dim));
  std::vector<LayerEntries> out(turns_.size());
  for (size_t u = 0; u < turns_.size(); ++u) {
    NEXUSKV_ASSIGN_OR_RETURN(out[u], BuildTurn(u, layer, kv, head_dim));
  }
  return out;
}

absl::StatusOr<std::vector<AnswerEntries>> Selection::BuildAnswerLayer(int layer,
                                                                       std::span<const TurnKv> kv,
                                                                       int head_dim,
                                                                       DType dtype) const {
  NEXUSKV_RETURN_IF_ERROR(CheckLayer(layer, kv, head_dim));
  std::vector<AnswerEntries> out(turns_.size());
  for (size_t u = 0; u < turns_.size(); ++u) {
    NEXUSKV_ASSIGN_OR_RETURN(out[u], BuildAnswerTurn(u, layer, kv, head_dim, dtype));
  }
  return out;
}

absl::StatusOr<LayerEntries> Selection::BuildTurn(size_t u, int layer, std::span<const TurnKv> kv,
                                                  int head_dim) const {
  const size_t d = static_cast<size_t>(head_dim);
  const size_t n = static_cast<size_t>(entries(u, layer));
  LayerEntries e;
  e.num_kv_heads = heads_;
  e.head_dim = head_dim;
  e.num_entries = static_cast<int>(n);
  e.keys.assign(heads_ * n * d, 0.0f);
  e.values.assign(heads_ * n * d, 0.0f);
  e.positions.assign(heads_ * n, -1);
  e.bias.assign(heads_ * n, -std::numeric_limits<float>::infinity());
  for (int h = 0; h < heads_; ++h) NEXUSKV_RETURN_IF_ERROR(FillHead(u, layer, h, kv, e));
  if (!options_.bias) e.bias.clear();
  return e;
}

std::vector<std::pair<int64_t, int64_t>> Selection::HeadSlots(size_t u, int layer, int h) const {
  const size_t t = static_cast<size_t>(turns_[u].num_tokens);
  std::vector<std::pair<int64_t, int64_t>> slots;
  for (size_t i = 0; i < t; ++i) {
    if (kept_[u][layer][h * t + i]) slots.push_back({turns_[u].first_position + i, i});
  }
  const std::vector<Run>& runs = runs_[At(layer, h)];
  for (size_t r = 0; r < runs.size(); ++r) {
    if (runs[r].owner != u) continue;
    const RunToken& last = runs[r].tokens.back();  // The run's position: its last token's.
    slots.push_back({turns_[last.u].first_position + last.i, ~static_cast<int64_t>(r)});
  }
  std::sort(slots.begin(), slots.end());
  return slots;
}

// Row `row` ([D]) of a turn's stored keys or values.
static std::string_view StoredRow(const TurnKv& turn, std::string_view bytes, size_t row,
                                  size_t d) {
  const size_t size = d * DTypeSize(turn.dtype);
  return bytes.substr(row * size, size);
}

absl::Status Selection::MergeRun(const Run& run, int h, std::span<const TurnKv> kv,
                                 std::span<float> key, std::span<float> value, float* bias) const {
  const size_t d = key.size();
  std::vector<float> row_key(d), row_value(d);
  MergedRun sum(static_cast<int>(d));
  for (const RunToken& token : run.tokens) {
    const TurnKv& from = kv[token.u];
    const size_t row = h * turns_[token.u].num_tokens + token.i;
    NEXUSKV_RETURN_IF_ERROR(DecodeToFloat(StoredRow(from, from.keys, row, d), from.dtype, row_key));
    NEXUSKV_RETURN_IF_ERROR(
        DecodeToFloat(StoredRow(from, from.values, row, d), from.dtype, row_value));
    sum.Add(row_key, row_value, token.weight);
  }
  sum.Finish(key, value, bias);
  return absl::OkStatus();
}

absl::Status Selection::FillHead(size_t u, int layer, int h, std::span<const TurnKv> kv,
                                 LayerEntries& e) const {
  const size_t d = static_cast<size_t>(e.head_dim);
  const size_t t = static_cast<size_t>(turns_[u].num_tokens);
  const size_t n = static_cast<size_t>(e.num_entries);
  // The head's slots: its padding first, then kept tokens and merged entries by position.
  const std::vector<std::pair<int64_t, int64_t>> slots = HeadSlots(u, layer, h);
  const std::vector<Run>& runs = runs_[At(layer, h)];
  size_t slot = h * n + (n - slots.size());
  for (const auto& [position, what] : slots) {
    const std::span<float> key(e.keys.data() + slot * d, d);
    const std::span<float> value(e.values.data() + slot * d, d);
    e.positions[slot] = position;
    if (what >= 0) {
      const size_t row = h * t + what;
      NEXUSKV_RETURN_IF_ERROR(
          DecodeToFloat(StoredRow(kv[u], kv[u].keys, row, d), kv[u].dtype, key));
      NEXUSKV_RETURN_IF_ERROR(
          DecodeToFloat(StoredRow(kv[u], kv[u].values, row, d), kv[u].dtype, value));
      e.bias[slot] = 0.0f;
    } else {
      NEXUSKV_RETURN_IF_ERROR(MergeRun(runs[~what], h, kv, key, value, &e.bias[slot]));
    }
    ++slot;
  }
  return absl::OkStatus();
}

absl::StatusOr<AnswerEntries> Selection::BuildAnswerTurn(size_t u, int layer,
                                                         std::span<const TurnKv> kv, int head_dim,
                                                         DType dtype) const {
  const size_t d = static_cast<size_t>(head_dim);
  const size_t t = static_cast<size_t>(turns_[u].num_tokens);
  const size_t n = static_cast<size_t>(entries(u, layer));
  const size_t row_bytes = d * DTypeSize(dtype);
  AnswerEntries e;
  e.num_entries = static_cast<int>(n);
  e.keys.reserve(heads_ * n * row_bytes);
  e.values.reserve(heads_ * n * row_bytes);
  e.positions.assign(heads_ * n, -1);
  e.bias.assign(heads_ * n, -std::numeric_limits<float>::infinity());
  std::vector<float> key(d), value(d);
  for (int h = 0; h < heads_; ++h) {
    // As FillHead: the padding (zero bytes in every dtype), then the slots in position order.
    const std::vector<std::pair<int64_t, int64_t>> slots = HeadSlots(u, layer, h);
    const size_t padding = n - slots.size();
    e.keys.append(padding * row_bytes, '\0');
    e.values.append(padding * row_bytes, '\0');
    size_t slot = h * n + padding;
    for (const auto& [position, what] : slots) {
      e.positions[slot] = position;
      if (what >= 0) {
        const size_t row = h * t + what;
        NEXUSKV_RETURN_IF_ERROR(GatherAnswerRow(StoredRow(kv[u], kv[u].keys, row, d), kv[u].dtype,
                                                dtype, key, &e.keys));
        NEXUSKV_RETURN_IF_ERROR(GatherAnswerRow(StoredRow(kv[u], kv[u].values, row, d), kv[u].dtype,
                                                dtype, value, &e.values));
        e.bias[slot] = 0.0f;
      } else {
        NEXUSKV_RETURN_IF_ERROR(
            MergeRun(runs_[At(layer, h)][~what], h, kv, key, value, &e.bias[slot]));
        AppendAnswerEncoded(key, dtype, &e.keys);
        AppendAnswerEncoded(value, dtype, &e.values);
      }
      ++slot;
    }
  }
  if (!options_.bias) e.bias.clear();
  return e;
}

}  // namespace nexuskv::compressor::scored
