// Running helper programs (the `nexuskv` CLI, scripts) from tests and capturing their output.
//
//   NEXUSKV_ASSIGN_OR_RETURN(CommandResult r, RunCommand({cli, "--server", addr, "ls"}));
//   EXPECT_EQ(r.exit_code, 0) << r.err;
//
// Thread-safe; each call forks its own child.
#ifndef NEXUSKV_TESTS_INTEGRATION_SUBPROCESS_H_
#define NEXUSKV_TESTS_INTEGRATION_SUBPROCESS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace nexuskv::testing {

struct CommandResult {
  // The exit status, or 128 + signal number when the child was killed by a signal.
  int exit_code = -1;
  std::string out;  // Everything the child wrote on stdout.
  std::string err;  // Everything the child wrote on stderr.
};

// Runs argv[0] (a path; PATH is not searched) with the remaining arguments, stdin from /dev/null,
// and waits for it to exit. InvalidArgument for an empty argv; NotFound when argv[0] is not an
// executable file; DeadlineExceeded (the child is killed) when it runs longer than `timeout`;
// Internal when fork or pipe fail. A non-zero exit is not an error: see exit_code.
absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         absl::Duration timeout = absl::Seconds(60));

// "exit 3", "signal 9 (Killed)": a waitpid status for messages.
std::string DescribeWaitStatus(int wait_status);

}  // namespace nexuskv::testing

#endif  // NEXUSKV_TESTS_INTEGRATION_SUBPROCESS_H_
