// Full disk: the server's data dir on a small size-capped filesystem that the test fills.
//
// The contract (docs/api.md): appends on a full disk fail with RESOURCE_EXHAUSTED and store
// nothing, reads keep working, and appends succeed again once space is freed.
//
// The filesystem is a 48 MiB tmpfs mounted by the test (mount(2)); where that is not allowed, a
// loop-mounted ext4 image (mkfs.ext4 + mount -o loop); where neither is (no CAP_SYS_ADMIN, no
// loop devices), the test is skipped with the reasons.
#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/crash/turns.h"
#include "tests/integration/server_process.h"
#include "tests/integration/subprocess.h"

namespace nexuskv::testing {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kSeed = 7;
constexpr uint32_t kTokens = 48;

// A size-capped directory, unmounted (lazily) and removed on destruction.
class CappedDir {
 public:
  // The mounted directory, or an error saying why neither tmpfs nor a loop image could be mounted.
  static absl::StatusOr<std::unique_ptr<CappedDir>> Mount(uint64_t mib) {
    std::string base = std::filesystem::temp_directory_path() / "nexuskv-fulldisk-XXXXXX";
    if (::mkdtemp(base.data()) == nullptr) {
      return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
    }
    auto dir = std::unique_ptr<CappedDir>(new CappedDir(base));
    const std::string options = absl::StrCat("size=", mib, "m");
    if (::mount("tmpfs", dir->mount_point().c_str(), "tmpfs", 0, options.c_str()) == 0) {
      dir->kind_ = "tmpfs";
      dir->mounted_ = true;
      return dir;
    }
    const std::string tmpfs_error = std::strerror(errno);
    // Fallback: a loop-mounted ext4 image (needs the mount and mkfs.ext4 binaries and loop
    // devices).
    const std::string image = base + "/fs.img";
    { std::ofstream create(image); }
    std::error_code sized;
    std::filesystem::resize_file(image, mib << 20, sized);
    std::string loop_error;
    for (const char* mkfs : {"/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext4"}) {
      auto made = RunCommand({mkfs, "-q", "-F", "-m", "0", image});
      if (!made.ok()) {
        loop_error = std::string(made.status().message());
        continue;
      }
      if (made->exit_code != 0) {
        loop_error = absl::StrCat(mkfs, ": ", made->err);
        break;
      }
      for (const char* mount : {"/bin/mount", "/usr/bin/mount"}) {
        auto mounted = RunCommand({mount, "-o", "loop", image, dir->mount_point()});
        if (mounted.ok() && mounted->exit_code == 0) {
          dir->kind_ = "ext4 loop image";
          dir->mounted_ = true;
          return dir;
        }
        loop_error = mounted.ok() ? absl::StrCat(mount, ": ", mounted->err)
                                  : std::string(mounted.status().message());
      }
      break;
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot mount a size-capped filesystem: tmpfs: ", tmpfs_error, "; loop image: ", loop_error,
        " (the test needs root/CAP_SYS_ADMIN, or loop devices)"));
  }

  ~CappedDir() {
    if (mounted_) ::umount2(mount_point().c_str(), MNT_DETACH);
    std::error_code error;
    std::filesystem::remove_all(base_, error);
  }

  std::string mount_point() const { return base_ + "/mnt"; }
  const std::string& kind() const { return kind_; }

  // Writes a ballast file until the filesystem refuses (ENOSPC); returns the bytes written.
  uint64_t Fill() {
    const std::string path = mount_point() + "/ballast";
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) return 0;
    const std::string chunk(1 << 20, 'x');
    uint64_t written = 0;
    for (size_t size = chunk.size(); size >= 512;) {
      const ssize_t n = ::write(fd, chunk.data(), size);
      if (n > 0) {
        written += n;
      } else {
        size /= 2;  // Full at this granularity: try smaller writes down to 512 bytes.
      }
    }
    ::fsync(fd);
    ::close(fd);
    return written;
  }

  void Free() { std::filesystem::remove(mount_point() + "/ballast"); }

  uint64_t AvailableBytes() const {
    std::error_code error;
    return std::filesystem::space(mount_point(), error).available;
  }

 private:
  explicit CappedDir(std::string base) : base_(std::move(base)) {
    std::filesystem::create_directories(mount_point());
  }

  std::string base_;
  std::string kind_;
  bool mounted_ = false;
};

class FullDiskTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure() && server_) std::cerr << "server log:\n" << server_->LogTail() << "\n";
    server_.reset();  // Stop the server before the filesystem goes away.
  }

  absl::StatusOr<v1::AppendSegmentResponse> Append(const std::string& session, uint32_t turn) {
    const TurnBytes bytes =
        MakeTurnBytes(SmallSpec(), kSeed, session, turn, turn * kTokens, kTokens);
    auto ack = client_->AppendTurn(bytes.View(SmallSpec()));
    if (ack.ok()) digests_[session].push_back(Digest(SmallSpec(), bytes));
    return ack;
  }

  void ExpectReadsWork(const std::string& when) {
    SCOPED_TRACE(when);
    for (const auto& [session, digests] : digests_) {
      auto info = client_->GetSession(session);
      ASSERT_TRUE(info.ok()) << info.status();
      EXPECT_EQ(info->num_turns(), digests.size()) << session;
      v1::GetCacheRequest request;
      request.set_session_id(session);
      request.set_method(v1::FULL);
      auto cache = client_->GetCache(request);
      ASSERT_TRUE(cache.ok()) << session << ": " << cache.status();
      EXPECT_EQ(CompareFull(SmallSpec(), *cache, digests), "") << session;
      // A budgeted resume, served from the fits computed before the disk filled.
      request.set_method(v1::H2O);
      request.mutable_budget()->set_keep_ratio(0.5);
      auto budgeted = client_->GetCache(request);
      EXPECT_TRUE(budgeted.ok()) << session << " H2O: " << budgeted.status();
    }
    auto all = client_->ListAllSessions();
    ASSERT_TRUE(all.ok()) << all.status();
    EXPECT_EQ(all->size(), digests_.size());
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<client::Client> client_;
  std::map<std::string, std::vector<TurnDigest>> digests_;
};

