// Store: durable storage of nexuskv sessions in an embedded RocksDB.
//
// A session is a sequence of segments (turns) keyed by (tenant, session_id, turn). Each segment is
// one SegmentRecord plus, per layer, three tensors (keys, values, probe queries) stored as RocksDB
// blob files (integrated BlobDB) with an XXH3-64 checksum that is verified on every read.
// Compression results ("fits") are stored per (turn, method, layer) in their own column family.
//
//   NEXUSKV_ASSIGN_OR_RETURN(std::unique_ptr<Store> store, Store::Open({.path = "./data"}));
//   NEXUSKV_ASSIGN_OR_RETURN(AppendOutcome out, store->AppendSegment(key, spec, record, layers));
//   NEXUSKV_ASSIGN_OR_RETURN(std::string keys, store->ReadTensor(key, 0, 3, TensorKind::kKeys));
//
// Guarantees:
//   - A segment is written with one WriteBatch (its tensors, its record and the updated session
//     record): after a crash it is either wholly present or absent.
//   - AppendSegment returns only after the batch is in the WAL, fsynced when Options::sync_writes.
//   - Turn-order rules are checked and applied atomically per session (see AppendSegment).
//   - A refused call writes nothing.
// A Store is safe for concurrent use from multiple threads without external synchronization.
#ifndef NEXUSKV_STORE_STORE_H_
#define NEXUSKV_STORE_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nexuskv/v1/kv_memory.pb.h"
#include "store/key_codec.h"
#include "store/records.pb.h"

namespace nexuskv::store {

struct Options {
  // Directory of the RocksDB database; created when missing.
  std::string path = "./data";
  // fsync the WAL before acknowledging a write. false trades the last moments of acknowledged
  // writes on power loss (not on process crash) for latency.
  bool sync_writes = true;
  // Values at least this large go to blob files instead of the LSM tree.
  uint64_t min_blob_size = 4096;
  // RocksDB block cache for the LSM (records, small values), bytes.
  uint64_t block_cache_bytes = 64ull << 20;
  // Free space on the data disk that writes never eat into: a write that would leave less (after
  // counting its own bytes twice and the unflushed memtables) is refused with ResourceExhausted
  // before it reaches RocksDB, so a full disk never puts the database into an error state.
  uint64_t min_free_disk_bytes = 64ull << 20;
  // Quotas, 0 = unlimited. An append over one is refused with ResourceExhausted naming the
  // quota; nothing is written. Bytes are raw tensor bytes for a session; raw plus stored fits for
  // a tenant.
  uint32_t max_turns_per_session = 0;
  uint64_t max_bytes_per_session = 0;
  uint32_t max_sessions_per_tenant = 0;
  uint64_t max_bytes_per_tenant = 0;
  // TTL of a new session whose first append asks for none (SegmentRecord.ttl_seconds 0); 0: none.
  uint32_t default_session_ttl_seconds = 0;
  // After a delete, compact the session's key range (blob garbage forced) so that its bytes are
  // physically gone from the data files, not only marked deleted.
  bool purge_on_delete = true;
  // At most one purge per this many seconds: a delete within it of the last purge only adds its
  // range to the next one (the next delete after the interval, or FlushPurges). A purge compacts
  // every file overlapping the range and rewrites the live blobs they reference, which under a
  // steady stream of deletes took most of the CPU (docs/performance.md). 0: every delete purges.
  uint32_t purge_interval_seconds = 0;
  // Purges take at most this share of the wall time: after one that took d the next waits at
  // least d x (1 / share - 1) after it ends, as well as the interval. A purge rewrites most live
  // blobs, so its time grows with the data held (internal/purge_pacing.h). 1: the interval alone.
  double purge_max_share = 1.0;
};

// Which session a call is about. Both parts must be valid ids (see key_codec.h): 1..128 characters
// of [A-Za-z0-9._:-]; the store refuses anything else with InvalidArgument.
struct SessionKey {
  std::string tenant;
  std::string session_id;
};

// One layer of a segment, in the session dtype, exactly as appended.
struct LayerTensors {
  std::string keys;           // [H, T, D]
  std::string values;         // [H, T, D]
  std::string probe_queries;  // [Hq, P, D]; empty when P = 0.
  std::string token_scores;   // [H, T] float32; empty unless the segment has token scores.
};

// TensorKind (keys, values, probe queries) is declared in store/key_codec.h.

// One stored tensor as Store::PinTensor reads it: the payload where the store read it (RocksDB's
// pinned value), not copied into a string. bytes() stays valid while this object, or one it was
// moved into, lives.
class StoredTensor {
 public:
  StoredTensor() = default;
  // Owns `bytes`.
  explicit StoredTensor(std::string bytes);
  // Borrows `bytes`, which `owner` keeps alive.
  StoredTensor(std::string_view bytes, std::shared_ptr<const void> owner)
      : owner_(std::move(owner)), bytes_(bytes) {}

