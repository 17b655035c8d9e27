#include "service/cache_assembly.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "compressor/scored/answer_bytes.h"
#include "service/internal/layer_loader.h"
#include "service/lookahead.h"
#include "service/validation.h"

namespace nexuskv::service {

namespace v1 = ::nexuskv::v1;
using Variant = TurnPlan::Variant;

// One turn's contribution to one layer, already in the output dtype. A raw turn's keys and
// values stay where the store read them (StoredTensor) until Interleave copies them into the
// answer: one copy from the store's buffer to the layer message.
struct CacheAssembly::TurnBlock {
  int64_t entries = 0;             // n per kv head.
  store::StoredTensor keys;        // [H, n, D]
  store::StoredTensor values;      // [H, n, D]
  std::vector<float> bias;         // [H, n]; empty means all zero.
  std::vector<int64_t> positions;  // [H, n]
};

CacheAssembly::CacheAssembly(store::Store* store, store::SessionKey key, CachePlan plan)
    : store_(store),
      key_(std::move(key)),
      plan_(std::move(plan)),
      session_dtype_(*ToTensorDType(plan_.session_model.dtype(), "model.dtype")) {}

absl::StatusOr<CacheAssembly::TurnBlock> CacheAssembly::RawBlock(const TurnPlan& turn,
                                                                 uint32_t layer) {
  TurnBlock block;
  block.entries = turn.record.num_tokens();
  NEXUSKV_ASSIGN_OR_RETURN(
      block.keys, store_->PinTensor(key_, turn.record.turn(), layer, store::TensorKind::kKeys));
  NEXUSKV_ASSIGN_OR_RETURN(
      block.values, store_->PinTensor(key_, turn.record.turn(), layer, store::TensorKind::kValues));
  if (plan_.output_dtype != session_dtype_) {
    std::vector<float> scratch(block.keys.size() / DTypeSize(session_dtype_));
    for (store::StoredTensor* tensor : {&block.keys, &block.values}) {
      NEXUSKV_RETURN_IF_ERROR(DecodeToFloat(tensor->bytes(), session_dtype_, scratch));
      *tensor = store::StoredTensor(EncodeFromFloat(scratch, plan_.output_dtype));
    }
  }
  const int64_t heads = plan_.session_model.num_kv_heads();
  block.positions.resize(heads * block.entries);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t t = 0; t < block.entries; ++t) {
      block.positions[h * block.entries + t] =
          static_cast<int64_t>(turn.record.first_position()) + t;
    }
  }
  return block;
}

CacheAssembly::TurnBlock CacheAssembly::Encode(compressor::LayerEntries entries) const {
  // Fitted entries may leave float16's range (raw ones never do): AppendAnswerEncoded saturates.
  std::string keys, values;
  compressor::scored::AppendAnswerEncoded(entries.keys, plan_.output_dtype, &keys);
  compressor::scored::AppendAnswerEncoded(entries.values, plan_.output_dtype, &values);
  TurnBlock block;
  block.entries = entries.num_entries;
  block.keys = store::StoredTensor(std::move(keys));
  block.values = store::StoredTensor(std::move(values));
  block.bias = std::move(entries.bias);
  block.positions = std::move(entries.positions);
  return block;
}

absl::StatusOr<CacheAssembly::TurnBlock> CacheAssembly::MethodBlock(
    const TurnPlan& turn, uint32_t layer, int64_t entries, std::span<const float> lookahead) {
  const compressor::Compressor* const method =
      turn.variant == Variant::kFallback ? plan_.fallback : plan_.method;
  const compressor::Capabilities caps = method->capabilities();
  // A method that serves from its fit alone reads the raw KV only when it is stored (top-ups);
  // otherwise it gets the shape.
  DecodedLayer decoded;
  bool have_layer = false;
  if (!turn.record.raw_dropped() || !caps.serves_without_raw) {
    absl::StatusOr<DecodedLayer> loaded = LoadDecodedLayer(
        *store_, key_, plan_.session_model, turn.record, layer, /*with_probes=*/false);
    if (loaded.ok()) {
      decoded = *std::move(loaded);
      have_layer = true;
    } else if (!absl::IsNotFound(loaded.status()) || !caps.serves_without_raw) {
      return loaded.status();
    }
  }
  if (!have_layer) decoded = ShapeOnlyLayer(plan_.session_model, turn.record);
  if (have_layer && !lookahead.empty()) {
    decoded.view.lookahead = lookahead;
    decoded.view.num_lookahead = static_cast<int>(plan_.lookahead->num_probe_queries());
  }
  std::string fit;
  if (caps.fits) {
    NEXUSKV_ASSIGN_OR_RETURN(std::optional<std::string> stored,
                             store_->GetFit(key_, turn.record.turn(), method->name(), layer));
    if (!stored.has_value()) {
      return absl::InternalError(absl::StrCat("the ", std::string(method->name()), " fit of turn ",
                                              turn.record.turn(), " vanished while serving"));
    }
    fit = std::move(*stored);
  }
  const int n = static_cast<int>(entries);
  NEXUSKV_ASSIGN_OR_RETURN(compressor::LayerEntries kept,
                           plan_.bias_free ? method->MaterializeBiasFree(decoded.view, fit, n)
                                           : method->Materialize(decoded.view, fit, n));
  return Encode(std::move(kept));
}

