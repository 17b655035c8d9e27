// ServerProcess: runs the real `nexuskv-server` binary for integration tests.
//
// Each ServerProcess gets a fresh temporary directory holding the server's data dir and a log of
// its stdout and stderr, listens on a free loopback port, and is considered started once
// grpc.health.v1.Health/Check (overall service "") answers SERVING. The data dir and port survive
// Stop(), Kill() and Restart(), so a test can crash the server and check what it recovers. The
// directory is removed when the ServerProcess is destroyed (kept when the environment variable
// NEXUSKV_KEEP_TEST_DIRS is set, for debugging).
//
//   NEXUSKV_ASSIGN_OR_RETURN(std::unique_ptr<ServerProcess> server, ServerProcess::Start());
//   NEXUSKV_ASSIGN_OR_RETURN(auto client, server->Connect());
//   ... append turns ...
//   NEXUSKV_RETURN_IF_ERROR(server->Kill());     // crash without a clean shutdown
//   NEXUSKV_RETURN_IF_ERROR(server->Restart());  // same data dir, same port
//
// On a test failure, print server->LogTail() to see what the server said.
//
// Not thread-safe: drive one ServerProcess from one thread. The server is started with
// PR_SET_PDEATHSIG so that it dies if the thread that started it exits (a crashed test never
// leaves a server behind); start it from the test's main thread.
#ifndef NEXUSKV_TESTS_INTEGRATION_SERVER_PROCESS_H_
#define NEXUSKV_TESTS_INTEGRATION_SERVER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clients/cpp/client.h"
#include "grpcpp/security/credentials.h"

namespace nexuskv::testing {

// The server binary this build produced (NEXUSKV_SERVER_BIN, set by tests/integration/
// CMakeLists.txt).
const char* DefaultServerBinary();

struct ServerProcessOptions {
  std::string binary = DefaultServerBinary();
  // Appended after --listen and --data_dir, for instance {"--sync_writes=false"}.
  std::vector<std::string> extra_flags;
  // How long Start and Restart wait for SERVING.
  absl::Duration startup_timeout = absl::Seconds(30);
  // How long Stop waits after SIGTERM before SIGKILL.
  absl::Duration stop_timeout = absl::Seconds(10);
  // Channel credentials for the health checks and Connect(); null means plaintext. Set them when
  // extra_flags turn on TLS.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
};

class ServerProcess {
 public:
  // Creates the temp dir, picks a port, starts the server and waits for SERVING.
  // NotFound when the binary does not exist (build the nexuskv-server target);
  // FailedPrecondition when the server exits during startup; DeadlineExceeded when it is not
  // SERVING within startup_timeout (it is then killed). Error messages end with the log's tail.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(ServerProcessOptions options = {});

  // Stops a running server (Stop(), errors ignored) and removes the temp dir.
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // "127.0.0.1:PORT", also valid after Stop/Kill (the port is reused by Restart).
  const std::string& address() const { return address_; }
  const std::string& data_dir() const { return data_dir_; }
  // The server's stdout and stderr of every start, each start preceded by a marker line.
  const std::string& log_path() const { return log_path_; }
  // The last `max_bytes` of the log.
  std::string LogTail(size_t max_bytes = 16384) const;

  // The server's process id while it runs, -1 otherwise (for sending it signals).
  pid_t pid() const { return pid_; }
  // Whether the process is alive (reaps it if it has exited).
  bool running();
  // How the last process ended ("exit 0", "signal 9 (Killed)"); empty while running or before.
  const std::string& last_exit() const { return last_exit_; }

  // SIGTERM, then waits up to stop_timeout; SIGKILL after that. OK when the server exited with
  // status 0. DeadlineExceeded when it had to be killed; Internal when it exited non-zero or died
  // from a signal. OK (nothing to do) when it is not running.
  absl::Status Stop();
  // SIGKILL and reap: a crash, with no chance to flush. OK when it is not running.
  absl::Status Kill();
  // Stop() if running (returning its error), then start again on the same data dir and port and
  // wait for SERVING (errors as in Start).
  absl::Status Restart();

  // A client for this server with the given per-call timeout, made to survive Restart(): calls
  // wait for the server (wait_for_ready) and the channel reconnects within 500 ms.
  absl::StatusOr<std::unique_ptr<client::Client>> Connect(
      absl::Duration timeout = absl::Seconds(30)) const;

 private:
  explicit ServerProcess(ServerProcessOptions options);
  absl::Status Launch();
  absl::Status WaitUntilServing();
  std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials() const;
  // Waits up to `timeout` for the process to exit; true when it did (and was reaped).
  bool WaitForExit(absl::Duration timeout);
  absl::Status WithLog(absl::Status status) const;

  const ServerProcessOptions options_;
  std::string root_dir_;
  std::string data_dir_;
  std::string log_path_;
  std::string address_;
  pid_t pid_ = -1;
  std::string last_exit_;
  int last_wait_status_ = 0;
};

}  // namespace nexuskv::testing

#endif  // NEXUSKV_TESTS_INTEGRATION_SERVER_PROCESS_H_