TEST_F(FullDiskTest, AppendsFailWithResourceExhaustedReadsWorkAndSpaceReturns) {
  auto capped = CappedDir::Mount(48);
  if (!capped.ok()) GTEST_SKIP() << capped.status().message();
  std::cout << "full_disk_test: data dir on a 48 MiB " << (*capped)->kind() << std::endl;

  auto server = ServerProcess::Start(
      {.extra_flags = {"--data_dir=" + (*capped)->mount_point() + "/data", "--sync_writes=true",
                       "--min_free_disk_bytes=4194304"}});
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = std::move(*server);
  auto client = server_->Connect(absl::Seconds(20));
  ASSERT_TRUE(client.ok());
  client_ = std::move(*client);

  // Before: two sessions with a few turns, and their fits.
  for (const std::string session : {"early-a", "early-b"}) {
    for (uint32_t t = 0; t < 3; ++t) {
      auto ack = Append(session, t);
      ASSERT_TRUE(ack.ok()) << ack.status();
    }
  }
  absl::SleepFor(absl::Seconds(1));  // Background fits.
  ExpectReadsWork("before the disk fills");

  // Fill the disk, then append until the server says it is full. RocksDB may have reserved WAL
  // space beforehand, so the first appends after the fill can still succeed.
  const uint64_t ballast = (*capped)->Fill();
  std::cout << "full_disk_test: ballast " << ballast << " bytes, " << (*capped)->AvailableBytes()
            << " bytes left" << std::endl;
  absl::Status refused;
  uint32_t accepted_after_fill = 0;
  for (uint32_t t = 3; t < 200; ++t) {
    auto ack = Append("early-a", t);
    if (!ack.ok()) {
      refused = ack.status();
      break;
    }
    ++accepted_after_fill;
  }
  std::cout << "full_disk_test: " << accepted_after_fill
            << " appends accepted after the fill; then: " << refused << std::endl;
  const uint32_t refused_turn = 3 + accepted_after_fill;
  // A dropped connection may mean the server is going down: give it time to finish dying.
  for (int i = 0; i < 30 && refused.code() == absl::StatusCode::kUnavailable && server_->running();
       ++i) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  if (!server_->running()) {
    // Say exactly how it died (the RocksDB assertion or signal is in the log).
    std::string reason;
    for (absl::string_view line : absl::StrSplit(server_->LogTail(), '\n')) {
      if (absl::StrContains(line, "Assertion") || absl::StrContains(line, "terminate") ||
          absl::StrContains(line, "level=error")) {
        reason = std::string(line);
      }
    }
    ADD_FAILURE() << "the server died on a full disk (" << server_->last_exit()
                  << ") instead of answering RESOURCE_EXHAUSTED; last error line: " << reason;
    std::cout << "full_disk_test: server died (" << server_->last_exit() << "): " << reason
              << std::endl;
    // Can it at least come back up on the full disk to serve reads?
    const absl::Status restarted = server_->Restart();
    std::cout << "full_disk_test: restart on the full disk: "
              << (restarted.ok() ? "OK" : restarted.ToString().substr(0, 300)) << std::endl;
    EXPECT_TRUE(restarted.ok()) << "no reads on a full disk: the server does not start";
  } else {
    EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
    EXPECT_THAT(refused.message(), HasSubstr("disk is full"));
    // A new session is refused too, and nothing partial is stored.
    auto fresh = Append("during-full", 0);
    EXPECT_EQ(fresh.status().code(), absl::StatusCode::kResourceExhausted) << fresh.status();
  }
  if (server_->running()) {
    EXPECT_EQ(client_->GetSession("during-full").status().code(), absl::StatusCode::kNotFound);
    ExpectReadsWork("while the disk is full");
  }

  // The way out that the error message names: delete sessions. On a disk with no byte left that
  // must answer (OK, or RESOURCE_EXHAUSTED), not bring the server down.
  if (server_->running()) {
    auto deleted = client_->DeleteSession("early-b");
    for (int i = 0; i < 30 && server_->running(); ++i) absl::SleepFor(absl::Milliseconds(100));
    std::cout << "full_disk_test: DeleteSession on the full disk: " << deleted.status()
              << (server_->running() ? "" : "; the server died: " + server_->last_exit())
              << std::endl;
    EXPECT_TRUE(server_->running()) << "DeleteSession on a full disk killed the server ("
                                    << server_->last_exit() << "); log: " << server_->LogTail(2048);
    if (deleted.ok()) {
      digests_.erase("early-b");
    } else {
      EXPECT_EQ(deleted.status().code(), absl::StatusCode::kResourceExhausted) << deleted.status();
    }
  }

  // Space returns: appends must succeed again without a restart.
  (*capped)->Free();
  std::cout << "full_disk_test: ballast removed, " << (*capped)->AvailableBytes()
            << " bytes available" << std::endl;
  absl::Status after_free = absl::UnknownError("the server is not running");
  int attempts = 0;
  if (server_->running()) {
    const absl::Time deadline = absl::Now() + absl::Seconds(15);
    while (absl::Now() < deadline && server_->running()) {
      ++attempts;
      after_free = Append("after-free", 0).status();
      if (after_free.ok()) break;
      absl::SleepFor(absl::Milliseconds(500));
    }
    std::cout << "full_disk_test: append after freeing space, without a restart: " << after_free
              << " (" << attempts << " attempts over up to 15 s)" << std::endl;
    EXPECT_TRUE(after_free.ok()) << "the server did not recover from a full disk once space "
                                    "returned (without a restart): "
                                 << after_free;
  }
  if (!after_free.ok()) {
    // Does a restart recover it?
    const absl::Status restarted = server_->Restart();
    std::cout << "full_disk_test: restart after freeing space: "
              << (restarted.ok() ? "OK" : restarted.ToString().substr(0, 300)) << std::endl;
    ASSERT_TRUE(restarted.ok()) << restarted;
    after_free = Append("after-free", 0).status();
    std::cout << "full_disk_test: append after the restart: " << after_free << std::endl;
    ASSERT_TRUE(after_free.ok()) << after_free;
  }
  // A delete cut short by a crash may or may not have happened; either is fine.
  if (digests_.count("early-b") &&
      client_->GetSession("early-b").status().code() == absl::StatusCode::kNotFound) {
    digests_.erase("early-b");
  }
  // Nothing acknowledged was lost, nothing refused was half stored: the refused turn goes in now.
  auto retry = Append("early-a", refused_turn);
  EXPECT_TRUE(retry.ok()) << retry.status();
  ExpectReadsWork("after space returned");
}

}  // namespace
}  // namespace nexuskv::testing
