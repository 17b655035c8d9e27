// Graceful shutdown under a compression backlog: SIGTERM must end the server within
// --shutdown_grace_s (plus the time to close RocksDB), whatever background work is queued.
//
// docs/architecture.md: "SIGTERM/SIGINT: health turns NOT_SERVING, in-flight RPCs get
// --shutdown_grace_s to finish, the pools stop, RocksDB closes"; service/fit_scheduler.h:
// "Shutdown() stops the workers; queued jobs are dropped (Ensure recomputes on demand)". A server
// that instead works through its whole fit queue after SIGTERM outlives any orchestrator's grace
// period and is SIGKILLed (safe for the data, but not graceful).
#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/crash/turns.h"
#include "tests/integration/server_process.h"

namespace nexuskv::testing {
namespace {

// SmolLM2-135M-like shapes: fits of these take a noticeable time each.
v1::ModelSpec LargeSpec() {
  v1::ModelSpec spec = SmallSpec();
  spec.set_num_layers(30);
  spec.set_num_kv_heads(3);
  spec.set_num_query_heads(9);
  spec.set_head_dim(64);
  return spec;
}

TEST(ShutdownTest, SigtermDoesNotWaitForQueuedFits) {
  constexpr int kGraceS = 2;
  constexpr int kTurns = 40;
  auto server = ServerProcess::Start(
      {.extra_flags = {"--sync_writes=false", "--fit_threads=1", "--log_level=warning",
                       "--shutdown_grace_s=" + std::to_string(kGraceS)},
       // Grace, closing RocksDB, and slack for a loaded machine; far less than the backlog.
       .stop_timeout = absl::Seconds(kGraceS + 13)});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Connect();
  ASSERT_TRUE(client.ok());
  uint64_t position = 0;
  for (uint32_t t = 0; t < kTurns; ++t) {
    const TurnBytes turn = MakeTurnBytes(LargeSpec(), 1, "backlog", t, position, 400);
    position += 400;
    auto ack = (*client)->AppendTurn(turn.View(LargeSpec()));
    ASSERT_TRUE(ack.ok()) << ack.status();
  }
  // Every append queued one fit per method; the single worker is far behind.
  const absl::Time start = absl::Now();
  const absl::Status stopped = (*server)->Stop();
  std::cout << "shutdown_test: SIGTERM to exit took " << absl::FormatDuration(absl::Now() - start)
            << " with " << kTurns << " turns' fits queued; " << (*server)->last_exit() << std::endl;
  EXPECT_TRUE(stopped.ok()) << "the server worked through its fit queue after SIGTERM instead of "
                               "dropping it: "
                            << stopped;
}

}  // namespace
}  // namespace nexuskv::testing
