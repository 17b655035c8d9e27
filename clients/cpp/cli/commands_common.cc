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

}  // namespace nexuskv::cli
