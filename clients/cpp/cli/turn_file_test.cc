#include "clients/cpp/cli/turn_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <deque>
#include <map>
#include <string>
#include <vector>

namespace nexuskv::cli {
namespace {

using ::testing::HasSubstr;

// Builds turn files tensor by tensor; data is zeros of the right size.
class TurnFileBuilder {
 public:
  TurnFileBuilder& Tensor(const std::string& name, const std::string& dtype,
                          std::vector<uint64_t> shape) {
    uint64_t size = *SafetensorsDTypeSize(dtype);
    for (uint64_t d : shape) size *= d;
    storage_.emplace_back(size, '\0');
    EXPECT_TRUE(writer_.AddTensor(name, dtype, std::move(shape), storage_.back()).ok()) << name;
    return *this;
  }
  // Keys and values [2, 3, 4] in F16 for `layers` layers, with the usual metadata.
  TurnFileBuilder& Standard(int layers = 2) {
    for (int l = 0; l < layers; ++l) {
      Tensor("layers." + std::to_string(l) + ".keys", "F16", {2, 3, 4});
      Tensor("layers." + std::to_string(l) + ".values", "F16", {2, 3, 4});
    }
    return Meta("model_id", "m").Meta("role", "user").Meta("num_query_heads", "4");
  }
  TurnFileBuilder& Meta(const std::string& key, const std::string& value) {
    writer_.AddMetadata(key, value);
    return *this;
  }
  absl::StatusOr<TurnFile> Parse() const {
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(writer_.Serialize());
    if (!file.ok()) return file.status();
    return ParseTurnFile(*std::move(file));
  }

