#include "service/cache_assembly.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "compressor/merge.h"
#include "service/internal/layer_loader.h"
#include "service/lookahead.h"
#include "service/validation.h"

namespace nexuskv::service {

namespace v1 = ::nexuskv::v1;

// One turn's contribution to one layer, already in the output dtype.
struct CacheAssembly::TurnBlock {
  int64_t entries = 0;             // n per kv head.
  std::string keys;                // [H, n, D]
  std::string values;              // [H, n, D]
  std::vector<float> bias;         // [H, n]; empty means all zero.
  std::vector<int64_t> positions;  // [H, n]
};

namespace {

// One merged entry of a built turn, ready to place.
struct MergedEntry {
  int64_t position;
  std::vector<float> key;
  std::vector<float> value;
  float bias;
};

// Adds a turn's merged entries to the entries its method served: each head's real entries (the
// last head_entries[h] of the method's n; padding first) and its merged ones merge in position
// order, padded up to n (bias -inf, key and value 0, position -1, first).
absl::StatusOr<compressor::LayerEntries> PlaceMerged(
    const compressor::LayerEntries& served, std::span<const int64_t> head_entries,
    const std::vector<std::vector<MergedEntry>>& merged, int64_t n) {
  const size_t d = static_cast<size_t>(served.head_dim);
  const size_t heads = static_cast<size_t>(served.num_kv_heads);
  const size_t from_n = static_cast<size_t>(served.num_entries);
  if (head_entries.size() != heads || merged.size() != heads ||
      served.bias.size() != heads * from_n) {
    return absl::InternalError(absl::StrCat(
        "merged entries for ", merged.size(), " heads, ", head_entries.size(), " counts and ",
        served.bias.size(), " biases in an answer of ", heads, " heads x ", from_n, " entries"));
  }
  for (size_t h = 0; h < heads; ++h) {
    if (head_entries[h] < 0 || static_cast<size_t>(head_entries[h]) > from_n ||
        head_entries[h] + static_cast<int64_t>(merged[h].size()) > n) {
      return absl::InternalError(absl::StrCat("head ", h, " has ", head_entries[h], " kept and ",
                                              merged[h].size(), " merged entries for ", n,
                                              " slots (", from_n, " served)"));
    }
  }
  compressor::LayerEntries out;
  out.num_kv_heads = served.num_kv_heads;
  out.head_dim = served.head_dim;
  out.num_entries = static_cast<int>(n);
  out.keys.assign(heads * n * d, 0.0f);
  out.values.assign(heads * n * d, 0.0f);
  out.bias.assign(heads * n, -std::numeric_limits<float>::infinity());
  out.positions.assign(heads * n, -1);
  for (size_t h = 0; h < heads; ++h) {
    const std::vector<MergedEntry>& extra = merged[h];
    const size_t real = static_cast<size_t>(head_entries[h]);
    size_t slot = h * n + (n - real - extra.size());
    size_t r = h * from_n + (from_n - real);  // the method's first real entry of this head
    const size_t r_end = (h + 1) * from_n;
    auto m = extra.begin();
    for (; r < r_end || m != extra.end(); ++slot) {
      if (m == extra.end() || (r < r_end && served.positions[r] < m->position)) {
        std::copy_n(served.keys.data() + r * d, d, out.keys.data() + slot * d);
        std::copy_n(served.values.data() + r * d, d, out.values.data() + slot * d);
        out.bias[slot] = served.bias[r];
        out.positions[slot] = served.positions[r];
        ++r;
      } else {
        std::copy_n(m->key.data(), d, out.keys.data() + slot * d);
        std::copy_n(m->value.data(), d, out.values.data() + slot * d);
        out.bias[slot] = m->bias;
        out.positions[slot] = m->position;
        ++m;
      }
    }
  }
  return out;
}

// The raw KV of a turn served by token scores; UNAVAILABLE when it was dropped meanwhile.
absl::StatusOr<DecodedLayer> LoadScoredLayer(store::Store& store, const store::SessionKey& key,
                                             const v1::ModelSpec& model, const TurnPlan& turn,
                                             uint32_t layer) {
  absl::StatusOr<DecodedLayer> loaded =
      LoadDecodedLayer(store, key, model, turn.record, layer, /*with_probes=*/false);
  if (absl::IsNotFound(loaded.status())) {
    return absl::UnavailableError(absl::StrCat(
        "the raw KV of turn ", turn.record.turn(),
        " was dropped (--raw_retention) while this answer was served from it; retry: the turn is "
        "then served from its ladder"));
  }
  return loaded;
}

}  // namespace

// The merged entries (TurnPlan::merged) of one layer: their sums, filled turn by turn as the
// assembly reads each scored turn's raw KV in turn order, so that every run is complete when the
// turn holding its last token is built.
class CacheAssembly::MergeSums {
 public:
  // `turns` must outlive the sums.
  MergeSums(std::span<const TurnPlan> turns, uint32_t layer, int head_dim) {
    for (const TurnPlan& turn : turns) {
      if (turn.merged.empty()) continue;
      const size_t first = runs_.size();
      const std::vector<std::vector<MergeRun>>& heads = turn.merged[layer];
      for (size_t h = 0; h < heads.size(); ++h) {
        for (const MergeRun& run : heads[h]) {
          for (const TokenRef& token : run) by_turn_[token.u].push_back({runs_.size(), token.i});
          runs_.push_back({&run, h, compressor::MergedRun(head_dim)});
        }
      }
      served_by_[&turn] = {first, runs_.size()};
    }
  }