  std::string_view bytes() const { return bytes_; }
  size_t size() const { return bytes_.size(); }

 private:
  std::shared_ptr<const void> owner_;
  std::string_view bytes_;
};

struct AppendOutcome {
  bool already_stored = false;  // An identical copy of the turn was already there; nothing written.
  SessionRecord session;        // The session after the call.
};

struct SessionPage {
  std::vector<SessionRecord> sessions;  // In session_id order.
  std::string next_page_token;          // Empty on the last page.
};

struct DeleteOutcome {
  uint32_t deleted_turns = 0;
  uint64_t freed_bytes = 0;
};

// What the store holds, for monitoring (Store::Stats).
struct StoreStats {
  // RocksDB properties summed over the column families: the SST files of the current version,
  // the blob files of the current version (tensors and fits), and the bytes compaction still has
  // to rewrite to reach its targets.
  uint64_t live_sst_bytes = 0;
  uint64_t live_blob_bytes = 0;
  uint64_t pending_compaction_bytes = 0;
  // Per tenant seen since Open: sessions held and bytes counted against its quota (raw tensors not
  // dropped, plus fits). A tenant whose sessions are all deleted stays, at zero.
  struct Tenant {
    uint64_t sessions = 0;
    uint64_t bytes = 0;
  };
  std::map<std::string, Tenant> tenants;
};

class Store {
 public:
  // Opens (creating if missing) the database at options.path. Errors: InvalidArgument for an
  // unusable path, FailedPrecondition when another process holds the database lock, DataLoss for
  // a corrupt database, Internal otherwise.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const Options& options);

  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;
  // Flushes nothing extra: every acknowledged write is already in the WAL. Closes RocksDB.
  virtual ~Store() = default;

  // Stores one segment. The caller has validated shapes, sizes and values against `model`;
  // layers.size() == model.num_layers() (InvalidArgument otherwise) and record.layer_digests is
  // empty: the store computes it, and record.raw_bytes, from `layers`.
  //   - New session: record.turn must be 0; the session takes `model` as its spec.
  //   - record.turn == num_turns: appended; record.first_position must equal next_position.
  //   - record.turn < num_turns and identical (spec, header fields, every tensor digest): nothing
  //     is written, already_stored = true.
  // Errors: FailedPrecondition for a spec that differs from the session's, a turn after
  // num_turns, or a first_position that does not follow the previous turn; AlreadyExists for a
  // different payload of a stored turn; InvalidArgument for a bad key; ResourceExhausted when the
  // disk is full; Internal for other I/O errors.
  virtual absl::StatusOr<AppendOutcome> AppendSegment(const SessionKey& key,
                                                      const nexuskv::v1::ModelSpec& model,
                                                      SegmentRecord record,
                                                      const std::vector<LayerTensors>& layers) = 0;

  // NotFound when the session does not exist.
  virtual absl::StatusOr<SessionRecord> GetSession(const SessionKey& key) = 0;

  // All segment records of a session, in turn order. NotFound when the session does not exist.
  virtual absl::StatusOr<std::vector<SegmentRecord>> ListSegments(const SessionKey& key) = 0;

  // Sessions of `tenant` whose id starts with `prefix`, after page_token (a previous page's
  // next_page_token, or empty), at most page_size (1..1000) of them. InvalidArgument for a bad
  // tenant, page size or token, or a prefix that is not 0..128 id characters.
  virtual absl::StatusOr<SessionPage> ListSessions(std::string_view tenant, std::string_view prefix,
                                                   std::string_view page_token,
                                                   uint32_t page_size) = 0;

  // One stored tensor of one layer of one turn, checksum verified. NotFound when absent (a probe
  // tensor of a segment with P = 0 reads as the empty string, not NotFound); DataLoss when the
  // checksum does not match (the corruption is logged).
  virtual absl::StatusOr<std::string> ReadTensor(const SessionKey& key, uint32_t turn,
                                                 uint32_t layer, TensorKind kind) = 0;

