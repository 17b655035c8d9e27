// The server's optional config file: a YAML mapping of flag names to values, equivalent to the
// command-line flags (docs/api.md, "Config file").
//
//   # nexuskv.yaml
//   listen: 0.0.0.0:50051
//   data_dir: /var/lib/nexuskv
//   sync_writes: true
//   max_bytes_per_tenant: 1073741824
//
// `nexuskv-server --config=nexuskv.yaml --listen=localhost:50051` reads the file first and the
// command line after it, so a flag on the command line wins over the file.
#ifndef NEXUSKV_SERVICE_CONFIG_FILE_H_
#define NEXUSKV_SERVICE_CONFIG_FILE_H_

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace nexuskv::service {

// Turns the YAML text of a config file into `--name=value` arguments, in the file's order.
// `is_flag(name)` says whether the server has a flag of that name. InvalidArgument, naming the
// file and the line, for text that is not YAML, a top level that is not a mapping, a value that
// is not a scalar (a list or a mapping), an unknown flag, a key given twice, or `config` itself.
// An empty file gives no arguments.
absl::StatusOr<std::vector<std::string>> ConfigFileArguments(
    std::string_view yaml, std::string_view file_name,
    const std::function<bool(std::string_view)>& is_flag);

// The arguments to parse: argv[0], then the arguments of the file named by --config (as
// `--config=FILE` or `--config FILE`) when there is one, then the rest of argv unchanged.
// NotFound when the file cannot be read; ConfigFileArguments' errors otherwise.
absl::StatusOr<std::vector<std::string>> ArgumentsWithConfigFile(
    int argc, const char* const* argv, const std::function<bool(std::string_view)>& is_flag);

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_CONFIG_FILE_H_
