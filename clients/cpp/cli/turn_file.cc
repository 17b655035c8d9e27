#include "clients/cpp/cli/turn_file.h"

#include <cmath>
#include <map>
#include <numbers>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace nexuskv::cli {
namespace {

constexpr std::string_view kKeys = "keys";
constexpr std::string_view kValues = "values";
constexpr std::string_view kProbes = "probe_queries";

struct LayerTensors {
  const SafetensorsTensor* keys = nullptr;
  const SafetensorsTensor* values = nullptr;
  const SafetensorsTensor* probes = nullptr;
};

absl::Status Invalid(const std::string& what, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat("turn file: ", what, ": ", problem));
}

std::string ShapeString(const std::vector<uint64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Splits "layers.{l}.{kind}" (l decimal without leading zeros). nullopt for any other name.
std::optional<std::pair<uint32_t, std::string_view>> SplitName(std::string_view name) {
  constexpr std::string_view kPrefix = "layers.";
  if (!name.starts_with(kPrefix)) return std::nullopt;
  name.remove_prefix(kPrefix.size());
  const size_t dot = name.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot > 9) return std::nullopt;
  const std::string_view digits = name.substr(0, dot);
  if (digits.size() > 1 && digits[0] == '0') return std::nullopt;
  uint32_t layer = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    layer = layer * 10 + static_cast<uint32_t>(c - '0');
  }
  const std::string_view kind = name.substr(dot + 1);
  if (kind != kKeys && kind != kValues && kind != kProbes) return std::nullopt;
  return std::make_pair(layer, kind);
}

absl::StatusOr<uint64_t> MetadataNumber(const SafetensorsFile& file, const std::string& key,
                                        std::optional<uint64_t> fallback) {
  const auto it = file.metadata().find(key);
  if (it == file.metadata().end()) {
    if (fallback) return *fallback;
    return Invalid(absl::StrCat("__metadata__.", key), "missing");
  }
  uint64_t value = 0;
  if (!absl::SimpleAtoi(it->second, &value)) {
    return Invalid(absl::StrCat("__metadata__.", key),
                   absl::StrCat("\"", it->second, "\" is not a non-negative integer"));
  }
  return value;
}

// Shape [A, B, D] with every dimension positive (B may be 0 when allow_empty_middle).
absl::Status CheckRank3(const SafetensorsTensor& t, bool allow_empty_middle) {
  if (t.shape.size() != 3 || t.shape[0] == 0 || t.shape[2] == 0 ||
      (t.shape[1] == 0 && !allow_empty_middle) || t.shape[0] > UINT32_MAX ||
      t.shape[1] > UINT32_MAX || t.shape[2] > UINT32_MAX) {
    return Invalid(t.name, absl::StrCat("shape ", ShapeString(t.shape),
                                        " is not [heads, tokens, head_dim] with positive sizes"));
  }
  return absl::OkStatus();
}

// Box-Muller over a fully specified engine, so a seed gives the same file on every platform.
class Gaussian {
 public:
  explicit Gaussian(uint64_t seed) : engine_(seed) {}
  float Next() {
    const double u1 = (static_cast<double>(engine_() >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    const double u2 = static_cast<double>(engine_() >> 11) * 0x1.0p-53;          // [0, 1)
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) *
                              std::cos(2.0 * std::numbers::pi * u2));
  }

 private:
  std::mt19937_64 engine_;
};

std::string RandomTensor(Gaussian& gaussian, uint64_t count, DType dtype) {
  std::vector<float> values(count);
  for (float& v : values) v = gaussian.Next();
  return EncodeFromFloat(values, dtype);
}

}  // namespace

std::string_view SafetensorsDTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "F32";
    case DType::kFloat16:
      return "F16";
    case DType::kBFloat16:
      return "BF16";
  }
  return "";
}

std::optional<DType> DTypeFromSafetensors(std::string_view name) {
  if (name == "F32") return DType::kFloat32;
  if (name == "F16") return DType::kFloat16;
  if (name == "BF16") return DType::kBFloat16;
  return std::nullopt;
}

