// nexuskv-server: the nexuskv KV-cache memory tier. Flags, logging, RunServer; nothing else.
#include <algorithm>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "service/compute_device.h"
#include "service/config_file.h"
#include "service/raw_retention.h"
#include "service/server.h"

ABSL_FLAG(std::string, listen, "localhost:50051", "Address to serve gRPC on (host:port).");
ABSL_FLAG(std::string, data_dir, "./data", "RocksDB data directory (created when missing).");
ABSL_FLAG(bool, sync_writes, true, "fsync the WAL before acknowledging an append.");
ABSL_FLAG(uint64_t, min_free_disk_bytes, 64ull << 20,
          "Free disk space appends never eat into; below it they fail with RESOURCE_EXHAUSTED.");
ABSL_FLAG(uint64_t, max_message_bytes, 64ull << 20, "Largest gRPC message accepted or sent.");
ABSL_FLAG(uint32_t, max_tokens_per_turn, 65536, "Most tokens in one appended segment.");
ABSL_FLAG(uint64_t, max_segment_bytes, 2ull << 30,
          "Most tensor bytes (keys + values + probes, all layers) in one segment.");
ABSL_FLAG(uint32_t, max_concurrent_streams, 256,
          "KvMemory calls running at once; beyond it calls fail with RESOURCE_EXHAUSTED.");
ABSL_FLAG(uint32_t, max_turns_per_session, 0, "Turns one session may hold (0: unlimited).");
ABSL_FLAG(uint64_t, max_bytes_per_session, 0,
          "Raw tensor bytes one session may hold (0: unlimited).");
ABSL_FLAG(uint32_t, max_sessions_per_tenant, 0, "Sessions one tenant may hold (0: unlimited).");
ABSL_FLAG(uint64_t, max_bytes_per_tenant, 0,
          "Raw plus compressed bytes one tenant may hold (0: unlimited).");
ABSL_FLAG(uint32_t, default_session_ttl_s, 0,
          "TTL of sessions whose first append sets none (0: keep until deleted).");
ABSL_FLAG(int, retention_sweep_s, 60, "Seconds between sweeps deleting expired sessions (0: off).");
ABSL_FLAG(bool, purge_on_delete, true,
          "Compact a deleted session's key range so its bytes leave the data files.");
ABSL_FLAG(uint32_t, purge_interval_s, 10,
          "At most one purge per this many seconds: a delete within it of the last purge leaves "
          "its range to the next one (the next delete after it, or the retention sweep). 0: "
          "every delete purges at once.");
ABSL_FLAG(double, purge_max_share, 0.1,
          "Purges take at most this share of the wall time: after a purge that took d, the next "
          "waits d x (1 / share - 1) after it ends, and --purge_interval_s. A purge rewrites most "
          "live blobs, so its time grows with the data held. 1: the interval alone.");
ABSL_FLAG(int, fit_threads, 1,
          "Background compression workers (at least 1: every fit runs on them, also one a "
          "GetCache waits for).");
ABSL_FLAG(uint64_t, fit_queue, 1024,
          "Background fits the compression queue holds (at least 1); what an append whose fits "
          "find it full does is --fit_queue_full's.");
ABSL_FLAG(uint64_t, fit_queue_mb, 4096,
          "MiB of raw KV the queued background fits may read, all together (0: no bound); an "
          "empty queue takes any one turn. Beyond it the queue is full, as for --fit_queue.");
ABSL_FLAG(std::string, fit_queue_full, "defer",
          "What an append whose fits find the compression queue full does. defer: store the turn "
          "and defer its fits until the queue is empty (at most --fit_deferred of them; a GetCache "
          "fits a turn on demand). refuse: wait --fit_backpressure_ms for room, then fail with "
          "RESOURCE_EXHAUSTED, storing nothing.");
ABSL_FLAG(uint64_t, fit_deferred, 16384,
          "Deferred fits kept at most (--fit_queue_full=defer); beyond it the oldest is dropped "
          "and logged, and a GetCache that needs it fits it on demand.");
ABSL_FLAG(uint64_t, fit_batch, 8,
          "Most queued fits of one method a worker takes at once, across sessions (at least 1).");
ABSL_FLAG(int64_t, fit_backpressure_ms, 2000,
          "With --fit_queue_full=refuse: how long an append waits for room in a full compression "
          "queue before it fails with RESOURCE_EXHAUSTED and a retry hint; nothing of a refused "
          "append is stored.");
ABSL_FLAG(int, fit_nice, 0,
          "Nice levels the fit workers run below the RPC threads, so fits use the CPU requests "
          "leave idle (0: same priority; at most 19). Every fit runs on these workers, also one "
          "a GetCache waits for.");
