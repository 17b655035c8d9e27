#include "service/kv_memory_core.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "compressor/merge.h"
#include "service/internal/layer_loader.h"
#include "service/lookahead.h"
#include "service/score_budget.h"
#include "service/validation.h"
#include "store/key_codec.h"

namespace nexuskv::service {
namespace {

namespace v1 = ::nexuskv::v1;

v1::SessionInfo ToSessionInfo(const store::SessionRecord& r) {
  v1::SessionInfo info;
  info.set_session_id(r.session_id());
  *info.mutable_model() = r.model();
  info.set_num_turns(r.num_turns());
  info.set_total_tokens(r.total_tokens());
  info.set_next_position(r.next_position());
  info.set_raw_bytes(r.raw_bytes());
  info.set_compressed_bytes(r.compressed_bytes());
  info.set_create_time_unix_ms(r.create_time_unix_ms());
  info.set_update_time_unix_ms(r.update_time_unix_ms());
  info.set_expire_time_unix_ms(r.expire_time_unix_ms());
  const uint64_t stored_raw = r.raw_bytes() - std::min(r.dropped_raw_bytes(), r.raw_bytes());
  info.set_stored_raw_bytes(stored_raw);
  info.set_stored_bytes(stored_raw + r.compressed_bytes());
  return info;
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
  if (budget.has_max_tokens()) {
    const auto max_tokens =
        static_cast<int64_t>(std::min<uint64_t>(budget.max_tokens(), INT64_MAX));
    if (max_tokens < least) {
      return absl::InvalidArgumentError(
          absl::StrCat("budget.max_tokens ", budget.max_tokens(), " cannot hold ", why,
                       "; the smallest max_tokens is ", least,
                       raw_tokens > 0 ? ", or lower keep_recent_turns" : ""));
    }
    return max_tokens - raw_tokens;
  }
  const uint64_t per_entry =
      uint64_t{model.num_layers()} * model.num_kv_heads() *
      (2ull * model.head_dim() * DTypeSize(output_dtype) + (has_bias ? 4 : 0));
  const auto max_tokens = static_cast<int64_t>(budget.max_bytes() / per_entry);
  if (max_tokens < least) {
    return absl::InvalidArgumentError(absl::StrCat(
        "budget.max_bytes ", budget.max_bytes(), " cannot hold ", why, ": an entry in every layer ",
        "and kv head takes ", per_entry, " bytes (", DTypeName(output_dtype),
        has_bias ? ", with bias" : "", "); the smallest max_bytes is ", least * per_entry,
        raw_tokens > 0 ? ", or lower keep_recent_turns" : ""));
  }
  return max_tokens - raw_tokens;
}

// Spends `budget` (entries per kv head over the compressed turns of `plan`) by the worker's token
// scores, which every compressed turn has: sets their per-layer entries, and with `pad_heads`
// (biased answers) each head's own count (service/score_budget.h). Of a padded budget,
// `merge_share` goes to merged entries, each standing for a run of evicted tokens.
absl::Status SpendScoredBudget(store::Store& store, const store::SessionKey& key,
                               const v1::ModelSpec& model, int64_t budget, bool pad_heads,
                               double merge_share, std::vector<TurnPlan>& plan) {
  std::vector<TurnPlan*> turns;
  std::vector<int64_t> tokens;
  std::vector<std::vector<std::vector<float>>> scores;
  int sink_turn = -1;
  for (TurnPlan& turn : plan) {
    if (turn.raw) continue;
    if (turn.record.turn() == 0) sink_turn = static_cast<int>(turns.size());
    std::vector<std::vector<float>> layers;
    for (uint32_t l = 0; l < model.num_layers(); ++l) {
      NEXUSKV_ASSIGN_OR_RETURN(std::vector<float> s, LoadTokenScores(store, key, turn.record, l));
      if (s.size() != size_t{model.num_kv_heads()} * turn.record.num_tokens()) {
        return absl::DataLossError(absl::StrCat("the token scores of turn ", turn.record.turn(),
                                                " layer ", l, " have ", s.size(), " values"));
      }
      layers.push_back(std::move(s));
    }
    scores.push_back(std::move(layers));
    turns.push_back(&turn);
    tokens.push_back(turn.record.num_tokens());
  }
  // Merged entries only replace tokens the budget cannot hold.
  int64_t tokens_per_head = 0;
  for (int64_t t : tokens) tokens_per_head += t;
  const int64_t merge_entries =
      pad_heads ? std::clamp<int64_t>(std::llround(merge_share * budget), 0,
                                      std::max<int64_t>(tokens_per_head - budget, 0))
                : 0;
  const HeadCounts kept =
      SpendByTokenScores(scores, model.num_kv_heads(), tokens, budget - merge_entries, sink_turn);
  const std::vector<std::vector<int64_t>> even = EvenOverHeads(kept);
  const int64_t layers = model.num_layers();
  const int64_t heads = model.num_kv_heads();
  // Each merged entry is served by the turn holding its run's last token.
  HeadCounts served = kept;
  const auto runs = PlanMergeRuns(scores, heads, tokens, kept, merge_entries,
                                  compressor::kMergeRunLength, sink_turn);
  for (int64_t l = 0; l < layers && merge_entries > 0; ++l) {
    for (int64_t h = 0; h < heads; ++h) {
      for (MergeRun run : runs[l][h]) {
        const int owner = run.back().u;
        for (TokenRef& token : run) token.u = static_cast<int>(turns[token.u]->record.turn());
        std::vector<std::vector<std::vector<MergeRun>>>& merged = turns[owner]->merged;
        if (merged.empty()) merged.assign(layers, std::vector<std::vector<MergeRun>>(heads));
        merged[l][h].push_back(std::move(run));
        ++served[owner][l][h];
      }
    }
  }
  const std::vector<std::vector<int64_t>> even_served = EvenOverHeads(served);
  for (size_t u = 0; u < turns.size(); ++u) {
    int64_t real = 0;  // entries per head, summed over layers
    if (pad_heads) {
      turns[u]->head_entries = kept[u];
      for (const std::vector<int64_t>& layer : served[u]) {
        turns[u]->layer_entries.push_back(*std::max_element(layer.begin(), layer.end()));
      }
      for (int64_t x : even_served[u]) real += x;
    } else {
      turns[u]->layer_entries = even[u];
      for (int64_t x : even[u]) real += x;
    }
    // The mean real entries per kv head and layer, for TurnAllocation.kept_entries.
    turns[u]->entries = (real + layers / 2) / layers;
  }
  return absl::OkStatus();
}

}  // namespace

KvMemoryCore::KvMemoryCore(store::Store* store, const compressor::CompressorRegistry* registry,
                           CoreOptions options)
    : store_(store),
      registry_(registry),
      options_(std::move(options)),
      fits_(
          store, options_.fit_threads, options_.fit_queue,
          [this](const FitJob& job) {
            if (job.method->name() == kRawRetentionFit) ApplyRetention(job.key);
          },
          options_.on_fit_done, options_.fit_nice) {
  if (options_.raw_retention.mode == RawRetention::Mode::kAfter &&
      options_.raw_retention.sweep > absl::ZeroDuration()) {
    sweeper_ = std::thread([this] { SweepLoop(); });
  }
}

KvMemoryCore::~KvMemoryCore() { Shutdown(); }

void KvMemoryCore::Shutdown() {
  if (!stop_sweeper_.HasBeenNotified()) stop_sweeper_.Notify();
  if (sweeper_.joinable()) sweeper_.join();
  fits_.Shutdown();
}

void KvMemoryCore::ApplyRetention(const store::SessionKey& key) {
  absl::StatusOr<uint32_t> dropped =
      ApplyRawRetention(*store_, key, options_.raw_retention, absl::Now());
  if (!dropped.ok() && !absl::IsNotFound(dropped.status())) {
    Log(LogLevel::kWarning, "raw_retention_failed",
        {{"session", key.session_id}, {"status", dropped.status().ToString()}});
  }
}

void KvMemoryCore::SweepLoop() {
  while (!stop_sweeper_.WaitForNotificationWithTimeout(options_.raw_retention.sweep)) {
    absl::StatusOr<std::vector<store::SessionKey>> keys = store_->ListSessionKeys();
    if (!keys.ok()) {
      Log(LogLevel::kWarning, "raw_retention_sweep_failed", {{"status", keys.status().ToString()}});
      continue;
    }
    for (const store::SessionKey& key : *keys) {
      if (stop_sweeper_.HasBeenNotified()) return;
      ApplyRetention(key);
    }
  }
}

absl::StatusOr<v1::AppendSegmentResponse> KvMemoryCore::Append(std::string_view tenant,
                                                               AssembledSegment segment) {
  const v1::SegmentHeader& h = segment.header;
  store::SegmentRecord record;
  record.set_turn(h.turn());
  record.set_num_tokens(h.num_tokens());
  record.set_first_position(h.first_position());
  record.set_role(h.role());
  record.set_num_probe_queries(h.num_probe_queries());
  record.set_ttl_seconds(h.ttl_seconds());
  *record.mutable_nexus_offsets() = h.nexus_offsets();
  *record.mutable_probe_offsets() = h.probe_offsets();
  record.set_has_token_scores(h.has_token_scores());
  record.set_append_time_unix_ms(absl::ToUnixMillis(absl::Now()));
  uint64_t bytes = 0;
  for (const store::LayerTensors& l : segment.layers) {
    bytes += l.keys.size() + l.values.size() + l.probe_queries.size() + l.token_scores.size();
  }
  record.set_raw_bytes(bytes);

  store::SessionKey key{std::string(tenant), h.session_id()};
  NEXUSKV_ASSIGN_OR_RETURN(store::AppendOutcome outcome,
                           store_->AppendSegment(key, h.model(), record, segment.layers));
  if (!outcome.already_stored && options_.precompute_fits) {
    for (std::string_view name : registry_->names()) {
      const compressor::Compressor* method = registry_->Find(name);
      if (method->has_fit()) fits_.Submit(FitJob{key, h.model(), record, method});
    }
  }
  if (!outcome.already_stored) ApplyRetention(key);
  Log(LogLevel::kInfo, "segment_appended",
      {{"tenant", tenant},
       {"session", h.session_id()},
       {"turn", h.turn()},
       {"tokens", h.num_tokens()},
       {"bytes", bytes},
       {"already_stored", outcome.already_stored}});

  v1::AppendSegmentResponse response;
  response.set_session_id(h.session_id());
  response.set_turn(h.turn());
  response.set_already_stored(outcome.already_stored);
  response.set_num_turns(outcome.session.num_turns());
  response.set_next_position(outcome.session.next_position());
  response.set_stored_bytes(bytes);
  return response;
}

absl::StatusOr<std::unique_ptr<CacheAssembly>> KvMemoryCore::PlanCache(
    std::string_view tenant, const v1::GetCacheRequest& request) {
  NEXUSKV_RETURN_IF_ERROR(ValidateGetCacheRequest(request));
  const v1::Method method =
      request.method() == v1::METHOD_UNSPECIFIED ? v1::SONIC : request.method();
  const std::string& method_name = v1::Method_Name(method);
  const compressor::Compressor* compressor = registry_->Find(method_name);
  if (compressor == nullptr) {
    return absl::UnimplementedError(
        absl::StrCat("method ", method_name, " is not available in this server; available: ",
                     absl::StrJoin(registry_->names(), ", ", AppendView)));
  }

  store::SessionKey key{std::string(tenant), request.session_id()};
  NEXUSKV_ASSIGN_OR_RETURN(store::SessionRecord session, store_->GetSession(key));
  NEXUSKV_ASSIGN_OR_RETURN(std::vector<store::SegmentRecord> segments, store_->ListSegments(key));
  const uint32_t last = request.has_last_turn() ? request.last_turn() : session.num_turns() - 1;
  if (last >= session.num_turns() || request.first_turn() > last) {
    return absl::InvalidArgumentError(
        absl::StrCat("turn range ", request.first_turn(), "..", last, " is outside session \"",
                     request.session_id(), "\", which has turns 0..", session.num_turns() - 1));
  }

  const DType output_dtype = request.output_dtype() == v1::DTYPE_UNSPECIFIED
                                 ? *ToTensorDType(session.model().dtype(), "model.dtype")
                                 : *ToTensorDType(request.output_dtype(), "output_dtype");
  const uint32_t count = last - request.first_turn() + 1;
  const uint32_t raw_from = method == v1::FULL || request.keep_recent_turns() >= count
                                ? request.first_turn()
                                : last + 1 - request.keep_recent_turns();

  // Turns whose raw KV is gone can only be served from a fit that needs no raw (SONIC).
  auto check_dropped = [&]() -> absl::Status {
    for (uint32_t t = request.first_turn(); t <= last; ++t) {
      const bool raw = t >= raw_from;
      if (!segments[t].raw_dropped() || !(raw || compressor->materialize_reads_layer())) continue;
      const std::string why = method == v1::FULL ? "FULL serves raw KV"
                              : raw              ? absl::StrCat("keep_recent_turns ",
                                                                request.keep_recent_turns(), " asks for it raw")
                                    : absl::StrCat(method_name, " selects from the raw KV");
      return absl::FailedPreconditionError(absl::StrCat(
          "the raw KV of turn ", t, " of session \"", request.session_id(),
          "\" was dropped (server --raw_retention=", options_.raw_retention.ToString(), ") and ",
          why, "; ask for method SONIC, which serves it from its stored ladder",
          raw && method != v1::FULL ? ", or lower keep_recent_turns" : ""));
    }
    return absl::OkStatus();
  };
  NEXUSKV_RETURN_IF_ERROR(check_dropped());

  // With the worker's token scores on every compressed turn, and their raw KV, one ranking of all
  // of them spends the budget (service/score_budget.h) and the method serves raw tokens: no fit is
  // read, so none is waited for. max_tokens limits every layer, which a ranking over layers does
  // not keep to. Under --raw_retention=drop a fit would drop the raw KV mid-answer, so the fits run
  // first and the turns go to their ladders.
  const bool scored =
      compressor->spends_token_scores() && !request.budget().has_max_tokens() &&
      options_.raw_retention.mode != RawRetention::Mode::kDrop &&
      std::all_of(segments.begin() + request.first_turn(), segments.begin() + raw_from,
                  [](const store::SegmentRecord& turn) {
                    return turn.has_token_scores() && !turn.raw_dropped();
                  });

  // Fits first: a method with a per-turn summary allocates from it, and storing a SONIC ladder may
  // drop raw KV (raw_retention), so the turn records are read again afterwards.
  // A turn whose fit fails (the method refused its data) is not lost: it is served from its raw KV
  // by STREAMING_LLM, which needs no fit, and the header's notes say so.
  std::vector<std::string> summaries(count);
  std::vector<bool> fit_failed(count, false);
  std::vector<std::string> notes;
  const compressor::Compressor* const fallback = registry_->Find("STREAMING_LLM");
  if (compressor->has_fit() && !scored) {
    for (uint32_t t = request.first_turn(); t < raw_from; ++t) {
      if (absl::Status fit = fits_.Ensure(FitJob{key, session.model(), segments[t], compressor});
          !fit.ok()) {
        // Store errors (DATA_LOSS, NOT_FOUND, ...) pass through; so does a failure on a turn
        // whose raw KV is gone, which leaves nothing to fall back to.
        if (fallback == nullptr || segments[t].raw_dropped() ||
            (!absl::IsInvalidArgument(fit) && !absl::IsInternal(fit) &&
             !absl::IsFailedPrecondition(fit) && !absl::IsOutOfRange(fit))) {
          return fit;
        }
        fit_failed[t - request.first_turn()] = true;
        notes.push_back(absl::StrCat("turn ", t, ": the ", method_name, " fit failed (",
                                     std::string(fit.message()),
                                     "); served by STREAMING_LLM from its raw KV"));
        Log(LogLevel::kWarning, "fit_failed_fallback",
            {{"tenant", std::string(tenant)},
             {"session", request.session_id()},
             {"turn", t},
             {"method", method_name},
             {"status", fit.ToString()}});
        continue;
      }
      NEXUSKV_ASSIGN_OR_RETURN(
          std::optional<std::string> summary,
          store_->GetFit(key, t, compressor->name(), store::Store::kFitSummaryLayer));
      if (summary) summaries[t - request.first_turn()] = *std::move(summary);
    }
    NEXUSKV_ASSIGN_OR_RETURN(segments, store_->ListSegments(key));
    if (segments.size() <= last) {
      return absl::NotFoundError(
          absl::StrCat("session \"", request.session_id(), "\" changed while planning; retry"));
    }
    NEXUSKV_RETURN_IF_ERROR(check_dropped());
  }

  // Methods that rank by lookahead (SONIC) get the newest probes of the range, which stand in for
  // the queries that will read the answer.
  std::optional<store::SegmentRecord> lookahead_turn;
  if (compressor->wants_lookahead()) {
    const std::vector<store::SegmentRecord> range(segments.begin() + request.first_turn(),
                                                  segments.begin() + last + 1);
    if (const std::optional<size_t> newest = NewestProbeTurn(range)) {
      lookahead_turn = range[*newest];
    }
  }

  std::vector<TurnPlan> plan;
  std::vector<compressor::TurnShape> shapes;
  int64_t raw_tokens = 0;
  int64_t compressible_tokens = 0;
  for (uint32_t t = request.first_turn(); t <= last; ++t) {
    TurnPlan turn{.record = segments[t], .raw = t >= raw_from};
    turn.scored = scored && !turn.raw;
    if (!turn.raw && fit_failed[t - request.first_turn()]) turn.method = fallback;
    const bool dropped = turn.record.raw_dropped();
    turn.load_layer = !dropped;
    if (turn.raw) {
      turn.entries = turn.record.num_tokens();
      raw_tokens += turn.entries;
    } else {
      compressible_tokens += turn.record.num_tokens();
      shapes.push_back({.num_tokens = turn.record.num_tokens(),
                        .session_start = t == 0,
                        .raw_available = !dropped,
                        .fit_summary = summaries[t - request.first_turn()]});
    }
    plan.push_back(std::move(turn));
  }

  // A method that adds bias (SONIC) sends it unless the engine takes none (BIAS_MODE_NONE).
  const bool has_bias = compressor->adds_bias() && request.bias_mode() != v1::BIAS_MODE_NONE;
  if (!shapes.empty()) {
    NEXUSKV_ASSIGN_OR_RETURN(int64_t budget,
                             CompressedBudget(request, session.model(), output_dtype, has_bias,
                                              compressible_tokens, raw_tokens));
    // Scored turns (above) share one ranking; otherwise the method allocates per turn. max_bytes
    // limits the whole answer, padding included, so it gets no padding.
    if (scored) {
      NEXUSKV_RETURN_IF_ERROR(SpendScoredBudget(*store_, key, session.model(), budget,
                                                has_bias && request.budget().has_keep_ratio(),
                                                options_.merge_share, plan));
    }
    const std::vector<int64_t> allocation =
        scored ? std::vector<int64_t>() : compressor->Allocate(shapes, budget);
    size_t i = 0;
    for (TurnPlan& turn : plan) {
      if (scored) break;
      if (turn.raw) continue;
      turn.entries = allocation[i++];
      // A method that serves from its fit alone gives a whole turn back as its raw KV.
      const compressor::Compressor* serving = turn.method != nullptr ? turn.method : compressor;
      if (turn.entries == turn.record.num_tokens() && !serving->materialize_reads_layer()) {
        turn.raw = true;
      }
    }
  }

  v1::CacheHeader header;
  header.set_session_id(request.session_id());
  *header.mutable_model() = session.model();
  header.mutable_model()->set_dtype(request.output_dtype() == v1::DTYPE_UNSPECIFIED
                                        ? session.model().dtype()
                                        : request.output_dtype());
  header.set_method(method);
  header.set_next_position(session.next_position());
  header.set_has_bias(has_bias);
  std::vector<int64_t> layer_entries(session.model().num_layers(), 0);
  uint64_t original = 0;
  for (const TurnPlan& turn : plan) {
    v1::TurnAllocation* a = header.add_turns();
    a->set_turn(turn.record.turn());
    a->set_role(turn.record.role());
    a->set_original_tokens(turn.record.num_tokens());
    a->set_kept_entries(static_cast<uint32_t>(turn.entries));
    a->set_raw(turn.raw);
    a->set_method(turn.raw ? v1::FULL : turn.method != nullptr ? v1::STREAMING_LLM : method);
    for (size_t l = 0; l < layer_entries.size(); ++l) {
      layer_entries[l] += turn.layer_entries.empty() ? turn.entries : turn.layer_entries[l];
    }
    original += turn.record.num_tokens();
  }
  header.set_original_tokens(original);
  header.set_notes(absl::StrJoin(notes, "; "));
  uint64_t entries = 0;
  for (int64_t n : layer_entries) {
    header.add_entries_per_layer(static_cast<uint32_t>(n));
    entries += n;
  }
  const v1::ModelSpec& m = session.model();
  header.set_cache_bytes(entries * m.num_kv_heads() *
                         (2ull * m.head_dim() * DTypeSize(output_dtype) + (has_bias ? 4 : 0)));
  return std::make_unique<CacheAssembly>(store_, std::move(key), session.model(), output_dtype,
                                         compressor, request.bias_mode() == v1::BIAS_MODE_NONE,
                                         std::move(plan), std::move(header),
                                         std::move(lookahead_turn));
}

absl::StatusOr<v1::SessionInfo> KvMemoryCore::GetSession(std::string_view tenant,
                                                         std::string_view session_id) {
  NEXUSKV_RETURN_IF_ERROR(store::ValidateId("session_id", session_id));
  store::SessionKey key{std::string(tenant), std::string(session_id)};
  NEXUSKV_ASSIGN_OR_RETURN(store::SessionRecord session, store_->GetSession(key));
  NEXUSKV_ASSIGN_OR_RETURN(std::vector<store::SegmentRecord> segments, store_->ListSegments(key));
  v1::SessionInfo info = ToSessionInfo(session);
  for (const store::SegmentRecord& s : segments) {
    v1::TurnInfo* t = info.add_turns();
    t->set_turn(s.turn());
    t->set_role(s.role());
    t->set_num_tokens(s.num_tokens());
    t->set_first_position(s.first_position());
    t->set_num_probe_queries(s.num_probe_queries());
    t->set_raw_bytes(s.raw_bytes());
    t->set_raw_dropped(s.raw_dropped());
    NEXUSKV_RETURN_IF_ERROR(DescribeFits(key, s.turn(), *t));
  }
  return info;
}

absl::Status KvMemoryCore::DescribeFits(const store::SessionKey& key, uint32_t turn,
                                        v1::TurnInfo& info) const {
  for (int id = v1::Method_MIN; id <= v1::Method_MAX; ++id) {  // in Method order
    if (!v1::Method_IsValid(id)) continue;
    const std::string name = v1::Method_Name(static_cast<v1::Method>(id));
    const compressor::Compressor* method = registry_->Find(name);
    if (method == nullptr || !method->has_fit()) continue;
    v1::FitStatus* fit = info.add_fits();
    fit->set_method(static_cast<v1::Method>(id));
    NEXUSKV_ASSIGN_OR_RETURN(const bool stored, store_->HasFit(key, turn, name));
    if (stored) {
      fit->set_state(v1::FIT_STORED);
    } else if (std::optional<absl::Status> failure = fits_.LastFailure(key, turn, name)) {
      fit->set_state(v1::FIT_FAILED);
      fit->set_error(std::string(failure->message()));
    } else {
      fit->set_state(v1::FIT_PENDING);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::ListSessionsResponse> KvMemoryCore::ListSessions(
    std::string_view tenant, const v1::ListSessionsRequest& request) {
  constexpr uint32_t kDefaultPageSize = 100;
  constexpr uint32_t kMaxPageSize = 1000;
  const uint32_t page_size = request.page_size() == 0 ? kDefaultPageSize : request.page_size();
  if (page_size > kMaxPageSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size ", page_size, " is over the maximum of ", kMaxPageSize));
  }
  NEXUSKV_ASSIGN_OR_RETURN(
      store::SessionPage page,
      store_->ListSessions(tenant, request.prefix(), request.page_token(), page_size));
  v1::ListSessionsResponse response;
  for (const store::SessionRecord& r : page.sessions) *response.add_sessions() = ToSessionInfo(r);
  response.set_next_page_token(page.next_page_token);
  return response;
}

absl::StatusOr<v1::DeleteSessionResponse> KvMemoryCore::DeleteSession(std::string_view tenant,
                                                                      std::string_view session_id) {
  NEXUSKV_RETURN_IF_ERROR(store::ValidateId("session_id", session_id));
  const store::SessionKey key{std::string(tenant), std::string(session_id)};
  NEXUSKV_ASSIGN_OR_RETURN(store::DeleteOutcome outcome, store_->DeleteSession(key));
  fits_.ForgetSession(key);
  Log(LogLevel::kInfo, "session_deleted",
      {{"tenant", tenant},
       {"session", session_id},
       {"turns", outcome.deleted_turns},
       {"bytes", outcome.freed_bytes}});
  v1::DeleteSessionResponse response;
  response.set_deleted_turns(outcome.deleted_turns);
  response.set_freed_bytes(outcome.freed_bytes);
  return response;
}

}  // namespace nexuskv::service
