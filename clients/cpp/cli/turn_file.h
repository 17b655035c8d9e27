// The `nexuskv put` turn file and the `nexuskv get --out` cache file, both safetensors (see
// docs/cli.md for the full format).
//
// Turn file: tensors layers.{l}.keys and layers.{l}.values [H, T, D] for l in 0..L-1, optional
// layers.{l}.probe_queries [Hq, P, D] (in every layer or none), all F32, F16 or BF16 (one dtype),
// and __metadata__ strings model_id, role (system|user|assistant|tool), first_position (default
// 0) and num_query_heads (required without probes; must equal Hq with them).
//
//   NEXUSKV_ASSIGN_OR_RETURN(TurnFile file, ReadTurnFile("turn0.safetensors"));
//   file.turn.session_id = "chat-42";
//   file.turn.turn = 0;
//   NEXUSKV_ASSIGN_OR_RETURN(auto ack, client->AppendTurn(file.turn));
//
// All functions are thread-safe (they share no state).
#ifndef NEXUSKV_CLIENTS_CPP_CLI_TURN_FILE_H_
#define NEXUSKV_CLIENTS_CPP_CLI_TURN_FILE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "clients/cpp/client.h"
#include "tensor/dtype.h"
#include "tensor/safetensors.h"

namespace nexuskv::cli {

namespace v1 = ::nexuskv::v1;

// "F32", "F16", "BF16".
std::string_view SafetensorsDTypeName(DType dtype);
std::optional<DType> DTypeFromSafetensors(std::string_view name);

// "system", "user", "assistant", "tool" and back; nullopt / "unspecified" otherwise.
std::optional<v1::Role> ParseRole(std::string_view name);
std::string_view RoleName(v1::Role role);

// A turn read from a file. `turn` points into `file`'s bytes; session_id and turn number are left
// for the caller to fill in. Movable (the views stay valid), not copyable.
struct TurnFile {
  SafetensorsFile file;
  client::TurnTensors turn;
};

// Checks `file` against the turn format and builds the turn's spec and layer views.
// InvalidArgument naming the tensor or metadata key at fault.
absl::StatusOr<TurnFile> ParseTurnFile(SafetensorsFile file);

// ReadSafetensorsFile + ParseTurnFile; errors are prefixed with the path.
absl::StatusOr<TurnFile> ReadTurnFile(const std::string& path);

// A random turn for demos and tests: keys, values and probes drawn from N(0, 1) by a
// seeded generator, so one seed always gives the same file.
struct DemoTurnOptions {
  uint32_t layers = 2;
  uint32_t kv_heads = 2;
  uint32_t query_heads = 4;
  uint32_t head_dim = 16;
  uint32_t tokens = 8;
  uint32_t probes = 4;
  DType dtype = DType::kFloat16;
  uint64_t seed = 0;
  uint64_t first_position = 0;
  v1::Role role = v1::ROLE_USER;
  std::string model_id = "demo-model";
};

// The demo turn's file bytes. InvalidArgument for a zero size (probes may be 0), query_heads not
// a multiple of kv_heads, more probes than tokens, or an unset role.
absl::StatusOr<std::string> SerializeDemoTurn(const DemoTurnOptions& options);

// Writes a GetCache answer: layers.{l}.keys / values [H, N, D] in the output dtype,
// layers.{l}.bias F32 [H, N] when the answer has bias, layers.{l}.positions I64 [H, N], and
// __metadata__ session_id, model_id, method, next_position, original_tokens, num_query_heads.
// Returns the number of bytes written.
absl::StatusOr<uint64_t> WriteCacheFile(const client::Cache& cache, const std::string& path);

}  // namespace nexuskv::cli

#endif  // NEXUSKV_CLIENTS_CPP_CLI_TURN_FILE_H_