ABSL_FLAG(int64_t, fit_wait_ms, 30000,
          "How long a GetCache waits for the fits it needs, all together (queued ahead of the "
          "background ones); then a turn whose fit is not stored is served by STREAMING_LLM from "
          "its raw KV and the answer's notes say so. Fits never run on the RPC threads.");
ABSL_FLAG(bool, precompute_fits, true, "Compress each turn right after it is appended.");
ABSL_FLAG(std::string, raw_retention, "keep",
          "What happens to a turn's raw KV once its SONIC ladder is stored: keep, drop, or a "
          "duration (e.g. 12h) after which it is dropped. Dropped turns are served by SONIC only.");
ABSL_FLAG(uint32_t, raw_keep_recent_turns, 1,
          "The newest turns of each session that always keep their raw KV.");
ABSL_FLAG(int, raw_retention_sweep_s, 60,
          "Seconds between sweeps applying a duration --raw_retention to idle sessions.");
ABSL_FLAG(double, merge_share, 0.05,
          "Share of a biased answer spent by token scores that goes to merged entries, each "
          "standing for a run of evicted tokens (0: none; at most 0.5).");
ABSL_FLAG(double, lookahead_share, 0.1,
          "Share of an answer spent by token scores that the range's newest probes (the question "
          "that resumes it) pick first, per layer and kv head, by what they read most (0: none; "
          "at most 0.5).");
ABSL_FLAG(int, rpc_threads, 8, "Threads for blocking RPC work (RocksDB, cache assembly).");
ABSL_FLAG(int, blas_threads, 1,
          "Threads each OpenBLAS product may use (0: OpenBLAS's default, OPENBLAS_NUM_THREADS or "
          "one per core). The RPC and fit threads already "
          "run products side by side; more per product mostly spin.");
ABSL_FLAG(int, shutdown_grace_s, 20, "Seconds in-flight RPCs get to finish on SIGTERM/SIGINT.");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM server certificate chain; with --tls_key_file "
          "the server speaks TLS only.");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file.");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "PEM CA bundle; set for mutual TLS (clients must "
          "present a certificate it signed).");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "Bearer tokens -> tenants ('TENANT sha256:HEX' per "
          "line; SIGHUP reloads). Empty: no authentication, tenant 'default'.");
ABSL_FLAG(std::string, metrics_listen, "",
          "HOST:PORT serving Prometheus metrics at /metrics over plain HTTP (HOST an IP address "
          "or localhost; port 0 picks one, logged). Empty: no metrics.");
ABSL_FLAG(int, health_check_period_ms, 5000,
          "Milliseconds between checks that the store can write; health is NOT_SERVING while it "
          "cannot (disk reserve hit, read-only disk, RocksDB stopped by a background error).");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error.");
ABSL_FLAG(std::string, device, "auto",
          "What the compressors compute on: auto (the GPU when one is usable, else the CPU; the "
          "log says which and why), cpu, or cuda (the GPU; without a usable one the server "
          "refuses to start). Answers agree within the documented tolerances.");
ABSL_FLAG(uint64_t, gpu_memory_mb, 4096,
          "MiB of GPU memory one compute batch may hold (at least 1; the CPU ignores it). A "
          "batch that needs more fails with an error naming both sizes; a fit that fails so is "
          "served by the fallback, as any failed fit.");

ABSL_FLAG(std::string, config, "",
          "YAML file of flag values (name: value per line, docs/api.md); flags on the command "
          "line win over it.");

