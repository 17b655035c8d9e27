#include "service/kv_memory_core.h"

#include <algorithm>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "compressor/scored/lookahead.h"
#include "service/internal/layer_loader.h"
#include "service/lookahead.h"
#include "service/records.h"
#include "service/validation.h"
#include "store/key_codec.h"

namespace nexuskv::service {
namespace v1 = ::nexuskv::v1;

KvMemoryCore::KvMemoryCore(store::Store* store, const compressor::CompressorRegistry* registry,
                           CoreOptions options)
    : store_(store),
      registry_(registry),
      options_(std::move(options)),
      fits_(
          store, options_.fit_threads, options_.fit_queue,
          [this](const FitJob& job) {
            if (job.method->capabilities().serves_without_raw) ApplyRetention(job.key);
          },
          options_.on_fit_done, options_.fit_nice,
          FitQueueOptions{.max_queued_bytes = options_.fit_queue_bytes,
                          .max_batch = options_.fit_batch,
                          .max_deferred = options_.fit_deferred,
                          .observer = options_.on_fit_queue}) {
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
  const compressor::Compressor* serving = registry_->ServesWithoutRaw();
  if (serving == nullptr) return;  // nothing could serve a dropped turn
  absl::StatusOr<uint32_t> dropped =
      ApplyRawRetention(*store_, key, options_.raw_retention, absl::Now(), serving->name());
  if (!dropped.ok() && !absl::IsNotFound(dropped.status())) {
    Log(LogLevel::kWarning, "raw_retention_failed",
        {{"session", key.session_id}, {"status", dropped.status().ToString()}});
  }
}

bool KvMemoryCore::FitIsRead(const compressor::Compressor& method,
                             const store::SegmentRecord& record) const {
  const compressor::Capabilities caps = method.capabilities();
  return caps.fits && !(caps.prefers_token_scores && record.has_token_scores() &&
                        options_.raw_retention.mode == RawRetention::Mode::kKeep);
}

absl::StatusOr<std::optional<FitReservation>> KvMemoryCore::ReserveFits(
    const store::SessionKey& key, const store::SegmentRecord& record, size_t jobs) {
  const uint64_t bytes = jobs * record.raw_bytes();
  if (std::optional<FitReservation> room = fits_.TryReserve(jobs, bytes)) return room;
  if (options_.fit_queue_full == CoreOptions::WhenFitQueueFull::kDefer) return std::nullopt;
  // The queue is full. A turn sent again after it was stored queues nothing: never held back.
  if (const absl::StatusOr<store::SessionRecord> session = store_->GetSession(key);
      session.ok() && record.turn() < session->num_turns()) {
    return std::optional<FitReservation>(FitReservation());
  }
  absl::StatusOr<FitReservation> room = fits_.Reserve(jobs, bytes, options_.fit_backpressure);
  if (room.ok()) return std::optional<FitReservation>(*std::move(room));
  Log(LogLevel::kWarning, "append_backpressure",
      {{"tenant", key.tenant},
       {"session", key.session_id},
       {"turn", record.turn()},
       {"status", room.status().ToString()}});
  // The same code and retry hint, with the turn it is about.
  absl::Status refused(room.status().code(),
                       absl::StrCat("turn ", record.turn(), " of session \"", key.session_id,
                                    "\" was not stored: ", room.status().message()));
  room.status().ForEachPayload([&refused](absl::string_view url, const absl::Cord& payload) {
    refused.SetPayload(url, payload);
  });
  return refused;
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
  const store::SegmentRecord record = SegmentRecordOf(h, segment.layers, absl::Now());
  const uint64_t bytes = record.raw_bytes();

  store::SessionKey key{std::string(tenant), h.session_id()};
  std::vector<const compressor::Compressor*> fitted;  // The methods whose fits the turn queues.
  if (options_.precompute_fits) {
    for (std::string_view name : registry_->names()) {
      const compressor::Compressor* method = registry_->Find(name);
      if (FitIsRead(*method, record)) fitted.push_back(method);
    }
  }
  // Room for the fits before the turn is stored: a refused append stores nothing. No room
  // (nullopt) means the fits are deferred.
  std::optional<FitReservation> room = FitReservation();
  if (!fitted.empty()) {
    NEXUSKV_ASSIGN_OR_RETURN(room, ReserveFits(key, record, fitted.size()));
  }
  NEXUSKV_ASSIGN_OR_RETURN(store::AppendOutcome outcome,
                           store_->AppendSegment(key, h.model(), record, segment.layers));
  if (!outcome.already_stored) {
    for (const compressor::Compressor* method : fitted) {
      FitJob job{key, h.model(), record, method};
      if (room.has_value()) {
        fits_.Submit(std::move(job), *room);
      } else {
        fits_.Defer(std::move(job));
      }
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
  PlannerInputs in{.request = request,
                   .method = registry_->Find(method_name),
                   .fallback = registry_->Fallback(),
                   .serves_without_raw = registry_->ServesWithoutRaw(),
                   .raw_retention = options_.raw_retention.ToString(),
                   .raw_retention_drops = options_.raw_retention.mode == RawRetention::Mode::kDrop,
                   .merge_share = options_.merge_share,
                   .lookahead_share = options_.lookahead_share};
  if (in.method == nullptr) {
    return absl::UnimplementedError(
        absl::StrCat("method ", method_name, " is not available in this server; available: ",
                     absl::StrJoin(registry_->names(), ", ", AppendView)));
  }
  store::SessionKey key{std::string(tenant), request.session_id()};
  NEXUSKV_ASSIGN_OR_RETURN(in.session, store_->GetSession(key));
  NEXUSKV_ASSIGN_OR_RETURN(in.segments, store_->ListSegments(key));
  NEXUSKV_ASSIGN_OR_RETURN(const CacheScope scope, CachePlanner::Scope(std::move(in)));
  LoadedInputs loaded;
  if (scope.scored) {
    NEXUSKV_ASSIGN_OR_RETURN(loaded.scored_turns, LoadScoredTurns(key, scope));
  } else if (!scope.fit_turns.empty()) {
    NEXUSKV_RETURN_IF_ERROR(AwaitFits(key, scope, loaded));
  }
  NEXUSKV_ASSIGN_OR_RETURN(CachePlan plan, CachePlanner::Plan(scope, std::move(loaded)));
  return std::make_unique<CacheAssembly>(store_, std::move(key), std::move(plan));
}

absl::StatusOr<std::vector<compressor::scored::ScoredTurn>> KvMemoryCore::LoadScoredTurns(
    const store::SessionKey& key, const CacheScope& scope) const {
  const v1::ModelSpec& model = scope.inputs.session.model();
  std::vector<compressor::scored::ScoredTurn> turns;
  for (uint32_t t = scope.first; t < scope.raw_from; ++t) {
    const store::SegmentRecord& record = scope.inputs.segments[t];
    compressor::scored::ScoredTurn& turn = turns.emplace_back();
    turn.num_tokens = record.num_tokens();
    turn.first_position = static_cast<int64_t>(record.first_position());
    turn.session_start = t == 0;
    for (uint32_t l = 0; l < model.num_layers(); ++l) {
      NEXUSKV_ASSIGN_OR_RETURN(std::vector<float> s, LoadTokenScores(*store_, key, record, l));
      if (s.size() != size_t{model.num_kv_heads()} * record.num_tokens()) {
        return absl::DataLossError(absl::StrCat("the token scores of turn ", t, " layer ", l,
                                                " have ", s.size(), " values"));
      }
      turn.scores.push_back(std::move(s));
    }
  }
  NEXUSKV_RETURN_IF_ERROR(AddLookahead(key, scope, turns));
  return turns;
}

absl::Status KvMemoryCore::AddLookahead(const store::SessionKey& key, const CacheScope& scope,
                                        std::vector<compressor::scored::ScoredTurn>& turns) const {
  if (options_.lookahead_share <= 0.0 || turns.empty()) return absl::OkStatus();
  const std::vector<store::SegmentRecord>& segments = scope.inputs.segments;
  const std::vector<store::SegmentRecord> range(segments.begin() + scope.first,
                                                segments.begin() + scope.last + 1);
  const std::optional<size_t> newest = NewestProbeTurn(range);
  if (!newest.has_value()) return absl::OkStatus();
  const v1::ModelSpec& model = scope.inputs.session.model();
  const compressor::ComputeBackend& compute =
      options_.compute != nullptr ? *options_.compute : compressor::CpuCompute();
  NEXUSKV_ASSIGN_OR_RETURN(const DType dtype, ToTensorDType(model.dtype(), "model.dtype"));
  for (compressor::scored::ScoredTurn& t : turns) t.lookahead.resize(model.num_layers());
  // The stored keys, pinned where the store read them; AddLookaheadLayer decodes each once.
  std::vector<store::StoredTensor> pinned(turns.size());
  std::vector<compressor::scored::TurnKv> kv(turns.size());
  for (uint32_t l = 0; l < model.num_layers(); ++l) {
    NEXUSKV_ASSIGN_OR_RETURN(const std::vector<float> probes,
                             LoadProbes(*store_, key, model, range[*newest], l));
    for (uint32_t t = scope.first; t < scope.raw_from; ++t) {
      const size_t u = t - scope.first;
      NEXUSKV_ASSIGN_OR_RETURN(
          pinned[u], store_->PinTensor(key, segments[t].turn(), l, store::TensorKind::kKeys));
      kv[u] = {.keys = pinned[u].bytes(), .dtype = dtype};
    }
    NEXUSKV_RETURN_IF_ERROR(compressor::scored::AddLookaheadLayer(
        static_cast<int>(l), probes, static_cast<int>(model.num_query_heads()), kv,
        static_cast<int>(model.head_dim()), compute, turns));
  }
  return absl::OkStatus();
}

absl::Status KvMemoryCore::AwaitFits(const store::SessionKey& key, const CacheScope& scope,
                                     LoadedInputs& loaded) {
  const PlannerInputs& in = scope.inputs;
  const std::string method(in.method->name());
  // One deadline for the whole answer: a turn waits what the turns before it left.
  const absl::Time deadline = absl::Now() + options_.fit_wait;
  for (const uint32_t t : scope.fit_turns) {
    const store::SegmentRecord& record = in.segments[t];
    const absl::Status fit = fits_.Await(FitJob{key, in.session.model(), record, in.method},
                                         std::max(deadline - absl::Now(), absl::ZeroDuration()));
    if (!fit.ok()) {
      // Store errors (DATA_LOSS, NOT_FOUND, ...) pass through; so does a failure on a turn whose
      // raw KV is gone, which leaves nothing to fall back to.
      const bool late = absl::IsDeadlineExceeded(fit);
      if (in.fallback == nullptr || record.raw_dropped() ||
          !(late || absl::IsInvalidArgument(fit) || absl::IsInternal(fit) ||
            absl::IsFailedPrecondition(fit) || absl::IsOutOfRange(fit))) {
        return fit;
      }
      loaded.missing_fits[t] =
          absl::StrCat(late ? "is not ready (" : "failed (", std::string(fit.message()), ")");
      Log(LogLevel::kWarning, late ? "fit_late_fallback" : "fit_failed_fallback",
          {{"tenant", key.tenant},
           {"session", key.session_id},
           {"turn", t},
           {"method", method},
           {"status", fit.ToString()}});
      continue;
    }
    NEXUSKV_ASSIGN_OR_RETURN(std::optional<std::string> summary,
                             store_->GetFit(key, t, method, store::Store::kFitSummaryLayer));
    if (summary) loaded.summaries[t] = *std::move(summary);
  }
  // Storing a fit may have dropped raw KV (raw_retention): the planner checks the records again.
  NEXUSKV_ASSIGN_OR_RETURN(loaded.segments, store_->ListSegments(key));
  return absl::OkStatus();
}

absl::StatusOr<v1::SessionInfo> KvMemoryCore::GetSession(std::string_view tenant,
                                                         std::string_view session_id) {
  NEXUSKV_RETURN_IF_ERROR(store::ValidateId("session_id", session_id));
  store::SessionKey key{std::string(tenant), std::string(session_id)};
  NEXUSKV_ASSIGN_OR_RETURN(store::SessionRecord session, store_->GetSession(key));
  NEXUSKV_ASSIGN_OR_RETURN(std::vector<store::SegmentRecord> segments, store_->ListSegments(key));
  v1::SessionInfo info = SessionInfoOf(session);
  for (const store::SegmentRecord& s : segments) {
    v1::TurnInfo* t = info.add_turns();
    *t = TurnInfoOf(s);
    NEXUSKV_RETURN_IF_ERROR(DescribeFits(key, s, *t));
  }
  return info;
}

absl::Status KvMemoryCore::DescribeFits(const store::SessionKey& key,
                                        const store::SegmentRecord& record,
                                        v1::TurnInfo& info) const {
  for (int id = v1::Method_MIN; id <= v1::Method_MAX; ++id) {  // in Method order
    if (!v1::Method_IsValid(id)) continue;
    const std::string name = v1::Method_Name(static_cast<v1::Method>(id));
    const compressor::Compressor* method = registry_->Find(name);
    if (method == nullptr || !method->capabilities().fits) continue;
    v1::FitStatus* fit = info.add_fits();
    fit->set_method(static_cast<v1::Method>(id));
    NEXUSKV_ASSIGN_OR_RETURN(const bool stored, store_->HasFit(key, record.turn(), name));
    if (stored) {
      fit->set_state(v1::FIT_STORED);
    } else if (std::optional<absl::Status> failure = fits_.LastFailure(key, record.turn(), name)) {
      fit->set_state(v1::FIT_FAILED);
      fit->set_error(std::string(failure->message()));
    } else if (!FitIsRead(*method, record)) {
      fit->set_state(v1::FIT_ON_DEMAND);
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
  for (const store::SessionRecord& r : page.sessions) *response.add_sessions() = SessionInfoOf(r);
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
