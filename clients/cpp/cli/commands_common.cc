#include <cstdlib>
#include <iostream>
#include <utility>

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
  const char* token = std::getenv("NEXUSKV_TOKEN");
  if (token != nullptr) options.token = token;
  if (std::optional<std::string> flag = cl.String("token")) {
    if (flag->empty()) return absl::InvalidArgumentError("--token must not be empty");
    options.token = *flag;
  }
  for (auto [name, field] :
       {std::pair{"tls-ca", &options.tls_ca}, std::pair{"tls-cert", &options.tls_cert},
        std::pair{"tls-key", &options.tls_key}}) {
    if (std::optional<std::string> path = cl.String(name)) {
      if (path->empty()) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " must not be empty"));
      }
      *field = *path;
    }
  }
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key go together (a client certificate and its private key)");
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
  client_options.bearer_token = options.token;
  if (!options.tls_ca.empty() || !options.tls_cert.empty()) {
    NEXUSKV_ASSIGN_OR_RETURN(
        client_options.credentials,
        client::TlsCredentialsFromFiles({.root_ca_file = options.tls_ca,
                                         .cert_chain_file = options.tls_cert,
                                         .private_key_file = options.tls_key}));
  }
  return client::Client::Connect(client_options);
}

std::string HelpText() {
  return R"(nexuskv: command-line client of the nexuskv KV-cache memory tier.

Usage: nexuskv [--server HOST:PORT] [--json] [--timeout SECONDS] [--token TOKEN]
               [--tls-ca CA.pem] [--tls-cert CERT.pem --tls-key KEY.pem] COMMAND [ARGS]

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
  --token TOKEN        Bearer token for a server with a tokens file (default $NEXUSKV_TOKEN;
                       prefer the variable: other users can read command lines).
  --tls-ca FILE        Use TLS, verifying the server against the CA certificates in this PEM
                       file (without it, against gRPC's default roots).
  --tls-cert FILE      Use TLS and present this client certificate (PEM), for servers that
                       require mutual TLS. Needs --tls-key.
  --tls-key FILE       The private key (PEM) of --tls-cert.

Exit status: 0 success, 1 operation failed (printed as "error: CODE: message"), 2 usage error.
File formats: docs/cli.md.
)";
}

}  // namespace nexuskv::cli