  // Whether a run reads tokens of this turn.
  bool Reads(uint32_t turn) const { return by_turn_.contains(static_cast<int>(turn)); }

  // Adds the tokens of `turn` (its raw KV and token scores in `view`) to the runs that hold them.
  void Add(uint32_t turn, const compressor::LayerView& view) {
    const auto tokens = by_turn_.find(static_cast<int>(turn));
    if (tokens == by_turn_.end()) return;
    const size_t t = static_cast<size_t>(view.num_tokens);
    const size_t d = static_cast<size_t>(view.head_dim);
    for (const auto& [run, offset] : tokens->second) {
      Open& open = runs_[run];
      const size_t row = open.head * t + static_cast<size_t>(offset);
      open.sum.Add(view.keys.subspan(row * d, d), view.values.subspan(row * d, d),
                   view.token_scores[row]);
    }
  }

  // [H] the merged entries that `turn` (one of the constructor's) serves, each head's in position
  // order (their runs are complete once that turn was added).
  std::vector<std::vector<MergedEntry>> Take(const TurnPlan& turn, size_t heads) const {
    std::vector<std::vector<MergedEntry>> out(heads);
    const auto range = served_by_.find(&turn);
    if (range == served_by_.end()) return out;
    for (size_t j = range->second.first; j < range->second.second; ++j) {
      const Open& open = runs_[j];
      MergedEntry& e = out[open.head].emplace_back();
      e.position = static_cast<int64_t>(turn.record.first_position()) + open.run->back().i;
      e.key.resize(open.sum.head_dim());
      e.value.resize(open.sum.head_dim());
      open.sum.Finish(e.key, e.value, &e.bias);
    }
    return out;  // runs are in history order within a head, so positions ascend
  }

