// KvMemoryCore: what the KvMemory service does, without gRPC.
//
// The gRPC layer (grpc_service.h) only moves messages; every decision is made here and returned as
// absl::Status / StatusOr with the code the contract names, so it can be unit-tested directly:
//
//   KvMemoryCore core(store.get(), &CompressorRegistry::Default(), CoreOptions{});
//   NEXUSKV_ASSIGN_OR_RETURN(auto ack, core.Append("default", std::move(segment)));
//   NEXUSKV_ASSIGN_OR_RETURN(auto cache, core.PlanCache("default", request));
//   for (uint32_t l = 0; l < cache->num_layers(); ++l) Send(cache->BuildLayer(l));
//
// Every method takes the caller's tenant; sessions of other tenants are invisible (NOT_FOUND).
// Thread-safe.
#ifndef NEXUSKV_SERVICE_KV_MEMORY_CORE_H_
#define NEXUSKV_SERVICE_KV_MEMORY_CORE_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "compressor/compressor.h"
#include "nexuskv/v1/kv_memory.pb.h"
#include "service/cache_assembly.h"
#include "service/cache_planner.h"
#include "service/fit_scheduler.h"
#include "service/limits.h"
#include "service/raw_retention.h"
#include "service/segment_assembler.h"
#include "store/store.h"

namespace nexuskv::service {

struct CoreOptions {
  Limits limits;
  // Background fit workers and their queue (see FitScheduler): at most fit_queue jobs and
  // fit_queue_bytes of raw KV to read (0: no byte bound), taken by a worker fit_batch at a time.
  int fit_threads = 1;
  size_t fit_queue = 1024;
  uint64_t fit_queue_bytes = 4096ull << 20;
  size_t fit_batch = 8;
  // What an append whose fits find the queue full does. kDefer: stores its turn at once and
  // defers its fits (FitScheduler::Defer; at most fit_deferred of them are kept, oldest dropped
  // first, and a GetCache fits a dropped one on demand). kRefuse: waits fit_backpressure for room,
  // then is refused with RESOURCE_EXHAUSTED (and a retry hint), storing nothing.
  enum class WhenFitQueueFull { kDefer, kRefuse };
  WhenFitQueueFull fit_queue_full = WhenFitQueueFull::kDefer;
  size_t fit_deferred = 16384;
  absl::Duration fit_backpressure = absl::Seconds(2);
  // Nice levels the fit workers run below the RPC threads (0: same priority; at most 19).
  int fit_nice = 0;
  // Compute fits right after each append (true) or only when a GetCache needs them (false).
  bool precompute_fits = true;
  // How long a GetCache waits for the fits it needs, all together (queued ahead of the background
  // ones, computed on a fit worker, never on the RPC thread); a turn whose fit is not stored by
  // then is served by the registry's fallback (STREAMING_LLM) from its raw KV and the answer's
  // notes say so.
  absl::Duration fit_wait = absl::Seconds(30);
  // When a turn's raw KV is dropped once its SONIC ladder is stored (see raw_retention.h).
  RawRetention raw_retention;
  // Share of a biased keep_ratio budget spent by token scores that goes to merged entries, each
  // standing for a run of evicted tokens (compressor/scored/selection.h); 0 turns them off.
  double merge_share = 0.05;
  // Share of a scored answer's budget, per layer and kv head, kept first by what the range's
  // newest probes read (compressor/scored/lookahead.h); 0 turns it off.
  double lookahead_share = 0.1;
  // The backend that computes those weights (the --device one); nullptr: CpuCompute().
  const compressor::ComputeBackend* compute = nullptr;
  // Told about each fit computed (FitScheduler::DoneCallback); for metrics. May be empty.
  FitScheduler::DoneCallback on_fit_done;
  // Told about the background queue's batches and back-pressure; for metrics. May be empty.
  FitQueueObserver on_fit_queue;
};

class KvMemoryCore {
 public:
  // `store` and `registry` must outlive the core.
  KvMemoryCore(store::Store* store, const compressor::CompressorRegistry* registry,
               CoreOptions options);
  KvMemoryCore(const KvMemoryCore&) = delete;
  KvMemoryCore& operator=(const KvMemoryCore&) = delete;

