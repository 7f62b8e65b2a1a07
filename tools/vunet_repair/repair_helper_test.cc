#include "tools/vunet_repair/repair_helper.h"

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "net/repair/repair_channel.h"
#include "net/repair/testing/repair_testing.h"

extern char** environ;

namespace vunet::tools {
namespace {

using ::vunet::net::RepairChannel;
using ::vunet::net::RepairMode;
using ::vunet::net::testing::ConnectOverLoopback;
using ::vunet::net::testing::LoopbackPair;
using ::vunet::net::testing::OpenFdCount;
using ::vunet::net::testing::RepairModeOf;
using ::vunet::net::testing::SocketSet;
using ::vunet::net::testing::UnconnectedTcpSockets;

// The backend's end of a connection to the helper, for requests as a backend
// (or an impostor) might send them.
struct Connection {
  Connection() {
    int fds[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    backend.reset(fds[0]);
    helper.reset(fds[1]);
  }

  // Sends `bytes` with `fds` attached; sendmsg's result.
  ssize_t Send(const std::vector<int8_t>& bytes, const std::vector<int>& fds) const {
    iovec iov{.iov_base = const_cast<int8_t*>(bytes.data()), .iov_len = bytes.size()};
    std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (!fds.empty()) {
      msg.msg_control = control.data();
      msg.msg_controllen = control.size();
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    return sendmsg(backend.get(), &msg, MSG_NOSIGNAL);
  }

  // The reply byte, or -100 if there is none.
  int Reply() const {
    int8_t byte;
    return recv(backend.get(), &byte, 1, MSG_DONTWAIT) == 1 ? byte : -100;
  }

  UniqueFd backend;
  UniqueFd helper;
};

TEST(HandleRepairRequestTest, SetsAndClearsRepairModeAndReplies) {
  VUNET_SKIP_WITHOUT_REPAIR();
  absl::StatusOr<LoopbackPair> a = ConnectOverLoopback({.family = AF_INET});
  absl::StatusOr<LoopbackPair> b = ConnectOverLoopback({.family = AF_INET6});
  ASSERT_TRUE(a.ok() && b.ok());
  Connection c;
  const size_t fds_before = OpenFdCount();
  for (const int8_t mode : {TCP_REPAIR_ON, TCP_REPAIR_OFF_NO_WP, TCP_REPAIR_ON, TCP_REPAIR_OFF}) {
    ASSERT_EQ(c.Send({mode}, {a->ours.get(), b->ours.get()}), 1);
    absl::StatusOr<bool> handled = HandleRepairRequest(c.helper.get());
    ASSERT_TRUE(handled.ok()) << handled.status();
    EXPECT_TRUE(*handled);
    EXPECT_EQ(c.Reply(), mode);
    EXPECT_EQ(*RepairModeOf(a->ours.get()), mode == TCP_REPAIR_ON ? 1 : 0);
    EXPECT_EQ(*RepairModeOf(b->ours.get()), mode == TCP_REPAIR_ON ? 1 : 0);
  }
  EXPECT_EQ(OpenFdCount(), fds_before);  // The received copies are closed.
  c.backend.reset();
  absl::StatusOr<bool> end = HandleRepairRequest(c.helper.get());
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_FALSE(*end);
}

// Blocks of the socket filter attached to `fd` (0: none).
socklen_t FilterBlocks(int fd) {
  socklen_t blocks = 0;
  EXPECT_EQ(getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, nullptr, &blocks), 0);
  return blocks;
}

// In repair mode a socket takes nothing from its peer: the helper's filter
// drops every segment until the socket comes out again. Data the peer sends
// meanwhile waits for it, unacknowledged.
TEST(HandleRepairRequestTest, ARepairedSocketTakesNothingUntilItComesOut) {
  VUNET_SKIP_WITHOUT_REPAIR();
  absl::StatusOr<LoopbackPair> pair = ConnectOverLoopback({.family = AF_INET});
  ASSERT_TRUE(pair.ok());
  Connection c;
  ASSERT_EQ(c.Send({TCP_REPAIR_ON}, {pair->ours.get()}), 1);
  ASSERT_TRUE(HandleRepairRequest(c.helper.get()).ok());
  EXPECT_EQ(c.Reply(), TCP_REPAIR_ON);
  EXPECT_EQ(FilterBlocks(pair->ours.get()), 1u);
  ASSERT_EQ(send(pair->peer.get(), "abc", 3, 0), 3);
  usleep(50'000);
  int queued = -1;
  ASSERT_EQ(ioctl(pair->ours.get(), FIONREAD, &queued), 0);
  EXPECT_EQ(queued, 0);
  ASSERT_EQ(c.Send({TCP_REPAIR_OFF}, {pair->ours.get()}), 1);
  ASSERT_TRUE(HandleRepairRequest(c.helper.get()).ok());
  EXPECT_EQ(c.Reply(), TCP_REPAIR_OFF);
  EXPECT_EQ(FilterBlocks(pair->ours.get()), 0u);
  // The peer's retransmission gets in now.
  char buf[3];
  pollfd p{pair->ours.get(), POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 5000), 1);
  EXPECT_EQ(recv(pair->ours.get(), buf, 3, 0), 3);
}

TEST(HandleRepairRequestTest, RefusesWhatIsNotARequest) {
  VUNET_SKIP_WITHOUT_REPAIR();
  absl::StatusOr<LoopbackPair> tcp = ConnectOverLoopback({.family = AF_INET});
  ASSERT_TRUE(tcp.ok());
  UniqueFd udp(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  UniqueFd unix_socket(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  UniqueFd file(open("/dev/null", O_RDONLY | O_CLOEXEC));
  UniqueFd listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(listen(listener.get(), 1), 0);
  struct Case {
    const char* name;
    std::vector<int8_t> bytes;
    std::vector<int> fds;
    const char* says;
  };
  const Case cases[] = {
      {"unknown byte", {2}, {tcp->ours.get()}, "unknown request 2"},
      {"no sockets", {1}, {}, "without sockets"},
      {"a UDP socket", {1}, {tcp->ours.get(), udp.get()}, "socket 2 of 2 is not a TCP socket"},
      {"a UNIX socket", {1}, {unix_socket.get()}, "not a TCP socket"},
      {"a file", {0}, {file.get()}, "not a TCP socket"},
      {"a listening socket", {1}, {listener.get()}, "setsockopt(TCP_REPAIR, 1) on socket 1 of 1"},
  };
  const size_t fds_before = OpenFdCount();
  for (const Case& test : cases) {
    SCOPED_TRACE(test.name);
    Connection c;
    ASSERT_EQ(c.Send(test.bytes, test.fds), 1);
    absl::StatusOr<bool> handled = HandleRepairRequest(c.helper.get());
    EXPECT_FALSE(handled.ok());
    EXPECT_TRUE(absl::StrContains(handled.status().message(), test.says)) << handled.status();
    EXPECT_EQ(c.Reply(), -100);
  }
  EXPECT_EQ(OpenFdCount(), fds_before);
  // Nothing was changed before the UDP socket was found.
  EXPECT_EQ(*RepairModeOf(tcp->ours.get()), 0);
}

// Why requests carry at most 253 sockets: the kernel refuses to send more in
// one message (SCM_MAX_FD), so a helper never sees more.
TEST(ScmMaxFdTest, TheKernelSendsAtMost253FdsInOneMessage) {
  Connection c;
  const SocketSet sockets = UnconnectedTcpSockets(254);
  EXPECT_EQ(c.Send({1}, sockets.fds), -1);
  EXPECT_EQ(errno, EINVAL);
  const std::vector<int> most(sockets.fds.begin(), sockets.fds.end() - 1);
  EXPECT_EQ(c.Send({1}, most), 1);
}

TEST(ConnectToRepairSocketTest, SaysWhatIsWrongWithThePath) {
  EXPECT_FALSE(ConnectToRepairSocket("/nonexistent/vunet.sock.repair").ok());
  const absl::Status file = ConnectToRepairSocket("/dev/null").status();
  EXPECT_TRUE(absl::StrContains(file.message(), "neither a socket nor a directory")) << file;
}

// The real binary, started with `path`, its stderr kept.
class HelperProcess {
 public:
  explicit HelperProcess(const std::string& path) {
    const char* binary = std::getenv("VUNET_REPAIR");
    EXPECT_NE(binary, nullptr) << "VUNET_REPAIR names the binary";
    if (binary == nullptr) return;
    int pipe_fds[2];
    EXPECT_EQ(pipe2(pipe_fds, O_CLOEXEC), 0);
    stderr_.reset(pipe_fds[0]);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDERR_FILENO);
    char* const argv[] = {const_cast<char*>(binary), const_cast<char*>(path.c_str()), nullptr};
    EXPECT_EQ(posix_spawn(&pid_, binary, &actions, nullptr, argv, environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    close(pipe_fds[1]);
  }
  ~HelperProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  pid_t pid() const { return pid_; }

  // Its exit status, or -1 if it has not exited within `timeout`.
  int Wait(absl::Duration timeout = absl::Seconds(10)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
    return -1;
  }

  // What it wrote to stderr (call once it has exited).
  std::string Stderr() {
    std::string text;
    char buf[512];
    ssize_t n;
    while ((n = read(stderr_.get(), buf, sizeof(buf))) > 0)
      text.append(buf, static_cast<size_t>(n));
    return text;
  }

  // Waits until it watches a directory with inotify.
  bool WaitForInotifyWatch() {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline) {
      const std::string dir = "/proc/" + std::to_string(pid_) + "/fdinfo";
      if (DIR* d = opendir(dir.c_str())) {
        bool watching = false;
        while (dirent* e = readdir(d)) {
          std::ifstream info(dir + "/" + e->d_name);
          std::stringstream text;
          text << info.rdbuf();
          watching |= absl::StrContains(text.str(), "inotify wd:");
        }
        closedir(d);
        if (watching) return true;
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  }

 private:
  pid_t pid_ = -1;
  UniqueFd stderr_;
};

// A directory of the test's own under /tmp (TEST_TMPDIR can be too long a
// path for a UNIX socket), emptied and removed after the test, and a
// channel listening in it.
class VunetRepairBinaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    VUNET_SKIP_WITHOUT_REPAIR();
    char pattern[] = "/tmp/vunet_repair_helper_XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr) << strerror(errno);
    dir_ = pattern;
  }
  void TearDown() override {
    channel_.reset();
    if (DIR* d = opendir(dir_.c_str())) {
      while (const dirent* e = readdir(d)) {
        if (e->d_name[0] != '.') unlink((dir_ + "/" + e->d_name).c_str());
      }
      closedir(d);
    }
    rmdir(dir_.c_str());
  }

  // Listens at `name` in the directory.
  void Listen(const std::string& name) {
    absl::StatusOr<RepairChannel> channel = RepairChannel::Listen(dir_ + "/" + name);
    ASSERT_TRUE(channel.ok()) << channel.status();
    channel_.emplace(*std::move(channel));
  }

  // Waits for the helper to connect, and accepts it.
  void AcceptHelper() {
    pollfd p{.fd = channel_->listen_fd(), .events = POLLIN, .revents = 0};
    ASSERT_EQ(poll(&p, 1, 10'000), 1);
    ASSERT_TRUE(channel_->OnListenReadable());
  }

  // Listens at `name`, starts the helper on it and accepts it.
  std::unique_ptr<HelperProcess> ServedAt(const std::string& name) {
    Listen(name);
    auto helper = std::make_unique<HelperProcess>(channel_->path());
    AcceptHelper();
    return helper;
  }

  std::string dir_;
  std::optional<RepairChannel> channel_;
};

TEST_F(VunetRepairBinaryTest, ServesTheSocketItIsGiven) {
  absl::StatusOr<LoopbackPair> pair = ConnectOverLoopback({.family = AF_INET6});
  ASSERT_TRUE(pair.ok()) << pair.status();
  std::unique_ptr<HelperProcess> helper = ServedAt("vunet.sock.repair");
  const int fds[] = {pair->ours.get()};
  ASSERT_TRUE(channel_->Set(fds, RepairMode::kOn, absl::Seconds(5)).ok());
  EXPECT_EQ(*RepairModeOf(pair->ours.get()), 1);
  ASSERT_TRUE(channel_->Set(fds, RepairMode::kOffNoWindowProbe, absl::Seconds(5)).ok());
  EXPECT_EQ(*RepairModeOf(pair->ours.get()), 0);
  channel_->Close();  // The backend goes: the helper ends.
  EXPECT_EQ(helper->Wait(), 0);
  EXPECT_TRUE(absl::StrContains(helper->Stderr(), "connected to " + channel_->path()));
}

// Started before the backend, in the directory its socket will appear in
// (as libvirt's sockets do): it connects to the first *.repair socket
// created after it started, passing over files that are not sockets.
TEST_F(VunetRepairBinaryTest, WaitsInADirectoryForTheSocket) {
  absl::StatusOr<LoopbackPair> pair = ConnectOverLoopback({.family = AF_INET});
  ASSERT_TRUE(pair.ok()) << pair.status();
  HelperProcess helper(dir_);
  ASSERT_TRUE(helper.WaitForInotifyWatch());
  const UniqueFd decoy(
      open((dir_ + "/not-a-socket.repair").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
  Listen("vm1.socket.repair");
  AcceptHelper();

  const int fds[] = {pair->ours.get()};
  ASSERT_TRUE(channel_->Set(fds, RepairMode::kOn, absl::Seconds(5)).ok());
  EXPECT_EQ(*RepairModeOf(pair->ours.get()), 1);
  // TCP_REPAIR_WINDOW can be read in repair mode only: the other way to tell.
  tcp_repair_window window;
  socklen_t len = sizeof(window);
  EXPECT_EQ(getsockopt(pair->ours.get(), IPPROTO_TCP, TCP_REPAIR_WINDOW, &window, &len), 0);
  ASSERT_TRUE(channel_->Set(fds, RepairMode::kOff, absl::Seconds(5)).ok());
  EXPECT_EQ(*RepairModeOf(pair->ours.get()), 0);
  EXPECT_EQ(getsockopt(pair->ours.get(), IPPROTO_TCP, TCP_REPAIR_WINDOW, &window, &len), -1);
  EXPECT_EQ(errno, EPERM);

  channel_->DropHelper();  // Migration done: the helper ends.
  EXPECT_EQ(helper.Wait(), 0);
  EXPECT_TRUE(absl::StrContains(helper.Stderr(), "connected to " + channel_->path()));
}

TEST_F(VunetRepairBinaryTest, FailsAndHangsUpOnASocketThatIsNotTcp) {
  std::unique_ptr<HelperProcess> helper = ServedAt("vunet.sock.repair");
  UniqueFd udp(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  const int fds[] = {udp.get()};
  const absl::Status s = channel_->Set(fds, RepairMode::kOn, absl::Seconds(5));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_EQ(helper->Wait(), 1);
  const std::string text = helper->Stderr();
  EXPECT_TRUE(
      absl::StrContains(text, "vunet-repair: request 1: socket 1 of 1 is not a TCP socket\n"))
      << text;
}

TEST(VunetRepairCommandLineTest, SaysWhyItCannotStart) {
  HelperProcess missing("/nonexistent/vunet.sock.repair");
  EXPECT_EQ(missing.Wait(), 1);
  const std::string text = missing.Stderr();
  EXPECT_TRUE(absl::StartsWith(text, "vunet-repair: /nonexistent/vunet.sock.repair: ")) << text;
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1) << text;
}

// How long the helper takes for many sockets (the issue asks what migration
// costs): 1000 sockets on and off through the real binary.
TEST_F(VunetRepairBinaryTest, TogglesAThousandSockets) {
  std::unique_ptr<HelperProcess> helper = ServedAt("vunet.sock.repair");
  const SocketSet sockets = UnconnectedTcpSockets(1000);
  absl::Time start = absl::Now();
  ASSERT_TRUE(channel_->Set(sockets.fds, RepairMode::kOn, absl::Seconds(10)).ok());
  const absl::Duration on = absl::Now() - start;
  for (const int fd : sockets.fds) ASSERT_EQ(*RepairModeOf(fd), 1);
  start = absl::Now();
  ASSERT_TRUE(channel_->Set(sockets.fds, RepairMode::kOff, absl::Seconds(10)).ok());
  const absl::Duration off = absl::Now() - start;
  for (const int fd : sockets.fds) ASSERT_EQ(*RepairModeOf(fd), 0);
  printf("1000 sockets through vunet-repair (4 requests): on %s, off %s\n",
         absl::FormatDuration(on).c_str(), absl::FormatDuration(off).c_str());
  channel_->Close();
  EXPECT_EQ(helper->Wait(), 0);
}

}  // namespace
}  // namespace vunet::tools
