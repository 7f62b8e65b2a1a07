#include "virtio/dirty_log.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "virtio/guest_memory.h"
#include "virtio/testing/driver.h"

namespace vunet::virtio {
namespace {

constexpr uint64_t kPage = DirtyLog::kPageSize;

TEST(DirtyLogTest, MarksEveryPageARangeTouches) {
  std::vector<uint8_t> bitmap(4, 0);
  DirtyLog log(bitmap.data(), bitmap.size());
  EXPECT_EQ(log.pages(), 32u);
  log.Mark(kPage * 3 + 100, 1);
  EXPECT_EQ(bitmap[0], 1u << 3);
  log.Mark(kPage * 7 + kPage - 1, 2);  // Crosses into page 8.
  EXPECT_EQ(bitmap[0], (1u << 3) | (1u << 7));
  EXPECT_EQ(bitmap[1], 1u);
  log.Mark(kPage * 16, kPage * 8);  // Exactly pages 16..23.
  EXPECT_EQ(bitmap[2], 0xffu);
  EXPECT_EQ(bitmap[3], 0u);
  EXPECT_TRUE(log.IsDirty(3));
  EXPECT_FALSE(log.IsDirty(4));
}

TEST(DirtyLogTest, ZeroLengthMarksNothing) {
  std::vector<uint8_t> bitmap(1, 0);
  DirtyLog log(bitmap.data(), bitmap.size());
  log.Mark(0, 0);
  EXPECT_EQ(bitmap[0], 0u);
}

TEST(DirtyLogTest, WritesBeyondTheLogAreCountedNotRecorded) {
  std::vector<uint8_t> bitmap(2, 0);  // Guard byte after the log.
  DirtyLog log(bitmap.data(), 1);
  log.Mark(kPage * 6, kPage * 4);  // Pages 6..9; the log has 0..7.
  EXPECT_EQ(bitmap[0], 0xc0u);
  EXPECT_EQ(bitmap[1], 0u);
  EXPECT_EQ(log.pages_beyond_log(), 2u);
  // A range running past 2^64 must neither wrap nor write.
  log.Mark(UINT64_MAX - 10, 100);
  EXPECT_EQ(bitmap[1], 0u);
  EXPECT_GT(log.pages_beyond_log(), 2u);
}

TEST(DirtyLogTest, MarksHostRangesThroughGuestMemory) {
  auto driver = testing::DriverMemory::Create(1 << 20, 2, /*base=*/1 << 20).value();
  GuestMemory memory;
  ASSERT_TRUE(driver->MapInto(&memory).ok());
  std::vector<uint8_t> bitmap(64, 0);
  DirtyLog log(bitmap.data(), bitmap.size());
  const uint64_t gpa = (1 << 20) + 5 * kPage;
  void* host = memory.TranslateGpa(gpa, 10).value();
  log.MarkHost(memory, host, 10);
  EXPECT_TRUE(log.IsDirty(gpa / kPage));
  EXPECT_FALSE(log.IsDirty(gpa / kPage + 1));

  int outside = 0;
  log.MarkHost(memory, &outside, 4);
  EXPECT_EQ(log.unmapped_writes(), 1u);

  // Iovecs: only the first `bytes` bytes count.
  iovec iov[2] = {{memory.TranslateGpa(gpa + 10 * kPage, 100).value(), 100},
                  {memory.TranslateGpa(gpa + 20 * kPage, 100).value(), 100}};
  log.MarkIovecs(memory, iov, 2, 50);
  EXPECT_TRUE(log.IsDirty(gpa / kPage + 10));
  EXPECT_FALSE(log.IsDirty(gpa / kPage + 20));
  log.MarkIovecs(memory, iov, 2, 150);
  EXPECT_TRUE(log.IsDirty(gpa / kPage + 20));
}

TEST(DirtyLogTest, MapsASharedFile) {
  const int fd = memfd_create("log", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 3 * kPage), 0);
  auto log = DirtyLog::Map(fd, 2 * kPage, 100);  // Unaligned offset.
  ASSERT_TRUE(log.ok()) << log.status();
  (*log)->Mark(9 * kPage, 1);  // Byte 1, bit 1.
  uint8_t byte = 0;
  ASSERT_EQ(pread(fd, &byte, 1, 101), 1);
  EXPECT_EQ(byte, 2u);
  close(fd);
}

TEST(DirtyLogTest, RefusesLogsThatCannotBeMapped) {
  const int fd = memfd_create("log", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, kPage), 0);
  EXPECT_FALSE(DirtyLog::Map(fd, 0, 0).ok());
  EXPECT_FALSE(DirtyLog::Map(fd, 2 * kPage, 0).ok());       // Past the file's end.
  EXPECT_FALSE(DirtyLog::Map(fd, kPage, 1).ok());           // Likewise.
  EXPECT_FALSE(DirtyLog::Map(fd, kPage, UINT64_MAX).ok());  // Overflows.
  EXPECT_FALSE(DirtyLog::Map(fd, DirtyLog::kMaxBytes + 1, 0).ok());
  EXPECT_FALSE(DirtyLog::Map(-1, kPage, 0).ok());
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  EXPECT_FALSE(DirtyLog::Map(pipe_fds[0], kPage, 0).ok());  // Not a file.
  close(pipe_fds[0]);
  close(pipe_fds[1]);
  close(fd);
}

}  // namespace
}  // namespace vunet::virtio
