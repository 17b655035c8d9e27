#include "service/cache_planner.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "service/lookahead.h"
#include "service/validation.h"

namespace nexuskv::service {
namespace {

namespace v1 = ::nexuskv::v1;
using compressor::scored::Selection;
using compressor::scored::SelectionOptions;

std::string MethodName(const compressor::Compressor* method) {
  return method == nullptr ? std::string("none") : std::string(method->name());
}

// A turn whose raw KV is gone can be served only from a fit that needs none.
absl::Status CheckDropped(const CacheScope& scope,
                          const std::vector<store::SegmentRecord>& segments) {
  const PlannerInputs& in = scope.inputs;
  const compressor::Capabilities caps = in.method->capabilities();
  const bool full = in.request.method() == v1::FULL;
  for (uint32_t t = scope.first; t <= scope.last; ++t) {
    const bool raw = t >= scope.raw_from;
    if (!segments[t].raw_dropped() || !(raw || !caps.serves_without_raw)) continue;
    const std::string why = full  ? "FULL serves raw KV"
                            : raw ? absl::StrCat("keep_recent_turns ",
                                                 in.request.keep_recent_turns(), " asks for it raw")
                                  : absl::StrCat(MethodName(in.method), " selects from the raw KV");
    return absl::FailedPreconditionError(
        absl::StrCat("the raw KV of turn ", t, " of session \"", in.request.session_id(),
                     "\" was dropped (server --raw_retention=", in.raw_retention, ") and ", why,
                     "; ask for method ", MethodName(in.serves_without_raw),
                     ", which serves it from its stored fit",
                     raw && !full ? ", or lower keep_recent_turns" : ""));
  }
  return absl::OkStatus();
}

// Entries per kv head that the compressed turns may hold, from the budget and the raw turns.
absl::StatusOr<int64_t> CompressedBudget(const v1::GetCacheRequest& request,
                                         const v1::ModelSpec& model, DType output_dtype,
                                         bool has_bias, int64_t compressible_tokens,
                                         int64_t raw_tokens) {
  const v1::Budget& budget = request.budget();
  if (budget.has_keep_ratio()) {
    // The small epsilon keeps 0.2 * 10 at 2 despite binary rounding; the answer never exceeds it.
    const auto kept =
        static_cast<int64_t>(std::floor(budget.keep_ratio() * compressible_tokens + 1e-9));
    if (kept + raw_tokens < 1) {
      // 1 / compressible_tokens keeps one token; rounded up so that the printed value does too.
      return absl::InvalidArgumentError(absl::StrCat(
          "budget.keep_ratio ", budget.keep_ratio(), " keeps no entry of the ", compressible_tokens,
          " tokens to compress, in any layer; the smallest keep_ratio that keeps one is ",
          std::ceil(1e6 / static_cast<double>(compressible_tokens)) / 1e6));
    }
    return kept;
  }
  // Every answer holds at least one entry per layer and kv head, and the turns kept raw whole.
  const int64_t least = std::max<int64_t>(raw_tokens, 1);
  const std::string why = raw_tokens > 0
                              ? absl::StrCat("the ", raw_tokens, " tokens of the turns kept raw")
                              : std::string("one entry per layer");
  const char* lower = raw_tokens > 0 ? ", or lower keep_recent_turns" : "";
  if (budget.has_max_tokens()) {
    const auto max_tokens =
        static_cast<int64_t>(std::min<uint64_t>(budget.max_tokens(), INT64_MAX));
    if (max_tokens < least) {
      return absl::InvalidArgumentError(
          absl::StrCat("budget.max_tokens ", budget.max_tokens(), " cannot hold ", why,
                       "; the smallest max_tokens is ", least, lower));
    }
    return max_tokens - raw_tokens;
  }
  const uint64_t per_entry =
      uint64_t{model.num_layers()} * EntryBytes(model, output_dtype, has_bias);
  const auto max_tokens = static_cast<int64_t>(budget.max_bytes() / per_entry);
  if (max_tokens < least) {
    return absl::InvalidArgumentError(absl::StrCat(
        "budget.max_bytes ", budget.max_bytes(), " cannot hold ", why, ": an entry in every layer ",
        "and kv head takes ", per_entry, " bytes (", DTypeName(output_dtype),
        has_bias ? ", with bias" : "", "); the smallest max_bytes is ", least * per_entry, lower));
  }
  return max_tokens - raw_tokens;
}

// The turns of the range, each with its variant, before any budget is spent.
std::vector<TurnPlan> Turns(const CacheScope& scope, const std::vector<store::SegmentRecord>& segs,
                            const LoadedInputs& loaded) {
  std::vector<TurnPlan> turns;
  size_t scored_index = 0;
  for (uint32_t t = scope.first; t <= scope.last; ++t) {
    TurnPlan turn{.record = segs[t]};
    if (t >= scope.raw_from) {
      turn.variant = TurnPlan::Variant::kRaw;
      turn.entries = turn.record.num_tokens();
    } else if (scope.scored) {
      turn.variant = TurnPlan::Variant::kScored;
      turn.scored_index = scored_index++;
    } else if (loaded.missing_fits.contains(t)) {
      turn.variant = TurnPlan::Variant::kFallback;
    }
    turns.push_back(std::move(turn));
  }
  return turns;
}

// Spends `budget` over the compressed turns: one scored selection, or the method's Allocate.
absl::StatusOr<std::shared_ptr<const Selection>> Spend(const CacheScope& scope,
                                                       LoadedInputs& loaded, int64_t budget,
                                                       bool has_bias,
                                                       std::vector<TurnPlan>& turns) {
  const PlannerInputs& in = scope.inputs;
  if (scope.scored) {
    // A biased answer: counts set by each (turn, layer)'s fullest head, filled by every head, and
    // merged entries; its held entries stay within the budget, so every budget kind has them.
    const bool fill = has_bias;
    NEXUSKV_ASSIGN_OR_RETURN(
        Selection selection,
        Selection::Make(std::move(loaded.scored_turns), in.session.model().num_layers(),
                        in.session.model().num_kv_heads(),
                        SelectionOptions{.budget = budget,
                                         .fill_heads = fill,
                                         .bias = has_bias,
                                         .merge_share = fill ? in.merge_share : 0.0,
                                         .lookahead_share = in.lookahead_share}));
    for (TurnPlan& turn : turns) {
      if (turn.variant == TurnPlan::Variant::kScored) {
        turn.entries = selection.mean_entries(turn.scored_index);
      }
    }
    return std::make_shared<const Selection>(std::move(selection));
  }
  std::vector<compressor::TurnShape> shapes;
  for (const TurnPlan& turn : turns) {
    if (turn.variant == TurnPlan::Variant::kRaw) continue;
    const auto summary = loaded.summaries.find(turn.record.turn());
    shapes.push_back({.num_tokens = turn.record.num_tokens(),
                      .session_start = turn.record.turn() == 0,
                      .raw_available = !turn.record.raw_dropped(),
                      .fit_summary = summary == loaded.summaries.end()
                                         ? std::string_view()
                                         : std::string_view(summary->second)});
  }
  const std::vector<int64_t> allocation = in.method->Allocate(shapes, budget);
  size_t i = 0;
  for (TurnPlan& turn : turns) {
    if (turn.variant == TurnPlan::Variant::kRaw) continue;
    turn.entries = allocation[i++];
    // A method that serves from its fit alone gives a whole turn back as its raw KV.
    const compressor::Compressor* serving =
        turn.variant == TurnPlan::Variant::kFallback ? in.fallback : in.method;
    if (turn.entries == turn.record.num_tokens() && serving->capabilities().serves_without_raw) {
      turn.variant = TurnPlan::Variant::kRaw;
    }
  }
  return nullptr;
}

v1::Method WireMethod(const TurnPlan& turn, v1::Method method) {
  switch (turn.variant) {
    case TurnPlan::Variant::kRaw:
      return v1::FULL;
    case TurnPlan::Variant::kFallback:
      return v1::STREAMING_LLM;
    default:
      return method;
  }
}

// The answer's header, from the plan's turns.
v1::CacheHeader Header(const CacheScope& scope, const CachePlan& plan, bool has_bias,
                       const std::vector<std::string>& notes) {
  const PlannerInputs& in = scope.inputs;
  const v1::GetCacheRequest& request = in.request;
  const v1::Method method =
      request.method() == v1::METHOD_UNSPECIFIED ? v1::SONIC : request.method();
  v1::CacheHeader header;
  header.set_session_id(request.session_id());
  *header.mutable_model() = in.session.model();
  header.mutable_model()->set_dtype(request.output_dtype() == v1::DTYPE_UNSPECIFIED
                                        ? in.session.model().dtype()
                                        : request.output_dtype());
  header.set_method(method);
  header.set_next_position(in.session.next_position());
  header.set_has_bias(has_bias);
  uint64_t original = 0;
  for (const TurnPlan& turn : plan.turns) {
    v1::TurnAllocation* a = header.add_turns();
    a->set_turn(turn.record.turn());
    a->set_role(turn.record.role());
    a->set_original_tokens(turn.record.num_tokens());
    a->set_kept_entries(static_cast<uint32_t>(turn.entries));
    a->set_raw(turn.variant == TurnPlan::Variant::kRaw);
    a->set_method(WireMethod(turn, method));
    original += turn.record.num_tokens();
  }
  header.set_original_tokens(original);
  header.set_notes(absl::StrJoin(notes, "; "));
  uint64_t entries = 0;
  for (uint32_t l = 0; l < in.session.model().num_layers(); ++l) {
    uint64_t layer = 0;
    for (size_t i = 0; i < plan.turns.size(); ++i) layer += plan.EntriesIn(i, l);
    header.add_entries_per_layer(static_cast<uint32_t>(layer));
    entries += layer;
  }
  header.set_cache_bytes(entries * EntryBytes(in.session.model(), plan.output_dtype, has_bias));
  return header;
}

}  // namespace

uint64_t EntryBytes(const v1::ModelSpec& model, DType dtype, bool has_bias) {
  return uint64_t{model.num_kv_heads()} *
         (2ull * model.head_dim() * DTypeSize(dtype) + (has_bias ? sizeof(float) : 0));
}

int64_t CachePlan::EntriesIn(size_t i, uint32_t layer) const {
  const TurnPlan& turn = turns[i];
  return turn.variant == TurnPlan::Variant::kScored
             ? selection->entries(turn.scored_index, static_cast<int>(layer))
             : turn.entries;
}

absl::StatusOr<CacheScope> CachePlanner::Scope(PlannerInputs inputs) {
  CacheScope scope;
  const v1::GetCacheRequest& request = inputs.request;
  const uint32_t turns = inputs.session.num_turns();
  scope.first = request.first_turn();
  scope.last = request.has_last_turn() ? request.last_turn() : turns - 1;
  if (scope.last >= turns || scope.first > scope.last) {
    return absl::InvalidArgumentError(absl::StrCat(
        "turn range ", scope.first, "..", scope.last, " is outside session \"",
        request.session_id(), "\", which has turns 0..", static_cast<int64_t>(turns) - 1));
  }
  if (inputs.segments.size() <= scope.last) {
    return absl::NotFoundError(
        absl::StrCat("session \"", request.session_id(), "\" changed while planning; retry"));
  }
  scope.output_dtype = request.output_dtype() == v1::DTYPE_UNSPECIFIED
                           ? *ToTensorDType(inputs.session.model().dtype(), "model.dtype")
                           : *ToTensorDType(request.output_dtype(), "output_dtype");
  const uint32_t count = scope.last - scope.first + 1;
  scope.raw_from = request.method() == v1::FULL || request.keep_recent_turns() >= count
                       ? scope.first
                       : scope.last + 1 - request.keep_recent_turns();
  const compressor::Capabilities caps = inputs.method->capabilities();
  // With the worker's token scores on every compressed turn, and their raw KV, one ranking of all
  // of them spends the budget and no fit is read. max_tokens limits every layer, which a ranking
  // over layers does not keep to; under --raw_retention=drop a fit could drop the raw KV
  // mid-answer, so the turns go to their fits.
  scope.scored =
      caps.prefers_token_scores && !request.budget().has_max_tokens() &&
      !inputs.raw_retention_drops &&
      std::all_of(inputs.segments.begin() + scope.first, inputs.segments.begin() + scope.raw_from,
                  [](const store::SegmentRecord& turn) {
                    return turn.has_token_scores() && !turn.raw_dropped();
                  });
  if (caps.fits && !scope.scored) {
    for (uint32_t t = scope.first; t < scope.raw_from; ++t) scope.fit_turns.push_back(t);
  }
  scope.inputs = std::move(inputs);
  NEXUSKV_RETURN_IF_ERROR(CheckDropped(scope, scope.inputs.segments));
  return scope;
}

absl::StatusOr<CachePlan> CachePlanner::Plan(const CacheScope& scope, LoadedInputs loaded) {
  const PlannerInputs& in = scope.inputs;
  const std::vector<store::SegmentRecord>& segments =
      loaded.segments.empty() ? in.segments : loaded.segments;
  if (segments.size() <= scope.last) {
    return absl::NotFoundError(
        absl::StrCat("session \"", in.request.session_id(), "\" changed while planning; retry"));
  }
  NEXUSKV_RETURN_IF_ERROR(CheckDropped(scope, segments));
  std::vector<std::string> notes;
  for (const auto& [turn, why] : loaded.missing_fits) {
    notes.push_back(absl::StrCat("turn ", turn, ": the ", MethodName(in.method), " fit ", why,
                                 "; served by ", MethodName(in.fallback), " from its raw KV"));
  }
  CachePlan plan;
  plan.session_model = in.session.model();
  plan.output_dtype = scope.output_dtype;
  plan.method = in.method;
  plan.fallback = in.fallback;
  plan.bias_free = in.request.bias_mode() == v1::BIAS_MODE_NONE;
  plan.turns = Turns(scope, segments, loaded);
  // Methods that rank by lookahead get the newest probes of the range, which stand in for the
  // queries that will read the answer (a scored selection ranks by the token scores).
  if (in.method->capabilities().lookahead && !scope.scored) {
    const std::vector<store::SegmentRecord> range(segments.begin() + scope.first,
                                                  segments.begin() + scope.last + 1);
    if (const std::optional<size_t> newest = NewestProbeTurn(range)) {
      plan.lookahead = range[*newest];
    }
  }
  int64_t raw_tokens = 0;
  int64_t compressible_tokens = 0;
  for (const TurnPlan& turn : plan.turns) {
    (turn.variant == TurnPlan::Variant::kRaw ? raw_tokens : compressible_tokens) +=
        turn.record.num_tokens();
  }
  // A method that adds bias sends it unless the engine takes none (BIAS_MODE_NONE).
  const bool has_bias = in.method->capabilities().bias && !plan.bias_free;
  if (compressible_tokens > 0) {
    NEXUSKV_ASSIGN_OR_RETURN(const int64_t budget,
                             CompressedBudget(in.request, in.session.model(), scope.output_dtype,
                                              has_bias, compressible_tokens, raw_tokens));
    NEXUSKV_ASSIGN_OR_RETURN(plan.selection, Spend(scope, loaded, budget, has_bias, plan.turns));
  }
  plan.header = Header(scope, plan, has_bias, notes);
  return plan;
}

}  // namespace nexuskv::service
