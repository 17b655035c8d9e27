// Crash test: nothing acknowledged is ever lost.
//
// The real nexuskv-server runs with --sync_writes=true. Several client threads append turns to
// their own sessions (half of them also re-send turns they already had acknowledged, and re-send
// an unacknowledged turn after the restart, as a retrying worker would); the server is SIGKILLed
// at a random moment, restarted on the same data dir, and then every session is read back:
//   - every acknowledged turn is there and bit-identical (FULL GetCache against the client's own
//     per-head checksums of what it sent);
//   - no half-written turn is visible: GetSession lists exactly the turns the FULL answer serves,
//     each with its declared size, and nothing beyond the last turn a client sent;
//   - a turn whose ack was lost is wholly there (identical) or absent, and re-sending it gets
//     already_stored exactly when it was there.
//
// Environment: NEXUSKV_CRASH_ROUNDS (default 20), NEXUSKV_CRASH_CLIENTS (default 6),
// NEXUSKV_CRASH_SEED (default: random; always printed), NEXUSKV_SERVER_BINARY (default: the
// build's nexuskv-server). The seed fixes the kill schedule and every
// payload; thread interleaving is up to the OS, so a seed does not replay a run exactly.
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/crash/turns.h"
#include "tests/integration/server_process.h"

namespace nexuskv::testing {
namespace {

uint64_t EnvOr(const char* name, uint64_t fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] != '\0' ? std::strtoull(value, nullptr, 10) : fallback;
}

// A client that fails fast (no wait_for_ready) and reconnects quickly, on its own channel.
std::unique_ptr<client::Client> FastFailClient(const std::string& address) {
  client::ClientOptions options;
  options.target = address;
  options.timeout = absl::Seconds(10);
  options.wait_for_ready = false;
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 300);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  return std::make_unique<client::Client>(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args), options);
}

struct SessionState {
  std::string id;
  uint32_t target_turns = 0;
  std::vector<TurnDigest> acked;  // Turns 0..acked.size()-1, acknowledged.
  // Turn acked.size(), sent but not acknowledged: stored or not, unknown until read back.
  std::optional<TurnDigest> pending;
  // Set by Verify for a retrying client: whether the pending turn was found stored, i.e. whether
  // its re-send must report already_stored.
  std::optional<bool> pending_present;
  bool touched = false;  // Appended to (or tried) since the last verification.

  uint64_t next_position() const {
    return acked.empty() ? 0 : acked.back().first_position + acked.back().num_tokens;
  }
};

struct ClientState {
  int index = 0;
  bool retrier = false;
  std::mt19937_64 rng;
  std::vector<SessionState> sessions;  // The last one is being appended to.
  uint64_t acks = 0, duplicate_acks = 0, failed_calls = 0;
};

