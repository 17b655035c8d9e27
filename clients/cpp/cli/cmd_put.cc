// put and demo-turn: append a turn from a file, and write a random one.
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "clients/cpp/cli/commands.h"
#include "clients/cpp/cli/format.h"
#include "clients/cpp/cli/turn_file.h"
#include "common/status_macros.h"

namespace nexuskv::cli {
namespace {

absl::StatusOr<DemoTurnOptions> ReadDemoOptions(CommandLine& cl, std::string& out) {
  DemoTurnOptions o;
  const std::optional<std::string> path = cl.String("out");
  if (!path || path->empty()) return absl::InvalidArgumentError("demo-turn needs --out FILE");
  out = *path;
  struct Field {
    const char* flag;
    uint32_t* value;
  };
  for (const Field& f : {Field{"layers", &o.layers}, Field{"kv-heads", &o.kv_heads},
                         Field{"query-heads", &o.query_heads}, Field{"head-dim", &o.head_dim},
                         Field{"tokens", &o.tokens}, Field{"probes", &o.probes}}) {
    NEXUSKV_ASSIGN_OR_RETURN(std::optional<uint64_t> v, cl.Unsigned(f.flag, UINT32_MAX));
    if (v) *f.value = static_cast<uint32_t>(*v);
  }
  NEXUSKV_ASSIGN_OR_RETURN(std::optional<uint64_t> seed, cl.Unsigned("seed"));
  o.seed = seed.value_or(0);
  NEXUSKV_ASSIGN_OR_RETURN(std::optional<uint64_t> first, cl.Unsigned("first-position"));
  o.first_position = first.value_or(0);
  if (std::optional<std::string> dtype_name = cl.String("dtype")) {
    const std::optional<DType> dtype = ParseDType(*dtype_name);
    if (!dtype) {
      return absl::InvalidArgumentError(
          absl::StrCat("--dtype=", *dtype_name, ": expected float16, bfloat16 or float32"));
    }
    o.dtype = *dtype;
  }
  if (std::optional<std::string> role_name = cl.String("role")) {
    const std::optional<v1::Role> role = ParseRole(*role_name);
    if (!role) {
      return absl::InvalidArgumentError(
          absl::StrCat("--role=", *role_name, ": expected system, user, assistant or tool"));
    }
    o.role = *role;
  }
  if (std::optional<std::string> model_id = cl.String("model-id")) o.model_id = *model_id;
  NEXUSKV_RETURN_IF_ERROR(CheckArguments(cl, 0, "nexuskv demo-turn --out FILE [--layers L] ..."));
  return o;
}

}  // namespace

int RunPut(CommandLine& cl, const GlobalOptions& options) {
  const std::optional<std::string> file = cl.String("file");
  absl::StatusOr<std::optional<uint64_t>> turn_number = cl.Unsigned("turn", UINT32_MAX);
  if (!turn_number.ok()) return UsageError(turn_number.status());
  if (!file || file->empty() || !turn_number->has_value()) {
    return UsageError(absl::InvalidArgumentError("put needs --turn N and --file FILE"));
  }
  if (absl::Status s = CheckArguments(cl, 1, "nexuskv put SESSION --turn N --file FILE"); !s.ok()) {
    return UsageError(s);
  }
  absl::StatusOr<TurnFile> turn = ReadTurnFile(*file);
  if (!turn.ok()) return OperationError(turn.status());
  turn->turn.session_id = cl.positionals()[1];
  turn->turn.turn = static_cast<uint32_t>(**turn_number);

  absl::StatusOr<std::unique_ptr<client::Client>> client = ConnectClient(options);
  if (!client.ok()) return OperationError(client.status());
  absl::StatusOr<v1::AppendSegmentResponse> ack = (*client)->AppendTurn(turn->turn);
  if (!ack.ok()) return OperationError(ack.status());
  if (options.json) {
    std::cout << ToJson(*ack) << "\n";
  } else if (ack->already_stored()) {
    std::cout << "turn " << ack->turn() << " of " << ack->session_id()
              << " was already stored (identical); nothing changed\n";
  } else {
    std::cout << "stored turn " << ack->turn() << " of " << ack->session_id() << ": "
              << HumanBytes(ack->stored_bytes()) << "; the session has " << ack->num_turns()
              << (ack->num_turns() == 1 ? " turn" : " turns") << ", next position "
              << ack->next_position() << "\n"
              << "compression runs in the background: 'nexuskv show " << ack->session_id()
              << "' shows each turn's fits (pending, stored, failed)\n";
  }
  return kExitOk;
}

int RunDemoTurn(CommandLine& cl, const GlobalOptions& options) {
  std::string path;
  absl::StatusOr<DemoTurnOptions> demo = ReadDemoOptions(cl, path);
  if (!demo.ok()) return UsageError(demo.status());
  absl::StatusOr<std::string> bytes = SerializeDemoTurn(*demo);
  if (!bytes.ok()) return UsageError(bytes.status());
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes->data(), static_cast<std::streamsize>(bytes->size()));
    out.close();
    if (!out) {
      return OperationError(absl::InternalError(absl::StrCat("cannot write ", path)));
    }
  }
  if (options.json) {
    std::cout << nlohmann::json{{"path", path}, {"bytes", bytes->size()}}.dump() << "\n";
  } else {
    std::cout << "wrote " << path << ": " << demo->layers << " layers, H=" << demo->kv_heads
              << " Hq=" << demo->query_heads << " D=" << demo->head_dim << ", " << demo->tokens
              << " tokens at " << demo->first_position << ", " << demo->probes << " probes, "
              << DTypeName(demo->dtype) << ", role " << RoleName(demo->role) << " ("
              << HumanBytes(bytes->size()) << ")\n";
  }
  return kExitOk;
}

}  // namespace nexuskv::cli