 private:
  struct Open {
    const MergeRun* run;
    size_t head;
    compressor::MergedRun sum;
  };
  std::vector<Open> runs_;
  // turn number -> (index into runs_, offset) of every token of that turn some run holds.
  std::unordered_map<int, std::vector<std::pair<size_t, int64_t>>> by_turn_;
  // The turn serving each run -> its runs, [first, last) of runs_.
  std::unordered_map<const TurnPlan*, std::pair<size_t, size_t>> served_by_;
};

CacheAssembly::CacheAssembly(store::Store* store, store::SessionKey key,
                             v1::ModelSpec session_model, DType output_dtype,
                             const compressor::Compressor* method, bool bias_free,
                             std::vector<TurnPlan> turns, v1::CacheHeader header,
                             std::optional<store::SegmentRecord> lookahead)
    : store_(store),
      key_(std::move(key)),
      session_model_(std::move(session_model)),
      session_dtype_(*ToTensorDType(session_model_.dtype(), "model.dtype")),
      output_dtype_(output_dtype),
      method_(method),
      bias_free_(bias_free),
      turns_(std::move(turns)),
      header_(std::move(header)),
      lookahead_(std::move(lookahead)) {}

absl::StatusOr<CacheAssembly::TurnBlock> CacheAssembly::RawBlock(const TurnPlan& turn,
                                                                 uint32_t layer) {
  TurnBlock block;
  block.entries = turn.record.num_tokens();
  NEXUSKV_ASSIGN_OR_RETURN(
      block.keys, store_->ReadTensor(key_, turn.record.turn(), layer, store::TensorKind::kKeys));
  NEXUSKV_ASSIGN_OR_RETURN(block.values, store_->ReadTensor(key_, turn.record.turn(), layer,
                                                            store::TensorKind::kValues));
  if (output_dtype_ != session_dtype_) {
    std::vector<float> scratch(block.keys.size() / DTypeSize(session_dtype_));
    for (std::string* tensor : {&block.keys, &block.values}) {
      NEXUSKV_RETURN_IF_ERROR(DecodeToFloat(*tensor, session_dtype_, scratch));
      *tensor = EncodeFromFloat(scratch, output_dtype_);
    }
  }
  const int64_t heads = session_model_.num_kv_heads();
  block.positions.resize(heads * block.entries);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t t = 0; t < block.entries; ++t) {
      block.positions[h * block.entries + t] =
          static_cast<int64_t>(turn.record.first_position()) + t;
    }
  }
  return block;
}

absl::StatusOr<CacheAssembly::TurnBlock> CacheAssembly::CompressedBlock(
    const TurnPlan& turn, uint32_t layer, int64_t entries_per_head,
    std::span<const float> lookahead, MergeSums& merges) {
  // A method that serves from its fit alone (SONIC) reads the raw KV only when it is stored (for
  // top-ups); otherwise it gets the shape.
  const compressor::Compressor* const method = turn.method != nullptr ? turn.method : method_;
  DecodedLayer decoded;
  bool have_layer = false;
  if (turn.scored) {
    NEXUSKV_ASSIGN_OR_RETURN(decoded, LoadScoredLayer(*store_, key_, session_model_, turn, layer));
    have_layer = true;
    merges.Add(turn.record.turn(), decoded.view);
  } else if (turn.load_layer || method->materialize_reads_layer()) {
    absl::StatusOr<DecodedLayer> loaded =
        LoadDecodedLayer(*store_, key_, session_model_, turn.record, layer,
                         /*with_probes=*/false);
    if (loaded.ok()) {
      decoded = *std::move(loaded);
      have_layer = true;
    } else if (!absl::IsNotFound(loaded.status()) || method->materialize_reads_layer()) {
      return loaded.status();
    }
  }
  if (!have_layer) decoded = ShapeOnlyLayer(session_model_, turn.record);
  if (have_layer && !turn.head_entries.empty())
    decoded.view.head_entries = turn.head_entries[layer];
  if (have_layer && !lookahead.empty()) {
    decoded.view.lookahead = lookahead;
    decoded.view.num_lookahead = static_cast<int>(lookahead_->num_probe_queries());
  }
  std::string fit;
  if (method->has_fit() && !turn.scored) {
    NEXUSKV_ASSIGN_OR_RETURN(std::optional<std::string> stored,
                             store_->GetFit(key_, turn.record.turn(), method->name(), layer));
    if (!stored.has_value()) {
      return absl::InternalError(absl::StrCat("the ", std::string(method->name()), " fit of turn ",
                                              turn.record.turn(), " vanished while serving"));
    }
    fit = std::move(*stored);
  }
  // With merged entries the method serves the raw tokens (the fullest head's count), and they
  // are placed among them.
  const bool merging = !turn.merged.empty();
  const int n = static_cast<int>(
      merging ? *std::max_element(turn.head_entries[layer].begin(), turn.head_entries[layer].end())
              : entries_per_head);
  NEXUSKV_ASSIGN_OR_RETURN(compressor::LayerEntries entries,
                           bias_free_ ? method->MaterializeBiasFree(decoded.view, fit, n)
                                      : method->Materialize(decoded.view, fit, n));
  if (merging) {
    NEXUSKV_ASSIGN_OR_RETURN(
        entries, PlaceMerged(entries, turn.head_entries[layer],
                             merges.Take(turn, session_model_.num_kv_heads()), entries_per_head));
  }
  TurnBlock block;
  block.entries = entries.num_entries;
  if (output_dtype_ == DType::kFloat16) {
    // Fitted entries may leave float16's range (raw ones never do): saturate, never send inf.
    for (auto* v : {&entries.keys, &entries.values}) {
      for (float& x : *v) x = std::clamp(x, -65504.0f, 65504.0f);
    }
  }
  block.keys = EncodeFromFloat(entries.keys, output_dtype_);
  block.values = EncodeFromFloat(entries.values, output_dtype_);
  block.bias = std::move(entries.bias);
  block.positions = std::move(entries.positions);
  return block;
}

