#include "base/unique_fd.h"

#include <fcntl.h>
#include <sys/eventfd.h>

#include "gtest/gtest.h"

namespace vunet {
namespace {

bool IsOpen(int fd) { return fcntl(fd, F_GETFD) != -1; }

TEST(UniqueFdTest, ClosesOnDestruction) {
  int raw = eventfd(0, EFD_CLOEXEC);
  ASSERT_GE(raw, 0);
  {
    UniqueFd fd(raw);
    EXPECT_TRUE(fd.valid());
  }
  EXPECT_FALSE(IsOpen(raw));
}

TEST(UniqueFdTest, MovesAndReleases) {
  UniqueFd a(eventfd(0, EFD_CLOEXEC));
  const int raw = a.get();
  UniqueFd b = std::move(a);
  EXPECT_FALSE(a.valid());  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(b.get(), raw);
  UniqueFd c;
  c = std::move(b);
  EXPECT_TRUE(IsOpen(raw));
  const int released = c.release();
  EXPECT_FALSE(c.valid());
  EXPECT_TRUE(IsOpen(released));
  close(released);
}

TEST(UniqueFdTest, ResetClosesThePrevious) {
  UniqueFd fd(eventfd(0, EFD_CLOEXEC));
  const int first = fd.get();
  fd.reset(eventfd(0, EFD_CLOEXEC));
  EXPECT_FALSE(IsOpen(first));
  fd.reset();
  EXPECT_FALSE(fd);
}

}  // namespace
}  // namespace vunet
