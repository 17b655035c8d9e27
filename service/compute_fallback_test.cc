// A compute device that fails (a batch over --gpu_memory_mb, a driver error) through the core (no
// gRPC): the registry built on it fails the fit, the turn is served by the fallback
// (STREAMING_LLM from its raw KV) and the answer's notes say why; GetSession reports the failed
// fit with the device's words. Nothing aborts.
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "compressor/compressor.h"
#include "compressor/testing/counting_compute.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/kv_memory_core.h"
#include "service/segment_assembler.h"
#include "service/test_util.h"

namespace nexuskv::service {
namespace {

namespace v1 = ::nexuskv::v1;
using compressor::testing::CountingCompute;
using ::testing::HasSubstr;

constexpr char kOverTheBound[] =
    "Attend: the batch needs 9000.0 MiB of device memory, more than the limit of 4096.0 MiB "
    "(--gpu_memory_mb); send smaller batches or raise the limit";

class ComputeFallbackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("compute_fallback_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    auto store = store::Store::Open({.path = dir_.string(), .sync_writes = false});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    registry_ = compressor::CompressorRegistry::Builtin(device_);
    // Fits run when a GetCache awaits them: deterministic.
    core_ = std::make_unique<KvMemoryCore>(store_.get(), registry_.get(),
                                           CoreOptions{.precompute_fits = false});
  }
  void TearDown() override {
    core_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  void Append(uint32_t turn, uint32_t tokens, uint64_t first) {
    SegmentAssembler assembler(Limits{});
    for (auto& m : testing::SegmentMessages("s", turn, tokens, first, 4, testing::TinySpec())) {
      ASSERT_TRUE(assembler.Add(std::move(m)).ok());
    }
    auto segment = std::move(assembler).Finish();
    ASSERT_TRUE(segment.ok()) << segment.status();
    ASSERT_TRUE(core_->Append("default", std::move(*segment)).ok());
  }

  static v1::GetCacheRequest Request(v1::Method method) {
    v1::GetCacheRequest r;
    r.set_session_id("s");
    r.set_method(method);
    r.mutable_budget()->set_keep_ratio(0.5);
    r.set_keep_recent_turns(1);
    return r;
  }

  // Builds every layer of the answer; the entries per layer of each.
  static void ExpectLayersBuild(CacheAssembly& cache) {
    for (uint32_t l = 0; l < cache.num_layers(); ++l) {
      absl::StatusOr<v1::CacheLayer> layer = cache.BuildLayer(l);
      ASSERT_TRUE(layer.ok()) << layer.status();
    }
  }

  CountingCompute device_;
  std::filesystem::path dir_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<compressor::CompressorRegistry> registry_;
  std::unique_ptr<KvMemoryCore> core_;
};

TEST_F(ComputeFallbackTest, AFitTheDeviceFailsIsServedByTheFallbackSayingWhy) {
  Append(0, 16, 0);
  Append(1, 24, 16);
  Append(2, 8, 40);
  device_.set_fail_with(absl::ResourceExhaustedError(kOverTheBound));
  for (const auto method : {v1::SONIC, v1::H2O}) {
    const std::string name = v1::Method_Name(method);
    auto plan = core_->PlanCache("default", Request(method));
    ASSERT_TRUE(plan.ok()) << name << ": " << plan.status();
    const v1::CacheHeader& h = (*plan)->header();
    EXPECT_THAT(h.notes(), HasSubstr("turn 1: the " + name + " fit failed (" +
                                     (method == v1::SONIC ? "SONIC fit" : "H2O scoring") +
                                     " failed on the counting compute backend: "
                                     "RESOURCE_EXHAUSTED: " +
                                     kOverTheBound + ")"))
        << h.notes();
    EXPECT_THAT(h.notes(), HasSubstr("served by STREAMING_LLM from its raw KV"));
    EXPECT_EQ(h.turns(1).method(), v1::STREAMING_LLM);
    ExpectLayersBuild(**plan);
    // GetSession says the fit failed, and why.
    absl::StatusOr<v1::SessionInfo> info = core_->GetSession("default", "s");
    ASSERT_TRUE(info.ok()) << info.status();
    bool reported = false;
    for (const v1::FitStatus& fit : info->turns(1).fits()) {
      if (fit.method() != method) continue;
      reported = fit.state() == v1::FIT_FAILED;
      EXPECT_THAT(fit.error(), HasSubstr("RESOURCE_EXHAUSTED: " + std::string(kOverTheBound)));
    }
    EXPECT_TRUE(reported) << name;
  }
  EXPECT_GT(device_.calls("Attend"), 0);         // SONIC's fit went to the device
  EXPECT_GT(device_.calls("AttentionMass"), 0);  // and H2O's scoring
}

TEST_F(ComputeFallbackTest, ADeviceThatWorksServesTheMethodItself) {
  Append(0, 16, 0);
  Append(1, 24, 16);
  auto plan = core_->PlanCache("default", Request(v1::SONIC));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT((*plan)->header().notes(), ::testing::Not(HasSubstr("failed")));
  EXPECT_EQ((*plan)->header().turns(0).method(), v1::SONIC);
  ExpectLayersBuild(**plan);
  EXPECT_GT(device_.calls("Attend"), 0);
}

}  // namespace
}  // namespace nexuskv::service
