#include "metrics/http_exporter.h"

#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "metrics/registry.h"
#include "metrics/testing/http_get.h"

namespace nexuskv::metrics {
namespace {

using ::nexuskv::metrics::testing::HttpGet;
using ::nexuskv::metrics::testing::HttpResponse;

TEST(CivetwebListeningPortTest, MapsAddressesAndRefusesOthers) {
  EXPECT_EQ(*CivetwebListeningPort("127.0.0.1:9464"), "127.0.0.1:9464");
  EXPECT_EQ(*CivetwebListeningPort("localhost:0"), "127.0.0.1:0");
  EXPECT_EQ(*CivetwebListeningPort(":9464"), "9464");
  EXPECT_EQ(*CivetwebListeningPort("0.0.0.0:9464"), "9464");
  EXPECT_EQ(*CivetwebListeningPort("[::1]:9464"), "[::1]:9464");
  for (const char* bad : {"9464", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:http",
                          "example.com:9464", "1.2.3:80", "[zz]:80"}) {
    absl::StatusOr<std::string> ports = CivetwebListeningPort(bad);
    EXPECT_EQ(ports.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_THAT(std::string(CivetwebListeningPort("example.com:1").status().message()),
              ::testing::HasSubstr("not an IP address"));
}

TEST(HttpExporterTest, ServesTheExpositionAtMetricsOnly) {
  Registry registry;
  (*registry.AddCounter("test_total", "Events.", {}))->With({}).Increment(7);
  absl::StatusOr<std::unique_ptr<HttpExporter>> exporter =
      HttpExporter::Start("127.0.0.1:0", &registry);
  ASSERT_TRUE(exporter.ok()) << exporter.status();
  const int port = (*exporter)->port();
  ASSERT_GT(port, 0);

  absl::StatusOr<HttpResponse> page = HttpGet("127.0.0.1", port, "/metrics");
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->status, 200);
  EXPECT_EQ(page->content_type, "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(page->body, registry.Exposition());
  EXPECT_EQ(page->body, "# HELP test_total Events.\n# TYPE test_total counter\ntest_total 7\n");

  absl::StatusOr<HttpResponse> head = HttpGet("127.0.0.1", port, "/metrics", "HEAD");
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->body, "");

  absl::StatusOr<HttpResponse> post = HttpGet("127.0.0.1", port, "/metrics", "POST");
  ASSERT_TRUE(post.ok()) << post.status();
  EXPECT_EQ(post->status, 405);

  for (const char* path : {"/", "/metrics/x", "/other"}) {
    absl::StatusOr<HttpResponse> other = HttpGet("127.0.0.1", port, path);
    ASSERT_TRUE(other.ok()) << other.status();
    EXPECT_EQ(other->status, 404) << path;
  }
}

TEST(HttpExporterTest, BusyPortIsUnavailable) {
  Registry registry;
  absl::StatusOr<std::unique_ptr<HttpExporter>> first =
      HttpExporter::Start("127.0.0.1:0", &registry);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<std::unique_ptr<HttpExporter>> second =
      HttpExporter::Start(absl::StrCat("127.0.0.1:", (*first)->port()), &registry);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace nexuskv::metrics