std::optional<v1::Role> ParseRole(std::string_view name) {
  if (name == "system") return v1::ROLE_SYSTEM;
  if (name == "user") return v1::ROLE_USER;
  if (name == "assistant") return v1::ROLE_ASSISTANT;
  if (name == "tool") return v1::ROLE_TOOL;
  return std::nullopt;
}

std::string_view RoleName(v1::Role role) {
  switch (role) {
    case v1::ROLE_SYSTEM:
      return "system";
    case v1::ROLE_USER:
      return "user";
    case v1::ROLE_ASSISTANT:
      return "assistant";
    case v1::ROLE_TOOL:
      return "tool";
    default:
      return "unspecified";
  }
}

absl::StatusOr<TurnFile> ParseTurnFile(SafetensorsFile file) {
  std::map<uint32_t, LayerTensors> layers;
  std::optional<DType> dtype;
  for (const SafetensorsTensor& t : file.tensors()) {
    const auto split = SplitName(t.name);
    if (!split) {
      return Invalid(t.name,
                     "unexpected tensor name; expected layers.{l}.keys, layers.{l}.values or "
                     "layers.{l}.probe_queries");
    }
    const std::optional<DType> d = DTypeFromSafetensors(t.dtype);
    if (!d) return Invalid(t.name, absl::StrCat("dtype ", t.dtype, " is not F32, F16 or BF16"));
    if (dtype && *d != *dtype) {
      return Invalid(t.name, absl::StrCat("dtype ", t.dtype, " differs from the file's ",
                                          std::string(SafetensorsDTypeName(*dtype))));
    }
    dtype = d;
    LayerTensors& layer = layers[split->first];
    const SafetensorsTensor** slot = split->second == kKeys     ? &layer.keys
                                     : split->second == kValues ? &layer.values
                                                                : &layer.probes;
    *slot = &t;
  }
  if (layers.empty()) return Invalid("tensors", "the file holds no layers.{l}.keys");
  const uint32_t num_layers = layers.rbegin()->first + 1;
  const bool has_probes = layers.begin()->second.probes != nullptr;
  const SafetensorsTensor* first_keys = nullptr;
  const SafetensorsTensor* first_probes = nullptr;
  for (uint32_t l = 0; l < num_layers; ++l) {
    const auto it = layers.find(l);
    const std::string name = absl::StrCat("layers.", l);
    if (it == layers.end() || it->second.keys == nullptr || it->second.values == nullptr) {
      return Invalid(
          name, absl::StrCat("keys and values are required for every layer 0..", num_layers - 1));
    }
    const LayerTensors& lt = it->second;
    NEXUSKV_RETURN_IF_ERROR(CheckRank3(*lt.keys, /*allow_empty_middle=*/false));
    if (first_keys == nullptr) first_keys = lt.keys;
    if (lt.keys->shape != first_keys->shape) {
      return Invalid(lt.keys->name,
                     absl::StrCat("shape ", ShapeString(lt.keys->shape), " differs from ",
                                  first_keys->name, " ", ShapeString(first_keys->shape)));
    }
    if (lt.values->shape != lt.keys->shape) {
      return Invalid(lt.values->name,
                     absl::StrCat("shape ", ShapeString(lt.values->shape), " differs from keys ",
                                  ShapeString(lt.keys->shape)));
    }
    if ((lt.probes != nullptr) != has_probes) {
      return Invalid(absl::StrCat(name, ".probe_queries"),
                     "probe queries must be given for every layer or for none");
    }
    if (!has_probes) continue;
    NEXUSKV_RETURN_IF_ERROR(CheckRank3(*lt.probes, /*allow_empty_middle=*/true));
    if (first_probes == nullptr) first_probes = lt.probes;
    if (lt.probes->shape != first_probes->shape) {
      return Invalid(lt.probes->name,
                     absl::StrCat("shape ", ShapeString(lt.probes->shape), " differs from ",
                                  first_probes->name, " ", ShapeString(first_probes->shape)));
    }
    if (lt.probes->shape[2] != lt.keys->shape[2]) {
      return Invalid(lt.probes->name, absl::StrCat("head_dim ", lt.probes->shape[2],
                                                   " differs from the keys' ", lt.keys->shape[2]));
    }
  }

  const uint64_t kv_heads = first_keys->shape[0];
  const auto meta_heads = file.metadata().find("num_query_heads");
  std::optional<uint64_t> probe_heads;
  if (has_probes) probe_heads = first_probes->shape[0];
  NEXUSKV_ASSIGN_OR_RETURN(const uint64_t query_heads,
                           MetadataNumber(file, "num_query_heads", probe_heads));
  if (has_probes && meta_heads != file.metadata().end() && query_heads != *probe_heads) {
    return Invalid(
        "__metadata__.num_query_heads",
        absl::StrCat(query_heads, " differs from the probe queries' ", *probe_heads, " heads"));
  }
  if (query_heads == 0 || query_heads > UINT32_MAX || query_heads % kv_heads != 0) {
    return Invalid("num_query_heads", absl::StrCat(query_heads, " is not a positive multiple of ",
                                                   "num_kv_heads=", kv_heads));
  }
  NEXUSKV_ASSIGN_OR_RETURN(const uint64_t first_position,
                           MetadataNumber(file, "first_position", uint64_t{0}));
  const auto model_id = file.metadata().find("model_id");
  if (model_id == file.metadata().end() || model_id->second.empty()) {
    return Invalid("__metadata__.model_id", "missing");
  }
  const auto role_name = file.metadata().find("role");
  if (role_name == file.metadata().end()) return Invalid("__metadata__.role", "missing");
  const std::optional<v1::Role> role = ParseRole(role_name->second);
  if (!role) {
    return Invalid("__metadata__.role", absl::StrCat("\"", role_name->second,
                                                     "\" is not system, user, assistant or tool"));
  }

  client::TurnTensors turn;
  turn.first_position = first_position;
  turn.role = *role;
  turn.model.set_model_id(model_id->second);
  turn.model.set_num_layers(num_layers);
  turn.model.set_num_kv_heads(static_cast<uint32_t>(kv_heads));
  turn.model.set_num_query_heads(static_cast<uint32_t>(query_heads));
  turn.model.set_head_dim(static_cast<uint32_t>(first_keys->shape[2]));
  turn.model.set_dtype(ToWireDType(*dtype));
  for (uint32_t l = 0; l < num_layers; ++l) {
    const LayerTensors& lt = layers[l];
    turn.layers.push_back({lt.keys->data, lt.values->data,
                           lt.probes != nullptr ? lt.probes->data : std::string_view()});
  }
  // The views point into the file's heap-allocated contents, which moving the file keeps.
  TurnFile out{std::move(file), std::move(turn)};
  return out;
}

