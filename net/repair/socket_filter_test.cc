#include "net/repair/socket_filter.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "gtest/gtest.h"

namespace vunet::net {
namespace {

TEST(SocketFilterTest, AttachesAndDetaches) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  EXPECT_FALSE(HasSocketFilter(fd));
  if (!AttachDropAllFilter(fd)) {
    // Unprivileged, on a kernel that refuses socket filters to such.
    EXPECT_EQ(errno, EPERM);
    close(fd);
    GTEST_SKIP() << "socket filters refused here (kernel.unprivileged_bpf_disabled)";
  }
  EXPECT_TRUE(HasSocketFilter(fd));
  DetachSocketFilter(fd);
  EXPECT_FALSE(HasSocketFilter(fd));
  DetachSocketFilter(fd);  // None there: nothing happens.
  close(fd);
}

}  // namespace
}  // namespace vunet::net