namespace {

using nexuskv::service::ServerOptions;

// --help lists the flags of this file (absl looks for a file named after the binary by default,
// and so listed none); --helpfull adds absl's own.
void SetUsage() {
  absl::SetProgramUsageMessage(
      "nexuskv-server --listen=HOST:PORT --data_dir=DIR [--config=FILE.yaml]");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "service/main.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
}

// Sets the flags from the --config file, then from the command line (which wins). Errors of
// ArgumentsWithConfigFile pass through; a bad flag value exits as absl::ParseCommandLine does.
absl::Status ParseFlags(int argc, char** argv) {
  absl::StatusOr<std::vector<std::string>> args =
      nexuskv::service::ArgumentsWithConfigFile(argc, argv, [](std::string_view name) {
        return absl::FindCommandLineFlag(std::string(name)) != nullptr;
      });
  if (!args.ok()) return args.status();
  std::vector<char*> parsed_argv;
  for (std::string& arg : *args) parsed_argv.push_back(arg.data());
  absl::ParseCommandLine(static_cast<int>(parsed_argv.size()), parsed_argv.data());
  return absl::OkStatus();
}

// --log_level's value as a level; anything but debug, warning and error is info.
nexuskv::LogLevel LogLevelFromFlag() {
  const std::string level = absl::GetFlag(FLAGS_log_level);
  return level == "debug"     ? nexuskv::LogLevel::kDebug
         : level == "warning" ? nexuskv::LogLevel::kWarning
         : level == "error"   ? nexuskv::LogLevel::kError
                              : nexuskv::LogLevel::kInfo;
}

// The server's options from the parsed flags. InvalidArgument, naming the flag, when a value is
// out of its range (the server must then refuse to start).
absl::StatusOr<ServerOptions> ServerOptionsFromFlags() {
  ServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.store.path = absl::GetFlag(FLAGS_data_dir);
  options.store.sync_writes = absl::GetFlag(FLAGS_sync_writes);
  options.store.min_free_disk_bytes = absl::GetFlag(FLAGS_min_free_disk_bytes);
  options.core.limits.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.core.limits.max_tokens_per_turn = absl::GetFlag(FLAGS_max_tokens_per_turn);
  options.core.limits.max_segment_bytes = absl::GetFlag(FLAGS_max_segment_bytes);
  options.core.limits.max_concurrent_calls = absl::GetFlag(FLAGS_max_concurrent_streams);
  options.store.max_turns_per_session = absl::GetFlag(FLAGS_max_turns_per_session);
  options.store.max_bytes_per_session = absl::GetFlag(FLAGS_max_bytes_per_session);
  options.store.max_sessions_per_tenant = absl::GetFlag(FLAGS_max_sessions_per_tenant);
  options.store.max_bytes_per_tenant = absl::GetFlag(FLAGS_max_bytes_per_tenant);
  options.store.default_session_ttl_seconds = absl::GetFlag(FLAGS_default_session_ttl_s);
  options.store.purge_on_delete = absl::GetFlag(FLAGS_purge_on_delete);
  options.store.purge_interval_seconds = absl::GetFlag(FLAGS_purge_interval_s);
  options.store.purge_max_share = absl::GetFlag(FLAGS_purge_max_share);
  options.retention_sweep = absl::Seconds(absl::GetFlag(FLAGS_retention_sweep_s));
  options.core.fit_threads = absl::GetFlag(FLAGS_fit_threads);
  options.core.fit_queue = absl::GetFlag(FLAGS_fit_queue);
  options.core.fit_queue_bytes = absl::GetFlag(FLAGS_fit_queue_mb) << 20;
  options.core.fit_batch = absl::GetFlag(FLAGS_fit_batch);
  options.core.fit_backpressure =
      absl::Milliseconds(std::max<int64_t>(absl::GetFlag(FLAGS_fit_backpressure_ms), 0));
  options.core.fit_deferred = absl::GetFlag(FLAGS_fit_deferred);
  if (const std::string full = absl::GetFlag(FLAGS_fit_queue_full); full == "defer") {
    options.core.fit_queue_full = nexuskv::service::CoreOptions::WhenFitQueueFull::kDefer;
  } else if (full == "refuse") {
    options.core.fit_queue_full = nexuskv::service::CoreOptions::WhenFitQueueFull::kRefuse;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--fit_queue_full must be defer or refuse, got \"", full, "\""));
  }
  options.core.precompute_fits = absl::GetFlag(FLAGS_precompute_fits);
  options.core.fit_nice = absl::GetFlag(FLAGS_fit_nice);
  options.core.fit_wait =
      absl::Milliseconds(std::max<int64_t>(absl::GetFlag(FLAGS_fit_wait_ms), 0));
  // Every fit runs on the fit workers, also one a GetCache waits for: without a worker every
  // GetCache that needs a fit not yet stored would answer UNAVAILABLE.
  if (options.core.fit_threads < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--fit_threads must be at least 1 (every fit runs on the fit workers, also one a "
        "GetCache waits for), got ",
        options.core.fit_threads));
  }
  // Without room for one job no append that queues a fit could be stored, and no GetCache could
  // queue the fit it waits for.
  if (options.core.fit_queue < 1 || options.core.fit_batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--fit_queue and --fit_batch must be at least 1, got ", options.core.fit_queue,
                     " and ", options.core.fit_batch));
  }
  if (absl::GetFlag(FLAGS_fit_queue_mb) > (uint64_t{1} << 43)) {  // Shifted, it must not wrap.
    return absl::InvalidArgumentError(absl::StrCat("--fit_queue_mb must be at most 2^43, got ",
                                                   absl::GetFlag(FLAGS_fit_queue_mb)));
  }
  // 0 would never purge again after the first; above 1 means nothing.
  if (!(options.store.purge_max_share > 0.0 && options.store.purge_max_share <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--purge_max_share must be in (0, 1], got ", options.store.purge_max_share));
  }
  if (options.core.fit_nice < 0 || options.core.fit_nice > 19) {
    return absl::InvalidArgumentError(
        absl::StrCat("--fit_nice must be in [0, 19], got ", options.core.fit_nice));
  }
  absl::StatusOr<nexuskv::service::RawRetention> retention =
      nexuskv::service::ParseRawRetention(absl::GetFlag(FLAGS_raw_retention));
  if (!retention.ok()) return retention.status();
  options.core.raw_retention = *retention;
  options.core.raw_retention.keep_recent_turns = absl::GetFlag(FLAGS_raw_keep_recent_turns);
  options.core.raw_retention.sweep = absl::Seconds(absl::GetFlag(FLAGS_raw_retention_sweep_s));
  options.core.merge_share = absl::GetFlag(FLAGS_merge_share);
  if (!(options.core.merge_share >= 0.0 && options.core.merge_share <= 0.5)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--merge_share must be in [0, 0.5], got ", options.core.merge_share));
  }
  options.core.lookahead_share = absl::GetFlag(FLAGS_lookahead_share);
  if (!(options.core.lookahead_share >= 0.0 && options.core.lookahead_share <= 0.5)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--lookahead_share must be in [0, 0.5], got ", options.core.lookahead_share));
  }
  options.rpc_threads = absl::GetFlag(FLAGS_rpc_threads);
  options.blas_threads = absl::GetFlag(FLAGS_blas_threads);
  if (options.blas_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--blas_threads must be >= 0, got ", options.blas_threads));
  }
  options.shutdown_grace = absl::Seconds(absl::GetFlag(FLAGS_shutdown_grace_s));
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  options.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  options.auth_tokens_file = absl::GetFlag(FLAGS_auth_tokens_file);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.health_check_period = absl::Milliseconds(absl::GetFlag(FLAGS_health_check_period_ms));
  if (options.health_check_period <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--health_check_period_ms must be positive");
  }
  return options;
}

