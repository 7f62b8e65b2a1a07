#include "virtio/guest_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "gtest/gtest.h"
#include "virtio/testing/driver.h"

namespace vunet::virtio {
namespace {

using testing::DriverMemory;

constexpr uint64_t kMiB = 1 << 20;

class ScopedMemfd {
 public:
  explicit ScopedMemfd(uint64_t size) : fd_(memfd_create("test", MFD_CLOEXEC)) {
    EXPECT_GE(fd_, 0);
    EXPECT_EQ(ftruncate(fd_, size), 0);
  }
  ~ScopedMemfd() { close(fd_); }
  int fd() const { return fd_; }

 private:
  int fd_;
};

TEST(GuestMemoryTest, TranslatesInsideARegion) {
  auto driver = DriverMemory::Create(4 * kMiB).value();
  GuestMemory memory;
  ASSERT_TRUE(driver->MapInto(&memory).ok());
  driver->Write(0x1000, "hello", 5);

  absl::StatusOr<void*> p = memory.TranslateGpa(0x1000, 5);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(std::memcmp(*p, "hello", 5), 0);

  const uint64_t uva = driver->regions()[0].user_addr + 0x1000;
  absl::StatusOr<void*> q = memory.TranslateUva(uva, 5);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(*p, *q);
  // The backend's mapping is its own, not the driver's.
  EXPECT_NE(*p, driver->Host(0x1000));
}

TEST(GuestMemoryTest, RefusesRangesNotFullyInside) {
  auto driver = DriverMemory::Create(4 * kMiB, 1, 0x10000).value();
  GuestMemory memory;
  ASSERT_TRUE(driver->MapInto(&memory).ok());
  const uint64_t end = 0x10000 + 4 * kMiB;
  EXPECT_TRUE(memory.TranslateGpa(end - 8, 8).ok());
  EXPECT_EQ(memory.TranslateGpa(end - 8, 9).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(memory.TranslateGpa(end, 0).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(memory.TranslateGpa(0xffff, 1).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(memory.TranslateGpa(0x10000, UINT64_MAX).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(memory.TranslateGpa(UINT64_MAX, 2).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(memory.TranslateUva(0, 1).status().code(), absl::StatusCode::kOutOfRange);
  const uint64_t uva_end = driver->regions()[0].user_addr + 4 * kMiB;
  EXPECT_EQ(memory.TranslateUva(uva_end - 4, 8).status().code(), absl::StatusCode::kOutOfRange);
}

TEST(GuestMemoryTest, SplitsBuffersAcrossAdjacentRegions) {
  auto driver = DriverMemory::Create(4 * kMiB, 2).value();
  GuestMemory memory;
  ASSERT_TRUE(driver->MapInto(&memory).ok());
  ASSERT_EQ(memory.region_count(), 2u);
  const uint64_t boundary = 2 * kMiB;

  iovec iov[4];
  absl::StatusOr<size_t> n = memory.MapGpa(boundary - 100, 300, iov, 4);
  ASSERT_TRUE(n.ok()) << n.status();
  ASSERT_EQ(*n, 2u);
  EXPECT_EQ(iov[0].iov_len, 100u);
  EXPECT_EQ(iov[1].iov_len, 200u);
  EXPECT_EQ(iov[0].iov_base, *memory.TranslateGpa(boundary - 100, 100));
  EXPECT_EQ(iov[1].iov_base, *memory.TranslateGpa(boundary, 200));

  // One pointer cannot span two mappings.
  EXPECT_FALSE(memory.TranslateGpa(boundary - 100, 300).ok());
  // Not enough entries.
  EXPECT_EQ(memory.MapGpa(boundary - 100, 300, iov, 1).status().code(),
            absl::StatusCode::kResourceExhausted);
  // Past the end of the last region.
  EXPECT_EQ(memory.MapGpa(4 * kMiB - 10, 11, iov, 4).status().code(),
            absl::StatusCode::kOutOfRange);
  // Zero length maps to nothing.
  EXPECT_EQ(*memory.MapGpa(12345, 0, iov, 0), 0u);
}

TEST(GuestMemoryTest, MapGpaWritesReachTheDriver) {
  auto driver = DriverMemory::Create(4 * kMiB, 4).value();
  GuestMemory memory;
  ASSERT_TRUE(driver->MapInto(&memory).ok());
  iovec iov[8];
  const uint64_t start = kMiB - 3;
  const size_t n = *memory.MapGpa(start, 2 * kMiB + 6, iov, 8);
  ASSERT_EQ(n, 4u);
  uint8_t value = 0;
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < iov[i].iov_len; ++j) static_cast<uint8_t*>(iov[i].iov_base)[j] = value++;
  }
  value = 0;
  for (uint64_t off = 0; off < 2 * kMiB + 6; ++off) {
    ASSERT_EQ(*driver->Host(start + off), value++) << off;
  }
}

TEST(GuestMemoryTest, RefusesBadRegions) {
  ScopedMemfd fd(4 * kMiB);
  GuestMemory memory;
  ASSERT_TRUE(
      memory.AddRegion({.guest_phys_addr = 0, .size = kMiB, .user_addr = 0x100000000}, fd.fd())
          .ok());
  // Zero-sized.
  EXPECT_EQ(
      memory.AddRegion({.guest_phys_addr = 2 * kMiB, .size = 0, .user_addr = 0}, fd.fd()).code(),
      absl::StatusCode::kInvalidArgument);
  // Overlapping in guest-physical space, or in user space.
  EXPECT_FALSE(
      memory.AddRegion({.guest_phys_addr = kMiB - 4096, .size = kMiB, .user_addr = 0}, fd.fd())
          .ok());
  EXPECT_FALSE(
      memory
          .AddRegion(
              {.guest_phys_addr = 2 * kMiB, .size = kMiB, .user_addr = 0x100000000 + kMiB - 1},
              fd.fd())
          .ok());
  // Overflowing 64 bits, in each address space and in the file offset.
  EXPECT_FALSE(
      memory.AddRegion({.guest_phys_addr = UINT64_MAX - 4095, .size = 8192}, fd.fd()).ok());
  EXPECT_FALSE(
      memory
          .AddRegion({.guest_phys_addr = 8 * kMiB, .size = 4096, .user_addr = UINT64_MAX}, fd.fd())
          .ok());
  EXPECT_FALSE(memory
                   .AddRegion({.guest_phys_addr = 8 * kMiB,
                               .size = 4096,
                               .user_addr = 0,
                               .mmap_offset = UINT64_MAX - 10},
                              fd.fd())
                   .ok());
  // Exactly reaching the top of the address space overflows too.
  EXPECT_FALSE(
      memory.AddRegion({.guest_phys_addr = UINT64_MAX - 4095, .size = 4096}, fd.fd()).ok());
  // A region larger than its file would fault when touched.
  EXPECT_FALSE(
      memory
          .AddRegion({.guest_phys_addr = 8 * kMiB, .size = 4 * kMiB, .mmap_offset = 4096}, fd.fd())
          .ok());
  // Not a file, or not an fd.
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  EXPECT_FALSE(memory.AddRegion({.guest_phys_addr = 8 * kMiB, .size = 4096}, pipe_fds[0]).ok());
  close(pipe_fds[0]);
  close(pipe_fds[1]);
  EXPECT_FALSE(memory.AddRegion({.guest_phys_addr = 8 * kMiB, .size = 4096}, -1).ok());
  EXPECT_EQ(memory.region_count(), 1u);
}

TEST(GuestMemoryTest, SealsRegionFilesAgainstShrinking) {
  // A memfd that allows sealing gets F_SEAL_SHRINK: the frontend can no
  // longer shrink it under our mapping.
  const int sealable = memfd_create("sealable", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_EQ(ftruncate(sealable, kMiB), 0);
  GuestMemory memory;
  ASSERT_TRUE(memory.AddRegion({.guest_phys_addr = 0, .size = kMiB}, sealable).ok());
  EXPECT_TRUE(memory.sealed());
  EXPECT_NE(ftruncate(sealable, 0), 0);
  close(sealable);
  // One that cannot be sealed is accepted, and reported.
  ScopedMemfd unsealable(kMiB);
  ASSERT_TRUE(
      memory.AddRegion({.guest_phys_addr = kMiB, .size = kMiB, .user_addr = kMiB}, unsealable.fd())
          .ok());
  EXPECT_FALSE(memory.sealed());
}

TEST(GuestMemoryTest, UnalignedMmapOffsetIsHonoured) {
  ScopedMemfd fd(kMiB);
  {
    void* p = mmap(nullptr, kMiB, PROT_READ | PROT_WRITE, MAP_SHARED, fd.fd(), 0);
    ASSERT_NE(p, MAP_FAILED);
    std::memcpy(static_cast<uint8_t*>(p) + 100, "xyz", 3);
    munmap(p, kMiB);
  }
  GuestMemory memory;
  ASSERT_TRUE(
      memory.AddRegion({.guest_phys_addr = 0x5000, .size = 4096, .mmap_offset = 100}, fd.fd())
          .ok());
  EXPECT_EQ(std::memcmp(*memory.TranslateGpa(0x5000, 3), "xyz", 3), 0);
}

TEST(GuestMemoryTest, RemovesRegionsAndTranslatesBack) {
  auto driver = DriverMemory::Create(4 * kMiB, 2).value();
  GuestMemory memory;
  ASSERT_TRUE(driver->MapInto(&memory).ok());
  void* p = *memory.TranslateGpa(3 * kMiB, 1);
  EXPECT_EQ(*memory.HostToGpa(p), 3 * kMiB);
  EXPECT_FALSE(memory.HostToGpa(&memory).ok());

  GuestMemoryRegion second = driver->regions()[1];
  second.mmap_offset = 0;  // Not compared.
  EXPECT_TRUE(memory.RemoveRegion(second).ok());
  EXPECT_EQ(memory.RemoveRegion(second).code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(memory.TranslateGpa(3 * kMiB, 1).ok());
  EXPECT_TRUE(memory.TranslateGpa(kMiB, 1).ok());
  memory.Clear();
  EXPECT_EQ(memory.region_count(), 0u);
  EXPECT_FALSE(memory.TranslateGpa(kMiB, 1).ok());
}

TEST(GuestMemoryTest, ManyRegionsAreSearchedAndBounded) {
  ScopedMemfd fd(4096);
  GuestMemory memory;
  // Added out of order, so lookups rely on the sorted search.
  for (uint64_t i = 0; i < GuestMemory::kMaxRegions; ++i) {
    const uint64_t slot = (i * 7) % GuestMemory::kMaxRegions;
    ASSERT_TRUE(
        memory
            .AddRegion({.guest_phys_addr = slot * 8192, .size = 4096, .user_addr = slot * 8192},
                       fd.fd())
            .ok())
        << i;
  }
  EXPECT_EQ(memory
                .AddRegion({.guest_phys_addr = 1ull << 40, .size = 4096, .user_addr = 1ull << 40},
                           fd.fd())
                .code(),
            absl::StatusCode::kResourceExhausted);
  for (uint64_t slot = 0; slot < GuestMemory::kMaxRegions; ++slot) {
    EXPECT_TRUE(memory.TranslateGpa(slot * 8192 + 4095, 1).ok()) << slot;
    EXPECT_FALSE(memory.TranslateGpa(slot * 8192 + 4096, 1).ok()) << slot;
  }
}

TEST(GuestMemoryTest, MovesOwnershipOfMappings) {
  auto driver = DriverMemory::Create(kMiB).value();
  GuestMemory a;
  ASSERT_TRUE(driver->MapInto(&a).ok());
  GuestMemory b = std::move(a);
  EXPECT_TRUE(b.TranslateGpa(0, 1).ok());
  EXPECT_EQ(a.region_count(), 0u);  // NOLINT(bugprone-use-after-move): moved-from is empty.
}

}  // namespace
}  // namespace vunet::virtio