  // ReadTensor without the copy into a string (same checks and errors): for readers that copy
  // the bytes on into an answer anyway. The default wraps ReadTensor.
  virtual absl::StatusOr<StoredTensor> PinTensor(const SessionKey& key, uint32_t turn,
                                                 uint32_t layer, TensorKind kind);

  // Stores the per-layer fit results of `method` for one turn in one WriteBatch and adds their
  // size to the session's compressed_bytes. Replaces an earlier fit of the same method. NotFound
  // when the session or turn no longer exists (deleted meanwhile): nothing is written.
  // `method` is an id (see key_codec.h, e.g. "sonic") and per_layer.size() must equal the
  // session's num_layers; InvalidArgument otherwise. A non-empty `summary` (a small per-turn
  // digest of the fit, Compressor::SummarizeFit) is stored in the same batch under layer
  // kFitSummaryLayer, where GetFit reads it back.
  virtual absl::Status PutFit(const SessionKey& key, uint32_t turn, std::string_view method,
                              const std::vector<std::string>& per_layer,
                              std::string_view summary) = 0;
  absl::Status PutFit(const SessionKey& key, uint32_t turn, std::string_view method,
                      const std::vector<std::string>& per_layer) {
    return PutFit(key, turn, method, per_layer, std::string_view());
  }

  // The layer index of a fit's per-turn summary (see PutFit).
  static constexpr uint32_t kFitSummaryLayer = 0xFFFFFFFF;

  // Whether the method's fit of the turn is stored. A fit with a summary is answered from the
  // summary (small, written in the fit's batch), so checking a SONIC ladder does not read a
  // layer of it; a fit without one reads layer 0.
  absl::StatusOr<bool> HasFit(const SessionKey& key, uint32_t turn, std::string_view method);

  // The stored fit of one layer, checksum verified; nullopt when it was never stored. DataLoss on
  // a checksum mismatch.
  virtual absl::StatusOr<std::optional<std::string>> GetFit(const SessionKey& key, uint32_t turn,
                                                            std::string_view method,
                                                            uint32_t layer) = 0;

  // Deletes the raw tensors (keys, values and probes of every layer) of one turn in one
  // WriteBatch, keeping its record (now raw_dropped) and every fit; the session's
  // dropped_raw_bytes grows by the turn's raw_bytes and the bytes are purged from the data files
  // when Options::purge_on_delete. Refused with FailedPrecondition unless a fit of `required_fit`
  // is stored for the turn, so that a turn is never left without anything that can serve it.
  // Returns false when the raw was already dropped (nothing written). NotFound for a missing
  // session or turn.
  virtual absl::StatusOr<bool> DropRawTensors(const SessionKey& key, uint32_t turn,
                                              std::string_view required_fit) = 0;

  // Every stored session of every tenant, in key order: for maintenance sweeps (raw retention).
  virtual absl::StatusOr<std::vector<SessionKey>> ListSessionKeys() = 0;

  // Removes the session, its segments and its fits (purged from the data files when
  // Options::purge_on_delete). NotFound when it does not exist.
  virtual absl::StatusOr<DeleteOutcome> DeleteSession(const SessionKey& key) = 0;

  // Deletes (as DeleteSession) every session, of any tenant, whose expiry is at or before
  // `now_unix_ms`; returns how many. Errors stop the sweep; what was deleted stays deleted.
  virtual absl::StatusOr<uint32_t> DeleteExpired(int64_t now_unix_ms) = 0;

  // Purges now what deletes left for a later purge (Options::purge_interval_seconds); the
  // server's retention sweep calls it. Nothing to do: OK.
  virtual absl::Status FlushPurges() = 0;

  // Sizes and per-tenant usage, read from RocksDB properties and the in-memory accounting that
  // tenant quotas use: no data is scanned, so it is cheap enough for every metrics scrape.
  virtual StoreStats Stats() = 0;

  // Whether an append could be written now (nothing is written to find out): OK;
  // ResourceExhausted when the free space of the data disk is below Options::min_free_disk_bytes
  // (plus the unflushed memtables), so appends are being refused; FailedPrecondition when the data
  // directory is on a read-only filesystem; Unavailable while RocksDB has stopped writes after a
  // background error (naming it), until it recovers. Reads may still work in every case.
  virtual absl::Status CheckWritable() = 0;

 protected:
  Store() = default;
};

}  // namespace nexuskv::store

#endif  // NEXUSKV_STORE_STORE_H_