 private:
  std::deque<std::string> storage_;  // A deque keeps earlier strings in place.
  SafetensorsWriter writer_;
};

void ExpectInvalid(const TurnFileBuilder& builder, const std::string& message) {
  absl::StatusOr<TurnFile> turn = builder.Parse();
  ASSERT_FALSE(turn.ok()) << "parsed; expected: " << message;
  EXPECT_EQ(turn.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(turn.status().message(), HasSubstr(message));
}

TEST(TurnFileTest, DemoTurnParsesIntoItsSpec) {
  DemoTurnOptions options;
  options.layers = 3;
  options.kv_heads = 2;
  options.query_heads = 6;
  options.head_dim = 8;
  options.tokens = 5;
  options.probes = 2;
  options.dtype = DType::kBFloat16;
  options.seed = 7;
  options.first_position = 40;
  options.role = v1::ROLE_ASSISTANT;
  absl::StatusOr<std::string> bytes = SerializeDemoTurn(options);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(*bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<TurnFile> turn = ParseTurnFile(*std::move(file));
  ASSERT_TRUE(turn.ok()) << turn.status();

  const client::TurnTensors& t = turn->turn;
  EXPECT_EQ(t.model.model_id(), "demo-model");
  EXPECT_EQ(t.model.num_layers(), 3u);
  EXPECT_EQ(t.model.num_kv_heads(), 2u);
  EXPECT_EQ(t.model.num_query_heads(), 6u);
  EXPECT_EQ(t.model.head_dim(), 8u);
  EXPECT_EQ(t.model.dtype(), v1::DTYPE_BFLOAT16);
  EXPECT_EQ(t.first_position, 40u);
  EXPECT_EQ(t.role, v1::ROLE_ASSISTANT);
  ASSERT_EQ(t.layers.size(), 3u);
  EXPECT_EQ(t.layers[2].keys.size(), 2u * 5 * 8 * 2);
  EXPECT_EQ(t.layers[2].probe_queries.size(), 6u * 2 * 8 * 2);
  EXPECT_NE(t.layers[0].keys, t.layers[1].keys);

  // Same seed, same file; another seed, another file.
  EXPECT_EQ(*SerializeDemoTurn(options), *bytes);
  options.seed = 8;
  EXPECT_NE(*SerializeDemoTurn(options), *bytes);
}

TEST(TurnFileTest, DemoTurnValuesAreStandardNormal) {
  DemoTurnOptions options;
  options.layers = 1;
  options.kv_heads = 4;
  options.head_dim = 64;
  options.tokens = 64;
  options.probes = 0;
  options.dtype = DType::kFloat32;
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(*SerializeDemoTurn(options));
  ASSERT_TRUE(file.ok());
  const std::string_view keys = file->Find("layers.0.keys")->data;
  std::vector<float> v(keys.size() / 4);
  ASSERT_TRUE(DecodeToFloat(keys, DType::kFloat32, v).ok());
  double sum = 0, sum_sq = 0;
  for (float x : v) {
    sum += x;
    sum_sq += double{x} * x;
  }
  const double mean = sum / v.size();
  EXPECT_NEAR(mean, 0.0, 0.05);
  EXPECT_NEAR(sum_sq / v.size() - mean * mean, 1.0, 0.08);
}

TEST(TurnFileTest, DemoTurnRejectsBadOptions) {
  DemoTurnOptions options;
  options.query_heads = 3;  // kv_heads is 2.
  EXPECT_EQ(SerializeDemoTurn(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = {};
  options.probes = options.tokens + 1;
  EXPECT_EQ(SerializeDemoTurn(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = {};
  options.head_dim = 0;
  EXPECT_EQ(SerializeDemoTurn(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TurnFileTest, MinimalFileWithoutProbes) {
  absl::StatusOr<TurnFile> turn = TurnFileBuilder().Standard().Parse();
  ASSERT_TRUE(turn.ok()) << turn.status();
  EXPECT_EQ(turn->turn.model.num_query_heads(), 4u);
  EXPECT_EQ(turn->turn.first_position, 0u) << "first_position defaults to 0";
  EXPECT_TRUE(turn->turn.layers[1].probe_queries.empty());
}

TEST(TurnFileTest, TensorNamesAreChecked) {
  ExpectInvalid(TurnFileBuilder().Standard().Tensor("layers.0.key", "F16", {1}),
                "unexpected tensor name");
  ExpectInvalid(TurnFileBuilder().Standard().Tensor("layers.02.keys", "F16", {2, 3, 4}),
                "layers.02.keys: unexpected tensor name");
  ExpectInvalid(TurnFileBuilder().Standard().Tensor("extra", "F16", {1}), "extra");
  ExpectInvalid(TurnFileBuilder().Meta("model_id", "m"), "holds no layers");
}

TEST(TurnFileTest, EveryLayerNeedsKeysAndValues) {
  TurnFileBuilder gap;
  gap.Standard(1)
      .Tensor("layers.2.keys", "F16", {2, 3, 4})
      .Tensor("layers.2.values", "F16", {2, 3, 4});
  ExpectInvalid(gap, "layers.1: keys and values are required for every layer 0..2");
  TurnFileBuilder no_values;
  no_values.Standard(1).Tensor("layers.1.keys", "F16", {2, 3, 4});
  ExpectInvalid(no_values, "layers.1: keys and values are required");
}

TEST(TurnFileTest, DtypesAndShapesAreChecked) {
  ExpectInvalid(TurnFileBuilder().Standard(1).Tensor("layers.1.keys", "F32", {2, 3, 4}),
                "dtype F32 differs from the file's F16");
  ExpectInvalid(TurnFileBuilder().Tensor("layers.0.keys", "I64", {2, 3, 4}),
                "dtype I64 is not F32, F16 or BF16");
  TurnFileBuilder values_shape;
  values_shape.Tensor("layers.0.keys", "F16", {2, 3, 4})
      .Tensor("layers.0.values", "F16", {2, 3, 5})
      .Meta("model_id", "m")
      .Meta("role", "user");
  ExpectInvalid(values_shape, "layers.0.values: shape [2, 3, 5] differs from keys [2, 3, 4]");
  TurnFileBuilder layer_shape;
  layer_shape.Standard(1)
      .Tensor("layers.1.keys", "F16", {2, 4, 4})
      .Tensor("layers.1.values", "F16", {2, 4, 4});
  ExpectInvalid(layer_shape, "differs from layers.0.keys [2, 3, 4]");
  ExpectInvalid(TurnFileBuilder()
                    .Tensor("layers.0.keys", "F16", {6, 4})
                    .Tensor("layers.0.values", "F16", {6, 4}),
                "is not [heads, tokens, head_dim]");
}

TEST(TurnFileTest, ProbesAreChecked) {
  TurnFileBuilder some_layers;
  some_layers.Standard().Tensor("layers.0.probe_queries", "F16", {4, 2, 4});
  ExpectInvalid(some_layers, "every layer or for none");
  TurnFileBuilder head_dim;
  head_dim.Standard()
      .Tensor("layers.0.probe_queries", "F16", {4, 2, 8})
      .Tensor("layers.1.probe_queries", "F16", {4, 2, 8});
  ExpectInvalid(head_dim, "head_dim 8 differs from the keys' 4");
  TurnFileBuilder heads;
  heads.Standard()
      .Tensor("layers.0.probe_queries", "F16", {8, 2, 4})
      .Tensor("layers.1.probe_queries", "F16", {8, 2, 4});
  ExpectInvalid(heads, "num_query_heads: 4 differs from the probe queries' 8 heads");

  TurnFileBuilder good;
  good.Tensor("layers.0.keys", "F16", {2, 3, 4})
      .Tensor("layers.0.values", "F16", {2, 3, 4})
      .Tensor("layers.0.probe_queries", "F16", {6, 2, 4})
      .Meta("model_id", "m")
      .Meta("role", "tool");
  absl::StatusOr<TurnFile> turn = good.Parse();
  ASSERT_TRUE(turn.ok()) << turn.status();
  EXPECT_EQ(turn->turn.model.num_query_heads(), 6u) << "Hq comes from the probes";
  EXPECT_EQ(turn->turn.role, v1::ROLE_TOOL);
}

TEST(TurnFileTest, MetadataIsChecked) {
  TurnFileBuilder base;
  base.Tensor("layers.0.keys", "F16", {2, 3, 4}).Tensor("layers.0.values", "F16", {2, 3, 4});
  ExpectInvalid(base, "num_query_heads: missing");
  base.Meta("num_query_heads", "3");
  ExpectInvalid(base, "3 is not a positive multiple of num_kv_heads=2");
  base.Meta("num_query_heads", "four");
  ExpectInvalid(base, "\"four\" is not a non-negative integer");
  base.Meta("num_query_heads", "4");
  ExpectInvalid(base, "model_id: missing");
  base.Meta("model_id", "m");
  ExpectInvalid(base, "role: missing");
  base.Meta("role", "robot");
  ExpectInvalid(base, "\"robot\" is not system, user, assistant or tool");
  base.Meta("role", "system");
  base.Meta("first_position", "-1");
  ExpectInvalid(base, "first_position: \"-1\" is not a non-negative integer");
  base.Meta("first_position", "12");
  absl::StatusOr<TurnFile> turn = base.Parse();
  ASSERT_TRUE(turn.ok()) << turn.status();
  EXPECT_EQ(turn->turn.first_position, 12u);
}

TEST(TurnFileTest, CacheFileHoldsTheAnswer) {
  client::Cache cache;
  v1::CacheHeader& h = cache.header;
  h.set_session_id("s");
  h.set_method(v1::SONIC);
  h.set_next_position(77);
  h.set_has_bias(true);
  h.mutable_model()->set_model_id("m");
  h.mutable_model()->set_num_layers(1);
  h.mutable_model()->set_num_kv_heads(2);
  h.mutable_model()->set_num_query_heads(4);
  h.mutable_model()->set_head_dim(4);
  h.mutable_model()->set_dtype(v1::DTYPE_FLOAT16);
  h.add_entries_per_layer(3);
  v1::CacheLayer& layer = cache.layers.emplace_back();
  layer.set_keys(std::string(2 * 3 * 4 * 2, 'k'));
  layer.set_values(std::string(2 * 3 * 4 * 2, 'v'));
  layer.set_bias(std::string(2 * 3 * 4, 'b'));
  layer.set_positions(std::string(2 * 3 * 8, 'p'));
  const std::string path = ::testing::TempDir() + "turn_file_test_cache.safetensors";
  absl::StatusOr<uint64_t> written = WriteCacheFile(cache, path);
  ASSERT_TRUE(written.ok()) << written.status();
  absl::StatusOr<SafetensorsFile> file = ReadSafetensorsFile(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->Find("layers.0.keys")->shape, (std::vector<uint64_t>{2, 3, 4}));
  EXPECT_EQ(file->Find("layers.0.values")->data, layer.values());
  EXPECT_EQ(file->Find("layers.0.bias")->dtype, "F32");
  EXPECT_EQ(file->Find("layers.0.positions")->shape, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(file->metadata().at("method"), "SONIC");
  EXPECT_EQ(file->metadata().at("next_position"), "77");
  EXPECT_EQ(file->metadata().at("model_id"), "m");
  std::remove(path.c_str());
}

}  // namespace
}  // namespace nexuskv::cli
