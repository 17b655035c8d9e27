// SONIC through the core (no gRPC): bias in the answer and bias-free mode, budgets, raw retention
// (drop, duration, keep) with the bytes GetSession reports, and pass-through Nexus offsets.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "common/status_macros.h"
#include "compressor/sonic.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/kv_memory_core.h"
#include "service/lookahead.h"
#include "service/test_util.h"

namespace nexuskv::service {
namespace {

namespace v1 = ::nexuskv::v1;
using ::testing::HasSubstr;

class SonicCoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("sonic_core_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    auto store = store::Store::Open({.path = dir_.string(), .sync_writes = false});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    Start(RawRetention{});
  }
  void TearDown() override {
    core_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  void Start(RawRetention retention, double merge_share = CoreOptions{}.merge_share,
             double lookahead_share = CoreOptions{}.lookahead_share) {
    core_.reset();
    CoreOptions options;
    options.raw_retention = retention;
    options.merge_share = merge_share;
    options.lookahead_share = lookahead_share;
    options.precompute_fits = false;  // fits run when a GetCache awaits them: determinism
    core_ = std::make_unique<KvMemoryCore>(store_.get(), &compressor::CompressorRegistry::Default(),
                                           options);
  }

  absl::StatusOr<v1::AppendSegmentResponse> Append(uint32_t turn, uint32_t tokens, uint64_t first,
                                                   std::vector<uint32_t> nexus = {}) {
    SegmentAssembler assembler(Limits{});
    auto messages = testing::SegmentMessages("s", turn, tokens, first, 4, testing::TinySpec());
    for (uint32_t o : nexus) messages[0].mutable_header()->add_nexus_offsets(o);
    for (auto& m : messages) {
      if (absl::Status st = assembler.Add(std::move(m)); !st.ok()) return st;
    }
    auto segment = std::move(assembler).Finish();
    if (!segment.ok()) return segment.status();
    return core_->Append("default", std::move(*segment));
  }

  // A turn whose every layer carries token scores [2 heads, tokens]: 0.01 everywhere, except
  // `high` (layer, head, token) scored 1.
  absl::StatusOr<v1::AppendSegmentResponse> AppendScored(
      uint32_t turn, uint32_t tokens, uint64_t first, const std::vector<std::array<int, 3>>& high,
      float base = 0.01f) {
    return AppendScoredBy(turn, tokens, first, [&](int l, int h, int i) {
      for (const auto& [layer, head, token] : high) {
        if (layer == l && head == h && token == i) return 1.0f;
      }
      return base;
    });
  }

  // A turn whose token i of head h in layer l scores score(l, h, i).
  absl::StatusOr<v1::AppendSegmentResponse> AppendScoredBy(
      uint32_t turn, uint32_t tokens, uint64_t first,
      const std::function<float(int, int, int)>& score) {
    SegmentAssembler assembler(Limits{});
    auto messages = testing::SegmentMessages("s", turn, tokens, first, 4, testing::TinySpec());
    messages[0].mutable_header()->set_has_token_scores(true);
    for (size_t l = 0; l + 1 < messages.size(); ++l) {
      std::vector<float> scores(2 * tokens);
      for (int h = 0; h < 2; ++h) {
        for (uint32_t i = 0; i < tokens; ++i) {
          scores[h * tokens + i] = score(static_cast<int>(l), h, static_cast<int>(i));
        }
      }
      messages[l + 1].mutable_layer()->set_token_scores(EncodeFromFloat(scores, DType::kFloat32));
    }
    for (auto& m : messages) {
      if (absl::Status st = assembler.Add(std::move(m)); !st.ok()) return st;
    }
    auto segment = std::move(assembler).Finish();
    if (!segment.ok()) return segment.status();
    return core_->Append("default", std::move(*segment));
  }

  // Turns of 40, 40 and 8 tokens at positions 0, 40 and 80, token p of the session scoring
  // score(layer, head, p).
  absl::Status AppendFortyFortyEight(const std::function<float(int, int, int)>& score) {
    for (const auto [turn, tokens, first] :
         {std::array<uint32_t, 3>{0, 40, 0}, {1, 40, 40}, {2, 8, 80}}) {
      const int start = static_cast<int>(first);  // clang cannot capture a structured binding
      auto by_position = [&score, start](int l, int h, int i) { return score(l, h, start + i); };
      NEXUSKV_RETURN_IF_ERROR(AppendScoredBy(turn, tokens, first, by_position).status());
    }
    return absl::OkStatus();
  }

  // The session's FULL answer, layer by layer.
  absl::StatusOr<std::vector<v1::CacheLayer>> FullLayers() {
    v1::GetCacheRequest request = Request(v1::FULL, 1.0, 1);
    request.clear_budget();
    NEXUSKV_ASSIGN_OR_RETURN(std::unique_ptr<CacheAssembly> full,
                             core_->PlanCache("default", request));
    return Layers(*full);
  }

  // Turns of 16, 24 and 8 tokens at positions 0, 16, 40.
  void AppendThree() {
    ASSERT_TRUE(Append(0, 16, 0).ok());
    ASSERT_TRUE(Append(1, 24, 16).ok());
    ASSERT_TRUE(Append(2, 8, 40).ok());
  }

  static v1::GetCacheRequest Request(v1::Method method, double keep, uint32_t recent) {
    v1::GetCacheRequest r;
    r.set_session_id("s");
    r.set_method(method);
    r.mutable_budget()->set_keep_ratio(keep);
    r.set_keep_recent_turns(recent);
    return r;
  }

  absl::StatusOr<std::vector<v1::CacheLayer>> Layers(CacheAssembly& cache) {
    std::vector<v1::CacheLayer> out;
    for (uint32_t l = 0; l < cache.num_layers(); ++l) {
      absl::StatusOr<v1::CacheLayer> layer = cache.BuildLayer(l);
      if (!layer.ok()) return layer.status();
      out.push_back(*std::move(layer));
    }
    return out;
  }

  std::filesystem::path dir_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<KvMemoryCore> core_;
};

TEST_F(SonicCoreTest, AnswersWithBiasWithinTheBudgetAndBiasFreeOnRequest) {
  AppendThree();
  for (double keep : {0.5, 0.2}) {
    auto plan = core_->PlanCache("default", Request(v1::SONIC, keep, 1));
    ASSERT_TRUE(plan.ok()) << plan.status();
    const v1::CacheHeader& h = (*plan)->header();
    EXPECT_TRUE(h.has_bias());
    EXPECT_EQ(h.method(), v1::SONIC);
    ASSERT_EQ(h.turns_size(), 3);
    EXPECT_TRUE(h.turns(2).raw());
    const uint32_t compressed = h.turns(0).kept_entries() + h.turns(1).kept_entries();
    EXPECT_LE(compressed, static_cast<uint32_t>(keep * 40 + 1e-9));
    EXPECT_GE(compressed, static_cast<uint32_t>(keep * 40) - 1) << "the budget is spent";
    auto layers = Layers(**plan);
    ASSERT_TRUE(layers.ok()) << layers.status();
    const uint32_t n = h.entries_per_layer(0);
    EXPECT_EQ(n, compressed + 8);
    EXPECT_EQ((*layers)[0].bias().size(), size_t{2} * n * 4);      // [H, N] float32
    EXPECT_EQ((*layers)[0].keys().size(), size_t{2} * n * 8 * 2);  // float16
  }
  v1::GetCacheRequest free = Request(v1::SONIC, 0.5, 1);
  free.set_bias_mode(v1::BIAS_MODE_NONE);
  auto plan = core_->PlanCache("default", free);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE((*plan)->header().has_bias());
  auto layers = Layers(**plan);
  ASSERT_TRUE(layers.ok()) << layers.status();
  EXPECT_TRUE((*layers)[1].bias().empty());
  // The default method is SONIC; max_tokens counts the raw turn too.
  v1::GetCacheRequest by_tokens = Request(v1::METHOD_UNSPECIFIED, 0.5, 1);
  by_tokens.mutable_budget()->set_max_tokens(20);
  auto tokens = core_->PlanCache("default", by_tokens);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ(tokens->get()->header().method(), v1::SONIC);
  EXPECT_LE(tokens->get()->header().entries_per_layer(0), 20u);
}

TEST_F(SonicCoreTest, DropPolicyDropsOlderTurnsOnceTheirLadderIsStored) {
  Start(*ParseRawRetention("drop"));
  AppendThree();
  // Fits are computed on demand here; the first SONIC plan stores them and applies the policy.
  auto first = core_->PlanCache("default", Request(v1::SONIC, 0.5, 1));
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<v1::SessionInfo> info = core_->GetSession("default", "s");
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(info->turns(0).raw_dropped());
  EXPECT_TRUE(info->turns(1).raw_dropped());
  EXPECT_FALSE(info->turns(2).raw_dropped()) << "the newest turn keeps its raw KV";
  EXPECT_EQ(info->stored_raw_bytes(), info->turns(2).raw_bytes());
  EXPECT_EQ(info->stored_bytes(), info->stored_raw_bytes() + info->compressed_bytes());
  EXPECT_LT(info->stored_bytes(), info->raw_bytes() + info->compressed_bytes());

  // SONIC still serves every turn, from the ladder; the answer stays within the budget.
  auto plan = core_->PlanCache("default", Request(v1::SONIC, 0.5, 1));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(Layers(**plan).ok());
  EXPECT_LE((*plan)->header().turns(1).kept_entries(), 12u);
  // FULL, the selection methods and raw requests of dropped turns are refused, clearly.
  v1::GetCacheRequest full;
  full.set_session_id("s");
  full.set_method(v1::FULL);
  auto refused = core_->PlanCache("default", full);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("--raw_retention=drop"));
  EXPECT_EQ(core_->PlanCache("default", Request(v1::H2O, 0.5, 1)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto recent = core_->PlanCache("default", Request(v1::SONIC, 0.5, 2));
  EXPECT_EQ(recent.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(recent.status().message(), HasSubstr("lower keep_recent_turns"));
}

TEST_F(SonicCoreTest, KeepPolicyKeepsEverythingAndDurationWaits) {
  AppendThree();
  ASSERT_TRUE(core_->PlanCache("default", Request(v1::SONIC, 0.5, 1)).ok());
  absl::StatusOr<v1::SessionInfo> kept = core_->GetSession("default", "s");
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(kept->stored_raw_bytes(), kept->raw_bytes());
  EXPECT_EQ(kept->stored_bytes(), kept->raw_bytes() + kept->compressed_bytes());
  EXPECT_TRUE(core_->PlanCache("default", Request(v1::H2O, 0.5, 1)).ok());

  Start(*ParseRawRetention("1h"));
  ASSERT_TRUE(Append(3, 8, 48).ok());  // applies the policy: nothing is an hour old
  EXPECT_FALSE(core_->GetSession("default", "s")->turns(0).raw_dropped());
  Start(*ParseRawRetention("0s"));
  ASSERT_TRUE(Append(4, 8, 56).ok());
  absl::StatusOr<v1::SessionInfo> after = core_->GetSession("default", "s");
  EXPECT_TRUE(after->turns(0).raw_dropped());
  EXPECT_TRUE(after->turns(1).raw_dropped());
  EXPECT_FALSE(after->turns(3).raw_dropped()) << "no SONIC ladder stored for turn 3 yet";
  EXPECT_FALSE(after->turns(4).raw_dropped());
}

TEST_F(SonicCoreTest, LookaheadIsTheNewestTurnWithProbesStillStored) {
  AppendThree();
  absl::StatusOr<std::vector<store::SegmentRecord>> records =
      store_->ListSegments({"default", "s"});
  ASSERT_TRUE(records.ok());
  EXPECT_EQ(NewestProbeTurn(*records), std::optional<size_t>(2));
  EXPECT_EQ(NewestProbeTurn({}), std::nullopt);
  absl::StatusOr<v1::SessionInfo> info = core_->GetSession("default", "s");
  ASSERT_TRUE(info.ok());
  absl::StatusOr<std::vector<float>> probes =
      LoadProbes(*store_, {"default", "s"}, info->model(), (*records)[2], 1);
  ASSERT_TRUE(probes.ok()) << probes.status();
  EXPECT_EQ(probes->size(), size_t{info->model().num_query_heads()} *
                                (*records)[2].num_probe_queries() * info->model().head_dim());
  // Dropped turns have no probes left; the newest turn keeps its raw KV and stays the lookahead.
  Start(*ParseRawRetention("drop"));
  ASSERT_TRUE(core_->PlanCache("default", Request(v1::SONIC, 0.5, 1)).ok());
  records = store_->ListSegments({"default", "s"});
  ASSERT_TRUE(records.ok());
  EXPECT_EQ(NewestProbeTurn({(*records)[0], (*records)[1]}), std::nullopt);
  EXPECT_EQ(NewestProbeTurn(*records), std::optional<size_t>(2));
  auto plan = core_->PlanCache("default", Request(v1::SONIC, 0.5, 1));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(Layers(**plan).ok());
}

// SONIC, except that its fit refuses turns of `bad_tokens` tokens (as a fit that meets data it
// cannot handle would): the fault GetCache must survive.
class RefusingSonic final : public compressor::Compressor {
 public:
  explicit RefusingSonic(int bad_tokens)
      : sonic_(compressor::NewSonicCompressor()), bad_tokens_(bad_tokens) {}
  std::string_view name() const override { return "SONIC"; }
  compressor::Capabilities capabilities() const override {
    return {.fits = true, .serves_without_raw = true, .bias = true};
  }
  absl::StatusOr<std::string> Fit(const compressor::LayerView& layer) const override {
    if (layer.num_tokens == bad_tokens_) return absl::InternalError("injected fit failure");
    return sonic_->Fit(layer);
  }
  absl::StatusOr<compressor::LayerEntries> Materialize(const compressor::LayerView& layer,
                                                       std::string_view fit, int n) const override {
    return sonic_->Materialize(layer, fit, n);
  }
  std::string SummarizeFit(std::span<const std::string> per_layer) const override {
    return sonic_->SummarizeFit(per_layer);
  }
  std::vector<int64_t> Allocate(std::span<const compressor::TurnShape> turns,
                                int64_t budget) const override {
    return sonic_->Allocate(turns, budget);
  }

 private:
  std::unique_ptr<compressor::Compressor> sonic_;
  int bad_tokens_;
};

// A registry entry that forwards to a method of the default registry.
class Borrowed final : public compressor::Compressor {
 public:
  explicit Borrowed(const compressor::Compressor& method) : method_(method) {}
  std::string_view name() const override { return method_.name(); }
  compressor::Capabilities capabilities() const override { return method_.capabilities(); }
  absl::StatusOr<std::string> Fit(const compressor::LayerView& layer) const override {
    return method_.Fit(layer);
  }
  absl::StatusOr<compressor::LayerEntries> Materialize(const compressor::LayerView& layer,
                                                       std::string_view fit, int n) const override {
    return method_.Materialize(layer, fit, n);
  }
  std::vector<int64_t> Allocate(std::span<const compressor::TurnShape> turns,
                                int64_t budget) const override {
    return method_.Allocate(turns, budget);
  }

 private:
  const compressor::Compressor& method_;
};

TEST_F(SonicCoreTest, AFailedFitFallsBackToTheRawTurnAndSaysSo) {
  std::vector<std::unique_ptr<compressor::Compressor>> methods;
  methods.push_back(std::make_unique<RefusingSonic>(24));  // turn 1 has 24 tokens
  compressor::CompressorRegistry registry(std::move(methods));
  // Without STREAMING_LLM registered there is nothing to fall back to: the error passes through.
  core_ = std::make_unique<KvMemoryCore>(store_.get(), &registry,
                                         CoreOptions{.precompute_fits = false});
  AppendThree();
  const auto fit_states = [&]() {
    std::vector<v1::FitState> states;
    absl::StatusOr<v1::SessionInfo> info = core_->GetSession("default", "s");
    EXPECT_TRUE(info.ok()) << info.status();
    for (const v1::TurnInfo& t : info->turns()) {
      EXPECT_EQ(t.fits_size(), 1);
      EXPECT_EQ(t.fits(0).method(), v1::SONIC);
      EXPECT_EQ(t.fits(0).error().empty(), t.fits(0).state() != v1::FIT_FAILED);
      states.push_back(t.fits(0).state());
    }
    return states;
  };
  EXPECT_THAT(fit_states(), ::testing::Each(v1::FIT_PENDING));
  auto refused = core_->PlanCache("default", Request(v1::SONIC, 0.5, 1));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(refused.status().message(), HasSubstr("injected fit failure"));
  // Turn 0 fitted before turn 1 failed; turn 2 is kept raw and was not asked for.
  EXPECT_THAT(fit_states(),
              ::testing::ElementsAre(v1::FIT_STORED, v1::FIT_FAILED, v1::FIT_PENDING));
  EXPECT_THAT(core_->GetSession("default", "s")->turns(1).fits(0).error(),
              HasSubstr("injected fit failure"));

  std::vector<std::unique_ptr<compressor::Compressor>> with_fallback;
  with_fallback.push_back(std::make_unique<RefusingSonic>(24));
  with_fallback.push_back(
      std::make_unique<Borrowed>(*compressor::CompressorRegistry::Default().Find("STREAMING_LLM")));
  compressor::CompressorRegistry fallback_registry(std::move(with_fallback));
  core_ = std::make_unique<KvMemoryCore>(store_.get(), &fallback_registry,
                                         CoreOptions{.precompute_fits = false});
  for (double keep : {0.5, 0.2}) {
    auto plan = core_->PlanCache("default", Request(v1::SONIC, keep, 1));
    ASSERT_TRUE(plan.ok()) << plan.status();
    const v1::CacheHeader& h = (*plan)->header();
    EXPECT_THAT(h.notes(), HasSubstr("turn 1: the SONIC fit failed (injected fit failure)"));
    EXPECT_THAT(h.notes(), HasSubstr("served by STREAMING_LLM from its raw KV"));
    EXPECT_EQ(h.turns(0).method(), v1::SONIC);
    EXPECT_TRUE(h.turns(1).method() == v1::STREAMING_LLM || h.turns(1).raw());
    EXPECT_LE(h.turns(0).kept_entries() + h.turns(1).kept_entries(),
              static_cast<uint32_t>(keep * 40 + 1e-9));
    auto layers = Layers(**plan);
    ASSERT_TRUE(layers.ok()) << layers.status();
    EXPECT_EQ((*layers)[0].keys().size(), size_t{2} * h.entries_per_layer(0) * 8 * 2);
  }
}

TEST(RawRetentionTest, Parses) {
  EXPECT_EQ(ParseRawRetention("keep")->mode, RawRetention::Mode::kKeep);
  EXPECT_EQ(ParseRawRetention("drop")->mode, RawRetention::Mode::kDrop);
  absl::StatusOr<RawRetention> six = ParseRawRetention("6h");
  ASSERT_TRUE(six.ok());
  EXPECT_EQ(six->after, absl::Hours(6));
  EXPECT_EQ(six->ToString(), "6h");
  EXPECT_EQ(ParseRawRetention("soon").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseRawRetention("-1s").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SonicCoreTest, NexusOffsetsAreCheckedAndServedFirst) {
  EXPECT_EQ(Append(0, 16, 0, {3, 3}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Append(0, 16, 0, {16}).status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(Append(0, 16, 0, {5, 11}).ok());
  ASSERT_TRUE(Append(1, 8, 16).ok());
  auto plan = core_->PlanCache("default", Request(v1::SONIC, 0.25, 1));
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto layers = Layers(**plan);
  ASSERT_TRUE(layers.ok()) << layers.status();
  const uint32_t n = (*plan)->header().entries_per_layer(0);
  const uint32_t kept = (*plan)->header().turns(0).kept_entries();
  ASSERT_GE(kept, 2u);
  for (const v1::CacheLayer& layer : *layers) {
    const auto* positions = reinterpret_cast<const int64_t*>(layer.positions().data());
    for (int h = 0; h < 2; ++h) {
      std::vector<int64_t> first(positions + h * n, positions + h * n + kept);
      EXPECT_THAT(first, ::testing::IsSupersetOf({5, 11})) << "layer " << layer.layer();
    }
  }
}

}  // namespace
}  // namespace nexuskv::service

namespace nexuskv::service {
namespace {

TEST_F(SonicCoreTest, TokenScoresSpendTheBudgetOverLayersAndTurnsAndPickTheRawTokens) {
  // Turn 1's layer 1 holds 12 high-scored tokens in each head; everything else scores low.
  std::vector<std::array<int, 3>> high;
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 12; ++i) high.push_back({1, h, 2 * i});
  }
  ASSERT_TRUE(AppendScored(0, 16, 0, {}).ok());
  ASSERT_TRUE(AppendScored(1, 24, 16, high).ok());
  ASSERT_TRUE(AppendScored(2, 8, 40, {}).ok());
  for (const v1::BiasMode mode : {v1::BIAS_MODE_UNSPECIFIED, v1::BIAS_MODE_NONE}) {
    v1::GetCacheRequest request = Request(v1::SONIC, 0.5, 1);  // 20 of the 40 older tokens
    request.set_bias_mode(mode);
    auto plan = core_->PlanCache("default", request);
    ASSERT_TRUE(plan.ok()) << plan.status();
    const v1::CacheHeader& h = (*plan)->header();
    // 40 entries per head over 2 layers: the 4 sinks in each layer, and 12 of the 16 high scored
    // (all in layer 1) and the rest, layer 1 holding more.
    ASSERT_EQ(h.entries_per_layer_size(), 2);
    EXPECT_GT(h.entries_per_layer(1), h.entries_per_layer(0));
    auto layers = Layers(**plan);
    ASSERT_TRUE(layers.ok()) << layers.status();
    // Real entries per head: a biased answer pads heads with bias -inf entries.
    size_t real = 0;
    for (int l = 0; l < 2; ++l) {
      const size_t n = h.entries_per_layer(l);
      if (mode == v1::BIAS_MODE_NONE) {
        real += n;
        continue;
      }
      std::vector<float> bias(2 * n);
      std::memcpy(bias.data(), (*layers)[l].bias().data(), bias.size() * sizeof(float));
      const size_t finite =
          std::count_if(bias.begin(), bias.end(), [](float b) { return std::isfinite(b); });
      EXPECT_EQ(finite + std::count(bias.begin(), bias.end(), -INFINITY), bias.size());
      real += finite / 2;
    }
    EXPECT_LE(real - 2 * 8, 40u) << "within budget";
    EXPECT_GE(real - 2 * 8, 36u) << "the budget is spent";
    // Layer 1 serves turn 1's high-scored tokens raw (turn 1 starts at position 16).
    const v1::CacheLayer& l1 = (*layers)[1];
    const int64_t n = h.entries_per_layer(1);
    std::vector<int64_t> positions(2 * n);
    std::memcpy(positions.data(), l1.positions().data(), positions.size() * sizeof(int64_t));
    int served = 0;
    for (int head = 0; head < 2; ++head) {
      for (int i = 0; i < 12; ++i) {
        served += std::count(positions.begin() + head * n, positions.begin() + (head + 1) * n,
                             16 + 2 * i);
      }
      for (int64_t sink = 0; sink < 4; ++sink) {
        EXPECT_EQ(
            std::count(positions.begin() + head * n, positions.begin() + (head + 1) * n, sink), 1)
            << "sink " << sink << " in head " << head;
      }
    }
    EXPECT_GE(served, 2 * 10) << "most of the high-scored tokens are served raw";
  }
  // Hard limits hold: max_bytes counts padding, so it gets none; max_tokens limits every layer,
  // so it is allocated per turn.
  v1::GetCacheRequest bytes = Request(v1::SONIC, 0.5, 1);
  bytes.mutable_budget()->set_max_bytes(28 * 2 * 2 * (2 * 8 * 2 + 4));  // 28 entries per head
  auto by_bytes = core_->PlanCache("default", bytes);
  ASSERT_TRUE(by_bytes.ok()) << by_bytes.status();
  EXPECT_LE(by_bytes->get()->header().cache_bytes(), bytes.budget().max_bytes());
  EXPECT_GT(by_bytes->get()->header().entries_per_layer(1),
            by_bytes->get()->header().entries_per_layer(0))
      << "still spent by the scores";
  auto bytes_layers = Layers(**by_bytes);
  ASSERT_TRUE(bytes_layers.ok()) << bytes_layers.status();
  for (const v1::CacheLayer& layer : *bytes_layers) {
    std::vector<float> bias(layer.bias().size() / sizeof(float));
    std::memcpy(bias.data(), layer.bias().data(), layer.bias().size());
    EXPECT_EQ(std::count(bias.begin(), bias.end(), -INFINITY), 0) << "no padding";
  }
  v1::GetCacheRequest tokens = Request(v1::SONIC, 0.5, 1);
  tokens.mutable_budget()->set_max_tokens(20);
  auto by_tokens = core_->PlanCache("default", tokens);
  ASSERT_TRUE(by_tokens.ok()) << by_tokens.status();
  for (uint32_t n : by_tokens->get()->header().entries_per_layer()) EXPECT_LE(n, 20u);
}

TEST_F(SonicCoreTest, WithoutScoresOnEveryCompressedTurnTheAllocationIsPerTurn) {
  ASSERT_TRUE(AppendScored(0, 16, 0, {}).ok());
  ASSERT_TRUE(Append(1, 24, 16).ok());  // no scores
  ASSERT_TRUE(AppendScored(2, 8, 40, {}).ok());
  auto plan = core_->PlanCache("default", Request(v1::SONIC, 0.5, 1));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ((*plan)->header().entries_per_layer(0), (*plan)->header().entries_per_layer(1));
  // A retry of a scored turn with other scores is not the same turn.
  EXPECT_EQ(AppendScored(0, 16, 0, {{0, 0, 3}}).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(AppendScored(0, 16, 0, {}).ok()) << "an identical retry is fine";
}

TEST_F(SonicCoreTest, ScoredAnswersDoNotWaitForFits) {
  ASSERT_TRUE(AppendScored(0, 16, 0, {}).ok());
  ASSERT_TRUE(AppendScored(1, 24, 16, {{1, 0, 5}}).ok());
  ASSERT_TRUE(AppendScored(2, 8, 40, {}).ok());
  const store::SessionKey key{"default", "s"};
  auto fitted = [&](uint32_t turn) {
    auto fit = store_->GetFit(key, turn, "SONIC", store::Store::kFitSummaryLayer);
    EXPECT_TRUE(fit.ok()) << fit.status();
    return fit.ok() && fit->has_value();
  };
  for (const v1::BiasMode mode : {v1::BIAS_MODE_UNSPECIFIED, v1::BIAS_MODE_NONE}) {
    v1::GetCacheRequest request = Request(v1::SONIC, 0.3, 1);
    request.set_bias_mode(mode);
    auto plan = core_->PlanCache("default", request);
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_TRUE(Layers(**plan).ok());
  }
  EXPECT_FALSE(fitted(0) || fitted(1)) << "the scored answers computed no fit";
  // max_tokens is allocated per turn, from the fits: those are computed then.
  v1::GetCacheRequest tokens = Request(v1::SONIC, 0.5, 1);
  tokens.mutable_budget()->set_max_tokens(20);
  auto plan = core_->PlanCache("default", tokens);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(Layers(**plan).ok());
  EXPECT_TRUE(fitted(0) && fitted(1));
  EXPECT_FALSE(fitted(2)) << "the turn kept raw needs no fit";
}

TEST_F(SonicCoreTest, ALadderNoAnswerReadsIsNotComputedInTheBackground) {
  core_ = std::make_unique<KvMemoryCore>(store_.get(), &compressor::CompressorRegistry::Default(),
                                         CoreOptions{});  // precompute_fits, raw KV kept
  ASSERT_TRUE(AppendScored(0, 16, 0, {}).ok());
  ASSERT_TRUE(Append(1, 24, 16).ok());  // no token scores
  core_->Shutdown();                    // runs what it started; the queue is what Append submitted
  const store::SessionKey key{"default", "s"};
  absl::StatusOr<v1::SessionInfo> info = core_->GetSession("default", "s");
  ASSERT_TRUE(info.ok()) << info.status();
  auto state = [&](int turn, v1::Method method) {
    for (const v1::FitStatus& f : info->turns(turn).fits()) {
      if (f.method() == method) return f.state();
    }
    return v1::FIT_STATE_UNSPECIFIED;
  };
  EXPECT_EQ(state(0, v1::SONIC), v1::FIT_ON_DEMAND) << "its token scores serve SONIC";
  EXPECT_NE(state(0, v1::H2O), v1::FIT_ON_DEMAND) << "H2O does not spend token scores";
  EXPECT_NE(state(1, v1::SONIC), v1::FIT_ON_DEMAND) << "no scores: the ladder serves it";
  EXPECT_FALSE(*store_->HasFit(key, 0, "SONIC"));
}

// SONIC whose fit waits until the test opens its gate: a fit that takes longer than GetCache waits.
class GatedSonic final : public compressor::Compressor {
 public:
  GatedSonic() : sonic_(compressor::NewSonicCompressor()) {}
  std::string_view name() const override { return "SONIC"; }
  compressor::Capabilities capabilities() const override { return sonic_->capabilities(); }
  absl::StatusOr<std::string> Fit(const compressor::LayerView& layer) const override {
    gate_.WaitForNotification();
    return sonic_->Fit(layer);
  }
  absl::StatusOr<compressor::LayerEntries> Materialize(const compressor::LayerView& layer,
                                                       std::string_view fit, int n) const override {
    return sonic_->Materialize(layer, fit, n);
  }
  void Open() { gate_.Notify(); }

 private:
  std::unique_ptr<compressor::Compressor> sonic_;
  mutable absl::Notification gate_;
};

TEST_F(SonicCoreTest, AFitNotReadyInTimeIsServedByTheFallbackAndSaysSo) {
  std::vector<std::unique_ptr<compressor::Compressor>> methods;
  auto gated = std::make_unique<GatedSonic>();
  GatedSonic* gate = gated.get();
  methods.push_back(std::move(gated));
  methods.push_back(
      std::make_unique<Borrowed>(*compressor::CompressorRegistry::Default().Find("STREAMING_LLM")));
  compressor::CompressorRegistry registry(std::move(methods));
  core_ = std::make_unique<KvMemoryCore>(
      store_.get(), &registry,
      CoreOptions{.precompute_fits = false, .fit_wait = absl::Milliseconds(50)});
  AppendThree();
  auto plan = core_->PlanCache("default", Request(v1::SONIC, 0.5, 1));
  gate->Open();
  core_.reset();  // before the registry it points into
  ASSERT_TRUE(plan.ok()) << plan.status();
  const v1::CacheHeader& h = (*plan)->header();
  EXPECT_THAT(h.notes(), HasSubstr("turn 0: the SONIC fit is not ready ("));
  EXPECT_THAT(h.notes(), HasSubstr("served by STREAMING_LLM from its raw KV"));
  EXPECT_TRUE(h.turns(0).method() == v1::STREAMING_LLM || h.turns(0).raw());
  EXPECT_TRUE(Layers(**plan).ok());
}

TEST_F(SonicCoreTest, ScoredTurnsWhoseRawWasDroppedAreServedFromTheirLadders) {
  Start(*ParseRawRetention("drop"));
  ASSERT_TRUE(AppendScored(0, 16, 0, {}).ok());
  ASSERT_TRUE(AppendScored(1, 24, 16, {{1, 0, 5}}).ok());
  ASSERT_TRUE(AppendScored(2, 8, 40, {}).ok());
  ASSERT_TRUE(core_->PlanCache("default", Request(v1::SONIC, 0.5, 1)).ok());  // fits, then drops
  auto plan = core_->PlanCache("default", Request(v1::SONIC, 0.5, 1));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ((*plan)->header().entries_per_layer(0), (*plan)->header().entries_per_layer(1));
  EXPECT_TRUE(Layers(**plan).ok());
}

}  // namespace
}  // namespace nexuskv::service

namespace nexuskv::service {
namespace {

template <typename T>
std::vector<T> Floats(const std::string& bytes) {
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

TEST_F(SonicCoreTest, TheNewestProbesPinTheTokensTheyReadMostInEveryLayerAndHead) {
  // Scores fall with the position, so without the lookahead each head keeps its earliest tokens.
  // The last turn is kept raw: its probes are the lookahead.
  ASSERT_TRUE(AppendFortyFortyEight([](int, int, int p) { return 1.0f / (1.0f + p); }).ok());
  Start(RawRetention{}, /*merge_share=*/0.0, /*lookahead_share=*/0.25);
  auto raw = FullLayers();
  ASSERT_TRUE(raw.ok()) << raw.status();
  absl::StatusOr<std::vector<store::SegmentRecord>> records =
      store_->ListSegments({"default", "s"});
  ASSERT_TRUE(records.ok());
  absl::StatusOr<v1::SessionInfo> info = core_->GetSession("default", "s");
  ASSERT_TRUE(info.ok());
  const v1::ModelSpec& model = info->model();

  // keep 0.5: 40 entries per head and layer over the 80 older tokens, 10 of them pinned.
  auto plan = core_->PlanCache("default", Request(v1::SONIC, 0.5, 1));
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto layers = Layers(**plan);
  ASSERT_TRUE(layers.ok()) << layers.status();
  const int d = 8;
  int beyond_scores = 0;
  int64_t held_total = 0;
  for (int l = 0; l < 2; ++l) {
    absl::StatusOr<std::vector<float>> probes =
        LoadProbes(*store_, {"default", "s"}, model, (*records)[2], l);
    ASSERT_TRUE(probes.ok()) << probes.status();
    const int rows = static_cast<int>(probes->size()) / (2 * d);  // a group's rows
    std::vector<float> keys(2 * 88 * d);
    ASSERT_TRUE(DecodeToFloat((*raw)[l].keys(), DType::kFloat16, keys).ok());
    const int64_t n = (*plan)->header().entries_per_layer(l);
    held_total += n;
    const auto positions = Floats<int64_t>((*layers)[l].positions());
    for (int h = 0; h < 2; ++h) {
      // The group's attention mass over the 80 compressed tokens, as the server computes it.
      std::vector<double> mass(80, 0.0);
      for (int r = 0; r < rows; ++r) {
        const float* q = probes->data() + (h * rows + r) * d;
        std::vector<double> e(80);
        double sum = 0.0;
        for (int i = 0; i < 80; ++i) {
          double dot = 0.0;
          for (int c = 0; c < d; ++c) dot += q[c] * keys[(h * 88 + i) * d + c];
          sum += e[i] = std::exp(dot / std::sqrt(8.0));
        }
        for (int i = 0; i < 80; ++i) mass[i] += e[i] / sum;
      }
      std::vector<int> order(80 - compressor::kSinkTokens);
      std::iota(order.begin(), order.end(), compressor::kSinkTokens);
      std::sort(order.begin(), order.end(), [&](int a, int b) { return mass[a] > mass[b]; });
      const std::vector<int64_t> held(positions.begin() + h * n, positions.begin() + (h + 1) * n);
      for (int j = 0; j < 10; ++j) {
        EXPECT_THAT(held, ::testing::Contains(order[j])) << "layer " << l << " head " << h;
        beyond_scores += order[j] >= 40;  // the scores alone keep tokens 0..39
      }
    }
  }
  EXPECT_LE(held_total, 2 * (40 + 8)) << "the budget holds over the layers";
  EXPECT_GT(beyond_scores, 0) << "the probes picked tokens the scores would have evicted";
}

TEST_F(SonicCoreTest, MergedEntriesStandForRunsOfTheBestEvictedTokensAcrossTurns) {
  // Scores fall with the position, so each head keeps its earliest tokens and evicts the rest;
  // layers and heads differ in scale, so they keep different counts.
  auto score = [](int l, int h, int p) {
    return (1.0f + 0.3f * l + 0.1f * h) / (1.0f + static_cast<float>(p));
  };
  ASSERT_TRUE(AppendFortyFortyEight(score).ok());  // the last turn is kept raw
  Start(RawRetention{}, /*merge_share=*/0.1, /*lookahead_share=*/0.0);
  auto raw = FullLayers();
  ASSERT_TRUE(raw.ok()) << raw.status();

  // keep 0.5: 40 entries per head and layer over the 80 older tokens, 4 of them merged.
  auto plan = core_->PlanCache("default", Request(v1::SONIC, 0.5, 1));
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto layers = Layers(**plan);
  ASSERT_TRUE(layers.ok()) << layers.status();
  const size_t d = 8;
  int64_t real = 0;
  int merged_total = 0;
  for (int l = 0; l < 2; ++l) {
    const int64_t n = (*plan)->header().entries_per_layer(l);
    const auto bias = Floats<float>((*layers)[l].bias());
    const auto positions = Floats<int64_t>((*layers)[l].positions());
    std::vector<float> keys(2 * n * d), values(2 * n * d), full_keys(2 * 88 * d),
        full_values(2 * 88 * d);
    ASSERT_TRUE(DecodeToFloat((*layers)[l].keys(), DType::kFloat16, keys).ok());
    ASSERT_TRUE(DecodeToFloat((*layers)[l].values(), DType::kFloat16, values).ok());
    ASSERT_TRUE(DecodeToFloat((*raw)[l].keys(), DType::kFloat16, full_keys).ok());
    ASSERT_TRUE(DecodeToFloat((*raw)[l].values(), DType::kFloat16, full_values).ok());
    for (int h = 0; h < 2; ++h) {
      std::vector<int64_t> kept;  // raw entries of the compressed turns
      std::vector<int64_t> merged;
      int64_t previous = -1;
      for (int64_t j = h * n; j < (h + 1) * n; ++j) {
        if (bias[j] == -INFINITY) {
          EXPECT_EQ(positions[j], -1);
          continue;
        }
        EXPECT_GT(positions[j], previous) << "ascending, padding aside";
        previous = positions[j];
        if (positions[j] >= 80) continue;  // the raw turn
        (bias[j] == 0.0f ? kept : merged).push_back(j);
      }
      // The kept tokens are the head's earliest; the rest, in order, are cut into runs of 16.
      const int64_t k = static_cast<int64_t>(kept.size());
      for (int64_t i = 0; i < k; ++i) EXPECT_EQ(positions[kept[i]], i);
      std::vector<std::vector<int64_t>> runs;
      for (int64_t p = k; p < 80 && runs.size() < 4; p += 16) {
        std::vector<int64_t>& run = runs.emplace_back();
        for (int64_t q = p; q < std::min<int64_t>(p + 16, 80); ++q) run.push_back(q);
      }
      ASSERT_EQ(merged.size(), runs.size()) << "layer " << l << " head " << h << " keeps " << k;
      for (size_t r = 0; r < runs.size(); ++r) {
        const size_t j = static_cast<size_t>(merged[r]);
        EXPECT_EQ(positions[j], runs[r].back()) << "at its run's last token";
        EXPECT_FLOAT_EQ(bias[j], std::log(static_cast<float>(runs[r].size())));
        for (size_t c = 0; c < d; ++c) {
          double key = 0.0, value = 0.0, weight = 0.0;
          for (int64_t p : runs[r]) {
            const double w = score(l, h, static_cast<int>(p));
            key += w * full_keys[(h * 88 + p) * d + c];
            value += w * full_values[(h * 88 + p) * d + c];
            weight += w;
          }
          EXPECT_NEAR(keys[j * d + c], key / weight, 2e-3) << "the score-weighted mean key";
          EXPECT_NEAR(values[j * d + c], value / weight, 2e-3);
        }
      }
      EXPECT_TRUE(
          std::any_of(runs.begin(), runs.end(),
                      [](const auto& run) { return run.front() < 40 && run.back() >= 40; }) ||
          k >= 40)
          << "a run reaches across the turn boundary";
      real += k + static_cast<int64_t>(merged.size());
      merged_total += static_cast<int>(merged.size());
    }
  }
  EXPECT_GT(merged_total, 0);
  EXPECT_LE(real, 4 * 40) << "within the budget, merged entries included";
  EXPECT_GE(real, 4 * 36);

  // None when the budget holds every token: they only replace tokens it cannot hold.
  auto everything = core_->PlanCache("default", Request(v1::SONIC, 1.0, 1));
  ASSERT_TRUE(everything.ok()) << everything.status();
  auto every_layer = Layers(**everything);
  ASSERT_TRUE(every_layer.ok()) << every_layer.status();
  for (const v1::CacheLayer& layer : *every_layer) {
    const auto bias = Floats<float>(layer.bias());
    EXPECT_EQ(std::count(bias.begin(), bias.end(), 0.0f), 2 * 88) << "every token, raw";
  }

  // Off with --merge_share=0, and never in answers without bias or spent by max_bytes.
  v1::GetCacheRequest bias_free = Request(v1::SONIC, 0.5, 1);
  bias_free.set_bias_mode(v1::BIAS_MODE_NONE);
  auto unbiased = core_->PlanCache("default", bias_free);
  ASSERT_TRUE(unbiased.ok()) << unbiased.status();
  EXPECT_FALSE(unbiased->get()->header().has_bias());
  Start(RawRetention{}, /*merge_share=*/0.0);
  auto none = core_->PlanCache("default", Request(v1::SONIC, 0.5, 1));
  ASSERT_TRUE(none.ok()) << none.status();
  auto none_layers = Layers(**none);
  ASSERT_TRUE(none_layers.ok()) << none_layers.status();
  for (const v1::CacheLayer& layer : *none_layers) {
    for (float b : Floats<float>(layer.bias())) EXPECT_TRUE(b == 0.0f || b == -INFINITY);
  }
}

}  // namespace
}  // namespace nexuskv::service