absl::StatusOr<v1::CacheLayer> CacheAssembly::BuildLayer(uint32_t layer) {
  if (layer >= num_layers()) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is out of range"));
  }
  std::vector<float> lookahead;
  if (lookahead_.has_value() && method_->wants_lookahead()) {
    NEXUSKV_ASSIGN_OR_RETURN(lookahead,
                             LoadProbes(*store_, key_, session_model_, *lookahead_, layer));
  }
  MergeSums merges(turns_, layer, static_cast<int>(session_model_.head_dim()));
  std::vector<TurnBlock> blocks;
  blocks.reserve(turns_.size());
  for (const TurnPlan& turn : turns_) {
    const int64_t n = turn.layer_entries.empty() ? turn.entries : turn.layer_entries[layer];
    if (n == 0) {
      // A turn that serves nothing in this layer may still hold tokens of a later merged entry.
      if (turn.scored && merges.Reads(turn.record.turn())) {
        NEXUSKV_ASSIGN_OR_RETURN(DecodedLayer decoded,
                                 LoadScoredLayer(*store_, key_, session_model_, turn, layer));
        merges.Add(turn.record.turn(), decoded.view);
      }
      continue;
    }
    NEXUSKV_ASSIGN_OR_RETURN(
        TurnBlock block,
        turn.raw ? RawBlock(turn, layer) : CompressedBlock(turn, layer, n, lookahead, merges));
    blocks.push_back(std::move(block));
  }

  const int64_t heads = session_model_.num_kv_heads();
  const size_t row = size_t{session_model_.head_dim()} * DTypeSize(output_dtype_);
  v1::CacheLayer out;
  out.set_layer(layer);
  std::string& keys = *out.mutable_keys();
  std::string& values = *out.mutable_values();
  std::vector<float> bias;
  std::vector<int64_t> positions;
  for (int64_t h = 0; h < heads; ++h) {
    for (const TurnBlock& b : blocks) {
      const size_t offset = h * b.entries * row;
      keys.append(b.keys, offset, b.entries * row);
      values.append(b.values, offset, b.entries * row);
      positions.insert(positions.end(), b.positions.begin() + h * b.entries,
                       b.positions.begin() + (h + 1) * b.entries);
      if (!header_.has_bias()) continue;
      if (b.bias.empty()) {
        bias.insert(bias.end(), b.entries, 0.0f);
      } else {
        bias.insert(bias.end(), b.bias.begin() + h * b.entries,
                    b.bias.begin() + (h + 1) * b.entries);
      }
    }
  }
  out.mutable_positions()->assign(reinterpret_cast<const char*>(positions.data()),
                                  positions.size() * sizeof(int64_t));
  if (header_.has_bias()) {
    out.mutable_bias()->assign(reinterpret_cast<const char*>(bias.data()),
                               bias.size() * sizeof(float));
  }
  return out;
}

}  // namespace nexuskv::service
