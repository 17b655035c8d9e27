#include "metrics/registry.h"

#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nexuskv::metrics {
namespace {

using ::testing::HasSubstr;

TEST(RegistryTest, CountersAndGaugesRenderSortedWithEscapedLabels) {
  Registry registry;
  absl::StatusOr<CounterFamily*> rpcs = registry.AddCounter(
      "test_rpcs_total", "RPCs by method\\code.\nSecond line.", {"method", "code"});
  ASSERT_TRUE(rpcs.ok()) << rpcs.status();
  absl::StatusOr<GaugeFamily*> depth = registry.AddGauge("test_queue_depth", "Queued jobs.", {});
  ASSERT_TRUE(depth.ok()) << depth.status();

  (*rpcs)->With({"Get", "OK"}).Increment();
  (*rpcs)->With({"Get", "OK"}).Increment(2);
  (*rpcs)->With({"Append", "NOT_FOUND"}).Increment(0.5);
  (*rpcs)->With({"Append", "NOT_FOUND"}).Increment(-7);  // Ignored: counters never go down.
  (*rpcs)->With({"we\"ird\\\n", "OK"}).Increment(12345678901234);
  (*depth)->With({}).Set(3);
  (*depth)->With({}).Add(-1.25);

  EXPECT_EQ(registry.Exposition(),
            "# HELP test_rpcs_total RPCs by method\\\\code.\\nSecond line.\n"
            "# TYPE test_rpcs_total counter\n"
            "test_rpcs_total{method=\"Append\",code=\"NOT_FOUND\"} 0.5\n"
            "test_rpcs_total{method=\"Get\",code=\"OK\"} 3\n"
            "test_rpcs_total{method=\"we\\\"ird\\\\\\n\",code=\"OK\"} 12345678901234\n"
            "# HELP test_queue_depth Queued jobs.\n"
            "# TYPE test_queue_depth gauge\n"
            "test_queue_depth 1.75\n");
}

TEST(RegistryTest, HistogramBucketsAreCumulativeWithInfSumAndCount) {
  Registry registry;
  absl::StatusOr<HistogramFamily*> latency =
      registry.AddHistogram("test_seconds", "Latency.", {"method"}, {0.005, 0.1, 1});
  ASSERT_TRUE(latency.ok()) << latency.status();
  Histogram& get = (*latency)->With({"Get"});
  get.Observe(0.005);  // On a bound: counted in that bucket (upper bounds are inclusive).
  get.Observe(0.05);
  get.Observe(0.0625);
  get.Observe(30);  // Past the last bound: +Inf only.

  EXPECT_EQ(registry.Exposition(),
            "# HELP test_seconds Latency.\n"
            "# TYPE test_seconds histogram\n"
            "test_seconds_bucket{method=\"Get\",le=\"0.005\"} 1\n"
            "test_seconds_bucket{method=\"Get\",le=\"0.1\"} 3\n"
            "test_seconds_bucket{method=\"Get\",le=\"1\"} 3\n"
            "test_seconds_bucket{method=\"Get\",le=\"+Inf\"} 4\n"
            "test_seconds_sum{method=\"Get\"} 30.1175\n"
            "test_seconds_count{method=\"Get\"} 4\n");
}

TEST(RegistryTest, UnlabelledHistogramHasOnlyLe) {
  Registry registry;
  absl::StatusOr<HistogramFamily*> fit = registry.AddHistogram("fit_seconds", "Fits.", {}, {1});
  ASSERT_TRUE(fit.ok());
  (*fit)->With({}).Observe(2);
  EXPECT_THAT(registry.Exposition(), HasSubstr("fit_seconds_bucket{le=\"1\"} 0\n"
                                               "fit_seconds_bucket{le=\"+Inf\"} 1\n"
                                               "fit_seconds_sum 2\n"
                                               "fit_seconds_count 1\n"));
}

TEST(RegistryTest, CallbackGaugesAreReadAtEachScrape) {
  Registry registry;
  double stored = 10;
  ASSERT_TRUE(registry
                  .AddGaugeCallback("test_tenant_bytes", "Bytes per tenant.", {"tenant"},
                                    [&stored] {
                                      return std::vector<GaugeSample>{
                                          {{"b"}, stored},
                                          {{"a"}, 1e21},
                                          {{"x", "extra"}, 5},  // Wrong arity: dropped.
                                      };
                                    })
                  .ok());
  const std::string first = registry.Exposition();
  EXPECT_EQ(first,
            "# HELP test_tenant_bytes Bytes per tenant.\n"
            "# TYPE test_tenant_bytes gauge\n"
            "test_tenant_bytes{tenant=\"a\"} 1e+21\n"
            "test_tenant_bytes{tenant=\"b\"} 10\n");
  stored = 11;
  EXPECT_THAT(registry.Exposition(), HasSubstr("test_tenant_bytes{tenant=\"b\"} 11\n"));
}

TEST(RegistryTest, FamilyWithoutSeriesPrintsHelpAndType) {
  Registry registry;
  ASSERT_TRUE(registry.AddCounter("test_total", "Nothing yet.", {"code"}).ok());
  EXPECT_EQ(registry.Exposition(), "# HELP test_total Nothing yet.\n# TYPE test_total counter\n");
}

TEST(RegistryTest, RefusesBadNamesLabelsAndBuckets) {
  Registry registry;
  EXPECT_EQ(registry.AddCounter("9lives", "", {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddCounter("has-dash", "", {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddCounter("ok_total", "", {"__reserved"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddCounter("ok_total", "", {"a:b"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddCounter("ok_total", "", {"a", "a"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddHistogram("h", "", {"le"}, {1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddHistogram("h", "", {}, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddHistogram("h", "", {}, {1, 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(registry.AddCounter("ns:ok_total", "", {"le"}).ok());  // le is fine off histograms.
  EXPECT_EQ(registry.AddGauge("ns:ok_total", "", {}).status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST(RegistryTest, ConcurrentIncrementsAreAllCounted) {
  Registry registry;
  CounterFamily* family = *registry.AddCounter("test_total", "Events.", {"worker"});
  HistogramFamily* histogram = *registry.AddHistogram("test_seconds", "Time.", {}, {0.5});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10000; ++i) {
        family->With({t % 2 == 0 ? "even" : "odd"}).Increment();
        histogram->With({}).Observe(i % 2 == 0 ? 0.25 : 1.0);
        if (i % 1000 == 0) registry.Exposition();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_THAT(registry.Exposition(),
              HasSubstr("test_total{worker=\"even\"} 20000\ntest_total{worker=\"odd\"} 20000\n"));
  EXPECT_THAT(registry.Exposition(), HasSubstr("test_seconds_bucket{le=\"0.5\"} 20000\n"
                                               "test_seconds_bucket{le=\"+Inf\"} 40000\n"
                                               "test_seconds_sum 25000\n"
                                               "test_seconds_count 40000\n"));
}

}  // namespace
}  // namespace nexuskv::metrics
