// A small command-line parser for `nexuskv COMMAND [ARGS] [--flags]`.
//
// Flags may come before or after the command and its arguments, as `--name=value` or
// `--name value`; flags listed as boolean take no separate value (`--json`, or `--json=false`).
// `-` and `_` are interchangeable in names. `--` ends flag parsing.
//
//   NEXUSKV_ASSIGN_OR_RETURN(CommandLine cl, CommandLine::Parse(argc, argv, {"json"}));
//   NEXUSKV_ASSIGN_OR_RETURN(std::optional<uint64_t> n, cl.Unsigned("max-tokens"));
//   NEXUSKV_RETURN_IF_ERROR(cl.CheckAllUsed());  // rejects flags the command does not know
//
// Every error is InvalidArgument with a message for the user; the CLI treats it as a usage error.
// Not thread-safe.
#ifndef NEXUSKV_CLIENTS_CPP_CLI_COMMAND_LINE_H_
#define NEXUSKV_CLIENTS_CPP_CLI_COMMAND_LINE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace nexuskv::cli {

class CommandLine {
 public:
  // Parses argv[1..argc). `bool_flags` are the names that take no separate value.
  // InvalidArgument for a flag given twice, a value-taking flag at the end, or a bare "-x".
  static absl::StatusOr<CommandLine> Parse(int argc, const char* const* argv,
                                           const std::set<std::string>& bool_flags);

  // Non-flag arguments in order; the first is the command.
  const std::vector<std::string>& positionals() const { return positionals_; }

  // Typed flag values; nullopt when the flag is absent. Each call marks the flag as known.
  std::optional<std::string> String(std::string_view name);
  absl::StatusOr<std::optional<uint64_t>> Unsigned(std::string_view name,
                                                   uint64_t max = UINT64_MAX);
  absl::StatusOr<std::optional<double>> Double(std::string_view name);
  // False when absent; InvalidArgument for a value other than true/false/1/0.
  absl::StatusOr<bool> Bool(std::string_view name);

  // InvalidArgument naming the first flag that no getter asked about.
  absl::Status CheckAllUsed() const;

 private:
  std::map<std::string, std::string> flags_;
  std::set<std::string> used_;
  std::vector<std::string> positionals_;
};

}  // namespace nexuskv::cli

#endif  // NEXUSKV_CLIENTS_CPP_CLI_COMMAND_LINE_H_
