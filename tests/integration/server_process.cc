#include "tests/integration/server_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/integration/subprocess.h"

#ifndef NEXUSKV_SERVER_BIN
#error \
    "NEXUSKV_SERVER_BIN must name the nexuskv-server binary (see tests/integration/CMakeLists.txt)"
#endif

namespace nexuskv::testing {
namespace {

absl::Status Errno(const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

absl::StatusOr<int> PickFreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const absl::Status status = Errno("bind 127.0.0.1:0");
    ::close(fd);
    return status;
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string TempBase() {
  for (const char* name : {"TEST_TMPDIR", "TMPDIR"}) {
    const char* value = std::getenv(name);
    if (value != nullptr && value[0] != '\0') return value;
  }
  return "/tmp";
}

// Channel arguments that keep reconnect backoff short, so a restarted server is found quickly.
grpc::ChannelArguments FastReconnectArgs() {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  return args;
}

}  // namespace

const char* DefaultServerBinary() { return NEXUSKV_SERVER_BIN; }

ServerProcess::ServerProcess(ServerProcessOptions options) : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(ServerProcessOptions options) {
  if (::access(options.binary.c_str(), X_OK) != 0) {
    return absl::NotFoundError(absl::StrCat("server binary ", options.binary,
                                            " not found or not executable: build the "
                                            "nexuskv-server target first"));
  }
  std::unique_ptr<ServerProcess> server(new ServerProcess(std::move(options)));
  std::string root = TempBase() + "/nexuskv-server-XXXXXX";
  if (::mkdtemp(root.data()) == nullptr) return Errno(absl::StrCat("mkdtemp ", root));
  server->root_dir_ = root;
  server->data_dir_ = root + "/data";
  server->log_path_ = root + "/server.log";
  std::error_code error;
  std::filesystem::create_directory(server->data_dir_, error);
  if (error) {
    return absl::InternalError(absl::StrCat("mkdir ", server->data_dir_, ": ", error.message()));
  }
  absl::StatusOr<int> port = PickFreePort();
  if (!port.ok()) return port.status();
  server->address_ = absl::StrCat("127.0.0.1:", *port);
  if (absl::Status s = server->Launch(); !s.ok()) return s;
  if (absl::Status s = server->WaitUntilServing(); !s.ok()) return s;
  return server;
}

ServerProcess::~ServerProcess() {
  if (running()) Stop().IgnoreError();
  if (root_dir_.empty()) return;
  if (std::getenv("NEXUSKV_KEEP_TEST_DIRS") != nullptr) {
    std::cerr << "ServerProcess: keeping " << root_dir_ << " (NEXUSKV_KEEP_TEST_DIRS is set)\n";
    return;
  }
  std::error_code error;
  std::filesystem::remove_all(root_dir_, error);
}

absl::Status ServerProcess::Launch() {
  std::vector<std::string> argv = {options_.binary, "--listen=" + address_,
                                   "--data_dir=" + data_dir_};
  argv.insert(argv.end(), options_.extra_flags.begin(), options_.extra_flags.end());
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  const int log_fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return Errno(absl::StrCat("open ", log_path_));
  const std::string marker =
      absl::StrCat("=== ServerProcess: starting ", absl::StrJoin(argv, " "), " ===\n");
  [[maybe_unused]] const ssize_t n = ::write(log_fd, marker.data(), marker.size());

  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(log_fd);
    return Errno("fork");
  }
  if (pid == 0) {
    // Only async-signal-safe calls until exec: the test process has gRPC threads.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) _exit(1);  // The parent died before prctl took effect.
    const int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    ::execv(args[0], args.data());
    static constexpr char kExecFailed[] = "ServerProcess: execv failed\n";
    [[maybe_unused]] const ssize_t w = ::write(STDERR_FILENO, kExecFailed, sizeof(kExecFailed) - 1);
    _exit(127);
  }
  ::close(log_fd);
  pid_ = pid;
  last_exit_.clear();
  return absl::OkStatus();
}

std::shared_ptr<grpc::ChannelCredentials> ServerProcess::ChannelCredentials() const {
  return options_.credentials ? options_.credentials : grpc::InsecureChannelCredentials();
}

absl::Status ServerProcess::WaitUntilServing() {
  const std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(address_, ChannelCredentials(), FastReconnectArgs());
  const std::unique_ptr<grpc::health::v1::Health::Stub> health =
      grpc::health::v1::Health::NewStub(channel);
  const absl::Time deadline = absl::Now() + options_.startup_timeout;
  std::string last = "no answer";
  while (absl::Now() < deadline) {
    if (!running()) {
      return WithLog(absl::FailedPreconditionError(
          absl::StrCat("server exited during startup (", last_exit_, ")")));
    }
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(std::min(deadline, absl::Now() + absl::Seconds(1))));
    context.set_wait_for_ready(true);
    grpc::health::v1::HealthCheckRequest request;  // service "": the server as a whole.
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status status = health->Check(&context, request, &response);
    if (status.ok() && response.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
      return absl::OkStatus();
    }
    last = status.ok()
               ? grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status())
               : absl::StrCat("gRPC code ", status.error_code(), ": ", status.error_message());
    absl::SleepFor(absl::Milliseconds(50));
  }
  Kill().IgnoreError();
  return WithLog(absl::DeadlineExceededError(
      absl::StrCat("server at ", address_, " not SERVING after ",
                   absl::FormatDuration(options_.startup_timeout), "; last health check: ", last)));
}

