#include "base/log.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace vunet::log {
namespace {

TEST(LogTest, LevelsFilterLines) {
  SetLevel(Level::kWarning);
  const uint64_t before_info = LinesWritten(Level::kInfo);
  const uint64_t before_warning = LinesWritten(Level::kWarning);
  VUNET_LOG(kInfo, "not written %d", 1);
  VUNET_LOG(kWarning, "written %s", "once");
  EXPECT_EQ(LinesWritten(Level::kInfo), before_info);
  EXPECT_EQ(LinesWritten(Level::kWarning), before_warning + 1);
  SetLevel(Level::kInfo);
}

TEST(LogTest, RateLimitedSiteWritesABurstThenStops) {
  const uint64_t before = LinesWritten(Level::kError);
  for (int i = 0; i < 1000; ++i) VUNET_LOG_RATELIMITED(kError, "flood %d", i);
  EXPECT_EQ(LinesWritten(Level::kError) - before, static_cast<uint64_t>(RateLimiter::kBurst));
}

TEST(LogTest, LimiterReportsSuppressedLines) {
  RateLimiter limiter;
  uint64_t suppressed = 0;
  for (int i = 0; i < RateLimiter::kBurst; ++i) EXPECT_TRUE(limiter.Allow(&suppressed));
  EXPECT_FALSE(limiter.Allow(&suppressed));
  EXPECT_FALSE(limiter.Allow(&suppressed));
}

// A SOCK_SEQPACKET socket keeps each write(2) a message of its own: one
// message per line shows one write per line.
TEST(LogTest, UseFdWritesEachLineOnceToTheFd) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UseSyslog("log_test");  // UseFd takes over from syslog too.
  UseFd(sv[0]);
  VUNET_LOG(kWarning, "to the fd %d", 1);
  VUNET_LOG(kError, "%s", std::string(5000, 'x'));  // Cut to fit, still one line.
  UseFd(STDERR_FILENO);
  VUNET_LOG(kWarning, "to stderr again");
  shutdown(sv[0], SHUT_WR);

  std::string messages[3];
  for (std::string& m : messages) {
    char buf[8192];
    const ssize_t n = recv(sv[1], buf, sizeof(buf), 0);
    ASSERT_GE(n, 0);
    m.assign(buf, n);
  }
  close(sv[0]);
  close(sv[1]);
  EXPECT_NE(messages[0].find(" vunet warning: to the fd 1\n"), std::string::npos) << messages[0];
  EXPECT_EQ(messages[0].find('\n'), messages[0].size() - 1);
  EXPECT_NE(messages[1].find(" vunet error: xxx"), std::string::npos);
  EXPECT_EQ(messages[1].find('\n'), messages[1].size() - 1);
  EXPECT_LT(messages[1].size(), 4096u);
  EXPECT_EQ(messages[2], "");  // End of stream: the last line went to stderr.
}

// --log-size: the file never grows past its cap; the newest lines stay,
// whole, after a note of what was dropped.
TEST(LogTest, CappedFileKeepsTheNewestWholeLines) {
  char path[] = "/tmp/log_test.XXXXXX";
  const int created = mkstemp(path);
  ASSERT_GE(created, 0);
  close(created);
  const int fd = open(path, O_RDWR | O_APPEND | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  UseFd(fd, 1);  // Below the minimum: taken as kMinLogFileBytes.
  for (int i = 0; i < 300; ++i) {
    VUNET_LOG(kWarning, "line %04d %s", i, std::string(60, 'y'));
    struct stat st;
    ASSERT_EQ(fstat(fd, &st), 0);
    ASSERT_LE(static_cast<uint64_t>(st.st_size), kMinLogFileBytes) << "after line " << i;
  }
  UseFd(STDERR_FILENO);
  close(fd);
  std::ifstream in(path);
  std::string first, line, last;
  std::getline(in, first);
  EXPECT_NE(first.find("oldest"), std::string::npos) << first;
  int lines = 0;
  while (std::getline(in, line)) {
    EXPECT_NE(line.find(" vunet warning: line "), std::string::npos) << line;
    last = line;
    ++lines;
  }
  EXPECT_NE(last.find("line 0299 "), std::string::npos) << last;
  EXPECT_GT(lines, 10);
  unlink(path);
}

// A capped file we cannot read back starts over rather than grow.
TEST(LogTest, CappedWriteOnlyFileStartsOver) {
  char path[] = "/tmp/log_test.XXXXXX";
  const int created = mkstemp(path);
  ASSERT_GE(created, 0);
  close(created);
  const int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  UseFd(fd, kMinLogFileBytes);
  for (int i = 0; i < 300; ++i) {
    VUNET_LOG(kWarning, "line %04d %s", i, std::string(60, 'y'));
    struct stat st;
    ASSERT_EQ(fstat(fd, &st), 0);
    ASSERT_LE(static_cast<uint64_t>(st.st_size), kMinLogFileBytes) << "after line " << i;
  }
  UseFd(STDERR_FILENO);
  close(fd);
  unlink(path);
}

}  // namespace
}  // namespace vunet::log
