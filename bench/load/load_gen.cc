// nexuskv_load: drives a real nexuskv-server with N concurrent clients on loopback for a bounded
// time and reports throughput, latency percentiles per RPC, errors and the server's peak RSS.
//
//   build/bin/nexuskv_load --clients=32 --duration_s=60
//   build/bin/nexuskv_load --clients=8 --duration_s=10 --json_out=load.json
//   build/bin/nexuskv_load --clients=32 --duration_s=60 --token_scores   # the scored mix
//   build/bin/nexuskv_load --server_flags=--sync_writes=true,--fit_wait_ms=2000
//
// By default it starts its own server (the build's nexuskv-server, --sync_writes=true, fresh data
// dir in $TMPDIR, removed afterwards) through the integration-test harness; --server_flags adds
// flags. Each client has its own gRPC channel (as separate inference pods would) and loops until
// the deadline, picking an operation at random:
//   - append (probability --append_ratio): the next turn of its conversation, SmolLM2-135M-like
//     shapes (30 layers, 3 kv heads, 9 query heads, head_dim 64, float16), 50..400 tokens, 8 probe
//     queries; with --token_scores (the scored mix) every layer also carries [H, T] float32
//     token scores, exponentially distributed as a worker's attention mass is, which is what the
//     eval and the demo send: SONIC then answers by scored selection and reads no fit, and the
//     server computes no SONIC ladder for those turns in the background. Without it (the default)
//     SONIC answers need each turn's fitted ladder, which waits up to the server's --fit_wait_ms;
//     H2O and SNAPKV need their fits in both mixes;
//   - resume: GetCache of one of its conversations with SONIC, H2O, SNAPKV or STREAMING_LLM at
//     keep_ratio 0.5 or 0.2 (keep_recent_turns 1), or FULL; the answer is streamed and checked
//     for size (keys and bias), never kept.
// A conversation ends after 4..12 turns; the client deletes it (a DeleteSession) and starts
// another, so the live data stays bounded while the load runs.
//
// Errors are counted by gRPC code and not retried: the goal is zero. Peak RSS is the server's
// VmHWM from /proc/<pid>/status, sampled every 100 ms (VmRSS) and read once more at the end.
// --server_info_out tells an outside sampler which process and data dir to watch (soak.sh).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/load/latency.h"
#include "bench/load/workload.h"
#include "clients/cpp/client.h"
#include "grpcpp/grpcpp.h"
#include "nexuskv/v1/kv_memory.grpc.pb.h"
#include "tests/integration/server_process.h"

ABSL_FLAG(int, clients, 8, "Concurrent clients, each with its own gRPC channel.");
ABSL_FLAG(double, duration_s, 60, "How long the load runs, in seconds.");
ABSL_FLAG(double, append_ratio, 0.5,
          "Fraction of operations that are appends (the rest are "
          "resumes).");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the clients' choices.");
ABSL_FLAG(std::string, target, "", "host:port of a running server; empty: start one.");
ABSL_FLAG(std::string, server_flags, "--sync_writes=true,--log_level=warning",
          "Comma-separated flags for the server this tool starts.");
ABSL_FLAG(std::string, server_bin, "", "The server binary to start; empty: the build's own.");
ABSL_FLAG(std::string, json_out, "", "Also write the results as one JSON object to this file.");
ABSL_FLAG(double, rpc_timeout_s, 60, "Deadline of each call.");
ABSL_FLAG(bool, token_scores, false,
          "The scored mix: appended turns carry the worker's token scores, as the eval and the "
          "demo send them.");
ABSL_FLAG(std::string, server_info_out, "",
          "Once the server this tool starts is SERVING, write \"PID DATA_DIR ADDRESS\" (one "
          "line) to this file, for a sampler such as bench/load/soak.sh.");