absl::StatusOr<TurnFile> ReadTurnFile(const std::string& path) {
  NEXUSKV_ASSIGN_OR_RETURN(SafetensorsFile file, ReadSafetensorsFile(path));
  absl::StatusOr<TurnFile> turn = ParseTurnFile(std::move(file));
  if (!turn.ok()) {
    return absl::Status(turn.status().code(), absl::StrCat(path, ": ", turn.status().message()));
  }
  return turn;
}

absl::StatusOr<std::string> SerializeDemoTurn(const DemoTurnOptions& o) {
  if (o.layers == 0 || o.kv_heads == 0 || o.query_heads == 0 || o.head_dim == 0 || o.tokens == 0) {
    return absl::InvalidArgumentError(
        "demo turn: layers, kv-heads, query-heads, head-dim and tokens must be positive");
  }
  if (o.query_heads % o.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("demo turn: query-heads ", o.query_heads,
                                                   " is not a multiple of kv-heads ", o.kv_heads));
  }
  if (o.probes > o.tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("demo turn: probes ", o.probes, " exceed tokens ", o.tokens));
  }
  if (RoleName(o.role) == "unspecified") {
    return absl::InvalidArgumentError("demo turn: role must be system, user, assistant or tool");
  }
  const uint64_t kv_count = uint64_t{o.kv_heads} * o.tokens * o.head_dim;
  const uint64_t probe_count = uint64_t{o.query_heads} * o.probes * o.head_dim;
  NEXUSKV_RETURN_IF_ERROR(
      TensorBytes({o.layers, 2 * kv_count + probe_count}, o.dtype, "demo turn").status());

  Gaussian gaussian(o.seed);
  std::vector<std::string> storage;  // Three tensors per layer, reserved so views stay valid.
  storage.reserve(3 * size_t{o.layers});
  SafetensorsWriter writer;
  const std::string dtype(SafetensorsDTypeName(o.dtype));
  for (uint32_t l = 0; l < o.layers; ++l) {
    const std::string prefix = absl::StrCat("layers.", l, ".");
    storage.push_back(RandomTensor(gaussian, kv_count, o.dtype));
    NEXUSKV_RETURN_IF_ERROR(writer.AddTensor(prefix + "keys", dtype,
                                             {o.kv_heads, o.tokens, o.head_dim}, storage.back()));
    storage.push_back(RandomTensor(gaussian, kv_count, o.dtype));
    NEXUSKV_RETURN_IF_ERROR(writer.AddTensor(prefix + "values", dtype,
                                             {o.kv_heads, o.tokens, o.head_dim}, storage.back()));
    if (o.probes == 0) continue;
    storage.push_back(RandomTensor(gaussian, probe_count, o.dtype));
    NEXUSKV_RETURN_IF_ERROR(writer.AddTensor(
        prefix + "probe_queries", dtype, {o.query_heads, o.probes, o.head_dim}, storage.back()));
  }
  writer.AddMetadata("model_id", o.model_id);
  writer.AddMetadata("num_query_heads", absl::StrCat(o.query_heads));
  writer.AddMetadata("first_position", absl::StrCat(o.first_position));
  writer.AddMetadata("role", std::string(RoleName(o.role)));
  return writer.Serialize();
}