class CrashTest : public ::testing::Test {
 protected:
  // Appends until `stop`; every outcome is recorded in `c` (one thread per ClientState).
  void AppendLoop(ClientState& c, const std::string& address, const std::atomic<bool>& stop) {
    const v1::ModelSpec spec = SmallSpec();
    std::unique_ptr<client::Client> client = FastFailClient(address);
    while (!stop.load()) {
      if (c.sessions.empty() || (c.sessions.back().acked.size() >= c.sessions.back().target_turns &&
                                 !c.sessions.back().pending)) {
        SessionState s;
        s.id = absl::StrCat("c", c.index, "-s", c.sessions.size());
        s.target_turns = 4 + c.rng() % 13;
        c.sessions.push_back(std::move(s));
      }
      SessionState& s = c.sessions.back();
      s.touched = true;
      // A retrying worker sometimes re-sends a turn it already had acknowledged.
      if (c.retrier && !s.acked.empty() && c.rng() % 6 == 0) {
        const uint32_t k = c.rng() % s.acked.size();
        const TurnBytes again =
            MakeTurnBytes(spec, seed_, s.id, k, s.acked[k].first_position, s.acked[k].num_tokens);
        auto ack = client->AppendTurn(again.View(spec));
        if (ack.ok()) {
          ++c.duplicate_acks;
          if (!ack->already_stored() || ack->turn() != k) {
            Fail(absl::StrCat(s.id, " turn ", k, " re-sent: already_stored=", ack->already_stored(),
                              " turn=", ack->turn()));
          }
        } else {
          ++c.failed_calls;
        }
        continue;
      }
      const uint32_t turn = s.acked.size();
      const uint32_t tokens = 8 + Hash(absl::StrCat(s.id, "/", turn), seed_) % 41;
      const TurnBytes bytes = MakeTurnBytes(spec, seed_, s.id, turn, s.next_position(), tokens);
      const bool resend = s.pending.has_value();
      const std::optional<bool> expect_stored = s.pending_present;
      s.pending = Digest(spec, bytes);
      auto ack = client->AppendTurn(bytes.View(spec));
      if (!ack.ok()) {
        ++c.failed_calls;
        s.pending_present.reset();  // This attempt may or may not have been stored.
        const absl::StatusCode code = ack.status().code();
        if (code != absl::StatusCode::kUnavailable && code != absl::StatusCode::kDeadlineExceeded &&
            code != absl::StatusCode::kCancelled && code != absl::StatusCode::kInternal &&
            code != absl::StatusCode::kUnknown) {
          Fail(absl::StrCat(s.id, " turn ", turn, ": unexpected error ", ack.status().ToString()));
        }
        if (!c.retrier) return;  // Learns the outcome from the read-back after the restart.
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        continue;  // Retries the same turn.
      }
      ++c.acks;
      if (ack->turn() != turn || ack->num_turns() != turn + 1 ||
          ack->next_position() != bytes.first_position + tokens) {
        Fail(absl::StrCat(s.id, " turn ", turn, ": ack says turn ", ack->turn(), ", num_turns ",
                          ack->num_turns(), ", next_position ", ack->next_position()));
      }
      // already_stored only for a turn whose earlier ack was lost, and then exactly when the
      // read-back found it.
      if (ack->already_stored() && !resend) {
        Fail(absl::StrCat(s.id, " turn ", turn, ": first send reported already_stored"));
      }
      if (expect_stored && ack->already_stored() != *expect_stored) {
        Fail(absl::StrCat(s.id, " turn ", turn,
                          ": re-send after restart reported already_stored=", ack->already_stored(),
                          " but the read-back found it ", *expect_stored ? "stored" : "absent"));
      }
      s.acked.push_back(*s.pending);
      s.pending.reset();
      s.pending_present.reset();
    }
  }

  // Reads one session back and checks it against what its client knows.
  void Verify(ClientState& c, SessionState& s) {
    SCOPED_TRACE(absl::StrCat("seed ", seed_, ", session ", s.id));
    const v1::ModelSpec spec = SmallSpec();
    auto info = reader_->GetSession(s.id);
    uint32_t n = 0;
    if (info.ok()) {
      n = info->num_turns();
    } else {
      ASSERT_EQ(info.status().code(), absl::StatusCode::kNotFound) << info.status();
    }
    const uint32_t acked = s.acked.size();
    ASSERT_GE(n, acked) << "acknowledged turns lost: " << acked << " acknowledged, " << n
                        << " stored";
    ASSERT_LE(n, acked + (s.pending ? 1 : 0)) << "more turns stored than were ever sent";
    std::vector<TurnDigest> expected = s.acked;
    if (n > acked) expected.push_back(*s.pending);
    if (n > 0) {
      ASSERT_EQ(info->turns_size(), static_cast<int>(n));
      for (uint32_t t = 0; t < n; ++t) {
        EXPECT_EQ(info->turns(t).num_tokens(), expected[t].num_tokens) << "turn " << t;
        EXPECT_EQ(info->turns(t).first_position(), expected[t].first_position) << "turn " << t;
      }
      v1::GetCacheRequest request;
      request.set_session_id(s.id);
      request.set_method(v1::FULL);
      auto cache = reader_->GetCache(request);
      ASSERT_TRUE(cache.ok()) << "FULL read of " << n << " turns: " << cache.status();
      EXPECT_EQ(CompareFull(spec, *cache, expected), "");
      turns_checked_ += n;
    }
    if (s.pending) {
      (n > acked ? pending_present_ : pending_absent_)++;
      if (c.retrier) {
        s.pending_present = n > acked;  // The retrier re-sends it and checks already_stored.
      } else {
        if (n > acked) s.acked.push_back(*s.pending);
        s.pending.reset();
      }
    }
    s.touched = false;
  }

  void Fail(const std::string& what) {
    std::lock_guard<std::mutex> lock(failures_mu_);
    failures_.push_back(what);
  }

  uint64_t seed_ = 0;
  std::unique_ptr<client::Client> reader_;
  uint64_t turns_checked_ = 0, pending_present_ = 0, pending_absent_ = 0;
  std::mutex failures_mu_;
  std::vector<std::string> failures_;
};

