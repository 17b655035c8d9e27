// nexuskv_resume_latency: GetCache latency of one long session, a compressed read beside a FULL
// read of the same session in the same run (issue 16: "p50/p99 latency of a 16-turn session at
// keep 0.2 (SONIC, scored) against a FULL read of the same session, and the bytes streamed per
// second").
//
//   build/bin/nexuskv_resume_latency                       # 16 turns x 256 tokens, 200 calls each
//   build/bin/nexuskv_resume_latency --calls=50 --json_out=resume16.json
//   build/bin/nexuskv_resume_latency --notoken_scores      # SONIC from fitted ladders instead
//
// It starts its own server as nexuskv_load does (or uses --target), appends one session of
// --turns turns of --turn_tokens tokens each (SmolLM2-135M shapes, float16, 8 probe queries, and
// by default the worker's token scores on every layer, so SONIC answers by scored selection and
// reads no fit), then makes 2 x --calls sequential GetCache calls, alternating SONIC at
// --keep_ratio (keep_recent_turns --keep_recent_turns) and FULL, after --warmup uncounted calls of
// each. One client, one call at a time: the figure is the latency of an idle server, not of a
// loaded one (nexuskv_load measures that).
//
// Reported per method: p50, p99 and max latency (first byte asked to last byte read), the bytes
// of an answer (keys, values, bias, positions) and the bytes streamed per second (all answers'
// bytes over all their latencies); then SONIC / FULL for each. An answer served otherwise than
// asked (a note in CacheHeader.notes, or a compressed turn's method not the one asked for, such
// as a STREAMING_LLM fallback when a fit did not come within --fit_wait_ms) is counted and
// printed: the scored figure is only clean when that count is 0. Exit status 3 on any error or
// such answer.
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <string>

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

ABSL_FLAG(int, turns, 16, "Turns of the session.");
ABSL_FLAG(int, turn_tokens, 256, "Tokens of each turn.");
ABSL_FLAG(int, calls, 200, "Counted GetCache calls of each method.");
ABSL_FLAG(int, warmup, 5, "Uncounted GetCache calls of each method first.");
ABSL_FLAG(double, keep_ratio, 0.2, "Budget of the SONIC reads.");
ABSL_FLAG(int, keep_recent_turns, 1, "Most recent turns the SONIC reads keep raw.");
ABSL_FLAG(bool, token_scores, true,
          "Appended turns carry token scores (SONIC answers by scored selection); false: SONIC "
          "reads the fitted ladders.");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the session's tensors.");
ABSL_FLAG(std::string, target, "", "host:port of a running server; empty: start one.");
ABSL_FLAG(std::string, server_flags, "--sync_writes=true,--log_level=warning",
          "Comma-separated flags for the server this tool starts.");
ABSL_FLAG(std::string, server_bin, "", "The server binary to start; empty: the build's own.");
ABSL_FLAG(std::string, json_out, "", "Also write the results as one JSON object to this file.");
ABSL_FLAG(double, rpc_timeout_s, 60, "Deadline of each call.");