absl::StatusOr<uint64_t> WriteCacheFile(const client::Cache& cache, const std::string& path) {
  const v1::CacheHeader& h = cache.header;
  NEXUSKV_ASSIGN_OR_RETURN(const DType dtype, ToTensorDType(h.model().dtype()));
  const std::string dtype_name(SafetensorsDTypeName(dtype));
  const uint64_t heads = h.model().num_kv_heads();
  const uint64_t head_dim = h.model().head_dim();
  SafetensorsWriter writer;
  for (const v1::CacheLayer& layer : cache.layers) {
    const uint64_t n = h.entries_per_layer(static_cast<int>(layer.layer()));
    const std::string prefix = absl::StrCat("layers.", layer.layer(), ".");
    NEXUSKV_RETURN_IF_ERROR(
        writer.AddTensor(prefix + "keys", dtype_name, {heads, n, head_dim}, layer.keys()));
    NEXUSKV_RETURN_IF_ERROR(
        writer.AddTensor(prefix + "values", dtype_name, {heads, n, head_dim}, layer.values()));
    if (h.has_bias()) {
      NEXUSKV_RETURN_IF_ERROR(writer.AddTensor(prefix + "bias", "F32", {heads, n}, layer.bias()));
    }
    NEXUSKV_RETURN_IF_ERROR(
        writer.AddTensor(prefix + "positions", "I64", {heads, n}, layer.positions()));
  }
  writer.AddMetadata("session_id", h.session_id());
  writer.AddMetadata("model_id", h.model().model_id());
  writer.AddMetadata("method", v1::Method_Name(h.method()));
  writer.AddMetadata("next_position", absl::StrCat(h.next_position()));
  writer.AddMetadata("original_tokens", absl::StrCat(h.original_tokens()));
  writer.AddMetadata("num_query_heads", absl::StrCat(h.model().num_query_heads()));
  NEXUSKV_RETURN_IF_ERROR(writer.WriteFile(path));
  return writer.SerializedSize();
}

}  // namespace nexuskv::cli
