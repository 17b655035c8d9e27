#include <cstdlib>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "clients/cpp/cli/commands.h"
#include "common/status_macros.h"

namespace nexuskv::cli {

absl::StatusOr<GlobalOptions> ReadGlobalOptions(CommandLine& cl) {
  GlobalOptions options;
  const char* env = std::getenv("NEXUSKV_SERVER");
  options.server = env != nullptr && env[0] != '\0' ? env : "localhost:50051";
  if (std::optional<std::string> server = cl.String("server")) {
    if (server->empty()) return absl::InvalidArgumentError("--server must not be empty");
    options.server = *server;
  }
  NEXUSKV_ASSIGN_OR_RETURN(options.json, cl.Bool("json"));
  NEXUSKV_ASSIGN_OR_RETURN(std::optional<double> timeout, cl.Double("timeout"));
  if (timeout) {
    if (*timeout <= 0) return absl::InvalidArgumentError("--timeout must be positive seconds");
    options.timeout = absl::Seconds(*timeout);
  }
  return options;
}

int UsageError(const absl::Status& status) {
  std::cerr << "nexuskv: " << status.message() << "\nRun 'nexuskv help' for usage.\n";
  return kExitUsage;
}

int OperationError(const absl::Status& status) {
  std::cerr << "error: " << absl::StatusCodeToString(status.code()) << ": " << status.message()
            << "\n";
  return kExitError;
}

absl::Status CheckArguments(const CommandLine& cl, size_t count, std::string_view usage) {
  const size_t given = cl.positionals().size() - 1;
  if (given != count) {
    return absl::InvalidArgumentError(
        absl::StrCat(cl.positionals()[0], " takes ", count, count == 1 ? " argument" : " arguments",
                     ", got ", given, ". Usage: ", std::string(usage)));
  }
  return cl.CheckAllUsed();
}

absl::StatusOr<std::unique_ptr<client::Client>> ConnectClient(const GlobalOptions& options) {
  client::ClientOptions client_options;
  client_options.target = options.server;
  client_options.timeout = options.timeout;
  return client::Client::Connect(client_options);
}

std::string HelpText() {
  return R"(nexuskv: command-line client of the nexuskv KV-cache memory tier.

Usage: nexuskv [--server HOST:PORT] [--json] [--timeout SECONDS] COMMAND [ARGS]

Commands:
  ls [--prefix P]              List sessions.
  show SESSION                 Session info and its turns.
  rm SESSION                   Delete a session.
  get SESSION [--keep-ratio R | --max-tokens N | --max-bytes B]
      [--method full|sonic|h2o|streaming_llm|snapkv] [--keep-recent-turns N]
      [--first-turn N] [--last-turn N] [--dtype float16|bfloat16|float32] [--no-bias]
      [--out FILE.safetensors]
                               Fetch a cache fitted to a budget; print its header, and with
                               --out write the tensors as safetensors.
  put SESSION --turn N --file TURN.safetensors
                               Append one turn from a safetensors file.
  demo-turn --out FILE [--layers L] [--kv-heads H] [--query-heads Hq] [--head-dim D]
      [--tokens T] [--probes P] [--dtype float16] [--seed S] [--first-position N]
      [--role user] [--model-id ID]
                               Write a random (seeded) turn file for put.
  help                         This text.

Global flags:
  --server HOST:PORT   Server address (default $NEXUSKV_SERVER, else localhost:50051).
  --json               Print results as JSON (protobuf JSON mapping, proto field names).
  --timeout SECONDS    Deadline of each call (default 30).

Exit status: 0 success, 1 operation failed (printed as "error: CODE: message"), 2 usage error.
File formats: docs/cli.md.
)";
}

}  // namespace nexuskv::cli