bool ServerProcess::running() {
  if (pid_ < 0) return false;
  int status = 0;
  const pid_t done = ::waitpid(pid_, &status, WNOHANG);
  if (done == 0) return true;
  if (done == pid_) {
    last_wait_status_ = status;
    last_exit_ = DescribeWaitStatus(status);
  } else {
    last_exit_ = "unknown (waitpid failed)";
  }
  pid_ = -1;
  return false;
}

bool ServerProcess::WaitForExit(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (running()) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

absl::Status ServerProcess::Stop() {
  if (!running()) return absl::OkStatus();
  ::kill(pid_, SIGTERM);
  if (WaitForExit(options_.stop_timeout)) {
    if (WIFEXITED(last_wait_status_) && WEXITSTATUS(last_wait_status_) == 0) {
      return absl::OkStatus();
    }
    return WithLog(absl::InternalError(
        absl::StrCat("server ended with ", last_exit_, " after SIGTERM instead of exit 0")));
  }
  Kill().IgnoreError();
  return WithLog(absl::DeadlineExceededError(
      absl::StrCat("server did not exit within ", absl::FormatDuration(options_.stop_timeout),
                   " of SIGTERM and was killed")));
}

absl::Status ServerProcess::Kill() {
  if (!running()) return absl::OkStatus();
  ::kill(pid_, SIGKILL);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  last_wait_status_ = status;
  last_exit_ = DescribeWaitStatus(status);
  pid_ = -1;
  return absl::OkStatus();
}

absl::Status ServerProcess::Restart() {
  if (absl::Status s = Stop(); !s.ok()) return s;
  if (absl::Status s = Launch(); !s.ok()) return s;
  return WaitUntilServing();
}

absl::StatusOr<std::unique_ptr<client::Client>> ServerProcess::Connect(
    absl::Duration timeout) const {
  client::ClientOptions options;
  options.target = address_;
  options.timeout = timeout;
  // Calls made while the server restarts wait for it (up to their deadline) instead of failing.
  options.wait_for_ready = true;
  grpc::ChannelArguments args = FastReconnectArgs();
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  return std::make_unique<client::Client>(
      grpc::CreateCustomChannel(address_, ChannelCredentials(), args), options);
}

std::string ServerProcess::LogTail(size_t max_bytes) const {
  std::ifstream in(log_path_, std::ios::binary);
  if (!in) return absl::StrCat("(no server log at ", log_path_, ")");
  std::string log((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (log.size() > max_bytes) log = "...\n" + log.substr(log.size() - max_bytes);
  return log;
}

absl::Status ServerProcess::WithLog(absl::Status status) const {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(status.message(), "\n--- server log (", log_path_,
                                                  ") ---\n", LogTail(4096)));
}

}  // namespace nexuskv::testing