// The compressors' backend from --device and --gpu_memory_mb (see service/compute_device.h).
absl::StatusOr<nexuskv::service::SelectedCompute> ComputeFromFlags() {
  const uint64_t mb = absl::GetFlag(FLAGS_gpu_memory_mb);
  if (mb < 1 || mb > (uint64_t{1} << 43)) {  // Shifted to bytes, it must not wrap.
    return absl::InvalidArgumentError(
        absl::StrCat("--gpu_memory_mb must be in [1, 2^43], got ", mb));
  }
  return nexuskv::service::SelectCompute(absl::GetFlag(FLAGS_device), mb << 20);
}

}  // namespace

int main(int argc, char** argv) {
  SetUsage();
  if (const absl::Status parsed = ParseFlags(argc, argv); !parsed.ok()) {
    nexuskv::Log(nexuskv::LogLevel::kError, "bad_config", {{"status", parsed.ToString()}});
    return EXIT_FAILURE;
  }
  nexuskv::SetMinLogLevel(LogLevelFromFlag());
  const absl::StatusOr<ServerOptions> options = ServerOptionsFromFlags();
  if (!options.ok()) {
    nexuskv::Log(nexuskv::LogLevel::kError, "bad_flag", {{"status", options.status().ToString()}});
    return EXIT_FAILURE;
  }
  // Chosen before anything is opened: --device=cuda without a GPU refuses to start.
  absl::StatusOr<nexuskv::service::SelectedCompute> compute = ComputeFromFlags();
  if (!compute.ok()) {
    nexuskv::Log(nexuskv::LogLevel::kError,
                 absl::IsInvalidArgument(compute.status()) ? "bad_flag" : "compute_unavailable",
                 {{"status", compute.status().ToString()}});
    return EXIT_FAILURE;
  }
  nexuskv::Log(nexuskv::LogLevel::kInfo, "compute_device",
               {{"backend", compute->name()}, {"detail", compute->description()}});
  ServerOptions server_options = *options;
  server_options.compute = &compute->backend();
  const absl::Status status = nexuskv::service::RunServer(server_options);
  if (!status.ok()) {
    nexuskv::Log(nexuskv::LogLevel::kError, "server_failed", {{"status", status.ToString()}});
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}