TEST_F(CrashTest, AcknowledgedTurnsSurviveSigkill) {
  seed_ = EnvOr("NEXUSKV_CRASH_SEED", std::random_device{}());
  const uint64_t rounds = EnvOr("NEXUSKV_CRASH_ROUNDS", 20);
  const int num_clients = static_cast<int>(EnvOr("NEXUSKV_CRASH_CLIENTS", 6));
  std::cout << "crash_test: seed=" << seed_ << " rounds=" << rounds << " clients=" << num_clients
            << " (rerun with NEXUSKV_CRASH_SEED=" << seed_ << ")" << std::endl;
  SCOPED_TRACE(absl::StrCat("NEXUSKV_CRASH_SEED=", seed_));

  ServerProcessOptions options{.extra_flags = {"--sync_writes=true", "--log_level=warning"}};
  // A private copy of the binary for long runs in a tree that is being rebuilt meanwhile.
  if (const char* binary = std::getenv("NEXUSKV_SERVER_BINARY"); binary != nullptr && *binary) {
    options.binary = binary;
  }
  auto server = ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  auto reader = (*server)->Connect();
  ASSERT_TRUE(reader.ok()) << reader.status();
  reader_ = std::move(*reader);

  std::mt19937_64 schedule(seed_);
  std::vector<ClientState> clients(num_clients);
  for (int i = 0; i < num_clients; ++i) {
    clients[i].index = i;
    clients[i].retrier = i % 2 == 1;
    clients[i].rng.seed(seed_ * 1000 + i);
  }
  const absl::Time start = absl::Now();
  uint64_t survived = 0;
  for (uint64_t round = 0; round < rounds; ++round) {
    // Mostly mid-stream kills; one round in five kills within 60 ms of the restart, while the
    // clients connect and RocksDB has just replayed its WAL.
    const int delay_ms = schedule() % 5 == 0 ? schedule() % 60 : 100 + schedule() % 1400;
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    for (ClientState& c : clients) {
      threads.emplace_back([&, address = (*server)->address()] { AppendLoop(c, address, stop); });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    ASSERT_TRUE((*server)->Kill().ok());
    stop = true;
    for (std::thread& t : threads) t.join();
    ASSERT_NE((*server)->last_exit().find("signal 9"), std::string::npos) << (*server)->last_exit();

    const absl::Status restarted = (*server)->Restart();
    ASSERT_TRUE(restarted.ok()) << "round " << round << ": " << restarted;
    uint64_t acked = 0;
    for (ClientState& c : clients) {
      for (size_t i = 0; i < c.sessions.size(); ++i) {
        // Sessions touched this round, plus an older one now and then (all of them at the end).
        if (c.sessions[i].touched || round + 1 == rounds || schedule() % 8 == 0) {
          Verify(c, c.sessions[i]);
        }
        acked += c.sessions[i].acked.size();
      }
    }
    {
      std::lock_guard<std::mutex> lock(failures_mu_);
      for (const std::string& f : failures_) ADD_FAILURE() << "round " << round << ": " << f;
      if (!failures_.empty()) break;
    }
    if (HasFailure()) break;
    ++survived;
    std::cout << "crash_test: round " << round << " killed after " << delay_ms
              << " ms; acknowledged turns so far " << acked << ", pending turns found stored "
              << pending_present_ << " / absent " << pending_absent_ << std::endl;
  }
  uint64_t acks = 0, duplicates = 0, failed = 0, sessions = 0;
  for (const ClientState& c : clients) {
    acks += c.acks;
    duplicates += c.duplicate_acks;
    failed += c.failed_calls;
    sessions += c.sessions.size();
  }
  std::cout << "crash_test: seed=" << seed_ << " rounds survived " << survived << "/" << rounds
            << ", sessions " << sessions << ", appends acknowledged " << acks
            << ", duplicate re-sends acknowledged " << duplicates << ", failed calls " << failed
            << ", turns checked " << turns_checked_ << ", unacknowledged turns found stored "
            << pending_present_ << " / absent " << pending_absent_ << ", "
            << absl::ToInt64Seconds(absl::Now() - start) << " s" << std::endl;
  if (HasFailure()) std::cerr << "server log:\n" << (*server)->LogTail() << "\n";
  EXPECT_EQ(survived, rounds);
  EXPECT_GT(acks, rounds) << "the clients hardly appended anything; the test proved little";
}

}  // namespace
}  // namespace nexuskv::testing
