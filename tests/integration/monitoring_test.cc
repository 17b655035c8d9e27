// Metrics and health end to end: the real nexuskv-server with --metrics_listen, scraped over HTTP
// after real RPCs; and its health service turning NOT_SERVING while the data disk is below the
// --min_free_disk_bytes reserve, SERVING again once space returns (no restart).
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "metrics/testing/http_get.h"
#include "nexuskv/v1/kv_memory.grpc.pb.h"
#include "tests/integration/bf16_turns.h"
#include "tests/integration/server_process.h"

namespace nexuskv::testing {
namespace {

namespace v1 = ::nexuskv::v1;
using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;
using ::testing::HasSubstr;

constexpr char kKv[] = "nexuskv.v1.KvMemory";

int PickFreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

// One scrape: series ("name{labels}") -> value.
using Scrape = std::map<std::string, double>;

absl::StatusOr<Scrape> ScrapeMetrics(int port) {
  absl::StatusOr<metrics::testing::HttpResponse> page =
      metrics::testing::HttpGet("127.0.0.1", port, "/metrics");
  if (!page.ok()) return page.status();
  if (page->status != 200) return absl::InternalError(absl::StrCat("HTTP ", page->status));
  Scrape scrape;
  for (absl::string_view line : absl::StrSplit(page->body, '\n', absl::SkipEmpty())) {
    if (line.front() == '#') continue;
    const size_t space = line.rfind(' ');
    double value = 0;
    if (space == absl::string_view::npos || !absl::SimpleAtod(line.substr(space + 1), &value)) {
      return absl::InternalError(absl::StrCat("unparsable line: ", std::string(line)));
    }
    scrape[std::string(line.substr(0, space))] = value;
  }
  return scrape;
}

std::string Rpc(const std::string& method, const std::string& code) {
  return absl::StrCat("nexuskv_rpcs_total{service=\"", kKv, "\",method=\"", method, "\",code=\"",
                      code, "\"}");
}

// One turn of `tokens` tokens as the AppendSegment messages a client sends.
std::vector<v1::AppendSegmentRequest> TurnMessages(const std::string& session, uint32_t turn,
                                                   uint32_t tokens, uint64_t first) {
  const v1::ModelSpec spec = Bf16Spec("monitoring-model");
  std::vector<v1::AppendSegmentRequest> messages(1);
  v1::SegmentHeader& header = *messages[0].mutable_header();
  header.set_session_id(session);
  header.set_turn(turn);
  header.set_num_tokens(tokens);
  header.set_first_position(first);
  header.set_role(v1::ROLE_USER);
  *header.mutable_model() = spec;
  header.set_num_probe_queries(4);
  const size_t kv = size_t{spec.num_kv_heads()} * tokens * spec.head_dim();
  const size_t q = size_t{spec.num_query_heads()} * 4 * spec.head_dim();
  for (uint32_t l = 0; l < spec.num_layers(); ++l) {
    v1::LayerChunk& chunk = *messages.emplace_back().mutable_layer();
    chunk.set_layer(l);
    chunk.set_keys(RandomBf16(kv, turn * 100 + l * 3));
    chunk.set_values(RandomBf16(kv, turn * 100 + l * 3 + 1));
    chunk.set_probe_queries(RandomBf16(q, turn * 100 + l * 3 + 2));
  }
  return messages;
}

grpc::Status Append(v1::KvMemory::Stub& stub, const std::vector<v1::AppendSegmentRequest>& turn) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::AppendSegmentResponse response;
  auto writer = stub.AppendSegment(&context, &response);
  for (const auto& message : turn) {
    if (!writer->Write(message)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

grpc::Status GetSession(v1::KvMemory::Stub& stub, const std::string& session) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::GetSessionRequest request;
  request.set_session_id(session);
  v1::SessionInfo info;
  return stub.GetSession(&context, request, &info);
}

// The health service's answer for the whole server ("").
HealthCheckResponse::ServingStatus Health(grpc::health::v1::Health::Stub& health) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  HealthCheckResponse response;
  const grpc::Status status = health.Check(&context, HealthCheckRequest(), &response);
  return status.ok() ? response.status() : HealthCheckResponse::UNKNOWN;
}

// Polls the health service until it answers `want` or `timeout` passes; the last answer.
HealthCheckResponse::ServingStatus AwaitHealth(grpc::health::v1::Health::Stub& health,
                                               HealthCheckResponse::ServingStatus want,
                                               absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  HealthCheckResponse::ServingStatus last = Health(health);
  while (last != want && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
    last = Health(health);
  }
  return last;
}

TEST(MetricsTest, RpcsBytesFitsAndStoreGaugesAfterRealCalls) {
  const int metrics_port = PickFreePort();
  ASSERT_GT(metrics_port, 0);
  auto server = ServerProcess::Start(
      {.extra_flags = {absl::StrCat("--metrics_listen=127.0.0.1:", metrics_port),
                       "--sync_writes=false"}});
  ASSERT_TRUE(server.ok()) << server.status();
  auto channel = grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials());
  auto stub = v1::KvMemory::NewStub(channel);

