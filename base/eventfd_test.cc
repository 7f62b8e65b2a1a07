#include "base/eventfd.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>

#include "base/unique_fd.h"
#include "gtest/gtest.h"

namespace vunet {
namespace {

void Signal(int fd, uint64_t value) {
  ASSERT_EQ(write(fd, &value, sizeof(value)), static_cast<ssize_t>(sizeof(value)));
}

TEST(DrainEventfdTest, ReturnsAndClearsTheCounter) {
  UniqueFd fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  ASSERT_GE(fd.get(), 0);
  EXPECT_EQ(DrainEventfd(fd.get()), 0u);
  Signal(fd.get(), 1);
  Signal(fd.get(), 2);
  EXPECT_EQ(DrainEventfd(fd.get()), 3u);
  EXPECT_EQ(DrainEventfd(fd.get()), 0u);
}

TEST(DrainEventfdTest, NeverBlocksOnABlockingFd) {
  UniqueFd fd(eventfd(0, EFD_CLOEXEC));  // Blocking: a bare read() would hang.
  ASSERT_GE(fd.get(), 0);
  EXPECT_EQ(DrainEventfd(fd.get()), 0u);
  Signal(fd.get(), 5);
  EXPECT_EQ(DrainEventfd(fd.get()), 5u);
  EXPECT_EQ(DrainEventfd(fd.get()), 0u);
}

TEST(DrainEventfdTest, BadFdReadsNothing) { EXPECT_EQ(DrainEventfd(-1), 0u); }

}  // namespace
}  // namespace vunet