namespace nexuskv::load {
namespace {

namespace v1 = ::nexuskv::v1;

constexpr uint32_t kMinTokens = 50, kMaxTokens = 400;

enum class Op {
  kAppend,
  kResumeSonic,
  kResumeH2O,
  kResumeSnapKv,
  kResumeStreaming,
  kResumeFull,
  kDelete
};
constexpr const char* kOpNames[] = {"append",           "get_cache_sonic",         "get_cache_h2o",
                                    "get_cache_snapkv", "get_cache_streaming_llm", "get_cache_full",
                                    "delete_session"};
constexpr int kNumOps = 7;

struct ClientStats {
  LatencyRecorder latency[kNumOps];
  std::map<std::string, uint64_t> errors;  // "op: CODE" -> count
  uint64_t bytes_sent = 0, bytes_received = 0, turns_appended = 0, tokens_appended = 0;
};

class LoadClient {
 public:
  LoadClient(int index, const std::string& target, uint64_t seed, bool token_scores)
      : index_(index), token_scores_(token_scores), rng_(seed * 7919 + index) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    args.SetMaxSendMessageSize(64 << 20);
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // One connection per client.
    auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
    client::ClientOptions options;
    options.target = target;
    options.timeout = absl::Seconds(absl::GetFlag(FLAGS_rpc_timeout_s));
    client_ = std::make_unique<client::Client>(channel, options);
    stub_ = v1::KvMemory::NewStub(channel);
    NewConversation();
  }

  void Run(absl::Time deadline, double append_ratio) {
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    while (absl::Now() < deadline) {
      if (turns_ == 0 || unit(rng_) < append_ratio) {
        if (turns_ == target_turns_) {
          Delete();
          continue;
        }
        Append();
      } else {
        Resume();
      }
    }
  }

  ClientStats& stats() { return stats_; }

 private:
  void NewConversation() {
    session_ = absl::StrCat("load-c", index_, "-s", conversations_++);
    turns_ = 0;
    next_position_ = 0;
    target_turns_ = 4 + rng_() % 9;
  }

  void Record(Op op, absl::Time start, const absl::Status& status) {
    const absl::Duration took = absl::Now() - start;
    if (status.ok()) {
      stats_.latency[static_cast<int>(op)].Add(took);
    } else {
      ++stats_.errors[absl::StrCat(kOpNames[static_cast<int>(op)], ": ",
                                   absl::StatusCodeToString(status.code()))];
      if (first_errors_++ < 3) {
        std::cerr << "nexuskv_load: client " << index_ << " " << kOpNames[static_cast<int>(op)]
                  << " " << session_ << ": " << status << "\n";
      }
    }
  }

  void Append() {
    const uint32_t tokens = kMinTokens + rng_() % (kMaxTokens - kMinTokens + 1);
    const client::TurnTensors turn =
        MakeTurn(rng_, session_, turns_, next_position_, tokens, token_scores_);
    const absl::Time start = absl::Now();
    auto ack = client_->AppendTurn(turn);
    Record(Op::kAppend, start, ack.status());
    if (!ack.ok()) return;  // Counted; the next append retries the same turn.
    stats_.bytes_sent += TurnBytes(tokens, token_scores_);
    stats_.tokens_appended += tokens;
    ++stats_.turns_appended;
    ++turns_;
    next_position_ += tokens;
  }

  void Resume() {
    static constexpr Op kResumes[] = {Op::kResumeSonic, Op::kResumeH2O, Op::kResumeSnapKv,
                                      Op::kResumeStreaming, Op::kResumeFull};
    static constexpr v1::Method kMethods[] = {v1::SONIC, v1::H2O, v1::SNAPKV, v1::STREAMING_LLM,
                                              v1::FULL};
    const int pick = rng_() % 5;
    v1::GetCacheRequest request;
    request.set_session_id(session_);
    request.set_method(kMethods[pick]);
    if (kMethods[pick] != v1::FULL) {
      request.mutable_budget()->set_keep_ratio(rng_() % 2 == 0 ? 0.5 : 0.2);
      request.set_keep_recent_turns(1);
    }
    const absl::Time start = absl::Now();
    const CacheRead read =
        ReadCache(*stub_, request, absl::Seconds(absl::GetFlag(FLAGS_rpc_timeout_s)));
    Record(kResumes[pick], start, read.status);
    stats_.bytes_received += read.bytes;
  }

  void Delete() {
    const absl::Time start = absl::Now();
    auto deleted = client_->DeleteSession(session_);
    Record(Op::kDelete, start, deleted.status());
    NewConversation();  // Even after a failed delete: the load moves on.
  }

