// Test fixture for store tests: a real RocksDB in a fresh temporary directory per test, and
// segments of random bytes with the shapes of a small model.
#ifndef NEXUSKV_STORE_STORE_TEST_UTIL_H_
#define NEXUSKV_STORE_STORE_TEST_UTIL_H_

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "store/store.h"

namespace nexuskv::store::testing {

// A segment ready for AppendSegment.
struct TestSegment {
  SegmentRecord record;
  std::vector<LayerTensors> layers;
};

class StoreTest : public ::testing::Test {
 protected:
  static constexpr uint32_t kLayers = 3;
  static constexpr uint32_t kKvHeads = 2;
  static constexpr uint32_t kQueryHeads = 4;
  static constexpr uint32_t kHeadDim = 8;
  static constexpr uint32_t kElementBytes = 2;  // float16

  void SetUp() override {
    std::string pattern = (std::filesystem::temp_directory_path() / "nexuskv_store.XXXXXX");
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    options_.path = dir_;
    options_.sync_writes = false;  // Durability across power loss is not under test; speed is.
    options_.min_blob_size = 64;   // Put the small test tensors in blob files, as real ones are.
    Reopen();
  }

  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  void Close() { store_.reset(); }

  void Reopen() {
    store_.reset();
    absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(options_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }

  static nexuskv::v1::ModelSpec Spec() {
    nexuskv::v1::ModelSpec spec;
    spec.set_model_id("test-model");
    spec.set_num_layers(kLayers);
    spec.set_num_kv_heads(kKvHeads);
    spec.set_num_query_heads(kQueryHeads);
    spec.set_head_dim(kHeadDim);
    spec.set_dtype(nexuskv::v1::DTYPE_FLOAT16);
    return spec;
  }

  static std::string RandomBytes(size_t n, std::mt19937& rng) {
    std::string bytes(n, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    return bytes;
  }

  // T tokens at [first_position, first_position + T), P probe queries, contents from `seed`.
  static TestSegment MakeSegment(uint32_t turn, uint64_t first_position, uint32_t num_tokens,
                                 uint32_t num_probes, uint32_t seed) {
    std::mt19937 rng(seed);
    TestSegment segment;
    segment.record.set_turn(turn);
    segment.record.set_num_tokens(num_tokens);
    segment.record.set_first_position(first_position);
    segment.record.set_role(turn % 2 == 0 ? nexuskv::v1::ROLE_USER : nexuskv::v1::ROLE_ASSISTANT);
    segment.record.set_num_probe_queries(num_probes);
    for (uint32_t layer = 0; layer < kLayers; ++layer) {
      const size_t kv_bytes = size_t{kKvHeads} * num_tokens * kHeadDim * kElementBytes;
      const size_t probe_bytes = size_t{kQueryHeads} * num_probes * kHeadDim * kElementBytes;
      segment.layers.push_back({.keys = RandomBytes(kv_bytes, rng),
                                .values = RandomBytes(kv_bytes, rng),
                                .probe_queries = RandomBytes(probe_bytes, rng)});
    }
    return segment;
  }

  absl::StatusOr<AppendOutcome> Append(const SessionKey& key, const TestSegment& segment,
                                       const nexuskv::v1::ModelSpec& spec = Spec()) {
    return store_->AppendSegment(key, spec, segment.record, segment.layers);
  }

  // Appends turns 0..n-1 of 4 tokens each with 2 probes; returns them.
  std::vector<TestSegment> AppendTurns(const SessionKey& key, uint32_t n, uint32_t seed = 1) {
    std::vector<TestSegment> segments;
    for (uint32_t turn = 0; turn < n; ++turn) {
      segments.push_back(MakeSegment(turn, 4 * turn, 4, 2, seed * 1000 + turn));
      absl::StatusOr<AppendOutcome> outcome = Append(key, segments.back());
      EXPECT_TRUE(outcome.ok()) << outcome.status();
    }
    return segments;
  }

  std::string dir_;
  Options options_;
  std::unique_ptr<Store> store_;
};

}  // namespace nexuskv::store::testing

#endif  // NEXUSKV_STORE_STORE_TEST_UTIL_H_
