#include "service/cache_assembly.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "common/status_macros.h"
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
    std::span<const float> lookahead) {
  // A method that serves from its fit alone (SONIC) reads the raw KV only when it is stored (for
  // top-ups); otherwise it gets the shape.
  const compressor::Compressor* const method = turn.method != nullptr ? turn.method : method_;
  DecodedLayer decoded;
  bool have_layer = false;
  if (turn.load_layer || method->materialize_reads_layer()) {
    absl::StatusOr<DecodedLayer> loaded =
        LoadDecodedLayer(*store_, key_, session_model_, turn.record, layer,
                         /*with_probes=*/false);
    if (loaded.ok()) {
      decoded = *std::move(loaded);
      have_layer = true;
    } else if (turn.scored && absl::IsNotFound(loaded.status())) {
      return absl::UnavailableError(absl::StrCat(
          "the raw KV of turn ", turn.record.turn(),
          " was dropped (--raw_retention) while this answer was served from it; retry: the turn is "
          "then served from its ladder"));
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
  const int n = static_cast<int>(entries_per_head);
  NEXUSKV_ASSIGN_OR_RETURN(compressor::LayerEntries entries,
                           bias_free_ ? method->MaterializeBiasFree(decoded.view, fit, n)
                                      : method->Materialize(decoded.view, fit, n));
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
  std::vector<TurnBlock> blocks;
  blocks.reserve(turns_.size());
  for (const TurnPlan& turn : turns_) {
    const int64_t n = turn.layer_entries.empty() ? turn.entries : turn.layer_entries[layer];
    if (n == 0) continue;
    NEXUSKV_ASSIGN_OR_RETURN(TurnBlock block, turn.raw
                                                  ? RawBlock(turn, layer)
                                                  : CompressedBlock(turn, layer, n, lookahead));
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
