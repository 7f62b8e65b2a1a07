#include "net/repair/repair_channel.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "net/repair/testing/repair_testing.h"

namespace vunet::net {
namespace {

using ::vunet::net::testing::OpenFdCount;
using ::vunet::net::testing::SocketSet;
using ::vunet::net::testing::UnconnectedTcpSockets;

// A directory of the test's own under /tmp: TEST_TMPDIR can be too long for
// a UNIX socket address, and tests may run side by side.
class ScratchDir {
 public:
  ScratchDir() {
    char pattern[] = "/tmp/vunet_repair_channel_XXXXXX";
    EXPECT_NE(mkdtemp(pattern), nullptr) << strerror(errno);
    path_ = pattern;
  }
  ~ScratchDir() {
    if (DIR* d = opendir(path_.c_str())) {
      while (dirent* e = readdir(d)) {
        if (e->d_name[0] != '.') unlink((path_ + "/" + e->d_name).c_str());
      }
      closedir(d);
    }
    rmdir(path_.c_str());
  }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

UniqueFd ConnectTo(const std::string& path) {
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  path.copy(addr.sun_path, sizeof(addr.sun_path) - 1);
  EXPECT_EQ(connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0)
      << strerror(errno);
  return fd;
}

// What the fake helper does with a request.
enum class Answer {
  kEcho,        // What a helper does when setsockopt worked: the byte back.
  kWrongByte,   // Another byte.
  kSilence,     // Nothing.
  kHangUp,      // What a helper does when setsockopt failed.
  kFdsBack,     // The byte, with an fd attached.
  kExtraBytes,  // The byte twice.
};

// A helper in a thread of the test: connects, then answers each request with
// the next of `answers` (the last one repeating), until the backend hangs up.
// Records what each request carried.
class FakeHelper {
 public:
  struct Request {
    int8_t byte;
    std::vector<ino_t> sockets;  // The inodes of the fds received.
  };

  FakeHelper(const std::string& path, std::vector<Answer> answers)
      : fd_(ConnectTo(path)), answers_(std::move(answers)) {
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeHelper() {
    HangUp();
    Join();
  }

  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  // Closes the helper's end from the test (a helper that goes away).
  void HangUp() { shutdown(fd_.get(), SHUT_RDWR); }
  int fd() const { return fd_.get(); }

  std::vector<Request> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }

 private:
  void Serve() {
    for (size_t i = 0;; ++i) {
      int8_t byte;
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 253)];
      iovec iov{.iov_base = &byte, .iov_len = 1};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      if (recvmsg(fd_.get(), &msg, MSG_CMSG_CLOEXEC) <= 0) return;
      Request request{.byte = byte, .sockets = {}};
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        const size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t k = 0; k < n; ++k) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof(int));
          struct stat st;
          fstat(fd, &st);
          request.sockets.push_back(st.st_ino);
          close(fd);
        }
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        requests_.push_back(std::move(request));
      }
      Reply(answers_[std::min(i, answers_.size() - 1)], byte);
    }
  }

  void Reply(Answer answer, int8_t byte) {
    switch (answer) {
      case Answer::kEcho:
        send(fd_.get(), &byte, 1, MSG_NOSIGNAL);
        return;
      case Answer::kWrongByte: {
        const int8_t wrong = static_cast<int8_t>(byte + 1);
        send(fd_.get(), &wrong, 1, MSG_NOSIGNAL);
        return;
      }
      case Answer::kSilence:
        return;
      case Answer::kHangUp:
        shutdown(fd_.get(), SHUT_RDWR);
        return;
      case Answer::kFdsBack: {
        UniqueFd extra(open("/dev/null", O_RDONLY | O_CLOEXEC));
        const int sent = extra.get();
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
        iovec iov{.iov_base = &byte, .iov_len = 1};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof(control);
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        std::memcpy(CMSG_DATA(c), &sent, sizeof(int));
        sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);
        return;
      }
      case Answer::kExtraBytes: {
        const int8_t twice[2] = {byte, byte};
        send(fd_.get(), twice, 2, MSG_NOSIGNAL);
        return;
      }
    }
  }

  UniqueFd fd_;
  const std::vector<Answer> answers_;
  std::mutex mu_;
  std::vector<Request> requests_;
  std::thread thread_;
};

ino_t InodeOf(int fd) {
  struct stat st;
  fstat(fd, &st);
  return st.st_ino;
}

class RepairChannelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<RepairChannel> channel = RepairChannel::Listen(path_);
    ASSERT_TRUE(channel.ok()) << channel.status();
    channel_ = std::make_unique<RepairChannel>(*std::move(channel));
  }

  // Starts a fake helper and has the channel accept it.
  std::unique_ptr<FakeHelper> Helper(std::vector<Answer> answers) {
    auto helper = std::make_unique<FakeHelper>(path_, std::move(answers));
    EXPECT_TRUE(channel_->OnListenReadable());
    EXPECT_TRUE(channel_->connected());
    return helper;
  }

  ScratchDir dir_;
  const std::string path_ = dir_.File("vunet.sock.repair");
  std::unique_ptr<RepairChannel> channel_;
};