namespace nexuskv::load {
namespace {

namespace v1 = ::nexuskv::v1;

struct MethodRun {
  std::string name;
  v1::GetCacheRequest request;
  LatencyRecorder latency;
  uint64_t bytes = 0;         // Over the counted calls.
  double seconds = 0;         // Sum of the counted calls' latencies.
  uint64_t answer_bytes = 0;  // Of the last answer.
  uint64_t served_otherwise = 0;
  std::string first_note;
  double MbPerS() const { return seconds > 0 ? bytes / seconds / 1e6 : 0; }
};

// Whether an answer is what was asked for: no note, and every compressed turn by that method.
bool ServedAsAsked(const v1::GetCacheRequest& request, const v1::CacheHeader& header) {
  if (!header.notes().empty()) return false;
  for (const v1::TurnAllocation& turn : header.turns()) {
    if (!turn.raw() && turn.method() != request.method()) return false;
  }
  return true;
}

// One call; counted unless warming up. Returns the call's error.
absl::Status Call(v1::KvMemory::Stub& stub, MethodRun& run, bool counted) {
  const absl::Time start = absl::Now();
  const CacheRead read =
      ReadCache(stub, run.request, absl::Seconds(absl::GetFlag(FLAGS_rpc_timeout_s)));
  const absl::Duration took = absl::Now() - start;
  if (!read.status.ok()) return read.status;
  run.answer_bytes = read.bytes;
  if (!ServedAsAsked(run.request, read.header)) {
    ++run.served_otherwise;
    if (run.first_note.empty()) {
      run.first_note =
          read.header.notes().empty() ? "a turn served by another method" : read.header.notes();
    }
  }
  if (counted) {
    run.latency.Add(took);
    run.bytes += read.bytes;
    run.seconds += absl::ToDoubleSeconds(took);
  }
  return absl::OkStatus();
}

int Main() {
  std::unique_ptr<testing::ServerProcess> server;
  std::string target = absl::GetFlag(FLAGS_target);
  if (target.empty()) {
    testing::ServerProcessOptions options;
    options.stop_timeout = absl::Seconds(120);
    if (!absl::GetFlag(FLAGS_server_bin).empty()) options.binary = absl::GetFlag(FLAGS_server_bin);
    for (absl::string_view f :
         absl::StrSplit(absl::GetFlag(FLAGS_server_flags), ',', absl::SkipEmpty())) {
      options.extra_flags.emplace_back(f);
    }
    auto started = testing::ServerProcess::Start(options);
    if (!started.ok()) {
      std::cerr << "nexuskv_resume_latency: cannot start the server: " << started.status() << "\n";
      return 1;
    }
    server = std::move(*started);
    target = server->address();
  }
  WarmPools();

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  client::ClientOptions client_options;
  client_options.target = target;
  client_options.timeout = absl::Seconds(absl::GetFlag(FLAGS_rpc_timeout_s));
  client::Client client(channel, client_options);
  auto stub = v1::KvMemory::NewStub(channel);

  const int turns = absl::GetFlag(FLAGS_turns);
  const uint32_t tokens = absl::GetFlag(FLAGS_turn_tokens);
  const bool token_scores = absl::GetFlag(FLAGS_token_scores);
  const std::string session =
      absl::StrCat("resume-latency-", getpid(), "-", absl::ToUnixMillis(absl::Now()));
  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
  const absl::Time append_start = absl::Now();
  for (int t = 0; t < turns; ++t) {
    auto ack =
        client.AppendTurn(MakeTurn(rng, session, t, uint64_t{tokens} * t, tokens, token_scores));
    if (!ack.ok()) {
      std::cerr << "nexuskv_resume_latency: append of turn " << t << ": " << ack.status() << "\n";
      return 1;
    }
  }
  const double append_s = absl::ToDoubleSeconds(absl::Now() - append_start);

  MethodRun runs[2];
  runs[0].name = absl::StrFormat("sonic_keep%.2g", absl::GetFlag(FLAGS_keep_ratio));
  runs[0].request.set_method(v1::SONIC);
  runs[0].request.mutable_budget()->set_keep_ratio(absl::GetFlag(FLAGS_keep_ratio));
  runs[0].request.set_keep_recent_turns(absl::GetFlag(FLAGS_keep_recent_turns));
  runs[1].name = "full";
  runs[1].request.set_method(v1::FULL);
  for (MethodRun& run : runs) run.request.set_session_id(session);

  const int warmup = absl::GetFlag(FLAGS_warmup), calls = absl::GetFlag(FLAGS_calls);
  uint64_t errors = 0;
  for (int i = 0; i < warmup + calls; ++i) {
    for (MethodRun& run : runs) {
      const absl::Status status = Call(*stub, run, i >= warmup);
      if (!status.ok() && errors++ < 3) {
        std::cerr << "nexuskv_resume_latency: " << run.name << ": " << status << "\n";
      }
    }
  }
  (void)client.DeleteSession(session);  // A shared --target keeps no leftovers; errors ignored.

  const MethodRun& sonic = runs[0];
  const MethodRun& full = runs[1];
  auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
  std::cout << absl::StrFormat(
      "nexuskv_resume_latency: one session of %d turns x %d tokens (SmolLM2-135M shapes, "
      "float16, token scores %s), appended in %.2f s; %d calls of each method after %d warm-up, "
      "alternating, one at a time; %d cpus; %d errors\n",
      turns, tokens, token_scores ? "on" : "off", append_s, calls, warmup,
      sysconf(_SC_NPROCESSORS_ONLN), errors);
  std::cout << absl::StrFormat("%-16s %6s %10s %10s %10s %12s %10s %9s\n", "get_cache", "ok",
                               "p50_ms", "p99_ms", "max_ms", "answer_MB", "MB_per_s", "otherwise");
  std::string json_methods;
  for (const MethodRun& run : runs) {
    const LatencyRecorder& r = run.latency;
    std::cout << absl::StrFormat("%-16s %6d %10.2f %10.2f %10.2f %12.2f %10.1f %9d\n", run.name,
                                 r.count(), r.PercentileMs(50), r.PercentileMs(99), r.MaxMs(),
                                 run.answer_bytes / 1e6, run.MbPerS(), run.served_otherwise);
    absl::StrAppend(
        &json_methods, json_methods.empty() ? "" : ",",
        absl::StrFormat("\"%s\":{\"ok\":%d,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
                        "\"max_ms\":%.3f,\"answer_bytes\":%d,\"mb_per_s\":%.2f,"
                        "\"served_otherwise\":%d}",
                        run.name, r.count(), r.PercentileMs(50), r.PercentileMs(99), r.MaxMs(),
                        run.answer_bytes, run.MbPerS(), run.served_otherwise));
  }
  const double p50 = ratio(sonic.latency.PercentileMs(50), full.latency.PercentileMs(50));
  const double p99 = ratio(sonic.latency.PercentileMs(99), full.latency.PercentileMs(99));
  const double bytes = ratio(sonic.answer_bytes, full.answer_bytes);
  const double mbps = ratio(sonic.MbPerS(), full.MbPerS());
  std::cout << absl::StrFormat("%s / full: p50 %.3fx, p99 %.3fx, answer bytes %.3fx, MB/s %.3fx\n",
                               sonic.name, p50, p99, bytes, mbps);
  for (const MethodRun& run : runs) {
    if (run.served_otherwise > 0) {
      std::cout << run.name << ": " << run.served_otherwise
                << " answers (warm-up included) not served as asked; first: " << run.first_note
                << "\n";
    }
  }
  const std::string json_file = absl::GetFlag(FLAGS_json_out);
  if (!json_file.empty()) {
    std::ofstream(json_file) << absl::StrFormat(
        "{\"turns\":%d,\"turn_tokens\":%d,\"token_scores\":%s,\"keep_ratio\":%.3f,"
        "\"keep_recent_turns\":%d,\"calls\":%d,\"warmup\":%d,\"errors\":%d,\"append_s\":%.3f,"
        "\"methods\":{%s},\"ratio\":{\"p50\":%.4f,\"p99\":%.4f,\"answer_bytes\":%.4f,"
        "\"mb_per_s\":%.4f}}\n",
        turns, tokens, token_scores ? "true" : "false", absl::GetFlag(FLAGS_keep_ratio),
        absl::GetFlag(FLAGS_keep_recent_turns), calls, warmup, errors, append_s, json_methods, p50,
        p99, bytes, mbps);
  }
  if (server) {
    const absl::Status stopped = server->Stop();
    if (!stopped.ok()) {
      std::cerr << "nexuskv_resume_latency: the server did not stop cleanly: " << stopped << "\n";
      return 1;
    }
  }
  return errors == 0 && sonic.served_otherwise == 0 && full.served_otherwise == 0 ? 0 : 3;
}

}  // namespace
}  // namespace nexuskv::load

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "nexuskv_resume_latency [--turns=16 --turn_tokens=256 --calls=200 --keep_ratio=0.2]");
  absl::ParseCommandLine(argc, argv);
  return nexuskv::load::Main();
}