  const std::vector<v1::AppendSegmentRequest> turn = TurnMessages("metrics-1", 0, 24, 0);
  uint64_t bytes_in = 0;
  for (const auto& message : turn) bytes_in += message.ByteSizeLong();
  ASSERT_TRUE(Append(*stub, turn).ok());

  grpc::ClientContext context;
  v1::GetCacheRequest request;
  request.set_session_id("metrics-1");
  request.set_method(v1::FULL);
  auto reader = stub->GetCache(&context, request);
  uint64_t bytes_out = 0;
  int messages_out = 0;
  for (v1::GetCacheResponse response; reader->Read(&response); ++messages_out) {
    bytes_out += response.ByteSizeLong();
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(messages_out, 4);  // The header, then one message per layer.

  EXPECT_EQ(GetSession(*stub, "no-such-session").error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(GetSession(*stub, "bad id!").error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  absl::StatusOr<Scrape> scrape = ScrapeMetrics(metrics_port);
  ASSERT_TRUE(scrape.ok()) << scrape.status() << "\n" << (*server)->LogTail();
  Scrape& m = *scrape;
  EXPECT_EQ(m[Rpc("AppendSegment", "OK")], 1);
  EXPECT_EQ(m[Rpc("GetCache", "OK")], 1);
  EXPECT_EQ(m[Rpc("GetSession", "NOT_FOUND")], 1);
  EXPECT_EQ(m[Rpc("GetSession", "INVALID_ARGUMENT")], 1);
  EXPECT_EQ(m.count(Rpc("GetSession", "OK")), 0u);
  EXPECT_GE(m["nexuskv_rpcs_total{service=\"grpc.health.v1.Health\",method=\"Check\",code=\"OK\"}"],
            1);  // The harness waited for SERVING.
  EXPECT_EQ(m[absl::StrCat("nexuskv_rpc_duration_seconds_count{service=\"", kKv,
                           "\",method=\"GetSession\"}")],
            2);
  EXPECT_EQ(m[absl::StrCat("nexuskv_rpc_duration_seconds_bucket{service=\"", kKv,
                           "\",method=\"AppendSegment\",le=\"+Inf\"}")],
            1);
  EXPECT_EQ(m["nexuskv_append_received_bytes_total"], static_cast<double>(bytes_in));
  EXPECT_EQ(m["nexuskv_get_cache_sent_bytes_total"], static_cast<double>(bytes_out));
  EXPECT_EQ(m["nexuskv_tenant_sessions{tenant=\"default\"}"], 1);
  // 24 tokens x 3 layers x (keys + values: 2 x 2 heads x 16 dims, + probes: 6 x 4 x 16) x 2 bytes,
  // plus any fit already stored.
  EXPECT_GE(m["nexuskv_tenant_stored_bytes{tenant=\"default\"}"],
            3 * (2 * 2 * 24 * 16 + 6 * 4 * 16) * 2);
  EXPECT_EQ(m["nexuskv_device_info{device=\"cpu\"}"], 1);
  EXPECT_EQ(m["nexuskv_store_writable"], 1);
  for (const char* gauge :
       {"nexuskv_fit_queue_depth", "nexuskv_rocksdb_live_sst_bytes",
        "nexuskv_rocksdb_live_blob_bytes", "nexuskv_rocksdb_pending_compaction_bytes"}) {
    EXPECT_EQ(m.count(gauge), 1u) << gauge;
  }

  // Other paths and methods are refused, and the server lives on (civetweb 1.15's own error page
  // once crashed it).
  for (const auto& [path, method, code] :
       {std::tuple("/", "GET", 404), {"/metricsx", "GET", 404}, {"/metrics", "POST", 405}}) {
    absl::StatusOr<metrics::testing::HttpResponse> other =
        metrics::testing::HttpGet("127.0.0.1", metrics_port, path, method);
    ASSERT_TRUE(other.ok()) << method << " " << path << ": " << other.status();
    EXPECT_EQ(other->status, code) << method << " " << path;
  }
  EXPECT_TRUE((*server)->running());

  // The append queued one background fit per method; SONIC's shows up once it has run.
  const std::string sonic_fits =
      "nexuskv_fit_duration_seconds_count{method=\"SONIC\",result=\"ok\"}";
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (m[sonic_fits] < 1 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
    scrape = ScrapeMetrics(metrics_port);
    ASSERT_TRUE(scrape.ok()) << scrape.status();
  }
  EXPECT_EQ(m[sonic_fits], 1) << (*server)->LogTail();
}

TEST(MetricsTest, MalformedAddressStopsTheServerWithAClearMessage) {
  auto server = ServerProcess::Start({.extra_flags = {"--metrics_listen=metrics.example:9464"},
                                      .startup_timeout = absl::Seconds(10)});
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(std::string(server.status().message()), HasSubstr("not an IP address"));
}

// Free space on the data disk is moved across the reserve with a ballast file (fallocate, so no
// bytes are written): the reserve is set 1 GiB below what is free at the start and the ballast
// takes 3 GiB. Other processes on the machine would have to write or free a GiB within the test
// to change its outcome.
TEST(HealthTest, NotServingWhileTheDiskReserveIsHitServingOnceSpaceReturns) {
  const std::filesystem::path tmp = std::filesystem::temp_directory_path();
  const uint64_t free_bytes = std::filesystem::space(tmp).available;
  constexpr uint64_t kGiB = uint64_t{1} << 30;
  if (free_bytes < 8 * kGiB)
    GTEST_SKIP() << "needs 8 GiB free in " << tmp << ", has " << free_bytes;
  const int metrics_port = PickFreePort();
  auto server = ServerProcess::Start(
      {.extra_flags = {absl::StrCat("--min_free_disk_bytes=", free_bytes - kGiB),
                       "--health_check_period_ms=100", "--sync_writes=false",
                       absl::StrCat("--metrics_listen=127.0.0.1:", metrics_port)}});
  ASSERT_TRUE(server.ok()) << server.status();
  auto channel = grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials());
  auto stub = v1::KvMemory::NewStub(channel);
  auto health = grpc::health::v1::Health::NewStub(channel);
  ASSERT_TRUE(Append(*stub, TurnMessages("health-1", 0, 8, 0)).ok());

  const std::string ballast = (tmp / absl::StrCat("nexuskv-health-ballast-", ::getpid())).string();
  // Removed on every way out: a failed assertion below must not leave 3 GiB behind in /tmp (it
  // once did, and filled the disk of the next CI run).
  absl::Cleanup remove_ballast = [&ballast] {
    std::error_code ignored;
    std::filesystem::remove(ballast, ignored);
  };
  const int fd = ::open(ballast.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  const int allocated = ::posix_fallocate(fd, 0, 3 * kGiB);
  ::close(fd);
  if (allocated != 0) GTEST_SKIP() << "posix_fallocate of the ballast failed: " << allocated;
  EXPECT_EQ(AwaitHealth(*health, HealthCheckResponse::NOT_SERVING, absl::Seconds(10)),
            HealthCheckResponse::NOT_SERVING);
  const grpc::Status refused = Append(*stub, TurnMessages("health-1", 1, 8, 8));
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  EXPECT_TRUE(GetSession(*stub, "health-1").ok());  // Reads still work.
  absl::StatusOr<Scrape> scrape = ScrapeMetrics(metrics_port);
  ASSERT_TRUE(scrape.ok()) << scrape.status();
  EXPECT_EQ((*scrape)["nexuskv_store_writable"], 0);

  std::move(remove_ballast).Invoke();
  EXPECT_EQ(AwaitHealth(*health, HealthCheckResponse::SERVING, absl::Seconds(10)),
            HealthCheckResponse::SERVING);
  EXPECT_TRUE(Append(*stub, TurnMessages("health-1", 1, 8, 8)).ok());
  EXPECT_THAT((*server)->LogTail(), HasSubstr("health_changed"));
}

}  // namespace
}  // namespace nexuskv::testing