TEST_F(RepairChannelTest, ListensAndRemovesItsSocketWhenClosed) {
  struct stat st;
  ASSERT_EQ(lstat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_GE(channel_->listen_fd(), 0);
  EXPECT_EQ(fcntl(channel_->listen_fd(), F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  EXPECT_NE(fcntl(channel_->listen_fd(), F_GETFL) & O_NONBLOCK, 0);
  EXPECT_FALSE(channel_->connected());
  EXPECT_FALSE(channel_->OnListenReadable());  // Nobody waiting: no blocking.
  channel_->Close();
  EXPECT_FALSE(Exists(path_));
  EXPECT_EQ(channel_->listen_fd(), -1);
  channel_->Close();
}

TEST_F(RepairChannelTest, ReplacesAStaleSocketFile) {
  channel_.reset();
  {
    UniqueFd left(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    path_.copy(addr.sun_path, sizeof(addr.sun_path) - 1);
    ASSERT_EQ(bind(left.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
  }  // Its owner is gone; the file stays.
  ASSERT_TRUE(Exists(path_));
  absl::StatusOr<RepairChannel> channel = RepairChannel::Listen(path_);
  ASSERT_TRUE(channel.ok()) << channel.status();
  FakeHelper helper(path_, {Answer::kEcho});
  EXPECT_TRUE(channel->OnListenReadable());
}

TEST_F(RepairChannelTest, RefusesAPathThatIsNotASocketOrTooLong) {
  channel_.reset();
  UniqueFd file(open(path_.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
  ASSERT_TRUE(file.valid());
  EXPECT_EQ(RepairChannel::Listen(path_).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Exists(path_));  // Left alone.
  EXPECT_EQ(RepairChannel::Listen(std::string(200, 'x')).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RepairChannel::Listen("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RepairChannelTest, CloseLeavesAFileItDidNotCreate) {
  ASSERT_EQ(unlink(path_.c_str()), 0);
  UniqueFd file(open(path_.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
  channel_->Close();
  EXPECT_TRUE(Exists(path_));
}

TEST_F(RepairChannelTest, AMovedChannelKeepsItsFile) {
  RepairChannel moved = std::move(*channel_);
  channel_.reset();  // The moved-from one removes nothing.
  EXPECT_TRUE(Exists(path_));
  EXPECT_EQ(moved.path(), path_);
  moved.Close();
  EXPECT_FALSE(Exists(path_));
}

TEST_F(RepairChannelTest, SetWithoutAHelperFails) {
  const SocketSet sockets = UnconnectedTcpSockets(1);
  const absl::Status s = channel_->Set(sockets.fds, RepairMode::kOn, absl::Seconds(1));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find(path_), std::string::npos) << s;
  EXPECT_TRUE(channel_->Set({}, RepairMode::kOn, absl::Seconds(1)).ok());
  const int negative[] = {-1};
  EXPECT_EQ(channel_->Set(negative, RepairMode::kOn, absl::Seconds(1)).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(RepairChannelTest, SendsThreeHundredSocketsInTwoRequests) {
  std::unique_ptr<FakeHelper> helper = Helper({Answer::kEcho});
  const SocketSet sockets = UnconnectedTcpSockets(300);
  ASSERT_TRUE(channel_->Set(sockets.fds, RepairMode::kOn, absl::Seconds(5)).ok());
  ASSERT_TRUE(channel_->Set(sockets.fds, RepairMode::kOffNoWindowProbe, absl::Seconds(5)).ok());
  ASSERT_TRUE(channel_->Set(sockets.fds, RepairMode::kOff, absl::Seconds(5)).ok());
  EXPECT_TRUE(channel_->connected());
  channel_->DropHelper();
  helper->Join();  // It sees the end of the connection.

  const std::vector<FakeHelper::Request> requests = helper->requests();
  ASSERT_EQ(requests.size(), 6u);
  const int8_t bytes[] = {1, 1, -1, -1, 0, 0};
  std::vector<ino_t> expected;
  expected.reserve(sockets.fds.size());
  for (const int fd : sockets.fds) expected.push_back(InodeOf(fd));
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(requests[i].byte, bytes[i]);
    ASSERT_EQ(requests[i].sockets.size(), i % 2 == 0 ? 253u : 47u);
    for (size_t k = 0; k < requests[i].sockets.size(); ++k) {
      EXPECT_EQ(requests[i].sockets[k], expected[(i % 2) * 253 + k]);
    }
  }
}

TEST_F(RepairChannelTest, AWrongReplyFailsAndDropsTheHelper) {
  std::unique_ptr<FakeHelper> helper = Helper({Answer::kWrongByte});
  const SocketSet sockets = UnconnectedTcpSockets(3);
  const absl::Status s = channel_->Set(sockets.fds, RepairMode::kOn, absl::Seconds(5));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("replied 2 to 1"), std::string::npos) << s;
  EXPECT_FALSE(channel_->connected());
}

TEST_F(RepairChannelTest, ASilentHelperTimesOut) {
  std::unique_ptr<FakeHelper> helper = Helper({Answer::kSilence});
  const SocketSet sockets = UnconnectedTcpSockets(3);
  const absl::Time start = absl::Now();
  const absl::Status s = channel_->Set(sockets.fds, RepairMode::kOn, absl::Milliseconds(200));
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_GE(took, absl::Milliseconds(190));
  EXPECT_LT(took, absl::Seconds(2));
  EXPECT_FALSE(channel_->connected());
}

TEST_F(RepairChannelTest, AHelperThatFailsClosesAndSaysHowFarItGot) {
  std::unique_ptr<FakeHelper> helper = Helper({Answer::kEcho, Answer::kHangUp});
  const SocketSet sockets = UnconnectedTcpSockets(300);
  const absl::Status s = channel_->Set(sockets.fds, RepairMode::kOn, absl::Seconds(5));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find("253 of 300 sockets confirmed, the next 47 unknown"),
            std::string::npos)
      << s;
  EXPECT_FALSE(channel_->connected());
}

TEST_F(RepairChannelTest, FdsSentBackAreRefusedAndClosed) {
  std::unique_ptr<FakeHelper> helper = Helper({Answer::kFdsBack});
  const SocketSet sockets = UnconnectedTcpSockets(2);
  const size_t before = OpenFdCount();
  const absl::Status s = channel_->Set(sockets.fds, RepairMode::kOn, absl::Seconds(5));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  helper->Join();
  // The helper's connection is gone on our side; its own end and its
  // /dev/null are closed by the helper: nothing of ours is left open.
  EXPECT_EQ(OpenFdCount(), before - 1);
  EXPECT_FALSE(channel_->connected());
}

TEST_F(RepairChannelTest, ExtraBytesAreRefused) {
  std::unique_ptr<FakeHelper> helper = Helper({Answer::kExtraBytes});
  const SocketSet sockets = UnconnectedTcpSockets(1);
  const absl::Status s = channel_->Set(sockets.fds, RepairMode::kOn, absl::Seconds(5));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_FALSE(channel_->connected());
}

TEST_F(RepairChannelTest, BytesBeforeARequestAreRefused) {
  std::unique_ptr<FakeHelper> helper = Helper({Answer::kEcho});
  const int8_t unasked = 1;
  ASSERT_EQ(send(helper->fd(), &unasked, 1, MSG_NOSIGNAL), 1);
  const SocketSet sockets = UnconnectedTcpSockets(1);
  const absl::Status s = channel_->Set(sockets.fds, RepairMode::kOn, absl::Seconds(5));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_TRUE(helper->requests().empty());
}

TEST_F(RepairChannelTest, ANewHelperReplacesTheOldOne) {
  std::unique_ptr<FakeHelper> first = Helper({Answer::kWrongByte});
  std::unique_ptr<FakeHelper> second = Helper({Answer::kEcho});
  first->Join();  // Dropped: it saw the end of its connection.
  EXPECT_NE(channel_->helper_fd(), -1);
  const SocketSet sockets = UnconnectedTcpSockets(5);
  EXPECT_TRUE(channel_->Set(sockets.fds, RepairMode::kOn, absl::Seconds(5)).ok());
  EXPECT_TRUE(first->requests().empty());
  EXPECT_EQ(second->requests().size(), 1u);
}

TEST_F(RepairChannelTest, AnIdleHelperThatHangsUpOrTalksIsDropped) {
  std::unique_ptr<FakeHelper> helper = Helper({Answer::kEcho});
  channel_->OnHelperReadable();  // Nothing to read: stays.
  EXPECT_TRUE(channel_->connected());
  helper->HangUp();
  helper->Join();
  channel_->OnHelperReadable();
  EXPECT_FALSE(channel_->connected());

  helper = Helper({Answer::kEcho});
  const int8_t unasked = 0;
  ASSERT_EQ(send(helper->fd(), &unasked, 1, MSG_NOSIGNAL), 1);
  absl::SleepFor(absl::Milliseconds(10));
  channel_->OnHelperReadable();
  EXPECT_FALSE(channel_->connected());
  EXPECT_FALSE(channel_->Set(UnconnectedTcpSockets(1).fds, RepairMode::kOn, absl::Seconds(1)).ok());
}

TEST(RepairModeNameTest, NamesTheThreeModes) {
  EXPECT_EQ(RepairModeName(1), "on");
  EXPECT_EQ(RepairModeName(0), "off");
  EXPECT_EQ(RepairModeName(-1), "off-no-window-probe");
  EXPECT_EQ(RepairModeName(7), "7");
}

}  // namespace
}  // namespace vunet::net