  const int index_;
  const bool token_scores_;
  std::mt19937_64 rng_;
  std::unique_ptr<client::Client> client_;
  std::unique_ptr<v1::KvMemory::Stub> stub_;
  ClientStats stats_;
  std::string session_;
  uint32_t conversations_ = 0, turns_ = 0, target_turns_ = 0, first_errors_ = 0;
  uint64_t next_position_ = 0;
};

int Main() {
  const int num_clients = absl::GetFlag(FLAGS_clients);
  const absl::Duration duration = absl::Seconds(absl::GetFlag(FLAGS_duration_s));
  std::unique_ptr<testing::ServerProcess> server;
  std::string target = absl::GetFlag(FLAGS_target);
  pid_t pid = -1;
  if (target.empty()) {
    testing::ServerProcessOptions options;
    options.stop_timeout = absl::Seconds(120);  // Reported below: how long the drain takes.
    if (!absl::GetFlag(FLAGS_server_bin).empty()) options.binary = absl::GetFlag(FLAGS_server_bin);
    for (absl::string_view f :
         absl::StrSplit(absl::GetFlag(FLAGS_server_flags), ',', absl::SkipEmpty())) {
      options.extra_flags.emplace_back(f);
    }
    auto started = testing::ServerProcess::Start(options);
    if (!started.ok()) {
      std::cerr << "nexuskv_load: cannot start the server: " << started.status() << "\n";
      return 1;
    }
    server = std::move(*started);
    target = server->address();
    pid = server->pid();
    const std::string info_file = absl::GetFlag(FLAGS_server_info_out);
    if (!info_file.empty()) {
      // Written whole under a temporary name, then renamed: a reader never sees half a line.
      const std::string partial = info_file + ".partial";
      std::ofstream(partial) << pid << " " << server->data_dir() << " " << target << "\n";
      if (std::rename(partial.c_str(), info_file.c_str()) != 0) {
        std::cerr << "nexuskv_load: cannot write " << info_file << "\n";
        return 1;
      }
    }
  }
  WarmPools();  // Before the clock starts.

  std::vector<std::unique_ptr<LoadClient>> clients;
  for (int i = 0; i < num_clients; ++i) {
    clients.push_back(std::make_unique<LoadClient>(i, target, absl::GetFlag(FLAGS_seed),
                                                   absl::GetFlag(FLAGS_token_scores)));
  }
  std::atomic<bool> done{false};
  uint64_t peak_rss_sampled_kb = 0;
  std::thread sampler([&] {
    while (!done.load() && pid > 0) {
      peak_rss_sampled_kb = std::max(peak_rss_sampled_kb, ProcStatusKb(pid, "VmRSS"));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + duration;
  std::vector<std::thread> threads;
  for (auto& c : clients) {
    threads.emplace_back([&c, deadline] { c->Run(deadline, absl::GetFlag(FLAGS_append_ratio)); });
  }
  for (std::thread& t : threads) t.join();
  const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);
  done = true;
  sampler.join();
  const uint64_t hwm_kb = pid > 0 ? ProcStatusKb(pid, "VmHWM") : 0;
  const uint64_t rss_kb = pid > 0 ? ProcStatusKb(pid, "VmRSS") : 0;

  ClientStats total;
  for (auto& c : clients) {
    ClientStats& s = c->stats();
    for (int op = 0; op < kNumOps; ++op) total.latency[op].Merge(s.latency[op]);
    for (const auto& [k, v] : s.errors) total.errors[k] += v;
    total.bytes_sent += s.bytes_sent;
    total.bytes_received += s.bytes_received;
    total.turns_appended += s.turns_appended;
    total.tokens_appended += s.tokens_appended;
  }
  uint64_t calls = 0, errors = 0;
  for (int op = 0; op < kNumOps; ++op) calls += total.latency[op].count();
  for (const auto& [k, v] : total.errors) errors += v;

  std::cout << absl::StrFormat(
      "nexuskv_load: %d clients, %.1f s (calls in flight at the deadline included), %d cpus: %d ok "
      "calls (%.1f/s), %d errors; appended %d "
      "turns (%.1f/s, %.1f MB/s, %d tokens); received %.1f MB/s\n",
      num_clients, elapsed, sysconf(_SC_NPROCESSORS_ONLN), calls, calls / elapsed, errors,
      total.turns_appended, total.turns_appended / elapsed, total.bytes_sent / elapsed / 1e6,
      total.tokens_appended, total.bytes_received / elapsed / 1e6);
  const bool token_scores = absl::GetFlag(FLAGS_token_scores);
  std::cout << absl::StrFormat(
      "mix: %s; appends are %.2f of the operations\n",
      token_scores ? "scored, appended turns carry token scores" : "unscored, no token scores",
      absl::GetFlag(FLAGS_append_ratio));
  std::cout << absl::StrFormat("%-24s %8s %8s %10s %10s %10s\n", "rpc", "ok", "per_s", "p50_ms",
                               "p99_ms", "max_ms");
  std::string json_ops;
  for (int op = 0; op < kNumOps; ++op) {
    const LatencyRecorder& r = total.latency[op];
    std::cout << absl::StrFormat("%-24s %8d %8.1f %10.1f %10.1f %10.1f\n", kOpNames[op], r.count(),
                                 r.count() / elapsed, r.PercentileMs(50), r.PercentileMs(99),
                                 r.MaxMs());
    absl::StrAppend(&json_ops, op ? "," : "",
                    absl::StrFormat("\"%s\":{\"ok\":%d,\"per_s\":%.2f,\"p50_ms\":%.2f,"
                                    "\"p99_ms\":%.2f,\"max_ms\":%.2f}",
                                    kOpNames[op], r.count(), r.count() / elapsed,
                                    r.PercentileMs(50), r.PercentileMs(99), r.MaxMs()));
  }
  std::string json_errors;
  for (const auto& [k, v] : total.errors) {
    std::cout << "error " << k << ": " << v << "\n";
    absl::StrAppend(&json_errors, json_errors.empty() ? "" : ",", "\"", k, "\":", v);
  }
  if (pid > 0) {
    std::cout << absl::StrFormat(
        "server peak RSS (VmHWM) %.1f MiB; highest sampled VmRSS %.1f MiB; VmRSS at the end %.1f "
        "MiB\n",
        hwm_kb / 1024.0, peak_rss_sampled_kb / 1024.0, rss_kb / 1024.0);
  }
  const std::string json_file = absl::GetFlag(FLAGS_json_out);
  if (!json_file.empty()) {
    std::ofstream out(json_file);
    out << absl::StrFormat(
        "{\"clients\":%d,\"mix\":\"%s\",\"token_scores\":%s,\"append_ratio\":%.2f,"
        "\"duration_s\":%.2f,\"ok_calls\":%d,\"calls_per_s\":%.2f,\"errors\":%d,"
        "\"turns_appended\":%d,\"append_mb_per_s\":%.2f,\"received_mb_per_s\":%.2f,"
        "\"server_vmhwm_mib\":%.1f,\"ops\":{%s},\"error_counts\":{%s}}\n",
        num_clients, token_scores ? "scored" : "unscored", token_scores ? "true" : "false",
        absl::GetFlag(FLAGS_append_ratio), elapsed, calls, calls / elapsed, errors,
        total.turns_appended, total.bytes_sent / elapsed / 1e6,
        total.bytes_received / elapsed / 1e6, hwm_kb / 1024.0, json_ops, json_errors);
  }
  if (server) {
    const absl::Time stop_start = absl::Now();
    const absl::Status stopped = server->Stop();
    std::cout << absl::StrFormat("server stopped %s %.1f s after SIGTERM\n",
                                 stopped.ok() ? "cleanly" : "NOT cleanly",
                                 absl::ToDoubleSeconds(absl::Now() - stop_start));
    if (!stopped.ok()) {
      std::cerr << "nexuskv_load: the server did not stop cleanly: " << stopped << "\n";
      return 1;
    }
  }
  return errors == 0 ? 0 : 3;
}

}  // namespace
}  // namespace nexuskv::load

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("nexuskv_load --clients=N --duration_s=S [--target=HOST:PORT]");
  absl::ParseCommandLine(argc, argv);
  return nexuskv::load::Main();
}
