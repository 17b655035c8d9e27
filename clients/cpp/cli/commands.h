// The subcommands of the `nexuskv` CLI. Each Run* function reads its own flags and arguments from
// the parsed command line, prints its result on stdout (human-readable, or JSON with --json) and
// returns the process exit code:
//   kExitOk (0)     success;
//   kExitError (1)  the operation failed: a server error or a local one (unreadable or invalid
//                   file), printed on stderr as "error: <CODE>: <message>";
//   kExitUsage (2)  the command line is wrong (unknown flag, missing argument, bad value).
#ifndef NEXUSKV_CLIENTS_CPP_CLI_COMMANDS_H_
#define NEXUSKV_CLIENTS_CPP_CLI_COMMANDS_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clients/cpp/cli/command_line.h"
#include "clients/cpp/client.h"

namespace nexuskv::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;

// Flags every command accepts.
struct GlobalOptions {
  std::string server;  // --server, else $NEXUSKV_SERVER, else localhost:50051.
  bool json = false;   // --json
  absl::Duration timeout = absl::Seconds(30);  // --timeout SECONDS, per call.
  std::string token;  // --token, else $NEXUSKV_TOKEN; empty: no bearer token.
  // --tls-ca, --tls-cert, --tls-key (PEM files). Any of them set: the channel uses TLS.
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
};

// Reads --server, --json, --timeout, --token and the --tls-* flags (marking them used).
// InvalidArgument for a bad value, an empty --token or --tls-* path, or --tls-cert without
// --tls-key (or the reverse).
absl::StatusOr<GlobalOptions> ReadGlobalOptions(CommandLine& cl);

// Prints "nexuskv: <message>" and a pointer to help on stderr; returns kExitUsage.
int UsageError(const absl::Status& status);
// Prints "error: <CODE>: <message>" on stderr; returns kExitError.
int OperationError(const absl::Status& status);

// Checks that the command got exactly `count` arguments after its name and no unknown flags.
absl::Status CheckArguments(const CommandLine& cl, size_t count, std::string_view usage);

// A client for options.server with the per-call timeout, the bearer token and, when a --tls-*
// flag is set, TLS credentials. Errors of client::TlsCredentialsFromFiles (an unreadable or non-PEM
// file) and client::Client::Connect (a token with spaces or non-ASCII characters).
absl::StatusOr<std::unique_ptr<client::Client>> ConnectClient(const GlobalOptions& options);

// The overview help text (`nexuskv help`).
std::string HelpText();
// One command's help (`nexuskv get --help`, `nexuskv help get`); InvalidArgument for an unknown
// command.
absl::StatusOr<std::string> CommandHelpText(std::string_view command);

int RunList(CommandLine& cl, const GlobalOptions& options);      // ls
int RunShow(CommandLine& cl, const GlobalOptions& options);      // show
int RunRemove(CommandLine& cl, const GlobalOptions& options);    // rm
int RunGet(CommandLine& cl, const GlobalOptions& options);       // get
int RunPut(CommandLine& cl, const GlobalOptions& options);       // put
int RunDemoTurn(CommandLine& cl, const GlobalOptions& options);  // demo-turn

}  // namespace nexuskv::cli

#endif  // NEXUSKV_CLIENTS_CPP_CLI_COMMANDS_H_