absl::StatusOr<std::vector<compressor::scored::AnswerEntries>> CacheAssembly::ScoredEntries(
    uint32_t layer) {
  const compressor::scored::Selection& selection = *plan_.selection;
  // The stored bytes of every turn the layer reads, where the store read them; the selection
  // copies the rows it keeps into the answer's bytes and decodes only merged runs' rows.
  std::vector<store::StoredTensor> keys(selection.num_turns()), values(selection.num_turns());
  std::vector<compressor::scored::TurnKv> kv(selection.num_turns());
  for (const TurnPlan& turn : plan_.turns) {
    const size_t u = turn.scored_index;
    if (turn.variant != Variant::kScored || !selection.ReadsLayer(u, static_cast<int>(layer))) {
      continue;
    }
    for (auto [kind, bytes] : {std::pair{store::TensorKind::kKeys, &keys[u]},
                               std::pair{store::TensorKind::kValues, &values[u]}}) {
      absl::StatusOr<store::StoredTensor> read =
          store_->PinTensor(key_, turn.record.turn(), layer, kind);
      if (absl::IsNotFound(read.status())) {
        return absl::UnavailableError(absl::StrCat(
            "the raw KV of turn ", turn.record.turn(),
            " was dropped (--raw_retention) while this answer was served from it; retry: the "
            "turn is then served from its fit"));
      }
      NEXUSKV_RETURN_IF_ERROR(read.status());
      *bytes = *std::move(read);
    }
    kv[u] = {keys[u].bytes(), values[u].bytes(), session_dtype_};
  }
  return selection.BuildAnswerLayer(static_cast<int>(layer), kv,
                                    static_cast<int>(plan_.session_model.head_dim()),
                                    plan_.output_dtype);
}

absl::StatusOr<v1::CacheLayer> CacheAssembly::BuildLayer(uint32_t layer) {
  if (layer >= num_layers()) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is out of range"));
  }
  std::vector<float> lookahead;
  if (plan_.lookahead.has_value()) {
    NEXUSKV_ASSIGN_OR_RETURN(
        lookahead, LoadProbes(*store_, key_, plan_.session_model, *plan_.lookahead, layer));
  }
  std::vector<compressor::scored::AnswerEntries> scored;
  if (plan_.selection != nullptr) {
    NEXUSKV_ASSIGN_OR_RETURN(scored, ScoredEntries(layer));
  }
  std::vector<TurnBlock> blocks;
  blocks.reserve(plan_.turns.size());
  for (size_t i = 0; i < plan_.turns.size(); ++i) {
    const TurnPlan& turn = plan_.turns[i];
    const int64_t n = plan_.EntriesIn(i, layer);
    if (n == 0) continue;
    switch (turn.variant) {
      case Variant::kRaw: {
        NEXUSKV_ASSIGN_OR_RETURN(TurnBlock block, RawBlock(turn, layer));
        blocks.push_back(std::move(block));
        break;
      }
      case Variant::kScored: {
        compressor::scored::AnswerEntries& e = scored[turn.scored_index];
        TurnBlock& block = blocks.emplace_back();
        block.entries = e.num_entries;
        block.keys = store::StoredTensor(std::move(e.keys));
        block.values = store::StoredTensor(std::move(e.values));
        block.bias = std::move(e.bias);
        block.positions = std::move(e.positions);
        break;
      }
      default: {
        NEXUSKV_ASSIGN_OR_RETURN(TurnBlock block, MethodBlock(turn, layer, n, lookahead));
        blocks.push_back(std::move(block));
      }
    }
  }
  return Interleave(blocks, layer);
}

v1::CacheLayer CacheAssembly::Interleave(const std::vector<TurnBlock>& blocks,
                                         uint32_t layer) const {
  const int64_t heads = plan_.session_model.num_kv_heads();
  const size_t row = size_t{plan_.session_model.head_dim()} * DTypeSize(plan_.output_dtype);
  const bool has_bias = plan_.header.has_bias();
  v1::CacheLayer out;
  out.set_layer(layer);
  std::string& keys = *out.mutable_keys();
  std::string& values = *out.mutable_values();
  std::vector<float> bias;
  std::vector<int64_t> positions;
  // Sized once: appending into strings that grow by doubling re-copied about as many bytes again.
  int64_t entries = 0;
  for (const TurnBlock& b : blocks) entries += b.entries;
  keys.reserve(heads * entries * row);
  values.reserve(heads * entries * row);
  positions.reserve(heads * entries);
  if (has_bias) bias.reserve(heads * entries);
  for (int64_t h = 0; h < heads; ++h) {
    for (const TurnBlock& b : blocks) {
      const size_t offset = h * b.entries * row;
      keys.append(b.keys.bytes().substr(offset, b.entries * row));
      values.append(b.values.bytes().substr(offset, b.entries * row));
      positions.insert(positions.end(), b.positions.begin() + h * b.entries,
                       b.positions.begin() + (h + 1) * b.entries);
      if (!has_bias) continue;
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
  if (has_bias) {
    out.mutable_bias()->assign(reinterpret_cast<const char*>(bias.data()),
                               bias.size() * sizeof(float));
  }
  return out;
}

}  // namespace nexuskv::service
