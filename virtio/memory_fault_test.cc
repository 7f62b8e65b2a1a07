#include "virtio/memory_fault.h"

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <memory>

#include "gtest/gtest.h"
#include "virtio/guest_memory.h"
#include "virtio/testing/driver.h"
#include "virtio/virtqueue.h"

namespace vunet::virtio {
namespace {

constexpr uint64_t kRegionSize = 64 * 1024;
// Above DriverMemory's default base, so both fit in one GuestMemory.
constexpr uint64_t kUnsealedGpa = uint64_t{1} << 40;

// A memfd that cannot be sealed (no MFD_ALLOW_SEALING), as a hugetlbfs or
// plain file would be: the frontend can shrink it under our mapping.
int UnsealableFile(uint64_t size) {
  const int fd = memfd_create("vunet-unsealable", MFD_CLOEXEC);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
  return fd;
}

uint8_t* HostByte(const GuestMemory& memory, uint64_t gpa) {
  return static_cast<uint8_t*>(memory.TranslateGpa(gpa, 1).value());
}

class MemoryFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(ContainGuestMemoryFaults().ok());
    fd_ = UnsealableFile(kRegionSize);
    ASSERT_TRUE(memory_
                    .AddRegion({.guest_phys_addr = kUnsealedGpa,
                                .size = kRegionSize,
                                .user_addr = kUnsealedGpa,
                                .mmap_offset = 0},
                               fd_)
                    .ok());
    ASSERT_FALSE(memory_.sealed());
    *HostByte(memory_, kUnsealedGpa) = 0x5a;
    *HostByte(memory_, kUnsealedGpa + 8192) = 0xa5;
  }
  void TearDown() override { close(fd_); }

  int fd_ = -1;
  GuestMemory memory_;
};

TEST_F(MemoryFaultTest, AShrunkFileReadsAsZerosAndMarksTheMemoryFaulted) {
  const uint64_t before = ContainedGuestMemoryFaults();
  EXPECT_FALSE(memory_.faulted());
  // The frontend shrinks the file to one page: the bytes past it would
  // raise SIGBUS.
  ASSERT_EQ(ftruncate(fd_, 4096), 0);
  volatile uint8_t* past = HostByte(memory_, kUnsealedGpa + 8192);
  EXPECT_EQ(*past, 0);  // Contained: zeros, and we are still here.
  *past = 1;            // Writable too (into our own pages).
  EXPECT_EQ(*past, 1);
  EXPECT_EQ(ContainedGuestMemoryFaults(), before + 1);
  EXPECT_TRUE(memory_.faulted());
  // The whole mapping was replaced, the page still in the file too.
  EXPECT_EQ(*HostByte(memory_, kUnsealedGpa), 0);

  // Other memory is not faulted, nor a region mapped afresh.
  GuestMemory other;
  const int fd = UnsealableFile(kRegionSize);
  ASSERT_TRUE(
      other.AddRegion({.guest_phys_addr = 0, .size = kRegionSize, .user_addr = 0}, fd).ok());
  EXPECT_FALSE(other.faulted());
  memory_.Clear();
  EXPECT_FALSE(memory_.faulted());
  close(fd);
}

TEST_F(MemoryFaultTest, AQueueOverFaultedMemoryBreaks) {
  std::unique_ptr<testing::DriverMemory> driver_memory =
      testing::DriverMemory::Create(1 << 20).value();
  ASSERT_TRUE(driver_memory->MapInto(&memory_).ok());
  testing::DriverQueue driver(driver_memory.get(), 64);
  Virtqueue vq;
  ASSERT_TRUE(vq.Start(&memory_, driver.DeviceConfig(memory_).value()).ok());
  const uint64_t buf = driver_memory->Alloc(1500).value();
  ASSERT_TRUE(driver.AddChain({{buf, 1500, true}}).has_value());
  driver.Publish();

  ASSERT_EQ(ftruncate(fd_, 0), 0);
  EXPECT_EQ(*HostByte(memory_, kUnsealedGpa + 100), 0);  // Contained.

  VirtqElement elem;
  iovec in[4], out[4];
  const absl::StatusOr<bool> popped = vq.Pop(&elem, in, 4, out, 4);
  EXPECT_EQ(popped.status().code(), absl::StatusCode::kDataLoss) << popped.status();
  EXPECT_TRUE(vq.broken());
  EXPECT_NE(vq.broken_reason().find("guest memory faulted"), std::string::npos)
      << vq.broken_reason();
  vq.Stop();
}

// A SIGBUS outside guest memory is not ours to contain: the process dies as
// it would without the handler.
TEST(MemoryFault, AFaultElsewhereStillKills) {
  ASSERT_TRUE(ContainGuestMemoryFaults().ok());
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = memfd_create("vunet-not-guest-memory", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, 8192) != 0) _exit(2);
    auto* p = static_cast<volatile uint8_t*>(
        mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    if (p == MAP_FAILED || ftruncate(fd, 0) != 0) _exit(2);
    (void)p[4096];
    _exit(0);  // Survived: wrong.
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  // Killed by SIGBUS, or (under a sanitizer, whose handler came first) a
  // report and a failing exit.
  EXPECT_FALSE(WIFEXITED(status) && (WEXITSTATUS(status) == 0 || WEXITSTATUS(status) == 2))
      << status;
}

}  // namespace
}  // namespace vunet::virtio