  // Stores a segment validated by the SegmentAssembler (ValidateSegmentHeader, offsets included)
  // durably, schedules its fits and applies the raw retention to the session. Store errors pass
  // through (FAILED_PRECONDITION, ALREADY_EXISTS, RESOURCE_EXHAUSTED, ...).
  //
  // A full fit queue: with fit_queue_full kDefer (the default) the turn is stored and its fits are
  // deferred. With kRefuse, before anything is stored, the turn's background fits get room in the
  // queue, waiting at most fit_backpressure while it is full; then RESOURCE_EXHAUSTED ("the
  // compression queue is full", with a retry hint: RetryAfterOf) and nothing is stored. A turn
  // that queues no fit (precompute_fits off, FIT_ON_DEMAND turns) or that is stored already
  // never waits.
  absl::StatusOr<nexuskv::v1::AppendSegmentResponse> Append(std::string_view tenant,
                                                            AssembledSegment segment);

  // Validates the request against the session, plans the answer (service/cache_planner.h): loads
  // the token scores a scored answer spends, or waits for the fits it reads (never computing one
  // on the calling thread), and returns the assembly that builds each layer. NOT_FOUND for a
  // missing session, INVALID_ARGUMENT for a bad request or a turn range outside the session,
  // UNIMPLEMENTED for a method this server does not have, FAILED_PRECONDITION when a turn whose raw
  // KV was dropped (raw_retention) would have to be served raw or by a method that needs it.
  absl::StatusOr<std::unique_ptr<CacheAssembly>> PlanCache(
      std::string_view tenant, const nexuskv::v1::GetCacheRequest& request);

  absl::StatusOr<nexuskv::v1::SessionInfo> GetSession(std::string_view tenant,
                                                      std::string_view session_id);
  absl::StatusOr<nexuskv::v1::ListSessionsResponse> ListSessions(
      std::string_view tenant, const nexuskv::v1::ListSessionsRequest& request);
  absl::StatusOr<nexuskv::v1::DeleteSessionResponse> DeleteSession(std::string_view tenant,
                                                                   std::string_view session_id);

  // Background fits queued and not yet started, and the raw KV bytes they will read.
  size_t queued_fits() const { return fits_.queued(); }
  uint64_t queued_fit_bytes() const { return fits_.queued_bytes(); }
  size_t deferred_fits() const { return fits_.deferred(); }

  // Stops background fits and the raw-retention sweeper (GetCache still computes what it needs).
  // Idempotent.
  void Shutdown();
  ~KvMemoryCore();

 private:
  // Adds to `info` the state of the turn's fit for each method that fits (TurnInfo.fits).
  absl::Status DescribeFits(const store::SessionKey& key, const store::SegmentRecord& record,
                            nexuskv::v1::TurnInfo& info) const;
  // Whether an answer reads the method's fit of this turn, so that Append computes it in the
  // background: not for a method that prefers token scores on a turn that has them, while raw KV
  // is kept (every keep_ratio / max_bytes answer is then a scored selection; a max_tokens one
  // queues the fit through AwaitFits).
  bool FitIsRead(const compressor::Compressor& method, const store::SegmentRecord& record) const;
  // Room in the fit queue for `jobs` fits of `record`: an empty reservation when the turn is
  // stored already; on a full queue, nullopt (defer the fits) or Append's back-pressure, by
  // fit_queue_full.
  absl::StatusOr<std::optional<FitReservation>> ReserveFits(const store::SessionKey& key,
                                                            const store::SegmentRecord& record,
                                                            size_t jobs);
  // The token scores of the scope's compressed turns, every layer.
  absl::StatusOr<std::vector<compressor::scored::ScoredTurn>> LoadScoredTurns(
      const store::SessionKey& key, const CacheScope& scope) const;
  // With lookahead_share > 0 and probes stored in the range: every turn's lookahead weights
  // (compressor/scored/lookahead.h), from the newest probes and every compressed turn's keys.
  absl::Status AddLookahead(const store::SessionKey& key, const CacheScope& scope,
                            std::vector<compressor::scored::ScoredTurn>& turns) const;
  // Waits (CoreOptions::fit_wait) for the method's fit of each of the scope's fit_turns and loads
  // their summaries; a fit that fails or is late goes to `loaded.missing_fits` (the fallback
  // serves the turn) when the fallback can, else its error is returned.
  absl::Status AwaitFits(const store::SessionKey& key, const CacheScope& scope,
                         LoadedInputs& loaded);
  // Applies the raw retention to one session; failures are logged, never returned.
  void ApplyRetention(const store::SessionKey& key);
  void SweepLoop();

  store::Store* const store_;
  const compressor::CompressorRegistry* const registry_;
  const CoreOptions options_;
  FitScheduler fits_;
  absl::Notification stop_sweeper_;
  std::thread sweeper_;
};

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_KV_MEMORY_CORE_H_
